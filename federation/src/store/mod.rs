//! The store: every object of the federation, versioned, behind one trait.
//!
//! Two backends implement [`Store`] with the same SQL core ([`sql::SqlStore`]):
//! Postgres for production (several federation replicas, change notification
//! through `LISTEN/NOTIFY`) and an embedded SQLite file, the default, for a
//! single node (in-process notification). Every write bumps one store-wide
//! revision; an object's `resourceVersion` is the revision that last wrote it,
//! so "newer than V" is a single comparison for snapshot builders and watchers.
//!
//! Cross-object rules are enforced inside the write transaction, where writes
//! are serialized by the revision row: references to clusters must exist, a
//! referenced cluster cannot be deleted, a domain belongs to one global
//! namespace and may not overlap another, and deleting a global namespace
//! removes everything inside it.

mod crypto;
mod sql;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;

pub use crypto::{CryptoError, SecretBox};
pub use sql::SqlStore;

use crate::model::{ClusterRef, DiscoveredService, Domain, Kind, Role};

/// Identifies one object: kind, scope (the global namespace for scoped kinds, empty otherwise) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Owning global namespace, or `""` for cluster-wide kinds.
    pub scope: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Key of a cluster-wide object.
    pub fn global(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            scope: String::new(),
            name: name.into(),
        }
    }

    /// Key of an object inside global namespace `scope`.
    pub fn scoped(kind: Kind, scope: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            scope: scope.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scope.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.scope, self.name)
        }
    }
}

/// An object as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Key.
    pub key: ObjectKey,
    /// The user-written spec (never contains credentials).
    pub spec: Value,
    /// Server-written status.
    pub status: Value,
    /// Store revision of the last write to this object.
    pub resource_version: u64,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last write, Unix milliseconds.
    pub updated_at: i64,
}

/// A create or update of one object.
#[derive(Debug, Clone)]
pub struct ObjectWrite {
    /// Key.
    pub key: ObjectKey,
    /// Validated spec.
    pub spec: Value,
    /// Plaintext credentials to encrypt; `None` keeps the stored ones on update.
    pub secret: Option<Vec<u8>>,
    /// Clusters this object refers to.
    pub cluster_refs: Vec<ClusterRef>,
    /// For global namespaces: the domain it claims.
    pub domain: Option<Domain>,
    /// Status to set; `None` keeps the stored one (or `{}` on create).
    pub status: Option<Value>,
    /// Who writes, for the audit log.
    pub actor: String,
}

/// Result of an update.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    /// The object after the write.
    pub object: StoredObject,
    /// False when the write changed nothing (no new revision was made).
    pub changed: bool,
}

/// One change in a [`Store::write_batch`].
#[derive(Debug, Clone)]
pub enum BatchOp {
    /// Create or replace (no precondition). `domain` must be `None`.
    Put(ObjectWrite),
    /// Create or replace (no precondition) with a spec already encoded as
    /// JSON text by serde (no secret, no cluster references, status `{}`):
    /// what discovery writes by the thousand, without a `serde_json::Value`
    /// per entry.
    PutEncoded {
        /// Key.
        key: ObjectKey,
        /// The spec, JSON text.
        spec: String,
    },
    /// Delete if present.
    Delete(ObjectKey),
}

/// What a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchOutcome {
    /// The revision the batch made (unchanged if it made none).
    pub revision: u64,
    /// Objects written or deleted.
    pub applied: usize,
    /// Puts skipped because their global namespace does not exist (any more).
    pub skipped: usize,
}

/// A page request: at most `limit` items after `after` (exclusive, by name or id).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Maximum items; `None` for all.
    pub limit: Option<u32>,
    /// Continue after this key.
    pub after: Option<String>,
}

/// One page of results and the key to continue from, if there is more.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// Items in order.
    pub items: Vec<T>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

