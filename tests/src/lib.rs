//! Support for the end-to-end tests: finding the workspace binaries, free
//! ports, child processes that die with the test, HTTP and DNS probes.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// A workspace binary next to the test executable's directory (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does this)",
        path.display()
    );
    path
}

/// The federations this test process started, by base URL, with their CA
/// files: what [`client`] trusts, as a user's client trusts its
/// federation's `ca.pem`.
static FEDERATION_CAS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Where the federation keeping its state in `dir/fed` writes its CA.
pub fn federation_ca(dir: &Path) -> PathBuf {
    dir.join("fed").join("ca.pem")
}

/// Makes [`client`] trust the roots in `ca_file`, the CA file of the
/// federation at `base`, from now on.
pub fn trust(base: &str, ca_file: &Path) {
    let mut cas = FEDERATION_CAS.lock().unwrap_or_else(|e| e.into_inner());
    cas.retain(|(b, _)| b != base);
    cas.push((base.to_owned(), ca_file.to_owned()));
}

/// The CA file of the federation at `base` (started by this process), as
/// a flag value for the gateways and DNS replicas that follow it.
pub fn ca_for(base: &str) -> String {
    let cas = FEDERATION_CAS.lock().unwrap_or_else(|e| e.into_inner());
    cas.iter()
        .rev()
        .find(|(b, _)| b == base.trim_end_matches('/'))
        .map(|(_, ca)| ca.display().to_string())
        .unwrap_or_else(|| panic!("no federation at {base} was started by this test"))
}

/// A client builder that verifies the federations this process started
/// against their CA files (plain `http://` URLs, such as admin endpoints,
/// are unaffected).
pub fn client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cas = FEDERATION_CAS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut roots = Vec::new();
    for (_, ca) in cas {
        // A federation writes its CA before it listens; a file from a
        // federation of an earlier test may be gone with its temp dir.
        if let Ok(pem) = std::fs::read(&ca) {
            roots.extend(
                reqwest::Certificate::from_pem_bundle(&pem).expect("a federation's CA file is PEM"),
            );
        }
    }
    reqwest::Client::builder().tls_certs_only(roots)
}

/// A client builder that trusts only the roots in `pem` (a CA file's text).
pub fn client_builder_with_roots(pem: &[u8]) -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = reqwest::Certificate::from_pem_bundle(pem).expect("PEM roots");
    reqwest::Client::builder().tls_certs_only(roots)
}

/// Starts `gns-federation` with its state in `dir/fed`, its API and DNS on
/// free ports, admin token `token` and the `extra` flags; returns it and its
/// API base URL (`https://`, verified against `dir/fed/ca.pem`, which
/// [`client`] trusts from then on; `http://` with `--insecure-http`) once
/// `/readyz` answers (panics after 20 s, with its log).
pub async fn start_federation(dir: &Path, token: &str, extra: &[&str]) -> (Proc, String) {
    let (fed, base, _) = start_federation_with_dns(dir, token, extra).await;
    (fed, base)
}

/// [`start_federation`], also returning its DNS address.
pub async fn start_federation_with_dns(
    dir: &Path,
    token: &str,
    extra: &[&str],
) -> (Proc, String, SocketAddr) {
    let api = format!("127.0.0.1:{}", free_port());
    let dns: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("DNS address");
    let mut args = vec![
        "--listen".to_owned(),
        api.clone(),
        "--dns-listen".into(),
        dns.to_string(),
        "--data-dir".into(),
        dir.join("fed").display().to_string(),
        "--admin-token".into(),
        token.into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let fed = Proc::spawn(&binary("gns-federation"), &args, dir.join("federation.log"));
    let scheme = if extra.contains(&"--insecure-http") {
        "http"
    } else {
        "https"
    };
    let base = format!("{scheme}://{api}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ca = federation_ca(dir);
        if scheme == "https" && ca.is_file() {
            trust(&base, &ca);
        }
        let ready = match client().build() {
            Ok(c) => c.get(format!("{base}/readyz")).send().await,
            Err(e) => panic!("cannot build a client: {e}"),
        };
        if ready.is_ok_and(|r| r.status().is_success()) {
            return (fed, base, dns);
        }
        assert!(
            Instant::now() < deadline,
            "the federation was not ready within 20 s:\n{}",
            fed.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port, free for TCP and UDP on 127.0.0.1 a moment ago, for a process
/// a test starts to listen on. Picked below Linux's ephemeral range
/// (32768–60999), where the source ports of the many connections the tests
/// make are taken from, so none of those can take it before the process
/// binds it; picked at random there, so parallel tests rarely pick alike,
/// and never twice in one test binary (a port picked early may not be
/// bound yet when another is picked).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..200 {
        let port = 20_000 + (random_u64() % 12_000) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            drop(tcp);
            handed_out.push(port);
            return port;
        }
    }
    panic!("no port free for TCP and UDP on 127.0.0.1 in 20000-31999")
}

/// 64 random bits (the standard library's randomly keyed hasher).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// A child process, killed when dropped (also when a test panics), with its log file.
pub struct Proc {
    child: Child,
    /// Its combined stdout/stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args…` with stdout and stderr to `log`; `GNS_*` variables of the caller are removed, except `GNS_LOG` (default `info`).
    pub fn spawn(program: &Path, args: &[String], log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("create log");
        let err = file.try_clone().expect("clone log");
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .env(
                "GNS_LOG",
                std::env::var("GNS_LOG").unwrap_or_else(|_| "info".to_owned()),
            );
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GNS_") && name != "GNS_LOG" {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc { child, log }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it now (SIGKILL) and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Blocking HTTP request with a JSON body; `(status, body)`.
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = client()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    })
}

