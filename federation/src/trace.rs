//! What happens to one request, explained from a snapshot (`POST /v1/trace`,
//! `gnsctl trace`): the DNS answer its client gets in its view and why, the
//! gateway that routes it, the routing rule that matches and why the
//! earlier ones do not, where it goes with what probability, the endpoints
//! there, the access-policy decision, and the retries and timeout that
//! apply. Pure: the answers come from the same compiled snapshot the DNS
//! servers and gateways serve, and the rule semantics from the same code
//! the gateways run ([`gns_contract::decide`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gns_contract::config::{RetryPolicy, ServiceConfig};
use gns_contract::decide::{CompiledRule, RequestFacts, plan};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::snapshot::Snapshot;

/// A request to explain.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceQuery {
    /// The name the client calls, `<service>.<global namespace domain>`.
    pub host: String,
    /// The member cluster the client runs in; absent: outside every cluster.
    #[serde(default)]
    pub from: Option<String>,
    /// The client's address (in `from`): names the calling service.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub source_ip: Option<IpAddr>,
    /// Request headers, e.g. `{"User-Agent": "…"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The path, without the query (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// The method (default `GET`).
    #[serde(default)]
    pub method: Option<String>,
}

/// What the trace knows of a cluster besides the snapshot.
#[derive(Debug, Clone, Default)]
pub struct ClusterFacts {
    /// Its gateway's egress address.
    pub egress: Option<IpAddr>,
    /// Its gateway's public entry.
    pub public: Option<IpAddr>,
    /// Whether its endpoints are withdrawn (its API unreachable too long).
    pub withdrawn: bool,
}

/// Why a request cannot be traced.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// No service by that name in any global namespace.
    #[error("no global service {0:?}")]
    UnknownService(String),
    /// `from` names no member cluster.
    #[error("no cluster {0:?}")]
    UnknownCluster(String),
    /// A header name or value that is not one.
    #[error("bad header {0:?}")]
    BadHeader(String),
    /// A method that is not one.
    #[error("bad method {0:?}")]
    BadMethod(String),
}

/// The DNS answer the client gets.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DnsAnswer {
    /// The view: the client's cluster, or `external`.
    pub view: String,
    /// The addresses answered.
    #[schema(value_type = Vec<String>)]
    pub answers: Vec<IpAddr>,
    /// Why these.
    pub why: String,
}

/// One rule as evaluated for the request, in the order gateways try them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleVerdict {
    /// Its index among the routing's rules as the gateway tries them.
    pub index: usize,
    /// Whether the request matches it.
    pub matched: bool,
    /// Why (the first condition that fails), or what it sends where.
    pub why: String,
}

/// The rule that decides.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RuleChoice {
    /// Its index, or none (no rule matched, or the gateway does not route).
    pub index: Option<usize>,
    /// Why.
    pub why: String,
}

/// Where the request goes first, with what probability.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DestinationShare {
    /// The cluster.
    pub cluster: String,
    /// The subset of its endpoints (`k=v,…`), if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Its share of requests (all shares sum to 1).
    pub probability: f64,
    /// The ready endpoints it selects there.
    #[schema(value_type = Vec<String>)]
    pub endpoints: Vec<IpAddr>,
    /// Why it goes there (a rule's destination, a failover).
    pub why: String,
}

/// The access-policy decision.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AccessDecision {
    /// Whether the request is let through.
    pub allowed: bool,
    /// Why.
    pub why: String,
}

/// A cluster's ready endpoints for the service.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEndpoints {
    /// Ready endpoints, as the routing gateway sees them.
    #[schema(value_type = Vec<String>)]
    pub ready: Vec<IpAddr>,
    /// Its gateways all went silent: peers send it nothing.
    pub gateways_silent: bool,
    /// Its endpoints are withdrawn from DNS (its API unreachable too long).
    pub withdrawn: bool,
}

/// The retries a gateway makes for the request.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetriesApplied {
    /// Tries in all: the first and the retries (the routing's `attempts`
    /// counts the retries).
    pub tries: u32,
    /// What makes a try be tried again.
    pub on: Vec<String>,
    /// The per-try timeout, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Whether requests whose method is not idempotent are retried too.
    pub non_idempotent: bool,
}

