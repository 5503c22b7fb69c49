//! The web console in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, fantoccini), against the
//! local demo: sign in; the overview shows both clusters healthy, west
//! unhealthy within 10 s of its failure without a reload, and healthy again
//! once healed; the service page draws the 99/1 split and shows live request
//! rates; the trace form answers what `gnsctl trace` answers; the weight
//! slider writes with the routing's resourceVersion, and a concurrent change
//! shows as a conflict in words; a viewer token gets no write control. A
//! failing step leaves a screenshot in `target/console-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator, key::Key};
use gns_tests::{Proc, binary, free_port, wait_for};
use serde_json::{Value, json};

const DOMAIN: &str = "production.app.acme.com";
const IPHONE: &str = "DemoApp/1.0;iPhone;iOS 17";

/// The demo, its federation's URL, CA and admin token.
struct Demo {
    up: Proc,
    dir: PathBuf,
    base: String,
    ca: PathBuf,
    token: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(pid) = self.up.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn start_demo(tmp: &Path) -> Demo {
    let dir = tmp.join("demo");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut up = Proc::spawn(
        &binary("gns-demo"),
        &[
            "up".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            listen.clone(),
            "--dns-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
        tmp.join("demo-up.log"),
    );
    let guide = wait_for(Duration::from_secs(90), "the demo to come up", || {
        let text = up.log_text();
        assert!(up.running(), "gns-demo up exited: {text}");
        text.contains("GNS demo ready").then_some(text)
    });
    // "federation  https://… (admin token in <file>, CA in <file>)"
    let line = guide
        .lines()
        .find(|l| l.starts_with("federation "))
        .expect("the federation line");
    let between = |from: &str, to: &str| -> String {
        let start = line.find(from).expect(from) + from.len();
        let end = line[start..].find(to).expect(to) + start;
        line[start..end].to_owned()
    };
    let token_file = PathBuf::from(between("admin token in ", ","));
    let ca = PathBuf::from(between("CA in ", ")"));
    let token = std::fs::read_to_string(&token_file)
        .expect("admin token")
        .trim()
        .to_owned();
    Demo {
        up,
        dir,
        base: format!("https://{listen}"),
        ca,
        token,
    }
}

impl Demo {
    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca).expect("CA");
        gns_tests::client_builder_with_roots(&pem)
            .build()
            .expect("client")
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("federation");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn demo_command(&self, what: &str) -> String {
        let out = Command::new(binary("gns-demo"))
            .args([what, "west", "--dir", &self.dir.display().to_string()])
            .output()
            .expect("gns-demo");
        assert!(out.status.success(), "gns-demo {what} west: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `gnsctl trace … -o json` for an iPhone client in east.
    fn gnsctl_trace(&self) -> Value {
        let out = Command::new(binary("gnsctl"))
            .args([
                "--server",
                &self.base,
                "--ca-file",
                &self.ca.display().to_string(),
                "--token",
                &self.token,
                "trace",
                &format!("web.{DOMAIN}"),
                "--from",
                "east",
                "-H",
                &format!("User-Agent: {IPHONE}"),
                "-o",
                "json",
            ])
            .output()
            .expect("gnsctl");
        assert!(out.status.success(), "gnsctl trace: {out:?}");
        serde_json::from_slice(&out.stdout).expect("trace JSON")
    }
}

/// chromedriver on a free port, and a session of headless Chromium.
async fn browser(tmp: &Path) -> (Proc, Client) {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver (.ci/run does this)"
        );
    }
    let port = free_port();
    let driver = Proc::spawn(
        Path::new("/usr/bin/chromedriver"),
        &[format!("--port={port}")],
        tmp.join("chromedriver.log"),
    );
    wait_for(Duration::from_secs(20), "chromedriver to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1366,768"]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!("an object")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// The element matching `css`, now.
async fn find(c: &Client, css: &str) -> Result<fantoccini::elements::Element, String> {
    c.find(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css}: {e}"))
}

/// Clicks the element matching `css`.
async fn click(c: &Client, css: &str) -> Result<(), String> {
    find(c, css)
        .await?
        .click()
        .await
        .map_err(|e| format!("click {css}: {e}"))
}

/// Moves the slider `css` `presses` steps left, saves it, and waits for
/// its result line (`<css>-result`) to say `expect`.
async fn slide_and_save(c: &Client, css: &str, presses: usize, expect: &str) -> Result<(), String> {
    let slider = find(c, css).await?;
    for _ in 0..presses {
        slider
            .send_keys(&String::from(char::from(Key::Left)))
            .await
            .map_err(|e| format!("slide {css}: {e}"))?;
    }
    click(c, &format!("{css}-save")).await?;
    wait_text(c, &format!("{css}-result"), expect, Duration::from_secs(10)).await?;
    Ok(())
}

/// Waits up to `within` for an element matching `css`.
async fn wait_css(
    c: &Client,
    css: &str,
    within: Duration,
) -> Result<fantoccini::elements::Element, String> {
    c.wait()
        .at_most(within)
        .for_element(Locator::Css(css))
        .await
        .map_err(|e| format!("no {css} within {within:?}: {e}"))
}

/// Waits up to `within` until the text of `css` contains `needle`.
async fn wait_text(
    c: &Client,
    css: &str,
    needle: &str,
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if t.contains(needle) {
                return Ok(t);
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{css} never said {needle:?} within {within:?}; last: {last:?}"
    ))
}

/// Opens `url` and waits up to `within` for an element matching `ready`.
async fn open(
    c: &Client,
    url: &str,
    ready: &str,
    within: Duration,
) -> Result<fantoccini::elements::Element, String> {
    c.goto(url).await.map_err(|e| format!("open {url}: {e}"))?;
    wait_css(c, ready, within).await
}

/// Opens the service page and presses Tab (or Shift+Tab) until the focus
/// is on `until` (an id, or a control's text): the stops in order.
async fn tab_walk(c: &Client, base: &str, back: bool, until: &str) -> Result<Vec<String>, String> {
    // Loaded afresh, so the focus starts where a page puts it.
    c.goto(&format!("{base}/ui/#/service/production/web"))
        .await
        .map_err(|e| e.to_string())?;
    c.refresh().await.map_err(|e| e.to_string())?;
    wait_css(c, "#trace-run", Duration::from_secs(10)).await?;
    let key = if back {
        format!("{}{}", char::from(Key::Shift), char::from(Key::Tab))
    } else {
        String::from(char::from(Key::Tab))
    };
    let mut stops = Vec::new();
    for _ in 0..80 {
        c.active_element()
            .await
            .map_err(|e| e.to_string())?
            .send_keys(&key)
            .await
            .map_err(|e| e.to_string())?;
        let focused = c
            .execute(
                "const e = document.activeElement; return e.id || e.textContent.trim();",
                Vec::new(),
            )
            .await
            .map_err(|e| e.to_string())?;
        stops.push(focused.as_str().unwrap_or_default().to_owned());
        if stops.last().is_some_and(|s| s == until) {
            return Ok(stops);
        }
    }
    Err(format!("80 presses never reached {until:?}: {stops:?}"))
}

/// The accessibility audit of the page on screen (`console_audit.js`:
/// contrast, names, keyboard, no sideways scrolling).
async fn audit(c: &Client) -> Result<(), String> {
    let problems = c
        .execute(include_str!("console_audit.js"), Vec::new())
        .await
        .map_err(|e| format!("the audit script: {e}"))?;
    match problems.as_array() {
        Some(list) if list.is_empty() => Ok(()),
        _ => Err(format!("accessibility problems: {problems:#}")),
    }
}

async fn sign_in(c: &Client, base: &str, token: &str) -> Result<(), String> {
    let field = open(c, &format!("{base}/ui/"), "#token", Duration::from_secs(10)).await?;
    field.send_keys(token).await.map_err(|e| e.to_string())?;
    click(c, "#sign-in-button").await?;
    wait_css(c, "#nav:not([hidden])", Duration::from_secs(10)).await?;
    Ok(())
}

/// Runs `step`; on failure keeps a screenshot and panics with why.
async fn step<F: std::future::Future<Output = Result<(), String>>>(
    c: &Client,
    name: &str,
    step: F,
) {
    eprintln!("console step: {name}");
    if let Err(why) = step.await {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{}.png", name.replace(' ', "-")));
        if let Ok(png) = c.screenshot().await {
            let _ = std::fs::write(&file, png);
        }
        panic!(
            "console step failed: {name}: {why} (screenshot: {})",
            file.display()
        );
    }
}

async fn routing_weights(demo: &Demo) -> (u64, Vec<u64>) {
    let (status, routing) = demo
        .api(
            reqwest::Method::GET,
            "/v1/global-namespaces/production/services/web/routing",
            None,
        )
        .await;
    assert_eq!(status, 200, "{routing}");
    let weights = routing["rules"][2]["destinations"]
        .as_array()
        .expect("rule 2")
        .iter()
        .filter_map(|d| d["weight"].as_u64())
        .collect();
    (routing["resourceVersion"].as_u64().unwrap_or(0), weights)
}

#[test]
fn the_console_shows_health_traffic_traces_and_writes_weights() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let demo = start_demo(tmp.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (_driver, c) = browser(tmp.path()).await;
        let base = demo.base.clone();

        step(
            &c,
            "the sign-in page passes the accessibility audit",
            async {
                open(
                    &c,
                    &format!("{base}/ui/"),
                    "#token",
                    Duration::from_secs(10),
                )
                .await?;
                audit(&c).await
            },
        )
        .await;
        step(&c, "sign in", sign_in(&c, &base, &demo.token)).await;
        step(&c, "both clusters healthy", async {
            for cluster in ["east", "west"] {
                wait_css(
                    &c,
                    &format!("[data-cluster=\"{cluster}\"] [data-health=\"healthy\"]"),
                    Duration::from_secs(30),
                )
                .await?;
            }
            Ok(())
        })
        .await;

        assert!(demo.demo_command("fail").contains("west is down"));
        let failed = Instant::now();
        step(&c, "west unhealthy within 10 s without a reload", async {
            wait_css(
                &c,
                "[data-cluster=\"west\"] [data-health=\"unhealthy\"]",
                Duration::from_secs(10),
            )
            .await?;
            eprintln!("west shown unhealthy after {:?}", failed.elapsed());
            Ok(())
        })
        .await;
        assert!(demo.demo_command("heal").contains("west is back"));
        step(&c, "west healthy again", async {
            wait_css(
                &c,
                "[data-cluster=\"west\"] [data-health=\"healthy\"]",
                Duration::from_secs(45),
            )
            .await?;
            Ok(())
        })
        .await;

        step(&c, "the service page draws the 99/1 split", async {
            c.goto(&format!("{base}/ui/#/service/production/web"))
                .await
                .map_err(|e| e.to_string())?;
            let bar =
                wait_text(&c, ".bar[data-rule=\"2\"]", "99%", Duration::from_secs(10)).await?;
            if !bar.contains("1%") {
                return Err(format!("no 1% part: {bar:?}"));
            }
            Ok(())
        })
        .await;
        // Traffic through east's egress, then its rate shows, live.
        let client = reqwest::Client::new();
        for _ in 0..200 {
            let r = client
                .get("http://127.0.10.1:15001/")
                .header("host", format!("web.{DOMAIN}"))
                .send()
                .await
                .expect("a request through east's egress");
            assert_eq!(r.status(), 200);
        }
        step(&c, "DNS answers per view on the service page", async {
            wait_css(
                &c,
                "#dns-views tr[data-from=\"east\"]",
                Duration::from_secs(10),
            )
            .await?;
            let east = wait_text(
                &c,
                "#dns-views tr[data-from=\"east\"]",
                "127.0.10.1",
                Duration::from_secs(5),
            )
            .await?;
            let outside = wait_text(
                &c,
                "#dns-views tr[data-from=\"outside\"]",
                "external",
                Duration::from_secs(5),
            )
            .await?;
            if !outside.contains("127.0.20.1") {
                return Err(format!("east: {east:?}; outside: {outside:?}"));
            }
            Ok(())
        })
        .await;
        step(&c, "live request rates on the service page", async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(e) = c.find(Locator::Css("[data-rps]")).await
                    && let Ok(Some(rps)) = e.attr("data-rps").await
                    && rps.parse::<f64>().is_ok_and(|r| r > 0.0)
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err("no request rate shown within 20 s".into())
        })
        .await;
        step(&c, "traffic per destination on the service page", async {
            wait_css(
                &c,
                "#traffic-destinations tr[data-destination=\"east\"]",
                Duration::from_secs(20),
            )
            .await?;
            Ok(())
        })
        .await;
        step(
            &c,
            "the service page passes the accessibility audit",
            audit(&c),
        )
        .await;
        step(&c, "the service page works from the keyboard", async {
            // A page puts the focus on its main content: Tab goes on to its
            // controls, Shift+Tab back to the navigation and the skip link.
            let forward = tab_walk(&c, &base, false, "trace-run").await?;
            for id in [
                "weight-2",
                "weight-2-save",
                "trace-from",
                "trace-ua",
                "trace-run",
            ] {
                if !forward.iter().any(|r| r == id) {
                    return Err(format!("Tab never reaches #{id}: {forward:?}"));
                }
            }
            let back = tab_walk(&c, &base, true, "Skip to content").await?;
            for name in ["sign-out", "nav-audit", "Overview", "Skip to content"] {
                if !back.iter().any(|r| r == name) {
                    return Err(format!("Shift+Tab never reaches {name:?}: {back:?}"));
                }
            }
            Ok(())
        })
        .await;
        // More global namespaces than one page of the console's lists holds.
        for n in 0..100 {
            let (status, body) = demo
                .api(
                    reqwest::Method::POST,
                    "/v1/global-namespaces",
                    Some(json!({
                        "name": format!("load-{n:03}"),
                        "domain": format!("load-{n:03}.example.com"),
                        "members": [],
                    })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        step(
            &c,
            "the global namespaces page shows 100 at a time",
            async {
                let ready = "#page tr[data-gns]";
                open(
                    &c,
                    &format!("{base}/ui/#/gns"),
                    ready,
                    Duration::from_secs(10),
                )
                .await?;
                let rows = |c: &Client| {
                    let c = c.clone();
                    async move {
                        c.find_all(Locator::Css("#page tr[data-gns]"))
                            .await
                            .map(|r| r.len())
                            .map_err(|e| e.to_string())
                    }
                };
                let first = rows(&c).await?;
                if first != 100 {
                    return Err(format!("{first} rows on the first page, not 100"));
                }
                click(&c, "#page button.more").await?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while rows(&c).await? <= 100 {
                    if Instant::now() > deadline {
                        return Err("Show more added no rows".into());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let more = find(&c, "#page button.more").await?;
                if more.is_displayed().await.map_err(|e| e.to_string())? {
                    return Err("Show more still offered after the last page".into());
                }
                click(&c, "#page tr[data-gns=\"production\"] a").await?;
                wait_css(
                    &c,
                    "#page tr[data-service=\"web\"] a",
                    Duration::from_secs(10),
                )
                .await?
                .click()
                .await
                .map_err(|e| e.to_string())?;
                wait_text(&c, ".bar[data-rule=\"2\"]", "%", Duration::from_secs(10)).await?;
                Ok(())
            },
        )
        .await;
        for (page, ready) in [
            ("#/", "#topology svg"),
            ("#/gns", "#page table"),
            ("#/gns/production", "#page tr[data-service]"),
            ("#/clusters", "#page table"),
            ("#/problems", "#page h2"),
            ("#/audit", "#page table"),
        ] {
            step(
                &c,
                &format!("the {page} page passes the accessibility audit"),
                async {
                    open(
                        &c,
                        &format!("{base}/ui/{page}"),
                        ready,
                        Duration::from_secs(15),
                    )
                    .await?;
                    audit(&c).await
                },
            )
            .await;
        }

        step(
            &c,
            "the overview draws the traffic between the clusters",
            async {
                c.goto(&format!("{base}/ui/#/"))
                    .await
                    .map_err(|e| e.to_string())?;
                wait_css(&c, "#topology svg line", Duration::from_secs(15)).await?;
                // As a user sees it (docs/console-overview.png is one).
                let shots =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
                let _ = std::fs::create_dir_all(&shots);
                let png = c.screenshot().await.map_err(|e| e.to_string())?;
                std::fs::write(shots.join("overview.png"), png).map_err(|e| e.to_string())?;
                c.goto(&format!("{base}/ui/#/service/production/web"))
                    .await
                    .map_err(|e| e.to_string())?;
                wait_css(&c, "#trace-from", Duration::from_secs(10)).await?;
                Ok(())
            },
        )
        .await;
        let expected = demo.gnsctl_trace();
        step(
            &c,
            "the trace form answers what gnsctl trace answers",
            async {
                let send = async |css: &str, text: &str| -> Result<(), String> {
                    let e = c.find(Locator::Css(css)).await.map_err(|e| e.to_string())?;
                    e.clear().await.map_err(|e| e.to_string())?;
                    e.send_keys(text).await.map_err(|e| e.to_string())
                };
                send("#trace-from", "east").await?;
                send("#trace-ua", IPHONE).await?;
                click(&c, "#trace-run").await?;
                let rule = wait_css(&c, "#trace-rule", Duration::from_secs(10)).await?;
                let index = rule
                    .attr("data-rule")
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let expected_index = expected["rule"]["index"].to_string();
                if index != expected_index {
                    return Err(format!(
                        "rule {index} in the console, {} from gnsctl",
                        expected["rule"]["index"]
                    ));
                }
                let mut shown = Vec::new();
                for li in c
                    .find_all(Locator::Css("#trace-destinations li"))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let attr =
                        async |name: &str| li.attr(name).await.ok().flatten().unwrap_or_default();
                    let probability: f64 = attr("data-probability").await.parse().unwrap_or(-1.0);
                    shown.push((
                        attr("data-cluster").await,
                        attr("data-subset").await,
                        probability,
                    ));
                }
                let from_cli: Vec<(String, String, f64)> = expected["destinations"]
                    .as_array()
                    .expect("destinations")
                    .iter()
                    .map(|d| {
                        (
                            d["cluster"].as_str().unwrap_or_default().to_owned(),
                            d["subset"].as_str().unwrap_or_default().to_owned(),
                            d["probability"].as_f64().unwrap_or(-2.0),
                        )
                    })
                    .collect();
                if shown != from_cli {
                    return Err(format!("console {shown:?}, gnsctl {from_cli:?}"));
                }
                let access = c
                    .find(Locator::Css("#trace-access"))
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                if !access.starts_with("Allowed") {
                    return Err(format!("access: {access}"));
                }
                Ok(())
            },
        )
        .await;

        step(
            &c,
            "the weight slider writes",
            slide_and_save(&c, "#weight-2", 9, "Saved: 90 / 10"),
        )
        .await;
        assert_eq!(
            routing_weights(&demo).await.1,
            [90, 10],
            "the slider's weights are stored"
        );

        // Someone else changes the routing meanwhile: the next save is a conflict.
        let (_, mut routing) = demo
            .api(
                reqwest::Method::GET,
                "/v1/global-namespaces/production/services/web/routing",
                None,
            )
            .await;
        routing["rules"][2]["destinations"][0]["weight"] = json!(80);
        routing["rules"][2]["destinations"][1]["weight"] = json!(20);
        for k in [
            "service",
            "status",
            "createdAt",
            "updatedAt",
            "resourceVersion",
        ] {
            if let Some(map) = routing.as_object_mut() {
                map.remove(k);
            }
        }
        let (status, body) = demo
            .api(
                reqwest::Method::PUT,
                "/v1/global-namespaces/production/services/web/routing",
                Some(routing),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        step(
            &c,
            "a concurrent change shows as a conflict",
            slide_and_save(&c, "#weight-2", 1, "someone changed this routing"),
        )
        .await;
        assert_eq!(
            routing_weights(&demo).await.1,
            [80, 20],
            "the conflicting save changed nothing"
        );

        let (status, viewer) = demo
            .api(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(json!({"name": "console-viewer", "role": "viewer"})),
            )
            .await;
        assert_eq!(status, 201, "{viewer}");
        let viewer_token = viewer["token"]
            .as_str()
            .expect("the viewer's token")
            .to_owned();
        step(&c, "a viewer token sees no write control", async {
            click(&c, "#sign-out").await?;
            sign_in(&c, &base, &viewer_token).await?;
            c.goto(&format!("{base}/ui/#/service/production/web"))
                .await
                .map_err(|e| e.to_string())?;
            wait_text(&c, ".bar[data-rule=\"2\"]", "80%", Duration::from_secs(10)).await?;
            if c.find(Locator::Css("#weight-2")).await.is_ok() {
                return Err("a viewer got the weight slider".into());
            }
            let audit = c
                .find(Locator::Css("#nav-audit"))
                .await
                .map_err(|e| e.to_string())?;
            if audit.is_displayed().await.map_err(|e| e.to_string())? {
                return Err("a viewer got the audit log link".into());
            }
            Ok(())
        })
        .await;
        let _ = c.close().await;
    });
}
