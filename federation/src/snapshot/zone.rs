//! One zone's compile, over what the last compile left in the cache:
//!
//! - **whole**: every input of the zone is read and every service's
//!   fingerprint checked (a service whose inputs are unchanged keeps its
//!   cached outputs). Taken the first time, when anything every service
//!   depends on changed (the epoch: clusters, the namespace, its access
//!   policies and external workloads), when access is restricted (who may
//!   call a service then depends on every service), and when some
//!   discovered-service object holds another service than its name says.
//! - **by name**: only the services that the writes since the last compile
//!   name ([`ZoneTouched`]: discovered-service objects `<service>.<cluster>`
//!   and routing objects) are read and compiled; the rest of the zone, its
//!   output list and its problems are the cached ones, patched. The cost of
//!   a one-service change is then that service's, not the zone's.
//!
//! Both ways give what a whole compile from an empty cache gives (tests in
//! `compile.rs` check it after every kind of write).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gns_dns::services::Services;
use gns_dns::snapshot::Zone;

use super::cache::{CachedService, CachedZone, fingerprint};
use super::compile::{
    Compiler, ServiceInputs, allowed_callers, allowed_peer_clusters, external_allowed, parse,
};
use super::{Problem, ScopedObjects, ServiceObject, ZoneTouched};
use crate::model::{Access, AccessPolicy, DiscoveredService, GlobalNamespace, Kind, Routing};
use crate::store::{ObjectKey, StoredObject};

/// Which services exist and run in which member cluster, when access is
/// restricted (an input of every service's outputs then).
type Presence<'a> = (
    &'a BTreeSet<&'a str>,
    &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
);

/// What every service of one zone is compiled with.
struct ZoneContext<'a> {
    gns_name: &'a str,
    gns: &'a GlobalNamespace,
    origin: &'a str,
    /// Member clusters that count (registered, not withdrawn).
    members: BTreeSet<&'a str>,
    /// Single-label names taken by the zone's name servers.
    reserved: BTreeSet<String>,
    /// Fingerprint of what every service depends on.
    epoch: u64,
}

/// The fingerprint of what every service of a zone depends on.
fn zone_epoch(base: u64, presence: Option<Presence<'_>>) -> u64 {
    fingerprint((base, presence))
}

/// The fingerprint of one service's inputs.
fn service_fingerprint(
    zone_epoch: u64,
    name: &str,
    discovered_from: &[(&str, u64)],
    alive_from: Option<&Vec<(String, u64)>>,
    routing_version: Option<u64>,
) -> u64 {
    fingerprint((
        zone_epoch,
        name,
        discovered_from,
        alive_from,
        routing_version,
    ))
}

/// The service a discovered-service object's name says it holds.
fn service_part(object_name: &str) -> &str {
    object_name.split('.').next().unwrap_or_default()
}

/// The discovered-service objects of service `name` in a list sorted by
/// object name: `name` itself, then `name.<cluster>` in name order (all
/// names with that prefix lie between `name.` and `name/`).
fn objects_of<'s>(services: &'s [ServiceObject], name: &str) -> Vec<&'s ServiceObject> {
    let exact = find(services, name, |o| &o.key.name);
    let (low, high) = (format!("{name}."), format!("{name}/"));
    let start = services.partition_point(|o| o.key.name < low);
    let end = services.partition_point(|o| o.key.name < high);
    exact
        .into_iter()
        .chain(services[start..end.max(start)].iter())
        .collect()
}

/// Finds an object by name in a list sorted by name.
fn find<'s, T>(list: &'s [T], name: &str, key: impl Fn(&T) -> &str) -> Option<&'s T> {
    list.binary_search_by(|o| key(o).cmp(name))
        .ok()
        .map(|i| &list[i])
}

