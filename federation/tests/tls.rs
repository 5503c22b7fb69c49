//! The API's TLS with a real listener and real clients: the certificate the
//! federation issues itself verifies with the `ca.pem` it writes and follows
//! a root rotation; `--tls-cert`/`--tls-key` are served and reloaded when
//! the files change (a broken pair keeps the old one); a client without the
//! CA says so in one line and never falls back to plain text.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::fed::Fed;

/// A CA and a leaf for `127.0.0.1` it signed: (CA PEM, chain PEM (leaf then CA), key PEM).
fn issued_pair() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test operator CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    (
        ca.pem(),
        format!("{}{}", leaf.pem(), ca.pem()),
        leaf_key.serialize_pem(),
    )
}

/// `GET /healthz` with a fresh client trusting only `ca_pem`: the status or the error.
async fn healthz_trusting(api: &str, ca_pem: &str) -> Result<u16, String> {
    let roots = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).expect("pem");
    let client = gns_trust::client_builder(None)
        .expect("builder")
        .tls_certs_only(roots)
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    client
        .get(format!("{api}/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| gns_trust::unverified(&e, "--ca-file").unwrap_or_else(|| e.to_string()))
}

async fn until_ok(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issued_certificate_verifies_with_ca_pem_and_follows_a_root_rotation() {
    let fed = Fed::start().await;
    let ca_file = fed.ca_file.clone().expect("a CA file");
    let ca_pem = std::fs::read_to_string(&ca_file).expect("ca.pem");
    assert_eq!(healthz_trusting(&fed.api, &ca_pem).await, Ok(200));
    // Another CA does not verify it, and the failure is one clear line.
    let (other_ca, _, _) = issued_pair();
    let refused = healthz_trusting(&fed.api, &other_ca)
        .await
        .expect_err("not verified");
    assert!(
        refused.contains("cannot verify the certificate of https://127.0.0.1:"),
        "{refused}"
    );
    // No plain-text fallback: http:// to the TLS listener fails.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", fed.addr))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    // Rotation: the API stays on the old root while it is in the bundle
    // (clients have the whole rotation to learn the new one), ca.pem holds
    // both meanwhile, and the API moves to the new root when the old one
    // leaves the bundle.
    for phase in ["start", "activate"] {
        fed.post("/v1/identity/root-rotation", json!({"phase": phase}))
            .await;
    }
    let bundle: Value = fed.get("/v1/identity/trust-bundle").await;
    let new_root = bundle["roots"][0].as_str().expect("new root").to_owned();
    until_ok(
        "ca.pem to hold both roots",
        Duration::from_secs(15),
        async || {
            std::fs::read_to_string(&ca_file)
                .is_ok_and(|t| t.matches("BEGIN CERTIFICATE").count() == 2)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        healthz_trusting(&fed.api, &ca_pem).await,
        Ok(200),
        "still served under the old root while it is trusted"
    );
    fed.post("/v1/identity/root-rotation", json!({"phase": "finish"}))
        .await;
    until_ok(
        "the API to be served under the new root",
        Duration::from_secs(15),
        async || healthz_trusting(&fed.api, &new_root).await == Ok(200),
    )
    .await;
    until_ok(
        "ca.pem to hold the new root only",
        Duration::from_secs(15),
        async || std::fs::read_to_string(&ca_file).is_ok_and(|t| t == new_root),
    )
    .await;
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_certificate_files_are_served_and_reloaded_when_they_change() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (first_ca, chain, leaf_key) = issued_pair();
    write(&cert, &chain);
    write(&key, &leaf_key);
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let fed = Fed::start_with(None, &["--tls-cert", &cert_arg, "--tls-key", &key_arg]).await;
    assert_eq!(healthz_trusting(&fed.api, &first_ca).await, Ok(200));
    // ca.pem carries the chain's root beside the federation's own CA.
    let ca_pem = std::fs::read_to_string(fed.ca_file.as_ref().expect("CA file")).expect("ca.pem");
    assert!(ca_pem.ends_with(&first_ca), "{ca_pem}");

    // A key that does not belong to the new certificate: the old pair stays.
    let (second_ca, second_chain, second_key) = issued_pair();
    let (_, _, unrelated_key) = issued_pair();
    write(&cert, &second_chain);
    write(&key, &unrelated_key);
    // Seen (a failed reload is counted), and the old pair is still served.
    let metrics = async || {
        let answer = fed
            .fresh_client(Duration::from_secs(3))
            .get(format!("{}/metrics", fed.api))
            .send()
            .await;
        match answer {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    until_ok(
        "the mismatched pair to be seen and refused",
        Duration::from_secs(15),
        async || {
            metrics()
                .await
                .contains("gns_api_tls_reloads_total{result=\"error\"}")
        },
    )
    .await;
    assert_eq!(healthz_trusting(&fed.api, &first_ca).await, Ok(200));
    // The matching key arrives: the new certificate is served.
    write(&key, &second_key);
    until_ok(
        "the new certificate to be served",
        Duration::from_secs(15),
        async || healthz_trusting(&fed.api, &second_ca).await == Ok(200),
    )
    .await;
    assert!(
        metrics()
            .await
            .contains("gns_api_tls_reloads_total{result=\"ok\"}"),
        "the reload is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_without_its_root_leaves_ca_pem_empty_for_the_systems_roots() {
    // An operator's certificate from a CA clients already trust (a public
    // one): the chain ends below the root, so the federation has no root to
    // hand out, and ca.pem is empty (clients then use the system's roots).
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let (operator_ca, chain, leaf_key) = issued_pair();
    let leaf_only = chain.replace(&operator_ca, "");
    write(&cert, &leaf_only);
    write(&key, &leaf_key);
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let fed = Fed::start_with(None, &["--tls-cert", &cert_arg, "--tls-key", &key_arg]).await;
    let ca_pem = std::fs::read_to_string(fed.ca_file.as_ref().expect("CA file")).expect("ca.pem");
    assert!(ca_pem.trim().is_empty(), "{ca_pem}");
    assert!(
        gns_trust::read_roots(fed.ca_file.as_ref().expect("CA file"))
            .expect("reads")
            .is_empty()
    );
    assert_eq!(healthz_trusting(&fed.api, &operator_ca).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issued_certificate_names_the_tls_san_hosts_only() {
    let fed = Fed::start_with(None, &["--tls-san", "localhost"]).await;
    let ca_pem = std::fs::read_to_string(fed.ca_file.as_ref().expect("CA file")).expect("ca.pem");
    let port = fed.addr.port();
    assert_eq!(
        healthz_trusting(&format!("https://localhost:{port}"), &ca_pem).await,
        Ok(200)
    );
    // 127.0.0.1 is a default name, but --tls-san replaces the defaults.
    let refused = healthz_trusting(&format!("https://127.0.0.1:{port}"), &ca_pem)
        .await
        .expect_err("not a name of the certificate");
    assert!(
        refused.contains("cannot verify the certificate"),
        "{refused}"
    );
}

#[test]
fn conflicting_tls_flags_are_refused() {
    use clap::Parser;
    let parse = |extra: &[&str]| {
        let mut args = vec!["gns-federation"];
        args.extend_from_slice(extra);
        gns_federation::server::Config::try_parse_from(args).map(|_| ())
    };
    assert!(
        parse(&["--tls-cert", "c.pem"]).is_err(),
        "a cert needs its key"
    );
    assert!(
        parse(&["--tls-key", "k.pem"]).is_err(),
        "a key needs its cert"
    );
    assert!(
        parse(&["--tls-cert", "c", "--tls-key", "k", "--insecure-http"]).is_err(),
        "plain HTTP and a certificate at once"
    );
    assert!(parse(&["--tls-san", "gns.example", "--insecure-http"]).is_err());
    assert!(parse(&["--tls-san", "gns.example,10.0.0.5"]).is_ok());
}
