//! The pool of HTTP/1.1 connections to local endpoints against a real
//! endpoint over loopback: a burst of concurrent requests leaves its
//! connections for the next burst, a connection the endpoint closed
//! while idle is not used for a request (even one closed while the
//! worker was too busy for its reactor to see it), and connections left
//! idle are closed by the pool's periodic sweep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gns_gateway::pool::LocalPool;
use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test endpoint treats a connection after each answer.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request.
    KeepAlive,
    /// Closes it a moment later, without saying so.
    CloseSoon,
}

/// An endpoint answering `ok` after `delay`, counting the connections it accepts.
async fn endpoint(delay: Duration, after: After) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp, delay, after));
        }
    });
    (address, accepted)
}

async fn serve(mut tcp: TcpStream, delay: Duration, after: After) {
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
        }
        read.clear();
        tokio::time::sleep(delay).await;
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if tcp.write_all(answer).await.is_err() {
            return;
        }
        if let After::CloseSoon = after {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        }
    }
}

fn get() -> http::request::Parts {
    Request::get("/")
        .header("host", "web")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

/// Sends `count` requests at once and reads every answer whole; a
/// connection found closed as a request went out is replaced only if
/// `resend`.
async fn burst(pool: &LocalPool, target: SocketAddr, count: usize, resend: bool) {
    let parts = get();
    let sends = (0..count).map(|_| async {
        assert_eq!(fetch(pool, target, &parts, resend).await, "ok");
    });
    futures::future::join_all(sends).await;
}

/// A bodiless request's answer, read whole.
async fn fetch(
    pool: &LocalPool,
    target: SocketAddr,
    parts: &http::request::Parts,
    resend: bool,
) -> Bytes {
    let response = pool
        .send(target, parts, &Bytes::new(), resend)
        .await
        .expect("answer");
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

#[tokio::test]
async fn a_burst_of_concurrent_requests_leaves_its_connections_for_the_next() {
    let (target, accepted) = endpoint(Duration::from_millis(50), After::KeepAlive).await;
    let pool = LocalPool::new(Duration::from_secs(5));
    burst(&pool, target, 300, true).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        300,
        "one connection per request in flight"
    );
    burst(&pool, target, 300, true).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        300,
        "the second burst reuses the first one's connections"
    );
}

#[tokio::test]
async fn a_connection_the_endpoint_closed_while_idle_is_not_used() {
    let (target, accepted) = endpoint(Duration::ZERO, After::CloseSoon).await;
    let pool = LocalPool::new(Duration::from_secs(5));
    for round in 1..=3 {
        // Not resent: a request written on the closed connection would fail.
        burst(&pool, target, 1, false).await;
        // The endpoint closes the connection meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), round);
    }
}

#[tokio::test]
async fn a_streamed_body_goes_out_chunked_with_trailers_and_trailers_come_back() {
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    // A real HTTP/1.1 server: answers with what it read, as chunks, and a
    // trailer naming the request's trailer.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let service =
            hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                let chunked = req.headers().get("transfer-encoding").cloned();
                let whole = req.into_body().collect().await.expect("request body");
                let seen = whole.trailers().and_then(|t| t.get("x-sum")).cloned();
                let mut trailers = http::HeaderMap::new();
                trailers.insert(
                    "x-seen",
                    seen.unwrap_or(http::HeaderValue::from_static("none")),
                );
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(Frame::data(whole.to_bytes())),
                    Ok(Frame::trailers(trailers)),
                ];
                let mut response =
                    http::Response::new(StreamBody::new(futures::stream::iter(frames)));
                // hyper sends the trailer fields the response declares.
                response
                    .headers_mut()
                    .insert("trailer", http::HeaderValue::from_static("x-seen"));
                if let Some(te) = chunked {
                    response.headers_mut().insert("x-request-framing", te);
                }
                Ok::<_, std::convert::Infallible>(response)
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    });
    let pool = LocalPool::new(Duration::from_secs(5));
    let checkout = pool.checkout(target).await.expect("connect");
    let mut sum = http::HeaderMap::new();
    sum.insert("x-sum", http::HeaderValue::from_static("42"));
    let frames = vec![
        Ok::<_, gns_gateway::proxy::BoxError>(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
        Ok(Frame::trailers(sum)),
    ];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let mut request = Request::post("/up")
        .header("host", "web")
        // A server sends trailers to a client that says it takes them.
        .header("te", "trailers")
        .body(body)
        .expect("request");
    *request.version_mut() = http::Version::HTTP_11;
    let response = pool
        .send_on(target, checkout, request)
        .await
        .expect("answer");
    assert_eq!(response.headers()["x-request-framing"], "chunked");
    let whole = response.into_body().collect().await.expect("response body");
    assert_eq!(whole.trailers().expect("trailers")["x-seen"], "42");
    assert_eq!(whole.to_bytes(), "hello world");
}

