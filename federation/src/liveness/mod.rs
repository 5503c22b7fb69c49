//! The liveness plane: what says something is alive (an external
//! workload's heartbeats, a member cluster's sync reports) is kept apart
//! from the store of intent, as [`Liveness`] facts: not revisioned, not
//! audited, written in batches ([`BeatWriter`]). Only a **transition** of
//! effective state writes a revision, once, with an audit row naming it
//! (actor [`ACTOR`]): a workload whose last beat lapsed is `expired`
//! (`expiredAtMillis` in its status), and `alive` again on its next beat.
//! The snapshot compiler reads only the recorded state, so beats change no
//! output.
//!
//! A member cluster's gateway instances report the same way ([`cluster`]):
//! when every one of them went silent, the cluster's status records it
//! (`gatewaysSilentSinceMillis`), and the next report records them back.
//!
//! One replica decides lapses (the [`spawn`]ed sweeper holds the store
//! lease `liveness`, as discovery holds one per cluster); any replica that
//! takes a beat of an expired workload (or a report of a silent cluster's
//! gateway) records it alive. Both transitions are conditional writes, so
//! each is written once.

mod batch;
pub mod cluster;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

pub use batch::BeatWriter;

use crate::model::{ExternalWorkload, Kind};
use crate::store::{Liveness, NO_EXPIRY, ObjectKey, PageRequest, Store, StoreError, StoredObject};

/// Audit actor of transitions.
pub const ACTOR: &str = "system:liveness";
/// How often the deciding replica looks for lapsed beats.
const SWEEP: Duration = Duration::from_millis(250);
/// How often it gives workloads without a fact one (a crash that lost
/// beats, a workload created while the fact's write failed).
const BACKFILL: Duration = Duration::from_secs(30);
/// How often a replica without the lease tries to take it.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// Unix milliseconds now.
fn now_millis() -> i64 {
    crate::api::now_millis()
}

/// True if the store records `status`'s workload as expired.
pub fn workload_expired(status: &Value) -> bool {
    status.get("expiredAtMillis").is_some()
}

/// A workload's TTL in milliseconds, from its stored spec.
fn ttl_ms(object: &StoredObject) -> Option<i64> {
    let workload: ExternalWorkload = serde_json::from_value(object.spec.clone()).ok()?;
    Some(i64::try_from(workload.ttl.get().as_millis()).unwrap_or(i64::MAX))
}

/// The fact of a beat of `object` (an external workload) at `now_ms`.
pub fn workload_beat(object: &StoredObject, now_ms: i64) -> Liveness {
    let ttl = ttl_ms(object).unwrap_or(0);
    Liveness {
        key: object.key.clone(),
        beat_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl),
        data: json!({}),
    }
}

/// Records `key` (an external workload) alive again: a transition, written
/// only if the store records it expired. Returns the object as it is now.
pub async fn mark_alive(store: &dyn Store, key: &ObjectKey) -> Result<StoredObject, StoreError> {
    let mut patch = Map::new();
    patch.insert("expiredAtMillis".into(), Value::Null);
    let (object, changed) = store.merge_status(key, patch, None, ACTOR, "alive").await?;
    if changed {
        tracing::info!(object = %key, revision = object.resource_version, "external workload alive again");
    }
    Ok(object)
}

