//! An in-process federation for tests (real API, store, snapshot builder,
//! DNS and discovery on ephemeral ports) and polling helpers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use gns_federation::server::{self, Config};
use serde_json::Value;

/// The federation's admin token.
pub const TOKEN: &str = "discovery-admin";

/// A running federation replica.
pub struct Fed {
    /// API base URL.
    pub api: String,
    /// API address.
    pub addr: SocketAddr,
    /// DNS address.
    pub dns: SocketAddr,
    /// The roots the API is verified with (`None` with `--insecure-http`).
    pub ca_file: Option<std::path::PathBuf>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fed {
    pub async fn start() -> Fed {
        Self::start_on(None).await
    }

    /// A federation on the embedded store, or on `database_url`.
    pub async fn start_on(database_url: Option<&str>) -> Fed {
        Self::start_with(database_url, &[]).await
    }

    /// [`Fed::start_on`] with `extra` flags.
    pub async fn start_with(database_url: Option<&str>, extra: &[&str]) -> Fed {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().display().to_string();
        let mut args = vec![
            "gns-federation",
            "--listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-token",
            TOKEN,
            "--data-dir",
            &data_dir,
            "--secret-key",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ];
        if let Some(url) = database_url {
            args.extend(["--database-url", url]);
        }
        args.extend_from_slice(extra);
        let config = Config::parse_from(args);
        let federation = server::build(&config).await.expect("federation starts");
        let addr = federation.api_addr;
        let api = federation.advertise_url.clone();
        let dns = federation.dns_addr;
        // Verified as a user's client is: with the CA file the federation wrote.
        let ca_file = federation.ca_file.clone();
        let client = gns_trust::client(ca_file.as_deref()).expect("client");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = federation
                .serve(async {
                    let _ = rx.await;
                })
                .await;
        });
        Fed {
            api,
            addr,
            dns,
            ca_file,
            client,
            _dir: dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A new client (no pooled connections) that verifies this federation,
    /// with `timeout` per request.
    pub fn fresh_client(&self, timeout: Duration) -> reqwest::Client {
        gns_trust::client_builder(self.ca_file.as_deref())
            .expect("CA file")
            .timeout(timeout)
            .build()
            .expect("client")
    }

    /// Shuts this replica down (its syncs and leases end with it).
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) {
        let (status, v) = self.send(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "POST {path}: {status} {v}");
    }

    pub async fn get(&self, path: &str) -> Value {
        self.send(reqwest::Method::GET, path, None).await.1
    }
}

/// Polls `check` every 50 ms until it succeeds, or panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match check().await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {timeout:?}; last: {last}");
}

/// A federation replica in a process of its own (`gns-federation`), so it
/// can crash (SIGKILL: no lease released, no connection closed cleanly) or
/// stop gracefully (SIGTERM), and so its `/metrics` are its own.
pub struct FedProcess {
    /// API base URL.
    pub api: String,
    /// DNS address.
    pub dns: SocketAddr,
    child: std::process::Child,
    log: std::path::PathBuf,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Where a federation process keeps the CA file.
fn dir_ca(fed: &FedProcess) -> std::path::PathBuf {
    fed._dir.path().join("ca.pem")
}

/// A port free for TCP and UDP on 127.0.0.1 a moment ago, picked at
/// random below Linux's ephemeral range (32768-60999), so the source port
/// of a connection some parallel test makes cannot take it before the
/// process binds it (the kernel's pick for port 0 is in that range).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        let port = 20_000 + (random.finish() % 12_000) as u16;
        let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            drop(tcp);
            return port;
        }
    }
    panic!("no port free for TCP and UDP on 127.0.0.1 in 20000-31999")
}

impl FedProcess {
    /// Starts `gns-federation` on `database_url` and waits for `/readyz`
    /// (panics with its log after 20 s).
    pub async fn start(database_url: &str) -> FedProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api_port, dns_port) = (free_port(), free_port());
        let log = dir.path().join("federation.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gns-federation"))
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--dns-listen", &format!("127.0.0.1:{dns_port}")])
            .args(["--admin-token", TOKEN])
            .args(["--data-dir", &dir.path().display().to_string()])
            .args([
                "--secret-key",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ])
            .args(["--database-url", database_url])
            .env("GNS_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn gns-federation");
        let mut fed = FedProcess {
            api: format!("https://127.0.0.1:{api_port}"),
            dns: format!("127.0.0.1:{dns_port}").parse().expect("addr"),
            child,
            log,
            client: reqwest::Client::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let ca_file = dir_ca(&fed);
        loop {
            // The CA file appears when the federation starts.
            if ca_file.is_file() {
                fed.client = gns_trust::client(Some(&ca_file)).expect("client");
            }
            let ready = fed
                .client
                .get(format!("{}/readyz", fed.api))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return fed;
            }
            assert!(
                Instant::now() < deadline,
                "gns-federation was not ready within 20 s:\n{}",
                fed.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Kills it with SIGKILL, as a crash or an OOM kill would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (up to 15 s) for it to exit.
    pub async fn stop(&mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) {
            assert!(
                Instant::now() < deadline,
                "gns-federation did not exit within 15 s of SIGTERM:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET path` with the admin token: the JSON body (`Null` if none).
    pub async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .unwrap_or(Value::Null)
    }

    /// `POST path` with the admin token; panics unless 2xx.
    pub async fn post(&self, path: &str, body: Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.api))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        assert!(
            status.is_success(),
            "POST {path}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// The value of the series `name` whose labels include all of
    /// `labels` (e.g. `cluster="east"`) in its `/metrics`; 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.api))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for FedProcess {
    fn drop(&mut self) {
        self.crash();
    }
}
