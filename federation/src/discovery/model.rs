//! From a cluster's Kubernetes objects to catalog entries: which services a
//! global namespace member selects, their ports, and their ready / not-ready
//! endpoints from EndpointSlice conditions. Pure functions, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;

use crate::model::{
    ClusterEndpoints, DiscoveredService, Endpoint, Kind, Name, Protocol, WorkloadPort,
};
use crate::store::ObjectKey;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label keys discovery always keeps of a pod's labels: `version` (a
/// destination's `subset`) and `env`. Keys that routing rules name in a
/// destination's `tags` are kept besides (see [`LabelKeys`]).
pub const ROUTING_LABELS: [&str; 2] = ["version", "env"];

/// The label keys the catalog keeps of pods' labels: [`ROUTING_LABELS`]
/// and every key a routing rule's destination names in its `tags`.
pub type LabelKeys = std::sync::Arc<BTreeSet<String>>;

/// [`ROUTING_LABELS`] and the keys of `named` (from routing rules).
pub fn label_keys<'a>(named: impl IntoIterator<Item = &'a str>) -> LabelKeys {
    std::sync::Arc::new(
        ROUTING_LABELS
            .into_iter()
            .chain(named)
            .map(str::to_owned)
            .collect(),
    )
}

/// The labels among `labels` whose keys are in `keys`.
pub fn kept_labels(
    labels: &BTreeMap<String, String>,
    keys: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| keys.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What the sync keeps of a Pod (read as metadata only): the labels
/// routing selects endpoints by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's labels whose keys are in the sync's [`LabelKeys`].
    pub labels: BTreeMap<String, String>,
}

impl PodInfo {
    /// The labels of `pod` with keys in `keys`.
    pub fn of(pod: &PartialObjectMeta<Pod>, keys: &BTreeSet<String>) -> Self {
        Self {
            labels: pod
                .metadata
                .labels
                .as_ref()
                .map(|labels| kept_labels(labels, keys))
                .unwrap_or_default(),
        }
    }
}

/// One namespace of a cluster selected by a global namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Global namespace.
    pub gns: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Label selector on services (all services when `None`).
    pub selector: Option<BTreeMap<String, String>>,
}

/// What the sync keeps of a Kubernetes Service: its labels (for selectors)
/// and its ports, not the whole object.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    /// Labels, sorted by key (a list: a one-label map would hold a whole
    /// tree node, hundreds of bytes, per service of every cluster).
    pub labels: Vec<(String, String)>,
    /// Ports, as the catalog shows them, each with its name in the Service
    /// (`""` when unnamed), which EndpointSlice ports repeat.
    pub ports: Vec<(WorkloadPort, String)>,
}

impl From<&Service> for ServiceInfo {
    fn from(service: &Service) -> Self {
        Self {
            labels: service
                .metadata
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ports: ports(service),
        }
    }
}

/// One endpoint of an EndpointSlice, reduced to what the catalog needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// `ready` (absent means true) and not `terminating`.
    pub ready: bool,
    /// Zone, from the endpoint or its first zone hint.
    pub zone: Option<String>,
    /// The pod behind it (its `targetRef`), whose labels it carries.
    pub pod: Option<String>,
}

/// What the sync keeps of an EndpointSlice: its service and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// Owning service (the `kubernetes.io/service-name` label).
    pub service: Option<String>,
    /// Endpoints.
    pub endpoints: Vec<SliceEndpoint>,
    /// The endpoints' ports by the Service port name they serve (`""` when unnamed).
    pub ports: BTreeMap<String, u16>,
}

impl From<&EndpointSlice> for SliceInfo {
    fn from(slice: &EndpointSlice) -> Self {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        let endpoints = slice
            .endpoints
            .iter()
            .map(|ep| {
                let conditions = ep.conditions.as_ref();
                SliceEndpoint {
                    addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    ready: conditions.and_then(|c| c.ready).unwrap_or(true)
                        && !conditions.and_then(|c| c.terminating).unwrap_or(false),
                    zone: ep.zone.clone().or_else(|| {
                        ep.hints
                            .as_ref()
                            .and_then(|h| h.for_zones.as_ref())
                            .and_then(|z| z.first())
                            .map(|z| z.name.clone())
                    }),
                    pod: ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name.clone()),
                }
            })
            .collect();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        Self {
            service,
            endpoints,
            ports,
        }
    }
}

impl SliceInfo {
    /// Number of endpoint addresses.
    pub fn address_count(&self) -> usize {
        self.endpoints.iter().map(|e| e.addresses.len()).sum()
    }
}

