//! The snapshot builder and the DNS config watch on a real SQLite store:
//! writes reach a published snapshot promptly, bursts coalesce into a
//! snapshot at the last revision, expired workloads leave under a new
//! version, and `GET /v1/config/dns` long-polls by version.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gns_dns::ZoneSnapshot;
use gns_federation::api::{self, AppState, Authenticator};
use gns_federation::model::{GlobalNamespace, Kind, Resource};
use gns_federation::snapshot::{CompileOptions, Snapshot, SnapshotReceiver, spawn_builder};
use gns_federation::store::{ObjectKey, ObjectWrite, Store};
use serde_json::{Value, json};
use support::Backend;
use tokio::sync::watch;
use tower::ServiceExt;

const TOKEN: &str = "snapshot-test-token";
const ORIGIN: &str = "production.app.acme.com";

fn write(key: ObjectKey, spec: Value) -> ObjectWrite {
    ObjectWrite {
        key,
        spec,
        secret: None,
        cluster_refs: Vec::new(),
        domain: None,
        status: None,
        actor: "test".into(),
    }
}

/// Cluster `east` (gateway with a public address) and global namespace `production`.
async fn seed(store: &dyn Store) -> u64 {
    store
        .create(write(
            ObjectKey::global(Kind::Cluster, "east"),
            json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443"},
                   "networks": ["10.8.0.0/16"],
                   "gateway": {"ingressAddress": "203.0.113.10:15443", "egressAddress": "10.8.0.53",
                               "publicAddress": "198.51.100.10"}}),
        ))
        .await
        .expect("create cluster");
    create_gns(store).await
}

/// Creates global namespace `production` (members: east/shop); its resource version.
async fn create_gns(store: &dyn Store) -> u64 {
    let gns: GlobalNamespace = serde_json::from_value(json!({
        "name": "production", "domain": ORIGIN,
        "members": [{"cluster": "east", "namespace": "shop"}]}))
    .expect("gns");
    let mut w = write(
        ObjectKey::global(Kind::GlobalNamespace, "production"),
        serde_json::to_value(&gns).expect("json"),
    );
    w.cluster_refs = gns.cluster_refs();
    w.domain = Some(gns.domain.clone());
    store.create(w).await.expect("create gns").resource_version
}

/// Writes discovered service `name` with ready endpoints in `east`.
async fn put_service(store: &dyn Store, name: &str, ready: &[&str]) -> u64 {
    let endpoints: Vec<Value> = ready.iter().map(|a| json!({"address": a})).collect();
    let spec = json!({"name": name, "ports": [{"name": "http", "port": 80}],
                      "clusters": {"east": {"ready": endpoints, "notReady": []}}});
    let key = ObjectKey::scoped(Kind::Service, "production", name);
    if store.get(&key).await.expect("get").is_some() {
        store
            .update(write(key, spec), None)
            .await
            .expect("update")
            .object
            .resource_version
    } else {
        store
            .create(write(key, spec))
            .await
            .expect("create")
            .resource_version
    }
}

/// Waits (at most `within`) for a published snapshot satisfying `pred`.
async fn wait_for(
    rx: &mut SnapshotReceiver,
    within: Duration,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let waited = tokio::time::timeout(within, rx.wait_for(|s| s.as_ref().is_some_and(|s| pred(s))))
        .await
        .map(|found| found.expect("builder alive").clone());
    match waited {
        Ok(found) => found.expect("some"),
        Err(_) => panic!(
            "no matching snapshot within {within:?}; last: {:?}",
            rx.borrow()
        ),
    }
}

fn service<'a>(snapshot: &'a Snapshot, name: &str) -> Option<&'a gns_dns::snapshot::Service> {
    snapshot
        .dns
        .zones
        .iter()
        .find(|z| z.origin == ORIGIN)?
        .services
        .iter()
        .find(|s| s.name == name)
        .map(|s| &**s)
}

