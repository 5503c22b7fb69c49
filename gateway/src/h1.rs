//! HTTP/1.1 to local endpoints, as bytes: a request's head written with
//! its body's framing, a response's head parsed (interim 1xx answers
//! skipped), and a chunked body decoded. No I/O here: [`crate::pool`] owns
//! the connections and feeds these functions what it reads.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};

pub(crate) use crate::chunked::{Chunked, Decoded};
use crate::proxy::BoxError;

/// The most a response head (status line and fields) may take.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most fields a response head (or a chunked body's trailer) may have.
pub(crate) const MAX_FIELDS: usize = 100;

/// Why an exchange with a local endpoint failed after it started.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection ended before any of the response came.
    #[error("the endpoint closed the connection before answering")]
    Closed,
    /// The connection ended in the middle of the response.
    #[error("the endpoint closed the connection in the middle of the response")]
    Truncated,
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The response's head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Parse(#[from] httparse::Error),
    /// The response breaks HTTP/1.1 framing.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response head did not end within [`MAX_HEAD`] bytes.
    #[error("the response head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The request's body failed while it was being sent.
    #[error("request body: {0}")]
    RequestBody(BoxError),
    /// The request's body was longer or shorter than its `content-length`.
    #[error("the request body does not match its content-length")]
    LengthMismatch,
}

/// How a request's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sending {
    /// No body, and no framing header.
    Nothing,
    /// `content-length` bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// As it comes, ended by closing the connection (a response of unknown
    /// length to an HTTP/1.0 client).
    UntilClose,
}

impl Sending {
    /// The framing of a request body: `ended` (nothing to send), of an
    /// `exact` length, else the declared `content-length`, else chunked.
    pub(crate) fn of(parts: &http::request::Parts, ended: bool, exact: Option<u64>) -> Self {
        if ended {
            // A method that carries a body says it is empty.
            return if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
                Sending::Length(0)
            } else {
                Sending::Nothing
            };
        }
        let declared = || {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| parse_length(v.as_bytes()))
        };
        match exact.or_else(declared) {
            Some(n) => Sending::Length(n),
            None => Sending::Chunked,
        }
    }
}

