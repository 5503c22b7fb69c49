//! Outlier ejection of local endpoints, per service policy
//! ([`OutlierPolicy`]): an endpoint that fails `consecutiveFailures` times
//! in a row (connect errors and 5xx answers; with an `interval`, failures
//! further apart than it start the count again) is left out for the
//! ejection time, unless that would eject more than `maxEjectedPercent` of
//! the service's endpoints. When every endpoint is ejected, all are used
//! again (better a likely failure than a certain one).

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::{EndpointPorts, OutlierPolicy};

/// What is on record for one endpoint.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures in a row.
    failures: u32,
    /// When the last one was.
    last_failure: Instant,
    /// Ejected until then.
    ejected_until: Option<Instant>,
}

/// The failures on record, shared by the services of a gateway worker.
#[derive(Debug, Default)]
pub struct Outliers {
    state: Mutex<crate::FastMap<SocketAddr, Record>>,
    /// False while no endpoint has a failure on record (the common case):
    /// picking and recording successes then take no lock.
    any: AtomicBool,
}

impl Outliers {
    /// A random endpoint of `endpoints` (on its port of `ports`) that is
    /// not ejected and not in `tried`, if there is one (else one not tried,
    /// else any).
    pub fn pick(
        &self,
        endpoints: &[IpAddr],
        ports: EndpointPorts<'_>,
        tried: &[SocketAddr],
    ) -> SocketAddr {
        if tried.is_empty() && !self.any.load(Ordering::Relaxed) {
            return ports.at(endpoints[fastrand::usize(..endpoints.len())]);
        }
        let now = Instant::now();
        let state = self.state.lock().ok();
        let not_tried = || {
            endpoints
                .iter()
                .map(|ip| ports.at(*ip))
                .filter(|a| !tried.contains(a))
        };
        let usable: Vec<SocketAddr> = not_tried()
            .filter(|a| {
                state
                    .as_ref()
                    .and_then(|s| s.get(a))
                    .and_then(|r| r.ejected_until)
                    .is_none_or(|until| until <= now)
            })
            .collect();
        let pool: Vec<SocketAddr> = if usable.is_empty() {
            not_tried().collect()
        } else {
            usable
        };
        match pool.len() {
            0 => ports.at(endpoints[fastrand::usize(..endpoints.len())]),
            n => pool[fastrand::usize(..n)],
        }
    }

