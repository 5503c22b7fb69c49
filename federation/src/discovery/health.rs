//! One view per member cluster of whether its API server is reachable,
//! shared by the cluster's probe and all of its watchers.
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
//! Its outages are logged by `gns_outage::Outage`: the loss once, a
//! summary at most once a minute, the recovery once.

use tokio::sync::watch;

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
