//! One behaviour battery for the [`Store`] trait, run against both real
//! backends: SQLite (a temporary file) and Postgres (a fresh database).

mod support;

use std::sync::Arc;
use std::time::Duration;

use gns_federation::model::{ClusterRef, Domain, Kind, Name, Role};
use gns_federation::store::{BatchOp, ObjectKey, ObjectWrite, PageRequest, Store, StoreError};
use serde_json::{Value, json};
use support::Backend;

fn name(s: &str) -> Name {
    s.parse().expect("valid name")
}

fn cluster_write(n: &str, token: &str) -> ObjectWrite {
    ObjectWrite {
        key: ObjectKey::global(Kind::Cluster, n),
        spec: json!({"name": n, "kubernetes": {"server": "https://10.0.0.1:6443"}}),
        secret: Some(format!("{{\"token\":\"{token}\"}}").into_bytes()),
        cluster_refs: vec![],
        domain: None,
        status: Some(json!({"phase": "Pending"})),
        actor: "tester".into(),
    }
}

fn gns_write(n: &str, domain: &str, clusters: &[&str]) -> ObjectWrite {
    ObjectWrite {
        key: ObjectKey::global(Kind::GlobalNamespace, n),
        spec: json!({"name": n, "domain": domain, "members": clusters.iter().map(|c| json!({"cluster": c, "namespace": "shop"})).collect::<Vec<_>>()}),
        secret: None,
        cluster_refs: clusters
            .iter()
            .enumerate()
            .map(|(i, c)| ClusterRef {
                cluster: name(c),
                field: format!("members[{i}].cluster"),
            })
            .collect(),
        domain: Some(domain.parse::<Domain>().expect("valid domain")),
        status: None,
        actor: "tester".into(),
    }
}

fn scoped_write(kind: Kind, gns: &str, n: &str, spec: Value, clusters: &[&str]) -> ObjectWrite {
    ObjectWrite {
        key: ObjectKey::scoped(kind, gns, n),
        spec,
        secret: None,
        cluster_refs: clusters
            .iter()
            .map(|c| ClusterRef {
                cluster: name(c),
                field: "destinations".into(),
            })
            .collect(),
        domain: None,
        status: None,
        actor: "tester".into(),
    }
}

async fn seed(store: &dyn Store) {
    store
        .create(cluster_write("east", "tok-east"))
        .await
        .expect("east");
    store
        .create(cluster_write("west", "tok-west"))
        .await
        .expect("west");
    store
        .create(gns_write(
            "production",
            "production.app.acme.com",
            &["east", "west"],
        ))
        .await
        .expect("gns");
}

// ---------------------------------------------------------------------------

