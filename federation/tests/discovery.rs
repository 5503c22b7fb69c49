//! Discovery end to end, in process: a real federation (API, store, snapshot
//! builder, DNS) syncing two member clusters served by the Kubernetes API test
//! server over HTTPS through the real kube-rs client. Services and endpoints
//! reach the catalog and DNS; readiness changes move DNS; `410 Gone` with cut
//! watches loses nothing; bad credentials and an unreachable API show in the
//! cluster status, and an unreachable cluster is withdrawn per its policy.
//! Two replicas on one Postgres: exactly one syncs a cluster, and the other
//! takes over when it stops.

mod support;

use support::fed::{Fed, FedProcess, eventually};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use serde_json::{Value, json};

const DOMAIN: &str = "production.app.acme.com";

async fn member(name: &str, token: &str) -> TestApiServer {
    TestApiServer::start(TestApiServerOptions::default().token(
        token,
        Grant::admin(format!("system:serviceaccount:gns:{name}")),
    ))
    .await
    .expect("test API server starts")
}

fn cluster_body(name: &str, api: &TestApiServer, token: &str, public: &str, net: &str) -> Value {
    json!({"name": name, "kubernetes": {"server": api.url(), "token": token,
            "caData": base64::engine::general_purpose::STANDARD.encode(api.ca_pem())},
           "networks": [net],
           "gateway": {"ingressAddress": format!("{public}:15443"), "egressAddress": "10.99.0.1", "publicAddress": public},
           "staleEndpointPolicy": {"withdrawAfter": "1s"}})
}

fn seed(api: &TestApiServer, ready: bool) {
    api.apply::<Service>(&service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 8080)],
    ))
    .expect("service");
    api.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[
            ("10.8.1.1", ready, ready, false, Some("a")),
            ("10.8.1.2", true, true, false, Some("b")),
        ],
        &[("http", 8080)],
    ))
    .expect("slice");
}

/// The A records `server` answers for `name`, sorted; an error when no
/// answer came within a second (so a dead server never passes for an empty
/// answer).
async fn dns_a(server: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    let mut n = Name::from_ascii(name).expect("name");
    n.set_fqdn(true);
    msg.add_query(Query::query(n, RecordType::A));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket
        .send_to(&msg.to_vec().expect("encode"), server)
        .await
        .expect("send");
    let mut buf = [0u8; 2048];
    let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no DNS answer from {server} within 1 s"))?
        .map_err(|e| format!("DNS from {server}: {e}"))?;
    let reply = Message::from_vec(&buf[..len]).map_err(|e| format!("undecodable answer: {e}"))?;
    let mut out: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
    out.sort();
    Ok(out)
}

