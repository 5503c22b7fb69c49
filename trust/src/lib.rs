//! How GNS clients (gnsctl, gns-gateway, gns-dns) trust the federation.
//!
//! The federation serves its API over TLS, by default with a certificate its
//! own CA issues and whose roots it writes to `<data-dir>/ca.pem`. A client
//! given that file (`--ca-file`, `--federation-ca`) verifies the federation
//! against its roots only; without one, or with an empty one (what a
//! federation serving a publicly trusted certificate writes), it uses the
//! system's roots. A client never falls
//! back to plain text: an `https://` URL is verified or the request fails,
//! and [`unverified`] turns that failure into one line saying what to do.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Errors of setting up a client's trust.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The CA file cannot be read.
    #[error("cannot read the CA file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no PEM certificate, or one that does not parse.
    #[error("the CA file {path} holds no usable PEM certificate{reason}")]
    NoCertificates {
        /// The file.
        path: PathBuf,
        /// What the parser said, `": …"`, or empty.
        reason: String,
    },
    /// A trust bundle does not parse.
    #[error("the trust bundle does not parse: {0}")]
    Bundle(String),
    /// A trust bundle holds none of the roots trusted now: not a rotation.
    #[error("trust bundle refused: it holds none of the {trusted} roots trusted now")]
    Discontinuous {
        /// How many roots are trusted now.
        trusted: usize,
    },
    /// No root could be made into a verifier.
    #[error("cannot use these roots: {0}")]
    Roots(String),
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The certificates of a PEM file (one or more `CERTIFICATE` blocks); none
/// for an empty file (the system's roots then apply).
pub fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, TrustError> {
    let pem = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let none = |reason: String| TrustError::NoCertificates {
        path: path.to_owned(),
        reason,
    };
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| none(format!(": {e}")))?;
    if roots.is_empty() {
        return Err(none(String::new()));
    }
    Ok(roots)
}

/// A client builder that verifies the federation: against the roots of
/// `ca_file` only when given, else against the system's roots.
pub fn client_builder(ca_file: Option<&Path>) -> Result<reqwest::ClientBuilder, TrustError> {
    // reqwest is built without a bundled TLS provider: ring (ignore "already installed").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder();
    let roots = match ca_file {
        Some(path) => read_roots(path)?,
        None => Vec::new(),
    };
    Ok(if roots.is_empty() {
        builder
    } else {
        builder.tls_certs_only(roots)
    })
}

/// A client from [`client_builder`] with nothing else set.
pub fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, TrustError> {
    client_builder(ca_file)?.build().map_err(TrustError::Client)
}

/// The roots a long-running client (a gateway) verifies the federation
/// with: those of its CA file, and those of the trust bundle it follows, so
/// that a root rotation (new root added, then signing, then the old one
/// dropped) carries the control channel along as it carries the data path.
/// Clones share the roots; clients built from it see every change.
#[derive(Debug, Clone)]
pub struct FederationTrust {
    configured: Arc<Vec<CertificateDer<'static>>>,
    /// The bundle's roots, last followed.
    followed: Arc<ArcSwap<Vec<CertificateDer<'static>>>>,
    current: Arc<ArcSwap<WebPkiServerVerifier>>,
}

