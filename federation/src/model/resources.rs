//! The REST resources of the contract (clusters, global namespaces, routing,
//! external workloads, access policies, tokens) as typed, validated specs.
//!
//! A spec holds what the user wrote; server-set fields (`resourceVersion`,
//! `status`, timestamps) live beside it in the store and are merged in by the
//! API layer. Cluster credentials are write-only: they deserialize but never
//! serialize, so they cannot leak through a response, a log or the spec column.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

use super::{
    Cidr, Domain, DurationSpec, FieldErrors, HeaderName, HostPort, LabelMap, Name, validate_labels,
};

/// The kinds of object the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A member cluster.
    Cluster,
    /// A global namespace.
    GlobalNamespace,
    /// Routing of one service in a global namespace.
    Routing,
    /// A VM / bare-metal workload.
    ExternalWorkload,
    /// An access policy.
    AccessPolicy,
    /// A service discovered in member clusters (written by discovery sync).
    Service,
}

impl Kind {
    /// Every kind, in dependency order (referenced kinds first).
    pub const ALL: [Kind; 6] = [
        Kind::Cluster,
        Kind::GlobalNamespace,
        Kind::Routing,
        Kind::ExternalWorkload,
        Kind::AccessPolicy,
        Kind::Service,
    ];

    /// Stable identifier used in the store and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::GlobalNamespace => "globalnamespace",
            Kind::Routing => "routing",
            Kind::ExternalWorkload => "externalworkload",
            Kind::AccessPolicy => "accesspolicy",
            Kind::Service => "service",
        }
    }

    /// Parses [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True for kinds that live inside a global namespace.
    pub fn is_scoped(self) -> bool {
        !matches!(self, Kind::Cluster | Kind::GlobalNamespace)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference from one object to a cluster, with the field that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// The referenced cluster.
    pub cluster: Name,
    /// Where in the referrer, e.g. `members[1].cluster`.
    pub field: String,
}

/// Behaviour shared by every user-written resource.
pub trait Resource: Serialize + DeserializeOwned + ToSchema + Send + Sync + 'static {
    /// Store kind.
    const KIND: Kind;
    /// Whole-object rules beyond what the field types enforce.
    fn validate(&self) -> Result<(), FieldErrors>;
    /// Clusters this object refers to; they must exist, and can't be deleted while referred to.
    fn cluster_refs(&self) -> Vec<ClusterRef> {
        Vec::new()
    }
}

/// A resource identified by a `name` field in its body.
pub trait NamedResource: Resource {
    /// The object's name.
    fn name(&self) -> &Name;
}

// ---------------------------------------------------------------------------
// Cluster

/// A member Kubernetes cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name (RFC 1123 label).
    pub name: Name,
    /// Locality labels, e.g. `region` and `zone`.
    #[serde(default)]
    pub labels: LabelMap,
    /// How the federation reaches the cluster's API server.
    pub kubernetes: KubernetesAccess,
    /// Pod/node networks of the cluster; DNS clients from these get the cluster view.
    #[serde(default)]
    pub networks: Vec<Cidr>,
    /// Addresses of the cluster's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayAddresses>,
    /// What DNS does with this cluster's endpoints while its API is unreachable:
    /// `"keep"`, or `{"withdrawAfter": "30s"}` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_endpoint_policy: Option<StaleEndpointPolicy>,
    /// When set, the federation installs and upgrades the cluster's gateway
    /// itself (server-side apply into namespace `gns-system`) while the
    /// cluster is a member of a global namespace, and removes it when it
    /// stops being one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_deployment: Option<GatewayDeployment>,
    /// The service account (`namespace/name`) whose Kubernetes tokens
    /// (audience `gns-federation`, checked by a TokenReview in this
    /// cluster) prove a pod is this cluster's gateway; default
    /// `gns-system/gns-gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "gns-system/gns-gateway")]
    pub gateway_service_account: Option<String>,
}

/// The service account of a cluster's gateway when the cluster names none.
pub const DEFAULT_GATEWAY_SERVICE_ACCOUNT: &str = "gns-system/gns-gateway";

impl Cluster {
    /// The Kubernetes user name of the cluster's gateway service account
    /// (`system:serviceaccount:<namespace>:<name>`).
    pub fn gateway_account_user(&self) -> String {
        let account = self
            .gateway_service_account
            .as_deref()
            .unwrap_or(DEFAULT_GATEWAY_SERVICE_ACCOUNT);
        let (namespace, name) = account.split_once('/').unwrap_or(("gns-system", account));
        format!("system:serviceaccount:{namespace}:{name}")
    }
}

/// The default gateway image (its tag is the version reported in the status).
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!(
    "ghcr.io/gns-project/gns-gateway:",
    env!("CARGO_PKG_VERSION")
);

/// How the federation deploys a cluster's gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayDeployment {
    /// Container image of `gns-gateway`; changing it upgrades the gateway.
    #[serde(default = "default_gateway_image")]
    #[schema(example = "ghcr.io/gns-project/gns-gateway:0.1.0")]
    pub image: String,
    /// Gateway replicas (1–100).
    #[serde(default = "default_gateway_replicas")]
    pub replicas: u16,
    /// Type of the ingress Service: `LoadBalancer` (default), `NodePort` or `ClusterIP`.
    #[serde(default)]
    pub ingress_service_type: IngressServiceType,
    /// Federation URL the gateway follows (default: the federation's `--advertise-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_url: Option<String>,
    /// Take over fields another field manager owns instead of reporting the conflict.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_conflicts: bool,
    /// A Service for the public entry (clients outside every cluster, port
    /// 80), of this type; none by default (a Service made before is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_service_type: Option<IngressServiceType>,
    /// Merge the forwarding server blocks of the GNS domains into the
    /// cluster's CoreDNS ConfigMap (`kube-system/coredns`), in a section of
    /// their own; a block for a GNS domain someone else wrote is reported
    /// as a conflict, not overwritten. Off again: the section is removed.
    #[serde(
        default,
        rename = "manageCoreDNS",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub manage_core_dns: bool,
}