/// One DNS query over UDP from `bind` (e.g. `127.0.0.1:0`), sent up to
/// three times a second apart as a stub resolver would (a datagram may be
/// dropped on a loaded machine); `None` when no answer came to any of them.
pub fn dns_udp(server: SocketAddr, bind: &str, name: &str, rtype: RecordType) -> Option<Message> {
    let mut msg = Message::new(0x4242, MessageType::Query, OpCode::Query);
    let mut n = Name::from_ascii(name).expect("valid name");
    n.set_fqdn(true);
    msg.add_query(Query::query(n, rtype));
    let query = msg.to_vec().expect("encode");
    let socket = UdpSocket::bind(bind).expect("bind client socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        socket.send_to(&query, server).ok()?;
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(answer) = Message::from_vec(&buf[..len])
            && answer.metadata.id == 0x4242
        {
            return Some(answer);
        }
    }
    None
}

/// The A/AAAA addresses of an answer, sorted, as text.
pub fn addresses(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .map(|r| r.data.to_string())
        .collect();
    v.sort();
    v
}

/// An unlabelled counter or gauge of a gns-gateway's `/metrics` at `admin` (0 when absent).
pub async fn gateway_metric(admin: SocketAddr, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("gateway metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
        .unwrap_or(0)
}

/// The series of a Prometheus text exposition that have no `# TYPE` line
/// for their family (a histogram's or summary's `_bucket`, `_sum` and
/// `_count` belong to its family).
pub fn untyped_series(text: &str) -> Vec<String> {
    let typed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut untyped: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| {
            !typed.contains(name)
                && !["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix).is_some_and(|f| typed.contains(f)))
        })
        .map(str::to_owned)
        .collect();
    untyped.dedup();
    untyped
}

/// Where a federation under test keeps its state: the embedded SQLite file
/// in its data dir, or a fresh Postgres database.
pub enum StoreBackend {
    /// The embedded store (the default).
    Sqlite,
    /// A fresh database on the test Postgres server.
    Postgres(TestDatabase),
}

impl StoreBackend {
    /// A fresh Postgres database (panics with how to start Postgres if it is down).
    pub fn postgres() -> StoreBackend {
        StoreBackend::Postgres(TestDatabase::create())
    }

    /// The `gns-federation` flags that select this store.
    pub fn federation_args(&self) -> Vec<String> {
        match self {
            StoreBackend::Sqlite => Vec::new(),
            StoreBackend::Postgres(db) => vec!["--database-url".to_owned(), db.url.clone()],
        }
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres(_) => "postgres",
        }
    }
}

/// Postgres for tests: `GNS_TEST_DATABASE_URL`, default the local server.
pub fn test_database_admin_url() -> String {
    std::env::var("GNS_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let output = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// A database of its own on the test Postgres server, dropped with this value.
pub struct TestDatabase {
    admin_url: String,
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates `gns_e2e_<pid>_<nanos>`; panics with how to start Postgres if it is down.
    pub fn create() -> TestDatabase {
        let admin_url = test_database_admin_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("gns_e2e_{}_{nanos}", std::process::id());
        if let Err(e) = psql(&admin_url, &format!("CREATE DATABASE {name}")) {
            panic!(
                "Postgres not reachable at {admin_url} ({e}): start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or point GNS_TEST_DATABASE_URL at a server where this user may CREATE DATABASE"
            );
        }
        let mut url = reqwest::Url::parse(&admin_url)
            .unwrap_or_else(|e| panic!("GNS_TEST_DATABASE_URL {admin_url:?} is not a URL: {e}"));
        url.set_path(&format!("/{name}"));
        TestDatabase {
            admin_url,
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin_url, &sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs the steps of one end-to-end scenario in order, naming each: a step
/// that panics fails the test with the step's name first, so a failure says
/// which behaviour broke, not only which line.
pub struct Steps {
    scenario: String,
    done: Vec<&'static str>,
}

impl Steps {
    /// The steps of `scenario` (e.g. the store backend it runs on).
    pub fn new(scenario: impl Into<String>) -> Steps {
        Steps {
            scenario: scenario.into(),
            done: Vec::new(),
        }
    }

    /// Runs `step`, named `name`; panics with the name and the steps that
    /// passed before it if it panics.
    pub async fn run<F: std::future::Future<Output = ()>>(&mut self, name: &'static str, step: F) {
        use futures::FutureExt;
        let started = Instant::now();
        eprintln!("[{}] step: {name}", self.scenario);
        match std::panic::AssertUnwindSafe(step).catch_unwind().await {
            Ok(()) => {
                eprintln!(
                    "[{}] step passed in {:?}: {name}",
                    self.scenario,
                    started.elapsed()
                );
                self.done.push(name);
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "(no message)".to_owned());
                panic!(
                    "[{}] step failed: {name}\n{message}\n(steps passed before it: {:?})",
                    self.scenario, self.done
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_without_a_type_line_are_found_and_histogram_parts_belong_to_their_family() {
        let text = "# TYPE a_total counter\na_total 3\n# TYPE lat histogram\nlat_bucket{le=\"1\"} 2\nlat_sum 0.5\nlat_count 2\nhand_made_total 7\nhand_made_total{x=\"1\"} 1\n";
        assert_eq!(untyped_series(text), ["hand_made_total"]);
        assert!(untyped_series("# TYPE g gauge\ng 1\n").is_empty());
    }
}
