//! End-to-end `gnsctl cluster add` and `gnsctl cluster rotate-credentials`
//! with the real binaries against a Kubernetes API test server: gnsctl
//! applies the federation's service account and RBAC with the operator's
//! kubeconfig token, registers the cluster with a minted service-account
//! token, and the federation then syncs as that service account only. The
//! operator's token appears in no response and in no file of the
//! federation's data dir. A kubeconfig with an exec plugin is refused with an
//! explanation, and so is a `--token-ttl` below the 10 minutes Kubernetes
//! allows a TokenRequest, before anything reaches the cluster. Rotation
//! swaps in a fresh token: once the first one has expired (the member API
//! server's clock is moved past its 10 minutes, rather than waiting them
//! out) and the watches are cut, discovery keeps syncing without a
//! restart. A kubeconfig whose user is a client certificate works the same
//! way: gnsctl authenticates with the certificate, and its private key
//! reaches no file of the federation.
//!
//! The binaries must be built first: `cargo build -p gns-federation --bins`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use gns_tests::{Proc, binary, free_port};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube_apiserver_test::{
    Grant, TestApiServer, TestApiServerOptions, Verb, endpoint_slice, service,
};
use serde_json::{Value, json};

/// The federation's admin token (gnsctl's `--token`).
const ADMIN_TOKEN: &str = "gns_e2e_cluster_add_admin";
/// The operator's own Kubernetes token: it must never reach the federation.
const OPERATOR_TOKEN: &str = "operator-kube-token-7f3a9c0e51d2";
/// The user the minted tokens authenticate as.
const SA_USER: &str = "system:serviceaccount:gns-system:gns-federation";
/// Lifetime of the first tokens (`--token-ttl`, the shortest Kubernetes
/// allows): they expire during the test, after rotation, when the member's
/// clock is advanced past it. The rotated token gets gnsctl's default (a
/// year), so it outlives that.
const FIRST_TTL: Duration = Duration::from_secs(10 * 60);
const FIRST_TTL_ARG: &str = "10m";
const TIMEOUT: Duration = Duration::from_secs(20);

fn web_slice(ready: bool) -> EndpointSlice {
    endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("10.1.0.5", ready, ready, false, Some("us-east-1a"))],
        &[("http", 8080)],
    )
}

