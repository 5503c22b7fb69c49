//! The API listener against misbehaving clients, over real TCP: 200
//! connections dripping header bytes are closed once the header timeout
//! passes while the API keeps answering; connections past the cap wait to
//! be accepted and are served once others close (both on the plain-HTTP
//! listener of `--insecure-http`, where a test can drip bytes: the HTTP
//! layer is the same under TLS); connections that never finish a TLS
//! handshake are closed within the header timeout, and HTTP/2 is served
//! by ALPN.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

use support::fed::Fed;

/// `GET /healthz` with a fresh client: its status, or the error.
async fn healthz(fed: &Fed) -> Result<u16, String> {
    fed.fresh_client(Duration::from_secs(3))
        .get(format!("{}/healthz", fed.api))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dripping_header_bytes_are_closed_while_the_api_answers() {
    let fed = Fed::start_with(None, &["--insecure-http", "--header-read-timeout", "2s"]).await;
    let addr = fed.addr;
    let started = Instant::now();
    let mut drips = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("first bytes");
        drips.push(tcp);
    }
    // Keep dripping a header line every 500 ms on every connection; the API
    // answers others meanwhile.
    let mut closed_after = Vec::new();
    let mut open: Vec<(usize, TcpStream)> = drips.into_iter().enumerate().collect();
    while !open.is_empty() && started.elapsed() < Duration::from_secs(8) {
        assert_eq!(healthz(&fed).await, Ok(200), "the API answers meanwhile");
        let mut still = Vec::new();
        for (i, mut tcp) in open {
            let wrote = tcp.write_all(b"X-Drip: 1\r\n").await;
            let mut buf = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_millis(5), tcp.read(&mut buf)).await;
            match (wrote, read) {
                // Closed (EOF, reset), or answered with an error and closed.
                (Err(_), _) | (_, Ok(Ok(0) | Err(_))) => closed_after.push(started.elapsed()),
                (_, Ok(Ok(_))) => {
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut rest))
                            .await;
                    closed_after.push(started.elapsed());
                }
                (Ok(()), Err(_)) => still.push((i, tcp)),
            }
        }
        open = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        open.is_empty(),
        "{} dripping connections still open after 8 s",
        open.len()
    );
    let first = closed_after.iter().min().copied().unwrap_or_default();
    assert!(
        first >= Duration::from_millis(1500),
        "closed at {first:?}, before the 2 s header timeout"
    );
    assert_eq!(healthz(&fed).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_and_are_served_when_others_close() {
    let fed = Fed::start_with(None, &["--insecure-http", "--max-connections", "2"]).await;
    let addr = fed.addr;
    // Two idle keep-alive connections take both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).await.expect("answer");
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(tcp);
    }
    // A third waits (the kernel completes its handshake; nobody reads it).
    let client = fed.fresh_client(Duration::from_secs(10));
    let url = format!("{}/healthz", fed.api);
    let waiting = tokio::spawn(async move {
        client
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "served past the cap of 2");
    drop(held);
    let served = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot frees")
        .expect("task");
    assert_eq!(served, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_h2c_is_still_served() {
    let fed = Fed::start_with(None, &["--insecure-http", "--header-read-timeout", "1s"]).await;
    let addr = fed.addr;
    let silent = TcpStream::connect(addr).await.expect("connect");
    let mut half_preface = TcpStream::connect(addr).await.expect("connect");
    half_preface
        .write_all(b"PRI * HTTP/2.0\r\n")
        .await
        .expect("half a preface");
    let started = Instant::now();
    for mut tcp in [silent, half_preface] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a connection that starts no request is closed: {read:?}"
        );
    }
    let closed = started.elapsed();
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    // HTTP/2 with prior knowledge (h2c) is served as before.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let response = h2
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_tls_handshakes_are_closed_and_h2_is_served_by_alpn() {
    let fed = Fed::start_with(None, &["--header-read-timeout", "1s"]).await;
    let addr = fed.addr;
    assert!(
        fed.api.starts_with("https://"),
        "TLS by default: {}",
        fed.api
    );
    // One sends nothing, one the first bytes of a ClientHello only.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let mut half_hello = TcpStream::connect(addr).await.expect("connect");
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("half a ClientHello");
    let started = Instant::now();
    for mut tcp in [silent, half_hello] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a connection that finishes no handshake is closed: {read:?}"
        );
    }
    let closed = started.elapsed();
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    // Plain HTTP on the TLS port gets no answer in plain text.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("plain request");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "plain HTTP answered on the TLS listener"
    );
    // HTTP/2 negotiated by ALPN, verified with the federation's CA file.
    let response = fed
        .fresh_client(Duration::from_secs(3))
        .get(format!("{}/healthz", fed.api))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status().as_u16(), 200);
}
