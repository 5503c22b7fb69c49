//! The compiler proper: [`compile`] turns a [`StoreState`] into a [`Snapshot`]
//! by the DNS answer rules of the design ("DNS answers"):
//!
//! - one zone per global namespace, its origin the namespace's domain, with
//!   NS `ns1.<origin>` (glue from the options) and apex TXT `gns=<name>`;
//! - a service per name discovered in the namespace, served by an alive
//!   external workload, or named by a routing object;
//! - the external view of a service: the public gateway address of every
//!   member cluster that has one and ready endpoints of the service, plus the
//!   addresses of its alive external workloads;
//! - a cluster's view (every cluster with networks): its own ready endpoints
//!   when it has some and no routing rule sends the service to another
//!   cluster, else its egress gateway address, else nothing (the cluster gets
//!   the external answer); a service with no ready endpoint anywhere gets no
//!   cluster view entries, so every client sees an empty (NODATA) answer;
//! - a cluster whose gateways all went silent (recorded by the liveness
//!   plane) counts as having no ready endpoints for the external view and
//!   for other clusters; the gateways' config lists it as silent, so peers
//!   send it nothing while its own gateway keeps its local endpoints;
//! - SRV ports from the discovered service and the alive workloads (UDP →
//!   `_udp`, everything else `_tcp`), TXT `clusters=<clusters with ready endpoints>`.
//!
//! Objects that can't compile (a spec that no longer parses, routing to a
//! cluster without a gateway, a service that collides with a name server)
//! become [`Problem`]s and are left out. Output is sorted and deduplicated
//! so equal input gives equal snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use gns_dns::ZoneSnapshot;
use gns_dns::snapshot::{
    ClusterView, MAX_ANSWER_TTL, Nameserver, Service, ServicePort, Transport, Zone,
};
use serde::de::DeserializeOwned;

use super::cache::{CompileCache, fingerprint};
use super::{CompileOptions, Problem, ScopedObjects, Snapshot, StoreState, UnrecordedExpiry};
use crate::model::{
    Access, AccessPolicy, Cluster, ClusterEndpoints, ClusterStatus, DiscoveredService,
    ExternalWorkload, GlobalNamespace, PolicyAction, Protocol, RetryOn, Routing, WorkloadPort,
};
use crate::store::StoredObject;

/// The addresses of a gateway the federation deployed, as read back from its
/// Services (`status.gateway`: ingress, egress, and the public entry's when
/// its load balancer has one), for a cluster whose spec names none.
fn deployed_gateway(status: &ClusterStatus) -> Option<crate::model::GatewayAddresses> {
    let gateway = status.gateway.as_ref()?;
    let ingress = gateway.get("ingressAddress")?.as_str()?;
    let egress = gateway.get("egressAddress")?.as_str()?;
    let mut addresses = serde_json::json!({"ingressAddress": ingress, "egressAddress": egress});
    if let Some(public) = gateway.get("publicAddress").and_then(|p| p.as_str()) {
        addresses["publicAddress"] = serde_json::json!(public);
    }
    serde_json::from_value(addresses).ok()
}

/// First label of each zone's default name server.
const DEFAULT_NAMESERVER_LABEL: &str = "ns1";

/// Compiles `state` as of `now_ms` (Unix milliseconds). Pure: no I/O, no clock.
pub fn compile(state: &StoreState, now_ms: i64, options: &CompileOptions) -> Snapshot {
    compile_with(state, now_ms, options, &mut CompileCache::default())
}

/// [`compile`], reusing the outputs in `cache` of every service whose inputs
/// did not change since they were compiled, and leaving this compile's
/// outputs there for the next. The result is the same as [`compile`]'s.
pub fn compile_with(
    state: &StoreState,
    now_ms: i64,
    options: &CompileOptions,
    cache: &mut CompileCache,
) -> Snapshot {
    let mut problems = Vec::new();
    let mut clusters = BTreeMap::new();
    for object in &state.clusters {
        if let Some(mut cluster) = parse::<Cluster>(object, &mut problems) {
            if cluster.gateway.is_none() {
                cluster.gateway = deployed_gateway(&ClusterStatus::of(&object.status));
            }
            clusters.insert(object.key.name.clone(), cluster);
        }
    }
    let views = clusters
        .iter()
        .filter(|(_, c)| !c.networks.is_empty())
        .map(|(name, c)| {
            let mut networks: Vec<ipnet::IpNet> = c.networks.iter().map(|n| n.net()).collect();
            networks.sort();
            networks.dedup();
            ClusterView {
                cluster: name.clone(),
                networks,
            }
        })
        .collect();

    // Clusters whose API has been unreachable for longer than their stale-endpoint policy allows.
    let mut withdrawn = BTreeSet::new();
    let mut next_withdrawal: Option<i64> = None;
    // Withdrawals the store has not seen a write since (recorded like expiries).
    let mut unrecorded = Vec::new();
    for object in &state.clusters {
        let Some(cluster) = clusters.get(&object.key.name) else {
            continue;
        };
        let status = ClusterStatus::of(&object.status);
        let (unreachable, since) = (status.unreachable(), status.unreachable_since_millis);
        if let (true, Some(since), Some(after)) = (unreachable, since, cluster.withdraw_after()) {
            let at = since.saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
            if now_ms >= at {
                withdrawn.insert(object.key.name.clone());
                if object.updated_at < at {
                    unrecorded.push(UnrecordedExpiry {
                        key: object.key.clone(),
                        resource_version: object.resource_version,
                        expired_at_ms: at,
                    });
                }
            } else {
                next_withdrawal = Some(next_withdrawal.map_or(at, |t| t.min(at)));
            }
        }
    }

    // Clusters whose gateways all went silent: as if they had no ready
    // endpoints, for everyone but themselves.
    let gateways_silent: BTreeSet<String> = state
        .clusters
        .iter()
        .filter(|o| ClusterStatus::of(&o.status).gateways_silent())
        .map(|o| o.key.name.clone())
        .collect();

    // What every service's outputs depend on besides its own inputs: the
    // clusters as the compiler reads them (a status write that changes
    // nothing it reads, like a sync count, leaves it as it was).
    let clusters_epoch = fingerprint((
        clusters
            .iter()
            .map(|(name, c)| (name, serde_json::to_string(c).unwrap_or_default()))
            .collect::<Vec<_>>(),
        &withdrawn,
        &gateways_silent,
    ));
    let mut previous = std::mem::take(cache);
    let mut compiler = Compiler {
        options,
        clusters: &clusters,
        withdrawn: &withdrawn,
        gateways_silent: &gateways_silent,
        problems,
        next_change_ms: next_withdrawal,
        expiries: unrecorded,
        gateway: std::mem::take(&mut previous.gateway),
        clusters_epoch,
        previous,
        next: CompileCache::default(),
        visited: 0,
        compiled: 0,
    };
    let empty = ScopedObjects::default();
    // origin -> (owning global namespace, zone)
    let mut zones: BTreeMap<String, (String, Zone)> = BTreeMap::new();
    for object in &state.global_namespaces {
        let Some(gns) = parse::<GlobalNamespace>(object, &mut compiler.problems) else {
            continue;
        };
        let origin = gns.domain.as_str().to_owned();
        if let Some((owner, _)) = zones.get(&origin) {
            let message = format!("domain {origin} is also the domain of global namespace {owner}");
            compiler.problems.push(Problem::new(&object.key, message));
            continue;
        }
        let scoped = state.scoped.get(&object.key.name).unwrap_or(&empty);
        let touched = state.touched.zone(&object.key.name);
        let zone = compiler.zone(
            &object.key.name,
            object.resource_version,
            &gns,
            scoped,
            touched,
        );
        zones.insert(origin, (object.key.name.clone(), zone));
    }
    // Zones gone (or left out) take their gateway routes with them.
    for zone in std::mem::take(&mut compiler.previous.zones).into_values() {
        for cached in zone.services.values() {
            compiler.forget_gateway(cached);
        }
    }

    let Compiler {
        mut problems,
        next_change_ms,
        mut expiries,
        gateway,
        mut next,
        visited,
        compiled,
        ..
    } = compiler;
    next.gateway = gateway.clone();
    next.visited = visited;
    next.compiled = compiled;
    *cache = next;
    let gateways = gns_contract::config::GatewayConfig {
        version: state.revision,
        trust_domain: options.trust_domain.clone(),
        gateways: clusters
            .iter()
            .filter_map(|(name, c)| {
                let address = c.gateway.as_ref()?.ingress_address.as_str().parse().ok()?;
                Some((
                    name.clone(),
                    gns_contract::config::PeerGateway {
                        ingress_address: address,
                    },
                ))
            })
            .collect(),
        services: gateway,
        silent_clusters: gateways_silent.clone(),
    };
    problems.sort();
    problems.dedup();
    expiries.sort_by(|a, b| a.key.cmp(&b.key));
    let dns = ZoneSnapshot {
        version: state.revision,
        answer_ttl: options.answer_ttl.clamp(1, MAX_ANSWER_TTL),
        views,
        zones: zones.into_values().map(|(_, zone)| zone).collect(),
    };
    Snapshot::new(state.revision, dns, problems, next_change_ms, expiries).with_gateways(gateways)
}

/// Parses a stored spec, reporting (with the failing field) when it no longer parses.
pub(super) fn parse<T: DeserializeOwned>(
    object: &StoredObject,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(&object.spec) {
        Ok(value) => Some(value),
        Err(e) => {
            problems.push(Problem::new(
                &object.key,
                format!("stored spec does not parse: {e}"),
            ));
            None
        }
    }
}

/// True if `cluster`'s clients need the gateway for `routing`: a rule
/// sends some traffic to another cluster, or to a subset of endpoints
/// (which only the gateway tells apart).
fn sends_elsewhere(routing: &Routing, cluster: &str) -> bool {
    routing.rules.iter().any(|rule| {
        rule.destinations.iter().any(|d| {
            d.weight > 0
                && (d.cluster.as_ref().is_none_or(|c| c.as_str() != cluster)
                    || !d.selector().is_empty())
        })
    })
}

fn sorted(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort();
    addresses.dedup();
    addresses
}

fn transport(protocol: Protocol) -> Transport {
    match protocol {
        Protocol::Udp => Transport::Udp,
        Protocol::Tcp | Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Tls => {
            Transport::Tcp
        }
    }
}

