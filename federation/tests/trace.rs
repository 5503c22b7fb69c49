//! The trace over a snapshot shaped like the demo's: `web` in east (pods
//! labelled `version: v1.5` and `version: canary`) and west, the seed's
//! rules (the iPhone regex to `version: canary`, then 99/1 between east's
//! v1.5 and west), east's clients sent to its egress, west's to their own
//! endpoint, outside clients to east's public entry.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use gns_contract::config::{
    GatewayConfig, HeaderCondition, HeaderMatcher, Rule, ServiceConfig, WeightedCluster,
};
use gns_dns::snapshot::{Service, Zone, ZoneSnapshot};
use gns_federation::snapshot::Snapshot;
use gns_federation::trace::{ClusterFacts, Trace, TraceError, TraceQuery, trace};

const HOST: &str = "web.production.app.acme.com";
const IPHONE: &str = "GNSApp/2.3;iPhone;iOS/17.1";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64)";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn web(external: bool) -> ServiceConfig {
    ServiceConfig {
        gns: "production".into(),
        service: "web".into(),
        http_port: [("east".into(), 8080), ("west".into(), 8080)]
            .into_iter()
            .collect(),
        endpoints: [
            ("east".into(), ips(&["127.0.10.1", "127.0.10.2"])),
            ("west".into(), ips(&["127.0.20.1"])),
        ]
        .into_iter()
        .collect(),
        subsets: BTreeMap::from([
            (
                "version=v1.5".into(),
                [("east".into(), ips(&["127.0.10.1"]))]
                    .into_iter()
                    .collect(),
            ),
            (
                "version=canary".into(),
                [("east".into(), ips(&["127.0.10.2"]))]
                    .into_iter()
                    .collect(),
            ),
        ]),
        rules: vec![
            Rule {
                headers: vec![HeaderCondition {
                    name: "user-agent".into(),
                    matcher: HeaderMatcher::Regex("^(.*?;)?(iPhone)(;.*)?$".into()),
                }],
                destinations: vec![WeightedCluster {
                    cluster: String::new(),
                    subset: Some("version=canary".into()),
                    weight: 100,
                }],
                ..Rule::default()
            },
            Rule {
                destinations: vec![
                    WeightedCluster {
                        cluster: "east".into(),
                        subset: Some("version=v1.5".into()),
                        weight: 99,
                    },
                    WeightedCluster {
                        cluster: "west".into(),
                        subset: None,
                        weight: 1,
                    },
                ],
                ..Rule::default()
            },
        ],
        allowed_callers: Some(vec!["frontend".into()]),
        external,
        timeout_ms: Some(5_000),
        ..ServiceConfig::default()
    }
}

/// The frontend service: its endpoint in east names the caller.
fn frontend() -> ServiceConfig {
    ServiceConfig {
        gns: "production".into(),
        service: "frontend".into(),
        endpoints: [("east".into(), ips(&["127.0.10.9"]))]
            .into_iter()
            .collect(),
        ..ServiceConfig::default()
    }
}

fn snapshot(external: bool) -> Snapshot {
    let dns = ZoneSnapshot {
        version: 7,
        answer_ttl: 5,
        views: Vec::new(),
        zones: vec![Zone {
            origin: "production.app.acme.com".into(),
            serial: 7,
            nameservers: Vec::new(),
            txt: Vec::new(),
            services: vec![Arc::new(Service {
                name: "web".into(),
                ports: Vec::new(),
                external: ips(&["127.0.1.3"]),
                views: BTreeMap::from([
                    ("east".into(), ips(&["127.0.1.2"])),
                    ("west".into(), ips(&["127.0.20.1"])),
                ]),
                txt: Vec::new(),
            })]
            .into(),
        }],
    };
    Snapshot::new(7, dns, Vec::new(), None, Vec::new()).with_gateways(GatewayConfig {
        version: 7,
        trust_domain: "acme.test".into(),
        services: BTreeMap::from([
            (HOST.to_owned(), Arc::new(web(external))),
            (
                "frontend.production.app.acme.com".to_owned(),
                Arc::new(frontend()),
            ),
        ])
        .into(),
        ..GatewayConfig::default()
    })
}

