//! The data path: egress (plain HTTP/1.1 from in-cluster clients, routed by
//! `Host`) and ingress (HTTP/2 over mTLS from peer gateways), forwarding to
//! local endpoints over HTTP/1.1 or to a peer gateway over one pooled,
//! multiplexed HTTP/2 connection per peer.
//!
//! A request body is read whole (up to [`MAX_BODY`], 32 MiB) so a failed try
//! can be replayed: on a connect failure (and, when the route says so, on a
//! 5xx) the next cluster of the plan is tried, within the retry budget and
//! timeouts. All bodies being buffered share one process-wide budget
//! ([`BufferBudget`], `--buffer-budget`, 64 MiB by default): a body that
//! arrives when it is spent is refused with `503` and `retry-after: 1`, and
//! one above [`MAX_BODY`] (or the whole budget) with `413`.

use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use tokio::net::{TcpListener, TcpStream};

use crate::budget::{BodyError, BudgetError, BufferBudget};
use crate::config::GatewayConfig;
use crate::metrics::Entry;
use crate::route::{Route, RouteTable};
use crate::tls::{TlsIdentity, peer_cluster, peer_config};

/// Largest request body a gateway buffers (32 MiB), whole, so that a failed
/// try can be sent again; a larger one is refused with `413`. What all
/// requests buffer together is bounded by the gateway's [`BufferBudget`]
/// (`--buffer-budget`), which may be smaller: then that is the cap.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Connecting to a peer gateway or an endpoint gives up after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Copy buffer of each direction of a passed-through TCP connection.
const TCP_BUFFER: usize = 64 * 1024;
/// The header a gateway names the caller in when it forwards a request:
/// the services the calling workload is an endpoint of (comma-separated;
/// absent when it is none's), or `external` from the public entry. Set by
/// the gateway that took the request (a client's own is dropped) and
/// trusted only from peer gateways, over mutual TLS.
pub const CALLER_HEADER: HeaderName = HeaderName::from_static("x-gns-caller");
/// Between gateways: the subset of the receiving cluster's endpoints a
/// request is for (a key of the service's `subsets`), when a rule chose one.
pub const SUBSET_HEADER: HeaderName = HeaderName::from_static("x-gns-subset");
/// How long a client connection may go without a request before it is closed.
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
/// How long a client may take to send a request's header, by default. The
/// timer also runs while a kept-alive connection waits for its next request
/// (hyper's), so it is the client idle timeout's default too.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections each listener serves at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Overall request timeout when the route sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors carried in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of everything the gateway sends.
pub type Body = BoxBody<Bytes, BoxError>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// Marks an answer the gateway made itself (not an endpoint's).
const ANSWERED_HEADER: HeaderName = HeaderName::from_static("x-gns-gateway");

