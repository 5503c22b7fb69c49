//! The telemetry window, pure: from the traffic the gateways report (every
//! federation replica reads the same samples from the store), rolling
//! aggregates over the last minutes at [`RESOLUTION_MS`] resolution:
//! requests, responses by class, latency percentiles (from the reports'
//! latency buckets) and bytes, per service, per link (the reporting
//! gateway's cluster → the cluster that served), and per gateway instance.

use std::collections::BTreeMap;

use gns_contract::report::{BUCKETS, LATENCY_BOUNDS_MS, TrafficRecord};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::TelemetrySample;

/// The width of one point of a series, milliseconds.
pub const RESOLUTION_MS: i64 = 10_000;
/// How far back the window reaches at most (and by default), milliseconds.
pub const MAX_WINDOW_MS: i64 = 15 * 60_000;

/// What traffic added up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Requests answered.
    pub requests: u64,
    /// Requests per second over the window.
    pub rps: f64,
    /// Responses by status class: `1xx` … `5xx`.
    pub responses: BTreeMap<String, u64>,
    /// Share of responses that were 5xx (0 without requests).
    pub error_rate: f64,
    /// Latency percentiles, milliseconds (absent without requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// 90th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90_ms: Option<f64>,
    /// 99th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
}

/// One point of a series: what arrived in one [`RESOLUTION_MS`] slot.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Start of the slot, Unix ms.
    pub at_ms: i64,
    /// Requests.
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// 99th percentile latency, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// A service's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTraffic {
    /// Global namespace.
    pub global_namespace: String,
    /// Service.
    pub service: String,
    /// Over the window.
    pub totals: Totals,
    /// Over the window, by the cluster that served the requests.
    pub destinations: Vec<DestinationTraffic>,
    /// Per slot, oldest first (slots without traffic left out).
    pub series: Vec<Point>,
}

/// A service's traffic served by one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationTraffic {
    /// The cluster that served the requests.
    pub cluster: String,
    /// Over the window.
    pub totals: Totals,
}

/// Traffic from the clients of one cluster (its gateway) to one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkTraffic {
    /// The cluster whose gateway took the requests.
    pub source: String,
    /// The cluster that served them.
    pub destination: String,
    /// Over the window.
    pub totals: Totals,
    /// Per slot, oldest first.
    pub series: Vec<Point>,
}

/// What one gateway instance carried.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTraffic {
    /// Its cluster.
    pub cluster: String,
    /// The instance.
    pub instance: String,
    /// Its last report in the window, Unix ms.
    pub last_report_ms: i64,
    /// Over the window.
    pub totals: Totals,
}

/// The whole window.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End, Unix ms.
    pub to_ms: i64,
    /// Width of a series' point, ms.
    pub resolution_ms: i64,
    /// By service.
    pub services: Vec<ServiceTraffic>,
    /// By link.
    pub links: Vec<LinkTraffic>,
    /// By gateway instance.
    pub instances: Vec<InstanceTraffic>,
}

/// `GET /v1/telemetry/services`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesWindow {
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End, Unix ms.
    pub to_ms: i64,
    /// Width of a series' point, ms.
    pub resolution_ms: i64,
    /// By service.
    pub items: Vec<ServiceTraffic>,
}

/// `GET /v1/telemetry/links`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinksWindow {
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End, Unix ms.
    pub to_ms: i64,
    /// Width of a series' point, ms.
    pub resolution_ms: i64,
    /// By link.
    pub items: Vec<LinkTraffic>,
}

/// `GET /v1/telemetry/instances`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancesWindow {
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End, Unix ms.
    pub to_ms: i64,
    /// Width of a series' point, ms.
    pub resolution_ms: i64,
    /// By gateway instance.
    pub items: Vec<InstanceTraffic>,
}

/// Counts being added up.
#[derive(Debug, Clone, Default)]
struct Sum {
    classes: [u64; 5],
    latency: [u64; BUCKETS],
    requests: u64,
    request_bytes: u64,
    response_bytes: u64,
}

impl Sum {
    fn add(&mut self, record: &TrafficRecord) {
        self.requests += record.requests;
        for (mine, theirs) in self.classes.iter_mut().zip(record.responses.counts()) {
            *mine += theirs;
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&record.latency_buckets) {
            *mine += theirs;
        }
        self.request_bytes += record.request_bytes;
        self.response_bytes += record.response_bytes;
    }

