//! Clients refuse a federation they cannot verify, with real processes and
//! real TLS: two federations run, and gnsctl, gns-gateway and gns-dns are
//! pointed at the first while trusting only the second's CA, which is what
//! an impostor (a TLS-terminating proxy with its own CA) looks like to them.
//! Each says so in one line; the gateway does not join (its join token stays
//! unspent and its state dir holds no certificate) and gns-dns serves
//! nothing. Given the right CA, the same gateway then joins with the same
//! token.

use std::path::Path;
use std::time::{Duration, Instant};

use gns_tests::{Proc, binary, federation_ca, free_port, start_federation};
use serde_json::{Value, json};

const TOKEN: &str = "trust-e2e-admin";

async fn post(base: &str, path: &str, body: Value) -> Value {
    let response = gns_tests::client()
        .build()
        .expect("client")
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("federation request");
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path}: {status} {body}");
    body
}

fn gateway(dir: &Path, base: &str, ca: &Path, join_token: &str, name: &str) -> Proc {
    let args: Vec<String> = vec![
        "--federation".into(),
        base.into(),
        "--federation-ca".into(),
        ca.display().to_string(),
        "--cluster".into(),
        "east".into(),
        "--join-token".into(),
        join_token.into(),
        "--egress-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--ingress-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--admin-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--state-dir".into(),
        dir.join(format!("{name}-state")).display().to_string(),
    ];
    Proc::spawn(
        &binary("gns-gateway"),
        &args,
        dir.join(format!("{name}.log")),
    )
}

/// Waits until `proc`'s log contains `needle`; panics with the log after 20 s.
async fn log_says(proc: &Proc, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = proc.log_text();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refuse_a_federation_their_ca_does_not_vouch_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (real_dir, impostor_dir) = (dir.path().join("real"), dir.path().join("impostor"));
    std::fs::create_dir_all(&real_dir).expect("dir");
    std::fs::create_dir_all(&impostor_dir).expect("dir");
    let (_real, base) = start_federation(&real_dir, TOKEN, &[]).await;
    let (_impostor, _) = start_federation(&impostor_dir, TOKEN, &[]).await;
    let (right_ca, wrong_ca) = (federation_ca(&real_dir), federation_ca(&impostor_dir));
    let line = "cannot verify the certificate of https://127.0.0.1:";

    // gnsctl: one line, a failed exit, nothing printed as if it had worked.
    let out = std::process::Command::new(binary("gnsctl"))
        .args(["--server", &base, "--token", TOKEN, "get", "clusters"])
        .arg("--ca-file")
        .arg(&wrong_ca)
        .env_remove("GNS_SERVER")
        .env_remove("GNS_TOKEN")
        .env_remove("GNS_CA_FILE")
        .current_dir(dir.path())
        .output()
        .expect("run gnsctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "gnsctl succeeded: {stderr}");
    assert!(stderr.contains(line), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty());
    // With the right CA the same command works.
    let out = std::process::Command::new(binary("gnsctl"))
        .args(["--server", &base, "--token", TOKEN, "get", "clusters"])
        .arg("--ca-file")
        .arg(&right_ca)
        .current_dir(dir.path())
        .output()
        .expect("run gnsctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // gns-gateway: does not join, installs nothing, says why.
    post(
        &base,
        "/v1/clusters",
        json!({"name": "east",
               "kubernetes": {"server": "https://127.0.0.1:1", "token": "member"},
               "gateway": {"ingressAddress": format!("127.0.0.1:{}", free_port()),
                           "egressAddress": "127.0.0.1"}}),
    )
    .await;
    let join = post(&base, "/v1/clusters/east/join-tokens", json!({})).await;
    let join_token = join["token"].as_str().expect("token").to_owned();
    let mut fooled = gateway(dir.path(), &base, &wrong_ca, &join_token, "gw-wrong-ca");
    let text = log_says(&fooled, line).await;
    assert!(text.contains("--federation-ca"), "{text}");
    fooled.kill();
    let state = dir.path().join("gw-wrong-ca-state");
    for file in [
        "cert.pem",
        "key.pem",
        "api-token",
        "trust-bundle.json",
        "config.json",
    ] {
        assert!(!state.join(file).exists(), "{file} was installed");
    }
    // The join token was never spent: with the right CA it joins now.
    let joined = gateway(dir.path(), &base, &right_ca, &join_token, "gw-right-ca");
    log_says(&joined, "gateway certificate obtained with the join token").await;
    assert!(
        dir.path()
            .join("gw-right-ca-state")
            .join("cert.pem")
            .is_file()
    );

    // gns-dns: never ready, says why.
    let admin = free_port();
    let dns_args: Vec<String> = vec![
        "--federation".into(),
        base.clone(),
        "--federation-ca".into(),
        wrong_ca.display().to_string(),
        "--token".into(),
        TOKEN.into(),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--cache-dir".into(),
        dir.path().join("dns-cache").display().to_string(),
    ];
    let replica = Proc::spawn(&binary("gns-dns"), &dns_args, dir.path().join("dns.log"));
    log_says(&replica, line).await;
    let ready = gns_tests::client()
        .build()
        .expect("client")
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .expect("admin answers");
    assert_ne!(
        ready.status(),
        200,
        "gns-dns ready without a verified snapshot"
    );
    assert!(
        !dir.path()
            .join("dns-cache")
            .join("dns-snapshot.json")
            .exists()
    );
}
