//! Every manifest in `deploy/` parses into its k8s-openapi type, and no field
//! is lost on the way (a misspelt field would be dropped by the typed parse,
//! so it fails here). The gateway template is checked as the federation
//! renders it.

use std::collections::BTreeSet;
use std::path::Path;

use gns_federation::model::GatewayDeployment;
use gns_federation::rollout::{GatewayParams, PortRole, manifests};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// JSON pointers of every leaf in `value`.
fn leaves(value: &Value, at: String, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                leaves(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{at}/{i}"), out);
            }
        }
        _ => {
            out.insert(at);
        }
    }
}

fn roundtrip<K: DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) {
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: does not parse as its kind: {e}"));
    let back = serde_json::to_value(&typed).expect("serialize");
    let (mut wanted, mut kept) = (BTreeSet::new(), BTreeSet::new());
    leaves(doc, String::new(), &mut wanted);
    leaves(&back, String::new(), &mut kept);
    let lost: Vec<&String> = wanted.difference(&kept).collect();
    assert!(
        lost.is_empty(),
        "{what}: fields the type does not know: {lost:?}"
    );
}

fn check(doc: &Value, what: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let kind = doc["kind"].as_str().unwrap_or_default();
    let what = format!("{what} ({kind} {})", doc["metadata"]["name"]);
    match (doc["apiVersion"].as_str().unwrap_or_default(), kind) {
        ("v1", "Namespace") => roundtrip::<Namespace>(doc, &what),
        ("v1", "ServiceAccount") => roundtrip::<ServiceAccount>(doc, &what),
        ("v1", "Secret") => roundtrip::<Secret>(doc, &what),
        ("v1", "ConfigMap") => roundtrip::<ConfigMap>(doc, &what),
        ("v1", "Service") => roundtrip::<Service>(doc, &what),
        ("apps/v1", "Deployment") => roundtrip::<Deployment>(doc, &what),
        ("policy/v1", "PodDisruptionBudget") => roundtrip::<PodDisruptionBudget>(doc, &what),
        other => panic!("{what}: no check for {other:?}; add its k8s-openapi type here"),
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn every_manifest_in_deploy_parses_into_its_kind() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut checked = 0;
    let mut dirs = vec![deploy.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read deploy/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            // The gateway template is checked rendered, below.
            if !is_yaml || path.ends_with("gateway/gateway.yaml") {
                continue;
            }
            for doc in documents(&path) {
                check(&doc, &path.display().to_string());
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "found the federation manifests ({checked})");
}

#[test]
fn the_rendered_gateway_parses_into_its_kinds() {
    let spec: GatewayDeployment = serde_json::from_value(serde_json::json!({
        "image": "ghcr.io/gns-project/gns-gateway:9.9.9", "replicas": 3
    }))
    .expect("spec");
    let params = GatewayParams {
        cluster: "east".into(),
        spec,
        federation_url: "https://gns.example.com".into(),
        federation_ca: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        dns_address: "10.0.0.53:53".into(),
        domains: vec!["production.app.acme.com".into()],
        egress_ports: [
            (5432, PortRole::Tcp),
            (6379, PortRole::Tcp),
            (8080, PortRole::Http),
        ]
        .into(),
    };
    let docs = manifests(&params).expect("renders");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Service",
            "Service"
        ],
        "the namespace comes first"
    );
    for doc in &docs {
        check(doc, "deploy/gateway/gateway.yaml");
    }
    // The egress Service: HTTP on 80 and each service port of the config.
    let egress = &docs[7];
    assert_eq!(egress["metadata"]["name"], "gns-gateway-egress");
    let ports: Vec<(i64, Value, Value)> = egress["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["targetPort"].clone(),
                p["name"].clone(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (80, Value::from("egress"), Value::from("egress")),
            (5432, Value::from(5432), Value::from("tcp-5432")),
            (6379, Value::from(6379), Value::from("tcp-6379")),
            (8080, Value::from(8080), Value::from("http-8080"))
        ]
    );
    // No public Service unless asked for; with publicServiceType, one of that type.
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "gns-gateway-public")
    );
    let mut public = params.clone();
    public.spec.public_service_type = Some(gns_federation::model::IngressServiceType::NodePort);
    let with_public = manifests(&public).expect("renders");
    let service = with_public
        .iter()
        .find(|d| d["metadata"]["name"] == "gns-gateway-public")
        .expect("the public Service");
    check(service, "deploy/gateway/gateway.yaml");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "public");
    // The federation's roots go into a ConfigMap the gateway reads them from.
    assert_eq!(docs[3]["metadata"]["name"], "gns-federation-ca");
    assert_eq!(docs[3]["data"]["ca.pem"], params.federation_ca.as_str());
    let deployment = &docs[5];
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ca_env = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "GNS_FEDERATION_CA")
        .expect("GNS_FEDERATION_CA");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "federation-ca")
        .expect("the CA is mounted");
    assert_eq!(
        ca_env["value"].as_str().expect("path"),
        format!("{}/ca.pem", mount["mountPath"].as_str().expect("path"))
    );
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/version"],
        "9.9.9"
    );
}
