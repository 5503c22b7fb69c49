//! The builder task: follows the store's revision, rebuilds the snapshot and
//! publishes it on a `tokio::sync::watch` channel.
//!
//! - A build reads what changed in the store since the last build (the whole
//!   store only the first time, or after a failed read), applies it to the
//!   state it keeps, and compiles that on the blocking pool, off the runtime's
//!   worker threads, over what the last compile left (only the services the
//!   changes name, when nothing every service depends on changed:
//!   `gns_snapshot_services_visited_total` and `_compiled_total` count them).
//!   The DNS JSON is encoded when a replica first asks for it.
//! - Bursts coalesce: the revision watch is marked seen before a build starts,
//!   so any number of writes during a build cause exactly one more build.
//! - Publication is one `send_replace` of an `Arc<Snapshot>`: readers see the
//!   old snapshot or the new one, never a half-built one. A snapshot equal to
//!   the current one is not republished.
//! - A store error is logged and retried with backoff (200 ms doubling to 5 s);
//!   readers keep the last good snapshot meanwhile.
//! - When an unreachable cluster's stale-endpoint policy runs out the
//!   answers change without a write. The builder rebuilds at that time, and
//!   records the withdrawal in the store (a status write conditional on the
//!   cluster's resource version), so the changed answers get a new version:
//!   DNS replicas polling by version and zone transfers comparing SOA
//!   serials see them too. (External workloads lapse through the liveness
//!   plane, `crate::liveness`, which records them the same way.)

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    CompileCache, CompileOptions, Problem, Snapshot, SnapshotError, SnapshotReceiver,
    SnapshotSender, StoreState, UnrecordedExpiry, compile_with, load, refresh,
};

use crate::store::{Store, StoreError};

/// First retry delay after a failed build.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Audit actor of expiry records.
pub const EXPIRY_ACTOR: &str = "system:expiry";

/// Starts the builder on the current runtime. The receiver holds `None` until
/// the first build succeeds. The task ends when every receiver is dropped;
/// abort the handle to stop it sooner (which also ends waiting long-polls).
pub fn spawn_builder(
    store: Arc<dyn Store>,
    options: CompileOptions,
) -> (SnapshotReceiver, JoinHandle<()>) {
    // Install the metrics recorder first, so the first build is counted.
    let _ = crate::api::metrics::handle();
    let (tx, rx) = watch::channel(None);
    let revisions = store.subscribe();
    let builder = Builder {
        store,
        options: Arc::new(options),
        tx,
        revisions,
        revisions_open: true,
        built: None,
        backoff: INITIAL_BACKOFF,
        problems: Vec::new(),
        state: None,
        cache: CompileCache::default(),
    };
    (rx, tokio::spawn(builder.run()))
}

/// Unix milliseconds now.
fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// When to wake up besides a new revision.
#[derive(Debug, Default)]
struct Wake {
    /// Wall-clock time (Unix ms) the answers change on their own.
    at_ms: Option<i64>,
    /// Retry after a failure.
    retry_in: Option<Duration>,
}

struct Builder {
    store: Arc<dyn Store>,
    options: Arc<CompileOptions>,
    tx: SnapshotSender,
    revisions: watch::Receiver<u64>,
    /// False once the store dropped its side of the revision channel.
    revisions_open: bool,
    /// Version of the last successful build.
    built: Option<u64>,
    backoff: Duration,
    /// Problems of the last build, to log only changes.
    problems: Vec<Problem>,
    /// What the last build read, kept to read only changes next time.
    state: Option<StoreState>,
    /// What the last build compiled, kept to compile only changes next time.
    cache: CompileCache,
}

impl Builder {
    async fn run(mut self) {
        loop {
            let wake = self.build_and_publish().await;
            if !self.wait(wake).await {
                tracing::debug!("every snapshot reader is gone; builder stops");
                return;
            }
        }
    }

    async fn build_and_publish(&mut self) -> Wake {
        // Writes committed from here on make the next wait return at once.
        self.revisions.borrow_and_update();
        let started = std::time::Instant::now();
        let result = build(
            self.store.as_ref(),
            &mut self.state,
            &mut self.cache,
            Arc::clone(&self.options),
        )
        .await;
        metrics::histogram!("gns_snapshot_build_seconds").record(started.elapsed().as_secs_f64());
        match result {
            Ok(snapshot) => {
                metrics::counter!("gns_snapshot_builds_total", "result" => "ok").increment(1);
                self.built = Some(snapshot.version);
                let mut wake = Wake {
                    at_ms: snapshot.next_change_ms,
                    retry_in: None,
                };
                let expiries = snapshot.unrecorded_expiries.clone();
                self.publish(snapshot);
                if !expiries.is_empty()
                    && let Err(e) = record_expiries(self.store.as_ref(), &expiries).await
                {
                    tracing::warn!(
                        error = %e,
                        "cannot record cluster withdrawals; retrying"
                    );
                    wake.retry_in = Some(self.next_backoff());
                } else {
                    self.backoff = INITIAL_BACKOFF;
                }
                wake
            }
            Err(e) => {
                metrics::counter!("gns_snapshot_builds_total", "result" => "error").increment(1);
                let retry_in = self.next_backoff();
                tracing::warn!(
                    error = %e,
                    retry_in = ?retry_in,
                    "snapshot build failed; serving the last snapshot"
                );
                Wake {
                    at_ms: None,
                    retry_in: Some(retry_in),
                }
            }
        }
    }

    fn next_backoff(&mut self) -> Duration {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        delay
    }

