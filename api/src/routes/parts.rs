//! Parts inventory: stock locations, parts with stock per location (min/max, reorder point),
//! receipts and adjustments, and the movement ledger. Parts planned and used on work orders
//! are in [`crate::routes::work_orders`], through [`move_stock`]. The rules of the ledger are
//! [`crate::inventory`]'s; the endpoints are in `docs/WORK-ORDERS.md` ("Parts").
//!
//! Reading needs any role but requester; changing parts, locations and stock, admin or
//! manager. A change that drops what is available to or below a location's reorder point adds
//! a `part.low_stock` event.

use axum::Json;
use axum::extract::{Path, Query, State};
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
use crate::events;
use crate::inventory::{self, InventoryError, Movement, Stock};
use crate::permissions::Permission;
use crate::routes::KeyCursor;

#[derive(Debug, Serialize, FromRow)]
pub struct Location {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct LocationList {
    pub items: Vec<Location>,
}

pub async fn list_locations(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<LocationList>, ApiError> {
    auth.require(Permission::PartsRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, Location>(
        "SELECT id, name FROM stock_locations WHERE tenant_id = $1 ORDER BY name",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(LocationList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLocation {
    pub name: String,
}

pub async fn create_location(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateLocation>,
) -> Result<(StatusCode, Json<Location>), ApiError> {
    auth.require(Permission::PartsWrite)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::field("name", "must be 1-200 characters"));
    }
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO stock_locations (id, tenant_id, name) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, name) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::field(
            "name",
            "a location with this name exists already",
        ));
    }
    let detail = json!({ "name": name });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "stock_location.create",
        ("stock_location", id),
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Location {
            id,
            name: name.to_owned(),
        }),
    ))
}

#[derive(Debug, Serialize, FromRow)]
pub struct Part {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit: String,
    pub unit_cost_cents: i64,
    pub allow_negative: bool,
    /// Over every location.
    pub on_hand: i64,
    pub reserved: i64,
    /// At least one location is at or below its reorder point.
    pub low_stock: bool,
}

