//! `gns-bench`: API throughput and latency of a running `gns-federation`.
//!
//! Seeds global namespaces and routing / external-workload objects, then runs
//! N concurrent clients doing GETs, then PUTs (each a real change), then
//! heartbeats of the external workloads, for a fixed time each, and prints
//! requests/s and latency percentiles; after the heartbeats, whether the
//! store revision (the SOA serial and the gateways' config version) moved.
//! See `bench/api.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Load test for the GNS federation API")]
struct Args {
    /// Federation URL.
    #[arg(long, default_value = "https://127.0.0.1:8080")]
    server: String,
    /// PEM roots that verify an https:// federation (its <data-dir>/ca.pem).
    #[arg(long, env = "GNS_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Plain HTTP/2 (h2c, prior knowledge) to an http:// federation, so a
    /// comparison with TLS (HTTP/2 by ALPN) measures TLS alone.
    #[arg(long)]
    h2c: bool,
    /// Admin token.
    #[arg(long, env = "GNS_TOKEN")]
    token: String,
    /// Global namespaces to create.
    #[arg(long, default_value_t = 1000)]
    namespaces: usize,
    /// Routing + external-workload objects to create (half each).
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Duration of each measured phase, seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Label printed with the results (e.g. the backend).
    #[arg(long, default_value = "")]
    label: String,
    /// Phases to measure, in order: `get`, `put`, `beat`.
    #[arg(long, value_delimiter = ',', default_value = "get,put,beat")]
    phases: Vec<Mode>,
}

/// What the clients of a measured phase do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// GET an object.
    Get,
    /// PUT a changed routing object.
    Put,
    /// PUT …/heartbeat of an external workload.
    Beat,
}

/// A tiny deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn routing_body(weight: u64) -> Value {
    json!({"rules": [
        {"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]},
         "destinations": [{"cluster": "west", "weight": 100}]},
        {"destinations": [{"cluster": "east", "weight": weight}, {"cluster": "west", "weight": 100 - weight}]}],
        "timeout": "2s", "failover": ["east", "west"]})
}

struct Target {
    gns: usize,
    index: usize,
    routing: bool,
}

fn object_path(t: &Target) -> String {
    if t.routing {
        format!(
            "/v1/global-namespaces/ns-{}/services/svc-{}/routing",
            t.gns, t.index
        )
    } else {
        format!(
            "/v1/global-namespaces/ns-{}/external-workloads/vm-{}",
            t.gns, t.index
        )
    }
}

fn target(args: &Args, i: usize) -> Target {
    Target {
        gns: i % args.namespaces,
        index: i,
        routing: i.is_multiple_of(2),
    }
}