    /// Records an outcome at `target`, one of `endpoints` (each on its
    /// port of `ports`); true when it ejects the endpoint now.
    pub fn record(
        &self,
        target: SocketAddr,
        failed: bool,
        policy: &OutlierPolicy,
        (endpoints, ports): (&[IpAddr], EndpointPorts<'_>),
    ) -> bool {
        self.record_at(target, failed, policy, (endpoints, ports), Instant::now())
    }

    fn record_at(
        &self,
        target: SocketAddr,
        failed: bool,
        policy: &OutlierPolicy,
        (endpoints, ports): (&[IpAddr], EndpointPorts<'_>),
        now: Instant,
    ) -> bool {
        if !failed && !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if !failed {
            state.remove(&target);
            self.any.store(!state.is_empty(), Ordering::Relaxed);
            return false;
        }
        self.any.store(true, Ordering::Relaxed);
        let ejected_now = endpoints
            .iter()
            .filter(|ip| {
                state
                    .get(&ports.at(**ip))
                    .and_then(|r| r.ejected_until)
                    .is_some_and(|until| until > now)
            })
            .count();
        let record = state.entry(target).or_insert(Record {
            failures: 0,
            last_failure: now,
            ejected_until: None,
        });
        let window = policy.interval_ms.map(Duration::from_millis);
        if window.is_some_and(|w| now.duration_since(record.last_failure) > w) {
            record.failures = 0;
        }
        record.failures += 1;
        record.last_failure = now;
        if record.failures < policy.consecutive_failures.max(1) {
            return false;
        }
        // At most this many of the service's endpoints out at once.
        let cap = endpoints.len() * usize::from(policy.max_ejected_percent.min(100)) / 100;
        if ejected_now >= cap {
            return false;
        }
        record.failures = 0;
        record.ejected_until = Some(now + Duration::from_millis(policy.ejection_ms));
        tracing::info!(endpoint = %target, "endpoint ejected after consecutive failures");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().expect("ip")).collect()
    }

    #[test]
    fn failing_endpoints_are_ejected_until_none_is_left() {
        let outliers = Outliers::default();
        let policy = OutlierPolicy::default();
        let ips = ips(&["10.0.0.1", "10.0.0.2"]);
        let at80 = (&ips[..], EndpointPorts::uniform(80));
        let bad = SocketAddr::new(ips[0], 80);
        assert!(!outliers.record(bad, true, &policy, at80));
        assert!(!outliers.record(bad, true, &policy, at80));
        assert!(
            outliers.record(bad, true, &policy, at80),
            "the third failure in a row ejects (the default)"
        );
        for _ in 0..100 {
            assert_ne!(
                outliers.pick(&ips, EndpointPorts::uniform(80), &[]),
                bad,
                "ejected endpoints are skipped"
            );
        }
        let good = SocketAddr::new(ips[1], 80);
        assert_eq!(
            outliers.pick(&ips, EndpointPorts::uniform(80), &[good]),
            bad,
            "with nothing else left, an ejected endpoint is still used"
        );
        assert!(!outliers.record(good, false, &policy, at80));
    }

    #[test]
    fn the_service_policy_sets_threshold_window_time_and_share() {
        let ips = ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        let at80 = (&ips[..], EndpointPorts::uniform(80));
        let [a, b] = [0, 1].map(|i| SocketAddr::new(ips[i], 80));
        let t0 = Instant::now();
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            interval_ms: Some(1_000),
            ejection_ms: 5_000,
            max_ejected_percent: 25,
        };
        let outliers = Outliers::default();
        assert!(!outliers.record_at(a, true, &policy, at80, t0));
        // Two seconds later the first failure no longer counts.
        let t1 = t0 + Duration::from_secs(2);
        assert!(!outliers.record_at(a, true, &policy, at80, t1));
        assert!(outliers.record_at(a, true, &policy, at80, t1 + Duration::from_millis(10)));
        // 25 % of four endpoints: one may be out; b stays in.
        assert!(!outliers.record_at(b, true, &policy, at80, t1));
        assert!(!outliers.record_at(b, true, &policy, at80, t1 + Duration::from_millis(10)));
        // After the ejection time a is back, so b may go (its old failures
        // are outside the window: two new ones in a row).
        let t2 = t1 + Duration::from_secs(6);
        assert!(!outliers.record_at(b, true, &policy, at80, t2));
        assert!(outliers.record_at(b, true, &policy, at80, t2 + Duration::from_millis(10)));
        // A share of 0 ejects nothing.
        let never = OutlierPolicy {
            max_ejected_percent: 0,
            ..policy
        };
        let fresh = Outliers::default();
        for _ in 0..10 {
            assert!(!fresh.record_at(a, true, &never, at80, t0));
        }
    }

    #[test]
    fn an_endpoint_on_its_own_port_is_picked_and_counted_there() {
        let ips = ips(&["10.0.0.1", "10.0.0.2"]);
        let own = std::collections::BTreeMap::from([(ips[1], 8080)]);
        let ports = EndpointPorts {
            port: 80,
            own: &own,
        };
        let (a, b) = (SocketAddr::new(ips[0], 80), SocketAddr::new(ips[1], 8080));
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            max_ejected_percent: 50,
            ..OutlierPolicy::default()
        };
        let outliers = Outliers::default();
        let picked: std::collections::BTreeSet<SocketAddr> =
            (0..100).map(|_| outliers.pick(&ips, ports, &[])).collect();
        assert_eq!(picked, [a, b].into(), "each on its own port");
        // b is out on its own port: half of two is the most, so a stays.
        assert!(outliers.record(b, true, &policy, (&ips, ports)));
        assert!(
            !outliers.record(a, true, &policy, (&ips, ports)),
            "b counts as ejected"
        );
        assert_eq!(outliers.pick(&ips, ports, &[]), a);
    }
}
