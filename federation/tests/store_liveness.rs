//! The liveness plane of the [`Store`], on both real backends: facts are
//! written without a revision or an audit row and never go back in time;
//! lapses are found, settled and reopened by a beat; status merges write
//! only changes; deleting an object forgets its facts; the audit log is
//! pruned by age.

mod support;

use std::sync::Arc;

use gns_federation::model::Kind;
use gns_federation::store::{
    Liveness, NO_EXPIRY, ObjectKey, ObjectWrite, PageRequest, Store, StoreError,
};
use serde_json::{Map, Value, json};
use support::Backend;

fn cluster(name: &str) -> ObjectWrite {
    ObjectWrite {
        key: ObjectKey::global(Kind::Cluster, name),
        spec: json!({"name": name, "kubernetes": {"server": "https://10.0.0.1:6443"}}),
        secret: Some(br#"{"token":"t"}"#.to_vec()),
        cluster_refs: vec![],
        domain: None,
        status: Some(json!({"phase": "Pending"})),
        actor: "tester".into(),
    }
}

fn fact(key: &ObjectKey, beat_ms: i64, expires_ms: i64, data: Value) -> Liveness {
    Liveness {
        key: key.clone(),
        beat_ms,
        expires_ms,
        data,
    }
}

async fn audit_rows(store: &dyn Store) -> usize {
    store
        .list_audit(&PageRequest::default())
        .await
        .expect("audit")
        .items
        .len()
}

fn patch(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

async fn liveness_facts_make_no_revision_and_never_go_back(store: Arc<dyn Store>) {
    store.create(cluster("east")).await.expect("east");
    let east = ObjectKey::global(Kind::Cluster, "east");
    let west = ObjectKey::global(Kind::Cluster, "west");
    let (revision, audited) = (
        store.revision().await.expect("revision"),
        audit_rows(store.as_ref()).await,
    );
    // Two beats of east in one batch: the last one counts.
    store
        .record_liveness(&[
            fact(&east, 100, NO_EXPIRY, json!({"services": 1})),
            fact(&west, 150, 1_150, json!({})),
            fact(&east, 200, NO_EXPIRY, json!({"services": 2})),
        ])
        .await
        .expect("record");
    let facts = store
        .liveness(Kind::Cluster, None, None)
        .await
        .expect("facts");
    assert_eq!(
        facts,
        [
            fact(&east, 200, NO_EXPIRY, json!({"services": 2})),
            fact(&west, 150, 1_150, json!({})),
        ]
    );
    // An older beat (a slower replica) does not replace a newer one.
    store
        .record_liveness(&[fact(&east, 150, NO_EXPIRY, json!({"services": 9}))])
        .await
        .expect("record");
    assert_eq!(
        store
            .liveness(Kind::Cluster, Some(""), Some("east"))
            .await
            .expect("east"),
        [fact(&east, 200, NO_EXPIRY, json!({"services": 2}))]
    );
    assert_eq!(store.revision().await.expect("revision"), revision);
    assert_eq!(audit_rows(store.as_ref()).await, audited);
}

async fn lapses_are_found_settled_once_and_reopened_by_a_beat(store: Arc<dyn Store>) {
    let vm = ObjectKey::scoped(Kind::ExternalWorkload, "production", "vm");
    store
        .record_liveness(&[fact(&vm, 500, 1_000, json!({}))])
        .await
        .expect("record");
    let lapsed = |now| {
        let store = Arc::clone(&store);
        async move {
            store
                .lapsed(Kind::ExternalWorkload, now)
                .await
                .expect("lapsed")
                .into_iter()
                .map(|f| f.key.name)
                .collect::<Vec<_>>()
        }
    };
    assert!(lapsed(999).await.is_empty(), "not yet");
    assert_eq!(lapsed(1_000).await, ["vm"]);
    assert!(
        !store.settle_lapse(&vm, 400).await.expect("settle"),
        "a lapse judged on an older beat is not settled"
    );
    assert!(store.settle_lapse(&vm, 500).await.expect("settle"));
    assert!(lapsed(10_000).await.is_empty(), "settled");
    // A new beat opens a new lapse.
    store
        .record_liveness(&[fact(&vm, 3_000, 4_000, json!({}))])
        .await
        .expect("record");
    assert!(lapsed(3_999).await.is_empty());
    assert_eq!(lapsed(4_000).await, ["vm"]);
    store.forget_liveness(&vm).await.expect("forget");
    assert!(lapsed(i64::MAX - 1).await.is_empty());
}

async fn merged_statuses_change_only_what_changed(store: Arc<dyn Store>) {
    let created = store.create(cluster("east")).await.expect("east");
    let key = created.key.clone();
    let audited = audit_rows(store.as_ref()).await;
    let (same, changed) = store
        .merge_status(
            &key,
            patch(json!({"phase": "Pending"})),
            None,
            "system:test",
            "status",
        )
        .await
        .expect("merge");
    assert!(!changed);
    assert_eq!(same.resource_version, created.resource_version);
    assert_eq!(audit_rows(store.as_ref()).await, audited, "no audit row");
    let (merged, changed) = store
        .merge_status(
            &key,
            patch(json!({"phase": "Unreachable", "withdrawnAtMillis": 5})),
            Some(created.resource_version),
            "system:test",
            "status",
        )
        .await
        .expect("merge");
    assert!(changed);
    assert!(merged.resource_version > created.resource_version);
    assert_eq!(
        merged.status,
        json!({"phase": "Unreachable", "withdrawnAtMillis": 5})
    );
    assert_eq!(audit_rows(store.as_ref()).await, audited + 1);
    // Other keys are kept; null removes one.
    let (merged, _) = store
        .merge_status(
            &key,
            patch(json!({"message": "down"})),
            None,
            "system:test",
            "status",
        )
        .await
        .expect("merge");
    assert_eq!(
        merged.status,
        json!({"phase": "Unreachable", "withdrawnAtMillis": 5, "message": "down"})
    );
    let (merged, _) = store
        .merge_status(
            &key,
            patch(json!({"withdrawnAtMillis": null})),
            None,
            "system:test",
            "status",
        )
        .await
        .expect("merge");
    assert_eq!(
        merged.status,
        json!({"phase": "Unreachable", "message": "down"})
    );
    assert_eq!(
        store.get(&key).await.expect("get").expect("east").status,
        merged.status
    );
    assert!(matches!(
        store
            .merge_status(
                &key,
                patch(json!({"phase": "Connected"})),
                Some(created.resource_version),
                "system:test",
                "status",
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store
            .merge_status(
                &ObjectKey::global(Kind::Cluster, "nope"),
                patch(json!({"phase": "Connected"})),
                None,
                "system:test",
                "status",
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn deleting_an_object_forgets_its_liveness(store: Arc<dyn Store>) {
    store.create(cluster("east")).await.expect("east");
    let east = ObjectKey::global(Kind::Cluster, "east");
    store
        .record_liveness(&[fact(&east, 1, NO_EXPIRY, json!({}))])
        .await
        .expect("record");
    store.delete(&east, None, "tester").await.expect("delete");
    assert!(
        store
            .liveness(Kind::Cluster, None, None)
            .await
            .expect("facts")
            .is_empty()
    );
}

async fn audit_rows_are_pruned_by_age(store: Arc<dyn Store>) {
    store.create(cluster("east")).await.expect("east");
    store.create(cluster("west")).await.expect("west");
    assert_eq!(
        store.prune_audit(0).await.expect("prune"),
        0,
        "none that old"
    );
    assert_eq!(audit_rows(store.as_ref()).await, 2);
    let later = gns_federation::api::now_millis() + 1_000;
    assert_eq!(store.prune_audit(later).await.expect("prune"), 2);
    assert_eq!(audit_rows(store.as_ref()).await, 0);
    assert!(
        store
            .get(&ObjectKey::global(Kind::Cluster, "east"))
            .await
            .expect("get")
            .is_some()
    );
}

async fn gateway_silence_is_recorded_once_and_cleared_by_a_report(store: Arc<dyn Store>) {
    use gns_federation::liveness::cluster::{
        FORGET_REPLACED, instance_key, prune_instances, reported, sweep_gateways,
    };
    use gns_federation::model::ClusterStatus;
    const TIMEOUT: i64 = 3_000;
    store.create(cluster("east")).await.expect("east");
    let east = ObjectKey::global(Kind::Cluster, "east");
    let (a, b) = (instance_key("east", "gw-a"), instance_key("east", "gw-b"));
    store
        .record_liveness(&[
            fact(&a, 1_000, 1_000 + TIMEOUT, json!({"version": "1"})),
            fact(&b, 2_000, 2_000 + TIMEOUT, json!({"version": "1"})),
        ])
        .await
        .expect("record");
    let start = store.revision().await.expect("revision");
    let audited = audit_rows(store.as_ref()).await;

    // gw-a is silent, gw-b still reports: no transition.
    sweep_gateways(store.as_ref(), 4_500, TIMEOUT)
        .await
        .expect("sweep");
    assert_eq!(store.revision().await.expect("revision"), start);
    // Both silent: recorded once.
    sweep_gateways(store.as_ref(), 5_000, TIMEOUT)
        .await
        .expect("sweep");
    sweep_gateways(store.as_ref(), 6_000, TIMEOUT)
        .await
        .expect("sweep again");
    assert_eq!(store.revision().await.expect("revision"), start + 1);
    let object = store.get(&east).await.expect("get").expect("east");
    let status = ClusterStatus::of(&object.status);
    assert_eq!(status.gateways_silent_since_millis, Some(5_000));
    assert_eq!(object.status["phase"], "Pending", "the sync state is kept");
    let audit = store
        .list_audit(&PageRequest::default())
        .await
        .expect("audit");
    assert_eq!(audit.items.len(), audited + 1);
    assert_eq!(
        (
            audit.items[0].actor.as_str(),
            audit.items[0].action.as_str()
        ),
        ("system:liveness", "gateways-silent")
    );

    // gw-a reports again: recorded back, once.
    store
        .record_liveness(&[fact(&a, 7_000, 7_000 + TIMEOUT, json!({"version": "2"}))])
        .await
        .expect("record");
    reported(store.as_ref(), &object).await.expect("reported");
    let back = store.get(&east).await.expect("get").expect("east");
    assert!(!ClusterStatus::of(&back.status).gateways_silent());
    reported(store.as_ref(), &back)
        .await
        .expect("reported again");
    assert_eq!(store.revision().await.expect("revision"), start + 2);
    let audit = store
        .list_audit(&PageRequest::default())
        .await
        .expect("audit");
    assert_eq!(audit.items[0].action, "gateways-back");

    // gw-b was replaced long ago: forgotten; gw-a, the last, stays.
    assert_eq!(
        prune_instances(store.as_ref(), 1_000).await.expect("prune"),
        0,
        "not long enough"
    );
    assert_eq!(
        prune_instances(store.as_ref(), 2_001 + FORGET_REPLACED)
            .await
            .expect("prune"),
        1
    );
    let left: Vec<String> = store
        .liveness(Kind::Cluster, Some("east"), None)
        .await
        .expect("facts")
        .into_iter()
        .map(|f| f.key.name)
        .collect();
    assert_eq!(left, ["gw-a"]);
    // A report taken by a replica with a shorter timeout lapses early: this
    // sweeper (3 s) keeps judging it until it is silent by its own timeout.
    store
        .record_liveness(&[fact(&a, 30_000, 31_000, json!({"version": "2"}))])
        .await
        .expect("record");
    reported(
        store.as_ref(),
        &store.get(&east).await.expect("get").expect("east"),
    )
    .await
    .expect("reported");
    let revision = store.revision().await.expect("revision");
    sweep_gateways(store.as_ref(), 31_500, TIMEOUT)
        .await
        .expect("sweep");
    assert_eq!(
        store.revision().await.expect("revision"),
        revision,
        "not silent yet"
    );
    sweep_gateways(store.as_ref(), 33_000, TIMEOUT)
        .await
        .expect("sweep");
    let object = store.get(&east).await.expect("get").expect("east");
    assert_eq!(
        ClusterStatus::of(&object.status).gateways_silent_since_millis,
        Some(33_000),
        "silent by this sweeper's timeout"
    );

    // Deleting the cluster forgets its instances (settled or not); a global
    // namespace named like it does not touch them.
    store
        .create(ObjectWrite {
            key: ObjectKey::global(Kind::GlobalNamespace, "west"),
            spec: json!({"name": "west", "domain": "west.example.com", "members": []}),
            secret: None,
            cluster_refs: vec![],
            domain: Some("west.example.com".parse().expect("domain")),
            status: None,
            actor: "tester".into(),
        })
        .await
        .expect("gns west");
    store.create(cluster("west")).await.expect("west");
    let w = instance_key("west", "gw-w");
    store
        .record_liveness(&[fact(&w, 1, NO_EXPIRY, json!({}))])
        .await
        .expect("record");
    store
        .delete(
            &ObjectKey::global(Kind::GlobalNamespace, "west"),
            None,
            "tester",
        )
        .await
        .expect("delete gns");
    assert_eq!(
        store
            .liveness(Kind::Cluster, Some("west"), None)
            .await
            .expect("facts")
            .len(),
        1
    );
    store.delete(&east, None, "tester").await.expect("delete");
    assert!(
        store
            .liveness(Kind::Cluster, Some("east"), None)
            .await
            .expect("facts")
            .is_empty()
    );
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
            async fn liveness_facts_make_no_revision_and_never_go_back() {
                run(super::liveness_facts_make_no_revision_and_never_go_back).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lapses_are_found_settled_once_and_reopened_by_a_beat() {
                run(super::lapses_are_found_settled_once_and_reopened_by_a_beat).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn merged_statuses_change_only_what_changed() {
                run(super::merged_statuses_change_only_what_changed).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deleting_an_object_forgets_its_liveness() {
                run(super::deleting_an_object_forgets_its_liveness).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gateway_silence_is_recorded_once_and_cleared_by_a_report() {
                run(super::gateway_silence_is_recorded_once_and_cleared_by_a_report).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn audit_rows_are_pruned_by_age() {
                run(super::audit_rows_are_pruned_by_age).await
            }
        }
    };
}

battery!(sqlite);
battery!(postgres);
