//! What one build's compile leaves for the next: each service's outputs (its
//! DNS answers and its gateway route, shared as `Arc`s) with a fingerprint
//! of everything they were compiled from. A service whose fingerprint is
//! unchanged is not compiled again and keeps the very same allocations, so
//! the snapshot, the DNS render and the version comparisons see it
//! unchanged at the cost of a pointer comparison.
//!
//! The fingerprint hashes the resource versions of the service's own inputs
//! (its discovered-service objects, alive external workloads and routing
//! object) and an epoch of what every service of the zone depends on
//! (clusters, withdrawals, silent gateways, the global namespace, its access
//! policies, and, when a policy restricts access, which services exist and
//! run where). The builder drops the cache whenever it reads the whole store
//! again, so versions that went back (a restored database) cannot match.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use gns_contract::config::ServiceConfig;
use gns_dns::snapshot::Service;

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

/// The outputs of the last compile, by global namespace, then service.
#[derive(Debug, Default)]
pub struct CompileCache {
    pub(super) zones: HashMap<String, HashMap<String, CachedService>>,
}

impl CompileCache {
    /// How many services it holds.
    pub fn len(&self) -> usize {
        self.zones.values().map(HashMap::len).sum()
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
