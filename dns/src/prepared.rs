//! Prepared answers: a [`ZoneSnapshot`] rendered to DNS wire format once, at
//! snapshot time, so the query path only looks up bytes and patches them.
//!
//! Keys are `(view, qtype, lower-cased wire name)` packed into one byte
//! string, so a lookup needs no allocation. Cluster views hold only the
//! answers that differ from the external view. Negative answers (NXDOMAIN,
//! NODATA) are assembled per query from the question and the zone's
//! prepared SOA record.
//!
//! An update costs what changed: when the frame (TTL, views, zones and their
//! name servers) is the same as the last snapshot's, the new answers start
//! as a copy of the last ones (copy-on-write shards, see `crate::shards`)
//! and only the services that differ (found by walking both name-sorted
//! service lists, comparing pointers first) are rendered and swapped in.
//! Otherwise everything is rendered again, reusing the last snapshot's bytes
//! for services that did not change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::services::{Change, Services};
use crate::shards::Shards;
use crate::snapshot::{MAX_ANSWER_TTL, Service, Zone, ZoneSnapshot};
use crate::wire::{self, rtype};

/// View id of the external view.
pub const EXTERNAL_VIEW: u16 = 0;
/// TTL of NS records and their glue.
const NS_TTL: u32 = 300;
/// SOA timers: refresh, retry, expire (for secondaries).
const SOA_REFRESH: i32 = 60;
const SOA_RETRY: i32 = 10;
const SOA_EXPIRE: i32 = 7 * 24 * 3600;

/// Something in the snapshot that could not be served; it was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderProblem {
    /// Zone origin.
    pub zone: String,
    /// What was skipped and why.
    pub message: String,
}

/// One zone's negative-answer material and transfer content.
#[derive(Debug)]
pub struct PreparedZone {
    /// Origin, dotted.
    pub origin: String,
    /// Lower-cased wire origin.
    pub wire: Vec<u8>,
    /// SOA RR (owner name uncompressed) with TTL min(SOA TTL, MINIMUM), for authority sections.
    pub negative_soa: Vec<u8>,
    /// Every record of the zone (external view), SOA first, for AXFR.
    pub records: Vec<Record>,
}

/// A packed lookup key and its prepared response.
type Entry = (Arc<[u8]>, Arc<[u8]>);
/// A record type, wire name and prepared response.
type Rendered = (u16, Vec<u8>, Arc<[u8]>);

/// One service as rendered: its answers and the names it makes exist
/// (with their ancestors below the apex), shared with the next render.
#[derive(Debug, Clone)]
struct RenderedService {
    service: Arc<Service>,
    entries: Arc<[Entry]>,
    names: Arc<[Arc<[u8]>]>,
}

/// Rendered services of one zone, kept for reuse by the next render (valid
/// while the TTL and the view ids stay the same: both are in the bytes).
/// Persistent, so the next render starts from a copy at no cost.
#[derive(Debug, Default, Clone)]
struct ServiceCache {
    ttl: u32,
    view_ids: FxHashMap<String, u16>,
    by_name: imbl::HashMap<String, RenderedService>,
}

/// A snapshot ready to answer from.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Snapshot version (SOA serial).
    pub version: u64,
    /// The snapshot itself (for transfers and persistence).
    pub snapshot: Arc<ZoneSnapshot>,
    answers: Shards<Arc<[u8]>>,
    /// Names that exist: their zone, and how many services (or the zone
    /// itself) make them exist.
    names: Shards<(u32, u32)>,
    /// Zones by index.
    pub zones: Vec<PreparedZone>,
    zone_index: FxHashMap<Box<[u8]>, u32>,
    networks: Vec<(IpNet, u16)>,
    view_ids: FxHashMap<String, u16>,
    caches: FxHashMap<String, ServiceCache>,
    /// Whether zones hold their records for AXFR/IXFR.
    transfers: bool,
    /// Answer TTL the services were rendered with.
    ttl: u32,
    /// What was left out.
    pub problems: Vec<RenderProblem>,
}

