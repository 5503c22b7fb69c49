//! What the gateway answers itself. Every refusal and failure that ends a
//! request or a passed-through connection at the gateway is one typed
//! [`Refusal`]: its variant picks the status and is the `reason` label of
//! `gns_gateway_refusals_total`, so operators count refusals by kind, not by
//! their text. Why a single try failed is a [`TryError`]; the one that ends
//! a request becomes [`Refusal::Try`].

use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::budget::BodyError;
use crate::proxy::{Body, full};

/// Marks an answer the gateway made itself (not an endpoint's).
pub(crate) const ANSWERED_HEADER: HeaderName = HeaderName::from_static("x-gns-gateway");
/// Names why the gateway answered itself (the [`Refusal`]'s label), so a
/// peer gateway's caller tells "reached no endpoint" from an endpoint's 502.
pub(crate) const REASON_HEADER: HeaderName = HeaderName::from_static("x-gns-refusal");

/// How a peer gateway's own answer says its try at its endpoints failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerFailure {
    /// No endpoint was reached (none could be connected to, or none is
    /// ready): the request went nowhere, as a connect failure here.
    NothingSent,
    /// The exchange with its endpoint broke off.
    Reset,
    /// Its per-try timeout passed.
    Timeout,
}

impl PeerFailure {
    /// From a peer gateway's answer: one it made itself naming a failed
    /// try; `None` for anything else (an endpoint's answer, whose marking
    /// fields the peer's ingress removed, or a refusal by policy).
    pub(crate) fn of<B>(resp: &Response<B>) -> Option<Self> {
        let headers = resp.headers();
        if !headers.contains_key(ANSWERED_HEADER) {
            return None;
        }
        match headers.get(REASON_HEADER)?.as_bytes() {
            b"connect-failure" | b"no-endpoints" => Some(Self::NothingSent),
            b"reset" => Some(Self::Reset),
            b"try-timeout" => Some(Self::Timeout),
            _ => None,
        }
    }
}

/// An endpoint's answer, without the fields that mark the gateway's own:
/// an endpoint cannot pass its answer off as a gateway's failed try.
pub(crate) fn from_endpoint<B>(mut resp: Response<B>) -> Response<B> {
    let headers = resp.headers_mut();
    headers.remove(ANSWERED_HEADER);
    headers.remove(REASON_HEADER);
    resp
}

/// Why a try failed.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// Nothing was sent (connect/handshake failed): safe to try elsewhere.
    #[error("{0}")]
    Connect(String),
    /// The exchange broke off after the request was sent.
    #[error("{0}")]
    Reset(String),
    /// The per-try timeout passed.
    #[error("{0}")]
    Timeout(String),
}

impl TryError {
    /// The same failure, once a streamed body has gone out: never a
    /// connect failure any more (nothing can be tried elsewhere).
    pub(crate) fn after_sending(self) -> Self {
        match self {
            TryError::Connect(e) => TryError::Reset(e),
            other => other,
        }
    }

    /// The gateway's answer when this failure ends the request at `cluster`.
    pub(crate) fn answer(self, cluster: &str) -> Response<Body> {
        Refusal::Try {
            cluster: cluster.to_owned(),
            error: self,
        }
        .answer()
    }
}

/// A request or connection the gateway ends itself.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No global service by this host (or TCP port).
    #[error("no global service {0:?}")]
    UnknownService(String),
    /// The service is not open to clients outside the clusters.
    #[error("{0} is not reachable from outside the clusters (access policy)")]
    NotExternal(String),
    /// The service's access policy refuses the caller (the message names
    /// the caller and the service).
    #[error("{0}")]
    CallerDenied(String),
    /// The service's access policy refuses the calling peer cluster.
    #[error("cluster {peer} may not call {host}")]
    ClusterDenied {
        /// The calling cluster.
        peer: String,
        /// The service.
        host: String,
    },
    /// No cluster of the plan has ready endpoints.
    #[error("{0}: no cluster has ready endpoints")]
    NoEndpoints(String),
    /// The last try failed at `cluster`.
    #[error("{cluster}: {error}")]
    Try {
        /// Where the last try went.
        cluster: String,
        /// How it failed.
        error: TryError,
    },
    /// The route's overall timeout passed before an answer.
    #[error("timed out")]
    Timeout,
    /// The request body broke off while it was kept for a retry.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A peer's CONNECT without `host:port`.
    #[error("CONNECT needs host:port")]
    BadConnect,
    /// A peer's CONNECT to a port that is no TCP service here.
    #[error("{0} is not a TCP service here")]
    NotTcpService(String),
    /// A client's CONNECT at the egress or public entry: tunnels are not
    /// made there (a service's TCP port on the egress passes TCP through).
    #[error("CONNECT is not tunnelled here; connect to the service's TCP port instead")]
    ConnectNotTunnelled,
    /// An HTTP/1.1 upgrade no cluster could take.
    #[error("{host}: the upgrade could not be made: {why}")]
    UpgradeFailed {
        /// The service.
        host: String,
        /// What the last target answered or how it failed.
        why: String,
    },
}

