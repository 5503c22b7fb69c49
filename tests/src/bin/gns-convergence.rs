//! `gns-convergence`: discovery convergence at scale. Starts N Kubernetes API
//! test servers (member clusters) in this process, each with S services of E
//! endpoints, runs a real `gns-federation` binary against them, and measures
//! (1) time from registering the clusters to every service answering in DNS,
//! (2) p50/p99 from an endpoint change in a member API to the DNS answer
//! reflecting it, over C changes, and (3) the federation's resident memory.
//! See `bench/convergence.sh`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use clap::Parser;
use gns_tests::{Proc, addresses, dns_udp, free_port};
use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Directory with the gns-federation binary.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Member clusters.
    #[arg(long, default_value_t = 10)]
    clusters: usize,
    /// Services in total (spread over the clusters).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Postgres URL (default: the embedded store).
    #[arg(long)]
    database_url: Option<String>,
    /// Where the federation's log goes (default: a temporary directory).
    #[arg(long)]
    federation_log: Option<PathBuf>,
}

const TOKEN: &str = "convergence-token";
const DOMAIN: &str = "bench.convergence.acme.com";

fn slice(c: usize, i: usize, n: usize, ready: bool) -> EndpointSlice {
    // Unique addresses for up to 10 endpoints per service and 6,250 services per cluster.
    let ips: Vec<String> = (0..n)
        .map(|e| format!("10.{}.{}.{}", c, i / 25 % 250, (i % 25) * 10 + e % 10 + 1))
        .collect();
    let eps: Vec<(&str, bool, bool, bool, Option<&str>)> = ips
        .iter()
        .map(|ip| (ip.as_str(), ready, ready, false, Some("a")))
        .collect();
    endpoint_slice(
        "shop",
        &format!("svc-{c}-{i}"),
        &format!("svc-{c}-{i}-1"),
        &eps,
        &[("http", 80)],
    )
}

