//! Sessions: one per login, each with a family of rotating refresh tokens.
//!
//! A refresh token is `mprt.<tenant>.<secret>`: the tenant (so the lookup runs under that
//! tenant's row-level security) and 32 random bytes, of which only a SHA-256 is stored. Each
//! use returns a new access token and a new refresh token and marks the old one used; using a
//! used token again means it was copied, so the whole session is revoked (every token of the
//! family with it) and the event is logged and audited. A session ends at logout, when its
//! owner or an admin revokes it, when its user is disabled, or at its absolute expiry; an
//! access token of an ended session is refused at once (see `AuthUser`).

use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::TokenKeys;
use crate::error::ApiError;
use crate::permissions::Permissions;
use crate::session_cache::Answer;
use model::TenantId;

const PREFIX: &str = "mprt";

/// Why a session ended (the `revoked_reason` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Logout,
    RevokedByUser,
    RevokedByAdmin,
    UserDisabled,
    RefreshTokenReuse,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Logout => "logout",
            EndReason::RevokedByUser => "revoked_by_user",
            EndReason::RevokedByAdmin => "revoked_by_admin",
            EndReason::UserDisabled => "user_disabled",
            EndReason::RefreshTokenReuse => "refresh_token_reuse",
        }
    }
}

/// Lifetimes of what a session issues.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub refresh_token: Duration,
    pub session: Duration,
}

/// What a login or a refresh hands the client.
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_in: u64,
}

fn new_refresh_token(tenant: Uuid) -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = format!(
        "{PREFIX}.{}.{}",
        tenant.simple(),
        URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = Sha256::digest(token.as_bytes()).into();
    (token, hash)
}

/// The tenant a refresh token names, if it is well-formed.
fn token_tenant(token: &str) -> Option<Uuid> {
    let mut parts = token.split('.');
    let (Some(PREFIX), Some(tenant), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (secret.len() == 43).then_some(())?;
    Uuid::try_parse(tenant).ok()
}

fn secs(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Inserts a refresh token of `session`, valid for the refresh lifetime but never past the
/// session's end. Returns the token and its lifetime in seconds.
async fn issue_refresh(
    conn: &mut PgConnection,
    tenant: Uuid,
    session: Uuid,
    session_ends: DateTime<Utc>,
    lifetimes: Lifetimes,
) -> Result<(String, u64), sqlx::Error> {
    let (token, hash) = new_refresh_token(tenant);
    let now = Utc::now();
    let expires = (now + secs(lifetimes.refresh_token)).min(session_ends);
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, tenant_id, session_id, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&hash[..])
    .bind(tenant)
    .bind(session)
    .bind(expires)
    .execute(conn)
    .await?;
    Ok((token, (expires - now).num_seconds().max(0) as u64))
}

/// Starts a session for a user who has just proved who they are, in the caller's tenant
/// transaction, and issues its first tokens.
pub async fn start(
    conn: &mut PgConnection,
    keys: &TokenKeys,
    lifetimes: Lifetimes,
    tenant: Uuid,
    user: Uuid,
    role: &str,
    meta: &RequestMeta,
) -> Result<Tokens, ApiError> {
    let session = Uuid::new_v4();
    let ends = Utc::now() + secs(lifetimes.session);
    sqlx::query(
        "INSERT INTO sessions (id, tenant_id, user_id, expires_at, ip, user_agent)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session)
    .bind(tenant)
    .bind(user)
    .bind(ends)
    .bind(meta.ip.as_deref())
    .bind(meta.user_agent.as_deref())
    .execute(&mut *conn)
    .await?;
    let (refresh_token, refresh_expires_in) =
        issue_refresh(conn, tenant, session, ends, lifetimes).await?;
    Ok(Tokens {
        access_token: keys.issue(user, TenantId::from_uuid(tenant), role, session)?,
        token_type: "Bearer",
        expires_in: keys.ttl().as_secs(),
        refresh_token,
        refresh_expires_in,
    })
}

/// Exchanges a refresh token for new tokens. Any failure answers 401 alike; a reused token
/// also revokes its session.
pub async fn refresh(
    pool: &PgPool,
    keys: &TokenKeys,
    lifetimes: Lifetimes,
    token: &str,
    meta: &RequestMeta,
) -> Result<Tokens, ApiError> {
    let tenant = token_tenant(token).ok_or(ApiError::Unauthenticated)?;
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let row = sqlx::query(
        "SELECT r.session_id, r.used_at IS NOT NULL AS used, r.expires_at > now() AS fresh,
                s.revoked_at IS NULL AND s.expires_at > now() AS live, s.expires_at AS ends,
                s.user_id, u.role, u.disabled
         FROM refresh_tokens r
         JOIN sessions s ON s.id = r.session_id
         JOIN users u ON u.id = s.user_id
         WHERE r.tenant_id = $1 AND r.token_hash = $2
         FOR UPDATE OF r, s",
    )
    .bind(tenant)
    .bind(&hash[..])
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::Unauthenticated);
    };
    let session: Uuid = row.try_get("session_id")?;
    let user: Uuid = row.try_get("user_id")?;
    let audit_entry = |action, outcome| {
        Entry::new(Some(tenant), Some(user), action, outcome).target("session", session)
    };
    if row.try_get::<bool, _>("used")? {
        // The token was already exchanged: someone holds a copy. End the family.
        let ended = end(&mut tx, tenant, session, EndReason::RefreshTokenReuse).await?;
        audit::write(
            &mut tx,
            &audit_entry("auth.refresh_reuse", Outcome::Denied)
                .detail(serde_json::json!({ "session_revoked": ended })),
            meta,
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(%tenant, %user, %session, "refresh token reused: session revoked");
        return Err(ApiError::Unauthenticated);
    }
    let usable = row.try_get::<bool, _>("fresh")?
        && row.try_get::<bool, _>("live")?
        && !row.try_get::<bool, _>("disabled")?;
    if !usable {
        return Err(ApiError::Unauthenticated);
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(&hash[..])
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE sessions SET last_used_at = now() WHERE id = $1")
        .bind(session)
        .execute(&mut *tx)
        .await?;
    let ends: DateTime<Utc> = row.try_get("ends")?;
    let (refresh_token, refresh_expires_in) =
        issue_refresh(&mut tx, tenant, session, ends, lifetimes).await?;
    let role: String = row.try_get("role")?;
    audit::write(
        &mut tx,
        &audit_entry("auth.refresh", Outcome::Success),
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(Tokens {
        access_token: keys.issue(user, TenantId::from_uuid(tenant), &role, session)?,
        token_type: "Bearer",
        expires_in: keys.ttl().as_secs(),
        refresh_token,
        refresh_expires_in,
    })
}

/// Ends one session of the tenant. Returns whether it was live.
pub async fn end(
    conn: &mut PgConnection,
    tenant: Uuid,
    session: Uuid,
    reason: EndReason,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3
         WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(session)
    .bind(reason.as_str())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Ends every live session of a user. Returns how many.
pub async fn end_all_of_user(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
    reason: EndReason,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3
         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant)
    .bind(user)
    .bind(reason.as_str())
    .execute(conn)
    .await?
    .rows_affected())
}

/// The role of a live session's user and what it allows, with the session's expiry, or
/// `None` when the session was revoked or has expired, or the user is disabled. A custom
/// role's permission names that are no longer known are ignored: the role allows less, never
/// more. Whatever changes this answer announces the organisation on
/// [`crate::session_cache::CHANNEL`].
pub async fn active_role(
    pool: &PgPool,
    tenant: Uuid,
    session: Uuid,
    user: Uuid,
) -> Result<Option<(Answer, DateTime<Utc>)>, sqlx::Error> {
    let mut tx = migrations::begin_tenant(pool, tenant).await?;
    let row: Option<(String, Option<Vec<String>>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT u.role, r.permissions, s.expires_at
         FROM sessions s JOIN users u ON u.id = s.user_id
         LEFT JOIN custom_roles r ON r.tenant_id = u.tenant_id AND r.name = u.custom_role
         WHERE s.tenant_id = $1 AND s.id = $2 AND s.user_id = $3
           AND s.revoked_at IS NULL AND s.expires_at > now() AND NOT u.disabled",
    )
    .bind(tenant)
    .bind(session)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|(role, custom, expires)| {
        let permissions = role_permissions(&role, custom.as_deref());
        (Answer { role, permissions }, expires)
    }))
}