impl From<&RetryPolicy> for RetriesApplied {
    fn from(p: &RetryPolicy) -> Self {
        let mut on: Vec<String> = [
            (p.on_5xx, "5xx"),
            (p.on_gateway_error, "gateway-error"),
            (p.on_reset, "reset"),
            (p.on_connect_failure, "connect-failure"),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| name.to_owned())
        .collect();
        if !p.retriable_status_codes.is_empty() {
            let codes: Vec<String> = p
                .retriable_status_codes
                .iter()
                .map(u16::to_string)
                .collect();
            on.push(format!("retriable-status-codes {}", codes.join(",")));
        }
        Self {
            tries: p.attempts,
            on,
            per_try_timeout_ms: p.per_try_timeout_ms,
            non_idempotent: p.non_idempotent,
        }
    }
}

/// The explanation of one request.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The snapshot explained.
    pub snapshot_version: u64,
    /// The name called.
    pub host: String,
    /// Its global namespace.
    pub global_namespace: String,
    /// The service.
    pub service: String,
    /// Where the client runs: a cluster, or `outside`.
    pub from: String,
    /// The services of the global namespace the client is an endpoint of
    /// (how gateways name the caller).
    pub caller: Vec<String>,
    /// The DNS answer.
    pub dns: DnsAnswer,
    /// The gateway that routes the request (`egress` of the client's
    /// cluster, `public` entry of a cluster), if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Every rule tried, in order, until one matched.
    pub rules: Vec<RuleVerdict>,
    /// The rule that decides.
    pub rule: RuleChoice,
    /// Where requests go first, by probability (sums to 1 when it goes anywhere).
    pub destinations: Vec<DestinationShare>,
    /// The service's ready endpoints per cluster.
    pub endpoints: BTreeMap<String, ClusterEndpoints>,
    /// The access-policy decision.
    pub access: AccessDecision,
    /// The retry policy that applies, if any.
    pub retries: Option<RetriesApplied>,
    /// The overall timeout, milliseconds (the gateway's default: 30 s).
    pub timeout_ms: u64,
    /// What the trace cannot know centrally.
    pub notes: Vec<String>,
}

/// A name whose DNS answers to show in every view.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsViewsQuery {
    /// The name clients call, `<service>.<global namespace domain>`.
    pub host: String,
}

/// The DNS answers for one name in every view.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DnsViews {
    /// The name, lower case, without a trailing dot.
    pub host: String,
    /// Each cluster's clients (by cluster name), then clients outside every
    /// cluster.
    pub views: Vec<DnsView>,
}

/// The answer clients in one place get.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DnsView {
    /// The clients' cluster; absent: outside every cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What they are answered, and why.
    pub dns: DnsAnswer,
}

/// The DNS answers for `host` in the view of every cluster in `clusters`
/// and outside them: what [`trace`] gives as `dns` for each `from`, in one
/// pass.
pub fn dns_views(
    snapshot: &Snapshot,
    clusters: &BTreeMap<String, ClusterFacts>,
    host: &str,
) -> Result<DnsViews, TraceError> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let config = snapshot
        .gateways
        .services
        .get(&host)
        .ok_or_else(|| TraceError::UnknownService(host.clone()))?;
    let views = clusters
        .keys()
        .map(|c| Some(c.as_str()))
        .chain([None])
        .map(|from| DnsView {
            from: from.map(str::to_owned),
            dns: dns_answer(snapshot, clusters, config, &host, from),
        })
        .collect();
    Ok(DnsViews { host, views })
}

