//! Idle kept-alive connections, per endpoint: the most recently used is
//! reused first (the one least likely to have been closed by the
//! endpoint), each endpoint keeps up to [`MAX_PER_ENDPOINT`] (enough for a
//! worker's concurrent requests to one endpoint, so that a burst does not
//! turn into a connection per request), and a connection idle longer than
//! [`IDLE_TIMEOUT`] is closed: when it would be reused, and by a sweep of
//! every endpoint (also those no request goes to any more) as connections
//! are parked and every [`SWEEP_EVERY`] (a task the pool starts). All
//! endpoints together keep at most [`MAX_TOTAL`] per worker, so a burst to
//! many endpoints cannot hold file descriptors without bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Idle connections kept per endpoint.
pub(crate) const MAX_PER_ENDPOINT: usize = 1024;
/// How long a connection may stay idle before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept over every endpoint, per worker.
pub(crate) const MAX_TOTAL: usize = 16_384;
/// How often every endpoint's idle connections are swept.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Idle connections of type `C` by endpoint.
pub(crate) struct Parked<C> {
    /// Per endpoint, in the order they were parked (the last is the newest).
    by_endpoint: crate::FastMap<SocketAddr, Vec<(C, Instant)>>,
    /// Connections kept, over every endpoint.
    total: usize,
    swept: Instant,
    /// Whether the pool has started the periodic sweep.
    sweeping: bool,
}

impl<C> Default for Parked<C> {
    fn default() -> Self {
        Self {
            by_endpoint: crate::FastMap::default(),
            total: 0,
            swept: Instant::now(),
            sweeping: false,
        }
    }
}

impl<C> Parked<C> {
    /// The newest idle connection to `target` that is `usable` (the others
    /// looked at, and every expired one, are dropped: closed).
    pub(crate) fn take(
        &mut self,
        target: SocketAddr,
        now: Instant,
        usable: impl Fn(&C) -> bool,
    ) -> Option<C> {
        let idle = self.by_endpoint.get_mut(&target)?;
        while let Some((connection, since)) = idle.pop() {
            self.total -= 1;
            if now.saturating_duration_since(since) >= IDLE_TIMEOUT {
                // The rest were parked even earlier.
                self.total -= idle.len();
                idle.clear();
                return None;
            }
            if usable(&connection) {
                return Some(connection);
            }
        }
        None
    }

    /// Parks `connection` to `target` (dropped when the endpoint, or the
    /// worker over every endpoint, has its fill already); now and then
    /// sweeps out expired connections.
    pub(crate) fn put(&mut self, target: SocketAddr, connection: C, now: Instant) {
        if now.saturating_duration_since(self.swept) >= SWEEP_EVERY || self.total >= MAX_TOTAL {
            self.sweep(now);
        }
        if self.total >= MAX_TOTAL {
            return;
        }
        let idle = self.by_endpoint.entry(target).or_default();
        if idle.len() < MAX_PER_ENDPOINT {
            idle.push((connection, now));
            self.total += 1;
        }
    }

    /// Drops every connection idle for [`IDLE_TIMEOUT`], and endpoints left with none.
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.swept = now;
        self.by_endpoint.retain(|_, idle| {
            idle.retain(|(_, since)| now.saturating_duration_since(*since) < IDLE_TIMEOUT);
            !idle.is_empty()
        });
        self.total = self.by_endpoint.values().map(Vec::len).sum();
    }

    /// `true` the first time: the pool is to start the periodic sweep.
    pub(crate) fn start_sweeping(&mut self) -> bool {
        !std::mem::replace(&mut self.sweeping, true)
    }

    /// Idle connections kept, over every endpoint.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_newest_usable_connection_is_reused_first() {
        let mut parked = Parked::default();
        let now = Instant::now();
        for n in 0..3 {
            parked.put(at(80), n, now);
        }
        assert_eq!(parked.take(at(80), now, |_| true), Some(2));
        // An unusable one (closed by the endpoint) is dropped, not kept.
        assert_eq!(parked.take(at(80), now, |&n| n == 0), Some(0));
        assert_eq!(parked.take(at(80), now, |_| true), None);
        assert_eq!(parked.take(at(81), now, |_| true), None);
    }

    #[test]
    fn an_endpoint_keeps_up_to_its_fill_of_idle_connections() {
        let mut parked = Parked::default();
        let now = Instant::now();
        for n in 0..MAX_PER_ENDPOINT + 10 {
            parked.put(at(80), n, now);
        }
        parked.put(at(81), 0, now);
        assert_eq!(parked.len(), MAX_PER_ENDPOINT + 1);
    }

    #[test]
    fn a_worker_keeps_at_most_its_total_over_every_endpoint() {
        let mut parked = Parked::default();
        let now = Instant::now();
        let endpoints = MAX_TOTAL / MAX_PER_ENDPOINT + 2;
        for port in 0..endpoints {
            for n in 0..MAX_PER_ENDPOINT {
                parked.put(at(port as u16 + 1000), n, now);
            }
        }
        assert_eq!(parked.len(), MAX_TOTAL);
        let counted: usize = parked.by_endpoint.values().map(Vec::len).sum();
        assert_eq!(counted, MAX_TOTAL, "the count is what is kept");
        // Taking one makes room for one.
        assert!(parked.take(at(1000), now, |_| true).is_some());
        parked.put(at(999), 7, now);
        assert_eq!(parked.take(at(999), now, |_| true), Some(7));
    }

    #[test]
    fn connections_idle_past_the_timeout_are_closed_on_reuse_and_by_the_sweep() {
        let mut parked = Parked::default();
        let start = Instant::now();
        parked.put(at(80), 1, start);
        parked.put(at(81), 2, start);
        let later = start + IDLE_TIMEOUT;
        assert_eq!(parked.take(at(80), later, |_| true), None, "expired");
        // Parking after a sweep interval drops what expired everywhere,
        // also at an endpoint nothing asks for any more.
        parked.put(at(82), 3, later + SWEEP_EVERY);
        assert_eq!(parked.len(), 1);
        assert_eq!(parked.take(at(82), later + SWEEP_EVERY, |_| true), Some(3));
    }
}
