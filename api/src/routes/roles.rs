//! Roles: the built-in ones, the organisation's custom roles built from the documented
//! permissions, and a user's role.
//!
//! - `GET /api/v1/permissions`: every permission with what it allows (any user).
//! - `GET /api/v1/roles`: the built-in roles and the custom roles, each with its permissions
//!   and how many users hold it (any user).
//! - `POST /api/v1/roles` `{"name", "description", "permissions": [...]}`, `GET`, `PATCH`
//!   (`description`, `permissions`), `DELETE /api/v1/roles/{id}` (`roles:manage`).
//! - `PUT /api/v1/users/{id}/role` `{"role": "..."}` (`users:manage`).
//!
//! Nobody grants more than they hold: a role can list only permissions the caller's own role
//! has, and a user's role can be changed only between roles within the caller's permissions.
//! The organisation's last enabled admin keeps the role. A custom role held by a user cannot
//! be deleted. A change holds from the affected users' next request. Everything is audited.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::{Permission, Permissions, valid_custom_role_name};
use crate::users::{self, UserError};
use crate::work_order_flow::Role as BuiltinRole;

/// The most custom roles an organisation may define.
const MAX_ROLES: i64 = 100;

#[derive(Debug, Serialize)]
pub struct PermissionView {
    pub name: &'static str,
    pub description: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PermissionList {
    pub items: Vec<PermissionView>,
}

/// Any signed-in user: the extractor refuses others.
pub async fn permissions(_auth: AuthUser) -> Json<PermissionList> {
    Json(PermissionList {
        items: Permission::ALL
            .into_iter()
            .map(|p| PermissionView {
                name: p.as_str(),
                description: p.description(),
            })
            .collect(),
    })
}

/// A role as the API shows it.
#[derive(Debug, Serialize)]
pub struct RoleView {
    /// `null` for a built-in role.
    pub id: Option<Uuid>,
    pub name: String,
    pub description: String,
    pub builtin: bool,
    pub permissions: Vec<String>,
    /// Users (enabled or not) who hold the role.
    pub users: i64,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, FromRow)]
struct CustomRow {
    id: Uuid,
    name: String,
    description: String,
    permissions: Vec<String>,
    users: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<CustomRow> for RoleView {
    fn from(r: CustomRow) -> Self {
        RoleView {
            id: Some(r.id),
            name: r.name,
            description: r.description,
            builtin: false,
            permissions: r.permissions,
            users: r.users,
            created_at: Some(r.created_at),
            updated_at: Some(r.updated_at),
        }
    }
}

const SELECT: &str =
    "SELECT r.id, r.name, r.description, r.permissions, r.created_at, r.updated_at,
        (SELECT count(*) FROM users u WHERE u.tenant_id = r.tenant_id AND u.custom_role = r.name)
            AS users
    FROM custom_roles r WHERE r.tenant_id = $1";

fn builtin_description(role: BuiltinRole) -> &'static str {
    match role {
        BuiltinRole::Admin => "Everything, including users, roles, keys and policies.",
        BuiltinRole::Manager => "Plans and supervises maintenance: every CMMS change.",
        BuiltinRole::Technician => "Works the work orders assigned to them or their team.",
        BuiltinRole::Requester => "Opens work requests and follows their own.",
        BuiltinRole::Viewer => "Sees the plant and its maintenance; changes nothing.",
    }
}

#[derive(Debug, Serialize)]
pub struct RoleList {
    pub items: Vec<RoleView>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<RoleList>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT role, count(*) FROM users WHERE tenant_id = $1 AND custom_role IS NULL
         GROUP BY role",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let custom = sqlx::query_as::<_, CustomRow>(&format!("{SELECT} ORDER BY r.name"))
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut items: Vec<RoleView> = BuiltinRole::ALL
        .into_iter()
        .map(|role| RoleView {
            id: None,
            name: role.as_str().to_owned(),
            description: builtin_description(role).to_owned(),
            builtin: true,
            permissions: names(Permissions::of_role(role)),
            users: counts
                .iter()
                .find(|(name, _)| name == role.as_str())
                .map_or(0, |(_, n)| *n),
            created_at: None,
            updated_at: None,
        })
        .collect();
    items.extend(custom.into_iter().map(RoleView::from));
    Ok(Json(RoleList { items }))
}

