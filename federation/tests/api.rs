//! API tests through the real router (`Router::oneshot`) on a real store:
//! every route's success path, every validation error class, auth,
//! conflicts and paging. Each scenario runs twice, as `<scenario>_on_sqlite`
//! on a fresh SQLite file and as `<scenario>_on_postgres` on a fresh Postgres
//! database (`GNS_TEST_DATABASE_URL`). The 503 path, taking the database
//! away under the running API, is on Postgres only.

mod support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gns_federation::api::{self, AppState, Authenticator};
use serde_json::{Value, json};
use support::Backend;
use tower::ServiceExt;

const ADMIN: &str = "admin-test-token";

struct Api {
    app: Router,
    backend: Backend,
}

impl Api {
    fn on(backend: Backend) -> Api {
        let state = AppState::new(Arc::clone(&backend.store), Authenticator::new(ADMIN));
        Api {
            app: api::router(state),
            backend,
        }
    }

    /// The store's backend as `/readyz` names it.
    fn store_name(&self) -> &'static str {
        if self.backend.db.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// Drops the router and the store, then the Postgres database (if any).
    async fn cleanup(self) {
        drop(self.app);
        self.backend.cleanup().await;
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, Body::from))
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(
            method,
            path,
            Some(ADMIN),
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    async fn seed(&self) {
        self.ok(
            Method::POST,
            "/v1/clusters",
            Some(cluster("east", "10.8.0.0/16")),
        )
        .await;
        self.ok(
            Method::POST,
            "/v1/clusters",
            Some(cluster("west", "10.9.0.0/16")),
        )
        .await;
        self.ok(Method::POST, "/v1/global-namespaces", Some(gns()))
            .await;
    }
}

fn cluster(name: &str, net: &str) -> Value {
    json!({"name": name, "labels": {"region": "us-east-1"},
           "kubernetes": {"server": "https://10.0.0.1:6443", "token": format!("secret-{name}")},
           "networks": [net],
           "gateway": {"ingressAddress": "203.0.113.10:15443", "egressAddress": "10.8.0.53", "publicAddress": "198.51.100.10"}})
}

fn gns() -> Value {
    json!({"name": "production", "domain": "production.app.acme.com", "defaultAccess": "allow",
           "members": [{"cluster": "east", "namespace": "shop"},
                       {"cluster": "west", "namespace": "shop", "selector": {"app": "web"}}]})
}

fn routing() -> Value {
    json!({"rules": [{"match": {"headers": [{"name": "user-agent", "regex": ".*Mobile.*"}]},
                      "destinations": [{"cluster": "west", "weight": 100}]},
                     {"destinations": [{"cluster": "east", "weight": 99}, {"cluster": "west", "weight": 1}]}],
           "retries": {"attempts": 3, "on": ["5xx", "connect-failure"], "perTryTimeout": "500ms"},
           "timeout": "2s", "failover": ["east", "west"]})
}

