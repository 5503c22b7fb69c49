//! Interop with a real Knot DNS (`knotd`, from the `knot` package) as a
//! secondary of the in-process server: the initial AXFR, then NOTIFY-driven
//! incremental transfers (IXFR) as the snapshot changes, checked by asking
//! both servers the same questions with `kdig` (from `knot-dnsutils`).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gns_dns::snapshot::{ClusterView, Nameserver, Service, ServicePort, Transport, Zone};
use gns_dns::{DnsServer, ServerConfig, ZoneSnapshot};

const ZONE: &str = "production.app.acme.com";
/// How long knot gets to pick up a new serial.
const CONVERGE: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test addresses are valid")
}

fn service(name: &str, ports: &[(&str, u16)], external: &[&str], txt: &[&str]) -> Service {
    Service {
        name: name.into(),
        ports: ports
            .iter()
            .map(|(n, p)| ServicePort {
                name: (*n).into(),
                port: *p,
                protocol: Transport::Tcp,
            })
            .collect(),
        external: external.iter().map(|a| ip(a)).collect(),
        views: Default::default(),
        txt: txt.iter().map(|t| (*t).into()).collect(),
    }
}

/// `count` addresses in 10.20.0.0/16 starting at `base`: enough records that
/// transfers of the `big` service span several messages.
fn many(base: u32, count: u32) -> Vec<IpAddr> {
    (base..base + count)
        .map(|i| IpAddr::from([10, 20, (i / 250) as u8, (i % 250 + 1) as u8]))
        .collect()
}

fn snapshot(version: u64) -> ZoneSnapshot {
    let mut web = service(
        "web",
        &[("http", 8080), ("https", 8443)],
        &["198.51.100.10", "198.51.100.20", "2001:db8::1"],
        &["clusters=east,west"],
    );
    // A cluster view: transfers carry the external view only.
    web.views
        .insert("east".to_owned(), vec![ip("10.8.0.53"), ip("fd00::53")]);
    let mut big = service("big", &[], &[], &[]);
    big.external = many(0, 300);
    ZoneSnapshot {
        version,
        answer_ttl: 5,
        views: vec![ClusterView {
            cluster: "east".into(),
            networks: vec!["10.8.0.0/16".parse().expect("valid network")],
        }],
        zones: vec![Zone {
            serial: 0,
            origin: ZONE.into(),
            nameservers: vec![Nameserver {
                name: format!("ns1.{ZONE}"),
                addresses: vec![ip("127.0.0.1"), ip("::1")],
            }],
            txt: vec!["gns=production".into()],
            services: vec![
                web,
                service("db", &[("pg", 5432)], &["192.0.2.10"], &[]),
                service(
                    "cache",
                    &[("redis", 6379)],
                    &["192.0.2.30", "192.0.2.31", "2001:db8::30"],
                    &["tier=memory", "owner=platform"],
                ),
                service("api", &[("grpc", 9090)], &["2001:db8::40"], &[]),
                big,
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        }],
    }
}

/// A TCP and UDP port that were free a moment ago, for knotd. Picked below
/// Linux's ephemeral range (32768–60999), where the source ports of the
/// tests' own connections come from, so none of those takes it first.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for attempt in 0..200u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        let Ok(_tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on 127.0.0.1 in 20000-31999");
}