/// What `role` allows: a built-in role's fixed set, or the known names of a custom role's
/// list (`custom`); nothing for a name that is neither.
pub fn role_permissions(role: &str, custom: Option<&[String]>) -> Permissions {
    if let Some(builtin) = Permissions::builtin(role) {
        return builtin;
    }
    let (set, skipped) = Permissions::parse_known(custom.unwrap_or_default());
    if skipped {
        tracing::warn!(
            role,
            "a custom role lists permissions this version does not know; ignored"
        );
    }
    set
}

/// A session as its owner sees it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct SessionView {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session of the token that asked.
    #[sqlx(default)]
    pub current: bool,
}

/// The live sessions of a user, newest first.
pub async fn list(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Uuid,
    current: Uuid,
) -> Result<Vec<SessionView>, sqlx::Error> {
    let mut sessions: Vec<SessionView> = sqlx::query_as(
        "SELECT id, created_at, last_used_at, expires_at, ip, user_agent FROM sessions
         WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > now()
         ORDER BY created_at DESC",
    )
    .bind(tenant)
    .bind(user)
    .fetch_all(conn)
    .await?;
    for s in &mut sessions {
        s.current = s.id == current;
    }
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_tenant_and_nothing_else_parses() {
        let tenant = Uuid::new_v4();
        let (token, hash) = new_refresh_token(tenant);
        assert_eq!(token_tenant(&token), Some(tenant));
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(token.as_bytes())));
        assert_ne!(new_refresh_token(tenant).0, token, "random");
        for bad in [
            "",
            "mprt",
            "mprt.not-a-uuid.abc",
            &format!("mprt.{}.short", tenant.simple()),
            &format!("xxxx.{}", &token[5..]),
            &format!("{token}.extra"),
        ] {
            assert_eq!(token_tenant(bad), None, "{bad}");
        }
    }
}
