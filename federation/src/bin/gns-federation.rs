//! `gns-federation`: the GNS control plane. See `gns-federation --help`.

use anyhow::Context;
use clap::Parser;
use gns_federation::server::{self, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// mimalloc: snapshot rebuilds churn large, short-lived allocations across
/// threads, which glibc malloc keeps as fragmented arenas.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: gns_alloc::MiMalloc = gns_alloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Set when the binary was loaded: freed memory goes back to the system.
    #[cfg(feature = "mimalloc")]
    if !gns_alloc::install() {
        eprintln!("warning: the allocator keeps freed memory (arena eager commit is on)");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    // TLS to member clusters and Postgres: rustls with the ring provider only.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::new(log_directives(std::env::var("GNS_LOG").ok()));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(colour())
            .with_env_filter(filter)
            .init(),
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
        url = %federation.advertise_url,
        "gns-federation listening"
    );
    if let Some(path) = &federation.ca_file {
        tracing::info!(path = %path.display(), "clients verify the API with the roots in this file");
    }
    if let Some(path) = &federation.admin_token_file {
        tracing::info!(path = %path.display(), "bootstrap admin token is in this file");
    }
    federation.serve(server::shutdown_signal()).await?;
    tracing::info!("gns-federation stopped");
    Ok(())
}

/// Colours only for a terminal, and never with `NO_COLOR` set.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The log filter: `GNS_LOG` (default `info`). kube-rs logs every failed
/// request to a member cluster at ERROR and every cut connection at WARN;
/// discovery logs a cluster's loss and recovery once each instead, so those
/// are left out unless `GNS_LOG` names `kube_client` itself.
fn log_directives(gns_log: Option<String>) -> String {
    let spec = gns_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    if spec.contains("kube_client") {
        spec
    } else {
        format!("{spec},kube_client::client=error,kube_client::client::builder=off")
    }
}

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn kube_request_errors_are_left_out_unless_asked_for() {
        assert_eq!(
            log_directives(None),
            "info,kube_client::client=error,kube_client::client::builder=off"
        );
        assert_eq!(
            log_directives(Some("debug".into())),
            "debug,kube_client::client=error,kube_client::client::builder=off"
        );
        assert_eq!(
            log_directives(Some("info,kube_client=debug".into())),
            "info,kube_client=debug"
        );
    }
}
