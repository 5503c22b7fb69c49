//! Rules beyond headers, and subsets: matches on the calling service, the
//! path and the method, tried by precedence; the seed's canary split
//! between pods by their version labels, and the routing's status of what
//! each destination reaches.

use super::*;

/// Rules on the calling service, the path, the method and the seed's
/// iPhone regex, tried by precedence and then as written, decide where
/// east's egress sends each request; the 99/1 routing is put back after.
pub(crate) async fn source_path_method_and_precedence_rules_route(w: &World) {
    let east_gw = w.east_gw();
    w.east_config_has("api", "east").await;
    let west = json!([{"cluster": "west", "weight": 100}]);
    let east = json!([{"cluster": "east", "weight": 100}]);
    w.put_routing(
        "web",
        json!({"rules": [
            {"match": {"source": "api"}, "destinations": west},
            {"match": {"path": {"prefix": "/orders/"}, "method": "POST"}, "destinations": west},
            {"match": {"headers": [{"name": "user-agent", "regex": "^(.*?;)?(iPhone)(;.*)?$"}]},
             "precedence": 5, "destinations": west},
            {"match": {"path": {"exact": "/status"}}, "precedence": 9, "destinations": east},
            {"destinations": east}]}),
    )
    .await;
    let send = async |from: &str, method: reqwest::Method, path: &str, agent: &str| {
        let client = gns_tests::client()
            .local_address(from.parse::<std::net::IpAddr>().expect("ip"))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        status_and_body(
            client
                .request(method, format!("http://{}{path}", east_gw.egress))
                .header("host", HOST)
                .header("user-agent", agent),
        )
        .await
    };
    let iphone = "GNSApp/2.3;iPhone;iOS/17.1";
    let android = "GNSApp/2.3;Android;14";
    eventually(
        "api's calls to land in west",
        Duration::from_secs(15),
        async || match send(API_CLIENT_IP, reqwest::Method::GET, "/hello", android).await {
            ok if ok == "200 west" => Ok(()),
            other => Err(other),
        },
    )
    .await;
    use reqwest::Method as M;
    for (from, method, path, agent, lands, why) in [
        (
            "127.0.0.1",
            M::GET,
            "/hello",
            android,
            "east",
            "no rule holds: the catch-all",
        ),
        (
            "127.0.0.1",
            M::POST,
            "/orders/7",
            android,
            "west",
            "path prefix and method",
        ),
        (
            "127.0.0.1",
            M::GET,
            "/orders/7",
            android,
            "east",
            "the method does not hold",
        ),
        (
            "127.0.0.1",
            M::POST,
            "/ordersx",
            android,
            "east",
            "the prefix does not hold",
        ),
        (
            "127.0.0.1",
            M::GET,
            "/hello",
            iphone,
            "west",
            "the seed's iPhone regex",
        ),
        (
            "127.0.0.1",
            M::GET,
            "/status",
            iphone,
            "east",
            "precedence 9 before 5",
        ),
        (
            API_CLIENT_IP,
            M::GET,
            "/status",
            android,
            "east",
            "precedence before order",
        ),
        (
            API_CLIENT_IP,
            M::GET,
            "/hello",
            android,
            "west",
            "the calling service",
        ),
    ] {
        assert_eq!(
            send(from, method.clone(), path, agent).await,
            format!("200 {lands}"),
            "{method} {path} from {from} with {agent}: {why}"
        );
    }
    // The next steps expect the 99/1 canary with the mobile rule.
    w.put_routing(
        "web",
        json!({"rules": [
            {"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]},
             "destinations": [{"cluster": "west", "weight": 100}]},
            {"destinations": [{"cluster": "east", "weight": 99}, {"cluster": "west", "weight": 1}]}]}),
    )
    .await;
    eventually(
        "the canary routing to be back",
        Duration::from_secs(15),
        async || match send(API_CLIENT_IP, reqwest::Method::GET, "/status", "Foo Mobile").await {
            ok if ok == "200 west" => Ok(()),
            other => Err(other),
        },
    )
    .await;
}

