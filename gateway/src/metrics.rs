//! Per-route metric handles: the request counter, latency histogram and
//! body-byte counters of each (entry, destination cluster, status class),
//! registered on first use and then reused, so the request path does not
//! format labels or look up the registry.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::report::{Tally, Traffic};

pub use gns_contract::report::Entry;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The handles one request records into.
struct Handles {
    /// `gns_gateway_requests_total`.
    requests: Counter,
    /// `gns_gateway_request_duration_seconds`.
    duration: Histogram,
    /// `gns_gateway_request_bytes_total`.
    request_bytes: Counter,
    /// `gns_gateway_response_bytes_total`.
    response_bytes: Counter,
    /// The counts of the next report to the federation.
    tally: Arc<Tally>,
}

/// Counts a response's body bytes as they stream: the metric and the tally
/// of the next report.
#[derive(Debug, Clone)]
pub struct ResponseBytes {
    counter: Counter,
    tally: Arc<Tally>,
}

impl ResponseBytes {
    /// `n` more bytes.
    pub fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.tally.add_response_bytes(n);
    }
}

type Slots = [Option<Handles>; 2 * CLASSES.len()];

/// The handles of one route, by destination cluster.
#[derive(Debug)]
pub struct RouteMetrics {
    service: Arc<str>,
    /// The service and its global namespace, apart, for reports.
    names: (String, String),
    traffic: Arc<Traffic>,
    by_cluster: Mutex<crate::FastMap<String, Box<Slots>>>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handles")
    }
}

impl RouteMetrics {
    /// The handles of `service.gns`, whose requests are also counted in
    /// `traffic` for the gateway's reports.
    pub fn new(service: &str, gns: &str, traffic: &Arc<Traffic>) -> Self {
        Self {
            service: Arc::from(format!("{service}.{gns}")),
            names: (gns.to_owned(), service.to_owned()),
            traffic: Arc::clone(traffic),
            by_cluster: Mutex::new(crate::FastMap::default()),
        }
    }

    /// Records one answered request from `entry` served by `cluster` (count
    /// by status class, latency, request body bytes); returns the counter of
    /// its response body bytes. The same counts go to the next report.
    pub fn record(
        &self,
        entry: Entry,
        cluster: &str,
        status: u16,
        elapsed: Duration,
        request_bytes: u64,
    ) -> ResponseBytes {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        let slot = match entry {
            Entry::Egress => class,
            Entry::Public => CLASSES.len() + class,
        };
        let mut by_cluster = self
            .by_cluster
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slots = match by_cluster.get_mut(cluster) {
            Some(slots) => slots,
            None => by_cluster.entry(cluster.to_owned()).or_default(),
        };
        let handles =
            slots[slot].get_or_insert_with(|| self.register(entry, cluster, CLASSES[class]));
        handles.requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
        handles.request_bytes.increment(request_bytes);
        handles.tally.record(class, elapsed, request_bytes);
        ResponseBytes {
            counter: handles.response_bytes.clone(),
            tally: Arc::clone(&handles.tally),
        }
    }

    fn register(&self, entry: Entry, cluster: &str, class: &'static str) -> Handles {
        let tally = self
            .traffic
            .tally(&self.names.0, &self.names.1, cluster, entry);
        let (entry, service, cluster) =
            (entry.as_str(), self.service.to_string(), cluster.to_owned());
        Handles {
            requests: metrics::counter!(
                "gns_gateway_requests_total",
                "entry" => entry,
                "service" => service.clone(),
                "cluster" => cluster.clone(),
                "class" => class
            ),
            duration: metrics::histogram!(
                "gns_gateway_request_duration_seconds",
                "entry" => entry,
                "service" => service.clone(),
                "cluster" => cluster.clone()
            ),
            request_bytes: metrics::counter!(
                "gns_gateway_request_bytes_total",
                "entry" => entry,
                "service" => service.clone(),
                "cluster" => cluster.clone()
            ),
            response_bytes: metrics::counter!(
                "gns_gateway_response_bytes_total",
                "entry" => entry,
                "service" => service,
                "cluster" => cluster
            ),
            tally,
        }
    }
}
