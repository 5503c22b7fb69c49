//! Telemetry samples in `gns_telemetry` (migration 0007): one row per gateway
//! instance report with its traffic, read back by time for the telemetry
//! window and pruned behind it. Like liveness, no revision and no audit
//! row; on Postgres the insert commits asynchronously (a crash can lose the
//! last report or two, which only thins the window).

use sqlx::Executor;

use super::{Backend, SqlStore, db_err, number_column, text_column};
use crate::store::{StoreError, TelemetrySample};

impl SqlStore {
    pub(super) async fn insert_telemetry(
        &self,
        sample: &TelemetrySample,
    ) -> Result<(), StoreError> {
        let traffic = serde_json::to_string(&sample.traffic)
            .map_err(|e| StoreError::Internal(format!("telemetry traffic: {e}")))?;
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
        // Two reports of one instance in the same millisecond: the later wins.
        sqlx::query(
            "INSERT INTO gns_telemetry (cluster, instance, at_ms, interval_ms, traffic) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (cluster, instance, at_ms) DO UPDATE SET \
             interval_ms = excluded.interval_ms, traffic = excluded.traffic",
        )
        .bind(&sample.cluster)
        .bind(&sample.instance)
        .bind(sample.at_ms)
        .bind(sample.interval_ms)
        .bind(traffic)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    pub(super) async fn select_telemetry(
        &self,
        since_ms: i64,
    ) -> Result<Vec<TelemetrySample>, StoreError> {
        let rows = sqlx::query(
            "SELECT cluster, instance, at_ms, interval_ms, traffic FROM gns_telemetry \
             WHERE at_ms >= $1 ORDER BY at_ms, cluster, instance",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let traffic = serde_json::from_str(&text_column(row, "traffic")?)
                    .map_err(|e| StoreError::Internal(format!("telemetry traffic: {e}")))?;
                Ok(TelemetrySample {
                    cluster: text_column(row, "cluster")?,
                    instance: text_column(row, "instance")?,
                    at_ms: number_column(row, "at_ms")?,
                    interval_ms: number_column(row, "interval_ms")?,
                    traffic,
                })
            })
            .collect()
    }

    pub(super) async fn delete_telemetry(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _guard = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        let done = sqlx::query("DELETE FROM gns_telemetry WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}
