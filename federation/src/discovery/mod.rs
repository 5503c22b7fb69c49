//! Discovery sync: keeps the catalog in the store equal to what member
//! clusters run. The manager follows the store (clusters, their credentials,
//! global namespace members) and runs one [`cluster::run`] task per member
//! cluster, restarting it when the cluster's spec, credentials or selected
//! namespaces change, and stopping it (removing its catalog entries) when the
//! cluster leaves every global namespace. A cluster with a
//! `gatewayDeployment` also gets its gateway installed ([`crate::rollout`])
//! by the replica holding its lease, and removed when it leaves.

pub mod client;
pub mod cluster;
mod health;
pub mod model;
pub mod review;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::model::{Cluster, ClusterCredentials, GlobalNamespace, Kind};
use crate::store::{BatchOp, PageRequest, Store, StoreError};
use model::Member;

/// What a cluster task was started from; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    spec: Value,
    secret: Option<Vec<u8>>,
    members: Vec<Member>,
    /// Domains of the global namespaces the cluster is a member of.
    domains: Vec<String>,
    /// The pod label keys the catalog keeps: `version`, `env` and every key
    /// a routing rule's destination names in its `tags`.
    label_keys: model::LabelKeys,
}

/// What discovery needs to know about the federation itself.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// URL deployed gateways follow (`--advertise-url`).
    pub federation_url: String,
    /// `ip:port` of the federation's DNS, for the CoreDNS forwarding blocks.
    pub dns_address: String,
    /// The roots deployed gateways verify the federation with.
    pub federation_ca: crate::tls::ClientRoots,
    /// Published snapshots (deployed gateways' egress Services follow the
    /// config's TCP ports).
    pub snapshots: crate::snapshot::SnapshotReceiver,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            federation_url: String::new(),
            dns_address: String::new(),
            federation_ca: crate::tls::ClientRoots::default(),
            // No snapshots: deployed egress Services carry HTTP only.
            snapshots: tokio::sync::watch::channel(None).1,
        }
    }
}

struct Running {
    fingerprint: Fingerprint,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    /// A cluster's sync (and its lease) never outlives the manager that started it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn desired(
    store: &dyn Store,
) -> Result<(BTreeMap<String, Fingerprint>, Vec<String>), StoreError> {
    let all = PageRequest::default();
    let mut members: BTreeMap<String, Vec<Member>> = BTreeMap::new();
    let mut domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut gns_names = Vec::new();
    for object in store.list(Kind::GlobalNamespace, "", &all).await?.items {
        gns_names.push(object.key.name.clone());
        let Ok(gns) = serde_json::from_value::<GlobalNamespace>(object.spec) else {
            continue;
        };
        for m in gns.members {
            let cluster_domains = domains.entry(m.cluster.to_string()).or_default();
            if !cluster_domains.contains(&gns.domain.to_string()) {
                cluster_domains.push(gns.domain.to_string());
            }
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
    // Label keys routing rules select endpoints by, besides version and env.
    let mut named: BTreeSet<String> = BTreeSet::new();
    for gns in &gns_names {
        for object in store.list(Kind::Routing, gns, &all).await?.items {
            let Ok(routing) = serde_json::from_value::<crate::model::Routing>(object.spec) else {
                continue;
            };
            for rule in &routing.rules {
                for destination in &rule.destinations {
                    named.extend(destination.tags.keys().cloned());
                }
            }
        }
    }
    let label_keys = model::label_keys(named.iter().map(String::as_str));
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
                domains: domains.remove(&object.key.name).unwrap_or_default(),
                label_keys: std::sync::Arc::clone(&label_keys),
            },
        );
    }
    Ok((out, gns_names))
}

/// How often a replica without a cluster's lease tries to take it over, and
/// how often the holder checks it still has it.
pub const LEASE_RETRY: Duration = Duration::from_secs(1);

/// `gns_discovery_lease_held{cluster}` is 1 while this value lives: set
/// when this replica takes a cluster's sync lease, back to 0 when the sync
/// ends, whether it returns, loses the lease or is aborted.
struct HeldGauge(metrics::Gauge);

impl HeldGauge {
    fn set(cluster: &str) -> Self {
        let gauge = metrics::gauge!("gns_discovery_lease_held", "cluster" => cluster.to_owned());
        gauge.set(1.0);
        Self(gauge)
    }
}

