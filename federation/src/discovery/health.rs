//! One view per member cluster of whether its API server is reachable,
//! shared by the cluster's probe and all of its watchers, and the cluster's
//! outage log.
//!
//! A watcher whose request could not connect marks the API down and waits
//! until it is up again instead of retrying on its own; the probe
//! (`GET /version` every few seconds) marks it up when it answers, which
//! wakes every waiting watcher at once. So a dead cluster costs one probe
//! per probe interval, not a retry per watcher, and a recovered one is
//! followed within one probe interval. A failure that says nothing about
//! reachability (a cut watch, `410 Gone`, an API error) is retried by the
//! watcher's own backoff, fast.
//!
//! [`Outage`] logs the loss once (WARN), a summary at most once a minute
//! while it lasts (attempts, last error), and the recovery once (INFO, with
//! how long it was down), instead of a line per failed attempt.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Whether a cluster's API server is reachable, as its probe and watchers saw it last.
#[derive(Clone)]
pub(crate) struct ApiHealth {
    up: watch::Sender<bool>,
}

impl ApiHealth {
    /// A view that starts out "up": nothing failed yet.
    pub(crate) fn new() -> ApiHealth {
        ApiHealth {
            up: watch::Sender::new(true),
        }
    }

    /// Marks the API unreachable.
    pub(crate) fn mark_down(&self) {
        self.up.send_if_modified(|up| std::mem::replace(up, false));
    }

    /// Marks the API reachable; wakes every waiting watcher.
    pub(crate) fn mark_up(&self) {
        self.up.send_if_modified(|up| !std::mem::replace(up, true));
    }

    /// True while the API is marked unreachable.
    pub(crate) fn is_down(&self) -> bool {
        !*self.up.borrow()
    }

    /// Waits until the API is marked reachable.
    pub(crate) async fn wait_up(&self) {
        let mut up = self.up.subscribe();
        // The sender lives as long as this value, so this ends only when up.
        let _ = up.wait_for(|up| *up).await;
    }
}

/// True when `error` says the API server could not be reached at all (no
/// connection or TLS session could be made), as opposed to a request that
/// reached it and failed, or a stream it cut.
pub(crate) fn is_connect_failure(error: &kube::Error) -> bool {
    let kube::Error::Service(inner) = error else {
        return false;
    };
    if inner.to_string().contains("(Connect)") {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | NotConnected
                    | AddrNotAvailable
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// How often a lasting outage is summed up in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The log of one member cluster's outages: what changed, not every attempt.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// Since when the API has been unreachable, if it is.
    since: Option<Instant>,
    /// Failed attempts since the last summary (or the loss).
    attempts: u64,
    last_error: String,
    last_summary: Option<Instant>,
}

impl Outage {
    /// A failed attempt to reach the API (a probe or a watcher's request).
    pub(crate) fn failed(&mut self, cluster: &str, error: &str) {
        let now = Instant::now();
        self.attempts += 1;
        self.last_error = error.to_owned();
        match self.since {
            None => {
                self.since = Some(now);
                self.last_summary = Some(now);
                self.attempts = 0;
                tracing::warn!(cluster, error, "member cluster API unreachable");
            }
            Some(since) => {
                if self
                    .last_summary
                    .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY)
                {
                    tracing::warn!(
                        cluster,
                        down_for = ?now.duration_since(since),
                        attempts = self.attempts,
                        last_error = %self.last_error,
                        "member cluster API still unreachable"
                    );
                    self.last_summary = Some(now);
                    self.attempts = 0;
                }
            }
        }
    }

    /// The API answered: logs the recovery if it was down.
    pub(crate) fn reached(&mut self, cluster: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                cluster,
                down_for = ?since.elapsed(),
                "member cluster API reachable again"
            );
            self.attempts = 0;
            self.last_summary = None;
        }
    }
}
