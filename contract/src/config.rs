//! The gateway's configuration, as the federation compiles it
//! (`GET /v1/config/gateways/{cluster}`). The gateway depends only on these
//! types; the federation fills them from the same snapshot as DNS.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a gateway needs to route, for one version of the federation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    /// Snapshot version it was compiled from.
    pub version: u64,
    /// SPIFFE trust domain of peer gateways.
    pub trust_domain: String,
    /// Peer gateways by cluster: where their ingress listens.
    pub gateways: BTreeMap<String, PeerGateway>,
    /// Services by host name (`<service>.<gns domain>`, lower case); shared:
    /// an unchanged service is the same allocation from one config to the
    /// next, and the map is persistent (`imbl`), so a config that differs
    /// from the last in one service costs that service to make and to
    /// compare, not the whole map. (It is a JSON object on the wire.)
    pub services: imbl::OrdMap<String, std::sync::Arc<ServiceConfig>>,
    /// Clusters whose gateways all went silent: other clusters' gateways
    /// send them nothing (as if they had no endpoints); their own gateway,
    /// when it is back, serves its local endpoints as usual.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub silent_clusters: std::collections::BTreeSet<String>,
}

/// Another cluster's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerGateway {
    /// Its ingress (mTLS) address.
    pub ingress_address: SocketAddr,
}

/// One service of a global namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Global namespace.
    pub gns: String,
    /// Service name.
    pub service: String,
    /// HTTP port of the service's endpoints, by cluster (the target port).
    /// (Maps by cluster are sorted lists: most services run in one cluster
    /// or a few, and the federation holds one of these per service.)
    pub http_port: litemap::LiteMap<String, u16>,
    /// The HTTP port of endpoints that listen on another than their
    /// cluster's (an external workload's own, beside pods), by cluster and
    /// address (clusters' pod addresses may overlap).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub http_port_by_address: OwnPorts,
    /// Ready endpoint addresses by cluster.
    pub endpoints: litemap::LiteMap<String, Vec<IpAddr>>,
    /// Endpoint subsets that rules' destinations name: by subset key (the
    /// selector, `env=us-prod,version=v1.5`), the ready addresses of each
    /// cluster's endpoints with those labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subsets: BTreeMap<String, litemap::LiteMap<String, Vec<IpAddr>>>,
    /// Clusters whose endpoints speak HTTP/2 without TLS (h2c, prior
    /// knowledge) on the HTTP port: gRPC and `h2c` ports. Others get HTTP/1.1.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub h2c: std::collections::BTreeSet<String>,
    /// Routing rules, first match wins; none: every cluster with endpoints, own first.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Cluster order to fail over in when a chosen cluster has no endpoints.
    #[serde(default)]
    pub failover: Vec<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<RetryPolicy>,
    /// Outlier ejection of this service's local endpoints.
    #[serde(default)]
    pub outliers: OutlierPolicy,
    /// Overall timeout, milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Clusters whose gateways may send requests for this service (access
    /// policy); `None` lets every gateway of the trust domain in.
    #[serde(default)]
    pub allowed_clusters: Option<Vec<String>>,
    /// Services of the same global namespace whose workloads may call this
    /// one (access policy), as gateways tell callers by their endpoint
    /// addresses; `*` admits callers that are no service's endpoint.
    /// `None` lets every caller in.
    #[serde(default)]
    pub allowed_callers: Option<Vec<String>>,
    /// Whether clients outside every cluster (the public entry, identity
    /// `external`) may call it.
    #[serde(default)]
    pub external: bool,
    /// The service ports clients dial for HTTP: the egress serves HTTP on
    /// each (port 80 on its own listener), routed by `Host` as ever.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_ports: Vec<u16>,
    /// TCP ports (passthrough, routed by the port clients dial).
    #[serde(default)]
    pub tcp_ports: Vec<TcpPort>,
}

/// A TCP port of a service: clients dial `port` on the egress; endpoints
/// listen on `target_port` of their cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpPort {
    /// The service port.
    pub port: u16,
    /// The endpoints' port, by cluster.
    pub target_port: BTreeMap<String, u16>,
    /// The port of endpoints that listen on another than their cluster's
    /// (an external workload's own, beside pods), by cluster and address.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_port_by_address: OwnPorts,
}

