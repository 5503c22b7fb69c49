//! Gateway rollout: installs, upgrades and removes the gateway of a member
//! cluster whose spec has a `gatewayDeployment`, with Kubernetes server-side
//! apply (field manager `gns-federation`) through kube-rs.
//!
//! The objects come from [`templates::GATEWAY_TEMPLATE`]
//! (`deploy/gateway/gateway.yaml`): namespace `gns-system`, a
//! ServiceAccount, a Secret with the federation URL, a ConfigMap with the
//! roots that verify the federation, the CoreDNS forwarding server blocks,
//! the Deployment (whose pods join with a projected service-account token
//! for audience `gns-federation`, so any number of replicas can),
//! the ingress (LoadBalancer by default) and egress (ClusterIP; HTTP on 80
//! and every TCP port of the gateway config, applied again when those
//! change) Services, and with `publicServiceType` a public entry Service.
//! [`run`] applies them, then follows the rollout and publishes the gateway
//! status (`phase`, `readyReplicas`, `version`, `ingressAddress`) that
//! discovery writes into the cluster status. A field owned by another
//! manager is reported as a conflict, not taken, unless the spec says
//! `forceConflicts`. A changed spec (a new image is an upgrade) restarts the
//! task, which applies again; [`remove`] deletes what [`run`] created.

pub mod coredns;
pub mod templates;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::model::GatewayDeployment;
use templates::TemplateError;

/// The field manager of everything the federation applies.
pub const FIELD_MANAGER: &str = "gns-federation";
/// The namespace the gateway lives in.
pub const NAMESPACE: &str = "gns-system";
/// How often a rollout in progress (and a finished one) is looked at.
const POLL: Duration = Duration::from_secs(1);
/// The ingress port of a deployed gateway (its Service port).
const INGRESS_PORT: u16 = 15443;
/// The ports a deployed gateway listens on itself (egress, ingress, admin,
/// public entry: deploy/gateway/gateway.yaml): no service port takes them.
const GATEWAY_PORTS: [u16; 4] = [15001, INGRESS_PORT, 15021, 15080];

/// Why applying or following the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// Another field manager owns fields of ours.
    #[error("conflict with another field manager: {0}")]
    Conflict(String),
    /// The federation's credentials may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Any other Kubernetes API failure.
    #[error("{0}")]
    Kube(String),
    /// The template did not render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The CoreDNS configuration could not take the forwarding blocks.
    #[error(transparent)]
    CoreDns(#[from] coredns::CorednsError),
}

impl RolloutError {
    fn phase(&self) -> &'static str {
        match self {
            RolloutError::Conflict(_)
            | RolloutError::CoreDns(coredns::CorednsError::Conflict(_)) => "Conflict",
            _ => "Failed",
        }
    }
}

fn kube_error(object: &str, e: kube::Error) -> RolloutError {
    match &e {
        kube::Error::Api(status) if status.code == 409 => {
            RolloutError::Conflict(format!("{object}: {}", status.message))
        }
        kube::Error::Api(status) if status.code == 403 => {
            RolloutError::Forbidden(format!("{object}: {}", status.message))
        }
        // The same words as the cluster's discovery status.
        _ => RolloutError::Kube(format!(
            "{object}: {}",
            crate::discovery::cluster::describe_client_error(&e)
        )),
    }
}

/// What the gateway of a cluster is rendered from (plain data).
#[derive(Debug, Clone)]
pub struct GatewayParams {
    /// The cluster's name.
    pub cluster: String,
    /// What to deploy.
    pub spec: GatewayDeployment,
    /// The URL the gateway follows (the spec's, else the federation's advertised one).
    pub federation_url: String,
    /// PEM roots that verify the federation's TLS certificate.
    pub federation_ca: String,
    /// Where CoreDNS should forward the GNS domains (`ip:port`).
    pub dns_address: String,
    /// The domains of the global namespaces the cluster is a member of.
    pub domains: Vec<String>,
    /// The service ports of the gateway config the egress Service exposes
    /// beside HTTP on 80, each with what it carries.
    pub egress_ports: BTreeMap<u16, PortRole>,
}

impl GatewayParams {
    /// The image tag, reported as the gateway version.
    pub fn version(&self) -> String {
        image_tag(&self.spec.image)
    }
}

/// Everything a rollout needs.
#[derive(Clone)]
pub struct Rollout {
    /// What to render.
    pub params: GatewayParams,
    /// A client with the cluster's stored credentials.
    pub client: kube::Client,
    /// The roots that verify the federation, kept current: when they change
    /// (a root rotation), the gateway objects are applied again, so pods
    /// started afterwards trust the new root.
    pub roots: crate::tls::ClientRoots,
    /// The published snapshots: when the TCP ports of the gateway config
    /// change, the egress Service is applied again with them.
    pub snapshots: crate::snapshot::SnapshotReceiver,
}

