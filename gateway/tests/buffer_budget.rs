//! Request bodies through the egress, in process over real sockets: bodies
//! up to `MAX_BODY` (32 MiB) arrive whole, larger ones get 413, and the
//! process-wide buffer budget refuses a body that arrives while others hold
//! it (503, `retry-after: 1`), then takes bodies again once the holder is
//! done or gone.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gns_gateway::Gateway;
use gns_gateway::config::{GatewayConfig, ServiceConfig};
use gns_gateway::proxy::MAX_BODY;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{HOST, counting_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// FNV-1a, 64 bits: the checksum the upstream answers.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `len` bytes that differ from place to place (a reordered or dropped
/// piece changes the checksum).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// What the upstream answers for `body`: its length and checksum.
fn receipt(body: &[u8]) -> String {
    format!("{} {:016x}", body.len(), checksum(body))
}

/// An HTTP/1.1 upstream (hyper) that reads each request body whole and
/// answers its length and checksum.
async fn receipt_upstream() -> u16 {
    let (port, _) = counting_upstream(|tcp| async move {
        let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let answer = match req.into_body().collect().await {
                Ok(body) => receipt(&body.to_bytes()),
                Err(e) => format!("broken body: {e}"),
            };
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(answer))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    })
    .await;
    port
}

/// An egress on a free port routing [`HOST`] to the upstream on
/// `upstream_port`, with the buffer budget `budget` (`None`: the default),
/// set as the binary sets `--buffer-budget`.
async fn egress(upstream_port: u16, budget: Option<&str>) -> (SocketAddr, Arc<Gateway>) {
    let gateway = Gateway::new("east");
    if let Some(budget) = budget {
        let bytes = gns_gateway::budget::parse_size(budget).expect("budget");
        gateway.set_buffer_budget(bytes);
    }
    let config = ServiceConfig {
        gns: "production".into(),
        service: "web".into(),
        http_port: BTreeMap::from([("east".to_owned(), upstream_port)]),
        endpoints: BTreeMap::from([("east".to_owned(), vec!["127.0.0.1".parse().expect("ip")])]),
        ..ServiceConfig::default()
    };
    gateway.apply_config(GatewayConfig {
        version: 1,
        trust_domain: "acme.test".into(),
        services: BTreeMap::from([(HOST.to_owned(), std::sync::Arc::new(config))]),
        ..GatewayConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(Arc::clone(&gateway).serve_egress(listener));
    (addr, gateway)
}

/// How a test client frames its body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// `content-length` of the whole body.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Writes a POST head on `tcp` (`connection: close`).
async fn write_head(tcp: &mut OwnedWriteHalf, framing: Framing) {
    let framing = match framing {
        Framing::Length(len) => format!("content-length: {len}"),
        Framing::Chunked => "transfer-encoding: chunked".to_owned(),
    };
    let head =
        format!("POST /upload HTTP/1.1\r\nhost: {HOST}\r\n{framing}\r\nconnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("head");
}

/// Writes `data` in 64 KiB pieces (chunks when `chunked`); stops quietly
/// when the gateway has closed the connection (it answered early).
async fn write_body(tcp: &mut OwnedWriteHalf, data: &[u8], chunked: bool) -> bool {
    for piece in data.chunks(64 * KIB) {
        let written = if chunked {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(piece);
            framed.extend_from_slice(b"\r\n");
            tcp.write_all(&framed).await
        } else {
            tcp.write_all(piece).await
        };
        if written.is_err() {
            return false;
        }
    }
    true
}

/// An answer as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads the answer on `tcp` until the gateway closes it (the requests say
/// `connection: close`). A reset after the answer (the gateway closed with
/// body bytes unread) ends the reading like a close.
async fn read_answer(tcp: &mut tokio::net::tcp::OwnedReadHalf) -> Answer {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "an answer within 60 s");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body,
    }
}

/// The data of a chunked body (text only).
fn dechunk(mut body: &str) -> String {
    let mut data = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        data.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    data
}

/// Sends `data` as a POST body framed by `framing`, writing while it reads
/// the answer (which may come before the body is all sent).
async fn post(addr: SocketAddr, data: Arc<Vec<u8>>, framing: Framing) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut reading, mut writing) = tcp.into_split();
    let writer = tokio::spawn(async move {
        write_head(&mut writing, framing).await;
        let chunked = framing == Framing::Chunked;
        if write_body(&mut writing, &data, chunked).await && chunked {
            let _ = writing.write_all(b"0\r\n\r\n").await;
        }
        // Kept open until the answer is read.
        writing
    });
    let answer = read_answer(&mut reading).await;
    writer.abort();
    answer
}

/// Waits until the gateway holds exactly `bytes` of request bodies.
async fn until_buffered(gateway: &Gateway, bytes: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while gateway.buffer_budget().in_use() != bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes buffered, awaited {bytes}",
            gateway.buffer_budget().in_use()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of `name` among the budget's exported series.
fn metric(gateway: &Gateway, name: &str) -> u64 {
    gateway
        .buffer_budget()
        .metrics()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("no series {name}"))
}

#[tokio::test]
async fn a_16_mib_body_with_a_content_length_arrives_whole() {
    let (addr, gateway) = egress(receipt_upstream().await, None).await;
    let data = Arc::new(pattern(16 * MIB));
    let answer = post(addr, Arc::clone(&data), Framing::Length(data.len())).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body,
        receipt(&data),
        "the upstream got the body as sent"
    );
    until_buffered(&gateway, 0).await;
}

