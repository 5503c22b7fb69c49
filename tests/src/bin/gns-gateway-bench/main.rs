//! Gateway throughput against haproxy, same topology, same run:
//! HTTP/1.1 with wrk, gRPC unary calls with h2load (both chains speaking
//! h2c at the front, [`grpc`]), TCP passthrough, and streaming uploads and
//! downloads against the direct path ([`stream`]):
//! `wrk → proxy A (plain HTTP) → mTLS, HTTP/2 → proxy B → nginx`, where A/B are
//! the east/west `gns-gateway`s (bootstrapped through a real federation and
//! Kubernetes API test servers) or two haproxy processes, plus wrk → nginx
//! directly. Reports requests/s, p50/p99 and proxy CPU per request, and the
//! ratios against haproxy. Needs `wrk`, `haproxy` and `nginx` on the PATH.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod grpc;
mod stream;
use base64::Engine;
use clap::Parser;
use gns_tests::{Proc, free_port};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, endpoint_slice, service};
use serde_json::{Value, json};

#[derive(Debug, Clone, Parser)]
struct Args {
    /// Directory with gns-federation and gns-gateway.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Threads of each proxy (haproxy nbthread, gateway worker threads).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Alternating haproxy / gns-gateway runs (the ratios use the best of each).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// MiB sent through the TCP passthrough (and directly) for its throughput.
    #[arg(long, default_value_t = 512)]
    tcp_mib: u64,
    /// MiB of each streamed upload and download (through the gateways and
    /// directly).
    #[arg(long, default_value_t = 1024)]
    stream_mib: u64,
    /// Export spans from both gateways to an OTLP sink in this process,
    /// sampling new traces at this ratio (0 to 1); without it, no export.
    #[arg(long)]
    otlp_sample_ratio: Option<f64>,
    /// Pin the proxies (both chains alike) to the last CPU and wrk and nginx
    /// to CPU 0, so where the scheduler puts them does not move the figures.
    #[arg(long)]
    pin: bool,
    /// Also count the proxies' system calls, context switches and page faults per request
    /// (`perf stat` on their processes during each run; needs `perf`).
    #[arg(long)]
    syscalls: bool,
    /// Instead of timed runs, count the proxies' user-space instructions per
    /// request under valgrind's callgrind: slow, but free of the noise of a
    /// shared machine (needs `apt-get install valgrind`).
    #[arg(long)]
    callgrind: bool,
    /// Keep the work directory (configs, certificates, logs) and print its path.
    #[arg(long)]
    keep_dir: bool,
}

const TOKEN: &str = "gateway-bench-admin";
const HOST: &str = "web.production.app.acme.com";

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// CPU seconds a process has used: user and system (kernel) time.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (ticks(11), ticks(12))
}

/// CPU seconds of `pids` together: (user + system, system).
fn cpu_of(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|p| cpu_seconds(*p))
        .fold((0.0, 0.0), |(all, sys), (u, s)| (all + u + s, sys + s))
}

#[derive(Debug)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    /// Of that, the kernel's (system time).
    kernel_us_per_request: f64,
    /// Kernel events of the proxies per request (`--syscalls`).
    per_request: Option<KernelCounts>,
}

/// System calls, context switches and page faults (in all, or per request).
#[derive(Debug, Clone, Copy)]
struct KernelCounts {
    syscalls: f64,
    switches: f64,
    faults: f64,
}

/// Starts a proxy, under callgrind (counting nothing until switched on)
/// when `dir` is given.
fn spawn_proxy(program: &Path, args: &[String], log: PathBuf, callgrind: Option<&Path>) -> Proc {
    match callgrind {
        None => Proc::spawn(program, args, log),
        Some(dir) => {
            let mut wrapped = vec![
                "--tool=callgrind".to_owned(),
                "--instr-atstart=no".to_owned(),
                format!("--callgrind-out-file={}/callgrind-%p.out", dir.display()),
                program.display().to_string(),
            ];
            wrapped.extend_from_slice(args);
            Proc::spawn(Path::new("valgrind"), &wrapped, log)
        }
    }
}

/// Runs `callgrind_control` with `flag` on `pid`.
fn callgrind_control(flag: &str, pid: u32) -> anyhow::Result<()> {
    run_tool(
        "callgrind_control",
        &[flag, &pid.to_string()],
        "apt-get install valgrind",
    )
}

