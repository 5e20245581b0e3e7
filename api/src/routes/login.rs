//! `POST /api/v1/auth/login`: organisation, email and password in; a new session's access
//! and refresh tokens out. Every attempt is audited.
//!
//! With MFA the password is only the first step. An account with MFA on gets
//! `{"mfa_required": true, "mfa_token"}` instead of tokens, and finishes with
//! `POST /api/v1/auth/login/mfa` `{"mfa_token", "code"}` (or `"recovery_code"`). An account
//! whose role the organisation requires MFA for, without MFA yet, gets
//! `{"mfa_enrollment_required": true, "mfa_token"}`: a token good only for enrolling and
//! confirming (`routes::mfa`), and the confirmation returns the session's tokens. Both tokens
//! last 5 minutes and never pass as access tokens.

use axum::Json;
use axum::extract::State;
use model::TenantId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::{MFA_TOKEN_TTL, TokenType};
use crate::error::{ApiError, Body};
use crate::routes::mfa::{self, Attempt, Checked, Enrollment};
use crate::sessions::{self, Tokens};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The organisation's slug.
    pub tenant: String,
    pub email: String,
    pub password: String,
}

/// What a login answers: the session's tokens, or the step that must come first.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum LoginAnswer {
    Tokens(Tokens),
    /// Send a code with `mfa_token` to `POST /api/v1/auth/login/mfa`.
    MfaRequired {
        mfa_required: bool,
        mfa_token: String,
        expires_in: u64,
    },
    /// Enroll and confirm with `mfa_token` (`POST /api/v1/auth/mfa/enroll`, then `confirm`).
    MfaEnrollmentRequired {
        mfa_enrollment_required: bool,
        mfa_token: String,
        expires_in: u64,
    },
}

pub async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginAnswer>, ApiError> {
    if req.password.len() > 1024 || req.email.len() > 320 || req.tenant.len() > 63 {
        return Err(ApiError::BadCredentials);
    }
    let tenant: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
        .bind(&req.tenant)
        .fetch_optional(&state.pool)
        .await?;
    let user = match tenant {
        Some(t) => {
            let mut tx = migrations::begin_tenant(&state.pool, t).await?;
            let row = sqlx::query(
                "SELECT id, password_hash, role FROM users
                 WHERE tenant_id = $1 AND lower(email) = lower($2) AND NOT disabled",
            )
            .bind(t)
            .bind(&req.email)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            row.map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    t,
                    r.try_get::<Uuid, _>("id")?,
                    r.try_get::<String, _>("password_hash")?,
                    r.try_get::<String, _>("role")?,
                ))
            })
            .transpose()?
        }
        None => None,
    };
    let password = req.password;
    let hasher = state.passwords.clone();
    // An unknown user costs the same time as a wrong password: the answer tells nothing.
    let (verified, user) = tokio::task::spawn_blocking(move || match user {
        Some((t, id, hash, role)) => (hasher.verify(&password, &hash), Some((t, id, role))),
        None => {
            hasher.dummy_verify(&password);
            (false, None)
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let (tenant, id, role) = match (verified, user) {
        (true, Some(u)) => u,
        (_, user) => {
            tracing::info!(tenant = %req.tenant, "login refused");
            let actor = user.as_ref().map(|(_, id, _)| *id);
            audit::record(
                &state.pool,
                Entry::new(tenant, actor, "auth.login", Outcome::Failure)
                    .detail(serde_json::json!({ "email": req.email })),
                &meta,
            )
            .await;
            return Err(ApiError::BadCredentials);
        }
    };
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let next = if mfa::is_on(&mut tx, tenant, id).await? {
        Some(TokenType::Mfa)
    } else if mfa::required_for(&mut tx, tenant, &role).await? {
        Some(TokenType::MfaEnroll)
    } else {
        None
    };
    if let Some(typ) = next {
        let mfa_token = state.keys.issue_as(
            typ,
            id,
            TenantId::from_uuid(tenant),
            &role,
            Uuid::new_v4(),
            MFA_TOKEN_TTL,
        )?;
        audit::write(
            &mut tx,
            &Entry::new(Some(tenant), Some(id), "auth.login", Outcome::Success)
                .detail(serde_json::json!({ "next": typ.as_str() })),
            &meta,
        )
        .await?;
        tx.commit().await?;
        let expires_in = MFA_TOKEN_TTL.as_secs();
        return Ok(Json(match typ {
            TokenType::MfaEnroll => LoginAnswer::MfaEnrollmentRequired {
                mfa_enrollment_required: true,
                mfa_token,
                expires_in,
            },
            _ => LoginAnswer::MfaRequired {
                mfa_required: true,
                mfa_token,
                expires_in,
            },
        }));
    }
    let tokens = sessions::start(
        &mut tx,
        &state.keys,
        state.lifetimes,
        tenant,
        id,
        &role,
        &meta,
    )
    .await?;
    audit::write(
        &mut tx,
        &Entry::new(Some(tenant), Some(id), "auth.login", Outcome::Success),
        &meta,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(tenant = %tenant, user = %id, "login");
    Ok(Json(LoginAnswer::Tokens(tokens)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    /// The `mfa_token` of the login's first step.
    pub mfa_token: String,
    /// The current code of the authenticator app.
    pub code: Option<String>,
    /// Instead of `code`: one of the recovery codes, good once.
    pub recovery_code: Option<String>,
}

/// `POST /api/v1/auth/login/mfa`: the second step of a login with MFA.
pub async fn login_mfa(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(req): Body<MfaLoginRequest>,
) -> Result<Json<Tokens>, ApiError> {
    if req.mfa_token.len() > 4096 {
        return Err(ApiError::Unauthenticated);
    }
    let claims = state.keys.verify_as(&req.mfa_token, TokenType::Mfa)?;
    let factor = mfa::factor(req.code.as_deref(), req.recovery_code.as_deref())?
        .ok_or_else(mfa::factor_required)?;
    let (tenant, user) = (claims.tid, claims.sub);
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // The role as it is now, and only while the user is enabled.
    let role: String = sqlx::query_scalar(
        "SELECT role FROM users WHERE tenant_id = $1 AND id = $2 AND NOT disabled",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::Unauthenticated)?;
    let attempt = Attempt {
        tenant,
        user,
        purpose: "login",
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
    if checked == Checked::NotEnrolled {
        // MFA was reset since the password step: log in again.
        return Err(ApiError::Unauthenticated);
    }
    if let Err(refused) = checked.accepted() {
        tx.commit().await?;
        tracing::info!(%tenant, %user, "MFA login refused");
        return Err(refused);
    }
    let tokens = sessions::start(
        &mut tx,
        &state.keys,
        state.lifetimes,
        tenant,
        user,
        &role,
        &meta,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%tenant, %user, "login with MFA");
    Ok(Json(tokens))
}