impl Drop for HeldGauge {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

fn start(
    name: &str,
    fp: &Fingerprint,
    all_gns: Vec<String>,
    store: &Arc<dyn Store>,
    options: &DiscoveryOptions,
) -> tokio::task::JoinHandle<()> {
    let name = name.to_owned();
    let fp = fp.clone();
    let store = Arc::clone(store);
    let options = options.clone();
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
        loop {
            // Exactly one replica syncs a cluster: the one holding its lease.
            let attempt = store.try_lease(&format!("sync/{name}")).await;
            let outcome = match &attempt {
                Ok(Some(_)) => "taken",
                Ok(None) => "held_elsewhere",
                Err(_) => "error",
            };
            metrics::counter!("gns_discovery_lease_attempts_total", "cluster" => name.clone(), "outcome" => outcome)
                .increment(1);
            let lease = match attempt {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tokio::time::sleep(LEASE_RETRY).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(cluster = name, error = %e, "cannot take the sync lease; retrying");
                    tokio::time::sleep(LEASE_RETRY).await;
                    continue;
                }
            };
            tracing::info!(cluster = name, "holding the sync lease");
            let _held = HeldGauge::set(&name);
            let sync = async {
                match client::client(&cluster, &credentials) {
                    Ok(kube) => {
                        let (gateway_tx, gateway_rx) = tokio::sync::watch::channel(None);
                        let sync = cluster::run(
                            name.clone(),
                            kube.clone(),
                            fp.members.clone(),
                            all_gns.clone(),
                            std::sync::Arc::clone(&fp.label_keys),
                            Arc::clone(&store),
                            gateway_rx,
                        );
                        match &cluster.gateway_deployment {
                            Some(spec) => {
                                let rollout = crate::rollout::Rollout {
                                    params: crate::rollout::GatewayParams {
                                        cluster: name.clone(),
                                        spec: spec.clone(),
                                        federation_url: spec
                                            .federation_url
                                            .clone()
                                            .unwrap_or_else(|| options.federation_url.clone()),
                                        dns_address: options.dns_address.clone(),
                                        federation_ca: options.federation_ca.pem(),
                                        domains: fp.domains.clone(),
                                        egress_ports: crate::rollout::config_egress_ports(
                                            &options.snapshots,
                                        ),
                                    },
                                    client: kube,
                                    roots: options.federation_ca.clone(),
                                    snapshots: options.snapshots.clone(),
                                };
                                tokio::join!(sync, crate::rollout::run(rollout, gateway_tx));
                            }
                            None => sync.await,
                        }
                    }
                    Err(e) => {
                        let change = crate::model::ClusterChange::Failed {
                            message: e.to_string(),
                            at_millis: crate::api::now_millis(),
                        };
                        if let Err(e) = crate::liveness::cluster::record(
                            store.as_ref(),
                            &name,
                            &change,
                            None,
                            cluster::ACTOR,
                        )
                        .await
                        {
                            tracing::warn!(cluster = name, error = %e, "cannot write cluster status");
                        }
                        std::future::pending::<()>().await;
                    }
                }
            };
            let watch_lease = async {
                loop {
                    tokio::time::sleep(LEASE_RETRY).await;
                    if !lease.is_held().await {
                        return;
                    }
                }
            };
            tokio::select! {
                () = sync => return,
                () = watch_lease => tracing::warn!(cluster = name, "lost the sync lease; stopping and retrying"),
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

/// Removes the gateway the federation deployed into a cluster that it stopped
/// syncing (left every global namespace, or its `gatewayDeployment` was
/// removed), with the credentials it was last synced with.
fn remove_gateway(name: &str, fp: &Fingerprint) {
    let Ok(cluster) = serde_json::from_value::<Cluster>(fp.spec.clone()) else {
        return;
    };
    if cluster.gateway_deployment.is_none() {
        return;
    }
    let credentials: ClusterCredentials = fp
        .secret
        .as_deref()
        .and_then(|s| serde_json::from_slice(s).ok())
        .unwrap_or_default();
    let name = name.to_owned();
    tokio::spawn(async move {
        let kube = match client::client(&cluster, &credentials) {
            Ok(kube) => kube,
            Err(e) => {
                tracing::warn!(cluster = name, error = %e, "cannot remove the gateway");
                return;
            }
        };
        for attempt in 0..5u32 {
            match crate::rollout::remove(&kube).await {
                Ok(count) => {
                    tracing::info!(cluster = name, objects = count, "gateway removed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(cluster = name, attempt, error = %e, "gateway removal failed");
                    tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
                }
            }
        }
    });
}

/// Runs discovery until aborted.
pub async fn run(store: Arc<dyn Store>) {
    run_with(store, DiscoveryOptions::default()).await;
}

/// Runs discovery (and gateway rollouts) until aborted.
pub async fn run_with(store: Arc<dyn Store>, options: DiscoveryOptions) {
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
                        remove_gateway(&name, &r.fingerprint);
                        drop(r);
                        tracing::info!(cluster = name, "stopped syncing");
                        withdraw(store.as_ref(), &name, &all_gns).await;
                    }
                }
                for (name, fp) in wanted {
                    let restart = running
                        .get(&name)
                        .is_none_or(|r| r.fingerprint != fp || r.task.is_finished());
                    if restart {
                        let why = match running.get(&name) {
                            None => "new",
                            Some(r) if r.task.is_finished() => "the last sync ended",
                            Some(r) if r.fingerprint.secret != fp.secret => "credentials changed",
                            Some(r) if r.fingerprint.spec != fp.spec => "spec changed",
                            Some(r) if r.fingerprint.label_keys != fp.label_keys => {
                                "routing names other label keys"
                            }
                            Some(_) => "membership changed",
                        };
                        if let Some(previous) = running.remove(&name) {
                            let deployed = |spec: &Value| spec.get("gatewayDeployment").is_some();
                            if deployed(&previous.fingerprint.spec) && !deployed(&fp.spec) {
                                remove_gateway(&name, &previous.fingerprint);
                            }
                        }
                        tracing::info!(cluster = name, why, "starting sync");
                        let task = start(&name, &fp, all_gns.clone(), &store, &options);
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

/// Starts discovery (and gateway rollouts) in the background.
pub fn spawn_with(store: Arc<dyn Store>, options: DiscoveryOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_with(store, options))
}