#[tokio::test]
async fn a_write_is_published_within_two_seconds() {
    let backend = Backend::sqlite().await;
    let store = Arc::clone(&backend.store);
    let (mut rx, builder) = spawn_builder(Arc::clone(&store), CompileOptions::default());
    let first = wait_for(&mut rx, Duration::from_secs(2), |_| true).await;
    assert!(first.dns.zones.is_empty());

    seed(store.as_ref()).await;
    let rev = put_service(store.as_ref(), "web", &["10.8.1.1"]).await;
    // From the commit (a busy disk's fsync is not the builder's time).
    let started = Instant::now();
    let snap = wait_for(&mut rx, Duration::from_secs(2), |s| s.version >= rev).await;
    let web = service(&snap, "web").expect("web in the snapshot");
    assert_eq!(
        web.external,
        vec!["198.51.100.10".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(
        web.views["east"],
        vec!["10.8.1.1".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(snap.dns.zones[0].txt, vec!["gns=production".to_owned()]);
    assert!(started.elapsed() < Duration::from_secs(2));
    builder.abort();
    backend.cleanup().await;
}

#[tokio::test]
async fn a_burst_of_writes_ends_at_the_last_revision() {
    let backend = Backend::sqlite().await;
    let store = Arc::clone(&backend.store);
    seed(store.as_ref()).await;
    let (mut rx, builder) = spawn_builder(Arc::clone(&store), CompileOptions::default());
    wait_for(&mut rx, Duration::from_secs(2), |_| true).await;

    let mut last = 0;
    for i in 0..50 {
        last = put_service(store.as_ref(), "web", &[&format!("10.8.1.{}", i + 1)]).await;
    }
    assert_eq!(store.revision().await.expect("revision"), last);
    let snap = wait_for(&mut rx, Duration::from_secs(2), |s| s.version == last).await;
    assert_eq!(
        service(&snap, "web").expect("web").views["east"],
        vec!["10.8.1.50".parse::<std::net::IpAddr>().expect("ip")]
    );
    // Nothing newer is published afterwards (no rebuild loop).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.borrow().as_ref().expect("snapshot").version, last);
    builder.abort();
    backend.cleanup().await;
}

/// The liveness plane decides a lapse once (a status write, a new
/// version without the workload); beats meanwhile make no version; a beat
/// after the lapse brings it back under another version.
#[tokio::test]
async fn an_expired_workload_leaves_under_a_new_version_once() {
    let backend = Backend::sqlite().await;
    let store = Arc::clone(&backend.store);
    seed(store.as_ref()).await;
    let now = alive_time_ms();
    let key = ObjectKey::scoped(Kind::ExternalWorkload, "production", "vm");
    let mut w = write(
        key.clone(),
        json!({"name": "vm", "service": "db", "address": "192.0.2.10",
               "ports": [{"name": "pg", "port": 5432}], "ttl": "1s"}),
    );
    w.status = Some(json!({"lastHeartbeatMillis": now}));
    let created = store.create(w).await.expect("create workload");
    store
        .record_liveness(&[gns_federation::liveness::workload_beat(&created, now)])
        .await
        .expect("first beat");

    let (mut rx, builder) = spawn_builder(Arc::clone(&store), CompileOptions::default());
    let alive = wait_for(&mut rx, Duration::from_secs(2), |s| {
        s.version >= created.resource_version
    })
    .await;
    assert!(service(&alive, "db").is_some(), "{:?}", alive.dns);
    assert_eq!(
        alive.next_change_ms, None,
        "beats are not the compiler's clock"
    );

    // Beats before the TTL runs out: no revision.
    let beat = |at: i64| gns_federation::liveness::workload_beat(&created, at);
    store
        .record_liveness(&[beat(now + 500)])
        .await
        .expect("beat");
    gns_federation::liveness::sweep(store.as_ref(), now + 1_400)
        .await
        .expect("sweep");
    assert_eq!(
        store.revision().await.expect("revision"),
        created.resource_version,
        "a beat and a sweep before the lapse write nothing"
    );

    // The lapse: recorded once, and the snapshot without it has a new version.
    gns_federation::liveness::sweep(store.as_ref(), now + 1_500)
        .await
        .expect("sweep");
    let gone = wait_for(&mut rx, Duration::from_secs(4), |s| {
        service(s, "db").is_none() && s.version > created.resource_version
    })
    .await;
    let stored = store.get(&key).await.expect("get").expect("still stored");
    assert_eq!(stored.status["expiredAtMillis"], json!(now + 1_500));
    gns_federation::liveness::sweep(store.as_ref(), now + 9_000)
        .await
        .expect("sweep");
    assert_eq!(
        store.revision().await.expect("revision"),
        gone.version,
        "recorded once"
    );
    let audit = store
        .list_audit(&gns_federation::store::PageRequest::default())
        .await
        .expect("audit");
    assert_eq!(
        (
            audit.items[0].actor.as_str(),
            audit.items[0].action.as_str()
        ),
        (gns_federation::liveness::ACTOR, "expired"),
        "the transition is audited"
    );

    // Its next beat brings it back, once.
    store
        .record_liveness(&[beat(now + 10_000)])
        .await
        .expect("beat");
    let back = gns_federation::liveness::mark_alive(store.as_ref(), &key)
        .await
        .expect("alive");
    assert!(back.status.get("expiredAtMillis").is_none());
    let again = gns_federation::liveness::mark_alive(store.as_ref(), &key)
        .await
        .expect("alive");
    assert_eq!(
        again.resource_version, back.resource_version,
        "written once"
    );
    wait_for(&mut rx, Duration::from_secs(4), |s| {
        service(s, "db").is_some() && s.version == back.resource_version
    })
    .await;
    builder.abort();
    backend.cleanup().await;
}

fn alive_time_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------
// GET /v1/config/dns

fn app(store: Arc<dyn Store>, snapshots: SnapshotReceiver) -> Router {
    api::router_with_snapshots(AppState::new(store, Authenticator::new(TOKEN)), snapshots)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let req = Request::builder()
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let version = resp
        .headers()
        .get("x-gns-snapshot-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    (status, version, body)
}

#[tokio::test]
async fn config_dns_long_polls_by_version() {
    let backend = Backend::sqlite().await;
    let store = Arc::clone(&backend.store);
    seed(store.as_ref()).await;
    let (mut rx, builder) = spawn_builder(Arc::clone(&store), CompileOptions::default());
    let current = wait_for(&mut rx, Duration::from_secs(2), |_| true).await;
    let app = app(Arc::clone(&store), rx.clone());

    // No `after`: the snapshot at once.
    let (status, version, body) = get(&app, "/v1/config/dns").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, Some(current.version.to_string()));
    let zones: ZoneSnapshot = serde_json::from_slice(&body).expect("zone snapshot JSON");
    assert_eq!(&zones, current.dns.as_ref());
    // An older `after`: at once too.
    let (status, _, _) = get(
        &app,
        &format!("/v1/config/dns?after={}", current.version - 1),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Nothing newer: 304 with an empty body after the timeout.
    let started = Instant::now();
    let (status, _, body) = get(
        &app,
        &format!("/v1/config/dns?after={}&timeout=1", current.version),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // A write during the poll answers it promptly with the new snapshot.
    let poll = {
        let app = app.clone();
        let uri = format!("/v1/config/dns?after={}&timeout=20", current.version);
        tokio::spawn(async move { get(&app, &uri).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rev = put_service(store.as_ref(), "web", &["10.8.1.1"]).await;
    // From the commit (a busy disk's fsync is not the builder's time).
    let started = Instant::now();
    let (status, version, body) = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("answered within 2 s")
        .expect("poll task");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status, StatusCode::OK);
    let version: u64 = version.expect("version header").parse().expect("number");
    assert!(version >= rev);
    let zones: ZoneSnapshot = serde_json::from_slice(&body).expect("zone snapshot JSON");
    assert_eq!(zones.version, version);
    assert!(zones.zones[0].services.iter().any(|s| s.name == "web"));

    builder.abort();
    backend.cleanup().await;
}

#[tokio::test]
async fn config_dns_rejects_bad_parameters_and_waits_for_a_first_snapshot() {
    let backend = Backend::sqlite().await;
    let store = Arc::clone(&backend.store);
    let (tx, rx) = watch::channel(None);
    let app = app(Arc::clone(&store), rx);

    for (query, field) in [
        ("after=abc", "after"),
        ("after=-3", "after"),
        ("timeout=61", "timeout"),
        ("timeout=soon", "timeout"),
    ] {
        let (status, _, body) = get(&app, &format!("/v1/config/dns?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        let body: Value = serde_json::from_slice(&body).expect("json error");
        assert_eq!(body["error"]["details"][0]["field"], field, "{query}");
    }

    // No snapshot yet and none within the wait: 503 with a JSON error.
    let (status, _, body) = get(&app, "/v1/config/dns?timeout=0").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(body["error"]["code"], "unavailable");

    // A first snapshot arriving during the wait answers it.
    let poll = {
        let app = app.clone();
        tokio::spawn(async move { get(&app, "/v1/config/dns?timeout=10").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = gns_federation::snapshot::load(store.as_ref())
        .await
        .expect("load");
    let snapshot = gns_federation::snapshot::compile(&state, 0, &CompileOptions::default());
    tx.send_replace(Some(Arc::new(snapshot)));
    let (status, version, _) = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, Some(state.revision.to_string()));

    // Without a feed the route exists but answers 503.
    let bare = api::router(AppState::new(Arc::clone(&store), Authenticator::new(TOKEN)));
    let (status, _, _) = get(&bare, "/v1/config/dns?timeout=0").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    drop(tx);
    backend.cleanup().await;
}

/// The builder keeps its state and reads only changes; after any sequence of
/// writes, deletes and cascades that state must equal a fresh full read.
async fn incremental_state_equals_a_full_read(backend: Backend) {
    use gns_federation::snapshot::{load, refresh};
    let store = Arc::clone(&backend.store);
    let mut state = load(store.as_ref()).await.expect("load");
    seed(store.as_ref()).await;
    let check = async |state: &mut gns_federation::snapshot::StoreState, step: &str| {
        refresh(store.as_ref(), state).await.expect("refresh");
        let full = load(store.as_ref()).await.expect("load");
        assert_eq!(*state, full, "after {step}");
    };
    check(&mut state, "seed").await;
    for name in ["web", "api", "db"] {
        put_service(store.as_ref(), name, &["10.8.1.1"]).await;
    }
    check(&mut state, "three services").await;
    put_service(store.as_ref(), "api", &["10.8.1.2", "10.8.1.3"]).await;
    store
        .delete(
            &ObjectKey::scoped(Kind::Service, "production", "db"),
            None,
            "test",
        )
        .await
        .expect("delete db");
    check(&mut state, "an update and a delete").await;
    put_service(store.as_ref(), "db", &["10.8.1.9"]).await;
    check(&mut state, "db again").await;
    store
        .delete(
            &ObjectKey::global(Kind::GlobalNamespace, "production"),
            None,
            "test",
        )
        .await
        .expect("delete gns");
    check(&mut state, "the global namespace deleted").await;
    assert!(state.scoped.is_empty(), "nothing left of its objects");
    create_gns(store.as_ref()).await;
    put_service(store.as_ref(), "web", &["10.8.1.4"]).await;
    check(&mut state, "the global namespace again").await;
    backend.cleanup().await;
}

#[tokio::test]
async fn incremental_state_equals_a_full_read_sqlite() {
    incremental_state_equals_a_full_read(Backend::sqlite().await).await;
}

#[tokio::test]
async fn incremental_state_equals_a_full_read_postgres() {
    incremental_state_equals_a_full_read(Backend::postgres().await).await;
}
