//! The liveness plane end to end, with real processes on both stores:
//! heartbeats of 200 VM workloads, two member clusters syncing and two
//! gateways following their config make no revision, no SOA serial change,
//! no audit row and no new gateway config while nothing changes; one
//! endpoint change makes exactly one of each. A VM that stops beating leaves
//! DNS within its TTL and a second, and comes back on its next beat; with
//! two federation replicas on one Postgres each transition is written once.
//! A cluster whose only gateway dies leaves the external view and its
//! peers' destinations within the gateway timeout and two seconds, and
//! comes back when the gateway is restarted (`gateways.rs`).

mod gateways;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{
    Proc, StoreBackend, addresses, binary, dns_udp, free_port, start_federation_with_dns,
};
use hickory_proto::rr::{RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use serde_json::{Value, json};

const TOKEN: &str = "liveness-e2e-admin";
const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ZONE: &str = "production.app.acme.com";
/// How long nothing may change.
const IDLE: Duration = Duration::from_secs(60);
const VMS: usize = 200;

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let client = gns_tests::client()
        .timeout(Duration::from_secs(40))
        .build()
        .expect("client");
    let mut request = client.request(method, url).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("federation request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn ok(method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
    let (status, body) = call(method.clone(), url, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {url}: {status} {body}"
    );
    body
}

async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what} did not happen within {timeout:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The SOA serial `dns` answers for the zone (a DNS query that gets no
/// answer is an error, not a serial).
async fn soa_serial(dns: SocketAddr) -> Result<u32, String> {
    let answer =
        tokio::task::spawn_blocking(move || dns_udp(dns, "127.0.0.1:0", ZONE, RecordType::SOA))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no SOA answer from {dns}"))?;
    answer
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .ok_or_else(|| "no SOA record".to_owned())
}

async fn a_records(dns: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let name = name.to_owned();
    let answer =
        tokio::task::spawn_blocking(move || dns_udp(dns, "127.0.0.1:0", &name, RecordType::A))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no answer from {dns}"))?;
    Ok(addresses(&answer))
}

/// The newest audit row's id.
async fn newest_audit(base: &str) -> Value {
    ok(
        reqwest::Method::GET,
        &format!("{base}/v1/audit?limit=1"),
        None,
    )
    .await["items"][0]
        .clone()
}

async fn member(name: &str) -> TestApiServer {
    let api = TestApiServer::start(TestApiServerOptions::default().token(
        "member-token",
        Grant::admin(format!("system:serviceaccount:gns:{name}")),
    ))
    .await
    .expect("test API server");
    api.apply::<Service>(&service("shop", "web", &[("app", "web")], &[("http", 80)]))
        .expect("service");
    api.apply::<EndpointSlice>(&web_slice(true)).expect("slice");
    api
}

fn web_slice(ready: bool) -> EndpointSlice {
    endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("127.0.0.1", ready, ready, false, None)],
        &[("http", 8080)],
    )
}

/// Registers `name` (its ingress on a free loopback port) and returns the port.
async fn register(base: &str, name: &str, kube: &TestApiServer, public: &str) -> u16 {
    let ingress = free_port();
    ok(
        reqwest::Method::POST,
        &format!("{base}/v1/clusters"),
        Some(json!({"name": name,
            "kubernetes": {"server": kube.url(), "token": "member-token",
                           "caData": base64::engine::general_purpose::STANDARD.encode(kube.ca_pem())},
            "gateway": {"ingressAddress": format!("127.0.0.1:{ingress}"), "egressAddress": "127.0.0.1",
                        "publicAddress": public}})),
    )
    .await;
    ingress
}

