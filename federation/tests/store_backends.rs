//! Backend-specific store behaviour: Postgres change notification across
//! replicas, encryption at rest in the raw tables, schema version and key checks.

mod support;

use std::time::Duration;

use gns_federation::model::Kind;
use gns_federation::store::{ObjectKey, ObjectWrite, SecretBox, SqlStore, StoreError};
use serde_json::json;
use sqlx::Connection;
use support::{Backend, test_key};

fn cluster(n: &str) -> ObjectWrite {
    ObjectWrite {
        key: ObjectKey::global(Kind::Cluster, n),
        spec: json!({"name": n}),
        secret: Some(b"very-secret-token".to_vec()),
        cluster_refs: vec![],
        domain: None,
        status: None,
        actor: "tester".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifies_other_replicas() {
    let backend = Backend::postgres().await;
    let replica = backend.reopen().await;
    let mut rx = replica.subscribe();
    let written = backend.store.create(cluster("east")).await.expect("create");
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|r| *r >= written.resource_version),
    )
    .await
    .expect("the other replica hears of the write through LISTEN/NOTIFY")
    .expect("channel open");
    drop(replica);
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_secrets_are_encrypted_at_rest() {
    let backend = Backend::postgres().await;
    backend.store.create(cluster("east")).await.expect("create");
    let url = backend.db.as_ref().map(|d| d.url.clone()).expect("pg");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let raw: Vec<u8> = sqlx::query_scalar("SELECT secret FROM gns_objects WHERE name = 'east'")
        .fetch_one(&mut conn)
        .await
        .expect("row");
    assert!(!raw.windows(17).any(|w| w == b"very-secret-token"));
    assert!(raw.len() >= 17 + 12 + 16, "nonce + ciphertext + tag");
    drop(conn);
    backend.cleanup().await;
}

#[tokio::test]
async fn sqlite_secrets_are_encrypted_at_rest() {
    let backend = Backend::sqlite().await;
    backend.store.create(cluster("east")).await.expect("create");
    let dir = backend.dir.as_ref().expect("dir").path().to_owned();
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("dir") {
        bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read"));
    }
    assert!(
        !bytes.windows(17).any(|w| w == b"very-secret-token"),
        "plaintext token on disk"
    );
    backend.cleanup().await;
}

#[tokio::test]
async fn wrong_secret_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gns.db");
    drop(
        SqlStore::open_sqlite_file(&path, test_key())
            .await
            .expect("open"),
    );
    let other = SecretBox::from_bytes(&[9u8; 32]).expect("key");
    let err = SqlStore::open_sqlite_file(&path, other)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("secret key does not match"),
        "{err}"
    );
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gns.db");
    drop(
        SqlStore::open_sqlite_file(&path, test_key())
            .await
            .expect("open"),
    );
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', TRUE, X'00', 0)",
    )
    .execute(&mut conn)
    .await
    .expect("insert");
    drop(conn);
    match SqlStore::open_sqlite_file(&path, test_key()).await {
        Err(StoreError::SchemaTooNew(9999)) => {}
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error() {
    // Nothing listens on port 1.
    let err = SqlStore::open_postgres("postgres://gns:pw@127.0.0.1:1/gns", test_key())
        .await
        .err()
        .expect("must fail");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("pw@"),
        "{text}"
    );
}
