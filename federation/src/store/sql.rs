//! The SQL implementation of [`Store`], shared by the Postgres and SQLite
//! backends through sqlx's `Any` driver: the SQL text is the same for both
//! (`$n` parameters, `RETURNING`), the schema lives in `migrations/<backend>/`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::AnyPool;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{Any, AssertSqlSafe, Executor, Row, SqlSafeStr, Transaction};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use super::{
    AuditEntry, BatchOp, BatchOutcome, Changes, Lease, Liveness, ObjectKey, ObjectWrite, Page,
    PageRequest, SecretBox, ServiceObject, Store, StoreError, StoredObject, TelemetrySample,
    TokenRecord, WriteOutcome,
};
use crate::model::{ClusterRef, Domain, Kind, Role};

mod liveness;
mod telemetry;

const NOTIFY_CHANNEL: &str = "gns_revision";
const KEY_CHECK: &str = "secret-key-check";
const KEY_CHECK_TEXT: &[u8] = b"gns secret key check";
const MAX_REFERRERS_REPORTED: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

/// A [`Store`] over Postgres or SQLite.
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Serializes this process's writers; across Postgres replicas the revision row lock does.
    write_lock: Mutex<()>,
    secrets: SecretBox,
    revision_tx: Arc<watch::Sender<u64>>,
    listener: Option<JoinHandle<()>>,
    /// Postgres URL, for lease connections.
    url: Option<String>,
}

/// A lease that is always held (SQLite: one process owns the store).
struct LocalLease;

#[async_trait]
impl Lease for LocalLease {
    async fn is_held(&self) -> bool {
        true
    }
}

/// A Postgres session advisory lock, held by keeping its connection open.
struct PgLease {
    conn: Mutex<Option<sqlx::PgConnection>>,
}

#[async_trait]
impl Lease for PgLease {
    async fn is_held(&self) -> bool {
        let mut guard = self.conn.lock().await;
        let Some(conn) = guard.as_mut() else {
            return false;
        };
        let alive = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&mut *conn),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !alive {
            // The session (and with it the lock) is gone or unusable: never trust it again.
            *guard = None;
        }
        alive
    }
}

