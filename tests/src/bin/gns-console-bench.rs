//! The web console's weight and time to first render at scale: a real
//! `gns-federation` holding `--clusters` member clusters and `--services`
//! services (VM-backed, as external workloads), and a headless Chromium
//! (WebDriver) that signs in and opens the overview. Reports the page's
//! assets and API calls (count and bytes, from the browser's resource
//! timing) and when every cluster's card was on screen.
//!   bench/console.sh [--clusters 100] [--services 10000]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fantoccini::{ClientBuilder, Locator};
use gns_tests::{Proc, free_port, wait_for};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Directory with gns-federation.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Member clusters.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Services (one external workload each).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
}

const TOKEN: &str = "console-bench-admin";

async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    anyhow::ensure!(resp.status().is_success(), "POST {path}: {}", resp.status());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let api_port = free_port();
    let base = format!("https://127.0.0.1:{api_port}");
    gns_tests::trust(&base, &dir.path().join("fed").join("ca.pem"));
    let _fed = Proc::spawn(
        &args.bin_dir.join("gns-federation"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--dns-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            dir.path().join("fed").display().to_string(),
            "--admin-token".into(),
            TOKEN.into(),
        ],
        dir.path().join("federation.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = gns_tests::client()
            .build()?
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the federation never got ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = gns_tests::client().build()?;
    let started = Instant::now();
    let mut members = Vec::new();
    for i in 0..args.clusters {
        let name = format!("c{i:03}");
        // An API no one answers: the clusters exist, unreachable, as after an outage.
        post(&client, &base, "/v1/clusters", json!({
            "name": name,
            "kubernetes": {"server": "https://127.0.0.1:9", "token": "t"},
            "gateway": {"ingressAddress": format!("127.0.0.1:{}", 20000 + i), "egressAddress": "127.0.0.1"},
        }))
        .await?;
        members.push(json!({"cluster": name, "namespace": "shop"}));
    }
    post(
        &client,
        &base,
        "/v1/global-namespaces",
        json!({
            "name": "production", "domain": "production.app.acme.com", "members": members,
        }),
    )
    .await?;
    let mut pending = Vec::new();
    for i in 0..args.services {
        let (client, base) = (client.clone(), base.clone());
        pending.push(tokio::spawn(async move {
            post(
                &client,
                &base,
                "/v1/global-namespaces/production/external-workloads",
                json!({
                    "name": format!("vm-{i:05}"), "service": format!("svc-{i:05}"),
                    "address": format!("127.1.{}.{}", i / 250, 1 + i % 250),
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "ttl": "1h",
                }),
            )
            .await
        }));
        if pending.len() >= 16 {
            for p in pending.drain(..) {
                p.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    println!(
        "# {} clusters, {} services (external workloads) created in {:.1} s",
        args.clusters,
        args.services,
        started.elapsed().as_secs_f64()
    );

    let port = free_port();
    let _driver = Proc::spawn(
        Path::new("/usr/bin/chromedriver"),
        &[format!("--port={port}")],
        dir.path().join("chromedriver.log"),
    );
    wait_for(Duration::from_secs(20), "chromedriver", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let Value::Object(caps) = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {"binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,768"]}
    }) else {
        anyhow::bail!("capabilities")
    };
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await?;
    // Warm the browser's TLS session and caches alike for every run: sign in once.
    c.goto(&format!("{base}/ui/")).await?;
    c.execute(
        &format!("sessionStorage.setItem('gns-token', '{TOKEN}');"),
        Vec::new(),
    )
    .await?;
    let mut first_render = Vec::new();
    for run in 0..3 {
        // A fresh page load with the token kept: the overview renders at once.
        c.goto(&format!("{base}/ui/?run={run}#/")).await?;
        let cards = format!("#cluster-cards .card:nth-child({})", args.clusters);
        c.wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css(&cards))
            .await
            .context("every cluster's card")?;
        let timing = c
            .execute(
                "const nav = performance.getEntriesByType('navigation')[0];\
                 const res = performance.getEntriesByType('resource');\
                 const api = res.filter(r => r.name.includes('/v1/'));\
                 const assets = res.filter(r => r.name.includes('/ui/'));\
                 return {now: performance.now(),\
                   html: nav.encodedBodySize,\
                   assets: assets.length, assetBytes: assets.reduce((a, r) => a + r.encodedBodySize, 0),\
                   apiCalls: api.length, apiBytes: api.reduce((a, r) => a + r.encodedBodySize, 0),\
                   apiMs: api.reduce((a, r) => Math.max(a, r.responseEnd), 0)};",
                Vec::new(),
            )
            .await?;
        println!("run {}: {timing}", run + 1);
        first_render.push(timing["now"].as_f64().unwrap_or(0.0));
    }
    first_render.sort_by(f64::total_cmp);
    println!(
        "overview with {} clusters, {} services: every card on screen {:.0} ms after navigation (median of 3, {:.0}-{:.0})",
        args.clusters, args.services, first_render[1], first_render[0], first_render[2]
    );
    let _ = c.close().await;
    Ok(())
}
