//! The egress listener in process, over real sockets: in-cluster clients may
//! speak HTTP/1.1 or h2c (prior knowledge) to it; both are routed by host to
//! a local upstream, and request and response body bytes are counted per
//! service and cluster.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use gns_gateway::Gateway;
use gns_gateway::config::{GatewayConfig, ServiceConfig};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "web.production.app.acme.com";

/// An upstream on a free port: counts the connections it accepted and
/// serves each with `serve` on a task of its own.
async fn counting_upstream<F, Fut>(
    serve: F,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(serve(tcp));
        }
    });
    (port, accepted)
}

/// An HTTP/1.1 upstream answering `hello from east` (15 bytes); counts the
/// connections it accepted; with `close_silently` it closes each connection
/// after one answer without saying so (as an idle-timeout would).
async fn upstream_with(
    close_silently: bool,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    counting_upstream(move |tcp| async move {
        let svc = service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                b"hello from east",
            ))))
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        if close_silently {
            builder.keep_alive(false);
        }
        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
    })
    .await
}

async fn upstream() -> u16 {
    upstream_with(false).await.0
}

async fn get(client: &reqwest::Client, addr: SocketAddr) -> String {
    client
        .get(format!("http://{addr}/"))
        .header("host", HOST)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn connections_to_local_endpoints_are_reused_and_closed_ones_replaced() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let (port, accepted) = upstream_with(false).await;
    let addr = egress(port).await;
    for _ in 0..20 {
        assert_eq!(get(&client, addr).await, "hello from east");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "20 sequential requests share one upstream connection"
    );
    // An upstream that closes every connection after one answer: each
    // request still succeeds, on a new connection.
    let (port, accepted) = upstream_with(true).await;
    let addr = egress(port).await;
    for i in 0..10 {
        assert_eq!(get(&client, addr).await, "hello from east", "request {i}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 10);
}

async fn egress(upstream_port: u16) -> SocketAddr {
    egress_with_idle(upstream_port, None).await
}

/// An egress to the upstream on `upstream_port`, closing client connections
/// after `idle` without a request (`None`: the default).
async fn egress_with_idle(upstream_port: u16, idle: Option<std::time::Duration>) -> SocketAddr {
    let gateway = Gateway::new("east");
    if let Some(idle) = idle {
        gateway.set_client_idle_timeout(Some(idle));
    }
    let service = ServiceConfig {
        gns: "production".into(),
        service: "web".into(),
        http_port: BTreeMap::from([("east".to_owned(), upstream_port)]),
        endpoints: BTreeMap::from([("east".to_owned(), vec!["127.0.0.1".parse().expect("ip")])]),
        ..ServiceConfig::default()
    };
    gateway.apply_config(GatewayConfig {
        version: 1,
        trust_domain: "acme.test".into(),
        services: BTreeMap::from([(HOST.to_owned(), service)]),
        ..GatewayConfig::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve_egress(listener));
    addr
}

fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn http1_and_h2c_clients_are_routed_and_bytes_counted() {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("recorder");
    let addr = egress(upstream().await).await;

    // HTTP/1.1 with a body.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!(
            "POST /x HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nping"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello from east"), "{answer}");

    // h2c with prior knowledge: the HTTP/2 preface on a plain connection.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .uri(format!("http://{HOST}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2c request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"hello from east");

    let text = prometheus.render();
    let labels = [
        "entry=\"egress\"",
        "service=\"web.production\"",
        "cluster=\"east\"",
    ];
    assert_eq!(
        metric(&text, "gns_gateway_requests_total", &labels),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "gns_gateway_request_bytes_total", &labels),
        Some(4.0),
        "the 4-byte request body: {text}"
    );
    assert_eq!(
        metric(&text, "gns_gateway_response_bytes_total", &labels),
        Some(30.0),
        "two 15-byte responses: {text}"
    );
}

/// An HTTP/1.1 upstream that streams large bodies in pieces with pauses
/// between them (so they arrive in many reads): `/chunked` in the chunked
/// encoding, anything else with a `content-length`. Keeps connections alive
/// and counts the ones it accepted.
async fn streaming_upstream(
    pieces: usize,
    piece: usize,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    counting_upstream(move |mut tcp| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            // One request head at a time (these requests have no body).
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let chunked = head.starts_with(b"GET /chunked ");
            head.clear();
            let answer = if chunked {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    pieces * piece
                )
            };
            tcp.write_all(answer.as_bytes()).await.expect("head");
            for n in 0..pieces {
                let data = vec![b'a' + (n % 26) as u8; piece];
                if chunked {
                    tcp.write_all(format!("{piece:x}\r\n").as_bytes())
                        .await
                        .expect("size");
                }
                tcp.write_all(&data).await.expect("data");
                if chunked {
                    tcp.write_all(b"\r\n").await.expect("end of chunk");
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if chunked {
                tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
            }
        }
    })
    .await
}

#[tokio::test]
async fn large_bodies_arriving_in_pieces_are_relayed_whole_on_a_kept_connection() {
    let (pieces, piece) = (40, 32 * 1024);
    let (port, accepted) = streaming_upstream(pieces, piece).await;
    let addr = egress(port).await;
    let client = reqwest::Client::new();
    let expected: Vec<u8> = (0..pieces)
        .flat_map(|n| std::iter::repeat_n(b'a' + (n % 26) as u8, piece))
        .collect();
    for path in ["/chunked", "/length", "/chunked", "/length"] {
        let response = client
            .get(format!("http://{addr}{path}"))
            .header("host", HOST)
            .timeout(std::time::Duration::from_secs(20))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let body = response.bytes().await.expect("the body within 20 s");
        assert_eq!(body.len(), expected.len(), "{path}: the whole body");
        assert!(body[..] == expected[..], "{path}: the body as sent");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "each body ended cleanly, so the connection was reused"
    );
}

/// Sends `GET /` on `tcp` and reads the answer up to the end of `body`.
async fn get_on(tcp: &mut TcpStream, body: &[u8]) {
    tcp.write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(body) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert_ne!(n, 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn idle_client_connections_are_closed_and_busy_ones_kept() {
    let idle = std::time::Duration::from_millis(400);
    let addr = egress_with_idle(upstream().await, Some(idle)).await;

    // Used once, then left: closed by the gateway after the idle time.
    let mut left = TcpStream::connect(addr).await.expect("connect");
    get_on(&mut left, b"hello from east").await;
    // Used every 100 ms meanwhile: kept open throughout.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let started = std::time::Instant::now();
    while started.elapsed() < idle * 4 {
        get_on(&mut busy, b"hello from east").await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), left.read(&mut buf))
        .await
        .expect("the idle connection is closed within 5 s");
    assert_eq!(
        read.expect("read"),
        0,
        "an orderly close of the idle connection"
    );
    get_on(&mut busy, b"hello from east").await;

    // A response that takes longer than the idle time is finished first.
    let (pieces, piece) = (400, 1024);
    let (slow_port, _) = streaming_upstream(pieces, piece).await;
    let slow = egress_with_idle(slow_port, Some(std::time::Duration::from_millis(200))).await;
    let begun = std::time::Instant::now();
    let body = reqwest::Client::new()
        .get(format!("http://{slow}/"))
        .header("host", HOST)
        .timeout(std::time::Duration::from_secs(20))
        .send()
        .await
        .expect("request")
        .bytes()
        .await
        .expect("the whole body");
    assert_eq!(body.len(), pieces * piece, "the whole body");
    assert!(
        begun.elapsed() > std::time::Duration::from_millis(600),
        "the response took longer than the idle time ({:?})",
        begun.elapsed()
    );
}