/// The state of one compilation.
pub(super) struct Compiler<'a> {
    pub(super) options: &'a CompileOptions,
    pub(super) clusters: &'a BTreeMap<String, Cluster>,
    /// Unreachable clusters past their stale-endpoint policy: their endpoints don't count.
    pub(super) withdrawn: &'a BTreeSet<String>,
    /// Clusters whose gateways all went silent: their endpoints count only
    /// for their own clients.
    pub(super) gateways_silent: &'a BTreeSet<String>,
    pub(super) problems: Vec<Problem>,
    pub(super) next_change_ms: Option<i64>,
    pub(super) expiries: Vec<UnrecordedExpiry>,
    /// Gateway routes by host of every zone, starting from the last compile's.
    pub(super) gateway: imbl::OrdMap<String, Arc<gns_contract::config::ServiceConfig>>,
    /// Fingerprint of the clusters, withdrawals and silent gateways.
    pub(super) clusters_epoch: u64,
    /// The last compile's outputs (taken from as zones are compiled).
    pub(super) previous: CompileCache,
    /// This compile's outputs.
    pub(super) next: CompileCache,
    /// Services looked at (their fingerprint checked), and compiled.
    pub(super) visited: usize,
    pub(super) compiled: usize,
}

/// What one global namespace says about one service name.
pub(super) struct ServiceInputs<'a> {
    /// Its discovered-service objects, in name order (a later object's
    /// entry for a cluster replaces an earlier one's; the first port of a name wins).
    pub(super) discovered: &'a [&'a DiscoveredService],
    pub(super) workloads: &'a [ExternalWorkload],
    pub(super) routing: Option<&'a Routing>,
}

