//! `gns-gateway`: the per-cluster gateway of a GNS federation.
//!
//! Module map: [`config`] is what the federation sends (the only contract
//! with it); [`route`] turns a config into route decisions (pure);
//! [`tls`] makes the mTLS configurations and checks SPIFFE identities;
//! [`proxy`] is the data path (egress, ingress, peer pool, retries, TCP
//! passthrough); [`budget`] bounds the request-body bytes buffered by
//! the whole process; [`metrics`] caches per-route metric handles; [`pool`] keeps HTTP/1.1 connections to local endpoints and
//! [`h2c`] HTTP/2 ones (gRPC); `grpc` turns the gateway's own errors into
//! gRPC statuses for gRPC callers; [`upgrade`] carries HTTP/1.1 upgrades
//! (WebSocket); [`sni`] reads the server name of a TLS ClientHello;
//! [`idle`] closes client connections left unused; [`report`] tells the
//! federation every few seconds who this gateway is and what it carried;
//! [`follow`] fetches the certificate and follows the config from the
//! federation, persisting both for static stability.

pub mod budget;
pub mod config;
pub mod follow;
pub(crate) mod grpc;
pub mod h2c;
pub mod idle;
pub mod ingress;
pub mod listen;
pub mod metrics;
pub mod outlier;
pub mod peer;
pub mod pool;
pub mod proxy;
pub mod report;
pub mod retry;
pub mod route;
pub mod sni;
pub mod tls;
pub mod upgrade;

pub use config::GatewayConfig;
pub use proxy::Gateway;

/// A hash map for the data path's lookups (hosts, peers, endpoints): a fast
/// hash with a per-process seed. Its keys come from the config or from the
/// gateway itself, not from clients, so flooding resistance is not needed.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
