//! Route decisions, pure: from a request's host and headers to the clusters
//! to try, in order. Compiled once per config (regular expressions included).
//! What a rule means (matching, access, the order of targets) is
//! [`gns_contract::decide`], shared with the federation's trace; this
//! module indexes a config's services by host, TCP port and caller address.
//!
//! - The first rule whose conditions all hold (headers, the calling
//!   service, the path, the method) picks a destination cluster by weight;
//!   without rules the own cluster is preferred. The federation orders the
//!   rules (precedence, then as written).
//! - Clusters without ready endpoints are skipped: the `failover` order comes
//!   next, then every other cluster with endpoints, own cluster first.
//! - A peer the config lists as silent (its gateways stopped reporting)
//!   counts as a cluster without endpoints.

use crate::FastMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{GatewayConfig, ServiceConfig};

use gns_contract::decide::CompiledRule;
pub use gns_contract::decide::{RequestFacts, Target};

/// A service with its rules compiled.
#[derive(Debug)]
pub struct Route {
    /// The service as configured.
    pub config: ServiceConfig,
    rules: Vec<CompiledRule>,
    /// Its metric handles, made on first use (no registry lookup per request).
    pub metrics: crate::metrics::RouteMetrics,
}

impl Route {
    /// The ready endpoints of `cluster`, only those of `subset` when given
    /// (none when the subset is unknown).
    pub fn endpoints_of(&self, cluster: &str, subset: Option<&str>) -> Option<&[IpAddr]> {
        self.config.endpoints_of(cluster, subset)
    }

    /// The endpoints a request for `subset` is sent to in `cluster`: the
    /// subset's, or, when the subset has none there (or this gateway's
    /// config does not know it yet: configs reach gateways at slightly
    /// different times), the cluster's as a whole, as a rule's pick falls
    /// back when planned. `None` when the cluster has no ready endpoint.
    pub fn serving_endpoints(&self, cluster: &str, subset: Option<&str>) -> Option<&[IpAddr]> {
        self.endpoints_of(cluster, subset)
            .filter(|e| !e.is_empty())
            .or_else(|| self.endpoints_of(cluster, None))
            .filter(|e| !e.is_empty())
    }

    /// Whether callers named `callers` (the services a calling workload is
    /// an endpoint of; none when it is no service's) may call this service.
    pub fn admits<S: AsRef<str>>(&self, callers: &[S]) -> bool {
        self.config.admits(callers)
    }
}

/// Every service of a config, by host.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// This gateway's cluster.
    pub cluster: String,
    by_host: FastMap<String, Arc<Route>>,
    /// Services on each TCP port, with their host names (several share a
    /// port when TLS clients name them by SNI).
    by_tcp_port: FastMap<u16, Vec<(String, Arc<Route>)>>,
    /// Service ports clients dial for HTTP, other than 80 (served on the
    /// egress listener) and the TCP ports (passed through: TCP wins).
    http_ports: std::collections::BTreeSet<u16>,
    /// The caller identity of each address of this cluster's endpoints,
    /// by global namespace.
    callers_at: FastMap<IpAddr, FastMap<String, Caller>>,
}

/// Who a workload of this cluster is when it calls into one global
/// namespace: the services it is an endpoint of, named once per config.
#[derive(Debug, Default)]
pub struct Caller {
    /// The services, by name.
    pub services: Vec<String>,
    /// The same, as the value of [`crate::access::CALLER_HEADER`].
    pub header: Option<http::HeaderValue>,
}