/// A stored API token (the secret itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The cluster of a gateway token.
    pub cluster: Option<String>,
    /// The global namespaces a scoped token is limited to (empty: not scoped).
    pub global_namespaces: Vec<String>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When, Unix milliseconds.
    pub at: i64,
    /// Who (token name).
    pub actor: String,
    /// create, update, delete, heartbeat, ...
    pub action: String,
    /// Object kind (or `token`).
    pub kind: String,
    /// Object scope.
    pub scope: String,
    /// Object name.
    pub name: String,
    /// Store revision made by the change (0 for tokens).
    pub revision: u64,
}

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An object with that key exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The write carried a stale `resourceVersion`.
    #[error(
        "{key} was modified: resourceVersion is {current}, not {expected}; get it again and retry"
    )]
    Conflict {
        /// Object.
        key: String,
        /// Version the client had.
        expected: u64,
        /// Version in the store.
        current: u64,
    },
    /// The object can't be deleted while others refer to it.
    #[error("{key} is still referenced by {}", referrers.join(", "))]
    Referenced {
        /// Object.
        key: String,
        /// Referring objects.
        referrers: Vec<String>,
    },
    /// The object refers to a cluster that does not exist.
    #[error("{field}: cluster {cluster} does not exist")]
    MissingCluster {
        /// Referring field.
        field: String,
        /// Missing cluster.
        cluster: String,
    },
    /// The domain is owned by, or overlaps the domain of, another global namespace.
    #[error("domain {domain} overlaps {other_domain} of global namespace {owner}")]
    DomainTaken {
        /// Requested domain.
        domain: String,
        /// Conflicting domain.
        other_domain: String,
        /// Its global namespace.
        owner: String,
    },
    /// The database cannot be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database schema was written by a newer GNS.
    #[error("database schema version {0} is newer than this binary knows; upgrade gns-federation")]
    SchemaTooNew(i64),
    /// Encryption key problems.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Anything else (a bug or corrupt data).
    #[error("store error: {0}")]
    Internal(String),
}

/// `expires_ms` of a liveness fact with nothing pending (a lapse already
/// handled, or a fact that does not lapse).
pub const NO_EXPIRY: i64 = i64::MAX;

/// A liveness fact, kept apart from the store of intent: the last beat (a
/// workload's heartbeat, a cluster's sync report) of one object, when it
/// lapses without another, and what the beat reported. Written without a
/// revision and without an audit row.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    /// The object it is about.
    pub key: ObjectKey,
    /// Unix ms of the last beat.
    pub beat_ms: i64,
    /// Unix ms when it lapses without another beat ([`NO_EXPIRY`]: nothing pending).
    pub expires_ms: i64,
    /// What the beat reported (a JSON object).
    pub data: Value,
}

/// One gateway instance report's traffic, as the telemetry window keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySample {
    /// The reporting gateway's cluster: where the requests came from.
    pub cluster: String,
    /// The reporting instance.
    pub instance: String,
    /// Unix ms the report arrived.
    pub at_ms: i64,
    /// How long its traffic was counted for, milliseconds.
    pub interval_ms: i64,
    /// The traffic since the instance's previous report.
    pub traffic: Vec<gns_contract::report::TrafficRecord>,
}

/// A discovered-service object, parsed once when it is read from the store
/// (the snapshot builder keeps thousands of them; typed they take a fraction
/// of the memory of their JSON and are not parsed again on every build).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObject {
    /// Store key (`<service>.<cluster>` for discovery's objects).
    pub key: ObjectKey,
    /// Resource version it was read at.
    pub resource_version: u64,
    /// The spec, or why the stored spec no longer parses.
    pub spec: Result<Arc<DiscoveredService>, String>,
}

impl ServiceObject {
    /// Parses a stored spec (and checks the service part of the name).
    pub fn parse(key: ObjectKey, resource_version: u64, spec: &str) -> Self {
        let spec = Self::check_name(&key).and_then(|()| {
            let mut de = serde_json::Deserializer::from_str(spec);
            serde_path_to_error::deserialize::<_, DiscoveredService>(&mut de)
                .map(|mut svc| {
                    svc.shrink_to_fit();
                    Arc::new(svc)
                })
                .map_err(|e| format!("stored spec does not parse: {e}"))
        });
        Self {
            key,
            resource_version,
            spec,
        }
    }

