//! `gns-federation`: configuration (flags and `GNS_*` variables, as in the
//! interface contract), startup, and serving until a shutdown signal.
//!
//! [`build`] does everything that can fail (data dir, keys, store, binding)
//! and returns the bound address, so tests can bind port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;

use gns_dns::{DnsServer, ServerConfig};

use crate::api::{self, AppState, Authenticator};
use crate::model::Cidr;
use crate::snapshot::{self, CompileOptions, SnapshotReceiver};
use crate::store::{self, SecretBox, Store};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags and environment of `gns-federation`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "gns-federation",
    version,
    about = "GNS federation control plane: REST API, store, DNS"
)]
pub struct Config {
    /// REST API, /healthz, /readyz, /metrics and /openapi.json.
    #[arg(long, env = "GNS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// In-process authoritative DNS (UDP and TCP).
    #[arg(long, env = "GNS_DNS_LISTEN", default_value = "127.0.0.1:5353")]
    pub dns_listen: SocketAddr,
    /// Embedded store, generated keys and the bootstrap admin token.
    #[arg(long, env = "GNS_DATA_DIR", default_value = "./gns-data")]
    pub data_dir: PathBuf,
    /// A postgres:// URL selects Postgres; default is the embedded SQLite file in the data dir.
    #[arg(long, env = "GNS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Bootstrap admin token; if unset one is generated into <data-dir>/admin-token.
    #[arg(long, env = "GNS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Key that encrypts credentials at rest (base64 of 32 bytes); default <data-dir>/secret-key.
    #[arg(long, env = "GNS_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Log format.
    #[arg(long, env = "GNS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Comma-separated CIDRs that may AXFR/IXFR.
    #[arg(long, env = "GNS_DNS_ALLOW_TRANSFER", value_delimiter = ',')]
    pub dns_allow_transfer: Vec<Cidr>,
    /// Comma-separated CIDRs of resolvers whose EDNS Client Subnet option may
    /// choose the view (default none: the source address chooses).
    #[arg(long, env = "GNS_DNS_TRUSTED_RESOLVERS", value_delimiter = ',')]
    pub dns_trusted_resolvers: Vec<Cidr>,
    /// Comma-separated addr:port of secondaries to NOTIFY on each change.
    #[arg(long, env = "GNS_DNS_NOTIFY", value_delimiter = ',')]
    pub dns_notify: Vec<SocketAddr>,
    /// TTL of DNS answers that can change, seconds (1-30).
    #[arg(long, env = "GNS_DNS_ANSWER_TTL", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=30))]
    pub dns_answer_ttl: u32,
    /// DNS UDP worker threads (default: one per core).
    #[arg(long, env = "GNS_DNS_UDP_WORKERS")]
    pub dns_udp_workers: Option<usize>,
    /// SPIFFE trust domain of the federation's certificate authority.
    #[arg(long, env = "GNS_TRUST_DOMAIN", default_value = "gns.local")]
    pub trust_domain: String,
    /// Lifetime of gateway certificates (gateways renew at two thirds of it).
    #[arg(long, env = "GNS_GATEWAY_CERT_LIFETIME", default_value = "24h", value_parser = parse_lifetime)]
    pub gateway_cert_lifetime: std::time::Duration,
    /// URL at which gateways the federation deploys reach it (default: http:// + the --listen address).
    #[arg(long, env = "GNS_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// `ip:port` member clusters' CoreDNS forwards the GNS domains to (default: the --dns-listen address).
    #[arg(long, env = "GNS_ADVERTISE_DNS")]
    pub advertise_dns: Option<SocketAddr>,
    /// How long audit rows are kept (pruned in the background), from 1 hour to 100 years.
    #[arg(long, env = "GNS_AUDIT_RETENTION", default_value = "90d", value_parser = parse_retention)]
    pub audit_retention: std::time::Duration,
    /// A client must send a whole request header within this (slow or
    /// stalled clients are closed).
    #[arg(long, env = "GNS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: std::time::Duration,
    /// Most API connections served at once (more wait to be accepted).
    #[arg(long, env = "GNS_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A cluster whose gateways have reported before and all stayed silent
    /// this long leaves the external view and its peers' destinations
    /// until one reports again (1s to 1h).
    #[arg(long, env = "GNS_GATEWAY_TIMEOUT", default_value = "30s", value_parser = parse_gateway_timeout)]
    pub gateway_timeout: std::time::Duration,
}

/// A gateway timeout: a duration like `30s`, from 1 s to 1 h.
fn parse_gateway_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(3600) {
        return Err("must be between 1s and 1h".into());
    }
    Ok(d)
}

/// An audit retention: a duration like `90d` or `12h`, from 1 hour to 100 years.
fn parse_retention(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    let (min, max) = (
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(100 * 365 * 24 * 3600),
    );
    if d < min || d > max {
        return Err("must be between 1h and 100 years".into());
    }
    Ok(d)
}

/// How often audit rows past the retention are deleted.
const AUDIT_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes audit rows older than `retention`, now and every [`AUDIT_PRUNE_EVERY`].
async fn prune_audit(store: Arc<dyn store::Store>, retention: std::time::Duration) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let mut every = tokio::time::interval(AUDIT_PRUNE_EVERY);
    loop {
        every.tick().await;
        let before = crate::api::now_millis().saturating_sub(retention_ms);
        match store.prune_audit(before).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "audit rows past the retention deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
        }
    }
}

/// A certificate lifetime: a duration like `24h` or `90s`, from 5 s to 90 days.
fn parse_lifetime(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    let (min, max) = (
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(90 * 24 * 3600),
    );
    if d < min || d > max {
        return Err("must be between 5s and 90 days".into());
    }
    Ok(d)
}

