//! A member cluster's side of the liveness plane. [`record`] is the one
//! writer of its stored status: a [`ClusterChange`] merged into it, one
//! revision and one audit row naming the transition, or nothing when it
//! changes nothing. Its gateway instances' reports are facts (key: kind
//! `cluster`, scope the cluster, name the instance), not revisions; the
//! deciding replica records when every instance went silent
//! ([`sweep_gateways`]), and the next report records them back
//! ([`reported`]).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{ClusterChange, ClusterStatus, Kind};
use crate::store::{Liveness, ObjectKey, Store, StoreError, StoredObject};

/// How long a silent instance stays listed once another instance of its
/// cluster reported after it (a replaced pod).
pub const FORGET_REPLACED: i64 = 3_600_000;

/// Merges `change` into the stored status of cluster `name`, conditional on
/// `expected` if given; the object as it is now, and whether it changed.
pub async fn record(
    store: &dyn Store,
    name: &str,
    change: &ClusterChange,
    expected: Option<u64>,
    actor: &str,
) -> Result<(StoredObject, bool), StoreError> {
    let key = ObjectKey::global(Kind::Cluster, name.to_owned());
    store
        .merge_status(&key, change.patch(), expected, actor, change.action())
        .await
}

/// The key of the facts of `instance` of `cluster`'s gateway.
pub fn instance_key(cluster: &str, instance: &str) -> ObjectKey {
    ObjectKey::scoped(Kind::Cluster, cluster, instance)
}

/// Whether a fact is one of a gateway instance's (a cluster's own facts
/// have no scope).
fn is_instance(fact: &Liveness) -> bool {
    fact.key.kind == Kind::Cluster && !fact.key.scope.is_empty()
}

/// The fact of a report `data` of `instance` of `cluster`, at `now_ms`,
/// lapsing after `timeout_ms` without another.
pub fn instance_report(
    cluster: &str,
    instance: &str,
    data: Value,
    now_ms: i64,
    timeout_ms: i64,
) -> Liveness {
    Liveness {
        key: instance_key(cluster, instance),
        beat_ms: now_ms,
        expires_ms: now_ms.saturating_add(timeout_ms),
        data,
    }
}

/// After a report of one of `cluster`'s instances: records the gateways
/// back if the store records them silent.
pub async fn reported(store: &dyn Store, cluster: &StoredObject) -> Result<(), StoreError> {
    if !ClusterStatus::of(&cluster.status).gateways_silent() {
        return Ok(());
    }
    let (object, changed) = record(
        store,
        &cluster.key.name,
        &ClusterChange::GatewaysBack,
        None,
        super::ACTOR,
    )
    .await?;
    if changed {
        tracing::info!(cluster = %object.key.name, revision = object.resource_version, "a gateway of the cluster reports again");
    }
    Ok(())
}

