//! The snapshot compiler: store state in, one immutable, versioned
//! [`Snapshot`] out, from which the data planes are served.
//!
//! This module owns the path from the store to published snapshots:
//! - [`StoreState`] and [`load`]: everything the compiler reads, fetched from the store;
//! - [`compile`]: a pure function (no I/O, no clock) from a [`StoreState`] and a
//!   time to a [`Snapshot`]; objects that can't compile are reported as
//!   [`Problem`]s and left out, the rest still compiles;
//! - [`spawn_builder`]: the task that rebuilds on every store revision (and when
//!   an external workload expires), off the async hot path, and publishes each
//!   snapshot atomically on a `tokio::sync::watch` channel.
//!
//! The snapshot's `version` is the store revision it was compiled from, which
//! is also the SOA serial of every zone and what config watchers poll by.

mod builder;
mod cache;
mod compile;
pub mod reach;
mod zone;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use gns_dns::ZoneSnapshot;
use gns_dns::snapshot::{DEFAULT_ANSWER_TTL, Nameserver};
use serde::Serialize;
use tokio::sync::watch;

pub use builder::spawn_builder;
pub use cache::CompileCache;
pub use compile::{compile, compile_with};

use crate::model::Kind;
pub use crate::store::ServiceObject;
use crate::store::{Changes, ObjectKey, Store, StoreError, StoredObject};

/// Errors of building a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The compiler task failed (a bug: it panicked).
    #[error("snapshot compiler failed: {0}")]
    Compiler(String),
    /// The zone snapshot could not be encoded as JSON.
    #[error("cannot encode the zone snapshot: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Settings of the compiler that do not come from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// TTL of answers that can change, seconds; clamped to
    /// 1..=[`gns_dns::snapshot::MAX_ANSWER_TTL`].
    pub answer_ttl: u32,
    /// SPIFFE trust domain written into gateway configs.
    pub trust_domain: String,
    /// Glue addresses of each zone's default name server `ns1.<origin>`
    /// (the DNS listen address). Unspecified addresses (`0.0.0.0`, `::`) are
    /// left out; may be empty.
    pub nameserver_addresses: Vec<IpAddr>,
    /// Further name servers of every zone (e.g. secondaries), absolute names
    /// with optional glue, listed after `ns1.<origin>`.
    pub extra_nameservers: Vec<Nameserver>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            answer_ttl: DEFAULT_ANSWER_TTL,
            trust_domain: "gns.local".to_owned(),
            nameserver_addresses: Vec::new(),
            extra_nameservers: Vec::new(),
        }
    }
}

/// An object that could not be compiled; it was left out of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Kind of the object.
    pub kind: Kind,
    /// Its global namespace, or `""` for clusters and global namespaces.
    pub scope: String,
    /// Its name.
    pub name: String,
    /// What is wrong, for an operator.
    pub message: String,
}