fn names(set: Permissions) -> Vec<String> {
    set.list()
        .into_iter()
        .map(|p| p.as_str().to_owned())
        .collect()
}

async fn fetch(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<CustomRow, ApiError> {
    sqlx::query_as::<_, CustomRow>(&format!("{SELECT} AND r.id = $2"))
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
) -> Result<Json<RoleView>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let role = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(role.into()))
}

/// Checks a role's permission list: every name known, at most once each (reported per item),
/// and none the caller's own role lacks (403, naming them).
fn check_permissions(
    auth: &AuthUser,
    list: &[String],
    errors: &mut FieldErrors,
) -> Result<Permissions, ApiError> {
    let mut set = Permissions::NONE;
    for (i, name) in list.iter().enumerate() {
        match Permission::parse(name) {
            Some(p) if set.has(p) => {
                errors.add(format!("permissions.{i}"), "listed twice");
            }
            Some(p) => set = set.union(Permissions::of(&[p])),
            None => errors.add(
                format!("permissions.{i}"),
                "not a permission; GET /api/v1/permissions lists them",
            ),
        }
    }
    let beyond: Vec<&str> = auth
        .permissions
        .lacking(set)
        .list()
        .into_iter()
        .map(Permission::as_str)
        .collect();
    if !beyond.is_empty() {
        return Err(ApiError::ForbiddenByPolicy(format!(
            "a role may list only permissions your own role has; yours lacks {}",
            beyond.join(", ")
        )));
    }
    Ok(set)
}

fn check_description(description: &str, errors: &mut FieldErrors) {
    if description.chars().count() > 500 {
        errors.add("description", "at most 500 characters");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<String>,
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateRole>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    auth.require(Permission::RolesManage)?;
    let tenant = auth.tenant.as_uuid();
    let mut errors = FieldErrors::default();
    if !valid_custom_role_name(&req.name) {
        errors.add(
            "name",
            "2-40 lower-case letters, digits, `-` and `_`, starting with a letter, and not a built-in role's name",
        );
    }
    check_description(&req.description, &mut errors);
    let set = check_permissions(&auth, &req.permissions, &mut errors)?;
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let (taken, count): (bool, i64) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM custom_roles WHERE tenant_id = $1 AND name = $2),
                (SELECT count(*) FROM custom_roles WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .bind(&req.name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        errors.add("name", "a custom role with this name exists already");
    }
    if count >= MAX_ROLES {
        errors.add(
            "name",
            format!("the organisation has {MAX_ROLES} custom roles, the most it may have"),
        );
    }
    errors.finish()?;
    let id = Uuid::new_v4();
    let permissions = names(set);
    sqlx::query(
        "INSERT INTO custom_roles (id, tenant_id, name, description, permissions)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(tenant)
    .bind(&req.name)
    .bind(&req.description)
    .bind(&permissions)
    .execute(&mut *tx)
    .await
    .map_err(|e| ApiError::unique(e, "name", "a custom role with this name exists already"))?;
    let detail = json!({ "name": req.name, "permissions": permissions });
    audit::write_change(&mut tx, &auth, &meta, "role.create", ("role", id), detail).await?;
    let role = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(role.into())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRole {
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
}

pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<UpdateRole>,
) -> Result<Json<RoleView>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::RolesManage)?;
    let mut errors = FieldErrors::default();
    if let Some(description) = &req.description {
        check_description(description, &mut errors);
    }
    let permissions = match &req.permissions {
        Some(list) => {
            let set = check_permissions(&auth, list, &mut errors)?;
            // Taking a permission away from a role is granting less to its holders, but a
            // role with permissions the caller lacks is beyond the caller to change.
            let (held, _) = Permissions::parse_known(&before.permissions);
            if !auth.permissions.covers(held) {
                return Err(ApiError::ForbiddenByPolicy(
                    "this role has permissions your own role lacks; only a user holding them all may change it".into(),
                ));
            }
            Some(names(set))
        }
        None => None,
    };
    errors.finish()?;
    sqlx::query(
        "UPDATE custom_roles SET description = coalesce($3, description),
                permissions = coalesce($4, permissions), updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(&req.description)
    .bind(&permissions)
    .execute(&mut *tx)
    .await?;
    let detail = json!({
        "name": before.name,
        "before": { "description": before.description, "permissions": before.permissions },
        "after": { "description": req.description, "permissions": permissions },
    });
    audit::write_change(&mut tx, &auth, &meta, "role.update", ("role", id), detail).await?;
    let role = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(role.into()))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let role = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::RolesManage)?;
    if role.users > 0 {
        return Err(ApiError::Conflict(format!(
            "{} user(s) have the role {}; give them another role first (PUT /api/v1/users/{{id}}/role)",
            role.users, role.name
        )));
    }
    sqlx::query("DELETE FROM custom_roles WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // The MFA policy names roles; a deleted one no longer needs it.
    sqlx::query(
        "UPDATE tenant_mfa_policy SET required_roles = array_remove(required_roles, $2),
                updated_at = now()
         WHERE tenant_id = $1 AND $2 = ANY (required_roles)",
    )
    .bind(tenant)
    .bind(&role.name)
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "name": role.name, "permissions": role.permissions });
    audit::write_change(&mut tx, &auth, &meta, "role.delete", ("role", id), detail).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: String,
}

