//! Refresh, logout and sessions:
//!
//! - `POST /api/v1/auth/refresh` `{"refresh_token": "..."}`: new access and refresh tokens;
//!   the old refresh token is spent, and spending it again revokes the session.
//! - `POST /api/v1/auth/logout`: ends the caller's session.
//! - `GET /api/v1/auth/sessions`: the caller's live sessions.
//! - `DELETE /api/v1/auth/sessions/{id}`: ends one of the caller's sessions.
//! - `POST /api/v1/users/{id}/revoke-sessions`: an admin ends every session of a user.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, Entry, Outcome, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body};
use crate::permissions::Permission;
use crate::sessions::{self, EndReason, SessionView, Tokens};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(req): Body<RefreshRequest>,
) -> Result<Json<Tokens>, ApiError> {
    if req.refresh_token.len() > 200 {
        return Err(ApiError::Unauthenticated);
    }
    let tokens = sessions::refresh(
        &state.pool,
        &state.keys,
        state.lifetimes,
        &req.refresh_token,
        &meta,
    )
    .await?;
    Ok(Json(tokens))
}

async fn end_session(
    state: &AppState,
    auth: &AuthUser,
    meta: &RequestMeta,
    session: Uuid,
    reason: EndReason,
) -> Result<bool, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Only the caller's own sessions: anyone else's answers as if it did not exist.
    let own: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE tenant_id = $1 AND id = $2 AND user_id = $3)",
    )
    .bind(tenant)
    .bind(session)
    .bind(auth.user)
    .fetch_one(&mut *tx)
    .await?;
    if !own {
        return Ok(false);
    }
    sessions::end(&mut tx, tenant, session, reason).await?;
    let action = match reason {
        EndReason::Logout => "auth.logout",
        _ => "session.revoke",
    };
    audit::write(
        &mut tx,
        &Entry::new(Some(tenant), Some(auth.user), action, Outcome::Success)
            .target("session", session),
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn logout(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
) -> Result<StatusCode, ApiError> {
    end_session(&state, &auth, &meta, auth.session()?, EndReason::Logout).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items: Vec<SessionView> =
        sessions::list(&mut tx, tenant, auth.user, auth.session()?).await?;
    tx.commit().await?;
    Ok(Json(json!({ "items": items })))
}

pub async fn revoke(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    if end_session(&state, &auth, &meta, id, EndReason::RevokedByUser).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

pub async fn revoke_user(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(user): Path<Uuid>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1 AND id = $2)")
            .bind(tenant)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    // Another tenant's user, or none: 404 before any permission question.
    if !exists {
        return Err(ApiError::NotFound);
    }
    if let Err(denied) = auth.require(Permission::UsersManage) {
        tx.commit().await?;
        audit::record(
            &state.pool,
            Entry::new(
                Some(tenant),
                Some(auth.user),
                "session.revoke_user",
                Outcome::Denied,
            )
            .target("user", user),
            &meta,
        )
        .await;
        return Err(denied);
    }
    tx.commit().await?;
    let ended = crate::users::revoke_sessions(&state.pool, tenant, user, Some(auth.user), &meta)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(json!({ "sessions_ended": ended })))
}
