//! Connections to peer gateways: mutual TLS 1.3 carrying HTTP/2, driven with
//! the `h2` crate directly. A request is queued on the shared connection
//! state and written by the connection's one driver task, with no task or
//! channel hop of its own; the response body is the HTTP/2 stream itself.
//! One connection per peer is pooled and multiplexed; a CONNECT stream on it
//! becomes a byte tunnel for TCP passthrough ([`Tunnel`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::{Body, BoxError};

/// HTTP/2 window of one stream (what a peer may send before we read it).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 window of a whole connection.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept (fewer frames for bulk tunnel data).
pub const MAX_FRAME: u32 = 256 * 1024;

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Nothing was sent: the connection could not be made or was gone.
    #[error("{0}")]
    NotSent(String),
    /// The request was sent (or partly sent) and then failed.
    #[error("{0}")]
    Failed(String),
}

/// One multiplexed connection to a peer gateway.
#[derive(Clone)]
pub struct PeerConnection {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl PeerConnection {
    /// Makes a connection: TCP to `address`, the mTLS handshake with
    /// `tls` (which checks the peer's identity), then HTTP/2.
    pub async fn connect(
        address: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        peer: &str,
    ) -> Result<Self, String> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect {address}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name =
            rustls::pki_types::ServerName::try_from("gns-gateway").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("mTLS with {peer}: {e}"))?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| format!("http2 with {peer}: {e}"))?;
        let closed = Arc::new(AtomicBool::new(false));
        let driver_closed = Arc::clone(&closed);
        let peer = peer.to_owned();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer, error = %e, "peer connection ended");
            }
            driver_closed.store(true, Ordering::Relaxed);
        });
        Ok(Self { sender, closed })
    }

    /// False once the connection has ended.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }

    /// Opens a stream for `head` (whose hop-by-hop headers are dropped here).
    /// The connection is a clone taken from the pool for this request: its
    /// handle opens the stream directly (h2 queues the stream when the peer's
    /// stream limit is reached; a connection that has gone away fails here).
    fn open(
        self,
        mut head: Request<()>,
        end_of_stream: bool,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), PeerError> {
        strip_hop_by_hop(head.headers_mut());
        let mut sender = self.sender;
        sender
            .send_request(head, end_of_stream)
            .map_err(|e| PeerError::NotSent(e.to_string()))
    }

    /// Sends a request with a buffered body; the response streams back.
    pub fn send(
        self,
        head: Request<()>,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<Body>, PeerError>> {
        // The stream is opened at the call, so the future holds the open
        // stream, not the request head (an `async fn` would keep the head,
        // twice).
        let opened = self.open(head, body.is_empty());
        async move {
            let (response, mut stream) = opened?;
            if !body.is_empty() {
                // Buffered by h2 and sent as the peer's window allows; the body is
                // bounded by the gateway's request body limit.
                stream
                    .send_data(body, true)
                    .map_err(|e| PeerError::Failed(e.to_string()))?;
            }
            let response = response
                .await
                .map_err(|e| PeerError::Failed(e.to_string()))?;
            Ok(streamed(response))
        }
    }

    /// Opens a stream for a request whose body streams: `head` goes out
    /// now, the body with [`Opened::send`]. Failing here sent nothing.
    pub(crate) fn open_streaming(self, head: Request<()>) -> Result<Opened, PeerError> {
        let (response, send) = self.open(head, false)?;
        Ok(Opened { response, send })
    }

    /// Opens a CONNECT tunnel to `authority` (`host:port`) with `headers`
    /// (the caller's identity); the peer answers 2xx once it has connected
    /// the far end.
    pub async fn tunnel(self, authority: &str, headers: HeaderMap) -> Result<Tunnel, PeerError> {
        let mut head = Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority)
            .body(())
            .map_err(|e| PeerError::NotSent(e.to_string()))?;
        *head.headers_mut() = headers;
        let (response, send) = self.open(head, false)?;
        let response = response
            .await
            .map_err(|e| PeerError::Failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(PeerError::Failed(format!(
                "CONNECT {authority}: {}",
                response.status()
            )));
        }
        Ok(Tunnel::new(send, response.into_body()))
    }
}

/// A stream opened at a peer for a request whose body streams.
pub(crate) struct Opened {
    response: h2::client::ResponseFuture,
    send: h2::SendStream<Bytes>,
}

impl Opened {
    /// Streams `body` on the stream (on a task of its own, within the
    /// peer's flow-control window, trailers included: the response may
    /// come back while the body still goes out) and waits for the
    /// response head; the response streams back.
    pub(crate) async fn send(self, body: Body) -> Result<Response<Body>, PeerError> {
        tokio::spawn(pump(self.send, body));
        let response = self
            .response
            .await
            .map_err(|e| PeerError::Failed(e.to_string()))?;
        Ok(streamed(response))
    }
}

