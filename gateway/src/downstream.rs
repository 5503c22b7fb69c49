//! One plain-HTTP client connection of the egress or the public entry:
//! HTTP/1.1 served here, request after request (heads parsed by
//! [`crate::h1_serve`], bodies pumped by [`crate::client_body`], responses
//! written several pieces per system call), or, when the connection opens
//! with the HTTP/2 preface, handed to hyper's HTTP/2 server (h2c with prior
//! knowledge). An upgrade (`101`) hands the connection to
//! [`crate::upgrade`] through [`OnUpgrade`].
//!
//! Timeouts: a new connection must send a whole request head within the
//! header timeout; between requests a connection waits at most the idle
//! timeout for the next one to begin, which must then be whole within the
//! header timeout. A response in progress is never cut by either.

use std::convert::Infallible;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Body as HttpBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::client_body::ClientBody;
use crate::h1::Sending;
use crate::h1_serve::{HeadError, Reply, RequestHead};
use crate::metrics::Entry;
use crate::outgoing::{Outbox, Upload};
use crate::proxy::{Body, Gateway};

/// How much is read at a time while waiting for a request head.
const HEAD_READ: usize = 8 * 1024;
/// Response bytes queued before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a request runs before its client's hanging up is watched for.
const HANG_UP_AFTER: Duration = Duration::from_secs(1);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a closing connection is drained of what its client still
/// sends, so that the client reads the last response instead of a reset.
const LINGER: Duration = Duration::from_secs(1);

/// A request's claim on its client connection, once the response has
/// switched protocols (`101`).
/// (Shared, as request extensions must be: the first to take it has it.)
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    /// The connection, after the `101` response was written; `None` when
    /// the response did not switch protocols or the connection broke.
    pub async fn upgraded(self) -> Option<Prefixed> {
        let taken = self.0.lock().ok().and_then(|mut slot| slot.take())?;
        taken.await.ok().map(|u| Prefixed {
            prefix: u.read,
            io: u.io,
        })
    }
}

/// A client connection handed over, with what was read past its head.
#[derive(Debug)]
struct Upgraded {
    io: TcpStream,
    read: Bytes,
}

/// A connection that reads `prefix` (bytes already read from it) first.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// How long a client may wait and take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Between requests, for the next one to begin (`None`: forever).
    pub(crate) idle: Option<Duration>,
    /// For a request head, from its first byte (from the connection's
    /// start for its first request).
    pub(crate) header: Duration,
}

/// What waiting for a request head gave.
enum Next {
    Request(Box<RequestHead>),
    /// The connection opened with the HTTP/2 preface.
    H2c,
    /// The client closed the connection, or left it idle, between requests.
    Closed,
    /// The client broke HTTP/1.1: answered, and the connection closes.
    Refused(HeadError),
    /// A head not whole in time, or the connection broke in it.
    Broken,
}

/// One client connection of a plain-HTTP listener, served until it closes.
pub(crate) struct Connection {
    gateway: Arc<Gateway>,
    io: TcpStream,
    client: SocketAddr,
    entry: Entry,
    limits: Limits,
    /// Read and not yet used.
    buf: BytesMut,
    /// The one timer of this connection, moved for each wait.
    timer: Pin<Box<Sleep>>,
}

