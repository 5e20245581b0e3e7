//! `POST /api/v1/auth/login`: organisation, email and password in; a new session's access
//! and refresh tokens out. Every attempt is audited.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use sqlx::Row;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::error::{ApiError, Body};
use crate::sessions::{self, Tokens};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The organisation's slug.
    pub tenant: String,
    pub email: String,
    pub password: String,
}

pub async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(req): Body<LoginRequest>,
) -> Result<Json<Tokens>, ApiError> {
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
    Ok(Json(tokens))
}
