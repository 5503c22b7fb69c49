//! The gateway's link to the federation: its certificate (a CSR traded with
//! a one-time join token, then kept in `--state-dir`), the trust bundle, and
//! the config, followed by long-poll (`GET /v1/config/gateways/{cluster}?after=V`),
//! applied atomically and persisted so a restart without the federation
//! serves the last config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::GatewayConfig;
use crate::proxy::Gateway;
use crate::tls::TlsIdentity;

/// Errors of talking to the federation or the state dir.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// HTTP failed (a TLS verification failure says what to do).
    #[error("federation request failed: {}", describe(.0))]
    Http(#[from] reqwest::Error),
    /// The federation's CA file is unusable.
    #[error(transparent)]
    Trust(#[from] gns_trust::TrustError),
    /// The federation answered an error.
    #[error("federation answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its body.
        body: String,
    },
    /// The state dir failed.
    #[error("state dir {path}: {source}")]
    State {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No certificate in the state dir and no credential to get one.
    #[error(
        "no certificate in the state dir; start with --service-account-token (a Kubernetes token for audience gns-federation) or --join-token (from POST /v1/clusters/{{name}}/join-tokens)"
    )]
    NeedJoinToken,
    /// Keys or certificates are unusable.
    #[error("certificate material: {0}")]
    Pem(String),
}

/// A request error in one line: a failed TLS verification as what to do
/// about it, anything else with its innermost cause.
fn describe(error: &reqwest::Error) -> String {
    if let Some(line) = gns_trust::unverified(error, "--federation-ca") {
        return line;
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if std::ptr::addr_eq(cause, error) {
        error.to_string()
    } else {
        format!("{error}: {cause}")
    }
}

impl FollowError {
    /// True when no answer came from the federation at all (it is down or
    /// out of reach), as opposed to an answer that was an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, FollowError::Http(e) if e.is_connect() || e.is_timeout())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    trust_domain: String,
    roots: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signed {
    certificate: String,
    api_token: String,
}

#[derive(Deserialize)]
struct Renewed {
    certificate: String,
}

/// The roots (DER) of a trust bundle document.
fn parse_roots(text: &str) -> Result<Vec<CertificateDer<'static>>, FollowError> {
    gns_trust::parse_bundle(text).map_err(|e| FollowError::Pem(e.to_string()))
}

pub use gns_trust::continues;

/// When a certificate (DER) should be renewed: at two thirds of its lifetime,
/// as Unix seconds; and when it expires.
pub fn renewal_times(leaf: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let from = cert.validity().not_before.timestamp();
    let to = cert.validity().not_after.timestamp();
    Some((from + (to - from) * 2 / 3, to))
}

/// A PEM CSR for `key` (the federation puts the SPIFFE ID in; no names here).
fn csr_for(key: &rcgen::KeyPair) -> Result<String, FollowError> {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(key))
        .and_then(|c| c.pem())
        .map_err(|e| FollowError::Pem(e.to_string()))
}