fn clusters() -> BTreeMap<String, ClusterFacts> {
    BTreeMap::from([
        (
            "east".into(),
            ClusterFacts {
                egress: Some(ip("127.0.1.2")),
                public: Some(ip("127.0.1.3")),
                withdrawn: false,
            },
        ),
        (
            "west".into(),
            ClusterFacts {
                egress: Some(ip("127.0.2.2")),
                public: None,
                withdrawn: false,
            },
        ),
    ])
}

fn query(from: Option<&str>, user_agent: &str) -> TraceQuery {
    serde_json::from_value(serde_json::json!({
        "host": HOST,
        "from": from,
        "sourceIp": "127.0.10.9",
        "headers": {"User-Agent": user_agent},
    }))
    .expect("query")
}

fn traced(from: Option<&str>, user_agent: &str, external: bool) -> Trace {
    trace(&snapshot(external), &clusters(), &query(from, user_agent)).expect("trace")
}

/// (cluster, subset, probability) of each destination, probability rounded.
fn shares(t: &Trace) -> Vec<(String, Option<String>, f64)> {
    t.destinations
        .iter()
        .map(|d| {
            (
                d.cluster.clone(),
                d.subset.clone(),
                (d.probability * 1000.0).round() / 1000.0,
            )
        })
        .collect()
}

#[test]
fn a_mobile_client_in_east_goes_through_its_egress_to_the_canary() {
    let t = traced(Some("east"), IPHONE, false);
    assert_eq!(t.from, "east");
    assert_eq!(
        t.caller,
        ["frontend"],
        "the source address names the caller"
    );
    assert_eq!(t.dns.view, "east");
    assert_eq!(t.dns.answers, ips(&["127.0.1.2"]));
    assert!(t.dns.why.contains("east's egress gateway"), "{}", t.dns.why);
    assert_eq!(t.gateway.as_deref(), Some("east egress"));
    assert_eq!(t.rule.index, Some(0));
    assert_eq!(
        t.rules.len(),
        1,
        "the first rule matched: no other was tried"
    );
    assert!(t.rules[0].matched);
    assert_eq!(
        shares(&t),
        [("east".into(), Some("version=canary".into()), 1.0)]
    );
    assert_eq!(t.destinations[0].endpoints, ips(&["127.0.10.2"]));
    assert!(t.access.allowed, "{}", t.access.why);
    assert!(t.access.why.contains("admits frontend"), "{}", t.access.why);
    assert_eq!(t.timeout_ms, 5_000);
    assert_eq!(t.endpoints["east"].ready.len(), 2);
}

#[test]
fn a_desktop_client_in_east_is_split_99_to_1_and_told_why_the_iphone_rule_did_not_match() {
    let t = traced(Some("east"), DESKTOP, false);
    assert_eq!(t.rules.len(), 2);
    assert!(!t.rules[0].matched);
    assert_eq!(
        t.rules[0].why,
        "header user-agent matches /^(.*?;)?(iPhone)(;.*)?$/: not so"
    );
    assert_eq!(t.rule.index, Some(1));
    assert_eq!(
        shares(&t),
        [
            ("east".into(), Some("version=v1.5".into()), 0.99),
            ("west".into(), None, 0.01)
        ]
    );
    let total: f64 = t.destinations.iter().map(|d| d.probability).sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "probabilities sum to 1: {total}"
    );
    assert!(t.destinations[0].why.contains("weight 99 of 100"));
}

#[test]
fn a_client_in_west_is_answered_its_own_endpoint_and_no_gateway_routes_it() {
    let t = traced(Some("west"), IPHONE, false);
    assert_eq!(t.dns.view, "west");
    assert_eq!(t.dns.answers, ips(&["127.0.20.1"]));
    assert!(
        t.dns.why.contains("ready endpoint in west (local)"),
        "{}",
        t.dns.why
    );
    assert_eq!(t.gateway, None);
    assert_eq!(t.rule.index, None);
    assert!(t.rules.is_empty());
    assert_eq!(shares(&t), [("west".into(), None, 1.0)]);
    assert!(t.access.allowed);
    assert!(t.access.why.contains("gateways only"), "{}", t.access.why);
    assert!(
        t.caller.is_empty(),
        "127.0.10.9 is an address in east, not west"
    );
}

