//! The local demo (`gns-demo`) as a user runs it: `up` comes up, every
//! command it prints under "Try:" succeeds and shows what it promises, a
//! failed cluster fails over and heals, and `down` leaves no process behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gns_tests::{Proc, binary, free_port, wait_for};
use serde_json::{Value, json};

/// Runs one printed command with `sh -c`; its stdout, or a panic with stderr.
fn run(command: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("run {command}: {e}"));
    assert!(
        out.status.success(),
        "`{command}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes whose command line mentions `dir` (what the demo started).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) && !text.contains("e2e_demo") {
            found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn mobile_via_east(domain: &str) -> String {
    run(&format!(
        "curl -s -m 3 -H 'Host: web.{domain}' -A 'Demo Mobile' http://127.0.10.1:15001/"
    ))
}

/// Requests sent for the two-sided check of the 99/1 split.
const SPLIT_REQUESTS: u32 = 2_000;
/// How many of them may go west. With a correct 1 % split, X ~ Binomial(2000,
/// 0.01), mean 20: P(X < 4) and P(X > 45) are both below 1e-5. A split that
/// sends nothing west, or 5 % or more (mean 100), falls outside.
const SPLIT_WEST: std::ops::RangeInclusive<u32> = 4..=45;

/// The egress URL and Host header of the printed split command
/// (`… curl -s -H 'Host: web.<domain>' http://<egress>/; done …`).
fn split_target(command: &str) -> (String, String) {
    let parse = || {
        let (_, after) = command.split_once("-H 'Host: ")?;
        let (host, rest) = after.split_once('\'')?;
        let url = rest.trim_start().split([';', ' ']).next()?;
        url.starts_with("http://")
            .then(|| (url.to_owned(), host.to_owned()))
    };
    parse().unwrap_or_else(|| panic!("an egress URL and a Host header in `{command}`"))
}

/// Sends `n` requests to `url` with `Host: host` over one keep-alive
/// connection; `(west, east)`: how many were answered from each cluster.
/// Panics on a request that fails, is not 200, or is answered by neither.
fn split_counts(url: &str, host: &str, n: u32) -> (u32, u32) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = gns_tests::client()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let (mut west, mut east) = (0, 0);
        for i in 0..n {
            let response = client
                .get(url)
                .header("host", host)
                .send()
                .await
                .unwrap_or_else(|e| panic!("request {i} of {n} to {url}: {e}"));
            let status = response.status();
            let body = response
                .text()
                .await
                .unwrap_or_else(|e| panic!("body of request {i} of {n}: {e}"));
            assert_eq!(status, 200, "request {i} of {n} to {url}: {body}");
            if body.contains(" in west ") {
                west += 1;
            } else if body.contains(" in east ") {
                east += 1;
            } else {
                panic!("request {i} of {n} answered by neither cluster: {body:?}");
            }
        }
        (west, east)
    })
}

/// `gnsctl trace -o json` as the guide prints it (its flags), for a client
/// `from` a cluster (or outside) with `user_agent`.
fn trace_json(gnsctl: &str, domain: &str, from: Option<&str>, user_agent: &str) -> Value {
    let from = from.map(|c| format!(" --from {c}")).unwrap_or_default();
    let out = run(&format!(
        "{gnsctl} trace web.{domain}{from} -H 'User-Agent: {user_agent}' -o json"
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("trace JSON: {e}: {out}"))
}

/// Each destination as (cluster, subset, probability in percent).
fn destinations(trace: &Value) -> Vec<(String, Option<String>, i64)> {
    trace["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            (
                d["cluster"].as_str().expect("cluster").to_owned(),
                d["subset"].as_str().map(str::to_owned),
                (d["probability"].as_f64().expect("probability") * 100.0).round() as i64,
            )
        })
        .collect()
}

