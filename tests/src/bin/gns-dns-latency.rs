//! `gns-dns-latency`: how long a REST write takes to show in DNS.
//!
//! Registers an external workload, then N times: changes its address with a
//! PUT and polls the given DNS servers (every 0.5 ms) until each answers with
//! the new address. Prints p50/p99/max per server. See `bench/dns_latency.sh`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gns_tests::{addresses, dns_udp, http};
use hickory_proto::rr::RecordType;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Federation URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Admin token.
    #[arg(long, env = "GNS_TOKEN")]
    token: String,
    /// DNS servers to watch, `label=addr:port` (e.g. `in-process=127.0.0.1:5353`).
    #[arg(long = "dns", required = true)]
    dns: Vec<String>,
    /// Writes to measure.
    #[arg(long, default_value_t = 200)]
    writes: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets: Vec<(String, SocketAddr)> = args
        .dns
        .iter()
        .map(|d| {
            let (label, addr) = d.split_once('=').context("--dns wants label=addr:port")?;
            Ok((label.to_owned(), addr.parse().context("DNS address")?))
        })
        .collect::<anyhow::Result<_>>()?;
    let api = |method: &str, path: &str, body: serde_json::Value| -> anyhow::Result<()> {
        let (status, text) = http(
            method,
            &format!("{}{path}", args.server),
            Some(&args.token),
            Some(&body),
        )
        .map_err(anyhow::Error::msg)?;
        if !(200..300).contains(&status) && status != 409 {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(())
    };
    api(
        "POST",
        "/v1/clusters",
        json!({"name": "lat", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}}),
    )?;
    api(
        "POST",
        "/v1/global-namespaces",
        json!({"name": "latency", "domain": "latency.bench.acme.com", "members": [{"cluster": "lat", "namespace": "x"}]}),
    )?;
    let workload = |i: usize| {
        json!({"name": "probe", "service": "probe", "address": format!("10.77.{}.{}", i / 250, i % 250 + 1),
        "ports": [{"name": "p", "port": 80}], "ttl": "1h"})
    };
    api(
        "POST",
        "/v1/global-namespaces/latency/external-workloads",
        workload(0),
    )?;
    let name = "probe.latency.bench.acme.com";
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for i in 1..=args.writes {
        let expected = vec![format!("10.77.{}.{}", i / 250, i % 250 + 1)];
        let start = Instant::now();
        api(
            "PUT",
            "/v1/global-namespaces/latency/external-workloads/probe",
            workload(i),
        )?;
        for (t, (label, addr)) in targets.iter().enumerate() {
            loop {
                if dns_udp(*addr, "127.0.0.1:0", name, RecordType::A)
                    .is_some_and(|m| addresses(&m) == expected)
                {
                    samples[t].push(start.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("{label}: write {i} not visible after 10 s");
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
    println!(
        "write-to-DNS latency over {} writes (ms, from the PUT being sent):",
        args.writes
    );
    for ((label, _), mut s) in targets.iter().zip(samples) {
        s.sort_by(f64::total_cmp);
        println!(
            "  {label:<12} p50={:.1} p99={:.1} max={:.1}",
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            percentile(&s, 1.0)
        );
    }
    Ok(())
}
