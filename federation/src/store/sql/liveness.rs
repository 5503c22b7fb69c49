//! Liveness facts in `gns_liveness` (migration 0004), apart from the store
//! of intent: written in one statement per batch, without a revision and
//! without an audit row. On Postgres the transaction commits asynchronously
//! (`synchronous_commit = off`): a crash can lose the last few hundred
//! milliseconds of beats, never the table, and a lost beat only brings a
//! lapse forward by that much. `merge_status` and `prune_audit` live here too:
//! the transition and retention sides of the same plane.

use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Executor};

use super::{
    Backend, SqlStore, db_err, i64_of, kind_column, now_millis, number_column, text_column,
};
use crate::model::Kind;
use crate::store::{Liveness, NO_EXPIRY, ObjectKey, StoreError, StoredObject};

/// Rows per `INSERT` (6 parameters each; SQLite allows 32,766 in a statement).
const ROWS_PER_STATEMENT: usize = 512;

const COLUMNS: &str = "kind, scope, name, beat_ms, expires_ms, data";

fn fact_from_row(row: &AnyRow) -> Result<Liveness, StoreError> {
    let data = serde_json::from_str(&text_column(row, "data")?)
        .map_err(|e| StoreError::Internal(format!("liveness data is not JSON: {e}")))?;
    Ok(Liveness {
        key: ObjectKey {
            kind: kind_column(row)?,
            scope: text_column(row, "scope")?,
            name: text_column(row, "name")?,
        },
        beat_ms: number_column(row, "beat_ms")?,
        expires_ms: number_column(row, "expires_ms")?,
        data,
    })
}

/// The last fact of each key (a batch may hold several beats of one
/// object; one statement may not upsert a row twice).
fn last_per_key(facts: &[Liveness]) -> Vec<&Liveness> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<&Liveness> = facts.iter().rev().filter(|f| seen.insert(&f.key)).collect();
    out.reverse();
    out
}

impl SqlStore {
    pub(super) async fn record_liveness_facts(&self, facts: &[Liveness]) -> Result<(), StoreError> {
        if facts.is_empty() {
            return Ok(());
        }
        let facts = last_per_key(facts);
        let texts: Vec<String> = facts
            .iter()
            .map(|f| serde_json::to_string(&f.data))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Internal(format!("liveness data: {e}")))?;
        // SQLite has one writer at a time: queue behind this process's writes
        // instead of spinning on the busy timeout.
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        if self.backend == Backend::Postgres {
            tx.execute("SET LOCAL synchronous_commit TO OFF")
                .await
                .map_err(db_err)?;
        }
        for (chunk, chunk_texts) in facts
            .chunks(ROWS_PER_STATEMENT)
            .zip(texts.chunks(ROWS_PER_STATEMENT))
        {
            let mut sql = format!("INSERT INTO gns_liveness ({COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                let n = i * 6;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6
                ));
            }
            // A beat never goes back in time (two replicas may race).
            sql.push_str(
                " ON CONFLICT (kind, scope, name) DO UPDATE SET beat_ms = excluded.beat_ms, \
                 expires_ms = excluded.expires_ms, data = excluded.data \
                 WHERE gns_liveness.beat_ms <= excluded.beat_ms",
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (fact, text) in chunk.iter().zip(chunk_texts) {
                query = query
                    .bind(fact.key.kind.as_str())
                    .bind(fact.key.scope.clone())
                    .bind(fact.key.name.clone())
                    .bind(fact.beat_ms)
                    .bind(fact.expires_ms)
                    .bind(text.clone());
            }
            query.execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    pub(super) async fn liveness_facts(
        &self,
        kind: Kind,
        scope: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Liveness>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM gns_liveness WHERE kind = $1");
        if scope.is_some() {
            sql.push_str(" AND scope = $2");
        }
        if name.is_some() {
            sql.push_str(if scope.is_some() {
                " AND name = $3"
            } else {
                " AND name = $2"
            });
        }
        sql.push_str(" ORDER BY scope, name");
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(kind.as_str());
        if let Some(scope) = scope {
            query = query.bind(scope.to_owned());
        }
        if let Some(name) = name {
            query = query.bind(name.to_owned());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(fact_from_row).collect()
    }

    pub(super) async fn lapsed_facts(
        &self,
        kind: Kind,
        now_ms: i64,
    ) -> Result<Vec<Liveness>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM gns_liveness WHERE kind = $1 AND expires_ms <= $2 \
             ORDER BY expires_ms"
        )))
        .bind(kind.as_str())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(fact_from_row).collect()
    }

    pub(super) async fn settle(&self, key: &ObjectKey, beat_ms: i64) -> Result<bool, StoreError> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let done = sqlx::query(
            "UPDATE gns_liveness SET expires_ms = $5 \
             WHERE kind = $1 AND scope = $2 AND name = $3 AND beat_ms = $4",
        )
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .bind(beat_ms)
        .bind(NO_EXPIRY)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn forget(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        sqlx::query("DELETE FROM gns_liveness WHERE kind = $1 AND scope = $2 AND name = $3")
            .bind(key.kind.as_str())
            .bind(&key.scope)
            .bind(&key.name)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub(super) async fn prune_audit_rows(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let done = sqlx::query("DELETE FROM gns_audit WHERE at < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    pub(super) async fn merge_status_of(
        &self,
        key: &ObjectKey,
        patch: serde_json::Map<String, Value>,
        expected: Option<u64>,
        audit: (&str, &str),
    ) -> Result<(StoredObject, bool), StoreError> {
        let (guard, mut tx, revision) = self.begin_write().await?;
        let Some((current, _)) = super::fetch_object(&mut tx, key).await? else {
            return Err(StoreError::NotFound(key.to_string()));
        };
        super::check_version(key, expected, current.resource_version)?;
        let mut status = match &current.status {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        for (field, value) in patch {
            if value.is_null() {
                status.remove(&field);
            } else {
                status.insert(field, value);
            }
        }
        let status = Value::Object(status);
        if status == current.status {
            // Nothing changes: no revision (the transaction rolls back).
            drop(tx);
            drop(guard);
            return Ok((current, false));
        }
        let now = now_millis();
        sqlx::query(
            "UPDATE gns_objects SET status = $4, resource_version = $5, updated_at = $6 \
             WHERE kind = $1 AND scope = $2 AND name = $3",
        )
        .bind(key.kind.as_str())
        .bind(&key.scope)
        .bind(&key.name)
        .bind(super::spec_text(&status)?)
        .bind(i64_of(revision))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        self.finish_write(tx, revision, (audit.0, audit.1, key))
            .await?;
        drop(guard);
        Ok((
            StoredObject {
                status,
                resource_version: revision,
                updated_at: now,
                ..current
            },
            true,
        ))
    }
}
