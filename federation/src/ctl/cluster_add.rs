//! `gnsctl cluster add` and `gnsctl cluster rotate-credentials`: joining a
//! member cluster to the federation in one step.
//!
//! With the operator's kubeconfig credentials, used once and only against
//! the member cluster, `add` server-side applies (field manager `gnsctl`, so
//! re-running is idempotent) a `gns-system` namespace, the `gns-federation`
//! service account and the RBAC the federation needs (read services and
//! EndpointSlices cluster-wide; manage its gateway in `gns-system` only),
//! mints a token for that service account with the TokenRequest API, and
//! registers the cluster (`POST /v1/clusters`, or `PUT` when it exists) with
//! the kubeconfig's server URL and CA and the minted token.
//!
//! `rotate-credentials` mints a fresh token the same way and replaces only
//! the registered cluster's `kubernetes.token`; the federation's discovery
//! restarts the cluster's sync with it.
//!
//! The operator's own credentials never leave this process: they are not
//! sent to the federation, printed, or written anywhere.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::client::root_cause;
use super::kubeconfig::{self, MemberCluster};
use super::{Client, CtlError};

/// Field manager of gnsctl's server-side applies.
pub const FIELD_MANAGER: &str = "gnsctl";
/// Namespace of the federation's service account and gateway.
pub const SYSTEM_NAMESPACE: &str = "gns-system";
/// The federation's service account in each member cluster.
pub const SERVICE_ACCOUNT: &str = "gns-federation";
/// ClusterRole (and binding) for discovery.
pub const DISCOVERY_ROLE: &str = "gns-federation-discovery";
/// Role (and binding) in `gns-system` for the gateway.
pub const GATEWAY_ROLE: &str = "gns-federation-gateway";
/// Default lifetime of minted tokens (one year).
pub const DEFAULT_TOKEN_TTL: &str = "8760h";

/// `gnsctl cluster ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Join a member cluster: create the federation's service account and
    /// RBAC in it (with your kubeconfig credentials, once), mint a token for
    /// that account and register the cluster with it.
    Add(AddArgs),
    /// Mint a fresh token for the federation's service account and replace
    /// the registered cluster's token with it.
    RotateCredentials(RotateArgs),
}

/// Where the member cluster is and how long the minted token lives.
#[derive(Debug, Clone, Args)]
pub struct MemberArgs {
    /// Kubeconfig whose context reaches the member cluster with rights to
    /// create namespaces, service accounts, RBAC objects and tokens.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: PathBuf,
    /// Kubeconfig context [default: its current-context].
    #[arg(long, value_name = "CTX")]
    pub context: Option<String>,
    /// Lifetime of the minted service-account token, e.g. 8760h, 30d
    /// (10m to 2^32 s, the bounds Kubernetes enforces).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TOKEN_TTL, value_parser = parse_ttl)]
    pub token_ttl: Duration,
}

/// `gnsctl cluster add`.
#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// Name of the cluster in the federation.
    pub name: String,
    /// The member cluster and token lifetime.
    #[command(flatten)]
    pub member: MemberArgs,
    /// Locality labels, e.g. region=us-east-1,zone=us-east-1a [kept on update when omitted].
    #[arg(long, value_name = "K=V,...", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Pod/node networks (CIDRs), e.g. 10.8.0.0/16 [kept on update when omitted].
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub networks: Vec<ipnet::IpNet>,
    /// The gateway's east-west mTLS entry (HOST:PORT); needs --egress-address.
    #[arg(long, value_name = "HOST:PORT")]
    pub ingress_address: Option<String>,
    /// Where in-cluster clients are sent (IP); needs --ingress-address.
    #[arg(long, value_name = "IP")]
    pub egress_address: Option<IpAddr>,
    /// North-south entry for clients outside every cluster (IP).
    #[arg(long, value_name = "IP")]
    pub public_address: Option<IpAddr>,
}

/// `gnsctl cluster rotate-credentials`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// Name of the registered cluster.
    pub name: String,
    /// The member cluster and token lifetime.
    #[command(flatten)]
    pub member: MemberArgs,
}

/// The shortest `--token-ttl`: kube-apiserver refuses a TokenRequest whose
/// `expirationSeconds` is below 10 minutes.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);
/// The longest `--token-ttl`: kube-apiserver refuses a TokenRequest whose
/// `expirationSeconds` is above 2^32 seconds.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(1 << 32);

