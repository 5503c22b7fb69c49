//! Writes through the real kube-rs client: server-side apply (field
//! ownership, conflicts, force), create/replace/delete, namespace deletion,
//! the built-in controllers (Deployment rollouts, load balancers, token
//! Secrets), TokenRequest, and RBAC for service-account tokens.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use kube::{Client, ResourceExt};
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions, Verb};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token";
const WAIT: Duration = Duration::from_secs(10);
const MANAGER: &str = "gns-federation";

async fn start(options: TestApiServerOptions) -> TestApiServer {
    TestApiServer::start(options.token(ADMIN, Grant::admin("admin")))
        .await
        .expect("server starts")
}

fn client(server: &TestApiServer, token: &str) -> Client {
    // Another test may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.root_cert = Some(vec![server.ca_der().to_vec()]);
    config.auth_info.token = Some(token.to_owned().into());
    Client::try_from(config).expect("client")
}

fn from<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("valid object")
}

fn deployment(namespace: &str, name: &str, replicas: i32, extra_label: Option<&str>) -> Deployment {
    let mut labels = json!({"app": name});
    if let Some(extra) = extra_label {
        labels["tier"] = json!(extra);
    }
    from(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "gateway", "image": "gns/gateway:1", "ports": [{"name": "https", "containerPort": 8443}]}]}
            }
        }
    }))
}

fn namespace(name: &str) -> Namespace {
    from(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
}

fn api_status(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn managers(object: &impl ResourceExt) -> Vec<(String, String)> {
    object
        .managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Whether `manager`'s entry owns `.spec.replicas`.
fn owns_replicas(object: &Deployment, manager: &str) -> bool {
    object.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(manager)
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.pointer("/f:spec/f:replicas"))
                .is_some()
    })
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn server_side_apply_creates_reapplies_and_tracks_fields() {
    let server = start(TestApiServerOptions::default()).await;
    let admin = client(&server, ADMIN);
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .patch(
            "gns-system",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(namespace("gns-system")),
        )
        .await
        .expect("namespace applied");
    let api: Api<Deployment> = Api::namespaced(admin, "gns-system");
    let config = deployment("gns-system", "gateway", 2, Some("edge"));
    let created = api
        .patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&config),
        )
        .await
        .expect("created by apply");
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        managers(&created),
        [(MANAGER.to_owned(), "Apply".to_owned())]
    );
    let entry = &created.managed_fields()[0];
    assert_eq!(entry.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(entry.fields_type.as_deref(), Some("FieldsV1"));
    assert!(entry.time.is_some());
    assert!(owns_replicas(&created, MANAGER));
    let fields = &entry.fields_v1.as_ref().expect("fieldsV1").0;
    assert!(
        fields
            .pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"gateway\"}/f:image")
            .is_some(),
        "{fields}"
    );

    // Identical again: nothing changes.
    let again = api
        .patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&config),
        )
        .await
        .expect("re-applied");
    assert_eq!(again.resource_version(), created.resource_version());
    assert_eq!(again.managed_fields(), created.managed_fields());

    // A field dropped from the config goes away; the spec change bumps
    // the generation.
    let smaller = deployment("gns-system", "gateway", 3, None);
    let changed = api
        .patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&smaller),
        )
        .await
        .expect("applied smaller");
    assert!(
        !changed.labels().contains_key("tier"),
        "{:?}",
        changed.labels()
    );
    assert_eq!(
        changed.labels().get("app").map(String::as_str),
        Some("gateway")
    );
    assert_eq!(changed.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(changed.metadata.generation, Some(2));

    // Apply needs a field manager (kube-rs sends none with default params).
    let status = api_status(
        api.patch("gateway", &PatchParams::default(), &Patch::Apply(&smaller))
            .await
            .expect_err("400"),
    );
    assert_eq!(status.code, 400);
    assert!(
        status.message.contains("fieldManager"),
        "{}",
        status.message
    );

    // The server-side view agrees, and the hook sees the same object.
    let stored = server
        .get::<Deployment>("gns-system", "gateway")
        .expect("get")
        .expect("exists");
    assert_eq!(stored.resource_version(), changed.resource_version());
    assert!(server.stats().patches >= 4);
}

