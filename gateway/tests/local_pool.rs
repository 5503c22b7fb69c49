//! The pool of HTTP/1.1 connections to local endpoints against a real
//! endpoint over loopback: a burst of concurrent requests leaves its
//! connections for the next burst, and a connection the endpoint closed
//! while idle is not used for a request.

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
    let body = Bytes::new();
    let sends = (0..count).map(|_| async {
        let response = pool
            .send(target, &parts, &body, resend)
            .await
            .expect("answer");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, "ok");
    });
    futures::future::join_all(sends).await;
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
