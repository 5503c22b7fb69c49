//! The DNS server over real sockets: a hickory-proto client over UDP and TCP,
//! and `kdig` (from knot-dnsutils) for interop.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use gns_dns::snapshot::{ClusterView, Nameserver, Service, ServicePort, Transport, Zone};
use gns_dns::{DnsServer, ServerConfig, ZoneSnapshot};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const ZONE: &str = "production.app.acme.com";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn snapshot(version: u64) -> ZoneSnapshot {
    let many: Vec<IpAddr> = (1..=120)
        .map(|i| ip(&format!("10.20.{}.{}", i / 250, i % 250 + 1)))
        .collect();
    ZoneSnapshot {
        version,
        answer_ttl: 5,
        views: vec![ClusterView {
            cluster: "east".into(),
            networks: vec![
                "127.0.0.2/32".parse().expect("net"),
                "10.8.0.0/16".parse().expect("net"),
            ],
        }],
        zones: vec![Zone {
            serial: 0,
            origin: ZONE.into(),
            nameservers: vec![Nameserver {
                name: format!("ns1.{ZONE}"),
                addresses: vec![ip("127.0.0.1")],
            }],
            txt: vec!["gns=production".into()],
            services: vec![
                Service {
                    name: "web".into(),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        port: 8080,
                        protocol: Transport::Tcp,
                    }],
                    external: vec![ip("198.51.100.10"), ip("198.51.100.20"), ip("2001:db8::1")],
                    views: [("east".to_owned(), vec![ip("10.8.0.53")])]
                        .into_iter()
                        .collect(),
                    txt: vec!["clusters=east,west".into()],
                },
                Service {
                    name: "db".into(),
                    ports: vec![ServicePort {
                        name: "pg".into(),
                        port: 5432,
                        protocol: Transport::Tcp,
                    }],
                    external: vec![ip("192.0.2.10")],
                    views: Default::default(),
                    txt: vec![],
                },
                Service {
                    name: "big".into(),
                    ports: vec![],
                    external: many,
                    views: Default::default(),
                    txt: vec![],
                },
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        }],
    }
}

struct Fixture {
    server: DnsServer,
    _rt: tokio::runtime::Runtime,
}

fn start(config: impl FnOnce(&mut ServerConfig)) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(async {
        let mut c = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
        c.udp_workers = 2;
        config(&mut c);
        DnsServer::start(c).await.expect("start")
    });
    server.publish(Arc::new(snapshot(7)));
    Fixture { server, _rt: rt }
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    let mut n = Name::from_ascii(name).expect("name");
    n.set_fqdn(true);
    msg.add_query(Query::query(n, rtype));
    if let Some(payload) = edns {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        msg.set_edns(e);
    }
    msg
}

/// Asks `server` from `bind` over UDP as a stub resolver does: the query
/// is sent again after a second without an answer, three times in all (a
/// datagram may be lost on a loaded machine); panics if none is answered.
fn udp_from(bind: &str, server: SocketAddr, msg: &Message) -> Message {
    let socket = UdpSocket::bind(bind).expect("bind client");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let query = msg.to_vec().expect("encode");
    let mut buf = [0u8; 65535];
    for _ in 0..3 {
        socket.send_to(&query, server).expect("send");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return Message::from_vec(&buf[..n]).expect("decodes");
        }
    }
    panic!("no answer from {server} to three tries, a second apart")
}

fn udp(server: SocketAddr, msg: &Message) -> Message {
    udp_from("127.0.0.1:0", server, msg)
}

fn tcp(server: SocketAddr, msg: &Message) -> Message {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let bytes = msg.to_vec().expect("encode");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend(bytes);
    stream.write_all(&framed).expect("write");
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).expect("length");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).expect("body");
    Message::from_vec(&body).expect("decodes")
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn soa_serial(r: &Record) -> Option<u32> {
    match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}

