//! Tries at local endpoints: which endpoint (ready, serving the subset, not
//! ejected), over which connection (pooled HTTP/1.1, or h2c for gRPC
//! ports), with connect failures moving on to another endpoint and every
//! outcome recorded for outlier detection.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, header};
use tokio::net::TcpStream;

use crate::access::SUBSET_HEADER;
use crate::config::EndpointPorts;
use crate::proxy::{Body, CONNECT_TIMEOUT, Gateway, LOCAL_CONNECT_TRIES, full};
use crate::refusal::TryError;
use crate::route::Route;

impl Gateway {
    /// A TCP connection to a local endpoint's HTTP port (of `subset` when
    /// given and served here, else of the cluster), for an upgraded exchange.
    pub(crate) async fn connect_local_http(
        &self,
        route: &Route,
        subset: Option<&str>,
    ) -> Result<TcpStream, TryError> {
        let ports = self.local_http_ports(route)?;
        self.dial_local(route, subset, ports).await
    }

    /// A TCP connection to a local endpoint of `route` for service port `port`.
    pub(crate) async fn connect_local_tcp(
        &self,
        route: &Route,
        port: u16,
        subset: Option<&str>,
    ) -> Result<TcpStream, TryError> {
        let tcp = route.config.tcp_ports.iter().find(|t| t.port == port);
        let ports = match tcp {
            Some(tcp) => EndpointPorts::of(
                tcp.target_port.get(&self.cluster).copied().unwrap_or(port),
                &tcp.target_port_by_address,
                &self.cluster,
            ),
            None => EndpointPorts::uniform(port),
        };
        self.dial_local(route, subset, ports).await
    }

