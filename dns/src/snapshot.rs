//! The input of the DNS server: a versioned, immutable zone snapshot.
//!
//! The federation compiles it from its store (answers already decided per
//! view: health, locality and routing are the compiler's business); this
//! crate only validates, renders and serves it. Plain data, no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Everything the DNS server serves, at one store revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSnapshot {
    /// Version of the snapshot: the store revision at which its content (any
    /// zone, the views, the TTL) last changed; the SOA serial of a zone
    /// without one of its own.
    pub version: u64,
    /// TTL of answers that can change (service addresses), seconds; capped at 30.
    pub answer_ttl: u32,
    /// Cluster views: clients whose source address is in a cluster's networks get its view.
    #[serde(default)]
    pub views: Vec<ClusterView>,
    /// One zone per global namespace.
    #[serde(default)]
    pub zones: Vec<Zone>,
}

/// The networks that make a client part of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// Cluster name.
    pub cluster: String,
    /// Its pod/node networks.
    #[serde(default)]
    pub networks: Vec<ipnet::IpNet>,
}

/// An authoritative zone: a global namespace's domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Zone {
    /// Zone apex, e.g. `production.app.acme.com` (no trailing dot).
    pub origin: String,
    /// SOA serial: the version at which this zone's answers last changed
    /// (0: the snapshot's version). Other zones' changes leave it alone.
    #[serde(default)]
    pub serial: u64,
    /// NS records of the apex, with optional glue addresses (for names inside the zone).
    #[serde(default)]
    pub nameservers: Vec<Nameserver>,
    /// TXT strings at the apex.
    #[serde(default)]
    pub txt: Vec<String>,
    /// Services: `<name>.<origin>`, by name (shared: an unchanged service
    /// is the same allocation from one snapshot to the next, and the map
    /// itself is persistent). On the wire, a list in name order.
    #[serde(default)]
    pub services: crate::services::Services,
}

/// A name server of a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nameserver {
    /// Absolute name, e.g. `ns1.production.app.acme.com`.
    pub name: String,
    /// Glue addresses (served as A/AAAA when the name is inside the zone).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// The records of one service, per view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// First label of the name (`web` for `web.<origin>`).
    pub name: String,
    /// Ports, served as SRV `_<name>._<protocol>.<service>.<origin>`.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Addresses for the external view (A for IPv4, AAAA for IPv6).
    #[serde(default)]
    pub external: Vec<IpAddr>,
    /// Addresses for cluster views, by cluster; a cluster not listed gets the external answer.
    #[serde(default)]
    pub views: BTreeMap<String, Vec<IpAddr>>,
    /// TXT strings of the service name.
    #[serde(default)]
    pub txt: Vec<String>,
}

/// A named port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (an RFC 1123 label).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Transport.
    pub protocol: Transport,
}

/// Transport of a port, for the `_proto` label of SRV names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `_tcp`.
    Tcp,
    /// `_udp`.
    Udp,
}

impl Transport {
    /// The SRV label, `tcp` or `udp`.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// Longest TTL served for answers that can change.
pub const MAX_ANSWER_TTL: u32 = 30;
/// Default TTL for answers that can change.
pub const DEFAULT_ANSWER_TTL: u32 = 5;