    fn totals(&self, window_ms: i64) -> Totals {
        let names = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        Totals {
            requests: self.requests,
            rps: self.requests as f64 / (window_ms.max(1) as f64 / 1000.0),
            responses: names
                .iter()
                .zip(self.classes)
                .map(|(n, c)| ((*n).to_owned(), c))
                .collect(),
            error_rate: if self.requests == 0 {
                0.0
            } else {
                self.classes[4] as f64 / self.requests as f64
            },
            p50_ms: quantile(&self.latency, 0.50),
            p90_ms: quantile(&self.latency, 0.90),
            p99_ms: quantile(&self.latency, 0.99),
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
        }
    }
}

/// The `q` quantile of a latency histogram (counts per bucket of
/// [`LATENCY_BOUNDS_MS`], then one for slower), interpolated linearly
/// inside its bucket; the slowest bucket answers its lower bound.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        let upto = below + count;
        if *count > 0 && upto as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1] as f64
            };
            let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let within = (rank - below as f64) / *count as f64;
            return Some(lower + (*upper as f64 - lower) * within.clamp(0.0, 1.0));
        }
        below = upto;
    }
    LATENCY_BOUNDS_MS.last().map(|b| *b as f64)
}

/// A sum over the window and one per slot.
#[derive(Debug, Default)]
struct Series {
    all: Sum,
    slots: BTreeMap<i64, Sum>,
}

impl Series {
    fn add(&mut self, slot: i64, record: &TrafficRecord) {
        self.all.add(record);
        self.slots.entry(slot).or_default().add(record);
    }

    fn points(&self) -> Vec<Point> {
        self.slots
            .iter()
            .map(|(at_ms, sum)| Point {
                at_ms: *at_ms,
                requests: sum.requests,
                errors: sum.classes[4],
                p99_ms: quantile(&sum.latency, 0.99),
            })
            .collect()
    }
}

