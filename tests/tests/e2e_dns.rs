//! End-to-end DNS with the real binaries: a REST write to `gns-federation`
//! becomes visible in its in-process DNS and in a `gns-dns` replica; an
//! external workload that stops heartbeating disappears from answers; the
//! replica keeps answering when the federation dies, and starts answering
//! from its cache alone after a restart. Run once with the federation on its
//! embedded SQLite store and once on Postgres.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gns_tests::{Proc, StoreBackend, addresses, binary, dns_udp, free_port, http, wait_for};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

const TOKEN: &str = "gns_e2e_dns_token";
const DOMAIN: &str = "production.app.acme.com";

fn federation(data: &Path, api: u16, dns: u16, store: &StoreBackend) -> Proc {
    let mut args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{api}"),
        "--dns-listen".to_owned(),
        format!("127.0.0.1:{dns}"),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--admin-token".to_owned(),
        TOKEN.to_owned(),
    ];
    args.extend(store.federation_args());
    let mut proc = Proc::spawn(
        &binary("gns-federation"),
        &args,
        data.join("federation.log"),
    );
    gns_tests::trust(&format!("https://127.0.0.1:{api}"), &data.join("ca.pem"));
    let url = format!("https://127.0.0.1:{api}/readyz");
    wait_for(
        Duration::from_secs(20),
        "gns-federation to be ready",
        || {
            assert!(
                proc.running(),
                "gns-federation on {} exited:\n{}",
                store.name(),
                proc.log_text()
            );
            matches!(http("GET", &url, None, None), Ok((200, _))).then_some(())
        },
    );
    proc
}

fn replica(dir: &Path, api: u16, dns: u16, admin: u16, name: &str) -> Proc {
    let args = [
        "--federation".to_owned(),
        format!("https://127.0.0.1:{api}"),
        "--federation-ca".to_owned(),
        dir.join("ca.pem").display().to_string(),
        "--token".to_owned(),
        TOKEN.to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{dns}"),
        "--admin-listen".to_owned(),
        format!("127.0.0.1:{admin}"),
        "--cache-dir".to_owned(),
        dir.join("cache").display().to_string(),
    ];
    Proc::spawn(&binary("gns-dns"), &args, dir.join(format!("{name}.log")))
}

fn post(api: u16, path: &str, body: serde_json::Value) {
    let (status, text) = http(
        "POST",
        &format!("https://127.0.0.1:{api}{path}"),
        Some(TOKEN),
        Some(&body),
    )
    .expect("request");
    assert!((200..300).contains(&status), "POST {path}: {status} {text}");
}

fn answer_of(server: SocketAddr, name: &str) -> Option<(ResponseCode, Vec<String>)> {
    dns_udp(server, "127.0.0.1:0", name, RecordType::A)
        .map(|m| (m.metadata.response_code, addresses(&m)))
}

fn wait_answer(server: SocketAddr, name: &str, expected: &[&str], what: &str) {
    let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    wait_for(Duration::from_secs(10), what, || {
        answer_of(server, name)
            .filter(|(_, addrs)| *addrs == expected)
            .map(|_| ())
    });
}

#[test]
fn rest_writes_reach_dns_and_replicas_outlive_the_federation_on_sqlite() {
    rest_writes_reach_dns_and_replicas_outlive_the_federation(StoreBackend::Sqlite);
}

#[test]
fn rest_writes_reach_dns_and_replicas_outlive_the_federation_on_postgres() {
    rest_writes_reach_dns_and_replicas_outlive_the_federation(StoreBackend::postgres());
}

