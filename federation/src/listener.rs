//! The API's listener, hardened for clients that misbehave: a connection
//! must send a whole request header within `header_read_timeout` (a client
//! dripping bytes is closed, not kept forever), must start its first request
//! within that time too (whatever the protocol), and is shut down after
//! two minutes without a request; at most `max_connections`
//! are served at once (more wait in the kernel's accept queue), and an
//! accept error (out of file descriptors) pauses accepting instead of
//! spinning. HTTP/1.1 and HTTP/2 are served by hyper, over TLS (ALPN `h2`
//! or `http/1.1`; the handshake counts against the first request's
//! deadline) or, with `--insecure-http`, in plain text (h2c too).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the listener bounds its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest time a client may take to send a request's header.
    pub header_read_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// How long accepting pauses after an accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);
/// How long open connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);
/// A connection on which no request starts for this long is shut down (a
/// long-poll in progress is finished first).
const IDLE: Duration = Duration::from_secs(120);

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then lets open connections finish (for at most 10 s).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Told to every connection when shutdown starts.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    metrics::counter!("gns_api_accept_errors_total").increment(1);
                    tracing::warn!(error = %e, "cannot accept a connection; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            builder: Arc::clone(&builder),
            first_request: tokio::time::Instant::now() + limits.header_read_timeout,
            stopping: stopping.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => connection.serve(tcp).await,
                Some(acceptor) => {
                    // The handshake is part of the first request's deadline.
                    match tokio::time::timeout_at(connection.first_request, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => {
                            metrics::counter!("gns_api_tls_handshake_failures_total").increment(1);
                            tracing::debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("gns_api_tls_handshake_failures_total").increment(1);
                            metrics::counter!("gns_api_idle_connections_closed_total").increment(1);
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot: all slots back means all finished.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open {DRAIN:?} after shutdown; not waiting for them");
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    router: axum::Router,
    builder: Arc<Builder<TokioExecutor>>,
    /// When the first request must have started (the TLS handshake included).
    first_request: tokio::time::Instant,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    /// Serves HTTP/1.1 or HTTP/2 on `io` until the client leaves, stays
    /// idle, or shutdown starts.
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Marked when a request starts: a connection whose first request
        // does not start within the header timeout (one that sends nothing,
        // or half an HTTP/2 preface), or that starts none for IDLE, is shut
        // down, so silent clients cannot hold the connection slots.
        let activity = Arc::new(gns_idle::Activity::default());
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (active, start) = (Arc::clone(&activity), Arc::clone(&started));
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            self.router,
            move |req: axum::http::Request<hyper::body::Incoming>| {
                active.mark();
                start.store(true, std::sync::atomic::Ordering::Relaxed);
                req.map(axum::body::Body::new)
            },
        ));
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let mut stopping = self.stopping;
        let mut connection = std::pin::pin!(connection);
        let mut stop = std::pin::pin!(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        let mut first = std::pin::pin!(tokio::time::sleep_until(self.first_request));
        let mut first_pending = true;
        let mut idle = gns_idle::Watch::new(Some(IDLE));
        // A client that breaks off (or is cut off) is not an error of ours.
        let _ = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(done) = connection.as_mut().poll(cx) {
                return std::task::Poll::Ready(done);
            }
            let no_first_request = first_pending && first.as_mut().poll(cx).is_ready() && {
                first_pending = false;
                !started.load(std::sync::atomic::Ordering::Relaxed)
            };
            if no_first_request || idle.poll_idle(cx, &activity) {
                metrics::counter!("gns_api_idle_connections_closed_total").increment(1);
                // Graceful: a response in progress (a long-poll) is finished first.
                connection.as_mut().graceful_shutdown();
                return connection.as_mut().poll(cx);
            }
            if stop.as_mut().poll(cx).is_ready() {
                connection.as_mut().graceful_shutdown();
                return connection.as_mut().poll(cx);
            }
            std::task::Poll::Pending
        })
        .await;
    }
}