/// Instructions the proxies `pids` (under callgrind, writing to `dir`)
/// execute per request during one wrk run.
fn instructions_per_request(
    args: &Args,
    url: &str,
    host: Option<&str>,
    pids: &[u32],
    dir: &Path,
) -> anyhow::Result<(f64, f64)> {
    for pid in pids {
        callgrind_control("--instr=on", *pid)?;
    }
    let run = wrk(args, url, host, &[])?;
    let mut instructions = 0.0;
    for pid in pids {
        callgrind_control("--dump", *pid)?;
        callgrind_control("--instr=off", *pid)?;
        // The newest dump of this process.
        let newest = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("callgrind-{pid}.out.")))
            })
            .max_by_key(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .and_then(|e| e.parse::<u32>().ok())
            })
            .with_context(|| format!("no callgrind dump of {pid} in {}", dir.display()))?;
        let text = std::fs::read_to_string(&newest)?;
        instructions += text
            .lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .with_context(|| format!("no instruction total in {}", newest.display()))?;
    }
    let requests = run.rps * f64::from(args.duration);
    Ok((run.rps, instructions / requests.max(1.0)))
}

/// `perf stat` counting the [`KernelCounts`] of `pids` until stopped.
fn start_syscall_count(pids: &[u32], out: &Path) -> anyhow::Result<std::process::Child> {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "raw_syscalls:sys_enter,context-switches,page-faults",
        ])
        .args(["-p", &list, "-o"])
        .arg(out)
        .spawn()
        .context("run perf (apt-get install linux-perf)")
}

/// Stops a [`start_syscall_count`] and reads its counts.
fn finish_syscall_count(mut perf: std::process::Child, out: &Path) -> anyhow::Result<KernelCounts> {
    let pid = perf.id().to_string();
    run_tool("kill", &["-INT", &pid], "procps")?;
    perf.wait()?;
    let text = std::fs::read_to_string(out).with_context(|| format!("read {}", out.display()))?;
    let count = |event: &str| {
        text.lines()
            .find(|l| l.contains(event))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no {event} count in perf output: {text}"))
    };
    Ok(KernelCounts {
        syscalls: count("raw_syscalls:sys_enter")?,
        switches: count("context-switches")?,
        faults: count("page-faults")?,
    })
}

fn latency_ms(text: &str, label: &str) -> f64 {
    text.lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split_whitespace().nth(1))
        .map_or(0.0, duration_ms)
}

/// A duration as wrk and h2load print it (`812us`, `1.20ms`, `2.5s`), in ms.
fn duration_ms(v: &str) -> f64 {
    if let Some(us) = v.strip_suffix("us") {
        us.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().unwrap_or(0.0)
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

/// Sets the CPU affinity of every thread of `pid` (`taskset`).
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    run_tool(
        "taskset",
        &["-a", "-p", "-c", cpus, &pid.to_string()],
        "util-linux",
    )
}

/// Runs `program args…`, failing with its error output unless it succeeds
/// (`install`: where the program comes from).
fn run_tool(program: &str, args: &[&str], install: &str) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} ({install})"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn wrk(args: &Args, url: &str, host: Option<&str>, pids: &[u32]) -> anyhow::Result<Run> {
    let counting = match (&args.syscalls, pids.is_empty()) {
        (true, false) => {
            let out =
                std::env::temp_dir().join(format!("gns-bench-perf-{}.txt", std::process::id()));
            Some((start_syscall_count(pids, &out)?, out))
        }
        _ => None,
    };
    let before = cpu_of(pids);
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", args.connections),
        &format!("-d{}s", args.duration),
        "--latency",
    ]);
    if let Some(h) = host {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let after = cpu_of(pids);
    let counted = match counting {
        Some((perf, out)) => Some(finish_syscall_count(perf, &out)?),
        None => None,
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!(
            "warning: {url}: {}",
            text.lines()
                .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let requests = rps * f64::from(args.duration);
    let per_request = |seconds: f64| {
        if pids.is_empty() || requests == 0.0 {
            0.0
        } else {
            seconds / requests * 1e6
        }
    };
    Ok(Run {
        rps,
        p50_ms: latency_ms(&text, "50%"),
        p99_ms: latency_ms(&text, "99%"),
        cpu_us_per_request: per_request(after.0 - before.0),
        kernel_us_per_request: per_request(after.1 - before.1),
        per_request: counted.filter(|_| requests > 0.0).map(|c| KernelCounts {
            syscalls: c.syscalls / requests,
            switches: c.switches / requests,
            faults: c.faults / requests,
        }),
    })
}

async fn api(method: reqwest::Method, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let mut req = gns_tests::client()
        .build()
        .expect("client")
        .request(method, url)
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status} {value}");
    }
    Ok(value)
}

