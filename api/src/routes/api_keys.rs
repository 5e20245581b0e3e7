//! API keys of the organisation's gateways and services, managed by its admins:
//!
//! - `POST /api/v1/api-keys` `{"name", "scopes": [...], "expires_at"?}`: a new key, `201` with
//!   the key itself (`key`, shown this once) and its metadata.
//! - `GET /api/v1/api-keys`: every key of the organisation, newest first; metadata only, never
//!   the key or its hash.
//! - `POST /api/v1/api-keys/{id}/rotate` `{"overlap"?, "expires_at"?}` (the body may be left
//!   out): a replacement with the same name and scopes, shown this once; the old key keeps
//!   working for the overlap (`"24h"` unless told, at most `"7d"`, `"0s"` to stop it at once).
//!   The replacement expires when asked, else after the old key's lifetime again, else never.
//! - `DELETE /api/v1/api-keys/{id}`: revokes the key at once.
//!
//! A key with the scope `readings:publish` is a gateway's broker login: its broker account is
//! made before the key's row is written, outside the transaction (no account, no key: `503`;
//! a row that fails takes its account back), and removed when the key is revoked or, after a
//! rotation or at its expiry, by the reconciler ([`crate::broker_admin`]).
//!
//! Only admins manage keys, and only signed in as themselves: a key cannot manage keys.
//! Another organisation's key answers 404 before any permission question. Every change is
//! audited (`api_key.create`, `api_key.rotate`, `api_key.revoke`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::api_keys::{self, Scope};
use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::AuthUser;
use crate::broker_accounts;
use crate::broker_admin::BrokerAdmin;
use crate::error::{ApiError, Body};
use crate::permissions::Permission;

/// An API key as admins see it: never the key or its hash.
#[derive(Debug, Serialize, FromRow)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// To the minute: not written on every request.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<Uuid>,
    /// The key that replaced this one when it was rotated.
    pub replaced_by: Option<Uuid>,
}

const SELECT: &str = "SELECT id, name, scopes,
           CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                WHEN expires_at <= now() THEN 'expired'
                ELSE 'active' END AS status,
           created_by, created_at, expires_at, last_used_at, revoked_at, revoked_by, replaced_by
    FROM api_keys";

/// A key just made: the key itself, shown this once, and its metadata.
#[derive(Debug, Serialize)]
pub struct NewApiKey {
    pub key: String,
    #[serde(flatten)]
    pub api_key: ApiKeyView,
    /// After a rotation: the key it replaces, with its expiry at the end of the overlap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<ApiKeyView>,
}

#[derive(Debug, Serialize)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyView>,
}

