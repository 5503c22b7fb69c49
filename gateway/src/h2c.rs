//! HTTP/2 without TLS (h2c, prior knowledge) to local endpoints whose port
//! speaks it: gRPC, and services declared `h2c`. One multiplexed connection
//! per endpoint, shared by every request to it, its driver a task of its
//! own (HTTP/2 needs one to answer pings and flow control while no request
//! polls). A connection that closed is replaced on the next request.
//! Responses stream, trailers included (gRPC's status travels in them).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::pool::PoolError;
use crate::proxy::Body;

/// Connections to local endpoints over h2c, one per endpoint.
#[derive(Debug)]
pub struct H2cPool {
    connections: Mutex<HashMap<SocketAddr, SendRequest<Body>>>,
    connect_timeout: Duration,
}

impl H2cPool {
    /// A pool whose new connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connections: Mutex::default(),
            connect_timeout,
        }
    }

    /// The live connection to `target`, if there is one.
    fn live(&self, target: SocketAddr) -> Option<SendRequest<Body>> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match connections.get(&target) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                connections.remove(&target);
                None
            }
            None => None,
        }
    }

    async fn connect(&self, target: SocketAddr) -> Result<SendRequest<Body>, PoolError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(target))
            .await
            .map_err(|_| PoolError::Connect("connect timed out".into()))?
            .map_err(|e| PoolError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| PoolError::Connect(format!("h2c handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%target, error = %e, "h2c connection ended");
            }
        });
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, sender.clone());
        Ok(sender)
    }

    /// The endpoint's connection, ready for a stream: the live one, or a
    /// new one when there is none or it cannot take a stream any more.
    /// Failing here sent nothing.
    pub(crate) async fn ready(&self, target: SocketAddr) -> Result<SendRequest<Body>, PoolError> {
        let mut sender = match self.live(target) {
            Some(sender) => sender,
            None => self.connect(target).await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect(target).await?;
            sender
                .ready()
                .await
                .map_err(|e| PoolError::Connect(e.to_string()))?;
        }
        Ok(sender)
    }

    /// Sends `request` (its URI absolute: scheme and authority become the
    /// pseudo-headers) to `target` on the endpoint's connection, made when
    /// there is none. A connection that cannot take a stream any more is
    /// replaced before anything is sent on it.
    pub async fn send(
        &self,
        target: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let sender = self.ready(target).await?;
        send_on(sender, request).await
    }
}

/// Sends `request` on a ready connection; the response streams back.
pub(crate) async fn send_on(
    mut sender: SendRequest<Body>,
    request: Request<Body>,
) -> Result<Response<Body>, PoolError> {
    let response = sender.send_request(request).await?;
    Ok(response.map(|body| body.map_err(Into::into).boxed()))
}
