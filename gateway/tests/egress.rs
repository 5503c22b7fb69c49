//! The egress listener in process, over real sockets: connections to local
//! endpoints are kept and reused, and replaced when the endpoint closed one
//! without saying so; large bodies arriving in pieces are relayed whole;
//! idle client connections are closed and busy ones kept; an endpoint with
//! a port of its own (a VM beside pods) is dialled on it; an HTTP service
//! port other than 80 is served while the config names it. (The per-service
//! counters are checked in `egress_metrics.rs`, a binary of their own.)

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{Count, HOST, count, counting_upstream, egress, egress_for, hello_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP/1.1 upstream that answers one request per connection with
/// `hello from east` and a `content-length`, saying nothing about closing
/// (no `Connection: close`), then closes the connection 50 ms later, as
/// an upstream's idle timeout would. Counts the connections it accepted and the ones it
/// has closed.
async fn closing_upstream() -> (u16, Count, Count) {
    let closed = Count::default();
    let counter = Arc::clone(&closed);
    let (port, accepted) = counting_upstream(move |mut tcp| {
        let closed = Arc::clone(&counter);
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\nhello from east";
            if tcp.write_all(answer).await.is_ok() {
                // Later, while the connection is idle in the gateway's pool.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tcp.shutdown().await;
            }
            drop(tcp);
            closed.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (port, accepted, closed)
}

async fn get(client: &reqwest::Client, addr: std::net::SocketAddr) -> String {
    let response = client
        .get(format!("http://{addr}/"))
        .header("host", HOST)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

#[tokio::test]
async fn connections_to_local_endpoints_are_reused_and_closed_ones_replaced() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let (port, accepted) = hello_upstream().await;
    let addr = egress(port).await;
    for _ in 0..20 {
        assert_eq!(get(&client, addr).await, "hello from east");
    }
    assert_eq!(
        count(&accepted),
        1,
        "20 sequential requests share one upstream connection"
    );
    // An upstream that closes every connection after one answer, without
    // saying so: the gateway keeps the connection, finds it closed when the
    // next request comes, and sends that request on a new connection. No
    // request fails.
    let (port, accepted, closed) = closing_upstream().await;
    let addr = egress(port).await;
    for i in 0..10 {
        assert_eq!(get(&client, addr).await, "hello from east", "request {i}");
        // The next request comes once the upstream has closed this one's connection.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while count(&closed) <= i {
            assert!(
                std::time::Instant::now() < deadline,
                "the upstream closed no connection after request {i}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(count(&accepted), 10, "one new connection per request");
}

/// An HTTP/1.1 upstream that streams large bodies in pieces with pauses
/// between them (so they arrive in many reads): `/chunked` in the chunked
/// encoding, anything else with a `content-length`. Keeps connections alive
/// and counts the ones it accepted.
async fn streaming_upstream(pieces: usize, piece: usize) -> (u16, Count) {
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
                tokio::time::sleep(Duration::from_millis(2)).await;
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
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let body = response.bytes().await.expect("the body within 20 s");
        assert_eq!(body.len(), expected.len(), "{path}: the whole body");
        assert!(body[..] == expected[..], "{path}: the body as sent");
    }
    assert_eq!(
        count(&accepted),
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
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
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
    // A second of idleness, against a request every 100 ms: 900 ms of slack
    // for a busy machine's scheduling.
    let idle = Duration::from_secs(1);
    let (port, _) = hello_upstream().await;
    let addr = egress_for(HOST, "web", port, Some(idle)).await;

    // Used once, then left: closed by the gateway after the idle time.
    let mut left = TcpStream::connect(addr).await.expect("connect");
    get_on(&mut left, b"hello from east").await;
    // Used every 100 ms meanwhile: kept open throughout.
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let started = std::time::Instant::now();
    while started.elapsed() < idle * 3 {
        get_on(&mut busy, b"hello from east").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), left.read(&mut buf))
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
    let slow = egress_for(HOST, "web", slow_port, Some(Duration::from_millis(200))).await;
    let begun = std::time::Instant::now();
    let body = reqwest::Client::new()
        .get(format!("http://{slow}/"))
        .header("host", HOST)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("request")
        .bytes()
        .await
        .expect("the whole body");
    assert_eq!(body.len(), pieces * piece, "the whole body");
    assert!(
        begun.elapsed() > Duration::from_millis(600),
        "the response took longer than the idle time ({:?})",
        begun.elapsed()
    );
}

/// Reads from `tcp` until `text` has arrived (or fails after 3 s).
async fn read_until(tcp: &mut TcpStream, seen: &mut Vec<u8>, text: &str) {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !String::from_utf8_lossy(seen).contains(text) {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{text:?} did not arrive; got {:?}",
                    String::from_utf8_lossy(seen)
                )
            })
            .expect("read");
        assert!(n > 0, "closed before {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_before_sending_its_body() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (port, _) = hello_upstream().await;
    let addr = egress(port).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    // The body goes only after the gateway says to go on.
    let mut seen = Vec::new();
    read_until(&mut tcp, &mut seen, "HTTP/1.1 100 Continue\r\n\r\n").await;
    tcp.write_all(b"hello").await.expect("body");
    read_until(&mut tcp, &mut seen, "hello from east").await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
}

/// A service with a pod on the cluster's port and a VM that serves the
/// same service port on another port of its own: both get requests, each
/// on its own port (before, the VM was dialled on the pods' port, refused,
/// and never served).
#[tokio::test]
async fn an_endpoint_with_a_port_of_its_own_is_dialled_on_it() {
    use gns_gateway::Gateway;
    let (pod_port, pod) = hello_upstream().await;
    // The VM, on another loopback address and port.
    let vm_listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let vm_port = vm_listener.local_addr().expect("address").port();
    let vm = Count::default();
    let accepted = Arc::clone(&vm);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = vm_listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\nhello from a vm";
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut service = support::local_service("web", pod_port);
    service.endpoints = [(
        "east".to_owned(),
        vec![
            "127.0.0.1".parse().expect("ip"),
            "127.0.0.2".parse().expect("ip"),
        ],
    )]
    .into_iter()
    .collect();
    service.http_port_by_address.insert(
        "east".to_owned(),
        [("127.0.0.2".parse().expect("ip"), vm_port)].into(),
    );
    let gateway = Gateway::new("east");
    gateway.apply_config(support::config_routing(HOST, service));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve_egress(listener));
    // A new connection (and a new pick) each time.
    let mut answers = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET / HTTP/1.1\r\nhost: {HOST}\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        answers.insert(body.to_owned());
    }
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        ["hello from a vm", "hello from east"],
        "both endpoints served, each on its port"
    );
    assert!(count(&pod) > 0 && count(&vm) > 0);
}