/// Waits until `dns` answers exactly `expected` for `web`.
async fn expect_dns_at(dns: SocketAddr, expected: &[&str], what: &str) {
    let expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    eventually(what, Duration::from_secs(10), || async {
        let got = dns_a(dns, &format!("web.{DOMAIN}")).await?;
        if got == expected {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

async fn expect_dns(fed: &Fed, expected: &[&str], what: &str) {
    expect_dns_at(fed.dns, expected, what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_clusters_reach_catalog_and_dns() {
    let fed = Fed::start().await;
    let east = member("east", "east-token").await;
    let west = member("west", "west-token").await;
    seed(&east, true);
    seed(&west, true);
    fed.post(
        "/v1/clusters",
        cluster_body("east", &east, "east-token", "198.51.100.1", "10.8.0.0/16"),
    )
    .await;
    fed.post(
        "/v1/clusters",
        cluster_body("west", &west, "west-token", "198.51.100.2", "10.9.0.0/16"),
    )
    .await;
    fed.post("/v1/global-namespaces", json!({"name": "production", "domain": DOMAIN,
        "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]})).await;

    // Both clusters' endpoints in the catalog, and both public gateways in DNS.
    eventually(
        "the catalog to list web in both clusters",
        Duration::from_secs(10),
        || async {
            let web = fed
                .get("/v1/global-namespaces/production/services/web")
                .await;
            let ready = |c: &str| web["clusters"][c]["ready"].as_array().map_or(0, Vec::len);
            if ready("east") == 2 && ready("west") == 2 && web["ports"][0]["port"] == 8080 {
                Ok(())
            } else {
                Err(web.to_string())
            }
        },
    )
    .await;
    expect_dns(
        &fed,
        &["198.51.100.1", "198.51.100.2"],
        "both clusters in DNS",
    )
    .await;
    let status = fed.get("/v1/clusters/east").await;
    assert_eq!(status["status"]["phase"], "Connected", "{status}");

    // Scale west down to nothing ready: DNS drops west.
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("10.8.1.1", false, false, true, None)],
        &[("http", 8080)],
    ))
    .expect("slice");
    expect_dns(
        &fed,
        &["198.51.100.1"],
        "west withdrawn after its endpoints went unready",
    )
    .await;

    // History compacted and every watch cut: the watchers relist (410 Gone) and nothing is lost.
    east.compact();
    west.compact();
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("10.8.1.9", true, true, false, None)],
        &[("http", 8080)],
    ))
    .expect("slice");
    east.drop_watches();
    west.drop_watches();
    expect_dns(
        &fed,
        &["198.51.100.1", "198.51.100.2"],
        "west back after 410 Gone and dropped watches",
    )
    .await;
    eventually(
        "west's new endpoint in the catalog",
        Duration::from_secs(10),
        || async {
            let web = fed
                .get("/v1/global-namespaces/production/services/web")
                .await;
            if web["clusters"]["west"]["ready"][0]["address"] == "10.8.1.9" {
                Ok(())
            } else {
                Err(web.to_string())
            }
        },
    )
    .await;

    // East's API goes away: the cluster shows Unreachable, its endpoints are kept, then withdrawn after 1 s.
    east.go_down().await;
    let down = Instant::now();
    eventually(
        "east to show Unreachable",
        Duration::from_secs(15),
        || async {
            let c = fed.get("/v1/clusters/east").await;
            if c["status"]["phase"] == "Unreachable" {
                Ok(())
            } else {
                Err(c["status"].to_string())
            }
        },
    )
    .await;
    expect_dns(
        &fed,
        &["198.51.100.2"],
        "east withdrawn per staleEndpointPolicy",
    )
    .await;
    eprintln!(
        "API down -> withdrawn from DNS (withdrawAfter 1s): {:?}",
        down.elapsed()
    );
    // The withdrawal is recorded in the store (a new revision), so DNS
    // replicas following by version get it too, not only in-process DNS.
    let status = fed.get("/v1/clusters/east").await["status"].clone();
    let withdrawn_at = status["withdrawnAtMillis"].as_i64();
    let since = status["unreachableSinceMillis"].as_i64().expect("since");
    assert_eq!(
        withdrawn_at,
        Some(since + 1_000),
        "withdrawal recorded at unreachableSince + withdrawAfter: {status}"
    );
    // The catalog keeps east's last endpoints, marked stale and withdrawn.
    let web = fed
        .get("/v1/global-namespaces/production/services/web")
        .await;
    let east_entry = &web["clusters"]["east"];
    assert!(
        east_entry["ready"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "last known endpoints kept: {web}"
    );
    assert_eq!(east_entry["stale"], true, "{web}");
    assert_eq!(east_entry["withdrawn"], true, "{web}");
    // Discovery keeps reporting while east stays down (every 15 s); the
    // recorded withdrawal survives two of its reports.
    let reported = |status: &Value| status["lastReportMillis"].as_i64().unwrap_or(0);
    let mut reports = vec![reported(&status)];
    let deadline = Instant::now() + Duration::from_secs(60);
    while reports.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no two more sync reports of east within 60 s: {reports:?}"
        );
        let now = reported(&fed.get("/v1/clusters/east").await["status"]);
        if reports.last() != Some(&now) {
            reports.push(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let later = fed.get("/v1/clusters/east").await["status"].clone();
    assert_eq!(
        later["withdrawnAtMillis"].as_i64(),
        withdrawn_at,
        "the withdrawal stays recorded: {later}"
    );
    let web = fed
        .get("/v1/global-namespaces/production/services/web")
        .await;
    assert_eq!(web["clusters"]["east"]["withdrawn"], true, "{web}");
    expect_dns(&fed, &["198.51.100.2"], "east still withdrawn").await;
    assert!(
        web["clusters"]["west"].get("stale").is_none(),
        "a reachable cluster is not stale: {web}"
    );
    east.come_up().await.expect("east comes back");
    expect_dns(
        &fed,
        &["198.51.100.1", "198.51.100.2"],
        "east back when its API is",
    )
    .await;
}

fn labelled_pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "web", "image": "registry.test/web:1"}]}}))
    .expect("pod")
}

