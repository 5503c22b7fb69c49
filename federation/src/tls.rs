//! The API's TLS: which certificate the listener presents, kept current.
//!
//! - [`ServingMode::Files`] (`--tls-cert`, `--tls-key`): a PEM chain and key
//!   from files, read again when either file changes (a bad new pair is
//!   logged and counted, and the old one kept).
//! - [`ServingMode::Issued`] (the default): a certificate the federation's
//!   own CA issues for the `--tls-san` names, renewed at two thirds of its
//!   lifetime and at once when the root that issued it leaves the trust
//!   bundle (a rotation's last step). It moves to the new root as late as
//!   possible: clients that follow the bundle have had the whole rotation
//!   to learn the new root, so none is locked out of the control channel.
//!
//! Either way the federation writes the roots that verify its certificate
//! to `<data-dir>/ca.pem` (the CA's trust bundle; with `--tls-cert` the
//! self-signed root that ends the given chain, or nothing when the chain
//! ends below a public root: clients then use the system's roots), and
//! rewrites it when they change. One task owns the certificate and the file;
//! the listener reads the certificate through [`Resolver`] per handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::identity::{Identity, ServingCertificate};
use crate::store::Store;

/// Lifetime of a certificate the federation issues itself.
pub const ISSUED_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the certificate source and the CA are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where the serving certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingMode {
    /// PEM files given by the operator, followed for changes.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Issued by the federation's CA for these names (DNS names or IPs).
    Issued {
        /// Subject alternative names.
        names: Vec<String>,
    },
}

/// Errors of setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key file does not hold what it should.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the certificate, or is of an unsupported type.
    #[error("the key does not fit the certificate: {0}")]
    Key(rustls::Error),
    /// The CA could not issue the certificate.
    #[error(transparent)]
    Issue(#[from] crate::identity::IdentityError),
    /// `<data-dir>/ca.pem` cannot be written.
    #[error("cannot write {path}: {source}")]
    WriteCa {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Hands every handshake the current certificate.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server configuration of the API: TLS 1.2 and 1.3 (ring),
/// ALPN `h2` then `http/1.1`, certificates from `resolver`.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Key)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The roots clients should trust, as PEM, kept current by [`Serving`]
/// (what `ca.pem` holds and what the rollout deploys with gateways).
#[derive(Debug, Clone, Default)]
pub struct ClientRoots(Arc<ArcSwap<String>>);

impl ClientRoots {
    /// The roots now.
    pub fn pem(&self) -> String {
        self.0.load().as_ref().clone()
    }
}

/// What the serving task keeps between checks.
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        /// Modification times and lengths last loaded.
        stamp: Option<[(SystemTime, u64); 2]>,
    },
    Issued {
        names: Vec<String>,
        current: ServingCertificate,
    },
}

/// The serving certificate (none with `--insecure-http`), kept current,
/// and `ca.pem`.
pub struct Serving {
    resolver: Option<Arc<Resolver>>,
    source: Option<Source>,
    roots: ClientRoots,
    identity: Arc<Identity>,
    ca_file: PathBuf,
    /// What `ca.pem` holds, once written.
    written: Option<String>,
    /// The self-signed root ending a `--tls-cert` chain, PEM, if any.
    file_root: Option<String>,
}

impl Serving {
    /// Loads or issues the certificate (none when `mode` is `None`) and
    /// writes `<data_dir>/ca.pem`.
    pub fn start(
        mode: Option<ServingMode>,
        identity: Arc<Identity>,
        data_dir: &Path,
    ) -> Result<Serving, TlsError> {
        let (key, source, file_root) = match mode {
            None => (None, None, None),
            Some(ServingMode::Files { cert, key }) => {
                let loaded = load_files(&cert, &key)?;
                let root = self_signed_root(&loaded);
                let stamp = stamps(&cert, &key);
                (Some(loaded), Some(Source::Files { cert, key, stamp }), root)
            }
            Some(ServingMode::Issued { names }) => {
                let current = identity.issue_serving(&names, ISSUED_LIFETIME)?;
                let key = certified(&current)?;
                (Some(key), Some(Source::Issued { names, current }), None)
            }
        };
        if let Some(key) = &key {
            record_expiry(key);
        }
        let mut serving = Serving {
            resolver: key.map(|key| {
                Arc::new(Resolver {
                    current: ArcSwap::from_pointee(key),
                })
            }),
            source,
            roots: ClientRoots::default(),
            identity,
            ca_file: data_dir.join("ca.pem"),
            written: None,
            file_root,
        };
        serving.write_ca()?;
        Ok(serving)
    }

    /// What the listener resolves certificates with (`None`: plain HTTP).
    pub fn resolver(&self) -> Option<Arc<Resolver>> {
        self.resolver.clone()
    }

    /// The roots clients should trust, kept current.
    pub fn roots(&self) -> ClientRoots {
        self.roots.clone()
    }