/// Parses `--token-ttl` (humantime: `8760h`, `30d`, `1h 30m`): whole
/// seconds (TokenRequest's `expirationSeconds`), from 10 minutes to 2^32
/// seconds, the bounds kube-apiserver enforces, so an out-of-range lifetime
/// is refused before anything is applied to the cluster.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text.trim()).map_err(|e| e.to_string())?;
    if ttl < MIN_TOKEN_TTL {
        return Err(format!(
            "must be at least 10m: Kubernetes refuses TokenRequests shorter than 10 minutes \
             (got {})",
            humantime::format_duration(ttl)
        ));
    }
    if ttl > MAX_TOKEN_TTL {
        return Err(format!(
            "must be at most 2^32 seconds ({}): Kubernetes refuses longer TokenRequests (got {})",
            humantime::format_duration(MAX_TOKEN_TTL),
            humantime::format_duration(ttl)
        ));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(format!(
            "must be whole seconds (TokenRequest expirationSeconds), not {}",
            humantime::format_duration(ttl)
        ));
    }
    Ok(ttl)
}

/// Parses one `KEY=VALUE` of `--labels`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Runs a `gnsctl cluster` command.
pub async fn run(
    client: &Client,
    command: ClusterCommand,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match command {
        ClusterCommand::Add(args) => add(client, &args, out).await,
        ClusterCommand::RotateCredentials(args) => rotate(client, &args, out).await,
    }
}

// ---------------------------------------------------------------------------
// The objects in the member cluster

fn object_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "gns".to_owned()),
    ])
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(object_labels()),
        ..ObjectMeta::default()
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        ..PolicyRule::default()
    }
}

fn subjects() -> Option<Vec<Subject>> {
    Some(vec![Subject {
        kind: "ServiceAccount".to_owned(),
        name: SERVICE_ACCOUNT.to_owned(),
        namespace: Some(SYSTEM_NAMESPACE.to_owned()),
        ..Subject::default()
    }])
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

/// The ClusterRole discovery needs: read services, EndpointSlices and pods
/// everywhere (pods are watched as metadata only, for their routing labels;
/// RBAC can't grant less than reading them), read/patch its own namespace,
/// review tokens (gateway pods join with their service-account tokens,
/// which the federation checks with a TokenReview) and read/patch CoreDNS's
/// ConfigMap (for `gatewayDeployment.manageCoreDNS`).
pub fn discovery_role() -> ClusterRole {
    const READ: [&str; 3] = ["get", "list", "watch"];
    ClusterRole {
        metadata: meta(DISCOVERY_ROLE, None),
        rules: Some(vec![
            rule(&[""], &["services", "pods"], &READ, &[]),
            rule(&["discovery.k8s.io"], &["endpointslices"], &READ, &[]),
            rule(
                &[""],
                &["namespaces"],
                &["get", "patch"],
                &[SYSTEM_NAMESPACE],
            ),
            rule(
                &["authentication.k8s.io"],
                &["tokenreviews"],
                &["create"],
                &[],
            ),
            // gatewayDeployment.manageCoreDNS: CoreDNS's own ConfigMap only.
            rule(&[""], &["configmaps"], &["get", "patch"], &["coredns"]),
        ]),
        ..ClusterRole::default()
    }
}

/// The Role the gateway's management needs in `gns-system` only.
pub fn gateway_role() -> Role {
    const ALL: [&str; 7] = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    Role {
        metadata: meta(GATEWAY_ROLE, Some(SYSTEM_NAMESPACE)),
        rules: Some(vec![
            rule(&["apps"], &["deployments"], &ALL, &[]),
            rule(
                &[""],
                &["services", "secrets", "serviceaccounts", "configmaps"],
                &ALL,
                &[],
            ),
        ]),
    }
}

/// What a Kubernetes client error means to the user.
fn kube_error(action: impl Into<String>, error: kube::Error) -> CtlError {
    let action = action.into();
    match error {
        kube::Error::Api(status) => {
            let code = status.code;
            let hint = match code {
                401 => Some(
                    "the API server refused the kubeconfig user's credentials (expired or revoked?)"
                        .to_owned(),
                ),
                403 => Some(
                    "the kubeconfig user lacks the rights: joining a cluster needs to create \
                     namespaces, service accounts, RBAC objects and service-account tokens \
                     (cluster-admin or similar)"
                        .to_owned(),
                ),
                _ => None,
            };
            let message = if status.message.is_empty() {
                format!("the Kubernetes API answered {code} {}", status.reason)
            } else {
                format!("the Kubernetes API answered {code}: {}", status.message)
            };
            CtlError::Kubernetes {
                action,
                status: Some(code),
                message,
                hint,
            }
        }
        other => CtlError::Kubernetes {
            action,
            status: None,
            message: format!("cannot reach the Kubernetes API: {}", root_cause(&other)),
            hint: None,
        },
    }
}

/// Server-side applies `object` and prints `what applied`.
async fn apply<K>(api: Api<K>, object: &K, what: &str, out: &mut dyn Write) -> Result<(), CtlError>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(object),
    )
    .await
    .map_err(|e| kube_error(format!("apply {what}"), e))?;
    writeln!(out, "{what} applied")?;
    Ok(())
}