/// Endpoint labels come from the pods behind the endpoints (joined on the
/// EndpointSlice's `targetRef`, pods read as metadata only), only the keys
/// routing selects by (`version`, `env` and any key a rule names), and
/// follow a pod's relabelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_carry_their_pods_routing_labels() {
    let fed = Fed::start().await;
    let east = member("east", "east-token").await;
    east.apply::<Service>(&service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 8080)],
    ))
    .expect("service");
    east.apply(&labelled_pod(
        "web-v15",
        json!({"app": "web", "version": "v1.5", "env": "us-prod", "team": "shop"}),
    ))
    .expect("pod");
    east.apply(&labelled_pod(
        "web-canary",
        json!({"app": "web", "version": "canary"}),
    ))
    .expect("pod");
    let mut slice = endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[
            ("10.8.1.1", true, true, false, None),
            ("10.8.1.2", true, true, false, None),
            ("10.8.1.3", true, true, false, None),
        ],
        &[("http", 8080)],
    );
    for (endpoint, pod) in slice.endpoints.iter_mut().zip(["web-v15", "web-canary"]) {
        endpoint.target_ref = Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: Some("shop".into()),
            ..ObjectReference::default()
        });
    }
    east.apply::<EndpointSlice>(&slice).expect("slice");
    fed.post(
        "/v1/clusters",
        cluster_body("east", &east, "east-token", "198.51.100.1", "10.8.0.0/16"),
    )
    .await;
    fed.post(
        "/v1/global-namespaces",
        json!({"name": "production", "domain": DOMAIN,
        "members": [{"cluster": "east", "namespace": "shop"}]}),
    )
    .await;
    let labels_are = async |want: Value| {
        eventually("the endpoints' labels", Duration::from_secs(10), || async {
            let web = fed
                .get("/v1/global-namespaces/production/services/web")
                .await;
            let ready = &web["clusters"]["east"]["ready"];
            let got: Vec<Value> = (0..3).map(|i| ready[i]["labels"].clone()).collect();
            if Value::from(got.clone()) == want {
                Ok(())
            } else {
                Err(web.to_string())
            }
        })
        .await;
    };
    // `team` is no rule's label yet; an endpoint without a pod has none.
    labels_are(json!([
        {"env": "us-prod", "version": "v1.5"},
        {"version": "canary"},
        null
    ]))
    .await;
    // A rule that selects by `team`: discovery keeps that key too (the
    // sync restarts and relists the pods), and the rule's destination
    // reaches the endpoint.
    let (status, body) = fed
        .send(
            reqwest::Method::PUT,
            "/v1/global-namespaces/production/services/web/routing",
            Some(json!({"rules": [{"destinations": [
                {"cluster": "east", "tags": {"team": "shop"}, "weight": 100}]}]})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    labels_are(json!([
        {"env": "us-prod", "team": "shop", "version": "v1.5"},
        {"version": "canary"},
        null
    ]))
    .await;
    eventually(
        "the team destination to reach the pod",
        Duration::from_secs(10),
        || async {
            let routing = fed
                .get("/v1/global-namespaces/production/services/web/routing")
                .await;
            let reached = &routing["status"]["destinations"][0];
            if reached["readyEndpoints"] == 1 && routing["status"]["unmatched"] == json!([]) {
                Ok(())
            } else {
                Err(routing["status"].to_string())
            }
        },
    )
    .await;
    // A relabelled pod moves its endpoint's labels (no slice change).
    east.apply(&labelled_pod(
        "web-canary",
        json!({"app": "web", "version": "v2.0-alpha"}),
    ))
    .expect("relabel");
    labels_are(json!([
        {"env": "us-prod", "team": "shop", "version": "v1.5"},
        {"version": "v2.0-alpha"},
        null
    ]))
    .await;
    let status = fed.get("/v1/clusters/east").await;
    assert_eq!(status["status"]["phase"], "Connected", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_show_in_the_status() {
    let fed = Fed::start().await;
    let east = member("east", "right-token").await;
    seed(&east, true);
    fed.post(
        "/v1/clusters",
        cluster_body("east", &east, "wrong-token", "198.51.100.1", "10.8.0.0/16"),
    )
    .await;
    fed.post("/v1/global-namespaces", json!({"name": "production", "domain": DOMAIN, "members": [{"cluster": "east", "namespace": "shop"}]})).await;
    eventually(
        "a bad-credentials status",
        Duration::from_secs(10),
        || async {
            let c = fed.get("/v1/clusters/east").await;
            let message = c["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if message.contains("bad credentials") && c["status"]["phase"] == "Unreachable" {
                Ok(())
            } else {
                Err(c["status"].to_string())
            }
        },
    )
    .await;
    // Fixing the token (a PUT with new credentials) restarts the sync without restarting anything.
    let mut fixed = cluster_body("east", &east, "right-token", "198.51.100.1", "10.8.0.0/16");
    fixed["resourceVersion"] = Value::Null;
    let (status, body) = fed
        .send(reqwest::Method::PUT, "/v1/clusters/east", Some(fixed))
        .await;
    assert_eq!(status, 200, "{body}");
    expect_dns(
        &fed,
        &["198.51.100.1"],
        "sync after the credentials were fixed",
    )
    .await;
}

/// A cluster registered with a client certificate (no token) syncs: the
/// member API authenticates the certificate's Common Name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_credentials_sync() {
    let fed = Fed::start().await;
    let east = member("east", "some-other-token").await;
    seed(&east, true);
    let user = "system:serviceaccount:gns:east";
    let (cert, key) = east
        .tls_identity()
        .client_certificate(user, &["gns"])
        .expect("client certificate");
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let mut body = cluster_body("east", &east, "unused", "198.51.100.1", "10.8.0.0/16");
    body["kubernetes"] = json!({"server": east.url(), "caData": b64(east.ca_pem()),
                                "clientCertificateData": b64(&cert), "clientKeyData": b64(&key)});
    fed.post("/v1/clusters", body).await;
    fed.post("/v1/global-namespaces", json!({"name": "production", "domain": DOMAIN, "members": [{"cluster": "east", "namespace": "shop"}]})).await;
    expect_dns(&fed, &["198.51.100.1"], "sync with a client certificate").await;
    let listed_as: Vec<Option<String>> = east
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("endpointslices"))
        .map(|r| r.user)
        .collect();
    assert!(
        !listed_as.is_empty() && listed_as.iter().all(|u| u.as_deref() == Some(user)),
        "every EndpointSlice request authenticated by the certificate: {listed_as:?}"
    );
    let cluster = fed.get("/v1/clusters/east").await;
    assert!(
        !cluster.to_string().contains("BEGIN"),
        "credentials are never returned: {cluster}"
    );
}

/// Sets east's only `web` endpoint ready or not, as a rollout would.
fn set_east_web(east: &TestApiServer, ip: &str, ready: bool) {
    east.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[(ip, ready, ready, !ready, None)],
        &[("http", 8080)],
    ))
    .expect("slice");
}

