//! HTTP/1.1 `Upgrade` (WebSocket and any other protocol a client switches
//! to) through the gateways. The client's upgrade request is written, as
//! HTTP/1.1, onto a byte stream to an endpoint: a TCP connection to a local
//! endpoint's HTTP port, or a CONNECT tunnel over the HTTP/2 connection to a
//! peer gateway (marked [`UPGRADE_HEADER`], so the peer connects it to its
//! endpoint's HTTP port, not to a TCP service). The endpoint's answer head
//! is read back; a `101` is passed to the client and both byte streams are
//! joined until either side closes. Any other answer is passed on as it
//! came, and the connection ends with it.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, header};

use crate::access::{name_caller, name_subset};
use crate::client_body::ClientBody;
use crate::downstream::OnUpgrade;
use crate::proxy::{Body, Gateway, full, host_in};
use crate::refusal::{Refusal, TryError};
use crate::route::{Route, RouteTable};

/// Between gateways: a CONNECT tunnel that carries an upgraded HTTP/1.1
/// exchange for the HTTP route of its host.
pub const UPGRADE_HEADER: HeaderName = HeaderName::from_static("x-gns-upgrade");

/// A byte stream an upgraded exchange runs on (a TCP connection, a tunnel).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The largest answer head read from an endpoint.
const MAX_HEAD: usize = 64 * 1024;