/// The name of the public entry's Service (only with `publicServiceType`).
const PUBLIC_SERVICE: &str = "gns-gateway-public";

/// What an egress Service port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// TCP, passed through.
    Tcp,
    /// HTTP, routed by `Host`.
    Http,
}

/// The service ports of every service in the current snapshot's gateway
/// config that the egress serves besides 80: TCP ports, and HTTP service
/// ports (a port that is TCP for any service is TCP); never the gateway's
/// own.
pub fn config_egress_ports(
    snapshots: &crate::snapshot::SnapshotReceiver,
) -> BTreeMap<u16, PortRole> {
    let mut ports = BTreeMap::new();
    if let Some(snapshot) = snapshots.borrow().as_ref() {
        for svc in snapshot.gateways.services.values() {
            for port in svc.http_ports.iter().filter(|p| **p != 80) {
                ports.entry(*port).or_insert(PortRole::Http);
            }
            for tcp in &svc.tcp_ports {
                ports.insert(tcp.port, PortRole::Tcp);
            }
        }
    }
    ports.retain(|port, _| !GATEWAY_PORTS.contains(port));
    ports
}

/// The egress Service's ports: HTTP on 80, then each service port as itself.
fn egress_ports(ports: &BTreeMap<u16, PortRole>) -> Value {
    let mut out = vec![json!({"name": "egress", "port": 80, "targetPort": "egress"})];
    out.extend(ports.iter().filter(|(p, _)| **p != 80).map(|(p, role)| {
        let name = match role {
            PortRole::Tcp => format!("tcp-{p}"),
            PortRole::Http => format!("http-{p}"),
        };
        json!({"name": name, "port": p, "targetPort": p})
    }));
    Value::Array(out)
}

/// The tag of an image reference (`latest` when it has none; a digest as is).
pub fn image_tag(image: &str) -> String {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.to_owned();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':')
        .map_or_else(|| "latest".to_owned(), |(_, tag)| tag.to_owned())
}

/// The CoreDNS server blocks that forward the GNS domains to the federation's DNS.
pub fn dns_forwarding(domains: &[String], dns_address: &str) -> String {
    domains
        .iter()
        .map(|d| format!("{d}:53 {{\n    forward . {dns_address}\n    cache 5\n}}\n"))
        .collect()
}

/// The objects of a gateway, rendered with a join token, in apply order.
pub fn manifests(params: &GatewayParams) -> Result<Vec<Value>, TemplateError> {
    let values: BTreeMap<&str, Value> = [
        ("CLUSTER", json!(params.cluster)),
        ("VERSION", json!(params.version())),
        ("IMAGE", json!(params.spec.image)),
        ("REPLICAS", json!(params.spec.replicas)),
        ("FEDERATION_URL", json!(params.federation_url)),
        ("FEDERATION_CA", json!(params.federation_ca)),
        (
            "INGRESS_SERVICE_TYPE",
            json!(params.spec.ingress_service_type.as_str()),
        ),
        (
            "DNS_FORWARDING",
            json!(dns_forwarding(&params.domains, &params.dns_address)),
        ),
        ("EGRESS_PORTS", egress_ports(&params.egress_ports)),
        (
            "PUBLIC_SERVICE_TYPE",
            json!(params.spec.public_service_type.unwrap_or_default().as_str()),
        ),
    ]
    .into_iter()
    .collect();
    let mut objects = templates::render(templates::GATEWAY_TEMPLATE, &values)?;
    if params.spec.public_service_type.is_none() {
        objects.retain(|o| {
            o.pointer("/metadata/name").and_then(Value::as_str) != Some(PUBLIC_SERVICE)
        });
    }
    Ok(objects)
}