/// Waits until `fed`'s `/metrics` show it was refused east's sync lease
/// at least `times` times since it started.
async fn refused_lease(fed: &FedProcess, times: f64) {
    eventually(
        "the replica to be refused east's lease",
        Duration::from_secs(15),
        || async {
            let refused = fed
                .metric(
                    "gns_discovery_lease_attempts_total",
                    &["cluster=\"east\"", "outcome=\"held_elsewhere\""],
                )
                .await;
            if refused >= times {
                Ok(())
            } else {
                Err(format!("refused {refused} times"))
            }
        },
    )
    .await;
}

/// Three replicas on one Postgres, each a process of its own: exactly one
/// syncs east (the others are refused its lease, and east sees no list or
/// watch from them); when the holder crashes (SIGKILL, nothing released
/// cleanly) the next takes over, and when that one stops gracefully
/// (SIGTERM) the third does. Each takeover carries a change to DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_syncs_and_another_takes_over_after_a_crash_or_a_stop() {
    let db = support::TestDb::create().await;
    let east = member("east", "east-token").await;
    seed(&east, true);
    let mut first = FedProcess::start(&db.url).await;
    first
        .post(
            "/v1/clusters",
            cluster_body("east", &east, "east-token", "198.51.100.1", "10.8.0.0/16"),
        )
        .await;
    first.post("/v1/global-namespaces", json!({"name": "production", "domain": DOMAIN, "members": [{"cluster": "east", "namespace": "shop"}]})).await;
    expect_dns_at(first.dns, &["198.51.100.1"], "the first replica syncing").await;
    assert_eq!(
        first
            .metric("gns_discovery_lease_held", &["cluster=\"east\""])
            .await,
        1.0,
        "the first replica holds east's lease"
    );

    // Two more replicas on the same database: their API and DNS work, but
    // they are refused the lease and never list or watch east.
    let second = FedProcess::start(&db.url).await;
    let third = FedProcess::start(&db.url).await;
    expect_dns_at(second.dns, &["198.51.100.1"], "the second replica's DNS").await;
    expect_dns_at(third.dns, &["198.51.100.1"], "the third replica's DNS").await;
    let lists_before = east.stats().lists;
    refused_lease(&second, 3.0).await;
    refused_lease(&third, 3.0).await;
    assert_eq!(
        east.stats().lists,
        lists_before,
        "only the lease holder lists the cluster"
    );
    assert_eq!(
        second.get("/v1/clusters/east").await["status"]["phase"],
        "Connected"
    );

    // The holder crashes: one of the others takes the lease and follows east.
    first.crash();
    let crashed = Instant::now();
    set_east_web(&east, "10.8.1.1", false);
    expect_dns_at(second.dns, &[], "east gone from DNS after the crash").await;
    eprintln!(
        "takeover after a crash and convergence took {:?}",
        crashed.elapsed()
    );
    let second_holds = second
        .metric("gns_discovery_lease_held", &["cluster=\"east\""])
        .await
        == 1.0;
    let (mut holder, standby) = if second_holds {
        (second, third)
    } else {
        (third, second)
    };
    assert_eq!(
        holder
            .metric("gns_discovery_lease_held", &["cluster=\"east\""])
            .await,
        1.0,
        "a surviving replica holds east's lease"
    );

    // The new holder stops gracefully: the last replica takes over.
    holder.stop().await;
    let stopped = Instant::now();
    set_east_web(&east, "10.8.1.7", true);
    expect_dns_at(
        standby.dns,
        &["198.51.100.1"],
        "east back in DNS through the last replica",
    )
    .await;
    eprintln!(
        "takeover after a stop and convergence took {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        standby
            .metric("gns_discovery_lease_held", &["cluster=\"east\""])
            .await,
        1.0,
        "the last replica holds east's lease"
    );
    drop(standby);
    db.drop_db().await;
}

