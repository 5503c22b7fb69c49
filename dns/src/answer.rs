//! The query path: parse a query with bounds checks, pick the view, copy the
//! prepared answer and patch ID, flags and the question's case; or assemble a
//! negative answer from the question and the zone's SOA. No allocation beyond
//! the output buffer, which callers reuse.

use std::net::IpAddr;

use crate::prepared::{EXTERNAL_VIEW, Prepared, make_key};
use crate::wire::{self, FLAG_AA, FLAG_QR, FLAG_RD, FLAG_TC, HEADER_LEN, rcode, rtype};

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: responses are size-limited and may be truncated.
    Udp,
    /// TCP: no size limit below 64 KiB.
    Tcp,
}

/// A parsed question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower-cased wire name.
    pub name: [u8; 256],
    /// Length of `name`.
    pub name_len: usize,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// Offset just past the question in the query.
    pub end: usize,
}

impl Question {
    /// The lower-cased wire name.
    pub fn wire_name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }
}

/// EDNS information from the query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size (at least 512).
    pub payload: u16,
    /// EDNS version.
    pub version: u8,
    /// Address from an EDNS Client Subnet option, if present.
    pub client_subnet: Option<IpAddr>,
}

/// What happened, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Query type (0 if unparseable).
    pub qtype: u16,
    /// Response code sent (or 255 when nothing was sent).
    pub rcode: u8,
    /// True if the UDP answer was truncated.
    pub truncated: bool,
}

/// Parses the question at offset 12.
pub fn parse_question(query: &[u8]) -> Option<Question> {
    let mut name = [0u8; 256];
    let mut pos = HEADER_LEN;
    let mut len = 0usize;
    loop {
        let label = usize::from(*query.get(pos)?);
        if label & 0xC0 != 0 {
            return None; // compression or extended labels are not valid in a question
        }
        if len + label + 1 > 255 {
            return None;
        }
        name[len] = label as u8;
        len += 1;
        pos += 1;
        if label == 0 {
            break;
        }
        let bytes = query.get(pos..pos + label)?;
        for (dst, b) in name[len..len + label].iter_mut().zip(bytes) {
            *dst = b.to_ascii_lowercase();
        }
        len += label;
        pos += label;
    }
    let qtype = wire::read_u16(query, pos)?;
    let qclass = wire::read_u16(query, pos + 2)?;
    Some(Question {
        name,
        name_len: len,
        qtype,
        qclass,
        end: pos + 4,
    })
}

/// Skips a (possibly compressed) name starting at `pos`; returns the offset after it.
fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..128 {
        let b = *msg.get(pos)?;
        match b & 0xC0 {
            0xC0 => return Some(pos + 2).filter(|p| *p <= msg.len()),
            0x00 if b == 0 => return Some(pos + 1),
            0x00 => pos += 1 + usize::from(b),
            _ => return None,
        }
    }
    None
}

/// A query whose record sections don't parse (answered with FORMERR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Finds the OPT record in the additional section.
pub fn parse_edns(query: &[u8], question_end: usize) -> Result<Option<Edns>, Malformed> {
    let count = |at| wire::read_u16(query, at).map(usize::from).ok_or(Malformed);
    let records = count(6)? + count(8)? + count(10)?;
    let mut pos = question_end;
    let mut edns = None;
    for _ in 0..records {
        pos = skip_name(query, pos).ok_or(Malformed)?;
        let rtype = wire::read_u16(query, pos).ok_or(Malformed)?;
        let class = wire::read_u16(query, pos + 2).ok_or(Malformed)?;
        let ttl_hi = query.get(pos + 5).copied().ok_or(Malformed)?;
        let rdlen = usize::from(wire::read_u16(query, pos + 8).ok_or(Malformed)?);
        let rdata = query.get(pos + 10..pos + 10 + rdlen).ok_or(Malformed)?;
        if rtype == rtype::OPT {
            if edns.is_some() {
                return Err(Malformed); // more than one OPT: FORMERR (RFC 6891)
            }
            edns = Some(Edns {
                payload: class.max(512),
                version: ttl_hi,
                client_subnet: parse_client_subnet(rdata),
            });
        }
        pos += 10 + rdlen;
    }
    Ok(edns)
}

