//! `gns-gateway`: the gateway of one member cluster. See `gns-gateway --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use gns_gateway::Gateway;
use gns_gateway::follow::{Follower, JoinCredential};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The gateway of one member cluster of a GNS federation.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Federation API base URL.
    #[arg(long, env = "GNS_FEDERATION")]
    federation: String,
    /// PEM roots that verify the federation's certificate (the federation
    /// writes them to <data-dir>/ca.pem) [default: the system's roots].
    #[arg(long, env = "GNS_FEDERATION_CA")]
    federation_ca: Option<PathBuf>,
    /// This gateway's cluster (as registered in the federation).
    #[arg(long, env = "GNS_CLUSTER")]
    cluster: String,
    /// One-time join token (needed only until a certificate is in --state-dir).
    #[arg(long, env = "GNS_JOIN_TOKEN")]
    join_token: Option<String>,
    /// File with a Kubernetes service-account token for audience
    /// gns-federation (a projected token), read whenever the gateway has no
    /// certificate: every replica joins with it, a restarted pod rejoins.
    /// Used instead of --join-token when both are given.
    #[arg(long, env = "GNS_SERVICE_ACCOUNT_TOKEN")]
    service_account_token: Option<PathBuf>,
    /// Where in-cluster clients send plain HTTP for global names.
    #[arg(long, env = "GNS_EGRESS_LISTEN", default_value = "127.0.0.1:15001")]
    egress_listen: SocketAddr,
    /// Where peer gateways connect with mutual TLS.
    #[arg(long, env = "GNS_INGRESS_LISTEN", default_value = "127.0.0.1:15443")]
    ingress_listen: SocketAddr,
    /// Optional north-south entry for clients outside every cluster (HTTP by
    /// Host; they have the identity `external` in access policies).
    #[arg(long, env = "GNS_PUBLIC_LISTEN")]
    public_listen: Option<SocketAddr>,
    /// `/healthz`, `/readyz`, `/metrics`.
    #[arg(long, env = "GNS_ADMIN_LISTEN", default_value = "127.0.0.1:15021")]
    admin_listen: SocketAddr,
    /// Certificate, key, trust bundle and last config.
    #[arg(long, env = "GNS_STATE_DIR", default_value = "./gns-gateway-state")]
    state_dir: PathBuf,
    /// How often the trust bundle is fetched again (a root rotation reaches the gateway within this).
    #[arg(long, env = "GNS_TRUST_BUNDLE_REFRESH", default_value = "15s", value_parser = humantime::parse_duration)]
    trust_bundle_refresh: std::time::Duration,
    /// Client connections (egress, public entry) on which no request has
    /// started for this long are closed, gracefully; `0s`: never.
    #[arg(long, env = "GNS_CLIENT_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    client_idle_timeout: std::time::Duration,
    /// Data-path worker threads, each with its own runtime, listeners
    /// (`SO_REUSEPORT`) and connection pools (default: one per core).
    #[arg(long, env = "GNS_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Request-body bytes all requests together may keep for retries (a
    /// body is kept only when the route may retry the request after
    /// sending it, its length is declared and at most 32 MiB; every other
    /// body streams), shared by every worker: `64MiB`, `512KiB`, `1GiB` or
    /// plain bytes. A body arriving when it is spent streams instead, and
    /// its request is not retried.
    #[arg(long, env = "GNS_BUFFER_BUDGET", default_value = "64MiB", value_parser = gns_gateway::budget::parse_size)]
    buffer_budget: usize,
    /// OTLP/HTTP collector to export a span per request and hop to (its
    /// `/v1/traces`, protobuf), e.g. `http://otel-collector:4318`. Without
    /// it, W3C `traceparent` still propagates and nothing is exported.
    #[arg(long, env = "GNS_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1 (a caller's `traceparent`
    /// decides for the traces it starts).
    #[arg(long, env = "GNS_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = gns_otlp::parse_ratio)]
    otlp_sample_ratio: f64,
    /// This instance's name in the cluster's status (the pod's name; the
    /// rollout sets it): lowercase letters, digits, `-` and `.`. Default:
    /// the host name.
    #[arg(long, env = "GNS_INSTANCE")]
    instance: Option<String>,
    /// A client (egress, public entry) must send a request's header within
    /// this, from a new connection's start or from the first byte of a
    /// later request; slow or stalled clients are closed (between requests
    /// --client-idle-timeout applies). The admin listener reads within it too.
    #[arg(long, env = "GNS_HEADER_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    header_read_timeout: std::time::Duration,
    /// Connections each listener (egress, public, ingress, TCP ports) serves
    /// at once, per worker; more wait to be accepted.
    #[arg(long, env = "GNS_MAX_CONNECTIONS", default_value_t = gns_gateway::proxy::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// How often the gateway reports itself and its traffic to the federation.
    #[arg(long, env = "GNS_REPORT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    report_interval: std::time::Duration,
}