impl Compiler<'_> {
    pub(super) fn nameservers(&self, origin: &str) -> Vec<Nameserver> {
        let default_name = format!("{DEFAULT_NAMESERVER_LABEL}.{origin}");
        let glue = sorted(
            self.options
                .nameserver_addresses
                .iter()
                .copied()
                .filter(|a| !a.is_unspecified())
                .collect(),
        );
        let mut out = vec![Nameserver {
            name: default_name,
            addresses: glue,
        }];
        for extra in &self.options.extra_nameservers {
            let name = extra.name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() || out.iter().any(|ns| ns.name == name) {
                continue;
            }
            out.push(Nameserver {
                name,
                addresses: sorted(extra.addresses.clone()),
            });
        }
        out
    }

    /// Alive external workloads by service: those the store does not record
    /// as expired (the liveness plane records lapses and returns; beats
    /// themselves change nothing here). With them, by service, the objects
    /// (name, version) they were read from.
    #[allow(clippy::type_complexity)]
    pub(super) fn alive_workloads(
        &self,
        objects: &[StoredObject],
        problems: &mut Vec<Problem>,
    ) -> (
        BTreeMap<String, Vec<ExternalWorkload>>,
        BTreeMap<String, Vec<(String, u64)>>,
    ) {
        let mut alive: BTreeMap<String, Vec<ExternalWorkload>> = BTreeMap::new();
        let mut from: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for object in objects {
            let Some(workload) = parse::<ExternalWorkload>(object, problems) else {
                continue;
            };
            if !crate::liveness::workload_expired(&object.status) {
                from.entry(workload.service.to_string())
                    .or_default()
                    .push((object.key.name.clone(), object.resource_version));
                alive
                    .entry(workload.service.to_string())
                    .or_default()
                    .push(workload);
            }
        }
        // Input order must not matter (the first port of a name wins).
        for workloads in alive.values_mut() {
            workloads.sort_by(|a, b| a.name.cmp(&b.name));
        }
        for versions in from.values_mut() {
            versions.sort_unstable();
        }
        (alive, from)
    }

    /// What gateways need of one service: ready endpoints and the HTTP
    /// (target) port per member cluster, and its routing.
    pub(super) fn gateway_service(
        &self,
        gns_name: &str,
        name: &str,
        members: &BTreeSet<&str>,
        inputs: &ServiceInputs<'_>,
    ) -> gns_contract::config::ServiceConfig {
        use gns_contract::config as gw;
        let mut out = gw::ServiceConfig {
            gns: gns_name.to_owned(),
            service: name.to_owned(),
            ..gw::ServiceConfig::default()
        };
        for d in inputs.discovered {
            let http = d
                .ports
                .iter()
                .find(|p| is_http(p))
                .or_else(|| d.ports.first());
            let tcp: Vec<&WorkloadPort> = d
                .ports
                .iter()
                .filter(|p| !is_http(p) && matches!(p.protocol, Protocol::Tcp | Protocol::Tls))
                .collect();
            for (cluster, endpoints) in &d.clusters {
                if !members.contains(cluster.as_str()) {
                    continue;
                }
                out.endpoints.insert(
                    cluster.clone(),
                    sorted(endpoints.ready.iter().map(|e| e.address).collect()),
                );
                if let Some(port) = http {
                    out.http_port.insert(cluster.clone(), port.endpoint_port());
                    if speaks_h2c(port) {
                        out.h2c.insert(cluster.clone());
                    }
                    if is_http(port) {
                        out.http_ports.push(port.port);
                    }
                }
                for port in &tcp {
                    let i = match out.tcp_ports.iter().position(|t| t.port == port.port) {
                        Some(i) => i,
                        None => {
                            out.tcp_ports.push(gw::TcpPort {
                                port: port.port,
                                ..gw::TcpPort::default()
                            });
                            out.tcp_ports.len() - 1
                        }
                    };
                    out.tcp_ports[i]
                        .target_port
                        .insert(cluster.clone(), port.endpoint_port());
                }
            }
        }
        self.add_workload_endpoints(&mut out, members, inputs.workloads);
        out.http_ports.sort_unstable();
        out.http_ports.dedup();
        if let Some(routing) = inputs.routing {
            // The contract matches whole values (and whole paths).
            let matcher =
                |exact: &Option<String>, prefix: &Option<String>, regex: &Option<String>| match (
                    exact, prefix, regex,
                ) {
                    (Some(v), _, _) => Some(gw::HeaderMatcher::Exact(v.clone())),
                    (_, Some(v), _) => Some(gw::HeaderMatcher::Prefix(v.clone())),
                    (_, _, Some(r)) => Some(gw::HeaderMatcher::Regex(format!("^(?:{r})$"))),
                    _ => None,
                };
            // Tried in this order: higher precedence first, then as written.
            out.rules = routing
                .rules_in_order()
                .into_iter()
                .map(|(_, rule)| gw::Rule {
                    headers: rule
                        .matches
                        .iter()
                        .flat_map(|m| m.headers.iter())
                        .filter_map(|h| {
                            Some(gw::HeaderCondition {
                                name: h.name.as_str().to_owned(),
                                matcher: matcher(&h.exact, &h.prefix, &h.regex)?,
                            })
                        })
                        .collect(),
                    source: rule
                        .matches
                        .as_ref()
                        .and_then(|m| m.source.as_ref())
                        .map(ToString::to_string),
                    path: rule
                        .matches
                        .as_ref()
                        .and_then(|m| m.path.as_ref())
                        .and_then(|p| matcher(&p.exact, &p.prefix, &p.regex)),
                    method: rule.matches.as_ref().and_then(|m| m.method.clone()),
                    destinations: rule
                        .destinations
                        .iter()
                        .map(|d| gw::WeightedCluster {
                            cluster: d
                                .cluster
                                .as_ref()
                                .map_or_else(String::new, ToString::to_string),
                            subset: super::reach::subset_key(&d.selector()),
                            weight: d.weight,
                        })
                        .collect(),
                })
                .collect();
            // Each subset a destination names: its ready endpoints in that
            // cluster, those whose labels include the selector, and the
            // alive external workloads whose labels do, in each cluster
            // whose gateway dials them.
            for d in routing.rules.iter().flat_map(|r| r.destinations.iter()) {
                let selector = d.selector();
                let Some(key) = super::reach::subset_key(&selector) else {
                    continue;
                };
                let clusters: Vec<&str> = match &d.cluster {
                    Some(c) => members
                        .iter()
                        .copied()
                        .filter(|m| *m == c.as_str())
                        .collect(),
                    None => members.iter().copied().collect(),
                };
                for cluster in clusters {
                    let addresses = inputs
                        .discovered
                        .iter()
                        .filter_map(|svc| svc.clusters.get(cluster))
                        .flat_map(|endpoints| endpoints.ready.iter())
                        .filter(|e| selector.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                        .map(|e| e.address)
                        .chain(
                            inputs
                                .workloads
                                .iter()
                                .filter(|w| {
                                    selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                                })
                                .filter(|w| self.dials(cluster, w))
                                .map(|w| w.address),
                        )
                        .collect();
                    out.subsets
                        .entry(key.clone())
                        .or_default()
                        .insert(cluster.to_owned(), sorted(addresses));
                }
            }
            out.failover = routing.failover.iter().map(ToString::to_string).collect();
            out.timeout_ms = routing
                .timeout
                .map(|t| u64::try_from(t.get().as_millis()).unwrap_or(u64::MAX));
            if let Some(o) = &routing.outlier_detection {
                let ms = |d: &crate::model::DurationSpec| {
                    u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX)
                };
                let defaults = gw::OutlierPolicy::default();
                out.outliers = gw::OutlierPolicy {
                    consecutive_failures: o
                        .consecutive_failures
                        .unwrap_or(defaults.consecutive_failures),
                    interval_ms: o.interval.as_ref().map(ms),
                    ejection_ms: o.ejection_time.as_ref().map_or(defaults.ejection_ms, ms),
                    max_ejected_percent: o
                        .max_ejected_percent
                        .unwrap_or(defaults.max_ejected_percent),
                };
            }
            out.retries = routing.retries.as_ref().map(|r| gw::RetryPolicy {
                attempts: r.attempts.saturating_add(1),
                on_5xx: r.on.contains(&RetryOn::ServerError),
                on_gateway_error: r.on.contains(&RetryOn::GatewayError),
                on_reset: r.on.contains(&RetryOn::Reset),
                retriable_status_codes: if r.on.contains(&RetryOn::RetriableStatusCodes) {
                    r.retriable_status_codes.clone()
                } else {
                    Vec::new()
                },
                non_idempotent: r.retry_non_idempotent,
                on_connect_failure: r.on.contains(&RetryOn::ConnectFailure),
                per_try_timeout_ms: r
                    .per_try_timeout
                    .map(|t| u64::try_from(t.get().as_millis()).unwrap_or(u64::MAX)),
            });
        }
        out
    }

    /// Whether the gateway of member cluster `cluster` dials external
    /// workload `w`: it lives there, or it names no cluster and `cluster`
    /// has a gateway.
    fn dials(&self, cluster: &str, w: &ExternalWorkload) -> bool {
        match &w.cluster {
            Some(c) => c.as_str() == cluster,
            None => self
                .clusters
                .get(cluster)
                .is_some_and(|c| c.gateway.is_some()),
        }
    }

    /// External workloads as gateways' endpoints: one with a `cluster` is a
    /// local endpoint of that member cluster's gateway (the others reach it
    /// through that gateway); one without is a local endpoint of every
    /// member cluster's gateway (any of them may dial its address).
    fn add_workload_endpoints(
        &self,
        out: &mut gns_contract::config::ServiceConfig,
        members: &BTreeSet<&str>,
        workloads: &[ExternalWorkload],
    ) {
        // A workload on another port than its cluster's is dialled on its own.
        let own_port = |own: &mut gns_contract::config::OwnPorts,
                        cluster: &str,
                        w: &ExternalWorkload,
                        port: u16| {
            own.entry(cluster.to_owned())
                .or_default()
                .insert(w.address, port);
        };
        for w in workloads {
            // Its HTTP port, or its first when it names none (taken as the
            // cluster's only when the cluster has no other).
            let named_http = w.ports.iter().find(|p| is_http(p));
            let http = named_http.or_else(|| w.ports.first());
            if let Some(port) = named_http {
                out.http_ports.push(port.port);
            }
            for cluster in members.iter().copied().filter(|c| self.dials(c, w)) {
                let endpoints = out.endpoints.entry(cluster.to_owned()).or_default();
                endpoints.push(w.address);
                endpoints.sort();
                endpoints.dedup();
                // The cluster's port is the pods' (or the first workload's).
                if let Some(port) = http {
                    let own = port.endpoint_port();
                    match out.http_port.get(cluster) {
                        None => {
                            out.http_port.insert(cluster.to_owned(), own);
                            if speaks_h2c(port) {
                                out.h2c.insert(cluster.to_owned());
                            }
                        }
                        Some(&theirs) if theirs != own && named_http.is_some() => {
                            own_port(&mut out.http_port_by_address, cluster, w, own);
                        }
                        Some(_) => {}
                    }
                }
                for port in w
                    .ports
                    .iter()
                    .filter(|p| !is_http(p) && matches!(p.protocol, Protocol::Tcp | Protocol::Tls))
                {
                    let own = port.endpoint_port();
                    if let Some(tcp) = out.tcp_ports.iter_mut().find(|t| t.port == port.port) {
                        match tcp.target_port.get(cluster) {
                            None => {
                                tcp.target_port.insert(cluster.to_owned(), own);
                            }
                            Some(&theirs) if theirs != own => {
                                own_port(&mut tcp.target_port_by_address, cluster, w, own);
                            }
                            Some(_) => {}
                        }
                    } else {
                        out.tcp_ports.push(gns_contract::config::TcpPort {
                            port: port.port,
                            target_port: BTreeMap::from([(cluster.to_owned(), own)]),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }

    pub(super) fn service(
        &self,
        name: &str,
        members: &BTreeSet<&str>,
        inputs: &ServiceInputs<'_>,
    ) -> Service {
        // Member clusters with ready endpoints, and those endpoints.
        let mut per_cluster: BTreeMap<&str, &ClusterEndpoints> = BTreeMap::new();
        for d in inputs.discovered {
            for (cluster, endpoints) in &d.clusters {
                per_cluster.insert(cluster.as_str(), endpoints);
            }
        }
        let mut ready: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
        for (cluster, endpoints) in per_cluster {
            if members.contains(cluster) && !endpoints.ready.is_empty() {
                let addresses = endpoints.ready.iter().map(|e| e.address).collect();
                ready.insert(cluster, sorted(addresses));
            }
        }

        // Where other clusters' clients and outside clients can be sent.
        let reachable: Vec<&str> = ready
            .keys()
            .copied()
            .filter(|c| !self.gateways_silent.contains(*c))
            .collect();
        let external = sorted(
            reachable
                .iter()
                .filter_map(|c| self.clusters.get(*c)?.gateway.as_ref()?.public_address)
                .chain(inputs.workloads.iter().map(|w| w.address))
                .collect(),
        );

        let mut views = BTreeMap::new();
        let available = !reachable.is_empty() || !inputs.workloads.is_empty();
        for (cluster_name, cluster) in self.clusters.iter().filter(|(_, c)| !c.networks.is_empty())
        {
            let elsewhere = inputs
                .routing
                .is_some_and(|r| sends_elsewhere(r, cluster_name));
            let answer = match ready.get(cluster_name.as_str()) {
                Some(local) if !elsewhere => Some(local.clone()),
                _ if available => cluster.gateway.as_ref().map(|g| vec![g.egress_address]),
                _ => None,
            };
            if let Some(addresses) = answer {
                views.insert(cluster_name.clone(), addresses);
            }
        }

        let mut ports: BTreeMap<String, ServicePort> = BTreeMap::new();
        let declared = inputs.discovered.iter().flat_map(|d| d.ports.iter());
        let from_workloads = inputs.workloads.iter().flat_map(|w| w.ports.iter());
        for port in declared.chain(from_workloads) {
            add_port(&mut ports, port);
        }

        Service {
            name: name.to_owned(),
            ports: ports.into_values().collect(),
            external,
            views,
            txt: vec![format!("clusters={}", reachable.join(","))],
        }
    }
}

/// Whether a port carries HTTP: by protocol, or by name (`http`, `http-…`,
/// `grpc`, `grpc-…`, `h2c`, `h2c-…`, the Kubernetes/Istio convention).
fn is_http(port: &WorkloadPort) -> bool {
    let name = port.name.as_str();
    matches!(
        port.protocol,
        Protocol::Http | Protocol::Http2 | Protocol::Grpc
    ) || ["http", "grpc", "h2c"]
        .iter()
        .any(|p| name == *p || name.starts_with(&format!("{p}-")))
}

/// Whether an HTTP port's endpoints speak HTTP/2 without TLS: by protocol
/// (`appProtocol` `grpc`, `h2c`, `kubernetes.io/h2c`) or by name (`grpc`,
/// `grpc-…`, `h2c`, `h2c-…`).
fn speaks_h2c(port: &WorkloadPort) -> bool {
    let name = port.name.as_str();
    matches!(port.protocol, Protocol::Http2 | Protocol::Grpc)
        || ["grpc", "h2c"]
            .iter()
            .any(|p| name == *p || name.starts_with(&format!("{p}-")))
}

/// Whether clients outside every cluster (identity `external`) may call
/// `service` through a public entry: only when a policy allows `external`
/// by name and none denies it (`defaultAccess` and `*` do not open a
/// service to the internet).
pub(super) fn external_allowed(policies: &[AccessPolicy], service: &str) -> bool {
    let names = |p: &&AccessPolicy| {
        p.to.as_str() == service && p.from.iter().any(|f| f == "external" || f == "*")
    };
    let denied = policies
        .iter()
        .filter(names)
        .any(|p| p.action == PolicyAction::Deny);
    let allowed = policies.iter().any(|p| {
        p.to.as_str() == service
            && p.action == PolicyAction::Allow
            && p.from.iter().any(|f| f == "external")
    });
    allowed && !denied
}

/// Whether service `caller` may call `service`: a deny naming it (or `*`)
/// wins, then an allow, then `defaultAccess`.
fn caller_allowed(
    gns: &GlobalNamespace,
    policies: &[AccessPolicy],
    caller: &str,
    service: &str,
) -> bool {
    let names = |p: &&AccessPolicy| {
        p.to.as_str() == service && p.from.iter().any(|f| f == caller || f == "*")
    };
    if policies
        .iter()
        .filter(names)
        .any(|p| p.action == PolicyAction::Deny)
    {
        return false;
    }
    policies
        .iter()
        .filter(names)
        .any(|p| p.action == PolicyAction::Allow)
        || gns.default_access == Access::Allow
}

/// Whether any service may call `service` (so gateways need not check):
/// no policy names a caller of it other than `external`, and access is
/// allowed by default.
fn unrestricted(gns: &GlobalNamespace, policies: &[AccessPolicy], service: &str) -> bool {
    let named = policies
        .iter()
        .any(|p| p.to.as_str() == service && p.from.iter().any(|f| f != "external"));
    !named && gns.default_access == Access::Allow
}

/// The peer clusters whose gateways may call `service` through this
/// cluster's ingress: a gateway carries the traffic of every workload of
/// its cluster, so a cluster may call when some service running there may.
/// `None` (no restriction) when no policy names `service` and access is
/// allowed by default.
pub(super) fn allowed_peer_clusters(
    gns: &GlobalNamespace,
    policies: &[AccessPolicy],
    service: &str,
    runs_in: &BTreeMap<&str, BTreeSet<&str>>,
) -> Option<Vec<String>> {
    if unrestricted(gns, policies, service) {
        return None;
    }
    Some(
        runs_in
            .iter()
            .filter(|(_, callers)| {
                callers
                    .iter()
                    .any(|caller| caller_allowed(gns, policies, caller, service))
            })
            .map(|(cluster, _)| (*cluster).to_owned())
            .collect(),
    )
}

/// The services that may call `service` (access policy), for gateways to
/// check callers by name, plus `*` when a caller that is no service's
/// endpoint may (a `*` allow, or allowed by default). `None` (no
/// restriction) when no policy names `service` and access is allowed by
/// default.
pub(super) fn allowed_callers(
    gns: &GlobalNamespace,
    policies: &[AccessPolicy],
    service: &str,
    services: &BTreeSet<&str>,
) -> Option<Vec<String>> {
    if unrestricted(gns, policies, service) {
        return None;
    }
    let mut callers: Vec<String> = services
        .iter()
        .filter(|caller| caller_allowed(gns, policies, caller, service))
        .map(|caller| (*caller).to_owned())
        .collect();
    if caller_allowed(gns, policies, "*", service) {
        callers.push("*".to_owned());
    }
    Some(callers)
}

/// Adds `port` unless one of that name is there already (the first wins) or it is port 0.
fn add_port(ports: &mut BTreeMap<String, ServicePort>, port: &WorkloadPort) {
    if port.port == 0 {
        return;
    }
    ports
        .entry(port.name.to_string())
        .or_insert_with(|| ServicePort {
            name: port.name.to_string(),
            port: port.port,
            protocol: transport(port.protocol),
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::snapshot::CompileCache;
    use crate::snapshot::ServiceObject;
    use crate::store::{Changes, ObjectKey};
    use serde_json::{Value, json};

    const NOW: i64 = 1_700_000_000_000;
    const ORIGIN: &str = "production.app.acme.com";

    fn object(key: ObjectKey, spec: Value) -> StoredObject {
        StoredObject {
            key,
            spec,
            status: json!({}),
            resource_version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn cluster(name: &str, networks: &[&str], gateway: Option<Value>) -> StoredObject {
        let mut spec = json!({"name": name, "kubernetes": {"server": "https://10.0.0.1:6443"},
                              "networks": networks});
        if let Some(gw) = gateway {
            spec["gateway"] = gw;
        }
        object(ObjectKey::global(Kind::Cluster, name), spec)
    }

    fn gateway(egress: &str, public: Option<&str>) -> Value {
        let mut gw = json!({"ingressAddress": "203.0.113.10:15443", "egressAddress": egress});
        if let Some(p) = public {
            gw["publicAddress"] = json!(p);
        }
        gw
    }

    /// Discovered service: `clusters` as (cluster, ready addresses, not-ready addresses).
    fn service(name: &str, clusters: &[(&str, &[&str], &[&str])]) -> ServiceObject {
        let eps = |addrs: &[&str]| -> Vec<Value> {
            addrs.iter().map(|a| json!({"address": a})).collect()
        };
        let mut map = serde_json::Map::new();
        for (c, ready, not_ready) in clusters {
            map.insert(
                (*c).to_owned(),
                json!({"ready": eps(ready), "notReady": eps(not_ready)}),
            );
        }
        object(
            ObjectKey::scoped(Kind::Service, "production", name),
            json!({"name": name, "ports": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                   "clusters": map}),
        )
        .into()
    }

    fn workload(name: &str, svc: &str, address: &str, last_heartbeat: i64) -> StoredObject {
        let mut o = object(
            ObjectKey::scoped(Kind::ExternalWorkload, "production", name),
            json!({"name": name, "service": svc, "address": address, "ttl": "30s",
                   "ports": [{"name": "pg", "port": 5432}, {"name": "stats", "port": 8125, "protocol": "UDP"}]}),
        );
        o.status = json!({"lastHeartbeatMillis": last_heartbeat});
        o.updated_at = last_heartbeat;
        o
    }

    fn routing(svc: &str, destinations: Value) -> StoredObject {
        object(
            ObjectKey::scoped(Kind::Routing, "production", svc),
            json!({"rules": [{"destinations": destinations}]}),
        )
    }

    /// east: networks, gateway with public address; west: networks, gateway
    /// without one; north: networks, no gateway; south: gateway with a public
    /// address, no networks. All four are members of `production`.
    fn base() -> StoreState {
        let gns = object(
            ObjectKey::global(Kind::GlobalNamespace, "production"),
            json!({"name": "production", "domain": ORIGIN,
                   "members": [{"cluster": "east", "namespace": "shop"},
                               {"cluster": "west", "namespace": "shop"},
                               {"cluster": "north", "namespace": "shop"},
                               {"cluster": "south", "namespace": "shop"}]}),
        );
        StoreState {
            revision: 42,
            clusters: vec![
                cluster(
                    "east",
                    &["10.8.0.0/16"],
                    Some(gateway("10.8.0.53", Some("198.51.100.1"))),
                ),
                cluster("west", &["10.9.0.0/16"], Some(gateway("10.9.0.53", None))),
                cluster("north", &["10.10.0.0/16"], None),
                cluster(
                    "south",
                    &[],
                    Some(gateway("10.11.0.53", Some("198.51.100.4"))),
                ),
            ],
            global_namespaces: vec![gns],
            scoped: BTreeMap::from([("production".to_owned(), ScopedObjects::default())]),
            touched: Default::default(),
        }
    }

    fn scoped(state: &mut StoreState) -> &mut ScopedObjects {
        state.scoped.entry("production".into()).or_default()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn find<'a>(snapshot: &'a Snapshot, svc: &str) -> &'a Service {
        snapshot.dns.zones[0]
            .services
            .iter()
            .find(|s| s.name == svc)
            .unwrap_or_else(|| panic!("service {svc} missing from {:?}", snapshot.dns))
    }

    fn build(state: &StoreState) -> Snapshot {
        compile(state, NOW, &CompileOptions::default())
    }

    fn find_service_opt(snapshot: &Snapshot, svc: &str) -> Option<Arc<Service>> {
        snapshot.dns.zones[0]
            .services
            .iter()
            .find(|s| s.name == svc)
            .cloned()
    }

    fn find_service(snapshot: &Snapshot, svc: &str) -> Arc<Service> {
        find_service_opt(snapshot, svc).unwrap_or_else(|| panic!("service {svc} missing"))
    }

    #[test]
    fn zone_apex_nameservers_views_and_ttl() {
        let state = base();
        let options = CompileOptions {
            answer_ttl: 300,
            nameserver_addresses: vec![ip("192.0.2.53"), ip("0.0.0.0"), ip("192.0.2.53")],
            extra_nameservers: vec![Nameserver {
                name: "NS2.Example.NET.".into(),
                addresses: vec![],
            }],
            ..CompileOptions::default()
        };
        let snap = compile(&state, NOW, &options);
        assert_eq!(snap.version, 42);
        assert_eq!(snap.dns.version, 42);
        assert_eq!(snap.dns.answer_ttl, MAX_ANSWER_TTL);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let zone = &snap.dns.zones[0];
        assert_eq!(zone.origin, ORIGIN);
        assert_eq!(zone.txt, vec!["gns=production".to_owned()]);
        assert_eq!(
            zone.nameservers,
            vec![
                Nameserver {
                    name: format!("ns1.{ORIGIN}"),
                    addresses: ips(&["192.0.2.53"])
                },
                Nameserver {
                    name: "ns2.example.net".into(),
                    addresses: vec![]
                },
            ]
        );
        let clusters: Vec<&str> = snap.dns.views.iter().map(|v| v.cluster.as_str()).collect();
        assert_eq!(clusters, ["east", "north", "west"], "south has no networks");
        assert_eq!(
            snap.dns.views[0].networks,
            vec!["10.8.0.0/16".parse::<ipnet::IpNet>().expect("net")]
        );
        let zero = compile(
            &state,
            NOW,
            &CompileOptions {
                answer_ttl: 0,
                ..CompileOptions::default()
            },
        );
        assert_eq!(zero.dns.answer_ttl, 1);
        assert_eq!(build(&state).dns.answer_ttl, 5);
    }

    #[test]
    fn external_view_is_public_addresses_of_clusters_with_ready_endpoints() {
        let mut state = base();
        scoped(&mut state).services.push(service(
            "web",
            &[
                ("east", &["10.8.1.1", "10.8.1.2"], &[]),
                ("west", &["10.9.1.1"], &[]),
                ("south", &[], &["10.11.1.1"]),
            ],
        ));
        let snap = build(&state);
        let web = find(&snap, "web");
        // east: public + ready; west: ready but no public address; south: public but only not-ready.
        assert_eq!(web.external, ips(&["198.51.100.1"]));
        assert_eq!(web.txt, vec!["clusters=east,west".to_owned()]);
        assert_eq!(
            web.ports,
            vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Transport::Tcp
            }]
        );
    }

    #[test]
    fn a_cluster_whose_gateways_went_silent_counts_only_for_its_own_clients() {
        let mut state = base();
        scoped(&mut state).services.push(service(
            "web",
            &[("east", &["10.8.1.1"], &[]), ("south", &["10.11.1.1"], &[])],
        ));
        scoped(&mut state)
            .services
            .push(service("solo", &[("east", &["10.8.1.9"], &[])]));
        let before = build(&state);
        assert_eq!(
            find(&before, "web").external,
            ips(&["198.51.100.1", "198.51.100.4"])
        );
        state.clusters[0].status =
            json!({"phase": "Connected", "gatewaysSilentSinceMillis": NOW - 1});
        let snap = build(&state);
        let web = find(&snap, "web");
        assert_eq!(
            web.external,
            ips(&["198.51.100.4"]),
            "east's public address left"
        );
        assert_eq!(web.txt, vec!["clusters=south".to_owned()]);
        assert_eq!(
            web.views["east"],
            ips(&["10.8.1.1"]),
            "east's own clients keep its endpoints"
        );
        assert_eq!(
            web.views["west"],
            ips(&["10.9.0.53"]),
            "west still goes through its egress"
        );
        // Peers send east nothing; east's own gateway keeps its endpoints.
        assert_eq!(
            snap.gateways.silent_clusters.iter().collect::<Vec<_>>(),
            ["east"]
        );
        let gw = &snap.gateways.services[&format!("web.{ORIGIN}")];
        assert!(gw.endpoints.contains_key("east") && gw.endpoints.contains_key("south"));
        // A service only east serves: nothing for anyone but east.
        let solo = find(&snap, "solo");
        assert!(solo.external.is_empty());
        assert_eq!(solo.views.keys().collect::<Vec<_>>(), vec!["east"]);
    }

    #[test]
    fn per_cluster_objects_of_one_service_are_merged() {
        let mut state = base();
        let mut east = service("web", &[("east", &["10.8.1.1"], &[])]);
        east.key.name = "web.east".into();
        let mut west = service("web", &[("west", &["10.9.1.1"], &[])]);
        west.key.name = "web.west".into();
        scoped(&mut state).services.extend([east, west]);
        let snap = build(&state);
        let web = find(&snap, "web");
        assert_eq!(web.txt, vec!["clusters=east,west".to_owned()]);
        assert_eq!(web.external, ips(&["198.51.100.1"]));
        assert_eq!(
            snap.dns.zones[0]
                .services
                .iter()
                .filter(|s| s.name == "web")
                .count(),
            1
        );
    }

    #[test]
    fn unreachable_clusters_are_withdrawn_per_policy() {
        let mut state = base();
        scoped(&mut state)
            .services
            .push(service("web", &[("east", &["10.8.1.1"], &[])]));
        let east = state
            .clusters
            .iter_mut()
            .find(|c| c.key.name == "east")
            .expect("east");
        east.status = json!({"phase": "Unreachable", "unreachableSinceMillis": NOW - 10_000});
        // Default policy: withdraw after 30 s; 10 s in, the stale endpoints still count.
        let snap = build(&state);
        assert_eq!(find(&snap, "web").external, ips(&["198.51.100.1"]));
        assert_eq!(
            snap.next_change_ms,
            Some(NOW + 20_000),
            "rebuild when the withdrawal is due"
        );
        let later = compile(&state, NOW + 20_000, &CompileOptions::default());
        assert!(
            find(&later, "web").external.is_empty(),
            "withdrawn after 30 s"
        );
        assert_eq!(
            later.unrecorded_expiries,
            [UnrecordedExpiry {
                key: ObjectKey::global(Kind::Cluster, "east"),
                resource_version: 1,
                expired_at_ms: NOW + 20_000,
            }],
            "the withdrawal is to be recorded, so it gets a new version"
        );
        let mut recorded = state.clone();
        recorded.clusters[0].updated_at = NOW + 20_000;
        let recorded = compile(&recorded, NOW + 20_000, &CompileOptions::default());
        assert!(
            recorded.unrecorded_expiries.is_empty(),
            "a write at or after the withdrawal records it"
        );
        // keep: never withdrawn.
        let east = state
            .clusters
            .iter_mut()
            .find(|c| c.key.name == "east")
            .expect("east");
        east.spec["staleEndpointPolicy"] = json!("keep");
        let kept = compile(&state, NOW + 3_600_000, &CompileOptions::default());
        assert_eq!(find(&kept, "web").external, ips(&["198.51.100.1"]));
        // withdrawAfter: 5s.
        let east = state
            .clusters
            .iter_mut()
            .find(|c| c.key.name == "east")
            .expect("east");
        east.spec["staleEndpointPolicy"] = json!({"withdrawAfter": "5s"});
        assert!(find(&build(&state), "web").external.is_empty());
    }

    #[test]
    fn only_not_ready_endpoints_give_empty_answers_everywhere() {
        let mut state = base();
        scoped(&mut state)
            .services
            .push(service("web", &[("east", &[], &["10.8.1.1"])]));
        let snap = build(&state);
        let web = find(&snap, "web");
        assert!(web.external.is_empty());
        assert!(web.views.is_empty(), "{:?}", web.views);
        assert_eq!(web.txt, vec!["clusters=".to_owned()]);
    }

    #[test]
    fn cluster_view_is_local_endpoints_else_egress_else_external() {
        let mut state = base();
        scoped(&mut state).services.push(service(
            "api",
            &[("east", &["10.8.2.2", "10.8.2.1", "10.8.2.2"], &["10.8.2.9"])],
        ));
        let snap = build(&state);
        let api = find(&snap, "api");
        assert_eq!(
            api.views["east"],
            ips(&["10.8.2.1", "10.8.2.2"]),
            "local, sorted, deduped"
        );
        assert_eq!(
            api.views["west"],
            ips(&["10.9.0.53"]),
            "west's egress gateway"
        );
        assert!(
            !api.views.contains_key("north"),
            "no gateway: external answer"
        );
        assert!(!api.views.contains_key("south"), "no networks: no view");
    }

    #[test]
    fn a_split_between_version_subsets_selects_endpoints_by_their_labels() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects.services.push(
            object(
                ObjectKey::scoped(Kind::Service, "production", "web.east"),
                json!({"name": "web", "ports": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                       "clusters": {"east": {"notReady": [], "ready": [
                           {"address": "10.8.1.1", "labels": {"version": "v1.5", "env": "us-prod"}},
                           {"address": "10.8.1.2", "labels": {"version": "v1.5", "env": "us-staging"}},
                           {"address": "10.8.1.3", "labels": {"version": "v2.0-alpha"}},
                           {"address": "10.8.1.4"}]}}}),
            )
            .into(),
        );
        objects.routings.push(object(
            ObjectKey::scoped(Kind::Routing, "production", "web"),
            json!({"rules": [{"destinations": [
                {"cluster": "east", "tags": {"version": "v1.5", "env": "us-prod"}, "weight": 99},
                {"cluster": "east", "subset": "v2.0-alpha", "weight": 1}]}]}),
        ));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let gw = &snap.gateways.services[&format!("web.{ORIGIN}")];
        let destinations: Vec<(Option<&str>, u32)> = gw.rules[0]
            .destinations
            .iter()
            .map(|d| (d.subset.as_deref(), d.weight))
            .collect();
        assert_eq!(
            destinations,
            [
                (Some("env=us-prod,version=v1.5"), 99),
                (Some("version=v2.0-alpha"), 1)
            ]
        );
        assert_eq!(
            gw.subsets["env=us-prod,version=v1.5"][&"east".to_owned()],
            ips(&["10.8.1.1"])
        );
        assert_eq!(
            gw.subsets["version=v2.0-alpha"][&"east".to_owned()],
            ips(&["10.8.1.3"])
        );
        // East's own clients go through its egress: only the gateway splits by subset.
        assert_eq!(find(&snap, "web").views["east"], ips(&["10.8.0.53"]));
    }

    #[test]
    fn tags_without_a_cluster_select_in_every_member_cluster() {
        let mut state = base();
        let objects = scoped(&mut state);
        for (cluster, address) in [("east", "10.8.1.1"), ("west", "10.9.1.1")] {
            objects.services.push(
                object(
                    ObjectKey::scoped(Kind::Service, "production", format!("web.{cluster}")),
                    json!({"name": "web", "ports": [{"name": "http", "port": 80}],
                           "clusters": {cluster: {"notReady": [], "ready": [
                               {"address": address, "labels": {"version": "v2"}}]}}}),
                )
                .into(),
            );
        }
        objects.routings.push(object(
            ObjectKey::scoped(Kind::Routing, "production", "web"),
            json!({"rules": [{"destinations": [{"tags": {"version": "v2"}, "weight": 100}]}]}),
        ));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let gw = &snap.gateways.services[&format!("web.{ORIGIN}")];
        assert_eq!(gw.rules[0].destinations[0].cluster, "", "any cluster");
        let subset = &gw.subsets["version=v2"];
        assert_eq!(subset[&"east".to_owned()], ips(&["10.8.1.1"]));
        assert_eq!(subset[&"west".to_owned()], ips(&["10.9.1.1"]));
    }

    #[test]
    fn external_workloads_are_gateway_endpoints_where_they_can_be_dialled() {
        let mut state = base();
        let objects = scoped(&mut state);
        let vm = |name: &str, svc: &str, cluster: Option<&str>| {
            let mut spec = json!({"name": name, "service": svc, "address": "192.0.2.7", "ttl": "1h",
                                  "ports": [{"name": "http", "port": 8080, "protocol": "HTTP"},
                                            {"name": "pg", "port": 5432}]});
            if let Some(c) = cluster {
                spec["cluster"] = json!(c);
            }
            object(
                ObjectKey::scoped(Kind::ExternalWorkload, "production", name),
                spec,
            )
        };
        objects
            .external_workloads
            .push(vm("billing-1", "billing", None));
        objects
            .external_workloads
            .push(vm("ledger-1", "ledger", Some("west")));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let gw = |svc: &str| snap.gateways.services[&format!("{svc}.{ORIGIN}")].clone();
        // No cluster: every member cluster's gateway dials it (north has none).
        let billing = gw("billing");
        assert_eq!(
            billing.endpoints.keys().collect::<Vec<_>>(),
            ["east", "south", "west"]
        );
        assert_eq!(
            billing.endpoints.get("east").cloned().expect("east"),
            ips(&["192.0.2.7"])
        );
        assert_eq!(
            billing.http_port.get("south").copied().expect("south"),
            8080
        );
        assert_eq!(billing.tcp_ports[0].port, 5432);
        assert_eq!(billing.tcp_ports[0].target_port["west"], 5432);
        // In west's network: only west's gateway dials it.
        let ledger = gw("ledger");
        assert_eq!(ledger.endpoints.keys().collect::<Vec<_>>(), ["west"]);
        assert_eq!(ledger.http_port.get("west").copied().expect("west"), 8080);
    }

    #[test]
    fn external_workloads_join_the_subsets_their_labels_match_where_they_are_dialled() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects.services.push(
            object(
                ObjectKey::scoped(Kind::Service, "production", "ledger.west"),
                json!({"name": "ledger", "ports": [{"name": "http", "port": 8080}],
                       "clusters": {"west": {"notReady": [], "ready": [
                           {"address": "10.9.1.1", "labels": {"version": "v1"}}]}}}),
            )
            .into(),
        );
        let vm = |name: &str, address: &str, version: &str, cluster: Option<&str>| {
            let mut spec = json!({"name": name, "service": "ledger", "address": address,
                                  "ttl": "1h", "labels": {"version": version},
                                  "ports": [{"name": "http", "port": 8080}]});
            if let Some(c) = cluster {
                spec["cluster"] = json!(c);
            }
            object(
                ObjectKey::scoped(Kind::ExternalWorkload, "production", name),
                spec,
            )
        };
        for workload in [
            vm("canary-west", "192.0.2.7", "canary", Some("west")),
            vm("canary-any", "192.0.2.8", "canary", None),
            vm("stable-any", "192.0.2.9", "v1", None),
        ] {
            objects.external_workloads.push(workload);
        }
        objects.routings.push(object(
            ObjectKey::scoped(Kind::Routing, "production", "ledger"),
            json!({"rules": [{"destinations": [
                {"tags": {"version": "v1"}, "weight": 99},
                {"subset": "canary", "weight": 1}]}]}),
        ));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let gw = &snap.gateways.services[&format!("ledger.{ORIGIN}")];
        let canary = &gw.subsets["version=canary"];
        // West dials both canaries; the other gateways only the one with
        // no cluster (north has no gateway: none).
        assert_eq!(canary[&"west".to_owned()], ips(&["192.0.2.7", "192.0.2.8"]));
        assert_eq!(canary[&"east".to_owned()], ips(&["192.0.2.8"]));
        assert_eq!(canary[&"south".to_owned()], ips(&["192.0.2.8"]));
        assert!(canary.get("north").is_none_or(Vec::is_empty));
        let stable = &gw.subsets["version=v1"];
        assert_eq!(stable[&"west".to_owned()], ips(&["10.9.1.1", "192.0.2.9"]));
        assert_eq!(stable[&"east".to_owned()], ips(&["192.0.2.9"]));
    }

    #[test]
    fn a_workload_on_other_ports_than_the_pods_is_dialled_on_its_own() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects.services.push(
            object(
                ObjectKey::scoped(Kind::Service, "production", "ledger.west"),
                json!({"name": "ledger", "ports": [{"name": "http", "port": 80, "protocol": "HTTP"},
                                                   {"name": "pg", "port": 5432}],
                       "clusters": {"west": {"notReady": [], "ready": [{"address": "10.9.1.1"}]}}}),
            )
            .into(),
        );
        // The service's ports 80 and 5432, on the workload's own ports.
        let vm = |name: &str, address: &str, http: u16, pg: u16| {
            object(
                ObjectKey::scoped(Kind::ExternalWorkload, "production", name),
                json!({"name": name, "service": "ledger", "address": address, "ttl": "1h",
                       "cluster": "west",
                       "ports": [{"name": "http", "port": 80, "targetPort": http, "protocol": "HTTP"},
                                 {"name": "pg", "port": 5432, "targetPort": pg}]}),
            )
        };
        objects
            .external_workloads
            .push(vm("ledger-vm-1", "192.0.2.7", 8080, 15432));
        objects
            .external_workloads
            .push(vm("ledger-vm-2", "192.0.2.8", 80, 5432));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let gw = &snap.gateways.services[&format!("ledger.{ORIGIN}")];
        assert_eq!(
            gw.http_port.get("west").copied(),
            Some(80),
            "the pods' port"
        );
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let in_west = |port: u16| {
            BTreeMap::from([("west".to_owned(), BTreeMap::from([(ip("192.0.2.7"), port)]))])
        };
        assert_eq!(
            gw.http_port_by_address,
            in_west(8080),
            "only the workload on another port has its own, in its cluster"
        );
        assert_eq!(gw.http_ports, [80], "the service port clients dial");
        let pg = gw.tcp_ports.iter().find(|t| t.port == 5432).expect("pg");
        assert_eq!(pg.target_port["west"], 5432);
        assert_eq!(pg.target_port_by_address, in_west(15432));
    }

    #[test]
    fn a_workload_in_a_cluster_outside_the_global_namespace_is_a_problem() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects.external_workloads.push(object(
            ObjectKey::scoped(Kind::ExternalWorkload, "production", "ledger-1"),
            json!({"name": "ledger-1", "service": "ledger", "address": "192.0.2.7",
                   "ttl": "1h", "cluster": "nowhere",
                   "ports": [{"name": "http", "port": 8080}]}),
        ));
        let snap = build(&state);
        let messages: Vec<(&str, &str)> = snap
            .problems
            .iter()
            .map(|p| (p.name.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [(
                "ledger-1",
                "cluster nowhere is not a registered member of global namespace production: no gateway reaches this workload"
            )]
        );
        assert!(
            snap.gateways.services[&format!("ledger.{ORIGIN}")]
                .endpoints
                .is_empty(),
            "no gateway dials it"
        );
    }

    #[test]
    fn grpc_and_h2c_ports_make_gateways_speak_h2c_to_endpoints() {
        let port = |name: &str, protocol: &str| -> WorkloadPort {
            serde_json::from_value(json!({"name": name, "port": 80, "protocol": protocol}))
                .expect("port")
        };
        for (name, protocol, h2c) in [
            ("grpc", "TCP", true),
            ("grpc-api", "TCP", true),
            ("h2c", "TCP", true),
            ("web", "GRPC", true),
            ("web", "HTTP2", true),
            ("http", "HTTP", false),
            ("grpcx", "TCP", false),
        ] {
            assert_eq!(speaks_h2c(&port(name, protocol)), h2c, "{name} {protocol}");
        }
        let mut state = base();
        let objects = scoped(&mut state);
        let mut grpc = service("health", &[("west", &["10.9.1.1"], &[])]);
        if let Ok(spec) = &mut grpc.spec {
            Arc::make_mut(spec).ports = vec![port("grpc", "TCP")];
        }
        objects.services.push(grpc);
        objects
            .services
            .push(service("web", &[("west", &["10.9.1.2"], &[])]));
        let snap = build(&state);
        let gw = |svc: &str| snap.gateways.services[&format!("{svc}.{ORIGIN}")].clone();
        assert_eq!(gw("health").h2c.iter().collect::<Vec<_>>(), ["west"]);
        assert!(gw("web").h2c.is_empty(), "HTTP/1.1 by default");
    }

    #[test]
    fn gateway_rules_are_ordered_by_precedence_and_carry_every_condition() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects
            .services
            .push(service("web", &[("east", &["10.8.1.1"], &[])]));
        objects.routings.push(object(
            ObjectKey::scoped(Kind::Routing, "production", "web"),
            json!({"rules": [
                {"match": {"path": {"prefix": "/api/"}, "method": "POST"},
                 "destinations": [{"cluster": "east", "weight": 100}]},
                {"match": {"source": "checkout",
                           "headers": [{"name": "user-agent", "regex": "^(.*?;)?(iPhone)(;.*)?$"}]},
                 "precedence": 2,
                 "destinations": [{"cluster": "west", "weight": 100}]},
                {"destinations": [{"cluster": "east", "weight": 100}]}]}),
        ));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let rules = &snap.gateways.services[&format!("web.{ORIGIN}")].rules;
        assert_eq!(rules.len(), 3);
        // Precedence 2 first.
        assert_eq!(rules[0].source.as_deref(), Some("checkout"));
        assert_eq!(
            rules[0].headers[0].matcher,
            gns_contract::config::HeaderMatcher::Regex("^(?:^(.*?;)?(iPhone)(;.*)?$)$".into())
        );
        assert_eq!(rules[0].destinations[0].cluster, "west");
        assert_eq!(
            rules[1].path,
            Some(gns_contract::config::HeaderMatcher::Prefix("/api/".into()))
        );
        assert_eq!(rules[1].method.as_deref(), Some("POST"));
        assert_eq!(
            (rules[2].source.as_ref(), rules[2].path.as_ref()),
            (None, None)
        );
    }

    #[test]
    fn routing_elsewhere_sends_the_cluster_to_its_egress() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects.services.push(service(
            "web",
            &[("east", &["10.8.1.1"], &[]), ("west", &["10.9.1.1"], &[])],
        ));
        objects.services.push(service(
            "api",
            &[("east", &["10.8.2.1"], &[]), ("west", &["10.9.2.1"], &[])],
        ));
        // All of web's traffic goes to west; api keeps a zero-weight destination elsewhere.
        objects
            .routings
            .push(routing("web", json!([{"cluster": "west", "weight": 100}])));
        objects.routings.push(routing(
            "api",
            json!([{"cluster": "east", "weight": 100}, {"cluster": "west", "weight": 0}]),
        ));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let web = find(&snap, "web");
        assert_eq!(
            web.views["east"],
            ips(&["10.8.0.53"]),
            "routed elsewhere: egress"
        );
        assert_eq!(
            web.views["west"],
            ips(&["10.9.1.1"]),
            "destination itself: local"
        );
        let api = find(&snap, "api");
        assert_eq!(api.views["east"], ips(&["10.8.2.1"]));
        assert_eq!(
            api.views["west"],
            ips(&["10.9.0.53"]),
            "west is routed to east: egress"
        );
    }

    #[test]
    fn retry_and_outlier_settings_reach_the_gateway_config() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects
            .services
            .push(service("web", &[("east", &["10.8.1.1"], &[])]));
        objects.routings.push(object(
            ObjectKey::scoped(Kind::Routing, "production", "web"),
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}],
                   "retries": {"attempts": 2, "on": ["gateway-error", "retriable-status-codes"],
                               "retriableStatusCodes": [409], "retryNonIdempotent": true},
                   "outlierDetection": {"consecutiveFailures": 5, "interval": "2s",
                                        "ejectionTime": "30s", "maxEjectedPercent": 50}}),
        ));
        let snap = build(&state);
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        let web = &snap.gateways.services["web.production.app.acme.com"];
        let retries = web.retries.as_ref().expect("retries");
        assert_eq!(retries.attempts, 3);
        assert!(retries.on_gateway_error && !retries.on_5xx && !retries.on_reset);
        assert_eq!(retries.retriable_status_codes, [409]);
        assert!(retries.non_idempotent);
        assert_eq!(
            web.outliers,
            gns_contract::config::OutlierPolicy {
                consecutive_failures: 5,
                interval_ms: Some(2_000),
                ejection_ms: 30_000,
                max_ejected_percent: 50,
            }
        );
    }

    #[test]
    fn routing_only_service_exists_without_addresses() {
        let mut state = base();
        scoped(&mut state).routings.push(routing(
            "later",
            json!([{"cluster": "east", "weight": 100}]),
        ));
        let snap = build(&state);
        let later = find(&snap, "later");
        assert!(later.external.is_empty() && later.views.is_empty() && later.ports.is_empty());
    }

    #[test]
    fn the_public_entry_serves_only_what_a_policy_opens_to_external_by_name() {
        let mut state = base();
        scoped(&mut state)
            .services
            .push(service("web", &[("east", &["10.8.1.1"], &[])]));
        let host = format!("web.{ORIGIN}");
        let external = |state: &StoreState| build(state).gateways.services[&host].external;
        assert!(
            !external(&state),
            "closed by default, even with defaultAccess allow"
        );
        let policy = |name: &str, from: &str, action: &str| {
            object(
                ObjectKey::scoped(Kind::AccessPolicy, "production", name),
                json!({"name": name, "from": [from], "to": "web", "action": action}),
            )
        };
        scoped(&mut state)
            .access_policies
            .push(policy("any", "*", "allow"));
        assert!(!external(&state), "`*` does not name the internet");
        scoped(&mut state)
            .access_policies
            .push(policy("outside", "external", "allow"));
        assert!(external(&state));
        scoped(&mut state)
            .access_policies
            .push(policy("nobody", "*", "deny"));
        assert!(!external(&state), "a deny of every caller closes it");
    }

    #[test]
    fn peer_clusters_may_call_when_a_service_running_there_may() {
        let mut state = base();
        state.global_namespaces[0].spec["defaultAccess"] = json!("deny");
        let objects = scoped(&mut state);
        objects.services.push(service(
            "web",
            &[("east", &["10.8.1.1"], &[]), ("west", &["10.9.1.1"], &[])],
        ));
        objects
            .services
            .push(service("api", &[("west", &["10.9.2.1"], &[])]));
        let policy = |name: &str, from: &[&str], to: &str, action: &str| {
            object(
                ObjectKey::scoped(Kind::AccessPolicy, "production", name),
                json!({"name": name, "from": from, "to": to, "action": action}),
            )
        };
        objects
            .access_policies
            .push(policy("api-to-web", &["api"], "web", "allow"));
        let snap = build(&state);
        let web = &snap.gateways.services[&format!("web.{ORIGIN}")];
        assert_eq!(
            web.allowed_clusters,
            Some(vec!["west".to_owned()]),
            "only west runs a permitted caller (api)"
        );
        assert_eq!(
            web.allowed_callers,
            Some(vec!["api".to_owned()]),
            "by name, only api may call web; callers no service owns may not"
        );
        let api = &snap.gateways.services[&format!("api.{ORIGIN}")];
        assert_eq!(api.allowed_clusters, Some(vec![]), "no one may call api");
        assert_eq!(api.allowed_callers, Some(vec![]));

        // Allowed by default, and no policy names web: no restriction.
        let mut open = state.clone();
        open.global_namespaces[0].spec["defaultAccess"] = json!("allow");
        scoped(&mut open).access_policies.clear();
        let snap = build(&open);
        assert_eq!(
            snap.gateways.services[&format!("web.{ORIGIN}")].allowed_clusters,
            None
        );
        assert_eq!(
            snap.gateways.services[&format!("web.{ORIGIN}")].allowed_callers,
            None
        );
        // A deny of one caller, allowed by default otherwise: the others by
        // name and unnamed callers (`*`) may call.
        scoped(&mut open)
            .access_policies
            .push(policy("not-api", &["api"], "web", "deny"));
        let snap = build(&open);
        assert_eq!(
            snap.gateways.services[&format!("web.{ORIGIN}")].allowed_callers,
            Some(vec!["web".to_owned(), "*".to_owned()])
        );
        scoped(&mut open).access_policies.clear();
        // A deny of every caller wins over the default.
        scoped(&mut open)
            .access_policies
            .push(policy("nobody", &["*"], "web", "deny"));
        let snap = build(&open);
        assert_eq!(
            snap.gateways.services[&format!("web.{ORIGIN}")].allowed_clusters,
            Some(vec![])
        );
    }

    #[test]
    fn routing_to_a_cluster_without_gateway_is_a_problem_and_ignored() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects
            .services
            .push(service("web", &[("east", &["10.8.1.1"], &[])]));
        objects.routings.push(routing(
            "web",
            json!([{"cluster": "east", "weight": 50}, {"cluster": "north", "weight": 50}]),
        ));
        let snap = build(&state);
        assert_eq!(snap.problems.len(), 1, "{:?}", snap.problems);
        let p = &snap.problems[0];
        assert_eq!(
            (p.kind, p.scope.as_str(), p.name.as_str()),
            (Kind::Routing, "production", "web")
        );
        assert!(
            p.message.contains("rules[0].destinations[1]") && p.message.contains("north"),
            "{p}"
        );
        // Left out: east answers locally as if there were no routing.
        assert_eq!(find(&snap, "web").views["east"], ips(&["10.8.1.1"]));
    }

    /// `w`, recorded expired (by the liveness plane) at `at`.
    fn expired(mut w: StoredObject, at: i64) -> StoredObject {
        w.status["expiredAtMillis"] = json!(at);
        w
    }

    #[test]
    fn only_workloads_recorded_expired_leave_the_answers() {
        let mut state = base();
        let objects = scoped(&mut state);
        objects
            .services
            .push(service("db", &[("east", &["10.8.3.1"], &[])]));
        // Beats are not the compiler's business: an old heartbeat time is
        // still alive until the liveness plane records the workload expired.
        objects
            .external_workloads
            .push(workload("vm-a", "db", "192.0.2.10", NOW - 20_000));
        objects
            .external_workloads
            .push(workload("vm-b", "db", "192.0.2.11", NOW - 120_000));
        objects.external_workloads.push(expired(
            workload("vm-c", "db", "192.0.2.12", NOW - 31_000),
            NOW - 1_000,
        ));
        objects.external_workloads.push(expired(
            workload("vm-d", "cache", "192.0.2.13", NOW - 60_000),
            NOW - 30_000,
        ));
        objects
            .external_workloads
            .push(workload("vm-e", "queue", "192.0.2.14", NOW - 1_000));
        let snap = build(&state);
        let db = find(&snap, "db");
        assert_eq!(
            db.external,
            ips(&["192.0.2.10", "192.0.2.11", "198.51.100.1"])
        );
        let ports: Vec<(&str, u16, Transport)> = db
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("http", 80, Transport::Tcp),
                ("pg", 5432, Transport::Tcp),
                ("stats", 8125, Transport::Udp)
            ]
        );
        // Workload-only service: external has the workload; clusters go through their egress.
        let queue = find(&snap, "queue");
        assert_eq!(queue.external, ips(&["192.0.2.14"]));
        assert_eq!(queue.views["east"], ips(&["10.8.0.53"]));
        assert_eq!(queue.txt, vec!["clusters=".to_owned()]);
        // An expired-only service is not there at all.
        assert!(snap.dns.zones[0].services.iter().all(|s| s.name != "cache"));
        // No workload makes the answers change on their own, and none is
        // left for the builder to record.
        assert_eq!(snap.next_change_ms, None);
        assert!(snap.unrecorded_expiries.is_empty());
        // An hour later, without a write, nothing changed.
        let later = compile(&state, NOW + 3_600_000, &CompileOptions::default());
        assert_eq!(later.dns, snap.dns);
    }

    #[test]
    fn endpoints_of_clusters_outside_the_namespace_are_ignored() {
        let mut state = base();
        state.clusters.push(cluster(
            "other",
            &["10.20.0.0/16"],
            Some(gateway("10.20.0.53", Some("198.51.100.20"))),
        ));
        scoped(&mut state).services.push(service(
            "web",
            &[
                ("other", &["10.20.1.1"], &[]),
                ("ghost", &["10.30.1.1"], &[]),
            ],
        ));
        let snap = build(&state);
        let web = find(&snap, "web");
        assert!(web.external.is_empty());
        assert!(web.views.is_empty());
        assert_eq!(web.txt, vec!["clusters=".to_owned()]);
    }

    #[test]
    fn broken_specs_are_reported_and_skipped() {
        let mut state = base();
        state.clusters.push(object(
            ObjectKey::global(Kind::Cluster, "broken"),
            json!({"name": "broken", "kubernetes": {"server": "https://x"}, "networks": ["not-a-cidr"]}),
        ));
        state.global_namespaces.push(object(
            ObjectKey::global(Kind::GlobalNamespace, "old"),
            json!({"name": "old", "domain": "old.example.com", "retired": true}),
        ));
        let objects = scoped(&mut state);
        objects
            .services
            .push(service("web", &[("east", &["10.8.1.1"], &[])]));
        objects.services.push(
            object(
                ObjectKey::scoped(Kind::Service, "production", "bad"),
                json!({"name": "bad", "ports": "eighty"}),
            )
            .into(),
        );
        objects.external_workloads.push(object(
            ObjectKey::scoped(Kind::ExternalWorkload, "production", "vm"),
            json!({"name": "vm", "service": "db", "address": "192.0.2.300", "ports": [], "ttl": "30s"}),
        ));
        objects.routings.push(object(
            ObjectKey::scoped(Kind::Routing, "production", "web"),
            json!({"rules": "all to east"}),
        ));
        let snap = build(&state);
        let keys: Vec<(Kind, &str, &str)> = snap
            .problems
            .iter()
            .map(|p| (p.kind, p.scope.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (Kind::Cluster, "", "broken"),
                (Kind::GlobalNamespace, "", "old"),
                (Kind::Routing, "production", "web"),
                (Kind::ExternalWorkload, "production", "vm"),
                (Kind::Service, "production", "bad"),
            ]
        );
        assert!(
            snap.problems[0].message.contains("networks[0]"),
            "{}",
            snap.problems[0]
        );
        // Everything else still compiles.
        assert_eq!(snap.dns.zones.len(), 1);
        assert_eq!(snap.dns.views.len(), 3);
        assert_eq!(find(&snap, "web").views["east"], ips(&["10.8.1.1"]));
        assert!(snap.dns.zones[0].services.iter().all(|s| s.name != "bad"));
    }

    #[test]
    fn service_named_like_the_nameserver_is_a_problem() {
        let mut state = base();
        scoped(&mut state)
            .services
            .push(service("ns1", &[("east", &["10.8.1.1"], &[])]));
        let snap = build(&state);
        assert!(snap.dns.zones[0].services.is_empty());
        assert_eq!(snap.problems.len(), 1);
        assert_eq!(snap.problems[0].name, "ns1");
    }

    #[test]
    fn duplicate_domain_is_a_problem() {
        let mut state = base();
        state.global_namespaces.push(object(
            ObjectKey::global(Kind::GlobalNamespace, "staging"),
            json!({"name": "staging", "domain": ORIGIN}),
        ));
        let snap = build(&state);
        assert_eq!(snap.dns.zones.len(), 1);
        assert_eq!(snap.dns.zones[0].txt, vec!["gns=production".to_owned()]);
        assert_eq!(snap.problems.len(), 1);
        assert_eq!(snap.problems[0].name, "staging");
    }

    /// `compile_with` over a cache must give what `compile` gives.
    fn check_incremental(state: &StoreState, cache: &mut CompileCache) -> Snapshot {
        let incremental = compile_with(state, NOW, &CompileOptions::default(), cache);
        assert_eq!(
            incremental,
            build(state),
            "incremental differs from a full compile"
        );
        incremental
    }

    #[test]
    fn a_compile_reuses_unchanged_services_and_equals_a_full_one() {
        let mut state = base();
        scoped(&mut state).services.push(service(
            "web",
            &[("east", &["10.8.1.1"], &[]), ("west", &["10.9.1.1"], &[])],
        ));
        scoped(&mut state)
            .services
            .push(service("api", &[("east", &["10.8.1.2"], &[])]));
        let mut cache = CompileCache::default();
        let first = check_incremental(&state, &mut cache);
        assert_eq!(cache.len(), 2);
        let find_arc = |snap: &Snapshot, name: &str| {
            Arc::clone(
                snap.dns.zones[0]
                    .services
                    .iter()
                    .find(|s| s.name == name)
                    .expect("service"),
            )
        };

        // One service changes: only it is compiled again.
        let mut changed = state.clone();
        let api = &mut scoped(&mut changed).services[1];
        *api = service("api", &[("east", &["10.8.1.3"], &[])]);
        api.resource_version = 2;
        let second = check_incremental(&changed, &mut cache);
        assert!(Arc::ptr_eq(
            &find_arc(&first, "web"),
            &find_arc(&second, "web")
        ));
        assert!(!Arc::ptr_eq(
            &find_arc(&first, "api"),
            &find_arc(&second, "api")
        ));
        let host = format!("web.{ORIGIN}");
        assert!(Arc::ptr_eq(
            &first.gateways.services[&host],
            &second.gateways.services[&host]
        ));

        // What every service depends on changes: all are compiled again.
        let mut cluster_changed = changed.clone();
        cluster_changed.clusters[1].status =
            json!({"phase": "Connected", "gatewaysSilentSinceMillis": 1});
        cluster_changed.clusters[1].resource_version = 9;
        let third = check_incremental(&cluster_changed, &mut cache);
        assert!(!Arc::ptr_eq(
            &find_arc(&second, "web"),
            &find_arc(&third, "web")
        ));

        // A policy opening web to outside clients only: adding a service
        // elsewhere does not recompile web.
        let mut open = cluster_changed.clone();
        scoped(&mut open).access_policies.push(object(
            ObjectKey::scoped(Kind::AccessPolicy, "production", "outside"),
            json!({"name": "outside", "from": ["external"], "to": "web", "action": "allow"}),
        ));
        let before = check_incremental(&open, &mut cache);
        scoped(&mut open)
            .services
            .push(service("search", &[("north", &["10.10.1.9"], &[])]));
        let after = check_incremental(&open, &mut cache);
        assert!(Arc::ptr_eq(
            &find_arc(&before, "web"),
            &find_arc(&after, "web")
        ));

        // A restricting policy: a new caller service changes who may call web.
        let mut restricted = cluster_changed.clone();
        scoped(&mut restricted).access_policies.push(object(
            ObjectKey::scoped(Kind::AccessPolicy, "production", "p"),
            json!({"name": "p", "from": ["billing"], "to": "web", "action": "allow"}),
        ));
        check_incremental(&restricted, &mut cache);
        scoped(&mut restricted)
            .services
            .push(service("billing", &[("north", &["10.10.1.1"], &[])]));
        check_incremental(&restricted, &mut cache);
        // Removed services leave the cache.
        scoped(&mut restricted).services.clear();
        check_incremental(&restricted, &mut cache);
        assert!(cache.is_empty());
    }

    /// A discovered service written as discovery writes it: `<svc>.<cluster>`.
    fn discovered(svc: &str, cluster: &str, ready: &[&str], version: u64) -> ServiceObject {
        let mut o = service(svc, &[(cluster, ready, &[])]);
        o.key.name = format!("{svc}.{cluster}");
        o.resource_version = version;
        o
    }

    /// Applies `changes` as the builder does, compiles over the cache (which
    /// must equal a full compile), and marks the state compiled.
    fn write(state: &mut StoreState, cache: &mut CompileCache, changes: Changes) -> Snapshot {
        state.revision += 1;
        state.apply(Changes {
            revision: state.revision,
            ..changes
        });
        let snapshot = check_incremental(state, cache);
        state.compiled();
        snapshot
    }

    fn services(list: Vec<ServiceObject>) -> Changes {
        Changes {
            services: list,
            ..Changes::default()
        }
    }

    #[test]
    fn a_compile_of_the_written_services_only_equals_a_full_one() {
        let mut state = base();
        let list = &mut scoped(&mut state).services;
        list.push(discovered("api", "east", &["10.8.1.2"], 1));
        list.push(discovered("web", "east", &["10.8.1.1"], 1));
        list.push(discovered("web", "west", &["10.9.1.1"], 1));
        let mut cache = CompileCache::default();
        let first = check_incremental(&state, &mut cache);
        state.compiled();
        let web = |snap: &Snapshot| Arc::clone(&find_service(snap, "web"));

        // An endpoint of api changes: web keeps its very allocation.
        let changes = services(vec![discovered("api", "east", &["10.8.1.3"], 2)]);
        let second = write(&mut state, &mut cache, changes);
        assert_eq!(cache.looked_at(), (1, 1), "only api is looked at");
        assert!(Arc::ptr_eq(&web(&first), &web(&second)));
        assert_eq!(find(&second, "api").external, ips(&["198.51.100.1"]));

        // A new service, one whose name is a name server's, one whose spec no longer parses.
        let mut broken = discovered("db", "east", &["10.8.1.9"], 3);
        broken.spec = Err("stored spec does not parse: boom".into());
        let changes = services(vec![
            discovered("cache", "west", &["10.9.1.7"], 3),
            discovered("ns1", "east", &["10.8.1.8"], 3),
            broken,
        ]);
        let third = write(&mut state, &mut cache, changes);
        assert!(find_service_opt(&third, "cache").is_some());
        assert!(find_service_opt(&third, "ns1").is_none());
        assert_eq!(third.problems.len(), 2, "{:?}", third.problems);

        // Fixed, and deleted: the problems go with them.
        let changes = Changes {
            services: vec![discovered("db", "east", &["10.8.1.9"], 4)],
            deleted: vec![ObjectKey::scoped(Kind::Service, "production", "ns1.east")],
            ..Changes::default()
        };
        let fourth = write(&mut state, &mut cache, changes);
        assert!(fourth.problems.is_empty(), "{:?}", fourth.problems);
        assert!(find_service_opt(&fourth, "db").is_some());

        // One cluster's object of web goes: web keeps the other's.
        let changes = Changes {
            deleted: vec![ObjectKey::scoped(Kind::Service, "production", "web.east")],
            ..Changes::default()
        };
        let fifth = write(&mut state, &mut cache, changes);
        assert_eq!(cache.looked_at(), (1, 1));
        assert_eq!(find(&fifth, "web").txt, vec!["clusters=west".to_owned()]);

        // A routing object (and one that can't be honoured), then deleted.
        let mut split = routing("web", json!([{"cluster": "east", "weight": 1}]));
        split.resource_version = 6;
        let mut bad = routing("api", json!([{"cluster": "north", "weight": 1}]));
        bad.resource_version = 6;
        let changes = Changes {
            changed: vec![bad, split],
            ..Changes::default()
        };
        let sixth = write(&mut state, &mut cache, changes);
        assert_eq!(sixth.problems.len(), 1, "{:?}", sixth.problems);
        let changes = Changes {
            deleted: vec![
                ObjectKey::scoped(Kind::Routing, "production", "api"),
                ObjectKey::scoped(Kind::Routing, "production", "web"),
            ],
            ..Changes::default()
        };
        assert!(write(&mut state, &mut cache, changes).problems.is_empty());

        // A service with no object left is gone from DNS and gateways.
        let changes = Changes {
            deleted: vec![ObjectKey::scoped(Kind::Service, "production", "web.west")],
            ..Changes::default()
        };
        let gone = write(&mut state, &mut cache, changes);
        assert!(find_service_opt(&gone, "web").is_none());
        assert!(
            !gone
                .gateways
                .services
                .contains_key(&format!("web.{ORIGIN}"))
        );

        // An object holding another service than its name says, a workload,
        // a cluster: the zone compiles whole, and still equals a full compile.
        let mut odd = discovered("web", "east", &["10.8.1.1"], 8);
        odd.key.name = "other.east".into();
        write(&mut state, &mut cache, services(vec![odd]));
        let changes = Changes {
            services: vec![discovered("api", "east", &["10.8.1.4"], 9)],
            deleted: vec![ObjectKey::scoped(Kind::Service, "production", "other.east")],
            ..Changes::default()
        };
        write(&mut state, &mut cache, changes);
        let changes = Changes {
            changed: vec![workload("vm-a", "api", "192.0.2.10", NOW)],
            ..Changes::default()
        };
        write(&mut state, &mut cache, changes);
        assert_eq!(
            cache.looked_at().0,
            3,
            "a workload: the whole zone (api, cache, db)"
        );
        // A cluster status write that changes nothing the compiler reads.
        let mut east = state.clusters[0].clone();
        east.resource_version = 10;
        east.status = json!({"phase": "Connected", "services": 4});
        let changes = Changes {
            changed: vec![east],
            ..Changes::default()
        };
        write(&mut state, &mut cache, changes);
        assert_eq!(cache.looked_at(), (0, 0));
        let mut east = state.clusters[0].clone();
        east.resource_version = 11;
        east.spec["gateway"]["publicAddress"] = json!("198.51.100.9");
        let changes = Changes {
            changed: vec![east],
            ..Changes::default()
        };
        let last = write(&mut state, &mut cache, changes);
        assert_eq!(
            cache.looked_at().0,
            3,
            "a cluster's gateway: the whole zone"
        );
        assert!(find(&last, "api").external.contains(&ip("198.51.100.9")));

        // The namespace's domain changes: every route moves to its new host.
        let mut gns = state.global_namespaces[0].clone();
        gns.resource_version = 12;
        gns.spec["domain"] = json!("other.example.com");
        let changes = Changes {
            changed: vec![gns],
            ..Changes::default()
        };
        let moved = write(&mut state, &mut cache, changes);
        assert!(
            moved
                .gateways
                .services
                .keys()
                .all(|h| h.ends_with(".other.example.com")),
            "no route left under the old domain"
        );
    }

    #[test]
    fn output_is_deterministic_and_sorted() {
        let mut state = base();
        state.global_namespaces.push(object(
            ObjectKey::global(Kind::GlobalNamespace, "alpha"),
            json!({"name": "alpha", "domain": "zzz.example.com", "members": [{"cluster": "east", "namespace": "a"}]}),
        ));
        state.scoped.insert(
            "alpha".into(),
            ScopedObjects {
                services: vec![service("x", &[("east", &["10.8.9.9"], &[])])],
                ..ScopedObjects::default()
            },
        );
        let objects = scoped(&mut state);
        for name in ["zeta", "alpha", "mid"] {
            objects.services.push(service(
                name,
                &[
                    ("west", &["10.9.1.2", "10.9.1.1"], &[]),
                    ("east", &["10.8.1.1"], &[]),
                ],
            ));
        }
        objects
            .external_workloads
            .push(workload("vm-2", "mid", "2001:db8::1", NOW));
        objects
            .external_workloads
            .push(workload("vm-1", "mid", "192.0.2.1", NOW));
        let first = build(&state);

        let mut shuffled = state.clone();
        shuffled.clusters.reverse();
        shuffled.global_namespaces.reverse();
        for objects in shuffled.scoped.values_mut() {
            objects.services.reverse();
            objects.external_workloads.reverse();
        }
        let second = build(&shuffled);
        assert_eq!(first, second);
        assert_eq!(
            serde_json::to_string(first.dns.as_ref()).expect("json"),
            serde_json::to_string(second.dns.as_ref()).expect("json")
        );

        let origins: Vec<&str> = first.dns.zones.iter().map(|z| z.origin.as_str()).collect();
        assert_eq!(origins, [ORIGIN, "zzz.example.com"]);
        let names: Vec<&str> = first.dns.zones[0]
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["alpha", "mid", "zeta"]);
        let mid = find(&first, "mid");
        assert_eq!(
            mid.external,
            ips(&["192.0.2.1", "198.51.100.1", "2001:db8::1"])
        );
        assert_eq!(mid.views["west"], ips(&["10.9.1.1", "10.9.1.2"]));
    }

    #[test]
    fn dns_json_is_the_zone_snapshot() {
        let snap = build(&base());
        let bytes = snap.dns_json().expect("json");
        let back: ZoneSnapshot = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(&back, snap.dns.as_ref());
        assert_eq!(snap.dns_json().expect("cached"), bytes);
    }
}
