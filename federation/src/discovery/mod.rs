//! Discovery sync: keeps the catalog in the store equal to what member
//! clusters run. The manager follows the store (clusters, their credentials,
//! global namespace members) and runs one [`cluster::run`] task per member
//! cluster, restarting it when the cluster's spec, credentials or selected
//! namespaces change, and stopping it (removing its catalog entries) when the
//! cluster leaves every global namespace.

pub mod client;
pub mod cluster;
pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::model::{Cluster, ClusterCredentials, GlobalNamespace, Kind};
use crate::store::{BatchOp, ObjectKey, PageRequest, Store, StoreError};
use model::Member;

/// What a cluster task was started from; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    spec: Value,
    secret: Option<Vec<u8>>,
    members: Vec<Member>,
}

struct Running {
    fingerprint: Fingerprint,
    task: tokio::task::JoinHandle<()>,
}

async fn desired(
    store: &dyn Store,
) -> Result<(BTreeMap<String, Fingerprint>, Vec<String>), StoreError> {
    let all = PageRequest::default();
    let mut members: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    let mut gns_names = Vec::new();
    for object in store.list(Kind::GlobalNamespace, "", &all).await?.items {
        gns_names.push(object.key.name.clone());
        let Ok(gns) = serde_json::from_value::<GlobalNamespace>(object.spec) else {
            continue;
        };
        for m in gns.members {
            members
                .entry(m.cluster.to_string())
                .or_default()
                .push(Member {
                    gns: gns.name.to_string(),
                    namespace: m.namespace.to_string(),
                    selector: m.selector,
                });
        }
    }
    let mut out = BTreeMap::new();
    for object in store.list(Kind::Cluster, "", &all).await?.items {
        let Some(mut m) = members.remove(&object.key.name) else {
            continue;
        };
        m.sort();
        let secret = store.secret(&object.key).await?;
        out.insert(
            object.key.name.clone(),
            Fingerprint {
                spec: object.spec,
                secret,
                members: m,
            },
        );
    }
    Ok((out, gns_names))
}

fn start(
    name: &str,
    fp: &Fingerprint,
    all_gns: Vec<String>,
    store: &Arc<dyn Store>,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_owned();
    let fp = fp.clone();
    let store = Arc::clone(store);
    tokio::spawn(async move {
        let cluster: Cluster = match serde_json::from_value(fp.spec.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(cluster = name, error = %e, "stored cluster does not parse; not syncing it");
                return;
            }
        };
        let credentials: ClusterCredentials = fp
            .secret
            .as_deref()
            .and_then(|s| serde_json::from_slice(s).ok())
            .unwrap_or_default();
        match client::client(&cluster, &credentials) {
            Ok(kube) => cluster::run(name, kube, fp.members, all_gns, store).await,
            Err(e) => {
                let status = serde_json::json!({"phase": "Unreachable", "message": e.to_string(), "lastSync": null});
                let key = ObjectKey::global(Kind::Cluster, name.clone());
                if let Err(e) = store
                    .set_status(&key, status, cluster::ACTOR, "status")
                    .await
                {
                    tracing::warn!(cluster = name, error = %e, "cannot write cluster status");
                }
            }
        }
    })
}

/// Removes every catalog object of `cluster`.
async fn withdraw(store: &dyn Store, cluster: &str, all_gns: &[String]) {
    let suffix = format!(".{cluster}");
    let mut ops = Vec::new();
    for gns in all_gns {
        if let Ok(page) = store
            .list(Kind::Service, gns, &PageRequest::default())
            .await
        {
            ops.extend(
                page.items
                    .into_iter()
                    .filter(|o| o.key.name.ends_with(&suffix))
                    .map(|o| BatchOp::Delete(o.key)),
            );
        }
    }
    if let Err(e) = store.write_batch(ops, cluster::ACTOR).await {
        tracing::warn!(cluster, error = %e, "cannot remove the catalog entries of a stopped cluster");
    }
}

/// Runs discovery until aborted.
pub async fn run(store: Arc<dyn Store>) {
    let mut revisions = store.subscribe();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        match desired(store.as_ref()).await {
            Ok((wanted, all_gns)) => {
                let stopped: Vec<String> = running
                    .keys()
                    .filter(|k| !wanted.contains_key(*k))
                    .cloned()
                    .collect();
                for name in stopped {
                    if let Some(r) = running.remove(&name) {
                        r.task.abort();
                        tracing::info!(cluster = name, "stopped syncing");
                        withdraw(store.as_ref(), &name, &all_gns).await;
                    }
                }
                for (name, fp) in wanted {
                    let restart = running
                        .get(&name)
                        .is_none_or(|r| r.fingerprint != fp || r.task.is_finished());
                    if restart {
                        if let Some(old) = running.remove(&name) {
                            old.task.abort();
                        }
                        tracing::info!(cluster = name, "starting sync");
                        let task = start(&name, &fp, all_gns.clone(), &store);
                        running.insert(
                            name,
                            Running {
                                fingerprint: fp,
                                task,
                            },
                        );
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "discovery cannot read the store; retrying"),
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        // Let bursts of writes settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts discovery in the background.
pub fn spawn(store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store))
}