/// Records every cluster whose gateway instances all stopped reporting
/// (the last report older than `timeout_ms` at `now_ms`) as silent, once.
///
/// A lapsed fact (its expiry set by the replica that took the report, with
/// that replica's timeout) is settled only once this replica judges its
/// instance silent too, so replicas with different timeouts cannot leave a
/// cluster unjudged. After recording a silence it looks at the instances
/// again: a report that came meanwhile, from any instance, records the
/// gateways back at once.
pub async fn sweep_gateways(
    store: &dyn Store,
    now_ms: i64,
    timeout_ms: i64,
) -> Result<(), StoreError> {
    let mut lapsed: BTreeMap<String, Vec<Liveness>> = BTreeMap::new();
    for fact in store.lapsed(Kind::Cluster, now_ms).await? {
        if is_instance(&fact) {
            lapsed.entry(fact.key.scope.clone()).or_default().push(fact);
        }
    }
    for (cluster, facts) in lapsed {
        let key = ObjectKey::global(Kind::Cluster, cluster.clone());
        let Some(object) = store.get(&key).await? else {
            for fact in &facts {
                store.forget_liveness(&fact.key).await?;
            }
            continue;
        };
        let last = last_report(store, &cluster).await?;
        if last.saturating_add(timeout_ms) <= now_ms
            && !ClusterStatus::of(&object.status).gateways_silent()
        {
            let change = ClusterChange::GatewaysSilent {
                since_millis: last.saturating_add(timeout_ms),
            };
            match record(
                store,
                &cluster,
                &change,
                Some(object.resource_version),
                super::ACTOR,
            )
            .await
            {
                Ok((object, _)) => {
                    tracing::warn!(
                        cluster,
                        revision = object.resource_version,
                        "every gateway of the cluster is silent: out of the external view and its peers' destinations"
                    );
                    if last_report(store, &cluster).await? > last {
                        // A report came while the silence was being recorded.
                        reported(store, &object).await?;
                    }
                }
                // Changed meanwhile: judged again by the next sweep.
                Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        for fact in &facts {
            if fact.beat_ms.saturating_add(timeout_ms) <= now_ms {
                // A report after `beat_ms` keeps the fact open (not settled).
                store.settle_lapse(&fact.key, fact.beat_ms).await?;
            }
        }
    }
    Ok(())
}

/// When any instance of `cluster`'s gateway last reported (0: never).
async fn last_report(store: &dyn Store, cluster: &str) -> Result<i64, StoreError> {
    Ok(store
        .liveness(Kind::Cluster, Some(cluster), None)
        .await?
        .iter()
        .map(|f| f.beat_ms)
        .max()
        .unwrap_or(0))
}

/// Forgets instances silent for longer than [`FORGET_REPLACED`] when another
/// instance of their cluster reported since (each cluster keeps its last
/// instance, so "reported before" is remembered); how many.
pub async fn prune_instances(store: &dyn Store, now_ms: i64) -> Result<usize, StoreError> {
    let mut by_cluster: BTreeMap<String, Vec<Liveness>> = BTreeMap::new();
    for fact in store.liveness(Kind::Cluster, None, None).await? {
        if is_instance(&fact) {
            by_cluster
                .entry(fact.key.scope.clone())
                .or_default()
                .push(fact);
        }
    }
    let mut pruned = 0;
    for facts in by_cluster.values() {
        let last = facts.iter().map(|f| f.beat_ms).max().unwrap_or(0);
        for fact in facts {
            if fact.beat_ms < last && fact.beat_ms < now_ms.saturating_sub(FORGET_REPLACED) {
                store.forget_liveness(&fact.key).await?;
                pruned += 1;
            }
        }
    }
    Ok(pruned)
}

/// How a cluster's gateway instances stand, as shown in its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayHealth {
    /// No instance ever reported: left as it is.
    NeverReported,
    /// At least one instance reported within the timeout.
    Reporting,
    /// Every instance is silent.
    Silent,
}

impl GatewayHealth {
    /// The status value.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayHealth::NeverReported => "NeverReported",
            GatewayHealth::Reporting => "Reporting",
            GatewayHealth::Silent => "Silent",
        }
    }
}

/// One instance as the cluster's status shows it; with its last traffic
/// when `traffic`.
pub fn instance_view(fact: &Liveness, now_ms: i64, timeout_ms: i64, traffic: bool) -> Value {
    let field = |name: &str| fact.data.get(name).cloned().unwrap_or(Value::Null);
    let mut view = json!({
        "instance": fact.key.name,
        "version": field("version"),
        "configVersion": field("configVersion"),
        "lastSeen": crate::api::rfc3339(fact.beat_ms),
        "certificateExpiresAt": field("certificateExpiresAt"),
        "silent": fact.beat_ms.saturating_add(timeout_ms) <= now_ms,
    });
    if traffic {
        view["intervalMillis"] = field("intervalMillis");
        view["traffic"] = fact.data.get("traffic").cloned().unwrap_or(json!([]));
    }
    view
}

/// The health of a cluster whose instances' facts are `facts`.
pub fn health(facts: &[&Liveness], now_ms: i64, timeout_ms: i64) -> GatewayHealth {
    match facts.iter().map(|f| f.beat_ms).max() {
        None => GatewayHealth::NeverReported,
        Some(last) if last.saturating_add(timeout_ms) > now_ms => GatewayHealth::Reporting,
        Some(_) => GatewayHealth::Silent,
    }
}