/// Endpoints' own ports, by cluster, then address.
pub type OwnPorts = BTreeMap<String, BTreeMap<IpAddr, u16>>;

/// Where a service's local endpoints listen: their cluster's port, or an
/// endpoint's own where the config names one for its address.
#[derive(Debug, Clone, Copy)]
pub struct EndpointPorts<'a> {
    /// The cluster's port.
    pub port: u16,
    /// Endpoints' own ports, by address.
    pub own: &'a BTreeMap<IpAddr, u16>,
}

/// No endpoint with a port of its own.
static NO_OWN_PORTS: BTreeMap<IpAddr, u16> = BTreeMap::new();

impl<'a> EndpointPorts<'a> {
    /// The endpoints of `cluster` on `port`, but those `own` names there.
    pub fn of(port: u16, own: &'a OwnPorts, cluster: &str) -> Self {
        Self {
            port,
            own: own.get(cluster).unwrap_or(&NO_OWN_PORTS),
        }
    }

    /// Every endpoint on `port`.
    pub fn uniform(port: u16) -> Self {
        Self {
            port,
            own: &NO_OWN_PORTS,
        }
    }

    /// The endpoint at `ip`, on its port.
    pub fn at(&self, ip: IpAddr) -> SocketAddr {
        let port = if self.own.is_empty() {
            self.port
        } else {
            self.own.get(&ip).copied().unwrap_or(self.port)
        };
        SocketAddr::new(ip, port)
    }
}

/// A routing rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Header conditions, all must hold; empty matches everything.
    #[serde(default)]
    pub headers: Vec<HeaderCondition>,
    /// The calling service (of the same global namespace) the request must
    /// come from, as the egress names its caller by address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// How the request path (without the query) must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HeaderMatcher>,
    /// The request method, exactly (case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Weighted destination clusters.
    pub destinations: Vec<WeightedCluster>,
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderCondition {
    /// Header name, lower case.
    pub name: String,
    /// How the value must match.
    #[serde(flatten)]
    pub matcher: HeaderMatcher,
}

/// How a header value (or a path) must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderMatcher {
    /// Exactly this value.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// Matches this regular expression (anywhere, unless anchored).
    Regex(String),
}

/// A destination cluster (optionally one subset of its endpoints) and its weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedCluster {
    /// Cluster; empty: wherever the subset's endpoints are, own cluster first.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// Only the endpoints of this subset (a key of [`ServiceConfig::subsets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Relative weight.
    pub weight: u32,
}

/// When local endpoints of a service are left out for failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierPolicy {
    /// Failures in a row (connect errors, 5xx) that eject an endpoint.
    pub consecutive_failures: u32,
    /// Failures further apart than this, milliseconds, start the count
    /// again (`None`: any two failures in a row count).
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// How long an ejected endpoint is left out, milliseconds.
    pub ejection_ms: u64,
    /// The most of a service's endpoints ejected at once, percent.
    pub max_ejected_percent: u8,
}

impl Default for OutlierPolicy {
    /// Three failures in a row, ten seconds out, any share.
    fn default() -> Self {
        Self {
            consecutive_failures: 3,
            interval_ms: None,
            ejection_ms: 10_000,
            max_ejected_percent: 100,
        }
    }
}

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts in total, including the first.
    pub attempts: u32,
    /// Retry on 5xx answers (and broken exchanges and timeouts).
    pub on_5xx: bool,
    /// Retry when the connection fails.
    pub on_connect_failure: bool,
    /// Timeout of each try, milliseconds.
    pub per_try_timeout_ms: Option<u64>,
    /// Retry on 502, 503 and 504 answers (and timeouts).
    #[serde(default)]
    pub on_gateway_error: bool,
    /// Retry when the exchange broke off after the request was sent.
    #[serde(default)]
    pub on_reset: bool,
    /// Retry on exactly these statuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Send requests whose method is not idempotent again too.
    #[serde(default)]
    pub non_idempotent: bool,
}

impl ServiceConfig {
    /// The overall timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}