/// Writes the head of a request (`target`: origin form) framed as
/// `sending`; the request's own framing fields are replaced.
pub(crate) fn encode_head(parts: &http::request::Parts, sending: Sending, out: &mut BytesMut) {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(64 + target.len() + 32 * parts.headers.len());
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match sending {
        Sending::Nothing | Sending::UntilClose => {}
        Sending::Length(n) => {
            // Writing to a BytesMut cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Sending::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

/// Writes one chunk's size line (`len` > 0) of a chunked body.
pub(crate) fn encode_chunk_size(len: usize, out: &mut BytesMut) {
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// Writes the end of a chunked body, with `trailers` if any.
pub(crate) fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// How a response's body ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// It has none (an answer to HEAD, 204, 304).
    Empty,
    /// After this many bytes.
    Length(u64),
    /// With its last chunk.
    Chunked(Chunked),
    /// When the endpoint closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) response: Response<()>,
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub(crate) keep_alive: bool,
}

/// Parses the response head at the start of `buf`, taking it out; `None`
/// when more must be read first. Interim answers (1xx) are taken out and
/// skipped; `method` is the request's (a HEAD answer has no body).
pub(crate) fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    let mut spans = [(0, 0, 0, 0); MAX_FIELDS];
    loop {
        let Some(line) = parse_fields(buf, &mut spans)? else {
            if buf.len() > MAX_HEAD {
                return Err(H1Error::HeadTooLarge);
            }
            return Ok(None);
        };
        let head = buf.split_to(line.len).freeze();
        let status = StatusCode::from_u16(line.status).map_err(|_| H1Error::Malformed("status"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(H1Error::Malformed("an upgrade that was not asked for"));
            }
            continue;
        }
        let (mut headers, fields) = header_map(&head, &spans[..line.fields], false)?;
        let framing = fields.framing(status, method)?;
        // Both framings at once (RFC 9112 §6.3): the transfer coding wins,
        // the length is not passed on, and the connection is not reused.
        let both = fields.transfer.is_some() && matches!(fields.length, Err(_) | Ok(Some(_)));
        if both {
            headers.remove(header::CONTENT_LENGTH);
        }
        let keep_alive =
            line.version == 1 && !both && !matches!(framing, Framing::UntilClose) && !fields.close;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if line.version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// Where a field's name and value are in a head: `(name start, name end,
/// value start, value end)`.
pub(crate) type Span = (u32, u32, u32, u32);

/// A whole head's status line, and how many fields it has.
struct StatusLine {
    /// The head's length, with its blank line.
    len: usize,
    status: u16,
    /// The minor version: HTTP/1.`version`.
    version: u8,
    fields: usize,
}

/// Parses the head at the start of `buf` if it is whole, its fields'
/// places written to `spans`.
fn parse_fields(buf: &[u8], spans: &mut [Span; MAX_FIELDS]) -> Result<Option<StatusLine>, H1Error> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    )? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    note_spans(buf, response.headers, spans);
    Ok(Some(StatusLine {
        len,
        status: response.code.unwrap_or(0),
        version: response.version.unwrap_or(1),
        fields: response.headers.len(),
    }))
}

/// Writes where each of `fields` (parsed from `head`) is in `head` to
/// `spans`.
pub(crate) fn note_spans(head: &[u8], fields: &[httparse::Header<'_>], spans: &mut [Span]) {
    let start = head.as_ptr() as usize;
    for (span, field) in spans.iter_mut().zip(fields) {
        let name = field.name.as_ptr() as usize - start;
        let value = field.value.as_ptr() as usize - start;
        // Within a head of at most MAX_HEAD bytes: the offsets fit.
        *span = (
            name as u32,
            (name + field.name.len()) as u32,
            value as u32,
            (value + field.value.len()) as u32,
        );
    }
}

/// What a response's fields say about its framing and connection, noted
/// as its header map is built (no lookups after).
pub(crate) struct Fields {
    /// Its `content-length`: `Err` when malformed or in disagreement.
    pub(crate) length: Result<Option<u64>, &'static str>,
    /// Whether it has a `transfer-encoding`, and whether `chunked` is its
    /// last coding.
    pub(crate) transfer: Option<bool>,
    /// `connection: close`.
    pub(crate) close: bool,
    /// A `connection` value naming fields besides `close` and `keep-alive`
    /// (they are dropped too).
    pub(crate) names: Option<Bytes>,
    /// `connection: keep-alive`.
    pub(crate) keep_alive: bool,
}

/// Fields about this connection alone, not passed on (RFC 9110 §7.6.1);
/// `transfer-encoding` is decoded here, so it is not passed on either.
static CONNECTION_FIELDS: [HeaderName; 4] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::UPGRADE,
    header::TE,
];

impl Fields {
    /// Notes field `name: value`; `false` when it is not passed on.
    fn note(&mut self, name: &HeaderName, value: &Bytes) -> bool {
        if name == header::CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                self.length = match (self.length, parse_length(part)) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("content-length"),
                    (Ok(Some(l)), Some(n)) if l != n => Err("content-lengths that differ"),
                    (Ok(_), Some(n)) => Ok(Some(n)),
                };
            }
            true
        } else if name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.transfer = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            false
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.is_empty() {
                    self.names = Some(value.clone());
                }
            }
            false
        } else {
            !CONNECTION_FIELDS.contains(name)
        }
    }

    /// How the body of a response with these fields and `status`,
    /// answering `method`, ends (RFC 9112 §6.3).
    fn framing(&self, status: StatusCode, method: &Method) -> Result<Framing, H1Error> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        // Chunked only when it is the last coding; else until the close.
        match self.transfer {
            Some(true) => return Ok(Framing::Chunked(Chunked::default())),
            Some(false) => return Ok(Framing::UntilClose),
            None => {}
        }
        match self.length {
            Ok(Some(n)) => Ok(Framing::Length(n)),
            Ok(None) => Ok(Framing::UntilClose),
            Err(what) => Err(H1Error::Malformed(what)),
        }
    }
}

