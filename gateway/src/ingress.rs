//! The ingress: HTTP/2 over mutual TLS from peer gateways. A connection is
//! admitted only with a gateway certificate of the trust domain (refusals
//! are counted by kind); each stream is a request for a local endpoint of a
//! service here, or a CONNECT tunnel (TCP passthrough, HTTP upgrades) to
//! one, after the service's access policy has admitted the calling cluster
//! and caller.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, Uri};
use tokio::net::{TcpListener, TcpStream};

use crate::access::subset_named;
use crate::proxy::{Body, CONNECT_TIMEOUT, Gateway, accepted_counter, host_in};
use crate::refusal::Refusal;
use crate::tcp::pipe;
use crate::tls::peer_cluster;

impl Gateway {
    /// A CONNECT from a peer gateway: answer 200 once the local endpoint is
    /// connected, then pipe the stream to it (on a task of its own).
    pub(crate) async fn ingress_connect(
        &self,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: &str,
    ) {
        let mut upstream = match self.connect_target(req.uri(), req.headers(), peer).await {
            Ok(tcp) => tcp,
            Err(refusal) => return crate::h2server::send_response(respond, refusal.answer()).await,
        };
        let send = match respond.send_response(Response::new(()), false) {
            Ok(send) => send,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT answer not sent");
                return;
            }
        };
        let mut tunnel = crate::peer::Tunnel::new(send, req.into_body());
        tokio::spawn(async move {
            let _ = pipe(&mut tunnel, &mut upstream).await;
        });
    }

    /// The local endpoint a peer's CONNECT to `target` (`host:port`) goes
    /// to, connected; or why it is refused.
    pub(crate) async fn connect_target(
        &self,
        target: &Uri,
        headers: &http::HeaderMap,
        peer: &str,
    ) -> Result<TcpStream, Refusal> {
        let authority = target.authority().map(|a| (a.host(), a.port_u16()));
        let Some((host, Some(port))) = authority else {
            return Err(Refusal::BadConnect);
        };
        let failed = |error| Refusal::Try {
            cluster: self.cluster.clone(),
            error,
        };
        if headers.contains_key(crate::upgrade::UPGRADE_HEADER) {
            // An upgraded HTTP exchange: the service's HTTP route, not a TCP port.
            let Some(route) = self.routes.load().route(host) else {
                return Err(Refusal::UnknownService(host.to_owned()));
            };
            if let Some(refusal) = self.peer_refusal(&route, peer, headers, host) {
                return Err(refusal);
            }
            return self
                .connect_local_http(&route, subset_named(headers))
                .await
                .map_err(failed);
        }
        let Some(route) = self.routes.load().tcp_route_named(port, host) else {
            return Err(Refusal::NotTcpService(format!("{host}:{port}")));
        };
        if let Some(refusal) = self.peer_refusal(&route, peer, headers, host) {
            return Err(refusal);
        }
        self.connect_local_tcp(&route, port, subset_named(headers))
            .await
            .map_err(failed)
    }

    /// Serves peer gateways (HTTP/2 over mTLS) on `listener` until aborted.
    pub async fn serve_ingress(self: Arc<Self>, listener: TcpListener) {
        let accepted = accepted_counter("ingress");
        let acceptor = crate::listen::Acceptor::new(listener, self.max_connections(), "ingress");
        loop {
            let (tcp, peer_addr, slot) = acceptor.accept().await;
            accepted.increment(1);
            let _ = tcp.set_nodelay(true);
            let gw = Arc::clone(&self);
            tokio::spawn(async move {
                let _slot = slot;
                metrics::gauge!("gns_gateway_active_connections", "listener" => "ingress")
                    .increment(1.0);
                let outcome = Arc::clone(&gw).ingress_connection(tcp).await;
                metrics::gauge!("gns_gateway_active_connections", "listener" => "ingress")
                    .decrement(1.0);
                let Err(end) = outcome else {
                    return;
                };
                match end.refusal_reason() {
                    None => {
                        tracing::debug!(peer = %peer_addr, error = %end, "ingress connection ended with an error");
                    }
                    Some(reason) => {
                        metrics::counter!(
                            "gns_gateway_mtls_handshake_failures_total",
                            "reason" => reason
                        )
                        .increment(1);
                        gw.counters.mtls_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(peer = %peer_addr, error = %end, "ingress connection refused");
                    }
                }
            });
        }
    }

    pub(crate) async fn ingress_connection(
        self: Arc<Self>,
        tcp: TcpStream,
    ) -> Result<(), IngressEnd> {
        let (Some(server), Some(identity)) =
            (self.ingress_tls.load_full(), self.identity.load_full())
        else {
            return Err(IngressEnd::NoCertificate);
        };
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_rustls::TlsAcceptor::from(server).accept(tcp),
        )
        .await
        .map_err(|_| IngressEnd::HandshakeTimeout)?
        .map_err(IngressEnd::Handshake)?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let peer = leaf
            .and_then(|c| peer_cluster(c, &identity.trust_domain))
            .ok_or_else(|| {
                // Say whom it refused: the identities the certificate names.
                let named = leaf.map(crate::tls::uri_sans).unwrap_or_default();
                IngressEnd::NotAGateway(if named.is_empty() {
                    "no URI SAN".to_owned()
                } else {
                    named.join(", ")
                })
            })?;
        let gw = &*self;
        let peer = peer.as_str();
        crate::h2server::serve(tls, |req, respond| gw.ingress_stream(req, respond, peer))
            .await
            .map_err(IngressEnd::Http2)
    }

    /// One stream from a peer gateway: a CONNECT tunnel or a request.
    ///
    /// The per-request steps here are plain functions returning futures
    /// rather than `async fn`s: an `async fn` keeps its arguments twice in its
    /// future (as captured and as moved into the body), and these futures are
    /// moved and allocated per request. This one holds only the chosen work.
    pub(crate) fn ingress_stream<'a>(
        &'a self,
        req: Request<h2::RecvStream>,
        respond: h2::server::SendResponse<Bytes>,
        peer: &'a str,
    ) -> impl Future<Output = ()> + 'a {
        use futures::future::Either;
        self.counters
            .ingress_requests
            .fetch_add(1, Ordering::Relaxed);
        if req.method() == http::Method::CONNECT {
            // Boxed, like every cold path.
            Either::Left(Box::pin(self.ingress_connect(req, respond, peer)))
        } else {
            // Boxed work: the stream's own future, moved as it is made and
            // queued on the connection, stays small.
            Either::Right(crate::h2server::respond(
                respond,
                Box::pin(self.ingress(req, peer)),
            ))
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    pub(crate) fn ingress<'a>(
        &'a self,
        mut req: Request<h2::RecvStream>,
        peer: &'a str,
    ) -> impl Future<Output = Response<Body>> + 'a {
        async move {
            // The peer's span is the parent of this hop's; the endpoint
            // gets this hop's span as its parent.
            let trace = gns_otlp::TraceContext::of(req.headers(), self.trace_ratio());
            trace.propagate(req.headers_mut());
            let start = std::time::SystemTime::now();
            let method = req.method().clone();
            let host = host_in(req.headers(), req.uri());
            let Some(route) = self.routes.load().route(host) else {
                return Refusal::UnknownService(host.to_owned()).answer();
            };
            let resp = self.ingress_to_local(&route, req, peer).await;
            if let Some(exporter) = self.tracer.get().filter(|_| trace.sampled) {
                let mut span = self.span(
                    trace,
                    "ingress",
                    (&route, &method),
                    (&self.cluster, resp.status().as_u16()),
                    1,
                    start,
                );
                span.attributes
                    .push(("gns.source.cluster", gns_otlp::Value::Text(peer.to_owned())));
                exporter.record(span);
            }
            resp
        }
    }

    /// A peer's request for `route`'s service, admitted by its access
    /// policy, sent to a local endpoint.
    async fn ingress_to_local(
        &self,
        route: &crate::route::Route,
        req: Request<h2::RecvStream>,
        peer: &str,
    ) -> Response<Body> {
        let host = host_in(req.headers(), req.uri());
        if let Some(refusal) = self.peer_refusal(route, peer, req.headers(), host) {
            return refusal.answer();
        }
        let subset = subset_named(req.headers()).map(str::to_owned);
        if req.body().is_end_stream() {
            // No body: the pooled fast path, which may send the head again.
            let (parts, _) = req.into_parts();
            return match self
                .send_local(route, parts, Bytes::new(), subset.as_deref())
                .await
            {
                Ok(resp) => crate::refusal::from_endpoint(resp),
                Err(e) => e.answer(&self.cluster),
            };
        }
        // The body streams to the endpoint once, with flow control end
        // to end; a connect failure still moves on to another endpoint.
        let (parts, body) = crate::peer::request_body(req).into_parts();
        // Boxed: its state stays out of every bodiless request's future.
        let sent = Box::pin(async {
            let link = self.open_local(route, subset.as_deref()).await?;
            self.send_streaming(link, parts, body).await
        })
        .await;
        match sent {
            Ok(resp) => crate::refusal::from_endpoint(resp),
            Err(e) => e.answer(&self.cluster),
        }
    }
}

