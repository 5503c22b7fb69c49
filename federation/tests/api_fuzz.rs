//! Property test: random JSON (arbitrary values, and valid bodies with random
//! fields replaced) thrown at every create/replace endpoint never gets a 5xx
//! and never panics the server.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use gns_federation::api::{self, AppState, Authenticator};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z0-9.:/_-]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just("east"),
            Just("10.8.0.0/16"),
            Just("2s"),
            Just("(.*"),
            Just("production.app.acme.com"),
            Just("5xx")
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-zA-Z]{1,10}",
                    Just("name".to_owned()),
                    Just("domain".to_owned()),
                    Just("rules".to_owned()),
                    Just("destinations".to_owned()),
                    Just("weight".to_owned()),
                    Just("cluster".to_owned()),
                    Just("kubernetes".to_owned()),
                    Just("resourceVersion".to_owned()),
                    Just("ttl".to_owned()),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_bodies() -> Vec<(&'static str, Method, Value)> {
    vec![
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "north", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}, "networks": ["10.10.0.0/16"], "gateway": {"ingressAddress": "203.0.113.30:15443", "egressAddress": "10.10.0.53"}}),
        ),
        (
            "/v1/clusters/east",
            Method::PUT,
            json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443"}}),
        ),
        (
            "/v1/global-namespaces",
            Method::POST,
            json!({"name": "staging", "domain": "staging.acme.com", "members": [{"cluster": "east", "namespace": "shop"}]}),
        ),
        (
            "/v1/global-namespaces/production",
            Method::PUT,
            json!({"name": "production", "domain": "production.app.acme.com", "members": [{"cluster": "east", "namespace": "shop"}]}),
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]}, "destinations": [{"cluster": "east", "weight": 100}]}, {"destinations": [{"cluster": "east", "weight": 100}]}], "retries": {"attempts": 2, "on": ["5xx"], "perTryTimeout": "100ms"}, "timeout": "1s", "failover": ["east"]}),
        ),
        (
            "/v1/global-namespaces/production/external-workloads",
            Method::POST,
            json!({"name": "vm", "service": "db", "address": "192.0.2.10", "ports": [{"name": "pg", "port": 5432}], "ttl": "30s"}),
        ),
        (
            "/v1/global-namespaces/production/access-policies",
            Method::POST,
            json!({"name": "p", "from": ["web"], "to": "api", "action": "allow"}),
        ),
        (
            "/v1/tokens",
            Method::POST,
            json!({"name": "t", "role": "viewer"}),
        ),
    ]
}

/// Replaces the value at a random path of `body` with `replacement`.
fn mutate(body: &mut Value, choices: &[usize], replacement: Value) {
    let Some((choice, rest)) = choices.split_first() else {
        *body = replacement;
        return;
    };
    let child = match body {
        Value::Object(m) if !m.is_empty() => {
            let key = m.keys().nth(choice % m.len()).cloned().expect("key");
            m.get_mut(&key)
        }
        Value::Array(a) if !a.is_empty() => {
            let len = a.len();
            a.get_mut(choice % len)
        }
        _ => None,
    };
    match child {
        Some(child) => mutate(child, rest, replacement),
        None => *body = replacement,
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _backend: support::Backend,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, backend) = rt.block_on(async {
        let backend = support::Backend::sqlite().await;
        let app = api::router(AppState::new(Arc::clone(&backend.store), Authenticator::new("t")));
        for (path, body) in [
            ("/v1/clusters", json!({"name": "east", "kubernetes": {"server": "https://10.0.0.1:6443", "token": "t"}})),
            ("/v1/global-namespaces", json!({"name": "production", "domain": "production.app.acme.com"})),
        ] {
            let status = send(&app, Method::POST, path, body.to_string()).await;
            assert!(status < 300, "seed {path}: {status}");
        }
        (app, backend)
    });
    Fixture {
        rt,
        app,
        _backend: backend,
    }
}

async fn send(app: &axum::Router, method: Method, path: &str, body: String) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", "Bearer t")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    app.clone()
        .oneshot(req)
        .await
        .expect("infallible")
        .status()
        .as_u16()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn random_bodies_never_get_5xx(which in 0usize..8, body in arb_json()) {
        let fx = fixture_once();
        let (path, method, _) = valid_bodies().swap_remove(which);
        let status = fx.rt.block_on(send(&fx.app, method.clone(), path, body.to_string()));
        prop_assert!(status < 500, "{} {} with {} -> {}", method, path, body, status);
    }

    #[test]
    fn mutated_valid_bodies_never_get_5xx(which in 0usize..8, choices in prop::collection::vec(any::<usize>(), 1..5), replacement in arb_json()) {
        let fx = fixture_once();
        let (path, method, mut body) = valid_bodies().swap_remove(which);
        mutate(&mut body, &choices, replacement);
        let status = fx.rt.block_on(send(&fx.app, method.clone(), path, body.to_string()));
        prop_assert!(status < 500, "{} {} with {} -> {}", method, path, body, status);
    }

    #[test]
    fn random_bytes_never_get_5xx(which in 0usize..8, bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let fx = fixture_once();
        let (path, method, _) = valid_bodies().swap_remove(which);
        let req = Request::builder().method(method.clone()).uri(path).header("authorization", "Bearer t").body(Body::from(bytes)).expect("request");
        let status = fx.rt.block_on(fx.app.clone().oneshot(req)).expect("infallible").status().as_u16();
        prop_assert!(status < 500, "{} {} -> {}", method, path, status);
    }
}

fn fixture_once() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(fixture)
}