/// The fields of `head` at `spans`, values shared with it (not copied),
/// and what they say about framing. Connection fields are dropped unless
/// `keep_all` (a client's request keeps them: an upgrade needs them, and
/// every hop strips them when it passes the request on).
pub(crate) fn header_map(
    head: &Bytes,
    spans: &[Span],
    keep_all: bool,
) -> Result<(HeaderMap, Fields), H1Error> {
    // A request gets a few fields on its way (trace context, caller): room
    // for them now, not a regrown map later.
    let mut headers = HeaderMap::with_capacity(spans.len() + if keep_all { 4 } else { 0 });
    let mut fields = Fields {
        length: Ok(None),
        transfer: None,
        close: false,
        names: None,
        keep_alive: false,
    };
    for &(name_start, name_end, value_start, value_end) in spans {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| H1Error::Malformed("a field name"))?;
        let value = head.slice(value_start as usize..value_end as usize);
        if fields.note(&name, &value) || keep_all {
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| H1Error::Malformed("a field value"))?;
            headers.append(name, value);
        }
    }
    if let Some(names) = fields.names.as_ref().filter(|_| !keep_all) {
        for name in names.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if let Ok(name) = HeaderName::from_bytes(name) {
                headers.remove(name);
            }
        }
    }
    Ok((headers, fields))
}