/// A GET on a fresh connection to `addr` naming `host`; the answer's body,
/// or `None` when no connection could be made.
async fn get_host(addr: std::net::SocketAddr, host: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.ok()?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Some(
        answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A service whose HTTP port is not 80 (clients dial
/// `web.production.app.acme.com:P`): the egress listens on P while the
/// config names it, serves HTTP there routed by `Host`, and stops when the
/// port goes from the config.
#[tokio::test]
async fn an_http_service_port_other_than_80_is_served_while_the_config_names_it() {
    use gns_gateway::Gateway;
    let (upstream, _) = hello_upstream().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut service = support::local_service("web", upstream);
    service.http_ports = vec![port];
    let gateway = Gateway::new("east");
    gateway.apply_config(support::config_routing(HOST, service.clone()));
    tokio::spawn(Arc::clone(&gateway).serve_tcp("127.0.0.1".parse().expect("ip"), false, vec![]));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let host = format!("{HOST}:{port}");
    let mut answer = None;
    for _ in 0..100 {
        answer = get_host(addr, &host).await;
        if answer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(answer.as_deref(), Some("hello from east"));
    // The port leaves the config: its listener closes.
    service.http_ports.clear();
    let mut next = support::config_routing(HOST, service);
    next.version = 2;
    gateway.apply_config(next);
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the listener on {port} stayed after the port left the config");
}