/// The instance name: `--instance`, else the host name, checked.
fn instance_name(given: Option<&str>) -> anyhow::Result<String> {
    let name = match given {
        Some(name) => name.to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .context("no --instance and no host name to default to")?
            .trim()
            .to_ascii_lowercase(),
    };
    if !gns_gateway::report::valid_instance_name(&name) {
        anyhow::bail!(
            "--instance {name:?}: use {}",
            gns_gateway::report::INSTANCE_NAME_RULE
        );
    }
    Ok(name)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.report_interval < std::time::Duration::from_millis(100) {
        anyhow::bail!("--report-interval must be at least 100ms");
    }
    // Control (config, certificates, admin) runs on this thread; each data
    // path worker runs its own current-thread runtime on a thread of its own.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(run(args))
}

/// The listening sockets of one data-path worker.
struct WorkerListeners {
    egress: std::net::TcpListener,
    ingress: std::net::TcpListener,
    public: Option<std::net::TcpListener>,
}

/// Binds `address` for `workers` workers: the first socket picks the port
/// (when `address` says 0), the others share it with `SO_REUSEPORT`.
fn bind_for_workers(
    address: SocketAddr,
    workers: usize,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let shared = workers > 1;
    let first = gns_gateway::listen::bind(address, shared)
        .with_context(|| format!("cannot listen on {address}"))?;
    let address = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(
            gns_gateway::listen::bind(address, shared)
                .with_context(|| format!("cannot listen on {address}"))?,
        );
    }
    Ok(sockets)
}

