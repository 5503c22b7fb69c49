//! `gns-federation`: the GNS control plane. See `gns-federation --help`.

use anyhow::Context;
use clap::Parser;
use gns_federation::server::{self, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: snapshot rebuilds churn large, short-lived allocations across
/// threads, which glibc malloc keeps as fragmented arenas.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // TLS to member clusters and Postgres: rustls with the ring provider only.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_env("GNS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let federation = server::build(&config)
        .await
        .context("gns-federation could not start")?;
    tracing::info!(
        api = %federation.api_addr,
        dns = %federation.dns_addr,
        store = federation.store.backend(),
        data_dir = %config.data_dir.display(),
        "gns-federation listening"
    );
    if let Some(path) = &federation.admin_token_file {
        tracing::info!(path = %path.display(), "bootstrap admin token is in this file");
    }
    federation.serve(server::shutdown_signal()).await?;
    tracing::info!("gns-federation stopped");
    Ok(())
}
