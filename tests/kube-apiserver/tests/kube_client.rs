//! The test API server driven by the real kube-rs client: list paging,
//! selectors, GET, raw watch semantics, the kube-runtime watcher (initial
//! list, changes, bookmarks, relist after `410 Gone`, streaming lists),
//! authentication and authorization errors, and recovery from faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector, watcher as watch};
use kube::{Client, ResourceExt};
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};

const ADMIN: &str = "admin-token";
const LIMITED: &str = "limited-token";
const LIMITED_USER: &str = "system:serviceaccount:gns:reader";
const WAIT: Duration = Duration::from_secs(10);

async fn start() -> TestApiServer {
    TestApiServer::start(
        TestApiServerOptions::default()
            .token(ADMIN, Grant::admin("admin"))
            .token(
                LIMITED,
                Grant::read_only(LIMITED_USER).namespaces(["other"]),
            )
            .bookmark_interval(Duration::from_millis(200)),
    )
    .await
    .expect("server starts")
}

/// A kube client built by hand, as the federation builds one from a
/// registered cluster.
fn client(server: &TestApiServer, token: &str) -> Client {
    // Another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.root_cert = Some(vec![server.ca_der().to_vec()]);
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).expect("client")
}

fn svc(name: &str) -> Service {
    service("prod", name, &[("app", name)], &[("http", 80)])
}

fn names(items: &[Service]) -> Vec<String> {
    items.iter().map(|s| s.name_any()).collect()
}

fn api_status(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// name → resourceVersion of the services in `prod`, as the server has them.
fn server_state(server: &TestApiServer) -> BTreeMap<String, String> {
    server
        .list::<Service>()
        .expect("list")
        .iter()
        .filter(|s| s.namespace().as_deref() == Some("prod"))
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect()
}

fn reader_state(reader: &reflector::Store<Service>) -> BTreeMap<String, String> {
    reader
        .state()
        .iter()
        .map(|s| (s.name_any(), s.resource_version().unwrap_or_default()))
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event<S>(stream: &mut S) -> Event<Service>
where
    S: Stream<Item = Result<Event<Service>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("no watcher error")
}

/// Starts a reflector over `prod` services, driven by a task; returns its
/// store and a count of the errors the watcher surfaced.
async fn reflect(server: &TestApiServer) -> (reflector::Store<Service>, Arc<AtomicUsize>) {
    let api: Api<Service> = Api::namespaced(client(server, ADMIN), "prod");
    let (reader, writer) = reflector::store();
    let errors = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&errors);
    let stream = reflector(writer, watch(api, watcher::Config::default())).default_backoff();
    tokio::spawn(stream.for_each(move |event| {
        if event.is_err() {
            counted.fetch_add(1, Ordering::Relaxed);
        }
        futures::future::ready(())
    }));
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .expect("initial sync in time")
        .expect("writer alive");
    assert!(server.wait_for_watches(1, WAIT).await, "the watch opens");
    (reader, errors)
}

#[tokio::test]
async fn list_pages_through_continue_tokens_at_one_resource_version() {
    let server = start().await;
    for n in 0..5 {
        server.apply(&svc(&format!("s{n}"))).expect("apply");
    }
    server
        .apply(&service("dev", "elsewhere", &[], &[]))
        .expect("apply");
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");

    let first = api
        .list(&ListParams::default().limit(2))
        .await
        .expect("first page");
    assert_eq!(names(&first.items), ["s0", "s1"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let rv = first
        .metadata
        .resource_version
        .clone()
        .expect("list resourceVersion");
    assert_eq!(rv, server.resource_version().to_string());

    // Changes between pages do not show up in the rest of this list.
    server.delete::<Service>("prod", "s4").expect("delete");
    server.apply(&svc("s2b")).expect("apply");
    let mut all = names(&first.items);
    let mut token = first.metadata.continue_.clone();
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .expect("next page");
        assert_eq!(page.metadata.resource_version.as_deref(), Some(rv.as_str()));
        all.extend(names(&page.items));
        token = page.metadata.continue_.clone();
        pages += 1;
    }
    assert_eq!(
        (all, pages),
        (
            vec!["s0", "s1", "s2", "s3", "s4"]
                .into_iter()
                .map(String::from)
                .collect(),
            3
        )
    );

    // A new list sees them; across all namespaces too.
    let now = api.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&now.items), ["s0", "s1", "s2", "s2b", "s3"]);
    let everywhere: Api<Service> = Api::all(client(&server, ADMIN));
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        6
    );

    // A token from before a compaction has expired.
    let page = api
        .list(&ListParams::default().limit(2))
        .await
        .expect("page");
    server.apply(&svc("s9")).expect("apply");
    server.compact();
    let token = page.metadata.continue_.expect("token");
    let status = api_status(
        api.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .expect_err("expired"),
    );
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    assert!(server.stats().expired >= 1);
}

