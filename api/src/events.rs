//! The tenant's event log (`events`): what live streams and webhooks deliver. Every change
//! worth telling someone about adds one, in the transaction of the change, so an event exists
//! exactly when its change committed. Events of a tenant are numbered in commit order
//! (`seq`), so a reader resuming after a number misses none.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// Adds an event `kind` (e.g. `work_order.status_changed`, `part.low_stock`) about
/// `subject` to the log of `tenant`; returns its number. The transaction holds the tenant's
/// event counter until it ends: keep such transactions short.
pub async fn emit(
    conn: &mut PgConnection,
    tenant: Uuid,
    kind: &str,
    subject: impl ToString,
    payload: &Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT emit_event($1, $2, $3, $4)")
        .bind(tenant)
        .bind(kind)
        .bind(subject.to_string())
        .bind(payload)
        .fetch_one(conn)
        .await
}
