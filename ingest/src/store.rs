//! The PostgreSQL side of ingest.
//!
//! A batch is written in one transaction: first its (gateway, seq) row in `ingest_batches`,
//! which conflicts if the batch was stored before, then its readings by binary COPY. Either
//! both commit or neither does, so a redelivered batch is skipped exactly when it was stored.

use sqlx::PgPool;
use uuid::Uuid;

use crate::copy::{self, Row};

/// Errors of the storage boundary, split by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable or refused for a reason that may pass (connection lost,
    /// serialization failure, too many connections): retry later, do not ack.
    #[error("database unavailable: {0}")]
    Transient(sqlx::Error),
    /// The data or the schema is wrong; retrying the same message cannot succeed.
    #[error("database rejected the write: {0}")]
    Permanent(sqlx::Error),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if migrations::is_transient(&e) {
            StoreError::Transient(e)
        } else {
            StoreError::Permanent(e)
        }
    }
}

/// What writing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored {
        rows: usize,
    },
    /// The ledger already had this (gateway, seq): nothing was written.
    Duplicate,
}

/// A message ingest could not turn into readings.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub tenant: Option<Uuid>,
    pub topic: &'a str,
    pub reason: &'a str,
    pub detail: String,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes one batch's rows, once, together with the dead letter for the part of the batch
    /// that could not be stored (readings of unknown tags), if any.
    pub async fn write_batch(
        &self,
        tenant: Uuid,
        gateway: Uuid,
        seq: u64,
        rows: &[Row],
        rejected: Option<DeadLetter<'_>>,
    ) -> Result<Written, StoreError> {
        let seq = i64::try_from(seq).map_err(|_| {
            StoreError::Permanent(sqlx::Error::Protocol(format!(
                "batch sequence number {seq} exceeds the ledger's range"
            )))
        })?;
        let mut tx = migrations::begin_tenant(&self.pool, tenant).await?;
        let fresh = sqlx::query(
            "INSERT INTO ingest_batches (tenant_id, gateway_id, seq, readings)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(gateway)
        .bind(seq)
        .bind(i32::try_from(rows.len()).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return Ok(Written::Duplicate);
        }
        if !rows.is_empty() {
            let mut copy_in = tx.copy_in_raw(copy::COPY_READINGS).await?;
            copy_in.send(copy::encode(rows)).await?;
            copy_in.finish().await?;
        }
        if let Some(letter) = rejected {
            insert_dead_letter(&mut tx, &letter).await?;
        }
        tx.commit().await?;
        Ok(Written::Stored { rows: rows.len() })
    }

    pub async fn dead_letter(&self, letter: DeadLetter<'_>) -> Result<(), StoreError> {
        let mut tx = match letter.tenant {
            Some(t) => migrations::begin_tenant(&self.pool, t).await?,
            None => self.pool.begin().await?,
        };
        insert_dead_letter(&mut tx, &letter).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates upcoming daily partitions (a no-op on TimescaleDB). Returns how many were made.
    pub async fn ensure_partitions(&self) -> Result<i32, StoreError> {
        let created: i32 = sqlx::query_scalar("SELECT ensure_readings_partitions(7, 3)")
            .fetch_one(&self.pool)
            .await?;
        Ok(created)
    }
}

async fn insert_dead_letter(
    conn: &mut sqlx::PgConnection,
    letter: &DeadLetter<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (tenant_id, topic, reason, detail, payload)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(letter.tenant)
    .bind(letter.topic)
    .bind(letter.reason)
    .bind(&letter.detail)
    .bind(letter.payload)
    .execute(conn)
    .await?;
    Ok(())
}