#[test]
fn every_record_type_over_udp_and_tcp() {
    let fx = start(|_| {});
    let at = fx.server.udp_addr;
    for via_tcp in [false, true] {
        let ask = |name: &str, t| {
            if via_tcp {
                tcp(at, &query(name, t, None))
            } else {
                udp(at, &query(name, t, None))
            }
        };
        let a = ask(&format!("web.{ZONE}"), RecordType::A);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert!(a.metadata.recursion_desired, "RD is copied");
        assert_eq!(a.metadata.id, 0x1234);
        assert_eq!(
            addresses(&a),
            vec![ip("198.51.100.10"), ip("198.51.100.20")]
        );
        assert!(a.answers.iter().all(|r| r.ttl == 5));
        assert_eq!(
            addresses(&ask(&format!("web.{ZONE}"), RecordType::AAAA)),
            vec![ip("2001:db8::1")]
        );
        let srv = ask(&format!("_http._tcp.web.{ZONE}"), RecordType::SRV);
        match &srv.answers[0].data {
            RData::SRV(s) => {
                assert_eq!(s.port, 8080);
                assert_eq!(s.target.to_ascii(), format!("web.{ZONE}."));
            }
            other => panic!("expected SRV, got {other:?}"),
        }
        assert!(
            !srv.additionals.is_empty(),
            "SRV carries the target's addresses"
        );
        let txt = ask(&format!("web.{ZONE}"), RecordType::TXT);
        assert!(
            matches!(&txt.answers[0].data, RData::TXT(t) if t.to_string().contains("clusters=east,west"))
        );
        let soa = ask(ZONE, RecordType::SOA);
        assert_eq!(
            soa.answers.first().and_then(soa_serial),
            Some(7),
            "SOA serial is the snapshot version"
        );
        let ns = ask(ZONE, RecordType::NS);
        assert!(
            matches!(&ns.answers[0].data, RData::NS(n) if n.0.to_ascii() == format!("ns1.{ZONE}."))
        );
        assert_eq!(
            addresses(&ask(&format!("ns1.{ZONE}"), RecordType::A)),
            vec![ip("127.0.0.1")]
        );
        assert!(matches!(
            &ask(ZONE, RecordType::TXT).answers[0].data,
            RData::TXT(_)
        ));
    }
}

#[test]
fn negative_answers_and_refusals() {
    let fx = start(|_| {});
    let at = fx.server.udp_addr;
    let nx = udp(at, &query(&format!("nope.{ZONE}"), RecordType::A, None));
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert!(nx.answers.is_empty());
    let soa = nx.authorities.first().expect("SOA in authority");
    assert_eq!(soa_serial(soa), Some(7));
    assert_eq!(soa.ttl, 5, "negative TTL is min(SOA TTL, MINIMUM)");
    let nodata = udp(at, &query(&format!("db.{ZONE}"), RecordType::AAAA, None));
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(nodata.authorities.first().and_then(soa_serial).is_some());
    // Empty non-terminal of an SRV name: NODATA, not NXDOMAIN.
    let ent = udp(at, &query(&format!("_tcp.web.{ZONE}"), RecordType::A, None));
    assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
    let refused = udp(at, &query("example.org", RecordType::A, None));
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(!refused.metadata.authoritative);
    // Case is echoed as asked (0x20), the answer still found.
    let mixed = udp(
        at,
        &query(&format!("WeB.{}", ZONE.to_uppercase()), RecordType::A, None),
    );
    assert_eq!(
        mixed.queries[0].name().to_ascii(),
        format!("WeB.{}.", ZONE.to_uppercase())
    );
    assert_eq!(addresses(&mixed).len(), 2);
}

