//! The telemetry window: the traffic east's gateway reported (the seed's
//! canary step sent 10,000 requests for shopfront through east's egress)
//! shows per service, per link and per gateway instance at
//! `/v1/telemetry/...`, and as last-minute gauges on the federation's
//! `/metrics`. And the Grafana dashboard in `deploy/` asks only for series
//! the running binaries export.

use super::*;

/// The `items` of `GET /v1/telemetry/{what}`.
async fn telemetry(w: &World, what: &str) -> Vec<Value> {
    telemetry_of(w, what, "").await
}

/// The `items` of `GET /v1/telemetry/{what}` with more of the query (`&...`).
async fn telemetry_of(w: &World, what: &str, filter: &str) -> Vec<Value> {
    let (status, body) = api(
        reqwest::Method::GET,
        &format!("{}/v1/telemetry/{what}?window=15m{filter}", w.base),
        None,
    )
    .await;
    assert_eq!(status, 200, "{what}: {body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

pub(crate) async fn the_telemetry_window_shows_the_canary_traffic(w: &World) {
    eventually(
        "shopfront's 10,000 requests in the telemetry window",
        Duration::from_secs(30),
        async || {
            let services = telemetry(w, "services").await;
            let shopfront = services
                .iter()
                .find(|s| s["service"] == "shopfront" && s["globalNamespace"] == "production");
            match shopfront {
                Some(s) if s["totals"]["requests"].as_u64() >= Some(10_000) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let services = telemetry(w, "services").await;
    let shopfront = services
        .iter()
        .find(|s| s["service"] == "shopfront")
        .expect("shopfront");
    let totals = &shopfront["totals"];
    assert_eq!(
        totals["responses"]["2xx"].as_u64(),
        totals["requests"].as_u64(),
        "every canary request was answered 2xx: {totals}"
    );
    assert_eq!(totals["errorRate"], 0.0);
    for p in ["p50Ms", "p90Ms", "p99Ms"] {
        assert!(totals[p].as_f64().is_some_and(|v| v > 0.0), "{p}: {totals}");
    }
    assert!(totals["rps"].as_f64().is_some_and(|r| r > 0.0), "{totals}");
    let points: u64 = shopfront["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|p| p["requests"].as_u64())
        .sum();
    assert_eq!(
        Some(points),
        totals["requests"].as_u64(),
        "the series adds up to the totals"
    );

    let links = telemetry(w, "links").await;
    let east_west = links
        .iter()
        .find(|l| l["source"] == "east" && l["destination"] == "west")
        .unwrap_or_else(|| panic!("an east → west link: {links:?}"));
    assert!(
        east_west["totals"]["requests"].as_u64() >= Some(10_000),
        "{east_west}"
    );
    let instances = telemetry(w, "instances").await;
    assert!(
        instances
            .iter()
            .any(|i| i["cluster"] == "east" && i["totals"]["requests"].as_u64() >= Some(10_000)),
        "east's gateway instance: {instances:?}"
    );

    // A bad window is refused with what is accepted.
    let (status, body) = api(
        reqwest::Method::GET,
        &format!("{}/v1/telemetry/services?window=2h", w.base),
        None,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("10s to 15m"), "{body}");

    // One service's traffic alone (the console's service page asks so).
    let only = telemetry_of(
        w,
        "services",
        "&globalNamespace=production&service=shopfront",
    )
    .await;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["service"], "shopfront");
    assert!(
        only[0]["totals"]["requests"].as_u64() >= Some(10_000),
        "{only:?}"
    );
    assert!(
        telemetry_of(w, "services", "&globalNamespace=production&service=no-such")
            .await
            .is_empty()
    );
    let (status, body) = api(
        reqwest::Method::GET,
        &format!("{}/v1/telemetry/services?service=shopfront", w.base),
        None,
    )
    .await;
    assert_eq!(
        status, 422,
        "a service without its global namespace: {body}"
    );
    assert!(body.to_string().contains("globalNamespace"), "{body}");

    // The last minute, as typed gauges on /metrics.
    let text = gns_tests::client()
        .build()
        .expect("client")
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        text.contains("# TYPE gns_telemetry_service_requests_per_second gauge"),
        "{text}"
    );
    assert!(
        text.contains(
            "gns_telemetry_service_requests_per_second{global_namespace=\"production\",service=\"shopfront\"}"
        ),
        "shopfront's rate over the last minute"
    );
    assert!(
        text.contains(
            "gns_telemetry_link_requests_per_second{source=\"east\",destination=\"west\"}"
        )
    );
}

/// The metric names the Grafana dashboard's queries use.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/gns-dashboard.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("gns_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

/// Every series name (before `{` or a space) of a Prometheus text, and
/// every family it declares with a `# TYPE` line (a counter of queries
/// with no query yet has the line and no sample).
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(declared) => declared.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) async fn every_dashboard_query_names_a_metric_the_binaries_export(w: &World) {
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 20, "the dashboard's metrics: {wanted:?}");
    let get = async |url: String| {
        gns_tests::client()
            .build()
            .expect("client")
            .get(url)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    };
    let mut exported = series_names(&get(format!("{}/metrics", w.base)).await);
    for gw in w.gateways.values() {
        exported.extend(series_names(
            &get(format!("http://{}/metrics", gw.admin)).await,
        ));
    }
    let missing: Vec<&String> = wanted.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for series no binary exports: {missing:?}"
    );
}
