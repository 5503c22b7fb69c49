//! `gns-contract`: what the federation and its gateways say to each other,
//! as plain serde types with no proxy or server code, so the federation
//! does not link the data path. [`config`] is what a gateway runs (compiled
//! by the federation, `GET /v1/config/gateways/{cluster}`); [`report`] is
//! what a gateway tells the federation every few seconds; [`decide`] is
//! what a service's routing means (rule matching, access, the order of
//! targets), run by the gateways on every request and by the federation's
//! trace.

pub mod config;
pub mod decide;
pub mod report;