#[tokio::test]
async fn get_and_selectors() {
    let server = start().await;
    server
        .apply(&service(
            "prod",
            "web",
            &[("app", "web"), ("tier", "front")],
            &[("http", 80)],
        ))
        .expect("apply");
    server
        .apply(&service(
            "prod",
            "api",
            &[("app", "api")],
            &[("grpc", 9000)],
        ))
        .expect("apply");
    server
        .apply(&service(
            "prod",
            "db",
            &[("app", "db"), ("tier", "back")],
            &[("pg", 5432)],
        ))
        .expect("apply");
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");
    for (selector, expected) in [
        ("tier", vec!["db", "web"]),
        ("!tier", vec!["api"]),
        ("app!=web,tier", vec!["db"]),
        ("app in (api,web)", vec!["api", "web"]),
        ("tier notin (front)", vec!["api", "db"]),
        ("app=web", vec!["web"]),
    ] {
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list");
        assert_eq!(names(&list.items), expected, "selector {selector}");
    }
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=api"))
        .await
        .expect("list");
    assert_eq!(names(&by_name.items), ["api"]);
    let bad = api_status(
        api.list(&ListParams::default().labels("a b"))
            .await
            .expect_err("400"),
    );
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));

    let web = api.get("web").await.expect("get");
    assert!(web.uid().is_some());
    assert!(web.creation_timestamp().is_some());
    assert_eq!(web.metadata.generation, Some(1));
    assert_eq!(
        web.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(Vec::len),
        Some(1)
    );
    let missing = api_status(api.get("nope").await.expect_err("404"));
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "services \"nope\" not found");

    server
        .apply(&endpoint_slice(
            "prod",
            "web",
            "web-abc12",
            &[
                ("10.0.0.1", true, true, false, Some("zone-a")),
                ("10.0.0.2", false, false, true, None),
            ],
            &[("http", 8080)],
        ))
        .expect("apply slice");
    let slices: Api<EndpointSlice> = Api::namespaced(client(&server, ADMIN), "prod");
    let list = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("list slices");
    assert_eq!(list.items.len(), 1);
    let endpoints = &list.items[0].endpoints;
    assert_eq!(endpoints[0].zone.as_deref(), Some("zone-a"));
    assert_eq!(
        endpoints[1].conditions.as_ref().and_then(|c| c.terminating),
        Some(true)
    );
}

#[tokio::test]
async fn watcher_lists_then_streams_changes_and_gets_bookmarks() {
    let server = start().await;
    for n in ["a", "b", "c"] {
        server.apply(&svc(n)).expect("apply");
    }
    let list_rv = server.resource_version();
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");
    let mut stream = watch(api, watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut stream).await, Event::Init));
    let mut initial = Vec::new();
    for _ in 0..3 {
        match next_event(&mut stream).await {
            Event::InitApply(s) => initial.push(s.name_any()),
            other => panic!("expected InitApply, got {other:?}"),
        }
    }
    assert_eq!(initial, ["a", "b", "c"]);
    assert!(matches!(next_event(&mut stream).await, Event::InitDone));

    server.apply(&svc("d")).expect("apply");
    let mut b = svc("b");
    b.labels_mut().insert("version".into(), "2".into());
    server.apply(&b).expect("modify");
    server.delete::<Service>("prod", "a").expect("delete");
    match next_event(&mut stream).await {
        Event::Apply(s) => assert_eq!(s.name_any(), "d"),
        other => panic!("expected Apply(d), got {other:?}"),
    }
    match next_event(&mut stream).await {
        Event::Apply(s) => assert_eq!(s.labels().get("version").map(String::as_str), Some("2")),
        other => panic!("expected Apply(b), got {other:?}"),
    }
    match next_event(&mut stream).await {
        Event::Delete(s) => assert_eq!(s.name_any(), "a"),
        other => panic!("expected Delete(a), got {other:?}"),
    }

    // Bookmarks flow (every 200 ms here) and surface no event.
    let before = server.stats().bookmarks;
    assert!(
        tokio::time::timeout(Duration::from_millis(700), stream.next())
            .await
            .is_err(),
        "bookmarks are not events"
    );
    assert!(
        server.stats().bookmarks >= before + 2,
        "{:?}",
        server.stats()
    );

    // What kube-rs asked for.
    let requests = server.requests();
    let list = requests
        .iter()
        .find(|r| r.path == "/api/v1/namespaces/prod/services" && !r.query.contains("watch"));
    let watch = requests.iter().find(|r| r.query.contains("watch=true"));
    let (list, watch) = (
        list.expect("a list request"),
        watch.expect("a watch request"),
    );
    println!(
        "kube-rs list:  {} {}?{} {:?}",
        list.method, list.path, list.query, list.headers
    );
    println!(
        "kube-rs watch: {} {}?{} {:?}",
        watch.method, watch.path, watch.query, watch.headers
    );
    assert!(list.query.contains("limit=500"));
    for param in [
        "allowWatchBookmarks=true",
        "timeoutSeconds=290",
        &format!("resourceVersion={list_rv}"),
    ] {
        assert!(
            watch.query.contains(param),
            "watch query {} lacks {param}",
            watch.query
        );
    }
}

