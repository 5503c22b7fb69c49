//! GNS federation: the control plane of a multi-cluster global namespace service.
//!
//! - [`model`]: validated resource types;
//! - [`store`]: versioned persistence (Postgres or embedded SQLite) with change notification;
//! - [`snapshot`]: the snapshot compiler and the builder task that publishes snapshots;
//! - [`api`]: the REST API (axum), auth, OpenAPI and metrics;
//! - [`console`]: the web console at `/ui/` (assets compiled in);
//! - [`server`]: configuration and startup of `gns-federation`;
//! - [`listener`]: the API's hardened listener (header timeout, connection cap);
//! - [`telemetry`]: the rolling window of the gateways' reported traffic (pure);
//! - [`trace`]: what happens to one request and why, from a snapshot (pure);
//! - [`ctl`]: the `gnsctl` command-line client.

pub mod api;
pub mod console;
pub mod ctl;
pub mod discovery;
pub mod identity;
pub mod listener;
pub mod liveness;
pub mod model;
pub mod rollout;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod telemetry_samples;
pub mod tls;
pub mod trace;