/// The roots of a trust bundle as `GET /v1/identity/trust-bundle` answers
/// it (`{"trustDomain", "roots": [PEM]}`).
pub fn parse_bundle(json: &str) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let bad = |m: String| TrustError::Bundle(m);
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let roots = value["roots"]
        .as_array()
        .ok_or_else(|| bad("no roots list".into()))?;
    roots
        .iter()
        .map(|r| {
            let pem = r
                .as_str()
                .ok_or_else(|| bad("a root is not a string".into()))?;
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// Whether a new bundle continues the trust of `current`: it holds at
/// least one of its roots (every step of a root rotation does).
pub fn continues(current: &[CertificateDer<'_>], offered: &[CertificateDer<'_>]) -> bool {
    offered.iter().any(|root| current.contains(root))
}

impl FederationTrust {
    /// Trusts the roots of `ca_file`; `None` when it is empty (the
    /// federation's certificate is verified with the system's roots).
    pub fn from_file(ca_file: &Path) -> Result<Option<FederationTrust>, TrustError> {
        let pem = std::fs::read(ca_file).map_err(|source| TrustError::Read {
            path: ca_file.to_owned(),
            source,
        })?;
        if pem.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let configured: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TrustError::NoCertificates {
                path: ca_file.to_owned(),
                reason: format!(": {e}"),
            })?;
        if configured.is_empty() {
            return Err(TrustError::NoCertificates {
                path: ca_file.to_owned(),
                reason: String::new(),
            });
        }
        let current = Arc::new(ArcSwap::new(verifier(&configured)?));
        Ok(Some(FederationTrust {
            configured: Arc::new(configured),
            followed: Arc::default(),
            current,
        }))
    }

    /// Every root trusted now: the CA file's and the followed bundle's, each once.
    pub fn trusted(&self) -> Vec<CertificateDer<'static>> {
        let mut all: Vec<CertificateDer<'static>> = self.configured.to_vec();
        for root in self.followed.load().iter() {
            if !all.contains(root) {
                all.push(root.clone());
            }
        }
        all
    }

    /// From now on trusts the CA file's roots and `bundle`'s (the trust
    /// bundle the client got over this verified channel).
    pub fn follow(&self, bundle: &[CertificateDer<'static>]) -> Result<(), TrustError> {
        let all: Vec<CertificateDer<'static>> =
            self.configured.iter().chain(bundle).cloned().collect();
        self.current.store(verifier(&all)?);
        self.followed.store(Arc::new(bundle.to_vec()));
        Ok(())
    }

    /// Follows `bundle` when it continues the trust of now (holds a root
    /// trusted now); `Ok(false)` when it is the bundle followed already.
    pub fn offer(&self, bundle: &[CertificateDer<'static>]) -> Result<bool, TrustError> {
        if bundle.is_empty() || **self.followed.load() == bundle {
            return Ok(false);
        }
        let trusted = self.trusted();
        if !continues(&trusted, bundle) {
            return Err(TrustError::Discontinuous {
                trusted: trusted.len(),
            });
        }
        self.follow(bundle)?;
        Ok(true)
    }

    /// A client builder verifying the federation with these roots.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(Followed(self.clone())))
                    .with_no_client_auth()
            });
        match config {
            Ok(mut config) => {
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                reqwest::Client::builder().tls_backend_preconfigured(config)
            }
            // ring supports the default versions; this cannot happen.
            Err(_) => reqwest::Client::builder().tls_certs_only(Vec::new()),
        }
    }
}

fn verifier(roots: &[CertificateDer<'static>]) -> Result<Arc<WebPkiServerVerifier>, TrustError> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(TrustError::Roots(
            "none of them parses as a certificate".into(),
        ));
    }
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| TrustError::Roots(e.to_string()))
}

/// The verifier clients use: standard WebPKI verification (name, validity,
/// chain) against whatever roots [`FederationTrust`] holds now.
#[derive(Debug)]
struct Followed(FederationTrust);

impl ServerCertVerifier for Followed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current.load().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current.load().supported_verify_schemes()
    }
}

/// When `error` is a failure to verify the server's certificate, or a TLS
/// client meeting a plain-HTTP server, one line saying so and what to do;
/// `ca_flag` names the client's CA option (e.g. `--ca-file`).
pub fn unverified(error: &reqwest::Error, ca_flag: &str) -> Option<String> {
    let url = error.url().map_or_else(
        || "the federation".to_owned(),
        |u| u.origin().ascii_serialization(),
    );
    let cause = tls_cause(error)?;
    Some(match cause {
        rustls::Error::InvalidCertificate(why) => format!(
            "cannot verify the certificate of {url} ({why:?}); pass the federation's CA with {ca_flag} \
             (it writes it to <data-dir>/ca.pem)"
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "{url} did not answer TLS (is it serving plain HTTP? use http:// only for a federation started with --insecure-http)"
        ),
        other => format!("TLS with {url} failed: {other}"),
    })
}

