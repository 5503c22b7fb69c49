//! What one build's compile leaves for the next: per zone, each service's
//! outputs (its DNS answers and its gateway route, shared as `Arc`s) with a
//! fingerprint of everything they were compiled from, the zone's output in
//! name order, its parsed zone-wide inputs and its problems; and the gateway
//! routes of every zone as one persistent map. A service whose fingerprint
//! is unchanged is not compiled again and keeps the very same allocations,
//! so the snapshot, the DNS render and the version comparisons see it
//! unchanged at the cost of a pointer comparison.
//!
//! The fingerprint hashes the resource versions of the service's own inputs
//! (its discovered-service objects, alive external workloads and routing
//! object) and an epoch of what every service of the zone depends on
//! (clusters, withdrawals, silent gateways, the global namespace, its access
//! policies, and, when a policy restricts access, which services exist and
//! run where). A zone whose epoch is unchanged, with only discovered
//! services and routing objects written since, compiles only the services
//! those writes name (see `StoreState::touched`). The builder drops the cache
//! whenever it reads the whole store again, so versions that went back (a
//! restored database) cannot match.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use gns_contract::config::ServiceConfig;
use gns_dns::services::Services;
use gns_dns::snapshot::Service;

use super::Problem;
use crate::model::{AccessPolicy, ExternalWorkload};

/// One service's compiled outputs.
#[derive(Debug, Clone)]
pub(super) struct CachedService {
    /// What they were compiled from.
    pub(super) fingerprint: u64,
    /// The gateway config's key: `<service>.<domain>`, lower case.
    pub(super) host: String,
    /// Its DNS answers.
    pub(super) dns: Arc<Service>,
    /// Its gateway route.
    pub(super) gateway: Arc<ServiceConfig>,
}

/// One zone as the last compile left it.
#[derive(Debug, Default)]
pub(super) struct CachedZone {
    /// Fingerprint of what every service of the zone depends on.
    pub(super) epoch: u64,
    /// Whether who may call a service depends on every service (a
    /// restricting access policy or default deny): the zone compiles whole.
    pub(super) restricted: bool,
    /// Whether some discovered-service object holds a service other than the
    /// one its name starts with: the zone compiles whole (written services
    /// can't be found by name).
    pub(super) odd: bool,
    /// Compiled services by name.
    pub(super) services: HashMap<String, CachedService>,
    /// The zone's DNS services (its output, shared with the snapshot).
    pub(super) output: Services,
    /// Its access policies, parsed.
    pub(super) policies: Vec<AccessPolicy>,
    /// Its alive external workloads by service, and the objects (name,
    /// version) they were read from.
    pub(super) alive: BTreeMap<String, Vec<ExternalWorkload>>,
    pub(super) alive_from: BTreeMap<String, Vec<(String, u64)>>,
    /// Problems of the zone-wide inputs (access policies, external workloads).
    pub(super) zone_problems: Vec<Problem>,
    /// Problems by service name (its routing object, a name taken by a name server).
    pub(super) service_problems: BTreeMap<String, Vec<Problem>>,
    /// Problems by discovered-service object name (a spec that no longer parses).
    pub(super) object_problems: BTreeMap<String, Problem>,
}

/// The outputs of the last compile.
#[derive(Debug, Default)]
pub struct CompileCache {
    /// By global namespace.
    pub(super) zones: HashMap<String, CachedZone>,
    /// Every zone's gateway routes by host.
    pub(super) gateway: imbl::OrdMap<String, Arc<ServiceConfig>>,
    /// How many services the compile that filled it looked at, and compiled.
    pub(super) visited: usize,
    pub(super) compiled: usize,
}

impl CompileCache {
    /// How many services it holds.
    pub fn len(&self) -> usize {
        self.zones.values().map(|z| z.services.len()).sum()
    }

    /// How many services the compile that filled it looked at (checked
    /// their inputs), and how many of those it compiled.
    pub fn looked_at(&self) -> (usize, usize) {
        (self.visited, self.compiled)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A 64-bit fingerprint of `parts`.
pub(super) fn fingerprint(parts: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}
