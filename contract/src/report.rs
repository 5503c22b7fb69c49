//! What a gateway tells the federation about itself every few seconds
//! (`PUT /v1/clusters/{cluster}/gateway-instances/{instance}`): who it is,
//! which build runs, which config it applied, when its certificate expires,
//! and the traffic it carried since the last report, per service,
//! destination cluster and entry. Both sides read and write it with these
//! types.

use serde::{Deserialize, Serialize};

/// Where a plain-HTTP request entered the gateway.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// From a client in this cluster.
    Egress,
    /// From a client outside every cluster (identity `external`).
    Public,
}

impl Entry {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Entry::Egress => "egress",
            Entry::Public => "public",
        }
    }
}

/// Upper bounds (milliseconds, inclusive) of the latency buckets of a
/// report; one more bucket counts everything slower.
pub const LATENCY_BOUNDS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
/// Buckets in [`TrafficRecord::latency_buckets`].
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// Most traffic records in one report (well inside the federation's 1 MiB
/// body limit); more wait for the next report.
pub const MAX_RECORDS: usize = 2_000;

/// What a valid instance name is, in words (for errors).
pub const INSTANCE_NAME_RULE: &str =
    "up to 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit";

/// Whether `name` is a valid instance name (a pod or host name): see
/// [`INSTANCE_NAME_RULE`]. The gateway checks its own, the federation
/// every report's.
pub fn valid_instance_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// One gateway instance's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    /// The gateway's build version.
    pub version: String,
    /// The version of the config it serves, if it has one.
    #[serde(default)]
    pub config_version: Option<u64>,
    /// When its certificate expires (RFC 3339), if it has one.
    #[serde(default)]
    pub certificate_expires_at: Option<String>,
    /// How long the traffic below was counted for, in milliseconds.
    pub interval_millis: u64,
    /// Traffic since the previous report, per service, destination and entry.
    #[serde(default)]
    pub traffic: Vec<TrafficRecord>,
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classes {
    /// 1xx.
    #[serde(rename = "1xx", default)]
    pub informational: u64,
    /// 2xx.
    #[serde(rename = "2xx", default)]
    pub success: u64,
    /// 3xx.
    #[serde(rename = "3xx", default)]
    pub redirection: u64,
    /// 4xx.
    #[serde(rename = "4xx", default)]
    pub client_error: u64,
    /// 5xx (the gateway's own 502/503/504 included).
    #[serde(rename = "5xx", default)]
    pub server_error: u64,
}

impl Classes {
    /// Classes from counts in the order 1xx, 2xx, 3xx, 4xx, 5xx.
    pub fn from_counts(counts: [u64; 5]) -> Self {
        let [
            informational,
            success,
            redirection,
            client_error,
            server_error,
        ] = counts;
        Classes {
            informational,
            success,
            redirection,
            client_error,
            server_error,
        }
    }

    /// The counts in the order 1xx, 2xx, 3xx, 4xx, 5xx.
    pub fn counts(&self) -> [u64; 5] {
        [
            self.informational,
            self.success,
            self.redirection,
            self.client_error,
            self.server_error,
        ]
    }

    /// Every response; `None` if the counts (from the network) overflow.
    pub fn total(&self) -> Option<u64> {
        self.counts()
            .iter()
            .try_fold(0u64, |sum, n| sum.checked_add(*n))
    }
}

/// The traffic of one service to one destination cluster through one entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRecord {
    /// The global namespace.
    pub global_namespace: String,
    /// The service.
    pub service: String,
    /// The cluster that served it (this gateway's own, or a peer).
    pub cluster: String,
    /// Where the requests entered: `egress` or `public`.
    pub entry: Entry,
    /// Requests answered.
    pub requests: u64,
    /// Responses by status class.
    pub responses: Classes,
    /// Requests by latency, one count per bucket of [`LATENCY_BOUNDS_MS`]
    /// and one for slower ones.
    pub latency_buckets: Vec<u64>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

impl TrafficRecord {
    /// What records are summed by: namespace, service, cluster, entry.
    pub fn key(&self) -> (&str, &str, &str, Entry) {
        (
            &self.global_namespace,
            &self.service,
            &self.cluster,
            self.entry,
        )
    }

    /// Adds `other`'s counts (same key) to this one's.
    fn add(&mut self, other: &TrafficRecord) {
        self.requests = self.requests.saturating_add(other.requests);
        let (mine, theirs) = (self.responses.counts(), other.responses.counts());
        self.responses =
            Classes::from_counts(std::array::from_fn(|i| mine[i].saturating_add(theirs[i])));
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.request_bytes = self.request_bytes.saturating_add(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(other.response_bytes);
    }
}

/// Adds `more` to `pending` (records of one key summed), for a report that
/// could not be sent: its traffic goes with the next one.
pub fn merge(pending: &mut Vec<TrafficRecord>, more: Vec<TrafficRecord>) {
    for record in more {
        match pending.iter_mut().find(|p| p.key() == record.key()) {
            Some(existing) => existing.add(&record),
            None => pending.push(record),
        }
    }
    pending.sort_by(|a, b| a.key().cmp(&b.key()));
}