#[tokio::test]
async fn apply_conflicts_name_the_other_manager_and_force_takes_ownership() {
    let server = start(TestApiServerOptions::default()).await;
    let api: Api<Deployment> = Api::namespaced(client(&server, ADMIN), "default");
    let config = deployment("default", "gateway", 2, None);
    api.patch(
        "gateway",
        &PatchParams::apply(MANAGER),
        &Patch::Apply(&config),
    )
    .await
    .expect("created");

    // kubectl scales it with a merge patch: it now owns .spec.replicas.
    let scaled = api
        .patch(
            "gateway",
            &PatchParams {
                field_manager: Some("kubectl".to_owned()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scaled");
    assert!(owns_replicas(&scaled, "kubectl"));
    assert!(!owns_replicas(&scaled, MANAGER));

    let status = api_status(
        api.patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&config),
        )
        .await
        .expect_err("conflict"),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas"
    );
    let causes = status.details.expect("details").causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".spec.replicas");
    assert_eq!(causes[0].message, "conflict with \"kubectl\" using apps/v1");
    assert_eq!(server.stats().conflicts, 1);

    // The same value is shared ownership, not a conflict.
    let shared = api
        .patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(deployment("default", "gateway", 5, None)),
        )
        .await
        .expect("same value");
    assert!(owns_replicas(&shared, "kubectl") && owns_replicas(&shared, MANAGER));

    // Forced: ownership moves to the applier.
    let forced = api
        .patch(
            "gateway",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&config),
        )
        .await
        .expect("forced");
    assert_eq!(forced.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(owns_replicas(&forced, MANAGER));
    assert!(!owns_replicas(&forced, "kubectl"));

    // The hook makes another manager own a field too.
    server
        .apply_as("hpa-controller", &deployment("default", "gateway", 7, None))
        .expect("hook apply");
    let status = api_status(
        api.patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&config),
        )
        .await
        .expect_err("conflict with the hook's manager"),
    );
    assert!(
        status.message.contains("conflict with \"hpa-controller\""),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn controllers_roll_out_deployments_and_assign_load_balancers() {
    let server = start(TestApiServerOptions::default()).await;
    let admin = client(&server, ADMIN);
    let api: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    let from_rv = server.resource_version().to_string();
    let mut watch = api
        .watch(&kube::api::WatchParams::default().timeout(5), &from_rv)
        .await
        .expect("watch")
        .boxed();
    api.patch(
        "gateway",
        &PatchParams::apply(MANAGER),
        &Patch::Apply(deployment("default", "gateway", 2, None)),
    )
    .await
    .expect("applied");
    let ready = eventually("the rollout", async || {
        let d = api.get("gateway").await.ok()?;
        let s = d.status.clone()?;
        (s.observed_generation == d.metadata.generation && s.ready_replicas == Some(2)).then_some(d)
    })
    .await;
    let status = ready.status.expect("status");
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.available_replicas
        ),
        (Some(2), Some(2), Some(2))
    );
    let conditions = status.conditions.expect("conditions");
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    );
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Progressing"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        match tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("event")
        {
            Some(Ok(WatchEvent::Added(_))) => kinds.push("ADDED"),
            Some(Ok(WatchEvent::Modified(_))) => kinds.push("MODIFIED"),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED"], "the status is a write");

    // Held: the new generation is observed but not available.
    server.hold_rollouts(true);
    api.patch(
        "gateway",
        &PatchParams::apply(MANAGER),
        &Patch::Apply(deployment("default", "gateway", 3, None)),
    )
    .await
    .expect("scaled");
    let held = eventually("the held rollout", async || {
        let d = api.get("gateway").await.ok()?;
        let s = d.status.clone()?;
        (s.observed_generation == d.metadata.generation).then_some(s)
    })
    .await;
    assert_eq!(held.ready_replicas.unwrap_or(0), 0);
    assert_eq!(held.unavailable_replicas, Some(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let still = api
        .get("gateway")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(still.ready_replicas.unwrap_or(0), 0, "still held");
    server.hold_rollouts(false);
    eventually("the released rollout", async || {
        let s = api.get("gateway").await.ok()?.status?;
        (s.ready_replicas == Some(3)).then_some(())
    })
    .await;

    // A LoadBalancer Service gets an address.
    let services: Api<Service> = Api::namespaced(admin, "default");
    let lb: Service = from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "gateway", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "gateway"}, "ports": [{"name": "https", "port": 443}]}
    }));
    services
        .patch("gateway", &PatchParams::apply(MANAGER), &Patch::Apply(&lb))
        .await
        .expect("service applied");
    let ip = eventually("the load balancer", async || {
        let s = services.get("gateway").await.ok()?;
        s.status?.load_balancer?.ingress?.first()?.ip.clone()
    })
    .await;
    assert!(ip.starts_with("203.0.113."), "{ip}");
}

