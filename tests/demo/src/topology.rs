//! What the demo simulates: two member clusters, `east` and `west`, each on
//! its own slice of 127.0.0.0/8 (gateway, pod network, upstreams), the
//! services seeded into them, and the VM workload `db`.

/// The global namespace the demo creates.
pub const GNS: &str = "production";
/// Its DNS domain.
pub const DOMAIN: &str = "production.app.acme.com";
/// The Kubernetes namespace that holds the services in both clusters.
pub const NAMESPACE: &str = "shop";
/// Port of every upstream (the Services' target port).
pub const UPSTREAM_PORT: u16 = 8080;
/// Gateway ports, on the cluster's gateway address.
pub const EGRESS_PORT: u16 = 15001;
/// Ingress (mTLS from peer gateways).
pub const INGRESS_PORT: u16 = 15443;
/// Public entry (clients outside every cluster).
pub const PUBLIC_PORT: u16 = 15080;
/// `/healthz`, `/readyz`, `/metrics`.
pub const ADMIN_PORT: u16 = 15021;

/// One simulated service instance: an HTTP upstream that answers with who it is.
#[derive(Debug, Clone, Copy)]
pub struct Instance {
    /// Service name.
    pub service: &'static str,
    /// Version label.
    pub version: &'static str,
    /// Environment label (`env`).
    pub env: &'static str,
    /// Its pod address.
    pub ip: &'static str,
}

/// One simulated member cluster.
#[derive(Debug, Clone, Copy)]
pub struct SimCluster {
    /// Cluster name.
    pub name: &'static str,
    /// Region label.
    pub region: &'static str,
    /// Address of its gateway (egress, ingress, public entry, admin).
    pub gateway_ip: &'static str,
    /// Its pod/node network: DNS clients from here get the cluster's view.
    pub network: &'static str,
    /// A client address inside that network (for `dig -b`).
    pub client_ip: &'static str,
    /// The service instances that run there.
    pub instances: &'static [Instance],
}

/// The seed's pods: east runs web v1.5 (`env: us-prod`) and api; west runs
/// web v1.5 (`us-prod`), web v2.0-alpha (`us-staging`), the canary web
/// (`version: canary`) and api.
pub const CLUSTERS: [SimCluster; 2] = [
    SimCluster {
        name: "east",
        region: "us-east-1",
        gateway_ip: "127.0.10.1",
        network: "127.0.10.0/24",
        client_ip: "127.0.10.100",
        instances: &[
            Instance {
                service: "web",
                version: "v1.5",
                env: "us-prod",
                ip: "127.0.10.11",
            },
            Instance {
                service: "api",
                version: "v1",
                env: "us-prod",
                ip: "127.0.10.21",
            },
        ],
    },
    SimCluster {
        name: "west",
        region: "us-west-2",
        gateway_ip: "127.0.20.1",
        network: "127.0.20.0/24",
        client_ip: "127.0.20.100",
        instances: &[
            Instance {
                service: "web",
                version: "v1.5",
                env: "us-prod",
                ip: "127.0.20.11",
            },
            Instance {
                service: "web",
                version: "v2.0-alpha",
                env: "us-staging",
                ip: "127.0.20.12",
            },
            Instance {
                service: "web",
                version: "canary",
                env: "us-prod",
                ip: "127.0.20.13",
            },
            Instance {
                service: "api",
                version: "v1",
                env: "us-prod",
                ip: "127.0.20.21",
            },
        ],
    },
];

/// The VM workload registered as an external workload of service `db`.
pub const DB_VM_IP: &str = "127.0.30.10";
/// Its PostgreSQL port.
pub const DB_PORT: u16 = 5432;

/// The cluster called `name`.
pub fn cluster(name: &str) -> Option<&'static SimCluster> {
    CLUSTERS.iter().find(|c| c.name == name)
}
