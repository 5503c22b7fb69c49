//! The gateway's client listeners against misbehaving clients, over real
//! TCP: a client dripping header bytes is closed once the header timeout
//! passes (and served clients are not); connections past the cap wait to be
//! accepted and are served once one closes.

mod support;

use std::time::{Duration, Instant};

use gns_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An egress routing `support::HOST` to the upstream on `upstream`, set up by `tune`.
async fn egress(upstream: u16, tune: impl FnOnce(&Gateway)) -> std::net::SocketAddr {
    let gateway = Gateway::new("east");
    tune(&gateway);
    gateway.apply_config(support::config_routing(
        support::HOST,
        support::local_service("web", upstream),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve_egress(listener));
    addr
}

/// One request on a fresh connection: the status line's code.
async fn get(addr: std::net::SocketAddr) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            support::HOST
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("answer");
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_dripping_header_bytes_is_closed_after_the_header_timeout() {
    let (upstream, _) = support::hello_upstream().await;
    let addr = egress(upstream, |g| {
        g.set_header_read_timeout(Duration::from_secs(1))
    })
    .await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("first bytes");
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after 5 s"
        );
        let wrote = tcp.write_all(b"X-Drip: 1\r\n").await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => {
                let mut rest = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut rest)).await;
                break started.elapsed();
            }
            Err(_) if wrote.is_err() => break started.elapsed(),
            Err(_) => {}
        }
    };
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}, before the timeout"
    );
    assert_eq!(
        get(addr).await,
        200,
        "a client that sends its header is served"
    );
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let (upstream, _) = support::hello_upstream().await;
    let addr = egress(upstream, |g| g.set_max_connections(1)).await;
    let held = TcpStream::connect(addr).await.expect("connect");
    // Let the gateway accept it (it takes the only slot).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn(get(addr));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past the cap of 1");
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the slot frees")
        .expect("task");
    assert_eq!(status, 200);
}
