//! The egress and the public entry: plain HTTP (HTTP/1.1, or h2c with
//! prior knowledge) from clients, routed by `Host`. A request is admitted
//! by access policy, planned by the route table (rules, weights, failover)
//! and tried along that plan: at a local endpoint ([`crate::local`]) or at
//! a peer gateway ([`crate::remote`]), within the route's timeouts and
//! retry policy ([`crate::retry`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tokio::net::TcpListener;

use crate::access::name_caller;
use crate::body::RequestBody;
use crate::client_body::ClientBody;
use crate::local::clone_parts;
use crate::metrics::Entry;
use crate::proxy::{Body, DEFAULT_TIMEOUT, Gateway, accepted_counter, full, host_in};
use crate::refusal::{ANSWERED_HEADER, Refusal, TryError};
use crate::route::Route;

impl Gateway {
    /// Serves in-cluster clients (HTTP/1.1) on `listener` until the task is aborted.
    pub async fn serve_egress(self: Arc<Self>, listener: TcpListener) {
        self.serve_plain(listener, Entry::Egress).await;
    }

    /// Serves clients outside every cluster (HTTP/1.1, identity `external`:
    /// only services whose access policy admits it) until aborted.
    pub async fn serve_public(self: Arc<Self>, listener: TcpListener) {
        self.serve_plain(listener, Entry::Public).await;
    }

    pub(crate) async fn serve_plain(self: Arc<Self>, listener: TcpListener, entry: Entry) {
        let accepted = accepted_counter(entry.as_str());
        let acceptor =
            crate::listen::Acceptor::new(listener, self.max_connections(), entry.as_str());
        loop {
            let (tcp, client, slot) = acceptor.accept().await;
            accepted.increment(1);
            self.serve_client(tcp, client, slot, entry);
        }
    }

