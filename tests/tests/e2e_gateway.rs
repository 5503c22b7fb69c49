//! Gateways end to end with real processes: `gns-federation` plus one
//! `gns-gateway` per cluster (each bootstrapped with a join token: CSR →
//! certificate from the federation's CA), two Kubernetes API test servers as
//! clusters `east` and `west`, and real HTTP upstreams. The scenario runs on
//! both store backends (SQLite and Postgres), one after the other, as named
//! steps: a failure names the behaviour that broke and the steps that passed
//! before it.
//!
//! What it checks: a request to east's egress reaches west's upstream
//! through west's ingress over mutual TLS; the 99/1 split and the User-Agent
//! rule hold; bodies of 1 MiB and 16 MiB cross clusters both ways, chunked
//! and with a length, and are replayed whole on a retry; certificates renew
//! under load without a failed request; when west's endpoints go away the
//! request fails over to east; a 503 is retried within the retry budget and
//! passed on beyond it, an overall timeout answers 504 before a slow upstream
//! does, and a per-try timeout abandons a slow try for a fast one; the public
//! entry serves clients outside every cluster until an access policy denies
//! `external`; a certificate from another CA, a workload certificate of the
//! federation's own CA and an expired gateway certificate are refused by the
//! ingress (and counted); TCP and TLS passthrough; access by caller at the
//! egress and the ingress, where a client's own `x-gns-caller` is dropped and
//! the request judged by its real caller; the ingress speaks neither
//! plaintext nor TLS 1.2 or 1.1 (checked with an OpenSSL client shown to speak
//! TLS 1.1 on this machine); the data path outlives the federation, and a
//! gateway restarted from its state dir while the federation is down serves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{
    Proc, Steps, StoreBackend, binary, free_port, gateway_metric as metric, start_federation,
};
use http_body_util::BodyExt;
use hyper::body::Bytes;
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

/// A GET for `host` sent straight to a peer ingress over mutual TLS, as
/// east's gateway would send it: client certificate `chain`/`key`, the
/// server verified as west's gateway against the trust bundle `roots`,
/// naming `caller` (the calling service) if given.
/// `(status, body)`, or where it failed.
async fn ingress_get(
    ingress: SocketAddr,
    host: &str,
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
        let mut request = hyper::Request::get(format!("https://{host}/hello"));
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
    /// What it was started with (a restart uses the same).
    args: Vec<String>,
    log: std::path::PathBuf,
    process: Proc,
}

const ECHO_WEST_HOST: &str = "echo-west.production.app.acme.com";
const ECHO_EAST_HOST: &str = "echo-east.production.app.acme.com";
/// Where east's clients that are endpoints of `api` connect from.
const API_CLIENT_IP: &str = "127.0.0.5";

/// What an [`echo`] upstream saw, counted from the last [`Echo::reset`].
#[derive(Debug, Default)]
struct Echo {
    /// The first this many requests get `503` once their whole body is read.
    fail: AtomicU64,
    /// The body length of every request received.
    lengths: std::sync::Mutex<Vec<usize>>,
}