fn default_gateway_image() -> String {
    DEFAULT_GATEWAY_IMAGE.to_owned()
}

fn default_gateway_replicas() -> u16 {
    1
}

/// Kubernetes Service type of a deployed gateway's ingress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum IngressServiceType {
    /// A cloud load balancer (the address is read back from the Service status).
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Reachable inside the cluster network only.
    ClusterIP,
}

impl IngressServiceType {
    /// The Kubernetes name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoadBalancer => "LoadBalancer",
            Self::NodePort => "NodePort",
            Self::ClusterIP => "ClusterIP",
        }
    }
}

/// What happens to the last known endpoints of a cluster whose API can't be reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StaleEndpointPolicy {
    /// `"keep"`: keep answering with them (the workloads probably still run).
    Keep(KeepStale),
    /// `{"withdrawAfter": "30s"}`: stop answering with them after this long.
    WithdrawAfter(WithdrawAfter),
}

/// The word `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeepStale {
    /// Keep stale endpoints.
    Keep,
}

/// Withdraw stale endpoints after a delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WithdrawAfter {
    /// Delay after the cluster became unreachable.
    pub withdraw_after: DurationSpec,
}

/// Default delay before DNS stops answering with an unreachable cluster.
pub const DEFAULT_WITHDRAW_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl Cluster {
    /// How long stale endpoints are served (`None`: forever).
    pub fn withdraw_after(&self) -> Option<std::time::Duration> {
        match &self.stale_endpoint_policy {
            Some(StaleEndpointPolicy::Keep(_)) => None,
            Some(StaleEndpointPolicy::WithdrawAfter(w)) => Some(w.withdraw_after.get()),
            None => Some(DEFAULT_WITHDRAW_AFTER),
        }
    }
}

/// API server endpoint and credentials. `token` and `clientKeyData` are write-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesAccess {
    /// `https://host:port` of the API server.
    pub server: String,
    /// Bearer token (write-only; encrypted at rest).
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// Base64 of the PEM CA bundle; system roots are used without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_data: Option<String>,
    /// Base64 of a PEM client certificate (with `clientKeyData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_data: Option<String>,
    /// Base64 of the PEM client key (write-only; encrypted at rest).
    #[serde(default, skip_serializing)]
    pub client_key_data: Option<String>,
}

/// The write-only part of a cluster, kept encrypted in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCredentials {
    /// Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM client key, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_data: Option<String>,
}

impl ClusterCredentials {
    /// True when no credential is present.
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.client_key_data.is_none()
    }
}

impl Cluster {
    /// Moves the write-only credentials out of the spec.
    pub fn take_credentials(&mut self) -> ClusterCredentials {
        ClusterCredentials {
            token: self.kubernetes.token.take(),
            client_key_data: self.kubernetes.client_key_data.take(),
        }
    }
}

/// Gateway addresses of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddresses {
    /// East-west mTLS entry used by peer gateways (`host:port`).
    pub ingress_address: HostPort,
    /// Where in-cluster clients are sent (an IP address).
    #[schema(value_type = String, example = "10.8.0.53")]
    pub egress_address: IpAddr,
    /// North-south entry for clients outside every cluster (an IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "198.51.100.10")]
    pub public_address: Option<IpAddr>,
}

fn validate_base64_pem(value: &str, field: &str, what: &str, errors: &mut FieldErrors) {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
        Ok(bytes) if String::from_utf8_lossy(&bytes).contains(&format!("-----BEGIN {what}")) => {}
        Ok(_) => errors.add(field, format!("must be base64 of a PEM {what}")),
        Err(_) => errors.add(field, "must be base64 (of a PEM document)"),
    }
}

impl Resource for Cluster {
    const KIND: Kind = Kind::Cluster;

    fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        validate_labels(&self.labels, "labels", &mut errors);
        let k = &self.kubernetes;
        // The credentials travel to it: TLS only.
        let server_ok = k
            .server
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !server_ok || k.server.len() > 2048 {
            errors.add(
                "kubernetes.server",
                "must be an https URL such as https://10.0.0.1:6443 (the credentials are sent there)",
            );
        }
        if let Some(ca) = &k.ca_data {
            validate_base64_pem(ca, "kubernetes.caData", "CERTIFICATE", &mut errors);
        }
        if let Some(account) = &self.gateway_service_account {
            let valid = account.split_once('/').is_some_and(|(ns, name)| {
                Name::try_from(ns.to_owned()).is_ok() && Name::try_from(name.to_owned()).is_ok()
            });
            if !valid {
                errors.add(
                    "gatewayServiceAccount",
                    "must be namespace/name, e.g. gns-system/gns-gateway",
                );
            }
        }
        if let Some(cert) = &k.client_certificate_data {
            validate_base64_pem(
                cert,
                "kubernetes.clientCertificateData",
                "CERTIFICATE",
                &mut errors,
            );
        }
        if let Some(key) = &k.client_key_data {
            validate_base64_pem(key, "kubernetes.clientKeyData", "", &mut errors);
        }
        if k.client_certificate_data.is_some() != k.client_key_data.is_some()
            && k.client_key_data.is_some()
        {
            errors.add(
                "kubernetes.clientCertificateData",
                "clientKeyData needs clientCertificateData",
            );
        }
        if k.token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty() || t.len() > 16 * 1024)
        {
            errors.add("kubernetes.token", "must be non-empty and at most 16 KiB");
        }
        if let Some(d) = &self.gateway_deployment {
            let image_ok = !d.image.is_empty()
                && d.image.len() <= 512
                && !d
                    .image
                    .contains(|c: char| c.is_whitespace() || c.is_control());
            if !image_ok {
                errors.add(
                    "gatewayDeployment.image",
                    "must be a container image reference such as ghcr.io/gns-project/gns-gateway:0.1.0",
                );
            }
            if !(1..=100).contains(&d.replicas) {
                errors.add("gatewayDeployment.replicas", "must be from 1 to 100");
            }
            if let Some(url) = &d.federation_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                errors.add("gatewayDeployment.federationUrl", "must be an http(s) URL");
            }
        }
        let mut seen = BTreeSet::new();
        for (i, net) in self.networks.iter().enumerate() {
            if !seen.insert(*net) {
                errors.add(format!("networks[{i}]"), format!("{net} is listed twice"));
            }
        }
        errors.into_result()
    }
}