impl RouteTable {
    /// Compiles `config` for the gateway of `cluster`. Rules that can't
    /// compile (a bad header name or regex) are left out and reported.
    /// Requests are counted in `traffic` for the gateway's reports.
    pub fn new(
        config: &GatewayConfig,
        cluster: &str,
        traffic: &Arc<crate::report::Traffic>,
    ) -> (RouteTable, Vec<String>) {
        let mut problems = Vec::new();
        let mut by_host = FastMap::default();
        let mut by_tcp_port: FastMap<u16, Vec<(String, Arc<Route>)>> = FastMap::default();
        let mut callers_at: FastMap<IpAddr, FastMap<String, Caller>> = FastMap::default();
        let mut http_ports = std::collections::BTreeSet::new();
        for (host, svc) in &config.services {
            http_ports.extend(svc.http_ports.iter().copied().filter(|p| *p != 80));
            for ip in svc.endpoints.get(cluster).into_iter().flatten() {
                let by_gns = callers_at.entry(*ip).or_default();
                let caller = by_gns.entry(svc.gns.clone()).or_default();
                caller.services.push(svc.service.clone());
            }
            let mut rules = Vec::new();
            for (i, rule) in svc.rules.iter().enumerate() {
                match CompiledRule::compile(rule) {
                    Ok(compiled) => rules.push(compiled),
                    Err(e) => problems.push(format!("{host}: rule {i}: {e}")),
                }
            }
            // A peer whose gateways all went silent gets nothing (failover).
            let service = svc.as_seen_by(cluster, &config.silent_clusters);
            let route = Arc::new(Route {
                config: service,
                rules,
                metrics: crate::metrics::RouteMetrics::new(&svc.service, &svc.gns, traffic),
            });
            for tcp in &svc.tcp_ports {
                by_tcp_port
                    .entry(tcp.port)
                    .or_default()
                    .push((host.to_ascii_lowercase(), Arc::clone(&route)));
            }
            by_host.insert(host.to_ascii_lowercase(), route);
        }
        for caller in callers_at
            .values_mut()
            .flat_map(|by_gns| by_gns.values_mut())
        {
            caller.header = http::HeaderValue::from_str(&caller.services.join(",")).ok();
        }
        http_ports.retain(|p| !by_tcp_port.contains_key(p));
        (
            RouteTable {
                cluster: cluster.to_owned(),
                by_host,
                by_tcp_port,
                http_ports,
                callers_at,
            },
            problems,
        )
    }

    /// Who the workload at `ip` (a client in this cluster) is when it calls
    /// into global namespace `gns`; `None` when it is no service's endpoint.
    pub fn caller_at(&self, ip: IpAddr, gns: &str) -> Option<&Caller> {
        self.callers_at.get(&ip)?.get(gns)
    }