/// Starts the deciding side on the current runtime: whichever replica
/// holds the lease `liveness` records lapses as they happen; a cluster's
/// gateways are silent after `gateway_timeout` without a report.
pub fn spawn(store: Arc<dyn Store>, gateway_timeout: Duration) -> JoinHandle<()> {
    let gateway_timeout_ms = i64::try_from(gateway_timeout.as_millis()).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        loop {
            let lease = match store.try_lease("liveness").await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tokio::time::sleep(LEASE_RETRY).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the liveness lease; retrying");
                    tokio::time::sleep(LEASE_RETRY).await;
                    continue;
                }
            };
            tracing::info!("deciding liveness transitions (holding the liveness lease)");
            let mut last_backfill: Option<tokio::time::Instant> = None;
            let mut last_lease_check = tokio::time::Instant::now();
            loop {
                if last_backfill.is_none_or(|t| t.elapsed() >= BACKFILL) {
                    match backfill(store.as_ref(), now_millis()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            workloads = n,
                            "gave workloads without a liveness fact one"
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot backfill liveness facts"),
                    }
                    match cluster::prune_instances(store.as_ref(), now_millis()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(instances = n, "forgot replaced gateway instances"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot forget replaced gateway instances")
                        }
                    }
                    last_backfill = Some(tokio::time::Instant::now());
                }
                if let Err(e) = sweep(store.as_ref(), now_millis()).await {
                    tracing::warn!(error = %e, "cannot decide liveness transitions; retrying");
                }
                if let Err(e) =
                    cluster::sweep_gateways(store.as_ref(), now_millis(), gateway_timeout_ms).await
                {
                    tracing::warn!(error = %e, "cannot decide gateway liveness; retrying");
                }
                tokio::time::sleep(SWEEP).await;
                if last_lease_check.elapsed() >= LEASE_RETRY {
                    last_lease_check = tokio::time::Instant::now();
                    if !lease.is_held().await {
                        tracing::warn!("lost the liveness lease");
                        break;
                    }
                }
            }
        }
    })
}

/// Records every workload whose beat lapsed by `now_ms` as expired (once).
pub async fn sweep(store: &dyn Store, now_ms: i64) -> Result<(), StoreError> {
    for fact in store.lapsed(Kind::ExternalWorkload, now_ms).await? {
        let Some(object) = store.get(&fact.key).await? else {
            store.forget_liveness(&fact.key).await?;
            continue;
        };
        if !workload_expired(&object.status) {
            let mut patch = Map::new();
            patch.insert("expiredAtMillis".into(), json!(fact.expires_ms));
            match store
                .merge_status(
                    &fact.key,
                    patch,
                    Some(object.resource_version),
                    ACTOR,
                    "expired",
                )
                .await
            {
                Ok((expired, _)) => tracing::info!(
                    object = %fact.key,
                    revision = expired.resource_version,
                    "external workload expired"
                ),
                // Changed meanwhile: the next sweep judges it again.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        if !store.settle_lapse(&fact.key, fact.beat_ms).await? {
            // A beat came while it was being recorded expired: alive again.
            mark_alive(store, &fact.key).await?;
        }
    }
    Ok(())
}

/// Gives every external workload without a liveness fact one, from its
/// stored status (last recorded heartbeat, or its last write); how many.
pub async fn backfill(store: &dyn Store, now_ms: i64) -> Result<usize, StoreError> {
    let mut added = Vec::new();
    for gns in all(store, Kind::GlobalNamespace, "").await? {
        let known: std::collections::HashSet<String> = store
            .liveness(Kind::ExternalWorkload, Some(&gns.key.name), None)
            .await?
            .into_iter()
            .map(|f| f.key.name)
            .collect();
        for workload in all(store, Kind::ExternalWorkload, &gns.key.name).await? {
            if known.contains(&workload.key.name) {
                continue;
            }
            let beat = workload
                .status
                .get("lastHeartbeatMillis")
                .and_then(Value::as_i64)
                .unwrap_or(workload.updated_at)
                .min(now_ms);
            let mut fact = workload_beat(&workload, beat);
            if workload_expired(&workload.status) {
                fact.expires_ms = NO_EXPIRY;
            }
            added.push(fact);
        }
    }
    store.record_liveness(&added).await?;
    Ok(added.len())
}

/// Every object of `kind` in `scope`, page by page.
async fn all(store: &dyn Store, kind: Kind, scope: &str) -> Result<Vec<StoredObject>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                kind,
                scope,
                &PageRequest {
                    limit: Some(500),
                    after,
                },
            )
            .await?;
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}