/// One data-path worker: its own runtime, its listeners, its pools.
fn run_worker(
    index: usize,
    gateway: Arc<Gateway>,
    listeners: WorkerListeners,
    (tcp_ip, reserved): (std::net::IpAddr, Vec<u16>),
    shared: bool,
) -> anyhow::Result<()> {
    gns_gateway::proxy::enter_worker(index);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("worker runtime")?;
    runtime.block_on(async move {
        let egress = TcpListener::from_std(listeners.egress)?;
        let ingress = TcpListener::from_std(listeners.ingress)?;
        // TCP passthrough: the egress address, on every TCP port the config routes.
        tokio::spawn(Arc::clone(&gateway).serve_tcp(tcp_ip, shared, reserved));
        tokio::spawn(Arc::clone(&gateway).serve_egress(egress));
        tokio::spawn(Arc::clone(&gateway).serve_ingress(ingress));
        if let Some(public) = listeners.public {
            tokio::spawn(Arc::clone(&gateway).serve_public(TcpListener::from_std(public)?));
        }
        std::future::pending::<anyhow::Result<()>>().await
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_ansi(colour())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GNS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )
        .context("metric buckets")?
        .install_recorder()
        .context("metrics recorder")?;
    gns_gateway::exported::describe();
    // Histogram samples are kept until upkeep folds them into buckets; without
    // it they pile up between scrapes (or forever when nobody scrapes).
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let workers = args
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let gateway = Gateway::with_workers(&args.cluster, workers);
    gateway.set_client_idle_timeout(Some(args.client_idle_timeout));
    gateway.set_buffer_budget(args.buffer_budget);
    if let Some(endpoint) = &args.otlp_endpoint {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .context("OTLP client")?;
        let exporter =
            gns_otlp::Exporter::spawn(endpoint, "gns-gateway", args.otlp_sample_ratio, client)?;
        gateway.set_tracer(exporter);
    }
    gateway.set_header_read_timeout(args.header_read_timeout);
    gateway.set_max_connections(args.max_connections);
    let instance = instance_name(args.instance.as_deref())?;
    let follower = Follower::new(
        &args.federation,
        &args.cluster,
        &args.state_dir,
        args.federation_ca.as_deref(),
    )?
    .with_bundle_refresh(args.trust_bundle_refresh)
    .with_service_account_token(args.service_account_token.clone());
    follower.restore(&gateway);
    let (identity, api_token) = follower
        .identity(
            args.service_account_token
                .clone()
                .map(JoinCredential::ServiceAccountToken)
                .or_else(|| args.join_token.clone().map(JoinCredential::JoinToken))
                .as_ref(),
        )
        .await
        .context("gateway identity")?;
    gateway
        .set_identity(identity)
        .await
        .context("TLS configuration")?;
    // Every socket is bound before any worker starts, so a taken port is an
    // error at start.
    let mut egress = bind_for_workers(args.egress_listen, workers)?;
    let mut ingress = bind_for_workers(args.ingress_listen, workers)?;
    let mut public = match args.public_listen {
        Some(address) => bind_for_workers(address, workers)?,
        None => Vec::new(),
    };
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    tracing::info!(
        cluster = args.cluster,
        instance,
        egress = %egress[0].local_addr()?,
        ingress = %ingress[0].local_addr()?,
        admin = %admin.local_addr()?,
        workers,
        buffer_budget = args.buffer_budget,
        "gns-gateway listening"
    );
    if let Some(first) = public.first() {
        tracing::info!(public = %first.local_addr()?, "public entry listening");
    }
    let tcp_ip = args.egress_listen.ip();
    // The gateway's own ports: no service port takes them.
    let reserved: Vec<u16> = [args.egress_listen, args.ingress_listen, args.admin_listen]
        .into_iter()
        .chain(args.public_listen)
        .map(|a| a.port())
        .collect();
    for index in (0..workers).rev() {
        let (Some(egress), Some(ingress)) = (egress.pop(), ingress.pop()) else {
            anyhow::bail!("worker {index} has no listener");
        };
        let listeners = WorkerListeners {
            egress,
            ingress,
            public: public.pop(),
        };
        let gateway = Arc::clone(&gateway);
        let own = (tcp_ip, reserved.clone());
        std::thread::Builder::new()
            .name(format!("gns-worker-{index}"))
            .spawn(move || {
                if let Err(e) = run_worker(index, gateway, listeners, own, workers > 1) {
                    tracing::error!(worker = index, error = %e, "data-path worker failed");
                    std::process::exit(1);
                }
            })
            .context("worker thread")?;
    }
    tokio::spawn(follower.clone().renew(Arc::clone(&gateway)));
    let reporter = follower.reporter(&instance, api_token.clone(), args.report_interval);
    tokio::spawn(gns_gateway::report::run(reporter, Arc::clone(&gateway)));
    tokio::spawn(follower.follow(Arc::clone(&gateway), api_token));
    tokio::spawn(serve_admin(
        admin,
        Arc::clone(&gateway),
        prometheus,
        args.header_read_timeout,
    ));
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// A minimal HTTP/1.0-style admin endpoint: health, readiness, counters.
async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    header_read_timeout: std::time::Duration,
) {
    // Probes and scrapes: a few at a time is plenty.
    let acceptor = gns_gateway::listen::Acceptor::new(listener, 64, "admin");
    loop {
        let (mut tcp, _, slot) = acceptor.accept().await;
        let gateway = Arc::clone(&gateway);
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut buf = [0u8; 1024];
            let Ok(read) = tokio::time::timeout(header_read_timeout, tcp.read(&mut buf)).await
            else {
                return;
            };
            let n = read.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_owned()),
                "/readyz" if gateway.is_ready() => ("200 OK", "ready\n".to_owned()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "no config or certificate yet\n".to_owned(),
                ),
                "/metrics" => {
                    gns_gateway::exported::publish(&gateway);
                    ("200 OK", prometheus.render())
                }
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(response.as_bytes()).await;
        });
    }
}

/// Colours only for a terminal, and never with `NO_COLOR` set.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
