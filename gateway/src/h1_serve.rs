//! HTTP/1.1 from clients, as bytes: a request's head parsed (with what it
//! says about its body, its connection and `Expect: 100-continue`), and a
//! response's head written with the framing its body needs. No I/O here:
//! [`crate::downstream`] owns the client connections and feeds these
//! functions what it reads.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version, header};

use crate::h1::{Framing, MAX_FIELDS, MAX_HEAD, Sending, Span};

/// Why a client's request head was refused (the variant is the answer).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    /// Not an HTTP/1.x request head (answered 400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head did not end within [`MAX_HEAD`] bytes (answered 431).
    #[error("the request head is over {MAX_HEAD} bytes")]
    TooLarge,
}

impl HeadError {
    /// The whole answer to a client whose request head was refused; the
    /// connection closes after it.
    pub(crate) fn answer(&self) -> &'static [u8] {
        match self {
            HeadError::Malformed(_) => {
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
            HeadError::TooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) request: Request<()>,
    /// How its body ends: [`Framing::Empty`], a length or chunked.
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub(crate) keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub(crate) expect_continue: bool,
}

/// Parses the request head at the start of `buf`, taking it out; `None`
/// when more must be read first.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut spans = [(0, 0, 0, 0); MAX_FIELDS];
    let Some(line) = parse_fields(buf, &mut spans)? else {
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        return Ok(None);
    };
    if line.len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let head = buf.split_to(line.len).freeze();
    let method = Method::from_bytes(&head[line.method.0..line.method.1])
        .map_err(|_| HeadError::Malformed("method"))?;
    let uri = Uri::from_maybe_shared(head.slice(line.target.0..line.target.1))
        .map_err(|_| HeadError::Malformed("request target"))?;
    let (mut headers, fields) = crate::h1::header_map(&head, &spans[..line.fields], true)
        .map_err(|_| HeadError::Malformed("a field"))?;
    // RFC 9112 §6.3: a transfer coding wins over a length, and such a
    // request closes its connection; chunked must be the last coding.
    let both = fields.transfer.is_some() && matches!(fields.length, Err(_) | Ok(Some(_)));
    let http11 = line.version == 1;
    if fields.transfer.is_some() && !http11 {
        // RFC 9112 §6.1: HTTP/1.0 has no transfer codings; a party that
        // reads this one by its length would see another request in it.
        return Err(HeadError::Malformed("transfer-encoding in HTTP/1.0"));
    }
    let framing = match (fields.transfer, fields.length) {
        (Some(true), _) => Framing::Chunked(crate::h1::Chunked::default()),
        (Some(false), _) => return Err(HeadError::Malformed("transfer-encoding")),
        (None, Ok(Some(0) | None)) => Framing::Empty,
        (None, Ok(Some(n))) => Framing::Length(n),
        (None, Err(what)) => return Err(HeadError::Malformed(what)),
    };
    if both {
        headers.remove(header::CONTENT_LENGTH);
    }
    let keep_alive = !both && !fields.close && (http11 || fields.keep_alive);
    let expect_continue = http11
        && !matches!(framing, Framing::Empty)
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    *request.headers_mut() = headers;
    Ok(Some(RequestHead {
        request,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// A whole head's request line, and how many fields it has.
struct RequestLine {
    /// The head's length, with its blank line.
    len: usize,
    /// Where the method and the request target are in the head.
    method: (usize, usize),
    target: (usize, usize),
    /// The minor version: HTTP/1.`version`.
    version: u8,
    fields: usize,
}

/// Parses the head at the start of `buf` if it is whole, its fields'
/// places written to `spans`.
fn parse_fields(
    buf: &[u8],
    spans: &mut [Span; MAX_FIELDS],
) -> Result<Option<RequestLine>, HeadError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("request head")),
    };
    let start = buf.as_ptr() as usize;
    let place = |s: &str| {
        let at = s.as_ptr() as usize - start;
        (at, at + s.len())
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(HeadError::Malformed("request line"));
    };
    crate::h1::note_spans(buf, request.headers, spans);
    Ok(Some(RequestLine {
        len,
        method: place(method),
        target: place(target),
        version: request.version.unwrap_or(1),
        fields: request.headers.len(),
    }))
}

/// How a response's body goes to a client: by `sending`, and whether the
/// connection stays open after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) sending: Sending,
    pub(crate) keep_alive: bool,
}