fn reply(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.extensions_mut()
        .insert(crate::grpc::GatewayMessage(message.to_owned()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(ANSWERED_HEADER, HeaderValue::from_static("1"));
    resp
}

/// The answer to a request whose body was not buffered: `503` with
/// `retry-after: 1` when the buffer budget is spent (it may fit later),
/// `413` when it is too large to ever fit, `400` when it broke off.
fn refuse_body(error: &BodyError) -> Response<Body> {
    match error {
        BodyError::Budget(BudgetError::Exhausted { .. }) => {
            let mut resp = reply(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        BodyError::TooLarge(_) | BodyError::Budget(BudgetError::LargerThanBudget { .. }) => {
            reply(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string())
        }
        BodyError::Broken(_) => reply(StatusCode::BAD_REQUEST, &error.to_string()),
    }
}

/// Counters, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered, by where they came in.
    pub egress_requests: AtomicU64,
    /// Requests received from peer gateways.
    pub ingress_requests: AtomicU64,
    /// Requests received on the public entry.
    pub public_requests: AtomicU64,
    /// Tries sent to peer gateways.
    pub peer_tries: AtomicU64,
    /// Tries sent to local endpoints.
    pub local_tries: AtomicU64,
    /// Retries after a failed try.
    pub retries: AtomicU64,
    /// Peer handshakes refused (bad certificate or identity).
    pub mtls_refused: AtomicU64,
    /// Requests refused by access policy.
    pub access_denied: AtomicU64,
    /// Certificates renewed.
    pub cert_renewals: AtomicU64,
    /// Trust bundles installed after start (root rotations).
    pub bundle_updates: AtomicU64,
    /// Trust bundles refused: none of the current roots was in them.
    pub bundle_refusals: AtomicU64,
    /// Local endpoints ejected after consecutive failures.
    pub ejections: AtomicU64,
    /// TCP connections accepted for passthrough.
    pub tcp_connections: AtomicU64,
}

/// Local endpoints tried per request on connect failures.
const LOCAL_CONNECT_TRIES: usize = 3;
thread_local! {
    /// The data-path worker the current thread is (0 unless set).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as data-path worker `index`: the requests it
/// serves use that worker's connections to peers and local endpoints, which
/// its own runtime drives (no wake-ups across threads on the data path).
pub fn enter_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// `gns_gateway_worker_connections_total` of the calling worker for
/// `listener`: how evenly the kernel spreads connections over the workers.
fn accepted_counter(listener: &'static str) -> metrics::Counter {
    metrics::counter!(
        "gns_gateway_worker_connections_total",
        "listener" => listener,
        "worker" => WORKER.with(Cell::get).to_string()
    )
}

/// The connection pools of one worker thread.
struct Shard {
    peers: crate::peer::PeerPool,
    local: crate::pool::LocalPool,
    h2c: crate::h2c::H2cPool,
}

/// A running gateway's shared state.
pub struct Gateway {
    cluster: String,
    routes: ArcSwap<RouteTable>,
    config: ArcSwapOption<GatewayConfig>,
    identity: ArcSwapOption<TlsIdentity>,
    ingress_tls: ArcSwapOption<rustls::ServerConfig>,
    /// Connection pools, one per data-path worker thread.
    shards: Box<[Shard]>,
    outliers: crate::outlier::Outliers,
    /// TCP ports the egress must listen on, from the config.
    tcp_ports: tokio::sync::watch::Sender<std::collections::BTreeSet<u16>>,
    /// Client connections (egress, public entry) with no request for this
    /// many milliseconds are closed; 0: never.
    client_idle_ms: AtomicU64,
    /// A client must send a request's header within this many milliseconds.
    header_read_ms: AtomicU64,
    /// Most connections each listener serves at once.
    max_connections: std::sync::atomic::AtomicUsize,
    /// Request-body bytes buffered by every worker together, bounded.
    buffers: BufferBudget,
    /// Counters.
    pub counters: Counters,
    /// Traffic since the last report to the federation.
    traffic: Arc<crate::report::Traffic>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Why a try failed.
#[derive(Debug, thiserror::Error)]
enum TryError {
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

impl Gateway {
    /// A gateway of `cluster` without config or certificate yet, served by
    /// one thread.
    pub fn new(cluster: &str) -> Arc<Gateway> {
        Self::with_workers(cluster, 1)
    }

    /// A gateway served by `workers` data-path threads, each with its own
    /// connection pools (see [`enter_worker`]).
    pub fn with_workers(cluster: &str, workers: usize) -> Arc<Gateway> {
        Arc::new(Gateway {
            cluster: cluster.to_owned(),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            config: ArcSwapOption::empty(),
            identity: ArcSwapOption::empty(),
            ingress_tls: ArcSwapOption::empty(),
            shards: (0..workers.max(1))
                .map(|_| Shard {
                    peers: crate::peer::PeerPool::default(),
                    local: crate::pool::LocalPool::new(CONNECT_TIMEOUT),
                    h2c: crate::h2c::H2cPool::new(CONNECT_TIMEOUT),
                })
                .collect(),
            outliers: crate::outlier::Outliers::default(),
            tcp_ports: tokio::sync::watch::Sender::new(std::collections::BTreeSet::new()),
            client_idle_ms: AtomicU64::new(DEFAULT_CLIENT_IDLE.as_millis() as u64),
            header_read_ms: AtomicU64::new(DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64),
            max_connections: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_CONNECTIONS),
            buffers: BufferBudget::default(),
            counters: Counters::default(),
            traffic: Arc::default(),
        })
    }

    /// Closes client connections (egress, public entry) on which no request
    /// has started for `idle` (`None` or zero: never); applies to
    /// connections accepted from then on.
    pub fn set_client_idle_timeout(&self, idle: Option<Duration>) {
        let ms = idle.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.client_idle_ms.store(ms, Ordering::Relaxed);
    }

    /// Closes a client connection (egress, public entry) that does not send
    /// a request's header within `timeout`; applies to connections accepted
    /// from then on.
    pub fn set_header_read_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.header_read_ms.store(ms, Ordering::Relaxed);
    }

    fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_ms.load(Ordering::Relaxed))
    }

    /// Serves at most `cap` connections per listener at once (more wait to
    /// be accepted); applies to listeners started from then on.
    pub fn set_max_connections(&self, cap: usize) {
        self.max_connections.store(cap.max(1), Ordering::Relaxed);
    }

    fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Bounds the request-body bytes all requests may hold buffered at once
    /// (default [`crate::budget::DEFAULT_BUFFER_BUDGET`]); applies at once.
    pub fn set_buffer_budget(&self, bytes: usize) {
        self.buffers.set_limit(bytes);
    }

    /// The buffer budget: its limit, bytes in use and refusals.
    pub fn buffer_budget(&self) -> &BufferBudget {
        &self.buffers
    }

    fn client_idle_timeout(&self) -> Option<Duration> {
        match self.client_idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The pools of the calling worker thread.
    fn shard(&self) -> &Shard {
        &self.shards[WORKER.with(Cell::get) % self.shards.len()]
    }

    /// The traffic counted for the next report to the federation.
    pub fn traffic(&self) -> &crate::report::Traffic {
        &self.traffic
    }

    /// This gateway's cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Applies a config atomically; problems (rules left out) are returned.
    pub fn apply_config(&self, config: GatewayConfig) -> Vec<String> {
        let (table, problems) = RouteTable::new(&config, &self.cluster, &self.traffic);
        let ports = table.tcp_ports();
        self.tcp_ports.send_if_modified(|current| {
            let changed = *current != ports;
            *current = ports;
            changed
        });
        self.routes.store(Arc::new(table));
        self.config.store(Some(Arc::new(config)));
        problems
    }

    /// The config in use.
    pub fn config(&self) -> Option<Arc<GatewayConfig>> {
        self.config.load_full()
    }

    /// Installs a (new) certificate; new connections use it, open ones keep theirs.
    pub async fn set_identity(&self, identity: TlsIdentity) -> Result<(), crate::tls::TlsError> {
        let server = crate::tls::ingress_config(&identity)?;
        self.ingress_tls.store(Some(Arc::new(server)));
        self.identity.store(Some(Arc::new(identity)));
        // New peer connections present the new certificate; requests in
        // flight finish on the connections they hold.
        for shard in &self.shards {
            shard.peers.clear();
        }
        Ok(())
    }

    /// The certificate in use.
    pub fn identity(&self) -> Option<Arc<TlsIdentity>> {
        self.identity.load_full()
    }

    /// Ready: a config and a certificate.
    pub fn is_ready(&self) -> bool {
        self.config.load().is_some() && self.identity.load().is_some()
    }

    /// Serves in-cluster clients (HTTP/1.1) on `listener` until the task is aborted.
    pub async fn serve_egress(self: Arc<Self>, listener: TcpListener) {
        self.serve_plain(listener, Entry::Egress).await;
    }

    /// Serves clients outside every cluster (HTTP/1.1, identity `external`:
    /// only services whose access policy admits it) until aborted.
    pub async fn serve_public(self: Arc<Self>, listener: TcpListener) {
        self.serve_plain(listener, Entry::Public).await;
    }

    /// Listens on `ip` on every TCP port the config routes (opening and
    /// closing listeners as the config changes) and passes connections
    /// through to the chosen cluster. `shared`: the ports are bound with
    /// `SO_REUSEPORT`, one listener per worker. Runs until aborted.
    pub async fn serve_tcp(self: Arc<Self>, ip: std::net::IpAddr, shared: bool) {
        let mut ports = self.tcp_ports.subscribe();
        let mut listeners: HashMap<u16, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let wanted = ports.borrow_and_update().clone();
            listeners.retain(|port, task| {
                let keep = wanted.contains(port);
                if !keep {
                    task.abort();
                }
                keep
            });
            let missing: Vec<u16> = wanted
                .iter()
                .copied()
                .filter(|p| !listeners.contains_key(p))
                .collect();
            for port in &missing {
                let bound = crate::listen::bind(SocketAddr::new(ip, *port), shared)
                    .and_then(TcpListener::from_std);
                match bound {
                    Ok(listener) => {
                        tracing::info!(%ip, port, "TCP egress listening");
                        let gw = Arc::clone(&self);
                        listeners.insert(*port, tokio::spawn(gw.accept_tcp(listener, *port)));
                    }
                    Err(e) => tracing::warn!(%ip, port, error = %e, "cannot listen for TCP"),
                }
            }
            if ports.changed().await.is_err() {
                return;
            }
        }
    }

    async fn accept_tcp(self: Arc<Self>, listener: TcpListener, port: u16) {
        let acceptor = crate::listen::Acceptor::new(listener, self.max_connections(), "tcp");
        loop {
            let (tcp, _, slot) = acceptor.accept().await;
            let _ = tcp.set_nodelay(true);
            let gw = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = gw.tcp_egress(tcp, port).await {
                    tracing::debug!(port, error = %e, "TCP connection not passed through");
                }
                drop(slot);
            });
        }
    }

    /// One TCP connection: to a local endpoint, or through a CONNECT tunnel
    /// on the HTTP/2 connection to a peer gateway, in plan order.
    async fn tcp_egress(&self, mut client: TcpStream, port: u16) -> Result<(), String> {
        self.counters
            .tcp_connections
            .fetch_add(1, Ordering::Relaxed);
        let routes = self.routes.load_full();
        // Several services on one port: a TLS client's server name picks one.
        let sni = if routes.tcp_port_shared(port) {
            server_name(&client).await
        } else {
            None
        };
        let route = routes
            .tcp_route(port, sni.as_deref())
            .ok_or_else(|| format!("no service on TCP port {port}"))?;
        let client_ip = client.peer_addr().map_err(|e| e.to_string())?.ip();
        let service = format!("{}.{}", route.config.service, route.config.gns);
        let caller = self.local_caller(&routes, &route, client_ip, &service)?;
        let mut caller_headers = http::HeaderMap::new();
        name_caller(&mut caller_headers, caller.and_then(|c| c.header.clone()));
        let no_headers = http::HeaderMap::new();
        let request = crate::route::RequestFacts {
            callers: caller.map_or(&[][..], |c| c.services.as_slice()),
            ..crate::route::RequestFacts::headers(&no_headers)
        };
        let plan = routes.plan(&route, &request, fastrand::u64(..));
        let host = format!("{}.{}:{port}", route.config.service, route.config.gns);
        for target in &plan {
            let cluster = target.cluster;
            if cluster == self.cluster {
                match self.connect_local_tcp(&route, port, target.subset).await {
                    Ok(mut upstream) => {
                        let copied = pipe(&mut client, &mut upstream).await;
                        count_tcp(&route, cluster, copied);
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(cluster, error = %e, "TCP try failed"),
                }
                continue;
            }
            let Ok(connection) = self.peer_connection(cluster).await else {
                continue;
            };
            let mut headers = caller_headers.clone();
            name_subset(&mut headers, target.subset);
            match connection.tunnel(&host, headers).await {
                Ok(mut tunnel) => {
                    let copied = pipe(&mut client, &mut tunnel).await;
                    count_tcp(&route, cluster, copied);
                    return Ok(());
                }
                Err(e) => tracing::debug!(cluster, error = %e, "CONNECT tunnel failed"),
            }
        }
        Err(format!("port {port}: no cluster could take the connection"))
    }

    /// An HTTP/1.1 upgrade (WebSocket, ...): the request goes to the plan's
    /// first target that takes it (a local endpoint, or a peer through a
    /// CONNECT tunnel), and on `101` the client's connection and that byte
    /// stream are joined (see [`crate::upgrade`]).
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        routes: &RouteTable,
        route: &Arc<Route>,
        caller: Option<HeaderValue>,
        callers: &[String],
    ) -> Response<Body> {
        let on_client = hyper::upgrade::on(&mut req);
        let (mut parts, _) = req.into_parts();
        name_caller(&mut parts.headers, caller.clone());
        let host = host_in(&parts.headers, &parts.uri).to_owned();
        let request = crate::route::RequestFacts {
            method: Some(&parts.method),
            path: Some(parts.uri.path()),
            headers: &parts.headers,
            callers,
        };
        let plan = routes.plan(route, &request, fastrand::u64(..));
        let head = crate::upgrade::head_bytes(&parts, &host);
        let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        let mut last = String::from("no cluster has ready endpoints");
        for target in &plan {
            let opened: Result<Box<dyn crate::upgrade::Io>, String> =
                if target.cluster == self.cluster {
                    self.connect_local_http(route, target.subset)
                        .await
                        .map(|tcp| Box::new(tcp) as Box<dyn crate::upgrade::Io>)
                } else {
                    match self.peer_connection(target.cluster).await {
                        Ok(connection) => {
                            let mut headers = http::HeaderMap::new();
                            name_caller(&mut headers, caller.clone());
                            name_subset(&mut headers, target.subset);
                            headers.insert(
                                crate::upgrade::UPGRADE_HEADER,
                                HeaderValue::from_static("1"),
                            );
                            connection
                                .tunnel(&format!("{name}:80"), headers)
                                .await
                                .map(|t| Box::new(t) as Box<dyn crate::upgrade::Io>)
                                .map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    last = format!("{}: {e}", target.cluster);
                    continue;
                }
            };
            let answer = match crate::upgrade::exchange(&mut stream, &head).await {
                Ok(answer) => answer,
                Err(e) => {
                    last = format!("{}: {e}", target.cluster);
                    continue;
                }
            };
            let switching = answer.status == StatusCode::SWITCHING_PROTOCOLS;
            let mut resp = Response::new(full(if switching {
                Bytes::new()
            } else {
                Bytes::from(answer.rest.clone())
            }));
            *resp.status_mut() = answer.status;
            *resp.headers_mut() = answer.headers;
            if !switching {
                // Passed on as it came; the connection ends with it.
                resp.headers_mut().remove(header::CONTENT_LENGTH);
                resp.headers_mut().remove(header::TRANSFER_ENCODING);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
            let rest = answer.rest;
            tokio::spawn(async move {
                let Ok(upgraded) = on_client.await else {
                    return;
                };
                let mut client = TokioIo::new(upgraded);
                if !rest.is_empty()
                    && tokio::io::AsyncWriteExt::write_all(&mut client, &rest)
                        .await
                        .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
            });
            return resp;
        }
        reply(
            StatusCode::BAD_GATEWAY,
            &format!("{host}: the upgrade could not be made: {last}"),
        )
    }

    /// A TCP connection to a local endpoint's HTTP port (of `subset` when
    /// given and served here, else of the cluster), for an upgraded exchange.
    async fn connect_local_http(
        &self,
        route: &Route,
        subset: Option<&str>,
    ) -> Result<TcpStream, String> {
        let port = route
            .config
            .http_port
            .get(&self.cluster)
            .copied()
            .ok_or("no HTTP port")?;
        self.dial_local(route, subset, port).await
    }

    /// A TCP connection to a local endpoint of `route` for service port `port`.
    async fn connect_local_tcp(
        &self,
        route: &Route,
        port: u16,
        subset: Option<&str>,
    ) -> Result<TcpStream, String> {
        let target_port = route
            .config
            .tcp_ports
            .iter()
            .find(|t| t.port == port)
            .and_then(|t| t.target_port.get(&self.cluster).copied())
            .unwrap_or(port);
        self.dial_local(route, subset, target_port).await
    }

    /// A TCP connection to one of the endpoints serving `subset` here, on
    /// `port`: up to [`LOCAL_CONNECT_TRIES`] endpoints, each connect
    /// recorded for outlier detection.
    async fn dial_local(
        &self,
        route: &Route,
        subset: Option<&str>,
        port: u16,
    ) -> Result<TcpStream, String> {
        let endpoints = route
            .serving_endpoints(&self.cluster, subset)
            .ok_or("no local endpoints")?;
        let mut tried = Vec::new();
        let mut last = String::from("no endpoint tried");
        for _ in 0..LOCAL_CONNECT_TRIES.min(endpoints.len()) {
            let target = self.outliers.pick(endpoints, port, &tried);
            tried.push(target);
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(tcp)) => {
                    self.outliers
                        .record(target, false, &route.config.outliers, endpoints);
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Ok(Err(e)) => last = format!("{target}: {e}"),
                Err(_) => last = format!("{target}: connect timed out"),
            }
            if self
                .outliers
                .record(target, true, &route.config.outliers, endpoints)
            {
                self.counters.ejections.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(last)
    }

    /// Who the client at `client` (in this cluster) is when it calls
    /// `route`'s service (`host` in messages), if the access policy lets it;
    /// else why not (the refusal is counted).
    fn local_caller<'t>(
        &self,
        routes: &'t RouteTable,
        route: &Route,
        client: std::net::IpAddr,
        host: &str,
    ) -> Result<Option<&'t crate::route::Caller>, String> {
        let caller = routes.caller_at(client, &route.config.gns);
        let services = caller.map_or(&[][..], |c| c.services.as_slice());
        if route.admits(services) {
            return Ok(caller);
        }
        self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
        Err(denied_caller(services, host))
    }

    /// The answer refusing a peer's request for `route`'s service (`host`),
    /// if the access policy refuses it (counted): the peer's cluster must run
    /// a permitted caller, and the caller it names must be permitted.
    fn peer_refusal(
        &self,
        route: &Route,
        peer: &str,
        headers: &http::HeaderMap,
        host: &str,
    ) -> Option<Response<Body>> {
        let cluster_allowed = route
            .config
            .allowed_clusters
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|c| c == peer));
        let refusal = if !cluster_allowed {
            format!("cluster {peer} may not call {host}")
        } else {
            let callers = callers_named(headers);
            let admitted = if callers == ["external"] {
                route.config.external
            } else {
                route.admits(&callers)
            };
            if admitted {
                return None;
            }
            denied_caller(&callers, host)
        };
        self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
        Some(reply(StatusCode::FORBIDDEN, &refusal))
    }

    /// A CONNECT from a peer gateway: answer 200 once the local endpoint is
    /// connected, then pipe the stream to it (on a task of its own).
    async fn ingress_connect(
        &self,
        req: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: &str,
    ) {
        let mut upstream = match self.connect_target(req.uri(), req.headers(), peer).await {
            Ok(tcp) => tcp,
            Err(refusal) => return crate::ingress::send_response(respond, refusal).await,
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
    /// to, connected; or the answer that refuses it.
    async fn connect_target(
        &self,
        target: &Uri,
        headers: &http::HeaderMap,
        peer: &str,
    ) -> Result<TcpStream, Response<Body>> {
        let authority = target.authority().map(|a| (a.host(), a.port_u16()));
        let Some((host, Some(port))) = authority else {
            return Err(reply(StatusCode::BAD_REQUEST, "CONNECT needs host:port"));
        };
        if headers.contains_key(crate::upgrade::UPGRADE_HEADER) {
            // An upgraded HTTP exchange: the service's HTTP route, not a TCP port.
            let Some(route) = self.routes.load().route(host) else {
                return Err(reply(
                    StatusCode::NOT_FOUND,
                    &format!("no global service {host:?}"),
                ));
            };
            if let Some(refusal) = self.peer_refusal(&route, peer, headers, host) {
                return Err(refusal);
            }
            return self
                .connect_local_http(&route, subset_named(headers))
                .await
                .map_err(|e| reply(StatusCode::BAD_GATEWAY, &e));
        }
        let Some(route) = self.routes.load().tcp_route_named(port, host) else {
            return Err(reply(
                StatusCode::NOT_FOUND,
                &format!("{host}:{port} is not a TCP service here"),
            ));
        };
        if let Some(refusal) = self.peer_refusal(&route, peer, headers, host) {
            return Err(refusal);
        }
        self.connect_local_tcp(&route, port, subset_named(headers))
            .await
            .map_err(|e| reply(StatusCode::BAD_GATEWAY, &e))
    }

    async fn serve_plain(self: Arc<Self>, listener: TcpListener, entry: Entry) {
        let accepted = accepted_counter(entry.as_str());
        let acceptor =
            crate::listen::Acceptor::new(listener, self.max_connections(), entry.as_str());
        loop {
            let (tcp, client, slot) = acceptor.accept().await;
            accepted.increment(1);
            let _ = tcp.set_nodelay(true);
            let gw = Arc::clone(&self);
            let idle = self.client_idle_timeout();
            let header_timeout = self.header_read_timeout();
            tokio::spawn(async move {
                let _slot = slot;
                let listener = entry.as_str();
                let activity = Arc::new(crate::idle::Activity::default());
                let active = Arc::clone(&activity);
                let svc = service_fn(move |req| {
                    active.mark();
                    let gw = Arc::clone(&gw);
                    // Boxed: an idle connection then holds a pointer, not the
                    // whole request future (which is large).
                    async move {
                        Ok::<_, Infallible>(Box::pin(gw.egress(req, entry, client.ip())).await)
                    }
                });
                metrics::gauge!("gns_gateway_active_connections", "listener" => listener)
                    .increment(1.0);
                // HTTP/1.1, or h2c with prior knowledge (told apart by the HTTP/2 preface).
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // A client must send each request's header within the timeout.
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let mut connection =
                    std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc));
                let mut watch = crate::idle::Watch::new(idle);
                let _ = std::future::poll_fn(|cx| {
                    if let Poll::Ready(done) = connection.as_mut().poll(cx) {
                        return Poll::Ready(done);
                    }
                    if watch.poll_idle(cx, &activity) {
                        // Graceful: a response in progress is finished first.
                        connection.as_mut().graceful_shutdown();
                        return connection.as_mut().poll(cx);
                    }
                    Poll::Pending
                })
                .await;
                metrics::gauge!("gns_gateway_active_connections", "listener" => listener)
                    .decrement(1.0);
            });
        }
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

    async fn ingress_connection(self: Arc<Self>, tcp: TcpStream) -> Result<(), IngressEnd> {
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
        crate::ingress::serve(tls, |req, respond| gw.ingress_stream(req, respond, peer))
            .await
            .map_err(IngressEnd::Http2)
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    fn egress(
        &self,
        req: Request<Incoming>,
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
    fn egress_http(
        &self,
        req: Request<Incoming>,
        entry: Entry,
        client: std::net::IpAddr,
    ) -> impl Future<Output = Response<Body>> + '_ {
        async move {
            match entry {
                Entry::Egress => &self.counters.egress_requests,
                Entry::Public => &self.counters.public_requests,
            }
            .fetch_add(1, Ordering::Relaxed);
            let routes = self.routes.load_full();
            let Some(route) = routes.route(host_in(req.headers(), req.uri())) else {
                let host = host_in(req.headers(), req.uri());
                return reply(
                    StatusCode::NOT_FOUND,
                    &format!("no global service {host:?}"),
                );
            };
            if entry == Entry::Public && !route.config.external {
                self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
                let host = host_in(req.headers(), req.uri());
                return reply(
                    StatusCode::FORBIDDEN,
                    &format!("{host} is not reachable from outside the clusters (access policy)"),
                );
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
                        Err(refusal) => return reply(StatusCode::FORBIDDEN, &refusal),
                    }
                }
                Entry::Public => (Some(HeaderValue::from_static("external")), &[][..]),
            };
            if crate::upgrade::is_upgrade(req.headers()) {
                return Box::pin(self.upgrade(req, &routes, &route, caller, callers)).await;
            }
            let (mut parts, body) = req.into_parts();
            name_caller(&mut parts.headers, caller);
            // Holds its share of the buffer budget until every try is made.
            let buffered = if hyper::body::Body::is_end_stream(&body) {
                crate::budget::Buffered::empty(&self.buffers)
            } else {
                match Box::pin(crate::budget::read_body(body, MAX_BODY, &self.buffers)).await {
                    Ok(buffered) => buffered,
                    Err(e) => {
                        tracing::debug!(error = %e, "request body refused");
                        return refuse_body(&e);
                    }
                }
            };
            let body = buffered.bytes().clone();
            let request_bytes = body.len() as u64;
            let request = crate::route::RequestFacts {
                method: Some(&parts.method),
                path: Some(parts.uri.path()),
                headers: &parts.headers,
                callers,
            };
            let plan = routes.plan(&route, &request, fastrand::u64(..));
            if plan.is_empty() {
                let host = host_in(&parts.headers, &parts.uri);
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{host}: no cluster has ready endpoints"),
                );
            }
            let timeout = route.config.timeout().unwrap_or(DEFAULT_TIMEOUT);
            let started = std::time::Instant::now();
            let (resp, cluster) =
                // Boxed: the tries are moved once, not with every wrapper.
                match tokio::time::timeout(timeout, Box::pin(self.try_plan(&route, &plan, &parts, body)))
                    .await
                {
                    Ok(done) => done,
                    Err(_) => (
                        reply(StatusCode::GATEWAY_TIMEOUT, "timed out"),
                        plan.first().map_or("", |t| t.cluster),
                    ),
                };
            // Every try is done: the body's budget is given back.
            drop(buffered);
            let response_bytes = route.metrics.record(
                entry,
                cluster,
                resp.status().as_u16(),
                started.elapsed(),
                request_bytes,
            );
            count_response(resp, response_bytes)
        }
    }

    async fn try_plan<'p>(
        &self,
        route: &Route,
        plan: &[crate::route::Target<'p>],
        parts: &http::request::Parts,
        body: Bytes,
    ) -> (Response<Body>, &'p str) {
        let retry = route.config.retries.as_ref();
        // Connect failures move on through the plan (and round it again only
        // with `connect-failure`); 5xx only with a retry policy.
        let budget = retry.map_or(plan.len(), |r| r.attempts.max(1) as usize);
        let per_try = retry
            .and_then(|r| r.per_try_timeout_ms)
            .map(Duration::from_millis);
        // Made only when a try fails: most requests need no error answer.
        let mut last = None;
        let mut last_cluster = "";
        for (n, &target) in plan.iter().cycle().take(budget.max(1)).enumerate() {
            let cluster = target.cluster;
            last_cluster = cluster;
            if n > 0 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let attempt = async {
                if cluster == self.cluster {
                    self.send_local(route, clone_parts(parts), body.clone(), target.subset)
                        .await
                } else {
                    self.send_peer(cluster, parts, body.clone(), target.subset)
                        .await
                }
            };
            let outcome = match per_try {
                // Boxed: the try is held once in the request's future, not twice.
                Some(t) => Box::pin(tokio::time::timeout(t, attempt))
                    .await
                    .unwrap_or_else(|_| Err(TryError::Timeout("per-try timeout".into()))),
                None => attempt.await,
            };
            use crate::retry::{Failure, again};
            let method = &parts.method;
            match outcome {
                Ok(resp)
                    if n + 1 < budget
                        && again(retry, method, Failure::Status(resp.status().as_u16())) =>
                {
                    last = Some(resp);
                }
                Ok(resp) => return (resp, cluster),
                // Nothing was sent: move on, whatever the method.
                Err(TryError::Connect(e)) => {
                    tracing::debug!(cluster, error = %e, "try failed to connect");
                    let answer = reply(StatusCode::BAD_GATEWAY, &format!("{cluster}: {e}"));
                    if !crate::retry::again_after_connect_failure(retry, n + 1 >= plan.len()) {
                        return (answer, cluster);
                    }
                    last = Some(answer);
                }
                Err(TryError::Reset(e)) => {
                    let answer = reply(StatusCode::BAD_GATEWAY, &format!("{cluster}: {e}"));
                    if !again(retry, method, Failure::Reset) {
                        return (answer, cluster);
                    }
                    last = Some(answer);
                }
                Err(TryError::Timeout(e)) => {
                    let answer = reply(StatusCode::GATEWAY_TIMEOUT, &format!("{cluster}: {e}"));
                    if !again(retry, method, Failure::Timeout) {
                        return (answer, cluster);
                    }
                    last = Some(answer);
                }
            }
        }
        let last = last.unwrap_or_else(|| reply(StatusCode::BAD_GATEWAY, "no try was made"));
        (last, last_cluster)
    }

    /// One stream from a peer gateway: a CONNECT tunnel or a request.
    ///
    /// The per-request steps here are plain functions returning futures
    /// rather than `async fn`s: an `async fn` keeps its arguments twice in its
    /// future (as captured and as moved into the body), and these futures are
    /// moved and allocated per request. This one holds only the chosen work.
    fn ingress_stream<'a>(
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
            Either::Right(crate::ingress::respond(
                respond,
                Box::pin(self.ingress(req, peer)),
            ))
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    fn ingress<'a>(
        &'a self,
        req: Request<h2::RecvStream>,
        peer: &'a str,
    ) -> impl Future<Output = Response<Body>> + 'a {
        async move {
            let host = host_in(req.headers(), req.uri());
            let Some(route) = self.routes.load().route(host) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    &format!("no global service {host:?}"),
                );
            };
            if let Some(refusal) = self.peer_refusal(&route, peer, req.headers(), host) {
                return refusal;
            }
            let subset = subset_named(req.headers()).map(str::to_owned);
            let (parts, body) = req.into_parts();
            // Buffered, so a connect failure can move on to another
            // endpoint; holds its share of the buffer budget until then.
            let buffered = match crate::ingress::read_body(body, MAX_BODY, &self.buffers).await {
                Ok(buffered) => buffered,
                Err(e) => {
                    tracing::debug!(peer, error = %e, "request body refused");
                    return refuse_body(&e);
                }
            };
            let sent = self
                .send_local(&route, parts, buffered.bytes().clone(), subset.as_deref())
                .await;
            drop(buffered);
            match sent {
                Ok(resp) => resp,
                Err(TryError::Connect(e) | TryError::Reset(e) | TryError::Timeout(e)) => {
                    reply(StatusCode::BAD_GATEWAY, &format!("{}: {e}", self.cluster))
                }
            }
        }
    }

    /// Sends to a ready local endpoint, skipping ejected ones; on a connect
    /// failure tries up to [`LOCAL_CONNECT_TRIES`] endpoints.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    fn send_local<'a>(
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
            // Between gateways only: the endpoint never sees it.
            parts.headers.remove(SUBSET_HEADER);
            let port = route
                .config
                .http_port
                .get(&self.cluster)
                .copied()
                .ok_or_else(|| TryError::Connect("no HTTP port".into()))?;
            let h2c = route.config.h2c.contains(&self.cluster);
            // Origin form (RFC 9112 §3.2.1): endpoints are origin servers, not proxies.
            let target_uri = origin_form(&parts.uri);
            // From a peer (HTTP/2) the host is the URI's authority: keep it as Host.
            if !parts.headers.contains_key(header::HOST)
                && let Some(authority) = parts.uri.authority()
                && let Ok(value) = HeaderValue::from_str(authority.as_str())
            {
                parts.headers.insert(header::HOST, value);
            }
            if h2c {
                return self
                    .send_local_h2c(route, parts, body, endpoints, port)
                    .await;
            }
            let mut last = None;
            // The endpoints tried so far (no allocation per request).
            let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); LOCAL_CONNECT_TRIES];
            let attempts = LOCAL_CONNECT_TRIES.min(endpoints.len());
            for attempt in 0..attempts {
                let target = self.outliers.pick(endpoints, port, &tried[..attempt]);
                tried[attempt] = target;
                self.counters.local_tries.fetch_add(1, Ordering::Relaxed);
                let final_try = attempt + 1 == attempts;
                let sent = {
                    // The last try takes the parts; earlier ones copy them.
                    let mut request = if final_try {
                        let (taken, ()) = Request::new(()).into_parts();
                        Request::from_parts(
                            std::mem::replace(&mut parts, taken),
                            full(body.clone()),
                        )
                    } else {
                        rebuild(&parts, body.clone())
                    };
                    *request.uri_mut() = target_uri.clone();
                    *request.version_mut() = http::Version::HTTP_11;
                    let parts = &parts;
                    let body = &body;
                    let target_uri = &target_uri;
                    let again =
                        move || (!final_try).then(|| local_request(parts, body, target_uri));
                    self.shard().local.send(target, request, again)
                }
                .await;
                match self.settle_local(route, target, endpoints, sent) {
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
    fn settle_local(
        &self,
        route: &Route,
        target: SocketAddr,
        endpoints: &[std::net::IpAddr],
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
    async fn send_local_h2c(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Bytes,
        endpoints: &[std::net::IpAddr],
        port: u16,
    ) -> Result<Response<Body>, TryError> {
        let authority = parts
            .headers
            .remove(header::HOST)
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
        let mut last = None;
        let mut tried = [SocketAddr::from(([0, 0, 0, 0], 0)); LOCAL_CONNECT_TRIES];
        let attempts = LOCAL_CONNECT_TRIES.min(endpoints.len());
        for attempt in 0..attempts {
            let target = self.outliers.pick(endpoints, port, &tried[..attempt]);
            tried[attempt] = target;
            self.counters.local_tries.fetch_add(1, Ordering::Relaxed);
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(authority.clone().unwrap_or_else(|| {
                http::uri::Authority::try_from(target.to_string().as_str())
                    .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"))
            }));
            uri.path_and_query = parts.uri.path_and_query().cloned();
            let mut request = rebuild(&parts, body.clone());
            *request.uri_mut() =
                Uri::from_parts(uri).map_err(|e| TryError::Reset(e.to_string()))?;
            *request.version_mut() = http::Version::HTTP_2;
            let sent = self.shard().h2c.send(target, request).await;
            match self.settle_local(route, target, endpoints, sent) {
                Ok(resp) => return Ok(resp),
                Err(e @ TryError::Connect(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| TryError::Connect("no endpoint tried".into())))
    }

    /// One try at `peer`: the request goes out on the pooled connection; if
    /// that connection turns out to be gone before anything was sent, once
    /// more on a new one.
    async fn send_peer(
        &self,
        peer: &str,
        parts: &http::request::Parts,
        body: Bytes,
        subset: Option<&str>,
    ) -> Result<Response<Body>, TryError> {
        use crate::peer::PeerError;
        self.counters.peer_tries.fetch_add(1, Ordering::Relaxed);
        let as_try = |e: PeerError| match e {
            PeerError::NotSent(e) => TryError::Connect(format!("{peer}: {e}")),
            PeerError::Failed(e) => TryError::Reset(format!("{peer}: {e}")),
        };
        let pooled = self.shard().peers.get(peer);
        let reused = pooled.is_some();
        let connection = match pooled {
            Some(connection) => connection,
            // Boxed: the cold path stays out of every request's future.
            None => Box::pin(self.connect_peer(peer)).await?,
        };
        match connection
            .send(peer_head(parts, subset)?, body.clone())
            .await
        {
            Err(PeerError::NotSent(e)) => {
                self.shard().peers.remove(peer);
                if !reused {
                    return Err(as_try(PeerError::NotSent(e)));
                }
                // The pooled connection had gone away: once more on a new one.
                let connection = Box::pin(self.connect_peer(peer)).await?;
                connection
                    .send(peer_head(parts, subset)?, body)
                    .await
                    .map_err(as_try)
            }
            outcome => outcome.map_err(as_try),
        }
    }

    /// The pooled connection to `peer`, made when missing or closed.
    async fn peer_connection(&self, peer: &str) -> Result<crate::peer::PeerConnection, TryError> {
        match self.shard().peers.get(peer) {
            Some(connection) => Ok(connection),
            None => self.connect_peer(peer).await,
        }
    }

    /// A new connection to `peer`, pooled for the requests after this one.
    async fn connect_peer(&self, peer: &str) -> Result<crate::peer::PeerConnection, TryError> {
        let identity = self
            .identity
            .load_full()
            .ok_or_else(|| TryError::Connect("no certificate yet".into()))?;
        let address = self
            .config
            .load()
            .as_ref()
            .and_then(|c| c.gateways.get(peer).map(|g| g.ingress_address))
            .ok_or_else(|| TryError::Connect(format!("no gateway known for {peer}")))?;
        let tls = peer_config(&identity, peer).map_err(|e| TryError::Connect(e.to_string()))?;
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            crate::peer::PeerConnection::connect(address, Arc::new(tls), peer),
        )
        .await
        .map_err(|_| TryError::Connect(format!("{peer}: connect timed out")))?
        .map_err(TryError::Connect)?;
        self.shard().peers.put(peer, connection.clone());
        Ok(connection)
    }
}

/// The head of a request to a peer gateway: the client's method, headers
/// and path, with its host as the HTTP/2 authority.
fn peer_head(parts: &http::request::Parts, subset: Option<&str>) -> Result<Request<()>, TryError> {
    let bad_target = |e: http::Error| TryError::Connect(format!("bad request target: {e}"));
    let authority = match parts.headers.get(header::HOST) {
        Some(host) => {
            http::uri::Authority::try_from(host.as_bytes()).map_err(|e| bad_target(e.into()))?
        }
        None => parts
            .uri
            .authority()
            .cloned()
            .unwrap_or_else(|| http::uri::Authority::from_static("unknown")),
    };
    // From parts: the path is shared with the request, not parsed again.
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTPS);
    target.authority = Some(authority);
    target.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = Uri::from_parts(target).map_err(|e| bad_target(e.into()))?;
    *head.version_mut() = http::Version::HTTP_2;
    *head.headers_mut() = parts.headers.clone();
    name_subset(head.headers_mut(), subset);
    Ok(head)
}

/// Names the subset a request to a peer is for ([`SUBSET_HEADER`]).
fn name_subset(headers: &mut http::HeaderMap, subset: Option<&str>) {
    if let Some(value) = subset.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(SUBSET_HEADER, value);
    }
}

/// The subset a peer named ([`SUBSET_HEADER`]).
fn subset_named(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(SUBSET_HEADER).and_then(|v| v.to_str().ok())
}

/// Replaces whatever caller a client named with `caller`.
fn name_caller(headers: &mut http::HeaderMap, caller: Option<HeaderValue>) {
    headers.remove(&CALLER_HEADER);
    // Only gateways name subsets to each other, never a client.
    headers.remove(&SUBSET_HEADER);
    if let Some(value) = caller {
        headers.insert(CALLER_HEADER, value);
    }
}

/// The callers a peer gateway named ([`CALLER_HEADER`]).
fn callers_named(headers: &http::HeaderMap) -> Vec<&str> {
    headers
        .get(&CALLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Why callers `callers` were refused `host`, for the answer and the log.
fn denied_caller<S: AsRef<str>>(callers: &[S], host: &str) -> String {
    if callers.is_empty() {
        return format!(
            "{host}: callers that are no service's endpoint may not call it (access policy)"
        );
    }
    let names: Vec<&str> = callers.iter().map(AsRef::as_ref).collect();
    format!("{} may not call {host} (access policy)", names.join(", "))
}

/// Counts a response's body bytes: at once when its length is known, else
/// frame by frame as it streams to the client.
fn count_response(resp: Response<Body>, bytes: crate::metrics::ResponseBytes) -> Response<Body> {
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

/// Copies both ways between `a` and `b` until both ends are done; the bytes
/// each way (a → b, b → a).
async fn pipe<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, TCP_BUFFER, TCP_BUFFER).await
}

/// Counts the bytes a TCP connection carried each way (when it ended cleanly).
fn count_tcp(route: &Route, cluster: &str, copied: std::io::Result<(u64, u64)>) {
    let Ok((sent, received)) = copied else {
        return;
    };
    let service = format!("{}.{}", route.config.service, route.config.gns);
    metrics::counter!(
        "gns_gateway_tcp_bytes_total",
        "service" => service.clone(),
        "cluster" => cluster.to_owned(),
        "direction" => "sent"
    )
    .increment(sent);
    metrics::counter!(
        "gns_gateway_tcp_bytes_total",
        "service" => service,
        "cluster" => cluster.to_owned(),
        "direction" => "received"
    )
    .increment(received);
}

/// How an ingress connection ended without being served to its end.
#[derive(Debug, thiserror::Error)]
enum IngressEnd {
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
    /// The `reason` label of `gns_gateway_mtls_handshake_failures_total`;
    /// `None` for a connection that was accepted (not a refusal).
    fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            IngressEnd::HandshakeTimeout => Some("timeout"),
            IngressEnd::Handshake(_) => Some("handshake"),
            IngressEnd::NotAGateway(_) => Some("identity"),
            IngressEnd::NoCertificate => Some("no-certificate"),
            IngressEnd::Http2(_) => None,
        }
    }
}