/// The API of an object's kind, and its name, from its `apiVersion`/`kind`/`metadata`.
fn api_for(
    client: &kube::Client,
    object: &Value,
) -> Result<(Api<DynamicObject>, String), RolloutError> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let (Some(api_version), Some(kind), Some(name)) =
        (text("/apiVersion"), text("/kind"), text("/metadata/name"))
    else {
        return Err(RolloutError::Kube(
            "a gateway manifest lacks apiVersion, kind or metadata.name".into(),
        ));
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api = match text("/metadata/namespace") {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    Ok((api, format!("{}/{name}", kind.to_lowercase())))
}

/// Applies every gateway object once, in order (the namespace first).
pub async fn apply_all(rollout: &Rollout) -> Result<usize, RolloutError> {
    let objects = manifests(&rollout.params)?;
    let mut params = PatchParams::apply(FIELD_MANAGER);
    if rollout.params.spec.force_conflicts {
        params = params.force();
    }
    for object in &objects {
        let (api, what) = api_for(&rollout.client, object)?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        api.patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| kube_error(&what, e))?;
    }
    if rollout.params.spec.public_service_type.is_none() {
        // Turned off (or never on): no public Service stays behind.
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(rollout.client.clone(), NAMESPACE);
        match services
            .delete(PUBLIC_SERVICE, &DeleteParams::default())
            .await
        {
            Ok(_) => tracing::info!(
                cluster = rollout.params.cluster,
                "public entry Service removed"
            ),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_error("service/gns-gateway-public", e)),
        }
    }
    Ok(objects.len())
}

/// The gateway status from the Deployment and the ingress Service.
async fn observe(rollout: &Rollout) -> Result<Option<Value>, RolloutError> {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(rollout.client.clone(), NAMESPACE);
    let Some(deployment) = deployments
        .get_opt("gns-gateway")
        .await
        .map_err(|e| kube_error("deployment/gns-gateway", e))?
    else {
        return Ok(None);
    };
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(rollout.client.clone(), NAMESPACE);
    let service = services
        .get_opt("gns-gateway-ingress")
        .await
        .map_err(|e| kube_error("service/gns-gateway-ingress", e))?;
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0) >= generation;
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let running_version = deployment
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("app.kubernetes.io/version"))
        .cloned();
    let ingress = service.as_ref().and_then(ingress_address);
    let egress = services
        .get_opt("gns-gateway-egress")
        .await
        .map_err(|e| kube_error("service/gns-gateway-egress", e))?
        .and_then(|s| s.spec?.cluster_ip)
        .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    // The public entry's address, once its LoadBalancer has one (an IP:
    // outside clients get it as an A/AAAA answer).
    let public = match rollout.params.spec.public_service_type {
        Some(_) => services
            .get_opt(PUBLIC_SERVICE)
            .await
            .map_err(|e| kube_error("service/gns-gateway-public", e))?
            .as_ref()
            .and_then(public_address),
        None => None,
    };
    let done = observed && ready >= wanted && updated >= wanted;
    let (phase, message) = match (done, &ingress) {
        (true, Some(_)) => ("Ready", "the gateway is ready".to_owned()),
        (true, None) => (
            "Progressing",
            "waiting for the ingress Service to get an address".to_owned(),
        ),
        (false, _) => (
            "Progressing",
            format!("{updated} of {wanted} gateway replicas updated, {ready} ready"),
        ),
    };
    Ok(Some(json!({
        "phase": phase,
        "message": message,
        "replicas": wanted,
        "readyReplicas": ready,
        "version": running_version,
        "ingressAddress": ingress,
        "egressAddress": egress,
        "publicAddress": public,
    })))
}

/// The IP address outside clients reach the public entry Service at: its
/// load balancer's (a ClusterIP or NodePort Service has none to give out,
/// nor has a load balancer that names itself by host name only).
fn public_address(service: &k8s_openapi::api::core::v1::Service) -> Option<String> {
    let lb = service.status.as_ref()?.load_balancer.as_ref()?;
    lb.ingress
        .as_ref()?
        .iter()
        .filter_map(|i| i.ip.as_deref())
        .find(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_owned)
}

/// `host:port` where peer gateways reach the ingress Service.
fn ingress_address(service: &k8s_openapi::api::core::v1::Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    match spec.type_.as_deref() {
        Some("LoadBalancer") => {
            let lb = service.status.as_ref()?.load_balancer.as_ref()?;
            let first = lb.ingress.as_ref()?.first()?;
            let host = first.ip.clone().or_else(|| first.hostname.clone())?;
            Some(format!("{host}:{INGRESS_PORT}"))
        }
        Some("ClusterIP") | None => spec
            .cluster_ip
            .as_ref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| format!("{ip}:{INGRESS_PORT}")),
        _ => None,
    }
}