impl Compiler<'_> {
    pub(super) fn zone(
        &mut self,
        gns_name: &str,
        gns_version: u64,
        gns: &GlobalNamespace,
        scoped: &ScopedObjects,
        touched: Option<&ZoneTouched>,
    ) -> Zone {
        let origin = gns.domain.as_str();
        let nameservers = self.nameservers(origin);
        let suffix = format!(".{origin}");
        let reserved = nameservers
            .iter()
            .filter_map(|ns| ns.name.strip_suffix(&suffix))
            .filter(|label| !label.contains('.'))
            .map(str::to_owned)
            .collect();
        let epoch = fingerprint((
            self.clusters_epoch,
            gns_name,
            gns_version,
            scoped
                .access_policies
                .iter()
                .map(|o| (&o.key.name, o.resource_version))
                .collect::<Vec<_>>(),
        ));
        let ctx = ZoneContext {
            gns_name,
            gns,
            origin,
            members: gns
                .members
                .iter()
                .map(|m| m.cluster.as_str())
                .filter(|c| self.clusters.contains_key(*c) && !self.withdrawn.contains(*c))
                .collect(),
            reserved,
            epoch,
        };
        let previous = self.previous.zones.remove(gns_name);
        let by_name = match (&previous, touched) {
            (Some(cached), Some(touched))
                if !touched.whole && !cached.restricted && !cached.odd && cached.epoch == epoch =>
            {
                written_services(scoped, touched)
            }
            _ => None,
        };
        let zone = match (previous, by_name) {
            (Some(cached), Some(names)) => self.zone_by_name(&ctx, scoped, cached, names),
            (previous, _) => self.zone_whole(&ctx, scoped, previous.unwrap_or_default()),
        };
        self.problems.extend(zone.zone_problems.iter().cloned());
        self.problems
            .extend(zone.service_problems.values().flatten().cloned());
        self.problems.extend(zone.object_problems.values().cloned());
        let services = zone.output.clone();
        self.next.zones.insert(gns_name.to_owned(), zone);
        Zone {
            origin: origin.to_owned(),
            // The builder carries the serial of an unchanged zone over.
            serial: 0,
            nameservers,
            txt: vec![format!("gns={gns_name}")],
            services,
        }
    }

    /// Reads every input of the zone; services whose fingerprint is unchanged keep `old`'s outputs.
    fn zone_whole(
        &mut self,
        ctx: &ZoneContext<'_>,
        scoped: &ScopedObjects,
        mut old: CachedZone,
    ) -> CachedZone {
        // The output starts as the last one (shared structure: what stays
        // the same costs nothing to compare or render), patched below.
        let mut zone = CachedZone {
            epoch: ctx.epoch,
            output: std::mem::take(&mut old.output),
            ..CachedZone::default()
        };
        let mut routings = BTreeMap::new();
        for object in &scoped.routings {
            let mut problems = Vec::new();
            if let Some(routing) = self.routing(object, &mut problems) {
                routings.insert(object.key.name.as_str(), (routing, object.resource_version));
            }
            if !problems.is_empty() {
                zone.service_problems
                    .insert(object.key.name.clone(), problems);
            }
        }
        // Discovery writes one object per service and cluster
        // (`<service>.<cluster>`); older or hand-written ones hold several
        // clusters. Group them by service, with the objects (name, version)
        // each service's entry was made from.
        let mut discovered: BTreeMap<&str, Vec<&DiscoveredService>> = BTreeMap::new();
        let mut discovered_from: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        for object in &scoped.services {
            // (The object's name was checked when it was read.)
            match &object.spec {
                Ok(svc) => {
                    zone.odd |= svc.name.as_str() != service_part(&object.key.name);
                    discovered.entry(svc.name.as_str()).or_default().push(svc);
                    discovered_from
                        .entry(svc.name.as_str())
                        .or_default()
                        .push((object.key.name.as_str(), object.resource_version));
                }
                Err(message) => {
                    zone.object_problems.insert(
                        object.key.name.clone(),
                        Problem::new(&object.key, message.clone()),
                    );
                }
            }
        }
        let (alive, alive_from) =
            self.alive_workloads(&scoped.external_workloads, &mut zone.zone_problems);
        // A workload placed in a cluster the global namespace does not
        // have is in DNS, but no gateway dials it: said, not left silent.
        for workload in alive.values().flatten() {
            let Some(cluster) = &workload.cluster else {
                continue;
            };
            let member = ctx.gns.members.iter().any(|m| m.cluster == *cluster);
            if !member || !self.clusters.contains_key(cluster.as_str()) {
                zone.zone_problems.push(Problem::new(
                    &ObjectKey::scoped(Kind::ExternalWorkload, ctx.gns_name, workload.name.as_str()),
                    format!(
                        "cluster {cluster} is not a registered member of global namespace {}: no gateway reaches this workload",
                        ctx.gns_name
                    ),
                ));
            }
        }
        let policies: Vec<AccessPolicy> = scoped
            .access_policies
            .iter()
            .filter_map(|o| parse::<AccessPolicy>(o, &mut zone.zone_problems))
            .collect();

        let names: BTreeSet<&str> = discovered
            .keys()
            .copied()
            .chain(alive.keys().map(String::as_str))
            .chain(routings.keys().copied())
            .collect();
        // Who may call a service depends on which services exist and run
        // where only when access is denied by default or a policy names a
        // caller other than `external` (see `unrestricted`).
        zone.restricted = ctx.gns.default_access != Access::Allow
            || policies
                .iter()
                .any(|p| p.from.iter().any(|f| f != "external"));
        let mut runs_in: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        if zone.restricted {
            for svc in discovered.values().flatten() {
                for cluster in svc.clusters.keys() {
                    runs_in
                        .entry(cluster.as_str())
                        .or_default()
                        .insert(svc.name.as_str());
                }
            }
        }
        let presence = zone.restricted.then_some((&names, &runs_in));
        let epoch = zone_epoch(ctx.epoch, presence);
        self.visited += names.len();
        zone.services.reserve(names.len());
        for &name in &names {
            let cached = old.services.remove(name);
            if ctx.reserved.contains(name) {
                zone.service_problems
                    .entry(name.to_owned())
                    .or_default()
                    .push(reserved_problem(ctx, name));
                if let Some(cached) = cached {
                    self.forget_gateway(&cached);
                }
                zone.output.remove(name);
                continue;
            }
            let routing = routings.get(name);
            let from = discovered_from.get(name).map_or(&[][..], Vec::as_slice);
            let fingerprint = service_fingerprint(
                epoch,
                name,
                from,
                alive_from.get(name),
                routing.map(|(_, v)| *v),
            );
            let inputs = ServiceInputs {
                discovered: discovered.get(name).map_or(&[], Vec::as_slice),
                workloads: alive.get(name).map_or(&[], Vec::as_slice),
                routing: routing.map(|(r, _)| r),
            };
            let last = (fingerprint, cached);
            let compiled = self.compile_service(ctx, &policies, presence, name, &inputs, last);
            self.keep(&mut zone.services, &mut zone.output, name, compiled);
        }
        for (name, cached) in &old.services {
            self.forget_gateway(cached);
            zone.output.remove(name);
        }
        zone.policies = policies;
        zone.alive = alive;
        zone.alive_from = alive_from;
        zone
    }

    /// Compiles only the services in `names` (those the writes since the
    /// last compile name) over the cached zone.
    fn zone_by_name(
        &mut self,
        ctx: &ZoneContext<'_>,
        scoped: &ScopedObjects,
        mut zone: CachedZone,
        names: Written,
    ) -> CachedZone {
        for (object_name, problem) in names.object_problems {
            match problem {
                Some(problem) => zone.object_problems.insert(object_name, problem),
                None => zone.object_problems.remove(&object_name),
            };
        }
        let epoch = zone_epoch(ctx.epoch, None);
        self.visited += names.services.len();
        for name in &names.services {
            let name = name.as_str();
            zone.service_problems.remove(name);
            let objects = objects_of(&scoped.services, name);
            let discovered: Vec<&DiscoveredService> = objects
                .iter()
                .filter_map(|o| o.spec.as_ref().ok().map(Arc::as_ref))
                .collect();
            let from: Vec<(&str, u64)> = objects
                .iter()
                .filter(|o| o.spec.is_ok())
                .map(|o| (o.key.name.as_str(), o.resource_version))
                .collect();
            let mut problems = Vec::new();
            let routing = find(&scoped.routings, name, |o| &o.key.name)
                .and_then(|o| Some((self.routing(o, &mut problems)?, o.resource_version)));
            let exists =
                !discovered.is_empty() || zone.alive.contains_key(name) || routing.is_some();
            if exists && ctx.reserved.contains(name) {
                problems.push(reserved_problem(ctx, name));
            }
            if !problems.is_empty() {
                zone.service_problems.insert(name.to_owned(), problems);
            }
            let cached = zone.services.remove(name);
            if !exists || ctx.reserved.contains(name) {
                if let Some(cached) = cached {
                    self.forget_gateway(&cached);
                }
                zone.output.remove(name);
                continue;
            }
            let fingerprint = service_fingerprint(
                epoch,
                name,
                &from,
                zone.alive_from.get(name),
                routing.as_ref().map(|(_, v)| *v),
            );
            let inputs = ServiceInputs {
                discovered: &discovered,
                workloads: zone.alive.get(name).map_or(&[], Vec::as_slice),
                routing: routing.as_ref().map(|(r, _)| r),
            };
            let last = (fingerprint, cached);
            let compiled = self.compile_service(ctx, &zone.policies, None, name, &inputs, last);
            self.keep(&mut zone.services, &mut zone.output, name, compiled);
        }
        zone
    }

    /// One service's DNS answers and gateway route: the cached ones when
    /// `last` (this compile's fingerprint of its inputs, and what the last
    /// compile left) says its inputs are unchanged, else compiled again (the
    /// old route given up first: it may move to another host, when the
    /// domain changed).
    fn compile_service(
        &mut self,
        ctx: &ZoneContext<'_>,
        policies: &[AccessPolicy],
        presence: Option<Presence<'_>>,
        name: &str,
        inputs: &ServiceInputs<'_>,
        last: (u64, Option<CachedService>),
    ) -> CachedService {
        let (fingerprint, cached) = last;
        match cached {
            Some(cached) if cached.fingerprint == fingerprint => return cached,
            Some(stale) => self.forget_gateway(&stale),
            None => {}
        }
        self.compiled += 1;
        // Unrestricted (`presence` is `None`): the callers are not asked for.
        let (no_names, no_runs) = (BTreeSet::new(), BTreeMap::new());
        let (names, runs_in) = presence.unwrap_or((&no_names, &no_runs));
        let dns = self.service(name, &ctx.members, inputs);
        let mut gateway = self.gateway_service(ctx.gns_name, name, &ctx.members, inputs);
        gateway.external = external_allowed(policies, name);
        gateway.allowed_clusters = allowed_peer_clusters(ctx.gns, policies, name, runs_in);
        gateway.allowed_callers = allowed_callers(ctx.gns, policies, name, names);
        CachedService {
            fingerprint,
            host: format!("{name}.{}", ctx.origin).to_ascii_lowercase(),
            dns: Arc::new(dns),
            gateway: Arc::new(gateway),
        }
    }

    /// Puts a compiled service into the zone's cache, its output list (in
    /// name order) and the gateway routes.
    fn keep(
        &mut self,
        services: &mut HashMap<String, CachedService>,
        output: &mut Services,
        name: &str,
        compiled: CachedService,
    ) {
        if !output
            .get(name)
            .is_some_and(|s| Arc::ptr_eq(s, &compiled.dns))
        {
            output.insert(Arc::clone(&compiled.dns));
        }
        let current = self.gateway.get(&compiled.host);
        if !current.is_some_and(|g| Arc::ptr_eq(g, &compiled.gateway)) {
            self.gateway
                .insert(compiled.host.clone(), Arc::clone(&compiled.gateway));
        }
        services.insert(name.to_owned(), compiled);
    }

    /// Takes a service that is gone out of the gateway routes (unless
    /// another zone's service holds its host now).
    pub(super) fn forget_gateway(&mut self, cached: &CachedService) {
        if self
            .gateway
            .get(&cached.host)
            .is_some_and(|g| Arc::ptr_eq(g, &cached.gateway))
        {
            self.gateway.remove(&cached.host);
        }
    }

    /// A routing object, unless it can't be honoured (reported in `problems`).
    fn routing(&self, object: &StoredObject, problems: &mut Vec<Problem>) -> Option<Routing> {
        if let Err(e) = crate::model::Name::try_from(object.key.name.clone()) {
            problems.push(Problem::new(&object.key, e));
            return None;
        }
        let routing = parse::<Routing>(object, problems)?;
        let mut unreachable = Vec::new();
        for (i, rule) in routing.rules.iter().enumerate() {
            for (j, d) in rule.destinations.iter().enumerate() {
                if d.weight == 0 {
                    continue;
                }
                let at = format!("rules[{i}].destinations[{j}]");
                // Without a cluster: wherever the selected endpoints are.
                let Some(cluster) = &d.cluster else {
                    continue;
                };
                match self.clusters.get(cluster.as_str()) {
                    None => unreachable.push(format!(
                        "{at}: cluster {cluster} is not registered (or its spec does not parse)"
                    )),
                    Some(c) if c.gateway.is_none() => unreachable.push(format!(
                        "{at}: cluster {cluster} has no gateway, so traffic can't be routed to it"
                    )),
                    Some(_) => {}
                }
            }
        }
        if unreachable.is_empty() {
            Some(routing)
        } else {
            let message = format!("routing ignored: {}", unreachable.join("; "));
            problems.push(Problem::new(&object.key, message));
            None
        }
    }
}

