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
    /// PEM certificate chain the API serves, leaf first, with --tls-key;
    /// read again when either file changes. Default: a certificate the
    /// federation's own CA issues for the --tls-san names.
    #[arg(
        long,
        env = "GNS_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "insecure_http"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GNS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Comma-separated names (DNS names or IPs) of the certificate the
    /// federation issues itself [default: localhost, 127.0.0.1, ::1, the
    /// --listen IP and the host of --advertise-url].
    #[arg(long, env = "GNS_TLS_SAN", value_delimiter = ',', conflicts_with_all = ["tls_cert", "insecure_http"])]
    pub tls_san: Vec<String>,
    /// Serve the API in plain HTTP instead of TLS (only behind something
    /// that encrypts, such as a mesh; clients then send tokens in clear text).
    #[arg(long, env = "GNS_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// URL at which gateways the federation deploys reach it (default: https:// + the --listen address, http:// with --insecure-http).
    #[arg(long, env = "GNS_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// `ip:port` member clusters' CoreDNS forwards the GNS domains to (default: the --dns-listen address).
    #[arg(long, env = "GNS_ADVERTISE_DNS")]
    pub advertise_dns: Option<SocketAddr>,
    /// How long audit rows are kept (pruned in the background), from 1 hour to 100 years.
    #[arg(long, env = "GNS_AUDIT_RETENTION", default_value = "90d", value_parser = parse_retention)]
    pub audit_retention: std::time::Duration,
    /// OTLP/HTTP collector to export a span per API request to (its
    /// `/v1/traces`, protobuf); W3C `traceparent` of callers is continued.
    #[arg(long, env = "GNS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1.
    #[arg(long, env = "GNS_OTLP_SAMPLE_RATIO", default_value_t = 1.0, value_parser = gns_otlp::parse_ratio)]
    pub otlp_sample_ratio: f64,
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

/// How often telemetry samples behind the window are deleted.
const TELEMETRY_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes telemetry samples older than the window, now and every minute
/// (every replica does; a delete of nothing is cheap).
async fn prune_telemetry(store: Arc<dyn store::Store>) {
    let mut every = tokio::time::interval(TELEMETRY_PRUNE_EVERY);
    loop {
        every.tick().await;
        let before = crate::api::now_millis() - crate::telemetry::MAX_WINDOW_MS;
        if let Err(e) = store.prune_telemetry(before).await {
            tracing::warn!(error = %e, "cannot prune telemetry samples");
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
    /// TLS can't be set up.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `--advertise-url` is not an http(s) URL with a host.
    #[error("--advertise-url {url:?}: {reason}")]
    AdvertiseUrl {
        /// The value.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The listen address can't be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Span export can't be set up (`--otlp-endpoint`).
    #[error(transparent)]
    Otlp(#[from] gns_otlp::ExporterError),
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
    /// Where the roots that verify the API's certificate were written
    /// (`None` with `--insecure-http`).
    pub ca_file: Option<PathBuf>,
    /// The API's base URL as the federation advertises it.
    pub advertise_url: String,
    listener: TcpListener,
    router: axum::Router,
    limits: crate::listener::Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
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
    let advertise_url = advertise_url(config, api_addr)?;
    let mode = if config.insecure_http {
        tracing::warn!(
            "--insecure-http: the API is served in plain text; tokens and configs cross the network unencrypted"
        );
        None
    } else {
        Some(match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => crate::tls::ServingMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => crate::tls::ServingMode::Issued {
                names: serving_names(config, api_addr, &advertise_url),
            },
        })
    };
    let serving = crate::tls::Serving::start(mode, Arc::clone(&identity), &config.data_dir)?;
    let tls = serving
        .resolver()
        .map(crate::tls::server_config)
        .transpose()?;
    let ca_file = tls.as_ref().map(|_| serving.ca_file().to_owned());
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
            federation_url: advertise_url.clone(),
            dns_address: config.advertise_dns.unwrap_or(dns.udp_addr).to_string(),
            federation_ca: serving.roots(),
            snapshots: snapshots.clone(),
        },
    );
    let dns_for_metrics = Arc::clone(&dns);
    let mut background = vec![
        builder,
        feeder,
        discovery,
        crate::liveness::spawn(Arc::clone(&store), config.gateway_timeout),
        tokio::spawn(prune_audit(Arc::clone(&store), config.audit_retention)),
        tokio::spawn(prune_telemetry(Arc::clone(&store))),
    ];
    if let Some(endpoint) = &config.otlp_endpoint {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(gns_otlp::ExporterError::from)?;
        let exporter = gns_otlp::Exporter::spawn(
            endpoint,
            "gns-federation",
            config.otlp_sample_ratio,
            client,
        )?;
        crate::api::metrics::set_tracer(exporter);
    }
    background.push(tokio::spawn(serving.run(Arc::clone(&store))));
    Ok(Federation {
        api_addr,
        dns_addr: dns.udp_addr,
        snapshots: snapshots.clone(),
        dns,
        background,
        admin_token_file,
        ca_file,
        advertise_url,
        store,
        listener,
        router: api::router_with_snapshots(state, snapshots)
            .layer(axum::Extension(dns_for_metrics))
            .layer(axum::Extension(identity)),
        limits: crate::listener::Limits {
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections as usize,
        },
        tls,
    })
}

/// `--advertise-url`, checked, or the scheme the API serves and the bound address.
fn advertise_url(config: &Config, api_addr: SocketAddr) -> Result<String, StartError> {
    let scheme = if config.insecure_http {
        "http"
    } else {
        "https"
    };
    let Some(url) = config.advertise_url.as_deref() else {
        return Ok(format!("{scheme}://{api_addr}"));
    };
    let bad = |reason: &str| StartError::AdvertiseUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad("must be an http:// or https:// URL with a host"));
    }
    if parsed.scheme() == "http" && !config.insecure_http {
        tracing::warn!(
            url,
            "--advertise-url is http:// but the API serves TLS; gateways will not reach it unless something in between ends TLS"
        );
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The names of the certificate the federation issues itself: `--tls-san`,
/// or localhost, the loopback addresses, the `--listen` IP when it is a
/// specific one, and the host of the advertised URL.
fn serving_names(config: &Config, api_addr: SocketAddr, advertise_url: &str) -> Vec<String> {
    let mut names: Vec<String> = config
        .tls_san
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if !api_addr.ip().is_unspecified() {
            names.push(api_addr.ip().to_string());
        }
        if let Some(host) = reqwest::Url::parse(advertise_url)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_string()))
        {
            let host = host.trim_matches(['[', ']']).to_owned();
            if !host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified())
            {
                names.push(host);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
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
        crate::listener::serve(self.listener, self.router, self.limits, self.tls, shutdown).await;
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