fn kubeconfig(server: &TestApiServer, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: east-admin\n\
         clusters:\n- name: east\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
         contexts:\n- name: east-admin\n  context:\n    cluster: east\n    user: operator\n\
         users:\n- name: operator\n  user:\n{user}",
        server.url(),
        B64.encode(server.ca_pem())
    )
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, String) {
    let client = gns_tests::client().build().expect("client");
    let mut request = client.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The member API server's answer to listing services with `token`: 200
/// while the service-account token is valid, 401 once it has expired.
async fn member_list_status(kube: &TestApiServer, token: &str) -> u16 {
    let ca = reqwest::Certificate::from_pem(kube.ca_pem().as_bytes()).expect("member CA");
    gns_tests::client()
        .tls_certs_only([ca])
        .build()
        .expect("https client")
        .get(format!("{}/api/v1/services", kube.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("list services")
        .status()
        .as_u16()
}

async fn get_json(url: &str) -> Option<Value> {
    let (status, text) = api(reqwest::Method::GET, url, None).await;
    (status == 200).then(|| serde_json::from_str(&text).ok())?
}

/// How many times discovery started syncing `east` (each start takes the
/// cluster's sync lease), from the federation's metrics.
async fn syncs_started(base: &str) -> u64 {
    let text = gns_tests::client()
        .build()
        .expect("client")
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("gns_discovery_lease_attempts_total")
                && l.contains("cluster=\"east\"")
                && l.contains("outcome=\"taken\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn gnsctl(server: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(binary("gnsctl"))
        .arg("--server")
        .arg(server)
        .arg("--ca-file")
        .arg(gns_tests::ca_for(server))
        .arg("--token")
        .arg(ADMIN_TOKEN)
        .args(args)
        .env_remove("GNS_SERVER")
        .env_remove("GNS_TOKEN")
        .output()
        .await
        .expect("run gnsctl")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read data dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn ready_addresses(service: &Value, cluster: &str) -> Vec<String> {
    service
        .pointer(&format!("/clusters/{cluster}/ready"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts gns-federation with its data in `data`, its log in `dir`; the process and its API URL, once ready.
async fn start_federation(dir: &Path, data: &Path) -> (Proc, String) {
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    gns_tests::trust(&base, &data.join("ca.pem"));
    let args = [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--dns-listen".to_owned(),
        format!("127.0.0.1:{}", free_port()),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--admin-token".to_owned(),
        ADMIN_TOKEN.to_owned(),
    ];
    let mut federation = Proc::spawn(&binary("gns-federation"), &args, dir.join("federation.log"));
    eventually("gns-federation to be ready", async || {
        assert!(
            federation.running(),
            "gns-federation exited:\n{}",
            federation.log_text()
        );
        let (status, _) = api(reqwest::Method::GET, &format!("{base}/readyz"), None).await;
        (status == 200).then_some(())
    })
    .await;
    (federation, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_add_joins_with_a_service_account_and_rotates_its_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = TestApiServer::start(
        TestApiServerOptions::default().token(OPERATOR_TOKEN, Grant::admin("operator")),
    )
    .await
    .expect("test API server");
    kube.apply(&service("shop", "web", &[], &[("http", 8080)]))
        .expect("service");
    kube.apply(&web_slice(true)).expect("slice");

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let config = dir.path().join("kubeconfig");
    std::fs::write(
        &config,
        kubeconfig(&kube, &format!("    token: {OPERATOR_TOKEN}\n")),
    )
    .expect("kubeconfig");
    let exec_config = dir.path().join("kubeconfig-exec");
    std::fs::write(
        &exec_config,
        kubeconfig(
            &kube,
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n      \
             args: [eks, get-token, --cluster-name, east]\n",
        ),
    )
    .expect("exec kubeconfig");

    let (mut federation, base) = start_federation(dir.path(), &data).await;

    // An exec-plugin user is refused, with what to do instead; nothing is registered.
    let config_arg = config.display().to_string();
    let refused = gnsctl(
        &base,
        &[
            "cluster",
            "add",
            "east",
            "--kubeconfig",
            &exec_config.display().to_string(),
        ],
    )
    .await;
    assert!(!refused.status.success(), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("exec credential plugin (aws)") && stderr.contains("static credentials"),
        "{}",
        text(&refused)
    );
    assert!(
        stderr.contains("kubectl create token"),
        "{}",
        text(&refused)
    );
    assert_eq!(kube.stats().requests, 0, "nothing was sent to the cluster");

    // A user without the rights gets the server's 403 message and a hint.
    kube.set_token("viewer-token", Grant::read_only("viewer"));
    let viewer_config = dir.path().join("kubeconfig-viewer");
    std::fs::write(
        &viewer_config,
        kubeconfig(&kube, "    token: viewer-token\n"),
    )
    .expect("viewer kubeconfig");
    let forbidden = gnsctl(
        &base,
        &[
            "cluster",
            "add",
            "east",
            "--kubeconfig",
            &viewer_config.display().to_string(),
        ],
    )
    .await;
    assert!(!forbidden.status.success(), "{}", text(&forbidden));
    let stderr = String::from_utf8_lossy(&forbidden.stderr);
    assert!(
        stderr.contains("apply namespace/gns-system")
            && stderr.contains("403")
            && stderr.contains("forbidden")
            && stderr.contains("lacks the rights"),
        "{}",
        text(&forbidden)
    );
    let (status, _) = api(
        reqwest::Method::GET,
        &format!("{base}/v1/clusters/east"),
        None,
    )
    .await;
    assert_eq!(status, 404, "nothing was registered");

    // A token lifetime Kubernetes would refuse is refused up front, naming
    // the limit; nothing reaches the cluster or the federation.
    let requests_before = kube.stats().requests;
    for ttl in ["1s", "5m", "599s"] {
        let short = gnsctl(
            &base,
            &[
                "cluster",
                "add",
                "east",
                "--kubeconfig",
                &config_arg,
                "--token-ttl",
                ttl,
            ],
        )
        .await;
        assert!(!short.status.success(), "{}", text(&short));
        let stderr = String::from_utf8_lossy(&short.stderr);
        assert!(
            stderr.contains("--token-ttl")
                && stderr.contains("at least 10m")
                && stderr.contains("Kubernetes refuses TokenRequests shorter than 10 minutes"),
            "{}",
            text(&short)
        );
    }
    assert_eq!(
        kube.stats().requests,
        requests_before,
        "nothing was sent to the cluster"
    );
    let (status, _) = api(
        reqwest::Method::GET,
        &format!("{base}/v1/clusters/east"),
        None,
    )
    .await;
    assert_eq!(status, 404, "nothing was registered");

    // Join the cluster.
    let added_at = Instant::now();
    let added = gnsctl(
        &base,
        &[
            "cluster",
            "add",
            "east",
            "--kubeconfig",
            &config_arg,
            "--labels",
            "region=us-east-1",
            "--token-ttl",
            FIRST_TTL_ARG,
        ],
    )
    .await;
    assert!(added.status.success(), "{}", text(&added));
    let stdout = String::from_utf8_lossy(&added.stdout);
    for line in [
        "namespace/gns-system applied",
        "serviceaccount/gns-federation -n gns-system applied",
        "clusterrole/gns-federation-discovery applied",
        "clusterrolebinding/gns-federation-discovery applied",
        "role/gns-federation-gateway -n gns-system applied",
        "rolebinding/gns-federation-gateway -n gns-system applied",
        "cluster/east registered",
    ] {
        assert!(
            stdout.contains(line),
            "missing {line:?} in\n{}",
            text(&added)
        );
    }
    assert!(!stdout.contains(OPERATOR_TOKEN));
    assert!(
        stdout.contains("expires in 10m"),
        "the lifetime asked for: {}",
        text(&added)
    );

    // What it made in the cluster, and what the service account may do.
    let account: ServiceAccount = kube
        .get("gns-system", "gns-federation")
        .expect("get")
        .expect("service account");
    let labels = account.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("gnsctl")
    );
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("gns")
    );
    assert!(
        kube.get::<ClusterRole>("", "gns-federation-discovery")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<ClusterRoleBinding>("", "gns-federation-discovery")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<Role>("gns-system", "gns-federation-gateway")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<RoleBinding>("gns-system", "gns-federation-gateway")
            .expect("get")
            .is_some()
    );
    assert!(kube.can(SA_USER, Verb::List, "services", None));
    assert!(kube.can(SA_USER, Verb::Watch, "services", Some("shop")));
    assert!(kube.can(SA_USER, Verb::List, "endpointslices.discovery.k8s.io", None));
    assert!(kube.can(SA_USER, Verb::Patch, "deployments.apps", Some("gns-system")));
    assert!(!kube.can(SA_USER, Verb::List, "secrets", Some("shop")));
    assert!(!kube.can(SA_USER, Verb::Create, "deployments.apps", Some("shop")));
    assert!(!kube.can(SA_USER, Verb::Create, "deployments.apps", None));

    // Re-running is idempotent (server-side apply) and updates the registration.
    let again = gnsctl(
        &base,
        &[
            "cluster",
            "add",
            "east",
            "--kubeconfig",
            &config_arg,
            "--token-ttl",
            FIRST_TTL_ARG,
        ],
    )
    .await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("was registered already"),
        "{}",
        text(&again)
    );
    let cluster = get_json(&format!("{base}/v1/clusters/east"))
        .await
        .expect("cluster");
    assert_eq!(cluster["labels"]["region"], "us-east-1", "labels kept");
    assert_eq!(cluster["kubernetes"]["server"], kube.url());
    assert_eq!(cluster["kubernetes"]["caData"], B64.encode(kube.ca_pem()));
    assert!(cluster["kubernetes"].get("token").is_none());

    // The federation syncs the member as the service account.
    join_and_sync(&base, "east").await;
    let web = format!("{base}/v1/global-namespaces/production/services/web");
    let cluster_url = format!("{base}/v1/clusters/east");
    let requests = kube.requests();
    let reads: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.method == "GET"
                && (r.path.ends_with("/services") || r.path.ends_with("/endpointslices"))
        })
        .collect();
    assert!(!reads.is_empty(), "discovery listed/watched the member");
    for r in &reads {
        assert_eq!(
            r.user.as_deref(),
            Some(SA_USER),
            "{} {}?{}",
            r.method,
            r.path,
            r.query
        );
    }
    assert!(
        requests
            .iter()
            .filter(|r| r.user.as_deref() == Some("operator"))
            .all(|r| r.method == "PATCH" || r.path.ends_with("/token")),
        "the operator's token was used only by gnsctl's applies and token requests"
    );

    // Rotation: a fresh token replaces the first one.
    let syncs_before = syncs_started(&base).await;
    let rotated = gnsctl(
        &base,
        &[
            "cluster",
            "rotate-credentials",
            "east",
            "--kubeconfig",
            &config_arg,
        ],
    )
    .await;
    assert!(rotated.status.success(), "{}", text(&rotated));
    // Discovery picks the new credentials up in a moment (it restarts the
    // cluster's sync, which takes the sync lease again): wait for that, so
    // the watches cut below are the ones on the rotated token.
    eventually(
        "discovery to restart with the rotated credentials",
        async || (syncs_started(&base).await > syncs_before).then_some(()),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&rotated.stdout).contains("cluster/east credentials rotated"),
        "{}",
        text(&rotated)
    );
    let cluster = get_json(&cluster_url).await.expect("cluster");
    assert_eq!(cluster["labels"]["region"], "us-east-1");
    assert_eq!(cluster["kubernetes"]["caData"], B64.encode(kube.ca_pem()));
    // Rotating an unregistered cluster is refused.
    let missing = gnsctl(
        &base,
        &[
            "cluster",
            "rotate-credentials",
            "west",
            "--kubeconfig",
            &config_arg,
        ],
    )
    .await;
    assert!(!missing.status.success(), "{}", text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("not registered"),
        "{}",
        text(&missing)
    );

    // Once the first token has expired, cut the watches: discovery
    // reconnects with the rotated token, and changes keep arriving. Rather
    // than wait 10 minutes, move the member API server's clock past the
    // first tokens' lifetime (minted since `added_at`), far short of the
    // rotated token's year. A token minted with the same lifetime after
    // them shows they are expired.
    let probe = kube
        .service_account_token("gns-system", "gns-federation", Some(FIRST_TTL))
        .expect("probe token");
    assert_eq!(member_list_status(&kube, &probe).await, 200, "valid before");
    kube.advance_clock(FIRST_TTL + added_at.elapsed() + Duration::from_secs(1));
    assert_eq!(
        member_list_status(&kube, &probe).await,
        401,
        "tokens of the first lifetime have expired"
    );
    let unauthorized = kube.stats().unauthorized;
    kube.drop_watches();
    kube.apply(&web_slice(false)).expect("slice not ready");
    eventually("the not-ready endpoint in the catalog", async || {
        let service = get_json(&web).await?;
        let not_ready = service.pointer("/clusters/east/notReady")?.as_array()?;
        (ready_addresses(&service, "east").is_empty() && not_ready.len() == 1).then_some(())
    })
    .await;
    kube.drop_watches();
    kube.apply(&web_slice(true)).expect("slice ready again");
    eventually("the endpoint ready again", async || {
        let service = get_json(&web).await?;
        (ready_addresses(&service, "east") == ["10.1.0.5"]).then_some(())
    })
    .await;
    let refused: Vec<String> = kube
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert_eq!(
        kube.stats().unauthorized,
        unauthorized,
        "the expired token was not used again; refused: {refused:?}\n{}",
        federation.log_text()
    );
    let cluster = get_json(&cluster_url).await.expect("cluster");
    assert_eq!(cluster["status"]["phase"], "Connected", "{cluster}");
    assert!(federation.running(), "no restart");

    // The operator's token is in no response and in no file of the federation.
    let (_, listed) = api(reqwest::Method::GET, &format!("{base}/v1/clusters"), None).await;
    let (_, one) = api(reqwest::Method::GET, &cluster_url, None).await;
    assert!(!listed.contains(OPERATOR_TOKEN) && !one.contains(OPERATOR_TOKEN));
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "db")
                || f.to_string_lossy().contains("sqlite")),
        "the store is in the data dir: {files:?}"
    );
    for file in &files {
        let bytes = std::fs::read(file).expect("read data file");
        assert!(
            !contains(&bytes, OPERATOR_TOKEN.as_bytes()),
            "{} holds the operator's token",
            file.display()
        );
    }
    assert!(!contains(
        federation.log_text().as_bytes(),
        OPERATOR_TOKEN.as_bytes()
    ));
}