impl Echo {
    fn reset(&self, fail: u64) {
        self.fail.store(fail, Ordering::SeqCst);
        self.lengths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn lengths(&self) -> Vec<usize> {
        self.lengths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// An HTTP/1.1 upstream (hyper) that reads each request's body whole and
/// answers it back: `/length` with a `content-length`, `/chunked` in 64 KiB
/// chunks of the chunked encoding. The first requests its [`Echo`] says get
/// `503` instead, after their body was read.
async fn echo() -> (u16, Arc<Echo>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo upstream");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new(Echo::default());
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let chunked = req.uri().path() == "/chunked";
                            let body = req.into_body().collect().await?.to_bytes();
                            state
                                .lengths
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(body.len());
                            let failing = state
                                .fail
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let response = if failing {
                                hyper::Response::builder().status(503).body(boxed(
                                    http_body_util::Full::new(Bytes::from_static(b"unavailable")),
                                ))
                            } else if chunked {
                                let frames: Vec<
                                    Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                                > = body
                                    .chunks(64 * 1024)
                                    .map(|c| {
                                        Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c)))
                                    })
                                    .collect();
                                hyper::Response::builder().body(boxed(
                                    http_body_util::StreamBody::new(futures::stream::iter(frames)),
                                ))
                            } else {
                                hyper::Response::builder()
                                    .body(boxed(http_body_util::Full::new(body)))
                            };
                            Ok::<_, hyper::Error>(response.expect("response"))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (port, state)
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn boxed<B>(body: B) -> TestBody
where
    B: hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + 'static,
{
    body.boxed()
}

/// Sends `body` to `path` of `host` through `egress` over HTTP/1.1, with a
/// `content-length` or (`chunked`) in 256 KiB chunks of the chunked
/// encoding; `(status, response body, whether the response was chunked)`.
async fn post_body(
    egress: SocketAddr,
    host: &str,
    path: &str,
    body: &Bytes,
    chunked: bool,
) -> Result<(u16, Bytes, bool), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(egress)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let request_body = if chunked {
            let frames: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = (0
                ..body.len())
                .step_by(256 * 1024)
                .map(|at| {
                    Ok(hyper::body::Frame::data(
                        body.slice(at..(at + 256 * 1024).min(body.len())),
                    ))
                })
                .collect();
            boxed(http_body_util::StreamBody::new(futures::stream::iter(
                frames,
            )))
        } else {
            boxed(http_body_util::Full::new(body.clone()))
        };
        let request = hyper::Request::post(path)
            .header("host", host)
            .body(request_body)
            .map_err(|e| e.to_string())?;
        // hyper sends a `Full` body with its length and a stream of
        // frames, whose length it does not know, chunked.
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let was_chunked = response
            .headers()
            .get("transfer-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        Ok((status, answer, was_chunked))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| "no answer within 60 s".to_owned())?
}

/// A body of `len` bytes that no shifted or truncated copy matches.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ ((i / 251) % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A certificate for a workload of the federation's own trust domain
/// (`spiffe://acme.test/ns/shop/sa/web`), signed by the federation's CA
/// itself, read from its store: the same CA as the gateways, not a gateway
/// identity. Its chain and key.
async fn workload_certificate(
    data_dir: &std::path::Path,
    backend: &StoreBackend,
) -> (Vec<CertificateDer<'static>>, rcgen::KeyPair) {
    let secrets =
        gns_federation::store::SecretBox::load_or_create(data_dir).expect("the federation's key");
    let url = match backend {
        StoreBackend::Sqlite => None,
        StoreBackend::Postgres(db) => Some(db.url.as_str()),
    };
    let store = gns_federation::store::open(url, data_dir, secrets)
        .await
        .expect("the federation's store");
    let ca: Value = serde_json::from_slice(
        &store
            .sealed_meta("ca/acme.test")
            .await
            .expect("read the CA")
            .expect("the CA exists"),
    )
    .expect("CA JSON");
    let ca_key =
        rcgen::KeyPair::from_pem(ca["key_pem"].as_str().expect("key_pem")).expect("CA key");
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca["cert_pem"].as_str().expect("cert_pem"), ca_key)
            .expect("CA certificate");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://acme.test/ns/shop/sa/web".try_into().expect("uri"),
    )];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let chain = vec![
        cert.der().clone(),
        CertificateDer::from_pem_slice(ca["cert_pem"].as_str().expect("pem").as_bytes())
            .expect("CA der"),
    ];
    (chain, key)
}

