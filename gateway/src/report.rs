//! What a gateway tells the federation about itself every few seconds
//! (`PUT /v1/clusters/{cluster}/gateway-instances/{instance}`): who it is,
//! which build runs, which config it applied, when its certificate expires,
//! and the traffic it carried since the last report. [`Report`] is the
//! contract (the federation reads it with the same type); [`Traffic`] keeps
//! the per-service, per-destination tallies the data path bumps and each
//! report drains; [`run`] is the loop that sends them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::Gateway;
pub use gns_contract::report::*;

/// Counts of one (service, destination, entry), bumped by the data path.
#[derive(Debug, Default)]
pub struct Tally {
    classes: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS],
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

impl Tally {
    /// One answered request: its status class (0 for 1xx … 4 for 5xx),
    /// latency and request body bytes.
    pub fn record(&self, class: usize, elapsed: Duration, request_bytes: u64) {
        self.classes[class.min(4)].fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MS.partition_point(|&bound| bound < ms);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.request_bytes
            .fetch_add(request_bytes, Ordering::Relaxed);
    }

    /// Response body bytes, as they stream.
    pub fn add_response_bytes(&self, n: u64) {
        self.response_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes the counts, leaving zeros.
    fn take(&self) -> ([u64; 5], [u64; BUCKETS], u64, u64) {
        (
            std::array::from_fn(|i| self.classes[i].swap(0, Ordering::Relaxed)),
            std::array::from_fn(|i| self.buckets[i].swap(0, Ordering::Relaxed)),
            self.request_bytes.swap(0, Ordering::Relaxed),
            self.response_bytes.swap(0, Ordering::Relaxed),
        )
    }
}

/// Who a tally counts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TallyKey {
    gns: String,
    service: String,
    cluster: String,
    entry: Entry,
}

/// Every tally of one gateway; tallies outlive config changes (a route
/// rebuilt for a new config finds its tallies again).
#[derive(Debug, Default)]
pub struct Traffic {
    tallies: Mutex<crate::FastMap<TallyKey, Arc<Tally>>>,
}

impl Traffic {
    /// The tally of `service` in `gns` served by `cluster` through `entry`.
    pub fn tally(&self, gns: &str, service: &str, cluster: &str, entry: Entry) -> Arc<Tally> {
        let key = TallyKey {
            gns: gns.to_owned(),
            service: service.to_owned(),
            cluster: cluster.to_owned(),
            entry,
        };
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(tallies.entry(key).or_default())
    }

    /// The traffic counted since the last drain, in a stable order; the
    /// tallies start again from zero.
    pub fn drain(&self) -> Vec<TrafficRecord> {
        let tallies: Vec<(TallyKey, Arc<Tally>)> = self
            .tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, t)| (k.clone(), Arc::clone(t)))
            .collect();
        let mut out: Vec<TrafficRecord> = tallies
            .into_iter()
            .filter_map(|(key, tally)| {
                let (classes, buckets, request_bytes, response_bytes) = tally.take();
                let requests: u64 = classes.iter().sum();
                // A request counted while a drain ran may have its class in
                // one report and its latency in the next: neither is lost.
                if requests == 0
                    && request_bytes == 0
                    && response_bytes == 0
                    && buckets.iter().all(|b| *b == 0)
                {
                    return None;
                }
                Some(TrafficRecord {
                    global_namespace: key.gns,
                    service: key.service,
                    cluster: key.cluster,
                    entry: key.entry,
                    requests,
                    responses: Classes::from_counts(classes),
                    latency_buckets: buckets.to_vec(),
                    request_bytes,
                    response_bytes,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        out
    }
}

/// Where and how a gateway reports.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `…/v1/clusters/{cluster}/gateway-instances/{instance}`.
    pub url: String,
    /// The gateway's API token.
    pub token: String,
    /// How often.
    pub every: Duration,
    /// The client (the federation's trust settings).
    pub http: reqwest::Client,
}

impl Reporter {
    /// A reporter of `instance` of `cluster`'s gateway to `federation`.
    pub fn new(
        http: reqwest::Client,
        federation: &str,
        cluster: &str,
        instance: &str,
        token: String,
        every: Duration,
    ) -> Reporter {
        Reporter {
            url: format!(
                "{}/v1/clusters/{cluster}/gateway-instances/{instance}",
                federation.trim_end_matches('/')
            ),
            token,
            every,
            http,
        }
    }
}

/// What `gateway` is now, with `traffic` counted over `interval`.
pub fn snapshot(gateway: &Gateway, interval: Duration, traffic: Vec<TrafficRecord>) -> Report {
    let expires = gateway
        .identity()
        .and_then(|id| id.chain.first().and_then(crate::follow::renewal_times))
        .and_then(|(_, expires)| u64::try_from(expires).ok())
        .map(|secs| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        });
    Report {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_version: gateway.config().map(|c| c.version),
        certificate_expires_at: expires,
        interval_millis: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        traffic,
    }
}

