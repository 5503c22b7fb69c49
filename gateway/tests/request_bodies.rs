//! Request bodies through the egress, in process over real sockets: every
//! body streams through whole, with no size limit, unless the route's
//! retry policy may resend the request; then a body of declared length up
//! to `MAX_REPLAY` is kept (its length reserved in the process-wide buffer
//! budget until the request is answered), and a body the budget has no
//! room for streams instead of being refused.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gns_gateway::Gateway;
use gns_gateway::body::MAX_REPLAY;
use gns_gateway::config::{RetryPolicy, ServiceConfig};
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

/// An HTTP/1.1 upstream (hyper) that reads each request body to its end,
/// counting the bytes in `received` as they arrive, and answers its length
/// and checksum.
async fn receipt_upstream() -> (u16, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&received);
    let (port, _) = counting_upstream(move |tcp| {
        let counted = Arc::clone(&counted);
        async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let counted = Arc::clone(&counted);
                async move {
                    let mut body = req.into_body();
                    let mut whole = Vec::new();
                    let answer = loop {
                        match body.frame().await {
                            None => break receipt(&whole),
                            Some(Ok(frame)) => {
                                if let Some(data) = frame.data_ref() {
                                    counted.fetch_add(data.len() as u64, Ordering::SeqCst);
                                    whole.extend_from_slice(data);
                                }
                            }
                            Some(Err(e)) => break format!("broken body: {e}"),
                        }
                    };
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(answer))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await;
    (port, received)
}

/// A retry policy under which a POST may be resent (its body is kept).
fn resending() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        on_5xx: true,
        on_connect_failure: false,
        per_try_timeout_ms: None,
        on_gateway_error: false,
        on_reset: false,
        retriable_status_codes: Vec::new(),
        non_idempotent: true,
    }
}

/// An egress on a free port routing [`HOST`] to the upstream on
/// `upstream_port`, with the buffer budget `budget` (`None`: the default),
/// set as the binary sets `--buffer-budget`, and the retry policy `retries`.
async fn egress(
    upstream_port: u16,
    budget: Option<&str>,
    retries: Option<RetryPolicy>,
) -> (SocketAddr, Arc<Gateway>) {
    let gateway = Gateway::new("east");
    if let Some(budget) = budget {
        let bytes = gns_gateway::budget::parse_size(budget).expect("budget");
        gateway.set_buffer_budget(bytes);
    }
    let config = ServiceConfig {
        retries,
        ..support::local_service("web", upstream_port)
    };
    gateway.apply_config(support::config_routing(HOST, config));
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
    Answer { status, body }
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

/// Waits until the upstream has received at least `bytes` body bytes.
async fn until_received(received: &AtomicU64, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::SeqCst) < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream received {} bytes, awaited {bytes}",
            received.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_16_mib_body_with_a_content_length_arrives_whole() {
    let (port, _) = receipt_upstream().await;
    let (addr, gateway) = egress(port, None, None).await;
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
    let (port, _) = receipt_upstream().await;
    let (addr, gateway) = egress(port, None, None).await;
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
async fn a_body_larger_than_the_replay_limit_streams_through_whole_despite_a_retry_policy() {
    let (port, _) = receipt_upstream().await;
    let (addr, gateway) = egress(port, Some("1GiB"), Some(resending())).await;
    let len = usize::try_from(MAX_REPLAY).expect("fits") + MIB;
    let data = Arc::new(pattern(len));
    let answer = post(addr, Arc::clone(&data), Framing::Length(len)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, receipt(&data));
    assert_eq!(metric(&gateway, "gns_gateway_buffered_bytes"), 0);
}

/// A client that sends the head of a body of `data.len()` bytes (framed by
/// `framing`) and its first `sent` bytes, then stalls.
async fn stalled_upload(
    addr: SocketAddr,
    data: &[u8],
    sent: usize,
    framing: Framing,
) -> (tokio::net::tcp::OwnedReadHalf, OwnedWriteHalf) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (reading, mut writing) = tcp.into_split();
    write_head(&mut writing, framing).await;
    assert!(write_body(&mut writing, &data[..sent], framing == Framing::Chunked).await);
    (reading, writing)
}

/// The stalled client sends the rest of its body (`sent` bytes were sent)
/// and gets the upstream's receipt of all of it.
async fn finish_upload(
    (mut reading, mut writing): (tokio::net::tcp::OwnedReadHalf, OwnedWriteHalf),
    data: &[u8],
    sent: usize,
    framing: Framing,
) {
    let chunked = framing == Framing::Chunked;
    assert!(write_body(&mut writing, &data[sent..], chunked).await);
    if chunked {
        writing.write_all(b"0\r\n\r\n").await.expect("last chunk");
    }
    let answer = read_answer(&mut reading).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, receipt(data));
}