/// The objects seen in one Kubernetes namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceObjects {
    /// Services by name.
    pub services: BTreeMap<String, ServiceInfo>,
    /// EndpointSlices by name.
    pub slices: BTreeMap<String, SliceInfo>,
    /// Pods by name (their routing labels).
    pub pods: BTreeMap<String, PodInfo>,
}

impl NamespaceObjects {
    /// The services whose slices list one of `pods` as an endpoint.
    pub fn services_of_pods(&self, pods: &BTreeSet<String>) -> BTreeSet<String> {
        self.slices
            .values()
            .filter(|s| {
                s.endpoints
                    .iter()
                    .any(|e| e.pod.as_ref().is_some_and(|p| pods.contains(p)))
            })
            .filter_map(|s| s.service.clone())
            .collect()
    }

    /// The slices of each service.
    pub fn slices_by_service(&self) -> HashMap<&str, Vec<&SliceInfo>> {
        let mut index: HashMap<&str, Vec<&SliceInfo>> = HashMap::new();
        for slice in self.slices.values() {
            if let Some(service) = &slice.service {
                index.entry(service.as_str()).or_default().push(slice);
            }
        }
        index
    }
}

/// Catalog object name for a service's endpoints in one cluster.
pub fn object_name(service: &str, cluster: &str) -> String {
    format!("{service}.{cluster}")
}

fn selected(service: &ServiceInfo, selector: &Option<BTreeMap<String, String>>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.iter().all(|(k, v)| {
        service
            .labels
            .iter()
            .any(|(key, value)| key == k && value == v)
    })
}

fn ports(service: &Service) -> Vec<(WorkloadPort, String)> {
    let mut out = Vec::new();
    for (i, p) in service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let name = p.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| {
            if i == 0 {
                "default".into()
            } else {
                format!("port-{port}")
            }
        });
        let Ok(name) = Name::try_from(name) else {
            continue;
        };
        let protocol = match (p.protocol.as_deref(), p.app_protocol.as_deref()) {
            (Some("UDP"), _) => Protocol::Udp,
            (_, Some("http")) => Protocol::Http,
            (_, Some("kubernetes.io/h2c" | "h2c")) => Protocol::Http2,
            (_, Some("grpc")) => Protocol::Grpc,
            _ => Protocol::Tcp,
        };
        out.push((
            WorkloadPort {
                name,
                port,
                protocol,
                target_port: None,
            },
            p.name.clone().unwrap_or_default(),
        ));
    }
    out
}

/// Ready and not-ready endpoints of a service from its slices. An address
/// repeated across slices counts once, ready if any slice says so.
fn endpoints(slices: &[&SliceInfo], pods: &BTreeMap<String, PodInfo>) -> ClusterEndpoints {
    type Facts<'a> = (Option<String>, Option<&'a PodInfo>);
    let mut ready: BTreeMap<IpAddr, Facts<'_>> = BTreeMap::new();
    let mut not_ready: BTreeMap<IpAddr, Facts<'_>> = BTreeMap::new();
    for ep in slices.iter().flat_map(|s| s.endpoints.iter()) {
        let pod = ep.pod.as_ref().and_then(|p| pods.get(p));
        for addr in &ep.addresses {
            if ep.ready {
                not_ready.remove(addr);
                ready.insert(*addr, (ep.zone.clone(), pod));
            } else if !ready.contains_key(addr) {
                not_ready.insert(*addr, (ep.zone.clone(), pod));
            }
        }
    }
    let to_vec = |m: BTreeMap<IpAddr, Facts<'_>>| {
        m.into_iter()
            .map(|(address, (zone, pod))| Endpoint {
                address,
                zone,
                source: None,
                labels: pod.map(|p| p.labels.clone()).unwrap_or_default(),
            })
            .collect()
    };
    ClusterEndpoints {
        ready: to_vec(ready),
        not_ready: to_vec(not_ready),
        ..ClusterEndpoints::default()
    }
}

/// The catalog entry `member` gets from service `name` in its namespace, if
/// the service exists there and the member's selector takes it.
pub fn contribution(
    cluster: &str,
    member: &Member,
    objects: &NamespaceObjects,
    slices: &HashMap<&str, Vec<&SliceInfo>>,
    name: &str,
) -> Option<DiscoveredService> {
    let service = objects.services.get(name)?;
    if !selected(service, &member.selector) {
        return None;
    }
    let svc_name = Name::try_from(name.to_owned()).ok()?;
    let own = slices.get(name).map_or(&[][..], Vec::as_slice);
    let ports = service
        .ports
        .iter()
        .map(|(port, k8s_name)| {
            let target = own.iter().find_map(|s| s.ports.get(k8s_name).copied());
            WorkloadPort {
                target_port: target.filter(|t| *t != port.port),
                ..port.clone()
            }
        })
        .collect();
    Some(DiscoveredService {
        name: svc_name,
        ports,
        clusters: [(cluster.to_owned(), endpoints(own, &objects.pods))]
            .into_iter()
            .collect(),
    })
}

