//! gRPC callers: an answer the gateway makes itself (no route, no endpoint,
//! refused by policy, timed out) becomes a gRPC status, as a gRPC client
//! expects, instead of an HTTP error page: a "trailers-only" response
//! (`200`, `content-type: application/grpc`, `grpc-status` and
//! `grpc-message` in the only header block). Endpoints' own answers pass
//! untouched.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// The text of an answer the gateway made, kept beside its body.
#[derive(Debug, Clone)]
pub(crate) struct GatewayMessage(pub(crate) String);

/// Whether a request is a gRPC call (its content type is `application/grpc`
/// or `application/grpc+…`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

/// The gRPC status code of a gateway-made HTTP status: the mapping of the
/// gRPC HTTP/2 protocol notes, except that the gateway's own timeout is
/// `DEADLINE_EXCEEDED`.
pub(crate) fn code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        413 => 8,              // RESOURCE_EXHAUSTED
        504 => 4,              // DEADLINE_EXCEEDED
        429 | 502 | 503 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message` encoding: percent-encoding of every byte outside
/// printable ASCII, and of `%`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.trim_end().bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `resp` as a gRPC caller should get it: a gateway-made error (one
/// carrying `answered`, the header that marks the gateway's own answers)
/// turned into a trailers-only gRPC status; anything else unchanged.
pub(crate) fn answer<B: Default>(resp: Response<B>, answered: &http::HeaderName) -> Response<B> {
    if !resp.headers().contains_key(answered) || resp.status() == StatusCode::OK {
        return resp;
    }
    let status = code(resp.status());
    let message = resp
        .extensions()
        .get::<GatewayMessage>()
        .map(|m| m.0.clone())
        .unwrap_or_else(|| {
            resp.status()
                .canonical_reason()
                .unwrap_or("gateway error")
                .to_owned()
        });
    let mut grpc = Response::new(B::default());
    let headers = grpc.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(u16::from(status)));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", value);
    }
    headers.insert(answered.clone(), HeaderValue::from_static("1"));
    // Why, as the gateway's other answers say it.
    if let Some(reason) = resp.headers().get(&crate::refusal::REASON_HEADER) {
        headers.insert(crate::refusal::REASON_HEADER, reason.clone());
    }
    grpc
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWERED: http::HeaderName = http::HeaderName::from_static("x-gns-gateway");

    fn made(status: StatusCode, message: &str) -> Response<String> {
        let mut resp = Response::new(format!("{message}\n"));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(ANSWERED, HeaderValue::from_static("1"));
        resp.extensions_mut()
            .insert(GatewayMessage(message.to_owned()));
        resp
    }

    #[test]
    fn a_gateway_made_error_becomes_a_trailers_only_grpc_status() {
        let resp = answer(
            made(
                StatusCode::SERVICE_UNAVAILABLE,
                "web: no cluster has ready endpoints",
            ),
            &ANSWERED,
        );
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(
            resp.headers()["grpc-message"],
            "web: no cluster has ready endpoints"
        );
        assert!(resp.body().is_empty(), "no body: the status is all");
        let denied = answer(made(StatusCode::FORBIDDEN, "50% ünicode"), &ANSWERED);
        assert_eq!(denied.headers()["grpc-status"], "7");
        assert_eq!(denied.headers()["grpc-message"], "50%25 %C3%BCnicode");
        assert_eq!(
            answer(made(StatusCode::GATEWAY_TIMEOUT, "t"), &ANSWERED).headers()["grpc-status"],
            "4"
        );
    }

    #[test]
    fn an_endpoints_answer_passes_untouched() {
        let mut resp = Response::new("teapot".to_owned());
        *resp.status_mut() = StatusCode::IM_A_TEAPOT;
        let resp = answer(resp, &ANSWERED);
        assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(resp.body(), "teapot");
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let mut headers = HeaderMap::new();
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&headers), grpc, "{ct}");
        }
    }
}