async fn fetch(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<Option<ApiKeyView>, sqlx::Error> {
    sqlx::query_as::<_, ApiKeyView>(&format!("{SELECT} WHERE tenant_id = $1 AND id = $2"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// A key made before its row is written: its id, its text (shown once) and its hash.
struct Minted {
    id: Uuid,
    text: String,
    hash: [u8; 32],
}

impl Minted {
    fn new(state: &AppState, tenant: Uuid) -> Self {
        let id = Uuid::new_v4();
        let (text, hash) = state.api_keys.new_key(tenant, id);
        Self { id, text, hash }
    }
}

/// Inserts the minted key of `tenant`, made by `user`.
async fn insert(
    conn: &mut PgConnection,
    minted: &Minted,
    tenant: Uuid,
    user: Uuid,
    name: &str,
    scopes: &[&str],
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, name, secret_hash, scopes, created_by, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(minted.id)
    .bind(tenant)
    .bind(name)
    .bind(&minted.hash[..])
    .bind(scopes)
    .bind(user)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The broker that keeps the accounts of keys with `scopes`: `None` when no scope needs one,
/// an error when one does and this server keeps no broker accounts.
fn broker_for(state: &AppState, scopes: &[Scope]) -> Result<Option<Arc<BrokerAdmin>>, ApiError> {
    if !scopes.contains(&Scope::ReadingsPublish) {
        return Ok(None);
    }
    match &state.broker_accounts {
        Some(admin) => Ok(Some(Arc::clone(admin))),
        None => Err(ApiError::Unavailable(
            "readings:publish keys are broker logins, and this server manages no broker accounts: \
             its operator sets [api.broker_accounts] (docs/GATEWAY.md)"
                .to_owned(),
        )),
    }
}

/// Makes the broker account of a key before its row is written, outside any transaction (no
/// database connection waits on the broker): without it, no key. A row that then fails to
/// commit takes the account back with it ([`unprovision`], else the reconciler).
async fn provision(
    admin: &BrokerAdmin,
    tenant: Uuid,
    id: Uuid,
    name: &str,
    key: &str,
) -> Result<(), ApiError> {
    admin.provision(tenant, id, name, key).await.map_err(|e| {
        tracing::warn!(%tenant, api_key = %id, error = %e, "the broker did not take a gateway key's account");
        ApiError::Unavailable(
            "the MQTT broker did not take the key's account, so no key was made: retry later \
             (the server's log names the cause)"
                .to_owned(),
        )
    })
}

/// Removes a key's broker account once its row says it is dead; a failure is left to the
/// reconciler, which removes it at its next pass.
async fn unprovision(admin: &BrokerAdmin, tenant: Uuid, id: Uuid) {
    let username = broker_accounts::username(tenant, id);
    if let Err(e) = admin.remove(&[username]).await {
        tracing::warn!(%tenant, api_key = %id, error = %e, "removing a dead key's broker account failed; the reconciler retries");
    }
}

/// What storing a provisioned key's row came to: on failure, its broker account (if any) is
/// taken back before the error is answered.
async fn kept_or_taken_back<T>(
    stored: Result<T, ApiError>,
    broker: Option<&BrokerAdmin>,
    tenant: Uuid,
    id: Uuid,
) -> Result<T, ApiError> {
    if stored.is_err()
        && let Some(admin) = broker
    {
        unprovision(admin, tenant, id).await;
    }
    stored
}

/// A key just inserted in `conn`'s transaction.
async fn fetch_new(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<ApiKeyView, ApiError> {
    fetch(conn, tenant, id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a new API key is not found")))
}

/// Refuses a new key when the organisation holds the most live keys it may.
async fn check_room(conn: &mut PgConnection, tenant: Uuid) -> Result<(), ApiError> {
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys
         WHERE tenant_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(tenant)
    .fetch_one(conn)
    .await?;
    if live >= api_keys::MAX_LIVE_KEYS {
        return Err(ApiError::Conflict(format!(
            "the organisation has {live} live API keys, the most it may hold: revoke the ones no longer used (DELETE /api/v1/api-keys/{{id}})"
        )));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// What the key is for, e.g. "gateway north hall": 1-100 characters.
    pub name: String,
    pub scopes: Vec<String>,
    /// RFC 3339, at most two years ahead; left out, the key does not expire.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateRequest>,
) -> Result<(StatusCode, Json<NewApiKey>), ApiError> {
    auth.require(Permission::ApiKeysManage)?;
    let name = api_keys::parse_name(&req.name).map_err(ApiError::BadRequest)?;
    let scopes = api_keys::parse_scopes(&req.scopes).map_err(ApiError::BadRequest)?;
    if let Some(at) = req.expires_at {
        api_keys::check_expiry(at, Utc::now()).map_err(ApiError::BadRequest)?;
    }
    let broker = broker_for(&state, &scopes)?;
    let tenant = auth.tenant.as_uuid();
    let minted = Minted::new(&state, tenant);
    if let Some(admin) = &broker {
        provision(admin, tenant, minted.id, &name, &minted.text).await?;
    }
    let stored = async {
        let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
        check_room(&mut tx, tenant).await?;
        let names = api_keys::scope_names(&scopes);
        insert(
            &mut tx,
            &minted,
            tenant,
            auth.user,
            &name,
            &names,
            req.expires_at,
        )
        .await?;
        audit::write(
            &mut tx,
            &Entry::new(
                Some(tenant),
                Some(auth.user),
                "api_key.create",
                Outcome::Success,
            )
            .target("api_key", minted.id)
            .detail(json!({ "name": name, "scopes": names, "expires_at": req.expires_at })),
            &meta,
        )
        .await?;
        let api_key = fetch_new(&mut tx, tenant, minted.id).await?;
        tx.commit().await?;
        Ok::<_, ApiError>(api_key)
    }
    .await;
    let api_key = kept_or_taken_back(stored, broker.as_deref(), tenant, minted.id).await?;
    tracing::info!(%tenant, api_key = %minted.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(NewApiKey {
            key: minted.text,
            api_key,
            replaces: None,
        }),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<ApiKeyList>, ApiError> {
    auth.require(Permission::ApiKeysManage)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, ApiKeyView>(&format!(
        "{SELECT} WHERE tenant_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(ApiKeyList { items }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key keeps working, e.g. "24h" (the default), "0s" to stop it at once,
    /// at most "7d".
    #[serde(default, with = "humantime_serde")]
    pub overlap: Option<Duration>,
    /// The replacement's expiry, as in creation.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// The key being rotated.
#[derive(Debug, FromRow)]
struct Rotating {
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    /// Neither revoked nor expired.
    live: bool,
    /// Rotated already.
    replaced: bool,
}

/// The key being rotated, read under `tenant`'s row-level security; locked with `lock`.
async fn rotating(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    lock: bool,
) -> Result<Option<Rotating>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT name, scopes, created_at, expires_at,
                revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) AS live,
                replaced_by IS NOT NULL AS replaced
         FROM api_keys WHERE tenant_id = $1 AND id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Refuses to rotate a key rotated already, revoked or expired.
fn check_rotatable(old: &Rotating) -> Result<(), ApiError> {
    if old.replaced {
        return Err(ApiError::Conflict(
            "this key was already rotated: rotate its replacement (`replaced_by` in GET /api/v1/api-keys)"
                .to_owned(),
        ));
    }
    if !old.live {
        return Err(ApiError::Conflict(
            "this key is revoked or expired: create a new one (POST /api/v1/api-keys)".to_owned(),
        ));
    }
    Ok(())
}

pub async fn rotate(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    body: Option<Body<RotateRequest>>,
) -> Result<(StatusCode, Json<NewApiKey>), ApiError> {
    let req = body.map(|Body(req)| req).unwrap_or_default();
    let tenant = auth.tenant.as_uuid();
    // Read first without a lock: the replacement's broker account is made before the locked
    // transaction, which checks the key again.
    let old = {
        let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
        let old = rotating(&mut tx, tenant, id, false).await?;
        tx.commit().await?;
        old
    };
    // Another organisation's key, or none: 404 before any permission question.
    let old = old.ok_or(ApiError::NotFound)?;
    auth.require(Permission::ApiKeysManage)?;
    let overlap = req.overlap.unwrap_or(api_keys::DEFAULT_OVERLAP);
    api_keys::check_overlap(overlap).map_err(ApiError::BadRequest)?;
    let now = Utc::now();
    if let Some(at) = req.expires_at {
        api_keys::check_expiry(at, now).map_err(ApiError::BadRequest)?;
    }
    check_rotatable(&old)?;
    let kept: Vec<Scope> = old.scopes.iter().filter_map(|s| Scope::parse(s)).collect();
    let broker = broker_for(&state, &kept)?;
    let scopes = api_keys::scope_names(&kept);
    let new_expiry =
        api_keys::replacement_expiry(req.expires_at, old.created_at, old.expires_at, now);
    let minted = Minted::new(&state, tenant);
    if let Some(admin) = &broker {
        provision(admin, tenant, minted.id, &old.name, &minted.text).await?;
    }
    let stored = async {
        let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
        // Locked: two rotations of one key must not both make a replacement.
        let locked = rotating(&mut tx, tenant, id, true)
            .await?
            .ok_or(ApiError::NotFound)?;
        check_rotatable(&locked)?;
        insert(
            &mut tx,
            &minted,
            tenant,
            auth.user,
            &old.name,
            &scopes,
            new_expiry,
        )
        .await?;
        let overlap_secs = overlap.as_secs_f64();
        sqlx::query(
            "UPDATE api_keys
             SET replaced_by = $3,
                 expires_at = LEAST(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $4))
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .bind(minted.id)
        .bind(overlap_secs)
        .execute(&mut *tx)
        .await?;
        let replaces = fetch(&mut tx, tenant, id).await?;
        audit::write(
            &mut tx,
            &Entry::new(
                Some(tenant),
                Some(auth.user),
                "api_key.rotate",
                Outcome::Success,
            )
            .target("api_key", id)
            .detail(json!({
                "replaced_by": minted.id,
                "overlap_seconds": overlap.as_secs(),
                "expires_at": replaces.as_ref().and_then(|k| k.expires_at),
            })),
            &meta,
        )
        .await?;
        let api_key = fetch_new(&mut tx, tenant, minted.id).await?;
        tx.commit().await?;
        Ok::<_, ApiError>((api_key, replaces))
    }
    .await;
    let (api_key, replaces) =
        kept_or_taken_back(stored, broker.as_deref(), tenant, minted.id).await?;
    tracing::info!(%tenant, api_key = %id, replaced_by = %minted.id, "API key rotated");
    // Without an overlap the old key is dead now; with one, the reconciler removes its
    // account when the overlap ends.
    if let (Some(admin), true) = (&broker, overlap.is_zero()) {
        unprovision(admin, tenant, id).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(NewApiKey {
            key: minted.text,
            api_key,
            replaces,
        }),
    ))
}

pub async fn revoke(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another organisation's key, or none: 404 before any permission question.
    let Some(key) = fetch(&mut tx, tenant, id).await? else {
        return Err(ApiError::NotFound);
    };
    auth.require(Permission::ApiKeysManage)?;
    // Revoking a revoked key changes nothing and answers alike.
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $3
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(id)
    .bind(auth.user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if revoked == 1 {
        audit::write(
            &mut tx,
            &Entry::new(
                Some(tenant),
                Some(auth.user),
                "api_key.revoke",
                Outcome::Success,
            )
            .target("api_key", id),
            &meta,
        )
        .await?;
        tracing::info!(%tenant, api_key = %id, "API key revoked");
    }
    tx.commit().await?;
    let publishes = key
        .scopes
        .iter()
        .any(|s| s == Scope::ReadingsPublish.as_str());
    match (publishes, &state.broker_accounts) {
        (true, Some(admin)) => unprovision(admin, tenant, id).await,
        (true, None) => tracing::error!(
            %tenant,
            api_key = %id,
            "a readings:publish key was revoked, but this server keeps no broker accounts \
             ([api.broker_accounts] is not set): its broker account stays until a server \
             with the setting reconciles, or is removed by hand (mosquitto_ctrl dynsec deleteClient)"
        ),
        (false, _) => {}
    }
    Ok(StatusCode::NO_CONTENT)
}
