//! TokenReview and projected service-account tokens through the real
//! kube-rs client: a token for an audience is reviewed as its service
//! account (with the bound pod in `user.extra`) for that audience only,
//! stops being valid when it expires or its account is deleted, does not
//! authenticate to the API server itself, and reviewing needs `create` on
//! `tokenreviews`.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token";
const REVIEWER: &str = "reviewer-token";
const AUDIENCE: &str = "gns-federation";

fn from<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("object")
}

fn client(server: &TestApiServer, token: &str) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.root_cert = Some(vec![server.ca_der().to_vec()]);
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).expect("client")
}

fn review(token: &str, audiences: &[&str]) -> TokenReview {
    from(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences}
    }))
}

async fn reviewed(api: &Api<TokenReview>, token: &str, audiences: &[&str]) -> Value {
    let answer = api
        .create(&PostParams::default(), &review(token, audiences))
        .await
        .expect("reviewed");
    serde_json::to_value(answer.status).expect("status")
}

#[tokio::test]
async fn projected_tokens_are_reviewed_for_their_audience_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start(
        TestApiServerOptions::default()
            .token(ADMIN, Grant::admin("admin"))
            .token(REVIEWER, Grant::admin("reviewer")),
    )
    .await
    .expect("server");
    let account: ServiceAccount =
        from(json!({"metadata": {"name": "gns-gateway", "namespace": "gns-system"}}));
    server.apply(&account).expect("account");
    let pod: Pod = from(json!({
        "metadata": {"name": "gns-gateway-7c5d9-x2k4q", "namespace": "gns-system"},
        "spec": {"serviceAccountName": "gns-gateway", "containers": [{"name": "gateway"}]}}));
    let pod = server.apply(&pod).expect("pod");
    let pod_uid = pod.metadata.uid.expect("uid");
    let token = server
        .projected_token(
            "gns-system",
            "gns-gateway",
            &[AUDIENCE],
            Duration::from_secs(3600),
            Some(("gns-gateway-7c5d9-x2k4q", &pod_uid)),
        )
        .expect("token");
    // A token bound to a pod that is not the live one (another uid): refused.
    let stale = server
        .projected_token(
            "gns-system",
            "gns-gateway",
            &[AUDIENCE],
            Duration::from_secs(3600),
            Some(("gns-gateway-7c5d9-x2k4q", "an-earlier-pod-uid")),
        )
        .expect("token");
    let api: Api<TokenReview> = Api::all(client(&server, REVIEWER));

    let ok = reviewed(&api, &token, &[AUDIENCE]).await;
    assert_eq!(ok["authenticated"], true, "{ok}");
    assert_eq!(
        ok["user"]["username"],
        "system:serviceaccount:gns-system:gns-gateway"
    );
    assert_eq!(ok["audiences"], json!([AUDIENCE]));
    assert_eq!(
        ok["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["gns-gateway-7c5d9-x2k4q"])
    );
    let earlier = reviewed(&api, &stale, &[AUDIENCE]).await;
    assert_eq!(earlier["authenticated"], false, "{earlier}");
    // Another audience, or the API server's own (the default): not for them.
    for audiences in [&["other"][..], &[][..]] {
        let no = reviewed(&api, &token, audiences).await;
        assert_eq!(no["authenticated"], false, "{no}");
        assert!(
            no["error"]
                .as_str()
                .is_some_and(|e| e.contains("audiences")),
            "{no}"
        );
    }
    // Nor does it authenticate to the API server.
    let refused = Api::<ConfigMap>::all(client(&server, &token))
        .list(&ListParams::default())
        .await
        .expect_err("a projected token for another audience");
    assert!(matches!(refused, kube::Error::Api(s) if s.code == 401));
    // Unknown tokens, expired ones and those of a deleted account are not valid.
    let unknown = reviewed(&api, "not-a-token", &[AUDIENCE]).await;
    assert_eq!(unknown["authenticated"], false);
    let short = server
        .projected_token(
            "gns-system",
            "gns-gateway",
            &[AUDIENCE],
            Duration::from_secs(600),
            None,
        )
        .expect("token");
    server.advance_clock(Duration::from_secs(601));
    assert_eq!(
        reviewed(&api, &short, &[AUDIENCE]).await["authenticated"],
        false
    );
    assert_eq!(
        reviewed(&api, &token, &[AUDIENCE]).await["authenticated"],
        true
    );
    Api::<ServiceAccount>::namespaced(client(&server, ADMIN), "gns-system")
        .delete("gns-gateway", &DeleteParams::default())
        .await
        .expect("delete account");
    assert_eq!(
        reviewed(&api, &token, &[AUDIENCE]).await["authenticated"],
        false
    );
    // Reviews are not stored: nothing to list.
    let listed = Api::<kube::api::DynamicObject>::all_with(
        client(&server, ADMIN),
        &kube::api::ApiResource {
            group: "authentication.k8s.io".into(),
            version: "v1".into(),
            api_version: "authentication.k8s.io/v1".into(),
            kind: "TokenReview".into(),
            plural: "tokenreviews".into(),
        },
    )
    .list(&ListParams::default())
    .await
    .expect_err("tokenreviews cannot be listed");
    assert!(
        matches!(&listed, kube::Error::Api(s) if s.code == 405),
        "{listed:?}"
    );
}

#[tokio::test]
async fn reviewing_needs_create_on_tokenreviews() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server =
        TestApiServer::start(TestApiServerOptions::default().token(ADMIN, Grant::admin("admin")))
            .await
            .expect("server");
    for (name, verbs) in [("can-review", vec!["create"]), ("cannot", vec!["get"])] {
        let account: ServiceAccount =
            from(json!({"metadata": {"name": name, "namespace": "default"}}));
        server.apply(&account).expect("account");
        let role: ClusterRole = from(json!({"metadata": {"name": name}, "rules": [
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": verbs}]}));
        server.apply(&role).expect("role");
        let binding: ClusterRoleBinding = from(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "default"}]}));
        server.apply(&binding).expect("binding");
    }
    let can = server
        .service_account_token("default", "can-review", None)
        .expect("token");
    let cannot = server
        .service_account_token("default", "cannot", None)
        .expect("token");
    let subject = server
        .projected_token(
            "default",
            "cannot",
            &[AUDIENCE],
            Duration::from_secs(3600),
            None,
        )
        .expect("token");
    let ok = Api::<TokenReview>::all(client(&server, &can))
        .create(&PostParams::default(), &review(&subject, &[AUDIENCE]))
        .await
        .expect("allowed");
    assert_eq!(ok.status.and_then(|s| s.authenticated), Some(true));
    let denied = Api::<TokenReview>::all(client(&server, &cannot))
        .create(&PostParams::default(), &review(&subject, &[AUDIENCE]))
        .await
        .expect_err("not allowed");
    assert!(matches!(denied, kube::Error::Api(s) if s.code == 403));
}
