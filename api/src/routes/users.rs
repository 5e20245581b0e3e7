//! The organisation's users over the API.
//!
//! - `GET /api/v1/users` (`users:read`): users by email, with `role`, `disabled` and `q`
//!   filters, in cursor pages.
//! - `GET /api/v1/users/{id}` (`users:read`, or the user themselves).
//! - `POST /api/v1/users` (`users:manage`): creates a user with a role within the caller's own
//!   permissions; without a `password`, one is generated and answered once.
//! - `PATCH /api/v1/users/{id}` (`users:manage`): `display_name`, and `disabled` (disabling
//!   ends every session; the last enabled admin stays enabled).
//!
//! Roles change through `PUT /api/v1/users/{id}/role` (`routes::roles`); the first admin of an
//! organisation comes from `maintainpro admin create-tenant`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::RequestMeta;
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::{Permission, Permissions};
use crate::routes::KeyCursor;
use crate::users::{self, NewUser, UserError};

#[derive(Debug, Serialize, FromRow)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: String,
    pub disabled: bool,
    /// Personal data removed (`POST /api/v1/users/{id}/erase`); such a user stays disabled.
    pub erased: bool,
    pub mfa_enabled: bool,
    pub created_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT u.id, u.email, u.display_name, u.role, u.disabled,
        u.erased_at IS NOT NULL AS erased,
        EXISTS (SELECT 1 FROM user_mfa m WHERE m.tenant_id = u.tenant_id AND m.user_id = u.id
                                          AND m.confirmed_at IS NOT NULL) AS mfa_enabled,
        u.created_at
    FROM users u WHERE u.tenant_id = $1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    pub role: Option<String>,
    pub disabled: Option<bool>,
    /// Part of the email or name.
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct UserList {
    pub items: Vec<UserView>,
    pub next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<UserQuery>,
) -> Result<Json<UserList>, ApiError> {
    auth.require(Permission::UsersRead)?;
    let mut errors = FieldErrors::default();
    errors.check_search(q.q.as_deref());
    if q.role.as_ref().is_some_and(|r| r.chars().count() > 40) {
        errors.add("role", "must be at most 40 characters");
    }
    let (limit, cursor) = KeyCursor::parse(q.limit, q.cursor.as_deref(), &mut errors);
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let pattern = q.q.as_deref().map(crate::routes::contains_pattern);
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let mut items = sqlx::query_as::<_, UserView>(&format!(
        "{SELECT} AND ($2::text IS NULL OR u.role = $2)
           AND ($3::boolean IS NULL OR u.disabled = $3)
           AND ($4::text IS NULL OR u.email ILIKE $4 OR u.display_name ILIKE $4)
           AND ($5::text IS NULL OR (lower(u.email), u.id) > ($5, $6))
         ORDER BY lower(u.email), u.id LIMIT $7"
    ))
    .bind(tenant)
    .bind(&q.role)
    .bind(q.disabled)
    .bind(pattern)
    .bind(cursor.as_ref().map(|c| c.key.clone()))
    .bind(cursor.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let next_cursor = KeyCursor::next(&mut items, limit, |u| (u.email.to_lowercase(), u.id));
    Ok(Json(UserList { items, next_cursor }))
}

async fn fetch(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<UserView, ApiError> {
    sqlx::query_as::<_, UserView>(&format!("{SELECT} AND u.id = $2"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)
}

pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another tenant's user, or none: 404 before the permission question.
    let user = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    if id != auth.user {
        auth.require(Permission::UsersRead)?;
    }
    Ok(Json(user))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub display_name: String,
    pub role: String,
    /// Left out: a password is generated and answered once.
    pub password: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedUser {
    #[serde(flatten)]
    pub user: UserView,
    /// The generated password, shown this once; absent when the request gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_password: Option<String>,
}

/// Refuses (403) a role whose permissions the caller's own role does not all have; `None`
/// when no such role exists in the organisation.
async fn within_caller(
    conn: &mut PgConnection,
    auth: &AuthUser,
    role: &str,
) -> Result<Option<()>, ApiError> {
    let Some(set) = crate::routes::roles::allows(conn, auth.tenant.as_uuid(), role).await? else {
        return Ok(None);
    };
    if !auth.permissions.covers(set) {
        return Err(ApiError::ForbiddenByPolicy(
            "you may give only a role whose permissions your own role has".into(),
        ));
    }
    Ok(Some(()))
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateUser>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    auth.require(Permission::UsersManage)?;
    let tenant = auth.tenant.as_uuid();
    let mut errors = FieldErrors::default();
    let name = req.display_name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.add("display_name", "must be 1-200 characters");
    }
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let slug: String = sqlx::query_scalar("SELECT slug FROM current_tenant")
        .fetch_one(&mut *tx)
        .await?;
    let email = req.email.trim();
    if !users::valid_email(email) {
        errors.add("email", "is not an email address");
    }
    if let Some(password) = &req.password
        && let Err(UserError::Policy(violations)) = users::check_password(password, email, &slug)
    {
        for violation in violations {
            errors.add("password", violation.to_string());
        }
    }
    if within_caller(&mut tx, &auth, &req.role).await?.is_none() {
        errors.add(
            "role",
            "neither a built-in role nor a custom role of this organisation; GET /api/v1/roles lists them",
        );
    }
    tx.commit().await?;
    errors.finish()?;
    let generated = req.password.is_none().then(users::generate_password);
    let password = req
        .password
        .as_deref()
        .or(generated.as_deref())
        .unwrap_or_default();
    let new = NewUser {
        email,
        display_name: name,
        role: &req.role,
        password,
    };
    let id = users::create_user(
        &state.pool,
        &state.passwords,
        tenant,
        &slug,
        new,
        Some(auth.user),
        &meta,
    )
    .await
    .map_err(|e| match e {
        UserError::BadEmail(_) | UserError::UserExists(_) => {
            ApiError::field("email", e.to_string())
        }
        UserError::BadRole(_) | UserError::UnknownRole(_) => ApiError::field("role", e.to_string()),
        UserError::Policy(violations) => ApiError::field_each("password", violations),
        other => ApiError::Internal(other.into()),
    })?;
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let user = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedUser {
            user,
            initial_password: generated,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub display_name: Option<String>,
    pub disabled: Option<bool>,
}

pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another tenant's user, or none: 404 before the permission question.
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::UsersManage)?;
    let held = crate::routes::roles::allows(&mut tx, tenant, &before.role)
        .await?
        .unwrap_or(Permissions::NONE);
    if !auth.permissions.covers(held) {
        return Err(ApiError::ForbiddenByPolicy(
            "this user's role has permissions your own role lacks; only a user holding them all may change them".into(),
        ));
    }
    let mut errors = FieldErrors::default();
    let name = req.display_name.as_deref().map(str::trim);
    if name.is_some_and(|n| n.is_empty() || n.chars().count() > 200) {
        errors.add("display_name", "must be 1-200 characters");
    }
    if before.erased && req.disabled == Some(false) {
        errors.add("disabled", "an erased user stays disabled");
    }
    errors.finish()?;
    if let Some(name) = name
        && name != before.display_name
    {
        sqlx::query("UPDATE users SET display_name = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let detail = serde_json::json!({ "before": before.display_name, "after": name });
        crate::audit::write_change(&mut tx, &auth, &meta, "user.update", ("user", id), detail)
            .await?;
    }
    tx.commit().await?;
    if let Some(disabled) = req.disabled
        && disabled != before.disabled
    {
        users::set_disabled(&state.pool, tenant, id, disabled, Some(auth.user), &meta)
            .await
            .map_err(|e| match e {
                UserError::LastAdmin => ApiError::Conflict(e.to_string()),
                UserError::UnknownUser(_) => ApiError::NotFound,
                other => ApiError::Internal(other.into()),
            })?;
    }
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let user = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(user))
}