impl NamedResource for Cluster {
    fn name(&self) -> &Name {
        &self.name
    }
}

// ---------------------------------------------------------------------------
// Global namespace

/// Default access between services of a global namespace when no policy matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Calls are allowed unless a policy denies them.
    #[default]
    Allow,
    /// Calls are denied unless a policy allows them.
    Deny,
}

/// A global namespace: one domain over services in many clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNamespace {
    /// Name (RFC 1123 label).
    pub name: Name,
    /// DNS domain; no other global namespace may own it or overlap it.
    pub domain: Domain,
    /// Access when no access policy matches.
    #[serde(default)]
    pub default_access: Access,
    /// Kubernetes namespaces (per cluster) that make up this global namespace.
    #[serde(default)]
    pub members: Vec<Member>,
}

/// One Kubernetes namespace of one cluster in a global namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    /// A registered cluster.
    pub cluster: Name,
    /// Kubernetes namespace in that cluster.
    pub namespace: Name,
    /// Optional label selector on services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelMap>,
}

impl Resource for GlobalNamespace {
    const KIND: Kind = Kind::GlobalNamespace;

    fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        let mut seen = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            if !seen.insert((&m.cluster, &m.namespace)) {
                errors.add(
                    format!("members[{i}]"),
                    format!("{}/{} is listed twice", m.cluster, m.namespace),
                );
            }
            if let Some(sel) = &m.selector {
                validate_labels(sel, &format!("members[{i}].selector"), &mut errors);
            }
        }
        errors.into_result()
    }

    fn cluster_refs(&self) -> Vec<ClusterRef> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| ClusterRef {
                cluster: m.cluster.clone(),
                field: format!("members[{i}].cluster"),
            })
            .collect()
    }
}

impl NamedResource for GlobalNamespace {
    fn name(&self) -> &Name {
        &self.name
    }
}

// ---------------------------------------------------------------------------
// Routing

/// Largest accepted header regex, in characters.
pub const MAX_REGEX_LEN: usize = 1024;
/// Compiled-size limit for a header regex, in bytes.
pub const MAX_REGEX_COMPILED: usize = 256 * 1024;

/// Routing for one service of a global namespace: ordered rules, retries, timeouts, failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Routing {
    /// Rules, first match wins; the last one usually has no `match`.
    pub rules: Vec<RoutingRule>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Overall request timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Clusters to fail over to, in order, when the chosen one has no healthy endpoints.
    #[serde(default)]
    pub failover: Vec<Name>,
    /// When local endpoints are left out for failing (defaults: 3 failures
    /// in a row, 10 s out, any share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Outlier ejection of a service's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failures in a row (connect errors, 5xx) that eject an endpoint (1–1000; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failures further apart than this start the count again (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationSpec>,
    /// How long an ejected endpoint is left out (1s–1h; default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_time: Option<DurationSpec>,
    /// The most of the service's endpoints ejected at once, percent (0–100; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u8>,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingRule {
    /// Conditions; a rule without one matches every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<RouteMatch>,
    /// Rules with a higher precedence are tried first; equal ones in the
    /// order written (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedence: Option<u32>,
    /// Weighted destinations; weights sum to 100.
    pub destinations: Vec<Destination>,
}

impl RoutingRule {
    /// Whether the rule has no condition, so it matches every request.
    pub fn matches_every_request(&self) -> bool {
        self.matches.as_ref().is_none_or(|m| {
            m.headers.is_empty() && m.source.is_none() && m.path.is_none() && m.method.is_none()
        })
    }
}

impl Routing {
    /// The rules in the order they are tried: higher `precedence` first,
    /// equal ones in the order written.
    pub fn rules_in_order(&self) -> Vec<(usize, &RoutingRule)> {
        let mut rules: Vec<(usize, &RoutingRule)> = self.rules.iter().enumerate().collect();
        rules.sort_by_key(|(_, r)| std::cmp::Reverse(r.precedence.unwrap_or(0)));
        rules
    }
}

/// Request conditions of a rule (all must hold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    /// The calling service: requests from workloads that are endpoints of
    /// this service of the same global namespace (as the caller's gateway
    /// knows them by address). Requests from the public entry have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Name>,
    /// The request path (without the query): exactly one of `exact`,
    /// `prefix`, `regex` (whole path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method, e.g. `GET` (methods are case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path condition: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path starts with this (`/api` also matches `/api2`: end it with `/` for a segment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The path matches this regex (whole path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header condition: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: HeaderName,
    /// Value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value matches this regex (whole value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A weighted destination: a cluster, optionally only its endpoints with