#[tokio::test]
async fn a_body_that_ends_with_the_connection_is_read_whole_and_the_connection_not_reused() {
    // An HTTP/1.0-style endpoint: no length, the body ends when it closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\n\r\nfirst ").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tcp.write_all(b"and last").await;
            });
        }
    });
    let pool = LocalPool::new(Duration::from_secs(5));
    let parts = get();
    for round in 1..=2 {
        assert_eq!(fetch(&pool, target, &parts, false).await, "first and last");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            round,
            "a new connection each time"
        );
    }
}

#[tokio::test]
async fn an_early_answer_to_an_upload_the_endpoint_stops_reading_is_passed_on_whole() {
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    // Answers 413 after the head and closes without reading the body.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        while !read.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.expect("read");
            read.extend_from_slice(&buf[..n]);
        }
        let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large";
        tcp.write_all(answer).await.expect("answer");
    });
    let pool = LocalPool::new(Duration::from_secs(5));
    let checkout = pool.checkout(target).await.expect("connect");
    // 256 MiB: far more than the sockets hold.
    let chunks = (0..256).map(|_| {
        Ok::<_, gns_gateway::proxy::BoxError>(Frame::data(Bytes::from(vec![7u8; 1 << 20])))
    });
    let body = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let request = Request::put("/up")
        .header("host", "web")
        .header("content-length", (256u64 << 20).to_string())
        .body(body)
        .expect("request");
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        pool.send_on(target, checkout, request),
    )
    .await
    .expect("in time")
    .expect("the endpoint's answer");
    assert_eq!(response.status(), 413);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "too large");
}

#[tokio::test]
async fn connections_left_idle_are_closed_by_the_sweep_with_no_more_traffic() {
    // An endpoint that keeps connections open and counts the ones the
    // gateway closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = listener.local_addr().expect("address");
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&closed);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                serve(tcp, Duration::ZERO, After::KeepAlive).await;
                counted.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let pool = LocalPool::new(Duration::from_secs(5));
    burst(&pool, target, 3, false).await;
    assert_eq!(closed.load(Ordering::SeqCst), 0, "parked, not closed");
    // No request comes any more: past the idle timeout (60 s) and a sweep
    // interval (10 s), the sweep alone closes them.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(75)).await;
    for _ in 0..200 {
        if closed.load(Ordering::SeqCst) == 3 {
            return;
        }
        // Real time for the sockets' closes to arrive, then the paused
        // clock moved on a little (timers fire, the runtime reads them).
        std::thread::sleep(Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    panic!(
        "{} of 3 idle connections closed",
        closed.load(Ordering::SeqCst)
    );
}

/// Reads one request head (and no more than its first read brought).
fn read_head(tcp: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while !read.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// A POST, which is not sent again once it went out on a connection found
/// closed, comes after the endpoint closed the idle connection it would
/// reuse, with this single-threaded runtime's reactor given no turn to see
/// the close (as on a busy worker): the pool asks the socket, finds it
/// closed, and sends the POST on a new connection.
#[tokio::test(flavor = "current_thread")]
async fn a_request_that_cannot_go_out_again_avoids_a_connection_closed_unseen() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("address");
    let (close, close_asked) = std::sync::mpsc::channel::<()>();
    let (closed, closed_seen) = std::sync::mpsc::channel::<()>();
    // The endpoint runs on its own thread, out of this runtime.
    let endpoint = std::thread::spawn(move || {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (mut first, _) = listener.accept().expect("first connection");
        read_head(&mut first);
        first.write_all(answer).expect("first answer");
        close_asked.recv().expect("asked to close");
        drop(first);
        closed.send(()).expect("closed");
        let (mut second, _) = listener.accept().expect("second connection");
        read_head(&mut second);
        second.write_all(answer).expect("second answer");
    });
    let pool = LocalPool::new(Duration::from_secs(5));
    assert_eq!(fetch(&pool, target, &get(), true).await, "ok");
    // The close, while this thread blocks (no reactor turn): the FIN is in
    // the kernel, not in tokio's readiness.
    close.send(()).expect("ask to close");
    closed_seen.recv().expect("the endpoint closed");
    std::thread::sleep(Duration::from_millis(50));
    let post = Request::post("/orders")
        .header("host", "web")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    let answer = pool
        .send(target, &post, &Bytes::from_static(b"{}"), false)
        .await
        .expect("the POST is answered on a new connection");
    let body = answer.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "ok");
    endpoint.join().expect("endpoint");
}