#[tokio::test]
async fn load_balancer_address_and_rollout_delay_are_options() {
    let server = start(
        TestApiServerOptions::default()
            .load_balancer_address("198.51.100.7")
            .rollout_delay(Duration::from_millis(10)),
    )
    .await;
    let services: Api<Service> = Api::namespaced(client(&server, ADMIN), "default");
    let lb: Service = from(json!({
        "metadata": {"name": "gw", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}
    }));
    services
        .create(&PostParams::default(), &lb)
        .await
        .expect("created");
    let ip = eventually("the load balancer", async || {
        let s = services.get("gw").await.ok()?;
        s.status?.load_balancer?.ingress?.first()?.ip.clone()
    })
    .await;
    assert_eq!(ip, "198.51.100.7");

    let off = start(TestApiServerOptions::default().controllers(false)).await;
    let api: Api<Deployment> = Api::namespaced(client(&off, ADMIN), "default");
    api.create(
        &PostParams::default(),
        &deployment("default", "gw", 1, None),
    )
    .await
    .expect("created");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(api.get("gw").await.expect("get").status.is_none());

    // The status subresource: status writes change only the status, and
    // main-resource writes cannot change it.
    let pp = PatchParams::default();
    let patched = api
        .patch_status(
            "gw",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 1}, "spec": {"replicas": 9}})),
        )
        .await
        .expect("status patched");
    let status = patched.status.clone().expect("status");
    assert_eq!(status.ready_replicas, Some(1));
    assert_eq!(patched.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(patched.metadata.generation, Some(1));
    let read = api.get_status("gw").await.expect("status read");
    assert_eq!(read.status.and_then(|s| s.ready_replicas), Some(1));
    let main = api
        .patch(
            "gw",
            &pp,
            &Patch::Merge(json!({"status": {"readyReplicas": 7}})),
        )
        .await
        .expect("main patched");
    assert_eq!(main.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    assert_eq!(
        main.resource_version(),
        patched.resource_version(),
        "no change"
    );
}

#[tokio::test]
async fn create_replace_delete_through_kube_rs() {
    let server = start(TestApiServerOptions::default()).await;
    let admin = client(&server, ADMIN);
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(&PostParams::default(), &namespace("apps"))
        .await
        .expect("namespace created");
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), "apps");
    let cm: ConfigMap = from(json!({
        "metadata": {"name": "settings", "namespace": "apps"},
        "data": {"mode": "a"}
    }));
    let created = api
        .create(&PostParams::default(), &cm)
        .await
        .expect("created");
    assert!(created.uid().is_some());
    assert!(created.creation_timestamp().is_some());
    let status = api_status(
        api.create(&PostParams::default(), &cm)
            .await
            .expect_err("exists"),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(status.message, "configmaps \"settings\" already exists");

    // Create in a namespace that does not exist.
    let elsewhere: Api<ConfigMap> = Api::namespaced(admin.clone(), "nowhere");
    let mut lost = cm.clone();
    lost.metadata.namespace = Some("nowhere".to_owned());
    let status = api_status(
        elsewhere
            .create(&PostParams::default(), &lost)
            .await
            .expect_err("no namespace"),
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );

    // Replace with the current resourceVersion, then with a stale one.
    let mut next = created.clone();
    next.data = Some([("mode".to_owned(), "b".to_owned())].into());
    let replaced = api
        .replace("settings", &PostParams::default(), &next)
        .await
        .expect("replaced");
    assert_ne!(replaced.resource_version(), created.resource_version());
    let status = api_status(
        api.replace("settings", &PostParams::default(), &next)
            .await
            .expect_err("stale"),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on configmaps \"settings\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );

    // The body must name what the URL names.
    let status = api_status(
        api.replace("other", &PostParams::default(), &replaced)
            .await
            .expect_err("name mismatch"),
    );
    assert_eq!(status.code, 400);

    // An object the schema refuses is 422.
    let bad: Api<Deployment> = Api::namespaced(admin.clone(), "apps");
    let status = api_status(
        bad.patch(
            "broken",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "broken"}, "spec": {"replicas": "many"}})),
        )
        .await
        .expect_err("invalid"),
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));

    // Dry run: an answer, nothing stored.
    let mut dry = cm.clone();
    dry.metadata.name = Some("dry".to_owned());
    api.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &dry,
    )
    .await
    .expect("dry run");
    assert!(api.get_opt("dry").await.expect("get").is_none());

    // Delete: the watch sees DELETED; a second delete is 404.
    let from_rv = server.resource_version().to_string();
    let mut watch = api
        .watch(&kube::api::WatchParams::default().timeout(5), &from_rv)
        .await
        .expect("watch")
        .boxed();
    api.delete("settings", &DeleteParams::default())
        .await
        .expect("deleted");
    match tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("event")
    {
        Some(Ok(WatchEvent::Deleted(gone))) => assert_eq!(gone.name_any(), "settings"),
        other => panic!("expected DELETED, got {other:?}"),
    }
    let status = api_status(
        api.delete("settings", &DeleteParams::default())
            .await
            .expect_err("gone"),
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "configmaps \"settings\" not found")
    );

    // Deleting a namespace deletes what is in it.
    api.create(&PostParams::default(), &cm)
        .await
        .expect("again");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "apps");
    deployments
        .create(&PostParams::default(), &deployment("apps", "web", 1, None))
        .await
        .expect("deployment");
    namespaces
        .delete("apps", &DeleteParams::default())
        .await
        .expect("namespace deleted");
    assert!(namespaces.get_opt("apps").await.expect("get").is_none());
    assert!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(server.list::<Deployment>().expect("list").is_empty());
    assert!(server.stats().deletes >= 3);
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