const PARTS: &str = "SELECT p.id, p.sku, p.name, p.unit, p.unit_cost_cents, p.allow_negative,
        coalesce(sum(s.on_hand), 0)::bigint AS on_hand,
        coalesce(sum(s.reserved), 0)::bigint AS reserved,
        coalesce(bool_or(s.on_hand - s.reserved <= s.reorder_point), false) AS low_stock
    FROM parts p LEFT JOIN part_stock s ON s.tenant_id = p.tenant_id AND s.part_id = p.id
    WHERE p.tenant_id = $1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartQuery {
    /// Part of the SKU or name.
    pub q: Option<String>,
    /// Only parts at or below a reorder point somewhere.
    pub low_stock: Option<bool>,
    /// 1-500, default 100.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PartList {
    pub items: Vec<Part>,
    /// Pass as `cursor`, with the same filters, for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

pub async fn list_parts(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<PartQuery>,
) -> Result<Json<PartList>, ApiError> {
    auth.require(Permission::PartsRead)?;
    let mut errors = FieldErrors::default();
    errors.check_search(q.q.as_deref());
    let (limit, cursor) = KeyCursor::parse(q.limit, q.cursor.as_deref(), &mut errors);
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let pattern = q.q.as_deref().map(crate::routes::contains_pattern);
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let mut items = sqlx::query_as::<_, Part>(&format!(
        "{PARTS} AND ($2::text IS NULL OR p.sku ILIKE $2 OR p.name ILIKE $2)
           AND ($4::text IS NULL OR (p.sku, p.id) > ($4, $5))
         GROUP BY p.id
         HAVING NOT $3 OR coalesce(bool_or(s.on_hand - s.reserved <= s.reorder_point), false)
         ORDER BY p.sku, p.id LIMIT $6"
    ))
    .bind(tenant)
    .bind(pattern)
    .bind(q.low_stock.unwrap_or(false))
    .bind(cursor.as_ref().map(|c| c.key.clone()))
    .bind(cursor.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let next_cursor = KeyCursor::next(&mut items, limit, |p| (p.sku.clone(), p.id));
    Ok(Json(PartList { items, next_cursor }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePart {
    pub sku: String,
    pub name: String,
    pub unit: Option<String>,
    pub unit_cost_cents: Option<i64>,
    #[serde(default)]
    pub allow_negative: bool,
}

pub async fn create_part(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreatePart>,
) -> Result<(StatusCode, Json<PartDetail>), ApiError> {
    auth.require(Permission::PartsWrite)?;
    let mut errors = FieldErrors::default();
    if !(1..=64).contains(&req.sku.len())
        || !req
            .sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        errors.add("sku", "use 1-64 letters, digits, `.`, `_`, `/` and `-`");
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.add("name", "must be 1-200 characters");
    }
    let unit = req.unit.as_deref().unwrap_or("pcs").trim();
    if unit.is_empty() || unit.chars().count() > 20 {
        errors.add("unit", "must be 1-20 characters, e.g. pcs, ml, m");
    }
    if req.unit_cost_cents.is_some_and(|c| c < 0) {
        errors.add("unit_cost_cents", "must not be negative");
    }
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO parts (id, tenant_id, sku, name, unit, unit_cost_cents, allow_negative)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, sku) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(&req.sku)
    .bind(name)
    .bind(unit)
    .bind(req.unit_cost_cents.unwrap_or(0))
    .bind(req.allow_negative)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::field(
            "sku",
            "a part with this SKU exists already",
        ));
    }
    let detail_json = json!({ "sku": req.sku, "name": name, "unit": unit });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "part.create",
        ("part", id),
        detail_json,
    )
    .await?;
    let detail = part_detail(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

#[derive(Debug, Serialize, FromRow)]
pub struct StockLevel {
    pub location_id: Uuid,
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub min_qty: Option<i64>,
    pub max_qty: Option<i64>,
    pub reorder_point: Option<i64>,
}

#[derive(Debug, Serialize, FromRow)]
pub struct MovementRow {
    pub id: i64,
    pub location_id: Uuid,
    pub kind: String,
    pub on_hand_delta: i64,
    pub reserved_delta: i64,
    pub work_order_id: Option<Uuid>,
    pub actor: Option<Uuid>,
    pub note: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct PartDetail {
    #[serde(flatten)]
    pub part: Part,
    pub stock: Vec<StockLevel>,
    /// The latest 100 movements, newest first.
    pub movements: Vec<MovementRow>,
}

async fn part_detail(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<PartDetail, ApiError> {
    let part = sqlx::query_as::<_, Part>(&format!("{PARTS} AND p.id = $2 GROUP BY p.id"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ApiError::NotFound)?;
    let stock = sqlx::query_as::<_, StockLevel>(
        "SELECT s.location_id, l.name AS location, s.on_hand, s.reserved,
                s.on_hand - s.reserved AS available, s.min_qty, s.max_qty, s.reorder_point
         FROM part_stock s JOIN stock_locations l ON l.tenant_id = s.tenant_id AND l.id = s.location_id
         WHERE s.tenant_id = $1 AND s.part_id = $2 ORDER BY l.name",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let movements = sqlx::query_as::<_, MovementRow>(
        "SELECT id, location_id, kind, on_hand_delta, reserved_delta, work_order_id, actor, note, at
         FROM stock_movements WHERE tenant_id = $1 AND part_id = $2 ORDER BY id DESC LIMIT 100",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(PartDetail {
        part,
        stock,
        movements,
    })
}

pub async fn get_part(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<PartDetail>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another tenant's part, or none: 404 before the permission question.
    let detail = part_detail(&mut tx, tenant, id).await?;
    tx.commit().await?;
    auth.require(Permission::PartsRead)?;
    Ok(Json(detail))
}

/// Checks that part and location exist in the tenant (404 otherwise) and returns the part's
/// `allow_negative`.
async fn part_and_location(
    conn: &mut PgConnection,
    tenant: Uuid,
    part: Uuid,
    location: Uuid,
) -> Result<bool, ApiError> {
    let found: Option<(bool, bool)> = sqlx::query_as(
        "SELECT p.allow_negative,
                EXISTS (SELECT 1 FROM stock_locations l WHERE l.tenant_id = $1 AND l.id = $3)
         FROM parts p WHERE p.tenant_id = $1 AND p.id = $2",
    )
    .bind(tenant)
    .bind(part)
    .bind(location)
    .fetch_optional(&mut *conn)
    .await?;
    match found {
        None => Err(ApiError::NotFound),
        Some((_, false)) => Err(ApiError::field(
            "location_id",
            "no stock location with this id",
        )),
        Some((allow_negative, true)) => Ok(allow_negative),
    }
}

/// The stock row of a part at a location, made when missing, locked to the transaction's end.
async fn lock_stock(
    conn: &mut PgConnection,
    tenant: Uuid,
    part: Uuid,
    location: Uuid,
) -> Result<(Stock, Option<i64>), sqlx::Error> {
    sqlx::query(
        "INSERT INTO part_stock (tenant_id, part_id, location_id) VALUES ($1, $2, $3)
         ON CONFLICT (part_id, location_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(part)
    .bind(location)
    .execute(&mut *conn)
    .await?;
    let (on_hand, reserved, reorder_point): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT on_hand, reserved, reorder_point FROM part_stock
         WHERE tenant_id = $1 AND part_id = $2 AND location_id = $3 FOR UPDATE",
    )
    .bind(tenant)
    .bind(part)
    .bind(location)
    .fetch_one(&mut *conn)
    .await?;
    Ok((Stock { on_hand, reserved }, reorder_point))
}

/// Where a stock movement comes from.
#[derive(Debug, Clone, Copy)]
pub struct MoveContext<'a> {
    pub tenant: Uuid,
    pub actor: Uuid,
    pub work_order: Option<Uuid>,
    pub note: &'a str,
}

/// Applies `movement` to a part's stock at a location: checks it against the ledger's rules,
/// writes the new stock and the ledger row, and adds a `part.low_stock` event when what is
/// available crosses the reorder point. The caller has checked that part and location are the
/// tenant's. Refusals answer 409 (not enough stock) or 400 (a bad quantity).
pub async fn move_stock(
    conn: &mut PgConnection,
    ctx: MoveContext<'_>,
    part: Uuid,
    location: Uuid,
    allow_negative: bool,
    movement: Movement,
) -> Result<Stock, ApiError> {
    let (before, reorder_point) = lock_stock(conn, ctx.tenant, part, location).await?;
    let (after, delta) =
        inventory::apply(before, movement, allow_negative).map_err(|e| match e {
            InventoryError::NotPositive
            | InventoryError::ZeroAdjustment
            | InventoryError::TooLarge => ApiError::field("quantity", e.to_string()),
            other => ApiError::Conflict(other.to_string()),
        })?;
    sqlx::query(
        "UPDATE part_stock SET on_hand = $4, reserved = $5
         WHERE tenant_id = $1 AND part_id = $2 AND location_id = $3",
    )
    .bind(ctx.tenant)
    .bind(part)
    .bind(location)
    .bind(after.on_hand)
    .bind(after.reserved)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO stock_movements (tenant_id, part_id, location_id, kind, on_hand_delta,
                                      reserved_delta, work_order_id, actor, note)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(ctx.tenant)
    .bind(part)
    .bind(location)
    .bind(movement.kind())
    .bind(delta.on_hand)
    .bind(delta.reserved)
    .bind(ctx.work_order)
    .bind(ctx.actor)
    .bind(ctx.note)
    .execute(&mut *conn)
    .await?;
    if inventory::crosses_reorder_point(before, after, reorder_point) {
        let payload = json!({
            "part_id": part,
            "location_id": location,
            "available": after.available(),
            "on_hand": after.on_hand,
            "reorder_point": reorder_point,
        });
        events::emit(conn, ctx.tenant, "part.low_stock", part, &payload).await?;
        tracing::info!(%part, %location, available = after.available(), "part at its reorder point");
    }
    Ok(after)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementRequest {
    pub location_id: Uuid,
    /// `receipt` (a positive quantity) or `adjustment` (a signed correction, with a note).
    pub kind: String,
    pub quantity: i64,
    #[serde(default)]
    pub note: String,
}

pub async fn add_movement(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(part): Path<Uuid>,
    Body(req): Body<MovementRequest>,
) -> Result<(StatusCode, Json<PartDetail>), ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another tenant's part, or none: 404; then the permission, before anything in the body.
    let known: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM parts WHERE tenant_id = $1 AND id = $2)")
            .bind(tenant)
            .bind(part)
            .fetch_one(&mut *tx)
            .await?;
    if !known {
        return Err(ApiError::NotFound);
    }
    auth.require(Permission::PartsWrite)?;
    let allow_negative = part_and_location(&mut tx, tenant, part, req.location_id).await?;
    let mut errors = FieldErrors::default();
    let movement = match req.kind.as_str() {
        "receipt" => Some(Movement::Receipt(req.quantity)),
        "adjustment" => {
            if req.note.trim().is_empty() {
                errors.add("note", "say why the count changes (e.g. stocktake 2026-12)");
            }
            Some(Movement::Adjustment(req.quantity))
        }
        _ => {
            errors.add(
                "kind",
                "must be receipt or adjustment; reservations and consumption go through work orders",
            );
            None
        }
    };
    if req.note.chars().count() > 2000 {
        errors.add("note", "must be at most 2000 characters");
    }
    errors.finish()?;
    let movement = movement.expect("checked above");
    let ctx = MoveContext {
        tenant,
        actor: auth.user,
        work_order: None,
        note: req.note.trim(),
    };
    let after = move_stock(
        &mut tx,
        ctx,
        part,
        req.location_id,
        allow_negative,
        movement,
    )
    .await?;
    let detail_json = json!({
        "location_id": req.location_id,
        "kind": movement.kind(),
        "quantity": req.quantity,
        "note": req.note.trim(),
        "on_hand": after.on_hand,
    });
    let action = format!("part.{}", movement.kind());
    audit::write_change(&mut tx, &auth, &meta, &action, ("part", part), detail_json).await?;
    let detail = part_detail(&mut tx, tenant, part).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelsRequest {
    pub min_qty: Option<i64>,
    pub max_qty: Option<i64>,
    pub reorder_point: Option<i64>,
}

/// Sets the min/max and reorder point of a part at a location (`null` or left out: none).
pub async fn set_levels(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path((part, location)): Path<(Uuid, Uuid)>,
    Body(req): Body<LevelsRequest>,
) -> Result<Json<PartDetail>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // The location is part of the path here, not a field of the body: a missing one is a
    // resource that does not exist.
    match part_and_location(&mut tx, tenant, part, location).await {
        Err(ApiError::Invalid(_)) => return Err(ApiError::NotFound),
        other => other?,
    };
    auth.require(Permission::PartsWrite)?;
    let mut errors = FieldErrors::default();
    for (field, value) in [
        ("min_qty", req.min_qty),
        ("max_qty", req.max_qty),
        ("reorder_point", req.reorder_point),
    ] {
        if value.is_some_and(|v| !(0..=inventory::MAX_QUANTITY).contains(&v)) {
            errors.add(field, "must be a whole number from 0");
        }
    }
    if let (Some(min), Some(max)) = (req.min_qty, req.max_qty)
        && min > max
    {
        errors.add("min_qty", "must not be above max_qty");
    }
    errors.finish()?;
    lock_stock(&mut tx, tenant, part, location).await?;
    sqlx::query(
        "UPDATE part_stock SET min_qty = $4, max_qty = $5, reorder_point = $6
         WHERE tenant_id = $1 AND part_id = $2 AND location_id = $3",
    )
    .bind(tenant)
    .bind(part)
    .bind(location)
    .bind(req.min_qty)
    .bind(req.max_qty)
    .bind(req.reorder_point)
    .execute(&mut *tx)
    .await?;
    let detail_json = json!({
        "location_id": location,
        "min_qty": req.min_qty,
        "max_qty": req.max_qty,
        "reorder_point": req.reorder_point,
    });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "part.levels",
        ("part", part),
        detail_json,
    )
    .await?;
    let detail = part_detail(&mut tx, tenant, part).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// For work orders: checks part and location as [`part_and_location`] does, but answers a
/// missing part as a field error (the work order, not the part, is the resource).
pub async fn part_for_work_order(
    conn: &mut PgConnection,
    tenant: Uuid,
    part: Uuid,
    location: Uuid,
) -> Result<bool, ApiError> {
    match part_and_location(conn, tenant, part, location).await {
        Err(ApiError::NotFound) => Err(ApiError::field("part_id", "no part with this id")),
        other => other,
    }
}
