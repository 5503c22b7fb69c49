//! Identity: the federation's certificate authority for one trust domain, and
//! the certificates it signs for gateways.
//!
//! - The CA (an ECDSA P-256 key and a self-signed root, made with rcgen) is
//!   created once and kept in the store sealed with the store's secret key,
//!   like credentials; every replica loads the same one.
//! - A gateway proves which cluster it is with a one-time join token
//!   (`POST /v1/clusters/{name}/join-tokens`, hashed at rest, expiring) and
//!   sends a CSR; the federation decides the identity — the SPIFFE ID
//!   `spiffe://<trust-domain>/cluster/<cluster>/gateway` — and ignores the
//!   names in the CSR. Certificates are short-lived (default 24 h) and good
//!   for both TLS server and client authentication.
//! - The trust bundle is the list of roots (one now; two during a rotation).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Default lifetime of a signed certificate.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long the root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Tolerated clock skew: certificates are valid from this long before now.
const BACKDATE: Duration = Duration::from_secs(300);

/// Errors of the identity service.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CSR is not a valid, self-signed PKCS#10 request.
    #[error("the CSR is not a valid PEM PKCS#10 request signed by its key: {0}")]
    BadCsr(String),
    /// Making or signing a certificate failed.
    #[error("certificate authority error: {0}")]
    Ca(String),
    /// The stored CA could not be read.
    #[error("the stored certificate authority is unreadable: {0}")]
    Corrupt(String),
    /// A certificate presented for renewal is not a valid gateway
    /// certificate of this CA, or the CSR is not for its key.
    #[error("renewal refused: {0}")]
    NotTrusted(String),
}

/// The stored form of the CA.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    key_pem: String,
    cert_pem: String,
}

/// The CA of one trust domain.
pub struct Identity {
    trust_domain: String,
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
    gateway_lifetime: Duration,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A signed certificate.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    /// The leaf then the root, PEM.
    pub chain_pem: String,
    /// The SPIFFE ID it carries.
    pub spiffe_id: String,
    /// End of validity, Unix milliseconds.
    pub expires_at_ms: i64,
}

fn ca_error(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Ca(e.to_string())
}

fn offset(at: std::time::SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at)
}

impl Identity {
    /// Loads the CA of `trust_domain` from the store, creating it the first time.
    pub async fn load_or_create(
        store: &dyn Store,
        trust_domain: &str,
    ) -> Result<Identity, IdentityError> {
        let fresh = Self::generate(trust_domain)?;
        let stored = StoredCa {
            key_pem: fresh.key.serialize_pem(),
            cert_pem: fresh.cert_pem.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(ca_error)?;
        let kept = store
            .sealed_meta_or_insert(&format!("ca/{trust_domain}"), &bytes)
            .await?;
        let kept: StoredCa =
            serde_json::from_slice(&kept).map_err(|e| IdentityError::Corrupt(e.to_string()))?;
        let key =
            KeyPair::from_pem(&kept.key_pem).map_err(|e| IdentityError::Corrupt(e.to_string()))?;
        let cert_der = pem_to_der(&kept.cert_pem)?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            key,
            cert_pem: kept.cert_pem,
            cert_der,
            gateway_lifetime: DEFAULT_CERT_LIFETIME,
        })
    }

    fn generate(trust_domain: &str) -> Result<Identity, IdentityError> {
        let key = KeyPair::generate().map_err(ca_error)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "GNS federation");
        name.push(DnType::CommonName, format!("GNS root CA {trust_domain}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = std::time::SystemTime::now();
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + ROOT_LIFETIME);
        let cert = params.self_signed(&key).map_err(ca_error)?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
            gateway_lifetime: DEFAULT_CERT_LIFETIME,
        })
    }

    /// Sets how long gateway certificates live.
    pub fn with_gateway_lifetime(mut self, lifetime: Duration) -> Self {
        self.gateway_lifetime = lifetime;
        self
    }

    /// How long gateway certificates live.
    pub fn gateway_lifetime(&self) -> Duration {
        self.gateway_lifetime
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots peers trust, PEM.
    pub fn trust_bundle(&self) -> Vec<String> {
        vec![self.cert_pem.clone()]
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SPIFFE ID of `cluster`'s gateway.
    pub fn gateway_id(&self, cluster: &str) -> String {
        format!("spiffe://{}/cluster/{cluster}/gateway", self.trust_domain)
    }

    /// Signs `csr_pem` as the gateway of `cluster`, valid for `lifetime`.
    pub fn sign_gateway(
        &self,
        csr_pem: &str,
        cluster: &str,
        lifetime: Duration,
    ) -> Result<SignedCertificate, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::BadCsr(e.to_string()))?;
        let spiffe_id = self.gateway_id(cluster);
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "GNS federation");
        name.push(DnType::CommonName, format!("{cluster} gateway"));
        params.distinguished_name = name;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.clone().try_into().map_err(ca_error)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = std::time::SystemTime::now();
        let not_after = now + lifetime;
        // Backdated for clock skew, but by at most a tenth of the lifetime, so
        // renewal at two thirds of the validity stays two thirds of the lifetime.
        params.not_before = offset(now - BACKDATE.min(lifetime / 10));
        params.not_after = offset(not_after);
        let issuer =
            Issuer::from_ca_cert_der(&self.cert_der.clone().into(), &self.key).map_err(ca_error)?;
        let leaf = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(ca_error)?;
        let expires_at_ms = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(SignedCertificate {
            chain_pem: format!("{}{}", leaf.pem(), self.cert_pem),
            spiffe_id,
            expires_at_ms,
        })
    }
}

impl Identity {
    /// Renews a gateway certificate: `current_pem` (leaf first) must be a
    /// currently valid gateway certificate issued by this CA, and the CSR must
    /// be for the same key (the CSR's signature proves possession of it). The
    /// new certificate has the same SPIFFE ID. Returns it and the cluster.
    pub fn renew_gateway(
        &self,
        csr_pem: &str,
        current_pem: &str,
        lifetime: Duration,
    ) -> Result<(SignedCertificate, String), IdentityError> {
        use rcgen::PublicKeyData;
        let refuse = |m: &str| IdentityError::NotTrusted(m.to_owned());
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::BadCsr(e.to_string()))?;
        let leaf_der = pem_to_der(current_pem).map_err(|_| refuse("certificate is not PEM"))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
            .map_err(|_| refuse("certificate does not parse"))?;
        let (_, root) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| IdentityError::Corrupt(e.to_string()))?;
        leaf.verify_signature(Some(root.public_key()))
            .map_err(|_| refuse("certificate was not issued by this federation's CA"))?;
        if !leaf.validity().is_valid() {
            return Err(refuse("certificate is expired or not yet valid"));
        }
        if leaf.public_key().subject_public_key.data.as_ref() != csr.public_key.der_bytes() {
            return Err(refuse("the CSR is not for the certificate's key"));
        }
        let prefix = format!("spiffe://{}/cluster/", self.trust_domain);
        let cluster = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .into_iter()
            .flat_map(|san| san.value.general_names.iter())
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => uri
                    .strip_prefix(&prefix)?
                    .strip_suffix("/gateway")
                    .map(str::to_owned),
                _ => None,
            })
            .ok_or_else(|| {
                refuse("certificate is not a gateway certificate of this trust domain")
            })?;
        let signed = self.sign_gateway(csr_pem, &cluster, lifetime)?;
        Ok((signed, cluster))
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| IdentityError::Corrupt(format!("root certificate: {e}")))
}