#[tokio::test]
async fn token_requests_and_rbac_for_service_accounts() {
    let server = start(TestApiServerOptions::default()).await;
    let admin = client(&server, ADMIN);
    let pp = PostParams::default();
    Api::<Namespace>::all(admin.clone())
        .create(&pp, &namespace("gns-system"))
        .await
        .expect("namespace");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "gns-system");
    accounts
        .create(
            &pp,
            &from(json!({"metadata": {"name": "federation", "namespace": "gns-system"}})),
        )
        .await
        .expect("service account");
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &pp,
            &from(json!({
                "metadata": {"name": "gns-federation-read"},
                "rules": [
                    rule(&[""], &["services"], &["get", "list", "watch"]),
                    rule(&["discovery.k8s.io"], &["endpointslices"], &["get", "list", "watch"])
                ]
            })),
        )
        .await
        .expect("cluster role");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &pp,
            &from(json!({
                "metadata": {"name": "gns-federation-read"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "gns-federation-read"},
                "subjects": [{"kind": "ServiceAccount", "name": "federation", "namespace": "gns-system"}]
            })),
        )
        .await
        .expect("cluster role binding");

    // A token for another audience does not authenticate to the API server.
    let elsewhere: TokenRequest = from(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["gns"], "expirationSeconds": 3600}
    }));
    let for_gns = accounts
        .create_token_request("federation", &pp, &elsewhere)
        .await
        .expect("token")
        .status
        .expect("status")
        .token;
    let refused = api_status(
        Api::<Service>::all(client(&server, &for_gns))
            .list(&ListParams::default())
            .await
            .expect_err("401"),
    );
    assert_eq!(refused.code, 401);
    let request: TokenRequest = from(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    }));
    let answer = accounts
        .create_token_request("federation", &pp, &request)
        .await
        .expect("token");
    let status = answer.status.expect("status");
    assert!(!status.token.is_empty());
    let missing = api_status(
        accounts
            .create_token_request("nobody", &pp, &request)
            .await
            .expect_err("404"),
    );
    assert_eq!(missing.code, 404);

    let fed = client(&server, &status.token);
    let user = "system:serviceaccount:gns-system:federation";
    Api::<Service>::all(fed.clone())
        .list(&ListParams::default())
        .await
        .expect("may list services");
    let forbidden = api_status(
        Api::<Secret>::namespaced(fed.clone(), "gns-system")
            .list(&ListParams::default())
            .await
            .expect_err("403"),
    );
    assert_eq!(forbidden.code, 403);
    assert_eq!(
        forbidden.message,
        format!(
            "secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"gns-system\""
        )
    );
    let deployments: Api<Deployment> = Api::namespaced(fed.clone(), "gns-system");
    let config = deployment("gns-system", "gateway", 1, None);
    let forbidden = api_status(
        deployments
            .patch(
                "gateway",
                &PatchParams::apply(MANAGER),
                &Patch::Apply(&config),
            )
            .await
            .expect_err("403"),
    );
    assert_eq!(forbidden.code, 403);
    // Minting tokens needs create on serviceaccounts/token.
    let forbidden = api_status(
        Api::<ServiceAccount>::namespaced(fed.clone(), "gns-system")
            .create_token_request("federation", &pp, &request)
            .await
            .expect_err("403"),
    );
    assert!(
        forbidden
            .message
            .contains("cannot create resource \"serviceaccounts/token\""),
        "{}",
        forbidden.message
    );

    // A Role in gns-system lets it manage Deployments there, only there.
    Api::<Role>::namespaced(admin.clone(), "gns-system")
        .create(
            &pp,
            &from(json!({
                "metadata": {"name": "gateway", "namespace": "gns-system"},
                "rules": [rule(&["apps"], &["deployments"], &["get", "create", "patch", "delete"])]
            })),
        )
        .await
        .expect("role");
    Api::<RoleBinding>::namespaced(admin.clone(), "gns-system")
        .create(
            &pp,
            &from(json!({
                "metadata": {"name": "gateway", "namespace": "gns-system"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gateway"},
                "subjects": [{"kind": "ServiceAccount", "name": "federation", "namespace": "gns-system"}]
            })),
        )
        .await
        .expect("role binding");
    deployments
        .patch(
            "gateway",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&config),
        )
        .await
        .expect("may apply in gns-system");
    let forbidden = api_status(
        Api::<Deployment>::namespaced(fed.clone(), "default")
            .patch(
                "gateway",
                &PatchParams::apply(MANAGER),
                &Patch::Apply(deployment("default", "gateway", 1, None)),
            )
            .await
            .expect_err("403 elsewhere"),
    );
    assert_eq!(forbidden.code, 403);
    assert!(server.can(user, Verb::Patch, "deployments.apps", Some("gns-system")));
    assert!(!server.can(user, Verb::Patch, "deployments.apps", Some("default")));
    assert!(server.can(user, Verb::List, "services", None));
    assert!(!server.can(user, Verb::Update, "services", None));

    // Without its account, the token is no good.
    accounts
        .delete("federation", &DeleteParams::default())
        .await
        .expect("deleted");
    let gone = api_status(
        Api::<Service>::all(fed)
            .list(&ListParams::default())
            .await
            .expect_err("401"),
    );
    assert_eq!(gone.code, 401);
}

