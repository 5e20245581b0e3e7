//! A user's personal data: export it (GDPR art. 15 and 20) and erase it (art. 17).
//!
//! - `GET /api/v1/users/{id}/export`: everything the organisation holds about the user, as
//!   one JSON document: the account, sessions, team memberships, API keys they created, work
//!   orders they requested or were assigned, their work-order events, time logs, checklist
//!   ticks, attachments, alarm acknowledgements and shelves, the notifications sent to them,
//!   and the audit entries they made or that name them. Admins, or the user themselves.
//! - `POST /api/v1/users/{id}/erase` `{"confirm_email": "<the user's email>"}`: see
//!   [`crate::users::erase`]. Admins only, never on themselves; the email must be repeated.
//!
//! Both are audited (`user.export`, `user.erase`). Another tenant's user answers 404.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body};
use crate::permissions::Permission;

/// The sections of an export: name, and the query of its rows as JSON (`$1` tenant, `$2`
/// user), run in the tenant's transaction.
const SECTIONS: &[(&str, &str)] = &[
    (
        "sessions",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'created_at', created_at, 'last_used_at', last_used_at,
                    'expires_at', expires_at, 'revoked_at', revoked_at,
                    'revoked_reason', revoked_reason, 'ip', ip, 'user_agent', user_agent)
                 ORDER BY created_at), '[]')
         FROM sessions WHERE tenant_id = $1 AND user_id = $2",
    ),
    (
        "teams",
        "SELECT coalesce(jsonb_agg(jsonb_build_object('id', t.id, 'name', t.name) ORDER BY t.name), '[]')
         FROM team_members m JOIN teams t ON t.tenant_id = m.tenant_id AND t.id = m.team_id
         WHERE m.tenant_id = $1 AND m.user_id = $2",
    ),
    (
        "api_keys_created",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'name', name, 'scopes', scopes, 'created_at', created_at,
                    'expires_at', expires_at, 'revoked_at', revoked_at) ORDER BY created_at), '[]')
         FROM api_keys WHERE tenant_id = $1 AND created_by = $2",
    ),
    (
        "work_orders_requested",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'title', title, 'status', status, 'created_at', created_at)
                 ORDER BY created_at), '[]')
         FROM work_orders WHERE tenant_id = $1 AND requested_by = $2",
    ),
    (
        "work_orders_assigned",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'title', title, 'status', status, 'created_at', created_at)
                 ORDER BY created_at), '[]')
         FROM work_orders WHERE tenant_id = $1 AND assignee_user = $2",
    ),
    (
        "work_order_events",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'work_order_id', work_order_id, 'kind', kind, 'detail', detail,
                    'at', at) ORDER BY id), '[]')
         FROM work_order_events WHERE tenant_id = $1 AND actor = $2",
    ),
    (
        "time_logs",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'work_order_id', work_order_id, 'started_at', started_at,
                    'minutes', minutes, 'note', note) ORDER BY started_at), '[]')
         FROM work_order_time_logs WHERE tenant_id = $1 AND user_id = $2",
    ),
    (
        "checklist_items_done",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'work_order_id', work_order_id, 'text', text, 'done_at', done_at)
                 ORDER BY done_at), '[]')
         FROM work_order_checklist_items WHERE tenant_id = $1 AND done_by = $2",
    ),
    (
        "attachments_uploaded",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'work_order_id', work_order_id, 'filename', filename,
                    'content_type', content_type, 'size_bytes', size_bytes,
                    'created_at', created_at) ORDER BY created_at), '[]')
         FROM work_order_attachments WHERE tenant_id = $1 AND uploaded_by = $2",
    ),
    (
        "alarms_acknowledged",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'acknowledged_at', acknowledged_at, 'comment', ack_comment)
                 ORDER BY acknowledged_at), '[]')
         FROM alarms WHERE tenant_id = $1 AND acknowledged_by = $2",
    ),
    (
        "alarm_shelves",
        "SELECT coalesce(jsonb_agg(to_jsonb(s) - 'tenant_id' ORDER BY s.id), '[]')
         FROM alarm_shelves s WHERE s.tenant_id = $1 AND (s.created_by = $2 OR s.ended_by = $2)",
    ),
    (
        "notifications",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'email', email, 'subject', subject, 'outcome', outcome, 'at', at)
                 ORDER BY id), '[]')
         FROM notifications WHERE tenant_id = $1 AND user_id = $2",
    ),
    (
        "audit_entries",
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', id, 'at', at, 'action', action, 'outcome', outcome,
                    'target_type', target_type, 'target_id', target_id,
                    'request_id', request_id, 'ip', ip, 'detail', detail) ORDER BY id), '[]')
         FROM audit_log
         WHERE tenant_id = $1
           AND (actor_user = $2 OR (target_type = 'user' AND target_id = $2::text)
                OR lower(detail->>'email') = (SELECT lower(email) FROM users WHERE id = $2))",
    ),
];