/// The output of `openssl s_client` offering only `version_flag` (e.g.
/// `-tls1_1`) to `addr`, with every cipher and security level 0 so OpenSSL 3
/// really offers TLS 1.1.
fn openssl_client(addr: SocketAddr, version_flag: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), version_flag])
        .args(["-cipher", "ALL:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (apt-get install openssl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Shows that this machine's `openssl s_client -tls1_1` negotiates TLS 1.1
/// with a server that speaks it (an `openssl s_server` limited to TLS 1.1),
/// so a refusal seen elsewhere is the server's doing, not the client's.
fn openssl_speaks_tls_1_1(dir: &std::path::Path) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_path, key_path) = (dir.join("tls11-cert.pem"), dir.join("tls11-key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-tls1_1",
        ])
        .args(["-cipher", "ALL:@SECLEVEL=0"])
        .arg("-cert")
        .arg(&cert_path)
        .arg("-key")
        .arg(&key_path)
        // s_server quits at the end of its stdin: keep it open.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut text = String::new();
    for _ in 0..50 {
        text = openssl_client(addr, "-tls1_1");
        // Until the server listens.
        if !text.contains("errno=111") && !text.contains("Connection refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        text.contains("Protocol  : TLSv1.1") && !text.contains("Cipher is (NONE)"),
        "openssl s_client -tls1_1 must negotiate TLS 1.1 with a TLS 1.1 server here: {text}"
    );
}

/// Everything the scenario's steps share.
struct World {
    dir: tempfile::TempDir,
    backend: StoreBackend,
    base: String,
    fed: Proc,
    /// East's API server, kept running for discovery.
    _east: TestApiServer,
    west: TestApiServer,
    west_port: u16,
    db_port: u16,
    flaky: Arc<Script>,
    slow: Arc<Script>,
    echo_east: Arc<Echo>,
    echo_west: Arc<Echo>,
    ingress: BTreeMap<&'static str, u16>,
    gateways: BTreeMap<&'static str, GatewayProc>,
    /// The federation's trust bundle.
    bundle_roots: Vec<CertificateDer<'static>>,
    /// A certificate of east's gateway (chain, key), and when it was issued.
    east_cert: Option<(Vec<CertificateDer<'static>>, Arc<rcgen::KeyPair>, Instant)>,
}

impl World {
    fn east_gw(&self) -> &GatewayProc {
        &self.gateways["east"]
    }

    fn west_gw(&self) -> &GatewayProc {
        &self.gateways["west"]
    }

    fn west_ingress(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.ingress["west"])
            .parse()
            .expect("addr")
    }

    async fn put_routing(&self, service: &str, routing: Value) {
        let (status, body) = api(
            reqwest::Method::PUT,
            &format!(
                "{}/v1/global-namespaces/production/services/{service}/routing",
                self.base
            ),
            Some(routing),
        )
        .await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }

    async fn post_policy(&self, policy: Value) {
        let (status, body) = api(
            reqwest::Method::POST,
            &format!(
                "{}/v1/global-namespaces/production/access-policies",
                self.base
            ),
            Some(policy),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    async fn delete_policy(&self, name: &str) {
        let (status, body) = api(
            reqwest::Method::DELETE,
            &format!(
                "{}/v1/global-namespaces/production/access-policies/{name}",
                self.base
            ),
            None,
        )
        .await;
        assert!(status == 204 || status == 200, "{status} {body}");
    }

    /// Waits until east's gateway config lists `service`'s endpoints in `cluster`.
    async fn east_config_has(&self, service: &str, cluster: &str) {
        let host = format!("{service}.production.app.acme.com");
        eventually(
            &format!("east's gateway config to list {service} in {cluster}"),
            Duration::from_secs(20),
            async || {
                let (status, cfg) = api(
                    reqwest::Method::GET,
                    &format!("{}/v1/config/gateways/east", self.base),
                    None,
                )
                .await;
                let eps = &cfg["services"][host.as_str()]["endpoints"][cluster];
                if status == 200 && eps.as_array().is_some_and(|a| !a.is_empty()) {
                    Ok(())
                } else {
                    Err(format!("{status} {}", cfg["services"][host.as_str()]))
                }
            },
        )
        .await;
    }
}

/// A service with one ready endpoint at `ip:port` in `api`'s namespace `shop`.
fn one_endpoint_service(api: &TestApiServer, name: &str, port_name: &str, ip: &str, port: u16) {
    api.apply::<Service>(&service("shop", name, &[("app", name)], &[(port_name, 80)]))
        .expect("service");
    api.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        name,
        &format!("{name}-1"),
        &[(ip, true, true, false, None)],
        &[(port_name, i32::from(port))],
    ))
    .expect("slice");
}

fn gateway_args(
    w_base: &str,
    name: &str,
    token: String,
    gw: (SocketAddr, SocketAddr, SocketAddr),
    ingress: u16,
    state: &std::path::Path,
) -> Vec<String> {
    let (egress, admin, public) = gw;
    vec![
        "--federation".into(),
        w_base.to_owned(),
        "--cluster".into(),
        name.into(),
        "--join-token".into(),
        token,
        "--egress-listen".into(),
        egress.to_string(),
        "--ingress-listen".into(),
        format!("127.0.0.1:{ingress}"),
        "--admin-listen".into(),
        admin.to_string(),
        "--public-listen".into(),
        public.to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        // Two data-path workers whatever the machine: SO_REUSEPORT
        // listeners and per-worker pools are on the tested path.
        "--worker-threads".into(),
        "2".into(),
    ]
}

/// Upstreams, both clusters, the federation on `backend` and a gateway per
/// cluster, with discovery done.
async fn setup(backend: StoreBackend) -> World {
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
    one_endpoint_service(&west, "flaky", "http", "127.0.0.1", flaky_port);
    one_endpoint_service(&west, "slow", "http", "127.0.0.1", slow_port);
    // Body echoes: echo-west in west only, echo-east in east only.
    let (echo_west_port, echo_west) = echo().await;
    let (echo_east_port, echo_east) = echo().await;
    one_endpoint_service(&west, "echo-west", "http", "127.0.0.1", echo_west_port);
    one_endpoint_service(&east, "echo-east", "http", "127.0.0.1", echo_east_port);
    // East's clients at API_CLIENT_IP are endpoints of api.
    one_endpoint_service(&east, "api", "http", API_CLIENT_IP, east_port);
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
    let mut flags = vec![
        "--trust-domain".to_owned(),
        "acme.test".to_owned(),
        "--gateway-cert-lifetime".to_owned(),
        "12s".to_owned(),
    ];
    flags.extend(backend.federation_args());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (fed, base) = start_federation(dir.path(), TOKEN, &flags).await;

    let ingress: BTreeMap<&'static str, u16> =
        [("east", free_port()), ("west", free_port())].into();
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
        let args = gateway_args(
            &base,
            name,
            token,
            (egress, admin, public),
            ingress[name],
            &dir.path().join(format!("gw-{name}")),
        );
        let log = dir.path().join(format!("gateway-{name}.log"));
        let process = Proc::spawn(&binary("gns-gateway"), &args, log.clone());
        gateways.insert(
            name,
            GatewayProc {
                egress,
                public,
                admin,
                args,
                log,
                process,
            },
        );
    }
    let world = World {
        dir,
        backend,
        base,
        fed,
        _east: east,
        west,
        west_port,
        db_port,
        flaky,
        slow,
        echo_east,
        echo_west,
        ingress,
        gateways,
        bundle_roots: Vec::new(),
        east_cert: None,
    };
    // Both gateways ready, and discovery has put both clusters' endpoints in their config.
    let east_admin = world.east_gw().admin;
    world.east_config_has("web", "east").await;
    world.east_config_has("web", "west").await;
    eventually(
        "east's gateway to be ready",
        Duration::from_secs(30),
        async || {
            let ready = reqwest::get(format!("http://{east_admin}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                Ok(())
            } else {
                Err("not ready".to_owned())
            }
        },
    )
    .await;
    world
}

/// Connections are spread over both workers of east's gateway, and every
/// one of them is served (each worker has its own peer connection).
async fn connections_spread_over_both_workers(w: &World) {
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let egress = w.east_gw().egress;
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
    let metrics_text = reqwest::get(format!("http://{}/metrics", w.east_gw().admin))
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
}

/// A certificate for east's gateway, obtained as a gateway obtains one
/// (join token, CSR): west's ingress accepts it now (and must refuse it
/// once it has expired, near the end of the scenario).
async fn a_valid_gateway_certificate_is_served(w: &mut World) {
    let (east_chain, east_key) = east_certificate(&w.base).await;
    let issued_at = Instant::now();
    let bundle: Value = reqwest::get(format!("{}/v1/identity/trust-bundle", w.base))
        .await
        .expect("trust bundle")
        .json()
        .await
        .expect("json");
    w.bundle_roots = bundle["roots"]
        .as_array()
        .expect("roots")
        .iter()
        .flat_map(|r| {
            CertificateDer::pem_slice_iter(r.as_str().expect("pem").as_bytes())
                .map(|c| c.expect("root"))
        })
        .collect();
    assert!(!w.bundle_roots.is_empty(), "{bundle}");
    let key = PrivateKeyDer::try_from(east_key.serialize_der()).expect("key");
    assert_eq!(
        ingress_get(
            w.west_ingress(),
            HOST,
            &w.bundle_roots,
            east_chain.clone(),
            key,
            None
        )
        .await,
        Ok((200, "west".to_owned())),
        "west's ingress serves a valid certificate of east's gateway"
    );
    w.east_cert = Some((east_chain, Arc::new(east_key), issued_at));
}

/// Without routing the own cluster serves; with routing that sends
/// everything to west, east's clients land in west (egress → mTLS →
/// ingress), counted per route and destination cluster.
async fn routing_sends_east_clients_to_west_over_mtls(w: &World) {
    let (east_gw, west_gw) = (w.east_gw(), w.west_gw());
    eventually(
        "east egress to answer from east",
        Duration::from_secs(15),
        async || match through(east_gw.egress, None).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    w.put_routing(
        "web",
        json!({"rules": [{"destinations": [{"cluster": "west", "weight": 100}]}], "failover": ["east"]}),
    )
    .await;
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
}

/// The 99/1 canary and the User-Agent rule.
async fn the_99_1_split_and_the_user_agent_rule_hold(w: &World) {
    let east_gw = w.east_gw();
    w.put_routing(
        "web",
        json!({"rules": [
            {"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]},
             "destinations": [{"cluster": "west", "weight": 100}]},
            {"destinations": [{"cluster": "east", "weight": 99}, {"cluster": "west", "weight": 1}]}]}),
    )
    .await;
    eventually(
        "mobile clients to land in west",
        Duration::from_secs(15),
        async || match through(east_gw.egress, Some("Foo Mobile Safari")).await {
            (200, body) if body == "west" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // One kept-alive client: the split is per request, not per connection.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let total = 2_000;
    let mut west_count = 0;
    for _ in 0..total {
        let response = client
            .get(format!("http://{}/hello", east_gw.egress))
            .header("host", HOST)
            .header("user-agent", "curl/8")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
        let body = response.text().await.expect("body");
        if body == "west" {
            west_count += 1;
        } else {
            assert_eq!(body, "east");
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
    // Expected 20 of 2,000; below 4 or above 45 happens to a correct split
    // less than once in 10^5 runs.
    assert!(
        (4..=45).contains(&west_count),
        "about 1 % to west, got {west_count} of {total}"
    );
    for _ in 0..20 {
        assert_eq!(
            through(east_gw.egress, Some("Foo Mobile Safari")).await.1,
            "west",
            "every mobile request to west"
        );
    }
}

/// Bodies of 1 MiB and 16 MiB, with a length and chunked, cross clusters
/// in both directions (east → west and west → east) and both ways (the
/// upstream answers the body back); each first try gets a 503 once the
/// upstream has read the whole body, and the retry carries the whole body
/// again.
async fn large_bodies_cross_clusters_both_ways_and_are_replayed_on_retry(w: &World) {
    let retry = json!({"attempts": 1, "on": ["5xx"]});
    w.put_routing(
        "echo-west",
        json!({"rules": [{"destinations": [{"cluster": "west", "weight": 100}]}], "retries": retry}),
    )
    .await;
    w.put_routing(
        "echo-east",
        json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}], "retries": retry}),
    )
    .await;
    let routes = [
        (
            "east → west",
            w.east_gw().egress,
            ECHO_WEST_HOST,
            &w.echo_west,
        ),
        (
            "west → east",
            w.west_gw().egress,
            ECHO_EAST_HOST,
            &w.echo_east,
        ),
    ];
    // Routing and its retries in both gateways' config: a small body is
    // answered after exactly one retry.
    for (direction, egress, host, echo) in routes {
        eventually(
            &format!("{direction}: a retried small body"),
            Duration::from_secs(20),
            async || {
                echo.reset(1);
                let small = pattern(1000);
                match post_body(egress, host, "/length", &small, false).await {
                    Ok((200, body, _)) if body == small && echo.lengths() == [1000, 1000] => Ok(()),
                    other => Err(format!("{other:?} lengths {:?}", echo.lengths())),
                }
            },
        )
        .await;
    }
    for (direction, egress, host, echo) in routes {
        for len in [1 << 20, 16 << 20] {
            let body = pattern(len);
            for (path, chunked) in [("/length", false), ("/chunked", true)] {
                let what = format!(
                    "{direction}: {} MiB, request {}, response {}",
                    len >> 20,
                    if chunked { "chunked" } else { "with a length" },
                    &path[1..]
                );
                echo.reset(1);
                let started = Instant::now();
                let (status, answer, answer_chunked) =
                    post_body(egress, host, path, &body, chunked)
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    status,
                    200,
                    "{what}: {:?}",
                    String::from_utf8_lossy(&answer[..answer.len().min(200)])
                );
                assert_eq!(answer.len(), len, "{what}: the whole body came back");
                assert!(answer == body, "{what}: the body came back as sent");
                assert_eq!(
                    echo.lengths(),
                    [len, len],
                    "{what}: the failed try and the retry each carried the whole body"
                );
                if chunked {
                    assert!(answer_chunked, "{what}: a chunked answer stays chunked");
                }
                eprintln!("{what}: {:?}", started.elapsed());
            }
        }
    }
}

/// Certificate renewal under load: both gateways renew while requests
/// cross between them, and not one request fails; each renewal rotates
/// the key.
async fn certificates_renew_under_load_without_a_failed_request(w: &World) {
    let (east_gw, west_gw) = (w.east_gw(), w.west_gw());
    let renewals = async || {
        (
            metric(east_gw.admin, "gns_gateway_cert_renewals_total").await,
            metric(west_gw.admin, "gns_gateway_cert_renewals_total").await,
        )
    };
    let before = renewals().await;
    let east_state = w.dir.path().join("gw-east");
    let key_before = std::fs::read_to_string(east_state.join("key.pem")).expect("east key");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        let answered = Arc::clone(&answered);
        let egress = east_gw.egress;
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match through(egress, Some("Foo Mobile Safari")).await {
                    (200, body) if body == "west" => ok += 1,
                    other => failed.push(other),
                }
                answered.fetch_add(1, Ordering::Relaxed);
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
        if renewed && answered.load(Ordering::Relaxed) >= 200 {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "no renewal of both gateways under 200 requests within 60 s: {before:?} -> {now:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
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
}

/// West's endpoints go away: mobile requests fail over to east.
async fn requests_fail_over_when_west_endpoints_go(w: &World) {
    w.west
        .apply::<EndpointSlice>(&web_slice(false, w.west_port))
        .expect("slice");
    eventually(
        "failover to east",
        Duration::from_secs(15),
        async || match through(w.east_gw().egress, Some("Foo Mobile Safari")).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

/// Retries: flaky's only endpoint (in west) answers 503 to the first
/// request and 200 afterwards; with up to 3 retries on 5xx the client gets
/// the 200, after exactly one retry; with 1, a 503 that comes twice reaches
/// the client.
async fn a_503_is_retried_within_the_budget_and_passed_on_beyond_it(w: &World) {
    let (east_gw, flaky) = (w.east_gw(), &w.flaky);
    let to_west = json!([{"destinations": [{"cluster": "west", "weight": 100}]}]);
    w.put_routing(
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
    // `attempts` counts the tries after the first.
    w.put_routing(
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
    flaky.reset(0, 0);
}

/// Timeouts: slow's only endpoint (in west) answers after 2 s; with a
/// 500 ms timeout the client gets a 504 after about 500 ms; a per-try
/// timeout of 300 ms with one retry abandons the slow try for a fast one.
async fn timeouts_cut_slow_answers_and_abandon_slow_tries(w: &World) {
    let (east_gw, slow) = (w.east_gw(), &w.slow);
    let to_west = json!([{"destinations": [{"cluster": "west", "weight": 100}]}]);
    slow.reset(0, u64::MAX);
    w.put_routing("slow", json!({"rules": to_west, "timeout": "500ms"}))
        .await;
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
    w.put_routing(
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
}

/// The public entry (identity `external`): west has no endpoints now, so a
/// client outside every cluster is sent on to east; an access policy that
/// denies `external` closes the service to it, not to in-cluster clients.
async fn the_public_entry_serves_outside_clients_until_external_is_denied(w: &World) {
    let (east_gw, west_gw) = (w.east_gw(), w.west_gw());
    eventually(
        "the public entry to reach east",
        Duration::from_secs(15),
        async || match through(west_gw.public, None).await {
            (200, body) if body == "east" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    w.post_policy(
        json!({"name": "no-outside", "from": ["external"], "to": "web", "action": "deny"}),
    )
    .await;
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
        through(east_gw.egress, None).await,
        (200, "east".to_owned()),
        "in-cluster clients still pass"
    );
    assert!(metric(west_gw.admin, "gns_gateway_access_denied_total").await >= 1);
}

/// A TLS client with `chain`/`key` gets nothing from west's ingress: the
/// handshake fails, or (TLS 1.3, where the server judges the client's
/// certificate after the client's Finished) the first read does; and the
/// refusal is counted.
async fn west_refuses_client(
    w: &World,
    what: &str,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) {
    let west_gw = w.west_gw();
    let refused_before = metric(west_gw.admin, "gns_gateway_mtls_refused_total").await;
    let outcome = ingress_get(
        w.west_ingress(),
        FLAKY_HOST,
        &w.bundle_roots,
        chain,
        key,
        None,
    )
    .await;
    assert!(outcome.is_err(), "{what} must get no answer: {outcome:?}");
    eventually(
        &format!("the refusal of {what} to be counted"),
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
}

/// A client with a certificate from another CA (naming east's gateway) is
/// refused by west's ingress.
async fn a_certificate_from_another_ca_is_refused(w: &World) {
    let rogue_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://acme.test/cluster/east/gateway"
            .try_into()
            .expect("uri"),
    )];
    let rogue = params.self_signed(&rogue_key).expect("rogue cert");
    west_refuses_client(
        w,
        "a certificate of another CA",
        vec![rogue.der().clone()],
        PrivateKeyDer::try_from(rogue_key.serialize_der()).expect("key"),
    )
    .await;
}

/// A workload certificate of the federation's own CA (a valid chain, but
/// not a gateway's identity) is refused by west's ingress, and the log
/// says why.
async fn a_workload_certificate_of_the_same_ca_is_refused(w: &World) {
    let (chain, key) = workload_certificate(&w.dir.path().join("fed"), &w.backend).await;
    west_refuses_client(
        w,
        "a workload certificate",
        chain,
        PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
    )
    .await;
    let log = std::fs::read_to_string(&w.west_gw().log).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("ingress connection refused")
            && l.contains("spiffe://acme.test/ns/shop/sa/web")
            && l.contains("not a gateway of this trust domain")),
        "west's log names the refused identity and why"
    );
}

/// TCP passthrough: a connection to db's port on east's egress comes out
/// at west's TCP upstream, through a CONNECT tunnel in the peer
/// connection; a TLS ClientHello naming secure on the same port goes to
/// secure's upstream, untouched (TLS passthrough by SNI).
async fn tcp_and_tls_passthrough_cross_clusters(w: &World) {
    let east_gw = w.east_gw();
    let (east_ip, db_port) = (east_gw.egress.ip(), w.db_port);
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
}

/// Access by caller: once policies let no caller reach db, east's egress
/// refuses its client (a web endpoint, named by its address) before
/// anything leaves the cluster, and counts it.
async fn the_egress_refuses_callers_the_policy_denies(w: &World) {
    let east_gw = w.east_gw();
    let (east_ip, db_port) = (east_gw.egress.ip(), w.db_port);
    let denied_before = metric(east_gw.admin, "gns_gateway_access_denied_total").await;
    w.post_policy(json!({"name": "no-db", "from": ["*"], "to": "db", "action": "deny"}))
        .await;
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
}

/// West's ingress checks the caller east's gateway names: with api denied
/// flaky, a request naming api is refused (and counted) while one naming
/// no service is admitted (200, allowed by default), and so are east's own
/// clients (web endpoints).
async fn the_ingress_judges_the_caller_the_peer_names(w: &World) {
    let west_gw = w.west_gw();
    w.post_policy(
        json!({"name": "no-api-to-flaky", "from": ["api"], "to": "flaky", "action": "deny"}),
    )
    .await;
    let (chain, key) = east_certificate(&w.base).await;
    let key_der = || PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let denied_before = metric(west_gw.admin, "gns_gateway_access_denied_total").await;
    eventually(
        "west's ingress to refuse a request naming api",
        Duration::from_secs(15),
        async || {
            let named = ingress_get(
                w.west_ingress(),
                FLAKY_HOST,
                &w.bundle_roots,
                chain.clone(),
                key_der(),
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
    let unnamed = ingress_get(
        w.west_ingress(),
        FLAKY_HOST,
        &w.bundle_roots,
        chain.clone(),
        key_der(),
        None,
    )
    .await;
    assert_eq!(
        unnamed,
        Ok((200, "flaky".to_owned())),
        "a caller that is no service's endpoint is admitted by default"
    );
    let named_web = ingress_get(
        w.west_ingress(),
        FLAKY_HOST,
        &w.bundle_roots,
        chain,
        key_der(),
        Some("web"),
    )
    .await;
    assert_eq!(
        named_web,
        Ok((200, "flaky".to_owned())),
        "web may call flaky"
    );
}

/// A client's own `x-gns-caller` is dropped by the egress and the request
/// judged by the client's real identity (the services its address is an
/// endpoint of): web claiming to be api still gets through to flaky; api
/// (a client at API_CLIENT_IP) claiming to be web is still refused.
async fn a_spoofed_caller_header_is_dropped_and_the_real_caller_judged(w: &World) {
    let east_gw = w.east_gw();
    w.east_config_has("api", "east").await;
    let send = async |from: &str, claimed: &str| {
        let client = reqwest::Client::builder()
            .local_address(from.parse::<std::net::IpAddr>().expect("ip"))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        match client
            .get(format!("http://{}/hello", east_gw.egress))
            .header("host", FLAKY_HOST)
            .header("x-gns-caller", claimed)
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    };
    eventually(
        "api's client to be refused flaky whatever it claims",
        Duration::from_secs(15),
        async || match send(API_CLIENT_IP, "web").await {
            (403, body) if body.contains("api") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        send("127.0.0.1", "api").await,
        (200, "flaky".to_owned()),
        "web's client claiming to be api is judged as web"
    );
    w.delete_policy("no-api-to-flaky").await;
}

/// The ingress speaks no plaintext, and refuses TLS 1.2 and 1.1 with a TLS
/// alert, to an OpenSSL client that speaks TLS 1.1 on this machine (a
/// listener that never speaks TLS sends no alert).
async fn the_ingress_speaks_neither_plaintext_nor_tls_below_1_3(w: &World) {
    let mut plain = tokio::net::TcpStream::connect(w.west_ingress())
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
    let dir = w.dir.path().to_owned();
    tokio::task::spawn_blocking(move || openssl_speaks_tls_1_1(&dir))
        .await
        .expect("TLS 1.1 control");
    for flag in ["-tls1_2", "-tls1_1"] {
        let addr = w.west_ingress();
        let text = tokio::task::spawn_blocking(move || openssl_client(addr, flag))
            .await
            .expect("openssl");
        // The TLS server's own refusal: an alert (protocol version, or
        // handshake failure where no offered version leaves anything to
        // agree on). A listener that never speaks TLS sends no alert.
        assert!(
            (text.contains("alert protocol version") || text.contains("alert handshake failure"))
                && text.contains("Cipher is (NONE)"),
            "{flag} must be refused with a TLS alert: {text}"
        );
    }
}

/// The certificate west's ingress accepted at the start has expired by
/// now: the same client is refused, and the refusal counted and logged.
async fn an_expired_gateway_certificate_is_refused(w: &World) {
    let west_gw = w.west_gw();
    let (chain, key, issued_at) = w
        .east_cert
        .clone()
        .expect("the certificate of the earlier step");
    tokio::time::sleep(
        (issued_at + CERT_LIFETIME + Duration::from_secs(1))
            .saturating_duration_since(Instant::now()),
    )
    .await;
    let handshake_failures = "gns_gateway_mtls_handshake_failures_total{reason=\"handshake\"}";
    let handshake_before = metric(west_gw.admin, handshake_failures).await;
    west_refuses_client(
        w,
        "an expired certificate",
        chain,
        PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
    )
    .await;
    assert!(
        metric(west_gw.admin, handshake_failures).await > handshake_before,
        "counted as a handshake failure"
    );
    let west_log = west_gw.process.log_text();
    assert!(
        west_log
            .lines()
            .any(|l| l.contains("ingress connection refused") && l.contains("certificate expired")),
        "west refused the certificate for its expiry"
    );
}

/// The federation dies: the gateways keep serving from their config, also
/// across clusters while their certificates last; east's gateway, restarted
/// from its state dir while the federation is still down, serves again.
async fn the_data_path_outlives_the_federation_and_a_restart(w: &mut World) {
    w.fed.kill();
    let killed = Instant::now();
    assert_eq!(
        get(w.east_gw().egress, FLAKY_HOST, None, Duration::from_secs(5)).await,
        (200, "flaky".to_owned()),
        "east → west with the federation down"
    );
    // For 3 s, through the gateways' own failed polls of the federation.
    let mut served = 0;
    while killed.elapsed() < Duration::from_secs(3) {
        let (status, body) = through(w.east_gw().egress, None).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "east"),
            "with the federation down"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10, "only {served} requests in 3 s");
    let down_log = std::fs::read_to_string(&w.east_gw().log).unwrap_or_default();
    assert!(!down_log.is_empty());

    // East's gateway restarts (same arguments, its one-time join token long
    // spent) with only its state dir: it serves from the persisted config.
    let east = w.gateways.get_mut("east").expect("east");
    east.process.kill();
    let log = w.dir.path().join("gateway-east-restarted.log");
    east.process = Proc::spawn(&binary("gns-gateway"), &east.args, log.clone());
    east.log = log;
    let (egress, admin) = (east.egress, east.admin);
    eventually(
        "the restarted gateway to be ready without the federation",
        Duration::from_secs(15),
        async || {
            let ready = reqwest::get(format!("http://{admin}/readyz"))
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())?;
            if ready == 200 {
                Ok(())
            } else {
                Err(format!("readyz {ready}"))
            }
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            through(egress, None).await,
            (200, "east".to_owned()),
            "the restarted gateway serves with the federation down"
        );
    }
}

/// Serializes the scenarios of this binary: each runs two gateways with
/// timing-sensitive steps (timeouts, renewals) on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(backend: StoreBackend) {
    let _serial = SERIAL.lock().await;
    let mut steps = Steps::new(format!("gateways on {}", backend.name()));
    let mut w = setup(backend).await;
    steps
        .run(
            "connections spread over both workers",
            connections_spread_over_both_workers(&w),
        )
        .await;
    steps
        .run(
            "a valid gateway certificate is served",
            a_valid_gateway_certificate_is_served(&mut w),
        )
        .await;
    steps
        .run(
            "routing sends east's clients to west over mTLS",
            routing_sends_east_clients_to_west_over_mtls(&w),
        )
        .await;
    steps
        .run(
            "the 99/1 split and the User-Agent rule hold",
            the_99_1_split_and_the_user_agent_rule_hold(&w),
        )
        .await;
    steps
        .run(
            "large bodies cross clusters both ways and are replayed on retry",
            large_bodies_cross_clusters_both_ways_and_are_replayed_on_retry(&w),
        )
        .await;
    steps
        .run(
            "certificates renew under load without a failed request",
            certificates_renew_under_load_without_a_failed_request(&w),
        )
        .await;
    steps
        .run(
            "requests fail over when west's endpoints go",
            requests_fail_over_when_west_endpoints_go(&w),
        )
        .await;
    steps
        .run(
            "a 503 is retried within the budget and passed on beyond it",
            a_503_is_retried_within_the_budget_and_passed_on_beyond_it(&w),
        )
        .await;
    steps
        .run(
            "timeouts cut slow answers and abandon slow tries",
            timeouts_cut_slow_answers_and_abandon_slow_tries(&w),
        )
        .await;
    steps
        .run(
            "the public entry serves outside clients until external is denied",
            the_public_entry_serves_outside_clients_until_external_is_denied(&w),
        )
        .await;
    steps
        .run(
            "a certificate from another CA is refused",
            a_certificate_from_another_ca_is_refused(&w),
        )
        .await;
    steps
        .run(
            "a workload certificate of the same CA is refused",
            a_workload_certificate_of_the_same_ca_is_refused(&w),
        )
        .await;
    steps
        .run(
            "TCP and TLS passthrough cross clusters",
            tcp_and_tls_passthrough_cross_clusters(&w),
        )
        .await;
    steps
        .run(
            "the egress refuses callers the policy denies",
            the_egress_refuses_callers_the_policy_denies(&w),
        )
        .await;
    steps
        .run(
            "the ingress judges the caller the peer names",
            the_ingress_judges_the_caller_the_peer_names(&w),
        )
        .await;
    steps
        .run(
            "a spoofed caller header is dropped and the real caller judged",
            a_spoofed_caller_header_is_dropped_and_the_real_caller_judged(&w),
        )
        .await;
    steps
        .run(
            "the ingress speaks neither plaintext nor TLS below 1.3",
            the_ingress_speaks_neither_plaintext_nor_tls_below_1_3(&w),
        )
        .await;
    steps
        .run(
            "an expired gateway certificate is refused",
            an_expired_gateway_certificate_is_refused(&w),
        )
        .await;
    steps
        .run(
            "the data path outlives the federation and a restart",
            the_data_path_outlives_the_federation_and_a_restart(&mut w),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_across_clusters_on_sqlite() {
    scenario(StoreBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_across_clusters_on_postgres() {
    scenario(StoreBackend::postgres()).await;
}