/// The gateway's overall timeout when the routing sets none.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Explains `query` from `snapshot`, with what `clusters` adds (gateway
/// addresses, withdrawals).
pub fn trace(
    snapshot: &Snapshot,
    clusters: &BTreeMap<String, ClusterFacts>,
    query: &TraceQuery,
) -> Result<Trace, TraceError> {
    let host = query.host.trim_end_matches('.').to_ascii_lowercase();
    let gateways = &snapshot.gateways;
    let config = gateways
        .services
        .get(&host)
        .ok_or_else(|| TraceError::UnknownService(query.host.clone()))?;
    if let Some(from) = &query.from
        && !clusters.contains_key(from)
    {
        return Err(TraceError::UnknownCluster(from.clone()));
    }
    let headers = header_map(&query.headers)?;
    let method = match &query.method {
        None => http::Method::GET,
        Some(m) => {
            http::Method::from_bytes(m.as_bytes()).map_err(|_| TraceError::BadMethod(m.clone()))?
        }
    };
    let path = query.path.clone().unwrap_or_else(|| "/".to_owned());
    let caller = match (&query.from, query.source_ip) {
        (Some(from), Some(ip)) => callers_at(gateways.services.values(), &config.gns, from, ip),
        _ => Vec::new(),
    };
    let dns = dns_answer(snapshot, clusters, config, &host, query.from.as_deref());
    let endpoints = config
        .endpoints
        .iter()
        .map(|(cluster, ready)| {
            (
                cluster.clone(),
                ClusterEndpoints {
                    ready: ready.clone(),
                    gateways_silent: gateways.silent_clusters.contains(cluster),
                    withdrawn: clusters.get(cluster).is_some_and(|c| c.withdrawn),
                },
            )
        })
        .collect();
    let mut out = Trace {
        snapshot_version: snapshot.version,
        host: host.clone(),
        global_namespace: config.gns.clone(),
        service: config.service.clone(),
        from: query.from.clone().unwrap_or_else(|| "outside".to_owned()),
        caller,
        dns,
        gateway: None,
        rules: Vec::new(),
        rule: RuleChoice {
            index: None,
            why: String::new(),
        },
        destinations: Vec::new(),
        endpoints,
        access: AccessDecision {
            allowed: true,
            why: String::new(),
        },
        retries: config.retries.as_ref().map(RetriesApplied::from),
        timeout_ms: config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
        notes: vec![
            "outlier ejection is each gateway's own state: an ejected endpoint is skipped by the gateway that ejected it".to_owned(),
        ],
    };
    // Which gateway routes: the client's egress when DNS sends it there,
    // the public entry of the cluster whose address DNS answers first.
    let routing_gateway = match &query.from {
        Some(from) => {
            let egress = clusters.get(from).and_then(|c| c.egress);
            if egress.is_some_and(|e| out.dns.answers.contains(&e)) {
                Some((from.clone(), "egress"))
            } else {
                None
            }
        }
        None => out.dns.answers.iter().find_map(|ip| {
            clusters
                .iter()
                .find(|(_, c)| c.public == Some(*ip))
                .map(|(name, _)| (name.clone(), "public"))
        }),
    };
    let Some((own, entry)) = routing_gateway else {
        direct(&mut out, config, query.from.as_deref());
        return Ok(out);
    };
    out.gateway = Some(format!("{own} {entry}"));
    out.access = access(config, entry, &out.caller, &own);
    let seen = config.as_seen_by(&own, &gateways.silent_clusters);
    let rules: Vec<(usize, CompiledRule)> = seen
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| CompiledRule::compile(r).ok().map(|c| (i, c)))
        .collect();
    let facts = RequestFacts {
        method: Some(&method),
        path: Some(&path),
        headers: &headers,
        callers: if entry == "public" { &[] } else { &out.caller },
    };
    for (index, rule) in &rules {
        match rule.mismatch(&facts) {
            Some(why) => out.rules.push(RuleVerdict {
                index: *index,
                matched: false,
                why: why.to_string(),
            }),
            None => {
                out.rules.push(RuleVerdict {
                    index: *index,
                    matched: true,
                    why: "every condition holds".to_owned(),
                });
                out.rule = RuleChoice {
                    index: Some(*index),
                    why: format!("rule {index} is the first whose conditions all hold"),
                };
                break;
            }
        }
    }
    if out.rule.index.is_none() {
        out.rule.why = if rules.is_empty() {
            "the service has no routing rules: its own cluster first, then failover".to_owned()
        } else {
            "no rule matches: its own cluster first, then failover".to_owned()
        };
    }
    let compiled: Vec<CompiledRule> = rules.into_iter().map(|(_, r)| r).collect();
    out.destinations = shares(&own, &seen, &compiled, &facts);
    if out.destinations.is_empty() {
        out.notes
            .push("no cluster has ready endpoints: the gateway answers 503".to_owned());
    }
    if !out.access.allowed {
        out.notes
            .push("the access policy refuses the request: the gateway answers 403".to_owned());
    }
    Ok(out)
}

