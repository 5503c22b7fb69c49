//! The log of losing a peer the process keeps trying to reach (a member
//! cluster's API server, the federation): the loss once (WARN), a summary
//! at most once a minute while it lasts (attempts, last error), and the
//! recovery once (INFO, with how long it lasted), instead of a line per
//! failed attempt. Shared by the federation, the gateways and `gns-dns`.

use std::time::{Duration, Instant};

/// How often a lasting outage is summed up.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One process's view of whether it reaches one peer.
#[derive(Debug)]
pub struct Outage {
    /// What is out of reach, for the log (e.g. `member cluster API`).
    what: &'static str,
    /// Which one (a cluster's name, the federation's URL).
    peer: String,
    since: Option<Instant>,
    attempts: u64,
    last_summary: Option<Instant>,
}

impl Outage {
    /// The log of reaching `peer`, a `what` (e.g. `member cluster API`, `east`).
    pub fn new(what: &'static str, peer: impl Into<String>) -> Self {
        Self {
            what,
            peer: peer.into(),
            since: None,
            attempts: 0,
            last_summary: None,
        }
    }

    /// True while the peer is out of reach.
    pub fn is_down(&self) -> bool {
        self.since.is_some()
    }

    /// A failed attempt: logged if it is the first of an outage, or if the
    /// last summary is a minute old.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let Some(since) = self.since else {
            self.since = Some(now);
            self.last_summary = Some(now);
            self.attempts = 0;
            tracing::warn!(what = self.what, peer = %self.peer, error = %error, "unreachable");
            return;
        };
        self.attempts += 1;
        if self
            .last_summary
            .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
        {
            tracing::warn!(
                what = self.what,
                peer = %self.peer,
                down_for = ?now.duration_since(since),
                attempts = self.attempts,
                last_error = %error,
                "still unreachable"
            );
            self.last_summary = Some(now);
            self.attempts = 0;
        }
    }

    /// A successful attempt: logs the recovery if it was down.
    pub fn reached(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(what = self.what, peer = %self.peer, down_for = ?since.elapsed(), "reachable again");
            self.attempts = 0;
            self.last_summary = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_down_from_its_first_failure_to_its_recovery() {
        let mut outage = Outage::new("federation", "http://127.0.0.1:8080");
        assert!(!outage.is_down());
        outage.failed(&"connection refused");
        outage.failed(&"connection refused");
        assert!(outage.is_down());
        assert_eq!(outage.attempts, 1, "attempts counted after the first");
        outage.reached();
        assert!(!outage.is_down());
        assert_eq!(outage.attempts, 0);
    }
}