/// Whether a request asks to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The request head as HTTP/1.1 bytes: origin-form target, every header
/// but this gateway's own between-gateway ones.
pub fn head_bytes(parts: &http::request::Parts, host: &str) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!("{} {target} HTTP/1.1\r\n", parts.method).into_bytes();
    if !parts.headers.contains_key(http::header::HOST) {
        head.extend_from_slice(format!("host: {host}\r\n").as_bytes());
    }
    for (name, value) in &parts.headers {
        if name == UPGRADE_HEADER || name.as_str().starts_with("x-gns-subset") {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// An endpoint's answer head.
#[derive(Debug)]
pub struct AnswerHead {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Bytes read after the head (the new protocol's first bytes, or the
    /// start of a body).
    pub rest: Vec<u8>,
}

/// Why an upgrade exchange with an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The request could not be written.
    #[error("sending the upgrade request: {0}")]
    Send(#[source] std::io::Error),
    /// The answer could not be read.
    #[error("reading the answer: {0}")]
    Read(#[source] std::io::Error),
    /// The endpoint closed before its answer's head was complete.
    #[error("the endpoint closed before answering")]
    Closed,
    /// The answer's status line is not valid.
    #[error("the answer has no valid status")]
    BadStatus,
    /// The answer's head is larger than the gateway reads.
    #[error("the answer head is too large")]
    HeadTooLarge,
    /// The answer is not HTTP/1.1.
    #[error("the answer is not HTTP/1.1: {0}")]
    NotHttp(httparse::Error),
}

/// Writes `head` to `stream` and reads the answer's head.
pub async fn exchange<S>(stream: &mut S, head: &[u8]) -> Result<AnswerHead, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(head).await.map_err(ExchangeError::Send)?;
    stream.flush().await.map_err(ExchangeError::Send)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(ExchangeError::Read)?;
        if n == 0 {
            return Err(ExchangeError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut headers);
        match answer.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = answer
                    .code
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or(ExchangeError::BadStatus)?;
                let mut map = HeaderMap::new();
                for h in answer.headers.iter() {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(h.name.as_bytes()),
                        HeaderValue::from_bytes(h.value),
                    ) {
                        map.append(name, value);
                    }
                }
                return Ok(AnswerHead {
                    status,
                    headers: map,
                    rest: buf[len..].to_vec(),
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(ExchangeError::HeadTooLarge),
            Err(e) => return Err(ExchangeError::NotHttp(e)),
        }
    }
}

impl Gateway {
    /// An HTTP/1.1 upgrade (WebSocket, ...): the request goes to the plan's
    /// first target that takes it (a local endpoint, or a peer through a
    /// CONNECT tunnel), and on `101` the client's connection and that byte
    /// stream are joined (see [`crate::upgrade`]).
    pub(crate) async fn upgrade(
        &self,
        mut req: Request<ClientBody>,
        routes: &RouteTable,
        route: &Arc<Route>,
        caller: Option<HeaderValue>,
        callers: &[String],
    ) -> Response<Body> {
        let on_client = req.extensions_mut().remove::<OnUpgrade>();
        let (mut parts, _) = req.into_parts();
        name_caller(&mut parts.headers, caller.clone());
        let host = host_in(&parts.headers, &parts.uri).to_owned();
        let Some(on_client) = on_client else {
            // Only an HTTP/1.1 connection can switch protocols.
            return Refusal::UpgradeFailed {
                host,
                why: "the client's connection cannot be upgraded".into(),
            }
            .answer();
        };
        let request = crate::route::RequestFacts {
            method: Some(&parts.method),
            path: Some(parts.uri.path()),
            headers: &parts.headers,
            callers,
        };
        let plan = routes.plan(route, &request, fastrand::u64(..));
        let head = crate::upgrade::head_bytes(&parts, &host);
        let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
        let mut last = String::from("no cluster has ready endpoints");
        for target in &plan {
            let opened: Result<Box<dyn crate::upgrade::Io>, TryError> =
                if target.cluster == self.cluster {
                    self.connect_local_http(route, target.subset)
                        .await
                        .map(|tcp| Box::new(tcp) as Box<dyn crate::upgrade::Io>)
                } else {
                    match self.peer_connection(target.cluster).await {
                        Ok(connection) => {
                            let mut headers = http::HeaderMap::new();
                            name_caller(&mut headers, caller.clone());
                            name_subset(&mut headers, target.subset);
                            headers.insert(
                                crate::upgrade::UPGRADE_HEADER,
                                HeaderValue::from_static("1"),
                            );
                            connection
                                .tunnel(&format!("{name}:80"), headers)
                                .await
                                .map(|t| Box::new(t) as Box<dyn crate::upgrade::Io>)
                                .map_err(|e| TryError::Connect(e.to_string()))
                        }
                        Err(e) => Err(e),
                    }
                };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    last = format!("{}: {e}", target.cluster);
                    continue;
                }
            };
            let answer = match crate::upgrade::exchange(&mut stream, &head).await {
                Ok(answer) => answer,
                Err(e) => {
                    last = format!("{}: {e}", target.cluster);
                    continue;
                }
            };
            let switching = answer.status == StatusCode::SWITCHING_PROTOCOLS;
            let mut resp = Response::new(full(if switching {
                Bytes::new()
            } else {
                Bytes::from(answer.rest.clone())
            }));
            *resp.status_mut() = answer.status;
            *resp.headers_mut() = answer.headers;
            if !switching {
                // Passed on as it came; the connection ends with it.
                resp.headers_mut().remove(header::CONTENT_LENGTH);
                resp.headers_mut().remove(header::TRANSFER_ENCODING);
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
            let rest = answer.rest;
            tokio::spawn(async move {
                let Some(mut client) = on_client.upgraded().await else {
                    return;
                };
                if !rest.is_empty()
                    && tokio::io::AsyncWriteExt::write_all(&mut client, &rest)
                        .await
                        .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
            });
            return resp;
        }
        Refusal::UpgradeFailed { host, why: last }.answer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_is_told_by_connection_and_upgrade_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&headers), "Connection must name it");
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(is_upgrade(&headers));
    }

    #[tokio::test]
    async fn the_answer_head_and_the_bytes_after_it_are_read() {
        let (mut near, mut far) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let n = far.read(&mut buf).await.expect("read");
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /ws HTTP/1.1\r\n"));
            far.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nfirst")
                .await
                .expect("write");
        });
        let (parts, ()) = http::Request::get("/ws")
            .header("upgrade", "echo")
            .body(())
            .expect("request")
            .into_parts();
        let answer = exchange(&mut near, &head_bytes(&parts, "echo.test"))
            .await
            .expect("answer");
        assert_eq!(answer.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(answer.headers["upgrade"], "echo");
        assert_eq!(answer.rest, b"first");
        server.await.expect("server");
    }
}
