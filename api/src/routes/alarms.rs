//! Alarms, after OPC UA Part 9: list and filter them, acknowledge one with a comment, shelve
//! its rule on its tag until a time (raises meanwhile go on the history but open no work
//! order), and end a shelf early.
//!
//! - `GET /api/v1/alarms?state=active|cleared&asset_id=&limit=`
//! - `POST /api/v1/alarms/{id}/acknowledge` `{"comment": "..."}`
//! - `POST /api/v1/alarms/{id}/shelve` `{"until": "2026-11-23T06:00:00Z", "comment": "..."}`
//! - `DELETE /api/v1/alarms/{id}/shelve`
//!
//! Acknowledging and shelving need the role admin, manager or technician, or an API key with
//! the scope `alarms:write`; listing, any role or the scope `alarms:read`.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{FromRow, Postgres, Transaction};
use uuid::Uuid;

use crate::api_keys::Scope;
use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::{AuthUser, Caller};
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::Permission;

/// The longest a shelf may last: a forgotten shelf must not hide a rule for good.
const MAX_SHELF_DAYS: i64 = 30;

#[derive(Debug, Serialize, FromRow)]
pub struct Alarm {
    pub id: Uuid,
    pub rule_id: String,
    pub tag_id: i64,
    pub tag: String,
    pub asset_id: Uuid,
    pub failure_mode: String,
    pub severity: String,
    /// `active` or `cleared`.
    pub state: String,
    pub trigger_value: f64,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    /// Began and ended in data replayed after an outage: on the history only.
    pub replayed: bool,
    /// Raised while shelved: no work order was opened or updated for it.
    pub suppressed: bool,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<Uuid>,
    pub ack_comment: Option<String>,
    /// Until when the alarm's rule is shelved on its tag, if it is now.
    pub shelved_until: Option<DateTime<Utc>>,
}

const SELECT: &str = "SELECT a.id, a.rule_id, a.tag_id, t.name AS tag, a.asset_id, a.failure_mode,
           a.severity, a.state, a.trigger_value, a.raised_at, a.cleared_at, a.replayed,
           a.suppressed, a.acknowledged_at, a.acknowledged_by, a.ack_comment,
           (SELECT max(s.until) FROM alarm_shelves s
             WHERE s.tenant_id = a.tenant_id AND s.rule_id = a.rule_id AND s.tag_id = a.tag_id
               AND s.ended_at IS NULL AND s.until > now()) AS shelved_until
    FROM alarms a JOIN tags t ON t.id = a.tag_id AND t.tenant_id = a.tenant_id";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub asset_id: Option<Uuid>,
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct AlarmList {
    pub items: Vec<Alarm>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<AlarmList>, ApiError> {
    let auth = caller.require_scope(Scope::AlarmsRead, Permission::AlarmsRead)?;
    let mut errors = FieldErrors::default();
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        errors.add("limit", "must be between 1 and 1000");
    }
    if let Some(s) = &q.state
        && !matches!(s.as_str(), "active" | "cleared")
    {
        errors.add("state", "must be \"active\" or \"cleared\"");
    }
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, Alarm>(&format!(
        "{SELECT}
         WHERE a.tenant_id = $1 AND ($2::text IS NULL OR a.state = $2)
           AND ($3::uuid IS NULL OR a.asset_id = $3)
         ORDER BY a.raised_at DESC, a.id LIMIT $4"
    ))
    .bind(tenant)
    .bind(q.state)
    .bind(q.asset_id)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(AlarmList { items }))
}