/// The address of an EDNS Client Subnet option (RFC 7871), if present and well-formed.
fn parse_client_subnet(mut options: &[u8]) -> Option<IpAddr> {
    while options.len() >= 4 {
        let code = u16::from_be_bytes([options[0], options[1]]);
        let len = usize::from(u16::from_be_bytes([options[2], options[3]]));
        let data = options.get(4..4 + len)?;
        if code == 8 && data.len() >= 4 {
            let family = u16::from_be_bytes([data[0], data[1]]);
            let addr = &data[4..];
            return match family {
                1 if addr.len() <= 4 => {
                    let mut b = [0u8; 4];
                    b[..addr.len()].copy_from_slice(addr);
                    Some(IpAddr::from(b))
                }
                2 if addr.len() <= 16 => {
                    let mut b = [0u8; 16];
                    b[..addr.len()].copy_from_slice(addr);
                    Some(IpAddr::from(b))
                }
                _ => None,
            };
        }
        options = &options[4 + len..];
    }
    None
}

/// Writes a response header: the query's ID and RD and opcode, QR and `flags` set, `rcode`.
fn write_header(out: &mut Vec<u8>, query: &[u8], flags: u8, rcode: u8, counts: [u16; 4]) {
    let opcode_rd = query.get(2).copied().unwrap_or(0) & (0x78 | FLAG_RD);
    out.extend_from_slice(query.get(0..2).unwrap_or(&[0, 0]));
    out.push(FLAG_QR | opcode_rd | flags);
    out.push(rcode & 0x0F);
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// An error response: header and (if parseable) the question.
fn error_response(
    out: &mut Vec<u8>,
    query: &[u8],
    question_end: Option<usize>,
    rcode: u8,
    edns: Option<Edns>,
) {
    out.clear();
    let qd = u16::from(question_end.is_some());
    write_header(out, query, 0, rcode, [qd, 0, 0, 0]);
    if let Some(end) = question_end {
        out.extend_from_slice(&query[HEADER_LEN..end]);
    }
    append_opt(out, edns, 0);
}

fn append_opt(out: &mut Vec<u8>, edns: Option<Edns>, extended_rcode: u8) {
    if edns.is_some() && out.len() >= HEADER_LEN {
        out.extend_from_slice(&wire::opt_record(wire::MAX_UDP_PAYLOAD, extended_rcode));
        let ar = wire::read_u16(out, 10).unwrap_or(0).saturating_add(1);
        wire::write_u16(out, 10, ar);
    }
}

/// Who asked, as far as the answer depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The query's source address: it picks the view.
    pub source: IpAddr,
    /// Whether the source is a trusted resolver, whose EDNS Client Subnet
    /// option picks the view instead.
    pub trusted_subnet: bool,
    /// UDP or TCP.
    pub transport: Transport,
}