async fn crud_for_every_kind(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let scoped = [
        (
            Kind::Routing,
            "web",
            json!({"rules": [{"destinations": [{"cluster": "east", "weight": 100}]}]}),
            vec!["east"],
        ),
        (
            Kind::ExternalWorkload,
            "db-vm-1",
            json!({"name": "db-vm-1", "service": "db"}),
            vec![],
        ),
        (
            Kind::AccessPolicy,
            "web-to-api",
            json!({"name": "web-to-api", "to": "api"}),
            vec![],
        ),
        (
            Kind::Service,
            "web",
            json!({"name": "web", "clusters": {}}),
            vec![],
        ),
    ];
    for (kind, n, spec, clusters) in scoped {
        let created = store
            .create(scoped_write(kind, "production", n, spec.clone(), &clusters))
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
        let key = ObjectKey::scoped(kind, "production", n);
        let got = store.get(&key).await.expect("get").expect("exists");
        assert_eq!(got.spec, spec);
        assert_eq!(got.resource_version, created.resource_version);
        let listed = store
            .list(kind, "production", &PageRequest::default())
            .await
            .expect("list");
        assert_eq!(listed.items.len(), 1);
        let mut changed_spec = spec.clone();
        changed_spec["note"] = json!("changed");
        let outcome = store
            .update(
                scoped_write(kind, "production", n, changed_spec.clone(), &clusters),
                Some(created.resource_version),
            )
            .await
            .expect("update");
        assert!(outcome.changed);
        assert!(outcome.object.resource_version > created.resource_version);
        assert_eq!(
            store.get(&key).await.expect("get").expect("exists").spec,
            changed_spec
        );
        assert!(matches!(
            store
                .create(scoped_write(kind, "production", n, spec, &clusters))
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
        store.delete(&key, None, "tester").await.expect("delete");
        assert!(store.get(&key).await.expect("get").is_none());
        assert!(matches!(
            store.delete(&key, None, "tester").await,
            Err(StoreError::NotFound(_))
        ));
    }
    // Cluster-wide kinds: update of a global namespace and of a cluster.
    let gns_key = ObjectKey::global(Kind::GlobalNamespace, "production");
    let outcome = store
        .update(
            gns_write("production", "production.app.acme.com", &["east"]),
            None,
        )
        .await
        .expect("update gns");
    assert!(outcome.changed);
    assert_eq!(
        store
            .get(&gns_key)
            .await
            .expect("get")
            .expect("exists")
            .spec["members"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // A scoped object needs its global namespace.
    let orphan = store
        .create(scoped_write(
            Kind::AccessPolicy,
            "nope",
            "p",
            json!({}),
            &[],
        ))
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound(m)) if m.contains("nope")));
}

async fn unchanged_writes_make_no_revision(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let before = store.revision().await.expect("revision");
    let outcome = store
        .update(
            gns_write("production", "production.app.acme.com", &["east", "west"]),
            None,
        )
        .await
        .expect("update");
    assert!(!outcome.changed, "same spec is a no-op");
    assert_eq!(store.revision().await.expect("revision"), before);
    // Same credentials: no-op; new credentials: a change, even with the same spec.
    assert!(
        !store
            .update(cluster_write("east", "tok-east"), None)
            .await
            .expect("same")
            .changed
    );
    assert!(
        store
            .update(cluster_write("east", "tok-rotated"), None)
            .await
            .expect("rotated")
            .changed
    );
}

async fn stale_resource_version_conflicts(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let key = ObjectKey::global(Kind::Cluster, "east");
    let v1 = store
        .get(&key)
        .await
        .expect("get")
        .expect("exists")
        .resource_version;
    let mut w = cluster_write("east", "tok-east");
    w.spec["labels"] = json!({"a": "1"});
    store
        .update(w.clone(), Some(v1))
        .await
        .expect("first update");
    w.spec["labels"] = json!({"a": "2"});
    match store.update(w, Some(v1)).await {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, v1);
            assert!(current > v1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        store.delete(&key, Some(v1), "tester").await,
        Err(StoreError::Conflict { .. })
    ));
}

async fn concurrent_writers_exactly_one_wins(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let key = ObjectKey::global(Kind::Cluster, "east");
    let v = store
        .get(&key)
        .await
        .expect("get")
        .expect("exists")
        .resource_version;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut w = cluster_write("east", "tok-east");
            w.spec["labels"] = json!({"writer": i.to_string()});
            store.update(w, Some(v)).await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(o) if o.changed => wins += 1,
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((wins, conflicts), (1, 7));
}

async fn paging_is_complete_and_ordered(store: Arc<dyn Store>) {
    for i in 0..25 {
        store
            .create(cluster_write(&format!("c-{i:02}"), "t"))
            .await
            .expect("create");
    }
    store
        .create(cluster_write("c0", "t"))
        .await
        .expect("create");
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .list(
                Kind::Cluster,
                "",
                &PageRequest {
                    limit: Some(10),
                    after: after.clone(),
                },
            )
            .await
            .expect("list");
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|o| o.key.name));
        pages += 1;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 26);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "byte order on every backend");
    assert_eq!(seen.first().map(String::as_str), Some("c-00"));
    assert_eq!(seen.last().map(String::as_str), Some("c0"));
}