impl Problem {
    fn new(key: &ObjectKey, message: impl Into<String>) -> Self {
        Self {
            kind: key.kind,
            scope: key.scope.clone(),
            name: key.name.clone(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = ObjectKey {
            kind: self.kind,
            scope: self.scope.clone(),
            name: self.name.clone(),
        };
        write!(f, "{key}: {}", self.message)
    }
}

/// An unreachable cluster whose stale endpoints were withdrawn without the
/// store recording it: its last write is older than that time. The builder
/// records it (a conditional status merge: `withdrawnAtMillis`), so that the snapshot
/// without it gets a new version instead of changing the content of an old
/// one, and DNS replicas following by version see it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnrecordedExpiry {
    /// The cluster.
    pub key: ObjectKey,
    /// Its resource version; the recording write is conditional on it.
    pub resource_version: u64,
    /// When it expired, Unix milliseconds.
    pub expired_at_ms: i64,
}

/// One compiled, immutable snapshot of the federation.
#[derive(Clone)]
pub struct Snapshot {
    /// Store revision it was compiled from.
    pub version: u64,
    /// What the DNS servers serve.
    pub dns: Arc<ZoneSnapshot>,
    /// Objects left out, sorted.
    pub problems: Vec<Problem>,
    /// Earliest time (Unix milliseconds) the answers change without a store
    /// write: when the next unreachable cluster's endpoints are withdrawn.
    pub next_change_ms: Option<i64>,
    /// Withdrawals the store has not recorded yet.
    pub unrecorded_expiries: Vec<UnrecordedExpiry>,
    /// What gateways serve (one config for every cluster's gateway).
    pub gateways: Arc<gns_contract::config::GatewayConfig>,
    dns_json: OnceLock<Bytes>,
    gateways_json: OnceLock<Bytes>,
}

impl Snapshot {
    /// A snapshot from its parts.
    pub fn new(
        version: u64,
        dns: ZoneSnapshot,
        problems: Vec<Problem>,
        next_change_ms: Option<i64>,
        unrecorded_expiries: Vec<UnrecordedExpiry>,
    ) -> Self {
        Self {
            version,
            dns: Arc::new(dns),
            problems,
            next_change_ms,
            unrecorded_expiries,
            gateways: Arc::default(),
            dns_json: OnceLock::new(),
            gateways_json: OnceLock::new(),
        }
    }

    /// The same snapshot with `gateways` as its gateway config.
    pub fn with_gateways(mut self, gateways: gns_contract::config::GatewayConfig) -> Self {
        self.gateways = Arc::new(gateways);
        self
    }

    /// Carries the versions of what did not change over from `previous` (the
    /// snapshot published before): each zone keeps the serial at which its
    /// answers last changed, and the DNS snapshot and the gateway config keep
    /// the version at which they last changed. So a write that changes one
    /// zone moves that zone's SOA serial only, and one that changes no
    /// output (a status, a problem) moves no version that data planes follow.
    pub fn carry_versions(&mut self, previous: &Snapshot) {
        let version = self.version;
        let before = previous.dns.as_ref();
        let dns = Arc::make_mut(&mut self.dns);
        let same_frame = dns.views == before.views && dns.answer_ttl == before.answer_ttl;
        let old: std::collections::HashMap<&str, &gns_dns::snapshot::Zone> = before
            .zones
            .iter()
            .map(|z| (z.origin.as_str(), z))
            .collect();
        let mut all_kept = same_frame && dns.zones.len() == before.zones.len();
        for zone in &mut dns.zones {
            zone.serial = match old.get(zone.origin.as_str()) {
                Some(o)
                    if same_frame
                        && o.nameservers == zone.nameservers
                        && o.txt == zone.txt
                        && o.services == zone.services =>
                {
                    if o.serial > 0 {
                        o.serial
                    } else {
                        before.version
                    }
                }
                _ => {
                    all_kept = false;
                    version
                }
            };
        }
        dns.version = if all_kept { before.version } else { version };
        let gateways = Arc::make_mut(&mut self.gateways);
        gateways.version = previous.gateways.version;
        if *gateways != *previous.gateways {
            gateways.version = version;
        }
    }

