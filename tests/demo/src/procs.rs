//! The processes the demo starts (`gns-federation`, one `gns-gateway` per
//! cluster): found next to `gns-demo`, logs in the demo directory, killed
//! when the demo stops (also when it fails half-way).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

/// Where the workspace binaries are: the directory of this executable.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of gns-demo")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("gns-demo has no parent directory")
}

/// A started child process, killed on drop.
pub struct Process {
    /// What it is, for messages.
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl Process {
    /// Starts `bin_dir/program args…`, stdout and stderr into `log`.
    pub fn spawn(
        bin_dir: &Path,
        program: &str,
        name: &str,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let path = bin_dir.join(program);
        anyhow::ensure!(
            path.is_file(),
            "{} not found: build it first (`cargo build --release --bins`) or pass --bin-dir",
            path.display()
        );
        let out =
            std::fs::File::create(&log).with_context(|| format!("create log {}", log.display()))?;
        let err = out.try_clone().context("log file")?;
        let mut command = Command::new(&path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // The demo sets every flag itself; a user's GNS_* settings must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GNS_") && key != "GNS_LOG" {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", path.display()))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited (with its status).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}