/// Startup failures, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir can't be created or used.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The secret key is unusable.
    #[error(transparent)]
    SecretKey(#[from] store::CryptoError),
    /// The store can't be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The certificate authority can't be loaded or made.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The admin token file can't be read or written.
    #[error("admin token file {path}: {source}")]
    AdminToken {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The listen address can't be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// A built, bound federation, ready to [`Federation::serve`].
pub struct Federation {
    /// Address the API is bound to.
    pub api_addr: SocketAddr,
    /// Address the in-process DNS is bound to (UDP and TCP).
    pub dns_addr: SocketAddr,
    /// Compiled snapshots, newest first.
    pub snapshots: SnapshotReceiver,
    dns: Arc<DnsServer>,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Where the generated admin token was written, if it was.
    pub admin_token_file: Option<PathBuf>,
    /// The store.
    pub store: Arc<dyn Store>,
    listener: TcpListener,
    router: axum::Router,
    limits: crate::listener::Limits,
}

/// Reads or creates the bootstrap admin token; returns it and the file it is in (if generated).
fn admin_token(config: &Config) -> Result<(String, Option<PathBuf>), StartError> {
    if let Some(token) = config.admin_token.as_ref().filter(|t| !t.trim().is_empty()) {
        return Ok((token.trim().to_owned(), None));
    }
    let path = config.data_dir.join("admin-token");
    let err = |source| StartError::AdminToken {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok((text.trim().to_owned(), Some(path))),
        Ok(_) => Err(err(std::io::Error::other(
            "file is empty; delete it to have a new token generated",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = api::auth::generate_token()
                .map_err(|e| err(std::io::Error::other(e.to_string())))?;
            gns_files::write_private(&path, format!("{token}\n").as_bytes()).map_err(err)?;
            Ok((token, Some(path)))
        }
        Err(e) => Err(err(e)),
    }
}

/// Prepares everything and binds the listener.
pub async fn build(config: &Config) -> Result<Federation, StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let secrets = match &config.secret_key {
        Some(text) => SecretBox::from_base64(text)?,
        None => SecretBox::load_or_create(&config.data_dir)?,
    };
    let store = store::open(config.database_url.as_deref(), &config.data_dir, secrets).await?;
    let identity = Arc::new(
        crate::identity::Identity::load_or_create(store.as_ref(), &config.trust_domain)
            .await?
            .with_gateway_lifetime(config.gateway_cert_lifetime),
    );
    let (token, admin_token_file) = admin_token(config)?;
    let state = AppState::new(Arc::clone(&store), Authenticator::new(&token))
        .with_gateway_timeout(config.gateway_timeout);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let mut dns_config = ServerConfig::new(config.dns_listen);
    if let Some(workers) = config.dns_udp_workers {
        dns_config.udp_workers = workers.max(1);
    }
    dns_config.allow_transfer = config.dns_allow_transfer.iter().map(Cidr::net).collect();
    dns_config.trusted_resolvers = config.dns_trusted_resolvers.iter().map(Cidr::net).collect();
    dns_config.notify = config.dns_notify.clone();
    let dns = Arc::new(
        DnsServer::start(dns_config)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.dns_listen,
                source,
            })?,
    );
    let (snapshots, builder) = snapshot::spawn_builder(
        Arc::clone(&store),
        CompileOptions {
            answer_ttl: config.dns_answer_ttl,
            nameserver_addresses: vec![dns.udp_addr.ip()],
            trust_domain: config.trust_domain.clone(),
            ..CompileOptions::default()
        },
    );
    let feeder = tokio::spawn(feed_dns(snapshots.clone(), Arc::clone(&dns)));
    let discovery = crate::discovery::spawn_with(
        Arc::clone(&store),
        crate::discovery::DiscoveryOptions {
            federation_url: config
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{api_addr}")),
            dns_address: config.advertise_dns.unwrap_or(dns.udp_addr).to_string(),
        },
    );
    let dns_for_metrics = Arc::clone(&dns);
    Ok(Federation {
        api_addr,
        dns_addr: dns.udp_addr,
        snapshots: snapshots.clone(),
        dns,
        background: vec![
            builder,
            feeder,
            discovery,
            crate::liveness::spawn(Arc::clone(&store), config.gateway_timeout),
            tokio::spawn(prune_audit(Arc::clone(&store), config.audit_retention)),
        ],
        admin_token_file,
        store,
        listener,
        router: api::router_with_snapshots(state, snapshots)
            .layer(axum::Extension(dns_for_metrics))
            .layer(axum::Extension(identity)),
        limits: crate::listener::Limits {
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections as usize,
        },
    })
}

/// Publishes every new snapshot's zones to the in-process DNS server (rendering off the runtime).
async fn feed_dns(mut snapshots: SnapshotReceiver, dns: Arc<DnsServer>) {
    loop {
        let current = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = current {
            let dns = Arc::clone(&dns);
            let zones = Arc::clone(&snapshot.dns);
            match tokio::task::spawn_blocking(move || dns.publish(zones)).await {
                Ok(problems) => {
                    for p in problems {
                        tracing::warn!(zone = %p.zone, problem = %p.message, "left out of DNS");
                    }
                }
                Err(e) => tracing::error!(error = %e, "rendering DNS failed"),
            }
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

impl Federation {
    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let background = self.background;
        // Stopping the builder ends pending long-polls, so graceful shutdown doesn't wait for them.
        let shutdown = async move {
            shutdown.await;
            for task in background {
                task.abort();
            }
        };
        crate::listener::serve(self.listener, self.router, self.limits, shutdown).await;
        drop(self.dns);
        Ok(())
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
