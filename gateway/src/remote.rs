//! Tries at peer gateways: the pooled HTTP/2 connection of this worker to
//! each peer (made over mutual TLS when missing or gone), and the request
//! head a peer gets.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, Uri, header};

use crate::access::name_subset;
use crate::proxy::{Body, CONNECT_TIMEOUT, Gateway};
use crate::refusal::TryError;
use crate::tls::peer_config;

impl Gateway {
    /// One try at `peer`: the request goes out on the pooled connection; if
    /// that connection turns out to be gone before anything was sent, once
    /// more on a new one.
    pub(crate) async fn send_peer(
        &self,
        peer: &str,
        parts: &http::request::Parts,
        body: Bytes,
        subset: Option<&str>,
    ) -> Result<Response<Body>, TryError> {
        use crate::peer::PeerError;
        self.counters.peer_tries.fetch_add(1, Ordering::Relaxed);
        let as_try = |e: PeerError| match e {
            PeerError::NotSent(e) => TryError::Connect(format!("{peer}: {e}")),
            PeerError::Failed(e) => TryError::Reset(format!("{peer}: {e}")),
        };
        let pooled = self.shard().peers.get(peer);
        let reused = pooled.is_some();
        let connection = match pooled {
            Some(connection) => connection,
            // Boxed: the cold path stays out of every request's future.
            None => Box::pin(self.connect_peer(peer)).await?,
        };
        match connection
            .send(peer_head(parts, subset)?, body.clone())
            .await
        {
            Err(PeerError::NotSent(e)) => {
                self.shard().peers.remove(peer);
                if !reused {
                    return Err(as_try(PeerError::NotSent(e)));
                }
                // The pooled connection had gone away: once more on a new one.
                let connection = Box::pin(self.connect_peer(peer)).await?;
                connection
                    .send(peer_head(parts, subset)?, body)
                    .await
                    .map_err(as_try)
            }
            outcome => outcome.map_err(as_try),
        }
    }

    /// Opens a stream at `peer` for a request whose body streams, on the
    /// pooled connection, or on a new one when it is missing or turns out
    /// to be gone. Failing here sent nothing.
    pub(crate) async fn open_peer(
        &self,
        peer: &str,
        parts: &http::request::Parts,
        subset: Option<&str>,
    ) -> Result<crate::peer::Opened, TryError> {
        self.counters.peer_tries.fetch_add(1, Ordering::Relaxed);
        let not_sent = |e: crate::peer::PeerError| TryError::Connect(format!("{peer}: {e}"));
        let pooled = self.shard().peers.get(peer);
        let reused = pooled.is_some();
        let connection = match pooled {
            Some(connection) => connection,
            None => Box::pin(self.connect_peer(peer)).await?,
        };
        match connection.open_streaming(peer_head(parts, subset)?) {
            Ok(opened) => Ok(opened),
            Err(e) => {
                self.shard().peers.remove(peer);
                if !reused {
                    return Err(not_sent(e));
                }
                // The pooled connection had gone away: once more on a new one.
                let connection = Box::pin(self.connect_peer(peer)).await?;
                connection
                    .open_streaming(peer_head(parts, subset)?)
                    .map_err(not_sent)
            }
        }
    }

    /// The pooled connection to `peer`, made when missing or closed.
    pub(crate) async fn peer_connection(
        &self,
        peer: &str,
    ) -> Result<crate::peer::PeerConnection, TryError> {
        match self.shard().peers.get(peer) {
            Some(connection) => Ok(connection),
            None => self.connect_peer(peer).await,
        }
    }

    /// A new connection to `peer`, pooled for the requests after this one.
    pub(crate) async fn connect_peer(
        &self,
        peer: &str,
    ) -> Result<crate::peer::PeerConnection, TryError> {
        let identity = self
            .identity
            .load_full()
            .ok_or_else(|| TryError::Connect("no certificate yet".into()))?;
        let address = self
            .config
            .load()
            .as_ref()
            .and_then(|c| c.gateways.get(peer).map(|g| g.ingress_address))
            .ok_or_else(|| TryError::Connect(format!("no gateway known for {peer}")))?;
        let tls = peer_config(&identity, peer).map_err(|e| TryError::Connect(e.to_string()))?;
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            crate::peer::PeerConnection::connect(address, Arc::new(tls), peer),
        )
        .await
        .map_err(|_| TryError::Connect(format!("{peer}: connect timed out")))?
        .map_err(TryError::Connect)?;
        self.shard().peers.put(peer, connection.clone());
        Ok(connection)
    }
}

/// The head of a request to a peer gateway: the client's method, headers
/// and path, with its host as the HTTP/2 authority.
pub(crate) fn peer_head(
    parts: &http::request::Parts,
    subset: Option<&str>,
) -> Result<Request<()>, TryError> {
    let bad_target = |e: http::Error| TryError::Connect(format!("bad request target: {e}"));
    let authority = match parts.headers.get(header::HOST) {
        Some(host) => {
            http::uri::Authority::try_from(host.as_bytes()).map_err(|e| bad_target(e.into()))?
        }
        None => parts
            .uri
            .authority()
            .cloned()
            .unwrap_or_else(|| http::uri::Authority::from_static("unknown")),
    };
    // From parts: the path is shared with the request, not parsed again.
    let mut target = http::uri::Parts::default();
    target.scheme = Some(http::uri::Scheme::HTTPS);
    target.authority = Some(authority);
    target.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = Uri::from_parts(target).map_err(|e| bad_target(e.into()))?;
    *head.version_mut() = http::Version::HTTP_2;
    *head.headers_mut() = parts.headers.clone();
    name_subset(head.headers_mut(), subset);
    Ok(head)
}
