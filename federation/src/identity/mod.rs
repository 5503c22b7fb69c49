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
//! - The trust bundle is the list of roots. A root rotation has three steps,
//!   so no gateway ever meets a certificate from a root it does not trust
//!   yet: [`Identity::start_rotation`] adds a new root to the bundle while
//!   the current one keeps signing (gateways fetch the bundle every few
//!   seconds); [`Identity::activate_rotation`] makes the new root sign (the
//!   old one stays trusted, so its certificates work until their gateways
//!   renew); [`Identity::finish_rotation`] drops the old root. The state is
//!   one sealed store fact changed by compare-and-swap; [`Identity::refresh`]
//!   picks up another replica's change.

mod serving;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

pub use serving::ServingCertificate;

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
    /// A rotation step that does not fit the current state.
    #[error("{0}")]
    Rotation(String),
}

/// The stored form of the CA.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    key_pem: String,
    cert_pem: String,
    /// Older roots still trusted during a rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous: Vec<String>,
    /// The next root, trusted but not signing yet (a rotation's first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<PendingRoot>,
}

/// A root added to the bundle before it signs.
#[derive(Clone, Serialize, Deserialize)]
struct PendingRoot {
    key_pem: String,
    cert_pem: String,
}

/// The CA as loaded: the signing root and the roots still trusted.
struct CaState {
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
    /// Other trusted roots (PEM, DER): a pending next root first, then older
    /// roots kept until the rotation finishes.
    previous: Vec<(String, Vec<u8>)>,
    /// Whether a rotation is in progress.
    rotating: bool,
    /// The stored bytes this was read from (the compare-and-swap version).
    raw: Vec<u8>,
}

impl CaState {
    fn parse(raw: Vec<u8>) -> Result<CaState, IdentityError> {
        let corrupt = |e: &dyn std::fmt::Display| IdentityError::Corrupt(e.to_string());
        let stored: StoredCa = serde_json::from_slice(&raw).map_err(|e| corrupt(&e))?;
        let key = KeyPair::from_pem(&stored.key_pem).map_err(|e| corrupt(&e))?;
        let cert_der = pem_to_der(&stored.cert_pem)?;
        let rotating = stored.pending.is_some() || !stored.previous.is_empty();
        let previous = stored
            .pending
            .map(|p| p.cert_pem)
            .into_iter()
            .chain(stored.previous)
            .map(|pem| pem_to_der(&pem).map(|der| (pem, der)))
            .collect::<Result<_, _>>()?;
        Ok(CaState {
            key,
            cert_pem: stored.cert_pem,
            cert_der,
            previous,
            rotating,
            raw,
        })
    }
}

