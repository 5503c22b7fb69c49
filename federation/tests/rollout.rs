//! Gateway rollout end to end, in process: a federation installs the gateway
//! of a member cluster (a Kubernetes API test server, driven by the real
//! kube-rs client) with server-side apply when the cluster joins a global
//! namespace, reports the rollout in the cluster status, upgrades it when the
//! image changes, reports a field owned by another manager as a conflict
//! (and takes it over only when told to), and removes everything when the
//! cluster leaves its last global namespace.

mod support;

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions};
use serde_json::{Value, json};
use support::fed::{Fed, eventually};

const DOMAIN: &str = "production.app.acme.com";

async fn member(grant: Grant) -> TestApiServer {
    TestApiServer::start(
        TestApiServerOptions::default()
            .token("fed-token", grant)
            .rollout_delay(Duration::from_millis(300)),
    )
    .await
    .expect("test API server starts")
}

fn cluster_body(api: &TestApiServer, deployment: Value) -> Value {
    json!({"name": "east", "kubernetes": {"server": api.url(), "token": "fed-token",
            "caData": base64::engine::general_purpose::STANDARD.encode(api.ca_pem())},
           "networks": ["10.8.0.0/16"], "gatewayDeployment": deployment})
}

/// Waits for the cluster's `status.gateway` to satisfy `check`; returns it.
async fn gateway_status(fed: &Fed, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let cluster = fed.get("/v1/clusters/east").await;
        let gateway = cluster["status"]["gateway"].clone();
        if check(&gateway) {
            return gateway;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 20 s; status: {}",
            cluster["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put_cluster(fed: &Fed, api: &TestApiServer, deployment: Value) {
    let (status, body) = fed
        .send(
            reqwest::Method::PUT,
            "/v1/clusters/east",
            Some(cluster_body(api, deployment)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

fn deployment(api: &TestApiServer) -> Option<Deployment> {
    api.get::<Deployment>("gns-system", "gns-gateway")
        .expect("read deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_is_installed_upgraded_reported_and_removed() {
    let api = member(Grant::admin(
        "system:serviceaccount:gns-system:gns-federation",
    ))
    .await;
    let fed = Fed::start().await;
    fed.post(
        "/v1/clusters",
        cluster_body(
            &api,
            json!({"image": "registry.example/gns-gateway:0.1.0", "replicas": 2}),
        ),
    )
    .await;
    // Registered but in no global namespace: nothing is installed yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        deployment(&api).is_none(),
        "no gateway before the cluster joins"
    );

    // A second member cluster, west, with its own API server and load balancer.
    let west = TestApiServer::start(
        TestApiServerOptions::default()
            .token(
                "fed-token",
                Grant::admin("system:serviceaccount:gns-system:gns-federation"),
            )
            .load_balancer_address("203.0.113.2"),
    )
    .await
    .expect("west's API server");
    let mut west_body = cluster_body(
        &west,
        json!({"image": "registry.example/gns-gateway:0.1.0"}),
    );
    west_body["name"] = json!("west");
    fed.post("/v1/clusters", west_body).await;

    let joined = std::time::Instant::now();
    fed.post(
        "/v1/global-namespaces",
        json!({"name": "production", "domain": DOMAIN,
               "members": [{"cluster": "east", "namespace": "shop"},
                           {"cluster": "west", "namespace": "shop"}]}),
    )
    .await;
    // Both clusters get their gateway; each learns the other's deployed ingress.
    eventually(
        "west's gateway in east's config",
        Duration::from_secs(20),
        || async {
            let config = fed.get("/v1/config/gateways/east").await;
            let west_status = fed.get("/v1/clusters/west").await["status"]["gateway"].clone();
            if west_status["phase"] == "Ready"
                && config["gateways"]["west"]["ingressAddress"] == "203.0.113.2:15443"
            {
                Ok(())
            } else {
                Err(format!("{west_status} {}", config["gateways"]))
            }
        },
    )
    .await;
    assert!(
        west.get::<Deployment>("gns-system", "gns-gateway")
            .expect("read")
            .is_some(),
        "west's gateway applied into west's API server"
    );
    let ready = gateway_status(&fed, "the gateway to be Ready", |g| g["phase"] == "Ready").await;
    eprintln!(
        "cluster joined -> gateway Ready in the cluster status: {:?} (test server rollout delay 300 ms)",
        joined.elapsed()
    );
    assert_eq!(ready["readyReplicas"], 2, "{ready}");
    assert_eq!(ready["version"], "0.1.0", "{ready}");
    assert_eq!(
        ready["ingressAddress"], "203.0.113.1:15443",
        "the ingress address is read back from the LoadBalancer Service: {ready}"
    );
    // The cluster's spec names no gateway addresses: the gateway configs use
    // the ones read back from the deployed Services.
    let egress_ip = ready["egressAddress"]
        .as_str()
        .expect("egress address")
        .to_owned();
    eventually(
        "peers to learn east's deployed ingress",
        Duration::from_secs(10),
        || async {
            let config = fed.get("/v1/config/gateways/east").await;
            let peer = &config["gateways"]["east"]["ingressAddress"];
            if peer == "203.0.113.1:15443" {
                Ok(())
            } else {
                Err(config["gateways"].to_string())
            }
        },
    )
    .await;
    assert!(egress_ip.starts_with("10.96."), "{ready}");

    // What was applied, and by whom.
    assert!(
        api.get::<Namespace>("", "gns-system")
            .expect("namespace")
            .is_some()
    );
    let d = deployment(&api).expect("deployment");
    let managers: Vec<(String, String)> = d
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("gns-federation".into(), "Apply".into())),
        "applied with field manager gns-federation: {managers:?}"
    );
    let spec = d.spec.clone().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let container = &spec.template.spec.clone().expect("pod spec").containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/gns-gateway:0.1.0")
    );
    assert!(
        container
            .args
            .clone()
            .unwrap_or_default()
            .contains(&"--cluster=east".to_owned())
    );
    let ingress = api
        .get::<Service>("gns-system", "gns-gateway-ingress")
        .expect("svc")
        .expect("ingress service");
    assert_eq!(
        ingress.spec.and_then(|s| s.type_).as_deref(),
        Some("LoadBalancer")
    );
    let egress = api
        .get::<Service>("gns-system", "gns-gateway-egress")
        .expect("svc")
        .expect("egress service");
    assert_eq!(
        egress.spec.and_then(|s| s.type_).as_deref(),
        Some("ClusterIP")
    );
    let secret = api
        .get::<Secret>("gns-system", "gns-gateway-join")
        .expect("secret")
        .expect("join secret");
    let data = secret.data.unwrap_or_default();
    assert!(
        !data.contains_key("join-token"),
        "no one-time join token is deployed: pods join with their service-account tokens"
    );
    let url = data
        .get("federation-url")
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    assert_eq!(
        url, fed.api,
        "the gateway follows the federation's advertised URL"
    );
    let forwarding = api
        .get::<ConfigMap>("gns-system", "gns-dns-forwarding")
        .expect("configmap")
        .expect("forwarding");
    let stanza = forwarding
        .data
        .unwrap_or_default()
        .get("gns.server")
        .cloned()
        .unwrap_or_default();
    assert!(
        stanza.contains(&format!("{DOMAIN}:53 {{")) && stanza.contains("forward . 127.0.0.1:"),
        "a CoreDNS server block for the GNS domain: {stanza}"
    );

    // The egress Service follows the config's TCP ports: a TCP service
    // appears in west, and both clusters' egress Services expose its port.
    // In order of number (server-side apply keeps the order they came in).
    let egress_ports = |api: &TestApiServer| -> Vec<i32> {
        let mut ports: Vec<i32> = api
            .get::<Service>("gns-system", "gns-gateway-egress")
            .expect("svc")
            .and_then(|s| s.spec)
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .iter()
            .map(|p| p.port)
            .collect();
        ports.sort_unstable();
        ports
    };
    assert_eq!(
        egress_ports(&api),
        [80],
        "HTTP only while no TCP service exists"
    );
    west.apply::<Service>(&kube_apiserver_test::service(
        "shop",
        "db",
        &[("app", "db")],
        &[("pg", 5432)],
    ))
    .expect("db service");
    west.apply(&kube_apiserver_test::endpoint_slice(
        "shop",
        "db",
        "db-1",
        &[("10.9.3.1", true, true, false, None)],
        &[("pg", 5432)],
    ))
    .expect("db slice");
    eventually(
        "both egress Services to expose 5432",
        Duration::from_secs(20),
        || async {
            let ports = (egress_ports(&api), egress_ports(&west));
            if ports == (vec![80, 5432], vec![80, 5432]) {
                Ok(())
            } else {
                Err(format!("{ports:?}"))
            }
        },
    )
    .await;
    // A public entry Service, when asked for, and gone when no longer.
    let public = |api: &TestApiServer| {
        api.get::<Service>("gns-system", "gns-gateway-public")
            .expect("svc")
            .and_then(|s| s.spec)
            .and_then(|s| s.type_)
    };
    assert_eq!(public(&api), None, "no public entry Service by default");
    // A service with a ready endpoint in east, so that outside clients are
    // answered east's public address once it has one. Its HTTP port is
    // 8080: the egress Services expose it too.
    api.apply::<Service>(&kube_apiserver_test::service(
        "shop",
        "web",
        &[("app", "web")],
        &[("http", 8080)],
    ))
    .expect("web service");
    api.apply(&kube_apiserver_test::endpoint_slice(
        "shop",
        "web",
        "web-1",
        &[("10.8.1.1", true, true, false, None)],
        &[("http", 8080)],
    ))
    .expect("web slice");
    eventually(
        "both egress Services to expose web's HTTP port 8080",
        Duration::from_secs(20),
        || async {
            let ports = (egress_ports(&api), egress_ports(&west));
            if ports == (vec![80, 5432, 8080], vec![80, 5432, 8080]) {
                Ok(())
            } else {
                Err(format!("{ports:?}"))
            }
        },
    )
    .await;
    put_cluster(
        &fed,
        &api,
        json!({"image": "registry.example/gns-gateway:0.1.0", "replicas": 2,
               "publicServiceType": "LoadBalancer"}),
    )
    .await;
    eventually("the public Service", Duration::from_secs(20), || async {
        match public(&api) {
            Some(t) if t == "LoadBalancer" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Its load balancer's address is read back into the status, and outside
    // clients' DNS answers for web are it.
    let balancer = || {
        api.get::<Service>("gns-system", "gns-gateway-public")
            .expect("svc")
            .and_then(|s| s.status?.load_balancer?.ingress?.first()?.ip.clone())
    };
    let outside_answers = || async {
        let (status, trace) = fed
            .send(
                reqwest::Method::POST,
                "/v1/trace",
                Some(json!({"host": format!("web.{DOMAIN}")})),
            )
            .await;
        assert_eq!(status, 200, "{trace}");
        trace["dns"]["answers"].clone()
    };
    eventually(
        "the public address in the status and outside answers",
        Duration::from_secs(20),
        || async {
            let Some(ip) = balancer() else {
                return Err("no load balancer address yet".to_owned());
            };
            let status = fed.get("/v1/clusters/east").await["status"]["gateway"].clone();
            let answers = outside_answers().await;
            if status["publicAddress"] == ip && answers == json!([ip]) {
                Ok(())
            } else {
                Err(format!("{ip}: {status} answers {answers}"))
            }
        },
    )
    .await;
    put_cluster(
        &fed,
        &api,
        json!({"image": "registry.example/gns-gateway:0.1.0", "replicas": 2}),
    )
    .await;
    eventually(
        "the public Service and its address to go",
        Duration::from_secs(20),
        || async {
            let status = fed.get("/v1/clusters/east").await["status"]["gateway"].clone();
            match public(&api) {
                None if status["publicAddress"].is_null() => Ok(()),
                other => Err(format!("{other:?} {status}")),
            }
        },
    )
    .await;

    // manageCoreDNS: the forwarding blocks merged into CoreDNS's own
    // Corefile, in a section of their own; off again, the section goes; a
    // block for the GNS domain someone else wrote is a conflict.
    let kubeadm = ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . /etc/resolv.conf\n    cache 30\n}\n";
    let set_corefile = |corefile: &str| {
        let map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile}}))
        .expect("configmap");
        api.apply(&map).expect("coredns configmap");
    };
    let corefile = || -> String {
        api.get::<ConfigMap>("kube-system", "coredns")
            .expect("read")
            .and_then(|c| c.data)
            .and_then(|d| d.get("Corefile").cloned())
            .unwrap_or_default()
    };
    set_corefile(kubeadm);
    let manage = |on: bool| json!({"image": "registry.example/gns-gateway:0.1.0", "replicas": 2, "manageCoreDNS": on});
    put_cluster(&fed, &api, manage(true)).await;
    eventually(
        "CoreDNS to forward the domain",
        Duration::from_secs(20),
        || async {
            let text = corefile();
            if text.starts_with(kubeadm)
                && text.contains(&format!("{DOMAIN}:53 {{"))
                && text.contains("# BEGIN gns-federation")
            {
                Ok(())
            } else {
                Err(text)
            }
        },
    )
    .await;
    put_cluster(&fed, &api, manage(false)).await;
    eventually("the section to go", Duration::from_secs(20), || async {
        let text = corefile();
        if text == kubeadm { Ok(()) } else { Err(text) }
    })
    .await;
    let theirs = format!("{kubeadm}{DOMAIN}:53 {{\n    forward . 192.0.2.53\n}}\n");
    set_corefile(&theirs);
    put_cluster(&fed, &api, manage(true)).await;
    let conflict = gateway_status(&fed, "the CoreDNS conflict to be reported", |g| {
        g["phase"] == "Conflict"
    })
    .await;
    assert!(
        conflict["message"]
            .as_str()
            .is_some_and(|m| m.contains("CoreDNS") && m.contains(DOMAIN)),
        "{conflict}"
    );
    assert_eq!(corefile(), theirs, "their block is left alone");
    assert_eq!(
        conflict["replicas"], 2,
        "the gateway is followed beside the conflict: {conflict}"
    );
    // While it lasts, the egress Service still follows the config's ports.
    west.apply::<Service>(&kube_apiserver_test::service(
        "shop",
        "cache",
        &[("app", "cache")],
        &[("redis", 6379)],
    ))
    .expect("cache service");
    west.apply(&kube_apiserver_test::endpoint_slice(
        "shop",
        "cache",
        "cache-1",
        &[("10.9.4.1", true, true, false, None)],
        &[("redis", 6379)],
    ))
    .expect("cache slice");
    eventually(
        "the egress Service to expose 6379 during the conflict",
        Duration::from_secs(20),
        || async {
            match egress_ports(&api) {
                ports if ports == [80, 5432, 6379, 8080] => Ok(()),
                ports => Err(format!("{ports:?}")),
            }
        },
    )
    .await;
    // Their block removed, the next try merges ours and the conflict ends.
    set_corefile(kubeadm);
    gateway_status(&fed, "the CoreDNS conflict to end, ours merged", |g| {
        g["phase"] != "Conflict"
            && g["phase"] != "Applying"
            && corefile().contains("# BEGIN gns-federation")
    })
    .await;

    // Upgrade: a new image rolls out; held, the status shows it progressing.
    api.hold_rollouts(true);
    put_cluster(
        &fed,
        &api,
        json!({"image": "registry.example/gns-gateway:0.2.0", "replicas": 2}),
    )
    .await;
    let progressing = gateway_status(&fed, "the upgrade to be in progress", |g| {
        g["phase"] == "Progressing" && g["version"] == "0.2.0"
    })
    .await;
    eprintln!("during the upgrade: {progressing}");
    api.hold_rollouts(false);
    gateway_status(&fed, "the upgrade to finish", |g| {
        g["phase"] == "Ready" && g["version"] == "0.2.0"
    })
    .await;

    // Another manager takes .spec.replicas: the next apply reports the conflict.
    let mut theirs = deployment(&api).expect("deployment");
    theirs.metadata.managed_fields = None;
    theirs.metadata.resource_version = None;
    theirs.status = None;
    if let Some(spec) = theirs.spec.as_mut() {
        spec.replicas = Some(5);
    }
    api.apply_as("kubectl", &theirs).expect("kubectl applies");
    put_cluster(
        &fed,
        &api,
        json!({"image": "registry.example/gns-gateway:0.2.0", "replicas": 3}),
    )
    .await;
    let conflict = gateway_status(&fed, "the conflict to be reported", |g| {
        g["phase"] == "Conflict"
    })
    .await;
    let message = conflict["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("kubectl") && message.contains(".spec.replicas"),
        "the conflict names the manager and the field: {conflict}"
    );
    assert_eq!(
        deployment(&api)
            .and_then(|d| d.spec)
            .and_then(|s| s.replicas),
        Some(5),
        "not forced"
    );
    // Told to, the federation takes the field over.
    put_cluster(
        &fed,
        &api,
        json!({"image": "registry.example/gns-gateway:0.2.0", "replicas": 3, "forceConflicts": true}),
    )
    .await;
    gateway_status(&fed, "ready after forcing", |g| {
        g["phase"] == "Ready" && g["readyReplicas"] == 3
    })
    .await;

    // The cluster leaves its last global namespace: everything goes.
    let (status, body) = fed
        .send(
            reqwest::Method::DELETE,
            "/v1/global-namespaces/production",
            None,
        )
        .await;
    assert!((200..300).contains(&status), "{status} {body}");
    eventually(
        "the gateway to be removed",
        Duration::from_secs(20),
        || async {
            let left = (
                deployment(&api).is_some(),
                api.get::<Namespace>("", "gns-system")
                    .expect("ns")
                    .is_some(),
            );
            let west_left = west
                .get::<Deployment>("gns-system", "gns-gateway")
                .expect("read")
                .is_some();
            if left == (false, false) && !west_left {
                Ok(())
            } else {
                Err(format!("deployment, namespace still there: {left:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_may_not_install_are_reported() {
    let api = member(Grant::read_only("system:serviceaccount:gns-system:reader")).await;
    let fed = Fed::start().await;
    fed.post("/v1/clusters", cluster_body(&api, json!({})))
        .await;
    fed.post(
        "/v1/global-namespaces",
        json!({"name": "production", "domain": DOMAIN,
               "members": [{"cluster": "east", "namespace": "shop"}]}),
    )
    .await;
    let failed = gateway_status(&fed, "the failure to be reported", |g| {
        g["phase"] == "Failed"
    })
    .await;
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains("forbidden"), "{failed}");
    assert_eq!(
        failed["version"],
        env!("CARGO_PKG_VERSION"),
        "the default image is this version"
    );
    // Discovery is unaffected: the cluster still syncs.
    let cluster = fed.get("/v1/clusters/east").await;
    assert_eq!(cluster["status"]["phase"], "Connected", "{cluster}");
}