async fn send(
    client: &reqwest::Client,
    args: &Args,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<u16> {
    let mut req = client
        .request(method, format!("{}{path}", args.server))
        .bearer_auth(&args.token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("request to {path}"))?;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await?;
    Ok(status)
}

/// Runs `jobs` with `concurrency` workers.
async fn run_all(
    args: Arc<Args>,
    client: reqwest::Client,
    jobs: Vec<(String, Value, bool)>,
) -> anyhow::Result<()> {
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (args, client, jobs, next) = (
            Arc::clone(&args),
            client.clone(),
            Arc::clone(&jobs),
            Arc::clone(&next),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((path, body, put)) = jobs.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let method = if *put {
                    reqwest::Method::PUT
                } else {
                    reqwest::Method::POST
                };
                let status = send(&client, &args, method, path, Some(body)).await?;
                if !(200..300).contains(&status) && status != 409 {
                    bail!("seeding {path}: HTTP {status}");
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

async fn seed(args: Arc<Args>, client: &reqwest::Client) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut clusters = Vec::new();
    for (name, net) in [("east", "10.8.0.0/16"), ("west", "10.9.0.0/16")] {
        clusters.push((
            "/v1/clusters".to_owned(),
            json!({"name": name, "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}, "networks": [net]}),
            false,
        ));
    }
    run_all(Arc::clone(&args), client.clone(), clusters).await?;
    let namespaces = (0..args.namespaces)
        .map(|g| {
            ("/v1/global-namespaces".to_owned(),
             json!({"name": format!("ns-{g}"), "domain": format!("ns-{g}.bench.acme.com"),
                    "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]}),
             false)
        })
        .collect();
    run_all(Arc::clone(&args), client.clone(), namespaces).await?;
    let objects = (0..args.objects)
        .map(|i| {
            let t = target(&args, i);
            if t.routing {
                (object_path(&t), routing_body(99), true)
            } else {
                (
                    format!("/v1/global-namespaces/ns-{}/external-workloads", t.gns),
                    json!({"name": format!("vm-{i}"), "service": "db", "address": "192.0.2.10",
                        "ports": [{"name": "pg", "port": 5432}], "ttl": "24h"}),
                    false,
                )
            }
        })
        .collect();
    run_all(Arc::clone(&args), client.clone(), objects).await?;
    eprintln!(
        "seeded {} namespaces and {} objects in {:.1}s",
        args.namespaces,
        args.objects,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

struct PhaseResult {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl PhaseResult {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[idx]) / 1000.0
    }
}

async fn phase(
    args: Arc<Args>,
    client: &reqwest::Client,
    mode: Mode,
) -> anyhow::Result<PhaseResult> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let (args, client) = (Arc::clone(&args), client.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let i = rng.below(args.objects);
                let t = target(&args, i);
                let sent = Instant::now();
                let status = if mode == Mode::Beat {
                    // Odd indices are external workloads.
                    let t = target(&args, (i | 1).min(args.objects - 1));
                    let path = format!("{}/heartbeat", object_path(&t));
                    send(&client, &args, reqwest::Method::PUT, &path, None).await?
                } else if mode == Mode::Put {
                    let t = target(&args, i - i % 2);
                    // A new split each time (1 in 50 repeats the current one and is a no-op).
                    let body = routing_body(50 + rng.next() % 50);
                    send(
                        &client,
                        &args,
                        reqwest::Method::PUT,
                        &object_path(&t),
                        Some(&body),
                    )
                    .await?
                } else {
                    send(&client, &args, reqwest::Method::GET, &object_path(&t), None).await?
                };
                latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                if !(200..300).contains(&status) {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await??;
        latencies_us.extend(l);
        errors += e;
    }
    latencies_us.sort_unstable();
    Ok(PhaseResult {
        requests: latencies_us.len(),
        errors,
        elapsed: start.elapsed(),
        latencies_us,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arc::new(Args::parse());
    let mut builder = gns_trust::client_builder(args.ca_file.as_deref())?
        .pool_max_idle_per_host(args.concurrency);
    if args.h2c {
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build()?;
    seed(Arc::clone(&args), &client).await?;
    for mode in args.phases.clone() {
        let before = versions(&args, &client).await?;
        let r = phase(Arc::clone(&args), &client, mode).await?;
        let rps = r.requests as f64 / r.elapsed.as_secs_f64();
        let name = match mode {
            Mode::Get => "GET",
            Mode::Put => "PUT",
            Mode::Beat => "BEAT",
        };
        let after = versions(&args, &client).await?;
        println!(
            "{:<10} {name:<4} clients={} requests={} errors={} rps={:.0} p50={:.2}ms p99={:.2}ms max={:.2}ms versions {}",
            args.label,
            args.concurrency,
            r.requests,
            r.errors,
            rps,
            r.percentile(0.50),
            r.percentile(0.99),
            r.percentile(1.0),
            if before == after {
                format!("unchanged ({before:?})")
            } else {
                format!("{before:?} -> {after:?}")
            }
        );
    }
    Ok(())
}

/// The DNS snapshot's version (the SOA serial) and east's gateway config
/// version, once the builder has caught up with the store (a second apart).
async fn versions(args: &Args, client: &reqwest::Client) -> anyhow::Result<(u64, u64)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut out = [0u64; 2];
    for (slot, path) in out
        .iter_mut()
        .zip(["/v1/config/dns", "/v1/config/gateways/east"])
    {
        let body: Value = client
            .get(format!("{}{path}", args.server))
            .bearer_auth(&args.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?
            .json()
            .await
            .with_context(|| format!("GET {path}: not JSON"))?;
        *slot = body["version"]
            .as_u64()
            .with_context(|| format!("GET {path}: no version"))?;
    }
    Ok((out[0], out[1]))
}