/// some labels (a version `subset`, or `tags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Target cluster; without one, the endpoints `subset`/`tags` select in
    /// any member cluster, the caller's own cluster first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Name>,
    /// Only endpoints whose `version` label is this (the pods' labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Only endpoints with all these labels (any label keys: discovery
    /// keeps every key a rule names), e.g. `{"version": "v1.5", "env": "us-prod"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Share of traffic, 0–100.
    pub weight: u32,
}

impl Destination {
    /// The labels an endpoint must have to receive this destination's
    /// traffic (`subset` as `version`, and `tags`); empty: every endpoint.
    pub fn selector(&self) -> BTreeMap<String, String> {
        let mut selector = self.tags.clone();
        if let Some(version) = &self.subset {
            selector.insert("version".to_owned(), version.clone());
        }
        selector
    }
}

/// A label key as Kubernetes allows it: `[prefix/]name`, the prefix a DNS
/// subdomain (at most 253 characters), the name a label value that is not
/// empty.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && valid_label_value(name)
}

/// A label value as Kubernetes allows it: at most 63 characters,
/// alphanumerics with `-`, `_` and `.` inside.
fn valid_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !value.is_empty()
        && value.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Attempts after the first, 0–10.
    pub attempts: u32,
    /// Conditions that trigger a retry.
    #[serde(default)]
    pub on: Vec<RetryOn>,
    /// Timeout of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<DurationSpec>,
    /// The statuses `retriable-status-codes` retries on (100–599).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Send requests whose method is not idempotent (POST, PATCH, ...)
    /// again too; by default only idempotent ones are retried (a request
    /// that never reached the upstream moves on either way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
}

/// A retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// Every cluster of the plan refused the connection: the remaining
    /// attempts go round it again (moving on to the next cluster after a
    /// connect failure needs no condition).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The upstream reset the stream.
    #[serde(rename = "reset")]
    Reset,
    /// One of `retriableStatusCodes`.
    #[serde(rename = "retriable-status-codes")]
    RetriableStatusCodes,
}

impl Resource for Routing {
    const KIND: Kind = Kind::Routing;

    fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        if self.rules.is_empty() {
            errors.add("rules", "at least one rule is required");
        }
        let in_order = self.rules_in_order();
        let last = in_order.len().saturating_sub(1);
        for (position, (i, rule)) in in_order.iter().enumerate() {
            if rule.matches_every_request() && position != last {
                errors.add(
                    format!("rules[{i}].match"),
                    "a rule without conditions matches every request, so the rules tried after it (by precedence, then order) could never apply; move it last or lower its precedence",
                );
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if let Some(m) = &rule.matches {
                for (j, h) in m.headers.iter().enumerate() {
                    validate_header_match(h, &format!("{at}.match.headers[{j}]"), &mut errors);
                }
                if let Some(path) = &m.path {
                    validate_path_match(path, &format!("{at}.match.path"), &mut errors);
                }
                if let Some(method) = &m.method
                    && !valid_method(method)
                {
                    errors.add(
                        format!("{at}.match.method"),
                        "must be an HTTP method: 1-32 token characters, e.g. GET",
                    );
                }
            }
            validate_destinations(
                &rule.destinations,
                &format!("{at}.destinations"),
                &mut errors,
            );
        }
        if let Some(o) = &self.outlier_detection {
            if o.consecutive_failures
                .is_some_and(|n| !(1..=1000).contains(&n))
            {
                errors.add(
                    "outlierDetection.consecutiveFailures",
                    "must be between 1 and 1000",
                );
            }
            let hour = std::time::Duration::from_secs(3600);
            if o.ejection_time
                .is_some_and(|t| t.get() < std::time::Duration::from_secs(1) || t.get() > hour)
            {
                errors.add("outlierDetection.ejectionTime", "must be between 1s and 1h");
            }
            if o.interval
                .is_some_and(|t| t.get() < std::time::Duration::from_millis(100) || t.get() > hour)
            {
                errors.add("outlierDetection.interval", "must be between 100ms and 1h");
            }
            if o.max_ejected_percent.is_some_and(|p| p > 100) {
                errors.add(
                    "outlierDetection.maxEjectedPercent",
                    "must be between 0 and 100",
                );
            }
        }
        if let Some(r) = &self.retries {
            if r.attempts > 10 {
                errors.add("retries.attempts", "must be between 0 and 10");
            }
            if r.attempts > 0 && r.on.is_empty() {
                errors.add("retries.on", "name at least one retry condition");
            }
            let by_codes = r.on.contains(&RetryOn::RetriableStatusCodes);
            if by_codes && r.retriable_status_codes.is_empty() {
                errors.add(
                    "retries.retriableStatusCodes",
                    "retriable-status-codes needs the statuses to retry on",
                );
            }
            if !by_codes && !r.retriable_status_codes.is_empty() {
                errors.add(
                    "retries.retriableStatusCodes",
                    "used only with the retry condition retriable-status-codes: add it to retries.on",
                );
            }
            for (i, code) in r.retriable_status_codes.iter().enumerate() {
                if !(100..=599).contains(code) {
                    errors.add(
                        format!("retries.retriableStatusCodes[{i}]"),
                        "must be an HTTP status, 100 to 599",
                    );
                }
            }
            if let (Some(per_try), Some(total)) = (r.per_try_timeout, self.timeout)
                && per_try > total
            {
                errors.add("retries.perTryTimeout", "must not exceed timeout");
            }
        }
        if self
            .timeout
            .is_some_and(|t| t.get() > std::time::Duration::from_secs(3600))
        {
            errors.add("timeout", "must be at most 1h");
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.failover.iter().enumerate() {
            if !seen.insert(c) {
                errors.add(format!("failover[{i}]"), format!("{c} is listed twice"));
            }
        }
        errors.into_result()
    }

    fn cluster_refs(&self) -> Vec<ClusterRef> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, d) in rule.destinations.iter().enumerate() {
                if let Some(cluster) = &d.cluster {
                    refs.push(ClusterRef {
                        cluster: cluster.clone(),
                        field: format!("rules[{i}].destinations[{j}].cluster"),
                    });
                }
            }
        }
        for (i, c) in self.failover.iter().enumerate() {
            refs.push(ClusterRef {
                cluster: c.clone(),
                field: format!("failover[{i}]"),
            });
        }
        refs
    }
}