    /// The gateway config as JSON (what `GET /v1/config/gateways/{cluster}` answers), encoded once.
    pub fn gateways_json(&self) -> Result<Bytes, SnapshotError> {
        if let Some(bytes) = self.gateways_json.get() {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(serde_json::to_vec(self.gateways.as_ref())?);
        Ok(self.gateways_json.get_or_init(|| bytes).clone())
    }

    /// The DNS part as JSON (what `GET /v1/config/dns` answers), encoded once.
    pub fn dns_json(&self) -> Result<Bytes, SnapshotError> {
        if let Some(bytes) = self.dns_json.get() {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(serde_json::to_vec(self.dns.as_ref())?);
        Ok(self.dns_json.get_or_init(|| bytes).clone())
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.dns == other.dns
            && self.gateways == other.gateways
            && self.problems == other.problems
            && self.next_change_ms == other.next_change_ms
            && self.unrecorded_expiries == other.unrecorded_expiries
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("dns", &self.dns)
            .field("problems", &self.problems)
            .field("next_change_ms", &self.next_change_ms)
            .field("unrecorded_expiries", &self.unrecorded_expiries)
            .finish_non_exhaustive()
    }
}

/// The objects inside one global namespace that the compiler reads, each
/// list sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopedObjects {
    /// Routing objects, one per service (the object's name is the service).
    pub routings: Vec<StoredObject>,
    /// External workloads (spec, and `lastHeartbeatMillis` in the status).
    pub external_workloads: Vec<StoredObject>,
    /// Discovered services.
    pub services: Vec<ServiceObject>,
    /// Access policies.
    pub access_policies: Vec<StoredObject>,
}

/// Everything the compiler needs, as read from the store. Specs other than
/// services' are kept as stored, so the compiler can report (rather than
/// fail on) one that no longer parses. Lists are sorted by name.
#[derive(Debug, Clone, Default)]
pub struct StoreState {
    /// Store revision read before anything else, so the snapshot never claims
    /// more than it contains.
    pub revision: u64,
    /// Clusters (spec and status).
    pub clusters: Vec<StoredObject>,
    /// Global namespaces.
    pub global_namespaces: Vec<StoredObject>,
    /// Objects inside each global namespace, by its name.
    pub scoped: BTreeMap<String, ScopedObjects>,
    /// What [`StoreState::apply`] changed since [`StoreState::compiled`]
    /// (everything, until then). Not part of the state's content.
    pub touched: Touched,
}

impl PartialEq for StoreState {
    /// The same content; what was touched since a compile does not count.
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.clusters == other.clusters
            && self.global_namespaces == other.global_namespaces
            && self.scoped == other.scoped
    }
}

/// What the writes applied to a [`StoreState`] since it was last compiled
/// may have changed, so that a compile over the last one's cache compiles
/// only what they name. The default is everything.
#[derive(Debug, Clone)]
pub struct Touched {
    /// Anything may have changed: a state not compiled yet.
    everything: bool,
    /// By global namespace.
    zones: BTreeMap<String, ZoneTouched>,
}

impl Default for Touched {
    fn default() -> Self {
        Self {
            everything: true,
            zones: BTreeMap::new(),
        }
    }
}

/// What was written inside one global namespace.
#[derive(Debug, Clone, Default)]
pub(crate) struct ZoneTouched {
    /// The namespace itself, an access policy or an external workload
    /// (inputs of every service of the zone).
    pub(crate) whole: bool,
    /// Discovered-service objects written or deleted, by object name.
    pub(crate) services: BTreeSet<String>,
    /// Routing objects written or deleted, by name (the service's).
    pub(crate) routings: BTreeSet<String>,
}

/// Nothing written in a zone.
static UNTOUCHED: ZoneTouched = ZoneTouched {
    whole: false,
    services: BTreeSet::new(),
    routings: BTreeSet::new(),
};

impl Touched {
    /// What was written in global namespace `gns`; `None` when anything may have changed.
    pub(crate) fn zone(&self, gns: &str) -> Option<&ZoneTouched> {
        if self.everything {
            return None;
        }
        Some(self.zones.get(gns).unwrap_or(&UNTOUCHED))
    }