impl Refusal {
    /// Every `reason` label of `gns_gateway_refusals_total`.
    pub const LABELS: [&'static str; 14] = [
        "unknown-service",
        "not-external",
        "caller-denied",
        "cluster-denied",
        "no-endpoints",
        "connect-failure",
        "reset",
        "try-timeout",
        "timeout",
        "body-broken",
        "bad-connect",
        "not-tcp-service",
        "connect-not-tunnelled",
        "upgrade-failed",
    ];

    /// The `reason` label of `gns_gateway_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::UnknownService(_) => "unknown-service",
            Refusal::NotExternal(_) => "not-external",
            Refusal::CallerDenied(_) => "caller-denied",
            Refusal::ClusterDenied { .. } => "cluster-denied",
            Refusal::NoEndpoints(_) => "no-endpoints",
            Refusal::Try { error, .. } => match error {
                TryError::Connect(_) => "connect-failure",
                TryError::Reset(_) => "reset",
                TryError::Timeout(_) => "try-timeout",
            },
            Refusal::Timeout => "timeout",
            Refusal::Body(_) => "body-broken",
            Refusal::BadConnect => "bad-connect",
            Refusal::NotTcpService(_) => "not-tcp-service",
            Refusal::ConnectNotTunnelled => "connect-not-tunnelled",
            Refusal::UpgradeFailed { .. } => "upgrade-failed",
        }
    }

    /// The status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::UnknownService(_) | Refusal::NotTcpService(_) => StatusCode::NOT_FOUND,
            Refusal::NotExternal(_) | Refusal::CallerDenied(_) | Refusal::ClusterDenied { .. } => {
                StatusCode::FORBIDDEN
            }
            Refusal::NoEndpoints(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Try {
                error: TryError::Timeout(_),
                ..
            }
            | Refusal::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Try { .. } | Refusal::UpgradeFailed { .. } => StatusCode::BAD_GATEWAY,
            Refusal::Body(_) | Refusal::BadConnect => StatusCode::BAD_REQUEST,
            Refusal::ConnectNotTunnelled => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Counts this refusal (`gns_gateway_refusals_total{reason}`).
    pub(crate) fn count(&self) {
        metrics::counter!("gns_gateway_refusals_total", "reason" => self.label()).increment(1);
    }

    /// Counts this refusal and makes the answer: its status, its message
    /// as a plain-text body, marked as the gateway's own.
    pub(crate) fn answer(self) -> Response<Body> {
        self.count();
        let message = self.to_string();
        let mut resp = Response::new(full(format!("{message}\n")));
        *resp.status_mut() = self.status();
        resp.extensions_mut()
            .insert(crate::grpc::GatewayMessage(message));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(ANSWERED_HEADER, HeaderValue::from_static("1"));
        resp.headers_mut()
            .insert(REASON_HEADER, HeaderValue::from_static(self.label()));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_own_label_and_status_and_says_why() {
        let cases = [
            (
                Refusal::UnknownService("x.prod".into()),
                "unknown-service",
                404,
            ),
            (Refusal::NotExternal("x.prod".into()), "not-external", 403),
            (
                Refusal::CallerDenied("web may not call x.prod".into()),
                "caller-denied",
                403,
            ),
            (
                Refusal::ClusterDenied {
                    peer: "west".into(),
                    host: "x.prod".into(),
                },
                "cluster-denied",
                403,
            ),
            (Refusal::NoEndpoints("x.prod".into()), "no-endpoints", 503),
            (
                Refusal::Try {
                    cluster: "west".into(),
                    error: TryError::Connect("refused".into()),
                },
                "connect-failure",
                502,
            ),
            (
                Refusal::Try {
                    cluster: "west".into(),
                    error: TryError::Reset("broken".into()),
                },
                "reset",
                502,
            ),
            (
                Refusal::Try {
                    cluster: "west".into(),
                    error: TryError::Timeout("per-try timeout".into()),
                },
                "try-timeout",
                504,
            ),
            (Refusal::Timeout, "timeout", 504),
            (
                Refusal::Body(BodyError::Broken("client went away".into())),
                "body-broken",
                400,
            ),
            (Refusal::BadConnect, "bad-connect", 400),
            (
                Refusal::NotTcpService("db:5432".into()),
                "not-tcp-service",
                404,
            ),
            (Refusal::ConnectNotTunnelled, "connect-not-tunnelled", 501),
            (
                Refusal::UpgradeFailed {
                    host: "chat".into(),
                    why: "west: refused".into(),
                },
                "upgrade-failed",
                502,
            ),
        ];
        let mut labels = std::collections::BTreeSet::new();
        for (refusal, label, status) in cases {
            assert_eq!(refusal.label(), label, "{refusal:?}");
            assert_eq!(refusal.status().as_u16(), status, "{refusal:?}");
            assert!(labels.insert(label), "{label} is used twice");
            assert!(Refusal::LABELS.contains(&label), "{label} is listed");
            let message = refusal.to_string();
            let answer = refusal.answer();
            assert_eq!(answer.status().as_u16(), status);
            assert!(answer.headers().contains_key(ANSWERED_HEADER));
            assert_eq!(
                answer.headers()[REASON_HEADER],
                label,
                "the reason is named"
            );
            assert!(!message.is_empty());
        }
        assert_eq!(
            labels.len(),
            Refusal::LABELS.len(),
            "every listed label is used"
        );
        assert_eq!(
            Refusal::Try {
                cluster: "west".into(),
                error: TryError::Connect("127.0.0.1:1: refused".into())
            }
            .to_string(),
            "west: 127.0.0.1:1: refused"
        );
    }

    #[test]
    fn a_peer_says_its_try_failed_only_in_its_own_answers() {
        let own = |refusal: Refusal| refusal.answer();
        let failed = |error: TryError| {
            own(Refusal::Try {
                cluster: "west".into(),
                error,
            })
        };
        assert_eq!(
            PeerFailure::of(&failed(TryError::Connect("refused".into()))),
            Some(PeerFailure::NothingSent)
        );
        assert_eq!(
            PeerFailure::of(&own(Refusal::NoEndpoints("web".into()))),
            Some(PeerFailure::NothingSent)
        );
        assert_eq!(
            PeerFailure::of(&failed(TryError::Reset("broke".into()))),
            Some(PeerFailure::Reset)
        );
        assert_eq!(
            PeerFailure::of(&failed(TryError::Timeout("slow".into()))),
            Some(PeerFailure::Timeout)
        );
        // A refusal by policy is an answer, not a failed try.
        assert_eq!(
            PeerFailure::of(&own(Refusal::CallerDenied("no".into()))),
            None
        );
        // An endpoint's own 502 that claims to be a gateway's failed try
        // loses the claim at the ingress.
        let mut forged = Response::new(());
        *forged.status_mut() = StatusCode::BAD_GATEWAY;
        forged
            .headers_mut()
            .insert(ANSWERED_HEADER, HeaderValue::from_static("1"));
        forged
            .headers_mut()
            .insert(REASON_HEADER, HeaderValue::from_static("connect-failure"));
        assert_eq!(PeerFailure::of(&forged), Some(PeerFailure::NothingSent));
        let passed = from_endpoint(forged);
        assert_eq!(PeerFailure::of(&passed), None);
        assert_eq!(passed.status(), StatusCode::BAD_GATEWAY);
    }
}
