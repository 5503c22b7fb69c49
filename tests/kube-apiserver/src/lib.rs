//! A small, faithful stand-in for kube-apiserver, for tests.
//!
//! No real Kubernetes API server can run on the machines this project is
//! built and tested on, so this crate speaks the real Kubernetes API over
//! HTTPS for the resource types it is given (by default core/v1 `Service`,
//! `Namespace`, `ServiceAccount`, `Secret`, `ConfigMap`,
//! `discovery.k8s.io/v1` `EndpointSlice`, `apps/v1` `Deployment` and the
//! `rbac.authorization.k8s.io/v1` roles and bindings), well enough that the
//! real kube-rs client (`kube::Client`, `kube::runtime::watcher`) cannot tell
//! the difference for what it uses:
//!
//! * GET one object, LIST with label/field selectors, `limit` + `continue`
//!   paging that is consistent at the first page's resourceVersion, and the
//!   `resourceVersion` / `resourceVersionMatch` rules;
//! * WATCH streams (chunked, newline-delimited JSON) resumed from a
//!   resourceVersion, with bookmarks, `timeoutSeconds`, streaming lists
//!   (`sendInitialEvents`) and `410 Gone` (as an `ERROR` event) once history
//!   is compacted;
//! * writes: create, update (resourceVersion preconditions), merge /
//!   strategic-merge (treated as merge) / JSON patches, delete (a Namespace
//!   takes its contents along), `dryRun=All`, the `status` subresource, and
//!   server-side apply with `metadata.managedFields`, conflicts and `force`;
//! * built-in controllers: Deployment rollout status, LoadBalancer
//!   addresses, service-account token Secrets;
//! * bearer-token authentication (401): static tokens with a [`Grant`], and
//!   service-account tokens minted by `TokenRequest` (lifetimes bounded as
//!   the real server bounds them, 10 minutes to 2^32 seconds, and expiring
//!   by a server clock tests can move forward); authorization (403) by
//!   the grants and by the RBAC objects in the store; `Status` error bodies
//!   as the real server writes them.
//!
//! A test drives it through [`TestApiServer`]: it changes objects
//! ([`TestApiServer::apply`], [`TestApiServer::apply_as`],
//! [`TestApiServer::delete`]), holds rollouts, mints tokens, advances the
//! server's clock to expire them ([`TestApiServer::advance_clock`]), compacts
//! history, cuts watch connections, takes the server down and back up on
//! the same port, slows it down or makes it answer garbage, and reads
//! counters.
//!
//! Module map: [`server`] owns the listener, connections and the handle;
//! `http` turns requests into responses; `write` handles the write verbs;
//! `managed` keeps field ownership and does server-side apply; `store` is
//! the versioned object store with its history and watch fan-out;
//! `controllers` runs the built-in controllers; [`registry`] knows the
//! served resource types and URL layout; [`selector`] parses label and field
//! selectors; [`auth`] holds tokens, grants and request attributes; `rbac`
//! authorizes from Roles and bindings; `tokens` mints service-account
//! tokens; [`tls`] makes the CA and serving certificate; [`builders`] makes
//! test objects; `status` writes `Status` bodies.

pub mod auth;
pub mod builders;
mod controllers;
mod error;
mod http;
mod managed;
mod rbac;
pub mod registry;
mod review;
pub mod selector;
pub mod server;
mod status;
mod store;
pub mod tls;
mod tokens;
mod write;

pub use auth::{Attributes, Grant, Verb};
pub use builders::{EndpointSpec, endpoint_slice, service};
pub use error::{HookError, StartError};
pub use registry::ResourceType;
pub use server::{RequestRecord, Stats, TestApiServer, TestApiServerOptions};
pub use tls::TlsIdentity;
