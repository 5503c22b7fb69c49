//! The egress's own HTTP/1.1 server, against raw clients over real
//! sockets: pipelined requests, malformed and oversized heads, HTTP/1.0
//! clients, refused requests whose bodies were never read (small ones
//! drained to keep the connection, large ones closed in order), a
//! client hanging up on a request in flight, and a CONNECT, refused.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{HOST, counting_upstream, egress, hello_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/1.1 upstream (hyper, keep-alive) answering each request with
/// its path.
async fn path_upstream() -> u16 {
    let (port, _) = counting_upstream(|tcp| async move {
        let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let path = req.uri().path().to_owned();
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(path))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    })
    .await;
    port
}

/// Everything the gateway sends until it closes the connection (fails
/// after 5 s, or on a reset).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut seen))
        .await
        .expect("closed within 5 s")
        .expect("an orderly close, not a reset");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads until what came ends with `end` (fails after 5 s, or when the
/// gateway closes first).
async fn read_through(tcp: &mut TcpStream, end: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(end.as_bytes()) {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("answers within 5 s")
            .expect("read");
        assert_ne!(n, 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads until `count` answers have come, the last one ending in `/third`.
async fn read_responses(tcp: &mut TcpStream, count: usize) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen)
        .matches("HTTP/1.1 200")
        .count()
        < count
        || !seen.ends_with(b"/third")
    {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("answers within 5 s")
            .expect("read");
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let addr = egress(path_upstream().await).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let requests: String = ["/first", "/second", "/third"]
        .iter()
        .map(|path| format!("GET {path} HTTP/1.1\r\nhost: {HOST}\r\n\r\n"))
        .collect();
    tcp.write_all(requests.as_bytes()).await.expect("requests");
    let text = read_responses(&mut tcp, 3).await;
    let first = text.find("/first").expect("first answered");
    let second = text.find("/second").expect("second answered");
    let third = text.find("/third").expect("third answered");
    assert!(first < second && second < third, "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn a_malformed_head_gets_400_and_an_oversized_one_431_then_the_connection_closes() {
    let (port, _) = hello_upstream().await;
    let addr = egress(port).await;
    for (head, status) in [
        (
            "GET / HTTP/1.1\r\nhost: web\r\nbad field\r\n\r\n".to_owned(),
            "400",
        ),
        (
            format!("POST / HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 1, 2\r\n\r\n"),
            "400",
        ),
        (
            format!("POST / HTTP/1.1\r\nhost: {HOST}\r\ntransfer-encoding: gzip\r\n\r\n"),
            "400",
        ),
        (
            format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)),
            "431",
        ),
    ] {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        // An oversized head may be refused before all of it is written.
        let _ = tcp.write_all(head.as_bytes()).await;
        let text = read_to_close(&mut tcp).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status} for {:?}: {text}",
            &head[..40]
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
}

#[tokio::test]
async fn an_http10_client_is_answered_and_closed_unless_it_asks_for_keep_alive() {
    let (port, _) = hello_upstream().await;
    let addr = egress(port).await;
    let mut once = TcpStream::connect(addr).await.expect("connect");
    once.write_all(format!("GET / HTTP/1.0\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let text = read_to_close(&mut once).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello from east"), "{text}");
    assert!(
        !text.contains("chunked"),
        "no chunked framing to HTTP/1.0: {text}"
    );

    let mut kept = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..2 {
        kept.write_all(
            format!("GET / HTTP/1.0\r\nhost: {HOST}\r\nconnection: keep-alive\r\n\r\n").as_bytes(),
        )
        .await
        .expect("request on the kept connection");
        let text = read_through(&mut kept, "hello from east").await;
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        assert!(text.contains("content-length: 15\r\n"), "{text}");
    }
}

#[tokio::test]
async fn a_refused_request_with_a_large_unread_body_is_answered_before_an_orderly_close() {
    let (port, _) = hello_upstream().await;
    let addr = egress(port).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // An unknown host with a large body: refused without reading it.
    let body = vec![b'x'; 256 * 1024];
    tcp.write_all(
        format!(
            "POST / HTTP/1.1\r\nhost: nobody.example\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&body).await;
    });
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut seen))
        .await
        .expect("closed within 5 s")
        .expect("an orderly close, not a reset");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    let _ = writer.await;
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_its_request_at_the_endpoint() {
    // An endpoint that reads a request and never answers; it notes when
    // the gateway closes the connection to it (the request was dropped).
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let closed_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(closed_tx)));
    let (port, _) = counting_upstream(move |mut tcp| {
        let closed_tx = std::sync::Arc::clone(&closed_tx);
        async move {
            let mut buf = [0u8; 4096];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if let Some(tx) = closed_tx.lock().expect("lock").take() {
                let _ = tx.send(());
            }
        }
    })
    .await;
    let addr = egress(port).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET /poll HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tcp);
    tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the endpoint's connection is closed within 5 s of the hang-up")
        .expect("noted");
}

#[tokio::test]
async fn a_refused_request_with_a_small_unread_body_keeps_its_connection() {
    let (port, _) = hello_upstream().await;
    let addr = egress(port).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // Refused (unknown host) without its 1 KiB body being read: the body
    // is read and dropped after the answer, and the connection goes on.
    let body = "x".repeat(1024);
    tcp.write_all(
        format!(
            "POST / HTTP/1.1\r\nhost: nobody.example\r\ncontent-length: {}\r\n\r\n{body}GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("requests");
    let text = read_through(&mut tcp, "hello from east").await;
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
}

#[tokio::test]
async fn a_refused_request_whose_client_awaits_100_continue_closes_instead_of_waiting_for_its_body()
{
    let (port, _) = hello_upstream().await;
    let addr = egress(port).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The client holds its small body back until told to go on; refused
    // first, it is never told, so the gateway must not wait to drain it.
    tcp.write_all(
        b"POST / HTTP/1.1\r\nhost: nobody.example\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("head");
    let text = read_to_close(&mut tcp).await;
    assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
}

/// A client's CONNECT is refused with a 501 framed as a normal answer
/// (never a 2xx, after which the connection would be a tunnel), and is not
/// passed on to the service's endpoint; the connection carries the next
/// request.
#[tokio::test]
async fn a_connect_is_refused_with_501_and_not_passed_on() {
    // The endpoint counts the requests it is asked.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&seen);
    let (port, _) = counting_upstream(move |tcp| {
        let counted = std::sync::Arc::clone(&counted);
        async move {
            let svc = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("/hello"))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
    .await;
    let addr = egress(port).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let connect = format!("CONNECT {HOST}:443 HTTP/1.1\r\nhost: {HOST}:443\r\n\r\n");
    tcp.write_all(connect.as_bytes())
        .await
        .expect("connect request");
    let refused = read_through(&mut tcp, "instead\n").await;
    assert!(refused.starts_with("HTTP/1.1 501 "), "{refused}");
    assert!(refused.contains("content-length: "), "{refused}");
    assert!(refused.contains("CONNECT is not tunnelled"), "{refused}");
    let get = format!("GET /hello HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    tcp.write_all(get.as_bytes()).await.expect("next request");
    let answer = read_through(&mut tcp, "/hello").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the GET reached the endpoint"
    );
}