#[derive(Debug, Serialize)]
pub struct RoleChange {
    pub user_id: Uuid,
    pub role: String,
    pub previous_role: String,
}

/// What a role allows, as the tenant has it now; `None` when no such role exists.
pub(crate) async fn allows(
    conn: &mut PgConnection,
    tenant: Uuid,
    role: &str,
) -> Result<Option<Permissions>, sqlx::Error> {
    if let Some(set) = Permissions::builtin(role) {
        return Ok(Some(set));
    }
    let custom: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT permissions FROM custom_roles WHERE tenant_id = $1 AND name = $2",
    )
    .bind(tenant)
    .bind(role)
    .fetch_optional(conn)
    .await?;
    Ok(custom.map(|names| crate::sessions::role_permissions(role, Some(&names))))
}

pub async fn set_user_role(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(user): Path<Uuid>,
    Body(req): Body<SetRole>,
) -> Result<Json<RoleChange>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT role FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
    // Another tenant's user, or none: 404 before any permission question.
    let current = current.ok_or(ApiError::NotFound)?;
    auth.require(Permission::UsersManage)?;
    let Some(wanted) = allows(&mut tx, tenant, &req.role).await? else {
        return Err(ApiError::field(
            "role",
            "neither a built-in role nor a custom role of this organisation; GET /api/v1/roles lists them",
        ));
    };
    let held = allows(&mut tx, tenant, &current)
        .await?
        .unwrap_or(Permissions::NONE);
    if !auth.permissions.covers(held.union(wanted)) {
        return Err(ApiError::ForbiddenByPolicy(
            "you may change a user's role only between roles whose permissions your own role has"
                .into(),
        ));
    }
    tx.commit().await?;
    let previous = users::set_role(&state.pool, tenant, user, &req.role, Some(auth.user), &meta)
        .await
        .map_err(|e| match e {
            UserError::BadRole(_) | UserError::UnknownRole(_) => {
                ApiError::field("role", e.to_string())
            }
            UserError::UnknownUser(_) => ApiError::NotFound,
            UserError::LastAdmin => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.into()),
        })?;
    Ok(Json(RoleChange {
        user_id: user,
        role: req.role,
        previous_role: previous,
    }))
}
