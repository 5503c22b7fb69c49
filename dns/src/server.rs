//! The DNS server: UDP workers (one `SO_REUSEPORT` socket and thread each,
//! answering from the current [`Prepared`] through `arc-swap`), TCP on tokio
//! (queries, AXFR/IXFR for allowed sources), and NOTIFY to secondaries on
//! every new serial. [`DnsServer::publish`] renders a snapshot (call it off
//! the async runtime) and swaps it in atomically.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::answer::{self, Transport};
use crate::prepared::Prepared;
use crate::snapshot::ZoneSnapshot;
use crate::stats::Stats;
use crate::transfer::{self, History};
use crate::wire;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UDP and TCP address.
    pub listen: SocketAddr,
    /// UDP worker threads.
    pub udp_workers: usize,
    /// Serve this cluster's view to every client (gns-dns `--cluster`).
    pub cluster_view: Option<String>,
    /// Sources that may AXFR/IXFR.
    pub allow_transfer: Vec<IpNet>,
    /// Secondaries to NOTIFY on every new serial.
    pub notify: Vec<SocketAddr>,
    /// Resolvers whose EDNS Client Subnet option may choose the view (a
    /// resolver forwarding for clients of a cluster); from any other source
    /// the option is ignored, so an outside client cannot ask for a
    /// cluster's internal view. Default: none.
    pub trusted_resolvers: Vec<IpNet>,
    /// Most DNS-over-TCP connections served at once; more wait to be
    /// accepted. Default 1,024.
    pub max_tcp_connections: usize,
}

impl ServerConfig {
    /// Whether `source` may choose the view with EDNS Client Subnet.
    fn trusts_client_subnet(&self, source: IpAddr) -> bool {
        self.trusted_resolvers
            .iter()
            .any(|net| net.contains(&source))
    }
}

impl ServerConfig {
    /// A config listening on `listen` with one UDP worker per core.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            udp_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cluster_view: None,
            allow_transfer: Vec::new(),
            notify: Vec::new(),
            trusted_resolvers: Vec::new(),
            max_tcp_connections: MAX_TCP_CONNECTIONS,
        }
    }
}

struct Shared {
    prepared: ArcSwap<Prepared>,
    loaded: AtomicBool,
    loaded_at_ms: AtomicU64,
    history: Mutex<History>,
    stats: Stats,
    stop: AtomicBool,
    config: ServerConfig,
    notify_wake: tokio::sync::Notify,
}

/// A running DNS server.
pub struct DnsServer {
    shared: Arc<Shared>,
    /// Bound UDP address.
    pub udp_addr: SocketAddr,
    /// Bound TCP address.
    pub tcp_addr: SocketAddr,
    workers: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_recv_buffer_size(4 << 20).ok();
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(socket)
}

/// How many ports the system picks, for `--dns-listen …:0`, before giving up
/// on finding one free for both UDP and TCP.
const PORT_PICKS: usize = 16;