    fn check_name(key: &ObjectKey) -> Result<(), String> {
        let service_part = key.name.split('.').next().unwrap_or_default();
        crate::model::Name::try_from(service_part.to_owned())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl From<StoredObject> for ServiceObject {
    /// Parses (and checks the service part of the name) an object read as JSON.
    fn from(object: StoredObject) -> Self {
        let spec = Self::check_name(&object.key).and_then(|()| {
            serde_path_to_error::deserialize::<_, DiscoveredService>(&object.spec)
                .map(|mut svc| {
                    svc.shrink_to_fit();
                    Arc::new(svc)
                })
                .map_err(|e| format!("stored spec does not parse: {e}"))
        });
        Self {
            key: object.key,
            resource_version: object.resource_version,
            spec,
        }
    }
}

/// The answer of [`Store::changes_since`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Store revision when the changes were read; every change up to it is included.
    pub revision: u64,
    /// Objects written after the asked revision, in key order, except
    /// discovered services.
    pub changed: Vec<StoredObject>,
    /// Discovered services written after the asked revision, in key order,
    /// parsed from their stored text as they are read (there are many; none
    /// passes through a `serde_json::Value`).
    pub services: Vec<ServiceObject>,
    /// Keys deleted after the asked revision, in key order.
    pub deleted: Vec<ObjectKey>,
}

/// Exclusive right to do one job (e.g. sync one cluster) among federation
/// replicas sharing a store. Released when dropped, or when the holder dies.
#[async_trait]
pub trait Lease: Send + Sync {
    /// True while the lease is still held (false once the store connection behind it is lost).
    async fn is_held(&self) -> bool;
}

/// The federation's persistent state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;
    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Current store revision.
    async fn revision(&self) -> Result<u64, StoreError>;
    /// Receives the newest revision after every committed write (from any replica).
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// One object.
    async fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError>;
    /// Objects of one kind in one scope, ordered by name.
    async fn list(
        &self,
        kind: Kind,
        scope: &str,
        page: &PageRequest,
    ) -> Result<Page<StoredObject>, StoreError>;
    /// The specs, as stored text, of the objects of one kind in one scope
    /// whose name ends with `suffix` (discovery's own entries of one
    /// cluster, `<service>.<cluster>`), in name order, every one (no page).
    async fn spec_texts(
        &self,
        kind: Kind,
        scope: &str,
        suffix: &str,
    ) -> Result<Vec<(ObjectKey, String)>, StoreError>;
    /// What changed after `revision`: objects written since (at a higher
    /// resource version) and keys deleted since. An object deleted and created
    /// again is in both; it exists if its resource version is above the delete's.
    async fn changes_since(&self, revision: u64) -> Result<Changes, StoreError>;
    /// Decrypted credentials of an object, if it has any.
    async fn secret(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Creates an object; fails if it exists.
    async fn create(&self, write: ObjectWrite) -> Result<StoredObject, StoreError>;
    /// Replaces an object's spec (and secret, if given). With `expected`, fails
    /// with [`StoreError::Conflict`] unless it is the current resource version.
    async fn update(
        &self,
        write: ObjectWrite,
        expected: Option<u64>,
    ) -> Result<WriteOutcome, StoreError>;
    /// Replaces an object's status only (a new revision; audited as `action`).
    async fn set_status(
        &self,
        key: &ObjectKey,
        status: Value,
        actor: &str,
        action: &str,
    ) -> Result<StoredObject, StoreError>;
    /// Deletes an object (and, for a global namespace, everything in it).
    async fn delete(
        &self,
        key: &ObjectKey,
        expected: Option<u64>,
        actor: &str,
    ) -> Result<StoredObject, StoreError>;

    /// Returns the sealed store fact `key`, storing `value` first if it has
    /// none (the first writer wins; every replica gets the same value).
    /// Sealed with the store's secret key like credentials.
    async fn sealed_meta_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// The sealed store fact `key`, if there is one.
    async fn sealed_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces the sealed fact `key` with `value` if it still is `expected`
    /// (compare and swap); `false` when it was something else (a concurrent
    /// change won) or absent.
    async fn swap_sealed_meta(
        &self,
        key: &str,
        expected: &[u8],
        value: &[u8],
    ) -> Result<bool, StoreError>;
    /// Stores a one-time join token for `cluster` by the SHA-256 of its secret.
    async fn create_join_token(
        &self,
        cluster: &str,
        secret_hash: &str,
        expires_at_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError>;
    /// The cluster of a join token that exists and has not expired, without
    /// redeeming it.
    async fn join_token_cluster(
        &self,
        secret_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError>;
    /// Redeems a join token and stores its cluster's new gateway token
    /// (`token_name`, by the hash of its secret) in one transaction: both or
    /// neither. The token, or `None` if the join token was not there (or
    /// had expired) any more.
    async fn redeem_join_token_for_gateway(
        &self,
        secret_hash: &str,
        now_ms: i64,
        token_name: &str,
        token_hash: &str,
    ) -> Result<Option<TokenRecord>, StoreError>;
    /// Stores a new token by the SHA-256 of its secret (`cluster`: the
    /// cluster of a gateway token; `global_namespaces`: the scope of a
    /// scoped one, empty for none).
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        cluster: Option<&str>,
        global_namespaces: &[String],
        secret_hash: &str,
        actor: &str,
    ) -> Result<TokenRecord, StoreError>;
    /// Tokens by name.
    async fn list_tokens(&self, page: &PageRequest) -> Result<Page<TokenRecord>, StoreError>;
    /// Deletes a token.
    async fn delete_token(&self, name: &str, actor: &str) -> Result<(), StoreError>;
    /// The token whose secret hashes to `secret_hash`.
    async fn find_token(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Audit log, newest first; `after` is an entry id.
    async fn list_audit(&self, page: &PageRequest) -> Result<Page<AuditEntry>, StoreError>;

    /// Applies many changes in one transaction and one revision (discovery
    /// sync writes its diffs this way); audited once as `sync`. Puts into a
    /// global namespace that doesn't exist are skipped, not failed; deletes
    /// of missing objects are no-ops.
    async fn write_batch(&self, ops: Vec<BatchOp>, actor: &str)
    -> Result<BatchOutcome, StoreError>;

    /// Merges `patch` into an object's status (a key set to `null` is
    /// removed): a new revision, audited as `action`, only if that changes
    /// the status; else the object as it is. With `expected`, fails with
    /// [`StoreError::Conflict`] unless it is the current resource version.
    /// Returns the object and whether it changed.
    async fn merge_status(
        &self,
        key: &ObjectKey,
        patch: serde_json::Map<String, Value>,
        expected: Option<u64>,
        actor: &str,
        action: &str,
    ) -> Result<(StoredObject, bool), StoreError>;

    /// Records liveness facts (each replaces the object's previous one), all
    /// in one statement: no revision, no audit row. Facts of objects that do
    /// not exist are kept until they are forgotten.
    async fn record_liveness(&self, facts: &[Liveness]) -> Result<(), StoreError>;
    /// The liveness facts of `kind`, in `scope` if given, of `name` if given.
    async fn liveness(
        &self,
        kind: Kind,
        scope: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Liveness>, StoreError>;
    /// The facts of `kind` that lapsed by `now_ms` and were not settled.
    async fn lapsed(&self, kind: Kind, now_ms: i64) -> Result<Vec<Liveness>, StoreError>;
    /// Settles a lapse (its `expires_ms` becomes [`NO_EXPIRY`]) if no beat
    /// came since `beat_ms`; false if one did.
    async fn settle_lapse(&self, key: &ObjectKey, beat_ms: i64) -> Result<bool, StoreError>;
    /// Forgets an object's liveness fact.
    async fn forget_liveness(&self, key: &ObjectKey) -> Result<(), StoreError>;
    /// Deletes the audit rows written before `before_ms`; how many.
    async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Records one gateway instance report's traffic for the telemetry
    /// window: no revision, no audit row.
    async fn record_telemetry(&self, sample: &TelemetrySample) -> Result<(), StoreError>;
    /// The telemetry samples that arrived at or after `since_ms`, oldest first.
    async fn telemetry_since(&self, since_ms: i64) -> Result<Vec<TelemetrySample>, StoreError>;
    /// Deletes the telemetry samples that arrived before `before_ms`; how many.
    async fn prune_telemetry(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Records an act that changes no object (a certificate signed, a root
    /// rotation step) in the audit log: who, what, of which kind and name.
    async fn record_audit(
        &self,
        actor: &str,
        action: &str,
        kind: &str,
        name: &str,
    ) -> Result<(), StoreError>;

    /// Tries to take the lease `name`; `None` if another replica holds it.
    /// Postgres: a session advisory lock on a dedicated connection, so a replica
    /// that dies loses it at once. SQLite: one process owns the file, so always granted.
    async fn try_lease(&self, name: &str) -> Result<Option<Box<dyn Lease>>, StoreError>;
}

/// Opens the store named by `database_url`: `postgres://…` selects Postgres,
/// anything else (or `None`) the embedded SQLite file `<data_dir>/gns.db`.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    secrets: SecretBox,
) -> Result<Arc<dyn Store>, StoreError> {
    let store = match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            SqlStore::open_postgres(url, secrets).await?
        }
        Some(url) if url.starts_with("sqlite:") => SqlStore::open_sqlite_url(url, secrets).await?,
        Some(other) => {
            return Err(StoreError::Unavailable(format!(
                "unsupported database URL scheme in {:?}: use postgres://… or sqlite:…",
                other.split(':').next().unwrap_or_default()
            )));
        }
        None => SqlStore::open_sqlite_file(&data_dir.join("gns.db"), secrets).await?,
    };
    Ok(Arc::new(store))
}
