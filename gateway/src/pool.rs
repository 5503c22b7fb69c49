//! HTTP/1.1 connections to local endpoints, kept alive and reused: idle
//! senders per endpoint address, a connection driver task per connection
//! (not per request), and a response body that hands its connection back to
//! the pool when it ends. Built on hyper's low-level client connection API,
//! so a request costs a lock to pop a sender and another to push it back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
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

type Idle = Arc<Mutex<HashMap<SocketAddr, Vec<SendRequest<Body>>>>>;

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

    fn pop(&self, target: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let senders = idle.get_mut(&target)?;
        while let Some(sender) = senders.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self, target: SocketAddr) -> Result<SendRequest<Body>, PoolError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| PoolError::Connect("connect timed out".into()))?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends `request` to `target` on a pooled connection (a new one when
    /// none is idle). A pooled connection the endpoint closed meanwhile is
    /// retried once on a new connection, since nothing reached the endpoint.
    pub async fn send(
        &self,
        target: SocketAddr,
        request: Request<Body>,
        retry: impl FnOnce() -> Option<Request<Body>>,
    ) -> Result<Response<Body>, PoolError> {
        if let Some(mut sender) = self.pop(target)
            && sender.ready().await.is_ok()
        {
            return match sender.try_send_request(request).await {
                Ok(response) => Ok(self.wrap(target, sender, response)),
                Err(mut failed) => {
                    // Not sent: the endpoint had closed the idle connection.
                    if let Some(unsent) = failed.take_message() {
                        return self.send_new(target, unsent).await;
                    }
                    if failed.error().is_incomplete_message()
                        && let Some(again) = retry()
                    {
                        return self.send_new(target, again).await;
                    }
                    Err(PoolError::Request(failed.into_error()))
                }
            };
        }
        self.send_new(target, request).await
    }

    async fn send_new(
        &self,
        target: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let mut sender = self.connect(target).await?;
        let response = sender.send_request(request).await?;
        Ok(self.wrap(target, sender, response))
    }

    /// The response, with its connection going back to the pool when its body ends.
    fn wrap(
        &self,
        target: SocketAddr,
        sender: SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Response<Body> {
        let keep_alive = !response
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let (parts, body) = response.into_parts();
        let mut returning = Returning {
            body,
            back: keep_alive.then(|| (sender, target, Arc::clone(&self.idle))),
        };
        if returning.body.is_end_stream() {
            returning.give_back();
        }
        Response::from_parts(parts, returning.boxed())
    }
}

/// A response body that returns its connection to the pool at its end.
struct Returning {
    body: Incoming,
    back: Option<(SendRequest<Body>, SocketAddr, Idle)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((sender, target, idle)) = self.back.take() {
            let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
            let senders = idle.entry(target).or_default();
            if senders.len() < MAX_IDLE_PER_ENDPOINT {
                senders.push(sender);
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
        let polled = Pin::new(&mut self.body).poll_frame(cx);
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
