//! Messages ingest could not store as readings, for the people who fix their cause (a gateway
//! not registered, a tag unknown, a publisher that sends something else).
//!
//! - `GET /api/v1/dead-letters?reason=&since=&until=&limit=&before=`: newest first, at most
//!   `limit` (1-500, default 100) entries and a `next_cursor` to pass as `before` for the next
//!   page (`null` on the last page). Each entry has the topic, the reason, the detail and the
//!   size of the message's bytes.
//! - `GET /api/v1/dead-letters/{id}/payload`: the message's bytes as the broker delivered them.
//!
//! Needs `registry:write`. Only the caller's organisation's dead letters (row-level security).
//! A message whose topic named no organisation this database knows belongs to none: the API
//! shows it to nobody; it is counted (`maintainpro_ingest_dead_letters_total`) and stays in
//! the table, without a tenant, for the database's operator.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, QueryBuilder};

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, FieldErrors};
use crate::permissions::Permission;

/// The longest reason ingest gives; a longer filter cannot match.
const MAX_REASON: usize = 64;

/// One dead letter as the list shows it; its bytes come from the payload endpoint.
#[derive(Debug, Serialize, FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub received_at: DateTime<Utc>,
    pub topic: String,
    pub reason: String,
    pub detail: String,
    pub payload_bytes: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub reason: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub before: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<DeadLetter>,
    pub next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<Params>,
) -> Result<Json<Page>, ApiError> {
    auth.require(Permission::RegistryWrite)?;
    let mut errors = FieldErrors::default();
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        errors.add("limit", "must be between 1 and 500");
    }
    if let (Some(since), Some(until)) = (q.since, q.until)
        && since >= until
    {
        errors.add("since", "must be before until");
    }
    if let Some(reason) = &q.reason
        && (reason.is_empty()
            || reason.len() > MAX_REASON
            || !reason.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    {
        errors.add(
            "reason",
            "must be a reason such as unknown_tag or malformed (lower-case letters and _)",
        );
    }
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut query = QueryBuilder::new(
        "SELECT id, received_at, topic, reason, detail, length(payload) AS payload_bytes
         FROM dead_letters WHERE tenant_id = ",
    );
    query.push_bind(tenant);
    if let Some(reason) = q.reason {
        query.push(" AND reason = ").push_bind(reason);
    }
    if let Some(since) = q.since {
        query.push(" AND received_at >= ").push_bind(since);
    }
    if let Some(until) = q.until {
        query.push(" AND received_at < ").push_bind(until);
    }
    let (items, next_cursor) = super::newest_by_id(
        &state.pool,
        tenant,
        query,
        q.before,
        limit,
        |e: &DeadLetter| e.id,
    )
    .await?;
    Ok(Json(Page { items, next_cursor }))
}

pub async fn payload(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let bytes: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM dead_letters WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    // Another organisation's dead letter is not found, whatever the caller's role, as for
    // every object addressed by id.
    let bytes = bytes.ok_or(ApiError::NotFound)?;
    auth.require(Permission::RegistryWrite)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"dead-letter-{id}.bin\""),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}
