//! The log of losing the federation: the loss once (WARN), a summary at
//! most once a minute while it lasts (attempts, last error), the recovery
//! once (INFO, with how long it lasted), instead of a line per failed
//! attempt.

use std::time::{Duration, Instant};

/// How often a lasting outage is summed up.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One follower's view of whether it reaches the federation.
#[derive(Debug)]
pub(crate) struct Outage {
    /// What fails to reach the federation, for the log (e.g. `config watch`).
    what: &'static str,
    since: Option<Instant>,
    attempts: u64,
    last_summary: Option<Instant>,
}

impl Outage {
    /// The log of `what`'s attempts to reach the federation.
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            since: None,
            attempts: 0,
            last_summary: None,
        }
    }

    /// A failed attempt.
    pub(crate) fn failed(&mut self, federation: &str, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        match self.since {
            None => {
                self.since = Some(now);
                self.last_summary = Some(now);
                self.attempts = 0;
                tracing::warn!(what = self.what, federation, error = %error, "federation unreachable");
            }
            Some(since) => {
                self.attempts += 1;
                if self
                    .last_summary
                    .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
                {
                    tracing::warn!(
                        what = self.what,
                        federation,
                        down_for = ?now.duration_since(since),
                        attempts = self.attempts,
                        last_error = %error,
                        "federation still unreachable"
                    );
                    self.last_summary = Some(now);
                    self.attempts = 0;
                }
            }
        }
    }

    /// A successful attempt: logs the recovery if it was down.
    pub(crate) fn reached(&mut self, federation: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(what = self.what, federation, down_for = ?since.elapsed(), "federation reachable again");
            self.attempts = 0;
            self.last_summary = None;
        }
    }
}