/// The CA of one trust domain.
pub struct Identity {
    trust_domain: String,
    state: ArcSwap<CaState>,
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
        let fresh = new_root(trust_domain)?;
        let kept = store
            .sealed_meta_or_insert(&Self::store_key(trust_domain), &fresh)
            .await?;
        Ok(Identity {
            trust_domain: trust_domain.to_owned(),
            state: ArcSwap::from_pointee(CaState::parse(kept)?),
            gateway_lifetime: DEFAULT_CERT_LIFETIME,
        })
    }

    fn store_key(trust_domain: &str) -> String {
        format!("ca/{trust_domain}")
    }

    /// Reloads the CA from the store if another replica (or a rotation) changed it.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), IdentityError> {
        let Some(raw) = store
            .sealed_meta(&Self::store_key(&self.trust_domain))
            .await?
        else {
            return Ok(());
        };
        if raw != self.state.load().raw {
            self.state.store(Arc::new(CaState::parse(raw)?));
        }
        Ok(())
    }

    fn stored(current: &CaState) -> Result<StoredCa, IdentityError> {
        serde_json::from_slice(&current.raw).map_err(|e| IdentityError::Corrupt(e.to_string()))
    }

    /// Rotation step 1: a new root joins the trust bundle; the current root
    /// keeps signing until [`Identity::activate_rotation`].
    pub async fn start_rotation(&self, store: &dyn Store) -> Result<(), IdentityError> {
        self.refresh(store).await?;
        let current = self.state.load_full();
        if current.rotating {
            return Err(IdentityError::Rotation(
                "a root rotation is already in progress; finish it first".into(),
            ));
        }
        let fresh: StoredCa = serde_json::from_slice(&new_root(&self.trust_domain)?)
            .map_err(|e| IdentityError::Ca(e.to_string()))?;
        let next = StoredCa {
            pending: Some(PendingRoot {
                key_pem: fresh.key_pem,
                cert_pem: fresh.cert_pem,
            }),
            ..Self::stored(&current)?
        };
        self.swap(store, &current, &next).await
    }

    /// Rotation step 2: the new root signs; the old one stays trusted.
    pub async fn activate_rotation(&self, store: &dyn Store) -> Result<(), IdentityError> {
        self.refresh(store).await?;
        let current = self.state.load_full();
        let stored = Self::stored(&current)?;
        let Some(pending) = stored.pending else {
            return Err(IdentityError::Rotation(
                "no new root to activate: start a rotation first".into(),
            ));
        };
        let next = StoredCa {
            key_pem: pending.key_pem,
            cert_pem: pending.cert_pem,
            previous: vec![stored.cert_pem],
            pending: None,
        };
        self.swap(store, &current, &next).await
    }

    /// Rotation step 3: only the new root stays in the trust bundle.
    pub async fn finish_rotation(&self, store: &dyn Store) -> Result<(), IdentityError> {
        self.refresh(store).await?;
        let current = self.state.load_full();
        let stored = Self::stored(&current)?;
        if stored.pending.is_some() {
            return Err(IdentityError::Rotation(
                "the new root does not sign yet: activate it first".into(),
            ));
        }
        if stored.previous.is_empty() {
            return Err(IdentityError::Rotation(
                "no root rotation is in progress".into(),
            ));
        }
        let next = StoredCa {
            previous: Vec::new(),
            ..stored
        };
        self.swap(store, &current, &next).await
    }

    async fn swap(
        &self,
        store: &dyn Store,
        current: &CaState,
        next: &StoredCa,
    ) -> Result<(), IdentityError> {
        let bytes = serde_json::to_vec(next).map_err(ca_error)?;
        let key = Self::store_key(&self.trust_domain);
        if !store.swap_sealed_meta(&key, &current.raw, &bytes).await? {
            return Err(IdentityError::Rotation(
                "the certificate authority changed meanwhile (another replica); try again".into(),
            ));
        }
        self.state.store(Arc::new(CaState::parse(bytes)?));
        Ok(())
    }

    /// Whether a root rotation is in progress.
    pub fn rotating(&self) -> bool {
        self.state.load().rotating
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

    /// The roots peers trust, PEM: the signing root first.
    pub fn trust_bundle(&self) -> Vec<String> {
        let state = self.state.load();
        std::iter::once(state.cert_pem.clone())
            .chain(state.previous.iter().map(|(pem, _)| pem.clone()))
            .collect()
    }

    /// The signing root certificate, DER.
    pub fn root_der(&self) -> Vec<u8> {
        self.state.load().cert_der.clone()
    }

    /// Whether `root` (DER) is in the trust bundle: the signing root, a
    /// pending next one, or an old one kept until a rotation finishes.
    pub fn trusts(&self, root: &[u8]) -> bool {
        let state = self.state.load();
        state.cert_der == root || state.previous.iter().any(|(_, der)| der == root)
    }

    /// SPIFFE ID of `cluster`'s gateway.
    pub fn gateway_id(&self, cluster: &str) -> String {
        format!("spiffe://{}/cluster/{cluster}/gateway", self.trust_domain)
    }

    /// SPIFFE ID of a workload: its Kubernetes namespace and service account.
    pub fn workload_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// Signs `csr_pem` as the gateway of `cluster`, valid for `lifetime`.
    pub fn sign_gateway(
        &self,
        csr_pem: &str,
        cluster: &str,
        lifetime: Duration,
    ) -> Result<SignedCertificate, IdentityError> {
        let spiffe_id = self.gateway_id(cluster);
        self.sign(csr_pem, spiffe_id, format!("{cluster} gateway"), lifetime)
    }

    /// Signs `csr_pem` for the workload running as `service_account` in
    /// `namespace` (SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>`), valid for `lifetime`.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        namespace: &str,
        service_account: &str,
        lifetime: Duration,
    ) -> Result<SignedCertificate, IdentityError> {
        let spiffe_id = self.workload_id(namespace, service_account);
        self.sign(
            csr_pem,
            spiffe_id,
            format!("{namespace}/{service_account}"),
            lifetime,
        )
    }

    /// Signs `csr_pem` with `spiffe_id` as the only SAN (the CSR's names are ignored).
    fn sign(
        &self,
        csr_pem: &str,
        spiffe_id: String,
        common_name: String,
        lifetime: Duration,
    ) -> Result<SignedCertificate, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "GNS federation");
        name.push(DnType::CommonName, common_name);
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
        let state = self.state.load();
        let issuer = Issuer::from_ca_cert_der(&state.cert_der.clone().into(), &state.key)
            .map_err(ca_error)?;
        let leaf = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(ca_error)?;
        let expires_at_ms = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Ok(SignedCertificate {
            chain_pem: format!("{}{}", leaf.pem(), state.cert_pem),
            spiffe_id,
            expires_at_ms,
        })
    }
}