    fn publish(&mut self, mut snapshot: Snapshot) {
        metrics::gauge!("gns_snapshot_problems").set(snapshot.problems.len() as f64);
        if snapshot.problems != self.problems {
            for problem in snapshot
                .problems
                .iter()
                .filter(|p| !self.problems.contains(p))
            {
                tracing::warn!(%problem, version = snapshot.version, "left out of the snapshot");
            }
            self.problems = snapshot.problems.clone();
        }
        let current = self.tx.borrow().clone();
        if let Some(current) = &current {
            // Outputs that did not change keep their versions (the first
            // build after a start takes the store's revision for all, which
            // is above every version published before: still monotonic).
            if snapshot.version >= current.version {
                snapshot.carry_versions(current);
            }
            if **current == snapshot {
                return;
            }
            if snapshot.version < current.version {
                tracing::warn!(
                    from = current.version,
                    to = snapshot.version,
                    "store revision went backwards (database restored?); publishing it"
                );
            }
        }
        metrics::gauge!("gns_snapshot_version").set(snapshot.version as f64);
        tracing::debug!(
            version = snapshot.version,
            zones = snapshot.dns.zones.len(),
            "snapshot published"
        );
        self.tx.send_replace(Some(Arc::new(snapshot)));
    }

    /// Waits for a newer revision, the wake time, or a retry. False when no reader is left.
    async fn wait(&mut self, wake: Wake) -> bool {
        let now = Instant::now();
        let at = wake.at_ms.map(|ms| {
            let delay = u64::try_from(ms.saturating_sub(now_millis())).unwrap_or(0);
            // One extra millisecond: liveness ends exactly at the expiry time.
            now + Duration::from_millis(delay.saturating_add(1))
        });
        let retry = wake.retry_in.map(|d| now + d);
        let deadline = match (at, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Self {
            tx,
            revisions,
            revisions_open,
            built,
            ..
        } = self;
        loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tx.closed() => return false,
                () = timer => return true,
                changed = revisions.changed(), if *revisions_open => {
                    if changed.is_err() {
                        tracing::warn!(
                            "the store stopped announcing revisions; rebuilding on timers only"
                        );
                        *revisions_open = false;
                        continue;
                    }
                    let newest = *revisions.borrow_and_update();
                    if built.is_some_and(|b| newest <= b) {
                        continue;
                    }
                    return true;
                }
            }
        }
    }
}

/// Brings the state up to date (only what changed since its revision, or
/// everything the first time) and compiles it on the blocking pool. On a
/// store error the state is dropped, and the next build reads everything.
async fn build(
    store: &dyn Store,
    state: &mut Option<StoreState>,
    cache: &mut CompileCache,
    options: Arc<CompileOptions>,
) -> Result<Snapshot, SnapshotError> {
    let started = std::time::Instant::now();
    let current = match state.take() {
        Some(mut current) => {
            let before = current.revision;
            refresh(store, &mut current).await?;
            if current.revision < before {
                // The store went back (a restored database, a failover to
                // a stale replica): versions are reused, so neither the
                // state nor the compile cache can be trusted. Read it whole.
                tracing::warn!(
                    from = before,
                    to = current.revision,
                    "store revision went backwards; reloading"
                );
                *cache = CompileCache::default();
                load(store).await?
            } else {
                current
            }
        }
        None => {
            // Read whole again: nothing compiled before may be trusted
            // (versions may have gone back with a restored database).
            *cache = CompileCache::default();
            load(store).await?
        }
    };
    let loaded = started.elapsed();
    let now = now_millis();
    let mut reuse = std::mem::take(cache);
    let (mut current, reuse, snapshot, compiled) = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let snapshot = compile_with(&current, now, &options, &mut reuse);
        (current, reuse, snapshot, started.elapsed())
    })
    .await
    .map_err(|e| SnapshotError::Compiler(e.to_string()))?;
    let (visited, recompiled) = reuse.looked_at();
    metrics::counter!("gns_snapshot_services_visited_total").increment(visited as u64);
    metrics::counter!("gns_snapshot_services_compiled_total").increment(recompiled as u64);
    // The cache now holds this state's outputs: the next compile needs
    // to look only at what the next changes touch.
    current.compiled();
    *state = Some(current);
    *cache = reuse;
    tracing::debug!(
        version = snapshot.version,
        load_ms = loaded.as_millis() as u64,
        compile_ms = compiled.as_millis() as u64,
        visited,
        recompiled,
        total_ms = started.elapsed().as_millis() as u64,
        "snapshot built"
    );
    Ok(snapshot)
}

/// Records each withdrawal (of an unreachable cluster past its stale-endpoint
/// policy) by merging `withdrawnAtMillis` into its status, conditional on
/// the version the compiler saw; a cluster that changed meanwhile (an edit,
/// a status transition, a delete) is skipped, its change already makes a new
/// revision. (External workloads lapse through `crate::liveness`.)
async fn record_expiries(
    store: &dyn Store,
    expiries: &[UnrecordedExpiry],
) -> Result<(), StoreError> {
    for expiry in expiries {
        let change = crate::model::ClusterChange::Withdrawn {
            at_millis: expiry.expired_at_ms,
        };
        match crate::liveness::cluster::record(
            store,
            &expiry.key.name,
            &change,
            Some(expiry.resource_version),
            EXPIRY_ACTOR,
        )
        .await
        {
            Ok((object, _)) => tracing::info!(
                object = %expiry.key,
                revision = object.resource_version,
                "unreachable cluster withdrawn from DNS"
            ),
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