#[test]
fn truncation_then_tcp_and_edns() {
    let fx = start(|_| {});
    let at = fx.server.udp_addr;
    let big = format!("big.{ZONE}");
    let plain = udp(at, &query(&big, RecordType::A, None));
    assert!(
        plain.metadata.truncation,
        "120 A records do not fit in 512 bytes"
    );
    assert!(plain.answers.is_empty());
    let with_edns = udp(at, &query(&big, RecordType::A, Some(4096)));
    assert!(
        with_edns.metadata.truncation,
        "nor in our 1232-byte EDNS limit"
    );
    assert_eq!(with_edns.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let full = tcp(at, &query(&big, RecordType::A, None));
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 120);
    // EDNS is answered with an OPT; a small answer fits.
    let small = udp(
        at,
        &query(&format!("web.{ZONE}"), RecordType::A, Some(1232)),
    );
    assert!(small.edns.is_some());
    assert!(!small.metadata.truncation);
}

#[test]
fn views_by_source_and_forced() {
    let fx = start(|_| {});
    let at = fx.server.udp_addr;
    // 127.0.0.2 is in east's networks: the cluster view.
    let east = udp_from(
        "127.0.0.2:0",
        at,
        &query(&format!("web.{ZONE}"), RecordType::A, None),
    );
    assert_eq!(addresses(&east), vec![ip("10.8.0.53")]);
    let east6 = udp_from(
        "127.0.0.2:0",
        at,
        &query(&format!("web.{ZONE}"), RecordType::AAAA, None),
    );
    assert!(east6.answers.is_empty(), "the east view has no IPv6 answer");
    // A service without a view override answers the same everywhere.
    assert_eq!(
        addresses(&udp_from(
            "127.0.0.2:0",
            at,
            &query(&format!("db.{ZONE}"), RecordType::A, None)
        )),
        vec![ip("192.0.2.10")]
    );
    // --cluster forces the view for every client.
    let forced = start(|c| c.cluster_view = Some("east".into()));
    assert_eq!(
        addresses(&udp(
            forced.server.udp_addr,
            &query(&format!("web.{ZONE}"), RecordType::A, None)
        )),
        vec![ip("10.8.0.53")]
    );
}

/// A query for web with an EDNS Client Subnet option naming 10.8.1.0/24
/// (east's network) from 127.0.0.1: the addresses answered.
fn ask_with_client_subnet(server: SocketAddr) -> Vec<IpAddr> {
    let q = query(&format!("web.{ZONE}"), RecordType::A, Some(1232));
    // ECS option: family 1, /24, scope 0, 10.8.1.0
    let mut bytes = q.to_vec().expect("encode");
    // Patch in the option: the OPT record is the last 11 bytes; append an option to its rdata.
    let opt = [0u8, 8, 0, 7, 0, 1, 24, 0, 10, 8, 1];
    let rdlen_at = bytes.len() - 2;
    bytes[rdlen_at..].copy_from_slice(&(opt.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&opt);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    socket.send_to(&bytes, server).expect("send");
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).expect("answer");
    addresses(&Message::from_vec(&buf[..n]).expect("decodes"))
}

#[test]
fn client_subnet_selects_the_view_only_from_a_trusted_resolver() {
    let trusting = start(|c| c.trusted_resolvers = vec!["127.0.0.0/8".parse().expect("net")]);
    assert_eq!(
        ask_with_client_subnet(trusting.server.udp_addr),
        vec![ip("10.8.0.53")],
        "east's view, for a client of east behind a trusted resolver"
    );
    let others = start(|c| c.trusted_resolvers = vec!["192.0.2.0/24".parse().expect("net")]);
    assert_eq!(
        ask_with_client_subnet(others.server.udp_addr),
        vec![ip("198.51.100.10"), ip("198.51.100.20")],
        "an untrusted source gets the view of its own address (external)"
    );
    let default = start(|_| {});
    assert_eq!(
        ask_with_client_subnet(default.server.udp_addr),
        vec![ip("198.51.100.10"), ip("198.51.100.20")],
        "no resolver is trusted by default"
    );
}