async fn cascades_and_references(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    store
        .create(scoped_write(
            Kind::Routing,
            "production",
            "web",
            json!({}),
            &["west"],
        ))
        .await
        .expect("routing");
    store
        .create(scoped_write(
            Kind::ExternalWorkload,
            "production",
            "vm",
            json!({}),
            &[],
        ))
        .await
        .expect("workload");
    store
        .create(scoped_write(
            Kind::AccessPolicy,
            "production",
            "p",
            json!({}),
            &[],
        ))
        .await
        .expect("policy");
    // Missing cluster.
    match store
        .create(gns_write("staging", "staging.acme.com", &["north"]))
        .await
    {
        Err(StoreError::MissingCluster { field, cluster }) => {
            assert_eq!(cluster, "north");
            assert_eq!(field, "members[0].cluster");
        }
        other => panic!("expected MissingCluster, got {other:?}"),
    }
    // Referenced clusters can't go, and the error names the referrers.
    match store
        .delete(&ObjectKey::global(Kind::Cluster, "west"), None, "tester")
        .await
    {
        Err(StoreError::Referenced { referrers, .. }) => {
            assert!(
                referrers.contains(&"globalnamespace/production".to_owned()),
                "{referrers:?}"
            );
            assert!(
                referrers.contains(&"routing/production/web".to_owned()),
                "{referrers:?}"
            );
        }
        other => panic!("expected Referenced, got {other:?}"),
    }
    // Deleting the global namespace removes everything in it and frees the clusters.
    store
        .delete(
            &ObjectKey::global(Kind::GlobalNamespace, "production"),
            None,
            "tester",
        )
        .await
        .expect("delete gns");
    for kind in [Kind::Routing, Kind::ExternalWorkload, Kind::AccessPolicy] {
        assert!(
            store
                .list(kind, "production", &PageRequest::default())
                .await
                .expect("list")
                .items
                .is_empty(),
            "{kind} left behind"
        );
    }
    store
        .delete(&ObjectKey::global(Kind::Cluster, "west"), None, "tester")
        .await
        .expect("west is free now");
    // A namespace of the same name starts empty.
    store
        .create(gns_write("production", "production.app.acme.com", &[]))
        .await
        .expect("recreate");
    assert!(
        store
            .list(Kind::Routing, "production", &PageRequest::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

async fn domains_are_exclusive(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    for (n, domain) in [
        ("a", "production.app.acme.com"),
        ("b", "x.production.app.acme.com"),
        ("c", "app.acme.com"),
    ] {
        match store.create(gns_write(n, domain, &[])).await {
            Err(StoreError::DomainTaken { owner, .. }) => assert_eq!(owner, "production"),
            other => panic!("{domain}: expected DomainTaken, got {other:?}"),
        }
    }
    store
        .create(gns_write("d", "xproduction.app.acme.com", &[]))
        .await
        .expect("not overlapping");
    store
        .create(gns_write("e", "staging.app.acme.com", &[]))
        .await
        .expect("sibling");
    // Moving a namespace to a free domain releases the old one.
    store
        .update(gns_write("production", "prod.acme.com", &["east"]), None)
        .await
        .expect("move");
    store
        .create(gns_write("f", "production.app.acme.com", &[]))
        .await
        .expect("old domain is free");
    store
        .delete(
            &ObjectKey::global(Kind::GlobalNamespace, "d"),
            None,
            "tester",
        )
        .await
        .expect("delete");
    store
        .create(gns_write("g", "xproduction.app.acme.com", &[]))
        .await
        .expect("freed by delete");
}

async fn revision_is_monotonic_and_notifies(store: Arc<dyn Store>) {
    let mut rx = store.subscribe();
    let start = store.revision().await.expect("revision");
    let mut last = start;
    for i in 0..5 {
        let o = store
            .create(cluster_write(&format!("c{i}"), "t"))
            .await
            .expect("create");
        assert!(o.resource_version > last);
        last = o.resource_version;
    }
    assert_eq!(store.revision().await.expect("revision"), last);
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= last))
        .await
        .expect("notified in time")
        .expect("channel open");
    let status = store
        .set_status(
            &ObjectKey::global(Kind::Cluster, "c0"),
            json!({"phase": "Connected"}),
            "sync",
            "status",
        )
        .await
        .expect("status");
    assert!(status.resource_version > last);
    assert_eq!(status.status["phase"], "Connected");
}

async fn credentials_are_kept_and_replaced(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let key = ObjectKey::global(Kind::Cluster, "east");
    let secret = store.secret(&key).await.expect("secret").expect("present");
    assert_eq!(secret, br#"{"token":"tok-east"}"#);
    let mut keep = cluster_write("east", "x");
    keep.secret = None;
    keep.spec["labels"] = json!({"a": "b"});
    store
        .update(keep, None)
        .await
        .expect("update without secret");
    assert_eq!(
        store.secret(&key).await.expect("secret").expect("kept"),
        br#"{"token":"tok-east"}"#
    );
    store
        .update(cluster_write("east", "tok-new"), None)
        .await
        .expect("rotate");
    assert_eq!(
        store.secret(&key).await.expect("secret").expect("new"),
        br#"{"token":"tok-new"}"#
    );
    let spec = store
        .get(&key)
        .await
        .expect("get")
        .expect("exists")
        .spec
        .to_string();
    assert!(!spec.contains("tok-"), "spec never holds credentials");
}

async fn tokens_and_audit(store: Arc<dyn Store>) {
    let t = store
        .create_token("ci", Role::Viewer, None, &[], "hash-ci", "admin")
        .await
        .expect("token");
    assert_eq!(t.role, Role::Viewer);
    assert!(matches!(
        store
            .create_token("ci", Role::Admin, None, &[], "hash-2", "admin")
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        store
            .find_token("hash-ci")
            .await
            .expect("find")
            .map(|t| t.name),
        Some("ci".to_owned())
    );
    assert!(store.find_token("other").await.expect("find").is_none());
    store
        .create_token("ops", Role::Editor, None, &[], "hash-ops", "admin")
        .await
        .expect("token");
    assert_eq!(
        store
            .list_tokens(&PageRequest::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    store.delete_token("ci", "admin").await.expect("delete");
    assert!(
        store.find_token("hash-ci").await.expect("find").is_none(),
        "revoked at once"
    );
    assert!(matches!(
        store.delete_token("ci", "admin").await,
        Err(StoreError::NotFound(_))
    ));

    seed(store.as_ref()).await;
    let audit = store
        .list_audit(&PageRequest {
            limit: Some(2),
            after: None,
        })
        .await
        .expect("audit");
    assert_eq!(audit.items.len(), 2);
    assert_eq!(audit.items[0].kind, "globalnamespace", "newest first");
    assert_eq!(audit.items[0].actor, "tester");
    assert_eq!(audit.items[0].action, "create");
    let rest = store
        .list_audit(&PageRequest {
            limit: Some(100),
            after: audit.next,
        })
        .await
        .expect("audit");
    assert!(rest.items.iter().all(|e| e.id < audit.items[1].id));
    assert!(
        rest.items
            .iter()
            .any(|e| e.kind == "token" && e.action == "delete" && e.name == "ci")
    );
}

/// Discovery's catalog entries go in a few hundred rows per statement: a
/// batch larger than one statement, a key written twice (the later wins)
/// and a delete between two puts of one key all land as ordered.
async fn catalog_batches_span_statements_and_keep_their_order(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let before = store.revision().await.expect("revision");
    let entry = |name: &str, n: usize| BatchOp::PutEncoded {
        key: ObjectKey::scoped(Kind::Service, "production", name),
        spec: json!({"name": name, "n": n}).to_string(),
    };
    let mut ops: Vec<BatchOp> = (0..600)
        .map(|i| entry(&format!("s{i:03}.east"), i))
        .collect();
    ops.push(entry("s007.east", 7000));
    ops.push(BatchOp::Delete(ObjectKey::scoped(
        Kind::Service,
        "production",
        "s008.east",
    )));
    ops.push(entry("s009.east", 9000));
    ops.push(BatchOp::Delete(ObjectKey::scoped(
        Kind::Service,
        "production",
        "s009.east",
    )));
    ops.push(entry("s009.east", 9001));
    let outcome = store.write_batch(ops, "sync").await.expect("batch");
    assert_eq!(outcome.revision, before + 1);
    let spec = async |name: &str| {
        store
            .get(&ObjectKey::scoped(Kind::Service, "production", name))
            .await
            .expect("get")
            .map(|o| (o.spec["n"].clone(), o.resource_version))
    };
    assert_eq!(spec("s599.east").await, Some((json!(599), before + 1)));
    assert_eq!(spec("s007.east").await, Some((json!(7000), before + 1)));
    assert_eq!(spec("s008.east").await, None);
    assert_eq!(spec("s009.east").await, Some((json!(9001), before + 1)));
    let changes = store.changes_since(before).await.expect("changes");
    assert_eq!(changes.services.len(), 599);
    let names: Vec<&str> = changes
        .services
        .iter()
        .map(|o| o.key.name.as_str())
        .collect();
    assert!(names.is_sorted(), "changes come in key order");
}

/// Discovery reads back one cluster's entries as the texts it wrote.
async fn spec_texts_are_one_clusters_entries_as_written(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let entry = |name: &str| BatchOp::PutEncoded {
        key: ObjectKey::scoped(Kind::Service, "production", name),
        spec: format!("{{\"name\": \"{name}\"}}"),
    };
    let names = ["web.east", "api.east", "web.west", "db.beast", "x_y.east"];
    store
        .write_batch(names.iter().map(|n| entry(n)).collect(), "sync")
        .await
        .expect("batch");
    let texts = store
        .spec_texts(Kind::Service, "production", ".east")
        .await
        .expect("texts");
    let found: Vec<(&str, &str)> = texts
        .iter()
        .map(|(k, t)| (k.name.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("api.east", "{\"name\": \"api.east\"}"),
            ("web.east", "{\"name\": \"web.east\"}"),
            ("x_y.east", "{\"name\": \"x_y.east\"}"),
        ]
    );
    // LIKE's wildcards in the suffix are taken literally.
    let none = store
        .spec_texts(Kind::Service, "production", "_east")
        .await
        .expect("texts");
    assert!(none.is_empty(), "{none:?}");
}

async fn batches_are_one_revision(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let before = store.revision().await.expect("revision");
    let svc = |name: &str, addr: &str| {
        BatchOp::Put(scoped_write(
            Kind::Service,
            "production",
            name,
            json!({"name": name, "addr": addr}),
            &[],
        ))
    };
    let outcome = store
        .write_batch(
            vec![
                svc("web.east", "10.0.0.1"),
                svc("db.east", "10.0.0.2"),
                BatchOp::Put(scoped_write(
                    Kind::Service,
                    "gone",
                    "x.east",
                    json!({}),
                    &[],
                )),
                BatchOp::Delete(ObjectKey::scoped(Kind::Service, "production", "never-was")),
            ],
            "sync",
        )
        .await
        .expect("batch");
    assert_eq!(
        (outcome.applied, outcome.skipped, outcome.revision),
        (2, 1, before + 1)
    );
    let listed = store
        .list(Kind::Service, "production", &PageRequest::default())
        .await
        .expect("list");
    assert!(
        listed
            .items
            .iter()
            .all(|o| o.resource_version == before + 1),
        "one revision for the batch"
    );
    let second = store
        .write_batch(
            vec![
                BatchOp::Delete(ObjectKey::scoped(Kind::Service, "production", "web.east")),
                svc("db.east", "10.0.0.3"),
            ],
            "sync",
        )
        .await
        .expect("batch");
    assert_eq!((second.applied, second.revision), (2, before + 2));
    let db = store
        .get(&ObjectKey::scoped(Kind::Service, "production", "db.east"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(db.spec["addr"], "10.0.0.3", "a put replaces");
    assert!(
        store
            .get(&ObjectKey::scoped(Kind::Service, "production", "web.east"))
            .await
            .expect("get")
            .is_none()
    );
    let nothing = store
        .write_batch(
            vec![BatchOp::Delete(ObjectKey::scoped(
                Kind::Service,
                "production",
                "web.east",
            ))],
            "sync",
        )
        .await
        .expect("batch");
    assert_eq!(
        (nothing.applied, nothing.revision),
        (0, before + 2),
        "a batch that changes nothing makes no revision"
    );
    assert_eq!(store.revision().await.expect("revision"), before + 2);
    let audit = store
        .list_audit(&PageRequest {
            limit: Some(1),
            after: None,
        })
        .await
        .expect("audit");
    assert_eq!(audit.items[0].action, "sync");
}

async fn changes_since_sees_writes_and_deletes(store: Arc<dyn Store>) {
    seed(store.as_ref()).await;
    let all = store.changes_since(0).await.expect("changes");
    assert_eq!(all.revision, store.revision().await.expect("revision"));
    let names: Vec<&str> = all.changed.iter().map(|o| o.key.name.as_str()).collect();
    assert_eq!(
        names,
        ["east", "west", "production"],
        "kind, scope, name order"
    );
    assert!(all.deleted.is_empty());

    let base = all.revision;
    let svc = |n: &str| {
        let name = n.split('.').next().unwrap_or_default();
        scoped_write(Kind::Service, "production", n, json!({"name": name}), &[])
    };
    store.create(svc("web.east")).await.expect("web");
    store.create(svc("db.east")).await.expect("db");
    store
        .write_batch(
            vec![BatchOp::Delete(ObjectKey::scoped(
                Kind::Service,
                "production",
                "db.east",
            ))],
            "sync",
        )
        .await
        .expect("batch delete");
    let since = store.changes_since(base).await.expect("changes");
    assert!(since.changed.is_empty(), "services come parsed, apart");
    let changed: Vec<&str> = since.services.iter().map(|o| o.key.name.as_str()).collect();
    assert_eq!(changed, ["web.east"], "only what was written after {base}");
    let web = since.services[0]
        .spec
        .as_ref()
        .expect("the stored spec parses");
    assert_eq!(web.name.as_str(), "web");
    assert_eq!(
        since.deleted,
        [ObjectKey::scoped(Kind::Service, "production", "db.east")]
    );

    // Deleted and created again: among both, and it exists.
    let mid = since.revision;
    store.create(svc("db.east")).await.expect("db again");
    let again = store.changes_since(mid).await.expect("changes");
    assert_eq!(again.services.len(), 1);
    assert!(again.deleted.is_empty(), "the old delete is before {mid}");
    let both = store.changes_since(base).await.expect("changes");
    assert!(both.services.iter().any(|o| o.key.name == "db.east"));
    assert!(both.deleted.iter().any(|k| k.name == "db.east"));

    // A spec written as JSON text reads back parsed; one that does not
    // parse any more is reported on the object, not as a failed read.
    let texts = store
        .write_batch(
            vec![
                BatchOp::PutEncoded {
                    key: ObjectKey::scoped(Kind::Service, "production", "api.east"),
                    spec: r#"{"name":"api","ports":[],"clusters":{}}"#.to_owned(),
                },
                BatchOp::PutEncoded {
                    key: ObjectKey::scoped(Kind::Service, "production", "old.east"),
                    spec: r#"{"name":"old","ports":"none"}"#.to_owned(),
                },
                BatchOp::PutEncoded {
                    key: ObjectKey::scoped(Kind::Service, "gone", "api.east"),
                    spec: r#"{"name":"api"}"#.to_owned(),
                },
            ],
            "sync",
        )
        .await
        .expect("encoded batch");
    assert_eq!(
        (texts.applied, texts.skipped),
        (2, 1),
        "no global namespace gone"
    );
    let encoded = store.changes_since(both.revision).await.expect("changes");
    let parsed: Vec<(&str, bool)> = encoded
        .services
        .iter()
        .map(|o| (o.key.name.as_str(), o.spec.is_ok()))
        .collect();
    assert_eq!(parsed, [("api.east", true), ("old.east", false)]);
    let stored = store
        .get(&ObjectKey::scoped(Kind::Service, "production", "api.east"))
        .await
        .expect("get")
        .expect("written");
    assert_eq!(stored.status, json!({}));

    // Deleting a global namespace deletes, and reports, everything in it.
    let before_cascade = store.revision().await.expect("revision");
    store
        .delete(
            &ObjectKey::global(Kind::GlobalNamespace, "production"),
            None,
            "tester",
        )
        .await
        .expect("delete gns");
    let cascade = store.changes_since(before_cascade).await.expect("changes");
    assert!(cascade.changed.is_empty());
    let deleted: Vec<(Kind, &str)> = cascade
        .deleted
        .iter()
        .map(|k| (k.kind, k.name.as_str()))
        .collect();
    assert_eq!(
        deleted,
        [
            (Kind::GlobalNamespace, "production"),
            (Kind::Service, "api.east"),
            (Kind::Service, "db.east"),
            (Kind::Service, "old.east"),
            (Kind::Service, "web.east"),
        ]
    );
    assert_eq!(
        store
            .changes_since(cascade.revision)
            .await
            .expect("changes"),
        gns_federation::store::Changes {
            revision: cascade.revision,
            ..Default::default()
        },
        "nothing after the newest revision"
    );
}

async fn sealed_facts_insert_once_and_swap(store: Arc<dyn Store>) {
    assert_eq!(store.sealed_meta("ca/x").await.expect("read"), None);
    assert!(
        !store
            .swap_sealed_meta("ca/x", b"a", b"b")
            .await
            .expect("swap"),
        "nothing to swap"
    );
    let first = store
        .sealed_meta_or_insert("ca/x", b"one")
        .await
        .expect("insert");
    assert_eq!(first, b"one");
    let kept = store
        .sealed_meta_or_insert("ca/x", b"two")
        .await
        .expect("insert again");
    assert_eq!(kept, b"one", "the first writer wins");
    assert!(
        !store
            .swap_sealed_meta("ca/x", b"stale", b"three")
            .await
            .expect("swap"),
        "a stale expectation loses"
    );
    assert!(
        store
            .swap_sealed_meta("ca/x", b"one", b"three")
            .await
            .expect("swap")
    );
    assert_eq!(
        store.sealed_meta("ca/x").await.expect("read").as_deref(),
        Some(&b"three"[..])
    );
    // Two swaps from the same value: exactly one wins.
    let (a, b) = tokio::join!(
        store.swap_sealed_meta("ca/x", b"three", b"four"),
        store.swap_sealed_meta("ca/x", b"three", b"five")
    );
    assert_eq!(
        u8::from(a.expect("swap a")) + u8::from(b.expect("swap b")),
        1,
        "one of two concurrent swaps wins"
    );
}

async fn second_handle_sees_data(backend: &Backend) {
    seed(backend.store.as_ref()).await;
    let other = backend.reopen().await;
    assert!(
        other
            .get(&ObjectKey::global(Kind::Cluster, "east"))
            .await
            .expect("get")
            .is_some()
    );
    assert_eq!(
        other
            .secret(&ObjectKey::global(Kind::Cluster, "east"))
            .await
            .expect("secret"),
        Some(br#"{"token":"tok-east"}"#.to_vec())
    );
}

/// Telemetry samples: kept apart from the store of intent (no revision),
/// read back by time, oldest first, and pruned behind the window.
async fn telemetry_samples_are_kept_read_by_time_and_pruned(store: Arc<dyn Store>) {
    use gns_contract::report::{Classes, Entry, TrafficRecord};
    use gns_federation::store::TelemetrySample;
    let sample = |instance: &str, at_ms: i64, requests: u64| TelemetrySample {
        cluster: "east".into(),
        instance: instance.into(),
        at_ms,
        interval_ms: 5_000,
        traffic: vec![TrafficRecord {
            global_namespace: "production".into(),
            service: "web".into(),
            cluster: "west".into(),
            entry: Entry::Egress,
            requests,
            responses: Classes::from_counts([0, requests, 0, 0, 0]),
            latency_buckets: vec![requests, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            request_bytes: 0,
            response_bytes: 7 * requests,
        }],
    };
    let revision = store.revision().await.expect("revision");
    for (instance, at, n) in [("gw-1", 1_000, 1), ("gw-2", 2_000, 2), ("gw-1", 3_000, 3)] {
        store
            .record_telemetry(&sample(instance, at, n))
            .await
            .expect("record");
    }
    // The same instance and millisecond again: replaced, not doubled.
    store
        .record_telemetry(&sample("gw-1", 3_000, 4))
        .await
        .expect("record again");
    assert_eq!(
        store.revision().await.expect("revision"),
        revision,
        "telemetry makes no revision"
    );
    let read = store.telemetry_since(2_000).await.expect("read");
    assert_eq!(
        read,
        vec![sample("gw-2", 2_000, 2), sample("gw-1", 3_000, 4)]
    );
    assert_eq!(store.prune_telemetry(3_000).await.expect("prune"), 2);
    assert_eq!(
        store.telemetry_since(0).await.expect("read"),
        vec![sample("gw-1", 3_000, 4)]
    );
}

/// A replica's telemetry reader reads the whole window once, then only the
/// last minute again (a sample older than that arriving late is not read
/// again: the documented cost of not rereading fifteen minutes per poll),
/// sees rows written again within that minute, and drops what leaves the
/// window.
async fn a_replica_reads_telemetry_once_then_only_the_last_minute(store: Arc<dyn Store>) {
    use gns_federation::store::TelemetrySample;
    use gns_federation::telemetry::MAX_WINDOW_MS;
    use gns_federation::telemetry_samples::{OVERLAP_MS, Samples};
    let sample = |instance: &str, at_ms: i64, interval_ms: i64| TelemetrySample {
        cluster: "east".into(),
        instance: instance.into(),
        at_ms,
        interval_ms,
        traffic: Vec::new(),
    };
    let now = 10 * MAX_WINDOW_MS;
    for (instance, at) in [
        ("gw-1", now - MAX_WINDOW_MS - 1),
        ("gw-1", now - MAX_WINDOW_MS + 1_000),
        ("gw-2", now - 120_000),
        ("gw-1", now - 5_000),
    ] {
        store
            .record_telemetry(&sample(instance, at, 5_000))
            .await
            .expect("record");
    }
    let samples = Samples::default();
    let first = samples
        .read(store.as_ref(), now, now - MAX_WINDOW_MS)
        .await
        .expect("first read");
    let times: Vec<i64> = first.iter().map(|s| s.at_ms).collect();
    assert_eq!(
        times,
        [now - MAX_WINDOW_MS + 1_000, now - 120_000, now - 5_000],
        "the window, oldest first"
    );
    let minute = samples
        .read(store.as_ref(), now, now - 60_000)
        .await
        .expect("a shorter window");
    assert_eq!(minute.len(), 1);

    // Later: a new sample, one written again within the last minute, and a
    // late one from before the overlap.
    let later = now + 10_000;
    for s in [
        sample("gw-3", later - 1_000, 5_000),
        sample("gw-1", now - 5_000, 7_000),
        sample("gw-4", later - OVERLAP_MS - 30_000, 5_000),
    ] {
        store.record_telemetry(&s).await.expect("record");
    }
    let read = samples
        .read(store.as_ref(), later, later - MAX_WINDOW_MS)
        .await
        .expect("second read");
    let seen: Vec<(String, i64, i64)> = read
        .iter()
        .map(|s| (s.instance.clone(), s.at_ms, s.interval_ms))
        .collect();
    assert_eq!(
        seen,
        [
            ("gw-2".to_owned(), now - 120_000, 5_000),
            ("gw-1".to_owned(), now - 5_000, 7_000),
            ("gw-3".to_owned(), later - 1_000, 5_000),
        ],
        "the sample before the window left; the rewritten one replaced; the late one before the overlap not reread"
    );
    assert_eq!(samples.held().await, 3);
}

macro_rules! battery {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            async fn run<F, Fut>(f: F)
            where
                F: FnOnce(Arc<dyn Store>) -> Fut,
                Fut: std::future::Future<Output = ()>,
            {
                let backend = Backend::$backend().await;
                f(Arc::clone(&backend.store)).await;
                backend.cleanup().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn crud_for_every_kind() {
                run(super::crud_for_every_kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unchanged_writes_make_no_revision() {
                run(super::unchanged_writes_make_no_revision).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_resource_version_conflicts() {
                run(super::stale_resource_version_conflicts).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_writers_exactly_one_wins() {
                run(super::concurrent_writers_exactly_one_wins).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn paging_is_complete_and_ordered() {
                run(super::paging_is_complete_and_ordered).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cascades_and_references() {
                run(super::cascades_and_references).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn domains_are_exclusive() {
                run(super::domains_are_exclusive).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn revision_is_monotonic_and_notifies() {
                run(super::revision_is_monotonic_and_notifies).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn credentials_are_kept_and_replaced() {
                run(super::credentials_are_kept_and_replaced).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tokens_and_audit() {
                run(super::tokens_and_audit).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn batches_are_one_revision() {
                run(super::batches_are_one_revision).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn spec_texts_are_one_clusters_entries_as_written() {
                run(super::spec_texts_are_one_clusters_entries_as_written).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn catalog_batches_span_statements_and_keep_their_order() {
                run(super::catalog_batches_span_statements_and_keep_their_order).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn changes_since_sees_writes_and_deletes() {
                run(super::changes_since_sees_writes_and_deletes).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sealed_facts_insert_once_and_swap() {
                run(super::sealed_facts_insert_once_and_swap).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn telemetry_samples_are_kept_read_by_time_and_pruned() {
                run(super::telemetry_samples_are_kept_read_by_time_and_pruned).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_replica_reads_telemetry_once_then_only_the_last_minute() {
                run(super::a_replica_reads_telemetry_once_then_only_the_last_minute).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn second_handle_sees_data() {
                let backend = Backend::$backend().await;
                super::second_handle_sees_data(&backend).await;
                backend.cleanup().await;
            }
        }
    };
}

battery!(sqlite);
battery!(postgres);