/// Answers `query` from `prepared` into `out` (cleared first). `view` forces a
/// view (gns-dns `--cluster`); otherwise it comes from the client subnet option
/// (from a trusted resolver only) or the source address. An empty `out`
/// means: send nothing.
pub fn answer(
    prepared: &Prepared,
    query: &[u8],
    client: Client,
    view: Option<u16>,
    out: &mut Vec<u8>,
) -> Outcome {
    let Client {
        source,
        trusted_subnet,
        transport,
    } = client;
    out.clear();
    let mut outcome = Outcome {
        qtype: 0,
        rcode: 255,
        truncated: false,
    };
    // Too short to answer, or a response: drop silently.
    if query.len() < HEADER_LEN || query[2] & FLAG_QR != 0 {
        return outcome;
    }
    let opcode = (query[2] >> 3) & 0x0F;
    let qdcount = wire::read_u16(query, 4).unwrap_or(0);
    let question = if qdcount == 1 {
        parse_question(query)
    } else {
        None
    };
    let Some(question) = question else {
        error_response(out, query, None, rcode::FORMERR, None);
        outcome.rcode = rcode::FORMERR;
        return outcome;
    };
    outcome.qtype = question.qtype;
    let Ok(edns) = parse_edns(query, question.end) else {
        error_response(out, query, Some(question.end), rcode::FORMERR, None);
        outcome.rcode = rcode::FORMERR;
        return outcome;
    };
    if edns.is_some_and(|e| e.version != 0) {
        // BADVERS: extended rcode 16 = upper bits 1, lower 0.
        out.clear();
        write_header(out, query, 0, 0, [1, 0, 0, 0]);
        out.extend_from_slice(&query[HEADER_LEN..question.end]);
        append_opt(out, edns, 1);
        outcome.rcode = 16;
        return outcome;
    }
    let refuse = |out: &mut Vec<u8>, code: u8| {
        error_response(out, query, Some(question.end), code, edns);
        code
    };
    if opcode != 0 {
        outcome.rcode = refuse(out, rcode::NOTIMP);
        return outcome;
    }
    if question.qclass != 1 {
        outcome.rcode = refuse(out, rcode::REFUSED);
        return outcome;
    }
    let name = question.wire_name();
    let Some(zone_id) = prepared.find_zone(name) else {
        outcome.rcode = refuse(out, rcode::REFUSED);
        return outcome;
    };
    let Some(zone) = prepared.zones.get(zone_id as usize) else {
        outcome.rcode = refuse(out, rcode::SERVFAIL);
        return outcome;
    };
    if matches!(question.qtype, rtype::AXFR | rtype::IXFR) && transport == Transport::Udp {
        // Zone transfers need TCP; for IXFR over UDP, the SOA tells the client to use it.
        outcome.rcode = refuse(
            out,
            if question.qtype == rtype::IXFR {
                rcode::NOERROR
            } else {
                rcode::FORMERR
            },
        );
        if question.qtype == rtype::IXFR {
            out.clear();
            write_header(out, query, FLAG_AA, rcode::NOERROR, [1, 1, 0, 0]);
            out.extend_from_slice(&query[HEADER_LEN..question.end]);
            out.extend_from_slice(&zone.negative_soa);
            append_opt(out, edns, 0);
        }
        return outcome;
    }

    // EDNS Client Subnet chooses the view only from a trusted resolver.
    let subnet = edns
        .and_then(|e| e.client_subnet)
        .filter(|_| trusted_subnet);
    let view = view.unwrap_or_else(|| prepared.view_for(subnet.unwrap_or(source)));
    let qtype = if question.qtype == rtype::ANY {
        rtype::A
    } else {
        question.qtype
    };
    let mut key_buf = [0u8; 260];
    let mut found = None;
    if view != EXTERNAL_VIEW {
        found = prepared.lookup(make_key(&mut key_buf, view, qtype, name));
    }
    if found.is_none() {
        found = prepared.lookup(make_key(&mut key_buf, EXTERNAL_VIEW, qtype, name));
    }
    match found.filter(|bytes| bytes.len() > HEADER_LEN) {
        Some(bytes) => {
            out.extend_from_slice(bytes);
            out[0] = query[0];
            out[1] = query[1];
            out[2] |= query[2] & FLAG_RD;
            // Echo the question exactly as asked (case, and type for ANY).
            if out.len() >= question.end {
                out[HEADER_LEN..question.end].copy_from_slice(&query[HEADER_LEN..question.end]);
            }
            outcome.rcode = rcode::NOERROR;
        }
        None => {
            let code = if prepared.name_zone(name).is_some() {
                rcode::NOERROR
            } else {
                rcode::NXDOMAIN
            };
            write_header(out, query, FLAG_AA, code, [1, 0, 1, 0]);
            out.extend_from_slice(&query[HEADER_LEN..question.end]);
            out.extend_from_slice(&zone.negative_soa);
            outcome.rcode = code;
        }
    }
    append_opt(out, edns, 0);
    if transport == Transport::Udp {
        let limit = edns.map_or(wire::PLAIN_UDP_LIMIT, |e| {
            usize::from(e.payload.min(wire::MAX_UDP_PAYLOAD))
        });
        if out.len() > limit {
            out.clear();
            write_header(out, query, FLAG_AA | FLAG_TC, outcome.rcode, [1, 0, 0, 0]);
            out.extend_from_slice(&query[HEADER_LEN..question.end]);
            append_opt(out, edns, 0);
            outcome.truncated = true;
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_parse_with_bounds() {
        let mut q = vec![0u8; 12];
        q[5] = 1;
        q.extend_from_slice(b"\x03WeB\x01a\x03com\x00\x00\x01\x00\x01");
        let parsed = parse_question(&q).expect("parses");
        assert_eq!(parsed.wire_name(), b"\x03web\x01a\x03com\x00");
        assert_eq!((parsed.qtype, parsed.qclass, parsed.end), (1, 1, q.len()));
        for cut in 12..q.len() {
            assert!(parse_question(&q[..cut]).is_none(), "truncated at {cut}");
        }
        let mut pointer = q.clone();
        pointer[12] = 0xC0;
        assert!(parse_question(&pointer).is_none());
    }

    #[test]
    fn client_subnet_option() {
        // family 1, source /24, scope 0, 3 address bytes
        let opt = [0, 8, 0, 7, 0, 1, 24, 0, 10, 8, 1];
        assert_eq!(parse_client_subnet(&opt), Some(IpAddr::from([10, 8, 1, 0])));
        assert_eq!(parse_client_subnet(&opt[..6]), None);
    }
}