fn workload() -> Value {
    json!({"name": "db-vm-1", "service": "db", "address": "192.0.2.10",
           "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}], "ttl": "30s", "labels": {}})
}

fn policy() -> Value {
    json!({"name": "web-to-api", "from": ["web"], "to": "api", "action": "allow"})
}

fn fields(error: &Value) -> Vec<String> {
    error["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn every_resource_round_trips(api: &Api) {
    api.seed().await;
    let c = api.ok(Method::GET, "/v1/clusters/east", None).await;
    assert_eq!(c["networks"], json!(["10.8.0.0/16"]));
    assert!(
        !c.to_string().contains("secret-east"),
        "credentials are write-only"
    );
    assert_eq!(c["status"]["phase"], "Pending");

    let r = api
        .call(
            Method::PUT,
            "/v1/global-namespaces/production/services/web/routing",
            Some(routing()),
        )
        .await;
    assert_eq!(r.0, StatusCode::CREATED, "{}", r.1);
    let r2 = api
        .call(
            Method::PUT,
            "/v1/global-namespaces/production/services/web/routing",
            Some(routing()),
        )
        .await;
    assert_eq!(r2.0, StatusCode::OK);
    assert_eq!(
        r2.1["resourceVersion"], r.1["resourceVersion"],
        "unchanged PUT keeps the version"
    );
    let got = api
        .ok(
            Method::GET,
            "/v1/global-namespaces/production/services/web/routing",
            None,
        )
        .await;
    assert_eq!(got["rules"][1]["destinations"][0]["weight"], 99);
    assert_eq!(got["retries"]["perTryTimeout"], "500ms");
    let list = api
        .ok(
            Method::GET,
            "/v1/global-namespaces/production/routing",
            None,
        )
        .await;
    assert_eq!(list["items"][0]["service"], "web");

    let w = api
        .call(
            Method::POST,
            "/v1/global-namespaces/production/external-workloads",
            Some(workload()),
        )
        .await;
    assert_eq!(w.0, StatusCode::CREATED, "{}", w.1);
    assert_eq!(w.1["status"]["phase"], "Healthy");
    let hb = api
        .ok(
            Method::PUT,
            "/v1/global-namespaces/production/external-workloads/db-vm-1/heartbeat",
            None,
        )
        .await;
    // A beat is liveness, not configuration: no new resourceVersion.
    assert_eq!(hb["resourceVersion"], w.1["resourceVersion"], "{hb}");
    assert_eq!(hb["status"]["phase"], "Healthy", "{hb}");
    let shown = api
        .ok(
            Method::GET,
            "/v1/global-namespaces/production/external-workloads/db-vm-1",
            None,
        )
        .await;
    assert_eq!(
        shown["status"]["lastHeartbeat"], hb["status"]["lastHeartbeat"],
        "the beat shows in the status: {shown}"
    );
    let svc = api
        .ok(
            Method::GET,
            "/v1/global-namespaces/production/services/db",
            None,
        )
        .await;
    assert_eq!(
        svc["clusters"]["external"]["ready"][0]["address"],
        "192.0.2.10"
    );
    let all = api
        .ok(
            Method::GET,
            "/v1/global-namespaces/production/services",
            None,
        )
        .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));

    let p = api
        .call(
            Method::POST,
            "/v1/global-namespaces/production/access-policies",
            Some(policy()),
        )
        .await;
    assert_eq!(p.0, StatusCode::CREATED, "{}", p.1);
    let mut changed = p.1.clone();
    changed["action"] = json!("deny");
    let put = api
        .ok(
            Method::PUT,
            "/v1/global-namespaces/production/access-policies/web-to-api",
            Some(changed),
        )
        .await;
    assert_eq!(put["action"], "deny");

    // GET, edit, PUT back: server-set fields are accepted and the version moves on.
    let mut g = api
        .ok(Method::GET, "/v1/global-namespaces/production", None)
        .await;
    g["defaultAccess"] = json!("deny");
    let g2 = api
        .ok(
            Method::PUT,
            "/v1/global-namespaces/production",
            Some(g.clone()),
        )
        .await;
    assert_eq!(g2["defaultAccess"], "deny");
    // The same body again is now stale.
    let stale = api
        .call(Method::PUT, "/v1/global-namespaces/production", Some(g))
        .await;
    assert_eq!(stale.0, StatusCode::CONFLICT, "{}", stale.1);

    // Deletes, then 404s.
    api.ok(
        Method::DELETE,
        "/v1/global-namespaces/production/access-policies/web-to-api",
        None,
    )
    .await;
    api.ok(
        Method::DELETE,
        "/v1/global-namespaces/production/services/web/routing",
        None,
    )
    .await;
    api.ok(
        Method::DELETE,
        "/v1/global-namespaces/production/external-workloads/db-vm-1",
        None,
    )
    .await;
    for path in [
        "/v1/global-namespaces/production/access-policies/web-to-api",
        "/v1/global-namespaces/production/services/web/routing",
        "/v1/global-namespaces/production/external-workloads/db-vm-1",
        "/v1/global-namespaces/production/services/db",
        "/v1/global-namespaces/nope/services",
        "/v1/clusters/nope",
    ] {
        let (status, body) = api.call(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    api.ok(Method::DELETE, "/v1/global-namespaces/production", None)
        .await;
    api.ok(Method::DELETE, "/v1/clusters/east", None).await;
}

async fn cluster_credentials_update_rules(api: &Api) {
    let mut c = cluster("east", "10.8.0.0/16");
    c["kubernetes"] = json!({"server": "https://10.0.0.1:6443"});
    let (status, body) = api
        .call(Method::POST, "/v1/clusters", Some(c.clone()))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&body), vec!["kubernetes.token"]);
    api.ok(
        Method::POST,
        "/v1/clusters",
        Some(cluster("east", "10.8.0.0/16")),
    )
    .await;
    // An unchanged PUT says so in x-gns-changed, even after a status write moved the version.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v1/clusters/east")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from(cluster("east", "10.8.0.0/16").to_string()))
        .expect("request");
    let resp = api.app.clone().oneshot(req).await.expect("response");
    assert_eq!(
        resp.headers().get("x-gns-changed").map(|v| v.as_bytes()),
        Some(&b"false"[..])
    );
    // A PUT without credentials keeps them (and the rest is an ordinary update).
    c["labels"] = json!({"region": "eu-west-1"});
    let updated = api
        .ok(Method::PUT, "/v1/clusters/east", Some(c.clone()))
        .await;
    assert_eq!(updated["labels"]["region"], "eu-west-1");
    // Credentials follow the server: a new server or CA needs them again.
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .encode("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    for change in [
        json!({"server": "https://10.0.0.2:6443"}),
        json!({"server": "https://10.0.0.1:6443", "caData": ca}),
    ] {
        let mut moved = c.clone();
        moved["kubernetes"] = change.clone();
        let (status, body) = api
            .call(Method::PUT, "/v1/clusters/east", Some(moved.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{change}: {body}");
        assert_eq!(fields(&body), vec!["kubernetes.token"]);
        moved["kubernetes"]["token"] = json!("fresh-token");
        api.ok(Method::PUT, "/v1/clusters/east", Some(moved)).await;
        // And back, with credentials again.
        let mut back = c.clone();
        back["kubernetes"]["token"] = json!("secret-east");
        api.ok(Method::PUT, "/v1/clusters/east", Some(back)).await;
    }
    // Plain HTTP is refused: the credentials would travel in the clear.
    let mut plain = cluster("north", "10.10.0.0/16");
    plain["kubernetes"]["server"] = json!("http://10.0.0.3:6443");
    let (status, body) = api.call(Method::POST, "/v1/clusters", Some(plain)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(fields(&body), vec!["kubernetes.server"]);
}

async fn validation_errors_name_the_field(api: &Api) {
    api.seed().await;
    let cases: Vec<(&str, Method, Value, &str)> = vec![
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "Bad_Name", "kubernetes": {"server": "https://x", "token": "t"}}),
            "name",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "ftp://x", "token": "t"}}),
            "kubernetes.server",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "https://x", "token": "t"}, "networks": ["10.0.0.1/8"]}),
            "networks[0]",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "https://x", "token": "t", "caData": "not base64!"}}),
            "kubernetes.caData",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "https://x", "token": "t"}, "gateway": {"ingressAddress": "1.2.3.4", "egressAddress": "10.0.0.1"}}),
            "gateway.ingressAddress",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "https://x", "token": "t"}, "gateway": {"ingressAddress": "1.2.3.4:1", "egressAddress": "nope"}}),
            "gateway.egressAddress",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "https://x", "token": "t"}, "labels": {"bad key!": "v"}}),
            "labels.bad key!",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"name": "c", "kubernetes": {"server": "https://x", "token": "t"}, "extra": 1}),
            "extra",
        ),
        (
            "/v1/clusters",
            Method::POST,
            json!({"kubernetes": {"server": "https://x", "token": "t"}}),
            "name",
        ),
        (
            "/v1/global-namespaces",
            Method::POST,
            json!({"name": "g", "domain": "no_tld"}),
            "domain",
        ),
        (
            "/v1/global-namespaces",
            Method::POST,
            json!({"name": "g", "domain": "g.acme.com", "members": [{"cluster": "nope", "namespace": "x"}]}),
            "members[0].cluster",
        ),
        (
            "/v1/global-namespaces",
            Method::POST,
            json!({"name": "g", "domain": "g.acme.com", "defaultAccess": "maybe"}),
            "defaultAccess",
        ),
        (
            "/v1/global-namespaces",
            Method::POST,
            json!({"name": "g", "domain": "g.acme.com", "members": [{"cluster": "east", "namespace": "x"}, {"cluster": "east", "namespace": "x"}]}),
            "members[1]",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 60}, {"cluster": "west", "weight": 30}]}]}),
            "rules[0].destinations",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 101}]}]}),
            "rules[0].destinations[0].weight",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"match": {"headers": [{"name": "user-agent", "regex": "(unclosed"}]}, "destinations": [{"cluster": "east", "weight": 100}]}, {"destinations": [{"cluster": "east", "weight": 100}]}]}),
            "rules[0].match.headers[0].regex",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"match": {"headers": [{"name": "x", "regex": "a{1000}{1000}"}]}, "destinations": [{"cluster": "east", "weight": 100}]}, {"destinations": [{"cluster": "east", "weight": 100}]}]}),
            "rules[0].match.headers[0].regex",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}], "timeout": "soon"}),
            "timeout",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"destinations": [{"cluster": "mars", "weight": 100}]}]}),
            "rules[0].destinations[0].cluster",
        ),
        (
            "/v1/global-namespaces/production/services/web/routing",
            Method::PUT,
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}], "retries": {"attempts": 3, "on": ["sometimes"]}}),
            "retries.on[0]",
        ),
        (
            "/v1/global-namespaces/production/services/Bad/routing",
            Method::PUT,
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}]}),
            "service",
        ),
        (
            "/v1/global-namespaces/production/external-workloads",
            Method::POST,
            json!({"name": "vm", "service": "db", "address": "999.1.1.1", "ports": [{"name": "pg", "port": 5432}], "ttl": "30s"}),
            "address",
        ),
        (
            "/v1/global-namespaces/production/external-workloads",
            Method::POST,
            json!({"name": "vm", "service": "db", "address": "192.0.2.1", "ports": [{"name": "pg", "port": 70000}], "ttl": "30s"}),
            "ports[0].port",
        ),
        (
            "/v1/global-namespaces/production/external-workloads",
            Method::POST,
            json!({"name": "vm", "service": "db", "address": "192.0.2.1", "ports": [{"name": "pg", "port": 5432}], "ttl": "48h"}),
            "ttl",
        ),
        (
            "/v1/global-namespaces/production/access-policies",
            Method::POST,
            json!({"name": "p", "from": ["Not A Name"], "to": "api", "action": "allow"}),
            "from[0]",
        ),
        (
            "/v1/tokens",
            Method::POST,
            json!({"name": "t", "role": "superuser"}),
            "role",
        ),
    ];
    for (path, method, body, field) in cases {
        let (status, error) = api.call(method, path, Some(body.clone())).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {error}"
        );
        assert_eq!(error["error"]["code"], "invalid");
        assert!(
            fields(&error).iter().any(|f| f == field),
            "{path} {body}: expected field {field}, got {error}"
        );
    }
    // Several bad fields are reported together.
    let (_, error) = api
        .call(Method::PUT, "/v1/global-namespaces/production/services/web/routing",
              Some(json!({"rules": [{"destinations": []}], "retries": {"attempts": 20}, "failover": ["east", "east"]})))
        .await;
    assert!(fields(&error).len() >= 3, "{error}");
}

