//! GNS authoritative DNS.
//!
//! - [`snapshot`]: the input, a [`ZoneSnapshot`] compiled by the federation;
pub mod snapshot;

pub use snapshot::ZoneSnapshot;
