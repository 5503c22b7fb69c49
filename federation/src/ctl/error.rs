//! Errors of `gnsctl`: one enum for everything a command can fail on, and the
//! server's JSON error (`{"error": {"code", "message", "details"}}`) as the
//! user should see it: the message, then one line per detail.

use std::fmt;

use serde::Deserialize;

/// Why a `gnsctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// `--server` is not a usable base URL.
    #[error("--server {server:?} is not a usable URL: {reason}")]
    BadServer {
        /// What was given.
        server: String,
        /// Why it can't be used.
        reason: String,
    },
    /// The HTTP client could not be set up.
    #[error("could not set up the HTTP client: {0}")]
    ClientSetup(String),
    /// The server's TLS certificate could not be verified (or it does not
    /// speak TLS): one line saying what to do.
    #[error("{0}")]
    Untrusted(String),
    /// The server could not be reached at all.
    #[error("could not reach the GNS server at {server} (set --server or GNS_SERVER): {reason}")]
    Connect {
        /// The `--server` value.
        server: String,
        /// The underlying cause, e.g. "Connection refused".
        reason: String,
    },
    /// The request failed after connecting (timeout, broken connection, ...).
    #[error("{method} {url} failed: {reason}")]
    Transport {
        /// HTTP method.
        method: String,
        /// Request URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// The server answered 2xx with a body that is not what the API promises.
    #[error("unexpected response from {url}: {reason}")]
    BadResponse {
        /// Request URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A kind on the command line or in a manifest that gnsctl does not know.
    #[error(
        "unknown kind {0:?}; use cluster, globalnamespace (gns), service, routing, externalworkload or accesspolicy"
    )]
    UnknownKind(String),
    /// A scoped kind without a global namespace.
    #[error("{kind} objects live in a global namespace; name it with --gns NAME (or -n NAME)")]
    NeedGns {
        /// The kind, as gnsctl spells it.
        kind: &'static str,
    },
    /// An operation the kind does not support (e.g. deleting a discovered service).
    #[error("{0}")]
    Unsupported(String),
    /// The manifest file or stdin could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File name, or `-` for stdin.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The manifest is not YAML/JSON.
    #[error("{path}: {reason}")]
    Syntax {
        /// File name, or `-` for stdin.
        path: String,
        /// Parser message.
        reason: String,
    },
    /// Some documents of an apply failed (each was reported as it failed).
    #[error("{failed} of {total} objects could not be applied")]
    ApplyFailed {
        /// Documents that failed.
        failed: usize,
        /// Documents in the manifest.
        total: usize,
    },
    /// The kubeconfig can't be read or does not describe a usable context.
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The `--kubeconfig` file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The kubeconfig user authenticates in a way gnsctl does not use.
    #[error(
        "the kubeconfig user {user:?} of context {context:?} authenticates with {mechanism}; \
         gnsctl cluster add/rotate-credentials only uses static credentials (it runs no credential \
         plugins and keeps nothing). Use a context whose user has a bearer token or a client \
         certificate, e.g. mint a short-lived admin token and make a context for it:\n  \
         kubectl create token <admin-serviceaccount> -n <namespace> --duration=1h\n  \
         kubectl config set-credentials gns-operator --token=<that token>\n  \
         kubectl config set-context gns-operator --cluster=<cluster> --user=gns-operator\n\
         then pass --context gns-operator"
    )]
    KubeconfigAuth {
        /// The context.
        context: String,
        /// The kubeconfig user entry.
        user: String,
        /// How it authenticates, e.g. "an exec credential plugin (aws)".
        mechanism: String,
    },
    /// A request to the member cluster's Kubernetes API failed.
    #[error("{action}: {message}{}", hint.as_deref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Kubernetes {
        /// What gnsctl was doing, e.g. "apply clusterrole/gns-federation-discovery".
        action: String,
        /// The HTTP status the API server answered, if it answered.
        status: Option<u16>,
        /// The server's message, or the transport error.
        message: String,
        /// Advice from gnsctl, if any.
        hint: Option<String>,
    },
    /// A command-line value that can't be used.
    #[error("{flag}: {reason}")]
    InvalidArgument {
        /// The flag, e.g. `--labels`.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// Rendering output failed.
    #[error("cannot render output: {0}")]
    Render(String),
    /// Writing to stdout or stderr failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// True when continuing with other requests is pointless (the server can't be reached).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            CtlError::Connect { .. }
                | CtlError::BadServer { .. }
                | CtlError::ClientSetup(_)
                | CtlError::Untrusted(_)
        )
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            CtlError::Server(e) => Some(e.status),
            _ => None,
        }
    }
}

