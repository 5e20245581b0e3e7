//! The per-transaction tenant setting that every row-level security policy reads.

use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The setting the policies read through `app_current_tenant()`.
pub const TENANT_SETTING: &str = "app.tenant_id";

/// Begins a transaction scoped to `tenant`: the setting is local to the transaction, so a
/// pooled connection never carries one tenant's scope into another's request.
///
/// `BEGIN` and the setting travel in one simple-protocol message, one round trip instead of
/// two. The tenant is formatted into it, which is safe: a `Uuid` prints as hex digits and
/// hyphens only. Should the setting fail, the transaction is left aborted and sqlx refuses
/// to hand it out (`BeginFailed`), so no statement ever runs without the tenant set.
pub async fn begin_tenant(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(scope("BEGIN", tenant)).await
}

/// As [`begin_tenant`], on a connection the caller holds (to close it rather than hand it
/// back to the pool when it stops answering).
pub async fn begin_tenant_on(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin_with(scope("BEGIN", tenant)).await
}

/// The statements that begin a read-only transaction scoped to `tenant`, for a client that
/// sends them itself ahead of its query (the work-order list's pipelined read): `BEGIN READ
/// ONLY` and the tenant setting, as one simple-protocol batch. Should the setting fail, the
/// transaction is aborted and every statement sent after it fails until its end.
pub fn tenant_read_begin(tenant: Uuid) -> String {
    scope("BEGIN READ ONLY", tenant)
}

/// `begin` (a `BEGIN` statement) and the tenant setting. `SET LOCAL` rather than `SELECT
/// set_config(.., true)`, which is the same setting: a `SET` is neither planned nor executed
/// as a query and returns no row, which spared a list request about 2 % of its CPU.
fn scope(begin: &str, tenant: Uuid) -> String {
    #[cfg(feature = "rls-probe")]
    let tenant = rls_probe::database_tenant(tenant);
    format!(
        "{begin}; SET LOCAL {TENANT_SETTING} = '{}'",
        tenant.hyphenated()
    )
}

/// Whether a database error may pass by itself (connection lost, server restarting, too many
/// connections, serialization failure, a server that is read-only until a failover ends), so
/// that the same operation should be retried, as opposed to an error the same input will
/// always get.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08 connection exceptions, 40 transaction rollback, 53 insufficient
            // resources, 57P0x operator intervention (shutdown, restart), 25006 a read-only
            // transaction (a standby, or a primary being failed over), 58030 an I/O error of
            // the server.
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "25006" | "58030")
        }),
        _ => false,
    }
}

/// Whether a statement was interrupted rather than refused: cancelled (57014: an operator's
/// `pg_cancel_backend`, or `statement_timeout`) or denied a lock (55P03: `lock_timeout`,
/// `NOWAIT`). Worth a few more tries, but not an endless retry as [`is_transient`] errors
/// get: a statement that always outlasts a timeout would be retried for ever.
pub fn is_interrupted(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| matches!(code.as_ref(), "57014" | "55P03")))
}

/// A test's switch that breaks the application's tenant filter on purpose: inside
/// [`rls_probe::DATABASE_TENANT`]'s scope, once a value is set, every [`begin_tenant`] and
/// [`tenant_read_begin`] sets that tenant for row-level security whatever tenant the
/// application asked for. A request
/// whose handlers filter by another tenant's id then reaches that tenant's rows only if the
/// policies let it. Compiled only with the `rls-probe` feature.
#[cfg(feature = "rls-probe")]
pub mod rls_probe {
    use std::cell::Cell;

    use uuid::Uuid;

    tokio::task_local! {
        /// The tenant row-level security is set to, in this task, when set.
        pub static DATABASE_TENANT: Cell<Option<Uuid>>;
    }

    pub(crate) fn database_tenant(asked: Uuid) -> Uuid {
        DATABASE_TENANT
            .try_with(Cell::get)
            .ok()
            .flatten()
            .unwrap_or(asked)
    }
}
