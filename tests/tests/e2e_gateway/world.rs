//! What the scenario's steps share: both clusters, the federation on a
//! store backend and a gateway per cluster, set up with discovery done.

use super::*;

/// Everything the scenario's steps share.
pub(crate) struct World {
    pub(crate) dir: tempfile::TempDir,
    /// The store (a Postgres database lives as long as this).
    pub(crate) _backend: StoreBackend,
    pub(crate) base: String,
    pub(crate) fed: Proc,
    /// East's API server, kept running for discovery.
    pub(crate) _east: TestApiServer,
    pub(crate) west: TestApiServer,
    pub(crate) west_port: u16,
    pub(crate) db_port: u16,
    pub(crate) flaky: Arc<Script>,
    pub(crate) slow: Arc<Script>,
    pub(crate) echo_east: Arc<Echo>,
    pub(crate) echo_west: Arc<Echo>,
    /// The gRPC health service behind west (a tonic server), and its port.
    pub(crate) grpc: tonic_health::server::HealthReporter,
    pub(crate) grpc_port: u16,
    pub(crate) ingress: BTreeMap<&'static str, u16>,
    pub(crate) gateways: BTreeMap<&'static str, GatewayProc>,
    /// Spans the test's OTLP receiver got from the gateways and the federation.
    pub(crate) spans: Spans,
    /// The federation's trust bundle.
    pub(crate) bundle_roots: Vec<CertificateDer<'static>>,
    /// A certificate of east's gateway (chain, key), and when it was issued.
    pub(crate) east_cert: Option<(Vec<CertificateDer<'static>>, Arc<rcgen::KeyPair>, Instant)>,
}

impl World {
    pub(crate) fn east_gw(&self) -> &GatewayProc {
        &self.gateways["east"]
    }

    pub(crate) fn west_gw(&self) -> &GatewayProc {
        &self.gateways["west"]
    }

    pub(crate) fn west_ingress(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.ingress["west"])
            .parse()
            .expect("addr")
    }

    /// Waits until the federation's gateway config satisfies `ready`, then
    /// until every gateway runs that config (or a newer one): configs reach
    /// gateways at slightly different times, and a step that needs both
    /// sides to agree (a subset named across the hop) must not start before.
    pub(crate) async fn gateways_run_config(&self, what: &str, ready: impl Fn(&Value) -> bool) {
        let mut version = 0;
        eventually(
            &format!("the federation's gateway config to have {what}"),
            Duration::from_secs(15),
            async || {
                let (status, config) = api(
                    reqwest::Method::GET,
                    &format!("{}/v1/config/gateways/east", self.base),
                    None,
                )
                .await;
                if status == 200 && ready(&config) {
                    version = config["version"].as_u64().unwrap_or(0);
                    Ok(())
                } else {
                    Err(format!("{status}"))
                }
            },
        )
        .await;
        eventually(
            &format!("every gateway to run config {version} ({what})"),
            Duration::from_secs(15),
            async || {
                for (name, gw) in &self.gateways {
                    let running = metric(gw.admin, "gns_gateway_config_version").await;
                    if running < version {
                        return Err(format!("{name} runs {running}"));
                    }
                }
                Ok(())
            },
        )
        .await;
    }

    pub(crate) async fn put_routing(&self, service: &str, routing: Value) {
        let (status, body) = api(
            reqwest::Method::PUT,
            &format!(
                "{}/v1/global-namespaces/production/services/{service}/routing",
                self.base
            ),
            Some(routing),
        )
        .await;
        assert!(status == 200 || status == 201, "{status} {body}");
    }

    pub(crate) async fn post_policy(&self, policy: Value) {
        let (status, body) = api(
            reqwest::Method::POST,
            &format!(
                "{}/v1/global-namespaces/production/access-policies",
                self.base
            ),
            Some(policy),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    pub(crate) async fn delete_policy(&self, name: &str) {
        let (status, body) = api(
            reqwest::Method::DELETE,
            &format!(
                "{}/v1/global-namespaces/production/access-policies/{name}",
                self.base
            ),
            None,
        )
        .await;
        assert!(status == 204 || status == 200, "{status} {body}");
    }

    /// Waits until east's gateway config lists `service`'s endpoints in `cluster`.
    pub(crate) async fn east_config_has(&self, service: &str, cluster: &str) {
        let host = format!("{service}.production.app.acme.com");
        eventually(
            &format!("east's gateway config to list {service} in {cluster}"),
            Duration::from_secs(20),
            async || {
                let (status, cfg) = api(
                    reqwest::Method::GET,
                    &format!("{}/v1/config/gateways/east", self.base),
                    None,
                )
                .await;
                let eps = &cfg["services"][host.as_str()]["endpoints"][cluster];
                if status == 200 && eps.as_array().is_some_and(|a| !a.is_empty()) {
                    Ok(())
                } else {
                    Err(format!("{status} {}", cfg["services"][host.as_str()]))
                }
            },
        )
        .await;
    }
}

/// A service with one ready endpoint at `ip:port` in `api`'s namespace `shop`.
pub(crate) fn one_endpoint_service(
    api: &TestApiServer,
    name: &str,
    port_name: &str,
    ip: &str,
    port: u16,
) {
    api.apply::<Service>(&service("shop", name, &[("app", name)], &[(port_name, 80)]))
        .expect("service");
    api.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        name,
        &format!("{name}-1"),
        &[(ip, true, true, false, None)],
        &[(port_name, i32::from(port))],
    ))
    .expect("slice");
}

