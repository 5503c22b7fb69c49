//! What a service's routing means, evaluated the same way by the gateways
//! (on every request) and by the federation (`POST /v1/trace`, which
//! explains a request from the same config): a rule compiled once, why it
//! does or does not match a request, which callers the access policy
//! admits, and the targets a request is tried at, in order. Pure.

use std::net::IpAddr;

use http::HeaderMap;
use regex::Regex;

use crate::config::{HeaderMatcher, Rule, ServiceConfig};

/// A header (or path) condition ready to evaluate.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Exactly this value.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Matches this regular expression.
    Regex(Regex),
}

impl Matcher {
    /// Compiles `matcher` (a regular expression once, here).
    pub fn compile(matcher: &HeaderMatcher) -> Result<Matcher, regex::Error> {
        Ok(match matcher {
            HeaderMatcher::Exact(v) => Matcher::Exact(v.clone()),
            HeaderMatcher::Prefix(v) => Matcher::Prefix(v.clone()),
            HeaderMatcher::Regex(r) => Matcher::Regex(Regex::new(r)?),
        })
    }

    /// Whether `value` satisfies it.
    pub fn holds(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(e) => value == e,
            Matcher::Prefix(p) => value.starts_with(p.as_str()),
            Matcher::Regex(re) => re.is_match(value),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(v) => write!(f, "is {v:?}"),
            Matcher::Prefix(v) => write!(f, "starts with {v:?}"),
            Matcher::Regex(re) => write!(f, "matches /{}/", re.as_str()),
        }
    }
}

/// Why a rule could not be compiled (it is left out, and reported).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A header name that is not one.
    #[error("bad header name {0:?}")]
    HeaderName(String),
    /// A header condition's regular expression does not compile.
    #[error("bad regex: {0}")]
    HeaderRegex(#[source] regex::Error),
    /// The path's regular expression does not compile.
    #[error("bad path regex: {0}")]
    PathRegex(#[source] regex::Error),
    /// A method that is not one.
    #[error("bad method {0:?}")]
    Method(String),
}

/// A destination of a rule: a cluster (empty: any, own first), a subset
/// of its endpoints, a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The cluster; empty for wherever the subset's endpoints are.
    pub cluster: String,
    /// The subset (a key of [`ServiceConfig::subsets`]).
    pub subset: Option<String>,
    /// Its weight (never 0: those are left out).
    pub weight: u32,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    headers: Vec<(http::HeaderName, Matcher)>,
    source: Option<String>,
    path: Option<Matcher>,
    method: Option<http::Method>,
    /// Destinations with a weight.
    pub destinations: Vec<Destination>,
    /// Their weights together.
    pub total_weight: u64,
}

/// Why a rule does not match a request: the first condition that fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// The method differs.
    #[error("the method is not {0}")]
    Method(String),
    /// The path does not match.
    #[error("the path does not satisfy: {0}")]
    Path(String),
    /// The caller is not the rule's source service.
    #[error("the caller is not the service {0}")]
    Source(String),
    /// A header is missing or its values do not match.
    #[error("header {name} {condition}: not so")]
    Header {
        /// The header.
        name: String,
        /// What it must satisfy.
        condition: String,
    },
}

impl CompiledRule {
    /// Compiles `rule`.
    pub fn compile(rule: &Rule) -> Result<CompiledRule, RuleError> {
        let mut headers = Vec::new();
        for cond in &rule.headers {
            let name = http::HeaderName::from_bytes(cond.name.as_bytes())
                .map_err(|_| RuleError::HeaderName(cond.name.clone()))?;
            headers.push((
                name,
                Matcher::compile(&cond.matcher).map_err(RuleError::HeaderRegex)?,
            ));
        }
        let path = rule
            .path
            .as_ref()
            .map(Matcher::compile)
            .transpose()
            .map_err(RuleError::PathRegex)?;
        let method = rule
            .method
            .as_deref()
            .map(|m| {
                http::Method::from_bytes(m.as_bytes()).map_err(|_| RuleError::Method(m.to_owned()))
            })
            .transpose()?;
        let destinations: Vec<Destination> = rule
            .destinations
            .iter()
            .filter(|d| d.weight > 0)
            .map(|d| Destination {
                cluster: d.cluster.clone(),
                subset: d.subset.clone(),
                weight: d.weight,
            })
            .collect();
        let total_weight = destinations.iter().map(|d| u64::from(d.weight)).sum();
        Ok(CompiledRule {
            headers,
            source: rule.source.clone(),
            path,
            method,
            destinations,
            total_weight,
        })
    }