fn validate_header_match(h: &HeaderMatch, at: &str, errors: &mut FieldErrors) {
    validate_matcher([&h.exact, &h.prefix, &h.regex], at, errors, |_| None);
}

fn validate_path_match(p: &PathMatch, at: &str, errors: &mut FieldErrors) {
    validate_matcher([&p.exact, &p.prefix, &p.regex], at, errors, |v| {
        if !v.starts_with('/') {
            Some("must start with /")
        } else if v.contains('?') || v.chars().any(char::is_control) {
            Some("a path has no query (?) or control characters")
        } else {
            None
        }
    });
}

/// A condition given as exactly one of `exact`, `prefix` (text of at most
/// 4096 characters, which `literal` may refuse with a reason) or `regex`
/// (matched against the whole value).
fn validate_matcher(
    [exact, prefix, regex]: [&Option<String>; 3],
    at: &str,
    errors: &mut FieldErrors,
    literal: impl Fn(&str) -> Option<&'static str>,
) {
    if [exact, prefix, regex]
        .iter()
        .filter(|v| v.is_some())
        .count()
        != 1
    {
        errors.add(at.to_owned(), "give exactly one of exact, prefix or regex");
    }
    for (field, value) in [("exact", exact), ("prefix", prefix)] {
        let Some(v) = value else {
            continue;
        };
        if let Some(reason) = literal(v) {
            errors.add(format!("{at}.{field}"), reason);
        } else if v.len() > 4096 {
            errors.add(format!("{at}.{field}"), "must be at most 4096 characters");
        }
    }
    if let Some(re) = regex {
        validate_regex(re, &format!("{at}.regex"), errors);
    }
}

/// An HTTP method as RFC 9110 writes it: a token of at most 32 characters.
fn valid_method(method: &str) -> bool {
    (1..=32).contains(&method.len())
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_regex(re: &str, at: &str, errors: &mut FieldErrors) {
    if re.len() > MAX_REGEX_LEN {
        errors.add(
            at.to_owned(),
            format!("must be at most {MAX_REGEX_LEN} characters"),
        );
    } else if let Err(e) = regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(MAX_REGEX_COMPILED)
        .build()
    {
        errors.add(at.to_owned(), format!("invalid regex: {e}"));
    }
}

fn validate_destinations(destinations: &[Destination], at: &str, errors: &mut FieldErrors) {
    if destinations.is_empty() {
        errors.add(at.to_owned(), "at least one destination is required");
        return;
    }
    let mut sum: u64 = 0;
    let mut seen = BTreeSet::new();
    for (j, d) in destinations.iter().enumerate() {
        if d.weight > 100 {
            errors.add(format!("{at}[{j}].weight"), "must be between 0 and 100");
        }
        sum += u64::from(d.weight);
        if let Some(subset) = &d.subset {
            if !valid_label_value(subset) {
                errors.add(
                    format!("{at}[{j}].subset"),
                    "must be a label value: 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
                );
            }
            if d.tags.contains_key("version") {
                errors.add(
                    format!("{at}[{j}].subset"),
                    "subset is the version label: give it there or in tags, not both",
                );
            }
        }
        for (key, value) in &d.tags {
            // Discovery keeps the pods' labels of every key a rule names.
            if !valid_label_key(key) {
                errors.add(
                    format!("{at}[{j}].tags.{key}"),
                    "must be a label key: an optional DNS-subdomain prefix and '/', then 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
                );
            } else if !valid_label_value(value) {
                errors.add(
                    format!("{at}[{j}].tags.{key}"),
                    "must be a label value: 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
                );
            }
        }
        if !seen.insert((&d.cluster, d.selector())) {
            errors.add(format!("{at}[{j}]"), "the same destination is listed twice");
        }
    }
    if sum != 100 {
        errors.add(
            at.to_owned(),
            format!("weights must sum to 100, they sum to {sum}"),
        );
    }
}

// ---------------------------------------------------------------------------
// External workload

/// Shortest accepted heartbeat TTL.
pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest accepted heartbeat TTL.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A VM or bare-metal endpoint of a service, alive while it heartbeats within its TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalWorkload {
    /// Name (RFC 1123 label).
    pub name: Name,
    /// Service it is an endpoint of.
    pub service: Name,
    /// IP address.
    #[schema(value_type = String, example = "192.0.2.10")]
    pub address: IpAddr,
    /// Ports it serves.
    pub ports: Vec<WorkloadPort>,
    /// Time to live without a heartbeat (1s to 24h).
    pub ttl: DurationSpec,
    /// Labels, e.g. `version`: a routing destination's `subset` (the
    /// `version` label) or `tags` select it as they select pods.
    #[serde(default)]
    pub labels: LabelMap,
    /// The cluster whose network it lives in: only that cluster's gateway
    /// connects to it (the others through that gateway). Without one, any
    /// gateway may reach its address directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Name>,
}

/// A named port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadPort {
    /// Port name (RFC 1123 label), used in SRV names.
    pub name: Name,
    /// Port number, 1–65535.
    pub port: u16,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// The port the endpoints listen on, when it differs from `port` (a
    /// Kubernetes Service's `targetPort`, from its EndpointSlices). Gateways
    /// connect to endpoints on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

impl WorkloadPort {
    /// The port endpoints listen on.
    pub fn endpoint_port(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// Transport / application protocol of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// HTTP/1.1.
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC.
    Grpc,
    /// TLS (routed by SNI).
    Tls,
}

impl Resource for ExternalWorkload {
    const KIND: Kind = Kind::ExternalWorkload;

    fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        if self.ports.is_empty() {
            errors.add("ports", "at least one port is required");
        }
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.port == 0 {
                errors.add(format!("ports[{i}].port"), "must be between 1 and 65535");
            }
            if !names.insert(&p.name) {
                errors.add(
                    format!("ports[{i}].name"),
                    format!("{} is used twice", p.name),
                );
            }
            if !numbers.insert((p.port, p.protocol == Protocol::Udp)) {
                errors.add(
                    format!("ports[{i}].port"),
                    format!("{} is used twice", p.port),
                );
            }
        }
        let ttl = self.ttl.get();
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            errors.add("ttl", "must be between 1s and 24h");
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            errors.add("address", "must be a unicast address");
        }
        validate_labels(&self.labels, "labels", &mut errors);
        errors.into_result()
    }

    fn cluster_refs(&self) -> Vec<ClusterRef> {
        self.cluster
            .iter()
            .map(|c| ClusterRef {
                cluster: c.clone(),
                field: "cluster".to_owned(),
            })
            .collect()
    }
}