    /// A TCP connection to one of the endpoints serving `subset` here, on
    /// its port of `ports`: up to [`LOCAL_CONNECT_TRIES`] endpoints, each
    /// connect recorded for outlier detection.
    pub(crate) async fn dial_local(
        &self,
        route: &Route,
        subset: Option<&str>,
        ports: EndpointPorts<'_>,
    ) -> Result<TcpStream, TryError> {
        let endpoints = route
            .serving_endpoints(&self.cluster, subset)
            .ok_or_else(|| TryError::Connect("no local endpoints".into()))?;
        let mut tried = Vec::new();
        let mut last = String::from("no endpoint tried");
        for _ in 0..LOCAL_CONNECT_TRIES.min(endpoints.len()) {
            let target = self.outliers.pick(endpoints, ports, &tried);
            tried.push(target);
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(tcp)) => {
                    self.outliers
                        .record(target, false, &route.config.outliers, (endpoints, ports));
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Ok(Err(e)) => last = format!("{target}: {e}"),
                Err(_) => last = format!("{target}: connect timed out"),
            }
            if self
                .outliers
                .record(target, true, &route.config.outliers, (endpoints, ports))
            {
                self.counters.ejections.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(TryError::Connect(last))
    }

    /// Sends to a ready local endpoint, skipping ejected ones; on a connect
    /// failure tries up to [`LOCAL_CONNECT_TRIES`] endpoints.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    pub(crate) fn send_local<'a>(
        &'a self,
        route: &'a Route,
        mut parts: http::request::Parts,
        body: Bytes,
        subset: Option<&'a str>,
    ) -> impl Future<Output = Result<Response<Body>, TryError>> + 'a {
        async move {
            let endpoints = route
                .serving_endpoints(&self.cluster, subset)
                .ok_or_else(|| TryError::Connect("no local endpoints".into()))?;
            let ports = self.local_http_ports(route)?;
            let h2c = route.config.h2c.contains(&self.cluster);
            for_endpoint(&mut parts);
            if h2c {
                // Boxed: its state stays out of every HTTP/1.1 request's future.
                return Box::pin(self.send_local_h2c(route, parts, body, (endpoints, ports))).await;
            }
            // Origin form (RFC 9112 §3.2.1): endpoints are origin servers, not proxies.
            parts.uri = origin_form(&parts.uri);
            parts.version = http::Version::HTTP_11;
            let mut last = None;
            // The endpoints tried so far (no allocation per request).
            let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); LOCAL_CONNECT_TRIES];
            let attempts = LOCAL_CONNECT_TRIES.min(endpoints.len());
            for attempt in 0..attempts {
                let target = self.outliers.pick(endpoints, ports, &tried[..attempt]);
                tried[attempt] = target;
                self.counters.local_tries.fetch_add(1, Ordering::Relaxed);
                // A pooled connection closed as the request went out (with
                // no answer) is replaced only for an idempotent method: the
                // endpoint may have acted on it (RFC 9110 §9.2.2).
                let resend_if_closed = crate::retry::idempotent(&parts.method);
                let sent = self
                    .shard()
                    .local
                    .send(target, &parts, &body, resend_if_closed)
                    .await;
                match self.settle_local(route, target, (endpoints, ports), sent) {
                    Ok(resp) => return Ok(resp),
                    Err(e @ TryError::Connect(_)) => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| TryError::Connect("no endpoint tried".into())))
        }
    }

    /// A local try's outcome, recorded for outlier detection (a 5xx or a
    /// connect failure counts against the endpoint): the answer, a connect
    /// failure (the caller moves on to another endpoint) or a failure after
    /// sending.
    pub(crate) fn settle_local(
        &self,
        route: &Route,
        target: SocketAddr,
        endpoints: (&[std::net::IpAddr], EndpointPorts<'_>),
        sent: Result<Response<Body>, crate::pool::PoolError>,
    ) -> Result<Response<Body>, TryError> {
        use crate::pool::PoolError;
        // A failure after sending says nothing certain about the endpoint.
        let (failed, outcome) = match sent {
            Ok(resp) => (Some(resp.status().is_server_error()), Ok(resp)),
            Err(PoolError::Connect(e)) => {
                (Some(true), Err(TryError::Connect(format!("{target}: {e}"))))
            }
            Err(e) => (None, Err(TryError::Reset(format!("{target}: {e}")))),
        };
        if let Some(failed) = failed
            && self
                .outliers
                .record(target, failed, &route.config.outliers, endpoints)
        {
            self.counters.ejections.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// [`Self::send_local`] to endpoints that speak h2c (gRPC): the same
    /// endpoint choice, outliers and connect-failure moves, over one
    /// multiplexed connection per endpoint; the Host header becomes the
    /// `:authority`.
    pub(crate) async fn send_local_h2c(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Bytes,
        (endpoints, ports): (&[std::net::IpAddr], EndpointPorts<'_>),
    ) -> Result<Response<Body>, TryError> {
        let authority = parts
            .headers
            .remove(header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
        let mut last = None;
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); LOCAL_CONNECT_TRIES];
        let attempts = LOCAL_CONNECT_TRIES.min(endpoints.len());
        for attempt in 0..attempts {
            let target = self.outliers.pick(endpoints, ports, &tried[..attempt]);
            tried[attempt] = target;
            self.counters.local_tries.fetch_add(1, Ordering::Relaxed);
            let mut request = rebuild(&parts, body.clone());
            *request.uri_mut() = h2c_uri(&parts.uri, authority.as_ref(), target)?;
            *request.version_mut() = http::Version::HTTP_2;
            let sent = self.shard().h2c.send(target, request).await;
            match self.settle_local(route, target, (endpoints, ports), sent) {
                Ok(resp) => return Ok(resp),
                Err(e @ TryError::Connect(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| TryError::Connect("no endpoint tried".into())))
    }

    /// The service's HTTP port on endpoints here (and those of endpoints
    /// with a port of their own).
    fn local_http_ports<'r>(&self, route: &'r Route) -> Result<EndpointPorts<'r>, TryError> {
        let port = route
            .config
            .http_port
            .get(&self.cluster)
            .copied()
            .ok_or_else(|| TryError::Connect("no HTTP port".into()))?;
        Ok(EndpointPorts::of(
            port,
            &route.config.http_port_by_address,
            &self.cluster,
        ))
    }

    /// A connection to a local endpoint serving `subset`, made before a
    /// body that streams once is given to it: connect failures move on to
    /// another endpoint (up to [`LOCAL_CONNECT_TRIES`], recorded for outlier
    /// detection) while nothing has been sent.
    pub(crate) async fn open_local<'r>(
        &self,
        route: &'r Route,
        subset: Option<&str>,
    ) -> Result<LocalLink<'r>, TryError> {
        let endpoints = route
            .serving_endpoints(&self.cluster, subset)
            .ok_or_else(|| TryError::Connect("no local endpoints".into()))?;
        let ports = self.local_http_ports(route)?;
        let h2c = route.config.h2c.contains(&self.cluster);
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); LOCAL_CONNECT_TRIES];
        let mut last = TryError::Connect("no endpoint tried".into());
        for attempt in 0..LOCAL_CONNECT_TRIES.min(endpoints.len()) {
            let target = self.outliers.pick(endpoints, ports, &tried[..attempt]);
            tried[attempt] = target;
            self.counters.local_tries.fetch_add(1, Ordering::Relaxed);
            let opened = if h2c {
                self.shard().h2c.ready(target).await.map(Channel::H2c)
            } else {
                self.shard()
                    .local
                    .checkout(target)
                    .await
                    .map(Channel::Http1)
            };
            match opened {
                Ok(channel) => {
                    return Ok(LocalLink {
                        route,
                        endpoints: (endpoints, ports),
                        target,
                        channel,
                    });
                }
                Err(e) => {
                    if let Err(e) = self.settle_local(route, target, (endpoints, ports), Err(e)) {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    /// Sends a request whose `body` streams, on `link`. Whatever happens
    /// now is final: the body cannot be sent again.
    pub(crate) async fn send_streaming(
        &self,
        link: LocalLink<'_>,
        mut parts: http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, TryError> {
        let LocalLink {
            route,
            endpoints,
            target,
            channel,
        } = link;
        for_endpoint(&mut parts);
        let sent = match channel {
            Channel::Http1(checkout) => {
                parts.uri = origin_form(&parts.uri);
                parts.version = http::Version::HTTP_11;
                let request = Request::from_parts(parts, body);
                self.shard().local.send_on(target, checkout, request).await
            }
            Channel::H2c(sender) => {
                let authority = parts
                    .headers
                    .remove(header::HOST)
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
                parts.uri = h2c_uri(&parts.uri, authority.as_ref(), target)?;
                parts.version = http::Version::HTTP_2;
                crate::h2c::send_on(sender, Request::from_parts(parts, body)).await
            }
        };
        self.settle_local(route, target, endpoints, sent)
            .map_err(TryError::after_sending)
    }
}

/// `uri` as an origin-form request target: its path and query only.
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    let mut origin = http::uri::Parts::default();
    origin.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"))
}

/// A copy of request parts (method, URI, version, headers; not extensions).
pub(crate) fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// A fresh request from buffered parts and body (for each try).
pub(crate) fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<Body> {
    let mut request = Request::new(full(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = parts.headers.clone();
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, value);
    }
    request
}

/// A connection to one local endpoint, open before a streamed body goes
/// out on it.
pub(crate) struct LocalLink<'r> {
    route: &'r Route,
    /// The endpoints it was picked from, on their ports.
    endpoints: (&'r [std::net::IpAddr], EndpointPorts<'r>),
    target: SocketAddr,
    channel: Channel,
}

/// The kind of connection a [`LocalLink`] holds.
enum Channel {
    Http1(crate::pool::Checkout),
    H2c(hyper::client::conn::http2::SendRequest<Body>),
}

/// Makes a request's head fit for an endpoint: an HTTP/1.1 client's
/// connection fields are dropped, the subset header is only between
/// gateways, and from a peer (HTTP/2) the host is the URI's authority, kept
/// as `Host`.
fn for_endpoint(parts: &mut http::request::Parts) {
    if parts.version < http::Version::HTTP_2 {
        // From an HTTP/1.1 client: its connection's fields stay with it
        // (from a peer, HTTP/2 carries none).
        crate::peer::strip_connection_fields(&mut parts.headers);
    }
    parts.headers.remove(SUBSET_HEADER);
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, value);
    }
}

/// The absolute URI of an h2c request to `target`: its `:authority` is the
/// request's host (else the endpoint's address).
fn h2c_uri(
    uri: &Uri,
    authority: Option<&http::uri::Authority>,
    target: SocketAddr,
) -> Result<Uri, TryError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.cloned().unwrap_or_else(|| {
        http::uri::Authority::try_from(target.to_string().as_str())
            .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
    }));
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).map_err(|e| TryError::Reset(e.to_string()))
}
