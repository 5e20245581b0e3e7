//! Teams that work orders can be assigned to: a technician of the team may work on the team's
//! work orders as if assigned to them.
//!
//! - `GET /api/v1/teams`: every team with its members (any role).
//! - `POST /api/v1/teams` `{"name": "...", "members": [user ids]}` (admin, manager).
//! - `PUT /api/v1/teams/{id}/members` `{"members": [user ids]}`: replaces the members
//!   (admin, manager).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::Permission;

const MAX_MEMBERS: usize = 500;

#[derive(Debug, Serialize, FromRow)]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub members: Vec<Uuid>,
}

const SELECT: &str = "SELECT t.id, t.name,
        coalesce(array_agg(m.user_id ORDER BY m.user_id) FILTER (WHERE m.user_id IS NOT NULL),
                 '{}') AS members
    FROM teams t LEFT JOIN team_members m ON m.team_id = t.id AND m.tenant_id = t.tenant_id
    WHERE t.tenant_id = $1";

#[derive(Debug, Serialize)]
pub struct TeamList {
    pub items: Vec<Team>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<TeamList>, ApiError> {
    auth.require(Permission::TeamsRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, Team>(&format!("{SELECT} GROUP BY t.id ORDER BY t.name"))
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(TeamList { items }))
}

async fn fetch(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<Team, ApiError> {
    sqlx::query_as::<_, Team>(&format!("{SELECT} AND t.id = $2 GROUP BY t.id"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)
}

/// Checks that every member is an enabled user of the tenant; reports each one that is not.
async fn check_members(
    conn: &mut PgConnection,
    tenant: Uuid,
    members: &[Uuid],
    errors: &mut FieldErrors,
) -> Result<Vec<Uuid>, ApiError> {
    if members.len() > MAX_MEMBERS {
        errors.add("members", format!("at most {MAX_MEMBERS} members"));
        return Ok(Vec::new());
    }
    let mut unique = members.to_vec();
    unique.sort();
    unique.dedup();
    let known: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE tenant_id = $1 AND id = ANY($2) AND NOT disabled",
    )
    .bind(tenant)
    .bind(&unique)
    .fetch_all(conn)
    .await?;
    for (i, member) in members.iter().enumerate() {
        if !known.contains(member) {
            errors.add(format!("members.{i}"), "no enabled user with this id");
        }
    }
    Ok(unique)
}

async fn set_members(
    conn: &mut PgConnection,
    tenant: Uuid,
    team: Uuid,
    members: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM team_members WHERE tenant_id = $1 AND team_id = $2")
        .bind(tenant)
        .bind(team)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO team_members (tenant_id, team_id, user_id)
         SELECT $1, $2, unnest($3::uuid[])",
    )
    .bind(tenant)
    .bind(team)
    .bind(members)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub name: String,
    #[serde(default)]
    pub members: Vec<Uuid>,
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateTeam>,
) -> Result<(StatusCode, Json<Team>), ApiError> {
    auth.require(Permission::TeamsWrite)?;
    let tenant = auth.tenant.as_uuid();
    let name = req.name.trim();
    let mut errors = FieldErrors::default();
    if name.is_empty() || name.chars().count() > 200 {
        errors.add("name", "must be 1-200 characters");
    }
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let members = check_members(&mut tx, tenant, &req.members, &mut errors).await?;
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM teams WHERE tenant_id = $1 AND name = $2)",
    )
    .bind(tenant)
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        errors.add("name", "a team with this name exists already");
    }
    errors.finish()?;
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO teams (id, tenant_id, name) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(tenant)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(|e| ApiError::unique(e, "name", "a team with this name exists already"))?;
    set_members(&mut tx, tenant, id, &members).await?;
    let detail = json!({ "name": name, "members": members });
    audit::write_change(&mut tx, &auth, &meta, "team.create", ("team", id), detail).await?;
    let team = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(team)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMembers {
    pub members: Vec<Uuid>,
}

pub async fn replace_members(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<SetMembers>,
) -> Result<Json<Team>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::TeamsWrite)?;
    let mut errors = FieldErrors::default();
    let members = check_members(&mut tx, tenant, &req.members, &mut errors).await?;
    errors.finish()?;
    set_members(&mut tx, tenant, id, &members).await?;
    let detail = json!({ "from": before.members, "to": members });
    audit::write_change(&mut tx, &auth, &meta, "team.members", ("team", id), detail).await?;
    let team = fetch(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(team))
}
