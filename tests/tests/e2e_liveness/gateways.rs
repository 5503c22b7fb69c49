//! Gateway liveness with real processes: the federation runs with
//! `--gateway-timeout 3s`, each gateway reports every 500 ms. When east's
//! only gateway is killed, east's public address leaves web's external
//! answer and west's gateway stops sending web's requests to east (its
//! applied config lists east as silent) within 3 s + 2 s; the
//! cluster's status says so, once, in the audit log. Restarted from its
//! state dir, the gateway brings east back.

use super::*;

use gns_tests::gateway_metric;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The federation's `--gateway-timeout`.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How much later than the timeout the cluster may leave.
const SLACK: Duration = Duration::from_secs(2);
const WEB: &str = "web.production.app.acme.com";

/// An HTTP upstream that answers every request with `name`.
async fn upstream(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// `GET /` for web through `egress`: the status and body.
async fn get_web(egress: SocketAddr) -> Result<(u16, String), String> {
    let mut tcp = tokio::net::TcpStream::connect(egress)
        .await
        .map_err(|e| format!("connect {egress}: {e}"))?;
    tcp.write_all(format!("GET / HTTP/1.1\r\nhost: {WEB}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut response))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

/// A member cluster whose web endpoint is `127.0.0.1:port`.
async fn member_serving(name: &str, port: u16) -> TestApiServer {
    let api = member(name).await;
    api.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("http", i32::from(port))],
    ))
    .expect("slice");
    api
}

/// `cluster`'s status as the API shows it.
async fn cluster_status(base: &str, cluster: &str) -> Value {
    ok(
        reqwest::Method::GET,
        &format!("{base}/v1/clusters/{cluster}"),
        None,
    )
    .await["status"]
        .clone()
}

/// Waits until `gateway` applied a config whose web endpoints are in
/// exactly `clusters`, and web's external answer is `external`.
async fn wait_for_web(
    what: &str,
    base: &str,
    dns: SocketAddr,
    gateway: &Gateway,
    clusters: &[&str],
    external: &[&str],
) {
    eventually(what, Duration::from_secs(15), async || {
        // The three looks at once: how long a round takes adds to how late
        // a change is seen.
        let config_url = format!("{base}/v1/config/gateways/west");
        let ((status, config), applied, answer) = tokio::join!(
            call(reqwest::Method::GET, &config_url, None),
            gateway_metric(gateway.admin, "gns_gateway_config_version"),
            a_records(dns, WEB),
        );
        let answer = answer?;
        // West sends to the clusters with endpoints that are not silent.
        let silent = config["silentClusters"].as_array().cloned().unwrap_or_default();
        let endpoints: Vec<&str> = config["services"][WEB]["endpoints"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !silent.iter().any(|s| s == c))
            .collect();
        let version = config["version"].as_u64().unwrap_or(u64::MAX);
        if status == 200 && endpoints == clusters && applied >= version && answer == external {
            Ok(())
        } else {
            Err(format!(
                "config {status} v{version} (west applied v{applied}) with endpoints in {endpoints:?}; DNS {answer:?}"
            ))
        }
    })
    .await;
}

async fn silent_gateway_scenario(backend: StoreBackend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (east_port, west_port) = (upstream("east").await, upstream("west").await);
    let east = member_serving("east", east_port).await;
    let west = member_serving("west", west_port).await;
    let mut flags = backend.federation_args();
    flags.extend(["--gateway-timeout".to_owned(), "3s".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_fed, base, dns) = start_federation_with_dns(dir.path(), TOKEN, &flags).await;
    let (east_ingress, west_ingress) = two_clusters(&base, &east, &west).await;
    // West's clients are sent to east.
    ok(
        reqwest::Method::PUT,
        &format!("{base}/v1/global-namespaces/production/services/web/routing"),
        Some(json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}]})),
    )
    .await;
    // Six reports per timeout: a stall of the loaded machine does not make
    // west (which stays up) look silent.
    let often = ["--report-interval", "500ms"];
    let mut east_gw = gateway(&base, dir.path(), "east", east_ingress, &often).await;
    let west_gw = gateway(&base, dir.path(), "west", west_ingress, &often).await;
    wait_for_web(
        "both clusters in web's config and answers",
        &base,
        dns,
        &west_gw,
        &["east", "west"],
        &["198.51.100.1", "198.51.100.2"],
    )
    .await;
    assert_eq!(
        get_web(west_gw.egress).await,
        Ok((200, "east".to_owned())),
        "west's clients are served by east"
    );
    eventually(
        "east's gateway reporting",
        Duration::from_secs(5),
        async || {
            let status = cluster_status(&base, "east").await;
            match status["gatewayHealth"].as_str() {
                Some("Reporting") => Ok(()),
                _ => Err(status.to_string()),
            }
        },
    )
    .await;

    // East's only gateway dies.
    east_gw.process.kill();
    let killed = Instant::now();
    wait_for_web(
        "east out of web's config and answers",
        &base,
        dns,
        &west_gw,
        &["west"],
        &["198.51.100.2"],
    )
    .await;
    let left = killed.elapsed();
    eprintln!(
        "east left the external view and west's destinations {left:?} after its gateway died"
    );
    assert!(
        left <= TIMEOUT + SLACK,
        "east left after {left:?}, more than {:?}",
        TIMEOUT + SLACK
    );
    assert_eq!(
        get_web(west_gw.egress).await,
        Ok((200, "west".to_owned())),
        "west's clients fail over to west"
    );
    let status = cluster_status(&base, "east").await;
    assert_eq!(status["gatewayHealth"], "Silent", "{status}");
    assert!(status["gatewaysSilentSinceMillis"].is_i64(), "{status}");
    assert_eq!(status["gatewayInstances"][0]["silent"], true, "{status}");
    assert_eq!(
        cluster_status(&base, "west").await["gatewayHealth"],
        "Reporting"
    );
    let web = ok(
        reqwest::Method::GET,
        &format!("{base}/v1/global-namespaces/production/services/web"),
        None,
    )
    .await;
    assert_eq!(web["clusters"]["east"]["gatewaysSilent"], true, "{web}");
    assert!(
        web["clusters"]["west"].get("gatewaysSilent").is_none(),
        "{web}"
    );

    // Restarted from its state dir, it reports and east comes back.
    east_gw.restart("east").await;
    wait_for_web(
        "east back in web's config and answers",
        &base,
        dns,
        &west_gw,
        &["east", "west"],
        &["198.51.100.1", "198.51.100.2"],
    )
    .await;
    assert_eq!(
        get_web(west_gw.egress).await,
        Ok((200, "east".to_owned())),
        "west's clients are served by east again"
    );
    let audit = ok(
        reqwest::Method::GET,
        &format!("{base}/v1/audit?limit=100"),
        None,
    )
    .await;
    let transitions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|row| row["actor"] == "system:liveness")
        .filter_map(|row| Some((row["action"].as_str()?, row["name"].as_str()?)))
        .collect();
    assert_eq!(
        transitions,
        [("gateways-back", "east"), ("gateways-silent", "east")],
        "each transition once, newest first: {audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_gateway_dies_leaves_and_returns_on_sqlite() {
    silent_gateway_scenario(StoreBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_gateway_dies_leaves_and_returns_on_postgres() {
    silent_gateway_scenario(StoreBackend::postgres()).await;
}