/// The first UDP socket and the TCP listener, on one port: the one asked
/// for, or (port 0) one the system picks that is free for both. A port the
/// system gives UDP may be taken for TCP by someone else: then another is
/// picked.
async fn bind_udp_and_tcp(listen: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut picks = if listen.port() == 0 { PORT_PICKS } else { 1 };
    loop {
        let udp = reuseport_socket(listen)?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && picks > 1 => picks -= 1,
            Err(e) => return Err(e),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DnsServer {
    /// Binds UDP and TCP and starts serving an empty snapshot (every query REFUSED until one is published).
    /// Must be called inside a tokio runtime.
    pub async fn start(config: ServerConfig) -> std::io::Result<DnsServer> {
        let (first, tcp) = bind_udp_and_tcp(config.listen).await?;
        let udp_addr = first.local_addr()?;
        let tcp_addr = tcp.local_addr()?;
        let shared = Arc::new(Shared {
            prepared: ArcSwap::from_pointee(Prepared::default()),
            loaded: AtomicBool::new(false),
            loaded_at_ms: AtomicU64::new(0),
            history: Mutex::new(History::default()),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
            config: config.clone(),
            notify_wake: tokio::sync::Notify::new(),
        });
        let mut sockets = vec![first];
        for _ in 1..config.udp_workers.max(1) {
            sockets.push(reuseport_socket(udp_addr)?);
        }
        let workers = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("gns-dns-udp-{i}"))
                    .spawn(move || udp_worker(&shared, &socket))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut tasks = vec![tokio::spawn(tcp_acceptor(Arc::clone(&shared), tcp))];
        if !config.notify.is_empty() {
            tasks.push(tokio::spawn(notifier(Arc::clone(&shared))));
        }
        Ok(DnsServer {
            shared,
            udp_addr,
            tcp_addr,
            workers,
            tasks,
        })
    }

    /// Renders `snapshot` and makes it current. Blocking (rendering a large
    /// snapshot takes a while): call from `spawn_blocking`. Returns render problems.
    pub fn publish(&self, snapshot: Arc<ZoneSnapshot>) -> Vec<crate::prepared::RenderProblem> {
        publish(&self.shared, snapshot)
    }

    /// True once a snapshot was published.
    pub fn is_loaded(&self) -> bool {
        self.shared.loaded.load(Ordering::Acquire)
    }

    /// Version of the current snapshot.
    pub fn version(&self) -> u64 {
        self.shared.prepared.load().version
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ZoneSnapshot> {
        Arc::clone(&self.shared.prepared.load().snapshot)
    }

    /// Prometheus text: query counters, snapshot version and age.
    pub fn metrics_text(&self) -> String {
        let p = self.shared.prepared.load();
        let age = if self.is_loaded() {
            now_ms().saturating_sub(self.shared.loaded_at_ms.load(Ordering::Relaxed)) as f64
                / 1000.0
        } else {
            0.0
        };
        format!(
            "{}# TYPE gns_dns_snapshot_version gauge\ngns_dns_snapshot_version {}\n\
             # TYPE gns_dns_snapshot_age_seconds gauge\ngns_dns_snapshot_age_seconds {age:.3}\n\
             # TYPE gns_dns_prepared_answers gauge\ngns_dns_prepared_answers {}\n",
            self.shared.stats.render(),
            p.version,
            p.answer_count()
        )
    }

    /// Total queries answered so far.
    pub fn queries(&self) -> u64 {
        self.shared.stats.total()
    }

    /// Stops the workers and tasks.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn publish(shared: &Shared, snapshot: Arc<ZoneSnapshot>) -> Vec<crate::prepared::RenderProblem> {
    let previous = shared.prepared.load_full();
    let started = Instant::now();
    // Without sources allowed to transfer, no AXFR/IXFR is ever served:
    // neither the zones' transfer records nor the IXFR history are kept.
    let transfers = !shared.config.allow_transfer.is_empty();
    let next = Prepared::build_with(snapshot, Some(&previous), transfers);
    let problems = next.problems.clone();
    let changed_serial = next.version != previous.version;
    if transfers
        && let Ok(mut history) = shared.history.lock()
        && shared.loaded.load(Ordering::Acquire)
        && changed_serial
    {
        history.record(&previous, &next);
    }
    tracing::debug!(
        version = next.version,
        answers = next.answer_count(),
        took_ms = started.elapsed().as_millis() as u64,
        "dns snapshot rendered"
    );
    shared.prepared.store(Arc::new(next));
    shared.loaded.store(true, Ordering::Release);
    shared.loaded_at_ms.store(now_ms(), Ordering::Relaxed);
    if changed_serial {
        shared.notify_wake.notify_one();
    }
    problems
}

fn udp_worker(shared: &Shared, socket: &UdpSocket) {
    let mut buf = [0u8; 4096];
    let mut out = Vec::with_capacity(4096);
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                continue;
            }
        };
        let prepared = shared.prepared.load();
        let view = shared
            .config
            .cluster_view
            .as_deref()
            .and_then(|c| prepared.view_of_cluster(c));
        let outcome = answer::answer(
            &prepared,
            &buf[..n],
            answer::Client {
                source: src.ip(),
                trusted_subnet: shared.config.trusts_client_subnet(src.ip()),
                transport: Transport::Udp,
            },
            view,
            &mut out,
        );
        shared.stats.record(&outcome);
        if !out.is_empty()
            && let Err(e) = socket.send_to(&out, src)
        {
            tracing::debug!(error = %e, %src, "udp send failed");
        }
    }
}

/// [`ServerConfig::max_tcp_connections`]'s default.
const MAX_TCP_CONNECTIONS: usize = 1024;

async fn tcp_acceptor(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        shared.config.max_tcp_connections.max(1),
    ));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Err(e) = tcp_connection(&shared, stream, peer).await {
                        tracing::debug!(%peer, error = %e, "dns tcp connection ended");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "dns tcp accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

const TCP_IDLE: Duration = Duration::from_secs(10);

/// Writes one length-framed message; a client that does not read it within
/// [`TCP_IDLE`] is given up on.
async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::Error::other("message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    tokio::time::timeout(TCP_IDLE, stream.write_all(&framed))
        .await
        .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "client not reading"))?
}

fn transfer_allowed(shared: &Shared, peer: IpAddr) -> bool {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    shared
        .config
        .allow_transfer
        .iter()
        .any(|net| net.contains(&peer))
}

