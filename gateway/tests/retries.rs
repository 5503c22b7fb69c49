//! Retries through the egress in process, over real sockets, against an
//! upstream that answers each request as a script says: only idempotent
//! methods are sent again (unless the policy allows more), and each
//! `retries.on` condition retries what it names and nothing else.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gns_gateway::Gateway;
use gns_gateway::config::{RetryPolicy, ServiceConfig};
use support::{HOST, counting_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the upstream does with one request.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Answers with this status.
    Status(u16),
    /// Reads the request and closes the connection without answering.
    Close,
}

/// An upstream that treats its n-th request (over all connections) as
/// `script[n]` (the last step repeats); returns its port and how many
/// requests it has read.
async fn scripted_upstream(script: Vec<Step>) -> (u16, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&requests);
    let script = Arc::new(script);
    let (port, _) = counting_upstream(move |mut tcp| {
        let seen = Arc::clone(&seen);
        let script = Arc::clone(&script);
        async move {
            loop {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let step = script[n.min(script.len() - 1)];
                match step {
                    Step::Close => return,
                    Step::Status(status) => {
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{}",
                            if status == 200 { "ok" } else { "no" }
                        );
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    (port, requests)
}

/// An egress routing [`HOST`] to the upstream on `port` with `retries`.
async fn egress(port: u16, retries: RetryPolicy) -> std::net::SocketAddr {
    egress_of(Gateway::new("east"), port, retries).await
}

/// The same with a given gateway (to read its counters).
async fn egress_of(gateway: Arc<Gateway>, port: u16, retries: RetryPolicy) -> std::net::SocketAddr {
    let config = ServiceConfig {
        retries: Some(retries),
        ..support::local_service("web", port)
    };
    gateway.apply_config(support::config_routing(HOST, config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway.serve_egress(listener));
    addr
}

fn policy(change: impl FnOnce(&mut RetryPolicy)) -> RetryPolicy {
    let mut p = RetryPolicy {
        attempts: 3,
        on_5xx: false,
        on_connect_failure: true,
        per_try_timeout_ms: None,
        on_gateway_error: false,
        on_reset: false,
        retriable_status_codes: Vec::new(),
        non_idempotent: false,
    };
    change(&mut p);
    p
}

/// Sends one `method` request through an egress with `retries` to an
/// upstream following `script`; the status the client got and how many
/// requests the upstream read.
async fn through(retries: RetryPolicy, script: Vec<Step>, method: reqwest::Method) -> (u16, usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (port, requests) = scripted_upstream(script).await;
    let addr = egress(port, retries).await;
    let status = reqwest::Client::new()
        .request(method, format!("http://{addr}/"))
        .header("host", HOST)
        .body("payload")
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16();
    (status, requests.load(Ordering::SeqCst))
}

#[tokio::test]
async fn gateway_error_retries_a_get_but_not_a_post() {
    let script = vec![Step::Status(503), Step::Status(200)];
    let on = policy(|p| p.on_gateway_error = true);
    assert_eq!(
        through(on.clone(), script.clone(), reqwest::Method::GET).await,
        (200, 2)
    );
    assert_eq!(
        through(on.clone(), script.clone(), reqwest::Method::POST).await,
        (503, 1)
    );
    // A 500 is not a gateway error.
    let five_hundred = vec![Step::Status(500), Step::Status(200)];
    assert_eq!(
        through(on, five_hundred, reqwest::Method::GET).await,
        (500, 1)
    );
    // Unless the policy allows it, then POST is sent again too.
    let any = policy(|p| {
        p.on_gateway_error = true;
        p.non_idempotent = true;
    });
    assert_eq!(through(any, script, reqwest::Method::POST).await, (200, 2));
}

#[tokio::test]
async fn five_xx_retries_any_5xx_and_status_codes_only_the_listed() {
    let five = policy(|p| p.on_5xx = true);
    let script = vec![Step::Status(500), Step::Status(200)];
    assert_eq!(through(five, script, reqwest::Method::GET).await, (200, 2));
    let codes = policy(|p| p.retriable_status_codes = vec![409]);
    let conflict = vec![Step::Status(409), Step::Status(200)];
    assert_eq!(
        through(codes.clone(), conflict, reqwest::Method::PUT).await,
        (200, 2)
    );
    let unavailable = vec![Step::Status(503), Step::Status(200)];
    assert_eq!(
        through(codes, unavailable, reqwest::Method::GET).await,
        (503, 1)
    );
    // Retries stop when the attempts are spent: the last answer is returned.
    let always = policy(|p| p.on_5xx = true);
    assert_eq!(
        through(always, vec![Step::Status(502)], reqwest::Method::GET).await,
        (502, 3)
    );
}

#[tokio::test]
async fn reset_retries_a_broken_exchange_only_with_reset() {
    let script = vec![Step::Close, Step::Status(200)];
    let reset = policy(|p| p.on_reset = true);
    assert_eq!(
        through(reset, script.clone(), reqwest::Method::GET).await,
        (200, 2)
    );
    let gateway = policy(|p| p.on_gateway_error = true);
    assert_eq!(
        through(gateway, script, reqwest::Method::GET).await,
        (502, 1)
    );
}

#[tokio::test]
async fn connect_failure_goes_round_the_plan_again_only_when_named() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A port nothing listens on: every connection is refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let tries = async |retries: RetryPolicy| {
        let gateway = Gateway::new("east");
        let addr = egress_of(Arc::clone(&gateway), closed, retries).await;
        let status = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .header("host", HOST)
            .send()
            .await
            .expect("answer")
            .status()
            .as_u16();
        let retried = gateway.counters.retries.load(Ordering::Relaxed);
        (status, retried)
    };
    // Three attempts, but the one cluster refused and nothing names
    // connect-failure: one try.
    let five = policy(|p| {
        p.on_5xx = true;
        p.on_connect_failure = false;
    });
    assert_eq!(tries(five).await, (502, 0));
    // Named: the remaining attempts go round the plan again.
    let connect = policy(|p| p.on_connect_failure = true);
    assert_eq!(tries(connect).await, (502, 2));
}

#[tokio::test]
async fn a_kept_alive_connection_closed_without_an_answer_is_replaced_only_for_an_idempotent_method()
 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The second request comes on the first one's connection, which the
    // upstream closes after reading it (it may have acted on it).
    let script = vec![Step::Status(200), Step::Close, Step::Status(200)];
    for (method, expected) in [
        (reqwest::Method::GET, (200, 3)),
        (reqwest::Method::POST, (502, 2)),
    ] {
        let (port, requests) = scripted_upstream(script.clone()).await;
        let addr = egress(port, policy(|_| {})).await;
        let client = reqwest::Client::new();
        let send = || {
            client
                .request(method.clone(), format!("http://{addr}/"))
                .header("host", HOST)
                .send()
        };
        assert_eq!(send().await.expect("first").status(), 200);
        let status = send().await.expect("second").status().as_u16();
        assert_eq!(
            (status, requests.load(Ordering::SeqCst)),
            expected,
            "{method}"
        );
    }
}
