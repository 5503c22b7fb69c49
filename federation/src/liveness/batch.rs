//! Group commit of liveness facts: beats that arrive while a write is in
//! flight are written together by the next one, in one statement, so the
//! store's write rate bounds batches, not beats.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Liveness, Store, StoreError};

/// Most facts in one batch.
const MAX_BATCH: usize = 1024;
/// Beats waiting for a batch before a caller waits for room.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A handle that records liveness facts in batches; cheap to clone.
#[derive(Clone)]
pub struct BeatWriter {
    queue: mpsc::Sender<(Liveness, Reply)>,
}

impl BeatWriter {
    /// Starts the batching task on the current runtime; it ends when every
    /// handle is dropped.
    pub fn spawn(store: Arc<dyn Store>) -> BeatWriter {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, requests));
        BeatWriter { queue }
    }

    /// Records `fact` with the beats arriving meanwhile; returns once it is
    /// written (or the write failed).
    pub async fn record(&self, fact: Liveness) -> Result<(), StoreError> {
        let (reply, written) = oneshot::channel();
        self.queue
            .send((fact, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the liveness writer stopped".into()))?;
        written
            .await
            .map_err(|_| StoreError::Unavailable("the liveness writer stopped".into()))?
    }
}

async fn run(store: Arc<dyn Store>, mut requests: mpsc::Receiver<(Liveness, Reply)>) {
    let mut facts = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    // Waits for the first beat, then takes every beat already queued: those
    // that came while the previous batch was being written.
    while let Some((fact, reply)) = requests.recv().await {
        facts.push(fact);
        replies.push(reply);
        while facts.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok((fact, reply)) => {
                    facts.push(fact);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("gns_liveness_batch_size").record(facts.len() as f64);
        let result = store.record_liveness(&facts).await;
        facts.clear();
        for reply in replies.drain(..) {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(for_each_caller(e)),
            });
        }
    }
}

/// The error of a batch, as each of its callers gets it.
fn for_each_caller(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}
