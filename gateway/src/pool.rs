//! HTTP/1.1 connections to local endpoints, kept alive and reused. Built on
//! hyper's low-level client connection API, with no task of its own: the
//! request that uses a connection drives it (polls its `Connection` beside
//! the send), and so does the response body, which hands the connection back
//! to the pool when it ends. A request therefore stays on the task that
//! serves it (no wake-up of another task, no channel hop to a driver), and a
//! request costs a lock to pop a connection and another to push it back.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::Body;

/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// Why a request to a local endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (nothing was sent).
    #[error("connect: {0}")]
    Connect(String),
    /// The request failed after it was sent (or while sending).
    #[error("{0}")]
    Request(#[from] hyper::Error),
}

/// The driving half of a connection: reads and writes happen when it is polled.
type Driver = Connection<TokioIo<TcpStream>, Body>;

/// One kept-alive connection to an endpoint.
struct LocalConnection {
    sender: SendRequest<Body>,
    /// `None` once the connection has ended (then it is not reused).
    driver: Option<Driver>,
}

/// Polls a connection's driver. An ended driver is dropped (`None`), which
/// fails the requests it still held, giving back the ones it never wrote.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
    if let Some(d) = driver
        && Pin::new(d).poll(cx).is_ready()
    {
        *driver = None;
    }
}

impl LocalConnection {
    /// Sends `request` and waits for the response head, driving the
    /// connection meanwhile.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    fn exchange(
        &mut self,
        request: Request<Body>,
    ) -> impl Future<Output = Result<Response<Incoming>, Exchange>> {
        async move {
            // An idle pooled connection is ready at once: driven only if not.
            let ready = poll_fn(|cx| match self.sender.poll_ready(cx) {
                Poll::Pending => {
                    drive(&mut self.driver, cx);
                    self.sender.poll_ready(cx)
                }
                ready => ready,
            })
            .await;
            if let Err(e) = ready {
                return Err(Exchange::Unsent(Box::new(request), e));
            }
            let mut response = std::pin::pin!(self.sender.try_send_request(request));
            let driver = &mut self.driver;
            poll_fn(|cx| {
                drive(driver, cx);
                response.as_mut().poll(cx)
            })
            .await
            .map_err(|mut failed| match failed.take_message() {
                Some(unsent) => Exchange::Unsent(Box::new(unsent), failed.into_error()),
                None => Exchange::Failed(failed.into_error()),
            })
        }
    }
}

/// How an exchange on a pooled connection failed.
enum Exchange {
    /// Nothing was written: the request comes back, safe to send elsewhere.
    Unsent(Box<Request<Body>>, hyper::Error),
    /// The request was (at least partly) written.
    Failed(hyper::Error),
}

/// A connection taken from the pool (or made) for one request.
pub(crate) struct Checkout(Box<LocalConnection>);

/// Idle connections by endpoint; boxed, so a request moves a pointer, not
/// the connection's state.
type Idle = Arc<Mutex<crate::FastMap<SocketAddr, Vec<Box<LocalConnection>>>>>;

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

    fn pop(&self, target: SocketAddr) -> Option<Box<LocalConnection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = idle.get_mut(&target)?;
        while let Some(connection) = connections.pop() {
            if connection.driver.is_some() && !connection.sender.is_closed() {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self, target: SocketAddr) -> Result<Box<LocalConnection>, PoolError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| PoolError::Connect("connect timed out".into()))?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        Ok(Box::new(LocalConnection {
            sender,
            driver: Some(driver),
        }))
    }

    /// Sends `request` to `target` on a pooled connection (a new one when
    /// none is idle). A pooled connection the endpoint closed meanwhile is
    /// retried once on a new connection, since nothing reached the endpoint.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice in its per-request future"
    )]
    pub fn send(
        &self,
        target: SocketAddr,
        request: Request<Body>,
        retry: impl FnOnce() -> Option<Request<Body>>,
    ) -> impl Future<Output = Result<Response<Body>, PoolError>> {
        // A plain function around an `async move` block: an `async fn` would
        // keep the request twice in this per-request future.
        async move {
            // New connections are the cold path: boxed, so the future of every
            // request (moved as it is made and queued) stays small.
            let Some(mut connection) = self.pop(target) else {
                return Box::pin(self.send_new(target, request)).await;
            };
            match connection.exchange(request).await {
                Ok(response) => Ok(self.wrap(target, connection, response)),
                // Not sent: the endpoint had closed the idle connection.
                Err(Exchange::Unsent(unsent, _)) => Box::pin(self.send_new(target, *unsent)).await,
                Err(Exchange::Failed(e)) => match retry() {
                    // Closed as the request went out: nothing was answered.
                    Some(again) if e.is_incomplete_message() => {
                        Box::pin(self.send_new(target, again)).await
                    }
                    _ => Err(PoolError::Request(e)),
                },
            }
        }
    }

    /// A connection to `target` for one request whose body streams: an
    /// idle pooled one, else a new one. Failing here sent nothing.
    pub(crate) async fn checkout(&self, target: SocketAddr) -> Result<Checkout, PoolError> {
        match self.pop(target) {
            Some(connection) => Ok(Checkout(connection)),
            None => self.connect(target).await.map(Checkout),
        }
    }

    /// Sends `request` on `checkout` (a connection to `target`). When that
    /// was a pooled connection the endpoint closed meanwhile, nothing was
    /// written and the request goes out once on a new connection.
    pub(crate) async fn send_on(
        &self,
        target: SocketAddr,
        checkout: Checkout,
        request: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let mut connection = checkout.0;
        match connection.exchange(request).await {
            Ok(response) => Ok(self.wrap(target, connection, response)),
            Err(Exchange::Unsent(unsent, _)) => Box::pin(self.send_new(target, *unsent)).await,
            Err(Exchange::Failed(e)) => Err(PoolError::Request(e)),
        }
    }

    async fn send_new(
        &self,
        target: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let mut connection = self.connect(target).await?;
        match connection.exchange(request).await {
            Ok(response) => Ok(self.wrap(target, connection, response)),
            Err(Exchange::Unsent(_, e) | Exchange::Failed(e)) => Err(PoolError::Request(e)),
        }
    }

    /// The response, with its connection going back to the pool when its body ends.
    fn wrap(
        &self,
        target: SocketAddr,
        connection: Box<LocalConnection>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let keep_alive = !response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let (parts, body) = response.into_parts();
        let mut returning = Returning {
            body,
            connection: Some(connection),
            back: keep_alive.then(|| (target, Arc::clone(&self.idle))),
        };
        if returning.body.is_end_stream() {
            returning.give_back();
        }
        Response::from_parts(parts, returning.boxed())
    }
}

/// A response body that drives its connection while it streams and returns
/// the connection to the pool at its end.
struct Returning {
    body: Incoming,
    /// `None` once given back.
    connection: Option<Box<LocalConnection>>,
    /// Where the connection goes back to (`None`: not reusable).
    back: Option<(SocketAddr, Idle)>,
}

impl Returning {
    fn give_back(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if let Some((target, idle)) = self.back.take()
            && connection.driver.is_some()
        {
            let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
            let connections = idle.entry(target).or_default();
            if connections.len() < MAX_IDLE_PER_ENDPOINT {
                connections.push(connection);
            }
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The body usually came in with the head: the connection is driven
        // only when the body waits for more.
        let mut polled = Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_pending()
            && let Some(connection) = &mut self.connection
        {
            drive(&mut connection.driver, cx);
            polled = Pin::new(&mut self.body).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(crate::proxy::BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
