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
    /// DNS address.
    pub dns: SocketAddr,
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
        let config = Config::parse_from(args);
        let federation = server::build(&config).await.expect("federation starts");
        let api = format!("http://{}", federation.api_addr);
        let dns = federation.dns_addr;
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
            dns,
            client: reqwest::Client::new(),
            _dir: dir,
            stop: Some(tx),
            task: Some(task),
        }
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