#[test]
fn snapshot_updates_are_atomic_and_visible() {
    let fx = start(|_| {});
    let at = fx.server.udp_addr;
    let mut next = snapshot(8);
    Arc::make_mut(next.zones[0].services.get_mut("db").expect("db")).external =
        vec![ip("192.0.2.99")];
    fx.server.publish(Arc::new(next));
    assert_eq!(
        addresses(&udp(at, &query(&format!("db.{ZONE}"), RecordType::A, None))),
        vec![ip("192.0.2.99")]
    );
    assert_eq!(
        udp(at, &query(ZONE, RecordType::SOA, None))
            .answers
            .first()
            .and_then(soa_serial),
        Some(8)
    );
    // A removed service is NXDOMAIN.
    let mut fewer = snapshot(9);
    fewer.zones[0].services.remove("db");
    fx.server.publish(Arc::new(fewer));
    assert_eq!(
        udp(at, &query(&format!("db.{ZONE}"), RecordType::A, None))
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    let fx = start(|_| {});
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    // Header says one question, but there is none.
    socket
        .send_to(
            &[0xAB, 0xCD, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0],
            fx.server.udp_addr,
        )
        .expect("send");
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).expect("FORMERR");
    let m = Message::from_vec(&buf[..n]).expect("decodes");
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0xABCD, ResponseCode::FormErr)
    );
    // Too short: no answer at all.
    socket
        .send_to(&[1, 2, 3], fx.server.udp_addr)
        .expect("send");
    assert!(socket.recv_from(&mut buf).is_err());
}

#[test]
fn zone_transfers_need_permission_and_follow_changes() {
    let refused = start(|_| {});
    let q = query(ZONE, RecordType::AXFR, None);
    assert_eq!(
        tcp(refused.server.tcp_addr, &q).metadata.response_code,
        ResponseCode::Refused
    );

    let fx = start(|c| c.allow_transfer = vec!["127.0.0.0/8".parse().expect("net")]);
    let axfr = tcp_until_soa_pair(fx.server.tcp_addr, &q);
    let records: Vec<&Record> = axfr.iter().flat_map(|m| m.answers.iter()).collect();
    assert_eq!(soa_serial(records[0]), Some(7));
    assert_eq!(soa_serial(records[records.len() - 1]), Some(7));
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.data, RData::A(a) if a.0.to_string() == "192.0.2.10"))
    );

    // Change one address; IXFR from 7 carries only the delta.
    let mut next = snapshot(8);
    Arc::make_mut(next.zones[0].services.get_mut("db").expect("db")).external =
        vec![ip("192.0.2.99")];
    fx.server.publish(Arc::new(next));
    let mut ixfr = query(ZONE, RecordType::IXFR, None);
    let old_soa = records[0].clone();
    ixfr.add_authority(old_soa);
    let delta = tcp_until_soa_pair(fx.server.tcp_addr, &ixfr);
    let recs: Vec<&Record> = delta.iter().flat_map(|m| m.answers.iter()).collect();
    let serials: Vec<Option<u32>> = recs
        .iter()
        .map(|r| soa_serial(r))
        .filter(Option::is_some)
        .collect();
    assert_eq!(
        serials,
        vec![Some(8), Some(7), Some(8), Some(8)],
        "IXFR: new SOA, old SOA, deletions, new SOA, additions, new SOA"
    );
    let non_soa: Vec<String> = recs
        .iter()
        .filter(|r| soa_serial(r).is_none())
        .map(|r| r.data.to_string())
        .collect();
    assert_eq!(
        non_soa,
        vec!["192.0.2.10".to_owned(), "192.0.2.99".to_owned()],
        "only the changed record, removed then added"
    );

    // A serial the history doesn't reach falls back to a full zone.
    let mut old = query(ZONE, RecordType::IXFR, None);
    let mut ancient = records[0].clone();
    if let RData::SOA(s) = &mut ancient.data {
        s.serial = 3;
    }
    old.add_authority(ancient);
    let full = tcp_until_soa_pair(fx.server.tcp_addr, &old);
    assert!(
        full.iter().flat_map(|m| m.answers.iter()).count() > 6,
        "AXFR-style answer"
    );
}

