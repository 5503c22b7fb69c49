//! Convenience constructors for the objects tests put into a server:
//! a [`service`] and an [`endpoint_slice`] for it, as the Kubernetes
//! EndpointSlice controller would write them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One endpoint of a slice: `(ip, ready, serving, terminating, zone)`.
pub type EndpointSpec<'a> = (&'a str, bool, bool, bool, Option<&'a str>);

/// A ClusterIP `Service` in `namespace` selecting `app=<name>`, with the
/// given labels and TCP ports `(name, port)` (target port = port).
pub fn service(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, i32)],
) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(string_map(labels)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(string_map(&[("app", name)])),
            ports: Some(
                ports
                    .iter()
                    .map(|(port_name, port)| ServicePort {
                        name: Some((*port_name).to_owned()),
                        port: *port,
                        protocol: Some("TCP".to_owned()),
                        target_port: Some(IntOrString::Int(*port)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// An `EndpointSlice` named `name` for `service` in `namespace`, labelled
/// `kubernetes.io/service-name` (and managed by the EndpointSlice
/// controller), with the given endpoints and TCP ports `(name, port)`. The
/// address type is IPv6 when the first address contains a `:`.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    endpoints: &[EndpointSpec<'_>],
    ports: &[(&str, i32)],
) -> EndpointSlice {
    let ipv6 = endpoints.first().is_some_and(|(ip, ..)| ip.contains(':'));
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(string_map(&[
                ("kubernetes.io/service-name", service),
                (
                    "endpointslice.kubernetes.io/managed-by",
                    "endpointslice-controller.k8s.io",
                ),
            ])),
            ..ObjectMeta::default()
        },
        address_type: if ipv6 { "IPv6" } else { "IPv4" }.to_owned(),
        endpoints: endpoints
            .iter()
            .map(|(ip, ready, serving, terminating, zone)| Endpoint {
                addresses: vec![(*ip).to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*serving),
                    terminating: Some(*terminating),
                }),
                zone: zone.map(str::to_owned),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(
            ports
                .iter()
                .map(|(port_name, port)| EndpointPort {
                    name: Some((*port_name).to_owned()),
                    port: Some(*port),
                    protocol: Some("TCP".to_owned()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

fn string_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
