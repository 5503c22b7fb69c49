//! From a cluster's Kubernetes objects to catalog entries: which services a
//! global namespace member selects, their ports, and their ready / not-ready
//! endpoints from EndpointSlice conditions. Pure functions, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

use crate::model::{
    ClusterEndpoints, DiscoveredService, Endpoint, Kind, Name, Protocol, WorkloadPort,
};
use crate::store::ObjectKey;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

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

/// The objects seen in one Kubernetes namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceObjects {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices by name.
    pub slices: BTreeMap<String, EndpointSlice>,
}

/// Catalog object name for a service's endpoints in one cluster.
pub fn object_name(service: &str, cluster: &str) -> String {
    format!("{service}.{cluster}")
}

fn selected(service: &Service, selector: &Option<BTreeMap<String, String>>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels = service.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn ports(service: &Service) -> Vec<WorkloadPort> {
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
        out.push(WorkloadPort {
            name,
            port,
            protocol,
        });
    }
    out
}

/// Ready and not-ready endpoints of `service` from its EndpointSlices.
/// An endpoint is ready when its `ready` condition is true (absent means true)
/// and it is not terminating; addresses repeated across slices count once.
fn endpoints(service: &str, slices: &BTreeMap<String, EndpointSlice>) -> ClusterEndpoints {
    let mut ready: BTreeMap<IpAddr, Option<String>> = BTreeMap::new();
    let mut not_ready: BTreeMap<IpAddr, Option<String>> = BTreeMap::new();
    for slice in slices.values() {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if owner.map(String::as_str) != Some(service) {
            continue;
        }
        for ep in &slice.endpoints {
            let conditions = ep.conditions.as_ref();
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                && !conditions.and_then(|c| c.terminating).unwrap_or(false);
            let zone = ep.zone.clone().or_else(|| {
                ep.hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .and_then(|z| z.first())
                    .map(|z| z.name.clone())
            });
            for addr in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                if is_ready {
                    not_ready.remove(&addr);
                    ready.insert(addr, zone.clone());
                } else if !ready.contains_key(&addr) {
                    not_ready.insert(addr, zone.clone());
                }
            }
        }
    }
    let to_vec = |m: BTreeMap<IpAddr, Option<String>>| {
        m.into_iter()
            .map(|(address, zone)| Endpoint {
                address,
                zone,
                source: None,
            })
            .collect()
    };
    ClusterEndpoints {
        ready: to_vec(ready),
        not_ready: to_vec(not_ready),
    }
}

/// Every catalog object this cluster contributes, keyed by store key, as spec JSON.
pub fn contributions(
    cluster: &str,
    members: &[Member],
    namespaces: &HashMap<String, NamespaceObjects>,
) -> BTreeMap<ObjectKey, Value> {
    let mut out = BTreeMap::new();
    for member in members {
        let Some(objects) = namespaces.get(&member.namespace) else {
            continue;
        };
        for (name, service) in &objects.services {
            if !selected(service, &member.selector) {
                continue;
            }
            let Ok(svc_name) = Name::try_from(name.clone()) else {
                continue;
            };
            let discovered = DiscoveredService {
                name: svc_name,
                ports: ports(service),
                clusters: [(cluster.to_owned(), endpoints(name, &objects.slices))]
                    .into_iter()
                    .collect(),
            };
            if let Ok(spec) = serde_json::to_value(&discovered) {
                out.insert(
                    ObjectKey::scoped(
                        Kind::Service,
                        member.gns.clone(),
                        object_name(name, cluster),
                    ),
                    spec,
                );
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
            .insert("web".into(), service("web", &[("app", "web")]));
        ns.services
            .insert("db".into(), service("db", &[("app", "db")]));
        ns.slices.insert(
            "web-1".into(),
            slice(
                "web-1",
                "web",
                &[
                    ("10.8.1.1", Some(true), None),
                    ("10.8.1.2", Some(false), None),
                    ("10.8.1.3", None, None),
                ],
            ),
        );
        ns.slices.insert(
            "web-2".into(),
            slice("web-2", "web", &[("10.8.1.4", Some(true), Some(true))]),
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
        let spec = &out[&ObjectKey::scoped(Kind::Service, "production", "web.east")];
        let svc: DiscoveredService = serde_json::from_value(spec.clone()).expect("parses");
        let east = &svc.clusters["east"];
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
}
