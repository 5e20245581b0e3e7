//! Webhooks of a tenant, for its admins. Delivery is [`crate::webhooks`]'.
//!
//! - `POST /api/v1/webhooks` `{"url", "event_kinds": ["work_order."], "allow_private": false}`:
//!   answers the signing secret once. The target is checked now and at every delivery.
//! - `GET /api/v1/webhooks`; `PATCH /api/v1/webhooks/{id}` (`url`, `event_kinds`,
//!   `allow_private`, `enabled`: enabling a disabled webhook resets its failure count);
//!   `DELETE /api/v1/webhooks/{id}`.
//! - `GET /api/v1/webhooks/{id}/deliveries?limit=`: the delivery log, newest first.
//!
//! A new webhook receives the events after the latest one at its creation.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::FromRow;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::Permission;
use crate::webhooks::check_target;

#[derive(Debug, Serialize, FromRow)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub event_kinds: Vec<String>,
    pub allow_private: bool,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The last event handled.
    pub after_seq: i64,
    pub failed_in_a_row: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, url, event_kinds, allow_private, enabled, disabled_reason, after_seq, \
                       failed_in_a_row, next_attempt_at, created_at";

#[derive(Debug, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The HMAC-SHA256 signing secret, shown only now.
    pub secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    pub url: String,
    #[serde(default)]
    pub event_kinds: Vec<String>,
    #[serde(default)]
    pub allow_private: bool,
}

async fn check_url(url: &str, allow_private: bool, errors: &mut FieldErrors) {
    if url.len() > 2000 {
        errors.add("url", "must be at most 2000 characters");
    } else if let Err(e) = check_target(url, allow_private).await {
        errors.add("url", e.to_string());
    }
}

/// The event kinds as stored: each trimmed, and each a prefix of event kinds (lowercase
/// letters, `_` and `.`), at most 20; every bad one is named in `errors`.
fn clean_kinds(kinds: &[String], errors: &mut FieldErrors) -> Vec<String> {
    let cleaned: Vec<String> = kinds.iter().map(|k| k.trim().to_owned()).collect();
    if cleaned.len() > MAX_KINDS {
        errors.add("event_kinds", format!("at most {MAX_KINDS} prefixes"));
    }
    for (i, k) in cleaned.iter().enumerate() {
        let valid = !k.is_empty()
            && k.len() <= 65
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.');
        if !valid {
            errors.add(
                format!("event_kinds.{i}"),
                "a prefix of event kinds: lowercase letters, _ and ., e.g. work_order. or part.low_stock",
            );
        }
    }
    cleaned
}

/// Most event-kind prefixes a webhook takes, as the live stream.
const MAX_KINDS: usize = 20;

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateWebhook>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    auth.require(Permission::WebhooksManage)?;
    let mut errors = FieldErrors::default();
    check_url(&req.url, req.allow_private, &mut errors).await;
    let event_kinds = clean_kinds(&req.event_kinds, &mut errors);
    errors.finish()?;
    let id = Uuid::new_v4();
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let sealed = state
        .mfa
        .seal(id, &secret)
        .map_err(|e| anyhow::anyhow!("sealing a webhook secret: {e}"))?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    sqlx::query(
        "INSERT INTO webhooks (id, tenant_id, url, event_kinds, secret_sealed, allow_private,
                               after_seq, created_by)
         VALUES ($1, $2, $3, $4, $5, $6,
                 coalesce((SELECT max(seq) FROM events WHERE tenant_id = $2), 0), $7)",
    )
    .bind(id)
    .bind(tenant)
    .bind(&req.url)
    .bind(&event_kinds)
    .bind(&sealed)
    .bind(req.allow_private)
    .bind(auth.user)
    .execute(&mut *tx)
    .await?;
    let detail = json!({
        "url": req.url,
        "event_kinds": event_kinds,
        "allow_private": req.allow_private,
    });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "webhook.create",
        ("webhook", id),
        detail,
    )
    .await?;
    let webhook = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Created {
            webhook,
            secret: format!("whsec_{}", URL_SAFE_NO_PAD.encode(secret)),
        }),
    ))
}

/// The secret as receivers hold it (`whsec_...`) to the key bytes the signature uses.
pub fn secret_bytes(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.strip_prefix("whsec_")?).ok()
}

async fn fetch(conn: &mut sqlx::PgConnection, tenant: Uuid, id: Uuid) -> Result<Webhook, ApiError> {
    sqlx::query_as::<_, Webhook>(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(ApiError::NotFound)
}

#[derive(Debug, Serialize)]
pub struct WebhookList {
    pub items: Vec<Webhook>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<WebhookList>, ApiError> {
    auth.require(Permission::WebhooksManage)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, Webhook>(&format!(
        "SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(WebhookList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub event_kinds: Option<Vec<String>>,
    pub allow_private: Option<bool>,
    pub enabled: Option<bool>,
}

pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<UpdateWebhook>,
) -> Result<Json<Webhook>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::WebhooksManage)?;
    let mut errors = FieldErrors::default();
    let url = req.url.clone().unwrap_or(before.url.clone());
    let allow_private = req.allow_private.unwrap_or(before.allow_private);
    if req.url.is_some() || req.allow_private == Some(false) {
        check_url(&url, allow_private, &mut errors).await;
    }
    let event_kinds = req
        .event_kinds
        .as_ref()
        .map(|kinds| clean_kinds(kinds, &mut errors));
    errors.finish()?;
    let enabling = req.enabled == Some(true) && !before.enabled;
    sqlx::query(
        "UPDATE webhooks SET url = $3, event_kinds = coalesce($4, event_kinds),
                allow_private = $5, enabled = coalesce($6, enabled),
                disabled_reason = CASE WHEN coalesce($6, enabled) THEN NULL
                                       ELSE coalesce(disabled_reason, 'disabled by an admin') END,
                failed_in_a_row = CASE WHEN $7 THEN 0 ELSE failed_in_a_row END,
                attempts = CASE WHEN $7 THEN 0 ELSE attempts END,
                next_attempt_at = CASE WHEN $7 THEN NULL ELSE next_attempt_at END
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(&url)
    .bind(&event_kinds)
    .bind(allow_private)
    .bind(req.enabled)
    .bind(enabling)
    .execute(&mut *tx)
    .await?;
    let detail = json!({
        "url": req.url,
        "event_kinds": event_kinds,
        "allow_private": req.allow_private,
        "enabled": req.enabled,
    });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "webhook.update",
        ("webhook", id),
        detail,
    )
    .await?;
    let webhook = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(webhook))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::WebhooksManage)?;
    sqlx::query("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let detail = json!({ "url": before.url });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "webhook.delete",
        ("webhook", id),
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, FromRow)]
pub struct Delivery {
    pub id: i64,
    pub event_seq: i64,
    pub attempt: i32,
    /// `delivered`, `failed` (an error or a non-2xx answer) or `refused` (the target is not
    /// allowed, e.g. it resolves to a private address).
    pub outcome: String,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// 1-500, default 100.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryList {
    pub items: Vec<Delivery>,
}

pub async fn deliveries(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 500"));
    }
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::WebhooksManage)?;
    let items = sqlx::query_as::<_, Delivery>(
        "SELECT id, event_seq, attempt, outcome, status_code, error, duration_ms, at
         FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2
         ORDER BY id DESC LIMIT $3",
    )
    .bind(tenant)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(DeliveryList { items }))
}
