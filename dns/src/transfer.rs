//! Zone transfers and change notification: AXFR, IXFR from a bounded history
//! of per-zone deltas (falling back to AXFR when the history does not reach
//! the client's serial), and NOTIFY messages to secondaries.

use std::collections::{HashMap, HashSet, VecDeque};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use crate::prepared::{Prepared, PreparedZone};

/// How many deltas are kept per zone for IXFR.
pub const HISTORY_DEPTH: usize = 64;
/// Records per transfer message.
const RECORDS_PER_MESSAGE: usize = 200;

/// What changed in one zone between two serials.
#[derive(Debug, Clone)]
pub struct Delta {
    /// SOA at the old serial.
    pub old_soa: Record,
    /// SOA at the new serial.
    pub new_soa: Record,
    /// Records removed.
    pub removed: Vec<Record>,
    /// Records added.
    pub added: Vec<Record>,
}

fn record_key(r: &Record) -> Vec<u8> {
    r.to_bytes().unwrap_or_default()
}

/// The non-SOA records of a zone, by wire bytes.
fn body(zone: &PreparedZone) -> HashMap<Vec<u8>, &Record> {
    zone.records
        .iter()
        .filter(|r| r.record_type() != RecordType::SOA)
        .map(|r| (record_key(r), r))
        .collect()
}

fn soa(zone: &PreparedZone) -> Option<Record> {
    zone.records
        .first()
        .filter(|r| r.record_type() == RecordType::SOA)
        .cloned()
}

fn serial_of(soa: &Record) -> Option<u32> {
    match &soa.data {
        hickory_proto::rr::RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}

/// Per-zone history of deltas, oldest first.
#[derive(Debug, Default)]
pub struct History {
    zones: HashMap<String, VecDeque<Delta>>,
}

impl History {
    /// Records the deltas from `old` to `new`.
    pub fn record(&mut self, old: &Prepared, new: &Prepared) {
        let old_zones: HashMap<&str, &PreparedZone> =
            old.zones.iter().map(|z| (z.origin.as_str(), z)).collect();
        let live: HashSet<&str> = new.zones.iter().map(|z| z.origin.as_str()).collect();
        self.zones
            .retain(|origin, _| live.contains(origin.as_str()));
        for zone in &new.zones {
            let (Some(old_zone), Some(new_soa)) = (old_zones.get(zone.origin.as_str()), soa(zone))
            else {
                self.zones.remove(&zone.origin);
                continue;
            };
            let Some(old_soa) = soa(old_zone) else {
                continue;
            };
            if serial_of(&old_soa) == serial_of(&new_soa) {
                continue;
            }
            let before = body(old_zone);
            let after = body(zone);
            let removed = before
                .iter()
                .filter(|(k, _)| !after.contains_key(*k))
                .map(|(_, r)| (*r).clone())
                .collect();
            let added = after
                .iter()
                .filter(|(k, _)| !before.contains_key(*k))
                .map(|(_, r)| (*r).clone())
                .collect();
            let deltas = self.zones.entry(zone.origin.clone()).or_default();
            deltas.push_back(Delta {
                old_soa,
                new_soa,
                removed,
                added,
            });
            while deltas.len() > HISTORY_DEPTH {
                deltas.pop_front();
            }
        }
    }

    /// The deltas that bring a secondary at `serial` up to date, if the history reaches back that far.
    pub fn since(&self, origin: &str, serial: u32) -> Option<Vec<Delta>> {
        let deltas = self.zones.get(origin)?;
        let start = deltas
            .iter()
            .position(|d| serial_of(&d.old_soa) == Some(serial))?;
        Some(deltas.iter().skip(start).cloned().collect())
    }
}

fn response(query_id: u16, question: &Query, answers: Vec<Record>) -> Result<Vec<u8>, String> {
    let mut msg = Message::new(query_id, MessageType::Response, OpCode::Query);
    msg.metadata.authoritative = true;
    msg.metadata.response_code = ResponseCode::NoError;
    msg.add_query(question.clone());
    msg.insert_answers(answers);
    msg.to_vec().map_err(|e| e.to_string())
}

fn chunked(query_id: u16, question: &Query, records: Vec<Record>) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut iter = records.into_iter().peekable();
    while iter.peek().is_some() {
        let chunk: Vec<Record> = iter.by_ref().take(RECORDS_PER_MESSAGE).collect();
        out.push(response(query_id, question, chunk)?);
    }
    Ok(out)
}

/// The messages of an AXFR of `zone` (SOA, records, SOA).
pub fn axfr(query_id: u16, question: &Query, zone: &PreparedZone) -> Result<Vec<Vec<u8>>, String> {
    chunked(query_id, question, zone.records.clone())
}

/// The messages answering an IXFR from `client_serial`: incremental when the
/// history reaches, a single SOA when the client is current, else an AXFR.
pub fn ixfr(
    query_id: u16,
    question: &Query,
    zone: &PreparedZone,
    history: &History,
    client_serial: u32,
) -> Result<Vec<Vec<u8>>, String> {
    let Some(current) = soa(zone) else {
        return axfr(query_id, question, zone);
    };
    if serial_of(&current) == Some(client_serial) {
        return Ok(vec![response(query_id, question, vec![current])?]);
    }
    match history.since(&zone.origin, client_serial) {
        Some(deltas)
            if deltas.last().and_then(|d| serial_of(&d.new_soa)) == serial_of(&current) =>
        {
            let mut records = vec![current.clone()];
            for d in deltas {
                records.push(d.old_soa);
                records.extend(d.removed);
                records.push(d.new_soa);
                records.extend(d.added);
            }
            records.push(current);
            chunked(query_id, question, records)
        }
        _ => axfr(query_id, question, zone),
    }
}

/// The client's serial from the SOA in an IXFR query's authority section.
pub fn ixfr_client_serial(query: &Message) -> Option<u32> {
    query.authorities.iter().find_map(serial_of)
}

/// A NOTIFY for `origin` at `serial` (RFC 1996).
pub fn notify_message(id: u16, origin: &str, soa: Option<&Record>) -> Result<Vec<u8>, String> {
    let mut name = Name::from_ascii(origin).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Notify);
    msg.metadata.authoritative = true;
    msg.add_query(Query::query(name, RecordType::SOA));
    if let Some(soa) = soa {
        msg.add_answer(soa.clone());
    }
    msg.to_vec().map_err(|e| e.to_string())
}

/// The current SOA record of a zone.
pub fn zone_soa(zone: &PreparedZone) -> Option<Record> {
    soa(zone)
}