    /// Why `request` does not match (the first failing condition, in the
    /// order method, path, source, headers); `None` when it matches.
    pub fn mismatch(&self, request: &RequestFacts<'_>) -> Option<Mismatch> {
        if let Some(method) = &self.method
            && request.method != Some(method)
        {
            return Some(Mismatch::Method(method.to_string()));
        }
        if let Some(path) = &self.path
            && !request.path.is_some_and(|p| path.holds(p))
        {
            return Some(Mismatch::Path(path.to_string()));
        }
        if let Some(source) = &self.source
            && !request.callers.iter().any(|c| c == source)
        {
            return Some(Mismatch::Source(source.clone()));
        }
        self.headers.iter().find_map(|(name, m)| {
            let holds = request
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| m.holds(v)));
            (!holds).then(|| Mismatch::Header {
                name: name.to_string(),
                condition: m.to_string(),
            })
        })
    }

    /// Whether `request` matches.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        self.mismatch(request).is_none()
    }
}

/// Where a try goes: a cluster, and there only the endpoints of one subset
/// (a key of the service's `subsets`) or, without one, any endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The cluster.
    pub cluster: &'a str,
    /// The subset of its endpoints.
    pub subset: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// Any endpoint of `cluster`.
    pub fn cluster(cluster: &'a str) -> Self {
        Self {
            cluster,
            subset: None,
        }
    }
}

/// What a rule looks at in a request. A TCP connection has no method, path
/// or headers, so only rules without such conditions apply to it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: Option<&'a http::Method>,
    /// The path, without the query.
    pub path: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The services of the global namespace the caller is an endpoint of
    /// (none when it is no service's, or it calls from outside).
    pub callers: &'a [String],
}

impl<'a> RequestFacts<'a> {
    /// A request with only headers (no method, path or caller).
    pub fn headers(headers: &'a HeaderMap) -> Self {
        Self {
            method: None,
            path: None,
            headers,
            callers: &[],
        }
    }
}

impl ServiceConfig {
    /// The service as the gateway of `own` routes it: peers whose gateways
    /// all went silent (`silent`) get nothing, as if they had no endpoints.
    pub fn as_seen_by(&self, own: &str, silent: &std::collections::BTreeSet<String>) -> Self {
        let mut service = self.clone();
        service
            .endpoints
            .retain(|c, _| c == own || !silent.contains(c));
        for by_cluster in service.subsets.values_mut() {
            by_cluster.retain(|c, _| c == own || !silent.contains(c));
        }
        service
    }

    /// The ready endpoints of `cluster`, only those of `subset` when given
    /// (none when the subset is unknown).
    pub fn endpoints_of(&self, cluster: &str, subset: Option<&str>) -> Option<&[IpAddr]> {
        match subset {
            None => self.endpoints.get(cluster),
            Some(key) => self.subsets.get(key)?.get(cluster),
        }
        .map(Vec::as_slice)
    }

    /// Whether callers named `callers` (the services a calling workload is
    /// an endpoint of; none when it is no service's) may call this service.
    pub fn admits<S: AsRef<str>>(&self, callers: &[S]) -> bool {
        let Some(allowed) = &self.allowed_callers else {
            return true;
        };
        if callers.is_empty() {
            return allowed.iter().any(|a| a == "*");
        }
        callers
            .iter()
            .any(|c| allowed.iter().any(|a| a == c.as_ref()))
    }
}

/// The targets a request is tried at by the gateway of `own`, in order:
/// the first rule of `rules` that `request` matches picks a destination by
/// `roll` (modulo the rule's total weight: a cluster, or a subset of its
/// endpoints, or that subset wherever it is, own cluster first), then come
/// the own cluster, the service's failover order and every other cluster
/// with endpoints. Targets without ready endpoints are left out. `service`
/// is as the gateway sees it ([`ServiceConfig::as_seen_by`]).
pub fn plan<'a>(
    own: &'a str,
    service: &'a ServiceConfig,
    rules: &'a [CompiledRule],
    request: &RequestFacts<'_>,
    roll: u64,
) -> Vec<Target<'a>> {
    let mut order: Vec<Target<'a>> = Vec::with_capacity(4);
    let push = |t: Target<'a>, order: &mut Vec<Target<'a>>| {
        let ready = service
            .endpoints_of(t.cluster, t.subset)
            .is_some_and(|e| !e.is_empty());
        if ready && !order.contains(&t) {
            order.push(t);
        }
    };
    if let Some(rule) = rules.iter().find(|r| r.matches(request))
        && rule.total_weight > 0
    {
        let mut point = roll % rule.total_weight;
        for d in &rule.destinations {
            if point < u64::from(d.weight) {
                let subset = d.subset.as_deref();
                if d.cluster.is_empty() {
                    // Any cluster with the subset's endpoints, own first.
                    push(
                        Target {
                            cluster: own,
                            subset,
                        },
                        &mut order,
                    );
                    for c in service.endpoints.keys() {
                        push(Target { cluster: c, subset }, &mut order);
                    }
                } else {
                    push(
                        Target {
                            cluster: &d.cluster,
                            subset,
                        },
                        &mut order,
                    );
                }
                break;
            }
            point -= u64::from(d.weight);
        }
    }
    if order.is_empty() {
        push(Target::cluster(own), &mut order);
    }
    for c in &service.failover {
        push(Target::cluster(c), &mut order);
    }
    push(Target::cluster(own), &mut order);
    for c in service.endpoints.keys() {
        push(Target::cluster(c), &mut order);
    }
    order
}