/// Store key of member `member`'s catalog entry for service `name`.
pub fn catalog_key(cluster: &str, member: &Member, name: &str) -> ObjectKey {
    ObjectKey::scoped(
        Kind::Service,
        member.gns.clone(),
        object_name(name, cluster),
    )
}

/// Every catalog object this cluster contributes, keyed by store key.
pub fn contributions(
    cluster: &str,
    members: &[Member],
    namespaces: &HashMap<String, NamespaceObjects>,
) -> BTreeMap<ObjectKey, DiscoveredService> {
    let mut out = BTreeMap::new();
    for member in members {
        let Some(objects) = namespaces.get(&member.namespace) else {
            continue;
        };
        let slices = objects.slices_by_service();
        for name in objects.services.keys() {
            if let Some(svc) = contribution(cluster, member, objects, &slices, name) {
                out.insert(catalog_key(cluster, member, name), svc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint as K8sEndpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn service(name: &str, labels: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    app_protocol: Some("http".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str, svc: &str, eps: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [(SERVICE_NAME_LABEL.to_owned(), svc.to_owned())]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, ready, terminating)| K8sEndpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: None,
                        terminating: *terminating,
                    }),
                    zone: Some("us-east-1a".into()),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    #[test]
    fn readiness_comes_from_conditions() {
        let mut ns = NamespaceObjects::default();
        ns.services
            .insert("web".into(), (&service("web", &[("app", "web")])).into());
        ns.services
            .insert("db".into(), (&service("db", &[("app", "db")])).into());
        ns.slices.insert(
            "web-1".into(),
            SliceInfo::from(&slice(
                "web-1",
                "web",
                &[
                    ("10.8.1.1", Some(true), None),
                    ("10.8.1.2", Some(false), None),
                    ("10.8.1.3", None, None),
                ],
            )),
        );
        ns.slices.insert(
            "web-2".into(),
            SliceInfo::from(&slice(
                "web-2",
                "web",
                &[("10.8.1.4", Some(true), Some(true))],
            )),
        );
        let namespaces: HashMap<String, NamespaceObjects> =
            [("shop".to_owned(), ns)].into_iter().collect();
        let members = vec![Member {
            gns: "production".into(),
            namespace: "shop".into(),
            selector: Some([("app".to_owned(), "web".to_owned())].into_iter().collect()),
        }];
        let out = contributions("east", &members, &namespaces);
        assert_eq!(out.len(), 1, "the selector keeps only web");
        let svc = &out[&ObjectKey::scoped(Kind::Service, "production", "web.east")];
        let east = svc.clusters.get("east").expect("east");
        let ready: Vec<String> = east.ready.iter().map(|e| e.address.to_string()).collect();
        let not_ready: Vec<String> = east
            .not_ready
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(ready, vec!["10.8.1.1", "10.8.1.3"]);
        assert_eq!(
            not_ready,
            vec!["10.8.1.2", "10.8.1.4"],
            "not ready, and terminating"
        );
        assert_eq!(east.ready[0].zone.as_deref(), Some("us-east-1a"));
        assert_eq!(svc.ports[0].protocol, Protocol::Http);
    }

    #[test]
    fn app_protocols_grpc_and_h2c_make_ports_that_speak_http2() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"ports": [
                {"name": "rpc", "port": 9000, "appProtocol": "grpc"},
                {"name": "plain", "port": 9001, "appProtocol": "h2c"},
                {"name": "k8s", "port": 9002, "appProtocol": "kubernetes.io/h2c"},
                {"name": "web", "port": 80, "appProtocol": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP", "appProtocol": "grpc"},
                {"name": "pg", "port": 5432}]}}))
        .expect("service");
        let protocols: Vec<(String, Protocol)> = ports(&service)
            .into_iter()
            .map(|(p, _)| (p.name.to_string(), p.protocol))
            .collect();
        let expected = [
            ("rpc", Protocol::Grpc),
            ("plain", Protocol::Http2),
            ("k8s", Protocol::Http2),
            ("web", Protocol::Http),
            ("dns", Protocol::Udp),
            ("pg", Protocol::Tcp),
        ];
        assert_eq!(
            protocols,
            expected.map(|(n, p)| (n.to_owned(), p)),
            "appProtocol decides, UDP first"
        );
    }
}