async fn tcp_connection(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "slow query"))??;
        let prepared = shared.prepared.load_full();
        let question = answer::parse_question(&query);
        let is_transfer = question.as_ref().is_some_and(|q| {
            matches!(q.qtype, wire::rtype::AXFR | wire::rtype::IXFR)
                && query.get(2).is_some_and(|f| f & 0x78 == 0)
        });
        if is_transfer {
            let messages = transfer_response(shared, &prepared, &query, peer.ip());
            for m in &messages {
                write_framed(&mut stream, m).await?;
            }
            continue;
        }
        let view = shared
            .config
            .cluster_view
            .as_deref()
            .and_then(|c| prepared.view_of_cluster(c));
        let client = answer::Client {
            source: peer.ip(),
            trusted_subnet: shared.config.trusts_client_subnet(peer.ip()),
            transport: Transport::Tcp,
        };
        let outcome = answer::answer(&prepared, &query, client, view, &mut out);
        shared.stats.record(&outcome);
        if out.is_empty() {
            return Ok(());
        }
        write_framed(&mut stream, &out).await?;
    }
}

/// AXFR/IXFR for allowed peers; REFUSED otherwise.
fn transfer_response(
    shared: &Shared,
    prepared: &Prepared,
    query: &[u8],
    peer: IpAddr,
) -> Vec<Vec<u8>> {
    let refuse = |code: u8| {
        let mut out = Vec::new();
        let outcome = answer::Outcome {
            qtype: wire::rtype::AXFR,
            rcode: code,
            truncated: false,
        };
        shared.stats.record(&outcome);
        if query.len() >= wire::HEADER_LEN {
            out.extend_from_slice(&query[0..2]);
            out.push(wire::FLAG_QR | (query[2] & wire::FLAG_RD));
            out.push(code);
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        }
        vec![out]
    };
    let Ok(msg) = Message::from_vec(query) else {
        return refuse(wire::rcode::FORMERR);
    };
    let Some(question) = msg.queries.first().cloned() else {
        return refuse(wire::rcode::FORMERR);
    };
    if !transfer_allowed(shared, peer) {
        tracing::info!(%peer, zone = %question.name(), "zone transfer refused: source not in --dns-allow-transfer");
        return refuse(wire::rcode::REFUSED);
    }
    let Some(wire_name) = wire::wire_name(&question.name().to_ascii()) else {
        return refuse(wire::rcode::FORMERR);
    };
    let zone = prepared.zones.iter().find(|z| z.wire == wire_name);
    let Some(zone) = zone else {
        return refuse(wire::rcode::NOTAUTH_OR_REFUSED);
    };
    let result = if question.query_type() == RecordType::IXFR {
        match transfer::ixfr_client_serial(&msg) {
            Some(serial) => match shared.history.lock() {
                Ok(history) => transfer::ixfr(msg.metadata.id, &question, zone, &history, serial),
                Err(_) => transfer::axfr(msg.metadata.id, &question, zone),
            },
            None => transfer::axfr(msg.metadata.id, &question, zone),
        }
    } else {
        transfer::axfr(msg.metadata.id, &question, zone)
    };
    shared.stats.record(&answer::Outcome {
        qtype: question.query_type().into(),
        rcode: 0,
        truncated: false,
    });
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "rendering a zone transfer failed");
        refuse(wire::rcode::SERVFAIL)
    })
}

/// Sends NOTIFY for every zone to every secondary whenever the serial changes,
/// retrying (1 s apart, 5 tries) until each answers.
async fn notifier(shared: Arc<Shared>) {
    let mut id: u16 = 1;
    // The SOA last announced per zone: only a zone whose serial changed is
    // announced again.
    let mut announced: std::collections::HashMap<String, Vec<u8>> =
        std::collections::HashMap::new();
    loop {
        shared.notify_wake.notified().await;
        let prepared = shared.prepared.load_full();
        announced.retain(|origin, _| prepared.zones.iter().any(|z| &z.origin == origin));
        for zone in &prepared.zones {
            let soa = transfer::zone_soa(zone);
            let serial = soa
                .as_ref()
                .map(|r| r.data.to_string().into_bytes())
                .unwrap_or_default();
            if announced.get(&zone.origin) == Some(&serial) {
                continue;
            }
            announced.insert(zone.origin.clone(), serial);
            for target in &shared.config.notify {
                id = id.wrapping_add(1);
                let Ok(message) = transfer::notify_message(id, &zone.origin, soa.as_ref()) else {
                    continue;
                };
                let target = *target;
                let origin = zone.origin.clone();
                tokio::spawn(async move {
                    if let Err(e) = send_notify(target, &message, id).await {
                        tracing::warn!(%target, zone = %origin, error = %e, "NOTIFY not acknowledged");
                    }
                });
            }
        }
    }
}

async fn send_notify(target: SocketAddr, message: &[u8], id: u16) -> std::io::Result<()> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(bind).await?;
    socket.connect(target).await?;
    let mut buf = [0u8; 512];
    for _ in 0..5 {
        socket.send(message).await?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
            && n >= 4
            && u16::from_be_bytes([buf[0], buf[1]]) == id
            && buf[2] & wire::FLAG_QR != 0
        {
            return Ok(());
        }
    }
    Err(std::io::Error::new(
        ErrorKind::TimedOut,
        "no answer after 5 tries",
    ))
}