#[tokio::test]
async fn watcher_relists_after_410_and_loses_nothing() {
    let server = start().await;
    for n in 0..4 {
        server.apply(&svc(&format!("s{n}"))).expect("apply");
    }
    let (reader, errors) = reflect(&server).await;
    assert_eq!(reader_state(&reader), server_state(&server));
    let lists_before = server.stats().lists;

    // Changes the open watch never delivers, then history is compacted and
    // the watch connection is cut: the resume gets 410 and must relist.
    server.stall_watches(true);
    server.apply(&svc("s4")).expect("apply");
    server.apply(&svc("s5")).expect("apply");
    server.delete::<Service>("prod", "s0").expect("delete");
    let mut s1 = svc("s1");
    s1.labels_mut().insert("version".into(), "2".into());
    server.apply(&s1).expect("modify");
    server.compact();
    assert_eq!(server.drop_watches(), 1);
    server.stall_watches(false);

    eventually("the reflector converges", || {
        reader_state(&reader) == server_state(&server)
    })
    .await;
    let stats = server.stats();
    assert!(stats.expired >= 1, "{stats:?}");
    assert!(stats.lists > lists_before, "{stats:?}");
    assert!(
        errors.load(Ordering::Relaxed) >= 1,
        "the watcher surfaced the 410"
    );
    assert_eq!(
        reader_state(&reader).keys().cloned().collect::<Vec<_>>(),
        ["s1", "s2", "s3", "s4", "s5"]
    );
}

#[tokio::test]
async fn a_dropped_watch_resumes_silently_while_history_lasts() {
    let server = start().await;
    server.apply(&svc("s0")).expect("apply");
    let (reader, errors) = reflect(&server).await;
    let lists_before = server.stats().lists;
    server.stall_watches(true);
    server.apply(&svc("s1")).expect("apply");
    assert_eq!(server.drop_watches(), 1);
    server.stall_watches(false);
    eventually("the reflector converges", || {
        reader_state(&reader) == server_state(&server)
    })
    .await;
    assert_eq!(server.stats().lists, lists_before, "no relist");
    assert_eq!(errors.load(Ordering::Relaxed), 0, "no error surfaced");
    assert!(server.stats().watches >= 2, "the watch was resumed");
}

#[tokio::test]
async fn watcher_recovers_after_the_server_goes_down() {
    let server = start().await;
    for n in 0..3 {
        server.apply(&svc(&format!("s{n}"))).expect("apply");
    }
    let (reader, _errors) = reflect(&server).await;
    server.go_down().await;
    assert!(!server.is_up());
    assert_eq!(server.open_watches(), 0);
    server.apply(&svc("s9")).expect("apply while down");
    server
        .delete::<Service>("prod", "s0")
        .expect("delete while down");
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");
    assert!(
        api.list(&ListParams::default()).await.is_err(),
        "nothing listens"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.come_up().await.expect("comes up");
    eventually("the reflector converges", || {
        reader_state(&reader) == server_state(&server)
    })
    .await;
    assert_eq!(
        reader_state(&reader).keys().cloned().collect::<Vec<_>>(),
        ["s1", "s2", "s9"]
    );
}

#[tokio::test]
async fn raw_watches_follow_selectors_end_on_timeout_and_report_410() {
    let server = start().await;
    server
        .apply(&service("prod", "web", &[("app", "web")], &[]))
        .expect("apply");
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");
    let from = server.resource_version().to_string();
    let started = Instant::now();
    let mut stream = api
        .watch(&WatchParams::default().labels("app=web").timeout(1), &from)
        .await
        .expect("watch")
        .boxed();
    server
        .apply(&service("prod", "web2", &[("app", "web")], &[]))
        .expect("apply");
    server
        .apply(&service("prod", "other", &[("app", "other")], &[]))
        .expect("apply");
    server
        .apply(&service("prod", "web", &[("app", "gone")], &[]))
        .expect("relabel out");
    server
        .apply(&service("prod", "other", &[("app", "web")], &[]))
        .expect("relabel in");
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("ends in time")
    {
        match event.expect("no error") {
            WatchEvent::Added(s) => seen.push(format!("ADDED {}", s.name_any())),
            WatchEvent::Modified(s) => seen.push(format!("MODIFIED {}", s.name_any())),
            WatchEvent::Deleted(s) => seen.push(format!("DELETED {}", s.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(status) => panic!("unexpected error event {status:?}"),
        }
    }
    assert_eq!(seen, ["ADDED web2", "DELETED web", "ADDED other"]);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );

    // From a compacted resourceVersion: 200, one ERROR event (410), end.
    server.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &from)
        .await
        .expect("200")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn streaming_list_watcher_finishes_on_the_initial_events_end_bookmark() {
    let server = start().await;
    for n in ["a", "b"] {
        server.apply(&svc(n)).expect("apply");
    }
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");
    let mut stream = watch(api, watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(next_event(&mut stream).await, Event::Init));
    for name in ["a", "b"] {
        match next_event(&mut stream).await {
            Event::InitApply(s) => assert_eq!(s.name_any(), name),
            other => panic!("expected InitApply, got {other:?}"),
        }
    }
    assert!(matches!(next_event(&mut stream).await, Event::InitDone));
    server.apply(&svc("c")).expect("apply");
    match next_event(&mut stream).await {
        Event::Apply(s) => assert_eq!(s.name_any(), "c"),
        other => panic!("expected Apply(c), got {other:?}"),
    }
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.query.contains("sendInitialEvents=true"))
    );
    assert_eq!(server.stats().lists, 0);
}