impl NamedResource for ExternalWorkload {
    fn name(&self) -> &Name {
        &self.name
    }
}

/// Liveness of an external workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum WorkloadPhase {
    /// Heartbeat within the TTL.
    Healthy,
    /// TTL passed without a heartbeat; left out of the catalog.
    Expired,
}

/// Status of an external workload (server-set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Healthy or Expired.
    pub phase: WorkloadPhase,
    /// Last heartbeat (or creation), RFC 3339.
    pub last_heartbeat: String,
    /// When it expires without another heartbeat, RFC 3339.
    pub expires_at: String,
}

// ---------------------------------------------------------------------------
// Access policy

/// Effect of an access policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    /// Permit the calls.
    Allow,
    /// Refuse the calls.
    Deny,
}

/// Which service identities may call a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessPolicy {
    /// Name (RFC 1123 label).
    pub name: Name,
    /// Calling services; `external` means clients outside every cluster, `*` any caller.
    pub from: Vec<String>,
    /// Called service.
    pub to: Name,
    /// allow or deny.
    pub action: PolicyAction,
}

impl Resource for AccessPolicy {
    const KIND: Kind = Kind::AccessPolicy;

    fn validate(&self) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::default();
        if self.from.is_empty() {
            errors.add(
                "from",
                "name at least one caller (a service, \"external\" or \"*\")",
            );
        }
        let mut seen = BTreeSet::new();
        for (i, caller) in self.from.iter().enumerate() {
            if caller != "*"
                && let Err(e) = Name::try_from(caller.clone())
            {
                errors.add(format!("from[{i}]"), e);
            }
            if !seen.insert(caller) {
                errors.add(format!("from[{i}]"), format!("{caller} is listed twice"));
            }
        }
        errors.into_result()
    }
}

impl NamedResource for AccessPolicy {
    fn name(&self) -> &Name {
        &self.name
    }
}

// ---------------------------------------------------------------------------
// Discovered services (written by discovery sync, read by the catalog API)

/// A service as discovered in one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredService {
    /// Service name.
    pub name: Name,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
    /// Per-cluster endpoints (a map as a sorted list: most services run
    /// in one cluster or a few, and a tree node per service would be
    /// hundreds of bytes; a JSON object on the wire all the same).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, ClusterEndpoints>)]
    pub clusters: litemap::LiteMap<String, ClusterEndpoints>,
}

impl DiscoveredService {
    /// Gives back what parsing left unused (lists grown past their length):
    /// a catalog of a million endpoints is held for as long as it lives.
    pub fn shrink_to_fit(&mut self) {
        self.ports.shrink_to_fit();
        for (_, endpoints) in self.clusters.iter_mut() {
            endpoints.ready.shrink_to_fit();
            endpoints.not_ready.shrink_to_fit();
        }
        let clusters = std::mem::take(&mut self.clusters);
        let mut list = clusters.into_tuple_vec();
        list.shrink_to_fit();
        self.clusters = litemap::LiteMap::from_sorted_store_unchecked(list);
    }
}

/// Endpoints of a service in one cluster (or `external` for VM workloads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEndpoints {
    /// Ready endpoints.
    pub ready: Vec<Endpoint>,
    /// Endpoints that exist but are not ready.
    pub not_ready: Vec<Endpoint>,
    /// The cluster's API is unreachable: these are its last known endpoints
    /// (kept, per static stability). Set by the catalog when read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// The cluster's stale-endpoint policy has withdrawn these endpoints from
    /// DNS and gateways. Set by the catalog when read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// Every gateway of the cluster went silent: these endpoints serve only
    /// the cluster's own clients. Set by the catalog when read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gateways_silent: bool,
}