/// The rustls error somewhere in `error`'s chain (looking inside I/O
/// errors, whose `source` skips the error they wrap).
fn tls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(found) = tls_cause(inner)
        {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = read_roots(&path).expect_err("no certificate");
        assert!(
            err.to_string()
                .contains("ca.pem holds no usable PEM certificate"),
            "{err}"
        );
        let missing = read_roots(&dir.path().join("nope.pem")).expect_err("missing");
        assert!(matches!(missing, TrustError::Read { .. }), "{missing}");
        // An empty file names no roots of its own: the system's apply.
        std::fs::write(&path, "\n").expect("write");
        assert!(read_roots(&path).expect("empty").is_empty());
        assert!(FederationTrust::from_file(&path).expect("empty").is_none());
    }

    #[test]
    fn a_ca_file_yields_its_certificates() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).expect("cert");
        std::fs::write(&path, format!("{}{}", a.cert.pem(), b.cert.pem())).expect("write");
        assert_eq!(read_roots(&path).expect("roots").len(), 2);
    }

    /// A TLS server on 127.0.0.1 presenting `served` (self-signed), answering
    /// every request with 200; its address.
    fn tls_server(served: &rcgen::CertifiedKey<rcgen::KeyPair>) -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![served.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(served.signing_key.serialize_der().into()),
            )
            .expect("server config");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = Arc::new(config);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = Arc::clone(&config);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let conn = rustls::ServerConnection::new(config).expect("conn");
                    let mut tls = rustls::StreamOwned::new(conn, &mut stream);
                    let mut buf = [0u8; 4096];
                    if tls.read(&mut buf).is_ok_and(|n| n > 0) {
                        let _ = tls.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        let _ = tls.flush();
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_followed_bundle_extends_what_the_ca_file_trusts() {
        let served = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let addr = tls_server(&served);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, other.cert.pem()).expect("write");
        let trust = FederationTrust::from_file(&path)
            .expect("trust")
            .expect("roots");
        let client = trust.client_builder().build().expect("client");
        let url = format!("https://{addr}/");
        let refused = client.get(&url).send().await.expect_err("not trusted yet");
        assert!(
            unverified(&refused, "--federation-ca").is_some(),
            "{refused:?}"
        );
        // The same client, once the bundle it follows holds the root.
        trust.follow(&[served.cert.der().clone()]).expect("follow");
        let answer = client.get(&url).send().await.expect("trusted now");
        assert_eq!(answer.status(), 200);
        // A bundle without it takes it away again for new sessions (a
        // resumed TLS session is not verified again); the CA file's root stays.
        trust.follow(&[]).expect("follow");
        let fresh = trust.client_builder().build().expect("client");
        assert!(fresh.get(&url).send().await.is_err());
    }

    #[test]
    fn a_bundle_is_followed_only_when_it_keeps_a_trusted_root() {
        let pem = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| c.cert.der().clone();
        let [a, b, c] = ["a.test", "b.test", "c.test"]
            .map(|n| rcgen::generate_simple_self_signed(vec![n.into()]).expect("cert"));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, a.cert.pem()).expect("write");
        let trust = FederationTrust::from_file(&path)
            .expect("trust")
            .expect("roots");
        // A rotation's steps: [a, b], then [b, a], then [b] (a stays, from the file).
        assert_eq!(trust.offer(&[pem(&a), pem(&b)]).ok(), Some(true));
        assert_eq!(trust.offer(&[pem(&a), pem(&b)]).ok(), Some(false));
        assert_eq!(trust.offer(&[pem(&b)]).ok(), Some(true));
        assert_eq!(trust.trusted(), vec![pem(&a), pem(&b)]);
        // A bundle with none of them is refused and changes nothing.
        let refused = trust.offer(&[pem(&c)]).expect_err("discontinuous");
        assert!(
            matches!(refused, TrustError::Discontinuous { trusted: 2 }),
            "{refused}"
        );
        assert_eq!(trust.trusted(), vec![pem(&a), pem(&b)]);
        let json = format!(r#"{{"trustDomain":"t","roots":[{:?}]}}"#, c.cert.pem());
        assert_eq!(parse_bundle(&json).expect("parses"), vec![pem(&c)]);
        assert!(parse_bundle("{}").is_err());
    }

    #[tokio::test]
    async fn an_unknown_issuer_is_explained_in_one_line() {
        // A TLS server whose certificate the client's CA file did not issue.
        let served = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        let addr = tls_server(&served);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, other.cert.pem()).expect("write");
        let client = client(Some(&path)).expect("client");
        let err = client
            .get(format!("https://{addr}/readyz"))
            .send()
            .await
            .expect_err("not verified");
        let line = unverified(&err, "--ca-file").expect("a TLS verification failure");
        assert!(
            line.contains("cannot verify the certificate of https://127.0.0.1:"),
            "{line}"
        );
        assert!(line.contains("--ca-file"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