/// Reports `gateway` every `reporter.every`, for ever. A report that cannot
/// be sent keeps its traffic for the next; one the federation refuses (4xx)
/// drops it, so a bad record cannot block every later report. Failures are
/// logged as one outage, not per attempt.
pub async fn run(reporter: Reporter, gateway: Arc<Gateway>) {
    let mut outage = gns_outage::Outage::new("federation (gateway report)", &reporter.url);
    let mut pending: Vec<TrafficRecord> = Vec::new();
    let mut since = Instant::now();
    loop {
        merge(&mut pending, gateway.traffic().drain());
        let rest = pending.split_off(pending.len().min(MAX_RECORDS));
        let report = snapshot(
            &gateway,
            since.elapsed(),
            std::mem::replace(&mut pending, rest),
        );
        let sent = reporter
            .http
            .put(&reporter.url)
            .bearer_auth(&reporter.token)
            .timeout(Duration::from_secs(10))
            .json(&report)
            .send()
            .await;
        let outcome = match sent {
            Ok(resp) if resp.status().is_success() => {
                outage.reached();
                since = Instant::now();
                "sent"
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                outage.failed(&format!("{status}: {}", body.trim()));
                if status.is_client_error() {
                    // Refused: its traffic is not sent again.
                    since = Instant::now();
                    "refused"
                } else {
                    merge(&mut pending, report.traffic);
                    "failed"
                }
            }
            Err(e) => {
                outage.failed(&e);
                merge(&mut pending, report.traffic);
                "failed"
            }
        };
        metrics::counter!("gns_gateway_reports_total", "outcome" => outcome).increment(1);
        tokio::time::sleep(reporter.every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_classes_latency_buckets_and_bytes_then_starts_again() {
        let traffic = Traffic::default();
        let tally = traffic.tally("production", "web", "west", Entry::Egress);
        tally.record(1, Duration::from_millis(3), 10);
        tally.record(1, Duration::from_millis(5), 0);
        tally.record(4, Duration::from_millis(6), 0);
        tally.record(4, Duration::from_secs(20), 0);
        tally.add_response_bytes(700);
        // The same key gives the same tally (a route rebuilt for a new config).
        traffic
            .tally("production", "web", "west", Entry::Egress)
            .add_response_bytes(1);
        let drained = traffic.drain();
        assert_eq!(drained.len(), 1);
        let record = &drained[0];
        assert_eq!(record.requests, 4);
        assert_eq!(record.responses.success, 2);
        assert_eq!(record.responses.server_error, 2);
        assert_eq!(record.latency_buckets[0], 2, "3 ms and 5 ms are in ≤ 5 ms");
        assert_eq!(record.latency_buckets[1], 1, "6 ms is in ≤ 10 ms");
        assert_eq!(
            record.latency_buckets[BUCKETS - 1],
            1,
            "20 s is above every bound"
        );
        assert_eq!((record.request_bytes, record.response_bytes), (10, 701));
        assert!(
            traffic.drain().is_empty(),
            "a drained tally starts from zero"
        );
    }

    #[test]
    fn a_latency_counted_after_its_class_was_drained_is_kept() {
        let traffic = Traffic::default();
        let tally = traffic.tally("production", "web", "west", Entry::Egress);
        // As if a drain ran between bumping the class and the bucket.
        tally.buckets[3].fetch_add(1, Ordering::Relaxed);
        let drained = traffic.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!((drained[0].requests, drained[0].latency_buckets[3]), (0, 1));
    }

    #[test]
    fn instance_names_are_pod_or_host_names() {
        for good in ["gns-gateway-7c5d9b8f6d-x2k4q", "gw-0", "node1.example"] {
            assert!(valid_instance_name(good), "{good}");
        }
        for bad in ["", "GW", "gw_0", "-gw", "gw.", "a/b", &"a".repeat(254)] {
            assert!(!valid_instance_name(bad), "{bad}");
        }
    }

    #[test]
    fn unsent_traffic_is_summed_into_the_next_report() {
        let traffic = Traffic::default();
        traffic
            .tally("production", "web", "west", Entry::Egress)
            .record(1, Duration::from_millis(1), 5);
        let mut pending = traffic.drain();
        traffic
            .tally("production", "web", "west", Entry::Egress)
            .record(3, Duration::from_millis(1), 5);
        traffic
            .tally("production", "api", "east", Entry::Public)
            .record(1, Duration::from_millis(1), 0);
        merge(&mut pending, traffic.drain());
        assert_eq!(pending.len(), 2);
        let web = pending.iter().find(|r| r.service == "web").expect("web");
        assert_eq!(web.requests, 2);
        assert_eq!(web.responses.success + web.responses.client_error, 2);
        assert_eq!(web.request_bytes, 10);
    }

    #[test]
    fn a_report_reads_back_as_it_was_written_and_refuses_unknown_fields() {
        let report = Report {
            version: "1.2.3".into(),
            config_version: Some(7),
            certificate_expires_at: Some("2026-12-07T00:00:00Z".into()),
            interval_millis: 5000,
            traffic: vec![],
        };
        let text = serde_json::to_string(&report).expect("serializes");
        assert!(text.contains("\"configVersion\":7"), "{text}");
        assert_eq!(
            serde_json::from_str::<Report>(&text).expect("reads"),
            report
        );
        let extra = text.replacen('{', "{\"colour\":1,", 1);
        assert!(serde_json::from_str::<Report>(&extra).is_err());
    }
}
