//! A kube-rs client for a registered member cluster, from its stored spec and
//! its credentials decrypted in memory only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::model::{Cluster, ClusterCredentials};

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL does not parse.
    #[error("kubernetes.server {0:?} is not a URL: {1}")]
    Url(String, String),
    /// caData is not base64 PEM certificates.
    #[error("kubernetes.caData holds no usable certificate: {0}")]
    CaData(String),
    /// kube-rs refused the configuration.
    #[error("cannot build a Kubernetes client: {0}")]
    Kube(String),
}

/// The DER certificates of a base64 PEM bundle.
fn ca_certs(ca_data: &str) -> Result<Vec<Vec<u8>>, ClientError> {
    let pem = B64
        .decode(ca_data.trim())
        .map_err(|e| ClientError::CaData(e.to_string()))?;
    let text = String::from_utf8_lossy(&pem);
    let mut certs = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default();
        let der: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        certs.push(
            B64.decode(der)
                .map_err(|e| ClientError::CaData(e.to_string()))?,
        );
    }
    if certs.is_empty() {
        return Err(ClientError::CaData("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Builds a client for `cluster` with `credentials`.
pub fn client(
    cluster: &Cluster,
    credentials: &ClusterCredentials,
) -> Result<kube::Client, ClientError> {
    let k = &cluster.kubernetes;
    let url: http::Uri = k
        .server
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Url(k.server.clone(), e.to_string()))?;
    let mut config = kube::Config::new(url);
    if let Some(ca) = &k.ca_data {
        config.root_cert = Some(ca_certs(ca)?);
    }
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.read_timeout = None; // watches are long; the watcher's own timeout bounds them
    config.auth_info.token = credentials.token.clone().map(secrecy::SecretString::from);
    if let (Some(cert), Some(key)) = (&k.client_certificate_data, &credentials.client_key_data) {
        config.auth_info.client_certificate_data = Some(cert.clone());
        config.auth_info.client_key_data = Some(secrecy::SecretString::from(key.clone()));
    }
    kube::Client::try_from(config).map_err(|e| ClientError::Kube(e.to_string()))
}