    fn key(&mut self, key: &ObjectKey) {
        match key.kind {
            // What the compiler reads of clusters is in every zone's epoch.
            Kind::Cluster => {}
            Kind::GlobalNamespace => self.zones.entry(key.name.clone()).or_default().whole = true,
            Kind::AccessPolicy | Kind::ExternalWorkload => {
                self.zones.entry(key.scope.clone()).or_default().whole = true;
            }
            Kind::Service => {
                let zone = self.zones.entry(key.scope.clone()).or_default();
                zone.services.insert(key.name.clone());
            }
            Kind::Routing => {
                let zone = self.zones.entry(key.scope.clone()).or_default();
                zone.routings.insert(key.name.clone());
            }
        }
    }
}

/// Name of a list element, for the sorted-list helpers.
trait Named {
    fn name(&self) -> &str;
}

impl Named for StoredObject {
    fn name(&self) -> &str {
        &self.key.name
    }
}

impl Named for ServiceObject {
    fn name(&self) -> &str {
        &self.key.name
    }
}

/// Inserts or replaces `item` in a list sorted by name.
fn upsert_sorted<T: Named>(list: &mut Vec<T>, item: T) {
    match list.binary_search_by(|o| o.name().cmp(item.name())) {
        Ok(i) => list[i] = item,
        Err(i) => list.insert(i, item),
    }
}

/// Removes the element named `name` from a list sorted by name.
fn remove_sorted<T: Named>(list: &mut Vec<T>, name: &str) {
    if let Ok(i) = list.binary_search_by(|o| o.name().cmp(name)) {
        list.remove(i);
    }
}

impl StoreState {
    /// Brings the state up to `changes.revision`: deletes first, then the
    /// written objects (an object deleted and created again is among both,
    /// and exists). Kinds the compiler does not read are ignored.
    pub fn apply(&mut self, changes: Changes) {
        if !self.touched.everything {
            let keys = changes
                .deleted
                .iter()
                .chain(changes.changed.iter().map(|o| &o.key))
                .chain(changes.services.iter().map(|o| &o.key));
            for key in keys {
                self.touched.key(key);
            }
        }
        for key in &changes.deleted {
            match key.kind {
                Kind::Cluster => remove_sorted(&mut self.clusters, &key.name),
                Kind::GlobalNamespace => {
                    remove_sorted(&mut self.global_namespaces, &key.name);
                    self.scoped.remove(&key.name);
                }
                Kind::Routing | Kind::ExternalWorkload | Kind::Service | Kind::AccessPolicy => {
                    if let Some(scoped) = self.scoped.get_mut(&key.scope) {
                        match key.kind {
                            Kind::Routing => remove_sorted(&mut scoped.routings, &key.name),
                            Kind::ExternalWorkload => {
                                remove_sorted(&mut scoped.external_workloads, &key.name)
                            }
                            Kind::AccessPolicy => {
                                remove_sorted(&mut scoped.access_policies, &key.name)
                            }
                            _ => remove_sorted(&mut scoped.services, &key.name),
                        }
                    }
                }
            }
        }
        for object in changes.changed {
            match object.key.kind {
                Kind::Cluster => upsert_sorted(&mut self.clusters, object),
                Kind::GlobalNamespace => upsert_sorted(&mut self.global_namespaces, object),
                Kind::Routing => {
                    let scoped = self.scoped.entry(object.key.scope.clone()).or_default();
                    upsert_sorted(&mut scoped.routings, object);
                }
                Kind::ExternalWorkload => {
                    let scoped = self.scoped.entry(object.key.scope.clone()).or_default();
                    upsert_sorted(&mut scoped.external_workloads, object);
                }
                Kind::Service => {
                    let scoped = self.scoped.entry(object.key.scope.clone()).or_default();
                    upsert_sorted(&mut scoped.services, ServiceObject::from(object));
                }
                Kind::AccessPolicy => {
                    let scoped = self.scoped.entry(object.key.scope.clone()).or_default();
                    upsert_sorted(&mut scoped.access_policies, object);
                }
            }
        }
        for service in changes.services {
            let scoped = self.scoped.entry(service.key.scope.clone()).or_default();
            upsert_sorted(&mut scoped.services, service);
        }
        self.revision = changes.revision;
    }
}

impl StoreState {
    /// Marks the state as compiled: from now on [`StoreState::touched`]
    /// gathers what the next changes touch.
    pub fn compiled(&mut self) {
        self.touched = Touched {
            everything: false,
            zones: BTreeMap::new(),
        };
    }
}

/// Reads everything the compiler needs. The revision is read in the same
/// transaction as the objects, so a snapshot labelled with it contains
/// exactly that revision.
pub async fn load(store: &dyn Store) -> Result<StoreState, StoreError> {
    let mut state = StoreState::default();
    state.apply(store.changes_since(0).await?);
    Ok(state)
}

/// Brings `state` up to the store's current revision by reading only what
/// changed since `state.revision`.
pub async fn refresh(store: &dyn Store, state: &mut StoreState) -> Result<(), StoreError> {
    let changes = store.changes_since(state.revision).await?;
    state.apply(changes);
    Ok(())
}

/// Where readers get the newest snapshot; `None` until the first one is built.
/// Readers only ever see whole snapshots.
pub type SnapshotReceiver = watch::Receiver<Option<Arc<Snapshot>>>;

/// The publishing side of a [`SnapshotReceiver`].
pub type SnapshotSender = watch::Sender<Option<Arc<Snapshot>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use gns_dns::snapshot::{Service, Zone};