/// knotd as a child process, killed when dropped (also when the test panics).
struct Knot {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Knot {
    fn start(port: u16, primary: SocketAddr) -> Knot {
        let dir = tempfile::tempdir().expect("temp dir for knot");
        let path = |sub: &str| {
            let p = dir.path().join(sub);
            std::fs::create_dir_all(&p).expect("knot sub-directory");
            p.display().to_string()
        };
        let (rundir, storage, db) = (path("run"), path("zones"), path("db"));
        let conf = format!(
            r#"server:
    rundir: "{rundir}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: info

database:
    storage: "{db}"

remote:
  - id: gns
    address: {primary_ip}@{primary_port}

acl:
  - id: gns-notify
    address: 127.0.0.1
    action: notify

template:
  - id: default
    storage: "{storage}"

zone:
  - domain: {ZONE}
    master: gns
    acl: gns-notify
    zonefile-load: none
    zonefile-sync: -1
    journal-content: changes
"#,
            primary_ip = primary.ip(),
            primary_port = primary.port(),
        );
        let conf_path = dir.path().join("knot.conf");
        std::fs::write(&conf_path, conf).expect("write knot.conf");
        let log = dir.path().join("knot.log");
        let log_file = std::fs::File::create(&log).expect("create knot.log");
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup knot.log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "knotd is required for this test ({e}); install it with \
                     `apt-get install knot` (.ci/run does)"
                )
            });
        Knot {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if knotd exited (a config error, a port clash).
    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("knotd exited with {status}; its log:\n{}", self.log());
        }
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kdig` with `args`; its standard output.
fn kdig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=1", "+retry=2"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kdig is required for this test ({e}); install it with \
                 `apt-get install knot-dnsutils` (.ci/run does)"
            )
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sorted `+short` answer lines.
fn short(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = kdig(server, &[name, rtype, "+short"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    lines.sort();
    lines
}

/// The response code, from kdig's `status:` header line.
fn status(server: SocketAddr, name: &str, rtype: &str) -> String {
    let out = kdig(server, &[name, rtype]);
    out.split("status: ")
        .nth(1)
        .and_then(|rest| rest.split([',', ';', '\n']).next())
        .unwrap_or_else(|| panic!("no status in kdig output for {name} {rtype}:\n{out}"))
        .trim()
        .to_owned()
}

fn soa_serial(server: SocketAddr) -> Option<u64> {
    short(server, ZONE, "SOA")
        .first()
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
}

/// Polls knot until it serves `serial`.
fn wait_for_serial(knot: &mut Knot, serial: u64) -> Duration {
    let started = Instant::now();
    loop {
        knot.check_running();
        let got = soa_serial(knot.addr());
        if got == Some(serial) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < CONVERGE,
            "knot still serves serial {got:?}, not {serial}, after {CONVERGE:?}; its log:\n{}",
            knot.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names and types asked of both servers.
fn questions() -> Vec<(String, &'static str)> {
    let mut q = vec![
        (ZONE.to_owned(), "SOA"),
        (ZONE.to_owned(), "NS"),
        (ZONE.to_owned(), "TXT"),
        (format!("ns1.{ZONE}"), "A"),
        (format!("ns1.{ZONE}"), "AAAA"),
        (format!("big.{ZONE}"), "A"),
    ];
    for svc in ["web", "db", "cache", "api", "queue"] {
        for t in ["A", "AAAA", "TXT"] {
            q.push((format!("{svc}.{ZONE}"), t));
        }
    }
    for srv in [
        "_http._tcp.web",
        "_https._tcp.web",
        "_pg._tcp.db",
        "_redis._tcp.cache",
        "_grpc._tcp.api",
        "_amqp._tcp.queue",
    ] {
        q.push((format!("{srv}.{ZONE}"), "SRV"));
    }
    q
}

/// Asserts knot answers every question as our server does (records and rcode).
fn assert_same_answers(ours: SocketAddr, knot: SocketAddr) -> String {
    let mut table = String::new();
    for (name, rtype) in questions() {
        let (a, b) = (short(ours, &name, rtype), short(knot, &name, rtype));
        assert_eq!(a, b, "{name} {rtype}: gns-dns vs knot");
        let (sa, sb) = (status(ours, &name, rtype), status(knot, &name, rtype));
        assert_eq!(sa, sb, "{name} {rtype}: rcode of gns-dns vs knot");
        let _ = writeln!(table, "{name} {rtype} {sa} {}", a.len());
    }
    table
}

/// The knot log lines of one refresh: everything logged after `mark` bytes.
fn log_since(knot: &Knot, mark: usize) -> Vec<String> {
    let log = knot.log();
    log.get(mark..)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts the refresh `from` → `to` logged after `mark` was NOTIFY-triggered
/// and incremental: knot's wording (3.2) is `notify, incoming, remote …, serial N`,
/// `IXFR, incoming, remote …, finished, S seconds, M messages, B bytes` and
/// `refresh, remote …, zone updated, …, serial A -> B`; a fallback would log
/// `receiving AXFR-style IXFR`, `fallback to AXFR` or `AXFR, incoming`.
/// Returns the number of IXFR messages.
fn assert_incremental(knot: &Knot, mark: usize, from: u64, to: u64) -> u32 {
    // The new serial can be served a moment before the refresh is logged.
    let started = Instant::now();
    let mut lines = log_since(knot, mark);
    while !lines.iter().any(|l| l.contains("zone updated"))
        && started.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(50));
        lines = log_since(knot, mark);
    }
    let shown = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("notify, incoming") && l.contains(&format!("serial {to}"))),
        "knot logged no NOTIFY for serial {to}:\n{shown}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("AXFR")),
        "knot refreshed {from} -> {to} with a full transfer, not IXFR:\n{shown}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("zone updated") && l.contains(&format!("serial {from} -> {to}"))),
        "knot logged no update {from} -> {to}:\n{shown}"
    );
    let finished = lines
        .iter()
        .find(|l| l.contains("IXFR, incoming") && l.contains(", finished,"))
        .unwrap_or_else(|| panic!("knot logged no finished IXFR {from} -> {to}:\n{shown}"));
    finished
        .split(", ")
        .find_map(|part| part.strip_suffix(" messages")?.parse().ok())
        .unwrap_or_else(|| panic!("no message count in {finished:?}"))
}

#[test]
fn knot_follows_by_axfr_then_ixfr_on_notify() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let knot_port = free_port();
    let server = rt.block_on(async {
        let mut c = ServerConfig::new("127.0.0.1:0".parse().expect("valid address"));
        c.udp_workers = 1;
        c.allow_transfer = vec!["127.0.0.0/8".parse().expect("valid network")];
        c.notify = vec![SocketAddr::from(([127, 0, 0, 1], knot_port))];
        DnsServer::start(c).await.expect("start the DNS server")
    });
    let ours = server.udp_addr;
    let v1 = snapshot(1000);
    server.publish(Arc::new(v1.clone()));

    let mut knot = Knot::start(knot_port, server.tcp_addr);

    // (a) The bootstrap transfer, then the same answers from both.
    let took = wait_for_serial(&mut knot, 1000);
    eprintln!("knot bootstrapped serial 1000 in {took:?}");
    let table = assert_same_answers(ours, knot.addr());
    eprintln!("{table}");
    assert_eq!(
        short(knot.addr(), &format!("web.{ZONE}"), "A"),
        ["198.51.100.10", "198.51.100.20"]
    );
    assert_eq!(short(knot.addr(), &format!("big.{ZONE}"), "A").len(), 300);
    assert_eq!(
        status(knot.addr(), &format!("queue.{ZONE}"), "A"),
        "NXDOMAIN"
    );

    // (b) One address changed, one service added, one removed: NOTIFY, then IXFR.
    let mut v2 = v1.clone();
    v2.version = 1001;
    let zone = &mut v2.zones[0];
    Arc::make_mut(zone.services.get_mut("db").expect("db")).external = vec![ip("192.0.2.99")];
    zone.services.retain(|s| s.name != "api");
    zone.services.insert(Arc::new(service(
        "queue",
        &[("amqp", 5672)],
        &["192.0.2.50", "2001:db8::50"],
        &["broker"],
    )));
    let mark = knot.log().len();
    server.publish(Arc::new(v2.clone()));
    let took = wait_for_serial(&mut knot, 1001);
    eprintln!("knot refreshed to 1001 in {took:?}");
    assert_same_answers(ours, knot.addr());
    assert_eq!(
        short(knot.addr(), &format!("db.{ZONE}"), "A"),
        ["192.0.2.99"]
    );
    assert_eq!(
        short(knot.addr(), &format!("_amqp._tcp.queue.{ZONE}"), "SRV"),
        [format!("0 0 5672 queue.{ZONE}.")]
    );
    assert_eq!(
        status(knot.addr(), &format!("api.{ZONE}"), "AAAA"),
        "NXDOMAIN"
    );
    assert_eq!(
        status(knot.addr(), &format!("_grpc._tcp.api.{ZONE}"), "SRV"),
        "NXDOMAIN"
    );
    assert_incremental(&knot, mark, 1000, 1001);

    // (c) A third change, large enough that the IXFR spans several messages:
    // every address of `big` replaced, a TXT changed, an IPv6 address added.
    let mut v3 = v2.clone();
    v3.version = 1002;
    let zone = &mut v3.zones[0];
    for name in ["big", "cache", "db"] {
        let svc = Arc::make_mut(zone.services.get_mut(name).expect("service"));
        match name {
            "big" => svc.external = many(400, 300),
            "cache" => svc.txt = vec!["tier=disk".into()],
            _ => svc.external.push(ip("2001:db8::99")),
        }
    }
    let mark = knot.log().len();
    server.publish(Arc::new(v3));
    let took = wait_for_serial(&mut knot, 1002);
    eprintln!("knot refreshed to 1002 in {took:?}");
    assert_same_answers(ours, knot.addr());
    assert_eq!(
        short(knot.addr(), &format!("db.{ZONE}"), "AAAA"),
        ["2001:db8::99"]
    );
    assert_eq!(
        short(knot.addr(), &format!("cache.{ZONE}"), "TXT"),
        ["\"tier=disk\""]
    );
    let big = short(knot.addr(), &format!("big.{ZONE}"), "A");
    assert_eq!(big.len(), 300);
    assert!(big.iter().all(|a| !a.starts_with("10.20.0.")), "{big:?}");
    let messages = assert_incremental(&knot, mark, 1001, 1002);
    assert!(
        messages > 1,
        "600 changed records take several IXFR messages, knot got {messages}"
    );
    eprintln!("knot log:\n{}", knot.log());
}