/// The TLS server name a client sends first, read without consuming it
/// (`None` if it is not TLS, names nothing, or says nothing within 3 s).
async fn server_name(client: &TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let n = tokio::time::timeout_at(deadline, client.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        match crate::sni::peek(&buf[..n]) {
            crate::sni::Peek::Hello(name) => return name,
            crate::sni::Peek::NotTls => return None,
            crate::sni::Peek::Incomplete if n == 0 || n == buf.len() => return None,
            crate::sni::Peek::Incomplete => {
                // peek returns what is buffered now; wait a little for more.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// The host a request is for: its `Host` header, else its URI's authority
/// (HTTP/2), else empty.
fn host_in<'a>(headers: &'a http::HeaderMap, uri: &'a Uri) -> &'a str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

/// A copy of a request for a local endpoint (HTTP/1.1, target `uri`).
fn local_request(parts: &http::request::Parts, body: &Bytes, uri: &Uri) -> Request<Body> {
    let mut request = rebuild(parts, body.clone());
    *request.uri_mut() = uri.clone();
    *request.version_mut() = http::Version::HTTP_11;
    request
}

/// `uri` as an origin-form request target: its path and query only.
fn origin_form(uri: &Uri) -> Uri {
    let mut origin = http::uri::Parts::default();
    origin.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(origin).unwrap_or_else(|_| Uri::from_static("/"))
}

/// A copy of request parts (method, URI, version, headers; not extensions).
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// A fresh request from buffered parts and body (for each try).
fn rebuild(parts: &http::request::Parts, body: Bytes) -> Request<Body> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_labelled_by_kind_and_served_connections_are_not_refusals() {
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
        assert_eq!(
            IngressEnd::NotAGateway("spiffe://acme.test/ns/shop/sa/web".into()).to_string(),
            "the peer is not a gateway of this trust domain (its certificate names spiffe://acme.test/ns/shop/sa/web)"
        );
    }
}
