//! HTTP/1.1 connections to local endpoints, kept alive and reused: the I/O
//! around [`crate::h1`], which codes the bytes. An exchange runs on the task
//! of the request it serves (no task per connection, no channel to one):
//! the request goes out (head and a kept body in one write; a streamed body
//! frame by frame) while the response head is read, and the response body
//! reads its connection, and hands it back to the pool at its end. A
//! request costs a lock to pop a connection and another to push it back.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

/// Now, by tokio's clock (which a test may move).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::h1::{Decoded, Framing, H1Error, Head, Sending};
use crate::outgoing::{Outbox, Outgoing, Upload};
use crate::proxy::{Body, BoxError};

/// Room made in the read buffer for a response head.
const HEAD_READ: usize = 8 * 1024;
/// Room made in the read buffer for a response body.
const BODY_READ: usize = 64 * 1024;

/// Why a request to a local endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (nothing was sent).
    #[error("connect: {0}")]
    Connect(String),
    /// An HTTP/1.1 exchange failed after it started.
    #[error("{0}")]
    Http1(#[from] H1Error),
    /// An h2c exchange failed after it started.
    #[error("{0}")]
    H2c(#[from] hyper::Error),
}

/// One kept-alive connection to an endpoint.
struct LocalConnection {
    io: TcpStream,
    /// What was read and not used yet.
    read: BytesMut,
}

/// How an exchange failed.
enum Exchange {
    /// Nothing was written: the request body (if any) comes back unread,
    /// safe to send on another connection.
    Unsent(H1Error, Option<Upload>),
    /// The request was (at least partly) written. `unanswered`: the
    /// connection ended before any of the response came.
    Failed { error: H1Error, unanswered: bool },
}

impl From<Exchange> for PoolError {
    fn from(failed: Exchange) -> Self {
        match failed {
            Exchange::Unsent(error, _) | Exchange::Failed { error, .. } => PoolError::Http1(error),
        }
    }
}

/// A response head, and what of the request is still to be sent.
struct Exchanged {
    head: Head,
    rest: Option<Outgoing>,
}

impl LocalConnection {
    /// Whether the endpoint closed this idle connection (or sent something
    /// unasked): it is readable although no request is out. A request that
    /// can go out again if it finds the connection closed looks at tokio's
    /// readiness first (no system call when the reactor saw nothing); one
    /// that cannot asks the socket itself, since a close that came while
    /// this worker was busy is in the kernel before the reactor sees it.
    fn closed_while_idle(&self, resendable: bool) -> bool {
        if resendable {
            let mut cx = Context::from_waker(Waker::noop());
            if self.io.poll_read_ready(&mut cx).is_pending() {
                return false;
            }
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
        // Peeked, not read: the socket is non-blocking, so an open idle
        // connection answers `WouldBlock`.
        let peeked = socket2::SockRef::from(&self.io).peek(&mut probe);
        !matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends `head` (and `upload`'s body) and reads the response head,
    /// sending and reading at once.
    async fn exchange(
        &mut self,
        method: &Method,
        (head, kept): (Bytes, Bytes),
        upload: Option<Upload>,
    ) -> Result<Exchanged, Exchange> {
        let mut sending = Outgoing {
            out: Outbox::default(),
            upload,
        };
        // Head and kept body go out in one write.
        sending.out.push(head);
        sending.out.push(kept);
        // Why the endpoint stopped taking the request, if it did: an answer
        // it sent first (a 413 to an upload) is still read.
        let mut refused = None;
        let read = poll_fn(|cx| {
            if refused.is_none()
                && !sending.done()
                && let Poll::Ready(Err(error)) = sending.poll(&mut self.io, cx)
            {
                match error {
                    H1Error::RequestBody(_) => {
                        return Poll::Ready(Err(Exchange::Failed {
                            error,
                            unanswered: false,
                        }));
                    }
                    error if !sending.out.wrote => {
                        return Poll::Ready(Err(Exchange::Unsent(error, sending.upload.take())));
                    }
                    error => {
                        sending = Outgoing {
                            out: Outbox::default(),
                            upload: None,
                        };
                        refused = Some(error);
                    }
                }
            }
            self.poll_head(method, cx)
                .map_err(|error| Exchange::Failed {
                    unanswered: self.read.is_empty()
                        && matches!(error, H1Error::Closed | H1Error::Io(_)),
                    error: refused.take().unwrap_or(error),
                })
        })
        .await;
        let mut head = read?;
        // A request the endpoint did not take whole leaves the connection unusable.
        head.keep_alive &= refused.is_none();
        Ok(Exchanged {
            head,
            rest: (!sending.done()).then_some(sending),
        })
    }

    /// Reads until a response head is whole.
    fn poll_head(&mut self, method: &Method, cx: &mut Context<'_>) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.read.is_empty()
                && let Some(head) = crate::h1::parse_head(&mut self.read, method)?
            {
                return Poll::Ready(Ok(head));
            }
            if ready!(self.poll_fill(HEAD_READ, cx))? == 0 {
                return Poll::Ready(Err(if self.read.is_empty() {
                    H1Error::Closed
                } else {
                    H1Error::Truncated
                }));
            }
        }
    }

    /// Reads what the endpoint sent into the read buffer (0: it closed).
    fn poll_fill(&mut self, room: usize, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < room / 2 {
            self.read.reserve(room);
        }
        let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.read);
        std::pin::pin!(read).poll(cx)
    }
}

/// Closes the pool's connections left idle too long every
/// [`crate::parked::SWEEP_EVERY`], also when nothing is parked any more;
/// ends with the pool.
async fn sweep(idle: std::sync::Weak<Mutex<crate::parked::Parked<Box<LocalConnection>>>>) {
    let mut every = tokio::time::interval(crate::parked::SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        idle.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sweep(now());
    }
}

/// A connection taken from the pool (or made) for one request; `pooled`:
/// it was idle in the pool (and may have been closed meanwhile).
pub struct Checkout {
    connection: Box<LocalConnection>,
    pooled: bool,
}

/// Idle connections by endpoint; boxed, so a request moves a pointer, not
/// the connection's state.
type Idle = Arc<Mutex<crate::parked::Parked<Box<LocalConnection>>>>;

/// The pool of connections to local endpoints.
#[derive(Clone, Default)]
pub struct LocalPool {
    idle: Idle,
    connect_timeout: Duration,
}

impl LocalPool {
    /// A pool whose new connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Idle::default(),
            connect_timeout,
        }
    }

    /// An idle connection to `target` the endpoint has not closed, looked
    /// at as [`LocalConnection::closed_while_idle`] says for a request
    /// that is `resendable` or not.
    fn pop(&self, target: SocketAddr, resendable: bool) -> Option<Box<LocalConnection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.take(target, now(), |c| !c.closed_while_idle(resendable))
    }

    async fn connect(&self, target: SocketAddr) -> Result<Box<LocalConnection>, PoolError> {
        let io = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| PoolError::Connect("connect timed out".into()))?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = io.set_nodelay(true);
        Ok(Box::new(LocalConnection {
            io,
            read: BytesMut::with_capacity(HEAD_READ),
        }))
    }

    /// Sends a request with `parts` (made for the endpoint: origin-form
    /// target, `Host`) and a kept `body` to `target` on a pooled
    /// connection (a new one when none is idle). A pooled connection found
    /// closed before anything was written is replaced; one closed before
    /// anything was answered is too, if `resend_if_closed`.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    pub fn send<'a>(
        &'a self,
        target: SocketAddr,
        parts: &'a http::request::Parts,
        body: &'a Bytes,
        resend_if_closed: bool,
    ) -> impl Future<Output = Result<Response<Body>, PoolError>> + 'a {
        async move {
            let sending = Sending::of(parts, body.is_empty(), Some(body.len() as u64));
            let request = (head_of(parts, sending), body.clone());
            // New connections are the cold path: boxed, so the future of every
            // request (moved as it is made and queued) stays small.
            let Some(mut connection) = self.pop(target, resend_if_closed) else {
                return Box::pin(self.send_new(target, &parts.method, request, None)).await;
            };
            match connection
                .exchange(&parts.method, request.clone(), None)
                .await
            {
                Ok(exchanged) => Ok(self.respond(target, connection, exchanged)),
                // Not sent: the endpoint had closed the idle connection.
                Err(Exchange::Unsent(..)) => {
                    Box::pin(self.send_new(target, &parts.method, request, None)).await
                }
                // Closed as the request went out: nothing was answered.
                Err(Exchange::Failed {
                    unanswered: true, ..
                }) if resend_if_closed => {
                    Box::pin(self.send_new(target, &parts.method, request, None)).await
                }
                Err(failed) => Err(failed.into()),
            }
        }
    }

    /// A connection to `target` for one request whose body streams: an
    /// idle pooled one, else a new one. Failing here sent nothing. (A
    /// streamed body cannot go out again once it went out on a connection
    /// found closed, so the pooled one is looked at closely.)
    pub async fn checkout(&self, target: SocketAddr) -> Result<Checkout, PoolError> {
        match self.pop(target, false) {
            Some(connection) => Ok(Checkout {
                connection,
                pooled: true,
            }),
            None => self.connect(target).await.map(|connection| Checkout {
                connection,
                pooled: false,
            }),
        }
    }

    /// Sends `request` (made for the endpoint), whose body streams, on
    /// `checkout` (a connection to `target`). When that was a pooled
    /// connection the endpoint closed meanwhile, nothing was written and
    /// the request goes out once on a new connection.
    pub async fn send_on(
        &self,
        target: SocketAddr,
        checkout: Checkout,
        request: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let (parts, body) = request.into_parts();
        let ended = body.is_end_stream();
        let sending = Sending::of(&parts, ended, body.size_hint().exact());
        let head = head_of(&parts, sending);
        let upload = (!ended).then_some(Upload {
            body,
            sending,
            sent: 0,
        });
        let Checkout {
            mut connection,
            pooled,
        } = checkout;
        let request = (head, Bytes::new());
        match connection
            .exchange(&parts.method, request.clone(), upload)
            .await
        {
            Ok(exchanged) => Ok(self.respond(target, connection, exchanged)),
            Err(Exchange::Unsent(_, upload)) if pooled => {
                Box::pin(self.send_new(target, &parts.method, request, upload)).await
            }
            Err(failed) => Err(failed.into()),
        }
    }

    async fn send_new(
        &self,
        target: SocketAddr,
        method: &Method,
        request: (Bytes, Bytes),
        upload: Option<Upload>,
    ) -> Result<Response<Body>, PoolError> {
        let mut connection = self.connect(target).await?;
        let exchanged = connection.exchange(method, request, upload).await?;
        Ok(self.respond(target, connection, exchanged))
    }

    /// The response, reading its body from `connection`, which goes back to
    /// the pool when the body has ended (if it may carry another request).
    fn respond(
        &self,
        target: SocketAddr,
        connection: Box<LocalConnection>,
        exchanged: Exchanged,
    ) -> Response<Body> {
        let Exchanged { head, rest } = exchanged;
        let (parts, ()) = head.response.into_parts();
        let mut body = ResponseBody {
            connection: Some(connection),
            framing: head.framing,
            rest,
            back: head.keep_alive.then(|| (target, Arc::clone(&self.idle))),
        };
        if body.is_end_stream() {
            body.finish();
        }
        Response::from_parts(parts, Body::new(body))
    }
}