/// A kubeconfig whose user is a client certificate (CN `operator-cert`)
/// signed by the member's CA: gnsctl applies the RBAC and mints the token
/// as that user, the cluster syncs as the service account, and the
/// certificate's private key is in no file of the federation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_add_with_a_client_certificate_user() {
    const CERT_USER: &str = "operator-cert";
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The certificate's user gets the grant of the static token for the same
    // user; nobody presents that token.
    let kube = TestApiServer::start(
        TestApiServerOptions::default().token("never-presented", Grant::admin(CERT_USER)),
    )
    .await
    .expect("test API server");
    kube.apply(&service("shop", "web", &[], &[("http", 8080)]))
        .expect("service");
    kube.apply(&web_slice(true)).expect("slice");
    let (cert_pem, key_pem) = kube
        .tls_identity()
        .client_certificate(CERT_USER, &[])
        .expect("client certificate");
    assert!(key_pem.contains("PRIVATE KEY"), "{key_pem}");

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let config = dir.path().join("kubeconfig-cert");
    std::fs::write(
        &config,
        kubeconfig(
            &kube,
            &format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                B64.encode(&cert_pem),
                B64.encode(&key_pem)
            ),
        ),
    )
    .expect("kubeconfig");
    let (mut federation, base) = start_federation(dir.path(), &data).await;

    let added = gnsctl(
        &base,
        &[
            "cluster",
            "add",
            "west",
            "--kubeconfig",
            &config.display().to_string(),
        ],
    )
    .await;
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        String::from_utf8_lossy(&added.stdout).contains("cluster/west registered"),
        "{}",
        text(&added)
    );
    assert!(
        kube.get::<ServiceAccount>("gns-system", "gns-federation")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<ClusterRole>("", "gns-federation-discovery")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<ClusterRoleBinding>("", "gns-federation-discovery")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<Role>("gns-system", "gns-federation-gateway")
            .expect("get")
            .is_some()
    );
    assert!(
        kube.get::<RoleBinding>("gns-system", "gns-federation-gateway")
            .expect("get")
            .is_some()
    );
    // gnsctl's applies and its token request were authenticated by the certificate.
    let requests = kube.requests();
    let rbac_writes: Vec<_> = requests
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/rbac.authorization.k8s.io/"))
        .collect();
    assert_eq!(
        rbac_writes.len(),
        4,
        "one apply per role and binding: {rbac_writes:?}"
    );
    let token_requests: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/token"))
        .collect();
    assert!(
        !token_requests.is_empty(),
        "a token was minted: {requests:?}"
    );
    for r in rbac_writes.iter().chain(&token_requests) {
        assert_eq!(
            r.user.as_deref(),
            Some(CERT_USER),
            "{} {} ({})",
            r.method,
            r.path,
            r.status
        );
        assert!((200..300).contains(&r.status), "{r:?}");
    }

    // The federation syncs the member as the service account.
    join_and_sync(&base, "west").await;
    let cluster_url = format!("{base}/v1/clusters/west");
    let reads: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/endpointslices"))
        .collect();
    assert!(!reads.is_empty(), "discovery listed/watched the member");
    assert!(
        reads.iter().all(|r| r.user.as_deref() == Some(SA_USER)),
        "discovery used the minted token, not the certificate: {reads:?}"
    );

    // The private key is in no response, no file of the federation and not in its log.
    let key_b64 = B64.encode(&key_pem);
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let (_, one) = api(reqwest::Method::GET, &cluster_url, None).await;
    assert!(!one.contains(&key_body) && !one.contains(&key_b64), "{one}");
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(!files.is_empty(), "the store is in the data dir");
    for file in &files {
        let bytes = std::fs::read(file).expect("read data file");
        for needle in [key_pem.as_bytes(), key_body.as_bytes(), key_b64.as_bytes()] {
            assert!(
                !contains(&bytes, needle),
                "{} holds the client key",
                file.display()
            );
        }
    }
    assert!(!contains(
        federation.log_text().as_bytes(),
        key_body.as_bytes()
    ));
    assert!(federation.running());
}

/// Puts `cluster`'s namespace `shop` into a new global namespace and waits
/// until its ready endpoint is in the catalog and the cluster is Connected.
async fn join_and_sync(base: &str, cluster: &str) {
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(
            json!({"name": "production", "domain": "production.app.acme.com",
            "members": [{"cluster": cluster, "namespace": "shop"}]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let web = format!("{base}/v1/global-namespaces/production/services/web");
    eventually(
        &format!("{cluster}'s ready endpoint in the catalog"),
        async || {
            let service = get_json(&web).await?;
            (ready_addresses(&service, cluster) == ["10.1.0.5"]).then_some(())
        },
    )
    .await;
    let cluster_url = format!("{base}/v1/clusters/{cluster}");
    eventually(&format!("cluster {cluster} Connected"), async || {
        let status = get_json(&cluster_url).await?;
        (status.pointer("/status/phase")? == "Connected").then_some(())
    })
    .await;
}