/// Applies the namespace, service account and RBAC objects, in that order.
pub async fn apply_access(kube: &kube::Client, out: &mut dyn Write) -> Result<(), CtlError> {
    let ns = SYSTEM_NAMESPACE;
    apply(
        Api::<Namespace>::all(kube.clone()),
        &Namespace {
            metadata: meta(ns, None),
            ..Namespace::default()
        },
        &format!("namespace/{ns}"),
        out,
    )
    .await?;
    apply(
        Api::<ServiceAccount>::namespaced(kube.clone(), ns),
        &ServiceAccount {
            metadata: meta(SERVICE_ACCOUNT, Some(ns)),
            ..ServiceAccount::default()
        },
        &format!("serviceaccount/{SERVICE_ACCOUNT} -n {ns}"),
        out,
    )
    .await?;
    apply(
        Api::<ClusterRole>::all(kube.clone()),
        &discovery_role(),
        &format!("clusterrole/{DISCOVERY_ROLE}"),
        out,
    )
    .await?;
    apply(
        Api::<ClusterRoleBinding>::all(kube.clone()),
        &ClusterRoleBinding {
            metadata: meta(DISCOVERY_ROLE, None),
            role_ref: role_ref("ClusterRole", DISCOVERY_ROLE),
            subjects: subjects(),
        },
        &format!("clusterrolebinding/{DISCOVERY_ROLE}"),
        out,
    )
    .await?;
    apply(
        Api::<Role>::namespaced(kube.clone(), ns),
        &gateway_role(),
        &format!("role/{GATEWAY_ROLE} -n {ns}"),
        out,
    )
    .await?;
    apply(
        Api::<RoleBinding>::namespaced(kube.clone(), ns),
        &RoleBinding {
            metadata: meta(GATEWAY_ROLE, Some(ns)),
            role_ref: role_ref("Role", GATEWAY_ROLE),
            subjects: subjects(),
        },
        &format!("rolebinding/{GATEWAY_ROLE} -n {ns}"),
        out,
    )
    .await
}

/// Mints a token for the federation's service account (TokenRequest).
pub async fn mint_token(kube: &kube::Client, ttl: Duration) -> Result<String, CtlError> {
    let action = format!("request a token for serviceaccount {SYSTEM_NAMESPACE}/{SERVICE_ACCOUNT}");
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            bound_object_ref: None,
            expiration_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        },
        status: None,
    };
    let answer = Api::<ServiceAccount>::namespaced(kube.clone(), SYSTEM_NAMESPACE)
        .create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await
        .map_err(|e| match kube_error(action.clone(), e) {
            CtlError::Kubernetes {
                action,
                status: Some(404),
                message,
                ..
            } => CtlError::Kubernetes {
                action,
                status: Some(404),
                message,
                hint: Some(
                    "the service account is missing: run `gnsctl cluster add` to create it"
                        .to_owned(),
                ),
            },
            other => other,
        })?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CtlError::Kubernetes {
            action,
            status: None,
            message: "the TokenRequest answer holds no token".to_owned(),
            hint: None,
        })
}

