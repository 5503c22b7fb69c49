//! GNS authoritative DNS.
//!
//! - [`snapshot`]: the input, a [`ZoneSnapshot`] compiled by the federation;
//! - [`prepared`]: the snapshot rendered to wire format, keyed for lookup;
//! - [`answer`]: the per-query path over prepared answers;
//! - [`follower`]: following a federation, with a snapshot cache;
//! - [`server`]: UDP workers, TCP, zone transfers and NOTIFY;
//! - [`transfer`]: AXFR/IXFR/NOTIFY messages and the IXFR history;
//! - [`stats`]: query counters;
//! - [`wire`]: wire-format helpers.

pub mod answer;
pub mod follower;
pub mod prepared;
pub mod server;
pub mod services;
mod shards;
pub mod snapshot;
pub mod stats;
pub mod transfer;
pub mod wire;

pub use prepared::Prepared;
pub use server::{DnsServer, ServerConfig};
pub use snapshot::ZoneSnapshot;