#[tokio::test]
async fn a_16_mib_chunked_body_arrives_whole() {
    let (addr, gateway) = egress(receipt_upstream().await, None).await;
    let data = Arc::new(pattern(16 * MIB));
    let answer = post(addr, Arc::clone(&data), Framing::Chunked).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body,
        receipt(&data),
        "the upstream got the body as sent"
    );
    until_buffered(&gateway, 0).await;
}

#[tokio::test]
async fn a_body_declared_above_max_body_gets_413_before_it_is_read() {
    let (addr, gateway) = egress(receipt_upstream().await, None).await;
    // The head only: the answer comes without waiting for the body.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut reading, mut writing) = tcp.into_split();
    write_head(&mut writing, Framing::Length(MAX_BODY + 1)).await;
    let answer = read_answer(&mut reading).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(gateway.buffer_budget().in_use(), 0);
}

#[tokio::test]
async fn a_chunked_body_growing_above_max_body_gets_413() {
    let (addr, gateway) = egress(receipt_upstream().await, None).await;
    let answer = post(addr, Arc::new(pattern(MAX_BODY + MIB)), Framing::Chunked).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.body.contains("larger than"), "{answer:?}");
    until_buffered(&gateway, 0).await;
    assert_eq!(
        metric(&gateway, "gns_gateway_buffer_budget_refusals_total"),
        0
    );
}

#[tokio::test]
async fn a_body_larger_than_the_whole_budget_gets_413_not_503() {
    let (addr, gateway) = egress(receipt_upstream().await, Some("2MiB")).await;
    let answer = post(addr, Arc::new(pattern(3 * MIB)), Framing::Chunked).await;
    assert_eq!(answer.status, 413, "it could never fit: {answer:?}");
    assert!(answer.body.contains("buffer budget"), "{answer:?}");
    until_buffered(&gateway, 0).await;
    assert_eq!(
        metric(&gateway, "gns_gateway_buffer_budget_refusals_total"),
        0
    );
}

/// A client that sends the head of a 2 MiB body and its first 1.5 MiB,
/// then stalls; returns its connection once the gateway holds those bytes.
async fn stalled_upload(
    addr: SocketAddr,
    gateway: &Gateway,
    data: &[u8],
) -> (tokio::net::tcp::OwnedReadHalf, OwnedWriteHalf) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (reading, mut writing) = tcp.into_split();
    write_head(&mut writing, Framing::Length(data.len())).await;
    assert!(write_body(&mut writing, &data[..3 * MIB / 2], false).await);
    until_buffered(gateway, 3 * MIB / 2).await;
    (reading, writing)
}

/// While a stalled upload holds 1.5 MiB of a 2 MiB budget, a 1 MiB body is
/// refused with 503 and `retry-after: 1`, and counted.
async fn refused_while_held(addr: SocketAddr, gateway: &Gateway) {
    let refused = post(addr, Arc::new(pattern(MIB)), Framing::Length(MIB)).await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.head.contains("retry-after: 1"), "{refused:?}");
    assert!(
        refused.body.contains("buffer budget exhausted"),
        "{refused:?}"
    );
    until_buffered(gateway, 3 * MIB / 2).await;
    assert_eq!(
        metric(gateway, "gns_gateway_buffer_budget_refusals_total"),
        1
    );
    assert_eq!(
        metric(gateway, "gns_gateway_buffered_bytes"),
        (3 * MIB / 2) as u64
    );
    assert_eq!(
        metric(gateway, "gns_gateway_buffer_budget_bytes"),
        (2 * MIB) as u64
    );
}

/// A 1 MiB body goes through whole.
async fn accepted(addr: SocketAddr) {
    let data = Arc::new(pattern(MIB));
    let answer = post(addr, Arc::clone(&data), Framing::Length(MIB)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, receipt(&data));
}

#[tokio::test]
async fn a_spent_budget_refuses_with_503_until_the_holding_request_completes() {
    let (addr, gateway) = egress(receipt_upstream().await, Some("2MiB")).await;
    let data = pattern(2 * MIB);
    let (mut reading, mut writing) = stalled_upload(addr, &gateway, &data).await;
    refused_while_held(addr, &gateway).await;

    // The stalled client finishes its body: it goes through whole, and its
    // budget is given back once it is answered.
    assert!(write_body(&mut writing, &data[3 * MIB / 2..], false).await);
    let answer = read_answer(&mut reading).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, receipt(&data));
    until_buffered(&gateway, 0).await;
    accepted(addr).await;
    until_buffered(&gateway, 0).await;
}

#[tokio::test]
async fn a_spent_budget_is_given_back_when_the_holding_client_goes_away() {
    let (addr, gateway) = egress(receipt_upstream().await, Some("2MiB")).await;
    let data = pattern(2 * MIB);
    let (reading, writing) = stalled_upload(addr, &gateway, &data).await;
    refused_while_held(addr, &gateway).await;

    // The stalled client goes away mid-body.
    drop((reading, writing));
    until_buffered(&gateway, 0).await;
    accepted(addr).await;
    until_buffered(&gateway, 0).await;
}
