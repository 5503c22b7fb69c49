//! Identity and gateway config end to end, in process: a real federation mints a join token for a
//! cluster, signs a gateway CSR made with rcgen, and the certificate carries
//! the cluster's SPIFFE ID, lives 24 h and authenticates in a real mutual-TLS
//! handshake against the trust bundle, while a certificate from another CA is
//! refused. Join tokens are one-time, expire, and are not spent on a bad CSR.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gns_federation::server::{self, Config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "identity-admin";

struct Fed {
    api: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl Fed {
    async fn start() -> Fed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().display().to_string();
        let config = Config::parse_from([
            "gns-federation",
            "--listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--data-dir",
            &data_dir,
            "--trust-domain",
            "acme.test",
        ]);
        let federation = server::build(&config).await.expect("federation starts");
        let api = federation.advertise_url.clone();
        let client = gns_trust::client(federation.ca_file.as_deref()).expect("client");
        let task = tokio::spawn(async move {
            let _ = federation.serve(std::future::pending()).await;
        });
        Fed {
            api,
            client,
            _dir: dir,
            _task: task,
        }
    }

    async fn post(&self, path: &str, body: Value, auth: bool) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.api)).json(&body);
        if auth {
            req = req.bearer_auth(TOKEN);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["ignored.example".to_owned()]).expect("params");
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (csr, key)
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificates")
}

fn key_der(key: &rcgen::KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key")
}

/// A TLS server requiring client certificates from `roots`; answers "ok" after a handshake.
async fn mtls_server(
    roots: &[CertificateDer<'static>],
) -> (std::net::SocketAddr, Vec<CertificateDer<'static>>) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(store))
        .build()
        .expect("verifier");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&server_key)
        .expect("cert");
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert.der().clone()], key_der(&server_key))
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, vec![server_cert.der().clone()])
}