/// True when `cert_pem`'s leaf certifies the key in `key_pem`.
fn certifies(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).next() else {
        return false;
    };
    x509_parser::parse_x509_certificate(&leaf).is_ok_and(|(_, cert)| {
        use rcgen::PublicKeyData;
        cert.public_key().subject_public_key.data.as_ref() == key.der_bytes()
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a gateway without a certificate proves itself with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinCredential {
    /// A Kubernetes service-account token in this file (read when it is
    /// needed: the kubelet rotates it), reviewed by the cluster's API
    /// server; any number of replicas can use the same account.
    ServiceAccountToken(PathBuf),
    /// A one-time join token (gateways outside Kubernetes).
    JoinToken(String),
}

/// Talks to one federation for one cluster's gateway.
#[derive(Debug, Clone)]
pub struct Follower {
    federation: String,
    cluster: String,
    state_dir: PathBuf,
    http: reqwest::Client,
    /// The roots the federation is verified with, when a CA file was given:
    /// its roots and the trust bundle's.
    trust: Option<gns_trust::FederationTrust>,
    /// A Kubernetes service-account token file to join again with when the
    /// current certificate can no longer be renewed (it expired).
    service_account_token: Option<PathBuf>,
    bundle_refresh: Duration,
}

/// How often the trust bundle is fetched again by default (a root rotation
/// reaches every gateway within this).
pub const DEFAULT_BUNDLE_REFRESH: Duration = Duration::from_secs(15);

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> FollowError + '_ {
    move |source| FollowError::State {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` in the state dir: owner-only, durably and
/// atomically (`gns_files`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FollowError> {
    gns_files::write_private(path, bytes).map_err(state_err(path))
}

async fn checked(resp: reqwest::Response) -> Result<reqwest::Response, FollowError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(FollowError::Status { status, body })
    }
}

impl Follower {
    /// A follower of `federation` (base URL) for `cluster`, keeping state
    /// in `state_dir`, verifying an `https://` federation against the roots
    /// of `federation_ca` and of the trust bundle it follows (else the
    /// system's roots).
    pub fn new(
        federation: &str,
        cluster: &str,
        state_dir: &Path,
        federation_ca: Option<&Path>,
    ) -> Result<Follower, FollowError> {
        std::fs::create_dir_all(state_dir).map_err(state_err(state_dir))?;
        let trust = federation_ca
            .map(gns_trust::FederationTrust::from_file)
            .transpose()?
            .flatten();
        let http = match &trust {
            Some(trust) => trust.client_builder(),
            None => gns_trust::client_builder(None)?,
        }
        .connect_timeout(Duration::from_secs(3))
        .build()?;
        Ok(Follower {
            federation: federation.trim_end_matches('/').to_owned(),
            cluster: cluster.to_owned(),
            state_dir: state_dir.to_owned(),
            http,
            trust,
            service_account_token: None,
            bundle_refresh: DEFAULT_BUNDLE_REFRESH,
        })
    }

    /// Joins again with the service-account token in `path` (read then:
    /// the kubelet rotates it) when a renewal is refused, e.g. because the
    /// certificate expired while the federation was out of reach.
    pub fn with_service_account_token(mut self, path: Option<PathBuf>) -> Follower {
        self.service_account_token = path;
        self
    }

    /// Sets how often the trust bundle is fetched again.
    pub fn with_bundle_refresh(mut self, every: Duration) -> Follower {
        self.bundle_refresh = every.max(Duration::from_millis(100));
        self
    }

    /// A reporter of this gateway as `instance` (see [`crate::report`]),
    /// over the same client as the config watch.
    pub fn reporter(
        &self,
        instance: &str,
        api_token: String,
        every: Duration,
    ) -> crate::report::Reporter {
        crate::report::Reporter::new(
            self.http.clone(),
            &self.federation,
            &self.cluster,
            instance,
            api_token,
            every,
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    /// This gateway's identity and API token: from the state dir, or made now
    /// by trading a CSR and `join_token` for a certificate.
    pub async fn identity(
        &self,
        credential: Option<&JoinCredential>,
    ) -> Result<(TlsIdentity, String), FollowError> {
        let bundle_path = self.path("trust-bundle.json");
        let bundle: Bundle = match self.fetch_bundle().await {
            Ok(text) => {
                write_atomic(&bundle_path, text.as_bytes())?;
                serde_json::from_str(&text).map_err(|e| FollowError::Pem(e.to_string()))?
            }
            Err(e) => {
                tracing::warn!(error = %e, "trust bundle from the state dir (federation unreachable)");
                let text =
                    std::fs::read_to_string(&bundle_path).map_err(state_err(&bundle_path))?;
                serde_json::from_str(&text).map_err(|e| FollowError::Pem(e.to_string()))?
            }
        };
        let (key_path, cert_path, token_path) = (
            self.path("key.pem"),
            self.path("cert.pem"),
            self.path("api-token"),
        );
        if !(key_path.exists() && cert_path.exists() && token_path.exists()) {
            let credential = credential.ok_or(FollowError::NeedJoinToken)?;
            let key = rcgen::KeyPair::generate().map_err(|e| FollowError::Pem(e.to_string()))?;
            let csr = csr_for(&key)?;
            let (body, how) = match credential {
                JoinCredential::JoinToken(token) => (
                    serde_json::json!({"csr": csr, "joinToken": token}),
                    "the join token",
                ),
                JoinCredential::ServiceAccountToken(path) => {
                    let token = std::fs::read_to_string(path).map_err(state_err(path))?;
                    (
                        serde_json::json!({"csr": csr, "cluster": self.cluster,
                                           "serviceAccountToken": token.trim()}),
                        "the service-account token",
                    )
                }
            };
            let resp = self
                .http
                .post(format!("{}/v1/identity/sign", self.federation))
                .json(&body)
                .send()
                .await?;
            let signed: Signed = checked(resp).await?.json().await?;
            write_atomic(&key_path, key.serialize_pem().as_bytes())?;
            write_atomic(&cert_path, signed.certificate.as_bytes())?;
            write_atomic(&token_path, signed.api_token.as_bytes())?;
            tracing::info!(
                cluster = self.cluster,
                "gateway certificate obtained with {how}"
            );
        }
        self.settle_key_rotation()?;
        let chain_pem = std::fs::read_to_string(&cert_path).map_err(state_err(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(state_err(&key_path))?;
        let api_token = std::fs::read_to_string(&token_path).map_err(state_err(&token_path))?;
        let pem = |e: rustls::pki_types::pem::Error| FollowError::Pem(e.to_string());
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem)?;
        let roots = bundle
            .roots
            .iter()
            .map(|r| CertificateDer::from_pem_slice(r.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem)?;
        self.follow_roots(&roots);
        Ok((
            TlsIdentity {
                trust_domain: bundle.trust_domain,
                chain,
                key,
                roots,
            },
            api_token.trim().to_owned(),
        ))
    }

    /// Verifies the federation with the CA file's roots and `roots` too.
    fn follow_roots(&self, roots: &[CertificateDer<'static>]) {
        if let Some(trust) = &self.trust
            && let Err(e) = trust.follow(roots)
        {
            tracing::warn!(error = %e, "cannot verify the federation with the trust bundle's roots");
        }
    }

    async fn fetch_bundle(&self) -> Result<String, FollowError> {
        let resp = self
            .http
            .get(format!("{}/v1/identity/trust-bundle", self.federation))
            .send()
            .await?;
        Ok(checked(resp).await?.text().await?)
    }

    /// Renews the certificate at two thirds of its lifetime, forever, with a
    /// new key each time (see [`Self::renew_once`]). The gateway keeps
    /// serving on the old certificate until the new one is installed; a
    /// failed renewal is retried (every 30 s at most) until the old one expires.
    /// Between renewals the trust bundle is fetched every `bundle_refresh`:
    /// a changed one (a root rotation) is installed at once.
    pub async fn renew(self, gateway: Arc<Gateway>) {
        let mut outage =
            gns_outage::Outage::new("federation (certificate renewal)", &self.federation);
        loop {
            let Some(current) = gateway.identity() else {
                return;
            };
            let Some((renew_at, expires_at)) = current.chain.first().and_then(renewal_times) else {
                tracing::warn!("cannot read the certificate's validity; not renewing");
                return;
            };
            let until_renewal = u64::try_from(renew_at - unix_now()).unwrap_or(0);
            if until_renewal > 0 {
                tokio::time::sleep(self.bundle_refresh.min(Duration::from_secs(until_renewal)))
                    .await;
                self.refresh_bundle(&gateway, &current).await;
                continue;
            }
            let renewed = self.renew_once(&current).await;
            match &renewed {
                Ok(_) => outage.reached(),
                Err(e) if e.is_unreachable() => outage.failed(e),
                Err(_) => {}
            }
            match renewed {
                Ok(fresh) => {
                    if let Err(e) = gateway.set_identity(fresh).await {
                        tracing::warn!(error = %e, "renewed certificate unusable; keeping the old one");
                    } else {
                        gateway
                            .counters
                            .cert_renewals
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!("gateway certificate renewed");
                        continue;
                    }
                }
                // An unreachable federation is logged once per outage above.
                Err(e) if e.is_unreachable() => {
                    tracing::debug!(error = %e, "certificate renewal failed; retrying");
                }
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; retrying"),
            }
            let left = u64::try_from(expires_at - unix_now()).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs((left / 10).clamp(1, 30))).await;
        }
    }

    /// Fetches the trust bundle; installs and persists it when its roots changed.
    async fn refresh_bundle(&self, gateway: &Gateway, current: &TlsIdentity) {
        let text = match self.fetch_bundle().await {
            Ok(text) => text,
            Err(e) => {
                tracing::debug!(error = %e, "trust bundle refresh failed; keeping the current one");
                return;
            }
        };
        let roots = match parse_roots(&text) {
            Ok(roots) => roots,
            Err(e) => {
                tracing::warn!(error = %e, "unusable trust bundle; keeping the current one");
                return;
            }
        };
        if roots == current.roots || roots.is_empty() {
            return;
        }
        if !continues(&current.roots, &roots) {
            // A rotation always keeps a current root in the bundle (start,
            // activate, finish): one without any is not a rotation.
            gateway
                .counters
                .bundle_refusals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                offered = roots.len(),
                "trust bundle refused: it holds none of the roots this gateway trusts"
            );
            return;
        }
        let updated = TlsIdentity {
            trust_domain: current.trust_domain.clone(),
            chain: current.chain.clone(),
            key: current.key.clone_key(),
            roots,
        };
        let count = updated.roots.len();
        let followed = updated.roots.clone();
        match gateway.set_identity(updated).await {
            Ok(()) => {
                self.follow_roots(&followed);
                if let Err(e) = write_atomic(&self.path("trust-bundle.json"), text.as_bytes()) {
                    tracing::warn!(error = %e, "cannot persist the trust bundle");
                }
                gateway
                    .counters
                    .bundle_updates
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    roots = count,
                    "trust bundle changed (root rotation); installed"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "new trust bundle unusable; keeping the current one")
            }
        }
    }

    /// Finishes a key rotation a crash interrupted: `next-key.pem` becomes
    /// `key.pem` when `cert.pem` is already for it, and is dropped otherwise
    /// (the renewal that made it never completed).
    fn settle_key_rotation(&self) -> Result<(), FollowError> {
        let next_path = self.path("next-key.pem");
        let Ok(next_pem) = std::fs::read_to_string(&next_path) else {
            return Ok(());
        };
        let cert_path = self.path("cert.pem");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(state_err(&cert_path))?;
        if certifies(&cert_pem, &next_pem) {
            let key_path = self.path("key.pem");
            std::fs::rename(&next_path, &key_path).map_err(state_err(&key_path))?;
            tracing::info!("finished a key rotation interrupted by a restart");
        } else {
            std::fs::remove_file(&next_path).map_err(state_err(&next_path))?;
        }
        Ok(())
    }

    /// `POST /v1/identity/sign` with a renewal body.
    async fn sign_renewal(&self, body: serde_json::Value) -> Result<Renewed, FollowError> {
        let resp = self
            .http
            .post(format!("{}/v1/identity/sign", self.federation))
            .json(&body)
            .send()
            .await?;
        Ok(checked(resp).await?.json().await?)
    }

    /// One renewal, with a new key: the CSR is for a fresh key and the
    /// current key signs it (`keyProof`), so the federation knows the holder
    /// of the current certificate asked. On disk the new key is written
    /// first as `next-key.pem`, then the certificate, then the key moves to
    /// `key.pem`; [`Self::settle_key_rotation`] repairs a crash in between.
    async fn renew_once(&self, current: &TlsIdentity) -> Result<TlsIdentity, FollowError> {
        use rcgen::SigningKey;
        let pem_err = |e: rcgen::Error| FollowError::Pem(e.to_string());
        let key_path = self.path("key.pem");
        let key_pem = std::fs::read_to_string(&key_path).map_err(state_err(&key_path))?;
        let current_key = rcgen::KeyPair::from_pem(&key_pem).map_err(pem_err)?;
        let next_key = rcgen::KeyPair::generate().map_err(pem_err)?;
        let csr = csr_for(&next_key)?;
        let proof = current_key.sign(csr.as_bytes()).map_err(pem_err)?;
        let cert_path = self.path("cert.pem");
        let current_pem = std::fs::read_to_string(&cert_path).map_err(state_err(&cert_path))?;
        let next_path = self.path("next-key.pem");
        write_atomic(&next_path, next_key.serialize_pem().as_bytes())?;
        let rotated = self
            .sign_renewal(serde_json::json!({
                "csr": csr,
                "certificate": current_pem,
                "keyProof": base64::engine::general_purpose::STANDARD.encode(proof),
            }))
            .await;
        let (renewed, key_pem) = match rotated {
            Ok(renewed) => (renewed, next_key.serialize_pem()),
            // A federation from before key rotation refuses the field: renew
            // the current key (as it did) rather than not at all.
            Err(FollowError::Status { status: 422, body }) if body.contains("keyProof") => {
                tracing::warn!(
                    "the federation cannot rotate keys yet; renewing with the current key"
                );
                std::fs::remove_file(&next_path).map_err(state_err(&next_path))?;
                let csr = csr_for(&current_key)?;
                let renewed = self
                    .sign_renewal(serde_json::json!({"csr": csr, "certificate": current_pem}))
                    .await?;
                (renewed, key_pem)
            }
            // Refused (expired, or issued by a root no longer trusted): a
            // pod proves itself again with its service-account token.
            Err(FollowError::Status { status: 401, body }) => {
                let Some(path) = &self.service_account_token else {
                    return Err(FollowError::Status { status: 401, body });
                };
                tracing::warn!(
                    refused = body,
                    "renewal refused; joining again with the service-account token"
                );
                let token = std::fs::read_to_string(path).map_err(state_err(path))?;
                let renewed = self
                    .sign_renewal(serde_json::json!({
                        "csr": csr,
                        "cluster": self.cluster,
                        "serviceAccountToken": token.trim(),
                    }))
                    .await?;
                (renewed, next_key.serialize_pem())
            }
            Err(e) => return Err(e),
        };
        let chain = CertificateDer::pem_slice_iter(renewed.certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FollowError::Pem(e.to_string()))?;
        if !certifies(&renewed.certificate, &key_pem) {
            return Err(FollowError::Pem(
                "the renewed certificate is not for the key it was asked for".into(),
            ));
        }
        write_atomic(&cert_path, renewed.certificate.as_bytes())?;
        if next_path.exists() {
            std::fs::rename(&next_path, &key_path).map_err(state_err(&key_path))?;
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| FollowError::Pem(e.to_string()))?;
        Ok(TlsIdentity {
            trust_domain: current.trust_domain.clone(),
            chain,
            key,
            roots: current.roots.clone(),
        })
    }

    /// Applies the persisted config, if any (static stability across restarts).
    pub fn restore(&self, gateway: &Gateway) -> Option<u64> {
        let text = std::fs::read_to_string(self.path("config.json")).ok()?;
        let config: GatewayConfig = serde_json::from_str(&text).ok()?;
        let version = config.version;
        gateway.apply_config(config);
        tracing::info!(version, "serving the config from the state dir");
        Some(version)
    }

    /// Follows the config forever: long-poll, apply, persist; retries with backoff.
    pub async fn follow(self, gateway: Arc<Gateway>, api_token: String) {
        let mut version = gateway.config().map(|c| c.version);
        let mut backoff = Duration::from_millis(200);
        let mut outage = gns_outage::Outage::new("federation (config watch)", &self.federation);
        loop {
            let mut url = format!(
                "{}/v1/config/gateways/{}?timeout=30",
                self.federation, self.cluster
            );
            if let Some(v) = version {
                url.push_str(&format!("&after={v}"));
            }
            let result = async {
                let resp = self
                    .http
                    .get(&url)
                    .bearer_auth(&api_token)
                    .timeout(Duration::from_secs(40))
                    .send()
                    .await?;
                if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
                    return Ok(None);
                }
                let text = checked(resp).await?.text().await?;
                Ok::<_, FollowError>(Some(text))
            }
            .await;
            if result.is_ok() {
                outage.reached();
            }
            match result {
                Ok(None) => backoff = Duration::from_millis(200),
                Ok(Some(text)) => match serde_json::from_str::<GatewayConfig>(&text) {
                    Ok(config) => {
                        backoff = Duration::from_millis(200);
                        version = Some(config.version);
                        for problem in gateway.apply_config(config) {
                            tracing::warn!(%problem, "route left out");
                        }
                        if let Err(e) = write_atomic(&self.path("config.json"), text.as_bytes()) {
                            tracing::warn!(error = %e, "cannot persist the config");
                        }
                        tracing::debug!(version, "config applied");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "config from the federation does not parse");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
                Err(e) => {
                    // Logged once per outage (and summed up each minute), not per attempt.
                    tracing::debug!(error = %e, retry_in = ?backoff, "cannot fetch the config; serving the last one");
                    outage.failed(&e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_continues_trust_only_with_a_current_root() {
        let root = |n: u8| CertificateDer::from(vec![n; 8]);
        let current = [root(1), root(2)];
        assert!(
            continues(&current, &[root(2), root(3)]),
            "rotation: start/activate"
        );
        assert!(continues(&current, &[root(2)]), "rotation: finish");
        assert!(
            !continues(&current, &[root(3)]),
            "every current root dropped"
        );
        assert!(!continues(&current, &[]));
    }

    fn key_and_cert() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        (key.serialize_pem(), cert.pem())
    }

    #[test]
    fn an_interrupted_key_rotation_is_finished_or_dropped_at_start() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let follower =
            Follower::new("http://127.0.0.1:1", "east", dir.path(), None).expect("follower");
        let (old_key, _) = key_and_cert();
        let (new_key, new_cert) = key_and_cert();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect(name);

        // Crash after the new certificate was written, before the key moved.
        write("key.pem", &old_key).expect("write");
        write("next-key.pem", &new_key).expect("write");
        write("cert.pem", &new_cert).expect("write");
        assert!(!certifies(&new_cert, &old_key));
        follower.settle_key_rotation().expect("settle");
        assert_eq!(read("key.pem"), new_key, "the new key is the key now");
        assert!(!dir.path().join("next-key.pem").exists());
        assert!(certifies(&read("cert.pem"), &read("key.pem")));

        // Crash before the federation answered: the next key is dropped.
        let (stale_key, _) = key_and_cert();
        write("next-key.pem", &stale_key).expect("write");
        follower.settle_key_rotation().expect("settle");
        assert_eq!(read("key.pem"), new_key, "the key in use stays");
        assert!(!dir.path().join("next-key.pem").exists());
    }

    /// A federation stand-in whose trust bundle holds only `root` (PEM).
    async fn federation_serving_bundle(root: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let address = listener.local_addr().expect("address");
        let bundle = serde_json::json!({"trustDomain": "acme.test", "roots": [root]}).to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let bundle = bundle.clone();
                let service = hyper::service::service_fn(move |_req| {
                    let bundle = bundle.clone();
                    async move {
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(bundle),
                        )))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn a_bundle_without_a_current_root_is_refused_and_counted() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let foreign = params.self_signed(&key).expect("root").pem();
        let federation = federation_serving_bundle(foreign).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let follower = Follower::new(&federation, "east", dir.path(), None).expect("follower");
        let gateway = Gateway::new("east");
        let current = TlsIdentity {
            trust_domain: "acme.test".into(),
            chain: Vec::new(),
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            roots: vec![CertificateDer::from(vec![1u8; 8])],
        };
        follower.refresh_bundle(&gateway, &current).await;
        assert_eq!(
            gateway
                .counters
                .bundle_refusals
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(gateway.identity().is_none(), "nothing installed");
        assert!(
            !dir.path().join("trust-bundle.json").exists(),
            "nothing persisted"
        );
    }

    /// A federation from before key rotation: it refuses `keyProof` with
    /// 422 and renews a CSR for the current key.
    async fn federation_without_key_rotation(cert_for_current_key: String) -> String {
        fake_federation(move |body| {
            if body.get("keyProof").is_some() {
                (
                    422,
                    serde_json::json!({"error": "unknown field `keyProof`"}),
                )
            } else {
                (
                    200,
                    serde_json::json!({"certificate": cert_for_current_key}),
                )
            }
        })
        .await
    }

    #[tokio::test]
    async fn renewal_keeps_the_key_when_the_federation_cannot_rotate_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let current_key = rcgen::KeyPair::generate().expect("key");
        let leaf = || {
            rcgen::CertificateParams::new(Vec::<String>::new())
                .expect("params")
                .signed_by(&current_key, &issuer)
                .expect("leaf")
                .pem()
        };
        let federation = federation_without_key_rotation(leaf()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let follower = Follower::new(&federation, "east", dir.path(), None).expect("follower");
        let first = leaf();
        std::fs::write(dir.path().join("key.pem"), current_key.serialize_pem()).expect("key");
        std::fs::write(dir.path().join("cert.pem"), &first).expect("cert");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(first.as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain");
        let current = TlsIdentity {
            trust_domain: "acme.test".into(),
            chain,
            key: PrivateKeyDer::try_from(current_key.serialize_der()).expect("key"),
            roots: Vec::new(),
        };
        let renewed = follower.renew_once(&current).await.expect("renewed");
        let key_pem = std::fs::read_to_string(dir.path().join("key.pem")).expect("key");
        assert_eq!(key_pem, current_key.serialize_pem(), "the key stays");
        let cert_pem = std::fs::read_to_string(dir.path().join("cert.pem")).expect("cert");
        assert_ne!(cert_pem, first, "a new certificate");
        assert!(certifies(&cert_pem, &key_pem));
        assert!(!dir.path().join("next-key.pem").exists());
        assert_eq!(
            renewed.key.secret_der(),
            current.key.secret_der(),
            "the identity in use keeps the key"
        );
    }

    /// A federation answering every request with `answer(body)`.
    async fn fake_federation(
        answer: impl Fn(serde_json::Value) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> String {
        use http_body_util::BodyExt;
        let answer = Arc::new(answer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let answer = Arc::clone(&answer);
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = Arc::clone(&answer);
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or_default();
                            let (status, value) = answer(body);
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(value.to_string()),
                            ));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, hyper::Error>(resp)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
                );
            }
        });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn a_refused_renewal_joins_again_with_the_service_account_token() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = Arc::new(rcgen::Issuer::new(ca_params, ca_key));
        let signer = Arc::clone(&issuer);
        let federation = fake_federation(move |body| {
            if body.get("certificate").is_some() {
                return (
                    401,
                    serde_json::json!({"error": {"message": "certificate is expired"}}),
                );
            }
            let sat = body["serviceAccountToken"].as_str().unwrap_or_default();
            if body["cluster"] != "east" || sat != "projected-token-2" {
                return (401, serde_json::json!({"error": {"message": "refused"}}));
            }
            let csr = rcgen::CertificateSigningRequestParams::from_pem(
                body["csr"].as_str().unwrap_or_default(),
            )
            .expect("csr");
            let leaf = csr.signed_by(&signer).expect("leaf");
            (
                200,
                serde_json::json!({"certificate": leaf.pem(), "apiToken": "gns_new"}),
            )
        })
        .await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("token");
        // The kubelet rotated the token since the pod started.
        std::fs::write(&token_file, "projected-token-2\n").expect("token");
        let state = dir.path().join("state");
        let follower = Follower::new(&federation, "east", &state, None)
            .expect("follower")
            .with_service_account_token(Some(token_file));
        let current_key = rcgen::KeyPair::generate().expect("key");
        let first = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .signed_by(&current_key, &issuer)
            .expect("leaf")
            .pem();
        std::fs::write(state.join("key.pem"), current_key.serialize_pem()).expect("key");
        std::fs::write(state.join("cert.pem"), &first).expect("cert");
        let current = TlsIdentity {
            trust_domain: "acme.test".into(),
            chain: CertificateDer::pem_slice_iter(first.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain"),
            key: PrivateKeyDer::try_from(current_key.serialize_der()).expect("key"),
            roots: Vec::new(),
        };
        follower.renew_once(&current).await.expect("joined again");
        let cert = std::fs::read_to_string(state.join("cert.pem")).expect("cert");
        let key = std::fs::read_to_string(state.join("key.pem")).expect("key");
        assert_ne!(cert, first, "a new certificate");
        assert_ne!(key, current_key.serialize_pem(), "for a new key");
        assert!(certifies(&cert, &key));
        // Without a token file the refusal stands.
        let bare = Follower::new(&federation, "east", &state, None).expect("follower");
        assert!(matches!(
            bare.renew_once(&current).await,
            Err(FollowError::Status { status: 401, .. })
        ));
    }
}