/// One endpoint address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// IP address.
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// Zone, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Source object, e.g. the external workload's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The labels routing selects endpoints by (`version`, `env` and every
    /// key a routing rule names), from the pod behind the endpoint; an
    /// external workload's declared labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Resource for DiscoveredService {
    const KIND: Kind = Kind::Service;

    fn validate(&self) -> Result<(), FieldErrors> {
        Ok(())
    }
}

impl NamedResource for DiscoveredService {
    fn name(&self) -> &Name {
        &self.name
    }
}

// ---------------------------------------------------------------------------
// Tokens and audit

/// Role of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A VM agent (with `globalNamespaces`): reads, writes and heartbeats
    /// external workloads in those global namespaces, nothing else.
    Workload,
    /// A member cluster's gateway (with `cluster`): reads that cluster's
    /// gateway config and reports its instances, nothing else.
    Gateway,
    /// Read everything except tokens and the audit log.
    Viewer,
    /// Also write global namespaces and what is in them.
    Editor,
    /// Everything: clusters, tokens, audit.
    Admin,
}

impl Role {
    /// Stable identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Workload => "workload",
            Role::Gateway => "gateway",
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// Parses [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::Workload,
            Role::Gateway,
            Role::Viewer,
            Role::Editor,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Request to create an API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Token name (RFC 1123 label).
    pub name: Name,
    /// Role granted.
    pub role: Role,
    /// The cluster of a `gateway` token (required for it, refused for
    /// other roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Name>,
    /// The global namespaces a `viewer` or `editor` token is limited to
    /// (others answer 404, as if absent), or a `workload` token works in
    /// (required for it); refused for `admin` and `gateway` tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_namespaces: Option<Vec<Name>>,
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_discovered_services_clusters_are_a_json_object_in_name_order() {
        let json = serde_json::json!({"name": "web", "clusters": {
            "west": {"ready": [{"address": "10.9.1.1"}], "notReady": []},
            "east": {"ready": [{"address": "10.8.1.1"}, {"address": "10.8.1.2"}], "notReady": []},
            "west": {"ready": [], "notReady": [{"address": "10.9.1.9"}]}}});
        let mut svc: DiscoveredService = serde_json::from_value(json).expect("parses");
        svc.shrink_to_fit();
        let keys: Vec<&String> = svc.clusters.keys().collect();
        assert_eq!(keys, ["east", "west"]);
        let west = svc.clusters.get("west").expect("west");
        assert!(west.ready.is_empty(), "the later entry of a key wins");
        let back = serde_json::to_value(&svc).expect("encodes");
        assert_eq!(back["clusters"]["east"]["ready"][1]["address"], "10.8.1.2");
        assert!(back["clusters"].is_object());
    }
    use super::*;

    fn routing(json: serde_json::Value) -> Routing {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn contract_routing_example_is_valid() {
        let r = routing(serde_json::json!({
            "rules":[{"match":{"headers":[{"name":"user-agent","regex":".*Mobile.*"}]},
                       "destinations":[{"cluster":"west","weight":100}]},
                      {"destinations":[{"cluster":"east","weight":99},{"cluster":"west","weight":1}]}],
            "retries":{"attempts":3,"on":["5xx","connect-failure"],"perTryTimeout":"500ms"},
            "timeout":"2s","failover":["east","west"]}));
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.cluster_refs().len(), 5);
    }

    #[test]
    fn routing_rules_are_checked() {
        let r = routing(serde_json::json!({
            "rules":[{"destinations":[{"cluster":"east","weight":98}]},
                     {"match":{"headers":[{"name":"x","regex":"(","exact":"a"}]},
                      "destinations":[]}],
            "retries":{"attempts":11,"perTryTimeout":"3s"},"timeout":"2s",
            "failover":["east","east"]}));
        let errors = r.validate().expect_err("invalid");
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "rules[0].match",
            "rules[0].destinations",
            "rules[1].match.headers[0]",
            "rules[1].match.headers[0].regex",
            "rules[1].destinations",
            "retries.attempts",
            "retries.on",
            "retries.perTryTimeout",
            "failover[1]",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn source_path_method_and_precedence_are_checked() {
        let fields = |rules: serde_json::Value| -> Vec<String> {
            routing(serde_json::json!({ "rules": rules }))
                .validate()
                .err()
                .map(|e| e.0.iter().map(|f| f.field.clone()).collect())
                .unwrap_or_default()
        };
        let to = serde_json::json!([{"cluster": "east", "weight": 100}]);
        // The seed's rules: by calling service, and by path and method.
        assert!(
            fields(serde_json::json!([
                {"match": {"source": "checkout"}, "destinations": to},
                {"match": {"path": {"prefix": "/api/"}, "method": "POST"}, "destinations": to},
                {"match": {"path": {"regex": "/v[0-9]+/.*"}}, "destinations": to},
                {"destinations": to}]))
            .is_empty()
        );
        assert_eq!(
            fields(serde_json::json!([
                {"match": {"path": {"prefix": "api", "exact": "/a"}}, "destinations": to},
                {"match": {"path": {"exact": "/a?b=1"}}, "destinations": to},
                {"match": {"path": {"regex": "("}}, "destinations": to},
                {"match": {"method": "GET / HTTP"}, "destinations": to},
                {"destinations": to}])),
            [
                "rules[0].match.path",
                "rules[0].match.path.prefix",
                "rules[1].match.path.exact",
                "rules[2].match.path.regex",
                "rules[3].match.method"
            ]
        );
        // A catch-all may come first when the precedence makes it last...
        assert!(
            fields(serde_json::json!([
                {"destinations": to},
                {"match": {"source": "checkout"}, "precedence": 2, "destinations": to}]))
            .is_empty()
        );
        // ...but not when it is tried before another rule.
        assert_eq!(
            fields(serde_json::json!([
                {"match": {"source": "checkout"}, "destinations": to},
                {"precedence": 1, "destinations": to}])),
            ["rules[1].match"]
        );
        let r = routing(serde_json::json!({"rules": [
            {"match": {"method": "GET"}, "destinations": to},
            {"match": {"method": "PUT"}, "precedence": 2, "destinations": to},
            {"match": {"method": "POST"}, "precedence": 2, "destinations": to},
            {"destinations": to}]}));
        let order: Vec<usize> = r.rules_in_order().iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [1, 2, 0, 3], "higher first, then as written");
    }