/// The request's headers as the gateway reads them.
fn header_map(headers: &BTreeMap<String, String>) -> Result<http::HeaderMap, TraceError> {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| TraceError::BadHeader(name.clone()))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| TraceError::BadHeader(name.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The services of `gns` whose endpoints in `cluster` include `ip`.
fn callers_at<'a>(
    services: impl Iterator<Item = &'a std::sync::Arc<ServiceConfig>>,
    gns: &str,
    cluster: &str,
    ip: IpAddr,
) -> Vec<String> {
    let mut callers: Vec<String> = services
        .filter(|s| s.gns == gns)
        .filter(|s| s.endpoints.get(cluster).is_some_and(|e| e.contains(&ip)))
        .map(|s| s.service.clone())
        .collect();
    callers.sort();
    callers
}

/// The DNS answer for `host` in the view of `from` (or the external view).
fn dns_answer(
    snapshot: &Snapshot,
    clusters: &BTreeMap<String, ClusterFacts>,
    config: &ServiceConfig,
    host: &str,
    from: Option<&str>,
) -> DnsAnswer {
    let record = snapshot.dns.zones.iter().find_map(|zone| {
        let name = host.strip_suffix(&zone.origin)?.strip_suffix('.')?;
        zone.services.iter().find(|s| s.name == name)
    });
    let Some(record) = record else {
        return DnsAnswer {
            view: from.unwrap_or("external").to_owned(),
            answers: Vec::new(),
            why: "the name is in no zone (NXDOMAIN)".to_owned(),
        };
    };
    let (view, answers) = match from.and_then(|c| record.views.get(c).map(|a| (c, a))) {
        Some((cluster, answers)) => (cluster.to_owned(), answers.clone()),
        None => ("external".to_owned(), record.external.clone()),
    };
    let mut reasons: Vec<String> = Vec::new();
    for ip in &answers {
        let owner = clusters.iter().find_map(|(name, c)| {
            if c.egress == Some(*ip) {
                Some(format!("{ip}: {name}'s egress gateway"))
            } else if c.public == Some(*ip) {
                Some(format!("{ip}: {name}'s public entry"))
            } else {
                None
            }
        });
        let reason = owner.unwrap_or_else(|| {
            match config.endpoints.iter().find(|(_, eps)| eps.contains(ip)) {
                Some((cluster, _)) if Some(cluster.as_str()) == from => {
                    format!("{ip}: a ready endpoint in {cluster} (local)")
                }
                Some((cluster, _)) => format!("{ip}: a ready endpoint in {cluster}"),
                None => format!("{ip}: an address of the service"),
            }
        });
        reasons.push(reason);
    }
    let left_out: Vec<String> = config
        .endpoints
        .keys()
        .filter_map(|c| {
            if clusters.get(c).is_some_and(|f| f.withdrawn) {
                Some(format!("{c} (withdrawn: its API is unreachable)"))
            } else if snapshot.gateways.silent_clusters.contains(c) {
                Some(format!("{c} (its gateways are silent)"))
            } else {
                None
            }
        })
        .collect();
    let mut why = if answers.is_empty() {
        "no cluster has ready endpoints (NODATA)".to_owned()
    } else if view == "external" && from.is_some() {
        format!(
            "the cluster has no view of its own: the external answer; {}",
            reasons.join("; ")
        )
    } else {
        reasons.join("; ")
    };
    if !left_out.is_empty() {
        why.push_str(&format!("; left out: {}", left_out.join(", ")));
    }
    DnsAnswer { view, answers, why }
}

/// The request goes to what DNS answered, not through a gateway.
fn direct(out: &mut Trace, config: &ServiceConfig, from: Option<&str>) {
    out.rule.why =
        "no gateway routes the request: DNS sends the client to endpoints directly".to_owned();
    let mut by_cluster: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for ip in &out.dns.answers {
        if let Some((cluster, _)) = config.endpoints.iter().find(|(_, e)| e.contains(ip)) {
            by_cluster.entry(cluster).or_default().push(*ip);
        }
    }
    let total: usize = by_cluster.values().map(Vec::len).sum();
    out.destinations = by_cluster
        .into_iter()
        .map(|(cluster, endpoints)| DestinationShare {
            cluster: cluster.to_owned(),
            subset: None,
            probability: endpoints.len() as f64 / total as f64,
            why: "the DNS answer (the client picks among the addresses)".to_owned(),
            endpoints,
        })
        .collect();
    if out.destinations.is_empty() {
        out.notes
            .push("no cluster has ready endpoints: the name has no address".to_owned());
    }
    out.access = AccessDecision {
        allowed: true,
        why: match from {
            Some(c) => {
                format!("a direct connection inside {c}: access policy is applied by gateways only")
            }
            None => "a direct connection: access policy is applied by gateways only".to_owned(),
        },
    };
}

