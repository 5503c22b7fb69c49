//! `gns-dns`: a DNS replica that follows a GNS federation. See `gns-dns --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{Parser, ValueEnum};
use gns_dns::follower::{self, FollowConfig, FollowStats};
use gns_dns::{DnsServer, ServerConfig};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Authoritative DNS replica of a GNS federation.
#[derive(Debug, Parser)]
#[command(name = "gns-dns", version)]
struct Args {
    /// Federation URL to follow.
    #[arg(long, env = "GNS_FEDERATION", default_value = "https://127.0.0.1:8080")]
    federation: String,
    /// PEM roots that verify the federation's certificate (the federation
    /// writes them to <data-dir>/ca.pem) [default: the system's roots].
    #[arg(long, env = "GNS_FEDERATION_CA")]
    federation_ca: Option<PathBuf>,
    /// How often the federation's trust bundle is fetched again (with
    /// --federation-ca): a root rotation's steps must be at least this far apart.
    #[arg(long, env = "GNS_TRUST_BUNDLE_REFRESH", default_value = "15s", value_parser = humantime::parse_duration)]
    trust_bundle_refresh: Duration,
    /// API token (viewer role is enough).
    #[arg(long, env = "GNS_TOKEN", hide_env_values = true)]
    token: String,
    /// DNS address (UDP and TCP).
    #[arg(long, env = "GNS_DNS_LISTEN", default_value = "127.0.0.1:5300")]
    listen: SocketAddr,
    /// Serve this cluster's view to every client.
    #[arg(long, env = "GNS_CLUSTER")]
    cluster: Option<String>,
    /// Where the last snapshot is kept, so a restart without the federation still answers.
    #[arg(long, env = "GNS_CACHE_DIR", default_value = "./gns-dns-cache")]
    cache_dir: PathBuf,
    /// Comma-separated CIDRs that may AXFR/IXFR.
    #[arg(long, env = "GNS_DNS_ALLOW_TRANSFER", value_delimiter = ',')]
    dns_allow_transfer: Vec<ipnet::IpNet>,
    /// Comma-separated CIDRs of resolvers whose EDNS Client Subnet option may
    /// choose the view (default none: the source address chooses).
    #[arg(long, env = "GNS_DNS_TRUSTED_RESOLVERS", value_delimiter = ',')]
    dns_trusted_resolvers: Vec<ipnet::IpNet>,
    /// Comma-separated addr:port of secondaries to NOTIFY on each change.
    #[arg(long, env = "GNS_DNS_NOTIFY", value_delimiter = ',')]
    dns_notify: Vec<SocketAddr>,
    /// /healthz, /readyz and /metrics.
    #[arg(long, env = "GNS_ADMIN_LISTEN", default_value = "127.0.0.1:8053")]
    admin_listen: SocketAddr,
    /// UDP worker threads (default: one per core).
    #[arg(long, env = "GNS_DNS_UDP_WORKERS")]
    udp_workers: Option<usize>,
    /// Log format.
    #[arg(long, env = "GNS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_env("GNS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(colour())
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A CA file that cannot be used stops the start, rather than every poll.
    if let Some(path) = &args.federation_ca {
        gns_trust::read_roots(path)?;
    }

    let mut config = ServerConfig::new(args.listen);
    if let Some(n) = args.udp_workers {
        config.udp_workers = n.max(1);
    }
    config.cluster_view = args.cluster.clone();
    config.allow_transfer = args.dns_allow_transfer.clone();
    config.trusted_resolvers = args.dns_trusted_resolvers.clone();
    config.notify = args.dns_notify.clone();
    let server = Arc::new(
        DnsServer::start(config)
            .await
            .with_context(|| format!("cannot serve DNS on {}", args.listen))?,
    );
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    tracing::info!(dns = %server.udp_addr, admin = %admin.local_addr()?, federation = %args.federation, "gns-dns listening");

    let stats = Arc::new(FollowStats::default());
    tokio::spawn(follower::follow(
        Arc::clone(&server),
        FollowConfig {
            federation: args.federation.clone(),
            federation_ca: args.federation_ca.clone(),
            token: args.token.clone(),
            cache_dir: args.cache_dir.clone(),
            poll_timeout: Duration::from_secs(30),
            bundle_refresh: args.trust_bundle_refresh,
        },
        Arc::clone(&stats),
    ));

    let ready_server = Arc::clone(&server);
    let metrics_server = Arc::clone(&server);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let s = Arc::clone(&ready_server);
                async move {
                    if s.is_loaded() {
                        (StatusCode::OK, format!("ready: snapshot {}", s.version()))
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "no snapshot loaded yet".to_owned())
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let s = Arc::clone(&metrics_server);
                let st = Arc::clone(&stats);
                async move {
                    format!(
                        "{}# TYPE gns_dns_follow_snapshots_total counter\ngns_dns_follow_snapshots_total {}\n\
                         # TYPE gns_dns_follow_errors_total counter\ngns_dns_follow_errors_total {}\n\
                         # TYPE gns_dns_trust_bundle_refusals_total counter\ngns_dns_trust_bundle_refusals_total {}\n\
                         # TYPE gns_dns_federation_roots gauge\ngns_dns_federation_roots {}\n",
                        s.metrics_text(),
                        st.received.load(Ordering::Relaxed),
                        st.errors.load(Ordering::Relaxed),
                        st.bundle_refusals.load(Ordering::Relaxed),
                        st.federation_roots.load(Ordering::Relaxed)
                    )
                }
            }),
        );
    axum::serve(admin, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Colours only for a terminal, and never with `NO_COLOR` set.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
