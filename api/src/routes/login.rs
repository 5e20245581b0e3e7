//! `POST /api/v1/auth/login`: organisation, email and password in; an access token out.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use model::TenantId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{hash_password, verify_password};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The organisation's slug.
    pub tenant: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// A hash to verify against when the user does not exist, so that the response time does not
/// tell which emails are registered.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a real password at all").unwrap_or_default())
}

pub async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
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
    let (verified, user) = tokio::task::spawn_blocking(move || match user {
        Some((t, id, hash, role)) => (verify_password(&password, &hash), Some((t, id, role))),
        None => {
            let _ = verify_password(&password, dummy_hash());
            (false, None)
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let (tenant, id, role) = match (verified, user) {
        (true, Some(u)) => u,
        _ => {
            tracing::info!(tenant = %req.tenant, "login refused");
            return Err(ApiError::BadCredentials);
        }
    };
    let token = state.keys.issue(id, TenantId::from_uuid(tenant), &role)?;
    tracing::info!(tenant = %tenant, user = %id, "login");
    Ok(Json(LoginResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.keys.ttl().as_secs(),
    }))
}