/// The access decision of the gateway `own` taking the request at `entry`,
/// for peers it may send to.
fn access(config: &ServiceConfig, entry: &str, caller: &[String], own: &str) -> AccessDecision {
    let name = format!("{}.{}", config.service, config.gns);
    if entry == "public" {
        return if config.external {
            AccessDecision {
                allowed: true,
                why: format!("{name} is open to clients outside the clusters"),
            }
        } else {
            AccessDecision {
                allowed: false,
                why: format!("{name} is not reachable from outside the clusters"),
            }
        };
    }
    if !config.admits(caller) {
        return AccessDecision {
            allowed: false,
            why: if caller.is_empty() {
                format!("callers that are no service's endpoint may not call {name}")
            } else {
                format!("{} may not call {name}", caller.join(", "))
            },
        };
    }
    let mut why = match (&config.allowed_callers, caller.is_empty()) {
        (None, _) => format!("{name} lets every caller in"),
        (Some(_), true) => format!("{name} admits callers that are no service's endpoint (*)"),
        (Some(_), false) => format!("{name} admits {}", caller.join(", ")),
    };
    if let Some(allowed) = &config.allowed_clusters
        && !allowed.iter().any(|c| c == own)
    {
        why.push_str(&format!(
            "; but peers refuse requests from {own} (allowed clusters: {})",
            allowed.join(", ")
        ));
        return AccessDecision {
            allowed: false,
            why,
        };
    }
    AccessDecision { allowed: true, why }
}

/// Where requests go first, by probability: the gateway's own plan at each
/// destination's share of the weights (a destination without ready
/// endpoints falls to the next target of the plan).
fn shares(
    own: &str,
    service: &ServiceConfig,
    rules: &[CompiledRule],
    facts: &RequestFacts<'_>,
) -> Vec<DestinationShare> {
    // The rolls that pick each destination: the start of its weight range.
    let rolls: Vec<(u64, f64, String)> = match rules.iter().find(|r| r.matches(facts)) {
        Some(rule) if rule.total_weight > 0 => {
            let mut start = 0u64;
            rule.destinations
                .iter()
                .map(|d| {
                    let roll = start;
                    start += u64::from(d.weight);
                    let named = match (&d.subset, d.cluster.is_empty()) {
                        (Some(s), true) => format!("subset {s} in any cluster, own first"),
                        (Some(s), false) => format!("subset {s} of {}", d.cluster),
                        (None, _) => d.cluster.clone(),
                    };
                    (
                        roll,
                        f64::from(d.weight) / rule.total_weight as f64,
                        format!("weight {} of {}: {named}", d.weight, rule.total_weight),
                    )
                })
                .collect()
        }
        _ => vec![(0, 1.0, "the own cluster first, then failover".to_owned())],
    };
    let mut out: Vec<DestinationShare> = Vec::new();
    for (roll, probability, named) in rolls {
        let planned = plan(own, service, rules, facts, roll);
        let Some(first) = planned.first() else {
            continue;
        };
        let endpoints = service
            .endpoints_of(first.cluster, first.subset)
            .map(<[IpAddr]>::to_vec)
            .unwrap_or_default();
        let subset = first.subset.map(str::to_owned);
        match out
            .iter_mut()
            .find(|s| s.cluster == first.cluster && s.subset == subset)
        {
            Some(share) => {
                share.probability += probability;
                share.why.push_str(&format!("; {named}"));
            }
            None => out.push(DestinationShare {
                cluster: first.cluster.to_owned(),
                subset,
                probability,
                endpoints,
                why: named,
            }),
        }
    }
    // Shares of destinations with nowhere to go are spread over the rest.
    let total: f64 = out.iter().map(|s| s.probability).sum();
    if total > 0.0 {
        for share in &mut out {
            share.probability /= total;
        }
    }
    out
}

/// The clusters a trace needs facts of.
pub fn clusters_named(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .gateways
        .services
        .values()
        .flat_map(|s| s.endpoints.keys().cloned())
        .chain(snapshot.gateways.gateways.keys().cloned())
        .collect()
}