    #[test]
    fn subsets_and_tags_take_label_keys_and_values_as_kubernetes_does() {
        let fields = |destinations: serde_json::Value| -> Vec<String> {
            routing(serde_json::json!({"rules": [{"destinations": destinations}]}))
                .validate()
                .err()
                .map(|e| e.0.iter().map(|f| f.field.clone()).collect())
                .unwrap_or_default()
        };
        // The shape: tags in any cluster, and a subset of west.
        assert!(
            fields(serde_json::json!([
                {"tags": {"version": "v1.5", "env": "us-prod"}, "weight": 99},
                {"cluster": "west", "subset": "v2.0-alpha", "weight": 1}]))
            .is_empty()
        );
        // The seed's split: two subsets of one cluster.
        assert!(
            fields(serde_json::json!([
                {"cluster": "east", "tags": {"version": "v1.5", "env": "us-prod"}, "weight": 99},
                {"cluster": "east", "subset": "v2.0-alpha", "weight": 1}]))
            .is_empty()
        );
        assert_eq!(
            fields(serde_json::json!([
                {"cluster": "east", "tags": {"team": "shop", "acme.com/tier": "gold", "-x": "y"}, "weight": 50},
                {"cluster": "east", "subset": "v2", "tags": {"version": "v3"}, "weight": 25},
                {"cluster": "east", "subset": "-bad-", "weight": 25}])),
            [
                "rules[0].destinations[0].tags.-x",
                "rules[0].destinations[1].subset",
                "rules[0].destinations[2].subset"
            ]
        );
        // A subset written either way is the same destination.
        assert_eq!(
            fields(serde_json::json!([
                {"cluster": "east", "subset": "v1", "weight": 50},
                {"cluster": "east", "tags": {"version": "v1"}, "weight": 50}])),
            ["rules[0].destinations[1]"]
        );
        let d: Destination = serde_json::from_value(
            serde_json::json!({"cluster": "east", "subset": "v1", "tags": {"env": "prod"}, "weight": 1}),
        )
        .expect("destination");
        assert_eq!(
            d.selector(),
            BTreeMap::from([
                ("env".to_owned(), "prod".to_owned()),
                ("version".to_owned(), "v1".to_owned())
            ])
        );
    }

    #[test]
    fn cluster_credentials_never_serialize() {
        let mut c: Cluster = serde_json::from_value(serde_json::json!({
            "name":"east","kubernetes":{"server":"https://10.0.0.1:6443","token":"s3cret"}}))
        .expect("parses");
        assert!(!serde_json::to_string(&c).expect("json").contains("s3cret"));
        let creds = c.take_credentials();
        assert_eq!(creds.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn retriable_status_codes_go_with_their_condition() {
        let fields = |retries: serde_json::Value| -> Vec<String> {
            let r = routing(serde_json::json!({
                "rules": [{"destinations": [{"cluster": "east", "weight": 100}]}],
                "retries": retries}));
            r.validate()
                .err()
                .map(|e| e.0.iter().map(|f| f.field.clone()).collect())
                .unwrap_or_default()
        };
        assert!(
            fields(
                serde_json::json!({"attempts": 2, "on": ["retriable-status-codes"],
            "retriableStatusCodes": [409, 429]})
            )
            .is_empty()
        );
        assert_eq!(
            fields(serde_json::json!({"attempts": 2, "on": ["retriable-status-codes"]})),
            ["retries.retriableStatusCodes"]
        );
        assert_eq!(
            fields(
                serde_json::json!({"attempts": 2, "on": ["5xx"], "retriableStatusCodes": [409]})
            ),
            ["retries.retriableStatusCodes"],
            "codes without their condition would be accepted and ignored"
        );
        assert_eq!(
            fields(
                serde_json::json!({"attempts": 2, "on": ["retriable-status-codes"],
                "retriableStatusCodes": [42]})
            ),
            ["retries.retriableStatusCodes[0]"]
        );
    }

    #[test]
    fn outlier_settings_out_of_range_are_refused() {
        let r = routing(serde_json::json!({
            "rules": [{"destinations": [{"cluster": "east", "weight": 100}]}],
            "outlierDetection": {"consecutiveFailures": 0, "interval": "10ms",
                                 "ejectionTime": "2h", "maxEjectedPercent": 101}}));
        let fields: Vec<String> = r
            .validate()
            .err()
            .map(|e| e.0.iter().map(|f| f.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            fields,
            [
                "outlierDetection.consecutiveFailures",
                "outlierDetection.ejectionTime",
                "outlierDetection.interval",
                "outlierDetection.maxEjectedPercent"
            ]
        );
    }
}
