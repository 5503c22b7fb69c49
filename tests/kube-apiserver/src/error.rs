//! Errors the test server returns to the test that drives it: starting the
//! server ([`StartError`]) and the object hooks ([`HookError`]). Errors sent to
//! API clients are `Status` bodies, written by the `status` module instead.

use std::net::SocketAddr;

/// Why [`crate::TestApiServer::start`] or [`crate::TestApiServer::come_up`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The CA or serving certificate could not be made.
    #[error("cannot make the TLS identity: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS identity was not accepted by rustls.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The server is already up (for `come_up`).
    #[error("the server is already up")]
    AlreadyUp,
}

/// Why an object hook ([`crate::TestApiServer::apply`] and friends) failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The object's `apiVersion`/`kind` is not served by this server.
    #[error("resource {api_version}/{kind} is not served by this test server")]
    UnknownResource {
        /// The object's API version.
        api_version: String,
        /// The object's kind.
        kind: String,
    },
    /// The object is not valid (no name, no namespace for a namespaced kind...).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// The object to delete does not exist.
    #[error("{plural} \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound {
        /// The resource's plural name.
        plural: String,
        /// The namespace looked in ("" for cluster-scoped kinds).
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// A server-side apply conflicted with another manager's fields.
    #[error("{0}")]
    Conflict(String),
    /// The object could not be converted to or from JSON.
    #[error("cannot convert the object: {0}")]
    Json(#[from] serde_json::Error),
}
