//! `gns-gateway`: the per-cluster gateway of a GNS federation.
//!
//! Module map, by role (as istio/ztunnel splits its proxy):
//! - contract (crate `gns-contract`, re-exported): [`config`] is what the
//!   federation sends; [`report`] adds the tallies and the loop that tell
//!   it every few seconds what the gateway carried.
//! - decisions (pure): [`route`] turns a config into route decisions;
//!   [`retry`] says when a failed try is tried again; [`outlier`] ejects
//!   failing endpoints.
//! - listeners: [`egress`] serves in-cluster clients and the public entry;
//!   [`ingress`] serves peer gateways over mTLS; [`tcp`] passes TCP
//!   connections through; [`upgrade`] carries HTTP/1.1 upgrades (WebSocket).
//! - tries: [`local`] sends to local endpoints, over [`pool`] (HTTP/1.1)
//!   or [`h2c`] (gRPC); [`remote`] sends to peer gateways over [`peer`]
//!   connections; [`access`] names callers and applies access policy;
//!   [`refusal`] is what the gateway answers itself (typed: the variant
//!   picks the status and is the metric label).
//! - state and plumbing: [`proxy`] holds a gateway's shared state (config,
//!   certificate, pools, counters); [`body`] decides whether a request body
//!   is kept for a retry or streams once; [`budget`] bounds the request-body bytes
//!   buffered by the whole process; [`h2server`] writes HTTP/2 responses;
//!   `grpc` turns the gateway's own errors into gRPC statuses;
//!   [`metrics`] caches per-route metric handles; [`exported`] puts the
//!   gateway's own counters on `/metrics` through the same exporter; [`tls`] makes the mTLS
//!   configurations and checks SPIFFE identities; [`sni`] reads the server
//!   name of a TLS ClientHello; [`idle`] closes client connections left
//!   unused; [`listen`] binds and bounds listeners; [`follow`] fetches the
//!   certificate and follows the config from the federation, persisting
//!   both for static stability.

pub mod access;
pub mod body;
pub mod budget;
pub(crate) mod chunked;
pub mod client_body;
pub use gns_contract::config;
pub mod downstream;
pub mod egress;
pub mod exported;
pub mod follow;
pub(crate) mod grpc;
pub mod h1;
pub(crate) mod h1_serve;
pub mod h2c;
pub mod h2server;
pub use gns_idle as idle;
pub mod ingress;
pub mod listen;
pub mod local;
pub mod metrics;
pub(crate) mod outgoing;
pub mod outlier;
pub(crate) mod parked;
pub mod peer;
pub mod pool;
pub mod proxy;
pub mod refusal;
pub mod remote;
pub mod report;
pub mod retry;
pub mod route;
pub mod sni;
pub mod tcp;
pub mod tls;
pub mod upgrade;

pub use config::GatewayConfig;
pub use proxy::Gateway;

/// A hash map for the data path's lookups (hosts, peers, endpoints): a fast
/// hash with a per-process seed. Its keys come from the config or from the
/// gateway itself, not from clients, so flooding resistance is not needed.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
