//! Gateways end to end with real processes: `gns-federation` plus one
//! `gns-gateway` per cluster (each bootstrapped with a join token: CSR →
//! certificate from the federation's CA), two Kubernetes API test servers as
//! clusters `east` and `west`, and real HTTP upstreams. A request to east's
//! egress reaches west's upstream through west's ingress over mutual TLS;
//! the 99/1 split and the User-Agent rule hold; when west's endpoints go
//! away the request fails over to east; certificates renew under load
//! without a failed request; the public entry serves clients outside every
//! cluster until an access policy denies `external`; a client with a
//! certificate from another CA is refused by the ingress (and counted); the
//! ingress speaks neither plaintext nor TLS below 1.3; the data path outlives
//! the federation. Routing's L7 policies act on the data path: a 503 is
//! retried (and counted) within the retry budget and passed on beyond it, an
//! overall timeout answers 504 before a slow upstream does, and a per-try
//! timeout abandons a slow try for a fast one. A gateway certificate the
//! ingress accepted while it was valid is refused (and counted) once expired.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{Proc, binary, free_port, gateway_metric as metric, start_federation};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "gateway-e2e-admin";
const HOST: &str = "web.production.app.acme.com";
const FLAKY_HOST: &str = "flaky.production.app.acme.com";
const SLOW_HOST: &str = "slow.production.app.acme.com";
/// The federation's `--gateway-cert-lifetime`.
const CERT_LIFETIME: Duration = Duration::from_secs(12);
/// How long a slow answer of a [`scripted`] upstream takes.
const SLOW: Duration = Duration::from_secs(2);

/// An HTTP/1.1 upstream that answers every request with `name`.
async fn upstream(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{name}",
                            name.len()
                        );
                        if tcp.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// What a [`scripted`] upstream answers, counted from the last [`Script::reset`].
#[derive(Debug, Default)]
struct Script {
    /// Requests received.
    seen: AtomicU64,
    /// The first this many requests get `503 unavailable`.
    fail: AtomicU64,
    /// The first this many requests wait [`SLOW`] before their answer.
    slow: AtomicU64,
}

