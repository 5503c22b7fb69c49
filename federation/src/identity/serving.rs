//! The federation's own serving certificate, issued by its CA: what its API
//! listener presents when no `--tls-cert` is given. Unlike gateway
//! certificates it names hosts (DNS names and IP addresses), not a SPIFFE
//! identity, and is only for TLS server authentication.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{BACKDATE, Identity, IdentityError, ca_error, offset};

/// A serving certificate and its key.
#[derive(Debug, Clone)]
pub struct ServingCertificate {
    /// The leaf, then the root that signed it, DER.
    pub chain: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl ServingCertificate {
    /// The root (DER) that signed it.
    pub fn issuer(&self) -> &[u8] {
        self.chain.last().map_or(&[], Vec::as_slice)
    }
}

impl Identity {
    /// Issues a serving certificate with a fresh key for `names` (each a
    /// DNS name or an IP address), valid for `lifetime`, signed by the
    /// current signing root.
    pub fn issue_serving(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCertificate, IdentityError> {
        if names.is_empty() {
            return Err(IdentityError::Ca(
                "a serving certificate needs at least one name".into(),
            ));
        }
        let key = KeyPair::generate().map_err(ca_error)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "GNS federation");
        dn.push(DnType::CommonName, names[0].clone());
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| IdentityError::Ca(format!("serving name {name:?}: {e}"))),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_before = now - BACKDATE.min(lifetime / 10);
        let not_after = now + lifetime;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        let state = self.state.load();
        let issuer = Issuer::from_ca_cert_der(&state.cert_der.clone().into(), &state.key)
            .map_err(ca_error)?;
        let leaf = params.signed_by(&key, &issuer).map_err(ca_error)?;
        Ok(ServingCertificate {
            chain: vec![leaf.der().to_vec(), state.cert_der.clone()],
            key_pkcs8: key.serialize_der(),
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SecretBox, open};

    #[tokio::test]
    async fn a_serving_certificate_names_its_hosts_and_chains_to_the_signing_root() {
        let dir = tempfile::tempdir().expect("dir");
        let secrets =
            SecretBox::from_base64(&SecretBox::generate_key_text().expect("rng")).expect("key");
        let store = open(None, dir.path(), secrets).await.expect("store");
        let identity = Identity::load_or_create(store.as_ref(), "acme.test")
            .await
            .expect("ca");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = identity
            .issue_serving(&names, Duration::from_secs(3600))
            .expect("issued");
        assert_eq!(cert.issuer(), identity.root_der().as_slice());
        let (_, leaf) = x509_parser::parse_x509_certificate(&cert.chain[0]).expect("parses");
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .expect("ext")
            .expect("sans")
            .value
            .general_names
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(sans, ["DNSName(localhost)", "IPAddress(7f:00:00:01)"]);
        let (_, root) = x509_parser::parse_x509_certificate(cert.issuer()).expect("root");
        assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
        assert!(
            identity
                .issue_serving(&[], Duration::from_secs(60))
                .is_err()
        );
    }
}
