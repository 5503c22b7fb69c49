//! Idle client connections: a connection on which no request has started
//! for a while is shut down gracefully (a response in progress is finished
//! first), so clients that keep connections open without using them do not
//! hold the gateway's per-connection buffers forever.
//!
//! The cost on the data path is one relaxed store per request (the service
//! marks the connection active) and one atomic load per wake-up of the
//! connection's task (is the check timer due?); the timer is polled, and so
//! re-armed, only when it has fired.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// Whether a request has started on a connection since the last check.
#[derive(Debug)]
pub struct Activity(AtomicBool);

impl Default for Activity {
    fn default() -> Self {
        // A new connection counts as active: its first period is a grace.
        Self(AtomicBool::new(true))
    }
}

impl Activity {
    /// Marks a request started.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a request started since the last call (and forgets it).
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// The idle check of one connection: polled beside the connection, it says
/// once when the connection should be shut down (two quiet checks in a row,
/// a check every half of the idle time: no request for at least that long).
#[derive(Debug)]
pub struct Watch {
    /// `None`: no idle limit, or the shutdown was already called for.
    check: Option<Pin<Box<tokio::time::Sleep>>>,
    period: Duration,
    armed: bool,
    quiet: u8,
}

impl Watch {
    /// A watch closing after `idle` without requests (`None` or zero: never).
    pub fn new(idle: Option<Duration>) -> Self {
        let period = idle.unwrap_or_default() / 2;
        Self {
            check: idle
                .filter(|d| !d.is_zero())
                .map(|_| Box::pin(tokio::time::sleep(period))),
            period,
            armed: false,
            quiet: 0,
        }
    }

    /// True (once) when the connection has been idle long enough. The timer
    /// is polled only when it is not yet armed or has fired, so the
    /// connection's own wake-ups cost one atomic load here.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>, activity: &Activity) -> bool {
        let Some(check) = self.check.as_mut() else {
            return false;
        };
        if self.armed && !check.is_elapsed() {
            return false;
        }
        if let Poll::Ready(()) = check.as_mut().poll(cx) {
            self.quiet = if activity.take() { 0 } else { self.quiet + 1 };
            if self.quiet >= 2 {
                self.check = None;
                return true;
            }
            check
                .as_mut()
                .reset(tokio::time::Instant::now() + self.period);
            // Arms the next check (it cannot have elapsed already unless the
            // period is zero; then the next wake-up takes it).
            let _ = check.as_mut().poll(cx);
        }
        self.armed = true;
        false
    }
}
