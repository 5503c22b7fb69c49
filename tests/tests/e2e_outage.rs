//! A member cluster whose API server is down, as an operator lives it, with
//! a real `gns-federation` process: while the API resets every connection
//! for 60 s, the federation tries it only a few times a minute (its probe
//! decides; the watchers wait) and logs the loss once, not every attempt;
//! the cluster shows Unreachable within seconds; once the API is back, the
//! probe (every 5 s) brings the cluster back within 6 s, changes reaching
//! DNS. A `410 Gone` relist still converges in under a second. Its log,
//! written to a file, has no terminal colour codes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{addresses, dns_udp, start_federation_with_dns};
use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use serde_json::{Value, json};

const TOKEN: &str = "outage-e2e-admin";
const ZONE: &str = "production.app.acme.com";
/// How long the API stays down.
const DOWN: Duration = Duration::from_secs(60);
/// What a dead cluster may cost after its first 10 s: the probe every 5 s
/// (12 a minute) and each of its three watchers (services, slices, pods) at
/// most every 22–45 s (4 to 8 a minute), with room for one more probe at
/// each end of the window.
const MAX_ATTEMPTS_PER_MINUTE: u64 = 22;

async fn get(base: &str, path: &str) -> Value {
    gns_tests::client()
        .build()
        .expect("client")
        .get(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("federation request")
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn post(base: &str, path: &str, body: Value) {
    let response = gns_tests::client()
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("federation request");
    assert!(
        response.status().is_success(),
        "POST {path}: {}",
        response.status()
    );
}

async fn web(dns: SocketAddr) -> Option<Vec<String>> {
    tokio::task::spawn_blocking(move || {
        dns_udp(dns, "127.0.0.1:0", &format!("web.{ZONE}"), RecordType::A).map(|m| addresses(&m))
    })
    .await
    .ok()
    .flatten()
}

/// Polls until `check` holds, every 50 ms; how long it took. Panics after `limit`.
async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

fn slice(ready: bool) -> EndpointSlice {
    endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("10.8.1.1", ready, ready, false, None)],
        &[("http", 8080)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_api_is_tried_a_few_times_a_minute_and_logged_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let east = TestApiServer::start(
        TestApiServerOptions::default()
            .token("east-token", Grant::admin("system:serviceaccount:gns:east")),
    )
    .await
    .expect("test API server");
    east.apply::<Service>(&service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 8080)],
    ))
    .expect("service");
    east.apply::<EndpointSlice>(&slice(true)).expect("slice");
    let (fed, base, dns) = start_federation_with_dns(dir.path(), TOKEN, &[]).await;
    post(&base, "/v1/clusters", json!({"name": "east",
        "kubernetes": {"server": east.url(), "token": "east-token",
                       "caData": base64::engine::general_purpose::STANDARD.encode(east.ca_pem())},
        "gateway": {"ingressAddress": "198.51.100.1:15443", "egressAddress": "10.99.0.1", "publicAddress": "198.51.100.1"},
        "staleEndpointPolicy": "keep"})).await;
    post(
        &base,
        "/v1/global-namespaces",
        json!({"name": "production", "domain": ZONE,
        "members": [{"cluster": "east", "namespace": "shop"}]}),
    )
    .await;
    until("east in DNS", Duration::from_secs(20), async || {
        web(dns).await == Some(vec!["198.51.100.1".to_owned()])
    })
    .await;

    // The API resets every connection.
    let log_before = fed.log_text().lines().count();
    east.set_resetting(true);
    let down = Instant::now();
    let unreachable = until(
        "east to show Unreachable",
        Duration::from_secs(15),
        async || get(&base, "/v1/clusters/east").await["status"]["phase"] == "Unreachable",
    )
    .await;
    eprintln!("API down -> Unreachable in {unreachable:?}");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    let (attempts_from, counted_from) = (east.stats().connections, Instant::now());
    tokio::time::sleep(DOWN.saturating_sub(down.elapsed())).await;
    let attempts = east.stats().connections - attempts_from;
    let minutes = counted_from.elapsed().as_secs_f64() / 60.0;
    eprintln!(
        "{attempts} connection attempts in {:?} of the outage, after its first 10 s",
        counted_from.elapsed()
    );
    assert!(
        (attempts as f64) <= MAX_ATTEMPTS_PER_MINUTE as f64 * minutes + 1.0,
        "{attempts} attempts in {minutes:.2} min at a dead API"
    );
    assert_eq!(
        get(&base, "/v1/clusters/east").await["status"]["phase"],
        "Unreachable",
        "still Unreachable after {DOWN:?}"
    );
    let log = fed.log_text();
    let new_lines: Vec<&str> = log.lines().skip(log_before).collect();
    assert!(
        new_lines.len() <= 4,
        "the outage is logged once and summed up once a minute, not per attempt:\n{}",
        new_lines.join("\n")
    );
    assert!(
        new_lines
            .iter()
            .any(|l| l.contains("unreachable") && l.contains("what=\"member cluster API\"")),
        "the loss is logged:\n{}",
        new_lines.join("\n")
    );

    // Back, with a change: the probe sees it within its 5 s period, the
    // watchers relist and the change is in DNS within 3 s more (a loaded
    // machine may delay the probe's tick and the relist, store and DNS
    // build behind it).
    east.apply::<EndpointSlice>(&slice(false)).expect("slice");
    east.set_resetting(false);
    let back = until(
        "the change to reach DNS after the API came back",
        Duration::from_secs(8),
        async || web(dns).await == Some(Vec::new()),
    )
    .await;
    until("east Connected again", Duration::from_secs(6), async || {
        get(&base, "/v1/clusters/east").await["status"]["phase"] == "Connected"
    })
    .await;
    eprintln!("API back -> change in DNS in {back:?}");
    assert!(
        fed.log_text().lines().any(|l| l.contains("reachable again")
            && l.contains("what=\"member cluster API\"")
            && l.contains("down_for")),
        "the recovery is logged with how long it lasted"
    );

    // 410 Gone: history compacted, watches cut, a change made meanwhile.
    let mut fastest = Duration::MAX;
    for (round, ready) in [true, false, true].into_iter().enumerate() {
        east.compact();
        east.apply::<EndpointSlice>(&slice(ready)).expect("slice");
        east.drop_watches();
        let expected = if ready {
            vec!["198.51.100.1".to_owned()]
        } else {
            Vec::new()
        };
        let took = until(
            "the relist to reach DNS",
            Duration::from_secs(10),
            async || web(dns).await.as_ref() == Some(&expected),
        )
        .await;
        eprintln!("410 relist {round}: {took:?}");
        fastest = fastest.min(took);
    }
    assert!(
        fastest < Duration::from_secs(1),
        "a 410 relist converges in under 1 s: {fastest:?}"
    );

    // A log written to a file carries no terminal colour codes.
    assert!(
        !fed.log_text().contains('\u{1b}'),
        "escape codes in a log that is not a terminal"
    );
}