    /// Where the roots for local clients are.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Keeps the certificate and `ca.pem` current, forever.
    pub async fn run(mut self, store: Arc<dyn Store>) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(e) = self.identity.refresh(store.as_ref()).await {
                tracing::debug!(error = %e, "cannot read the CA from the store; checking again");
            }
            self.check(SystemTime::now());
            if let Err(e) = self.write_ca() {
                tracing::warn!(error = %e, "cannot update the CA file");
            }
        }
    }

    /// Reloads or renews the certificate when due.
    fn check(&mut self, now: SystemTime) {
        let (Some(source), Some(resolver)) = (&mut self.source, &self.resolver) else {
            return;
        };
        match source {
            Source::Files { cert, key, stamp } => {
                let seen = stamps(cert, key);
                if seen.is_none() || seen == *stamp {
                    return;
                }
                match load_files(cert, key) {
                    Ok(loaded) => {
                        *stamp = seen;
                        self.file_root = self_signed_root(&loaded);
                        record_expiry(&loaded);
                        resolver.current.store(Arc::new(loaded));
                        metrics::counter!("gns_api_tls_reloads_total", "result" => "ok")
                            .increment(1);
                        tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        // Half-written files (cert before key) are retried next time.
                        metrics::counter!("gns_api_tls_reloads_total", "result" => "error")
                            .increment(1);
                        tracing::warn!(error = %e, "new certificate files not usable; keeping the current certificate");
                    }
                }
            }
            Source::Issued { names, current } => {
                let trusted = self.identity.trusts(current.issuer());
                if !renewal_due(current, trusted, now) {
                    return;
                }
                match self
                    .identity
                    .issue_serving(names, ISSUED_LIFETIME)
                    .map_err(TlsError::from)
                    .and_then(|fresh| Ok((certified(&fresh)?, fresh)))
                {
                    Ok((key, fresh)) => {
                        *current = fresh;
                        record_expiry(&key);
                        resolver.current.store(Arc::new(key));
                        metrics::counter!("gns_api_tls_reloads_total", "result" => "ok")
                            .increment(1);
                        tracing::info!("serving certificate renewed by the federation's CA");
                    }
                    Err(e) => {
                        metrics::counter!("gns_api_tls_reloads_total", "result" => "error")
                            .increment(1);
                        tracing::warn!(error = %e, "cannot renew the serving certificate; retrying");
                    }
                }
            }
        }
    }

    /// Writes `ca.pem` when what it should hold changed.
    fn write_ca(&mut self) -> Result<(), TlsError> {
        let text = match &self.source {
            Some(Source::Files { .. }) => self.file_root.clone().unwrap_or_default(),
            _ => self.identity.trust_bundle().concat(),
        };
        if self.written.as_ref() == Some(&text) {
            return Ok(());
        }
        gns_files::write(&self.ca_file, text.as_bytes(), gns_files::Access::Readable).map_err(
            |source| TlsError::WriteCa {
                path: self.ca_file.display().to_string(),
                source,
            },
        )?;
        self.roots.0.store(Arc::new(text.clone()));
        self.written = Some(text);
        Ok(())
    }
}

/// Whether an issued certificate should be replaced: two thirds of its
/// lifetime are over, or its issuer is no longer in the trust bundle
/// (`issuer_trusted` false).
pub fn renewal_due(current: &ServingCertificate, issuer_trusted: bool, now: SystemTime) -> bool {
    let lifetime = current
        .not_after
        .duration_since(current.not_before)
        .unwrap_or_default();
    !issuer_trusted || now >= current.not_before + lifetime * 2 / 3
}

fn certified(cert: &ServingCertificate) -> Result<CertifiedKey, TlsError> {
    let chain = cert
        .chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(cert.key_pkcs8.clone().into());
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(TlsError::Key)
}

fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let pem_error = |path: &Path, reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "holds no PEM certificate".into()));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(key, format!("holds no PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key_der, &rustls::crypto::ring::default_provider())
        .map_err(TlsError::Key)
}

/// Modification time and length of both files, or `None` when one is missing.
fn stamps(cert: &Path, key: &Path) -> Option<[(SystemTime, u64); 2]> {
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([stamp(cert)?, stamp(key)?])
}

/// The last certificate of `chain` as PEM when it is self-signed (a root).
fn self_signed_root(key: &CertifiedKey) -> Option<String> {
    let last = key.cert.last()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(last).ok()?;
    // A chain of one certificate is the leaf itself, never a root to trust.
    if parsed.subject() != parsed.issuer() || key.cert.len() < 2 {
        return None;
    }
    Some(pem("CERTIFICATE", last))
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Seconds until the served leaf expires, as a gauge.
fn record_expiry(key: &CertifiedKey) {
    let Some(leaf) = key.cert.first() else {
        return;
    };
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf) {
        let left = parsed.validity().not_after.timestamp()
            - SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("gns_api_tls_certificate_expiry_seconds").set(left as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(not_before: SystemTime, lifetime: Duration, issuer: &[u8]) -> ServingCertificate {
        ServingCertificate {
            chain: vec![b"leaf".to_vec(), issuer.to_vec()],
            key_pkcs8: Vec::new(),
            not_before,
            not_after: not_before + lifetime,
        }
    }

    #[test]
    fn an_issued_certificate_is_renewed_at_two_thirds_or_when_its_root_leaves_the_bundle() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cert = issued(start, Duration::from_secs(300), b"root-a");
        assert!(!renewal_due(&cert, true, start));
        assert!(!renewal_due(&cert, true, start + Duration::from_secs(199)));
        assert!(renewal_due(&cert, true, start + Duration::from_secs(200)));
        // A rotation's last step dropped its root: renew at once.
        assert!(renewal_due(&cert, false, start));
    }
}