pub async fn export(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(user): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let account: Option<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', id, 'email', email, 'display_name', display_name,
                    'role', role, 'disabled', disabled, 'created_at', created_at,
                    'erased_at', erased_at,
                    'mfa_enabled', EXISTS (SELECT 1 FROM user_mfa m
                                           WHERE m.tenant_id = users.tenant_id AND m.user_id = users.id))
         FROM users WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(account) = account else {
        return Err(ApiError::NotFound);
    };
    if auth.user != user
        && let Err(denied) = auth.require(Permission::UsersManage)
    {
        tx.commit().await?;
        return Err(deny(&state, &auth, &meta, "user.export", user, denied).await);
    }
    let mut export = json!({
        "format": "maintainpro.user-export.v1",
        "exported_at": chrono::Utc::now(),
        "user": account,
    });
    for (name, query) in SECTIONS {
        let rows: Value = sqlx::query_scalar(query)
            .bind(tenant)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
        export[*name] = rows;
    }
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "user.export",
        ("user", user),
        json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(export))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// The user's current email, repeated: an erasure cannot be undone.
    pub confirm_email: String,
}

pub async fn erase(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(user): Path<Uuid>,
    Body(req): Body<EraseRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let found: Option<(String, bool)> = sqlx::query_as(
        "SELECT email, erased_at IS NOT NULL FROM users WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    // Another tenant's user, or none: 404 before any permission question.
    let Some((email, erased)) = found else {
        return Err(ApiError::NotFound);
    };
    if let Err(denied) = auth.require(Permission::UsersManage) {
        return Err(deny(&state, &auth, &meta, "user.erase", user, denied).await);
    }
    if user == auth.user {
        return Err(ApiError::Conflict(
            "you cannot erase your own account: ask another admin".into(),
        ));
    }
    if erased {
        return Err(ApiError::Conflict("this user was erased already".into()));
    }
    if !req.confirm_email.trim().eq_ignore_ascii_case(&email) {
        return Err(ApiError::field(
            "confirm_email",
            "must repeat the email of the user to erase",
        ));
    }
    let done = crate::users::erase(&state.pool, tenant, user, Some(auth.user), &meta)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        // Erased by another request in between.
        .ok_or_else(|| ApiError::Conflict("this user was erased already".into()))?;
    Ok(Json(json!({
        "id": user,
        "erased": true,
        "sessions_ended": done.sessions_ended,
        "trail_rows_cleared": done.trail_rows,
    })))
}

/// Audits a refused export or erasure and returns the refusal.
async fn deny(
    state: &AppState,
    auth: &AuthUser,
    meta: &RequestMeta,
    action: &str,
    user: Uuid,
    denied: ApiError,
) -> ApiError {
    audit::record(
        &state.pool,
        Entry::new(
            Some(auth.tenant.as_uuid()),
            Some(auth.user),
            action,
            Outcome::Denied,
        )
        .target("user", user),
        meta,
    )
    .await;
    denied
}