impl Identity {
    /// Renews a gateway certificate: `current_pem` (leaf first) must be a
    /// currently valid gateway certificate issued by this CA. The CSR is for
    /// the same key (its signature proves possession of it), or for a new key
    /// when `key_proof` is the CSR's PEM text signed by the current key
    /// (ECDSA P-256, SHA-256, ASN.1): the key then rotates with the
    /// certificate. The new certificate has the same SPIFFE ID. Returns it
    /// and the cluster.
    pub fn renew_gateway(
        &self,
        csr_pem: &str,
        current_pem: &str,
        key_proof: Option<&[u8]>,
        lifetime: Duration,
    ) -> Result<(SignedCertificate, String), IdentityError> {
        use rcgen::PublicKeyData;
        let refuse = |m: &str| IdentityError::NotTrusted(m.to_owned());
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| IdentityError::BadCsr(e.to_string()))?;
        let leaf_der = pem_to_der(current_pem).map_err(|_| refuse("certificate is not PEM"))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)
            .map_err(|_| refuse("certificate does not parse"))?;
        // Issued by the signing root, or by a root still trusted during a rotation.
        let state = self.state.load();
        let issued_here = std::iter::once(&state.cert_der)
            .chain(state.previous.iter().map(|(_, der)| der))
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .any(|(_, root)| leaf.verify_signature(Some(root.public_key())).is_ok());
        if !issued_here {
            return Err(refuse("certificate was not issued by this federation's CA"));
        }
        if !leaf.validity().is_valid() {
            return Err(refuse("certificate is expired or not yet valid"));
        }
        let current_key = leaf.public_key().subject_public_key.data.as_ref();
        if current_key != csr.public_key.der_bytes() {
            // A new key: the current one must vouch for it.
            let Some(proof) = key_proof else {
                return Err(refuse(
                    "the CSR is not for the certificate's key (a new key needs keyProof: the CSR signed with the current key)",
                ));
            };
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                current_key,
            )
            .verify(csr_pem.as_bytes(), proof)
            .map_err(|_| refuse("keyProof is not the CSR signed with the certificate's key"))?;
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

/// A new self-signed root for `trust_domain`, as the stored form (JSON).
fn new_root(trust_domain: &str) -> Result<Vec<u8>, IdentityError> {
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
    serde_json::to_vec(&StoredCa {
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
        previous: Vec::new(),
        pending: None,
    })
    .map_err(ca_error)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| IdentityError::Corrupt(format!("root certificate: {e}")))
}