/// How an ingress connection ended without being served to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngressEnd {
    /// This gateway has no certificate yet.
    #[error("no certificate yet")]
    NoCertificate,
    /// The peer did not finish the TLS handshake in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The TLS handshake failed (an untrusted or expired certificate, an old TLS version).
    #[error("handshake: {0}")]
    Handshake(std::io::Error),
    /// A certificate of the trust domain that is not a gateway's (its URI SANs).
    #[error("the peer is not a gateway of this trust domain (its certificate names {0})")]
    NotAGateway(String),
    /// Accepted and served, then broken: not a refusal.
    #[error("http2: {0}")]
    Http2(h2::Error),
}

impl IngressEnd {
    /// Every `reason` label of `gns_gateway_mtls_handshake_failures_total`.
    pub(crate) const REFUSAL_REASONS: [&'static str; 4] =
        ["timeout", "handshake", "identity", "no-certificate"];

    /// The `reason` label of `gns_gateway_mtls_handshake_failures_total`;
    /// `None` for a connection that was accepted (not a refusal).
    pub(crate) fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            IngressEnd::HandshakeTimeout => Some("timeout"),
            IngressEnd::Handshake(_) => Some("handshake"),
            IngressEnd::NotAGateway(_) => Some("identity"),
            IngressEnd::NoCertificate => Some("no-certificate"),
            IngressEnd::Http2(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(crate) fn refusals_are_labelled_by_kind_and_served_connections_are_not_refusals() {
        let io = || std::io::Error::other("bad certificate");
        let labels: Vec<Option<&str>> = [
            IngressEnd::NoCertificate,
            IngressEnd::HandshakeTimeout,
            IngressEnd::Handshake(io()),
            IngressEnd::NotAGateway("spiffe://acme.test/ns/shop/sa/web".into()),
        ]
        .iter()
        .map(IngressEnd::refusal_reason)
        .collect();
        assert_eq!(
            labels,
            [
                Some("no-certificate"),
                Some("timeout"),
                Some("handshake"),
                Some("identity")
            ]
        );
        for label in labels.into_iter().flatten() {
            assert!(IngressEnd::REFUSAL_REASONS.contains(&label), "{label}");
        }
        assert_eq!(
            IngressEnd::NotAGateway("spiffe://acme.test/ns/shop/sa/web".into()).to_string(),
            "the peer is not a gateway of this trust domain (its certificate names spiffe://acme.test/ns/shop/sa/web)"
        );
    }
}