/// The head of a request with `parts`, its body framed as `sending`.
fn head_of(parts: &http::request::Parts, sending: Sending) -> Bytes {
    let mut head = BytesMut::new();
    crate::h1::encode_head(parts, sending, &mut head);
    head.freeze()
}

/// A response body read from its connection, which goes back to the pool
/// at the body's end.
struct ResponseBody {
    /// `None` once the body has ended.
    connection: Option<Box<LocalConnection>>,
    framing: Framing,
    /// What of the request is still being sent (an early response).
    rest: Option<Outgoing>,
    /// Where the connection goes back to (`None`: not reusable).
    back: Option<(SocketAddr, Idle)>,
}

impl ResponseBody {
    /// The body has ended: the connection goes back to the pool if it may
    /// carry another request (the request was sent whole, nothing extra
    /// was read).
    fn finish(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let sent = self.rest.as_ref().is_none_or(Outgoing::done);
        if let Some((target, idle)) = self.back.take()
            && sent
            && connection.read.is_empty()
        {
            let mut connection = connection;
            if connection.read.capacity() > 2 * HEAD_READ {
                // A body's read room is not kept while idle.
                connection.read = BytesMut::new();
            }
            let mut parked = idle.lock().unwrap_or_else(PoisonError::into_inner);
            parked.put(target, connection, now());
            if parked.start_sweeping() {
                drop(parked);
                tokio::spawn(sweep(Arc::downgrade(&idle)));
            }
        }
    }

