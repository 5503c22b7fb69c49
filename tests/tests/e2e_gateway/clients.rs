//! Clients of the federation API, the gateways' entries and a peer ingress
//! (mutual TLS as a gateway), certificates as a gateway or a workload gets
//! them, and OpenSSL as a TLS 1.1/1.2 client.

use super::*;

pub(crate) async fn member(name: &str) -> TestApiServer {
    TestApiServer::start(TestApiServerOptions::default().token(
        "member-token",
        Grant::admin(format!("system:serviceaccount:gns:{name}")),
    ))
    .await
    .expect("test API server")
}

pub(crate) fn web_slice(ready: bool, port: u16) -> EndpointSlice {
    endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("127.0.0.1", ready, ready, false, Some("a"))],
        &[("http", i32::from(port))],
    )
}

pub(crate) async fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = gns_tests::client().build().expect("client");
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
pub(crate) fn state_dir_identity(state: &std::path::Path) -> Result<String, String> {
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
pub(crate) async fn through(egress: SocketAddr, user_agent: Option<&str>) -> (u16, String) {
    get(egress, HOST, user_agent, Duration::from_secs(5)).await
}

/// One request for `host` through an egress, given up after `limit`;
/// `(status, body)`, status 0 when the client failed.
pub(crate) async fn get(
    egress: SocketAddr,
    host: &str,
    user_agent: Option<&str>,
    limit: Duration,
) -> (u16, String) {
    let client = gns_tests::client().timeout(limit).build().expect("client");
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

pub(crate) async fn eventually(
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
pub(crate) async fn ingress_get(
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
            request = request.header(&gns_gateway::access::CALLER_HEADER, caller);
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
pub(crate) async fn join_token(base: &str, cluster: &str) -> String {
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
pub(crate) async fn east_certificate(base: &str) -> (Vec<CertificateDer<'static>>, rcgen::KeyPair) {
    let token = join_token(base, "east").await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let signed = gns_tests::client()
        .build()
        .expect("client")
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

pub(crate) struct GatewayProc {
    pub(crate) egress: SocketAddr,
    pub(crate) public: SocketAddr,
    pub(crate) admin: SocketAddr,
    /// What it was started with (a restart uses the same).
    pub(crate) args: Vec<String>,
    pub(crate) log: std::path::PathBuf,
    pub(crate) process: Proc,
}

/// Sends `body` to `path` of `host` through `egress` over HTTP/1.1, with a
/// `content-length` or (`chunked`) in 256 KiB chunks of the chunked
/// encoding; `(status, response body, whether the response was chunked)`.
pub(crate) async fn post_body(
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
pub(crate) fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ ((i / 251) % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A certificate for a workload of the federation's own trust domain
/// (`spiffe://acme.test/ns/shop/sa/web`), as a workload agent gets one
/// (`POST /v1/identity/workloads/sign`): signed by the same CA as the
/// gateways' certificates, but not a gateway identity. Its chain and key.
pub(crate) async fn workload_certificate(
    base: &str,
) -> (Vec<CertificateDer<'static>>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (status, signed) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/identity/workloads/sign"),
        Some(json!({"csr": csr, "namespace": "shop", "serviceAccount": "web"})),
    )
    .await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(signed["spiffeId"], "spiffe://acme.test/ns/shop/sa/web");
    let chain =
        CertificateDer::pem_slice_iter(signed["certificate"].as_str().expect("pem").as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificate chain");
    (chain, key)
}

/// The output of `openssl s_client` offering only `version_flag` (e.g.
/// `-tls1_1`) to `addr`, with every cipher and security level 0 so OpenSSL 3
/// really offers TLS 1.1.
pub(crate) fn openssl_client(addr: SocketAddr, version_flag: &str) -> String {
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
pub(crate) fn openssl_speaks_tls_1_1(dir: &std::path::Path) {
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

/// Sends `request`: `"<status> <body>"`, or the client's error in words.
pub(crate) async fn status_and_body(request: reqwest::RequestBuilder) -> String {
    match request.send().await {
        Ok(resp) => format!(
            "{} {}",
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default()
        ),
        Err(e) => e.to_string(),
    }
}