async fn malformed_oversized_and_unknown(api: &Api) {
    let (status, body) = api
        .raw(
            Method::POST,
            "/v1/clusters",
            Some(ADMIN),
            Some(b"{not json".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = api
        .raw(
            Method::POST,
            "/v1/clusters",
            Some(ADMIN),
            Some(b"[1,2]".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(1024 * 1024 + 10));
    let (status, body) = api
        .raw(
            Method::POST,
            "/v1/clusters",
            Some(ADMIN),
            Some(big.into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let (status, body) = api.call(Method::GET, "/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = api.call(Method::PATCH, "/v1/clusters", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, _) = api.call(Method::GET, "/v1/clusters?limit=0", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .call(Method::GET, "/v1/clusters?continue=%%%", None)
        .await;
    assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST);
}

async fn auth_roles_and_tokens(api: &Api) {
    api.seed().await;
    let (status, body) = api.raw(Method::GET, "/v1/clusters", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = api
        .raw(Method::GET, "/v1/clusters", Some("wrong"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let viewer = api
        .ok(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci", "role": "viewer"})),
        )
        .await;
    let editor = api
        .ok(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "dev", "role": "editor"})),
        )
        .await;
    let viewer = viewer["token"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    let editor = editor["token"].as_str().expect("secret").to_owned();
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "ci", "role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let listed = api.ok(Method::GET, "/v1/tokens", None).await;
    assert!(
        !listed.to_string().contains(&viewer),
        "secrets are never listed"
    );

    let body = Some(
        json!({"name": "p", "from": ["web"], "to": "api", "action": "allow"})
            .to_string()
            .into_bytes(),
    );
    let path = "/v1/global-namespaces/production/access-policies";
    assert_eq!(
        api.raw(Method::GET, "/v1/clusters", Some(&viewer), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.raw(Method::POST, path, Some(&viewer), body.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.raw(Method::POST, path, Some(&editor), body).await.0,
        StatusCode::CREATED
    );
    let c = Some(cluster("north", "10.10.0.0/16").to_string().into_bytes());
    assert_eq!(
        api.raw(Method::POST, "/v1/clusters", Some(&editor), c)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.raw(Method::GET, "/v1/tokens", Some(&editor), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.raw(Method::GET, "/v1/audit", Some(&viewer), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // The audit log names who did what, newest first.
    let audit = api.ok(Method::GET, "/v1/audit?limit=2", None).await;
    assert_eq!(audit["items"][0]["actor"], "dev");
    assert_eq!(audit["items"][0]["kind"], "accesspolicy");
    assert!(audit["continue"].is_string());
    let next = api
        .ok(
            Method::GET,
            &format!(
                "/v1/audit?limit=100&continue={}",
                audit["continue"].as_str().expect("token")
            ),
            None,
        )
        .await;
    assert!(
        next["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["actor"] == "bootstrap-admin"))
    );

    // Revocation takes effect at once.
    assert_eq!(
        api.call(Method::DELETE, "/v1/tokens/ci", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.raw(Method::GET, "/v1/clusters", Some(&viewer), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call(Method::DELETE, "/v1/tokens/ci", None).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn conflicts(api: &Api) {
    api.seed().await;
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/clusters",
            Some(cluster("east", "10.8.0.0/16")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api.call(Method::DELETE, "/v1/clusters/east", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("globalnamespace/production")),
        "{body}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/global-namespaces",
            Some(json!({"name": "sub", "domain": "eu.production.app.acme.com"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(fields(&body), vec!["domain"]);
    let mut stale = cluster("west", "10.9.0.0/16");
    stale["resourceVersion"] = json!("1");
    let (status, body) = api
        .call(Method::PUT, "/v1/clusters/west", Some(stale))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = api
        .call(Method::DELETE, "/v1/clusters/west?resourceVersion=1", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/clusters/east",
            Some(cluster("west", "10.9.0.0/16")),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name must match the URL"
    );
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/clusters/south",
            Some(cluster("south", "10.9.0.0/16")),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "PUT does not create named resources"
    );
}

async fn paging_through_lists(api: &Api) {
    for i in 0..7 {
        api.ok(
            Method::POST,
            "/v1/clusters",
            Some(cluster(&format!("c{i}"), &format!("10.{i}.0.0/16"))),
        )
        .await;
    }
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(t) => format!("/v1/clusters?limit=3&continue={t}"),
            None => "/v1/clusters?limit=3".to_owned(),
        };
        let page = api.ok(Method::GET, &path, None).await;
        let items = page["items"].as_array().expect("items").clone();
        assert!(items.len() <= 3);
        names.extend(
            items
                .iter()
                .filter_map(|i| i["name"].as_str().map(str::to_owned)),
        );
        match page["continue"].as_str() {
            Some(t) => next = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("c{i}")).collect::<Vec<_>>());
}

async fn openapi_documents_every_route_and_every_route_exists(api: &Api) {
    let doc = api.ok(Method::GET, "/openapi.json", None).await;
    let paths = doc["paths"].as_object().expect("paths");
    for op in gns_federation::api::openapi::OPERATIONS {
        assert!(
            paths.contains_key(op.path),
            "{} missing from the document",
            op.path
        );
        // Every documented operation is routed: anything but 404-no-route / 405.
        let path = op
            .path
            .replace("{gns}", "nope")
            .replace("{name}", "x")
            .replace("{svc}", "web");
        let method = Method::from_bytes(
            gns_federation::api::openapi::method_name(&op.method)
                .to_uppercase()
                .as_bytes(),
        )
        .expect("method");
        let (status, body) = api.call(method.clone(), &path, Some(json!({}))).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            assert_ne!(
                body["error"]["message"], "no such route; see /openapi.json",
                "{method} {path}"
            );
        }
    }
    for schema in [
        "Cluster",
        "GlobalNamespace",
        "Routing",
        "ExternalWorkload",
        "AccessPolicy",
        "ErrorBody",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    // Every field routing takes is in the document (and so in clients
    // generated from it).
    for (schema, fields) in [
        ("RoutingRule", &["match", "precedence", "destinations"][..]),
        ("RouteMatch", &["headers", "source", "path", "method"][..]),
        ("PathMatch", &["exact", "prefix", "regex"][..]),
        ("Destination", &["cluster", "subset", "tags", "weight"][..]),
        ("ExternalWorkload", &["cluster", "labels", "ports"][..]),
        ("WorkloadPort", &["targetPort", "protocol"][..]),
    ] {
        let properties = &doc["components"]["schemas"][schema]["properties"];
        for field in fields {
            assert!(
                properties[*field].is_object(),
                "{schema}.{field} in the OpenAPI document: {properties}"
            );
        }
    }
}

async fn health_ready_and_metrics(api: &Api) {
    assert_eq!(
        api.raw(Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    let (status, body) = api.raw(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["store"], api.store_name());
    api.ok(Method::GET, "/v1/clusters", None).await;
    let (status, text) = api.raw(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text").to_owned();
    assert!(
        text.contains(
            "gns_http_requests_total{method=\"GET\",route=\"/v1/clusters\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("gns_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

/// Runs `scenario` against the API on `backend`, then drops the backend's
/// database (left behind if the scenario fails, for a look at it).
fn report(config_version: u64, requests: u64) -> Value {
    let mut buckets = vec![0u64; gns_contract::report::BUCKETS];
    buckets[1] = requests;
    json!({"version": "0.1.0", "configVersion": config_version,
           "certificateExpiresAt": "2026-12-07T10:00:00Z", "intervalMillis": 5000,
           "traffic": [{"globalNamespace": "production", "service": "web", "cluster": "west",
                        "entry": "egress", "requests": requests,
                        "responses": {"2xx": requests}, "latencyBuckets": buckets,
                        "requestBytes": 0, "responseBytes": 10 * requests}]})
}

async fn gateway_tokens_report_their_own_cluster_only(api: &Api) {
    api.seed().await;
    // A gateway token belongs to one registered cluster; no other role names one.
    for (body, field) in [
        (json!({"name": "bootstrap-admin", "role": "viewer"}), "name"),
        (json!({"name": "gw", "role": "gateway"}), "cluster"),
        (
            json!({"name": "gw", "role": "gateway", "cluster": "nowhere"}),
            "cluster",
        ),
        (
            json!({"name": "gw", "role": "viewer", "cluster": "east"}),
            "cluster",
        ),
    ] {
        let (status, error) = api
            .call(Method::POST, "/v1/tokens", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert_eq!(fields(&error), [field], "{error}");
    }
    let created = api
        .ok(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "gw-east", "role": "gateway", "cluster": "east"})),
        )
        .await;
    assert_eq!(
        (created["role"].as_str(), created["cluster"].as_str()),
        (Some("gateway"), Some("east"))
    );
    let token = created["token"].as_str().expect("secret").to_owned();
    let listed = api.ok(Method::GET, "/v1/tokens", None).await;
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|t| t["name"] == "gw-east" && t["cluster"] == "east"),
        "{listed}"
    );

    let as_gateway = async |method: Method, path: &str, body: Option<Value>| {
        api.raw(
            method,
            path,
            Some(&token),
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    };
    // Nothing but its own cluster's gateway routes.
    for (method, path) in [
        (Method::GET, "/v1/clusters"),
        (Method::GET, "/v1/clusters/east"),
        (Method::GET, "/v1/config/gateways/west"),
        (Method::GET, "/v1/config/dns"),
        (Method::GET, "/v1/global-namespaces"),
        (Method::PUT, "/v1/clusters/west/gateway-instances/gw-0"),
    ] {
        let (status, error) = as_gateway(method.clone(), path, Some(report(1, 1))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {error}");
    }
    // Its config watch is open to it (no snapshot feed in this router: 503, not 403).
    let (status, _) = as_gateway(Method::GET, "/v1/config/gateways/east", None).await;
    assert_ne!(status, StatusCode::FORBIDDEN);

    let revision = api.backend.store.revision().await.expect("revision");
    let audited = api.ok(Method::GET, "/v1/audit", None).await["items"]
        .as_array()
        .expect("items")
        .len();
    let (status, shown) = as_gateway(
        Method::PUT,
        "/v1/clusters/east/gateway-instances/gw-0",
        Some(report(7, 3)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(
        (shown["instance"].as_str(), shown["configVersion"].as_u64()),
        (Some("gw-0"), Some(7))
    );
    // Bad reports are refused, naming the field.
    let mut short = report(7, 3);
    short["traffic"][0]["latencyBuckets"] = json!([3]);
    let mut uneven = report(7, 3);
    uneven["traffic"][0]["responses"] = json!({"2xx": 2});
    let mut huge = report(7, 3);
    huge["traffic"][0]["requests"] = json!(u64::MAX);
    huge["traffic"][0]["responses"] = json!({"2xx": u64::MAX, "5xx": 5});
    let mut unknown = report(7, 3);
    unknown["colour"] = json!("red");
    let mut late = report(7, 3);
    late["certificateExpiresAt"] = json!("tomorrow");
    for (body, field) in [
        (short, "traffic[0].latencyBuckets"),
        (uneven, "traffic[0].requests"),
        (huge, "traffic[0].requests"),
        (unknown, "colour"),
        (late, "certificateExpiresAt"),
    ] {
        let (status, error) = as_gateway(
            Method::PUT,
            "/v1/clusters/east/gateway-instances/gw-0",
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(fields(&error), [field], "{error}");
    }
    let (status, error) = as_gateway(
        Method::PUT,
        "/v1/clusters/east/gateway-instances/GW_0",
        Some(report(7, 3)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    // An admin may report too; a report for an unknown cluster is 404.
    api.ok(
        Method::PUT,
        "/v1/clusters/east/gateway-instances/gw-1",
        Some(report(6, 0)),
    )
    .await;
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/clusters/nowhere/gateway-instances/gw-0",
            Some(report(6, 0)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Reports are liveness: no revision, no audit row.
    assert_eq!(
        api.backend.store.revision().await.expect("revision"),
        revision
    );
    let audit = api.ok(Method::GET, "/v1/audit", None).await;
    assert_eq!(
        audit["items"].as_array().expect("items").len(),
        audited,
        "{audit}"
    );

    // The cluster's status lists the instances, newest first; west's never reported.
    let east = api.ok(Method::GET, "/v1/clusters/east", None).await;
    let instances = east["status"]["gatewayInstances"]
        .as_array()
        .expect("instances");
    let names: Vec<&str> = instances
        .iter()
        .filter_map(|i| i["instance"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{east}");
    assert!(names.contains(&"gw-0") && names.contains(&"gw-1"));
    let gw0 = instances
        .iter()
        .find(|i| i["instance"] == "gw-0")
        .expect("gw-0");
    assert_eq!(gw0["configVersion"], 7);
    assert_eq!(gw0["certificateExpiresAt"], "2026-12-07T10:00:00Z");
    assert!(
        gw0["lastSeen"].is_string() && gw0.get("traffic").is_none(),
        "{gw0}"
    );
    assert_eq!(east["status"]["gatewayHealth"], "Reporting");
    let list = api.ok(Method::GET, "/v1/clusters", None).await;
    let west = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["name"] == "west")
        .expect("west")
        .clone();
    assert_eq!(west["status"]["gatewayHealth"], "NeverReported", "{west}");
    assert_eq!(west["status"]["gatewayInstances"], json!([]));
    // The instances' page has their last traffic.
    let page = api
        .ok(Method::GET, "/v1/clusters/east/gateway-instances", None)
        .await;
    let gw0 = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["instance"] == "gw-0")
        .expect("gw-0")
        .clone();
    assert_eq!(gw0["traffic"][0]["requests"], 3, "{page}");
    assert_eq!(gw0["traffic"][0]["responseBytes"], 30);

    // A cluster's gateway tokens and join tokens go with it.
    api.ok(
        Method::POST,
        "/v1/clusters",
        Some(cluster("north", "10.10.0.0/16")),
    )
    .await;
    let north = api
        .ok(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "gw-north", "role": "gateway", "cluster": "north"})),
        )
        .await["token"]
        .as_str()
        .expect("secret")
        .to_owned();
    let join = api
        .ok(
            Method::POST,
            "/v1/clusters/north/join-tokens",
            Some(json!({})),
        )
        .await["token"]
        .as_str()
        .expect("join token")
        .to_owned();
    let north_report = async || {
        api.raw(
            Method::PUT,
            "/v1/clusters/north/gateway-instances/gw-0",
            Some(&north),
            Some(report(1, 0).to_string().into_bytes()),
        )
        .await
        .0
    };
    assert_eq!(north_report().await, StatusCode::OK);
    api.ok(Method::DELETE, "/v1/clusters/north", None).await;
    // Re-registered under the same name: nothing of the old one carries over.
    api.ok(
        Method::POST,
        "/v1/clusters",
        Some(cluster("north", "10.10.0.0/16")),
    )
    .await;
    assert_eq!(
        north_report().await,
        StatusCode::UNAUTHORIZED,
        "the gateway token went with its cluster"
    );
    let tokens = api.ok(Method::GET, "/v1/tokens", None).await;
    assert!(!tokens.to_string().contains("gw-north"), "{tokens}");
    let again = api.ok(Method::GET, "/v1/clusters/north", None).await;
    assert_eq!(again["status"]["gatewayInstances"], json!([]), "{again}");
    assert_eq!(again["status"]["gatewayHealth"], "NeverReported");
    let left = api
        .backend
        .store
        .join_token_cluster(&api::auth::hash_token(&join), api::now_millis())
        .await
        .expect("join token");
    assert_eq!(left, None, "the unspent join token went with its cluster");
}

/// Makes a token; returns its secret.
async fn token(api: &Api, body: Value) -> String {
    let made = api.ok(Method::POST, "/v1/tokens", Some(body)).await;
    made["token"].as_str().expect("secret").to_owned()
}

async fn scoped_tokens_see_their_global_namespaces_only(api: &Api) {
    api.seed().await;
    let mut staging = gns();
    staging["name"] = json!("staging");
    staging["domain"] = json!("staging.app.acme.com");
    api.ok(Method::POST, "/v1/global-namespaces", Some(staging))
        .await;
    for path in ["production", "staging"] {
        api.ok(
            Method::POST,
            &format!("/v1/global-namespaces/{path}/external-workloads"),
            Some(workload()),
        )
        .await;
    }
    // Bad scopes are refused with the field named.
    for (body, field) in [
        (
            json!({"name": "vm", "role": "workload"}),
            "globalNamespaces",
        ),
        (
            json!({"name": "a", "role": "admin", "globalNamespaces": ["production"]}),
            "globalNamespaces",
        ),
        (
            json!({"name": "v", "role": "viewer", "globalNamespaces": []}),
            "globalNamespaces",
        ),
        (
            json!({"name": "v", "role": "viewer", "globalNamespaces": ["Not A Name"]}),
            "globalNamespaces[0]",
        ),
    ] {
        let (status, error) = api
            .call(Method::POST, "/v1/tokens", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        assert!(fields(&error).iter().any(|f| f == field), "{body}: {error}");
    }
    let viewer = token(
        api,
        json!({"name": "team-view", "role": "viewer", "globalNamespaces": ["production"]}),
    )
    .await;
    let listed = api
        .raw(Method::GET, "/v1/tokens", Some(ADMIN), None)
        .await
        .1;
    assert!(
        listed["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|t| t["name"] == "team-view" && t["globalNamespaces"] == json!(["production"])),
        "{listed}"
    );
    let as_viewer =
        async |method: Method, path: &str| api.raw(method, path, Some(&viewer), None).await;
    let post_as_viewer = async |path: &str, body: Value| {
        let bytes = body.to_string().into_bytes();
        api.raw(Method::POST, path, Some(&viewer), Some(bytes))
            .await
    };
    let (status, list) = as_viewer(Method::GET, "/v1/global-namespaces").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["production"],
        "only its own global namespace is listed"
    );
    assert_eq!(
        as_viewer(Method::GET, "/v1/global-namespaces/production/services")
            .await
            .0,
        StatusCode::OK
    );
    for path in [
        "/v1/global-namespaces/staging",
        "/v1/global-namespaces/staging/external-workloads",
    ] {
        let (status, body) = as_viewer(Method::GET, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    // A scoped viewer may trace (it reads): the request reaches the trace,
    // which answers for services in its scope only (here, without a
    // snapshot feed, that none is built).
    let (status, body) = post_as_viewer(
        "/v1/trace",
        json!({"host": "web.production.app.acme.com", "from": "east"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.to_string().contains("compiles no snapshots"), "{body}");
    // The same for every view's DNS answers at once.
    let (status, body) = post_as_viewer(
        "/v1/trace/dns",
        json!({"host": "web.production.app.acme.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = post_as_viewer(
        "/v1/trace/dns",
        json!({"host": "web.production.app.acme.com", "from": "east"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a field the views do not take: {body}"
    );
    let (status, body) = post_as_viewer(
        "/v1/trace",
        json!({"host": "web.production.app.acme.com", "fromm": "east"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an unknown field: {body}"
    );
    let (status, body) = as_viewer(Method::GET, "/v1/clusters").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.to_string().contains("[production]"),
        "the scope is named: {body}"
    );

    let editor = token(
        api,
        json!({"name": "team-edit", "role": "editor", "globalNamespaces": ["production"]}),
    )
    .await;
    let put = |gns: &str| {
        let body = workload().to_string().into_bytes();
        let path = format!("/v1/global-namespaces/{gns}/external-workloads/db-vm-1");
        let editor = editor.clone();
        async move {
            api.raw(Method::PUT, &path, Some(&editor), Some(body))
                .await
                .0
        }
    };
    assert_eq!(put("production").await, StatusCode::OK);
    assert_eq!(put("staging").await, StatusCode::NOT_FOUND);
    let (status, _) = api
        .raw(
            Method::POST,
            "/v1/global-namespaces",
            Some(&editor),
            Some(gns().to_string().into_bytes()),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a scoped editor creates no global namespace"
    );

    let vm = token(
        api,
        json!({"name": "vm-agent", "role": "workload", "globalNamespaces": ["production"]}),
    )
    .await;
    let beat =
        |gns: &str| format!("/v1/global-namespaces/{gns}/external-workloads/db-vm-1/heartbeat");
    assert_eq!(
        api.raw(Method::PUT, &beat("production"), Some(&vm), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.raw(Method::PUT, &beat("staging"), Some(&vm), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    for path in [
        "/v1/global-namespaces/production/services",
        "/v1/global-namespaces",
        "/v1/clusters",
    ] {
        let (status, body) = api.raw(Method::GET, path, Some(&vm), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
}

async fn run(backend: Backend, scenario: impl AsyncFnOnce(&Api)) {
    let api = Api::on(backend);
    scenario(&api).await;
    api.cleanup().await;
}

/// One `#[tokio::test]` per scenario and backend, named `<scenario>_on_sqlite`
/// and `<scenario>_on_postgres`, so a failure names its backend.
macro_rules! on_both_backends {
    ($($scenario:ident: $on_sqlite:ident, $on_postgres:ident;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sqlite() {
            run(Backend::sqlite().await, $scenario).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_postgres() {
            run(Backend::postgres().await, $scenario).await;
        }
    )+};
}

on_both_backends! {
    every_resource_round_trips:
        every_resource_round_trips_on_sqlite,
        every_resource_round_trips_on_postgres;
    cluster_credentials_update_rules:
        cluster_credentials_update_rules_on_sqlite,
        cluster_credentials_update_rules_on_postgres;
    validation_errors_name_the_field:
        validation_errors_name_the_field_on_sqlite,
        validation_errors_name_the_field_on_postgres;
    malformed_oversized_and_unknown:
        malformed_oversized_and_unknown_on_sqlite,
        malformed_oversized_and_unknown_on_postgres;
    auth_roles_and_tokens:
        auth_roles_and_tokens_on_sqlite,
        auth_roles_and_tokens_on_postgres;
    conflicts:
        conflicts_on_sqlite,
        conflicts_on_postgres;
    paging_through_lists:
        paging_through_lists_on_sqlite,
        paging_through_lists_on_postgres;
    openapi_documents_every_route_and_every_route_exists:
        openapi_documents_every_route_and_every_route_exists_on_sqlite,
        openapi_documents_every_route_and_every_route_exists_on_postgres;
    health_ready_and_metrics:
        health_ready_and_metrics_on_sqlite,
        health_ready_and_metrics_on_postgres;
    gateway_tokens_report_their_own_cluster_only:
        gateway_tokens_report_their_own_cluster_only_on_sqlite,
        gateway_tokens_report_their_own_cluster_only_on_postgres;
    scoped_tokens_see_their_global_namespaces_only:
        scoped_tokens_see_their_global_namespaces_only_on_sqlite,
        scoped_tokens_see_their_global_namespaces_only_on_postgres;
}

/// Postgres only: a server can be taken away under a running API (the
/// embedded SQLite file is opened by the process itself and stays usable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_is_503_on_postgres() {
    let backend = Backend::postgres().await;
    let url = backend.db.as_ref().map(|d| d.url.clone()).expect("pg");
    let api = Api::on(backend);
    api.ok(Method::GET, "/v1/clusters", None).await;
    let (status, body) = api.raw(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["store"], "postgres");
    // Take the database away under the running API.
    let name = url.rsplit('/').next().expect("db name").to_owned();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&support::admin_url())
        .await
        .expect("admin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop");
    let (status, body) = api.call(Method::GET, "/v1/global-namespaces", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, body) = api.raw(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}
