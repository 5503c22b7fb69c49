//! The upstreams the scenario routes to: HTTP answering their name or
//! following a script (503s, slow answers), TCP echoes, body echoes, and a
//! real gRPC server (tonic's health service).

use super::*;

/// An HTTP/1.1 upstream that answers every request with `name`.
pub(crate) async fn upstream(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    serve_name(listener, name);
    port
}

/// The same on a given address (several endpoints of one service share a
/// port on different loopback addresses).
pub(crate) async fn upstream_at(ip: &str, port: u16, name: &'static str) {
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind upstream");
    serve_name(listener, name);
}

fn serve_name(listener: tokio::net::TcpListener, name: &'static str) {
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{name}",
                            name.len()
                        );
                        if tcp.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// What a [`scripted`] upstream answers, counted from the last [`Script::reset`].
#[derive(Debug, Default)]
pub(crate) struct Script {
    /// Requests received.
    pub(crate) seen: AtomicU64,
    /// The first this many requests get `503 unavailable`.
    pub(crate) fail: AtomicU64,
    /// The first this many requests wait [`SLOW`] before their answer.
    pub(crate) slow: AtomicU64,
}

impl Script {
    pub(crate) fn reset(&self, fail: u64, slow: u64) {
        self.fail.store(fail, Ordering::SeqCst);
        self.slow.store(slow, Ordering::SeqCst);
        self.seen.store(0, Ordering::SeqCst);
    }

    pub(crate) fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 upstream that follows its [`Script`]; other requests get `200 name`.
pub(crate) async fn scripted(name: &'static str) -> (u16, Arc<Script>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    let script = Arc::new(Script::default());
    let shared = Arc::clone(&script);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let script = Arc::clone(&shared);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let n = script.seen.fetch_add(1, Ordering::SeqCst);
                        if n < script.slow.load(Ordering::SeqCst) {
                            tokio::time::sleep(SLOW).await;
                        }
                        let (status, body) = if n < script.fail.load(Ordering::SeqCst) {
                            ("503 Service Unavailable", "unavailable")
                        } else {
                            ("200 OK", name)
                        };
                        let reply = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, script)
}

/// A TCP upstream that answers each read with `<name>:` and the bytes read.
pub(crate) async fn tcp_echo(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if tcp.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// What an [`echo`] upstream saw, counted from the last [`Echo::reset`].
#[derive(Debug, Default)]
pub(crate) struct Echo {
    /// The first this many requests get `503` once their whole body is read.
    pub(crate) fail: AtomicU64,
    /// The body length of every request received.
    pub(crate) lengths: std::sync::Mutex<Vec<usize>>,
}

impl Echo {
    pub(crate) fn reset(&self, fail: u64) {
        self.fail.store(fail, Ordering::SeqCst);
        self.lengths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    pub(crate) fn lengths(&self) -> Vec<usize> {
        self.lengths
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// An HTTP/1.1 upstream (hyper) that reads each request's body whole and
/// answers it back: `/length` with a `content-length`, `/chunked` in 64 KiB
/// chunks of the chunked encoding. The first requests its [`Echo`] says get
/// `503` instead, after their body was read.
pub(crate) async fn echo() -> (u16, Arc<Echo>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo upstream");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new(Echo::default());
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let state = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = Arc::clone(&state);
                        async move {
                            let chunked = req.uri().path() == "/chunked";
                            let body = req.into_body().collect().await?.to_bytes();
                            state
                                .lengths
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(body.len());
                            let failing = state
                                .fail
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let response = if failing {
                                hyper::Response::builder().status(503).body(boxed(
                                    http_body_util::Full::new(Bytes::from_static(b"unavailable")),
                                ))
                            } else if chunked {
                                let frames: Vec<
                                    Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                                > = body
                                    .chunks(64 * 1024)
                                    .map(|c| {
                                        Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c)))
                                    })
                                    .collect();
                                hyper::Response::builder().body(boxed(
                                    http_body_util::StreamBody::new(futures::stream::iter(frames)),
                                ))
                            } else {
                                hyper::Response::builder()
                                    .body(boxed(http_body_util::Full::new(body)))
                            };
                            Ok::<_, hyper::Error>(response.expect("response"))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (port, state)
}

pub(crate) type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// An HTTP/1.1 server on a free loopback port answering every request with
/// `handle`; its port (`what` names it in a bind failure).
pub(crate) async fn serve_http1<F, Fut>(what: &str, handle: F) -> u16
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<TestBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    port
}

pub(crate) fn boxed<B>(body: B) -> TestBody
where
    B: hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + 'static,
{
    body.boxed()
}

/// tonic's gRPC health service on a port of its own (h2c); its reporter
/// sets what `Check` answers and `Watch` streams.
pub(crate) async fn grpc_upstream() -> (tonic_health::server::HealthReporter, u16) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr),
    );
    // Serving once it accepts.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (reporter, port)
}

/// Server-sent events, as a live feed sends them: `event-0` at once, then
/// one more every [`SSE_GAP`], three in all, on a response that stays open
/// in between.
pub(crate) async fn sse() -> u16 {
    serve_http1("sse upstream", |_req| async {
        let events = futures::stream::unfold(0u32, |i| async move {
            if i >= 3 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(SSE_GAP).await;
            }
            let frame = hyper::body::Frame::data(Bytes::from(format!("data: event-{i}\n\n")));
            Some((Ok::<_, std::convert::Infallible>(frame), i + 1))
        });
        hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(boxed(http_body_util::StreamBody::new(events)))
            .expect("response")
    })
    .await
}

/// Time between two server-sent events of [`sse`].
pub(crate) const SSE_GAP: Duration = Duration::from_millis(400);

/// A WebSocket server that sends every message back, prefixed `echo: `.
pub(crate) async fn websocket_echo() -> u16 {
    use futures::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind websocket upstream");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    use tokio_tungstenite::tungstenite::Message;
                    let reply = match message {
                        Message::Text(text) => Message::text(format!("echo: {text}")),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
