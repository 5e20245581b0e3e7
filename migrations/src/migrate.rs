//! [`migrate`]: applies [`MIGRATOR`](crate::MIGRATOR) as the owner and reports how readings
//! are stored.

use std::fmt;

use crate::error::DbError;
use crate::urls::{connect, role_options};

/// How table `readings` is stored, decided once by the readings migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageLayout {
    /// A TimescaleDB hypertable with daily chunks, compression and retention.
    TimescaleDb,
    /// Native PostgreSQL range partitions, one per UTC day, kept ahead of time by
    /// `ensure_readings_partitions`.
    NativePartitions,
}

impl StorageLayout {
    /// The name stored in `readings_layout.layout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimescaleDb => "timescaledb",
            Self::NativePartitions => "native_partitions",
        }
    }

    fn from_stored(stored: &str) -> Result<Self, DbError> {
        [Self::TimescaleDb, Self::NativePartitions]
            .into_iter()
            .find(|layout| layout.as_str() == stored)
            .ok_or_else(|| DbError::UnknownLayout {
                found: stored.to_owned(),
            })
    }
}

impl fmt::Display for StorageLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Connects as the owner (`owner_url`, as returned by [`bootstrap`](crate::bootstrap)),
/// applies the migrations not applied yet and returns the readings storage layout.
///
/// Safe to run again and from several processes at once: the migrator takes an advisory lock
/// and skips applied migrations (and fails if an applied one was edited since).
#[tracing::instrument(skip_all)]
pub async fn migrate(owner_url: &str) -> Result<StorageLayout, DbError> {
    let options = role_options("owner", owner_url)?;
    let mut conn = connect(&options).await?;
    refuse_timescaledb_without_compression(&mut conn).await?;
    crate::MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|source| DbError::Migrate { source })?;
    let stored: String = sqlx::query_scalar("SELECT layout FROM readings_layout")
        .fetch_one(&mut conn)
        .await
        .map_err(DbError::statement("reading readings_layout"))?;
    let layout = StorageLayout::from_stored(&stored)?;
    tracing::info!(%layout, "readings storage: {layout}");
    if let Err(e) = sqlx::Connection::close(conn).await {
        tracing::debug!(error = %e, "closing the migration connection failed");
    }
    Ok(layout)
}

/// Before the readings are created: TimescaleDB installed in the database (by an operator;
/// bootstrap leaves this edition out) under a license without compression would fail the
/// readings migration halfway, with PostgreSQL's less helpful message.
async fn refuse_timescaledb_without_compression(
    conn: &mut sqlx::PgConnection,
) -> Result<(), DbError> {
    let (installed, migrated): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), \
                to_regclass('public.readings_layout') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DbError::statement("checking for timescaledb"))?;
    if !installed || migrated {
        return Ok(());
    }
    let license = crate::bootstrap::timescaledb_license(conn)
        .await
        .map_err(DbError::statement("reading timescaledb.license"))?;
    match license {
        // Not loaded in this session: the readings migration's first TimescaleDB call loads
        // it, and fails with TimescaleDB's own message if it cannot.
        None => Ok(()),
        Some(license) if license == crate::bootstrap::COMMUNITY_LICENSE => Ok(()),
        Some(license) => Err(DbError::TimescaleDbWithoutCompression { license }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip_through_their_stored_names() {
        for layout in [StorageLayout::TimescaleDb, StorageLayout::NativePartitions] {
            assert_eq!(
                StorageLayout::from_stored(&layout.to_string()).ok(),
                Some(layout)
            );
        }
        assert_eq!(StorageLayout::TimescaleDb.to_string(), "timescaledb");
        assert_eq!(
            StorageLayout::NativePartitions.to_string(),
            "native_partitions"
        );
        assert!(matches!(
            StorageLayout::from_stored("columnar"),
            Err(DbError::UnknownLayout { .. })
        ));
    }
}