#[tokio::test]
async fn without_a_retry_policy_the_upstream_reads_a_body_while_the_client_still_sends_it() {
    let (port, received) = receipt_upstream().await;
    let (addr, gateway) = egress(port, Some("2MiB"), None).await;
    let data = pattern(4 * MIB);
    let upload = stalled_upload(addr, &data, 3 * MIB, Framing::Length(4 * MIB)).await;
    // 3 MiB went past a 2 MiB budget to the upstream: nothing was kept.
    until_received(&received, (3 * MIB) as u64).await;
    assert_eq!(gateway.buffer_budget().in_use(), 0);
    finish_upload(upload, &data, 3 * MIB, Framing::Length(4 * MIB)).await;
}

#[tokio::test]
async fn a_chunked_body_streams_even_under_a_retry_policy() {
    let (port, received) = receipt_upstream().await;
    let (addr, gateway) = egress(port, None, Some(resending())).await;
    let data = pattern(2 * MIB);
    let upload = stalled_upload(addr, &data, MIB, Framing::Chunked).await;
    until_received(&received, MIB as u64).await;
    assert_eq!(gateway.buffer_budget().in_use(), 0);
    finish_upload(upload, &data, MIB, Framing::Chunked).await;
}

#[tokio::test]
async fn under_a_retry_policy_a_declared_body_is_kept_whole_before_it_is_sent() {
    let (port, received) = receipt_upstream().await;
    let (addr, gateway) = egress(port, Some("4MiB"), Some(resending())).await;
    let data = pattern(2 * MIB);
    let upload = stalled_upload(addr, &data, MIB, Framing::Length(2 * MIB)).await;
    // Its whole declared length is reserved, and nothing reaches the
    // upstream until the body is complete.
    until_buffered(&gateway, 2 * MIB).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.load(Ordering::SeqCst), 0);
    finish_upload(upload, &data, MIB, Framing::Length(2 * MIB)).await;
    until_buffered(&gateway, 0).await;
}

#[tokio::test]
async fn a_body_the_spent_budget_has_no_room_for_streams_instead_of_being_refused() {
    let (port, _) = receipt_upstream().await;
    let (addr, gateway) = egress(port, Some("2MiB"), Some(resending())).await;
    let data = pattern(2 * MIB);
    let upload = stalled_upload(addr, &data, MIB, Framing::Length(2 * MIB)).await;
    until_buffered(&gateway, 2 * MIB).await;

    let other = Arc::new(pattern(MIB));
    let answer = post(addr, Arc::clone(&other), Framing::Length(MIB)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, receipt(&other));
    assert_eq!(
        metric(&gateway, "gns_gateway_buffer_budget_refusals_total"),
        1
    );
    assert_eq!(
        metric(&gateway, "gns_gateway_buffered_bytes"),
        (2 * MIB) as u64
    );
    assert_eq!(
        metric(&gateway, "gns_gateway_buffer_budget_bytes"),
        (2 * MIB) as u64
    );

    finish_upload(upload, &data, MIB, Framing::Length(2 * MIB)).await;
    until_buffered(&gateway, 0).await;
}

#[tokio::test]
async fn a_kept_body_gives_its_budget_back_when_its_client_goes_away() {
    let (port, _) = receipt_upstream().await;
    let (addr, gateway) = egress(port, Some("2MiB"), Some(resending())).await;
    let data = pattern(2 * MIB);
    let upload = stalled_upload(addr, &data, MIB, Framing::Length(2 * MIB)).await;
    until_buffered(&gateway, 2 * MIB).await;
    drop(upload);
    until_buffered(&gateway, 0).await;
}