    /// The route of a `Host` header value (port and trailing dot ignored).
    pub fn route(&self, host: &str) -> Option<Arc<Route>> {
        // A port only when the name ends in a digit (most carry none).
        let name = match host.as_bytes().last() {
            Some(b) if b.is_ascii_digit() => host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|c| c.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            }),
            _ => host,
        };
        let name = name.trim_end_matches('.');
        // Host names usually arrive in lower case: look up without a copy then.
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_host.get(&name.to_ascii_lowercase()).cloned();
        }
        self.by_host.get(name).cloned()
    }

    /// The route of TCP connections to `port`: the service named by the TLS
    /// server name `sni` when it is one of the port's, else the port's first
    /// (by host name).
    pub fn tcp_route(&self, port: u16, sni: Option<&str>) -> Option<Arc<Route>> {
        let routes = self.by_tcp_port.get(&port)?;
        let named = sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            routes.iter().find(|(host, _)| *host == name)
        });
        named.or_else(|| routes.first()).map(|(_, r)| Arc::clone(r))
    }

    /// The route on TCP `port` of the service called `<service>.<gns>`
    /// (how CONNECT requests between gateways name it).
    pub fn tcp_route_named(&self, port: u16, service_gns: &str) -> Option<Arc<Route>> {
        self.by_tcp_port
            .get(&port)?
            .iter()
            .find(|(_, r)| {
                service_gns
                    .strip_prefix(r.config.service.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    == Some(r.config.gns.as_str())
            })
            .map(|(_, r)| Arc::clone(r))
    }

    /// Whether several services share TCP `port` (so the server name matters).
    pub fn tcp_port_shared(&self, port: u16) -> bool {
        self.by_tcp_port.get(&port).is_some_and(|r| r.len() > 1)
    }

    /// The ports the egress listens on besides its own: every TCP port
    /// with a route, and every HTTP service port but 80.
    pub fn listen_ports(&self) -> std::collections::BTreeSet<u16> {
        self.by_tcp_port
            .keys()
            .copied()
            .chain(self.http_ports.iter().copied())
            .collect()
    }

    /// Whether connections to `port` carry HTTP (routed by `Host`), not
    /// TCP passed through.
    pub fn serves_http_on(&self, port: u16) -> bool {
        self.http_ports.contains(&port)
    }

    /// Where to try a request, in order, given a uniformly random `roll`:
    /// the matching rule's weighted pick (a cluster, or a subset of its
    /// endpoints), then the own cluster, the failover order and every other
    /// cluster with endpoints. Targets without ready endpoints are left out.
    pub fn plan<'a>(
        &'a self,
        route: &'a Route,
        request: &RequestFacts<'_>,
        roll: u64,
    ) -> Vec<Target<'a>> {
        gns_contract::decide::plan(&self.cluster, &route.config, &route.rules, request, roll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderMatcher;
    use http::HeaderMap;
    use std::collections::BTreeMap;

    fn clusters(plan: Vec<Target<'_>>) -> Vec<&str> {
        plan.into_iter().map(|t| t.cluster).collect()
    }
    use crate::config::{HeaderCondition, Rule, WeightedCluster};

    fn config() -> GatewayConfig {
        let mut svc = ServiceConfig {
            gns: "production".into(),
            service: "web".into(),
            ..ServiceConfig::default()
        };
        svc.endpoints
            .insert("east".into(), vec!["10.8.0.1".parse().expect("ip")]);
        svc.endpoints
            .insert("west".into(), vec!["10.9.0.1".parse().expect("ip")]);
        svc.rules = vec![
            Rule {
                headers: vec![HeaderCondition {
                    name: "user-agent".into(),
                    matcher: HeaderMatcher::Regex(".*Mobile.*".into()),
                }],
                destinations: vec![WeightedCluster {
                    subset: None,
                    cluster: "west".into(),
                    weight: 100,
                }],
                ..Rule::default()
            },
            Rule {
                headers: vec![],
                destinations: vec![
                    WeightedCluster {
                        subset: None,
                        cluster: "east".into(),
                        weight: 99,
                    },
                    WeightedCluster {
                        subset: None,
                        cluster: "west".into(),
                        weight: 1,
                    },
                ],
                ..Rule::default()
            },
        ];
        let mut c = GatewayConfig::default();
        c.services
            .insert("web.production.app.acme.com".into(), Arc::new(svc));
        c
    }

    /// The one service of a test config, to change.
    fn only_service(config: &mut GatewayConfig) -> &mut ServiceConfig {
        let host = config.services.keys().next().expect("svc").clone();
        Arc::make_mut(config.services.get_mut(&host).expect("svc"))
    }

    #[test]
    fn http_service_ports_are_listened_on_but_80_and_tcp_ports_stay_tcp() {
        let mut config = config();
        only_service(&mut config).http_ports = vec![80, 8080, 9000];
        let mut db = ServiceConfig {
            gns: "production".into(),
            service: "db".into(),
            ..ServiceConfig::default()
        };
        db.tcp_ports = vec![crate::config::TcpPort {
            port: 9000,
            ..Default::default()
        }];
        config
            .services
            .insert("db.production.app.acme.com".into(), Arc::new(db));
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        assert_eq!(
            table.listen_ports().into_iter().collect::<Vec<_>>(),
            [8080, 9000],
            "80 is the egress listener's own"
        );
        assert!(table.serves_http_on(8080));
        assert!(!table.serves_http_on(9000), "TCP for a service: TCP");
        assert!(!table.serves_http_on(80));
    }

    #[test]
    fn a_silent_peer_gets_nothing_but_a_silent_cluster_serves_itself() {
        let mut silent = config();
        silent.silent_clusters.insert("west".into());
        let (east, _) = RouteTable::new(&silent, "east", &Arc::default());
        let route = east.route("web.production.app.acme.com").expect("route");
        let mut mobile = HeaderMap::new();
        mobile.insert("user-agent", "Foo Mobile Safari".parse().expect("value"));
        assert_eq!(
            clusters(east.plan(&route, &RequestFacts::headers(&mobile), 5)),
            ["east"],
            "the rule's west is skipped"
        );
        // West's own gateway, back before the federation noticed, serves west.
        let (west, _) = RouteTable::new(&silent, "west", &Arc::default());
        let route = west.route("web.production.app.acme.com").expect("route");
        assert_eq!(
            clusters(west.plan(&route, &RequestFacts::headers(&mobile), 5))[0],
            "west"
        );
    }

    #[test]
    fn weights_and_header_rules() {
        let (table, problems) = RouteTable::new(&config(), "east", &Arc::default());
        assert!(problems.is_empty());
        let route = table
            .route("Web.Production.App.Acme.Com:8080")
            .expect("route");
        let mut west = 0;
        for roll in 0..10_000u64 {
            let plan =
                clusters(table.plan(&route, &RequestFacts::headers(&HeaderMap::new()), roll));
            if plan[0] == "west" {
                west += 1;
            }
            assert_eq!(plan.len(), 2, "the other cluster is the fallback");
        }
        assert_eq!(west, 100, "1 in 100 to west");
        let mut mobile = HeaderMap::new();
        mobile.insert("user-agent", "Foo Mobile Safari".parse().expect("value"));
        assert_eq!(
            clusters(table.plan(&route, &RequestFacts::headers(&mobile), 5))[0],
            "west"
        );
    }

    #[test]
    fn callers_are_named_by_own_endpoints_and_checked_by_policy() {
        let config = config();
        let svc = config.services.values().next().expect("svc");
        let own = svc.endpoints[&"east".to_owned()][0];
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let caller = table.caller_at(own, "production").expect("web's endpoint");
        assert_eq!(caller.services, ["web"]);
        assert_eq!(
            caller.header.as_ref().map(|h| h.as_bytes()),
            Some(&b"web"[..])
        );
        assert!(
            table.caller_at(own, "staging").is_none(),
            "services of other global namespaces do not name the caller"
        );
        assert!(
            table
                .caller_at(svc.endpoints[&"west".to_owned()][0], "production")
                .is_none(),
            "another cluster's endpoints do not name local callers"
        );

        let mut restricted = config.clone();
        let svc = only_service(&mut restricted);
        svc.allowed_callers = Some(vec!["api".into()]);
        let (table, _) = RouteTable::new(&restricted, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        assert!(route.admits(&["api"]));
        assert!(
            route.admits(&["web", "api"]),
            "one allowed service is enough"
        );
        assert!(!route.admits(&["web"]));
        assert!(!route.admits::<&str>(&[]), "unnamed callers need `*`");
        let svc = only_service(&mut restricted);
        svc.allowed_callers = Some(vec!["*".into()]);
        let (table, _) = RouteTable::new(&restricted, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        assert!(route.admits::<&str>(&[]));
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        assert!(route.admits(&["anyone"]), "no policy: every caller");
    }

    #[test]
    fn clusters_without_endpoints_are_skipped() {
        let mut config = config();
        let svc = only_service(&mut config);
        svc.endpoints.get_mut("east").expect("east").clear();
        svc.failover = vec!["west".into()];
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        assert_eq!(
            clusters(table.plan(&route, &RequestFacts::headers(&HeaderMap::new()), 0)),
            ["west"]
        );
    }

    #[test]
    fn bad_regex_is_a_problem_not_a_failure() {
        let mut config = config();
        let svc = only_service(&mut config);
        svc.rules[0].headers[0].matcher = HeaderMatcher::Regex("(".into());
        let (table, problems) = RouteTable::new(&config, "east", &Arc::default());
        assert_eq!(problems.len(), 1);
        let route = table.route("web.production.app.acme.com").expect("route");
        assert!(
            !table
                .plan(&route, &RequestFacts::headers(&HeaderMap::new()), 0)
                .is_empty()
        );
    }

    #[test]
    fn source_path_and_method_conditions_must_all_hold() {
        let mut config = config();
        let svc = only_service(&mut config);
        svc.rules[0] = Rule {
            source: Some("api".into()),
            path: Some(HeaderMatcher::Regex("^(?:/v[0-9]+/orders(/.*)?)$".into())),
            method: Some("POST".into()),
            destinations: vec![WeightedCluster {
                subset: None,
                cluster: "west".into(),
                weight: 100,
            }],
            ..Rule::default()
        };
        let (table, problems) = RouteTable::new(&config, "east", &Arc::default());
        assert!(problems.is_empty(), "{problems:?}");
        let route = table.route("web.production.app.acme.com").expect("route");
        let headers = HeaderMap::new();
        let api = ["api".to_owned()];
        let post = http::Method::POST;
        let request = RequestFacts {
            method: Some(&post),
            path: Some("/v2/orders/7"),
            headers: &headers,
            callers: &api,
        };
        // Roll 0 falls on east in the 99/1 catch-all.
        assert_eq!(clusters(table.plan(&route, &request, 0))[0], "west");
        let get = http::Method::GET;
        for other in [
            RequestFacts {
                method: Some(&get),
                ..request
            },
            RequestFacts {
                path: Some("/v2/orderz"),
                ..request
            },
            RequestFacts {
                callers: &[],
                ..request
            },
            RequestFacts {
                callers: &["web".to_owned()],
                ..request
            },
            // TCP: no method or path.
            RequestFacts {
                method: None,
                path: None,
                ..request
            },
        ] {
            assert_eq!(
                clusters(table.plan(&route, &other, 0))[0],
                "east",
                "{other:?}"
            );
        }
        // A caller that is several services' endpoint matches by any of them.
        let both = ["web".to_owned(), "api".to_owned()];
        let request = RequestFacts {
            callers: &both,
            ..request
        };
        assert_eq!(clusters(table.plan(&route, &request, 0))[0], "west");
        // A prefix is a plain string prefix, an exact path the whole path.
        let svc = only_service(&mut config);
        svc.rules[0].path = Some(HeaderMatcher::Prefix("/v2/".into()));
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        assert_eq!(clusters(table.plan(&route, &request, 0))[0], "west");
        let svc = only_service(&mut config);
        svc.rules[0].path = Some(HeaderMatcher::Exact("/v2/orders".into()));
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        assert_eq!(clusters(table.plan(&route, &request, 0))[0], "east");
    }

    #[test]
    fn a_split_between_subsets_picks_endpoints_inside_one_cluster() {
        let mut config = config();
        let svc = only_service(&mut config);
        let (stable, canary) = ("env=us-prod,version=v1.5", "version=v2.0-alpha");
        svc.endpoints.insert(
            "east".into(),
            vec![
                "10.8.0.1".parse().expect("ip"),
                "10.8.0.2".parse().expect("ip"),
            ],
        );
        svc.subsets = BTreeMap::from([
            (
                stable.to_owned(),
                [("east".to_owned(), vec!["10.8.0.1".parse().expect("ip")])]
                    .into_iter()
                    .collect(),
            ),
            (
                canary.to_owned(),
                [("east".to_owned(), vec!["10.8.0.2".parse().expect("ip")])]
                    .into_iter()
                    .collect(),
            ),
        ]);
        svc.rules = vec![Rule {
            destinations: vec![
                WeightedCluster {
                    cluster: "east".into(),
                    subset: Some(stable.into()),
                    weight: 99,
                },
                WeightedCluster {
                    cluster: "east".into(),
                    subset: Some(canary.into()),
                    weight: 1,
                },
            ],
            ..Rule::default()
        }];
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        let no_headers = HeaderMap::new();
        let mut picks = BTreeMap::new();
        for roll in 0..10_000u64 {
            let plan = table.plan(&route, &RequestFacts::headers(&no_headers), roll);
            *picks.entry(plan[0].subset).or_insert(0) += 1;
            // Then any endpoint of east, then west.
            assert_eq!(plan[1], Target::cluster("east"));
        }
        assert_eq!(picks[&Some(stable)], 9_900);
        assert_eq!(picks[&Some(canary)], 100);
        assert_eq!(
            route.endpoints_of("east", Some(canary)),
            Some(&["10.8.0.2".parse().expect("ip")][..])
        );
        // The canary's endpoints gone: its share goes to east as a whole.
        let svc = only_service(&mut config);
        svc.subsets.get_mut(canary).expect("canary").clear();
        let (table, _) = RouteTable::new(&config, "east", &Arc::default());
        let route = table.route("web.production.app.acme.com").expect("route");
        let plan = table.plan(&route, &RequestFacts::headers(&no_headers), 9_999);
        assert_eq!(plan[0], Target::cluster("east"));
        // A request for it (or for a subset this config doesn't know) is
        // served by the cluster's endpoints.
        let whole = route.endpoints_of("east", None);
        assert_eq!(route.serving_endpoints("east", Some(canary)), whole);
        assert_eq!(route.serving_endpoints("east", Some("version=v9")), whole);
        assert_eq!(
            route.serving_endpoints("east", Some(stable)),
            Some(&["10.8.0.1".parse().expect("ip")][..])
        );
    }

    #[test]
    fn a_destination_without_a_cluster_takes_its_subset_anywhere_own_cluster_first() {
        let mut config = config();
        let svc = only_service(&mut config);
        let key = "version=v2";
        svc.subsets = BTreeMap::from([(
            key.to_owned(),
            [
                ("east".to_owned(), vec!["10.8.0.9".parse().expect("ip")]),
                ("west".to_owned(), vec!["10.9.0.9".parse().expect("ip")]),
            ]
            .into_iter()
            .collect(),
        )]);
        svc.rules = vec![Rule {
            destinations: vec![WeightedCluster {
                cluster: String::new(),
                subset: Some(key.into()),
                weight: 100,
            }],
            ..Rule::default()
        }];
        let no_headers = HeaderMap::new();
        for (own, other) in [("east", "west"), ("west", "east")] {
            let (table, _) = RouteTable::new(&config, own, &Arc::default());
            let route = table.route("web.production.app.acme.com").expect("route");
            let plan = table.plan(&route, &RequestFacts::headers(&no_headers), 7);
            assert_eq!(
                plan[..2],
                [
                    Target {
                        cluster: own,
                        subset: Some(key)
                    },
                    Target {
                        cluster: other,
                        subset: Some(key)
                    }
                ]
            );
        }
    }
}
