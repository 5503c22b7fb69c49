//! The telemetry samples one federation replica holds: the whole window
//! ([`MAX_WINDOW_MS`]) is read from the store once, parsed, and kept; each
//! later read asks the store only for the last [`OVERLAP_MS`] (the samples
//! any replica wrote since, and ones committed late) and drops what fell
//! out of the window. So a console polling every 2 s costs a minute of
//! rows per poll, not fifteen, at any number of gateways.
//!
//! A sample whose row commits more than [`OVERLAP_MS`] after the time it
//! carries (a stalled store, a replica's clock that far behind) is missed
//! by replicas that had already read past it: it thins their window, it
//! breaks nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::store::{Store, StoreError, TelemetrySample};
use crate::telemetry::MAX_WINDOW_MS;

/// How far back each read looks again.
pub const OVERLAP_MS: i64 = 60_000;

/// A sample's key: when it arrived, from which cluster and instance (the
/// store's primary key).
type Key = (i64, String, String);

/// The samples of the window, read from the store as they arrive. One
/// writer: [`Samples::read`], under its lock.
#[derive(Default)]
pub struct Samples {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    samples: BTreeMap<Key, Arc<TelemetrySample>>,
    /// The `now` of the last read: every sample before `read_at - OVERLAP_MS`
    /// that was committed by then is held.
    read_at: Option<i64>,
}

impl Samples {
    /// The samples that arrived at or after `since_ms` (at most
    /// [`MAX_WINDOW_MS`] before `now_ms`), oldest first.
    pub async fn read(
        &self,
        store: &dyn Store,
        now_ms: i64,
        since_ms: i64,
    ) -> Result<Vec<Arc<TelemetrySample>>, StoreError> {
        let window_start = now_ms - MAX_WINDOW_MS;
        let mut held = self.held.lock().await;
        let from = match held.read_at {
            Some(at) => (at - OVERLAP_MS).max(window_start),
            None => window_start,
        };
        for sample in store.telemetry_since(from).await? {
            let key = (
                sample.at_ms,
                sample.cluster.clone(),
                sample.instance.clone(),
            );
            // A row written again (same key) replaces what was held.
            held.samples.insert(key, Arc::new(sample));
        }
        held.read_at = Some(held.read_at.map_or(now_ms, |at| at.max(now_ms)));
        // Out of the window: dropped.
        let keep = held
            .samples
            .split_off(&(window_start, String::new(), String::new()));
        held.samples = keep;
        let since = since_ms.max(window_start);
        Ok(held
            .samples
            .range((since, String::new(), String::new())..)
            .map(|(_, s)| Arc::clone(s))
            .collect())
    }

    /// How many samples are held (for tests).
    pub async fn held(&self) -> usize {
        self.held.lock().await.samples.len()
    }
}
