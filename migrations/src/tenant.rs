//! The per-transaction tenant setting that every row-level security policy reads.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The setting the policies read through `app_current_tenant()`.
pub const TENANT_SETTING: &str = "app.tenant_id";

/// Begins a transaction scoped to `tenant`: the setting is local to the transaction, so a
/// pooled connection never carries one tenant's scope into another's request.
pub async fn begin_tenant(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(TENANT_SETTING)
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}