/// One API call; `(status, body)`.
async fn call(
    method: reqwest::Method,
    url: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let client = gns_tests::client().build()?;
    let mut req = client.request(method, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn wait_dns(
    dns: SocketAddr,
    name: String,
    want_empty: bool,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let n = name.clone();
        let answer =
            tokio::task::spawn_blocking(move || dns_udp(dns, "127.0.0.1:0", &n, RecordType::A))
                .await?;
        if answer.is_some_and(|m| addresses(&m).is_empty() == want_empty) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{name}: no convergence within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let per_cluster = args.services / args.clusters;
    eprintln!(
        "seeding {} clusters × {per_cluster} services × {} endpoints",
        args.clusters, args.endpoints
    );
    let mut members = Vec::new();
    for c in 0..args.clusters {
        let api =
            TestApiServer::start(TestApiServerOptions::default().token(TOKEN, Grant::admin("gns")))
                .await?;
        for i in 0..per_cluster {
            api.apply::<Service>(&service(
                "shop",
                &format!("svc-{c}-{i}"),
                &[("app", "bench")],
                &[("http", 80)],
            ))?;
            api.apply::<EndpointSlice>(&slice(c, i, args.endpoints, true))?;
        }
        members.push(Arc::new(api));
    }

    let dir = tempfile::tempdir()?;
    let (api_port, dns_port) = (free_port(), free_port());
    let mut fed_args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{api_port}"),
        "--dns-listen".to_owned(),
        format!("127.0.0.1:{dns_port}"),
        "--data-dir".to_owned(),
        dir.path().display().to_string(),
        "--admin-token".to_owned(),
        TOKEN.to_owned(),
    ];
    if let Some(url) = &args.database_url {
        fed_args.extend(["--database-url".to_owned(), url.clone()]);
    }
    let fed = Proc::spawn(
        &args.bin_dir.join("gns-federation"),
        &fed_args,
        args.federation_log
            .clone()
            .unwrap_or_else(|| dir.path().join("federation.log")),
    );
    let pid = fed_pid(&fed)?;
    let base = format!("https://127.0.0.1:{api_port}");
    gns_tests::trust(&base, &dir.path().join("ca.pem"));
    let dns: SocketAddr = format!("127.0.0.1:{dns_port}").parse()?;
    for _ in 0..200 {
        if matches!(
            call(reqwest::Method::GET, &format!("{base}/readyz"), None).await,
            Ok((200, _))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let post = async |path: &str, body: serde_json::Value| -> anyhow::Result<()> {
        let (status, text) =
            call(reqwest::Method::POST, &format!("{base}{path}"), Some(&body)).await?;
        if !(200..300).contains(&status) {
            bail!("POST {path}: {status} {text}");
        }
        Ok(())
    };
    let start = Instant::now();
    let mut member_list = Vec::new();
    for (c, api) in members.iter().enumerate() {
        post(
            "/v1/clusters",
            json!({"name": format!("c{c}"), "kubernetes": {"server": api.url(), "token": TOKEN,
            "caData": base64::engine::general_purpose::STANDARD.encode(api.ca_pem())},
            "gateway": {"ingressAddress": format!("198.51.100.{}:15443", c + 1), "egressAddress": "10.255.0.1", "publicAddress": format!("198.51.100.{}", c + 1)}}),
        )
        .await?;
        member_list.push(json!({"cluster": format!("c{c}"), "namespace": "shop"}));
    }
    post(
        "/v1/global-namespaces",
        json!({"name": "bench", "domain": DOMAIN, "members": member_list}),
    )
    .await?;
    // Initial sync: the last service of every cluster answers.
    let mut waits = Vec::new();
    for c in 0..args.clusters {
        waits.push(tokio::spawn(wait_dns(
            dns,
            format!("svc-{c}-{}.{DOMAIN}", per_cluster - 1),
            false,
            Duration::from_secs(120),
        )));
    }
    for w in waits {
        w.await??;
    }
    let initial = start.elapsed();
    let (_, status) = call(
        reqwest::Method::GET,
        &format!("{base}/v1/config/status"),
        None,
    )
    .await?;
    eprintln!("initial sync {initial:?}; {status}");
    let rss_after_sync = rss_mib(pid);

    // Changes: one cluster at a time per worker, each flips one service's endpoints.
    let mut lat = Vec::new();
    let per_worker = args.changes / args.clusters;
    let mut tasks = Vec::new();
    for (c, api) in members.iter().enumerate() {
        let api = Arc::clone(api);
        let (endpoints, per_cluster) = (args.endpoints, per_cluster);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut state: BTreeMap<usize, bool> = BTreeMap::new();
            for k in 0..per_worker {
                let i = (k * 7919 + c * 13) % per_cluster;
                let ready = !state.get(&i).copied().unwrap_or(true);
                state.insert(i, ready);
                let changed = Instant::now();
                api.apply::<EndpointSlice>(&slice(c, i, endpoints, ready))?;
                wait_dns(
                    dns,
                    format!("svc-{c}-{i}.{DOMAIN}"),
                    !ready,
                    Duration::from_secs(30),
                )
                .await?;
                out.push(changed.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    for t in tasks {
        lat.extend(t.await??);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "# {} clusters, {} services, {} endpoints, store {}",
        args.clusters,
        per_cluster * args.clusters,
        per_cluster * args.clusters * args.endpoints,
        if args.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    println!("initial sync to DNS: {:.2} s", initial.as_secs_f64());
    println!(
        "endpoint change -> DNS over {} changes: p50={:.0} ms p99={:.0} ms max={:.0} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!(
        "federation RSS: {rss_after_sync:.0} MiB after the initial sync, {:.0} MiB at the end ({} threads)",
        rss_mib(pid),
        threads(pid)
    );
    if let Ok((200, metrics)) = call(reqwest::Method::GET, &format!("{base}/metrics"), None).await {
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        let (count, sum) = (
            value("gns_snapshot_build_seconds_count"),
            value("gns_snapshot_build_seconds_sum"),
        );
        println!(
            "snapshot builds: {count:.0}, mean {:.0} ms",
            if count > 0.0 {
                sum / count * 1000.0
            } else {
                0.0
            }
        );
    }
    drop(fed);
    Ok(())
}

fn fed_pid(p: &Proc) -> anyhow::Result<u32> {
    p.pid().context("federation pid")
}
