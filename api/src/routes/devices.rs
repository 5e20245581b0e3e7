//! Devices: what a gateway reads (a PLC, a meter, an OPC UA server), with its protocol and
//! address and the asset it belongs to; tags name the device they are read from
//! (`PATCH /api/v1/tags/{id}` `{"device_id": ...}`, a device of the tag's own gateway).
//!
//! - `GET /api/v1/gateways/{id}/devices`, `POST /api/v1/gateways/{id}/devices`
//!   `{"name", "protocol", "address", "asset_id", "description"}`
//! - `PATCH /api/v1/devices/{id}` (any of those but the gateway; `null` clears `asset_id`),
//!   `DELETE /api/v1/devices/{id}` (its tags keep their readings and lose the link).
//!
//! Reading: any role but requester; changing: admin, manager. Changes are audited
//! (`device.create`, `device.update`, `device.delete`). Another tenant's gateway or device
//! answers 404.

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

pub const PROTOCOLS: [&str; 6] = [
    "modbus_tcp",
    "modbus_rtu",
    "modbus_rtu_tcp",
    "opcua",
    "mqtt",
    "other",
];

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Device {
    pub id: Uuid,
    pub gateway_id: Uuid,
    pub name: String,
    pub protocol: String,
    pub address: String,
    pub asset_id: Option<Uuid>,
    pub description: String,
    /// How many tags name this device.
    pub tags: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const COLUMNS: &str = "d.id, d.gateway_id, d.name, d.protocol, d.address, d.asset_id, \
     d.description, (SELECT count(*) FROM tags t WHERE t.device_id = d.id) AS tags, d.created_at";

#[derive(Debug, Serialize)]
pub struct DeviceList {
    pub items: Vec<Device>,
}

async fn gateway_exists(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<(), ApiError> {
    let known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM gateways WHERE tenant_id = $1 AND id = $2)",
    )
    .bind(tenant)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    known.then_some(()).ok_or(ApiError::NotFound)
}

async fn fetch(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<Device, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices d WHERE d.tenant_id = $1 AND d.id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound)
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(gateway): Path<Uuid>,
) -> Result<Json<DeviceList>, ApiError> {
    auth.require(Permission::RegistryRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    gateway_exists(&mut tx, tenant, gateway).await?;
    let items = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices d WHERE d.tenant_id = $1 AND d.gateway_id = $2
         ORDER BY d.name"
    ))
    .bind(tenant)
    .bind(gateway)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(DeviceList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub name: String,
    pub protocol: String,
    #[serde(default)]
    pub address: String,
    pub asset_id: Option<Uuid>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceChange {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub address: Option<String>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub asset_id: Option<Option<Uuid>>,
    pub description: Option<String>,
}

/// Every problem of the fields given, at once.
async fn check(
    conn: &mut PgConnection,
    tenant: Uuid,
    change: &DeviceChange,
) -> Result<(), ApiError> {
    let mut errors = FieldErrors::default();
    if let Some(name) = &change.name
        && (name.trim().is_empty() || name.chars().count() > 100)
    {
        errors.add("name", "must be 1-100 characters");
    }
    if let Some(protocol) = &change.protocol
        && !PROTOCOLS.contains(&protocol.as_str())
    {
        errors.add(
            "protocol",
            format!("must be one of {}", PROTOCOLS.join(", ")),
        );
    }
    if change
        .address
        .as_ref()
        .is_some_and(|a| a.chars().count() > 300)
    {
        errors.add("address", "must be at most 300 characters");
    }
    if change
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        errors.add("description", "must be at most 500 characters");
    }
    if let Some(Some(asset)) = change.asset_id {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM assets WHERE tenant_id = $1 AND id = $2)",
        )
        .bind(tenant)
        .bind(asset)
        .fetch_one(&mut *conn)
        .await?;
        if !known {
            errors.add("asset_id", "no asset with this id");
        }
    }
    errors.finish()
}

/// The error of a name the gateway has already.
fn taken(e: sqlx::Error) -> ApiError {
    ApiError::unique(e, "name", "this gateway has a device of this name already")
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(gateway): Path<Uuid>,
    Body(req): Body<NewDevice>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    gateway_exists(&mut tx, tenant, gateway).await?;
    auth.require(Permission::RegistryWrite)?;
    let change = DeviceChange {
        name: Some(req.name.trim().to_owned()),
        protocol: Some(req.protocol),
        address: Some(req.address.trim().to_owned()),
        asset_id: Some(req.asset_id),
        description: Some(req.description.trim().to_owned()),
    };
    check(&mut tx, tenant, &change).await?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, gateway_id, name, protocol, address, asset_id,
                              description)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(tenant)
    .bind(gateway)
    .bind(&change.name)
    .bind(&change.protocol)
    .bind(&change.address)
    .bind(change.asset_id.flatten())
    .bind(&change.description)
    .execute(&mut *tx)
    .await
    .map_err(taken)?;
    let device = fetch(&mut tx, tenant, id).await?;
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "device.create",
        ("device", id),
        json!({ "gateway_id": gateway, "name": device.name, "protocol": device.protocol }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(device)))
}

pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(mut req): Body<DeviceChange>,
) -> Result<Json<Device>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::RegistryWrite)?;
    req.name = req.name.map(|n| n.trim().to_owned());
    req.address = req.address.map(|a| a.trim().to_owned());
    req.description = req.description.map(|d| d.trim().to_owned());
    check(&mut tx, tenant, &req).await?;
    sqlx::query(
        "UPDATE devices SET name = COALESCE($3, name), protocol = COALESCE($4, protocol),
                address = COALESCE($5, address),
                asset_id = CASE WHEN $6 THEN $7 ELSE asset_id END,
                description = COALESCE($8, description)
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(&req.name)
    .bind(&req.protocol)
    .bind(&req.address)
    .bind(req.asset_id.is_some())
    .bind(req.asset_id.flatten())
    .bind(&req.description)
    .execute(&mut *tx)
    .await
    .map_err(taken)?;
    let after = fetch(&mut tx, tenant, id).await?;
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "device.update",
        ("device", id),
        json!({ "before": before, "after": after }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(after))
}

pub async fn delete(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch(&mut tx, tenant, id).await?;
    auth.require(Permission::RegistryWrite)?;
    sqlx::query("DELETE FROM devices WHERE tenant_id = $1 AND id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "device.delete",
        ("device", id),
        json!({ "before": before }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
