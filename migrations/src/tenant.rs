//! The per-transaction tenant setting that every row-level security policy reads.

use sqlx::{PgPool, Postgres, Transaction};
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
    pool.begin_with(format!(
        "BEGIN; SELECT set_config('{TENANT_SETTING}', '{}', true)",
        tenant.hyphenated()
    ))
    .await
}

/// Whether a database error may pass by itself (connection lost, server restarting, too many
/// connections, serialization failure), so that the same operation should be retried, as
/// opposed to an error the same input will always get.
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
            // resources, 57P0x operator intervention (shutdown, restart).
            code.starts_with("08")
                || code.starts_with("40")
                || code.starts_with("53")
                || code.starts_with("57P")
        }),
        _ => false,
    }
}