/// Registers east and west (public addresses 198.51.100.1 and .2) and the
/// global namespace `production` over both; their ingress ports.
async fn two_clusters(base: &str, east: &TestApiServer, west: &TestApiServer) -> (u16, u16) {
    let east_ingress = register(base, "east", east, "198.51.100.1").await;
    let west_ingress = register(base, "west", west, "198.51.100.2").await;
    ok(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(json!({"name": "production", "domain": ZONE,
                    "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]})),
    )
    .await;
    (east_ingress, west_ingress)
}

/// A started gateway: the process, where it was started from, its egress.
struct Gateway {
    process: Proc,
    args: Vec<String>,
    log: std::path::PathBuf,
    egress: SocketAddr,
    admin: SocketAddr,
}

/// Starts `name`'s gateway (join token → certificate) with `extra` flags
/// and waits until it is ready.
async fn gateway(
    base: &str,
    dir: &std::path::Path,
    name: &str,
    ingress: u16,
    extra: &[&str],
) -> Gateway {
    let token = ok(
        reqwest::Method::POST,
        &format!("{base}/v1/clusters/{name}/join-tokens"),
        Some(json!({"ttl": "10m"})),
    )
    .await["token"]
        .as_str()
        .expect("join token")
        .to_owned();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let egress: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut args: Vec<String> = vec![
        "--federation".into(),
        base.into(),
        "--federation-ca".into(),
        gns_tests::ca_for(base),
        "--cluster".into(),
        name.into(),
        "--join-token".into(),
        token,
        "--egress-listen".into(),
        egress.to_string(),
        "--ingress-listen".into(),
        format!("127.0.0.1:{ingress}"),
        "--admin-listen".into(),
        admin.to_string(),
        "--state-dir".into(),
        dir.join(format!("gw-{name}")).display().to_string(),
        "--worker-threads".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let log = dir.join(format!("gateway-{name}.log"));
    let process = Proc::spawn(&binary("gns-gateway"), &args, log.clone());
    let gateway = Gateway {
        process,
        args,
        log,
        egress,
        admin,
    };
    gateway.wait_ready(name).await;
    gateway
}

impl Gateway {
    async fn wait_ready(&self, name: &str) {
        eventually(
            &format!("{name}'s gateway to be ready"),
            Duration::from_secs(30),
            async || match gns_tests::client()
                .build()
                .expect("client")
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => Ok(()),
                other => Err(format!("{other:?}\n{}", self.process.log_text())),
            },
        )
        .await;
    }

    /// Starts it again from its state dir (its join token long spent).
    async fn restart(&mut self, name: &str) {
        self.process.kill();
        self.process = Proc::spawn(&binary("gns-gateway"), &self.args, self.log.clone());
        self.wait_ready(name).await;
    }
}

/// Long-polls `cluster`'s gateway config after `version` for `seconds`: its status and version.
async fn config_poll(base: &str, cluster: &str, version: u64, seconds: u64) -> (u16, u64) {
    let (status, body) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/config/gateways/{cluster}?after={version}&timeout={seconds}"),
        None,
    )
    .await;
    (status, body["version"].as_u64().unwrap_or(version))
}

async fn beat(client: &reqwest::Client, base: &str, vm: usize) -> u16 {
    client
        .put(format!(
            "{base}/v1/global-namespaces/production/external-workloads/vm-{vm}/heartbeat"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn idle_scenario(backend: StoreBackend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (east, west) = (member("east").await, member("west").await);
    let mut flags = backend.federation_args();
    flags.extend(["--secret-key".to_owned(), SECRET_KEY.to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_fed, base, dns) = start_federation_with_dns(dir.path(), TOKEN, &flags).await;
    let (east_ingress, west_ingress) = two_clusters(&base, &east, &west).await;
    for vm in 0..VMS {
        ok(
            reqwest::Method::POST,
            &format!("{base}/v1/global-namespaces/production/external-workloads"),
            Some(json!({"name": format!("vm-{vm}"), "service": "db",
                        "address": format!("192.0.2.{}", vm % 250 + 1),
                        "ports": [{"name": "pg", "port": 5432}], "ttl": "10s"})),
        )
        .await;
    }
    // Both gateways report themselves every 5 s (the default) throughout.
    let _east_gw = gateway(&base, dir.path(), "east", east_ingress, &[]).await;
    let _west_gw = gateway(&base, dir.path(), "west", west_ingress, &[]).await;
    // Every VM beats every 2 s, for as long as the scenario runs. The
    // first round may bring back VMs whose first 10 s lapsed while the
    // others were created and the gateways started (each a write): the
    // baseline is taken after it.
    let (first_round, first_round_done) = tokio::sync::oneshot::channel();
    let beating = {
        let base = base.clone();
        tokio::spawn(async move {
            let client = gns_tests::client().build().expect("client");
            let mut every = tokio::time::interval(Duration::from_secs(2));
            let mut failed = 0usize;
            let mut first_round = Some(first_round);
            loop {
                every.tick().await;
                for vm in 0..VMS {
                    if beat(&client, &base, vm).await != 200 {
                        failed += 1;
                    }
                }
                assert_eq!(failed, 0, "heartbeats failed");
                if let Some(done) = first_round.take() {
                    let _ = done.send(());
                }
            }
        })
    };
    first_round_done
        .await
        .expect("the first round of heartbeats");
    // Settled: both clusters synced and in DNS.
    eventually(
        "both clusters in DNS",
        Duration::from_secs(30),
        async || match a_records(dns, &format!("web.{ZONE}")).await? {
            a if a == ["198.51.100.1", "198.51.100.2"] => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    // And quiet: the serial and the newest audit row agree over 3 s (what
    // the first round wrote has been published).
    let (serial, audit) = eventually(
        "the federation to be quiet",
        Duration::from_secs(30),
        async || {
            let before = (soa_serial(dns).await?, newest_audit(&base).await);
            tokio::time::sleep(Duration::from_secs(3)).await;
            let after = (soa_serial(dns).await?, newest_audit(&base).await);
            if before == after {
                Ok(after)
            } else {
                Err(format!("{before:?} -> {after:?}"))
            }
        },
    )
    .await;
    let east_version = config_poll(&base, "east", 0, 1).await.1;
    let west_version = config_poll(&base, "west", 0, 1).await.1;

    // Nothing changes for IDLE: long-polls of both gateways' configs answer
    // 304 at their timeout, the SOA serial and the audit log stay.
    let started = Instant::now();
    let mut polls = 0;
    while started.elapsed() < IDLE {
        let (east_poll, west_poll) = tokio::join!(
            config_poll(&base, "east", east_version, 10),
            config_poll(&base, "west", west_version, 10)
        );
        assert_eq!(
            (east_poll.0, west_poll.0),
            (304, 304),
            "a gateway config changed while nothing changed after {:?}",
            started.elapsed()
        );
        polls += 1;
        assert_eq!(soa_serial(dns).await.expect("serial"), serial, "SOA serial");
    }
    assert!(polls >= 5, "only {polls} long-polls in {IDLE:?}");
    assert_eq!(newest_audit(&base).await, audit, "no audit row while idle");
    assert!(!beating.is_finished(), "the heartbeats kept going");

    // One endpoint change (east's only web endpoint no longer ready, so
    // east leaves web's answers): one serial change, one new config per gateway.
    let east_poll = tokio::spawn(config_poll_owned(base.clone(), "east", east_version));
    let west_poll = tokio::spawn(config_poll_owned(base.clone(), "west", west_version));
    east.apply::<EndpointSlice>(&web_slice(false))
        .expect("slice");
    let (east_changed, west_changed) = (
        east_poll.await.expect("east poll"),
        west_poll.await.expect("west poll"),
    );
    assert_eq!(east_changed.0, 200, "east's config changed");
    assert_eq!(west_changed.0, 200, "west's config changed");
    let new_serial = eventually(
        "the serial to change",
        Duration::from_secs(10),
        async || match soa_serial(dns).await? {
            s if s != serial => Ok(s),
            s => Err(format!("{s}")),
        },
    )
    .await;
    assert_eq!(
        a_records(dns, &format!("web.{ZONE}")).await.expect("dns"),
        ["198.51.100.2"],
        "east left web's answers"
    );
    // Settled again: one change, and nothing after it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        soa_serial(dns).await.expect("serial"),
        new_serial,
        "one serial change"
    );
    assert_eq!(
        u64::from(new_serial),
        east_changed.1,
        "the serial is the new version"
    );
    for (cluster, version) in [("east", east_changed.1), ("west", west_changed.1)] {
        assert_eq!(
            config_poll(&base, cluster, version, 2).await.0,
            304,
            "{cluster}'s config changed once"
        );
    }
    beating.abort();
}

async fn config_poll_owned(base: String, cluster: &'static str, version: u64) -> (u16, u64) {
    config_poll(&base, cluster, version, 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_changes_while_nothing_changes_on_sqlite() {
    idle_scenario(StoreBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_changes_while_nothing_changes_on_postgres() {
    idle_scenario(StoreBackend::postgres()).await;
}

/// A VM with a 2 s TTL stops beating: it leaves DNS within 3 s of its last
/// beat and comes back on its next beat. On two replicas sharing Postgres,
/// each transition is one audit row, whichever replica took the beats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_vm_leaves_dns_and_returns_once_on_two_replicas() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = StoreBackend::postgres();
    let (one, two) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let mut flags = backend.federation_args();
    flags.extend(["--secret-key".to_owned(), SECRET_KEY.to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_first, base, dns) = start_federation_with_dns(one.path(), TOKEN, &flags).await;
    let (_second, other, other_dns) = start_federation_with_dns(two.path(), TOKEN, &flags).await;
    ok(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(json!({"name": "production", "domain": ZONE, "members": []})),
    )
    .await;
    ok(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces/production/external-workloads"),
        Some(
            json!({"name": "vm-0", "service": "db", "address": "192.0.2.10",
                    "ports": [{"name": "pg", "port": 5432}], "ttl": "2s"}),
        ),
    )
    .await;
    let db = format!("db.{ZONE}");
    for server in [dns, other_dns] {
        eventually(
            "the VM in both replicas' DNS",
            Duration::from_secs(10),
            async || match a_records(server, &db).await? {
                a if a == ["192.0.2.10"] => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    // Beats alternate between the replicas for 5 s: it stays. The beats
    // keep their own pace, so a slow DNS query cannot delay one.
    let client = gns_tests::client().build().expect("client");
    let beats = {
        let (client, replicas) = (client.clone(), [base.clone(), other.clone()]);
        tokio::spawn(async move {
            for i in 0..10 {
                assert_eq!(beat(&client, &replicas[i % 2], 0).await, 200);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    while !beats.is_finished() {
        assert_eq!(a_records(dns, &db).await.expect("dns"), ["192.0.2.10"]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    beats.await.expect("the beats");
    // Silent: gone from both replicas' DNS within TTL + 1 s of the last beat.
    let last_beat = Instant::now();
    for server in [dns, other_dns] {
        eventually(
            "the silent VM to leave DNS",
            Duration::from_secs(3),
            async || match a_records(server, &db).await? {
                a if a.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    eprintln!(
        "silent VM left DNS {:?} after its last beat",
        last_beat.elapsed()
    );
    // Its next beat (at the second replica) brings it back.
    assert_eq!(beat(&client, &other, 0).await, 200);
    for server in [dns, other_dns] {
        eventually(
            "the VM back in DNS",
            Duration::from_secs(5),
            async || match a_records(server, &db).await? {
                a if a == ["192.0.2.10"] => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    let audit = ok(
        reqwest::Method::GET,
        &format!("{base}/v1/audit?limit=100"),
        None,
    )
    .await;
    let transitions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|row| row["actor"] == "system:liveness")
        .filter_map(|row| row["action"].as_str())
        .collect();
    assert_eq!(
        transitions,
        ["alive", "expired"],
        "each transition once: {audit}"
    );
    assert!(
        audit["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|row| row["action"] != "heartbeat"),
        "no beat is audited"
    );
}