/// Builds the lookup key for `(view, qtype, wire name)` into `buf`.
pub fn make_key<'a>(buf: &'a mut [u8; 260], view: u16, qtype: u16, wire_name: &[u8]) -> &'a [u8] {
    buf[0..2].copy_from_slice(&view.to_be_bytes());
    buf[2..4].copy_from_slice(&qtype.to_be_bytes());
    let n = wire_name.len().min(256);
    buf[4..4 + n].copy_from_slice(&wire_name[..n]);
    &buf[..4 + n]
}

fn key(view: u16, qtype: u16, wire_name: &[u8]) -> Arc<[u8]> {
    let mut buf = [0u8; 260];
    make_key(&mut buf, view, qtype, wire_name).into()
}

fn fqdn(dotted: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(dotted).map_err(|e| format!("{dotted:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// Renders a positive authoritative response (ID 0) for `name`/`qtype`.
fn render_answer(
    name: &Name,
    qtype: RecordType,
    answers: Vec<Record>,
    additionals: Vec<Record>,
) -> Result<Arc<[u8]>, String> {
    let mut msg = Message::response(0, OpCode::Query);
    msg.metadata.authoritative = true;
    msg.metadata.response_code = ResponseCode::NoError;
    msg.add_query(Query::query(name.clone(), qtype));
    msg.insert_answers(answers);
    msg.insert_additionals(additionals);
    msg.to_vec().map(Arc::from).map_err(|e| e.to_string())
}

fn address_records(name: &Name, ttl: u32, addrs: &[IpAddr]) -> (Vec<Record>, Vec<Record>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for addr in addrs {
        match addr {
            IpAddr::V4(a) => v4.push(Record::from_rdata(name.clone(), ttl, RData::A(A(*a)))),
            IpAddr::V6(a) => v6.push(Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(*a)))),
        }
    }
    (v4, v6)
}

/// The prepared (wire name, response) pairs of one service in one view:
/// A, AAAA, TXT and one SRV per port. Empty record sets are not prepared (NODATA).
fn render_service_view(
    origin: &str,
    svc: &Service,
    addrs: &[IpAddr],
    ttl: u32,
    with_meta: bool,
) -> Result<Vec<Rendered>, String> {
    let dotted = format!("{}.{origin}", svc.name);
    let name = fqdn(&dotted)?;
    let wire = wire::wire_name(&dotted).ok_or_else(|| format!("name {dotted:?} is too long"))?;
    let mut out = Vec::new();
    let (v4, v6) = address_records(&name, ttl, addrs);
    if !v4.is_empty() {
        out.push((
            rtype::A,
            wire.clone(),
            render_answer(&name, RecordType::A, v4.clone(), vec![])?,
        ));
    }
    if !v6.is_empty() {
        out.push((
            rtype::AAAA,
            wire.clone(),
            render_answer(&name, RecordType::AAAA, v6.clone(), vec![])?,
        ));
    }
    if with_meta && !svc.txt.is_empty() {
        let txt = Record::from_rdata(name.clone(), ttl, RData::TXT(TXT::new(svc.txt.clone())));
        out.push((
            rtype::TXT,
            wire.clone(),
            render_answer(&name, RecordType::TXT, vec![txt], vec![])?,
        ));
    }
    for port in &svc.ports {
        let srv_dotted = format!("_{}._{}.{dotted}", port.name, port.protocol.label());
        let srv_name = fqdn(&srv_dotted)?;
        let srv_wire = wire::wire_name(&srv_dotted)
            .ok_or_else(|| format!("name {srv_dotted:?} is too long"))?;
        let srv = Record::from_rdata(
            srv_name.clone(),
            ttl,
            RData::SRV(SRV::new(0, 0, port.port, name.clone())),
        );
        let mut additionals = v4.clone();
        additionals.extend(v6.iter().cloned());
        out.push((
            rtype::SRV,
            srv_wire,
            render_answer(&srv_name, RecordType::SRV, vec![srv], additionals)?,
        ));
    }
    Ok(out)
}

/// A service name as the cache keys it.
fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// A zone's own part, rendered: what its services and its transfer records are added to.
#[derive(Debug)]
struct ZoneHead {
    /// Origin, dotted, lower case.
    origin: String,
    /// Lower-cased wire origin.
    apex_wire: Vec<u8>,
    /// The SOA record, uncompressed (negative answers' authority section).
    soa_bytes: Vec<u8>,
    /// SOA, NS, glue and apex TXT records (the start of a transfer).
    records: Vec<Record>,
}

impl Prepared {
    /// Renders `snapshot`, reusing what `previous` rendered for unchanged
    /// services, with every zone's records for transfers.
    pub fn build(snapshot: Arc<ZoneSnapshot>, previous: Option<&Prepared>) -> Prepared {
        Self::build_with(snapshot, previous, true)
    }

    /// [`Prepared::build`]; without `transfers`, each zone's records hold
    /// only its SOA (a server that serves no AXFR/IXFR needs no more).
    pub fn build_with(
        snapshot: Arc<ZoneSnapshot>,
        previous: Option<&Prepared>,
        transfers: bool,
    ) -> Prepared {
        if let Some(patched) = previous.and_then(|prev| Self::patch(&snapshot, prev, transfers)) {
            return patched;
        }
        let ttl = snapshot.answer_ttl.clamp(1, MAX_ANSWER_TTL);
        let mut p = Prepared {
            version: snapshot.version,
            snapshot: Arc::clone(&snapshot),
            transfers,
            ttl,
            // About as many answers and names as last time: no rehashing.
            answers: Shards::with_capacity(previous.map_or(0, |p| p.answers.len())),
            names: Shards::with_capacity(previous.map_or(0, |p| p.names.len())),
            ..Prepared::default()
        };
        for (i, view) in snapshot.views.iter().enumerate() {
            let id = u16::try_from(i + 1).unwrap_or(u16::MAX);
            p.view_ids.insert(view.cluster.clone(), id);
            for net in &view.networks {
                p.networks.push((*net, id));
            }
        }
        // Longest prefix first, so the most specific network wins.
        p.networks
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        for zone in &snapshot.zones {
            let cache = previous
                .and_then(|prev| prev.caches.get(&zone.origin))
                .filter(|c| c.ttl == ttl && c.view_ids == p.view_ids);
            if let Err(message) = p.add_zone(zone, ttl, cache) {
                p.problems.push(RenderProblem {
                    zone: zone.origin.clone(),
                    message,
                });
            }
        }
        p
    }

    /// `previous` with what differs in `snapshot` rendered again, when
    /// their frames are the same (TTL, views, zones and their name servers,
    /// nothing left out last time); `None` when a whole render is needed.
    fn patch(snapshot: &Arc<ZoneSnapshot>, prev: &Prepared, transfers: bool) -> Option<Prepared> {
        let ttl = snapshot.answer_ttl.clamp(1, MAX_ANSWER_TTL);
        let before = prev.snapshot.as_ref();
        let same_frame = prev.problems.is_empty()
            && prev.transfers == transfers
            && prev.ttl == ttl
            && before.views == snapshot.views
            && before.zones.len() == snapshot.zones.len()
            && before.zones.iter().zip(&snapshot.zones).all(|(a, b)| {
                a.origin == b.origin && a.nameservers == b.nameservers && a.txt == b.txt
            });
        if !same_frame || prev.zones.len() != snapshot.zones.len() {
            return None;
        }
        let mut p = Prepared {
            version: snapshot.version,
            snapshot: Arc::clone(snapshot),
            answers: prev.answers.clone(),
            names: prev.names.clone(),
            zones: Vec::with_capacity(snapshot.zones.len()),
            zone_index: prev.zone_index.clone(),
            networks: prev.networks.clone(),
            view_ids: prev.view_ids.clone(),
            caches: FxHashMap::default(),
            transfers,
            ttl,
            problems: Vec::new(),
        };
        for (i, (zone, old)) in snapshot.zones.iter().zip(&before.zones).enumerate() {
            let zone_id = u32::try_from(i).ok()?;
            let cache = prev.caches.get(&zone.origin)?.clone();
            let head = p.zone_head(zone, ttl, zone_id, false).ok()?;
            if zone.nameservers.iter().any(|ns| {
                ns.name
                    .strip_suffix(&format!(".{}", head.origin))
                    .is_some_and(|label| {
                        zone.services.get(label).is_some() || old.services.get(label).is_some()
                    })
            }) {
                // A service named like a name server: rendered whole, in order.
                return None;
            }
            let cache = p.patch_services(&head, zone_id, &old.services, &zone.services, cache)?;
            p.finish_zone(zone, ttl, head, cache);
        }
        Some(p)
    }

    /// Renders again the services of one zone that differ between `old`
    /// and `new` (`None` when one would be left out: a whole render reports it).
    fn patch_services(
        &mut self,
        head: &ZoneHead,
        zone_id: u32,
        old: &Services,
        new: &Services,
        mut cache: ServiceCache,
    ) -> Option<ServiceCache> {
        for change in old.diff(new) {
            let (gone, added) = match change {
                Change::Added(n) => (None, Some(n)),
                Change::Changed(o, n) => (Some(o), Some(n)),
                Change::Removed(o) => (Some(o), None),
            };
            if let Some(o) = gone {
                let rendered = cache.by_name.remove(&lower(&o.name))?;
                self.unindex(&rendered);
            }
            if let Some(n) = added {
                let name = lower(&n.name);
                if cache.by_name.contains_key(&name) {
                    return None;
                }
                let rendered = self
                    .render_service(&head.origin, n, self.ttl, head.apex_wire.len())
                    .ok()?;
                self.index(&rendered, zone_id);
                cache.by_name.insert(name, rendered);
            }
        }
        Some(cache)
    }

    /// Makes a rendered service's answers and names part of the snapshot.
    fn index(&mut self, rendered: &RenderedService, zone_id: u32) {
        for (k, bytes) in rendered.entries.iter() {
            self.answers.insert(Arc::clone(k), Arc::clone(bytes));
        }
        // The service name and every SRV name (with their empty non-terminals) exist.
        for name in rendered.names.iter() {
            self.count_name(name, zone_id);
        }
    }

    /// Takes a rendered service's answers and names out.
    fn unindex(&mut self, rendered: &RenderedService) {
        for (k, _) in rendered.entries.iter() {
            self.answers.remove(k);
        }
        for name in rendered.names.iter() {
            let gone = match self.names.get_mut(name) {
                Some((_, count)) => {
                    *count -= 1;
                    *count == 0
                }
                None => false,
            };
            if gone {
                self.names.remove(name);
            }
        }
    }

    fn count_name(&mut self, name: &Arc<[u8]>, zone_id: u32) {
        match self.names.get_mut(name) {
            Some((_, count)) => *count += 1,
            None => {
                self.names.insert(Arc::clone(name), (zone_id, 1));
            }
        }
    }

    fn add_zone(
        &mut self,
        zone: &Zone,
        ttl: u32,
        previous: Option<&ServiceCache>,
    ) -> Result<(), String> {
        let origin = zone.origin.trim_end_matches('.').to_ascii_lowercase();
        let apex_wire = wire::wire_name(&origin)
            .ok_or_else(|| format!("origin {origin:?} is not a valid name"))?;
        if self.zone_index.contains_key(apex_wire.as_slice()) {
            return Err(format!("zone {origin} appears twice"));
        }
        let zone_id = u32::try_from(self.zones.len()).unwrap_or(u32::MAX);
        let head = self.zone_head(zone, ttl, zone_id, true)?;

        // Services.
        let mut cache = ServiceCache {
            ttl,
            view_ids: self.view_ids.clone(),
            by_name: imbl::HashMap::new(),
        };
        for svc in zone.services.iter() {
            let lower = lower(&svc.name);
            if cache.by_name.contains_key(&lower) {
                self.problems.push(RenderProblem {
                    zone: origin.clone(),
                    message: format!("service {} appears twice", svc.name),
                });
                continue;
            }
            let reused = previous
                .and_then(|c| c.by_name.get(&lower))
                .filter(|old| old.service == *svc)
                .cloned();
            let rendered = match reused {
                Some(rendered) => rendered,
                None => match self.render_service(&origin, svc, ttl, head.apex_wire.len()) {
                    Ok(rendered) => rendered,
                    Err(message) => {
                        self.problems.push(RenderProblem {
                            zone: origin.clone(),
                            message: format!("service {}: {message}", svc.name),
                        });
                        continue;
                    }
                },
            };
            self.index(&rendered, zone_id);
            cache.by_name.insert(lower, rendered);
        }
        self.finish_zone(zone, ttl, head, cache);
        Ok(())
    }

    /// Renders a zone's own answers (SOA, NS and their glue, apex TXT) and,
    /// with `add_names`, makes its apex and name servers exist.
    fn zone_head(
        &mut self,
        zone: &Zone,
        ttl: u32,
        zone_id: u32,
        add_names: bool,
    ) -> Result<ZoneHead, String> {
        let origin = zone.origin.trim_end_matches('.').to_ascii_lowercase();
        let apex = fqdn(&origin)?;
        let apex_wire = wire::wire_name(&origin)
            .ok_or_else(|| format!("origin {origin:?} is not a valid name"))?;
        let mut records: Vec<Record> = Vec::new();

        // SOA and NS.
        let ns_names: Vec<Name> = if zone.nameservers.is_empty() {
            vec![fqdn(&format!("ns1.{origin}"))?]
        } else {
            zone.nameservers
                .iter()
                .map(|n| fqdn(&n.name))
                .collect::<Result<_, _>>()?
        };
        let mname = ns_names.first().cloned().unwrap_or_else(|| apex.clone());
        let soa = SOA::new(
            mname,
            fqdn(&format!("hostmaster.{origin}"))?,
            // A zone's own serial, else the snapshot's version (RFC 1982
            // arithmetic wraps; a store revision fits 32 bits for years).
            (if zone.serial > 0 {
                zone.serial
            } else {
                self.version
            }) as u32,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            ttl,
        );
        let soa_record = Record::from_rdata(apex.clone(), ttl, RData::SOA(soa));
        let mut soa_bytes = Vec::new();
        {
            // Appended after any question, so no compression pointers into this buffer.
            let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut soa_bytes);
            encoder.set_name_encoding(hickory_proto::serialize::binary::NameEncoding::Uncompressed);
            soa_record.emit(&mut encoder).map_err(|e| e.to_string())?;
        }
        records.push(soa_record.clone());
        self.insert(
            EXTERNAL_VIEW,
            rtype::SOA,
            &apex_wire,
            render_answer(&apex, RecordType::SOA, vec![soa_record], vec![])?,
        );

        let ns_records: Vec<Record> = ns_names
            .iter()
            .map(|n| Record::from_rdata(apex.clone(), NS_TTL, RData::NS(NS(n.clone()))))
            .collect();
        let mut glue = Vec::new();
        for ns in &zone.nameservers {
            let name = fqdn(&ns.name)?;
            let Some(ns_wire) = wire::wire_name(&ns.name) else {
                continue;
            };
            if !ns_wire.ends_with(&apex_wire) || ns.addresses.is_empty() {
                continue;
            }
            let (v4, v6) = address_records(&name, NS_TTL, &ns.addresses);
            if !v4.is_empty() {
                self.insert(
                    EXTERNAL_VIEW,
                    rtype::A,
                    &ns_wire,
                    render_answer(&name, RecordType::A, v4.clone(), vec![])?,
                );
            }
            if !v6.is_empty() {
                self.insert(
                    EXTERNAL_VIEW,
                    rtype::AAAA,
                    &ns_wire,
                    render_answer(&name, RecordType::AAAA, v6.clone(), vec![])?,
                );
            }
            if add_names {
                self.add_name(&ns_wire, apex_wire.len(), zone_id);
            }
            glue.extend(v4);
            glue.extend(v6);
        }
        records.extend(ns_records.iter().cloned());
        records.extend(glue.iter().cloned());
        self.insert(
            EXTERNAL_VIEW,
            rtype::NS,
            &apex_wire,
            render_answer(&apex, RecordType::NS, ns_records, glue)?,
        );
        if !zone.txt.is_empty() {
            let txt = Record::from_rdata(apex.clone(), ttl, RData::TXT(TXT::new(zone.txt.clone())));
            records.push(txt.clone());
            self.insert(
                EXTERNAL_VIEW,
                rtype::TXT,
                &apex_wire,
                render_answer(&apex, RecordType::TXT, vec![txt], vec![])?,
            );
        }
        if add_names {
            self.add_name(&apex_wire, apex_wire.len(), zone_id);
        }
        Ok(ZoneHead {
            origin,
            apex_wire,
            soa_bytes,
            records,
        })
    }

    /// Adds a rendered zone: its transfer records, its index entry, its cache.
    fn finish_zone(&mut self, zone: &Zone, ttl: u32, head: ZoneHead, cache: ServiceCache) {
        let ZoneHead {
            origin,
            apex_wire,
            soa_bytes,
            mut records,
        } = head;
        if self.transfers {
            for svc in zone.services.iter() {
                if cache.by_name.contains_key(&lower(&svc.name)) {
                    records.extend(self.transfer_records(&origin, svc, ttl));
                }
            }
        }
        let zone_id = u32::try_from(self.zones.len()).unwrap_or(u32::MAX);
        self.zone_index
            .insert(apex_wire.clone().into_boxed_slice(), zone_id);
        self.caches.insert(zone.origin.clone(), cache);
        // Close the AXFR with the SOA again (RFC 5936).
        if self.transfers
            && let Some(first) = records.first().cloned()
        {
            records.push(first);
        } else {
            records.truncate(1);
        }
        records.shrink_to_fit();
        let mut negative_soa = soa_bytes;
        negative_soa.shrink_to_fit();
        self.zones.push(PreparedZone {
            origin,
            wire: apex_wire,
            negative_soa,
            records,
        });
    }

    fn render_service(
        &self,
        origin: &str,
        svc: &Arc<Service>,
        ttl: u32,
        apex_len: usize,
    ) -> Result<RenderedService, String> {
        let mut out: Vec<Entry> = Vec::new();
        for (qtype, wire, bytes) in render_service_view(origin, svc, &svc.external, ttl, true)? {
            out.push((key(EXTERNAL_VIEW, qtype, &wire), bytes));
        }
        for (cluster, addrs) in &svc.views {
            let Some(&view) = self.view_ids.get(cluster) else {
                continue;
            };
            let mut sorted_view = addrs.clone();
            sorted_view.sort();
            let mut sorted_ext = svc.external.clone();
            sorted_ext.sort();
            if sorted_view == sorted_ext {
                continue;
            }
            for (qtype, wire, bytes) in render_service_view(origin, svc, addrs, ttl, false)? {
                if qtype != rtype::TXT {
                    out.push((key(view, qtype, &wire), bytes));
                }
            }
            // A view whose answer has no A (or AAAA) while the external one does must say NODATA.
            for qtype in [rtype::A, rtype::AAAA] {
                let has_view = addrs.iter().any(|a| a.is_ipv4() == (qtype == rtype::A));
                let has_ext = svc
                    .external
                    .iter()
                    .any(|a| a.is_ipv4() == (qtype == rtype::A));
                if !has_view && has_ext {
                    let w = wire::wire_name(&format!("{}.{origin}", svc.name)).unwrap_or_default();
                    out.push((key(view, qtype, &w), Arc::from(&[][..])));
                }
            }
        }
        let mut names: Vec<Arc<[u8]>> = Vec::new();
        let mut add = |wire_name: &[u8]| {
            for suffix in wire::suffixes(wire_name) {
                if suffix.len() < apex_len {
                    break;
                }
                if !names.iter().any(|n| **n == *suffix) {
                    names.push(Arc::from(suffix));
                }
            }
        };
        add(&wire::wire_name(&format!("{}.{origin}", svc.name)).unwrap_or_default());
        for port in &svc.ports {
            if let Some(w) = wire::wire_name(&format!(
                "_{}._{}.{}.{origin}",
                port.name,
                port.protocol.label(),
                svc.name
            )) {
                add(&w);
            }
        }
        Ok(RenderedService {
            service: Arc::clone(svc),
            entries: out.into(),
            names: names.into(),
        })
    }

    fn transfer_records(&self, origin: &str, svc: &Service, ttl: u32) -> Vec<Record> {
        let Ok(name) = fqdn(&format!("{}.{origin}", svc.name)) else {
            return vec![];
        };
        let (mut recs, v6) = address_records(&name, ttl, &svc.external);
        recs.extend(v6);
        if !svc.txt.is_empty() {
            recs.push(Record::from_rdata(
                name.clone(),
                ttl,
                RData::TXT(TXT::new(svc.txt.clone())),
            ));
        }
        for port in &svc.ports {
            if let Ok(srv_name) = fqdn(&format!(
                "_{}._{}.{}.{origin}",
                port.name,
                port.protocol.label(),
                svc.name
            )) {
                recs.push(Record::from_rdata(
                    srv_name,
                    ttl,
                    RData::SRV(SRV::new(0, 0, port.port, name.clone())),
                ));
            }
        }
        recs
    }

    fn insert(&mut self, view: u16, qtype: u16, wire_name: &[u8], bytes: Arc<[u8]>) {
        self.answers.insert(key(view, qtype, wire_name), bytes);
    }

    /// Records that `wire_name` and its ancestors down to the apex exist
    /// (for the zone itself: counted once per render).
    fn add_name(&mut self, wire_name: &[u8], apex_len: usize, zone: u32) {
        for suffix in wire::suffixes(wire_name) {
            if suffix.len() < apex_len {
                break;
            }
            if !self.names.contains_key(suffix) {
                self.names.insert(Arc::from(suffix), (zone, 1));
            }
        }
    }

    /// The prepared response for a packed key, if any. An empty slice means "NODATA in this view".
    pub fn lookup(&self, packed_key: &[u8]) -> Option<&Arc<[u8]>> {
        self.answers.get(packed_key)
    }

    /// Zone index of an existing name.
    pub fn name_zone(&self, wire_name: &[u8]) -> Option<u32> {
        self.names.get(wire_name).map(|(zone, _)| *zone)
    }

    /// The zone that contains `wire_name` (longest matching apex).
    pub fn find_zone(&self, wire_name: &[u8]) -> Option<u32> {
        wire::suffixes(wire_name).find_map(|s| self.zone_index.get(s).copied())
    }

    /// The view of a client address (the most specific cluster network), or the external view.
    pub fn view_for(&self, addr: IpAddr) -> u16 {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.networks
            .iter()
            .find(|(net, _)| net.contains(&addr))
            .map_or(EXTERNAL_VIEW, |(_, v)| *v)
    }

    /// The view id of a cluster, if it has one.
    pub fn view_of_cluster(&self, cluster: &str) -> Option<u16> {
        self.view_ids.get(cluster).copied()
    }

    /// Number of prepared answers.
    pub fn answer_count(&self) -> usize {
        self.answers.len()
    }

    /// Views by cluster name (for diagnostics).
    pub fn views(&self) -> BTreeMap<String, u16> {
        self.view_ids.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ClusterView, ServicePort, Transport};

    fn snapshot(ttl: u32, views: &[(&str, &str)]) -> Arc<ZoneSnapshot> {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        Arc::new(ZoneSnapshot {
            version: 1,
            answer_ttl: ttl,
            views: views
                .iter()
                .map(|(cluster, net)| ClusterView {
                    cluster: (*cluster).to_owned(),
                    networks: vec![net.parse().expect("net")],
                })
                .collect(),
            zones: vec![Zone {
                origin: "p.example".into(),
                serial: 0,
                nameservers: vec![],
                txt: vec![],
                services: Services::from(vec![Arc::new(Service {
                    name: "web".into(),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        port: 80,
                        protocol: Transport::Tcp,
                    }],
                    external: vec![ip("192.0.2.1")],
                    views: [("west".to_owned(), vec![ip("10.9.0.1")])].into(),
                    txt: vec![],
                })]),
            }],
        })
    }

    /// Every prepared answer, by key.
    fn answers(p: &Prepared) -> BTreeMap<Vec<u8>, Vec<u8>> {
        p.answers
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn names(p: &Prepared) -> BTreeMap<Vec<u8>, (u32, u32)> {
        p.names.iter().map(|(k, v)| (k.to_vec(), *v)).collect()
    }

    fn service(name: &str, external: &str, west: &str) -> Arc<Service> {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        Arc::new(Service {
            name: name.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Transport::Tcp,
            }],
            external: vec![ip(external)],
            views: [("west".to_owned(), vec![ip(west)])].into(),
            txt: vec![format!("clusters={name}")],
        })
    }

    fn with_services(version: u64, services: Vec<Arc<Service>>) -> Arc<ZoneSnapshot> {
        let mut snap = Arc::unwrap_or_clone(snapshot(5, &[("west", "10.9.0.0/16")]));
        snap.version = version;
        snap.zones[0].services = services.into();
        Arc::new(snap)
    }

    #[test]
    fn a_patched_render_equals_a_whole_one_and_shares_what_did_not_change() {
        let mut services: Vec<Arc<Service>> = (0..3000)
            .map(|i| service(&format!("s{i:04}"), "192.0.2.1", "10.9.0.1"))
            .collect();
        let first = Prepared::build(with_services(1, services.clone()), None);
        // One changed, one gone, one new, one whose view answer now equals the external one.
        services[5] = service("s0005", "192.0.2.7", "10.9.0.7");
        services.remove(10);
        services.insert(11, service("s0011a", "192.0.2.8", "10.9.0.8"));
        let name = services[20].name.clone();
        services[20] = service(&name, "192.0.2.1", "192.0.2.1");
        let next = with_services(2, services.clone());
        let patched = Prepared::build(Arc::clone(&next), Some(&first));
        let whole = Prepared::build(next, None);
        assert_eq!(answers(&patched), answers(&whole));
        assert_eq!(names(&patched), names(&whole), "names and their counts");
        assert_ne!(answers(&patched), answers(&first), "the SOA serial moved");
        // 4 services changed: a few shards copied, the rest shared.
        let shared = patched.answers.shared_with(&first.answers);
        assert!(shared > 1024 - 40, "{shared} of 1024 shards shared");

        // Every service gone: the zone's own names stay.
        let empty = with_services(3, Vec::new());
        let patched = Prepared::build(Arc::clone(&empty), Some(&patched));
        let whole = Prepared::build(empty, None);
        assert_eq!(answers(&patched), answers(&whole));
        assert_eq!(names(&patched), names(&whole));
        assert_eq!(names(&whole).len(), 1, "the apex");
    }

    #[test]
    fn a_service_named_like_a_name_server_going_is_rendered_whole() {
        let glued = |services: Vec<Arc<Service>>, version: u64| {
            let mut snap = Arc::unwrap_or_clone(with_services(version, services));
            snap.zones[0].nameservers = vec![crate::snapshot::Nameserver {
                name: "ns1.p.example".into(),
                addresses: vec!["192.0.2.53".parse().expect("ip")],
            }];
            Arc::new(snap)
        };
        let web = service("web", "192.0.2.1", "10.9.0.1");
        let first = Prepared::build(
            glued(
                vec![service("ns1", "192.0.2.9", "10.9.0.9"), Arc::clone(&web)],
                1,
            ),
            None,
        );
        let next = glued(vec![web], 2);
        let patched = Prepared::build(Arc::clone(&next), Some(&first));
        let whole = Prepared::build(next, None);
        assert_eq!(
            answers(&patched),
            answers(&whole),
            "the glue answer is back"
        );
        assert_eq!(names(&patched), names(&whole));
    }

    #[test]
    fn a_service_is_rendered_again_when_the_ttl_or_the_view_ids_change() {
        let first = Prepared::build(snapshot(5, &[("west", "10.9.0.0/16")]), None);
        for next in [
            snapshot(7, &[("west", "10.9.0.0/16")]),
            // A new view sorts first: west's id moves.
            snapshot(5, &[("east", "10.8.0.0/16"), ("west", "10.9.0.0/16")]),
        ] {
            let reused = Prepared::build(Arc::clone(&next), Some(&first));
            let fresh = Prepared::build(next, None);
            assert_eq!(answers(&reused), answers(&fresh));
        }
        // Unchanged: the very same bytes are reused.
        let again = Prepared::build(snapshot(5, &[("west", "10.9.0.0/16")]), Some(&first));
        let web = first.caches["p.example"].by_name["web"].entries[0]
            .1
            .clone();
        let reused = again.caches["p.example"].by_name["web"].entries[0]
            .1
            .clone();
        assert!(Arc::ptr_eq(&web, &reused));
    }
}