/// Loads the kubeconfig context and makes the operator's client (memory only).
async fn connect(member: &MemberArgs) -> Result<(MemberCluster, kube::Client), CtlError> {
    let loaded = kubeconfig::load(&member.kubeconfig, member.context.as_deref()).await?;
    // kube-rs uses rustls; make ring its provider (ignore "already installed").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = kube::Client::try_from(loaded.config).map_err(|e| CtlError::Kubernetes {
        action: format!("connect to {}", loaded.member.server),
        status: None,
        message: root_cause(&e),
        hint: None,
    })?;
    Ok((loaded.member, kube))
}

// ---------------------------------------------------------------------------
// The federation side

fn cluster_path(name: &str) -> Vec<String> {
    vec!["v1".to_owned(), "clusters".to_owned(), name.to_owned()]
}

/// The `kubernetes` part of a registration: server, CA and the minted token.
fn kubernetes_access(member: &MemberCluster, token: &str) -> Value {
    let mut access = Map::new();
    access.insert("server".into(), Value::String(member.server.clone()));
    if let Some(ca) = &member.ca_data {
        access.insert("caData".into(), Value::String(ca.clone()));
    }
    access.insert("token".into(), Value::String(token.to_owned()));
    Value::Object(access)
}

fn gateway(args: &AddArgs) -> Result<Option<Value>, CtlError> {
    match (&args.ingress_address, &args.egress_address) {
        (None, None) if args.public_address.is_none() => Ok(None),
        (Some(ingress), Some(egress)) => {
            let mut gateway =
                json!({"ingressAddress": ingress, "egressAddress": egress.to_string()});
            if let Some(public) = &args.public_address {
                gateway["publicAddress"] = Value::String(public.to_string());
            }
            Ok(Some(gateway))
        }
        _ => Err(CtlError::InvalidArgument {
            flag: "--ingress-address/--egress-address",
            reason: "a gateway needs both --ingress-address and --egress-address \
                     (--public-address is optional)"
                .to_owned(),
        }),
    }
}