    /// The next frame of the body as `connection`'s framing says.
    fn poll_next(
        framing: &mut Framing,
        connection: &mut LocalConnection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame<Bytes>>, H1Error>> {
        loop {
            match framing {
                Framing::Empty | Framing::Length(0) => return Poll::Ready(Ok(None)),
                Framing::Length(left) if !connection.read.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(connection.read.len());
                    *left -= take as u64;
                    let data = connection.read.split_to(take).freeze();
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                Framing::Chunked(chunked) => match chunked.decode(&mut connection.read)? {
                    Decoded::Data(data) => return Poll::Ready(Ok(Some(Frame::data(data)))),
                    Decoded::Trailers(trailers) => {
                        return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                    }
                    Decoded::End => return Poll::Ready(Ok(None)),
                    Decoded::More => {}
                },
                Framing::UntilClose if !connection.read.is_empty() => {
                    let data = connection.read.split().freeze();
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                Framing::Length(_) | Framing::UntilClose => {}
            }
            if ready!(connection.poll_fill(BODY_READ, cx))? == 0 {
                return Poll::Ready(if matches!(framing, Framing::UntilClose) {
                    Ok(None)
                } else {
                    Err(H1Error::Truncated)
                });
            }
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(connection) = this.connection.as_mut() else {
            return Poll::Ready(None);
        };
        // An early response: the request keeps going out beside it. If the
        // endpoint stops taking it (or the request body breaks), the
        // response is still read, and the connection is not reused.
        if let Some(rest) = this.rest.as_mut()
            && !rest.done()
            && let Poll::Ready(Err(e)) = rest.poll(&mut connection.io, cx)
        {
            tracing::debug!(error = %e, "request not sent whole beside an early response");
            this.rest = None;
            this.back = None;
        }
        let polled = ready!(Self::poll_next(&mut this.framing, connection, cx));
        match polled {
            Ok(Some(frame)) => {
                if this.is_end_stream() || frame.is_trailers() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Ok(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                // Broken: the connection is not reused.
                this.connection = None;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none() || matches!(self.framing, Framing::Empty | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