/// Makes `default/short`, a service account that may do anything.
fn almighty_account(server: &TestApiServer) {
    let account: ServiceAccount =
        from(json!({"metadata": {"name": "short", "namespace": "default"}}));
    server.apply(&account).expect("account");
    let binding: ClusterRoleBinding = from(json!({
        "metadata": {"name": "short-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "all"},
        "subjects": [{"kind": "ServiceAccount", "name": "short", "namespace": "default"}]
    }));
    server.apply(&binding).expect("binding");
    let role: ClusterRole =
        from(json!({"metadata": {"name": "all"}, "rules": [rule(&["*"], &["*"], &["*"])]}));
    server.apply(&role).expect("role");
}

fn token_request(expiration_seconds: Option<i64>) -> TokenRequest {
    let mut request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}});
    if let Some(seconds) = expiration_seconds {
        request["spec"]["expirationSeconds"] = json!(seconds);
    }
    from(request)
}

/// Seconds since the epoch of a Kubernetes timestamp.
fn epoch_seconds(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    time.0.as_second()
}

#[tokio::test]
async fn minted_tokens_expire_when_the_servers_clock_passes_their_lifetime() {
    let server = start(TestApiServerOptions::default()).await;
    almighty_account(&server);
    let lifetime = Duration::from_secs(600);
    let token = server
        .service_account_token("default", "short", Some(lifetime))
        .expect("token");
    let api: Api<ConfigMap> = Api::namespaced(client(&server, &token), "default");
    api.list(&ListParams::default())
        .await
        .expect("valid for now");
    // Ten seconds short of its lifetime (a margin for the test's own time).
    server.advance_clock(lifetime - Duration::from_secs(10));
    api.list(&ListParams::default())
        .await
        .expect("still valid just before it expires");
    server.advance_clock(Duration::from_secs(10));
    let expired = api_status(api.list(&ListParams::default()).await.expect_err("expired"));
    assert_eq!(expired.code, 401, "{expired:?}");

    // A TokenRequest made now is minted on the advanced clock: it works, and
    // expires 600 s after the advanced "now", not after the wall clock's.
    let admin = client(&server, ADMIN);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin, "default");
    let answer = accounts
        .create_token_request("short", &PostParams::default(), &token_request(Some(600)))
        .await
        .expect("token request");
    let status = answer.status.expect("status");
    let created = answer
        .metadata
        .creation_timestamp
        .expect("creationTimestamp");
    assert_eq!(
        epoch_seconds(&status.expiration_timestamp) - epoch_seconds(&created),
        600
    );
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    assert!(
        epoch_seconds(&created) >= i64::try_from(wall).expect("seconds") + 600,
        "issued on the server's clock, 600 s ahead of the wall clock: {created:?}"
    );
    let fresh: Api<ConfigMap> = Api::namespaced(client(&server, &status.token), "default");
    fresh
        .list(&ListParams::default())
        .await
        .expect("the fresh token is valid");
    server.advance_clock(Duration::from_secs(600));
    let expired = api_status(
        fresh
            .list(&ListParams::default())
            .await
            .expect_err("expired"),
    );
    assert_eq!(expired.code, 401, "{expired:?}");

    // The test shortcut is bounded like a TokenRequest; without a lifetime
    // a token never expires.
    let refused = server
        .service_account_token("default", "short", Some(Duration::from_secs(300)))
        .expect_err("shorter than 10 minutes");
    assert!(
        refused
            .to_string()
            .contains("may not specify a duration less than 10 minutes"),
        "{refused}"
    );
    let forever = server
        .service_account_token("default", "short", None)
        .expect("token");
    server.advance_clock(Duration::from_secs(10 * 365 * 24 * 3600));
    Api::<ConfigMap>::namespaced(client(&server, &forever), "default")
        .list(&ListParams::default())
        .await
        .expect("a token without a lifetime never expires");
}

