//! Chunked transfer coding (RFC 9112 §7.1), decoded strictly: it frames
//! request bodies from clients as well as response bodies from endpoints,
//! so any leniency here is a way to make two parties disagree about where
//! a message ends. A size line is hex digits, optional extensions of
//! visible characters, and CRLF; the trailer section ends with CRLF too;
//! extensions together may take at most [`MAX_EXTENSIONS`] bytes of a body
//! (one-byte chunks with long extensions would cost work per byte).

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::h1::{H1Error, MAX_FIELDS, MAX_HEAD};

/// The longest chunk-size line (with extensions) read before refusing it.
const MAX_CHUNK_LINE: usize = 4096;
/// What chunk extensions may take, together, in one body.
pub(crate) const MAX_EXTENSIONS: usize = 16 * 1024;

/// Where a chunked body's decoding stands.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Chunked {
    at: At,
    /// Bytes of chunk extensions read so far.
    extensions: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum At {
    /// At a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// At the trailer section after the last chunk.
    Trailer,
    /// Past the end.
    Done,
}

/// What decoding a chunked body gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Some of the body.
    Data(Bytes),
    /// The trailer fields (the body has ended).
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More must be read first.
    More,
}

impl Chunked {
    /// Whether the body has ended.
    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.at == At::Done
    }

    /// Decodes from the start of `buf`, taking out what it used.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.at {
                At::Size => {
                    let Some(line) = size_line(buf)? else {
                        return Ok(Decoded::More);
                    };
                    self.extensions += line.extensions;
                    if self.extensions > MAX_EXTENSIONS {
                        return Err(H1Error::Malformed("chunk extensions over 16 KiB"));
                    }
                    buf.advance(line.len);
                    self.at = if line.size == 0 {
                        At::Trailer
                    } else {
                        At::Data(line.size)
                    };
                }
                At::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.at = if left == 0 {
                        At::DataEnd
                    } else {
                        At::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                At::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Malformed("a chunk's end"));
                    }
                    buf.advance(2);
                    self.at = At::Size;
                }
                At::Trailer => {
                    let Some((used, trailers)) = trailer_section(buf)? else {
                        return Ok(Decoded::More);
                    };
                    buf.advance(used);
                    self.at = At::Done;
                    return Ok(if trailers.is_empty() {
                        Decoded::End
                    } else {
                        Decoded::Trailers(trailers)
                    });
                }
                At::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// A whole chunk-size line.
struct SizeLine {
    /// Its length with its CRLF.
    len: usize,
    size: u64,
    /// Bytes of its extensions.
    extensions: usize,
}