/// Applies the gateway and follows it forever, publishing its status on `status`.
pub async fn run(mut rollout: Rollout, status: watch::Sender<Option<Value>>) {
    let mut backoff = Duration::from_secs(1);
    let publish = |value: Value| {
        status.send_if_modified(|current| {
            if current.as_ref() == Some(&value) {
                false
            } else {
                *current = Some(value);
                true
            }
        });
    };
    let version = rollout.params.version();
    let failed = |e: &RolloutError| json!({"phase": e.phase(), "message": e.to_string(), "version": version});
    // The CoreDNS problem of the last apply (a lasting one is logged once).
    let mut last_coredns = None;
    loop {
        publish(
            json!({"phase": "Applying", "message": "applying the gateway", "version": rollout.params.version()}),
        );
        match apply_all(&rollout).await {
            Ok(count) => {
                tracing::info!(
                    cluster = rollout.params.cluster,
                    objects = count,
                    version = rollout.params.version(),
                    "gateway applied"
                );
                backoff = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(cluster = rollout.params.cluster, error = %e, "gateway apply failed");
                publish(failed(&e));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        // CoreDNS: a problem there is the status (until it is tried again
        // and gone), while the gateway is followed as ever.
        let mut coredns = coredns::Following::tried(&rollout, last_coredns.as_ref()).await;
        // Follow the rollout; a deleted Deployment is applied again.
        loop {
            coredns.retry_when_due(&rollout).await;
            last_coredns.clone_from(&coredns.problem);
            match observe(&rollout).await {
                Ok(Some(mut value)) => {
                    if let Some(e) = &coredns.problem {
                        let e = RolloutError::CoreDns(e.clone());
                        value["phase"] = json!(e.phase());
                        value["message"] = json!(e.to_string());
                    }
                    publish(value);
                }
                Ok(None) => break,
                Err(e) => {
                    let mut value = status.borrow().clone().unwrap_or_else(|| failed(&e));
                    value["message"] = json!(format!("cannot read the rollout: {e}"));
                    publish(value);
                }
            }
            let roots = rollout.roots.pem();
            if !roots.is_empty() && roots != rollout.params.federation_ca {
                tracing::info!(
                    cluster = rollout.params.cluster,
                    "the federation's roots changed; applying the gateway again"
                );
                rollout.params.federation_ca = roots;
                break;
            }
            // Walked only when a new snapshot was published (every service
            // of every global namespace: not once a second per cluster).
            let fresh = rollout.snapshots.has_changed().unwrap_or(false);
            let ports = if fresh {
                rollout.snapshots.mark_unchanged();
                config_egress_ports(&rollout.snapshots)
            } else {
                rollout.params.egress_ports.clone()
            };
            if rollout.snapshots.borrow().is_some() && ports != rollout.params.egress_ports {
                tracing::info!(
                    cluster = rollout.params.cluster,
                    ports = ?ports,
                    "the gateway config's service ports changed; applying the egress Service again"
                );
                rollout.params.egress_ports = ports;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Deletes what [`run`] created in the cluster; the namespace too, unless
/// `gnsctl cluster add` put the federation's own ServiceAccount in it.
/// Objects already gone are fine. Returns how many were deleted.
pub async fn remove(client: &kube::Client) -> Result<usize, RolloutError> {
    let mut deleted = 0;
    let objects = [
        ("apps/v1", "Deployment", "gns-gateway"),
        ("v1", "Service", "gns-gateway-ingress"),
        ("v1", "Service", "gns-gateway-egress"),
        ("v1", "ConfigMap", "gns-dns-forwarding"),
        ("v1", "ConfigMap", "gns-federation-ca"),
        ("v1", "Secret", "gns-gateway-join"),
        ("v1", "ServiceAccount", "gns-gateway"),
    ];
    for (api_version, kind, name) in objects {
        let object = json!({"apiVersion": api_version, "kind": kind,
                            "metadata": {"name": name, "namespace": NAMESPACE}});
        let (api, what) = api_for(client, &object)?;
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(kube_error(&what, e)),
        }
    }
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), NAMESPACE);
    let federation_account = accounts
        .get_opt("gns-federation")
        .await
        .map_err(|e| kube_error("serviceaccount/gns-federation", e))?;
    if federation_account.is_none() {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        match namespaces.delete(NAMESPACE, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(kube_error("namespace/gns-system", e)),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_image_tags() {
        assert_eq!(image_tag("ghcr.io/gns/gns-gateway:0.2.0"), "0.2.0");
        assert_eq!(image_tag("registry:5000/gns-gateway"), "latest");
        assert_eq!(image_tag("gns-gateway@sha256:abc"), "sha256:abc");
    }

    #[test]
    fn forwarding_names_every_domain() {
        let text = dns_forwarding(
            &["a.example.com".into(), "b.example.com".into()],
            "10.0.0.1:53",
        );
        assert!(text.contains("a.example.com:53 {\n    forward . 10.0.0.1:53"));
        assert!(text.contains("b.example.com:53"));
    }
}