/// The scenario, with the federation's state in `store` (dropped, with its
/// Postgres database, after every process of the scenario is killed).
fn rest_writes_reach_dns_and_replicas_outlive_the_federation(store: StoreBackend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, dns) = (free_port(), free_port());
    let mut fed = federation(dir.path(), api, dns, &store);
    let dns_addr: SocketAddr = format!("127.0.0.1:{dns}").parse().expect("addr");

    post(
        api,
        "/v1/clusters",
        json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"},
        "networks": ["10.8.0.0/16"], "gateway": {"ingressAddress": "203.0.113.10:15443", "egressAddress": "10.8.0.53", "publicAddress": "198.51.100.10"}}),
    );
    post(
        api,
        "/v1/global-namespaces",
        json!({"name": "production", "domain": DOMAIN, "members": [{"cluster": "east", "namespace": "shop"}]}),
    );
    post(
        api,
        "/v1/global-namespaces/production/external-workloads",
        json!({"name": "db-vm-1", "service": "db", "address": "192.0.2.10",
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}], "ttl": "1h"}),
    );
    let db = format!("db.{DOMAIN}");
    wait_answer(
        dns_addr,
        &db,
        &["192.0.2.10"],
        "the workload in the federation's DNS",
    );
    assert_eq!(
        answer_of(dns_addr, &format!("nope.{DOMAIN}")).map(|a| a.0),
        Some(ResponseCode::NXDomain)
    );
    assert_eq!(
        answer_of(dns_addr, "example.org").map(|a| a.0),
        Some(ResponseCode::Refused)
    );

    // A workload that stops heartbeating leaves the answers on its own.
    post(
        api,
        "/v1/global-namespaces/production/external-workloads",
        json!({"name": "cache-vm", "service": "cache", "address": "192.0.2.20",
        "ports": [{"name": "redis", "port": 6379}], "ttl": "2s"}),
    );
    let cache = format!("cache.{DOMAIN}");
    wait_answer(
        dns_addr,
        &cache,
        &["192.0.2.20"],
        "the short-lived workload",
    );
    wait_for(
        Duration::from_secs(10),
        "the expired workload to leave DNS",
        || {
            answer_of(dns_addr, &cache)
                .filter(|(code, addrs)| *code == ResponseCode::NXDomain && addrs.is_empty())
                .map(|_| ())
        },
    );

    // A replica follows the federation.
    let (rdns, radmin) = (free_port(), free_port());
    let replica_addr: SocketAddr = format!("127.0.0.1:{rdns}").parse().expect("addr");
    let mut rep = replica(dir.path(), api, rdns, radmin, "replica-1");
    wait_answer(
        replica_addr,
        &db,
        &["192.0.2.10"],
        "the replica to load the snapshot",
    );
    let (status, _) = http(
        "GET",
        &format!("http://127.0.0.1:{radmin}/readyz"),
        None,
        None,
    )
    .expect("readyz");
    assert_eq!(status, 200);
    post(
        api,
        "/v1/global-namespaces/production/external-workloads",
        json!({"name": "db-vm-2", "service": "db", "address": "192.0.2.11",
        "ports": [{"name": "pg", "port": 5432}], "ttl": "1h"}),
    );
    wait_answer(
        replica_addr,
        &db,
        &["192.0.2.10", "192.0.2.11"],
        "a REST write to reach the replica",
    );

    // The federation dies: the replica keeps answering.
    fed.kill();
    for _ in 0..5 {
        assert_eq!(
            answer_of(replica_addr, &db).map(|a| a.1),
            Some(vec!["192.0.2.10".to_owned(), "192.0.2.11".to_owned()])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Restarted with only its cache (federation still down), it answers again.
    rep.kill();
    let (rdns2, radmin2) = (free_port(), free_port());
    let replica2: SocketAddr = format!("127.0.0.1:{rdns2}").parse().expect("addr");
    let rep2 = replica(dir.path(), api, rdns2, radmin2, "replica-2");
    wait_answer(
        replica2,
        &db,
        &["192.0.2.10", "192.0.2.11"],
        "the restarted replica to answer from its cache",
    );
    let (status, _) = http(
        "GET",
        &format!("http://127.0.0.1:{radmin2}/readyz"),
        None,
        None,
    )
    .expect("readyz");
    assert_eq!(status, 200, "{}", rep2.log_text());
}