/// Reads transfer messages until the closing SOA.
fn tcp_until_soa_pair(server: SocketAddr, q: &Message) -> Vec<Message> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let bytes = q.to_vec().expect("encode");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend(bytes);
    stream.write_all(&framed).expect("write");
    let mut out = Vec::new();
    let mut soas = 0;
    let mut first_serial = None;
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).expect("length");
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut body).expect("body");
        let m = Message::from_vec(&body).expect("decodes");
        for r in &m.answers {
            if let Some(s) = soa_serial(r) {
                soas += 1;
                if first_serial.is_none() {
                    first_serial = Some(s);
                }
            }
        }
        out.push(m);
        let ends = soas >= 2
            && out
                .last()
                .and_then(|m| m.answers.last())
                .and_then(soa_serial)
                == first_serial;
        if ends {
            return out;
        }
    }
}

#[test]
fn kdig_interop() {
    let fx = start(|_| {});
    let at = fx.server.udp_addr;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("kdig")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("kdig is required for this test ({e}); install it with `apt-get install knot-dnsutils` (.ci/run does)"));
        assert!(
            out.status.success(),
            "kdig {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let server = format!("@{}", at.ip());
    let port = at.port().to_string();
    let a = run(&[&server, "-p", &port, &format!("web.{ZONE}"), "A", "+short"]);
    assert_eq!(
        a.lines().collect::<Vec<_>>(),
        vec!["198.51.100.10", "198.51.100.20"]
    );
    let srv = run(&[
        &server,
        "-p",
        &port,
        &format!("_pg._tcp.db.{ZONE}"),
        "SRV",
        "+short",
        "+tcp",
    ]);
    assert_eq!(srv.trim(), format!("0 0 5432 db.{ZONE}."));
    let nx = run(&[&server, "-p", &port, &format!("nope.{ZONE}"), "A"]);
    assert!(nx.contains("NXDOMAIN"), "{nx}");
    let tc = run(&[
        &server,
        "-p",
        &port,
        &format!("big.{ZONE}"),
        "A",
        "+notcp",
        "+ignore",
        "+noedns",
    ]);
    assert!(tc.contains(" tc") || tc.contains("TC"), "{tc}");
    let retried = run(&[&server, "-p", &port, &format!("big.{ZONE}"), "A", "+short"]);
    let addrs = retried
        .lines()
        .filter(|l| l.parse::<IpAddr>().is_ok())
        .count();
    assert_eq!(addrs, 120, "kdig retried over TCP after TC:\n{retried}");
}

#[test]
fn an_explicit_port_taken_for_tcp_is_an_error_not_another_port() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let started = DnsServer::start(ServerConfig::new(addr)).await;
        assert_eq!(
            started.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse),
            "the asked-for port, or an error"
        );
        // Port 0: a port free for both, picked by the system.
        let server = DnsServer::start(ServerConfig::new("127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("start on port 0");
        assert_eq!(server.udp_addr, server.tcp_addr);
    });
}

#[test]
fn tcp_connections_past_the_cap_wait_until_one_closes() {
    let fx = start(|c| c.max_tcp_connections = 1);
    let at = fx.server.tcp_addr;
    // One idle connection takes the only slot.
    let held = std::net::TcpStream::connect(at).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let answer = tcp(at, &query(&format!("db.{ZONE}"), RecordType::A, None));
        let _ = done.send(addresses(&answer));
    });
    assert!(
        waited.recv_timeout(Duration::from_millis(700)).is_err(),
        "answered past the cap of 1"
    );
    drop(held);
    assert_eq!(
        waited
            .recv_timeout(Duration::from_secs(3))
            .expect("answered once the slot frees"),
        vec![ip("192.0.2.10")]
    );
}