#[tokio::test]
async fn token_requests_outside_10_minutes_to_2_pow_32_seconds_are_invalid() {
    let server = start(TestApiServerOptions::default()).await;
    almighty_account(&server);
    let accounts: Api<ServiceAccount> = Api::namespaced(client(&server, ADMIN), "default");
    let pp = PostParams::default();
    for (seconds, why) in [
        (599, "may not specify a duration less than 10 minutes"),
        (0, "may not specify a duration less than 10 minutes"),
        (-600, "may not specify a duration less than 10 minutes"),
        (
            (1_i64 << 32) + 1,
            "may not specify a duration larger than 2^32 seconds",
        ),
    ] {
        let refused = api_status(
            accounts
                .create_token_request("short", &pp, &token_request(Some(seconds)))
                .await
                .expect_err("invalid"),
        );
        assert_eq!(refused.code, 422, "{seconds}: {refused:?}");
        assert_eq!(refused.reason, "Invalid");
        assert_eq!(
            refused.message,
            format!(
                "TokenRequest.authentication.k8s.io \"\" is invalid: \
                 spec.expirationSeconds: Invalid value: {seconds}: {why}"
            )
        );
        let details = refused.details.expect("details");
        assert_eq!(details.group, "authentication.k8s.io");
        assert_eq!(details.kind, "TokenRequest");
        assert_eq!(details.causes.len(), 1, "{details:?}");
        assert_eq!(details.causes[0].reason, "FieldValueInvalid");
        assert_eq!(details.causes[0].field, "spec.expirationSeconds");
        assert_eq!(
            details.causes[0].message,
            format!("Invalid value: {seconds}: {why}")
        );
    }
    // The account is looked up first: a missing one is 404 whatever the lifetime.
    let missing = api_status(
        accounts
            .create_token_request("nobody", &pp, &token_request(Some(599)))
            .await
            .expect_err("404"),
    );
    assert_eq!(missing.code, 404, "{missing:?}");
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/token"))
            .all(|r| r.status != 201),
        "nothing was minted"
    );

    // The bounds themselves are accepted, and an absent lifetime is an hour.
    for (asked, expected) in [(Some(600), 600), (Some(1_i64 << 32), 1 << 32), (None, 3600)] {
        let answer = accounts
            .create_token_request("short", &pp, &token_request(asked))
            .await
            .unwrap_or_else(|e| panic!("{asked:?} is accepted: {e}"));
        assert_eq!(answer.spec.expiration_seconds, Some(expected));
        let status = answer.status.expect("status");
        let created = answer
            .metadata
            .creation_timestamp
            .expect("creationTimestamp");
        assert_eq!(
            epoch_seconds(&status.expiration_timestamp) - epoch_seconds(&created),
            expected,
            "{asked:?}"
        );
        Api::<ConfigMap>::namespaced(client(&server, &status.token), "default")
            .list(&ListParams::default())
            .await
            .expect("the token works");
    }
}