impl Script {
    fn reset(&self, fail: u64, slow: u64) {
        self.fail.store(fail, Ordering::SeqCst);
        self.slow.store(slow, Ordering::SeqCst);
        self.seen.store(0, Ordering::SeqCst);
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 upstream that follows its [`Script`]; other requests get `200 name`.
async fn scripted(name: &'static str) -> (u16, Arc<Script>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let script = Arc::new(Script::default());
    let shared = Arc::clone(&script);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let script = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let n = script.seen.fetch_add(1, Ordering::SeqCst);
                        if n < script.slow.load(Ordering::SeqCst) {
                            tokio::time::sleep(SLOW).await;
                        }
                        let (status, body) = if n < script.fail.load(Ordering::SeqCst) {
                            ("503 Service Unavailable", "unavailable")
                        } else {
                            ("200 OK", name)
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, script)
}

/// A TCP upstream that answers each read with `<name>:` and the bytes read.
async fn tcp_echo(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if tcp.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

async fn member(name: &str) -> TestApiServer {
    TestApiServer::start(TestApiServerOptions::default().token(
        "member-token",
        Grant::admin(format!("system:serviceaccount:gns:{name}")),
    ))
    .await
    .expect("test API server")
}

fn web_slice(ready: bool, port: u16) -> EndpointSlice {
    endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("127.0.0.1", ready, ready, false, Some("a"))],
        &[("http", i32::from(port))],
    )
}

async fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("federation request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A gateway state dir's key (PEM), once its `cert.pem` is checked to be
/// for that key.
fn state_dir_identity(state: &std::path::Path) -> Result<String, String> {
    let key_pem = std::fs::read_to_string(state.join("key.pem")).map_err(|e| e.to_string())?;
    let cert_pem = std::fs::read_to_string(state.join("cert.pem")).map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    rustls::sign::CertifiedKey::new(chain, signer)
        .keys_match()
        .map_err(|e| format!("cert.pem is not for key.pem: {e}"))?;
    Ok(key_pem)
}

/// One request for `web` through an egress; `(status, body)`.
async fn through(egress: SocketAddr, user_agent: Option<&str>) -> (u16, String) {
    get(egress, HOST, user_agent, Duration::from_secs(5)).await
}

/// One request for `host` through an egress, given up after `limit`;
/// `(status, body)`, status 0 when the client failed.
async fn get(
    egress: SocketAddr,
    host: &str,
    user_agent: Option<&str>,
    limit: Duration,
) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(limit)
        .build()
        .expect("client");
    let mut req = client
        .get(format!("http://{egress}/hello"))
        .header("host", host);
    if let Some(ua) = user_agent {
        req = req.header("user-agent", ua);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

async fn eventually(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check().await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within {timeout:?}; last: {last}");
}

/// A GET for `web` sent straight to a peer ingress over mutual TLS, as
/// east's gateway would send it: client certificate `chain`/`key`, the
/// server verified as west's gateway against the trust bundle `roots`,
/// naming `caller` (the calling service) if given.
/// `(status, body)`, or where it failed.
async fn ingress_get(
    ingress: SocketAddr,
    roots: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    caller: Option<&str>,
) -> Result<(u16, String), String> {
    let verifier = gns_gateway::tls::SpiffeServerVerifier::new(
        roots,
        gns_gateway::tls::gateway_id("acme.test", "west"),
    )
    .map_err(|e| format!("verifier: {e}"))?;
    let mut config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client config: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(ingress)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("gns-gateway").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .map_err(|e| format!("http2 handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let mut request = hyper::Request::get(format!("https://{HOST}/hello"));
        if let Some(caller) = caller {
            request = request.header(&gns_gateway::proxy::CALLER_HEADER, caller);
        }
        let request = request
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        // Close the connection cleanly (GOAWAY), as a gateway does.
        drop(sender);
        let _ = conn.await;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
}

/// A new join token of `cluster` (valid 10 minutes).
async fn join_token(base: &str, cluster: &str) -> String {
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/clusters/{cluster}/join-tokens"),
        Some(json!({"ttl": "10m"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// A certificate for east's gateway, obtained as a gateway obtains one
/// (join token, CSR): its chain and key.
async fn east_certificate(base: &str) -> (Vec<CertificateDer<'static>>, rcgen::KeyPair) {
    let token = join_token(base, "east").await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let signed = reqwest::Client::new()
        .post(format!("{base}/v1/identity/sign"))
        .json(&json!({"csr": csr, "joinToken": token}))
        .send()
        .await
        .expect("sign");
    assert_eq!(signed.status().as_u16(), 200);
    let signed: Value = signed.json().await.expect("json");
    assert_eq!(
        signed["spiffeId"],
        "spiffe://acme.test/cluster/east/gateway"
    );
    let chain =
        CertificateDer::pem_slice_iter(signed["certificate"].as_str().expect("pem").as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificate chain");
    (chain, key)
}

struct GatewayProc {
    egress: SocketAddr,
    public: SocketAddr,
    admin: SocketAddr,
    process: Proc,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_cluster_requests_over_mtls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (east_port, west_port) = (upstream("east").await, upstream("west").await);
    let east = member("east").await;
    let west = member("west").await;
    for (api, port) in [(&east, east_port), (&west, west_port)] {
        api.apply::<Service>(&service("shop", "web", &[("app", "web")], &[("http", 80)]))
            .expect("service");
        api.apply::<EndpointSlice>(&web_slice(true, port))
            .expect("slice");
    }
    // Two HTTP services in west only, for retries and timeouts: flaky and slow.
    let (flaky_port, flaky) = scripted("flaky").await;
    let (slow_port, slow) = scripted("slow").await;
    for (name, port) in [("flaky", flaky_port), ("slow", slow_port)] {
        west.apply::<Service>(&service("shop", name, &[("app", name)], &[("http", 80)]))
            .expect("service");
        west.apply::<EndpointSlice>(&endpoint_slice(
            "shop",
            name,
            &format!("{name}-1"),
            &[("127.0.0.1", true, true, false, None)],
            &[("http", i32::from(port))],
        ))
        .expect("slice");
    }
    // A TCP service, db, in west only: clients dial port `db_port` on their egress.
    let (db_port, echo_port) = (free_port(), tcp_echo("west").await);
    west.apply::<Service>(&service(
        "shop",
        "db",
        &[("app", "db")],
        &[("pg", i32::from(db_port))],
    ))
    .expect("db service");
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "db",
        "db-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("pg", i32::from(echo_port))],
    ))
    .expect("db slice");
    // A second TCP service on the same port, told apart by the TLS server name.
    let secure_echo = tcp_echo("secure").await;
    west.apply::<Service>(&service(
        "shop",
        "secure",
        &[("app", "secure")],
        &[("tls", i32::from(db_port))],
    ))
    .expect("secure service");
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "secure",
        "secure-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("tls", i32::from(secure_echo))],
    ))
    .expect("secure slice");
    // East also lists an endpoint that refuses connections: it is skipped
    // (another endpoint is tried) and ejected, and no request fails.
    east.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[
            ("127.0.0.1", true, true, false, Some("a")),
            ("127.0.0.3", true, true, false, Some("a")),
        ],
        &[("http", i32::from(east_port))],
    ))
    .expect("slice");

    // Short-lived certificates: gateways renew every 8 s during the test.
    let (mut fed, base) = start_federation(
        dir.path(),
        TOKEN,
        &[
            "--trust-domain",
            "acme.test",
            "--gateway-cert-lifetime",
            "12s",
        ],
    )
    .await;

    let ingress: BTreeMap<&str, u16> = [("east", free_port()), ("west", free_port())].into();
    for (name, kube) in [("east", &east), ("west", &west)] {
        let (status, body) = api(
            reqwest::Method::POST,
            &format!("{base}/v1/clusters"),
            Some(json!({"name": name,
                "kubernetes": {"server": kube.url(), "token": "member-token",
                               "caData": base64::engine::general_purpose::STANDARD.encode(kube.ca_pem())},
                "gateway": {"ingressAddress": format!("127.0.0.1:{}", ingress[name]), "egressAddress": "127.0.0.1"}})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(json!({"name": "production", "domain": "production.app.acme.com",
                    "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let mut gateways = BTreeMap::new();
    for name in ["east", "west"] {
        let token = join_token(&base, name).await;
        // Distinct egress addresses: each gateway also listens there on the TCP service ports.
        let egress_ip = if name == "east" {
            "127.0.0.2"
        } else {
            "127.0.0.4"
        };
        let egress: SocketAddr = format!("{egress_ip}:{}", free_port())
            .parse()
            .expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let proc = Proc::spawn(
            &binary("gns-gateway"),
            &[
                "--federation".into(),
                base.clone(),
                "--cluster".into(),
                name.into(),
                "--join-token".into(),
                token,
                "--egress-listen".into(),
                egress.to_string(),
                "--ingress-listen".into(),
                format!("127.0.0.1:{}", ingress[name]),
                "--admin-listen".into(),
                admin.to_string(),
                "--public-listen".into(),
                public.to_string(),
                "--state-dir".into(),
                dir.path().join(format!("gw-{name}")).display().to_string(),
                // Two data-path workers whatever the machine: SO_REUSEPORT
                // listeners and per-worker pools are on the tested path.
                "--worker-threads".into(),
                "2".into(),
            ],
            dir.path().join(format!("gateway-{name}.log")),
        );
        gateways.insert(
            name,
            GatewayProc {
                egress,
                public,
                admin,
                process: proc,
            },
        );
    }
    let (east_gw, west_gw) = (&gateways["east"], &gateways["west"]);
    // Both gateways ready, and discovery has put both clusters' endpoints in their config.
    eventually(
        "east's gateway to route to both clusters",
        Duration::from_secs(30),
        async || {
            let (status, cfg) = api(
                reqwest::Method::GET,
                &format!("{base}/v1/config/gateways/east"),
                None,
            )
            .await;
            let eps = &cfg["services"][HOST]["endpoints"];
            let ready = reqwest::get(format!("http://{}/readyz", east_gw.admin))
                .await
                .is_ok_and(|r| r.status().is_success());
            if status == 200
                && eps["east"].as_array().is_some_and(|a| !a.is_empty())
                && eps["west"].as_array().is_some_and(|a| !a.is_empty())
                && ready
            {
                Ok(())
            } else {
                Err(format!("{status} ready={ready} {cfg}"))
            }
        },
    )
    .await;

    // Connections are spread over both workers of east's gateway, and every
    // one of them is served (each worker has its own peer connection).
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let egress = east_gw.egress;
        clients.spawn(async move {
            // A client of its own: a new connection (a new source port) each.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            client
                .get(format!("http://{egress}/hello"))
                .header("host", HOST)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
    }
    let statuses = clients.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let metrics_text = reqwest::get(format!("http://{}/metrics", east_gw.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for worker in ["0", "1"] {
        let accepted: u64 = metrics_text
            .lines()
            .filter(|l| l.starts_with("gns_gateway_worker_connections_total{"))
            .filter(|l| {
                l.contains("listener=\"egress\"") && l.contains(&format!("worker=\"{worker}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(
            accepted > 0,
            "worker {worker} of east's gateway accepted no connection:\n{metrics_text}"
        );
    }

    // A certificate for east's gateway, obtained as a gateway obtains one
    // (join token, CSR): west's ingress accepts it now and must refuse it
    // once it has expired, near the end of this test.
    let (east_chain, east_key) = east_certificate(&base).await;
    let issued_at = Instant::now();
    let east_key_der = || PrivateKeyDer::try_from(east_key.serialize_der()).expect("key");
    let bundle: Value = reqwest::get(format!("{base}/v1/identity/trust-bundle"))
        .await
        .expect("trust bundle")
        .json()
        .await
        .expect("json");
    let bundle_roots: Vec<CertificateDer<'static>> = bundle["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .flat_map(|r| {
            CertificateDer::pem_slice_iter(r.as_str().expect("pem").as_bytes())
                .map(|c| c.expect("root"))
        })
        .collect();
    assert!(!bundle_roots.is_empty(), "{bundle}");
    let west_ingress: SocketAddr = format!("127.0.0.1:{}", ingress["west"])
        .parse()
        .expect("addr");
    assert_eq!(
        ingress_get(
            west_ingress,
            &bundle_roots,
            east_chain.clone(),
            east_key_der(),
            None
        )
        .await,
        Ok((200, "west".to_owned())),
        "west's ingress serves a valid certificate of east's gateway"
    );

    // Without routing the own cluster serves.
    eventually(
        "east egress to answer from east",
        Duration::from_secs(15),
        async || match through(east_gw.egress, None).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    // Routing sends everything to west: east egress → mTLS → west ingress → west upstream.
    let routing_url = format!("{base}/v1/global-namespaces/production/services/web/routing");
    let (status, body) = api(
        reqwest::Method::PUT,
        &routing_url,
        Some(json!({"rules": [{"destinations": [{"cluster": "west", "weight": 100}]}], "failover": ["east"]})),
    )
    .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    eventually(
        "east egress to land in west",
        Duration::from_secs(15),
        async || match through(east_gw.egress, None).await {
            (200, body) if body == "west" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert!(metric(west_gw.admin, "gns_gateway_ingress_requests_total").await >= 1);
    assert!(metric(east_gw.admin, "gns_gateway_peer_tries_total").await >= 1);
    let text = reqwest::get(format!("http://{}/metrics", east_gw.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("gns_gateway_requests_total{")
                && l.contains("cluster=\"west\"")
                && l.contains("service=\"web.production\"")
                && l.contains("class=\"2xx\"")),
        "per-route, per-destination-cluster request counts: {text}"
    );
    assert!(
        text.contains("gns_gateway_request_duration_seconds_bucket{"),
        "latency histograms"
    );

    // The 99/1 canary and the User-Agent rule.
    let (status, body) = api(
        reqwest::Method::PUT,
        &routing_url,
        Some(json!({"rules": [
            {"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]},
             "destinations": [{"cluster": "west", "weight": 100}]},
            {"destinations": [{"cluster": "east", "weight": 99}, {"cluster": "west", "weight": 1}]}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "mobile clients to land in west",
        Duration::from_secs(15),
        async || match through(east_gw.egress, Some("Foo Mobile Safari")).await {
            (200, body) if body == "west" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let total = 2_000;
    let mut west_count = 0;
    for _ in 0..total {
        let (status, body) = through(east_gw.egress, Some("curl/8")).await;
        assert_eq!(status, 200, "{body}");
        if body == "west" {
            west_count += 1;
        }
    }
    assert!(
        metric(east_gw.admin, "gns_gateway_ejections_total").await >= 1,
        "the dead endpoint was ejected"
    );
    let share = f64::from(west_count) / f64::from(total);
    eprintln!(
        "99/1 split: {west_count} of {total} to west ({:.2} %)",
        share * 100.0
    );
    assert!(
        (0.002..=0.025).contains(&share),
        "about 1 % to west, got {west_count} of {total}"
    );
    for _ in 0..20 {
        assert_eq!(
            through(east_gw.egress, Some("Foo Mobile Safari")).await.1,
            "west",
            "every mobile request to west"
        );
    }

    // Certificate renewal under load: both gateways renew while requests
    // cross between them, and not one request fails.
    let renewals = async || {
        (
            metric(east_gw.admin, "gns_gateway_cert_renewals_total").await,
            metric(west_gw.admin, "gns_gateway_cert_renewals_total").await,
        )
    };
    let before = renewals().await;
    let east_state = dir.path().join("gw-east");
    let key_before = std::fs::read_to_string(east_state.join("key.pem")).expect("east key");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        let answered = Arc::clone(&answered);
        let egress = east_gw.egress;
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match through(egress, Some("Foo Mobile Safari")).await {
                    (200, body) if body == "west" => ok += 1,
                    other => failed.push(other),
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (ok, failed)
        }));
    }
    // The load runs until both gateways have renewed and at least 200
    // requests were answered (however fast this machine is today).
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = renewals().await;
        let renewed = now.0 > before.0 && now.1 > before.1;
        if renewed && answered.load(std::sync::atomic::Ordering::Relaxed) >= 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no renewal of both gateways under 200 requests within 60 s: {before:?} -> {now:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for task in load {
        let (ok, failed) = task.await.expect("load task");
        assert!(
            failed.is_empty(),
            "requests failed during renewal: {failed:?}"
        );
        sent += ok;
    }
    assert!(sent >= 200, "only {sent} requests under load");
    eprintln!("{sent} requests across two certificate renewals, none failed");
    // Each renewal rotated the key: east's state dir holds a new key and a
    // certificate for it (read again if a renewal is midway).
    let mut consistent = Err("not checked".to_owned());
    for _ in 0..30 {
        consistent = state_dir_identity(&east_state).and_then(|key| {
            if key == key_before {
                Err("key.pem is still the first key".to_owned())
            } else {
                Ok(())
            }
        });
        if consistent.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consistent.expect("renewal rotates the gateway's key");

    // West's endpoints go away: mobile requests fail over to east.
    west.apply::<EndpointSlice>(&web_slice(false, west_port))
        .expect("slice");
    eventually(
        "failover to east",
        Duration::from_secs(15),
        async || match through(east_gw.egress, Some("Foo Mobile Safari")).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;

    // Retries: flaky's only endpoint (in west) answers 503 to the first
    // request and 200 afterwards; with up to 3 retries on 5xx the client
    // gets the 200, after exactly one retry.
    let put_routing = async |service: &str, routing: Value| {
        let (status, body) = api(
            reqwest::Method::PUT,
            &format!("{base}/v1/global-namespaces/production/services/{service}/routing"),
            Some(routing),
        )
        .await;
        assert!(status == 200 || status == 201, "{status} {body}");
    };
    let to_west = json!([{"destinations": [{"cluster": "west", "weight": 100}]}]);
    put_routing(
        "flaky",
        json!({"rules": to_west, "retries": {"attempts": 3, "on": ["5xx"]}}),
    )
    .await;
    let flaky_get = async || get(east_gw.egress, FLAKY_HOST, None, Duration::from_secs(5)).await;
    eventually(
        "east to retry flaky's 503",
        Duration::from_secs(15),
        async || {
            flaky.reset(1, 0);
            match flaky_get().await {
                (200, body) if body == "flaky" && flaky.seen() == 2 => Ok(()),
                other => Err(format!(
                    "{other:?} after {} upstream requests",
                    flaky.seen()
                )),
            }
        },
    )
    .await;
    flaky.reset(1, 0);
    let retries = metric(east_gw.admin, "gns_gateway_retries_total").await;
    assert_eq!(flaky_get().await, (200, "flaky".to_owned()));
    assert_eq!(flaky.seen(), 2, "one failed try, one retry");
    assert_eq!(
        metric(east_gw.admin, "gns_gateway_retries_total").await,
        retries + 1,
        "the retry is counted"
    );
    // `attempts` counts the tries after the first: with 1, a 503 that comes
    // twice reaches the client, after two tries.
    put_routing(
        "flaky",
        json!({"rules": to_west, "retries": {"attempts": 1, "on": ["5xx"]}}),
    )
    .await;
    eventually(
        "east to stop retrying after one retry",
        Duration::from_secs(15),
        async || {
            flaky.reset(2, 0);
            match flaky_get().await {
                (503, body) if body == "unavailable" && flaky.seen() == 2 => Ok(()),
                other => Err(format!(
                    "{other:?} after {} upstream requests",
                    flaky.seen()
                )),
            }
        },
    )
    .await;

    // Timeouts: slow's only endpoint (in west) answers after 2 s; with a
    // 500 ms timeout the client gets a 504 after about 500 ms.
    slow.reset(0, u64::MAX);
    put_routing("slow", json!({"rules": to_west, "timeout": "500ms"})).await;
    let slow_get = async || {
        let started = Instant::now();
        let got = get(east_gw.egress, SLOW_HOST, None, Duration::from_millis(1500)).await;
        (got, started.elapsed())
    };
    eventually(
        "the timeout to cut slow's answer",
        Duration::from_secs(20),
        async || match slow_get().await {
            ((504, _), _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    slow.reset(0, u64::MAX);
    let ((status, body), took) = slow_get().await;
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "504 after the 500 ms timeout, well before the 2 s answer: {took:?}"
    );
    assert_eq!(slow.seen(), 1, "the request reached slow's upstream");
    // A per-try timeout of 300 ms with one retry: the first (slow) try is
    // abandoned, the second answers at once.
    put_routing(
        "slow",
        json!({"rules": to_west, "timeout": "1500ms",
               "retries": {"attempts": 1, "on": ["5xx"], "perTryTimeout": "300ms"}}),
    )
    .await;
    eventually(
        "a slow try to be abandoned for a fast one",
        Duration::from_secs(15),
        async || {
            slow.reset(0, 1);
            match slow_get().await {
                ((200, body), _) if body == "slow" && slow.seen() == 2 => Ok(()),
                other => Err(format!("{other:?} after {} upstream requests", slow.seen())),
            }
        },
    )
    .await;
    slow.reset(0, 1);
    let retries = metric(east_gw.admin, "gns_gateway_retries_total").await;
    let ((status, body), took) = slow_get().await;
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert_eq!(slow.seen(), 2, "the slow try and the retry");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1200),
        "answered after the 300 ms per-try timeout, not after the 2 s answer: {took:?}"
    );
    assert_eq!(
        metric(east_gw.admin, "gns_gateway_retries_total").await,
        retries + 1,
        "the retry after the per-try timeout is counted"
    );

    // The public entry (identity `external`): west has no endpoints now, so a
    // client outside every cluster is sent on to east; an access policy that
    // denies `external` closes the service to it, not to in-cluster clients.
    eventually(
        "the public entry to reach east",
        Duration::from_secs(15),
        async || match through(west_gw.public, None).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces/production/access-policies"),
        Some(json!({"name": "no-outside", "from": ["external"], "to": "web", "action": "deny"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    eventually(
        "the public entry to refuse web",
        Duration::from_secs(15),
        async || match through(west_gw.public, None).await {
            (403, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        through(east_gw.egress, None).await.0,
        200,
        "in-cluster clients still pass"
    );
    assert!(metric(west_gw.admin, "gns_gateway_access_denied_total").await >= 1);

    // A client with a certificate from another CA is refused by west's ingress.
    let refused_before = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
    let rogue_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://acme.test/cluster/east/gateway"
            .try_into()
            .expect("uri"),
    )];
    let rogue = params.self_signed(&rogue_key).expect("rogue cert");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rogue.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![rogue.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(rogue_key.serialize_der()).expect("key"),
        )
        .expect("client config");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", ingress["west"]))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("gns-gateway").expect("name");
    let outcome = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    if let Ok(mut tls) = outcome {
        // TLS 1.3: the server's refusal of the client certificate arrives after the client's Finished.
        let mut buf = [0u8; 16];
        let read = tls.read(&mut buf).await;
        assert!(
            read.is_err() || read.is_ok_and(|n| n == 0),
            "a rogue client must get nothing"
        );
    }
    eventually(
        "the refusal to be counted",
        Duration::from_secs(5),
        async || {
            let now = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
            if now > refused_before {
                Ok(())
            } else {
                Err(format!("{now}"))
            }
        },
    )
    .await;

    // TCP passthrough: a connection to db's port on east's egress comes out
    // at west's TCP upstream, through a CONNECT tunnel in the peer connection.
    let east_ip = east_gw.egress.ip();
    eventually(
        "TCP through east to west",
        Duration::from_secs(15),
        async || {
            let mut tcp = tokio::net::TcpStream::connect((east_ip, db_port))
                .await
                .map_err(|e| e.to_string())?;
            tcp.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|e| e.to_string())?;
            if &buf[..n] == b"west:ping" {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
        },
    )
    .await;
    assert!(metric(east_gw.admin, "gns_gateway_tcp_connections_total").await >= 1);
    // A TLS ClientHello naming secure.production.app.acme.com on the same port
    // goes to secure's upstream, untouched (TLS passthrough by SNI).
    let hello = {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("secure.production.app.acme.com")
            .expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    };
    let mut tcp = tokio::net::TcpStream::connect((east_ip, db_port))
        .await
        .expect("connect");
    tcp.write_all(&hello).await.expect("send hello");
    let mut answer = vec![0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert_eq!(&answer, b"secure:", "routed by the server name");

    // Access by caller: once policies let no caller reach db, east's egress
    // refuses its client (a web endpoint, named by its address) before
    // anything leaves the cluster, and counts it.
    let denied_before = metric(east_gw.admin, "gns_gateway_access_denied_total").await;
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces/production/access-policies"),
        Some(json!({"name": "no-db", "from": ["*"], "to": "db", "action": "deny"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    eventually(
        "east's egress to refuse the TCP client of db",
        Duration::from_secs(15),
        async || {
            let mut tcp = tokio::net::TcpStream::connect((east_ip, db_port))
                .await
                .map_err(|e| e.to_string())?;
            tcp.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await;
            let denied = metric(east_gw.admin, "gns_gateway_access_denied_total").await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) if denied > denied_before => Ok(()),
                other => Err(format!("{other:?}, denied {denied_before} -> {denied}")),
            }
        },
    )
    .await;

    // West's ingress checks the caller east's gateway names: with api denied
    // web, a request naming api is refused (and counted) while one naming
    // no service is still let in (allowed by default); east's own clients
    // (web endpoints) still reach web.
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces/production/access-policies"),
        Some(json!({"name": "no-api-to-web", "from": ["api"], "to": "web", "action": "deny"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (fresh_chain, fresh_key) = east_certificate(&base).await;
    let fresh_key_der = || PrivateKeyDer::try_from(fresh_key.serialize_der()).expect("key");
    let denied_before = metric(west_gw.admin, "gns_gateway_access_denied_total").await;
    eventually(
        "west's ingress to refuse a request naming api",
        Duration::from_secs(15),
        async || {
            let named = ingress_get(
                west_ingress,
                &bundle_roots,
                fresh_chain.clone(),
                fresh_key_der(),
                Some("api"),
            )
            .await?;
            match named {
                (403, body) if body.contains("api may not call") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        metric(west_gw.admin, "gns_gateway_access_denied_total").await > denied_before,
        "west counts the refusal"
    );
    // (West's web endpoints are gone by now: admitted means not a 403.)
    let unnamed = ingress_get(
        west_ingress,
        &bundle_roots,
        fresh_chain.clone(),
        fresh_key_der(),
        None,
    )
    .await;
    assert!(
        matches!(&unnamed, Ok((status, _)) if *status != 403),
        "a caller that is no service's endpoint is allowed by default: {unnamed:?}"
    );
    let (status, body) = through(east_gw.egress, None).await;
    assert_eq!(status, 200, "web may still call web: {body}");
    let (status, body) = api(
        reqwest::Method::DELETE,
        &format!("{base}/v1/global-namespaces/production/access-policies/no-api-to-web"),
        None,
    )
    .await;
    assert!(status == 204 || status == 200, "{status} {body}");

    let text = reqwest::get(format!("http://{}/metrics", west_gw.admin))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("gns_gateway_mtls_handshake_failures_total{reason=\"handshake\"}"),
        "refusals counted by reason: {text}"
    );

    // The ingress speaks no plaintext and no TLS below 1.3 (openssl s_client).
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", ingress["west"]))
        .await
        .expect("connect");
    plain
        .write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext HTTP must get no HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_1", "TLSv1.1")] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", ingress["west"]),
                flag,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client (apt-get install openssl)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("no peer certificate available") && text.contains("Cipher is (NONE)"),
            "{version} must be refused: {text}"
        );
    }

    // The certificate west's ingress accepted at the start has expired by
    // now: the same client is refused, and the refusal counted.
    tokio::time::sleep(
        (issued_at + CERT_LIFETIME + Duration::from_secs(1))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let handshake_failures = "gns_gateway_mtls_handshake_failures_total{reason=\"handshake\"}";
    let refused_before = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
    let handshake_before = metric(west_gw.admin, handshake_failures).await;
    let outcome = ingress_get(
        west_ingress,
        &bundle_roots,
        east_chain,
        east_key_der(),
        None,
    )
    .await;
    assert!(
        outcome.is_err(),
        "an expired certificate must get no answer: {outcome:?}"
    );
    eventually(
        "the expired certificate's refusal to be counted",
        Duration::from_secs(5),
        async || {
            let now = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
            let handshake = metric(west_gw.admin, handshake_failures).await;
            if now > refused_before && handshake > handshake_before {
                Ok(())
            } else {
                Err(format!(
                    "refused {refused_before} -> {now}, handshake failures {handshake_before} -> {handshake}"
                ))
            }
        },
    )
    .await;
    let west_log = west_gw.process.log_text();
    assert!(
        west_log
            .lines()
            .any(|l| l.contains("ingress connection refused") && l.contains("certificate expired")),
        "west refused the certificate for its expiry"
    );

    // The federation dies: the data path keeps serving from the gateways' config.
    fed.kill();
    for _ in 0..20 {
        let (status, body) = through(east_gw.egress, None).await;
        assert_eq!(status, 200, "with the federation down: {body}");
    }
}