/// One entry of an error's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    /// Field (or `referrers`) the detail is about; may be empty.
    #[serde(default)]
    pub field: String,
    /// What is wrong.
    #[serde(default)]
    pub message: String,
}

/// An error answered by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ServerError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`not_found`, `conflict`, `invalid`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Per-field details or referrers.
    pub details: Vec<ErrorDetail>,
    /// Advice from gnsctl itself (e.g. how to pass a token), if any.
    pub hint: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

/// Longest piece of a non-JSON error body shown to the user.
const MAX_RAW_BODY: usize = 500;

impl ServerError {
    /// Reads an error response body; a body that is not the API's error shape is shown raw.
    pub fn from_body(status: u16, body: &[u8]) -> ServerError {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(envelope) if !envelope.error.message.is_empty() => ServerError {
                status,
                code: envelope.error.code,
                message: envelope.error.message,
                details: envelope.error.details,
                hint: None,
            },
            _ => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("the server answered HTTP {status} without a message")
                } else {
                    let shown: String = text.chars().take(MAX_RAW_BODY).collect();
                    format!("the server answered HTTP {status}: {shown}")
                };
                ServerError {
                    status,
                    code: String::new(),
                    message,
                    details: Vec::new(),
                    hint: None,
                }
            }
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        // A lone detail the message already spells out (e.g. "invalid ttl: …") adds nothing.
        let redundant =
            matches!(self.details.as_slice(), [one] if self.message.contains(&one.message));
        for detail in self.details.iter().filter(|_| !redundant) {
            if detail.field.is_empty() {
                write!(f, "\n  - {}", detail.message)?;
            } else {
                write!(f, "\n  - {}: {}", detail.field, detail.message)?;
            }
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_shows_message_and_details() {
        let body = br#"{"error":{"code":"invalid","message":"2 invalid fields","details":[
            {"field":"ttl","message":"must be between 1s and 24h"},
            {"field":"","message":"something else"}]}}"#;
        let e = ServerError::from_body(422, body);
        assert_eq!(e.code, "invalid");
        assert_eq!(
            e.to_string(),
            "2 invalid fields\n  - ttl: must be between 1s and 24h\n  - something else"
        );
    }

    #[test]
    fn non_json_error_body_is_shown_raw() {
        let e = ServerError::from_body(502, b"Bad Gateway\n");
        assert_eq!(e.to_string(), "the server answered HTTP 502: Bad Gateway");
        let e = ServerError::from_body(500, b"");
        assert!(e.to_string().contains("without a message"));
    }

    #[test]
    fn a_detail_repeating_the_message_is_not_shown_twice() {
        let body =
            br#"{"error":{"code":"invalid","message":"invalid ttl: must be between 1s and 24h",
            "details":[{"field":"ttl","message":"must be between 1s and 24h"}]}}"#;
        let e = ServerError::from_body(422, body);
        assert_eq!(e.to_string(), "invalid ttl: must be between 1s and 24h");
        let body =
            br#"{"error":{"code":"conflict","message":"cluster/east is still referenced by a, b",
            "details":[{"field":"referrers","message":"a"},{"field":"referrers","message":"b"}]}}"#;
        let e = ServerError::from_body(409, body);
        assert_eq!(
            e.to_string(),
            "cluster/east is still referenced by a, b\n  - referrers: a\n  - referrers: b"
        );
    }
}