/// Static stability and isolation: a member API that turns slow, then answers
/// garbage, degrades only its own cluster. Its last endpoints stay in DNS
/// (policy `keep`), and another cluster's changes still reach DNS promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_garbage_member_degrades_only_itself() {
    let east = member("east", "east-token").await;
    let west = member("west", "west-token").await;
    seed(&east, true);
    seed(&west, true);
    let fed = Fed::start().await;
    fed.post(
        "/v1/clusters",
        cluster_body("east", &east, "east-token", "198.51.100.1", "10.8.0.0/16"),
    )
    .await;
    let mut west_body = cluster_body("west", &west, "west-token", "198.51.100.2", "10.9.0.0/16");
    west_body["staleEndpointPolicy"] = json!("keep");
    fed.post("/v1/clusters", west_body).await;
    fed.post(
        "/v1/global-namespaces",
        json!({"name": "production", "domain": DOMAIN, "members": [
            {"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]}),
    )
    .await;
    expect_dns(
        &fed,
        &["198.51.100.1", "198.51.100.2"],
        "both clusters synced",
    )
    .await;

    // West answers every request 10 s late; its open watches are cut.
    west.set_latency(Duration::from_secs(10));
    west.drop_watches();
    let unready = |ip: &'static str| {
        endpoint_slice(
            "shop",
            "web",
            "web-1",
            &[(ip, false, false, false, None)],
            &[("http", 8080)],
        )
    };
    east.apply::<EndpointSlice>(&unready("10.8.1.1"))
        .expect("slice");
    let started = Instant::now();
    expect_dns(&fed, &["198.51.100.2"], "east's change while west is slow").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a slow member held up another cluster's change for {:?}",
        started.elapsed()
    );

    eventually(
        "west to report it is slow",
        Duration::from_secs(15),
        || async {
            let status = fed.get("/v1/clusters/west").await["status"].clone();
            if status["phase"] == "Degraded"
                && status["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("slow"))
            {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;

    // West answers garbage: it degrades, its last endpoints are kept.
    west.set_latency(Duration::ZERO);
    west.set_garbage(true);
    west.drop_watches();
    eventually(
        "west to report the garbage",
        Duration::from_secs(15),
        || async {
            let status = fed.get("/v1/clusters/west").await["status"].clone();
            let phase = status["phase"].as_str().unwrap_or_default().to_owned();
            if (phase == "Unreachable" || phase == "Degraded")
                && status["message"].as_str().is_some_and(|m| !m.is_empty())
            {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        fed.get("/v1/clusters/east").await["status"]["phase"],
        "Connected",
        "east is not affected"
    );
    expect_dns(
        &fed,
        &["198.51.100.2"],
        "west's endpoints kept while it answers garbage",
    )
    .await;
    east.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("10.8.1.1", true, true, false, None)],
        &[("http", 8080)],
    ))
    .expect("slice");
    expect_dns(
        &fed,
        &["198.51.100.1", "198.51.100.2"],
        "east's next change while west answers garbage",
    )
    .await;

    // West recovers and syncs again (once its requests still in flight from
    // the slow phase have finished).
    west.set_garbage(false);
    west.apply::<EndpointSlice>(&unready("10.8.1.1"))
        .expect("slice");
    eventually(
        "west's change after it recovered",
        Duration::from_secs(30),
        || async {
            let got = dns_a(fed.dns, &format!("web.{DOMAIN}")).await?;
            if got == ["198.51.100.1"] {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    eventually("west connected again", Duration::from_secs(15), || async {
        let phase = fed.get("/v1/clusters/west").await["status"]["phase"].clone();
        if phase == "Connected" {
            Ok(())
        } else {
            Err(phase.to_string())
        }
    })
    .await;
}

/// Terminates every session of the federation's database, which is what a
/// Postgres restart does to its clients (restarting the shared test server
/// itself would break the other tests running beside this one).
async fn kill_sessions(db: &support::TestDb) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&support::admin_url())
        .await
        .expect("admin connection");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&db.name)
    .fetch_all(&mut conn)
    .await
    .expect("terminate sessions");
    killed.into_iter().filter(|k| *k).count() as u64
}

/// Postgres connections lost during sync (twice, while changes arrive): the
/// sync lease is taken again, the catalog catches up, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_lost_during_sync_lose_nothing() {
    let db = support::TestDb::create().await;
    let east = member("east", "east-token").await;
    seed(&east, true);
    let fed = Fed::start_on(Some(&db.url)).await;
    fed.post(
        "/v1/clusters",
        cluster_body("east", &east, "east-token", "198.51.100.1", "10.8.0.0/16"),
    )
    .await;
    fed.post("/v1/global-namespaces", json!({"name": "production", "domain": DOMAIN, "members": [{"cluster": "east", "namespace": "shop"}]})).await;
    expect_dns(&fed, &["198.51.100.1"], "east synced").await;

    for round in 0..2 {
        // After the first round the federation may not have reconnected
        // yet: the sessions are killed as soon as there are some again.
        eventually(
            "the federation to have sessions to lose",
            Duration::from_secs(15),
            || async {
                match kill_sessions(&db).await {
                    0 => Err("no session of the federation's database".to_owned()),
                    _ => Ok(()),
                }
            },
        )
        .await;
        for i in 0..5 {
            let name = format!("svc-{round}-{i}");
            east.apply::<Service>(&service("shop", &name, &[("app", "x")], &[("http", 80)]))
                .expect("service");
            east.apply::<EndpointSlice>(&endpoint_slice(
                "shop",
                &name,
                &format!("{name}-1"),
                &[(
                    &format!("10.8.{}.{}", round + 2, i + 1),
                    true,
                    true,
                    false,
                    None,
                )],
                &[("http", 80)],
            ))
            .expect("slice");
        }
    }
    eventually(
        "the catalog to hold every service after the lost sessions",
        Duration::from_secs(30),
        || async {
            let (status, list) = fed
                .send(
                    reqwest::Method::GET,
                    "/v1/global-namespaces/production/services",
                    None,
                )
                .await;
            let names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect();
            if status == 200 && names.len() == 11 {
                Ok(())
            } else {
                Err(format!("{status}: {names:?}"))
            }
        },
    )
    .await;
    // DNS follows the catalog (the snapshot builder may be retrying its own
    // lost session first).
    eventually(
        "the last service to reach DNS",
        Duration::from_secs(10),
        || async {
            let got = dns_a(fed.dns, &format!("svc-1-4.{DOMAIN}")).await?;
            if got == ["198.51.100.1"] {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    eventually("east connected", Duration::from_secs(15), || async {
        let phase = fed.get("/v1/clusters/east").await["status"]["phase"].clone();
        if phase == "Connected" {
            Ok(())
        } else {
            Err(phase.to_string())
        }
    })
    .await;
    drop(fed);
    db.drop_db().await;
}