#[tokio::test]
async fn bad_tokens_get_401_and_missing_permissions_403() {
    let server = start().await;
    server.apply(&svc("web")).expect("apply");
    server
        .apply(&service("other", "mine", &[], &[]))
        .expect("apply");

    let bad: Api<Service> = Api::namespaced(client(&server, "wrong-token"), "prod");
    let status = api_status(bad.list(&ListParams::default()).await.expect_err("401"));
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));

    let limited = client(&server, LIMITED);
    let status = api_status(
        Api::<Service>::namespaced(limited.clone(), "prod")
            .list(&ListParams::default())
            .await
            .expect_err("403"),
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        format!(
            "services is forbidden: User \"{LIMITED_USER}\" cannot list resource \"services\" in API group \"\" in the namespace \"prod\""
        )
    );
    let status = api_status(
        Api::<EndpointSlice>::all(limited.clone())
            .list(&ListParams::default())
            .await
            .expect_err("403"),
    );
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .ends_with("in API group \"discovery.k8s.io\" at the cluster scope"),
        "{}",
        status.message
    );
    let mine = Api::<Service>::namespaced(limited.clone(), "other")
        .list(&ListParams::default())
        .await
        .expect("allowed namespace");
    assert_eq!(names(&mine.items), ["mine"]);

    server.revoke_token(LIMITED);
    let status = api_status(
        Api::<Service>::namespaced(limited, "other")
            .list(&ListParams::default())
            .await
            .expect_err("revoked"),
    );
    assert_eq!(status.code, 401);
    let stats = server.stats();
    assert_eq!((stats.unauthorized, stats.forbidden), (2, 2));
}

#[tokio::test]
async fn latency_and_garbage() {
    let server = start().await;
    server.apply(&svc("web")).expect("apply");
    let api: Api<Service> = Api::namespaced(client(&server, ADMIN), "prod");
    server.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    api.list(&ListParams::default()).await.expect("slow list");
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.set_latency(Duration::ZERO);

    server.set_garbage(true);
    match api.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => panic!("garbage is not a Status: {status:?}"),
        Err(_) => {}
        Ok(list) => panic!("garbage parsed: {list:?}"),
    }
    server.set_garbage(false);
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn a_restarted_server_keeps_its_port_and_ca() {
    let first = start().await;
    let version = client(&first, ADMIN)
        .apiserver_version()
        .await
        .expect("version");
    assert_eq!(version.git_version, "v1.33.0");
    let (addr, tls, pem) = (
        first.addr(),
        first.tls_identity().clone(),
        first.ca_pem().to_owned(),
    );
    drop(first);
    let second = TestApiServer::start(
        TestApiServerOptions::default()
            .addr(addr)
            .tls(tls)
            .token(ADMIN, Grant::admin("admin")),
    )
    .await
    .expect("restarts on the same port");
    assert_eq!((second.addr(), second.ca_pem()), (addr, pem.as_str()));
    second.apply(&svc("web")).expect("apply");
    let list = Api::<Service>::all(client(&second, ADMIN))
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(names(&list.items), ["web"]);
}
