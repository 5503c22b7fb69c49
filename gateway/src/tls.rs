//! Mutual TLS between gateways: TLS 1.3 only, certificates from the
//! federation's CA, identities as SPIFFE IDs.
//!
//! - Ingress (server side) requires a client certificate that chains to the
//!   trust bundle; after the handshake [`peer_cluster`] reads the peer's
//!   SPIFFE ID, which must be a gateway of the same trust domain.
//! - Towards a peer (client side), [`SpiffeServerVerifier`] checks the chain
//!   against the bundle and that the server is exactly the expected peer's
//!   gateway (`spiffe://<td>/cluster/<peer>/gateway`); a wrong peer fails the
//!   handshake. Host names play no part.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Errors of building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The trust bundle is unusable.
    #[error("trust bundle: {0}")]
    Bundle(String),
}

/// This gateway's certificate and key, and the roots it trusts.
#[derive(Debug)]
pub struct TlsIdentity {
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// Leaf first, then the chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Trusted roots.
    pub roots: Vec<CertificateDer<'static>>,
}

/// The SPIFFE ID of `cluster`'s gateway.
pub fn gateway_id(trust_domain: &str, cluster: &str) -> String {
    format!("spiffe://{trust_domain}/cluster/{cluster}/gateway")
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// The cluster of a peer gateway certificate of `trust_domain`, if it is one.
pub fn peer_cluster(cert: &CertificateDer<'_>, trust_domain: &str) -> Option<String> {
    let prefix = format!("spiffe://{trust_domain}/cluster/");
    uri_sans(cert).into_iter().find_map(|uri| {
        let cluster = uri.strip_prefix(&prefix)?.strip_suffix("/gateway")?;
        (!cluster.is_empty() && !cluster.contains('/')).then(|| cluster.to_owned())
    })
}

/// ring, with AES-128-GCM first: both ends prefer it to AES-256-GCM (four
/// fewer AES rounds per block, still a TLS 1.3 mandatory suite), which is
/// what bulk tunnel traffic between gateways pays for.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsError::Bundle("no roots".into()));
    }
    Ok(store)
}

/// Server side of gateway-to-gateway mTLS (HTTP/2).
pub fn ingress_config(identity: &TlsIdentity) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(&identity.roots)?),
        provider(),
    )
    .build()
    .map_err(|e| TlsError::Bundle(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client side towards the gateway of `peer` (HTTP/2).
pub fn peer_config(identity: &TlsIdentity, peer: &str) -> Result<rustls::ClientConfig, TlsError> {
    let verifier =
        SpiffeServerVerifier::new(&identity.roots, gateway_id(&identity.trust_domain, peer))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies a server chains to the bundle and is exactly the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// Trusts `roots`; accepts only a certificate for `expected`.
    pub fn new(roots: &[CertificateDer<'static>], expected: String) -> Result<Self, TlsError> {
        let anchors = roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::Bundle(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if anchors.is_empty() {
            return Err(TlsError::Bundle("no roots".into()));
        }
        Ok(Self {
            anchors,
            expected,
            provider: provider(),
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if uri_sans(end_entity).contains(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}