/// Copies `body` onto `send` until it ends, breaks (the stream is reset)
/// or the peer resets the stream.
async fn pump(mut send: h2::SendStream<Bytes>, mut body: Body) {
    use http_body_util::BodyExt;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let frame = match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "request body broke off; resetting the stream");
                send.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let last = body.is_end_stream();
                if crate::h2server::send_data(&mut send, data, last)
                    .await
                    .is_err()
                    || last
                {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = send.send_trailers(trailers);
                }
                return;
            }
        }
    }
}

/// An HTTP/2 response with its stream as the body.
fn streamed(response: Response<h2::RecvStream>) -> Response<Body> {
    let length = content_length(response.headers());
    response.map(|recv| StreamBody::new(recv, length).boxed())
}

/// A request's declared body length (`Content-Length`), if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// A request from a peer with its stream as the body (flow-control window
/// given back as the body is taken), its length the declared one.
pub(crate) fn request_body(request: Request<h2::RecvStream>) -> Request<Body> {
    let length = content_length(request.headers());
    request.map(|recv| StreamBody::new(recv, length).boxed())
}

/// The pooled connection of each peer.
#[derive(Default)]
pub struct PeerPool {
    connections: Mutex<crate::FastMap<String, PeerConnection>>,
}

impl PeerPool {
    /// The open pooled connection to `peer`, if there is one.
    pub fn get(&self, peer: &str) -> Option<PeerConnection> {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connections.get(peer).filter(|c| c.is_open()).cloned()
    }

    /// Pools `connection` for `peer` (replacing an older one).
    pub fn put(&self, peer: &str, connection: PeerConnection) {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer.to_owned(), connection);
    }

    /// Forgets `peer`'s connection (after it failed).
    pub fn remove(&self, peer: &str) {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer);
    }

    /// Forgets every connection (a new certificate: new connections present it).
    pub fn clear(&self) {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Drops the headers HTTP/2 forbids (RFC 9113 §8.2.2): `Connection` and the
/// headers it names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade`, `Host` (carried as the authority) and `TE` other than `trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, HOP_BY_HOP_COUNT);
}

/// Drops the fields about one HTTP/1.1 connection that a proxy does not
/// pass on (RFC 9110 §7.6.1): [`strip_hop_by_hop`]'s but `Host`.
pub fn strip_connection_fields(headers: &mut HeaderMap) {
    strip(headers, HOP_BY_HOP_COUNT - 1);
}

/// Drops `Connection`, the fields it names and the first `count` of
/// [`HOP_BY_HOP`].
fn strip(headers: &mut HeaderMap, count: usize) {
    // One pass over the names first: most messages carry few or none of
    // these, and a removal by name costs a hash and a probe each.
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut connection = false;
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if let Some(i) = HOP_BY_HOP[..count].iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if connection
        && let Some(named) = headers.remove(header::CONNECTION)
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            // The usual tokens: `close` names no header, `keep-alive` is
            // dropped below anyway.
            if !name.eq_ignore_ascii_case("keep-alive") && !name.eq_ignore_ascii_case("close") {
                headers.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        let keep = name == header::TE
            && headers
                .get(header::TE)
                .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !keep {
            headers.remove(name);
        }
    }
}

const HOP_BY_HOP_COUNT: usize = 6;
/// The headers besides `Connection` that [`strip_hop_by_hop`] drops (`TE`
/// only when it is not `trailers`).
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    // Last: `strip_connection_fields` keeps it.
    header::HOST,
];

/// An HTTP/2 response stream as a body: data frames then trailers, with the
/// flow-control window given back as data is taken.
struct StreamBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// Bytes still to come, when the response said (`Content-Length`).
    remaining: Option<u64>,
}

impl StreamBody {
    fn new(recv: h2::RecvStream, length: Option<u64>) -> Self {
        Self {
            recv,
            data_done: false,
            remaining: length,
        }
    }
}

impl HttpBody for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    let taken = data.len() as u64;
                    self.remaining = self.remaining.map(|r| r.saturating_sub(taken));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A CONNECT stream on a peer connection, read and written as bytes.
pub struct Tunnel {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    /// Received data not yet read.
    pending: Bytes,
}

impl Tunnel {
    /// A tunnel over a stream's two halves (either side of a CONNECT).
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
        }
    }
}

fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) if e.is_reset() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(broken(e))),
                // The far end closed its side: EOF.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        let granted = match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Poll::Ready(Err(broken(e))),
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        let n = granted.min(buf.len());
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(broken)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Data is handed to the connection at once; its driver writes it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // End of our half: an empty DATA frame with END_STREAM.
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "web.production.app.acme.com"),
            ("te", "gzip"),
            ("user-agent", "curl/8"),
        ] {
            headers.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["user-agent"]);
        let mut trailers_only = HeaderMap::new();
        trailers_only.insert(header::TE, http::HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut trailers_only);
        assert!(
            trailers_only.contains_key(header::TE),
            "TE: trailers is allowed"
        );
    }
}