pub(crate) fn gateway_args(
    w_base: &str,
    name: &str,
    token: String,
    gw: (SocketAddr, SocketAddr, SocketAddr),
    ingress: u16,
    state: &std::path::Path,
) -> Vec<String> {
    let (egress, admin, public) = gw;
    vec![
        "--federation".into(),
        w_base.to_owned(),
        "--federation-ca".into(),
        gns_tests::ca_for(w_base),
        "--cluster".into(),
        name.into(),
        "--join-token".into(),
        token,
        "--egress-listen".into(),
        egress.to_string(),
        "--ingress-listen".into(),
        format!("127.0.0.1:{ingress}"),
        "--admin-listen".into(),
        admin.to_string(),
        "--public-listen".into(),
        public.to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        // Two data-path workers whatever the machine: SO_REUSEPORT
        // listeners and per-worker pools are on the tested path.
        "--worker-threads".into(),
        "2".into(),
    ]
}

/// Upstreams, both clusters, the federation on `backend` and a gateway per
/// cluster, with discovery done.
pub(crate) async fn setup(backend: StoreBackend) -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (east_port, west_port) = (upstream("east").await, upstream("west").await);
    let east = member("east").await;
    let west = member("west").await;
    for (api, port) in [(&east, east_port), (&west, west_port)] {
        api.apply::<Service>(&service("shop", "web", &[("app", "web")], &[("http", 80)]))
            .expect("service");
        api.apply::<EndpointSlice>(&web_slice(true, port))
            .expect("slice");
    }
    // Two HTTP services in west only, for retries and timeouts: flaky and slow.
    let (flaky_port, flaky) = scripted("flaky").await;
    let (slow_port, slow) = scripted("slow").await;
    one_endpoint_service(&west, "flaky", "http", "127.0.0.1", flaky_port);
    one_endpoint_service(&west, "slow", "http", "127.0.0.1", slow_port);
    // Body echoes: echo-west in west only, echo-east in east only.
    let (echo_west_port, echo_west) = echo().await;
    let (echo_east_port, echo_east) = echo().await;
    one_endpoint_service(&west, "echo-west", "http", "127.0.0.1", echo_west_port);
    one_endpoint_service(&east, "echo-east", "http", "127.0.0.1", echo_east_port);
    // shopfront in west: three versions of it, one pod each, the pods'
    // labels the seed's (version, env), each endpoint on its own address.
    let shopfront_port = free_port();
    for (pod, ip, version, env) in SHOPFRONT_PODS {
        upstream_at(ip, shopfront_port, version).await;
        let mut labels = json!({"app": "shopfront", "version": version});
        if let Some(env) = env {
            labels["env"] = json!(env);
        }
        west.apply::<Pod>(
            &serde_json::from_value(json!({
                "metadata": {"name": pod, "namespace": "shop", "labels": labels},
                "spec": {"containers": [{"name": "shopfront", "image": "registry.test/shopfront"}]}}))
            .expect("pod"),
        )
        .expect("pod");
    }
    west.apply::<Service>(&service(
        "shop",
        "shopfront",
        &[("app", "shopfront")],
        &[("http", 80)],
    ))
    .expect("shopfront service");
    let mut slice = endpoint_slice(
        "shop",
        "shopfront",
        "shopfront-1",
        &SHOPFRONT_PODS.map(|(_, ip, ..)| (ip, true, true, false, None)),
        &[("http", i32::from(shopfront_port))],
    );
    for (endpoint, (pod, ..)) in slice.endpoints.iter_mut().zip(SHOPFRONT_PODS) {
        endpoint.target_ref = Some(k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: Some("shop".into()),
            ..Default::default()
        });
    }
    west.apply::<EndpointSlice>(&slice)
        .expect("shopfront slice");
    // A WebSocket echo server in west only.
    let ws_port = websocket_echo().await;
    one_endpoint_service(&west, "chat", "http", "127.0.0.1", ws_port);
    // A live feed of server-sent events in west only.
    let sse_port = sse().await;
    one_endpoint_service(&west, "events", "http", "127.0.0.1", sse_port);
    // An upstream answering the traceparent it got, in west only.
    let traced_port = traceparent_upstream().await;
    one_endpoint_service(&west, "traced", "http", "127.0.0.1", traced_port);
    // Bulk transfers (a sink and a source) in west only.
    let bulk_port = bulk().await;
    one_endpoint_service(&west, "bulk", "http", "127.0.0.1", bulk_port);
    // A gRPC service (tonic's health service) in west only, on a port named grpc.
    let (grpc, grpc_port) = grpc_upstream().await;
    one_endpoint_service(&west, "health", "grpc", "127.0.0.1", grpc_port);
    // East's clients at API_CLIENT_IP are endpoints of api.
    one_endpoint_service(&east, "api", "http", API_CLIENT_IP, east_port);
    // A TCP service, db, in west only: clients dial port `db_port` on their egress.
    let (db_port, echo_port) = (free_port(), tcp_echo("west").await);
    west.apply::<Service>(&service(
        "shop",
        "db",
        &[("app", "db")],
        &[("pg", i32::from(db_port))],
    ))
    .expect("db service");
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "db",
        "db-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("pg", i32::from(echo_port))],
    ))
    .expect("db slice");
    // A second TCP service on the same port, told apart by the TLS server name.
    let secure_echo = tcp_echo("secure").await;
    west.apply::<Service>(&service(
        "shop",
        "secure",
        &[("app", "secure")],
        &[("tls", i32::from(db_port))],
    ))
    .expect("secure service");
    west.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "secure",
        "secure-1",
        &[("127.0.0.1", true, true, false, None)],
        &[("tls", i32::from(secure_echo))],
    ))
    .expect("secure slice");
    // East also lists an endpoint that refuses connections: it is skipped
    // (another endpoint is tried) and ejected, and no request fails.
    east.apply::<EndpointSlice>(&endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[
            ("127.0.0.1", true, true, false, Some("a")),
            ("127.0.0.3", true, true, false, Some("a")),
        ],
        &[("http", i32::from(east_port))],
    ))
    .expect("slice");

    // Every process exports its spans to the test's OTLP receiver.
    let (otlp_port, spans) = otlp_receiver().await;
    let otlp = format!("http://127.0.0.1:{otlp_port}");
    // Short-lived certificates: gateways renew every 8 s during the test.
    let mut flags = vec![
        "--trust-domain".to_owned(),
        "acme.test".to_owned(),
        "--gateway-cert-lifetime".to_owned(),
        "12s".to_owned(),
        "--otlp-endpoint".to_owned(),
        otlp.clone(),
    ];
    flags.extend(backend.federation_args());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (fed, base) = start_federation(dir.path(), TOKEN, &flags).await;

    let ingress: BTreeMap<&'static str, u16> =
        [("east", free_port()), ("west", free_port())].into();
    for (name, kube) in [("east", &east), ("west", &west)] {
        let (status, body) = api(
            reqwest::Method::POST,
            &format!("{base}/v1/clusters"),
            Some(json!({"name": name,
                "kubernetes": {"server": kube.url(), "token": "member-token",
                               "caData": base64::engine::general_purpose::STANDARD.encode(kube.ca_pem())},
                "gateway": {"ingressAddress": format!("127.0.0.1:{}", ingress[name]), "egressAddress": "127.0.0.1"}})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = api(
        reqwest::Method::POST,
        &format!("{base}/v1/global-namespaces"),
        Some(json!({"name": "production", "domain": "production.app.acme.com",
                    "members": [{"cluster": "east", "namespace": "shop"}, {"cluster": "west", "namespace": "shop"}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let mut gateways = BTreeMap::new();
    for name in ["east", "west"] {
        let token = join_token(&base, name).await;
        // Distinct egress addresses: each gateway also listens there on the TCP service ports.
        let egress_ip = if name == "east" {
            "127.0.0.2"
        } else {
            "127.0.0.4"
        };
        let egress: SocketAddr = format!("{egress_ip}:{}", free_port())
            .parse()
            .expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut args = gateway_args(
            &base,
            name,
            token,
            (egress, admin, public),
            ingress[name],
            &dir.path().join(format!("gw-{name}")),
        );
        args.extend(["--otlp-endpoint".to_owned(), otlp.clone()]);
        let log = dir.path().join(format!("gateway-{name}.log"));
        let process = Proc::spawn(&binary("gns-gateway"), &args, log.clone());
        gateways.insert(
            name,
            GatewayProc {
                egress,
                public,
                admin,
                args,
                log,
                process,
            },
        );
    }
    let world = World {
        dir,
        _backend: backend,
        base,
        fed,
        _east: east,
        west,
        west_port,
        db_port,
        flaky,
        slow,
        echo_east,
        echo_west,
        grpc,
        grpc_port,
        ingress,
        gateways,
        spans,
        bundle_roots: Vec::new(),
        east_cert: None,
    };
    // Both gateways ready, and discovery has put both clusters' endpoints in their config.
    world.east_config_has("web", "east").await;
    world.east_config_has("web", "west").await;
    eventually(
        "both gateways to be ready",
        Duration::from_secs(30),
        async || {
            for gateway in world.gateways.values() {
                let ready = gns_tests::client()
                    .build()
                    .expect("client")
                    .get(format!("http://{}/readyz", gateway.admin))
                    .send()
                    .await;
                if !ready.as_ref().is_ok_and(|r| r.status().is_success()) {
                    return Err(format!(
                        "{ready:?}; its log:\n{}",
                        std::fs::read_to_string(&gateway.log).unwrap_or_default()
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    world
}
