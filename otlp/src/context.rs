//! The W3C trace context (<https://www.w3.org/TR/trace-context/>): a
//! request's `traceparent` (`00-<trace id>-<parent span id>-<flags>`) read,
//! or a new one made; each hop names its own span as the parent of the next.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (passed on as it came).
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Where a hop stands in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The caller's span (all zero when this hop starts the trace).
    pub parent_span_id: [u8; 8],
    /// This hop's span.
    pub span_id: [u8; 8],
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
}

impl TraceContext {
    /// The context of a request with `headers`: its `traceparent` continued
    /// (a new span of the same trace, the caller's span its parent), or,
    /// when it has none or a malformed one, a new trace sampled with
    /// probability `ratio`.
    pub fn of(headers: &HeaderMap, ratio: f64) -> Self {
        let span_id = random_span_id();
        match headers
            .get(&TRACEPARENT)
            .and_then(|v| parse_bytes(v.as_bytes()))
        {
            Some((trace_id, parent_span_id, sampled)) => Self {
                trace_id,
                parent_span_id,
                span_id,
                sampled,
            },
            None => Self {
                trace_id: random_trace_id(),
                parent_span_id: [0; 8],
                span_id,
                sampled: ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio),
            },
        }
    }

    /// The `traceparent` this hop passes on: this hop's span is the parent.
    /// Written into a buffer on the stack (every request passes one on).
    pub fn header(&self) -> HeaderValue {
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut text[3..35]);
        text[35] = b'-';
        hex_into(&self.span_id, &mut text[36..52]);
        text[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        // Lower-case hex and dashes only: always a valid header value.
        let mut value =
            HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("00"));
        // Never indexed by HPACK: a value new with every request would only
        // churn the peer connection's header table (and every later lookup
        // of the name would compare against each copy in it).
        value.set_sensitive(true);
        value
    }

    /// Sets this hop's `traceparent` on the headers of the request it sends
    /// on (`tracestate`, if any, stays as it came).
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.header());
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// A sampling ratio (`--otlp-sample-ratio`) that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a ratio from 0 to 1 (e.g. 0.01 for 1 %)")]
pub struct RatioError(pub String);

/// A sampling ratio: a number from 0 to 1.
pub fn parse_ratio(text: &str) -> Result<f64, RatioError> {
    match text.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(RatioError(text.to_owned())),
    }
}

/// `(trace id, parent span id, sampled)` of a `traceparent` value, if it is
/// one: version `00` (exactly 55 characters), or a later version read the
/// same way (more fields may follow a dash); lower-case hex, non-zero ids.
/// Read at fixed offsets: every request through a gateway has its
/// `traceparent` read.
pub fn parse(value: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    parse_bytes(value.as_bytes())
}

/// [`parse`] of a header value's bytes (checked here: hex and dashes only).
fn parse_bytes(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let text = value.trim_ascii();
    if text.len() < 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let version: [u8; 1] = unhex(&text[..2])?;
    let later_fields = text.len() > 55;
    if version[0] == 0xff || (later_fields && (version[0] == 0 || text[55] != b'-')) {
        return None;
    }
    let trace_id: [u8; 16] = unhex(&text[3..35])?;
    let parent_span_id: [u8; 8] = unhex(&text[36..52])?;
    let flags: [u8; 1] = unhex(&text[53..55])?;
    if trace_id == [0; 16] || parent_span_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_span_id, flags[0] & 1 == 1))
}

/// Never zero: zero means "no trace".
fn random_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The bytes of lower-case hex `text` of exactly `N` bytes.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    // Looked up, and checked once at the end: no branch per digit.
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (high, low) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
        bad |= high | low;
        *byte = high << 4 | low;
    }
    (bad & NOT_HEX == 0).then_some(out)
}

/// Marks a byte that is not a lower-case hex digit in [`HEX`].
const NOT_HEX: u8 = 0x80;

/// The value of each lower-case hex digit; [`NOT_HEX`] for every other byte.
static HEX: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_is_continued_with_a_new_span_of_the_same_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let ctx = TraceContext::of(&headers, 0.0);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&ctx.parent_span_id), "00f067aa0ba902b7");
        assert!(
            ctx.sampled,
            "the caller's sampled flag is kept, whatever the ratio"
        );
        assert_ne!(ctx.span_id, ctx.parent_span_id);
        let passed = ctx.header();
        let passed = passed.to_str().expect("text");
        assert!(passed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(
            &passed[36..52],
            hex(&ctx.span_id),
            "this hop is the next parent"
        );
        assert!(passed.ends_with("-01"));
        assert!(
            ctx.header().is_sensitive(),
            "a value new per request is never indexed by HPACK"
        );
    }

    #[test]
    fn sampling_ratios_are_numbers_from_0_to_1() {
        assert_eq!(parse_ratio("0.01"), Ok(0.01));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert_eq!(parse_ratio("0"), Ok(0.0));
        for bad in ["1.5", "-0.1", "1%", "", "NaN"] {
            let e = parse_ratio(bad).expect_err(bad);
            assert!(e.to_string().contains("from 0 to 1"), "{e}");
        }
    }

    #[test]
    fn without_a_valid_traceparent_a_trace_starts_sampled_by_ratio() {
        let none = HeaderMap::new();
        let started = TraceContext::of(&none, 1.0);
        assert!(started.sampled);
        assert_eq!(started.parent_span_id, [0; 8]);
        assert_ne!(started.trace_id, [0; 16]);
        assert!(!TraceContext::of(&none, 0.0).sampled);
        let sampled = (0..10_000)
            .filter(|_| TraceContext::of(&none, 0.01).sampled)
            .count();
        assert!(
            (40..=200).contains(&sampled),
            "about 1 % of 10,000: {sampled}"
        );
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later").is_some());
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00later",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(
            parse(&format!(" {PARENT} ")).map(|(_, _, sampled)| sampled),
            Some(true),
            "spaces around the value are not part of it"
        );
    }
}
