//! Small DNS wire-format helpers shared by rendering and the answer path:
//! lower-cased wire names, header field offsets, flags and the OPT record.

/// Header length.
pub const HEADER_LEN: usize = 12;
/// Largest UDP response we send (RFC 9715 / DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Responses without EDNS must fit in this.
pub const PLAIN_UDP_LIMIT: usize = 512;

/// QR flag (byte 2).
pub const FLAG_QR: u8 = 0x80;
/// AA flag (byte 2).
pub const FLAG_AA: u8 = 0x04;
/// TC flag (byte 2).
pub const FLAG_TC: u8 = 0x02;
/// RD flag (byte 2).
pub const FLAG_RD: u8 = 0x01;

/// Record types we serve or recognise.
pub mod rtype {
    /// A.
    pub const A: u16 = 1;
    /// NS.
    pub const NS: u16 = 2;
    /// SOA.
    pub const SOA: u16 = 6;
    /// TXT.
    pub const TXT: u16 = 16;
    /// AAAA.
    pub const AAAA: u16 = 28;
    /// SRV.
    pub const SRV: u16 = 33;
    /// OPT.
    pub const OPT: u16 = 41;
    /// IXFR.
    pub const IXFR: u16 = 251;
    /// AXFR.
    pub const AXFR: u16 = 252;
    /// ANY.
    pub const ANY: u16 = 255;
}

/// Response codes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// Format error.
    pub const FORMERR: u8 = 1;
    /// Server failure.
    pub const SERVFAIL: u8 = 2;
    /// Name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented.
    pub const NOTIMP: u8 = 4;
    /// Refused.
    pub const REFUSED: u8 = 5;
    /// Not authoritative for the zone (used for transfers of unknown zones).
    pub const NOTAUTH_OR_REFUSED: u8 = 9;
}

/// Lower-cased wire form of a dotted name (`web.Example.com` → `\x03web\x07example\x03com\x00`).
/// `None` if a label is empty or longer than 63 bytes, or the name longer than 255.
pub fn wire_name(dotted: &str) -> Option<Vec<u8>> {
    let trimmed = dotted.strip_suffix('.').unwrap_or(dotted);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            let len = u8::try_from(label.len())
                .ok()
                .filter(|l| (1..=63).contains(l))?;
            out.push(len);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// The suffixes of a wire name, longest first, each itself a wire name
/// (`\x03web\x03acme\x03com\x00`, `\x04acme\x03com\x00`, `\x03com\x00`, `\x00`).
pub fn suffixes(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = wire.get(pos..)?;
        let len = usize::from(*rest.first()?);
        pos = if len == 0 {
            wire.len() + 1
        } else {
            pos + 1 + len
        };
        Some(rest)
    })
}

/// An OPT pseudo-record advertising `payload` bytes, no options.
pub fn opt_record(payload: u16, extended_rcode: u8) -> [u8; 11] {
    let [p0, p1] = payload.to_be_bytes();
    [0, 0, 41, p0, p1, extended_rcode, 0, 0, 0, 0, 0]
}

/// Reads a big-endian u16 at `at`.
pub fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// Writes a big-endian u16 at `at` (which must be in bounds).
pub fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    if let Some(slot) = buf.get_mut(at..at + 2) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names() {
        assert_eq!(
            wire_name("Web.A.com").expect("valid"),
            b"\x03web\x01a\x03com\x00"
        );
        assert_eq!(wire_name("a.com.").expect("valid"), b"\x01a\x03com\x00");
        assert_eq!(wire_name("").expect("root"), b"\x00");
        assert!(wire_name("a..com").is_none());
        assert!(wire_name(&"a".repeat(64)).is_none());
        let long = vec!["abcdefghij"; 30].join(".");
        assert!(wire_name(&long).is_none());
    }

    #[test]
    fn name_suffixes() {
        let w = wire_name("web.a.com").expect("valid");
        let s: Vec<&[u8]> = suffixes(&w).collect();
        assert_eq!(
            s,
            vec![
                &b"\x03web\x01a\x03com\x00"[..],
                b"\x01a\x03com\x00",
                b"\x03com\x00",
                b"\x00"
            ]
        );
    }
}