/// `gnsctl cluster add`.
pub async fn add(client: &Client, args: &AddArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let gateway = gateway(args)?;
    let (member, kube) = connect(&args.member).await?;
    writeln!(
        out,
        "using context {} (cluster {}, {})",
        member.context, member.cluster, member.server
    )?;
    apply_access(&kube, out).await?;
    let token = mint_token(&kube, args.member.token_ttl).await?;
    writeln!(
        out,
        "token minted for serviceaccount {SYSTEM_NAMESPACE}/{SERVICE_ACCOUNT} (expires in {})",
        humantime::format_duration(args.member.token_ttl)
    )?;
    drop(kube);

    let labels: Map<String, Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let networks: Vec<Value> = args
        .networks
        .iter()
        .map(|n| Value::String(n.to_string()))
        .collect();
    let path = cluster_path(&args.name);
    match client.get_optional(&path).await? {
        None => {
            let mut body = json!({
                "name": args.name,
                "labels": labels,
                "networks": networks,
                "kubernetes": kubernetes_access(&member, &token),
            });
            if let Some(gateway) = gateway {
                body["gateway"] = gateway;
            }
            client
                .post(&["v1".to_owned(), "clusters".to_owned()], &body)
                .await?;
            writeln!(out, "cluster/{} registered", args.name)?;
        }
        Some(mut existing) => {
            let Some(body) = existing.as_object_mut() else {
                return Err(CtlError::BadResponse {
                    url: client.url(&path).to_string(),
                    reason: "the cluster is not a JSON object".to_owned(),
                });
            };
            if !args.labels.is_empty() {
                body.insert("labels".into(), Value::Object(labels));
            }
            if !args.networks.is_empty() {
                body.insert("networks".into(), Value::Array(networks));
            }
            if let Some(gateway) = gateway {
                body.insert("gateway".into(), gateway);
            }
            // The new access replaces the old one whole (a client certificate
            // too: its key would not be kept with a new token).
            body.insert("kubernetes".into(), kubernetes_access(&member, &token));
            client.put(&path, &existing).await?;
            writeln!(
                out,
                "cluster/{} was registered already: updated with the new credentials",
                args.name
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Trailing slashes don't make a different server.
fn same_server(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

/// `gnsctl cluster rotate-credentials`.
pub async fn rotate(
    client: &Client,
    args: &RotateArgs,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let path = cluster_path(&args.name);
    let Some(mut existing) = client.get_optional(&path).await? else {
        return Err(CtlError::Unsupported(format!(
            "cluster/{} is not registered; join it with `gnsctl cluster add {} --kubeconfig FILE`",
            args.name, args.name
        )));
    };
    let bad = |reason: &str| CtlError::BadResponse {
        url: client.url(&path).to_string(),
        reason: reason.to_owned(),
    };
    let registered = existing
        .pointer("/kubernetes/server")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the cluster has no kubernetes.server"))?
        .to_owned();
    let (member, kube) = connect(&args.member).await?;
    if !same_server(&registered, &member.server) {
        return Err(CtlError::InvalidArgument {
            flag: "--kubeconfig/--context",
            reason: format!(
                "context {} points at {}, but cluster/{} is registered with {registered}; \
                 pick the context of that cluster",
                member.context, member.server, args.name
            ),
        });
    }
    let token = mint_token(&kube, args.member.token_ttl).await?;
    writeln!(
        out,
        "token minted for serviceaccount {SYSTEM_NAMESPACE}/{SERVICE_ACCOUNT} (expires in {})",
        humantime::format_duration(args.member.token_ttl)
    )?;
    drop(kube);

    // The API never returns credentials, and a PUT without them would keep
    // the old ones: send the registered server and CA back with the new token
    // (and the resourceVersion read, so a concurrent change is not lost).
    let kubernetes = existing
        .get_mut("kubernetes")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("the cluster has no kubernetes object"))?;
    kubernetes.insert("token".into(), Value::String(token));
    // A client certificate's key is stored with the token and would be lost:
    // the cluster now authenticates with the token alone.
    kubernetes.remove("clientCertificateData");
    client.put(&path, &existing).await?;
    writeln!(out, "cluster/{} credentials rotated", args.name)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_ttls_parse() {
        assert_eq!(
            parse_label("region=us-east-1"),
            Ok(("region".to_owned(), "us-east-1".to_owned()))
        );
        assert!(parse_label("region").is_err());
        assert!(parse_label("=x").is_err());
        assert_eq!(
            parse_ttl(DEFAULT_TOKEN_TTL),
            Ok(Duration::from_secs(365 * 24 * 3600))
        );
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn token_ttls_are_bounded_as_kubernetes_bounds_token_requests() {
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(
            parse_ttl(&format!("{}s", 1_u64 << 32)),
            Ok(Duration::from_secs(1 << 32))
        );
        for short in ["0s", "1s", "25s", "5m", "9m 59s", "599s"] {
            let refused = parse_ttl(short).expect_err(short);
            assert!(
                refused.starts_with(
                    "must be at least 10m: Kubernetes refuses TokenRequests shorter than 10 minutes"
                ),
                "{short}: {refused}"
            );
        }
        let refused = parse_ttl(&format!("{}s", (1_u64 << 32) + 1)).expect_err("too long");
        assert!(
            refused.starts_with("must be at most 2^32 seconds") && refused.contains("Kubernetes"),
            "{refused}"
        );
        let refused = parse_ttl("10m 500ms").expect_err("fractional");
        assert!(refused.contains("whole seconds"), "{refused}");
    }

    #[test]
    fn rbac_is_scoped() {
        let role = discovery_role();
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 5);
        assert_eq!(
            rules[4].resource_names.as_deref(),
            Some(&["coredns".to_owned()][..])
        );
        assert_eq!(
            rules[2].resource_names.as_deref(),
            Some(&[SYSTEM_NAMESPACE.to_owned()][..])
        );
        // Reviewing gateway tokens: create on tokenreviews, nothing else there.
        assert_eq!(
            rules[3].resources.as_deref(),
            Some(&["tokenreviews".to_owned()][..])
        );
        assert_eq!(rules[3].verbs, ["create"]);
        let gateway = gateway_role();
        assert_eq!(
            gateway.metadata.namespace.as_deref(),
            Some(SYSTEM_NAMESPACE)
        );
    }

    #[test]
    fn servers_compare_without_trailing_slash() {
        assert!(same_server("https://h:6443/", "https://h:6443"));
        assert!(!same_server("https://h:6443", "https://g:6443"));
    }
}