/// The chunk-size line at the start of `buf`, if whole: `1*HEXDIG`, then
/// extensions of visible characters, spaces and tabs, then CRLF.
fn size_line(buf: &[u8]) -> Result<Option<SizeLine>, H1Error> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 16 {
        return Err(H1Error::Malformed("a chunk size over 64 bits"));
    }
    if digits == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err(H1Error::Malformed("a chunk size"));
    }
    let size = buf[..digits]
        .iter()
        .fold(0u64, |n, &b| (n << 4) | u64::from(hex_value(b)));
    let rest = &buf[digits..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() > MAX_CHUNK_LINE {
            return Err(H1Error::Malformed("a chunk-size line over 4 KiB"));
        }
        return Ok(None);
    };
    let extensions = &rest[..cr];
    // Extensions begin with `;` (after optional whitespace) and hold
    // visible characters, spaces and tabs only.
    let begun = extensions.trim_ascii_start();
    if !begun.is_empty() && begun[0] != b';'
        || extensions
            .iter()
            .any(|&b| !(b == b' ' || b == b'\t' || b.is_ascii_graphic()))
    {
        return Err(H1Error::Malformed("a chunk extension"));
    }
    match rest.get(cr..cr + 2) {
        Some(b"\r\n") => Ok(Some(SizeLine {
            len: digits + cr + 2,
            size,
            extensions: extensions.len(),
        })),
        // A bare CR or LF.
        Some(_) => Err(H1Error::Malformed("a chunk-size line end")),
        None if rest[cr] == b'\r' => Ok(None),
        None => Err(H1Error::Malformed("a chunk-size line end")),
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The trailer section at the start of `buf`, if whole (lines end with
/// CRLF only): its length and fields.
fn trailer_section(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, H1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let (used, fields) = match httparse::parse_headers(buf, &mut fields)? {
        httparse::Status::Complete(whole) => whole,
        httparse::Status::Partial if buf.len() <= MAX_HEAD => return Ok(None),
        httparse::Status::Partial => return Err(H1Error::HeadTooLarge),
    };
    let section = &buf[..used];
    let bare_lf = section
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'));
    if bare_lf {
        return Err(H1Error::Malformed("a trailer line end"));
    }
    let mut trailers = HeaderMap::new();
    for field in fields.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| H1Error::Malformed("a trailer name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| H1Error::Malformed("a trailer value"))?;
        trailers.append(name, value);
    }
    Ok(Some((used, trailers)))
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    #[test]
    fn a_chunked_body_decodes_piece_by_piece_with_its_trailers() {
        let wire = b"4;ext=1\r\nRust\r\n6\r\n rocks\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT";
        // Fed one byte at a time: every split point is crossed.
        let mut chunked = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        for &b in wire.iter() {
            buf.put_u8(b);
            loop {
                match chunked.decode(&mut buf).expect("decode") {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::Trailers(t) => trailers = Some(t),
                    Decoded::End | Decoded::More => break,
                }
            }
            if chunked.is_done() {
                break;
            }
        }
        assert_eq!(body, b"Rust rocks");
        assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        assert_eq!(chunked.decode(&mut buf).expect("decode"), Decoded::End);
        assert!(buf.is_empty(), "the byte after the end is not read");
        let mut whole = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nNEXT"[..]);
        let mut chunked = Chunked::default();
        assert_eq!(
            chunked.decode(&mut whole).expect("decode"),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(chunked.decode(&mut whole).expect("decode"), Decoded::End);
        assert_eq!(&whole[..], b"NEXT", "the next response is left");
    }

    #[test]
    fn a_broken_chunked_body_is_refused() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", b"11111111111111111\r\n"] {
            let mut buf = BytesMut::from(bad);
            let mut chunked = Chunked::default();
            let outcome = (0..4).try_for_each(|_| chunked.decode(&mut buf).map(drop));
            assert!(outcome.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lenient_chunk_framing_that_could_smuggle_is_refused() {
        for bad in [
            &b"\r\n\r\n"[..],
            b";x\r\n\r\n",
            b"3;a\nxyz\r\n0\r\n\r\n",
            b"3\nxyz\r\n0\r\n\r\n",
            b"3 x\r\nxyz\r\n",
            b"3;\x01\r\nxyz\r\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            let mut chunked = Chunked::default();
            let outcome = (0..4).try_for_each(|_| chunked.decode(&mut buf).map(drop));
            assert!(outcome.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Whitespace before an extension is allowed (RFC 9112 §7.1.1).
        let mut fine = BytesMut::from(&b"3 ;a=\"b c\"\r\nxyz\r\n0\r\n\r\n"[..]);
        let mut chunked = Chunked::default();
        assert_eq!(
            chunked.decode(&mut fine).expect("decode"),
            Decoded::Data(Bytes::from_static(b"xyz"))
        );
        assert_eq!(chunked.decode(&mut fine).expect("decode"), Decoded::End);
    }

    #[test]
    fn chunk_extensions_are_bounded_per_body() {
        let line = format!("1;{}\r\nx\r\n", "e".repeat(1000));
        let mut buf = BytesMut::from(line.repeat(20).as_str());
        let mut chunked = Chunked::default();
        let mut data = 0;
        let refused = loop {
            match chunked.decode(&mut buf) {
                Ok(Decoded::Data(d)) => data += d.len(),
                Ok(other) => panic!("{other:?} before the budget was spent"),
                Err(e) => break e,
            }
        };
        assert!(refused.to_string().contains("16 KiB"), "{refused}");
        assert_eq!(data, 16, "16 chunks fit in the budget");
    }
}