/// The window of the last `window_ms` (at most [`MAX_WINDOW_MS`]) before
/// `now_ms` over `samples`; `keep` says which services to show (a scoped
/// token's global namespaces).
pub fn window<'a>(
    samples: impl IntoIterator<Item = &'a TelemetrySample>,
    now_ms: i64,
    window_ms: i64,
    keep: impl Fn(&str, &str) -> bool,
) -> Window {
    let window_ms = window_ms.clamp(RESOLUTION_MS, MAX_WINDOW_MS);
    let from_ms = now_ms - window_ms;
    let mut services: BTreeMap<(String, String), (Series, BTreeMap<String, Sum>)> = BTreeMap::new();
    let mut links: BTreeMap<(String, String), Series> = BTreeMap::new();
    let mut instances: BTreeMap<(String, String), (i64, Sum)> = BTreeMap::new();
    for sample in samples
        .into_iter()
        .filter(|s| s.at_ms >= from_ms && s.at_ms <= now_ms)
    {
        let slot = sample.at_ms - sample.at_ms.rem_euclid(RESOLUTION_MS);
        let instance = instances
            .entry((sample.cluster.clone(), sample.instance.clone()))
            .or_default();
        instance.0 = instance.0.max(sample.at_ms);
        for record in sample
            .traffic
            .iter()
            .filter(|r| keep(&r.global_namespace, &r.service))
        {
            let service = services
                .entry((record.global_namespace.clone(), record.service.clone()))
                .or_default();
            service.0.add(slot, record);
            service
                .1
                .entry(record.cluster.clone())
                .or_default()
                .add(record);
            links
                .entry((sample.cluster.clone(), record.cluster.clone()))
                .or_default()
                .add(slot, record);
            instance.1.add(record);
        }
    }
    Window {
        from_ms,
        to_ms: now_ms,
        resolution_ms: RESOLUTION_MS,
        services: services
            .into_iter()
            .map(
                |((global_namespace, service), (s, by_cluster))| ServiceTraffic {
                    global_namespace,
                    service,
                    totals: s.all.totals(window_ms),
                    destinations: by_cluster
                        .into_iter()
                        .map(|(cluster, sum)| DestinationTraffic {
                            cluster,
                            totals: sum.totals(window_ms),
                        })
                        .collect(),
                    series: s.points(),
                },
            )
            .collect(),
        links: links
            .into_iter()
            .map(|((source, destination), s)| LinkTraffic {
                source,
                destination,
                totals: s.all.totals(window_ms),
                series: s.points(),
            })
            .collect(),
        instances: instances
            .into_iter()
            .map(
                |((cluster, instance), (last_report_ms, sum))| InstanceTraffic {
                    cluster,
                    instance,
                    last_report_ms,
                    totals: sum.totals(window_ms),
                },
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gns_contract::report::{Classes, Entry};

    fn record(service: &str, cluster: &str, ok: u64, errors: u64, fast: u64) -> TrafficRecord {
        let mut latency_buckets = vec![0; BUCKETS];
        latency_buckets[0] = fast;
        latency_buckets[5] = ok + errors - fast;
        TrafficRecord {
            global_namespace: "production".into(),
            service: service.into(),
            cluster: cluster.into(),
            entry: Entry::Egress,
            requests: ok + errors,
            responses: Classes::from_counts([0, ok, 0, 0, errors]),
            latency_buckets,
            request_bytes: 10,
            response_bytes: 100,
        }
    }

    fn sample(cluster: &str, at_ms: i64, traffic: Vec<TrafficRecord>) -> TelemetrySample {
        TelemetrySample {
            cluster: cluster.into(),
            instance: format!("gw-{cluster}"),
            at_ms,
            interval_ms: 5_000,
            traffic,
        }
    }

    #[test]
    fn percentiles_interpolate_inside_the_bucket_of_their_rank() {
        let mut buckets = vec![0; BUCKETS];
        buckets[0] = 50; // ≤ 5 ms
        buckets[1] = 50; // 5–10 ms
        assert_eq!(quantile(&buckets, 0.5), Some(5.0));
        assert_eq!(quantile(&buckets, 0.75), Some(7.5));
        assert_eq!(quantile(&buckets, 1.0), Some(10.0));
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
        let mut slow = vec![0; BUCKETS];
        slow[BUCKETS - 1] = 3;
        assert_eq!(
            quantile(&slow, 0.99),
            Some(10_000.0),
            "slower than the last bound"
        );
    }

    #[test]
    fn the_window_sums_services_links_and_instances_in_ten_second_slots() {
        let now = 1_000_000;
        let samples = vec![
            // Too old: left out.
            sample(
                "east",
                now - MAX_WINDOW_MS - 1,
                vec![record("web", "west", 1000, 0, 0)],
            ),
            sample(
                "east",
                now - 35_000,
                vec![
                    record("web", "east", 90, 0, 90),
                    record("web", "west", 9, 1, 0),
                ],
            ),
            sample(
                "east",
                now - 21_000,
                vec![record("web", "east", 100, 0, 50)],
            ),
            sample("west", now - 5_000, vec![record("api", "west", 10, 0, 10)]),
        ];
        let w = window(&samples, now, MAX_WINDOW_MS, |_, _| true);
        assert_eq!(w.from_ms, now - MAX_WINDOW_MS);
        let web = &w
            .services
            .iter()
            .find(|s| s.service == "web")
            .expect("web")
            .totals;
        assert_eq!(web.requests, 200);
        assert_eq!(web.responses["5xx"], 1);
        assert!((web.error_rate - 0.005).abs() < 1e-12);
        assert_eq!(web.request_bytes, 30);
        assert!((web.rps - 200.0 / 900.0).abs() < 1e-9);
        assert!(web.p50_ms.is_some_and(|p| p <= 5.0), "{web:?}");
        assert!(web.p99_ms.is_some_and(|p| p > 100.0), "{web:?}");
        let by_destination: Vec<(&str, u64)> = w
            .services
            .iter()
            .find(|s| s.service == "web")
            .expect("web")
            .destinations
            .iter()
            .map(|d| (d.cluster.as_str(), d.totals.requests))
            .collect();
        assert_eq!(by_destination, [("east", 190), ("west", 10)]);
        // The two east samples fall in two slots.
        let series = &w
            .services
            .iter()
            .find(|s| s.service == "web")
            .expect("web")
            .series;
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].requests, 100);
        assert_eq!(series[0].errors, 1);
        let link = |s: &str, d: &str| {
            w.links
                .iter()
                .find(|l| l.source == s && l.destination == d)
                .map(|l| l.totals.requests)
        };
        assert_eq!(link("east", "east"), Some(190));
        assert_eq!(link("east", "west"), Some(10));
        assert_eq!(link("west", "west"), Some(10));
        assert_eq!(w.instances.len(), 2);
        assert_eq!(w.instances[0].instance, "gw-east");
        assert_eq!(w.instances[0].last_report_ms, now - 21_000);
        assert_eq!(w.instances[0].totals.requests, 200);
    }

    #[test]
    fn a_scope_keeps_only_its_global_namespaces_and_a_short_window_drops_older_samples() {
        let now = 1_000_000;
        let mut other = record("web", "east", 5, 0, 5);
        other.global_namespace = "staging".into();
        let samples = vec![
            sample("east", now - 100_000, vec![record("web", "east", 7, 0, 7)]),
            sample(
                "east",
                now - 1_000,
                vec![record("web", "east", 3, 0, 3), other],
            ),
        ];
        let w = window(&samples, now, 60_000, |g, _| g == "production");
        assert_eq!(w.services.len(), 1);
        assert_eq!(
            w.services[0].totals.requests, 3,
            "the older sample is out of a minute's window"
        );
    }
}