    fn zone(origin: &str, address: &str) -> Zone {
        Zone {
            origin: origin.into(),
            serial: 0,
            nameservers: Vec::new(),
            txt: Vec::new(),
            services: vec![Arc::new(Service {
                name: "web".into(),
                ports: Vec::new(),
                external: vec![address.parse().expect("ip")],
                views: Default::default(),
                txt: Vec::new(),
            })]
            .into(),
        }
    }

    fn snapshot(version: u64, zones: Vec<Zone>, gateway_change: u64) -> Snapshot {
        let dns = ZoneSnapshot {
            version,
            answer_ttl: 5,
            views: Vec::new(),
            zones,
        };
        // The trust domain stands in for any change of the gateway config.
        let gateways = gns_contract::config::GatewayConfig {
            version,
            trust_domain: format!("acme-{gateway_change}.test"),
            ..Default::default()
        };
        Snapshot::new(version, dns, Vec::new(), None, Vec::new()).with_gateways(gateways)
    }

    fn serials(snapshot: &Snapshot) -> Vec<u64> {
        snapshot.dns.zones.iter().map(|z| z.serial).collect()
    }

    #[test]
    fn versions_move_only_with_what_they_version() {
        let first = snapshot(
            5,
            vec![zone("a.test", "192.0.2.1"), zone("b.test", "192.0.2.2")],
            1,
        );
        // Zone b changes, a and the gateway config do not.
        let mut second = snapshot(
            9,
            vec![zone("a.test", "192.0.2.1"), zone("b.test", "192.0.2.9")],
            1,
        );
        second.carry_versions(&first);
        assert_eq!(serials(&second), [5, 9]);
        assert_eq!(second.dns.version, 9);
        assert_eq!(second.gateways.version, 5);
        // Nothing an output holds changes: every version stays.
        let mut third = snapshot(
            12,
            vec![zone("a.test", "192.0.2.1"), zone("b.test", "192.0.2.9")],
            1,
        );
        third.carry_versions(&second);
        assert_eq!(serials(&third), [5, 9]);
        assert_eq!(third.dns.version, 9);
        assert_eq!(third.gateways.version, 5);
        // Only the gateway config changes.
        let mut fourth = snapshot(
            14,
            vec![zone("a.test", "192.0.2.1"), zone("b.test", "192.0.2.9")],
            2,
        );
        fourth.carry_versions(&third);
        assert_eq!((serials(&fourth), fourth.dns.version), (vec![5, 9], 9));
        assert_eq!(fourth.gateways.version, 14);
        // A zone removed moves the DNS version; the other keeps its serial.
        let mut fifth = snapshot(20, vec![zone("a.test", "192.0.2.1")], 2);
        fifth.carry_versions(&fourth);
        assert_eq!((serials(&fifth), fifth.dns.version), (vec![5], 20));
        // The views change every view's answers: every zone moves.
        let mut sixth = snapshot(21, vec![zone("a.test", "192.0.2.1")], 2);
        Arc::make_mut(&mut sixth.dns)
            .views
            .push(gns_dns::snapshot::ClusterView {
                cluster: "east".into(),
                networks: vec!["10.8.0.0/16".parse().expect("net")],
            });
        sixth.carry_versions(&fifth);
        assert_eq!((serials(&sixth), sixth.dns.version), (vec![21], 21));
    }
}