/// Connects with `chain`/`key` as client certificate; the bytes the server sent, or the error.
async fn mtls_client(
    addr: std::net::SocketAddr,
    server_roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for r in server_roots {
        roots.add(r.clone()).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(
            ServerName::try_from("localhost").map_err(|e| e.to_string())?,
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_certificates_from_join_tokens() {
    let fed = Fed::start().await;
    let (status, body) = fed
        .post(
            "/v1/clusters",
            json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Join tokens: only for existing clusters, only for admins.
    let (status, _) = fed
        .post("/v1/clusters/nowhere/join-tokens", json!({}), true)
        .await;
    assert_eq!(status, 404);
    let (status, _) = fed
        .post("/v1/clusters/east/join-tokens", json!({}), false)
        .await;
    assert_eq!(status, 401);
    let (status, body) = fed
        .post("/v1/clusters/east/join-tokens", json!({"ttl": "1h"}), true)
        .await;
    assert_eq!(status, 201, "{body}");
    let join = body["token"].as_str().expect("token").to_owned();

    // A bad CSR is refused without spending the token.
    let (status, body) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": "not a csr", "joinToken": join}),
            false,
        )
        .await;
    assert_eq!(status, 422, "{body}");

    let (csr_pem, key) = csr();
    let (status, body) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": csr_pem, "joinToken": join}),
            false,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffeId"], "spiffe://acme.test/cluster/east/gateway");
    let chain = certs(body["certificate"].as_str().expect("chain"));
    assert_eq!(chain.len(), 2, "leaf and root");

    // The leaf: the SPIFFE ID as its only SAN (the CSR's name is ignored), ~24 h.
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("x509");
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("san")
        .expect("has san")
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert_eq!(sans, ["URI(spiffe://acme.test/cluster/east/gateway)"]);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (24 * 3600..=24 * 3600 + 600).contains(&lifetime),
        "lifetime {lifetime} s"
    );

    // Renewal: the current certificate and a CSR for the same key.
    let (renew_csr, _) = {
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        (
            params
                .serialize_request(&key)
                .expect("csr")
                .pem()
                .expect("pem"),
            (),
        )
    };
    let leaf_pem = body["certificate"].as_str().expect("chain").to_owned();
    let (status, renewed) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": renew_csr, "certificate": leaf_pem}),
            false,
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(
        renewed["spiffeId"],
        "spiffe://acme.test/cluster/east/gateway"
    );
    assert_ne!(
        renewed["certificate"], body["certificate"],
        "a new certificate"
    );
    let (other_csr, _) = csr();
    let (status, _) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": other_csr, "certificate": leaf_pem}),
            false,
        )
        .await;
    assert_eq!(
        status, 401,
        "renewal needs a CSR for the certificate's own key"
    );

    // Or a CSR for a new key, vouched for by the current one: the key rotates.
    {
        use base64::Engine as _;
        use rcgen::{PublicKeyData, SigningKey};
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let next_key = rcgen::KeyPair::generate().expect("key");
        let next_csr = csr_for(&next_key);
        let stranger = rcgen::KeyPair::generate().expect("key");
        let forged = b64(stranger.sign(next_csr.as_bytes()).expect("sign"));
        let (status, body) = fed
            .post(
                "/v1/identity/sign",
                json!({"csr": next_csr, "certificate": leaf_pem, "keyProof": forged}),
                false,
            )
            .await;
        assert_eq!(status, 401, "a proof by another key is refused: {body}");
        let (status, body) = fed
            .post(
                "/v1/identity/sign",
                json!({"csr": next_csr, "certificate": leaf_pem, "keyProof": "%%%"}),
                false,
            )
            .await;
        assert_eq!(status, 422, "keyProof must be base64: {body}");
        let other_csr_proof = b64(key.sign(other_csr.as_bytes()).expect("sign"));
        let (status, _) = fed
            .post(
                "/v1/identity/sign",
                json!({"csr": next_csr, "certificate": leaf_pem, "keyProof": other_csr_proof}),
                false,
            )
            .await;
        assert_eq!(status, 401, "the proof must be over this very CSR");
        let proof = b64(key.sign(next_csr.as_bytes()).expect("sign"));
        let (status, rotated) = fed
            .post(
                "/v1/identity/sign",
                json!({"csr": next_csr, "certificate": leaf_pem, "keyProof": proof}),
                false,
            )
            .await;
        assert_eq!(status, 200, "{rotated}");
        assert_eq!(
            rotated["spiffeId"],
            "spiffe://acme.test/cluster/east/gateway"
        );
        let rotated_chain = certs(rotated["certificate"].as_str().expect("chain"));
        let (_, rotated_leaf) =
            x509_parser::parse_x509_certificate(&rotated_chain[0]).expect("x509");
        assert_eq!(
            rotated_leaf.public_key().subject_public_key.data.as_ref(),
            next_key.der_bytes(),
            "the renewed certificate is for the new key"
        );
    }
    let (status, _) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": renew_csr, "certificate": leaf_pem, "joinToken": "x"}),
            false,
        )
        .await;
    assert_eq!(status, 422, "a join token or a certificate, not both");

    // The token was one-time.
    let (csr2, _) = csr();
    let (status, _) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": csr2, "joinToken": join}),
            false,
        )
        .await;
    assert_eq!(status, 401, "a used join token is refused");

    // The trust bundle is public and verifies the certificate in a real mTLS handshake.
    let bundle: Value = fed
        .client
        .get(format!("{}/v1/identity/trust-bundle", fed.api))
        .send()
        .await
        .expect("bundle")
        .json()
        .await
        .expect("json");
    assert_eq!(bundle["trustDomain"], "acme.test");
    let roots: Vec<CertificateDer<'static>> = bundle["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .flat_map(|r| certs(r.as_str().expect("pem")))
        .collect();
    assert_eq!(roots, chain[1..], "the chain ends at the bundle's root");
    let (addr, server_roots) = mtls_server(&roots).await;
    let accepted = mtls_client(addr, &server_roots, chain.clone(), key_der(&key)).await;
    assert_eq!(
        accepted.as_deref(),
        Ok(&b"ok"[..]),
        "the signed certificate authenticates"
    );

    // A certificate from another CA is refused by the same server.
    let rogue_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut rogue_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    rogue_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca = rogue_params.self_signed(&rogue_ca_key).expect("rogue ca");
    let rogue_issuer = rcgen::Issuer::new(rogue_params, &rogue_ca_key);
    let rogue_key = rcgen::KeyPair::generate().expect("key");
    let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf_params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://acme.test/cluster/east/gateway"
            .try_into()
            .expect("uri"),
    )];
    let rogue_leaf = leaf_params
        .signed_by(&rogue_key, &rogue_issuer)
        .expect("leaf");
    let refused = mtls_client(
        addr,
        &server_roots,
        vec![rogue_leaf.der().clone(), rogue_ca.der().clone()],
        key_der(&rogue_key),
    )
    .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must be refused: {refused:?}"
    );
    let rogue_csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&rogue_key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (status, _) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": rogue_csr, "certificate": rogue_leaf.pem()}),
            false,
        )
        .await;
    assert_eq!(status, 401, "another CA's certificate renews nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_expire() {
    let fed = Fed::start().await;
    fed.post(
        "/v1/clusters",
        json!({"name": "west", "kubernetes": {"server": "https://10.0.0.2:6443", "token": "t"}}),
        true,
    )
    .await;
    let (status, body) = fed
        .post("/v1/clusters/west/join-tokens", json!({"ttl": "1s"}), true)
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = fed
        .post("/v1/clusters/west/join-tokens", json!({"ttl": "30d"}), true)
        .await;
    assert_eq!(status, 422, "longer than a week");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (csr_pem, _) = csr();
    let (status, _) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": csr_pem, "joinToken": body["token"]}),
            false,
        )
        .await;
    assert_eq!(status, 401, "an expired join token is refused");
}

