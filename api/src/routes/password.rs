//! `POST /api/v1/auth/password` `{"current_password", "new_password", "code"}`: a user
//! changes their own password.
//!
//! The new password must meet the policy (every problem listed at once), the current one must
//! be right, and an account with MFA must also send a second factor (`code`, or
//! `recovery_code`): a stolen session alone changes nothing. The user's other sessions end;
//! the one that asked stays. Every attempt is audited (`auth.password_change`).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body};
use crate::password::{PasswordContext, PasswordPolicy};
use crate::routes::mfa::{self, Attempt, Enrollment};
use crate::users;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    pub current_password: String,
    pub new_password: String,
    /// The current code of the authenticator app; required when the account has MFA.
    pub code: Option<String>,
    /// Instead of `code`: one of the recovery codes.
    pub recovery_code: Option<String>,
}

/// Whether `password` is the user's current password. Argon2 runs off the async workers.
pub async fn verify_current(
    state: &AppState,
    tenant: Uuid,
    user: Uuid,
    password: &str,
) -> Result<bool, ApiError> {
    if password.len() > 1024 {
        return Ok(false);
    }
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let hash: Option<String> = sqlx::query_scalar(
        "SELECT password_hash FROM users WHERE tenant_id = $1 AND id = $2 AND NOT disabled",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(hash) = hash else {
        return Ok(false);
    };
    let (hasher, password) = (state.passwords.clone(), password.to_owned());
    tokio::task::spawn_blocking(move || hasher.verify(&password, &hash))
        .await
        .map_err(|e| ApiError::Internal(e.into()))
}

pub async fn change(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<ChangeRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (tenant, user) = (auth.tenant.as_uuid(), auth.user);
    let factor = mfa::factor(req.code.as_deref(), req.recovery_code.as_deref())?;
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let email: String =
        sqlx::query_scalar("SELECT email FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    let slug: String = sqlx::query_scalar("SELECT slug FROM current_tenant")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;

    let violations = PasswordPolicy.check(
        &req.new_password,
        &PasswordContext {
            email: Some(&email),
            tenant_slug: Some(&slug),
        },
    );
    if !violations.is_empty() {
        return Err(ApiError::field_each("new_password", violations));
    }
    let refused = |why: &str| {
        Entry::new(
            Some(tenant),
            Some(user),
            "auth.password_change",
            Outcome::Failure,
        )
        .target("user", user)
        .detail(json!({ "reason": why }))
    };
    if !verify_current(&state, tenant, user, &req.current_password).await? {
        audit::record(&state.pool, refused("wrong_password"), &meta).await;
        return Err(ApiError::BadCredentials);
    }
    let (hasher, new_password) = (state.passwords.clone(), req.new_password);
    let hash = tokio::task::spawn_blocking(move || hasher.hash(&new_password))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| ApiError::Internal(e.into()))?;

    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Read under the same transaction as the change: MFA turned on meanwhile still counts.
    if mfa::is_on(&mut tx, tenant, user).await? {
        let Some(factor) = factor else {
            tx.commit().await?;
            audit::record(&state.pool, refused("mfa_code_missing"), &meta).await;
            return Err(mfa::factor_required());
        };
        let attempt = Attempt {
            tenant,
            user,
            purpose: "password_change",
        };
        let checked = mfa::check_factor(
            &mut tx,
            &state.mfa,
            attempt,
            factor,
            Enrollment::Confirmed,
            &meta,
        )
        .await?;
        if let Err(refusal) = checked.accepted() {
            tx.commit().await?;
            return Err(refusal);
        }
    }
    let ended = users::set_own_password(&mut tx, tenant, user, &hash, auth.session()?, &meta)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    tx.commit().await?;
    tracing::info!(%tenant, %user, "password changed");
    Ok(Json(json!({ "sessions_ended": ended })))
}
