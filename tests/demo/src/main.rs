//! `gns-demo`: the whole GNS system on one machine, in one command.
//!
//! `gns-demo up` starts a federation (embedded store), two simulated member
//! clusters `east` and `west` (Kubernetes API test servers seeded with the
//! seed's pods: `web` v1.5 in east, v1.5, v2.0-alpha and canary in west, and
//! `api` in both), a VM workload `db`, a gateway per cluster on 127.0.x.1
//! and echo upstreams, then prints what to try. `gns-demo fail|heal CLUSTER` takes a cluster down and
//! back; `gns-demo down` (or Ctrl-C) stops everything it started.

mod control;
mod demo;
mod procs;
mod topology;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The whole GNS system on one machine.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything and keep it running (Ctrl-C or `gns-demo down` stops it).
    Up {
        /// State, logs and control files of the demo.
        #[arg(long, env = "GNS_DEMO_DIR", default_value = "./gns-demo")]
        dir: PathBuf,
        /// Federation API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Federation DNS address (UDP and TCP).
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns_listen: SocketAddr,
        /// Directory of gns-federation and gns-gateway (default: next to gns-demo).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Stop the demo running from --dir.
    Down {
        /// The demo's directory.
        #[arg(long, env = "GNS_DEMO_DIR", default_value = "./gns-demo")]
        dir: PathBuf,
    },
    /// Take a cluster down (its gateway and API server).
    Fail {
        /// `east` or `west`.
        cluster: String,
        /// The demo's directory.
        #[arg(long, env = "GNS_DEMO_DIR", default_value = "./gns-demo")]
        dir: PathBuf,
    },
    /// Bring a failed cluster back.
    Heal {
        /// `east` or `west`.
        cluster: String,
        /// The demo's directory.
        #[arg(long, env = "GNS_DEMO_DIR", default_value = "./gns-demo")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Args::parse().command {
        Command::Up {
            dir,
            listen,
            dns_listen,
            bin_dir,
        } => {
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => procs::default_bin_dir()?,
            };
            let dir = std::path::absolute(&dir).context("demo directory")?;
            demo::up(demo::Options {
                dir,
                listen,
                dns_listen,
                bin_dir,
            })
            .await
        }
        Command::Down { dir } => down(&dir).await,
        Command::Fail { cluster, dir } => {
            println!("{}", control::send(&dir, &format!("fail/{cluster}")).await?);
            Ok(())
        }
        Command::Heal { cluster, dir } => {
            println!("{}", control::send(&dir, &format!("heal/{cluster}")).await?);
            Ok(())
        }
    }
}

/// Asks the demo to stop and waits until its process is gone.
async fn down(dir: &std::path::Path) -> anyhow::Result<()> {
    let pid = std::fs::read_to_string(dir.join("demo.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    control::send(dir, "down").await?;
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(pid) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the demo (pid {pid}) did not stop within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("demo stopped");
    Ok(())
}

/// Whether process `pid` still runs (a zombie waiting for its parent does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