impl Connection {
    pub(crate) fn new(
        gateway: Arc<Gateway>,
        io: TcpStream,
        client: SocketAddr,
        entry: Entry,
        limits: Limits,
    ) -> Self {
        Connection {
            gateway,
            io,
            client,
            entry,
            limits,
            buf: BytesMut::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + limits.header)),
        }
    }

    /// Serves requests until the client closes, idles, breaks HTTP, or a
    /// response ends the connection.
    pub(crate) async fn serve(mut self) {
        let mut first = true;
        loop {
            let head = match self.next_head(first).await {
                Next::Request(head) => head,
                // Boxed: their state stays out of every connection's future.
                Next::H2c => return Box::pin(self.serve_h2c()).await,
                Next::Closed | Next::Broken => return,
                Next::Refused(e) => {
                    tracing::debug!(client = %self.client, error = %e, "request refused");
                    let _ = self.io.write_all(e.answer()).await;
                    return Box::pin(self.linger()).await;
                }
            };
            first = false;
            match self.exchange(*head).await {
                Ended::KeepAlive if self.buf.is_empty() => {
                    // Nothing pipelined: the read buffer is not kept while
                    // the connection waits for its next request.
                    self.buf = BytesMut::new();
                }
                Ended::KeepAlive => {}
                Ended::Close => return Box::pin(self.linger()).await,
                Ended::Upgraded(give) => {
                    let _ = give.send(Upgraded {
                        io: self.io,
                        read: self.buf.freeze(),
                    });
                    return;
                }
                Ended::Broken => return,
            }
        }
    }

    /// Reads until a request head is whole.
    async fn next_head(&mut self, first: bool) -> Next {
        // The first byte of a request that follows another may take the
        // idle time; the head is then due within the header timeout.
        let mut waiting = !first && self.buf.is_empty();
        if waiting {
            self.wait_idle();
        } else if !first {
            self.timer
                .as_mut()
                .reset(Instant::now() + self.limits.header);
        }
        loop {
            // Empty lines before a request are ignored (RFC 9112 §2.2): some
            // clients end a body with an extra CRLF.
            let blank = self
                .buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                self.buf.advance(blank);
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                    if !first && !waiting {
                        waiting = true;
                        self.wait_idle();
                    }
                }
            }
            if first && self.buf.len() < PREFACE.len() && PREFACE.starts_with(&self.buf) {
                // Perhaps the HTTP/2 preface: read on before parsing.
            } else if first && self.buf.starts_with(PREFACE) {
                return Next::H2c;
            } else if !self.buf.is_empty() {
                match crate::h1_serve::parse_request(&mut self.buf) {
                    Ok(Some(head)) => return Next::Request(Box::new(head)),
                    Ok(None) => {}
                    Err(e) => return Next::Refused(e),
                }
            }
            let read = std::future::poll_fn(|cx| {
                if self.buf.capacity() == self.buf.len() {
                    // Room to read into only once there is something to
                    // read: an idle connection holds no buffer.
                    if let Poll::Ready(ready) = self.io.poll_read_ready(cx) {
                        if let Err(e) = ready {
                            return Poll::Ready(Some(Err(e)));
                        }
                        self.buf.reserve(HEAD_READ);
                    }
                }
                if self.buf.capacity() > self.buf.len()
                    && let Poll::Ready(read) = poll_read_buf(&mut self.io, cx, &mut self.buf)
                {
                    return Poll::Ready(Some(read));
                }
                self.timer.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match read {
                Some(Ok(0)) if self.buf.is_empty() && !first => return Next::Closed,
                Some(Ok(0) | Err(_)) | None if waiting => return Next::Closed,
                Some(Ok(0) | Err(_)) | None => return Next::Broken,
                Some(Ok(_)) if waiting => {
                    waiting = false;
                    self.timer
                        .as_mut()
                        .reset(Instant::now() + self.limits.header);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sets the timer for a connection that waits for its next request
    /// from now: it fires when the connection has been idle too long.
    fn wait_idle(&mut self) {
        let deadline = self
            .limits
            .idle
            .map_or_else(far_future, |idle| Instant::now() + idle);
        self.timer.as_mut().reset(deadline);
    }

    /// Answers one request: its response written whole (its body pumped
    /// meanwhile), then how the connection goes on.
    async fn exchange(&mut self, head: RequestHead) -> Ended {
        let RequestHead {
            request,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let (mut parts, ()) = request.into_parts();
        let method = parts.method.clone();
        let version = parts.version;
        let (body, mut pump) = match framing {
            crate::h1::Framing::Empty => (ClientBody::Empty, None),
            framing => {
                let (body, pump) = crate::client_body::channel(framing, expect_continue);
                (body, Some(pump))
            }
        };
        let upgrade = crate::upgrade::is_upgrade(&parts.headers).then(|| {
            let (give, take) = oneshot::channel();
            parts
                .extensions
                .insert(OnUpgrade(Arc::new(std::sync::Mutex::new(Some(take)))));
            give
        });
        let gateway = Arc::clone(&self.gateway);
        // Boxed: the request's future is large, the connection's is not.
        let mut respond = Box::pin(gateway.egress(
            Request::from_parts(parts, body),
            self.entry,
            self.client.ip(),
        ));
        let mut out = Outbox::default();
        // A client hanging up is watched for once the request has taken a
        // moment (see `poll_hang_up`).
        self.timer.as_mut().reset(Instant::now() + HANG_UP_AFTER);
        let mut watching = false;
        let timer = &mut self.timer;
        let io = &mut self.io;
        let buf = &mut self.buf;
        let answered = std::future::poll_fn(|cx| {
            if let Poll::Ready(response) = respond.as_mut().poll(cx) {
                return Poll::Ready(Ok::<_, std::io::Error>(response));
            }
            // The client hung up: the request is dropped (cancelled).
            if let Poll::Ready(Err(e)) =
                poll_client(cx, pump.as_mut(), &mut watching, timer, io, buf, &mut out)
            {
                return Poll::Ready(Err(e));
            }
            if !out.is_empty() {
                ready!(out.poll_write(io, cx))?;
            }
            Poll::Pending
        })
        .await;
        drop(respond);
        let response: Response<Body> = match answered {
            Ok(response) => response,
            Err(_) => return Ended::Broken,
        };
        // A body not read to its end by now closes the connection after the
        // response (said in its head), unless nobody wants it and its rest
        // is small: then it is read and dropped after the response (as
        // hyper did), so that a refusal keeps its connection.
        let mut keep_alive = keep_alive;
        let mut drain = false;
        if let Some(pump) = &mut pump {
            pump.answered();
            drain = pump.abandoned() && pump.drainable();
            keep_alive &= pump.done() || drain;
        }
        let (parts, body) = response.into_parts();
        let exact = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        let reply = Reply::of(&parts, exact, &method, version, keep_alive);
        let mut head = BytesMut::new();
        crate::h1_serve::encode_response_head(&parts, reply, version, &mut head);
        out.push(head.freeze());
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        let mut upload = (reply.sending != Sending::Nothing).then_some(Upload {
            body,
            sending: reply.sending,
            sent: 0,
        });
        let written = std::future::poll_fn(|cx| {
            if let Poll::Ready(Err(e)) =
                poll_client(cx, pump.as_mut(), &mut watching, timer, io, buf, &mut out)
            {
                return Poll::Ready(Err(crate::h1::H1Error::Io(e)));
            }
            poll_response(cx, io, &mut out, &mut upload)
        })
        .await;
        if written.is_err() {
            return Ended::Broken;
        }
        if switching && let Some(give) = upgrade {
            return Ended::Upgraded(give);
        }
        match &mut pump {
            _ if !reply.keep_alive => Ended::Close,
            None => Ended::KeepAlive,
            Some(pump) if pump.done() => Ended::KeepAlive,
            Some(pump) if drain => {
                let drained = tokio::time::timeout(self.limits.header, pump.drain(io, buf)).await;
                if matches!(drained, Ok(Ok(()))) {
                    Ended::KeepAlive
                } else {
                    Ended::Broken
                }
            }
            Some(_) => Ended::Close,
        }
    }

    /// Serves the connection as HTTP/2 (its preface already read).
    async fn serve_h2c(self) {
        let Connection {
            gateway,
            io,
            client,
            entry,
            limits,
            buf,
            ..
        } = self;
        let activity = Arc::new(crate::idle::Activity::default());
        let active = Arc::clone(&activity);
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            active.mark();
            let gateway = Arc::clone(&gateway);
            async move {
                let req = req.map(ClientBody::H2);
                Ok::<_, Infallible>(Box::pin(gateway.egress(req, entry, client.ip())).await)
            }
        });
        let io = Prefixed {
            prefix: buf.freeze(),
            io,
        };
        let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(io), svc));
        let mut watch = crate::idle::Watch::new(limits.idle);
        let _ = std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = connection.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            if watch.poll_idle(cx, &activity) {
                // Graceful: streams in progress are finished first.
                connection.as_mut().graceful_shutdown();
                return connection.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await;
    }

    /// Closes the connection in order: no more is written, and what the
    /// client still sends is read and dropped for a moment, so that it
    /// gets the last response rather than a reset.
    async fn linger(mut self) {
        let _ = self.io.shutdown().await;
        let mut sink = [0u8; 16 * 1024];
        let _ = tokio::time::timeout(LINGER, async {
            let mut left = 1 << 20;
            while left > 0 {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left -= n.min(left),
                }
            }
        })
        .await;
    }
}