/// A content-length: decimal digits only (spaces around allowed).
pub(crate) fn parse_length(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn head_of(parts: &http::request::Parts, sending: Sending) -> String {
        let mut out = BytesMut::new();
        encode_head(parts, sending, &mut out);
        String::from_utf8(out.to_vec()).expect("text")
    }

    #[test]
    fn a_request_head_carries_its_fields_and_framing_of_its_own() {
        let get = parts("GET", "/a/b?c=d", &[("host", "web"), ("x-one", "1")]);
        assert_eq!(
            head_of(&get, Sending::Nothing),
            "GET /a/b?c=d HTTP/1.1\r\nhost: web\r\nx-one: 1\r\n\r\n"
        );
        let post = parts(
            "POST",
            "/up",
            &[("content-length", "99"), ("transfer-encoding", "chunked")],
        );
        assert_eq!(
            head_of(&post, Sending::Length(12345)),
            "POST /up HTTP/1.1\r\ncontent-length: 12345\r\n\r\n"
        );
        assert_eq!(
            head_of(&post, Sending::Chunked),
            "POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            head_of(&parts("GET", "http://web", &[]), Sending::Nothing),
            "GET / HTTP/1.1\r\n\r\n"
        );
    }

    #[test]
    fn a_request_body_is_framed_by_its_length_when_known_else_chunked() {
        let get = parts("GET", "/", &[]);
        assert_eq!(Sending::of(&get, true, Some(0)), Sending::Nothing);
        let post = parts("POST", "/", &[]);
        assert_eq!(Sending::of(&post, true, Some(0)), Sending::Length(0));
        assert_eq!(Sending::of(&post, false, Some(7)), Sending::Length(7));
        assert_eq!(Sending::of(&post, false, None), Sending::Chunked);
        let declared = parts("PUT", "/", &[("content-length", "42")]);
        assert_eq!(Sending::of(&declared, false, None), Sending::Length(42));
    }

    #[test]
    fn chunks_and_the_last_chunk_are_written_in_hex_with_trailers() {
        let mut out = BytesMut::new();
        encode_chunk_size(1, &mut out);
        encode_chunk_size(0x1f40, &mut out);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        encode_last_chunk(Some(&trailers), &mut out);
        assert_eq!(&out[..], b"1\r\n1f40\r\n0\r\ngrpc-status: 0\r\n\r\n");
        let put = parts("PUT", "/", &[]);
        assert!(
            head_of(&put, Sending::Length(u64::MAX))
                .contains("content-length: 18446744073709551615\r\n")
        );
        assert!(head_of(&put, Sending::Length(0)).contains("content-length: 0\r\n"));
    }

    fn parsed(text: &str, method: &Method) -> Result<Option<Head>, H1Error> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, method)
    }

    #[test]
    fn a_response_head_is_parsed_with_its_framing_and_the_rest_left() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nok\nNEXT"[..],
        );
        let head = parse_head(&mut buf, &Method::GET)
            .expect("parse")
            .expect("whole");
        assert_eq!(head.response.status(), StatusCode::OK);
        assert_eq!(head.response.headers()["server"], "nginx");
        assert_eq!(
            head.response.headers().get_all("set-cookie").iter().count(),
            2
        );
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"ok\nNEXT", "the body is left in the buffer");
    }

    #[test]
    fn a_partial_head_waits_for_more_and_an_endless_one_is_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: ng"[..]);
        assert!(parse_head(&mut buf, &Method::GET).expect("parse").is_none());
        assert_eq!(buf.len(), 27, "nothing taken");
        let mut endless = BytesMut::from(&b"HTTP/1.1 200 OK\r\nx: "[..]);
        endless.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(matches!(
            parse_head(&mut endless, &Method::GET),
            Err(H1Error::HeadTooLarge)
        ));
        assert!(matches!(
            parsed("HTTP/1.1 2x0 OK\r\n\r\n", &Method::GET),
            Err(H1Error::Parse(_))
        ));
    }

    #[test]
    fn interim_answers_are_skipped_and_an_unasked_upgrade_is_refused() {
        let head = parsed(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            &Method::POST,
        )
        .expect("parse")
        .expect("whole");
        assert_eq!(head.response.status(), StatusCode::CREATED);
        assert!(!head.response.headers().contains_key("link"));
        assert!(matches!(
            parsed("HTTP/1.1 101 Switching Protocols\r\n\r\n", &Method::GET),
            Err(H1Error::Malformed(_))
        ));
    }

    #[test]
    fn the_body_framing_follows_rfc_9112() {
        let framing_of = |text: &str, method: &Method| {
            parsed(text, method).expect("parse").expect("whole").framing
        };
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
                &Method::HEAD
            ),
            Framing::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 204 No Content\r\n\r\n", &Method::GET),
            Framing::Empty
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\n\r\n", &Method::GET),
            Framing::Empty
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
                &Method::GET
            ),
            Framing::Chunked(Chunked::default())
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                &Method::GET
            ),
            Framing::UntilClose
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n", &Method::GET),
            Framing::UntilClose
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\n\r\n",
                &Method::GET
            ),
            Framing::Length(4)
        );
        for bad in ["4, 5", "-1", "0x10", "", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(
                matches!(parsed(&text, &Method::GET), Err(H1Error::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_connection_is_kept_only_for_http_1_1_without_close_and_with_a_known_end() {
        let kept = |text: &str| {
            parsed(text, &Method::GET)
                .expect("parse")
                .expect("whole")
                .keep_alive
        };
        assert!(kept("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!kept(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"
        ));
        assert!(!kept("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
        assert!(!kept("HTTP/1.1 200 OK\r\n\r\n"), "read until the close");
    }

    #[test]
    fn fields_about_the_connection_are_not_passed_on() {
        let head = parsed(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nServer: nginx\r\nTransfer-Encoding: chunked\r\nProxy-Connection: x\r\n\r\n",
            &Method::GET,
        )
        .expect("parse")
        .expect("whole");
        let names: Vec<&str> = head.response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server"], "the body's chunks are decoded here");
        assert_eq!(head.framing, Framing::Chunked(Chunked::default()));
        assert!(head.keep_alive);
    }

    #[test]
    fn a_response_framed_both_ways_is_chunked_without_its_length_and_ends_its_connection() {
        let head = parsed(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        )
        .expect("parse")
        .expect("whole");
        assert_eq!(head.framing, Framing::Chunked(Chunked::default()));
        assert!(!head.response.headers().contains_key("content-length"));
        assert!(!head.keep_alive);
    }
}
