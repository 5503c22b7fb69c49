//! End-to-end: the real `gns-federation` and `gnsctl` binaries, as separate
//! processes, driven through `examples/acme.yaml`: apply (created), re-apply
//! (unchanged), get as JSON and YAML, a refused delete of a referenced
//! cluster, then a hard kill and restart on the same store, after which
//! everything must still be there and cluster credentials must never appear
//! in a response. Run once on the embedded SQLite store and once on Postgres.
//!
//! The binaries must be built first: `cargo build --workspace --bins`
//! (`scripts/test` does this). Postgres comes from `GNS_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); a fresh database
//! is created for the run with `psql` and dropped afterwards
//! (`gns_tests::TestDatabase`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gns_tests::TestDatabase;
use serde_json::Value;

/// Bootstrap admin token given to the federation, used by gnsctl via `--token`.
const ADMIN_TOKEN: &str = "gns_e2e_admin_token";
/// A fixed credentials key (base64 of the bytes 0..32), so restarts can decrypt.
const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The write-only cluster tokens in the example manifest; no response may contain them.
const CLUSTER_TOKENS: [&str; 2] = [
    "example-east-token-replace-me",
    "example-west-token-replace-me",
];
/// Every object of the example manifest, as gnsctl names them, in apply order.
const OBJECTS: [&str; 7] = [
    "cluster/east",
    "cluster/west",
    "globalnamespace/production",
    "routing/production/web",
    "externalworkload/production/db-vm-1",
    "accesspolicy/production/web-to-api",
    "accesspolicy/production/outside-to-web",
];
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Binaries and processes

struct Binaries {
    federation: PathBuf,
    gnsctl: PathBuf,
}

/// The workspace binaries, next to this test's directory (target/<profile>/).
fn binaries() -> Binaries {
    Binaries {
        federation: gns_tests::binary("gns-federation"),
        gnsctl: gns_tests::binary("gnsctl"),
    }
}

/// Where the example manifest is.
fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/acme.yaml")
}

use gns_tests::free_port;

/// How a federation keeps its state; the same setup is used for every restart.
struct StoreSetup {
    /// Data dir (embedded store, or just the token/key files with Postgres).
    data_dir: PathBuf,
    /// `Some` selects Postgres.
    database_url: Option<String>,
    /// `Some` passes `--secret-key`; else the key file in the data dir is used.
    secret_key: Option<&'static str>,
}

/// A running `gns-federation`; killed when dropped, even if an assertion panicked.
struct Federation {
    child: Child,
    server: String,
    log: PathBuf,
}