    /// Serves one accepted HTTP client connection on a task of its own,
    /// holding its `slot` of the listener's connection limit.
    pub(crate) fn serve_client<S: Send + 'static>(
        self: &Arc<Self>,
        tcp: tokio::net::TcpStream,
        client: std::net::SocketAddr,
        slot: S,
        entry: Entry,
    ) {
        let _ = tcp.set_nodelay(true);
        let limits = crate::downstream::Limits {
            idle: self.client_idle_timeout(),
            header: self.header_read_timeout(),
        };
        let connection =
            crate::downstream::Connection::new(Arc::clone(self), tcp, client, entry, limits);
        tokio::spawn(async move {
            let _slot = slot;
            let listener = entry.as_str();
            metrics::gauge!("gns_gateway_active_connections", "listener" => listener)
                .increment(1.0);
            connection.serve().await;
            metrics::gauge!("gns_gateway_active_connections", "listener" => listener)
                .decrement(1.0);
        });
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    pub(crate) fn egress(
        &self,
        req: Request<ClientBody>,
        entry: Entry,
        client: std::net::IpAddr,
    ) -> impl Future<Output = Response<Body>> + '_ {
        async move {
            // A gRPC caller gets the gateway's own errors as gRPC statuses.
            if crate::grpc::is_grpc(req.headers()) {
                let resp = Box::pin(self.egress_http(req, entry, client)).await;
                return crate::grpc::answer(resp, &ANSWERED_HEADER);
            }
            self.egress_http(req, entry, client).await
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    pub(crate) fn egress_http(
        &self,
        mut req: Request<ClientBody>,
        entry: Entry,
        client: std::net::IpAddr,
    ) -> impl Future<Output = Response<Body>> + '_ {
        async move {
            // This hop's span of the request's trace (a new trace when the
            // client sent none); the next hop's parent is this span.
            let trace = gns_otlp::TraceContext::of(req.headers(), self.trace_ratio());
            trace.propagate(req.headers_mut());
            let span_start = std::time::SystemTime::now();
            match entry {
                Entry::Egress => &self.counters.egress_requests,
                Entry::Public => &self.counters.public_requests,
            }
            .fetch_add(1, Ordering::Relaxed);
            // A CONNECT's 2xx would make the connection a tunnel (RFC 9110
            // §9.3.6), which is not made here: refused, not passed on.
            if req.method() == http::Method::CONNECT {
                return Refusal::ConnectNotTunnelled.answer();
            }
            let routes = self.routes.load_full();
            let Some(route) = routes.route(host_in(req.headers(), req.uri())) else {
                let host = host_in(req.headers(), req.uri());
                return Refusal::UnknownService(host.to_owned()).answer();
            };
            if entry == Entry::Public && !route.config.external {
                self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
                let host = host_in(req.headers(), req.uri());
                return Refusal::NotExternal(host.to_owned()).answer();
            }
            // Who calls: the services the client is an endpoint of (access
            // policy by name), or `external` from the public entry.
            let (caller, callers) = match entry {
                Entry::Egress => {
                    let host = host_in(req.headers(), req.uri());
                    match self.local_caller(&routes, &route, client, host) {
                        Ok(caller) => (
                            caller.and_then(|c| c.header.clone()),
                            caller.map_or(&[][..], |c| c.services.as_slice()),
                        ),
                        Err(refusal) => return refusal.answer(),
                    }
                }
                Entry::Public => (Some(HeaderValue::from_static("external")), &[][..]),
            };
            // An HTTP/1.1 upgrade (the connection marked it when it read the
            // head; h2c has none: HTTP/2 refuses connection fields).
            if req
                .extensions()
                .get::<crate::downstream::OnUpgrade>()
                .is_some()
            {
                return Box::pin(self.upgrade(req, &routes, &route, caller, callers)).await;
            }
            let (mut parts, body) = req.into_parts();
            name_caller(&mut parts.headers, caller);
            // Kept whole only when a retry may send it again; a kept body
            // holds its share of the buffer budget until every try is made.
            let replay = crate::retry::may_resend(route.config.retries.as_ref(), &parts.method);
            let body = if hyper::body::Body::is_end_stream(&body) {
                // Most requests: nothing to read, keep or count.
                RequestBody::Replayable(crate::budget::Buffered::empty(&self.buffers))
            } else {
                match Box::pin(crate::body::prepare(body, replay, &self.buffers)).await {
                    Ok(body) => body,
                    Err(e) => {
                        tracing::debug!(error = %e, "request body broke off");
                        return Refusal::from(e).answer();
                    }
                }
            };
            let request = crate::route::RequestFacts {
                method: Some(&parts.method),
                path: Some(parts.uri.path()),
                headers: &parts.headers,
                callers,
            };
            let plan = routes.plan(&route, &request, fastrand::u64(..));
            if plan.is_empty() {
                let host = host_in(&parts.headers, &parts.uri);
                return Refusal::NoEndpoints(host.to_owned()).answer();
            }
            let timeout = route.config.timeout().unwrap_or(DEFAULT_TIMEOUT);
            let started = std::time::Instant::now();
            let tried = AtomicU32::new(0);
            // A kept body's length is known; a streamed one is counted as it goes.
            let (kept, streaming, counted) = match body {
                RequestBody::Replayable(kept) => (Some(kept), None, None),
                RequestBody::Streaming(body) => {
                    let counted = crate::body::SentBytes::default();
                    (None, Some(counted.counting(body)), Some(counted))
                }
            };
            let kept_len = kept.as_ref().map_or(0, |k| k.bytes().len() as u64);
            let tries = async {
                match (streaming, &kept) {
                    // Boxed: its state stays out of every kept-body request's future.
                    (Some(body), _) => {
                        Box::pin(self.stream_plan(&route, &plan, &parts, body, &tried)).await
                    }
                    (None, kept) => {
                        let bytes = kept.as_ref().map(|k| k.bytes().clone()).unwrap_or_default();
                        self.try_plan(&route, &plan, &parts, bytes, &tried).await
                    }
                }
            };
            let (resp, cluster) =
                // Pinned in place: the tries are not moved at all.
                match tokio::time::timeout(timeout, std::pin::pin!(tries))
                    .await
                {
                    Ok(done) => done,
                    Err(_) => (
                        Refusal::Timeout.answer(),
                        plan.first().map_or("", |t| t.cluster),
                    ),
                };
            // Every try is done: a kept body's budget is given back.
            drop(kept);
            let response_bytes = route.metrics.record(
                entry,
                cluster,
                resp.status().as_u16(),
                started.elapsed(),
                counted.map_or(kept_len, |c| c.get()),
            );
            if let Some(exporter) = self.tracer.get().filter(|_| trace.sampled) {
                exporter.record(self.span(
                    trace,
                    entry.as_str(),
                    (&route, &parts.method),
                    (cluster, resp.status().as_u16()),
                    tried.load(Ordering::Relaxed),
                    span_start,
                ));
            }
            count_response(resp, response_bytes)
        }
    }

    /// Tries along `plan` with a body that streams once: a try that cannot
    /// connect (nothing sent) moves on as in [`Self::try_plan`]; the first
    /// try that connects sends the body, and its outcome is the answer (no
    /// retry after sending: the body is gone).
    pub(crate) async fn stream_plan<'p>(
        &self,
        route: &Route,
        plan: &[crate::route::Target<'p>],
        parts: &http::request::Parts,
        body: Body,
        tries: &AtomicU32,
    ) -> (Response<Body>, &'p str) {
        let (retry, budget, per_try) = try_limits(route, plan.len());
        let mut body = Some(body);
        let mut last = None;
        let mut last_cluster = "";
        for (n, &target) in plan.iter().cycle().take(budget).enumerate() {
            let cluster = target.cluster;
            last_cluster = cluster;
            self.count_try(n, tries);
            let attempt = async {
                if cluster == self.cluster {
                    let link = self.open_local(route, target.subset).await?;
                    let body = body.take().unwrap_or_else(|| full(Bytes::new()));
                    self.send_streaming(link, clone_parts(parts), body).await
                } else {
                    let opened = self.open_peer(cluster, parts, target.subset).await?;
                    let body = body.take().unwrap_or_else(|| full(Bytes::new()));
                    opened
                        .send(body)
                        .await
                        .map_err(|e| TryError::Reset(format!("{cluster}: {e}")))
                }
            };
            // Pinned where it is: `within` holds a pointer to the try, not a
            // copy of it (a try's future is a few KB, moved twice otherwise).
            let outcome = within(per_try, std::pin::pin!(attempt)).await;
            match outcome {
                Ok(resp) => return (resp, cluster),
                Err(e @ TryError::Connect(_)) if body.is_some() => {
                    tracing::debug!(cluster, error = %e, "try failed to connect");
                    if !crate::retry::again_after_connect_failure(retry, n + 1 >= plan.len()) {
                        return (e.answer(cluster), cluster);
                    }
                    last = Some(e);
                }
                Err(e) => return (e.answer(cluster), cluster),
            }
        }
        let last = last.unwrap_or_else(|| TryError::Connect("no try was made".into()));
        (last.answer(last_cluster), last_cluster)
    }

    /// Records try `n` (from 0) of a request: its count so far, and a retry
    /// after the first.
    fn count_try(&self, n: usize, tries: &AtomicU32) {
        tries.store(u32::try_from(n + 1).unwrap_or(u32::MAX), Ordering::Relaxed);
        if n > 0 {
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Tries along `plan` with a kept body: every try sends a copy, and a
    /// failed one is tried again as the route's retry policy says.
    pub(crate) async fn try_plan<'p>(
        &self,
        route: &Route,
        plan: &[crate::route::Target<'p>],
        parts: &http::request::Parts,
        body: Bytes,
        tries: &AtomicU32,
    ) -> (Response<Body>, &'p str) {
        // Connect failures move on through the plan (and round it again only
        // with `connect-failure`); 5xx only with a retry policy.
        let (retry, budget, per_try) = try_limits(route, plan.len());
        // Made only when a try fails: most requests need no error answer.
        let mut last = None;
        let mut last_cluster = "";
        for (n, &target) in plan.iter().cycle().take(budget).enumerate() {
            let cluster = target.cluster;
            last_cluster = cluster;
            self.count_try(n, tries);
            let attempt = async {
                if cluster == self.cluster {
                    self.send_local(route, clone_parts(parts), body.clone(), target.subset)
                        .await
                } else {
                    self.send_peer(cluster, parts, body.clone(), target.subset)
                        .await
                }
            };
            // Pinned where it is: `within` holds a pointer to the try, not a
            // copy of it (a try's future is a few KB, moved twice otherwise).
            let outcome = within(per_try, std::pin::pin!(attempt)).await;
            use crate::refusal::PeerFailure;
            use crate::retry::{Failure, again};
            let method = &parts.method;
            match outcome {
                Ok(resp) => {
                    // A peer's own answer that its try failed is that
                    // failure here (an own endpoint's answer is only a status).
                    let peer_failure = (cluster != self.cluster)
                        .then(|| PeerFailure::of(&resp))
                        .flatten();
                    // What its status alone allows, and more where the
                    // peer says what failed.
                    let status = again(retry, method, Failure::Status(resp.status().as_u16()));
                    let again = status
                        || match peer_failure {
                            // It reached no endpoint: as a connect failure.
                            Some(PeerFailure::NothingSent) => {
                                crate::retry::again_after_connect_failure(
                                    retry,
                                    n + 1 >= plan.len(),
                                )
                            }
                            Some(PeerFailure::Reset) => again(retry, method, Failure::Reset),
                            Some(PeerFailure::Timeout) => again(retry, method, Failure::Timeout),
                            None => false,
                        };
                    if !(again && n + 1 < budget) {
                        return (resp, cluster);
                    }
                    last = Some(Ok(resp));
                }
                Err(e) => {
                    let again = match &e {
                        // Nothing was sent: move on, whatever the method.
                        TryError::Connect(why) => {
                            tracing::debug!(cluster, error = %why, "try failed to connect");
                            crate::retry::again_after_connect_failure(retry, n + 1 >= plan.len())
                        }
                        TryError::Reset(_) => again(retry, method, Failure::Reset),
                        TryError::Timeout(_) => again(retry, method, Failure::Timeout),
                    };
                    if !again {
                        return (e.answer(cluster), cluster);
                    }
                    last = Some(Err(e));
                }
            }
        }
        let last = match last {
            Some(Ok(resp)) => resp,
            Some(Err(e)) => e.answer(last_cluster),
            None => TryError::Connect("no try was made".into()).answer(last_cluster),
        };
        (last, last_cluster)
    }
}

/// The retry policy of `route`, how many tries a plan of `plan_len`
/// clusters gets, and the per-try timeout.
fn try_limits(
    route: &Route,
    plan_len: usize,
) -> (Option<&crate::config::RetryPolicy>, usize, Option<Duration>) {
    let retry = route.config.retries.as_ref();
    let budget = retry.map_or(plan_len, |r| r.attempts.max(1) as usize);
    let per_try = retry
        .and_then(|r| r.per_try_timeout_ms)
        .map(Duration::from_millis);
    (retry, budget.max(1), per_try)
}

/// `attempt`, given up after `per_try` when there is one.
async fn within<F: Future<Output = Result<Response<Body>, TryError>>>(
    per_try: Option<Duration>,
    attempt: std::pin::Pin<&mut F>,
) -> Result<Response<Body>, TryError> {
    match per_try {
        Some(t) => tokio::time::timeout(t, attempt)
            .await
            .unwrap_or_else(|_| Err(TryError::Timeout("per-try timeout".into()))),
        None => attempt.await,
    }
}

/// Counts a response's body bytes: at once when its length is known, else
/// frame by frame as it streams to the client.
pub(crate) fn count_response(
    resp: Response<Body>,
    bytes: crate::metrics::ResponseBytes,
) -> Response<Body> {
    if let Some(n) = hyper::body::Body::size_hint(resp.body()).exact() {
        bytes.increment(n);
        return resp;
    }
    resp.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                bytes.increment(data.len() as u64);
            }
            frame
        })
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `make` returns, without calling it.
    fn size_made<A, F>(_make: &impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_request_future_stays_small_with_cold_paths_boxed() {
        // Every request's future is made on the stack and moved into its
        // box; the streaming, h2c and error paths are boxed so that a
        // plain request moves a few KB, not all of them.
        let gw = Gateway::new("east");
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let egress = size_made(&|r: Request<ClientBody>| gw.egress(r, Entry::Egress, ip));
        let ingress = size_made(&|r: Request<h2::RecvStream>| gw.ingress(r, "west"));
        assert!(egress <= 4096, "the egress future is {egress} bytes");
        assert!(ingress <= 3072, "the ingress future is {ingress} bytes");
    }
}