/// `gnsctl trace` for mobile and desktop clients from east, west and
/// outside, every field checked against the demo's topology (the seed's
/// pods): web v1.5/us-prod in both clusters, v2.0-alpha/us-staging and the
/// canary in west only; the rules in the order the gateways try them: the
/// iPhone regex (precedence 2) to `version: canary`, `Mobile` to west, then
/// 99 % v1.5/us-prod (own cluster first) and 1 % west's
/// v2.0-alpha/us-staging; only api is open to outside clients.
fn traces_explain_the_demo_topology(commands: &[&str], domain: &str) {
    let printed = commands
        .iter()
        .find(|c| c.contains(" trace web."))
        .expect("a trace command");
    let (gnsctl, _) = printed.split_once(" trace ").expect("gnsctl flags");
    let s = |v: &str| Some(v.to_owned());

    let iphone = trace_json(gnsctl, domain, Some("east"), "DemoApp/1.0;iPhone;iOS 17");
    assert_eq!(iphone["from"], "east");
    assert_eq!(iphone["host"], format!("web.{domain}"));
    assert_eq!(iphone["globalNamespace"], "production");
    assert_eq!(iphone["service"], "web");
    assert_eq!(iphone["dns"]["view"], "east");
    assert_eq!(iphone["dns"]["answers"], json!(["127.0.10.1"]));
    assert!(
        iphone["dns"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("east's egress gateway")),
        "{iphone}"
    );
    assert_eq!(iphone["gateway"], "east egress");
    assert_eq!(iphone["rule"]["index"], 0);
    assert_eq!(iphone["rules"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        destinations(&iphone),
        [("west".into(), s("version=canary"), 100)]
    );
    assert_eq!(
        iphone["destinations"][0]["endpoints"],
        json!(["127.0.20.13"])
    );
    assert_eq!(iphone["access"]["allowed"], true);
    assert_eq!(iphone["timeoutMs"], 2000);
    // The routing's "attempts": 3 are retries: 4 tries in all.
    assert_eq!(iphone["retries"]["tries"], 4);
    assert_eq!(iphone["retries"]["on"], json!(["5xx", "connect-failure"]));
    assert_eq!(iphone["retries"]["perTryTimeoutMs"], 500);
    assert_eq!(
        iphone["endpoints"]["west"]["ready"],
        json!(["127.0.20.11", "127.0.20.12", "127.0.20.13"])
    );

    let mobile = trace_json(gnsctl, domain, Some("east"), "Demo Mobile");
    assert_eq!(mobile["rule"]["index"], 1);
    assert_eq!(mobile["rules"][0]["matched"], false);
    assert!(
        mobile["rules"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("iPhone")),
        "{mobile}"
    );
    assert_eq!(destinations(&mobile), [("west".into(), None, 100)]);

    let desktop = trace_json(gnsctl, domain, Some("east"), "curl/8.0");
    assert_eq!(desktop["rule"]["index"], 2);
    assert!(
        desktop["rules"][1]["why"]
            .as_str()
            .is_some_and(|w| w.contains("Mobile")),
        "{desktop}"
    );
    assert_eq!(
        destinations(&desktop),
        [
            ("east".into(), s("env=us-prod,version=v1.5"), 99),
            ("west".into(), s("env=us-staging,version=v2.0-alpha"), 1)
        ]
    );
    let total: f64 = desktop["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["probability"].as_f64())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{desktop}");

    let west = trace_json(gnsctl, domain, Some("west"), "curl/8.0");
    assert_eq!(west["dns"]["view"], "west");
    assert_eq!(west["dns"]["answers"], json!(["127.0.20.1"]));
    assert_eq!(west["gateway"], "west egress");
    assert_eq!(
        destinations(&west),
        [
            ("west".into(), s("env=us-prod,version=v1.5"), 99),
            ("west".into(), s("env=us-staging,version=v2.0-alpha"), 1)
        ]
    );
    let west_iphone = trace_json(gnsctl, domain, Some("west"), "DemoApp/1.0;iPhone;iOS 17");
    assert_eq!(
        destinations(&west_iphone),
        [("west".into(), s("version=canary"), 100)]
    );

    let outside = trace_json(gnsctl, domain, None, "curl/8.0");
    assert_eq!(outside["from"], "outside");
    assert_eq!(outside["dns"]["view"], "external");
    assert_eq!(
        outside["dns"]["answers"],
        json!(["127.0.10.1", "127.0.20.1"])
    );
    assert_eq!(outside["gateway"], "east public");
    assert_eq!(outside["access"]["allowed"], false);
    assert!(
        outside["access"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("not reachable from outside")),
        "{outside}"
    );
}

/// Stops the demo like Ctrl-C would (SIGTERM, so it stops its children)
/// when the test ends, also when it fails half-way.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

#[test]
fn demo_up_try_fail_heal_down() {
    for tool in ["dig", "curl"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: apt-get install bind9-dnsutils curl (.ci/run does this)"
        );
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let demo = binary("gns-demo");
    let listen = format!("127.0.0.1:{}", free_port());
    let dns = format!("127.0.0.1:{}", free_port());
    let dir_arg = dir.display().to_string();
    let mut up = Proc::spawn(
        &demo,
        &[
            "up".into(),
            "--dir".into(),
            dir_arg.clone(),
            "--listen".into(),
            listen.clone(),
            "--dns-listen".into(),
            dns,
        ],
        tmp.path().join("demo-up.log"),
    );
    let _stop = StopOnDrop(up.pid());
    let guide = wait_for(Duration::from_secs(90), "the demo to come up", || {
        let text = up.log_text();
        assert!(up.running(), "gns-demo up exited: {text}");
        text.contains("GNS demo ready").then_some(text)
    });
    eprintln!("{guide}");
    assert!(guide.contains("first cross-cluster request after"));
    let domain = "production.app.acme.com";

    let commands: Vec<&str> = guide
        .lines()
        .filter_map(|l| l.strip_prefix("  $ "))
        .collect();
    assert!(
        commands.len() >= 10,
        "the guide lists the commands: {guide}"
    );
    let expect: [(&str, &[&str]); 10] = [
        // Most specific first: the first marker a command contains decides.
        (
            " trace web.production.app.acme.com --from east",
            &[
                "GATEWAY  east egress",
                "ROUTE    rule 0",
                "version=canary",
                "ACCESS   allowed",
            ],
        ),
        (
            " trace web.",
            &["DNS      view external", "ACCESS   denied"],
        ),
        ("-b 127.0.10.100", &["127.0.10.1"]),
        (";iPhone;", &["web canary in west"]),
        ("SRV", &["5432", "db.production.app.acme.com."]),
        ("dig @", &["127.0.10.1", "127.0.20.1"]),
        ("-A 'Demo Mobile'", &["in west"]),
        ("seq 200", &["web v1.5 in east"]),
        ("api.", &["api v1 in west"]),
        ("/services", &["db-vm-1", "127.0.20.12"]),
    ];
    for command in &commands {
        let output = run(command);
        let (_, wanted) = expect
            .iter()
            .find(|(marker, _)| command.contains(marker))
            .unwrap_or_else(|| panic!("an expectation for `{command}`"));
        for w in *wanted {
            assert!(
                output.contains(w),
                "`{command}` printed {output:?}, expected {w:?}"
            );
        }
    }
    traces_explain_the_demo_topology(&commands, domain);

    // The 99/1 split: most of 200 requests stay in east, few go west.
    let split = commands
        .iter()
        .find(|c| c.contains("seq 200"))
        .expect("split command");
    let lines = run(split);
    let counts: Vec<(u32, &str)> = lines
        .lines()
        .filter_map(|l| {
            let (count, answer) = l.trim_start().split_once(' ')?;
            Some((count.parse().ok()?, answer))
        })
        .collect();
    assert_eq!(
        counts.iter().map(|(n, _)| n).sum::<u32>(),
        200,
        "every one of the 200 requests is answered: {lines}"
    );
    let west: u32 = counts
        .iter()
        .filter(|(_, answer)| answer.contains("in west"))
        .map(|(n, _)| n)
        .sum();
    // Only an upper bound here: at 1 %, none of 200 goes west 13 % of the time.
    assert!(west <= 12, "about 1 % of 200 to west, got {west}: {lines}");
    // Two-sided, on enough requests to the same egress with the same Host.
    let (egress, host) = split_target(split);
    let started = std::time::Instant::now();
    let (west, east) = split_counts(&egress, &host, SPLIT_REQUESTS);
    eprintln!(
        "99/1 split: {west} west, {east} east of {SPLIT_REQUESTS} requests in {:?}",
        started.elapsed()
    );
    assert_eq!(
        east,
        SPLIT_REQUESTS - west,
        "every other request is answered in east"
    );
    assert!(
        SPLIT_WEST.contains(&west),
        "99/1 split: {west} of {SPLIT_REQUESTS} requests to {egress} (Host {host}) went \
         west, expected {SPLIT_WEST:?} (about 20)"
    );

    // A cluster failure: mobile requests fail over from west to east, and come back.
    let dir_flag = format!("--dir {dir_arg}");
    let demo_cmd = demo.display().to_string();
    let out = run(&format!("{demo_cmd} fail west {dir_flag}"));
    assert!(out.contains("west is down"), "{out}");
    wait_for(Duration::from_secs(15), "failover to east", || {
        mobile_via_east(domain).contains("in east").then_some(())
    });
    let out = run(&format!("{demo_cmd} heal west {dir_flag}"));
    assert!(out.contains("west is back"), "{out}");
    wait_for(Duration::from_secs(30), "west serving again", || {
        mobile_via_east(domain).contains("in west").then_some(())
    });

    // Down stops everything the demo started.
    let down = Command::new("sh")
        .arg("-c")
        .arg(format!("{demo_cmd} down {dir_flag}"))
        .output()
        .expect("run gns-demo down");
    assert!(
        down.status.success() && String::from_utf8_lossy(&down.stdout).contains("demo stopped"),
        "gns-demo down: {} {}; the demo's log: {}",
        String::from_utf8_lossy(&down.stdout),
        String::from_utf8_lossy(&down.stderr),
        up.log_text()
    );
    wait_for(Duration::from_secs(15), "gns-demo up to exit", || {
        (!up.running()).then_some(())
    });
    wait_for(Duration::from_secs(10), "no process left", || {
        processes_under(&dir).is_empty().then_some(())
    });
    assert!(
        std::net::TcpListener::bind(listen.as_str()).is_ok(),
        "the federation's port is free again"
    );
}