/// Stable 64-bit advisory-lock key for a lease name (FNV-1a).
fn lease_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("gns-lease:{name}").bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        if let Some(task) = self.listener.take() {
            task.abort();
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Hides the password of a database URL for messages.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            // Postgres: class 08 connection exceptions, 57P0x shutdown, 53xxx resources;
            // SQLite: 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL, 14 CANTOPEN.
            let unavailable = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "3D000"
                || matches!(code.as_ref(), "5" | "6" | "10" | "13" | "14");
            if unavailable {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Internal(e.to_string())
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit_plus_one(page: &PageRequest) -> i64 {
    page.limit.map_or(i64::MAX, |l| i64::from(l) + 1)
}

/// Cuts a fetched `limit + 1` list down to a page and its continue key.
fn paginate<T>(mut items: Vec<T>, page: &PageRequest, key_of: impl Fn(&T) -> String) -> Page<T> {
    match page.limit {
        Some(limit) if items.len() > limit as usize => {
            items.truncate(limit as usize);
            let next = items.last().map(key_of);
            Page { items, next }
        }
        _ => Page { items, next: None },
    }
}

fn migrator(backend: Backend) -> Migrator {
    let scripts: [(&str, &str); 7] = match backend {
        Backend::Postgres => [
            (
                "init",
                include_str!("../../../migrations/postgres/0001_init.sql"),
            ),
            (
                "tombstones",
                include_str!("../../../migrations/postgres/0002_tombstones.sql"),
            ),
            (
                "identity",
                include_str!("../../../migrations/postgres/0003_identity.sql"),
            ),
            (
                "liveness",
                include_str!("../../../migrations/postgres/0004_liveness.sql"),
            ),
            (
                "gateway tokens",
                include_str!("../../../migrations/postgres/0005_gateway_tokens.sql"),
            ),
            (
                "token scopes",
                include_str!("../../../migrations/postgres/0006_token_scopes.sql"),
            ),
            (
                "telemetry",
                include_str!("../../../migrations/postgres/0007_telemetry.sql"),
            ),
        ],
        Backend::Sqlite => [
            (
                "init",
                include_str!("../../../migrations/sqlite/0001_init.sql"),
            ),
            (
                "tombstones",
                include_str!("../../../migrations/sqlite/0002_tombstones.sql"),
            ),
            (
                "identity",
                include_str!("../../../migrations/sqlite/0003_identity.sql"),
            ),
            (
                "liveness",
                include_str!("../../../migrations/sqlite/0004_liveness.sql"),
            ),
            (
                "gateway tokens",
                include_str!("../../../migrations/sqlite/0005_gateway_tokens.sql"),
            ),
            (
                "token scopes",
                include_str!("../../../migrations/sqlite/0006_token_scopes.sql"),
            ),
            (
                "telemetry",
                include_str!("../../../migrations/sqlite/0007_telemetry.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        scripts
            .into_iter()
            .zip(1_i64..)
            .map(|((description, sql), version)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

const OBJECT_COLUMNS: &str =
    "kind, scope, name, spec, status, resource_version, created_at, updated_at";

/// A text column of `row`.
fn text_column(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    row.try_get::<String, _>(col)
        .map_err(|e| StoreError::Internal(format!("column {col}: {e}")))
}

/// A number column of `row`.
fn number_column(row: &AnyRow, col: &str) -> Result<i64, StoreError> {
    row.try_get::<i64, _>(col)
        .map_err(|e| StoreError::Internal(format!("column {col}: {e}")))
}

/// The `kind` column of `row`.
fn kind_column(row: &AnyRow) -> Result<Kind, StoreError> {
    let text = text_column(row, "kind")?;
    Kind::parse(&text)
        .ok_or_else(|| StoreError::Internal(format!("unknown kind {text:?} in store")))
}

fn object_from_row(row: &AnyRow) -> Result<StoredObject, StoreError> {
    let get_str = |col: &str| text_column(row, col);
    let get_i64 = |col: &str| number_column(row, col);
    let kind = kind_column(row)?;
    let parse_json = |col: &str| -> Result<Value, StoreError> {
        serde_json::from_str(&get_str(col)?)
            .map_err(|e| StoreError::Internal(format!("column {col} is not JSON: {e}")))
    };
    Ok(StoredObject {
        key: ObjectKey {
            kind,
            scope: get_str("scope")?,
            name: get_str("name")?,
        },
        spec: parse_json("spec")?,
        status: parse_json("status")?,
        resource_version: u64_of(get_i64("resource_version")?),
        created_at: get_i64("created_at")?,
        updated_at: get_i64("updated_at")?,
    })
}

/// A discovered service of a row, its spec parsed from the column's text.
fn service_from_row(row: &AnyRow) -> Result<ServiceObject, StoreError> {
    let key = ObjectKey {
        kind: Kind::Service,
        scope: text_column(row, "scope")?,
        name: text_column(row, "name")?,
    };
    let version = u64_of(number_column(row, "resource_version")?);
    let spec = row
        .try_get::<&str, _>("spec")
        .map_err(|e| StoreError::Internal(format!("column spec: {e}")))?;
    Ok(ServiceObject::parse(key, version, spec))
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, StoreError> {
    let role_text: String = row.try_get("role").map_err(db_err)?;
    Ok(TokenRecord {
        name: row.try_get("name").map_err(db_err)?,
        role: Role::parse(&role_text)
            .ok_or_else(|| StoreError::Internal(format!("unknown role {role_text:?} in store")))?,
        cluster: row.try_get("cluster").map_err(db_err)?,
        global_namespaces: match row
            .try_get::<Option<String>, _>("global_namespaces")
            .map_err(db_err)?
        {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Internal(format!("token scope in store: {e}")))?,
            None => Vec::new(),
        },
        created_at: row.try_get("created_at").map_err(db_err)?,
        created_by: row.try_get("created_by").map_err(db_err)?,
    })
}

type Tx = Transaction<'static, Any>;

impl SqlStore {
    /// Connects to Postgres, applies migrations and starts listening for changes.
    pub async fn open_postgres(url: &str, secrets: SecretBox) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to Postgres at {}: {e}",
                    redact_url(url)
                ))
            })?;
        let mut store = Self::init(pool, Backend::Postgres, secrets).await?;
        store.listener = Some(store.spawn_listener(url).await?);
        store.url = Some(url.to_owned());
        Ok(store)
    }

    /// Opens (creating if needed) the SQLite database file at `path`.
    pub async fn open_sqlite_file(path: &Path, secrets: SecretBox) -> Result<Self, StoreError> {
        Self::open_sqlite_url(&format!("sqlite://{}?mode=rwc", path.display()), secrets).await
    }

    /// Opens a SQLite database by sqlx URL (`sqlite://path?mode=rwc`).
    pub async fn open_sqlite_url(url: &str, secrets: SecretBox) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // FULL: an acknowledged write survives a power loss
                    // (NORMAL in WAL mode may lose the last ones).
                    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
                        .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open SQLite database {url}: {e}")))?;
        pool.execute("PRAGMA journal_mode = WAL")
            .await
            .map_err(db_err)?;
        Self::init(pool, Backend::Sqlite, secrets).await
    }

    async fn init(pool: AnyPool, backend: Backend, secrets: SecretBox) -> Result<Self, StoreError> {
        migrator(backend).run(&pool).await.map_err(|e| match e {
            MigrateError::VersionMissing(v) => StoreError::SchemaTooNew(v),
            MigrateError::Execute(inner) => db_err(inner),
            other => StoreError::Internal(format!("applying migrations: {other}")),
        })?;
        let revision: i64 = sqlx::query_scalar("SELECT revision FROM gns_revision WHERE id = 1")
            .fetch_one(&pool)
            .await
            .map_err(db_err)?;
        let (revision_tx, _) = watch::channel(u64_of(revision));
        let store = Self {
            pool,
            backend,
            write_lock: Mutex::new(()),
            secrets,
            revision_tx: Arc::new(revision_tx),
            listener: None,
            url: None,
        };
        store.check_secret_key().await?;
        Ok(store)
    }

    /// Makes sure the configured key is the one earlier secrets were sealed with.
    async fn check_secret_key(&self) -> Result<(), StoreError> {
        let sealed = self.secrets.seal(KEY_CHECK, KEY_CHECK_TEXT)?;
        sqlx::query(
            "INSERT INTO gns_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(KEY_CHECK)
        .bind(sealed)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT value FROM gns_meta WHERE key = $1")
            .bind(KEY_CHECK)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        match self.secrets.open(KEY_CHECK, &stored) {
            Ok(text) if text == KEY_CHECK_TEXT => Ok(()),
            _ => Err(StoreError::Internal(
                "the secret key does not match the key this database's credentials were \
                 encrypted with; start with the original key (GNS_SECRET_KEY or <data-dir>/secret-key)"
                    .into(),
            )),
        }
    }

    async fn spawn_listener(&self, url: &str) -> Result<JoinHandle<()>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url)
            .await
            .map_err(db_err)?;
        listener.listen(NOTIFY_CHANNEL).await.map_err(db_err)?;
        let pool = self.pool.clone();
        let tx = Arc::clone(&self.revision_tx);
        Ok(tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        if let Ok(rev) = notification.payload().parse::<u64>() {
                            publish(&tx, rev);
                        }
                    }
                    // The connection was lost and re-established: we may have
                    // missed notifications, so read the revision directly.
                    Ok(None) => {
                        let current: Result<i64, _> =
                            sqlx::query_scalar("SELECT revision FROM gns_revision WHERE id = 1")
                                .fetch_one(&pool)
                                .await;
                        if let Ok(rev) = current {
                            publish(&tx, u64_of(rev));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store change listener failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }))
    }

    /// Starts a write: takes the local write lock, opens a transaction and
    /// bumps the revision (which row-locks out writers in other replicas).
    async fn begin_write(&self) -> Result<(tokio::sync::MutexGuard<'_, ()>, Tx, u64), StoreError> {
        let guard = self.write_lock.lock().await;
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let revision: i64 = sqlx::query_scalar(
            "UPDATE gns_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        Ok((guard, tx, u64_of(revision)))
    }

    /// Records the change and commits; other replicas hear of it by NOTIFY.
    async fn finish_write(
        &self,
        mut tx: Tx,
        revision: u64,
        audit: (&str, &str, &ObjectKey),
    ) -> Result<(), StoreError> {
        let (actor, action, key) = audit;
        insert_audit(
            &mut tx,
            actor,
            action,
            key.kind.as_str(),
            &key.scope,
            &key.name,
            revision,
        )
        .await?;
        if self.backend == Backend::Postgres {
            // The payload is a number we made, so formatting it into the statement is safe.
            let notify = format!("NOTIFY {NOTIFY_CHANNEL}, '{revision}'");
            tx.execute(AssertSqlSafe(notify)).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        publish(&self.revision_tx, revision);
        Ok(())
    }

    fn seal(&self, key: &ObjectKey, secret: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.secrets.seal(&key.to_string(), secret)?)
    }
}

fn publish(tx: &watch::Sender<u64>, revision: u64) {
    tx.send_if_modified(|current| {
        if revision > *current {
            *current = revision;
            true
        } else {
            false
        }
    });
}

async fn insert_audit(
    tx: &mut Tx,
    actor: &str,
    action: &str,
    kind: &str,
    scope: &str,
    name: &str,
    revision: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gns_audit (at, actor, action, kind, scope, name, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_millis())
    .bind(actor)
    .bind(action)
    .bind(kind)
    .bind(scope)
    .bind(name)
    .bind(i64_of(revision))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn fetch_object(
    tx: &mut Tx,
    key: &ObjectKey,
) -> Result<Option<(StoredObject, Option<Vec<u8>>)>, StoreError> {
    let sql = format!(
        "SELECT {OBJECT_COLUMNS}, secret FROM gns_objects WHERE kind = $1 AND scope = $2 AND name = $3"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
    match row {
        Some(row) => {
            let secret: Option<Vec<u8>> = row.try_get("secret").map_err(db_err)?;
            Ok(Some((object_from_row(&row)?, secret)))
        }
        None => Ok(None),
    }
}

async fn ensure_parent(tx: &mut Tx, key: &ObjectKey) -> Result<(), StoreError> {
    if !key.kind.is_scoped() {
        return Ok(());
    }
    let parent = ObjectKey::global(Kind::GlobalNamespace, key.scope.clone());
    if fetch_object(tx, &parent).await?.is_none() {
        return Err(StoreError::NotFound(format!(
            "global namespace {}",
            key.scope
        )));
    }
    Ok(())
}

async fn check_cluster_refs(tx: &mut Tx, refs: &[ClusterRef]) -> Result<(), StoreError> {
    let mut checked = std::collections::BTreeSet::new();
    for r in refs {
        if !checked.insert(r.cluster.as_str()) {
            continue;
        }
        let key = ObjectKey::global(Kind::Cluster, r.cluster.as_str());
        if fetch_object(tx, &key).await?.is_none() {
            return Err(StoreError::MissingCluster {
                field: r.field.clone(),
                cluster: r.cluster.to_string(),
            });
        }
    }
    Ok(())
}

async fn replace_cluster_refs(
    tx: &mut Tx,
    key: &ObjectKey,
    refs: &[ClusterRef],
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM gns_cluster_refs WHERE from_kind = $1 AND from_scope = $2 AND from_name = $3",
    )
    .bind(key.kind.as_str())
    .bind(&key.scope)
    .bind(&key.name)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    let clusters: std::collections::BTreeSet<&str> =
        refs.iter().map(|r| r.cluster.as_str()).collect();
    for cluster in clusters {
        sqlx::query(
            "INSERT INTO gns_cluster_refs (from_kind, from_scope, from_name, cluster) VALUES ($1, $2, $3, $4)",
        )
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .bind(cluster)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Claims `domain` for global namespace `gns`, refusing equal or overlapping domains of others.
async fn claim_domain(tx: &mut Tx, domain: &Domain, gns: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM gns_domains WHERE gns = $1")
        .bind(gns)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    let taken = |other_domain: String, owner: String| StoreError::DomainTaken {
        domain: domain.to_string(),
        other_domain,
        owner,
    };
    for candidate in domain.self_and_ancestors() {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT gns FROM gns_domains WHERE domain = $1")
                .bind(&candidate)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_err)?;
        if let Some(owner) = owner {
            return Err(taken(candidate, owner));
        }
    }
    // Domains only hold [a-z0-9.-], so LIKE needs no escaping.
    let below = sqlx::query("SELECT domain, gns FROM gns_domains WHERE domain LIKE $1 LIMIT 1")
        .bind(format!("%.{domain}"))
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_err)?;
    if let Some(row) = below {
        return Err(taken(
            row.try_get("domain").map_err(db_err)?,
            row.try_get("gns").map_err(db_err)?,
        ));
    }
    sqlx::query("INSERT INTO gns_domains (domain, gns) VALUES ($1, $2)")
        .bind(domain.as_str())
        .bind(gns)
        .execute(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Writes an object, creating or replacing it; a `None` secret keeps the stored one.
/// Records that `key` was deleted at `revision`.
async fn record_tombstone(tx: &mut Tx, key: &ObjectKey, revision: u64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gns_tombstones (kind, scope, name, revision) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (kind, scope, name) DO UPDATE SET revision = excluded.revision",
    )
    .bind(key.kind.as_str())
    .bind(&key.scope)
    .bind(&key.name)
    .bind(i64_of(revision))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Records every object in the global namespace `scope` as deleted at `revision`.
async fn record_scope_tombstones(
    tx: &mut Tx,
    scope: &str,
    revision: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gns_tombstones (kind, scope, name, revision) \
         SELECT kind, scope, name, $2 FROM gns_objects WHERE scope = $1 \
         ON CONFLICT (kind, scope, name) DO UPDATE SET revision = excluded.revision",
    )
    .bind(scope)
    .bind(i64_of(revision))
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn put_object(
    tx: &mut Tx,
    key: &ObjectKey,
    spec: &str,
    status: &str,
    sealed: Option<Vec<u8>>,
    revision: u64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO gns_objects (kind, scope, name, spec, status, secret, resource_version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (kind, scope, name) DO UPDATE SET spec = excluded.spec, status = excluded.status, \
         secret = COALESCE(excluded.secret, gns_objects.secret), resource_version = excluded.resource_version, \
         updated_at = excluded.updated_at",
    )
    .bind(key.kind.as_str())
    .bind(&key.scope)
    .bind(&key.name)
    .bind(spec)
    .bind(status)
    .bind(sealed)
    .bind(i64_of(revision))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Rows in one multi-row catalog insert (4 parameters each, well under
/// SQLite's and Postgres's limits).
const ROWS_PER_STATEMENT: usize = 250;

/// Writes catalog entries (discovered services: no secret, an empty status,
/// no cluster references) a few hundred rows per statement: a cluster's
/// first sync writes thousands, and one statement each costs a round trip
/// to the database (or to SQLite's worker thread) per row.
async fn put_catalog_rows(
    tx: &mut Tx,
    rows: &[(ObjectKey, String)],
    revision: u64,
    now: i64,
) -> Result<(), StoreError> {
    use std::fmt::Write as _;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO gns_objects (kind, scope, name, spec, status, secret, resource_version, created_at, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 4;
            // The numbers and the status are ours, so formatting them in is safe.
            let _ = write!(
                sql,
                "{}(${}, ${}, ${}, ${}, '{EMPTY_STATUS}', NULL, {revision}, {now}, {now})",
                if i == 0 { "" } else { ", " },
                b + 1,
                b + 2,
                b + 3,
                b + 4,
            );
        }
        sql.push_str(
            " ON CONFLICT (kind, scope, name) DO UPDATE SET spec = excluded.spec, status = excluded.status, \
             secret = COALESCE(excluded.secret, gns_objects.secret), resource_version = excluded.resource_version, \
             updated_at = excluded.updated_at",
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (key, spec) in chunk {
            query = query
                .bind(key.kind.as_str())
                .bind(key.scope.as_str())
                .bind(key.name.as_str())
                .bind(spec.as_str());
        }
        query.execute(&mut **tx).await.map_err(db_err)?;
    }
    Ok(())
}

/// Whether objects of `kind` may hold cluster references (the others never
/// have rows in `gns_cluster_refs` to replace).
fn may_reference_clusters(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::GlobalNamespace | Kind::Routing | Kind::ExternalWorkload
    )
}

/// Fails with [`StoreError::Conflict`] unless `expected` (if given) is the current version.
fn check_version(key: &ObjectKey, expected: Option<u64>, current: u64) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != current => Err(StoreError::Conflict {
            key: key.to_string(),
            expected,
            current,
        }),
        _ => Ok(()),
    }
}

/// The status of an object written without one.
const EMPTY_STATUS: &str = "{}";

/// Whether the global namespace of a scoped key exists (always true for
/// global kinds), remembered per scope for the rest of a batch.
async fn scope_exists(
    tx: &mut Tx,
    live_scopes: &mut std::collections::HashMap<String, bool>,
    key: &ObjectKey,
) -> Result<bool, StoreError> {
    if !key.kind.is_scoped() {
        return Ok(true);
    }
    if let Some(exists) = live_scopes.get(&key.scope) {
        return Ok(*exists);
    }
    let parent = ObjectKey::global(Kind::GlobalNamespace, key.scope.clone());
    let exists = fetch_object(tx, &parent).await?.is_some();
    live_scopes.insert(key.scope.clone(), exists);
    Ok(exists)
}

fn spec_text(value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(e.to_string()))
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let rev: i64 = sqlx::query_scalar("SELECT revision FROM gns_revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(u64_of(rev))
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM gns_objects WHERE kind = $1 AND scope = $2 AND name = $3"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(key.kind.as_str())
            .bind(&key.scope)
            .bind(&key.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(object_from_row).transpose()
    }

    async fn list(
        &self,
        kind: Kind,
        scope: &str,
        page: &PageRequest,
    ) -> Result<Page<StoredObject>, StoreError> {
        let sql = format!(
            "SELECT {OBJECT_COLUMNS} FROM gns_objects WHERE kind = $1 AND scope = $2 AND name > $3 \
             ORDER BY name LIMIT $4"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(kind.as_str())
            .bind(scope)
            .bind(page.after.clone().unwrap_or_default())
            .bind(limit_plus_one(page))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let items = rows
            .iter()
            .map(object_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page, |o| o.key.name.clone()))
    }

    async fn spec_texts(
        &self,
        kind: Kind,
        scope: &str,
        suffix: &str,
    ) -> Result<Vec<(ObjectKey, String)>, StoreError> {
        // LIKE narrows it on the key index (no spec read for other names);
        // the exact, case-sensitive test is made here.
        let escaped: String = suffix
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let rows = sqlx::query(
            "SELECT name, spec FROM gns_objects WHERE kind = $1 AND scope = $2 \
             AND name LIKE $3 ESCAPE '\\' ORDER BY name",
        )
        .bind(kind.as_str())
        .bind(scope)
        .bind(format!("%{escaped}"))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name").map_err(db_err)?;
            if name.ends_with(suffix) {
                let spec: String = row.try_get("spec").map_err(db_err)?;
                out.push((ObjectKey::scoped(kind, scope, name), spec));
            }
        }
        Ok(out)
    }

    async fn changes_since(&self, revision: u64) -> Result<Changes, StoreError> {
        // One read transaction: a snapshot of the database on Postgres
        // (REPEATABLE READ), the one connection's view on SQLite.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let current: i64 = sqlx::query_scalar("SELECT revision FROM gns_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        // No ORDER BY: SQLite would then walk the primary key (every row,
        // to skip a sort) instead of the revision index, and a build after
        // one write would read the whole table. The rows are sorted here.
        let sql = if revision == 0 {
            // Everything (every version is above 0): a plain table scan.
            format!("SELECT {OBJECT_COLUMNS} FROM gns_objects WHERE $1 = $1")
        } else {
            format!(
                "SELECT {OBJECT_COLUMNS} FROM gns_objects INDEXED_BY WHERE resource_version > $1"
            )
        };
        let sql = sql.replace(
            " INDEXED_BY",
            match self.backend {
                Backend::Sqlite => " INDEXED BY gns_objects_by_revision",
                Backend::Postgres => "",
            },
        );
        // Rows are streamed and converted one at a time, and discovered
        // services are parsed straight from their text: a first read of a
        // large catalog never holds every row, or every spec as a JSON tree,
        // at once.
        let (mut changed, mut services) = (Vec::new(), Vec::new());
        {
            let mut rows = sqlx::query(AssertSqlSafe(sql))
                .bind(i64_of(revision))
                .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(db_err)? {
                if kind_column(&row)? == Kind::Service {
                    services.push(service_from_row(&row)?);
                } else {
                    changed.push(object_from_row(&row)?);
                }
            }
        }
        let by_key = |a: &ObjectKey, b: &ObjectKey| {
            (a.kind.as_str(), &a.scope, &a.name).cmp(&(b.kind.as_str(), &b.scope, &b.name))
        };
        changed.sort_unstable_by(|a, b| by_key(&a.key, &b.key));
        services.sort_unstable_by(|a, b| by_key(&a.key, &b.key));
        let rows = sqlx::query(
            "SELECT kind, scope, name FROM gns_tombstones WHERE revision > $1 \
             ORDER BY kind, scope, name",
        )
        .bind(i64_of(revision))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        let mut deleted = Vec::with_capacity(rows.len());
        for row in &rows {
            let kind_text: String = row.try_get("kind").map_err(db_err)?;
            let kind = Kind::parse(&kind_text).ok_or_else(|| {
                StoreError::Internal(format!("unknown kind {kind_text:?} in tombstones"))
            })?;
            deleted.push(ObjectKey {
                kind,
                scope: row.try_get("scope").map_err(db_err)?,
                name: row.try_get("name").map_err(db_err)?,
            });
        }
        tx.commit().await.map_err(db_err)?;
        Ok(Changes {
            revision: u64_of(current),
            changed,
            services,
            deleted,
        })
    }

    async fn secret(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError> {
        let sealed: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "SELECT secret FROM gns_objects WHERE kind = $1 AND scope = $2 AND name = $3",
        )
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        match sealed.flatten() {
            Some(sealed) => Ok(Some(
                self.secrets.open(&key.to_string(), sealed.as_slice())?,
            )),
            None => Ok(None),
        }
    }

    async fn create(&self, write: ObjectWrite) -> Result<StoredObject, StoreError> {
        let (_guard, mut tx, revision) = self.begin_write().await?;
        let key = &write.key;
        ensure_parent(&mut tx, key).await?;
        if fetch_object(&mut tx, key).await?.is_some() {
            return Err(StoreError::AlreadyExists(key.to_string()));
        }
        check_cluster_refs(&mut tx, &write.cluster_refs).await?;
        if let Some(domain) = &write.domain {
            claim_domain(&mut tx, domain, &key.name).await?;
        }
        let sealed = write
            .secret
            .as_deref()
            .map(|s| self.seal(key, s))
            .transpose()?;
        let now = now_millis();
        let status = write
            .status
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        put_object(
            &mut tx,
            key,
            &spec_text(&write.spec)?,
            &spec_text(&status)?,
            sealed,
            revision,
            now,
        )
        .await?;
        replace_cluster_refs(&mut tx, key, &write.cluster_refs).await?;
        self.finish_write(tx, revision, (&write.actor, "create", key))
            .await?;
        Ok(StoredObject {
            key: key.clone(),
            spec: write.spec,
            status,
            resource_version: revision,
            created_at: now,
            updated_at: now,
        })
    }

    async fn update(
        &self,
        write: ObjectWrite,
        expected: Option<u64>,
    ) -> Result<WriteOutcome, StoreError> {
        let (_guard, mut tx, revision) = self.begin_write().await?;
        let key = &write.key;
        let Some((current, current_secret)) = fetch_object(&mut tx, key).await? else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        check_version(key, expected, current.resource_version)?;
        let same_secret = match (&write.secret, &current_secret) {
            (None, _) => true,
            (Some(new), Some(sealed)) => self.secrets.open(&key.to_string(), sealed)? == *new,
            (Some(_), None) => false,
        };
        let same_status = write.status.as_ref().is_none_or(|s| *s == current.status);
        if current.spec == write.spec && same_secret && same_status {
            // Nothing changes: dropping the transaction rolls the revision bump back.
            return Ok(WriteOutcome {
                object: current,
                changed: false,
            });
        }
        check_cluster_refs(&mut tx, &write.cluster_refs).await?;
        if let Some(domain) = &write.domain {
            claim_domain(&mut tx, domain, &key.name).await?;
        }
        let now = now_millis();
        let status = write
            .status
            .clone()
            .unwrap_or_else(|| current.status.clone());
        sqlx::query(
            "UPDATE gns_objects SET spec = $4, status = $5, resource_version = $6, updated_at = $7 \
             WHERE kind = $1 AND scope = $2 AND name = $3",
        )
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .bind(spec_text(&write.spec)?)
        .bind(spec_text(&status)?)
        .bind(i64_of(revision))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(secret) = &write.secret {
            sqlx::query(
                "UPDATE gns_objects SET secret = $4 WHERE kind = $1 AND scope = $2 AND name = $3",
            )
            .bind(key.kind.as_str())
            .bind(&key.scope)
            .bind(&key.name)
            .bind(self.seal(key, secret)?)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        replace_cluster_refs(&mut tx, key, &write.cluster_refs).await?;
        self.finish_write(tx, revision, (&write.actor, "update", key))
            .await?;
        Ok(WriteOutcome {
            object: StoredObject {
                key: key.clone(),
                spec: write.spec,
                status,
                resource_version: revision,
                created_at: current.created_at,
                updated_at: now,
            },
            changed: true,
        })
    }

    async fn set_status(
        &self,
        key: &ObjectKey,
        status: Value,
        actor: &str,
        action: &str,
    ) -> Result<StoredObject, StoreError> {
        let (_guard, mut tx, revision) = self.begin_write().await?;
        let Some((current, _)) = fetch_object(&mut tx, key).await? else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        let now = now_millis();
        sqlx::query(
            "UPDATE gns_objects SET status = $4, resource_version = $5, updated_at = $6 \
             WHERE kind = $1 AND scope = $2 AND name = $3",
        )
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .bind(spec_text(&status)?)
        .bind(i64_of(revision))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        self.finish_write(tx, revision, (actor, action, key))
            .await?;
        Ok(StoredObject {
            status,
            resource_version: revision,
            updated_at: now,
            ..current
        })
    }

    async fn merge_status(
        &self,
        key: &ObjectKey,
        patch: serde_json::Map<String, Value>,
        expected: Option<u64>,
        actor: &str,
        action: &str,
    ) -> Result<(StoredObject, bool), StoreError> {
        self.merge_status_of(key, patch, expected, (actor, action))
            .await
    }

    async fn record_liveness(&self, facts: &[Liveness]) -> Result<(), StoreError> {
        self.record_liveness_facts(facts).await
    }

    async fn liveness(
        &self,
        kind: Kind,
        scope: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Liveness>, StoreError> {
        self.liveness_facts(kind, scope, name).await
    }

    async fn lapsed(&self, kind: Kind, now_ms: i64) -> Result<Vec<Liveness>, StoreError> {
        self.lapsed_facts(kind, now_ms).await
    }

    async fn settle_lapse(&self, key: &ObjectKey, beat_ms: i64) -> Result<bool, StoreError> {
        self.settle(key, beat_ms).await
    }

    async fn forget_liveness(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.forget(key).await
    }

    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.prune_audit_rows(before_ms).await
    }

    async fn record_telemetry(&self, sample: &TelemetrySample) -> Result<(), StoreError> {
        self.insert_telemetry(sample).await
    }

    async fn telemetry_since(&self, since_ms: i64) -> Result<Vec<TelemetrySample>, StoreError> {
        self.select_telemetry(since_ms).await
    }

    async fn prune_telemetry(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.delete_telemetry(before_ms).await
    }

    async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        name: &str,
    ) -> Result<(), StoreError> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        insert_audit(&mut tx, actor, action, kind, "", name, 0).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<u64>,
        actor: &str,
    ) -> Result<StoredObject, StoreError> {
        let (_guard, mut tx, revision) = self.begin_write().await?;
        let Some((current, _)) = fetch_object(&mut tx, key).await? else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        check_version(key, expected, current.resource_version)?;
        if key.kind == Kind::Cluster {
            let rows = sqlx::query(
                "SELECT from_kind, from_scope, from_name FROM gns_cluster_refs WHERE cluster = $1 \
                 ORDER BY from_kind, from_scope, from_name",
            )
            .bind(&key.name)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            if !rows.is_empty() {
                let mut referrers = Vec::new();
                for row in rows.iter().take(MAX_REFERRERS_REPORTED) {
                    let kind: String = row.try_get("from_kind").map_err(db_err)?;
                    let scope: String = row.try_get("from_scope").map_err(db_err)?;
                    let name: String = row.try_get("from_name").map_err(db_err)?;
                    referrers.push(if scope.is_empty() {
                        format!("{kind}/{name}")
                    } else {
                        format!("{kind}/{scope}/{name}")
                    });
                }
                if rows.len() > MAX_REFERRERS_REPORTED {
                    referrers.push(format!("{} more", rows.len() - MAX_REFERRERS_REPORTED));
                }
                return Err(StoreError::Referenced {
                    key: key.to_string(),
                    referrers,
                });
            }
        }
        if key.kind == Kind::GlobalNamespace {
            record_scope_tombstones(&mut tx, &key.name, revision).await?;
            for sql in [
                "DELETE FROM gns_objects WHERE scope = $1",
                // Gateway instances are scoped by their cluster, not a namespace.
                "DELETE FROM gns_liveness WHERE scope = $1 AND kind <> 'cluster'",
                "DELETE FROM gns_cluster_refs WHERE from_scope = $1",
                "DELETE FROM gns_domains WHERE gns = $1",
            ] {
                sqlx::query(sql)
                    .bind(&key.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
        }
        if key.kind == Kind::Cluster {
            // What belongs to the cluster goes with it: its gateway
            // instances' facts, its gateway tokens and unspent join tokens.
            for sql in [
                "DELETE FROM gns_liveness WHERE kind = 'cluster' AND scope = $1",
                "DELETE FROM gns_tokens WHERE cluster = $1",
                "DELETE FROM gns_join_tokens WHERE cluster = $1",
            ] {
                sqlx::query(sql)
                    .bind(&key.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
        }
        for sql in [
            "DELETE FROM gns_objects WHERE kind = $1 AND scope = $2 AND name = $3",
            "DELETE FROM gns_liveness WHERE kind = $1 AND scope = $2 AND name = $3",
        ] {
            sqlx::query(sql)
                .bind(key.kind.as_str())
                .bind(&key.scope)
                .bind(&key.name)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        replace_cluster_refs(&mut tx, key, &[]).await?;
        record_tombstone(&mut tx, key, revision).await?;
        self.finish_write(tx, revision, (actor, "delete", key))
            .await?;
        Ok(current)
    }

    async fn sealed_meta_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let meta_key = format!("sealed:{key}");
        let sealed = self.secrets.seal(&meta_key, value)?;
        sqlx::query(
            "INSERT INTO gns_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(&meta_key)
        .bind(sealed)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        let stored: Vec<u8> = sqlx::query_scalar("SELECT value FROM gns_meta WHERE key = $1")
            .bind(&meta_key)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(self.secrets.open(&meta_key, &stored)?)
    }

    async fn sealed_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let meta_key = format!("sealed:{key}");
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM gns_meta WHERE key = $1")
                .bind(&meta_key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        stored
            .map(|v| self.secrets.open(&meta_key, &v).map_err(StoreError::from))
            .transpose()
    }

    async fn swap_sealed_meta(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let meta_key = format!("sealed:{key}");
        let Some(current): Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM gns_meta WHERE key = $1")
                .bind(&meta_key)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
        else {
            return Ok(false);
        };
        if self.secrets.open(&meta_key, &current)? != expected {
            return Ok(false);
        }
        // The sealed bytes read are the version: a concurrent swap changed them.
        let sealed = self.secrets.seal(&meta_key, value)?;
        let updated = sqlx::query("UPDATE gns_meta SET value = $1 WHERE key = $2 AND value = $3")
            .bind(sealed)
            .bind(&meta_key)
            .bind(current)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(updated.rows_affected() == 1)
    }

    async fn create_join_token(
        &self,
        cluster: &str,
        secret_hash: &str,
        expires_at_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let key = ObjectKey::global(Kind::Cluster, cluster);
        let (_guard, mut tx, revision) = self.begin_write().await?;
        if fetch_object(&mut tx, &key).await?.is_none() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        sqlx::query(
            "INSERT INTO gns_join_tokens (secret_hash, cluster, expires_at, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(secret_hash)
        .bind(cluster)
        .bind(expires_at_ms)
        .bind(now_millis())
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        self.finish_write(tx, revision, (actor, "create-join-token", &key))
            .await?;
        Ok(())
    }

    async fn join_token_cluster(
        &self,
        secret_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT cluster FROM gns_join_tokens WHERE secret_hash = $1 AND expires_at > $2",
        )
        .bind(secret_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| r.try_get::<String, _>("cluster").map_err(db_err))
            .transpose()
    }

    async fn redeem_join_token_for_gateway(
        &self,
        secret_hash: &str,
        now_ms: i64,
        token_name: &str,
        token_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query(
            "DELETE FROM gns_join_tokens WHERE secret_hash = $1 AND expires_at > $2 \
             RETURNING cluster",
        )
        .bind(secret_hash)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            // Spent, expired or unknown: nothing happens (the transaction
            // rolls back).
            return Ok(None);
        };
        let cluster: String = row.try_get("cluster").map_err(db_err)?;
        let actor = format!("join-token:{cluster}");
        let now = now_millis();
        sqlx::query(
            "INSERT INTO gns_tokens (name, role, cluster, secret_hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_name)
        .bind(Role::Gateway.as_str())
        .bind(&cluster)
        .bind(token_hash)
        .bind(now)
        .bind(&actor)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        insert_audit(&mut tx, &actor, "create", "token", "", token_name, 0).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(TokenRecord {
            name: token_name.to_owned(),
            role: Role::Gateway,
            cluster: Some(cluster),
            global_namespaces: Vec::new(),
            created_at: now,
            created_by: actor,
        }))
    }

    async fn create_token(
        &self,
        name: &str,
        role: Role,
        cluster: Option<&str>,
        global_namespaces: &[String],
        secret_hash: &str,
        actor: &str,
    ) -> Result<TokenRecord, StoreError> {
        let now = now_millis();
        let scope = if global_namespaces.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(global_namespaces)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
            )
        };
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let inserted = sqlx::query(
            "INSERT INTO gns_tokens (name, role, cluster, global_namespaces, secret_hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(cluster.map(str::to_owned))
        .bind(scope)
        .bind(secret_hash)
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists(format!("token/{name}")));
        }
        insert_audit(&mut tx, actor, "create", "token", "", name, 0).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(TokenRecord {
            name: name.to_owned(),
            role,
            cluster: cluster.map(str::to_owned),
            global_namespaces: global_namespaces.to_vec(),
            created_at: now,
            created_by: actor.to_owned(),
        })
    }

    async fn list_tokens(&self, page: &PageRequest) -> Result<Page<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, role, cluster, global_namespaces, created_at, created_by FROM gns_tokens WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(page.after.clone().unwrap_or_default())
        .bind(limit_plus_one(page))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(token_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page, |t| t.name.clone()))
    }

    async fn delete_token(&self, name: &str, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let deleted = sqlx::query("DELETE FROM gns_tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("token/{name}")));
        }
        insert_audit(&mut tx, actor, "delete", "token", "", name, 0).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn find_token(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, role, cluster, global_namespaces, created_at, created_by FROM gns_tokens WHERE secret_hash = $1",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_audit(&self, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError> {
        let before = match &page.after {
            Some(id) => id
                .parse::<i64>()
                .map_err(|_| StoreError::Internal(format!("bad audit cursor {id:?}")))?,
            None => i64::MAX,
        };
        let rows = sqlx::query(
            "SELECT id, at, actor, action, kind, scope, name, revision FROM gns_audit \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit_plus_one(page))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let items = rows
            .iter()
            .map(|row| -> Result<AuditEntry, StoreError> {
                Ok(AuditEntry {
                    id: row.try_get("id").map_err(db_err)?,
                    at: row.try_get("at").map_err(db_err)?,
                    actor: row.try_get("actor").map_err(db_err)?,
                    action: row.try_get("action").map_err(db_err)?,
                    kind: row.try_get("kind").map_err(db_err)?,
                    scope: row.try_get("scope").map_err(db_err)?,
                    name: row.try_get("name").map_err(db_err)?,
                    revision: u64_of(row.try_get("revision").map_err(db_err)?),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, page, |a| a.id.to_string()))
    }

    async fn write_batch(
        &self,
        ops: Vec<BatchOp>,
        actor: &str,
    ) -> Result<BatchOutcome, StoreError> {
        if ops.is_empty() {
            return Ok(BatchOutcome {
                revision: self.revision().await?,
                ..BatchOutcome::default()
            });
        }
        let (_guard, mut tx, revision) = self.begin_write().await?;
        let mut outcome = BatchOutcome {
            revision,
            ..BatchOutcome::default()
        };
        let now = now_millis();
        let mut live_scopes: std::collections::HashMap<String, bool> =
            std::collections::HashMap::new();
        // Catalog entries gathered for one multi-row write, by key (a later
        // entry for a key replaces an earlier one); written before any other
        // kind of op, so the batch's order holds.
        let mut catalog: Vec<(ObjectKey, String)> = Vec::new();
        let mut catalog_at: std::collections::HashMap<ObjectKey, usize> =
            std::collections::HashMap::new();
        for op in ops {
            if !matches!(&op, BatchOp::PutEncoded { key, .. } if !may_reference_clusters(key.kind))
                && !catalog.is_empty()
            {
                put_catalog_rows(&mut tx, &catalog, revision, now).await?;
                catalog.clear();
                catalog_at.clear();
            }
            match op {
                BatchOp::PutEncoded { key, spec } if !may_reference_clusters(key.kind) => {
                    if !scope_exists(&mut tx, &mut live_scopes, &key).await? {
                        outcome.skipped += 1;
                        continue;
                    }
                    match catalog_at.get(&key) {
                        Some(&i) => catalog[i].1 = spec,
                        None => {
                            catalog_at.insert(key.clone(), catalog.len());
                            catalog.push((key, spec));
                        }
                    }
                    outcome.applied += 1;
                }
                BatchOp::Put(write) => {
                    let key = &write.key;
                    if write.domain.is_some() {
                        return Err(StoreError::Internal(
                            "write_batch can't claim domains".into(),
                        ));
                    }
                    if !scope_exists(&mut tx, &mut live_scopes, key).await? {
                        outcome.skipped += 1;
                        continue;
                    }
                    check_cluster_refs(&mut tx, &write.cluster_refs).await?;
                    let sealed = write
                        .secret
                        .as_deref()
                        .map(|s| self.seal(key, s))
                        .transpose()?;
                    let status = match &write.status {
                        Some(status) => spec_text(status)?,
                        None => EMPTY_STATUS.to_owned(),
                    };
                    let spec = spec_text(&write.spec)?;
                    put_object(&mut tx, key, &spec, &status, sealed, revision, now).await?;
                    replace_cluster_refs(&mut tx, key, &write.cluster_refs).await?;
                    outcome.applied += 1;
                }
                BatchOp::PutEncoded { key, spec } => {
                    if !scope_exists(&mut tx, &mut live_scopes, &key).await? {
                        outcome.skipped += 1;
                        continue;
                    }
                    put_object(&mut tx, &key, &spec, EMPTY_STATUS, None, revision, now).await?;
                    replace_cluster_refs(&mut tx, &key, &[]).await?;
                    outcome.applied += 1;
                }
                BatchOp::Delete(key) => {
                    let deleted = sqlx::query(
                        "DELETE FROM gns_objects WHERE kind = $1 AND scope = $2 AND name = $3",
                    )
                    .bind(key.kind.as_str())
                    .bind(&key.scope)
                    .bind(&key.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                    if deleted.rows_affected() > 0 {
                        replace_cluster_refs(&mut tx, &key, &[]).await?;
                        record_tombstone(&mut tx, &key, revision).await?;
                        outcome.applied += 1;
                    }
                }
            }
        }
        if !catalog.is_empty() {
            put_catalog_rows(&mut tx, &catalog, revision, now).await?;
        }
        if outcome.applied == 0 {
            // Nothing changed: roll back the revision bump.
            return Ok(BatchOutcome {
                revision: revision - 1,
                ..outcome
            });
        }
        let summary = ObjectKey::global(Kind::Service, format!("{} objects", outcome.applied));
        self.finish_write(tx, revision, (actor, "sync", &summary))
            .await?;
        Ok(outcome)
    }

    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError> {
        let Some(url) = &self.url else {
            return Ok(Some(Box::new(LocalLease)));
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.map_err(db_err)?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lease_key(name))
            .fetch_one(&mut conn)
            .await
            .map_err(db_err)?;
        if got {
            Ok(Some(Box::new(PgLease {
                conn: Mutex::new(Some(conn)),
            })))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://gns:hunter2@db:5432/gns"),
            "postgres://gns:***@db:5432/gns"
        );
        assert_eq!(redact_url("postgres://db/gns"), "postgres://db/gns");
    }
}