async fn get(fed: &Fed, path: &str) -> (u16, Value) {
    let resp = fed
        .client
        .get(format!("{}{path}", fed.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The compiled gateway config is visible per cluster, and routing the
/// compiler leaves out shows why on the routing object's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_config_and_routing_problems() {
    let fed = Fed::start().await;
    for (name, gateway) in [
        (
            "east",
            Some(json!({"ingressAddress": "127.0.0.1:15443", "egressAddress": "10.8.0.53"})),
        ),
        ("west", None),
    ] {
        let mut body =
            json!({"name": name, "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}});
        if let Some(g) = gateway {
            body["gateway"] = g;
        }
        let (status, body) = fed.post("/v1/clusters", body, true).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = fed
        .post(
            "/v1/global-namespaces",
            json!({"name": "production", "domain": "production.app.acme.com",
                   "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let resp = fed
        .client
        .put(format!(
            "{}/v1/global-namespaces/production/services/web/routing",
            fed.api
        ))
        .bearer_auth(TOKEN)
        .json(&json!({"rules": [{"destinations": [{"cluster": "west", "weight": 100}]}]}))
        .send()
        .await
        .expect("put routing");
    assert_eq!(resp.status().as_u16(), 201);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, routing) = get(
            &fed,
            "/v1/global-namespaces/production/services/web/routing",
        )
        .await;
        assert_eq!(status, 200);
        let problems = routing["status"]["problems"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if problems.iter().any(|p| {
            p.as_str()
                .is_some_and(|m| m.contains("west has no gateway"))
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the routing status never named the problem: {routing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, config) = get(&fed, "/v1/config/gateways/east").await;
    assert_eq!(status, 200, "{config}");
    assert_eq!(config["trustDomain"], "acme.test");
    assert_eq!(
        config["gateways"]["east"]["ingressAddress"],
        "127.0.0.1:15443"
    );
    assert!(
        config["gateways"].get("west").is_none(),
        "west has no gateway"
    );
    let web = &config["services"]["web.production.app.acme.com"];
    assert!(
        web.get("rules").is_none_or(|r| r == &json!([])),
        "the broken routing is left out: {web}"
    );
    let (status, _) = get(&fed, "/v1/config/gateways/nowhere").await;
    assert_eq!(status, 404);
}

/// Fetches the trust bundle: (roots DER, rotating).
async fn bundle(fed: &Fed) -> (Vec<CertificateDer<'static>>, bool) {
    let body: Value = fed
        .client
        .get(format!("{}/v1/identity/trust-bundle", fed.api))
        .send()
        .await
        .expect("bundle")
        .json()
        .await
        .expect("json");
    let roots = body["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .flat_map(|r| certs(r.as_str().expect("pem")))
        .collect();
    (roots, body["rotating"] == true)
}

/// A CSR for `key` (renewal needs the certificate's own key).
fn csr_for(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_keeps_old_certificates_trusted_until_finished() {
    let fed = Fed::start().await;
    let (status, body) = fed
        .post(
            "/v1/clusters",
            json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = fed
        .post("/v1/clusters/east/join-tokens", json!({}), true)
        .await;
    let join = body["token"].as_str().expect("token").to_owned();
    let (csr_pem, key) = csr();
    let (status, body) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": csr_pem, "joinToken": join}),
            false,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let old_pem = body["certificate"].as_str().expect("chain").to_owned();
    let old_chain = certs(&old_pem);
    let (old_roots, rotating) = bundle(&fed).await;
    assert_eq!((old_roots.len(), rotating), (1, false));

    // Only admins rotate; finishing without a rotation is a conflict.
    let (status, _) = fed
        .post(
            "/v1/identity/root-rotation",
            json!({"phase": "start"}),
            false,
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = fed
        .post(
            "/v1/identity/root-rotation",
            json!({"phase": "finish"}),
            true,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = fed
        .post(
            "/v1/identity/root-rotation",
            json!({"phase": "sideways"}),
            true,
        )
        .await;
    assert!(status == 400 || status == 422, "{status} {body}");

    // Start: the new root joins the bundle; the current one still signs.
    let rotate = async |phase: &str| {
        fed.post("/v1/identity/root-rotation", json!({"phase": phase}), true)
            .await
    };
    let (status, body) = rotate("start").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rotating"], true);
    let (staged, rotating) = bundle(&fed).await;
    assert!(rotating);
    assert_eq!(staged.len(), 2, "current and next roots");
    assert_eq!(staged[0], old_roots[0], "the current root still signs");
    assert_eq!(rotate("start").await.0, 409, "one rotation at a time");
    let (status, body) = rotate("finish").await;
    assert_eq!(status, 409, "not before the new root signs: {body}");
    let (_, body) = fed
        .post("/v1/clusters/east/join-tokens", json!({}), true)
        .await;
    let join = body["token"].as_str().expect("token").to_owned();
    let (staged_csr, _) = csr();
    let (status, body) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": staged_csr, "joinToken": join}),
            false,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        certs(body["certificate"].as_str().expect("chain"))[1],
        old_roots[0],
        "signed by the current root while the next one is only trusted"
    );

    // Activate: the new root signs (first in the bundle), the old one stays trusted.
    let (status, body) = rotate("activate").await;
    assert_eq!(status, 200, "{body}");
    let (roots, rotating) = bundle(&fed).await;
    assert!(rotating);
    assert_eq!(roots.len(), 2, "new and old roots");
    assert_eq!(roots[0], staged[1], "the staged root signs now");
    assert_eq!(roots[1], old_roots[0], "the old root is still trusted");
    assert_eq!(rotate("activate").await.0, 409, "nothing staged any more");

    // During the rotation both generations authenticate against the bundle.
    let (addr, server_roots) = mtls_server(&roots).await;
    assert_eq!(
        mtls_client(addr, &server_roots, old_chain.clone(), key_der(&key))
            .await
            .as_deref(),
        Ok(&b"ok"[..]),
        "a certificate of the old root still authenticates"
    );
    // The old certificate renews onto the new root.
    let (status, renewed) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": csr_for(&key), "certificate": old_pem}),
            false,
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let new_chain = certs(renewed["certificate"].as_str().expect("chain"));
    assert_eq!(new_chain[1], roots[0], "renewed under the new root");
    assert_eq!(
        mtls_client(addr, &server_roots, new_chain.clone(), key_der(&key))
            .await
            .as_deref(),
        Ok(&b"ok"[..]),
        "a certificate of the new root authenticates"
    );

    // Finish: only the new root is left; the old generation is refused.
    let (status, body) = fed
        .post(
            "/v1/identity/root-rotation",
            json!({"phase": "finish"}),
            true,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (final_roots, rotating) = bundle(&fed).await;
    assert_eq!(final_roots, vec![roots[0].clone()]);
    assert!(!rotating);
    let (addr, server_roots) = mtls_server(&final_roots).await;
    assert!(
        mtls_client(addr, &server_roots, old_chain, key_der(&key))
            .await
            .is_err(),
        "the old root is no longer trusted"
    );
    assert_eq!(
        mtls_client(addr, &server_roots, new_chain, key_der(&key))
            .await
            .as_deref(),
        Ok(&b"ok"[..])
    );
    let (status, _) = fed
        .post(
            "/v1/identity/sign",
            json!({"csr": csr_for(&key), "certificate": old_pem}),
            false,
        )
        .await;
    assert_eq!(status, 401, "the old generation renews nothing any more");

    // Signing, renewal and every rotation step are in the audit log, by whom.
    let (status, audit) = get(&fed, "/v1/audit?limit=100").await;
    assert_eq!(status, 200, "{audit}");
    let rows: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap_or_default().to_owned(),
                r["action"].as_str().unwrap_or_default().to_owned(),
                r["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for wanted in [
        ("join-token:east", "sign", "certificate"),
        ("gateway:east", "renew", "certificate"),
        ("bootstrap-admin", "rotation-start", "root"),
        ("bootstrap-admin", "rotation-activate", "root"),
        ("bootstrap-admin", "rotation-finish", "root"),
    ] {
        assert!(
            rows.iter()
                .any(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()) == wanted),
            "{wanted:?} in {rows:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_certificates_carry_namespace_and_service_account() {
    let fed = Fed::start().await;
    let (csr_pem, key) = csr();
    let request =
        json!({"csr": csr_pem, "namespace": "shop", "serviceAccount": "web", "ttl": "1h"});
    let (status, _) = fed
        .post("/v1/identity/workloads/sign", request.clone(), false)
        .await;
    assert_eq!(status, 401, "needs a bearer token");
    for (bad, field) in [
        (
            json!({"csr": csr_pem, "namespace": "Shop!", "serviceAccount": "web"}),
            "namespace",
        ),
        (
            json!({"csr": csr_pem, "namespace": "shop", "serviceAccount": "web", "ttl": "1000h"}),
            "ttl",
        ),
        (
            json!({"csr": "nope", "namespace": "shop", "serviceAccount": "web"}),
            "csr",
        ),
    ] {
        let (status, body) = fed.post("/v1/identity/workloads/sign", bad, true).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains(field), "names {field}: {body}");
    }
    let (status, body) = fed.post("/v1/identity/workloads/sign", request, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["spiffeId"], "spiffe://acme.test/ns/shop/sa/web");
    let chain = certs(body["certificate"].as_str().expect("chain"));
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("x509");
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("san")
        .expect("has san")
        .value
        .general_names
        .iter()
        .map(|n| format!("{n}"))
        .collect();
    assert_eq!(sans, ["URI(spiffe://acme.test/ns/shop/sa/web)"]);
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (3600..=3600 + 360).contains(&lifetime),
        "about 1 h: {lifetime} s"
    );
    let (roots, _) = bundle(&fed).await;
    let (addr, server_roots) = mtls_server(&roots).await;
    assert_eq!(
        mtls_client(addr, &server_roots, chain, key_der(&key))
            .await
            .as_deref(),
        Ok(&b"ok"[..]),
        "the workload certificate authenticates against the trust bundle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_redeemed_at_once_by_several_requests_signs_exactly_once() {
    let fed = Fed::start().await;
    let (status, body) = fed
        .post(
            "/v1/clusters",
            json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}}),
            true,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, body) = fed
        .post("/v1/clusters/east/join-tokens", json!({}), true)
        .await;
    let join = body["token"].as_str().expect("token").to_owned();
    let (csr_pem, _key) = csr();
    let request = json!({"csr": csr_pem, "joinToken": join});
    let answers = futures::future::join_all(
        (0..8).map(|_| fed.post("/v1/identity/sign", request.clone(), false)),
    )
    .await;
    let signed: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(signed.len(), 1, "{answers:?}");
    assert!(signed[0]["certificate"].is_string() && signed[0]["apiToken"].is_string());
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == 200 || *status == 401),
        "{answers:?}"
    );
    // One gateway token was minted, the one answered.
    let (_, tokens) = get(&fed, "/v1/tokens").await;
    let minted: Vec<&str> = tokens["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .filter(|n| n.starts_with("gateway-east-"))
        .collect();
    assert_eq!(minted, [signed[0]["apiTokenName"].as_str().expect("name")]);
}
