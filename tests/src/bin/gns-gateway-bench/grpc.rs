//! gRPC unary calls through each chain with h2load: a real gRPC server
//! (tonic's health service, h2c) behind west's gateway or behind haproxy B,
//! called at `grpc.health.v1.Health/Check` over h2c at the front proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::{Args, cpu_of};

/// The global service name of the health server.
pub const HOST: &str = "health.production.app.acme.com";
const PATH: &str = "/grpc.health.v1.Health/Check";

/// Starts tonic's health service (reporting SERVING) on a free port.
pub async fn upstream() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let incoming = tokio_stream_of(listener);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("gRPC upstream stopped: {e}");
        }
    });
    Ok(port)
}

/// The accepted connections of `listener`, as tonic takes them.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(tcp, _)| {
            let _ = tcp.set_nodelay(true);
            tcp
        });
        Some((accepted, listener))
    })
}

/// One Check call through `front` (h2c) with `authority`, by a real gRPC
/// client: the chain must carry gRPC (trailers included) before it is timed.
pub async fn check_once(front: SocketAddr, authority: &str) -> anyhow::Result<()> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
        .origin(format!("http://{authority}").parse()?);
    let channel = endpoint
        .connect()
        .await
        .context("connect the gRPC client")?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .with_context(|| format!("Check through {front}"))?
        .into_inner();
    if answer.status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        bail!("Check through {front}: status {}", answer.status);
    }
    Ok(())
}

/// One h2load run against a chain.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRun {
    pub rps: f64,
    pub mean_ms: f64,
    pub cpu_us_per_call: f64,
}

/// h2load for `args.duration` seconds: `args.connections` connections, 10
/// calls in flight on each, the front at `front` named `authority`.
pub fn h2load(
    args: &Args,
    dir: &Path,
    front: SocketAddr,
    authority: &str,
    pids: &[u32],
) -> anyhow::Result<GrpcRun> {
    // An empty HealthCheckRequest in its gRPC frame: uncompressed, length 0.
    let body = dir.join("grpc-check.bin");
    std::fs::write(&body, [0u8; 5])?;
    let before = cpu_of(pids);
    let out = Command::new("h2load")
        .args([
            "-t1",
            &format!("-c{}", args.connections.min(100)),
            "-m10",
            &format!("-D{}", args.duration),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            &format!(":authority: {authority}"),
            "-d",
        ])
        .arg(&body)
        .arg(format!("http://{front}{PATH}"))
        .output()
        .context("run h2load (apt-get install nghttp2-client)")?;
    let after = cpu_of(pids);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("h2load output: {text}"))?;
    let done = |what: &str| {
        text.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| l.split(", ").find(|p| p.ends_with(what)))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (succeeded, failed) = (done(" succeeded"), done(" failed") + done(" errored"));
    if succeeded == 0 || failed > 0 {
        bail!("h2load through {front}: {succeeded} succeeded, {failed} failed:\n{text}");
    }
    if !text.contains(" 0 4xx, 0 5xx") {
        bail!("h2load through {front}: answers other than 2xx:\n{text}");
    }
    let mean_ms = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .map_or(0.0, crate::duration_ms);
    let calls = rps * f64::from(args.duration);
    Ok(GrpcRun {
        rps,
        mean_ms,
        cpu_us_per_call: if calls > 0.0 {
            (after.0 - before.0) / calls * 1e6
        } else {
            0.0
        },
    })
}

/// haproxy configs for gRPC: A takes h2c and goes over mTLS (h2) to B, B
/// to the gRPC server over h2c. Returns the front's port.
pub fn haproxy_configs(
    dir: &Path,
    global: &str,
    grpc_port: u16,
) -> anyhow::Result<(u16, std::path::PathBuf, std::path::PathBuf)> {
    let (a_port, b_port) = (gns_tests::free_port(), gns_tests::free_port());
    let b = dir.join("haproxy-grpc-b.cfg");
    let a = dir.join("haproxy-grpc-a.cfg");
    std::fs::write(
        &b,
        format!(
            "{global}frontend fb\n  bind 127.0.0.1:{b_port} ssl crt {0}/b.pem ca-file {0}/ca.pem verify required alpn h2 ssl-min-ver TLSv1.3\n  default_backend grpc\nbackend grpc\n  server g 127.0.0.1:{grpc_port} proto h2\n",
            dir.display()
        ),
    )?;
    std::fs::write(
        &a,
        format!(
            "{global}frontend fa\n  bind 127.0.0.1:{a_port} proto h2\n  default_backend b\nbackend b\n  server b 127.0.0.1:{b_port} ssl crt {0}/a.pem ca-file {0}/ca.pem verify required verifyhost b.bench sni str(b.bench) alpn h2 ssl-min-ver TLSv1.3\n",
            dir.display()
        ),
    )?;
    Ok((a_port, a, b))
}