/// How an exchange left the connection.
enum Ended {
    /// Ready for the next request.
    KeepAlive,
    /// To be closed in order (the response said so, or the request body
    /// was not read to its end).
    Close,
    /// To be handed to the upgrade that switched protocols.
    Upgraded(oneshot::Sender<Upgraded>),
    /// Broken (writing failed, or the response body broke off): dropped.
    Broken,
}

/// Writes the queued response and queues its body's frames (up to
/// [`WRITE_BATCH`] at a time) until the body has ended and all is written.
fn poll_response(
    cx: &mut Context<'_>,
    io: &mut TcpStream,
    out: &mut Outbox,
    upload: &mut Option<Upload>,
) -> Poll<Result<(), crate::h1::H1Error>> {
    loop {
        while out.queued() < WRITE_BATCH {
            let Some(body) = upload else { break };
            match body.poll_next(cx, out) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => *upload = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            return if upload.is_none() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        ready!(out.poll_write(io, cx))?;
    }
}

/// What the client side of an exchange needs while the request is
/// answered: its body pumped while there is one to read, else a watch for
/// the client hanging up (`Ready(Err)`).
fn poll_client(
    cx: &mut Context<'_>,
    pump: Option<&mut crate::client_body::Pump>,
    watching: &mut bool,
    timer: &mut Pin<Box<Sleep>>,
    io: &mut TcpStream,
    buf: &mut BytesMut,
    out: &mut Outbox,
) -> Poll<std::io::Result<()>> {
    match pump {
        Some(pump) if !pump.done() => pump.poll(cx, io, buf, out).map(Ok),
        _ => poll_hang_up(watching, timer, io, cx, buf),
    }
}

/// Watches a connection nothing else reads while its request is answered:
/// an error once the client closed it (or it broke). Bytes it sends
/// meanwhile (a pipelined request) are kept in `buf`, and the watch ends.
/// The watch begins when `timer` fires ([`HANG_UP_AFTER`] into the
/// request): the socket still looks readable from reading the head, so a
/// first look costs a read that finds nothing, which a quick answer does
/// not need.
fn poll_hang_up(
    watching: &mut bool,
    timer: &mut Pin<Box<Sleep>>,
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<()>> {
    if !*watching {
        ready!(timer.as_mut().poll(cx));
        *watching = true;
    }
    while buf.is_empty() {
        ready!(io.poll_read_ready(cx))?;
        match io.try_read_buf(buf) {
            Ok(0) => {
                return Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Pending
}

/// Reads once from `io` into the spare capacity of `buf` (0: it closed).
pub(crate) fn poll_read_buf(
    io: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    std::pin::pin!(io.read_buf(buf)).poll(cx)
}

/// A deadline no wait reaches (about 30 years on).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_s_future_stays_small() {
        // Every client connection's task holds this future while it waits
        // for a request: the h2c server, the orderly close and a request's
        // future are boxed out of it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (io, peer) = listener.accept().await.expect("accept");
        let limits = Limits {
            idle: None,
            header: Duration::from_secs(1),
        };
        let connection = Connection::new(Gateway::new("east"), io, peer, Entry::Egress, limits);
        let size = std::mem::size_of_val(&connection.serve());
        assert!(size <= 2048, "a connection's future is {size} bytes");
    }
}