async fn wait_ok(url: &str, host: Option<&str>, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Built each time: the federation's CA file appears when it starts.
        let client = gns_tests::client().build()?;
        let mut req = client.get(url);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        if let Ok(r) = req.send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} never answered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CA, server and client certificates for the haproxy chain (ECDSA P-256, like the gateways').
fn haproxy_certs(dir: &Path) -> anyhow::Result<()> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct subjects: OpenSSL takes a leaf whose issuer equals its subject for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    write(&dir.join("ca.pem"), &ca.pem())?;
    for name in ["a", "b"] {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![format!("{name}.bench")])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name}.bench"));
        let cert = params.signed_by(&key, &issuer)?;
        write(
            &dir.join(format!("{name}.pem")),
            &format!("{}{}", cert.pem(), key.serialize_pem()),
        )?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    // Counted before pinning: afterwards this process sees only CPU 0.
    let last_cpu = std::thread::available_parallelism().map_or(1, usize::from) - 1;
    if args.pin {
        // Inherited by everything started from here (nginx, the federation,
        // wrk); the proxies are moved to the last CPU once they run.
        pin(std::process::id(), "0")?;
    }
    let dir = tempfile::tempdir()?;
    let kept;
    let d = if args.keep_dir {
        kept = dir.keep();
        eprintln!("work directory: {}", kept.display());
        kept.as_path()
    } else {
        dir.path()
    };

    // nginx, the upstream.
    let nginx_port = free_port();
    write(
        &d.join("nginx.conf"),
        &format!(
            "master_process off; worker_processes 1; daemon off; pid {0}/nginx.pid; error_log {0}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {0}; proxy_temp_path {0}; fastcgi_temp_path {0}; uwsgi_temp_path {0}; scgi_temp_path {0};
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{1}; location / {{ return 200 \"ok\\n\"; }} }} }}",
            d.display(),
            nginx_port
        ),
    )?;
    let _nginx = Proc::spawn(
        Path::new("/usr/sbin/nginx"),
        &[
            "-c".into(),
            d.join("nginx.conf").display().to_string(),
            "-p".into(),
            d.display().to_string(),
        ],
        d.join("nginx.log"),
    );
    wait_ok(&format!("http://127.0.0.1:{nginx_port}/"), None, "nginx").await?;

    // The federation, two member clusters, their gateways; web runs in west only.
    let east =
        TestApiServer::start(TestApiServerOptions::default().token("m", Grant::admin("gns")))
            .await?;
    let west =
        TestApiServer::start(TestApiServerOptions::default().token("m", Grant::admin("gns")))
            .await?;
    west.apply::<Service>(&service("shop", "web", &[("app", "web")], &[("http", 80)]))?;
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("http", i32::from(nginx_port))],
    ))?;
    // A TCP sink for the passthrough measurement: service db, port `db_port`.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_port = sink.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = sink.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total: u64 = 0;
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                // Acknowledge what arrived, so the sender measures delivery.
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, &total.to_be_bytes()).await;
            });
        }
    });
    let db_port = free_port();
    west.apply::<Service>(&service(
        "shop",
        "db",
        &[("app", "db")],
        &[("pg", i32::from(db_port))],
    ))?;
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "db",
        "db-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("pg", i32::from(sink_port))],
    ))?;
    // A real gRPC server (tonic's health service) on a port named grpc, and
    // a bulk upstream for streaming.
    let grpc_port = grpc::upstream().await?;
    west.apply::<Service>(&service(
        "shop",
        "health",
        &[("app", "health")],
        &[("grpc", 50051)],
    ))?;
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "health",
        "health-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("grpc", i32::from(grpc_port))],
    ))?;
    let bulk_port = stream::upstream().await?;
    west.apply::<Service>(&service(
        "shop",
        "bulk",
        &[("app", "bulk")],
        &[("http", 80)],
    ))?;
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "bulk",
        "bulk-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("http", i32::from(bulk_port))],
    ))?;
    let api_port = free_port();
    let base = format!("https://127.0.0.1:{api_port}");
    gns_tests::trust(&base, &d.join("fed").join("ca.pem"));
    let _fed = Proc::spawn(
        &args.bin_dir.join("gns-federation"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--dns-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--data-dir".into(),
            d.join("fed").display().to_string(),
            "--admin-token".into(),
            TOKEN.into(),
        ],
        d.join("federation.log"),
    );
    wait_ok(&format!("{base}/readyz"), None, "the federation").await?;
    let ingress = [("east", free_port()), ("west", free_port())];
    for ((name, port), kube) in ingress.iter().zip([&east, &west]) {
        api(
            reqwest::Method::POST,
            &format!("{base}/v1/clusters"),
            Some(json!({"name": name, "kubernetes": {"server": kube.url(), "token": "m",
                "caData": base64::engine::general_purpose::STANDARD.encode(kube.ca_pem())},
                "gateway": {"ingressAddress": format!("127.0.0.1:{port}"), "egressAddress": "127.0.0.1"}})),
        )
        .await?;
    }
    api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(json!({"name": "production", "domain": "production.app.acme.com",
            "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]})),
    )
    .await?;
    // An OTLP/HTTP sink for the gateways' spans, when tracing is measured.
    let otlp = match args.otlp_sample_ratio {
        Some(ratio) => {
            let (port, received) = otlp_sink().await?;
            Some((ratio, format!("http://127.0.0.1:{port}"), received))
        }
        None => None,
    };
    let mut gateways = Vec::new();
    let mut east_egress: Option<SocketAddr> = None;
    for (name, port) in ingress {
        let join = api(
            reqwest::Method::POST,
            &format!("{base}/v1/clusters/{name}/join-tokens"),
            Some(json!({})),
        )
        .await?;
        // Distinct egress addresses: each gateway listens there on TCP service ports too.
        let ip = if name == "east" {
            "127.0.0.2"
        } else {
            "127.0.0.4"
        };
        let egress: SocketAddr = format!("{ip}:{}", free_port()).parse()?;
        if name == "east" {
            east_egress = Some(egress);
        }
        gateways.push(spawn_proxy(
            &args.bin_dir.join("gns-gateway"),
            &[
                "--federation".into(),
                base.clone(),
                "--federation-ca".into(),
                gns_tests::ca_for(&base),
                "--cluster".into(),
                name.into(),
                "--join-token".into(),
                join["token"].as_str().unwrap_or_default().into(),
                "--egress-listen".into(),
                egress.to_string(),
                "--ingress-listen".into(),
                format!("127.0.0.1:{port}"),
                "--admin-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--state-dir".into(),
                d.join(format!("gw-{name}")).display().to_string(),
                "--worker-threads".into(),
                args.threads.to_string(),
            ]
            .into_iter()
            .chain(otlp.iter().flat_map(|(ratio, endpoint, _)| {
                [
                    "--otlp-endpoint".to_owned(),
                    endpoint.clone(),
                    "--otlp-sample-ratio".to_owned(),
                    ratio.to_string(),
                ]
            }))
            .collect::<Vec<String>>(),
            d.join(format!("gateway-{name}.log")),
            args.callgrind.then_some(d),
        ));
    }
    let east_egress = east_egress.context("east egress")?;
    let gns_url = format!("http://{east_egress}/");
    wait_ok(&gns_url, Some(HOST), "the gateway chain").await?;

    // The haproxy chain: A (plain HTTP front) → mTLS, HTTP/2 → B → nginx.
    haproxy_certs(d)?;
    let (a_port, b_port) = (free_port(), free_port());
    let global = format!(
        "global\n  nbthread {}\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  http-reuse always\n",
        args.threads
    );
    write(
        &d.join("haproxy-b.cfg"),
        &format!(
            "{global}frontend fb\n  bind 127.0.0.1:{b_port} ssl crt {0}/b.pem ca-file {0}/ca.pem verify required alpn h2 ssl-min-ver TLSv1.3\n  default_backend nginx\nbackend nginx\n  server n 127.0.0.1:{nginx_port}\n",
            d.display()
        ),
    )?;
    write(
        &d.join("haproxy-a.cfg"),
        &format!(
            "{global}frontend fa\n  bind 127.0.0.1:{a_port}\n  default_backend b\nbackend b\n  server b 127.0.0.1:{b_port} ssl crt {0}/a.pem ca-file {0}/ca.pem verify required verifyhost b.bench sni str(b.bench) alpn h2 ssl-min-ver TLSv1.3\n",
            d.display()
        ),
    )?;
    let haproxy = |cfg: &str| {
        spawn_proxy(
            Path::new("/usr/sbin/haproxy"),
            &["-db".into(), "-f".into(), d.join(cfg).display().to_string()],
            d.join(format!("{cfg}.log")),
            args.callgrind.then_some(d),
        )
    };
    let ha_b = haproxy("haproxy-b.cfg");
    let ha_a = haproxy("haproxy-a.cfg");
    let (grpc_a_port, grpc_a_cfg, grpc_b_cfg) = grpc::haproxy_configs(d, &global, grpc_port)?;
    let grpc_ha = [&grpc_b_cfg, &grpc_a_cfg].map(|cfg| {
        spawn_proxy(
            Path::new("/usr/sbin/haproxy"),
            &["-db".into(), "-f".into(), cfg.display().to_string()],
            cfg.with_extension("log"),
            None,
        )
    });
    let ha_url = format!("http://127.0.0.1:{a_port}/");
    if let Err(e) = wait_ok(&ha_url, None, "the haproxy chain").await {
        bail!(
            "{e}\nhaproxy A: {}\nhaproxy B: {}",
            ha_a.log_text(),
            ha_b.log_text()
        );
    }

    let pids = |procs: &[&Proc]| procs.iter().filter_map(|p| p.pid()).collect::<Vec<u32>>();
    let gw_pids = pids(&gateways.iter().collect::<Vec<_>>());
    let ha_pids = pids(&[&ha_a, &ha_b]);
    if args.pin {
        for pid in gw_pids.iter().chain(&ha_pids) {
            pin(*pid, &last_cpu.to_string())?;
        }
        println!("# pinned: proxies on CPU {last_cpu}, wrk and nginx on CPU 0");
    }
    if args.callgrind {
        // Warm up (uncounted), then one counted run of each chain.
        let warm_up = Args {
            duration: 2,
            ..args.clone()
        };
        wrk(&warm_up, &ha_url, None, &[])?;
        wrk(&warm_up, &gns_url, Some(HOST), &[])?;
        let (ha_rps, ha) = instructions_per_request(&args, &ha_url, None, &ha_pids, d)?;
        let (gns_rps, gns) = instructions_per_request(&args, &gns_url, Some(HOST), &gw_pids, d)?;
        println!(
            "# under callgrind: {} wrk connections, {} s per run, {} thread(s) per proxy",
            args.connections, args.duration, args.threads
        );
        println!("| path | rps under callgrind | user-space instructions/request (both proxies) |");
        println!("|---|---|---|");
        println!("| haproxy chain | {ha_rps:.0} | {ha:.0} |");
        println!("| gns-gateway chain | {gns_rps:.0} | {gns:.0} |");
        println!(
            "gns-gateway / haproxy: instructions per request {:.2}x",
            gns / ha
        );
        return Ok(());
    }
    let direct = wrk(&args, &format!("http://127.0.0.1:{nginx_port}/"), None, &[])?;
    // Warm both chains up alike (connection pools, allocator, caches) before measuring.
    let warm_up = Args {
        duration: 2,
        ..args.clone()
    };
    wrk(&warm_up, &ha_url, None, &ha_pids)?;
    wrk(&warm_up, &gns_url, Some(HOST), &gw_pids)?;
    let mut ha_runs = Vec::new();
    let mut gns_runs = Vec::new();
    for _ in 0..args.rounds.max(1) {
        ha_runs.push(wrk(&args, &ha_url, None, &ha_pids)?);
        gns_runs.push(wrk(&args, &gns_url, Some(HOST), &gw_pids)?);
    }
    println!(
        "# {} wrk connections, {} s per run, {} thread(s) per proxy; HTTP/2 over mTLS (TLS 1.3) between the proxies",
        args.connections, args.duration, args.threads
    );
    match &otlp {
        Some((ratio, _, received)) => println!(
            "# gateway tracing on: spans to an OTLP sink, new traces sampled at {ratio}; {} span bytes received so far",
            received.load(std::sync::atomic::Ordering::Relaxed)
        ),
        None => println!("# gateway tracing off (no --otlp-endpoint)"),
    }
    println!(
        "| path | rps | p50 ms | p99 ms | proxy CPU µs/request | of which kernel |{}",
        if args.syscalls {
            " syscalls/request | context switches/request | page faults/request |"
        } else {
            ""
        }
    );
    println!(
        "|---|---|---|---|---|---|{}",
        if args.syscalls { "---|---|---|" } else { "" }
    );
    let row = |name: &str, r: &Run| {
        let counts = r
            .per_request
            .map(|c| format!(" {:.2} | {:.3} | {:.3} |", c.syscalls, c.switches, c.faults))
            .unwrap_or_else(|| {
                if args.syscalls {
                    " | | |".into()
                } else {
                    String::new()
                }
            });
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} |{counts}",
            r.rps, r.p50_ms, r.p99_ms, r.cpu_us_per_request, r.kernel_us_per_request
        );
    };
    row("nginx direct", &direct);
    for (round, (ha, gns)) in ha_runs.iter().zip(&gns_runs).enumerate() {
        row(&format!("haproxy chain, round {}", round + 1), ha);
        row(&format!("gns-gateway chain, round {}", round + 1), gns);
    }
    let best = |runs: &[Run]| {
        runs.iter()
            .max_by(|a, b| a.rps.total_cmp(&b.rps))
            .map(|r| (r.rps, r.p99_ms, r.cpu_us_per_request))
            .unwrap_or_default()
    };
    let (g_rps, g_p99, g_cpu) = best(&gns_runs);
    let (h_rps, h_p99, h_cpu) = best(&ha_runs);
    println!(
        "gns-gateway / haproxy (best runs): rps {:.2}x, p99 {:.2}x, CPU per request {:.2}x",
        g_rps / h_rps,
        g_p99 / h_p99,
        g_cpu / h_cpu
    );
    // Each figure's median over the rounds (robust to one noisy run).
    let median = |runs: &[Run], figure: fn(&Run) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(figure).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or_default()
    };
    let ratio = |figure: fn(&Run) -> f64| median(&gns_runs, figure) / median(&ha_runs, figure);
    println!(
        "gns-gateway / haproxy (medians of {} rounds): rps {:.2}x, p99 {:.2}x, CPU per request {:.2}x",
        gns_runs.len(),
        ratio(|r| r.rps),
        ratio(|r| r.p99_ms),
        ratio(|r| r.cpu_us_per_request)
    );

    // TCP passthrough: --tcp-mib through east egress → CONNECT tunnel → west, and directly.
    let through = tcp_throughput((east_egress.ip(), db_port).into(), args.tcp_mib).await?;
    let direct = tcp_throughput(([127, 0, 0, 1], sink_port).into(), args.tcp_mib).await?;
    println!(
        "TCP passthrough: {through:.0} MB/s through the gateways, {direct:.0} MB/s direct ({:.2}x)",
        through / direct
    );

    // gRPC unary calls: h2c at the front of each chain, a tonic server behind.
    let grpc_front: SocketAddr = format!("127.0.0.1:{grpc_a_port}").parse()?;
    let grpc_ha_pids = pids(&[&grpc_ha[0], &grpc_ha[1]]);
    let mut ready = Err(anyhow::anyhow!("not tried"));
    for _ in 0..50 {
        ready = grpc::check_once(grpc_front, grpc::HOST).await;
        if ready.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ready.context("the haproxy gRPC chain")?;
    let mut ready = Err(anyhow::anyhow!("not tried"));
    for _ in 0..100 {
        ready = grpc::check_once(east_egress, grpc::HOST).await;
        if ready.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ready.context("the gateways' gRPC chain")?;
    let mut grpc_runs = (Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        grpc_runs.0.push(grpc::h2load(
            &args,
            d,
            grpc_front,
            grpc::HOST,
            &grpc_ha_pids,
        )?);
        grpc_runs
            .1
            .push(grpc::h2load(&args, d, east_egress, grpc::HOST, &gw_pids)?);
    }
    println!(
        "# gRPC unary (Health/Check, tonic server): h2load, {} connections x 10 streams, {} s per run; h2c at the front, h2 over mTLS between the proxies, h2c to the server",
        args.connections.min(100),
        args.duration
    );
    println!("| path | calls/s | mean ms | proxy CPU µs/call |");
    println!("|---|---|---|---|");
    for (round, (ha, gns)) in grpc_runs.0.iter().zip(&grpc_runs.1).enumerate() {
        for (name, r) in [("haproxy h2 chain", ha), ("gns-gateway chain", gns)] {
            println!(
                "| {name}, round {} | {:.0} | {:.2} | {:.1} |",
                round + 1,
                r.rps,
                r.mean_ms,
                r.cpu_us_per_call
            );
        }
    }
    let grpc_best = |runs: &[grpc::GrpcRun]| {
        runs.iter()
            .copied()
            .max_by(|a, b| a.rps.total_cmp(&b.rps))
            .context("no gRPC run")
    };
    let (g, h) = (grpc_best(&grpc_runs.1)?, grpc_best(&grpc_runs.0)?);
    println!(
        "gRPC gns-gateway / haproxy (best runs): calls/s {:.2}x, mean latency {:.2}x, CPU per call {:.2}x",
        g.rps / h.rps,
        g.mean_ms / h.mean_ms,
        g.cpu_us_per_call / h.cpu_us_per_call
    );

    // Streaming: one large upload and one large download, through the
    // gateways and directly.
    let bulk_direct: SocketAddr = format!("127.0.0.1:{bulk_port}").parse()?;
    let up_gns = stream::upload(east_egress, stream::HOST, args.stream_mib).await?;
    let up_direct = stream::upload(bulk_direct, stream::HOST, args.stream_mib).await?;
    let down_gns = stream::download(east_egress, stream::HOST, args.stream_mib).await?;
    let down_direct = stream::download(bulk_direct, stream::HOST, args.stream_mib).await?;
    println!(
        "streaming {} MiB: upload {up_gns:.0} MB/s through the gateways, {up_direct:.0} MB/s direct ({:.2}x); download {down_gns:.0} MB/s through the gateways, {down_direct:.0} MB/s direct ({:.2}x)",
        args.stream_mib,
        up_gns / up_direct,
        down_gns / down_direct
    );

    // Memory per 1,000 idle client connections on the first proxy.
    let rss = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    };
    let ha_a_pid = ha_a.pid().context("haproxy pid")?;
    let gw_pid = gateways
        .first()
        .and_then(Proc::pid)
        .context("gateway pid")?;
    for (name, pid, addr) in [
        ("gns-gateway egress", gw_pid, east_egress),
        (
            "haproxy front",
            ha_a_pid,
            format!("127.0.0.1:{a_port}").parse()?,
        ),
    ] {
        // Connected and never used, then kept alive after one request (a
        // proxy may keep per-connection buffers from then on).
        for used in [false, true] {
            let before = rss(pid);
            let mut idle = Vec::new();
            for _ in 0..1000 {
                let mut tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connect {addr}"))?;
                if used {
                    one_request(&mut tcp).await?;
                }
                idle.push(tcp);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = rss(pid);
            println!(
                "{name}: {:.1} MiB more RSS for 1,000 idle connections ({})",
                after - before,
                if used {
                    "kept alive after one request"
                } else {
                    "never used"
                }
            );
            drop(idle);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// One keep-alive request on `tcp`, its answer read whole (the bench's
/// upstream answers `ok\n`).
async fn one_request(tcp: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .context("write a request")?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !(answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"ok\n")) {
        let n = tcp.read(&mut buf).await.context("read the answer")?;
        if n == 0 {
            bail!("the connection closed before the answer was whole");
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Sends `mib` MiB to `addr`, waits for the sink's acknowledgement; MB/s.
async fn tcp_throughput(addr: SocketAddr, mib: u64) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let total: u64 = mib * 1024 * 1024;
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let chunk = vec![7u8; 256 * 1024];
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        tcp.write_all(&chunk)
            .await
            .with_context(|| format!("{addr}: write after {sent} bytes"))?;
        sent += chunk.len() as u64;
    }
    tcp.shutdown()
        .await
        .with_context(|| format!("{addr}: shutdown after {sent} bytes"))?;
    let mut ack = [0u8; 8];
    tcp.read_exact(&mut ack)
        .await
        .with_context(|| format!("{addr}: the sink's count after {sent} bytes"))?;
    let received = u64::from_be_bytes(ack);
    if received != total {
        bail!("{addr}: the sink got {received} of {total} bytes");
    }
    Ok(total as f64 / 1e6 / started.elapsed().as_secs_f64())
}

/// An OTLP/HTTP sink: takes every `POST /v1/traces` (200) and counts the
/// bytes; its port and the count.
async fn otlp_sink() -> anyhow::Result<(u16, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = std::sync::Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = std::sync::Arc::clone(&counted);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let counted = std::sync::Arc::clone(&counted);
                        async move {
                            if let Ok(body) = req.into_body().collect().await {
                                counted.fetch_add(
                                    body.to_bytes().len() as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(hyper::body::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok((port, received))
}
