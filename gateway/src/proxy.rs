//! A gateway's shared state: its config and route table, its certificate,
//! the connection pools of each data-path worker, its settings and
//! counters; and what every role shares (the body type, the gateway's own
//! answers, why a try failed). The roles themselves live beside it:
//! [`crate::egress`], [`crate::ingress`], [`crate::tcp`],
//! [`crate::upgrade`], [`crate::local`], [`crate::remote`].

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{Uri, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::budget::BufferBudget;
use crate::config::GatewayConfig;
use crate::route::RouteTable;
use crate::tls::TlsIdentity;

/// Connecting to a peer gateway or an endpoint gives up after this.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client connection may go without a request before it is closed.
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
/// How long a client may take to send a request's header, by default: from
/// a new connection's start, or from the first byte of a later request.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections each listener serves at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Overall request timeout when the route sets none.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors carried in bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of everything the gateway sends.
pub type Body = BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
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
pub(crate) const LOCAL_CONNECT_TRIES: usize = 3;
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
pub(crate) fn accepted_counter(listener: &'static str) -> metrics::Counter {
    metrics::counter!(
        "gns_gateway_worker_connections_total",
        "listener" => listener,
        "worker" => WORKER.with(Cell::get).to_string()
    )
}

/// The connection pools of one worker thread.
pub(crate) struct Shard {
    pub(crate) peers: crate::peer::PeerPool,
    pub(crate) local: crate::pool::LocalPool,
    pub(crate) h2c: crate::h2c::H2cPool,
}

/// A running gateway's shared state.
pub struct Gateway {
    pub(crate) cluster: String,
    pub(crate) routes: ArcSwap<RouteTable>,
    pub(crate) config: ArcSwapOption<GatewayConfig>,
    pub(crate) identity: ArcSwapOption<TlsIdentity>,
    pub(crate) ingress_tls: ArcSwapOption<rustls::ServerConfig>,
    /// Connection pools, one per data-path worker thread.
    pub(crate) shards: Box<[Shard]>,
    pub(crate) outliers: crate::outlier::Outliers,
    /// Ports the egress must listen on besides its own, from the config:
    /// TCP ports and HTTP service ports ([`crate::route::RouteTable::listen_ports`]).
    pub(crate) listen_ports: tokio::sync::watch::Sender<std::collections::BTreeSet<u16>>,
    /// Client connections (egress, public entry) with no request for this
    /// many milliseconds are closed; 0: never.
    pub(crate) client_idle_ms: AtomicU64,
    /// A client must send a request's header within this many milliseconds.
    pub(crate) header_read_ms: AtomicU64,
    /// Most connections each listener serves at once.
    pub(crate) max_connections: std::sync::atomic::AtomicUsize,
    /// Request-body bytes buffered by every worker together, bounded.
    pub(crate) buffers: BufferBudget,
    /// Counters.
    pub counters: Counters,
    /// Traffic since the last report to the federation.
    pub(crate) traffic: Arc<crate::report::Traffic>,
    /// Where spans go (`--otlp-endpoint`), once set.
    pub(crate) tracer: std::sync::OnceLock<gns_otlp::Exporter>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
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
            listen_ports: tokio::sync::watch::Sender::new(std::collections::BTreeSet::new()),
            client_idle_ms: AtomicU64::new(DEFAULT_CLIENT_IDLE.as_millis() as u64),
            header_read_ms: AtomicU64::new(DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64),
            max_connections: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_CONNECTIONS),
            buffers: BufferBudget::default(),
            counters: Counters::default(),
            traffic: Arc::default(),
            tracer: std::sync::OnceLock::new(),
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

    pub(crate) fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_ms.load(Ordering::Relaxed))
    }

    /// Serves at most `cap` connections per listener at once (more wait to
    /// be accepted); applies to listeners started from then on.
    pub fn set_max_connections(&self, cap: usize) {
        self.max_connections.store(cap.max(1), Ordering::Relaxed);
    }

    pub(crate) fn max_connections(&self) -> usize {
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

    pub(crate) fn client_idle_timeout(&self) -> Option<Duration> {
        match self.client_idle_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The pools of the calling worker thread.
    pub(crate) fn shard(&self) -> &Shard {
        &self.shards[WORKER.with(Cell::get) % self.shards.len()]
    }

    /// Exports a span per request and hop to `exporter` (`--otlp-endpoint`);
    /// set once, at start. Without it the trace context still propagates.
    pub fn set_tracer(&self, exporter: gns_otlp::Exporter) {
        let _ = self.tracer.set(exporter);
    }

    /// The share of new traces sampled (0 without an exporter).
    pub(crate) fn trace_ratio(&self) -> f64 {
        self.tracer.get().map_or(0.0, gns_otlp::Exporter::ratio)
    }

    /// The span of one request this gateway served: `role` (egress,
    /// public, ingress) for `route` with `method`, served by `cluster` with
    /// `status` after `tries` tries.
    pub(crate) fn span(
        &self,
        context: gns_otlp::TraceContext,
        role: &str,
        (route, method): (&crate::route::Route, &http::Method),
        (cluster, status): (&str, u16),
        tries: u32,
        start: std::time::SystemTime,
    ) -> gns_otlp::Span {
        use gns_otlp::Value::{Int, Text};
        let service = format!("{}.{}", route.config.service, route.config.gns);
        gns_otlp::Span {
            context,
            name: format!("{role} {service}"),
            kind: gns_otlp::Kind::Server,
            start,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("gns.service", Text(service)),
                ("gns.role", Text(role.to_owned())),
                ("gns.gateway.cluster", Text(self.cluster.clone())),
                ("gns.destination.cluster", Text(cluster.to_owned())),
                ("http.request.method", Text(method.to_string())),
                ("http.response.status_code", Int(i64::from(status))),
                ("gns.tries", Int(i64::from(tries))),
            ],
            error: status >= 500,
        }
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
        let ports = table.listen_ports();
        // Routes first: a listener opened for a new port finds its role.
        self.routes.store(Arc::new(table));
        self.config.store(Some(Arc::new(config)));
        self.listen_ports.send_if_modified(|current| {
            let changed = *current != ports;
            *current = ports;
            changed
        });
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
}

/// The host a request is for: its `Host` header, else its URI's authority
/// (HTTP/2), else empty.
pub(crate) fn host_in<'a>(headers: &'a http::HeaderMap, uri: &'a Uri) -> &'a str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default()
}
