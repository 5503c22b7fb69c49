//! Root rotation with real processes: gns-federation, two gns-gateway
//! processes and an upstream in west. While requests cross from east's egress
//! to west over mTLS, the federation's root is rotated in its three steps
//! (start, activate, finish); both gateways pick up each trust bundle,
//! renew onto the new root, drop the old one, and no request fails. The
//! control channel rotates along: the federation's API certificate moves to
//! the new root, and the gateways and a gns-dns replica, started with the
//! old root's CA file only, keep verifying it through the bundle they follow
//! (the replica still receives a change made after the rotation). Run once
//! with the federation on its embedded SQLite store and once on Postgres.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use gns_tests::{
    Proc, StoreBackend, addresses, binary, dns_udp, free_port, gateway_metric as metric,
    start_federation_with_dns,
};
use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "rotation-admin";
const HOST: &str = "web.production.app.acme.com";

/// Held for the whole of a scenario: the two backends' rotations run one
/// after the other, not at once. Each asserts that no request fails while
/// 9-second certificates are renewed under steady traffic; two of them at
/// once (six processes and two load loops) on a 2-core machine would test
/// the machine's scheduling, not the rotation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An HTTP/1.1 upstream answering `west` to every request on a connection.
async fn west_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 8192];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwest";
                        if tcp.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = gns_tests::client()
        .build()
        .expect("client")
        .request(method, url)
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("federation request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn through(client: &reqwest::Client, egress: SocketAddr) -> Result<String, String> {
    let resp = client
        .get(format!("http://{egress}/"))
        .header("host", HOST)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// The root (last certificate) of a gateway's current chain in its state dir.
fn gateway_root(state_dir: &std::path::Path) -> CertificateDer<'static> {
    let pem = std::fs::read_to_string(state_dir.join("cert.pem")).expect("cert.pem");
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain")
        .pop()
        .expect("a root in the chain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_traffic_drops_no_request_on_sqlite() {
    root_rotation_under_traffic_drops_no_request(StoreBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_under_traffic_drops_no_request_on_postgres() {
    root_rotation_under_traffic_drops_no_request(StoreBackend::postgres()).await;
}

/// The scenario, with the federation's state in `store` (dropped, with its
/// Postgres database, after every process of the scenario is killed).
async fn root_rotation_under_traffic_drops_no_request(store: StoreBackend) {
    let _serial = SERIAL.lock().await;
    eprintln!("root rotation with the federation on {}", store.name());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = west_upstream().await;
    let mut members = Vec::new();
    for name in ["east", "west"] {
        let api = TestApiServer::start(
            TestApiServerOptions::default().token("member", Grant::read_only(name)),
        )
        .await
        .expect("API server");
        api.apply::<Service>(&service("shop", "web", &[("app", "web")], &[("http", 80)]))
            .expect("service");
        members.push(api);
    }
    members[1]
        .apply::<EndpointSlice>(&endpoint_slice(
            "shop",
            "web",
            "web-1",
            &[("127.0.0.1", true, true, false, None)],
            &[("http", i32::from(upstream))],
        ))
        .expect("slice");

    let mut flags = vec![
        "--trust-domain",
        "acme.test",
        "--gateway-cert-lifetime",
        "9s",
    ];
    let store_flags = store.federation_args();
    flags.extend(store_flags.iter().map(String::as_str));
    let (mut fed, base, fed_dns) = start_federation_with_dns(dir.path(), TOKEN, &flags).await;
    let ingress = [free_port(), free_port()];
    for (i, name) in ["east", "west"].into_iter().enumerate() {
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("{base}/v1/clusters"),
            Some(json!({"name": name,
                "kubernetes": {"server": members[i].url(), "token": "member",
                               "caData": base64::engine::general_purpose::STANDARD.encode(members[i].ca_pem())},
                "gateway": {"ingressAddress": format!("127.0.0.1:{}", ingress[i]), "egressAddress": "127.0.0.1"}})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(json!({"name": "production", "domain": "production.app.acme.com",
                    "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let mut gateways = Vec::new();
    for (i, name) in ["east", "west"].into_iter().enumerate() {
        let (_, token) = call(
            reqwest::Method::POST,
            &format!("{base}/v1/clusters/{name}/join-tokens"),
            Some(json!({})),
        )
        .await;
        let egress: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let state = dir.path().join(format!("gw-{name}"));
        let proc = Proc::spawn(
            &binary("gns-gateway"),
            &[
                "--federation".into(),
                base.clone(),
                "--federation-ca".into(),
                gns_tests::ca_for(&base),
                "--cluster".into(),
                name.into(),
                "--join-token".into(),
                token["token"].as_str().expect("token").into(),
                "--egress-listen".into(),
                egress.to_string(),
                "--ingress-listen".into(),
                format!("127.0.0.1:{}", ingress[i]),
                "--admin-listen".into(),
                admin.to_string(),
                "--state-dir".into(),
                state.display().to_string(),
                "--trust-bundle-refresh".into(),
                "300ms".into(),
            ],
            dir.path().join(format!("gateway-{name}.log")),
        );
        gateways.push((egress, admin, state, proc));
    }
    let east_egress = gateways[0].0;
    let admins = [gateways[0].1, gateways[1].1];
    let client = gns_tests::client()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    until(
        "east egress to reach west",
        Duration::from_secs(30),
        async || {
            through(&client, east_egress)
                .await
                .is_ok_and(|b| b == "west")
        },
    )
    .await;

    // A DNS replica verifying the federation with the CA file of now (the old root).
    let replica_dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let replica_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let _replica = Proc::spawn(
        &binary("gns-dns"),
        &[
            "--federation".into(),
            base.clone(),
            "--federation-ca".into(),
            gns_tests::ca_for(&base),
            "--token".into(),
            TOKEN.into(),
            "--listen".into(),
            replica_dns.to_string(),
            "--admin-listen".into(),
            replica_admin.to_string(),
            "--trust-bundle-refresh".into(),
            "300ms".into(),
            "--cache-dir".into(),
            dir.path().join("dns-cache").display().to_string(),
        ],
        dir.path().join("gns-dns.log"),
    );
    let old_ca = std::fs::read(gns_tests::ca_for(&base)).expect("ca.pem");

    // Steady traffic east → west for the whole rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, answered, client) = (Arc::clone(&stop), Arc::clone(&answered), client.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match through(&client, east_egress).await {
                    Ok(body) if body == "west" => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        })
    };
    let rotate = async |phase: &str| {
        let (status, body) = call(
            reqwest::Method::POST,
            &format!("{base}/v1/identity/root-rotation"),
            Some(json!({"phase": phase})),
        )
        .await;
        assert_eq!(status, 200, "{phase}: {body}");
        body
    };
    // The gateways' peer roots, and the roots the replica verifies the
    // federation with (its CA file's old root and the bundle's).
    let roots_everywhere = async |count: u64| {
        for admin in admins {
            if metric(admin, "gns_gateway_trust_roots").await != count {
                return false;
            }
        }
        metric(replica_admin, "gns_dns_federation_roots").await == 2
    };

    // 1. start: both gateways trust the next root too.
    rotate("start").await;
    until(
        "both gateways to trust two roots",
        Duration::from_secs(10),
        async || roots_everywhere(2).await,
    )
    .await;
    // 2. activate: both renew onto the new root.
    let bundle = rotate("activate").await;
    let new_root =
        CertificateDer::from_pem_slice(bundle["roots"][0].as_str().expect("new root").as_bytes())
            .expect("pem")
            .into_owned();
    until(
        "both gateways to renew onto the new root",
        Duration::from_secs(20),
        async || {
            gateways
                .iter()
                .all(|(_, _, state, _)| gateway_root(state) == new_root)
        },
    )
    .await;
    // Renewed gateways serve the new certificate to new connections.
    until("renewals installed", Duration::from_secs(10), async || {
        metric(admins[0], "gns_gateway_cert_renewals_total").await >= 1
            && metric(admins[1], "gns_gateway_cert_renewals_total").await >= 1
    })
    .await;
    // 3. finish: only the new root is left, and traffic keeps flowing.
    rotate("finish").await;
    until(
        "both gateways to trust one root",
        Duration::from_secs(10),
        async || roots_everywhere(1).await,
    )
    .await;
    let after_finish = answered.load(Ordering::Relaxed);
    until(
        "requests after the rotation",
        Duration::from_secs(10),
        async || answered.load(Ordering::Relaxed) >= after_finish + 20,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.expect("load task");
    assert!(
        failures.is_empty(),
        "requests failed during the rotation: {failures:?}"
    );
    let total = answered.load(Ordering::Relaxed);
    eprintln!("{total} requests across a root rotation, none failed");
    // Restarted on the same addresses, the federation makes every client
    // connect and verify it afresh (no kept-alive connection or resumed
    // session from before the rotation).
    fed.kill();
    let api = base.trim_start_matches("https://").to_owned();
    let mut args: Vec<String> = [
        "--listen",
        &api,
        "--dns-listen",
        &fed_dns.to_string(),
        "--data-dir",
        &dir.path().join("fed").display().to_string(),
        "--admin-token",
        TOKEN,
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let _restarted = Proc::spawn(
        &binary("gns-federation"),
        &args,
        dir.path().join("federation-restarted.log"),
    );
    until(
        "the federation to be back",
        Duration::from_secs(20),
        async || {
            gns_tests::client()
                .build()
                .expect("client")
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    // The API is now served under the new root only: the old CA file alone
    // no longer verifies it, yet the replica, which had only that file,
    // still follows: a workload added now reaches its answers.
    let old_only = gns_tests::client_builder_with_roots(&old_ca)
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(
        old_only
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "the API still chains to the old root"
    );
    let (status, body) = call(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces/production/external-workloads"),
        Some(
            json!({"name": "after-rotation", "service": "late", "address": "192.0.2.77",
                    "ports": [{"name": "http", "port": 80}], "ttl": "1h"}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let late = "late.production.app.acme.com";
    until(
        "the replica to answer a name added after the rotation",
        Duration::from_secs(20),
        async || {
            tokio::task::spawn_blocking(move || {
                dns_udp(replica_dns, "127.0.0.1:0", late, RecordType::A)
                    .is_some_and(|m| addresses(&m) == ["192.0.2.77"])
            })
            .await
            .unwrap_or(false)
        },
    )
    .await;
    assert!(total >= 50, "only {total} requests");
    for admin in admins {
        assert!(metric(admin, "gns_gateway_trust_bundle_updates_total").await >= 3);
    }
}