fn reserved_problem(ctx: &ZoneContext<'_>, name: &str) -> Problem {
    Problem::new(
        &ObjectKey::scoped(Kind::Service, ctx.gns_name, name),
        format!(
            "{name}.{} is a name server of the zone; \
             the service is left out of DNS until it is renamed",
            ctx.origin
        ),
    )
}

/// What the writes since the last compile name in one zone.
struct Written {
    /// Services to compile again.
    services: BTreeSet<String>,
    /// Discovered-service objects written: the problem each has now (a
    /// spec that does not parse), or `None`.
    object_problems: Vec<(String, Option<Problem>)>,
}

/// The services the writes in `touched` name, or `None` when one of the
/// written discovered-service objects holds a service its name does not
/// say (the zone then compiles whole).
fn written_services(scoped: &ScopedObjects, touched: &ZoneTouched) -> Option<Written> {
    let mut written = Written {
        services: touched.routings.clone(),
        object_problems: Vec::new(),
    };
    for object_name in &touched.services {
        let service = service_part(object_name);
        let problem = match find(&scoped.services, object_name, |o| &o.key.name) {
            Some(object) => match &object.spec {
                Ok(svc) if svc.name.as_str() != service => return None,
                Ok(_) => None,
                Err(message) => Some(Problem::new(&object.key, message.clone())),
            },
            None => None,
        };
        written.object_problems.push((object_name.clone(), problem));
        written.services.insert(service.to_owned());
    }
    Some(written)
}