#[test]
fn an_outside_client_reaches_the_public_entry_only_when_the_policy_opens_it() {
    let closed = traced(None, DESKTOP, false);
    assert_eq!(closed.from, "outside");
    assert_eq!(closed.dns.view, "external");
    assert_eq!(closed.dns.answers, ips(&["127.0.1.3"]));
    assert!(
        closed.dns.why.contains("east's public entry"),
        "{}",
        closed.dns.why
    );
    assert_eq!(closed.gateway.as_deref(), Some("east public"));
    assert!(!closed.access.allowed);
    assert!(
        closed.access.why.contains("not reachable from outside"),
        "{}",
        closed.access.why
    );
    let open = traced(None, IPHONE, true);
    assert!(open.access.allowed, "{}", open.access.why);
    assert_eq!(
        shares(&open),
        [("east".into(), Some("version=canary".into()), 1.0)]
    );
}

#[test]
fn a_caller_the_policy_does_not_name_is_refused() {
    let mut q = query(Some("east"), DESKTOP);
    q.source_ip = Some(ip("127.0.10.77"));
    let t = trace(&snapshot(false), &clusters(), &q).expect("trace");
    assert!(t.caller.is_empty());
    assert!(!t.access.allowed);
    assert!(
        t.access.why.contains("no service's endpoint"),
        "{}",
        t.access.why
    );
}

#[test]
fn a_withdrawn_cluster_is_named_in_the_dns_why() {
    let mut facts = clusters();
    if let Some(west) = facts.get_mut("west") {
        west.withdrawn = true;
    }
    let t = trace(&snapshot(false), &facts, &query(Some("east"), DESKTOP)).expect("trace");
    assert!(
        t.dns.why.contains("left out: west (withdrawn"),
        "{}",
        t.dns.why
    );
    assert!(t.endpoints["west"].withdrawn);
}

#[test]
fn unknown_names_clusters_and_bad_headers_are_refused_with_why() {
    let snap = snapshot(false);
    let mut q = query(Some("east"), DESKTOP);
    q.host = "nothing.production.app.acme.com".into();
    assert!(matches!(
        trace(&snap, &clusters(), &q),
        Err(TraceError::UnknownService(_))
    ));
    let q = query(Some("north"), DESKTOP);
    assert!(matches!(
        trace(&snap, &clusters(), &q),
        Err(TraceError::UnknownCluster(_))
    ));
    let mut q = query(Some("east"), DESKTOP);
    q.headers.insert("bad header".into(), "x".into());
    assert!(matches!(
        trace(&snap, &clusters(), &q),
        Err(TraceError::BadHeader(_))
    ));
    let mut q = query(Some("east"), DESKTOP);
    q.method = Some("G E T".into());
    assert!(matches!(
        trace(&snap, &clusters(), &q),
        Err(TraceError::BadMethod(_))
    ));
    // A trailing dot and capitals name the same service.
    let mut q = query(Some("east"), DESKTOP);
    q.host = "WEB.production.app.acme.com.".into();
    assert!(trace(&snap, &clusters(), &q).is_ok());
}

#[test]
fn every_views_dns_answer_in_one_pass_is_what_each_trace_answers() {
    for external in [false, true] {
        let snapshot = snapshot(external);
        let views = gns_federation::trace::dns_views(&snapshot, &clusters(), &format!("{HOST}."))
            .expect("views");
        assert_eq!(views.host, HOST);
        let froms: Vec<Option<&str>> = views.views.iter().map(|v| v.from.as_deref()).collect();
        let facts = clusters();
        let mut expected: Vec<Option<&str>> = facts.keys().map(|c| Some(c.as_str())).collect();
        expected.push(None);
        assert_eq!(froms, expected, "every cluster's view, then outside's");
        for view in &views.views {
            let one = traced(view.from.as_deref(), IPHONE, external);
            assert_eq!(view.dns, one.dns, "from {:?}", view.from);
        }
    }
    let unknown =
        gns_federation::trace::dns_views(&snapshot(false), &clusters(), "nope.example.com");
    assert!(unknown.is_err());
}
