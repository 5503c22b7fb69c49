//! Following a federation: long-poll `GET /v1/config/dns?after=V`, publish
//! each new snapshot, and persist it in the cache dir so a restart without
//! the federation still answers (static stability).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::server::DnsServer;
use crate::snapshot::ZoneSnapshot;

/// File name of the cached snapshot inside the cache dir.
pub const CACHE_FILE: &str = "dns-snapshot.json";

/// Errors of the follower.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The cache file could not be read or written.
    #[error("snapshot cache {path}: {source}")]
    Cache {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The cache file is not a snapshot.
    #[error("snapshot cache {path} is not a valid snapshot: {source}")]
    CacheFormat {
        /// File.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Where to follow and how.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// Federation base URL, e.g. `https://127.0.0.1:8080`.
    pub federation: String,
    /// PEM roots that verify an `https://` federation (else the system's).
    pub federation_ca: Option<PathBuf>,
    /// Bearer token.
    pub token: String,
    /// Directory of the snapshot cache.
    pub cache_dir: PathBuf,
    /// Long-poll timeout asked of the federation.
    pub poll_timeout: Duration,
    /// How often the trust bundle is fetched again (with a CA file).
    pub bundle_refresh: Duration,
}

/// Counters of the follower.
#[derive(Debug, Default)]
pub struct FollowStats {
    /// Snapshots received.
    pub received: AtomicU64,
    /// Failed polls.
    pub errors: AtomicU64,
    /// Trust bundles refused because they hold none of the roots trusted now.
    pub bundle_refusals: AtomicU64,
    /// Roots the federation is verified with (0 without a CA file: the system's).
    pub federation_roots: AtomicU64,
}

fn cache_path(dir: &Path) -> PathBuf {
    dir.join(CACHE_FILE)
}

/// Loads the cached snapshot, if there is one.
pub fn load_cache(dir: &Path) -> Result<Option<ZoneSnapshot>, FollowError> {
    let path = cache_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| FollowError::CacheFormat {
                    path: path.display().to_string(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FollowError::Cache {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes the snapshot to the cache atomically (temp file, fsync, rename).
pub fn store_cache(dir: &Path, snapshot: &ZoneSnapshot) -> Result<(), FollowError> {
    let path = cache_path(dir);
    let err = |source| FollowError::Cache {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let bytes = serde_json::to_vec(snapshot).map_err(|e| err(std::io::Error::other(e)))?;
    gns_files::write(&path, &bytes, gns_files::Access::Readable).map_err(err)
}

async fn publish(server: &Arc<DnsServer>, snapshot: Arc<ZoneSnapshot>) {
    let server = Arc::clone(server);
    let version = snapshot.version;
    match tokio::task::spawn_blocking(move || server.publish(snapshot)).await {
        Ok(problems) => {
            for p in problems {
                tracing::warn!(zone = %p.zone, problem = %p.message, "left out of the DNS snapshot");
            }
            tracing::info!(version, "serving DNS snapshot");
        }
        Err(e) => tracing::error!(error = %e, "rendering the snapshot failed"),
    }
}

/// Fetches the trust bundle now and every `every`, over the
/// verified channel, and follows it when it holds a root trusted now; one
/// that holds none is refused, logged and counted.
async fn follow_bundle(
    trust: gns_trust::FederationTrust,
    client: reqwest::Client,
    base: String,
    stats: Arc<FollowStats>,
    every: Duration,
) {
    let url = format!("{base}/v1/identity/trust-bundle");
    loop {
        let count = trust.trusted().len();
        stats
            .federation_roots
            .store(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
        let offered = match client.get(&url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.text().await {
                Ok(text) => gns_trust::parse_bundle(&text).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Ok(resp) => Err(format!("HTTP {}", resp.status())),
            Err(e) => Err(e.to_string()),
        };
        match offered.map(|roots| trust.offer(&roots)) {
            Ok(Ok(true)) => tracing::info!("following the federation's new trust bundle"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                stats.bundle_refusals.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "keeping the roots trusted now");
            }
            // The snapshot watch reports an unreachable federation.
            Err(e) => tracing::debug!(error = %e, "trust bundle refresh failed"),
        }
        let count = trust.trusted().len();
        stats
            .federation_roots
            .store(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
        tokio::time::sleep(every).await;
    }
}

/// Serves the cached snapshot (if any) at once, then follows the federation forever.
pub async fn follow(server: Arc<DnsServer>, config: FollowConfig, stats: Arc<FollowStats>) {
    match load_cache(&config.cache_dir) {
        Ok(Some(snapshot)) => {
            tracing::info!(
                version = snapshot.version,
                "loaded DNS snapshot from the cache"
            );
            publish(&server, Arc::new(snapshot)).await;
        }
        Ok(None) => tracing::info!("no cached DNS snapshot; waiting for the federation"),
        Err(e) => tracing::warn!(error = %e, "ignoring the snapshot cache"),
    }
    // With a CA file, the federation is verified with its roots and those
    // of the trust bundle, followed so that a root rotation carries along.
    let trust = match config
        .federation_ca
        .as_deref()
        .map(gns_trust::FederationTrust::from_file)
        .transpose()
    {
        Ok(trust) => trust.flatten(),
        Err(e) => {
            tracing::error!(error = %e, "unusable CA file; serving the cache only");
            return;
        }
    };
    let builder = match &trust {
        Some(trust) => Ok(trust.client_builder()),
        None => gns_trust::client_builder(None),
    };
    let client = match builder.and_then(|b| {
        b.timeout(config.poll_timeout + Duration::from_secs(15))
            .build()
            .map_err(gns_trust::TrustError::Client)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build an HTTP client; serving the cache only");
            return;
        }
    };
    let base = config.federation.trim_end_matches('/').to_owned();
    if let Some(trust) = trust {
        tokio::spawn(follow_bundle(
            trust,
            client.clone(),
            base.clone(),
            Arc::clone(&stats),
            config.bundle_refresh.max(Duration::from_millis(100)),
        ));
    }
    let mut backoff = Duration::from_millis(250);
    let mut outage = gns_outage::Outage::new("federation (DNS snapshot watch)", &base);
    loop {
        let have = if server.is_loaded() {
            server.version()
        } else {
            0
        };
        let url = format!(
            "{base}/v1/config/dns?after={have}&timeout={}",
            config.poll_timeout.as_secs()
        );
        let result = client.get(&url).bearer_auth(&config.token).send().await;
        let outcome = match result {
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_MODIFIED => Ok(None),
            Ok(resp) if resp.status().is_success() => resp
                .json::<ZoneSnapshot>()
                .await
                .map(Some)
                .map_err(|e| e.to_string()),
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                Err(format!("HTTP {status}: {body}"))
            }
            Err(e) => {
                Err(gns_trust::unverified(&e, "--federation-ca").unwrap_or_else(|| e.to_string()))
            }
        };
        if outcome.is_ok() {
            outage.reached();
        }
        match outcome {
            Ok(Some(snapshot)) => {
                backoff = Duration::from_millis(250);
                stats.received.fetch_add(1, Ordering::Relaxed);
                if snapshot.version > have || !server.is_loaded() {
                    // Serve first, then persist (fsyncs) off the runtime.
                    let snapshot = Arc::new(snapshot);
                    publish(&server, Arc::clone(&snapshot)).await;
                    let dir = config.cache_dir.clone();
                    match tokio::task::spawn_blocking(move || store_cache(&dir, &snapshot)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not persist the snapshot"),
                        Err(e) => tracing::warn!(error = %e, "could not persist the snapshot"),
                    }
                }
            }
            Ok(None) => backoff = Duration::from_millis(250),
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // Logged once per outage (and summed up each minute), not per attempt.
                tracing::debug!(federation = %base, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the federation; still serving the last snapshot");
                outage.failed(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