#[tokio::test]
async fn service_account_token_secrets_get_a_token() {
    let server = start(TestApiServerOptions::default()).await;
    let admin = client(&server, ADMIN);
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), "default")
        .create(
            &pp,
            &from(json!({"metadata": {"name": "federation", "namespace": "default"}})),
        )
        .await
        .expect("account");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    secrets
        .create(
            &pp,
            &from(json!({
                "metadata": {"name": "federation-token", "namespace": "default",
                    "annotations": {"kubernetes.io/service-account.name": "federation"}},
                "type": "kubernetes.io/service-account-token"
            })),
        )
        .await
        .expect("secret");
    let secret = eventually("the token", async || {
        let s = secrets.get("federation-token").await.ok()?;
        s.data.as_ref()?.contains_key("token").then_some(s)
    })
    .await;
    let data = secret.data.clone().expect("data");
    let token = String::from_utf8(data["token"].0.clone()).expect("utf-8");
    assert_eq!(data["namespace"].0, b"default");
    assert_eq!(data["ca.crt"].0, server.ca_pem().as_bytes());
    assert!(
        secret
            .annotations()
            .contains_key("kubernetes.io/service-account.uid")
    );
    // The token authenticates as the account (which may do nothing yet).
    let status = api_status(
        Api::<Service>::all(client(&server, &token))
            .list(&ListParams::default())
            .await
            .expect_err("403"),
    );
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .contains("User \"system:serviceaccount:default:federation\""),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn discovery_lists_the_new_types() {
    let server = start(TestApiServerOptions::default()).await;
    let discovery = kube::Discovery::new(client(&server, ADMIN))
        .run()
        .await
        .expect("discovery");
    for (group, kind, namespaced) in [
        ("apps", "Deployment", true),
        ("", "Namespace", false),
        ("", "Secret", true),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding", false),
        ("rbac.authorization.k8s.io", "Role", true),
    ] {
        let (resource, caps) = discovery
            .groups()
            .filter(|g| g.name() == group)
            .flat_map(|g| g.recommended_resources())
            .find(|(r, _)| r.kind == kind)
            .unwrap_or_else(|| panic!("{kind} discovered"));
        assert_eq!(
            caps.scope == kube::discovery::Scope::Namespaced,
            namespaced,
            "{kind}"
        );
        assert!(
            caps.supports_operation(kube::discovery::verbs::PATCH),
            "{kind}"
        );
        assert!(!resource.plural.is_empty());
    }
}
