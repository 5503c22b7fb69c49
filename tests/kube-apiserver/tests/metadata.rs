//! Metadata-only reads, as kube-rs makes them for `Api<PartialObjectMeta<K>>`
//! and `Api::list_metadata` (`Accept: ...;as=PartialObjectMetadata...`):
//! objects come as `PartialObjectMetadata`, only their metadata, in lists,
//! watch events and bookmarks alike.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use kube_apiserver_test::{Grant, TestApiServer, TestApiServerOptions};
use serde_json::json;

const ADMIN: &str = "metadata-admin";

fn client(server: &TestApiServer) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(server.url().parse().expect("url"));
    config.root_cert = Some(vec![server.ca_der().to_vec()]);
    config.auth_info.token = Some(ADMIN.to_owned().into());
    Client::try_from(config).expect("client")
}

fn pod(name: &str, version: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web", "version": version}},
        "spec": {"containers": [{"name": "web", "image": "registry.test/web:1"}]}
    }))
    .expect("pod")
}

#[tokio::test]
async fn pods_are_listed_and_watched_as_metadata_only() {
    let server =
        TestApiServer::start(TestApiServerOptions::default().token(ADMIN, Grant::admin("admin")))
            .await
            .expect("server");
    server.apply(&pod("web-1", "v1.5")).expect("pod");
    let pods: Api<Pod> = Api::namespaced(client(&server), "shop");

    let list = pods
        .list_metadata(&ListParams::default())
        .await
        .expect("metadata list");
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].labels()["version"], "v1.5");
    // The spec stays on the server: the typed list carries metadata only.
    let raw = serde_json::to_value(&list.items[0]).expect("json");
    assert!(raw.get("spec").is_none(), "{raw}");

    let metadata: Api<PartialObjectMeta<Pod>> = Api::namespaced(client(&server), "shop");
    let mut events = watcher::watcher(metadata, watcher::Config::default()).boxed();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut relisted = false;
    while !relisted {
        match events.next().await.expect("event").expect("no error") {
            Event::InitApply(meta) => {
                seen.insert(meta.name_any(), meta.labels()["version"].clone());
            }
            Event::InitDone => relisted = true,
            _ => {}
        }
    }
    assert_eq!(seen["web-1"], "v1.5");
    // A label change arrives as a metadata event.
    server.apply(&pod("web-1", "v2.0-alpha")).expect("relabel");
    loop {
        if let Event::Apply(meta) = events.next().await.expect("event").expect("no error") {
            assert_eq!(meta.name_any(), "web-1");
            assert_eq!(meta.labels()["version"], "v2.0-alpha");
            assert_eq!(
                meta.types.as_ref().map(|t| t.kind.as_str()),
                Some("PartialObjectMetadata")
            );
            break;
        }
    }
}