impl Federation {
    /// Starts a federation on `setup` and waits until `/healthz` answers.
    fn start(bins: &Binaries, setup: &StoreSetup, logs: &Path, run: usize) -> Federation {
        // A picked port can be taken before the federation binds it; try a few.
        let mut last_failure = String::new();
        for attempt in 0..3 {
            let port = free_port();
            let log = logs.join(format!("federation-{run}-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("create federation log");
            let err_file = log_file.try_clone().expect("clone log handle");
            let mut command = Command::new(&bins.federation);
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--dns-listen")
                .arg(format!("127.0.0.1:{}", free_port()))
                .arg("--data-dir")
                .arg(&setup.data_dir)
                .arg("--admin-token")
                .arg(ADMIN_TOKEN)
                .env("GNS_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(err_file);
            // Only the flags above configure it, whatever GNS_* the caller has set.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("GNS_") && name != "GNS_LOG" {
                    command.env_remove(name);
                }
            }
            if let Some(url) = &setup.database_url {
                command.arg("--database-url").arg(url);
            }
            if let Some(key) = setup.secret_key {
                command.arg("--secret-key").arg(key);
            }
            let child = command.spawn().expect("spawn gns-federation");
            gns_tests::trust(
                &format!("https://127.0.0.1:{port}"),
                &setup.data_dir.join("ca.pem"),
            );
            let mut federation = Federation {
                child,
                server: format!("https://127.0.0.1:{port}"),
                log,
            };
            match federation.wait_healthy() {
                Ok(()) => return federation,
                Err(e) => last_failure = format!("{e}\n--- log ---\n{}", federation.log_text()),
            }
            // Dropping `federation` kills it before the next attempt.
        }
        panic!("gns-federation did not start: {last_failure}");
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let url = format!("{}/healthz", self.server);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("gns-federation exited early with {status}"));
            }
            if matches!(http_get(&url, None), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{url} did not answer within {}s",
                    HEALTH_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        // SIGKILL: a restart must find everything that was acknowledged.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET with a fresh client; `(status, body)`.
fn http_get(url: &str, token: Option<&str>) -> Result<(u16, String), String> {
    gns_tests::http("GET", url, token, None)
}

/// What a gnsctl run printed.
struct CtlRun {
    success: bool,
    stdout: String,
    stderr: String,
}

impl CtlRun {
    fn describe(&self) -> String {
        format!(
            "success: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.success, self.stdout, self.stderr
        )
    }
}

/// Runs `gnsctl --server <federation> --token <admin> ARGS` in an empty directory
/// (so no `./gns-data/admin-token` or `GNS_*` variable is picked up by accident).
fn gnsctl(bins: &Binaries, federation: &Federation, workdir: &Path, args: &[&str]) -> CtlRun {
    let output: Output = Command::new(&bins.gnsctl)
        .arg("--server")
        .arg(&federation.server)
        .arg("--ca-file")
        .arg(gns_tests::ca_for(&federation.server))
        .arg("--token")
        .arg(ADMIN_TOKEN)
        .args(args)
        .current_dir(workdir)
        .env_remove("GNS_SERVER")
        .env_remove("GNS_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run gnsctl");
    CtlRun {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs gnsctl and requires success.
fn gnsctl_ok(bins: &Binaries, federation: &Federation, workdir: &Path, args: &[&str]) -> CtlRun {
    let run = gnsctl(bins, federation, workdir, args);
    assert!(run.success, "gnsctl {args:?} failed:\n{}", run.describe());
    run
}

/// Runs `gnsctl get ... -o json` and parses the output.
fn get_json(bins: &Binaries, federation: &Federation, workdir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let run = gnsctl_ok(bins, federation, workdir, &all);
    assert_no_credentials(&run.stdout, &format!("gnsctl {all:?}"));
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("gnsctl {all:?} printed no JSON ({e}):\n{}", run.describe()))
}

fn assert_no_credentials(text: &str, what: &str) {
    for token in CLUSTER_TOKENS {
        assert!(
            !text.contains(token),
            "{what} returned a cluster credential:\n{text}"
        );
    }
}

/// Asserts an apply printed exactly one `<object> <word>` line per manifest object.
fn assert_apply_lines(run: &CtlRun, word: &str) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let expected: Vec<String> = OBJECTS.iter().map(|o| format!("{o} {word}")).collect();
    assert_eq!(lines, expected, "apply output:\n{}", run.describe());
}

// ---------------------------------------------------------------------------
// The scenario, shared by both stores

fn scenario(setup: &StoreSetup) {
    let bins = binaries();
    let manifest = manifest_path();
    let manifest_text = std::fs::read_to_string(&manifest).expect("read examples/acme.yaml");
    for token in CLUSTER_TOKENS {
        assert!(
            manifest_text.contains(token),
            "examples/acme.yaml no longer holds {token}; update CLUSTER_TOKENS"
        );
    }
    let manifest = manifest.to_str().expect("UTF-8 manifest path");
    let scratch = tempfile::tempdir().expect("tempdir for logs and gnsctl's working dir");
    let workdir = scratch.path();

    let federation = Federation::start(&bins, setup, workdir, 1);

    // First apply creates everything, clusters first; the second changes nothing.
    let run = gnsctl_ok(&bins, &federation, workdir, &["apply", "-f", manifest]);
    assert_apply_lines(&run, "created");
    let run = gnsctl_ok(&bins, &federation, workdir, &["apply", "-f", manifest]);
    assert_apply_lines(&run, "unchanged");

    // The global namespace, as JSON.
    let namespaces = get_json(&bins, &federation, workdir, &["gns"]);
    assert!(
        namespaces.as_array().is_some_and(|items| items
            .iter()
            .any(|g| g["domain"] == "production.app.acme.com")),
        "production.app.acme.com missing from {namespaces}"
    );

    // The routing, as YAML: the 99/1 split is there.
    let run = gnsctl_ok(
        &bins,
        &federation,
        workdir,
        &["get", "routing", "web", "--gns", "production", "-o", "yaml"],
    );
    let routing: Value = serde_yaml_ng::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not YAML ({e}):\n{}", run.describe()));
    let split = &routing["rules"][3]["destinations"];
    assert_eq!(routing["rules"][1]["precedence"], 2, "{}", run.stdout);
    assert_eq!(
        routing["rules"][2]["match"]["source"], "checkout",
        "{}",
        run.stdout
    );
    assert_eq!(
        routing["rules"][2]["match"]["path"]["prefix"], "/orders/",
        "{}",
        run.stdout
    );
    assert_eq!(split[0]["cluster"], "east", "{}", run.stdout);
    assert_eq!(split[0]["weight"], 99, "{}", run.stdout);
    assert!(run.stdout.contains("weight: 99"), "{}", run.stdout);

    // A cluster still referenced can't be deleted; the server names the referrer.
    let run = gnsctl(&bins, &federation, workdir, &["delete", "cluster", "east"]);
    assert!(
        !run.success,
        "deleting a referenced cluster succeeded:\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("globalnamespace/production"),
        "the error does not name the referrer:\n{}",
        run.describe()
    );

    // Kill hard and restart on the same store: everything is still there.
    drop(federation);
    let federation = Federation::start(&bins, setup, workdir, 2);
    check_everything_is_there(&bins, &federation, workdir);

    // Stored credentials (decrypted with the same key) equal the manifest's: still unchanged.
    let run = gnsctl_ok(&bins, &federation, workdir, &["apply", "-f", manifest]);
    assert_apply_lines(&run, "unchanged");
}

fn check_everything_is_there(bins: &Binaries, federation: &Federation, workdir: &Path) {
    let clusters = get_json(bins, federation, workdir, &["clusters"]);
    let names: Vec<&str> = clusters
        .as_array()
        .map(|items| items.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["east", "west"], "{clusters}");
    let east = get_json(bins, federation, workdir, &["cluster", "east"]);
    assert_eq!(east["labels"]["region"], "us-east-1", "{east}");
    assert_eq!(
        east["gateway"]["ingressAddress"], "203.0.113.10:15443",
        "{east}"
    );
    assert!(east["kubernetes"].get("token").is_none(), "{east}");

    let gns = get_json(bins, federation, workdir, &["gns", "production"]);
    assert_eq!(gns["domain"], "production.app.acme.com", "{gns}");
    assert_eq!(gns["members"].as_array().map(Vec::len), Some(2), "{gns}");

    let in_production =
        |kind, name| get_json(bins, federation, workdir, &[kind, name, "-n", "production"]);
    let routing = in_production("routing", "web");
    assert_eq!(
        routing["failover"],
        serde_json::json!(["east", "west"]),
        "{routing}"
    );
    assert_eq!(
        routing["rules"][0]["match"]["headers"][0]["regex"], ".*Mobile.*",
        "{routing}"
    );
    let workload = in_production("externalworkload", "db-vm-1");
    assert_eq!(workload["address"], "192.0.2.10", "{workload}");
    assert_eq!(workload["ports"][0]["port"], 5432, "{workload}");
    let policy = in_production("accesspolicy", "web-to-api");
    assert_eq!(policy["to"], "api", "{policy}");
    assert_eq!(policy["action"], "allow", "{policy}");

    // Straight from the API too: no response carries a credential.
    for path in ["/v1/clusters", "/v1/clusters/east", "/v1/clusters/west"] {
        let url = format!("{}{path}", federation.server);
        let (status, body) =
            http_get(&url, Some(ADMIN_TOKEN)).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(status, 200, "GET {url}: {body}");
        assert_no_credentials(&body, &format!("GET {url}"));
    }
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn gnsctl_against_federation_on_sqlite() {
    let data = tempfile::tempdir().expect("data dir");
    scenario(&StoreSetup {
        data_dir: data.path().to_path_buf(),
        database_url: None,
        secret_key: None,
    });
}

#[test]
fn gnsctl_against_federation_on_postgres() {
    let database = TestDatabase::create();
    let data = tempfile::tempdir().expect("data dir");
    scenario(&StoreSetup {
        data_dir: data.path().to_path_buf(),
        database_url: Some(database.url.clone()),
        secret_key: Some(SECRET_KEY),
    });
}