/// The seed's canary, literally: 99 % to pods labelled `version: v1.5,
/// env: us-prod`, 1 % to `version: v2.0-alpha, env: us-staging`, and the
/// iPhone User-Agent to `version: canary`, all inside west and reached
/// through east's egress (the subset crosses to west's gateway with the
/// request). 10,000 requests.
pub(crate) async fn the_seeds_canary_splits_between_version_subsets(w: &World) {
    let east_gw = w.east_gw();
    w.put_routing(
        "shopfront",
        json!({"rules": [
            {"match": {"headers": [{"name": "user-agent", "regex": "^(.*?;)?(iPhone)(;.*)?$"}]},
             "precedence": 2,
             // No cluster: wherever pods labelled canary are (west here).
             "destinations": [{"tags": {"version": "canary"}, "weight": 100}]},
            {"destinations": [
                {"cluster": "west", "tags": {"version": "v1.5", "env": "us-prod"}, "weight": 99},
                {"cluster": "west", "tags": {"version": "v2.0-alpha", "env": "us-staging"}, "weight": 1}]}]}),
    )
    .await;
    // Both gateways must know the subsets: east names them, west serves them.
    w.gateways_run_config("shopfront's subsets", |config| {
        config["services"][SHOPFRONT_HOST]["subsets"]
            .as_object()
            .is_some_and(|s| s.len() == 3)
    })
    .await;
    let client = gns_tests::client()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let get = async |agent: &str| {
        status_and_body(
            client
                .get(format!("http://{}/", east_gw.egress))
                .header("host", SHOPFRONT_HOST)
                .header("user-agent", agent),
        )
        .await
    };
    let iphone = "ShopApp/3.1;iPhone;iOS/17.1";
    eventually(
        "the iPhone app to reach the canary pods",
        Duration::from_secs(15),
        async || match get(iphone).await {
            ok if ok == "200 canary" => Ok(()),
            other => Err(other),
        },
    )
    .await;
    let mut versions: BTreeMap<String, u32> = BTreeMap::new();
    let total = 10_000;
    for _ in 0..total {
        *versions.entry(get("curl/8").await).or_default() += 1;
    }
    eprintln!("the seed's canary over {total} requests: {versions:?}");
    let alpha = versions.get("200 v2.0-alpha").copied().unwrap_or(0);
    let stable = versions.get("200 v1.5").copied().unwrap_or(0);
    assert_eq!(
        alpha + stable,
        total,
        "only the two subsets answer: {versions:?}"
    );
    // Expected 100 of 10,000 (sd ~10); outside 55..=150 happens to a
    // correct split less than once in 10^5 runs.
    assert!(
        (55..=150).contains(&alpha),
        "about 1 % to v2.0-alpha, got {alpha}: {versions:?}"
    );
    for _ in 0..20 {
        assert_eq!(
            get(iphone).await,
            "200 canary",
            "every iPhone request to the canary"
        );
    }
    // The routing's status says what each destination reaches: here every
    // one a pod; a version no pod runs is named as unmatched.
    let routing_url = format!(
        "{}/v1/global-namespaces/production/services/shopfront/routing",
        w.base
    );
    let (_, routing) = api(reqwest::Method::GET, &routing_url, None).await;
    let reached: Vec<u64> = routing["status"]["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| d["readyEndpoints"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(reached, [1, 1, 1], "{routing}");
    assert_eq!(routing["status"]["unmatched"], json!([]), "{routing}");
    w.put_routing(
        "shopfront",
        json!({"rules": [{"destinations": [
            {"cluster": "west", "tags": {"version": "v1.5", "env": "us-prod"}, "weight": 99},
            {"cluster": "west", "subset": "v3", "weight": 1}]}]}),
    )
    .await;
    eventually(
        "the status to name the destination without endpoints",
        Duration::from_secs(15),
        async || {
            let (_, routing) = api(reqwest::Method::GET, &routing_url, None).await;
            if routing["status"]["unmatched"]
                == json!(["rules[0].destinations[1] selects no ready endpoint"])
            {
                Ok(())
            } else {
                Err(routing["status"].to_string())
            }
        },
    )
    .await;
}