async fn fetch(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    id: Uuid,
) -> Result<Alarm, ApiError> {
    sqlx::query_as::<_, Alarm>(&format!("{SELECT} WHERE a.tenant_id = $1 AND a.id = $2"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(ApiError::NotFound)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeRequest {
    #[serde(default)]
    pub comment: Option<String>,
}

fn check_comment(comment: &str) -> Result<(), ApiError> {
    if comment.chars().count() > 2000 {
        return Err(ApiError::field("comment", "at most 2000 characters"));
    }
    Ok(())
}

/// Acknowledges an alarm (active or cleared). Acknowledging again keeps the first
/// acknowledgement and answers the alarm as it is.
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<AcknowledgeRequest>,
) -> Result<Json<Alarm>, ApiError> {
    let tenant = caller.tenant().as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another tenant's alarm, or none: 404 before any permission question.
    fetch(&mut tx, tenant, id).await?;
    let auth = caller.require_scope(Scope::AlarmsWrite, Permission::AlarmsWrite)?;
    if let Some(c) = &req.comment {
        check_comment(c)?;
    }
    let first = sqlx::query(
        "UPDATE alarms SET acknowledged_at = now(), acknowledged_by = $3, ack_comment = $4
         WHERE tenant_id = $1 AND id = $2 AND acknowledged_at IS NULL",
    )
    .bind(tenant)
    .bind(id)
    .bind(auth.user)
    .bind(&req.comment)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if first {
        record(
            &mut tx,
            &auth,
            &meta,
            "alarm.acknowledge",
            id,
            json!({ "comment": req.comment }),
        )
        .await?;
    }
    let alarm = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    tracing::info!(alarm = %id, user = %auth.user, "alarm acknowledged");
    Ok(Json(alarm))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShelveRequest {
    /// RFC 3339, in the future, at most 30 days ahead.
    pub until: DateTime<Utc>,
    /// Why: shown to whoever wonders where the alarms went.
    pub comment: String,
}

/// Shelves the alarm's rule on its tag until a time.
pub async fn shelve(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<ShelveRequest>,
) -> Result<Json<Alarm>, ApiError> {
    let tenant = caller.tenant().as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let alarm = fetch(&mut tx, tenant, id).await?;
    let auth = caller.require_scope(Scope::AlarmsWrite, Permission::AlarmsWrite)?;
    let now = Utc::now();
    let mut errors = FieldErrors::default();
    if req.until <= now || req.until > now + chrono::Duration::days(MAX_SHELF_DAYS) {
        errors.add(
            "until",
            format!("must be in the future and at most {MAX_SHELF_DAYS} days ahead"),
        );
    }
    if req.comment.trim().is_empty() {
        errors.add("comment", "say why the alarm is shelved");
    } else if req.comment.chars().count() > 2000 {
        errors.add("comment", "at most 2000 characters");
    }
    errors.finish()?;
    // One shelf at a time per rule and tag: a new one replaces what is running.
    end_shelves(&mut tx, tenant, &alarm, auth.user).await?;
    sqlx::query(
        "INSERT INTO alarm_shelves (id, tenant_id, rule_id, tag_id, until, comment, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(&alarm.rule_id)
    .bind(alarm.tag_id)
    .bind(req.until)
    .bind(&req.comment)
    .bind(auth.user)
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "until": req.until, "comment": req.comment, "rule_id": alarm.rule_id, "tag_id": alarm.tag_id });
    record(&mut tx, &auth, &meta, "alarm.shelve", id, detail).await?;
    let alarm = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    tracing::info!(alarm = %id, until = %req.until, user = %auth.user, "alarm shelved");
    Ok(Json(alarm))
}

/// Ends the shelf of the alarm's rule on its tag, if one is running.
pub async fn unshelve(
    State(state): State<AppState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<Json<Alarm>, ApiError> {
    let tenant = caller.tenant().as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let alarm = fetch(&mut tx, tenant, id).await?;
    let auth = caller.require_scope(Scope::AlarmsWrite, Permission::AlarmsWrite)?;
    let ended = end_shelves(&mut tx, tenant, &alarm, auth.user).await?;
    if ended > 0 {
        let detail = json!({ "rule_id": alarm.rule_id, "tag_id": alarm.tag_id });
        record(&mut tx, &auth, &meta, "alarm.unshelve", id, detail).await?;
    }
    let alarm = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    tracing::info!(alarm = %id, user = %auth.user, "alarm unshelved");
    Ok(Json(alarm))
}

/// Writes the audit entry of an operator's action on alarm `id`, in its transaction.
async fn record(
    tx: &mut Transaction<'_, Postgres>,
    auth: &AuthUser,
    meta: &RequestMeta,
    action: &str,
    id: Uuid,
    detail: Value,
) -> Result<(), sqlx::Error> {
    audit::write_change(tx, auth, meta, action, ("alarm", id), detail).await
}

/// Ends the running shelves of the alarm's rule on its tag; returns how many there were.
async fn end_shelves(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    alarm: &Alarm,
    user: Uuid,
) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query(
        "UPDATE alarm_shelves SET ended_at = now(), ended_by = $4
         WHERE tenant_id = $1 AND rule_id = $2 AND tag_id = $3
           AND ended_at IS NULL AND until > now()",
    )
    .bind(tenant)
    .bind(&alarm.rule_id)
    .bind(alarm.tag_id)
    .bind(user)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(ended)
}
