//! Test support: real stores on a temporary SQLite file or a fresh Postgres database.

#![allow(dead_code)]

pub mod fed;

use std::sync::Arc;

use gns_federation::store::{SecretBox, SqlStore, Store};
use sqlx::Connection;

/// Postgres for tests: `GNS_TEST_DATABASE_URL`, default the local server.
pub fn admin_url() -> String {
    std::env::var("GNS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fixed key so several handles can share one database.
pub fn test_key() -> SecretBox {
    SecretBox::from_bytes(&[7u8; 32]).expect("32-byte key")
}

/// A fresh Postgres database, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    /// URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
}

fn replace_db_name(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    match base[scheme_end..].find('/') {
        Some(slash) => format!("{}/{db}{query}", &base[..scheme_end + slash]),
        None => format!("{base}/{db}{query}"),
    }
}

impl TestDb {
    /// Creates `gns_test_<random>` on the test server; panics with how to start Postgres if it is down.
    pub async fn create() -> TestDb {
        let admin = admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Postgres is not reachable at {admin} ({e}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or point GNS_TEST_DATABASE_URL at a server"
                )
            });
        let name = format!("gns_test_{:016x}", rand_u64());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        TestDb {
            url: replace_db_name(&admin, &name),
            name,
        }
    }

    /// Drops the database (best effort).
    pub async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// Random 64 bits from the OS.
pub fn rand_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).expect("rng");
    u64::from_le_bytes(b)
}

/// A store of either backend plus what keeps it alive.
pub struct Backend {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Postgres database, if any.
    pub db: Option<TestDb>,
    /// SQLite dir, if any.
    pub dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// A store on a new SQLite file.
    pub async fn sqlite() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqlStore::open_sqlite_file(&dir.path().join("gns.db"), test_key())
            .await
            .expect("open sqlite");
        Backend {
            store: Arc::new(store),
            db: None,
            dir: Some(dir),
        }
    }

    /// A store on a new Postgres database.
    pub async fn postgres() -> Backend {
        let db = TestDb::create().await;
        let store = SqlStore::open_postgres(&db.url, test_key())
            .await
            .expect("open postgres");
        Backend {
            store: Arc::new(store),
            db: Some(db),
            dir: None,
        }
    }

    /// Another handle on the same database (as a second replica would have).
    pub async fn reopen(&self) -> Arc<dyn Store> {
        match (&self.db, &self.dir) {
            (Some(db), _) => Arc::new(
                SqlStore::open_postgres(&db.url, test_key())
                    .await
                    .expect("reopen"),
            ),
            (None, Some(dir)) => Arc::new(
                SqlStore::open_sqlite_file(&dir.path().join("gns.db"), test_key())
                    .await
                    .expect("reopen"),
            ),
            _ => unreachable!("a backend has a database or a dir"),
        }
    }

    /// Drops the store, then the Postgres database.
    pub async fn cleanup(self) {
        drop(self.store);
        if let Some(db) = self.db {
            db.drop_db().await;
        }
    }
}