impl Reply {
    /// The framing of a response with `parts` and a body of `exact` length
    /// (`Some(0)` when it has ended), answering `method` from a client of
    /// `version` that `keep_alive` allows to keep its connection.
    pub(crate) fn of(
        parts: &http::response::Parts,
        exact: Option<u64>,
        method: &Method,
        version: Version,
        keep_alive: bool,
    ) -> Reply {
        let status = parts.status;
        let keep_alive = keep_alive && !closes(parts.headers.get(header::CONNECTION));
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Reply {
                sending: Sending::Nothing,
                keep_alive,
            };
        }
        let declared = || {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| crate::h1::parse_length(v.as_bytes()))
        };
        match exact.or_else(declared) {
            Some(n) => Reply {
                sending: Sending::Length(n),
                keep_alive,
            },
            None if version == Version::HTTP_11 => Reply {
                sending: Sending::Chunked,
                keep_alive,
            },
            None => Reply {
                sending: Sending::UntilClose,
                keep_alive: false,
            },
        }
    }
}

/// Whether a `connection` value says `close`.
fn closes(connection: Option<&HeaderValue>) -> bool {
    connection.is_some_and(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// Writes the head of a response framed as `reply` (its own framing
/// fields replaced; a `date` added when it has none) to a client of
/// `version`.
pub(crate) fn encode_response_head(
    parts: &http::response::Parts,
    reply: Reply,
    version: Version,
    out: &mut BytesMut,
) {
    out.reserve(64 + 40 * parts.headers.len());
    // An HTTP/1.0 client is answered in its version (as hyper did).
    out.put_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    // A body-less answer to HEAD, or a 304, keeps the length it declares;
    // a 1xx or 204 has none (RFC 9110 §8.6).
    let own_length = !matches!(reply.sending, Sending::Nothing)
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING
            || (own_length && name == header::CONTENT_LENGTH)
            || name == header::CONNECTION && parts.status != StatusCode::SWITCHING_PROTOCOLS
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.put_slice(b"date: ");
        DATE.with_borrow_mut(|date| out.put_slice(date.now()));
        out.put_slice(b"\r\n");
    }
    match reply.sending {
        Sending::Nothing | Sending::UntilClose => {}
        Sending::Length(n) => {
            // Writing to a BytesMut cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Sending::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        match (reply.keep_alive, version) {
            (false, _) => out.put_slice(b"connection: close\r\n"),
            (true, Version::HTTP_10) => out.put_slice(b"connection: keep-alive\r\n"),
            (true, _) => {}
        }
    }
    out.put_slice(b"\r\n");
}

/// The `Date` of responses, formatted once a second per thread.
struct CachedDate {
    /// The whole UNIX second `text` is of.
    second: u64,
    text: Bytes,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = Bytes::from(httpdate::fmt_http_date(now));
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate {
            second: 0,
            text: Bytes::new(),
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(text))
    }

    fn head(parts: http::response::Parts, reply: Reply, version: Version) -> String {
        let mut out = BytesMut::new();
        encode_response_head(&parts, reply, version, &mut out);
        String::from_utf8(out.to_vec()).expect("text")
    }

    fn response(status: u16, fields: &[(&str, &str)]) -> http::response::Parts {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("response").into_parts().0
    }

    #[test]
    fn a_request_head_keeps_its_fields_and_says_how_its_body_ends() {
        let mut buf = BytesMut::from(
            "POST /upload?x=1 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\nhelloGET",
        );
        let head = parse_request(&mut buf).expect("parsed").expect("whole");
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/upload?x=1");
        assert_eq!(head.request.headers()["host"], "web");
        // Connection fields stay: an upgrade needs them.
        assert_eq!(head.request.headers()["upgrade"], "echo");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert_eq!(&buf[..], b"helloGET", "the body and what follows stay");
    }

    #[test]
    fn a_partial_head_waits_and_an_endless_one_is_refused() {
        assert!(
            parse("GET / HTTP/1.1\r\nHost: w")
                .expect("partial")
                .is_none()
        );
        let endless = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(parse(&endless).expect_err("too large"), HeadError::TooLarge);
        let whole_but_large = format!("{endless}\r\n\r\n");
        assert_eq!(
            parse(&whole_but_large).expect_err("too large"),
            HeadError::TooLarge
        );
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).expect_err("too many"),
            HeadError::TooLarge
        );
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let framing = |fields: &str| {
            parse(&format!("POST / HTTP/1.1\r\n{fields}\r\n")).map(|h| {
                let h = h.expect("whole");
                (h.framing, h.keep_alive)
            })
        };
        assert_eq!(framing(""), Ok((Framing::Empty, true)));
        assert_eq!(framing("content-length: 0\r\n"), Ok((Framing::Empty, true)));
        assert_eq!(
            framing("content-length: 7\r\n"),
            Ok((Framing::Length(7), true))
        );
        assert_eq!(
            framing("transfer-encoding: gzip, chunked\r\n"),
            Ok((Framing::Chunked(Default::default()), true))
        );
        // Both: chunked wins, the length goes, the connection closes after.
        let both =
            parse("POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n")
                .expect("parsed")
                .expect("whole");
        assert!(matches!(both.framing, Framing::Chunked(_)));
        assert!(!both.keep_alive);
        assert!(!both.request.headers().contains_key("content-length"));
        for bad in [
            "transfer-encoding: chunked, gzip\r\n",
            "content-length: 1x\r\n",
            "content-length: 3\r\ncontent-length: 4\r\n",
        ] {
            assert!(
                matches!(framing(bad), Err(HeadError::Malformed(_))),
                "{bad:?} is refused"
            );
        }
        assert!(matches!(
            parse("GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        // No transfer coding in HTTP/1.0, even with keep-alive asked for.
        assert!(matches!(
            parse(
                "POST / HTTP/1.0\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn keep_alive_and_continue_depend_on_version_and_fields() {
        let whole = |text: &str| parse(text).expect("parsed").expect("whole");
        assert!(!whole("GET / HTTP/1.1\r\nconnection: close\r\n\r\n").keep_alive);
        assert!(!whole("GET / HTTP/1.0\r\n\r\n").keep_alive);
        let kept = whole("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        assert!(kept.keep_alive);
        assert_eq!(kept.request.version(), Version::HTTP_10);
        let expecting = "expect: 100-Continue\r\ncontent-length: 5\r\n\r\n";
        assert!(whole(&format!("PUT / HTTP/1.1\r\n{expecting}")).expect_continue);
        assert!(!whole(&format!("PUT / HTTP/1.0\r\n{expecting}")).expect_continue);
        assert!(!whole("GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn a_response_head_is_framed_for_its_body_and_its_client() {
        let get = Method::GET;
        let ok = || {
            response(
                200,
                &[("content-type", "text/plain"), ("content-length", "99")],
            )
        };
        let reply = Reply::of(&ok(), Some(5), &get, Version::HTTP_11, true);
        assert_eq!(reply.sending, Sending::Length(5), "the body's length wins");
        let text = head(ok(), reply, Version::HTTP_11);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: "));
        assert!(
            text.ends_with(" GMT\r\ncontent-length: 5\r\n\r\n"),
            "{text}"
        );

        let streamed = Reply::of(&response(200, &[]), None, &get, Version::HTTP_11, true);
        assert_eq!(streamed.sending, Sending::Chunked);
        let old = Reply::of(&response(200, &[]), None, &get, Version::HTTP_10, true);
        assert_eq!(
            old,
            Reply {
                sending: Sending::UntilClose,
                keep_alive: false
            }
        );
        let text = head(response(200, &[]), old, Version::HTTP_10);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        let kept_old = Reply::of(&response(200, &[]), Some(2), &get, Version::HTTP_10, true);
        assert!(
            head(response(200, &[]), kept_old, Version::HTTP_10)
                .contains("connection: keep-alive\r\n")
        );

        // HEAD and 304 keep the length they declare and send no body.
        let head_reply = Reply::of(&ok(), Some(0), &Method::HEAD, Version::HTTP_11, true);
        assert_eq!(head_reply.sending, Sending::Nothing);
        assert!(head(ok(), head_reply, Version::HTTP_11).contains("content-length: 99\r\n"));
        let no_content = response(204, &[("content-length", "0")]);
        let reply = Reply::of(&no_content, Some(0), &get, Version::HTTP_11, true);
        assert!(!head(no_content, reply, Version::HTTP_11).contains("content-length"));

        // A response saying close closes; a date it has is kept.
        let closing = response(502, &[("connection", "close"), ("date", "then")]);
        let reply = Reply::of(&closing, Some(0), &get, Version::HTTP_11, true);
        assert!(!reply.keep_alive);
        let text = head(closing, reply, Version::HTTP_11);
        assert!(
            text.starts_with("HTTP/1.1 502 Bad Gateway\r\ndate: then\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("connection").count(), 1, "{text}");

        // A switch of protocols keeps its connection fields.
        let switching = response(101, &[("connection", "upgrade"), ("upgrade", "echo")]);
        let reply = Reply::of(&switching, Some(0), &get, Version::HTTP_11, true);
        let text = head(switching, reply, Version::HTTP_11);
        assert!(
            text.contains("connection: upgrade\r\nupgrade: echo\r\n"),
            "{text}"
        );
        assert!(!text.contains("content-length"), "{text}");
    }
}
