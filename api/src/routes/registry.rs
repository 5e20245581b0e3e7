//! Gateways and tags, and the CSV import and export of the asset and tag registers. Cell
//! rules are [`crate::registry_csv`]'s; the endpoints are in `docs/WORK-ORDERS.md`
//! ("Registers").
//!
//! - `GET/POST /api/v1/gateways`; `GET /api/v1/tags?gateway_id=&asset_id=&unlinked=&auto_registered=`;
//!   `PATCH /api/v1/tags/{id}` (asset link, device, unit, description, range, labels).
//! - `GET/PUT /api/v1/organisation/ingest-policy`: whether ingest registers the unknown tags
//!   of a known gateway, and up to how many tags per gateway.
//! - `GET /api/v1/assets/export.csv`, `POST /api/v1/assets/import?dry_run=true`;
//!   `GET /api/v1/tags/export.csv`, `POST /api/v1/tags/import?dry_run=true`.
//!
//! An import checks every row and reports every problem (`details`, one per cell, with its
//! line); it writes all rows or none. A dry run does the whole import in a transaction it
//! rolls back, so what it reports is what the import would do. Matching is by name: an asset
//! of the same name, a tag of the same gateway and name, is updated (its empty cells leave
//! the field as it is); others are created. Reading: any role; changing: admin, manager.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldError, FieldErrors};
use crate::permissions::Permission;
use crate::registry_csv::{self as rc, AssetRow, RowError, TagRow, defuse, format_labels};
use crate::routes::assets::SUBTREE;

// ---------------------------------------------------------------------------------------------
// Gateways and tags.

#[derive(Debug, Serialize, FromRow)]
pub struct Gateway {
    pub id: Uuid,
    pub code: String,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct GatewayList {
    pub items: Vec<Gateway>,
}

pub async fn list_gateways(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<GatewayList>, ApiError> {
    auth.require(Permission::RegistryRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, Gateway>(
        "SELECT id, code, name FROM gateways WHERE tenant_id = $1 ORDER BY code",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(GatewayList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGateway {
    /// What the gateway's topic and edge agent call it: 1-64 of letters, digits, `.`, `_`, `-`.
    pub code: String,
    pub name: String,
}

pub async fn create_gateway(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateGateway>,
) -> Result<(StatusCode, Json<Gateway>), ApiError> {
    auth.require(Permission::RegistryWrite)?;
    let mut errors = FieldErrors::default();
    if !(1..=64).contains(&req.code.len())
        || !req
            .code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        errors.add("code", "use 1-64 letters, digits, `.`, `_` and `-`");
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.add("name", "must be 1-200 characters");
    }
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO gateways (id, tenant_id, code, name) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, code) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(&req.code)
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::field(
            "code",
            "a gateway with this code exists already",
        ));
    }
    let detail = json!({ "code": req.code, "name": name });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "gateway.create",
        ("gateway", id),
        detail,
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Gateway {
            id,
            code: req.code,
            name: name.to_owned(),
        }),
    ))
}

#[derive(Debug, Serialize, FromRow)]
pub struct Tag {
    pub id: i64,
    pub gateway_id: Uuid,
    pub gateway: String,
    pub name: String,
    pub asset_id: Option<Uuid>,
    pub unit: Option<String>,
    pub description: String,
    pub range_min: Option<f64>,
    pub range_max: Option<f64>,
    pub labels: Value,
    /// When ingest registered the tag from a gateway's readings (the organisation's ingest
    /// policy allowing it); `null` for tags registered by people.
    pub auto_registered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The device of its gateway the tag is read from, if set.
    pub device_id: Option<Uuid>,
}

const TAGS: &str = "SELECT t.id, t.gateway_id, g.code AS gateway, t.name, t.asset_id, t.unit,
        t.description, t.range_min, t.range_max, t.labels, t.auto_registered_at, t.device_id
    FROM tags t JOIN gateways g ON g.tenant_id = t.tenant_id AND g.id = t.gateway_id
    WHERE t.tenant_id = $1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagQuery {
    pub gateway_id: Option<Uuid>,
    pub asset_id: Option<Uuid>,
    /// Only tags linked to no asset.
    pub unlinked: Option<bool>,
    /// Only tags ingest registered from readings (`true`), or only the others (`false`).
    pub auto_registered: Option<bool>,
    /// 1-1000, default 200.
    pub limit: Option<i64>,
    /// The last `id` of the previous page.
    pub after: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct TagList {
    pub items: Vec<Tag>,
    pub next_after: Option<i64>,
}

pub async fn list_tags(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<TagQuery>,
) -> Result<Json<TagList>, ApiError> {
    auth.require(Permission::RegistryRead)?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let mut items = sqlx::query_as::<_, Tag>(&format!(
        "{TAGS} AND ($2::uuid IS NULL OR t.gateway_id = $2)
           AND ($3::uuid IS NULL OR t.asset_id = $3)
           AND (NOT $4 OR t.asset_id IS NULL)
           AND t.id > $5
           AND ($7::boolean IS NULL OR (t.auto_registered_at IS NOT NULL) = $7)
         ORDER BY t.id LIMIT $6"
    ))
    .bind(tenant)
    .bind(q.gateway_id)
    .bind(q.asset_id)
    .bind(q.unlinked.unwrap_or(false))
    .bind(q.after.unwrap_or(0))
    .bind(limit + 1)
    .bind(q.auto_registered)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_after = if more {
        items.last().map(|t| t.id)
    } else {
        None
    };
    Ok(Json(TagList { items, next_after }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTag {
    #[serde(default, deserialize_with = "crate::error::present")]
    pub asset_id: Option<Option<Uuid>>,
    /// A device of the tag's gateway; `null` unlinks.
    #[serde(default, deserialize_with = "crate::error::present")]
    pub device_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub unit: Option<Option<String>>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub range_min: Option<Option<f64>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub range_max: Option<Option<f64>>,
    pub labels: Option<serde_json::Map<String, Value>>,
}

/// Links a tag to an asset (or unlinks it) and sets what it measures. A new asset link
/// reaches the rules engine at its next reload or restart.
pub async fn update_tag(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<i64>,
    Body(req): Body<UpdateTag>,
) -> Result<Json<Tag>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = fetch_tag(&mut tx, tenant, id).await?;
    auth.require(Permission::RegistryWrite)?;
    let mut errors = FieldErrors::default();
    if let Some(Some(asset)) = req.asset_id {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM assets WHERE tenant_id = $1 AND id = $2)",
        )
        .bind(tenant)
        .bind(asset)
        .fetch_one(&mut *tx)
        .await?;
        if !known {
            errors.add("asset_id", "no asset with this id");
        }
    }
    if let Some(Some(device)) = req.device_id {
        let same_gateway: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM devices
                            WHERE tenant_id = $1 AND id = $2 AND gateway_id = $3)",
        )
        .bind(tenant)
        .bind(device)
        .bind(before.gateway_id)
        .fetch_one(&mut *tx)
        .await?;
        if !same_gateway {
            errors.add("device_id", "no device with this id on the tag's gateway");
        }
    }
    if let Some(Some(unit)) = &req.unit
        && (unit.trim().is_empty() || unit.chars().count() > 20)
    {
        errors.add("unit", "must be 1-20 characters, or null");
    }
    if req
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        errors.add("description", "must be at most 500 characters");
    }
    let lo = req.range_min.unwrap_or(before.range_min);
    let hi = req.range_max.unwrap_or(before.range_max);
    if lo.is_some_and(|v| !v.is_finite()) || hi.is_some_and(|v| !v.is_finite()) {
        errors.add("range_min", "ranges are finite numbers");
    } else if let (Some(lo), Some(hi)) = (lo, hi)
        && lo >= hi
    {
        errors.add("range_max", "must be above range_min");
    }
    if let Some(labels) = &req.labels {
        for (k, v) in labels {
            let ok = (1..=64).contains(&k.len())
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && v.as_str()
                    .is_some_and(|v| (1..=200).contains(&v.chars().count()));
            if !ok {
                errors.add(
                    format!("labels.{k}"),
                    "keys: 1-64 of letters, digits, . _ -; values: text of 1-200 characters",
                );
            }
        }
    }
    errors.finish()?;
    sqlx::query(
        "UPDATE tags SET
            asset_id = CASE WHEN $3 THEN $4 ELSE asset_id END,
            unit = CASE WHEN $5 THEN $6 ELSE unit END,
            description = coalesce($7, description),
            range_min = $8, range_max = $9,
            labels = coalesce($10, labels),
            device_id = CASE WHEN $11 THEN $12 ELSE device_id END
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(req.asset_id.is_some())
    .bind(req.asset_id.flatten())
    .bind(req.unit.is_some())
    .bind(req.unit.clone().flatten().map(|u| u.trim().to_owned()))
    .bind(&req.description)
    .bind(lo)
    .bind(hi)
    .bind(req.labels.clone().map(Value::Object))
    .bind(req.device_id.is_some())
    .bind(req.device_id.flatten())
    .execute(&mut *tx)
    .await?;
    let after = fetch_tag(&mut tx, tenant, id).await?;
    let detail = json!({
        "asset_id": { "from": before.asset_id, "to": after.asset_id },
        "device_id": { "from": before.device_id, "to": after.device_id },
        "unit": after.unit, "range_min": after.range_min, "range_max": after.range_max,
    });
    audit::write_change(&mut tx, &auth, &meta, "tag.update", ("tag", id), detail).await?;
    tx.commit().await?;
    Ok(Json(after))
}

async fn fetch_tag(conn: &mut PgConnection, tenant: Uuid, id: i64) -> Result<Tag, ApiError> {
    sqlx::query_as::<_, Tag>(&format!("{TAGS} AND t.id = $2"))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or(ApiError::NotFound)
}

// ---------------------------------------------------------------------------------------------
// CSV export.

fn csv_response(name: &str, rows: Vec<Vec<String>>) -> Result<Response, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer
            .write_record(row.iter().map(|c| defuse(c)))
            .map_err(anyhow::Error::from)?;
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

fn opt(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

#[derive(Debug, FromRow)]
struct AssetExport {
    name: String,
    site: String,
    area: Option<String>,
    parent: Option<String>,
    criticality: i16,
    status: String,
    asset_class: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    serial_number: Option<String>,
    installed_on: Option<chrono::NaiveDate>,
    warranty_until: Option<chrono::NaiveDate>,
    labels: Value,
}

pub async fn export_assets(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Response, ApiError> {
    auth.require(Permission::RegistryRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let assets = sqlx::query_as::<_, AssetExport>(
        "SELECT a.name, s.name AS site, ar.name AS area, p.name AS parent, a.criticality, a.status,
                a.asset_class, a.manufacturer, a.model, a.serial_number, a.installed_on,
                a.warranty_until, a.labels
         FROM assets a
         JOIN sites s ON s.tenant_id = a.tenant_id AND s.id = a.site_id
         LEFT JOIN areas ar ON ar.tenant_id = a.tenant_id AND ar.id = a.area_id
         LEFT JOIN assets p ON p.tenant_id = a.tenant_id AND p.id = a.parent_id
         WHERE a.tenant_id = $1 ORDER BY a.name",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut rows = vec![rc::ASSET_COLUMNS.iter().map(|c| (*c).to_owned()).collect()];
    for a in assets {
        rows.push(vec![
            a.name,
            a.site,
            opt(a.area),
            opt(a.parent),
            a.criticality.to_string(),
            a.status,
            opt(a.asset_class),
            opt(a.manufacturer),
            opt(a.model),
            opt(a.serial_number),
            opt(a.installed_on),
            opt(a.warranty_until),
            a.labels.as_object().map(format_labels).unwrap_or_default(),
        ]);
    }
    csv_response("assets.csv", rows)
}

#[derive(Debug, FromRow)]
struct TagExport {
    gateway: String,
    name: String,
    asset: Option<String>,
    unit: Option<String>,
    description: String,
    range_min: Option<f64>,
    range_max: Option<f64>,
    labels: Value,
}

pub async fn export_tags(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Response, ApiError> {
    auth.require(Permission::RegistryRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let tags: Vec<TagExport> = sqlx::query_as(
        "SELECT g.code AS gateway, t.name, a.name AS asset, t.unit, t.description, t.range_min,
                t.range_max, t.labels
         FROM tags t JOIN gateways g ON g.tenant_id = t.tenant_id AND g.id = t.gateway_id
         LEFT JOIN assets a ON a.tenant_id = t.tenant_id AND a.id = t.asset_id
         WHERE t.tenant_id = $1 ORDER BY g.code, t.name",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut rows = vec![rc::TAG_COLUMNS.iter().map(|c| (*c).to_owned()).collect()];
    for t in tags {
        rows.push(vec![
            t.gateway,
            t.name,
            opt(t.asset),
            opt(t.unit),
            t.description,
            opt(t.range_min),
            opt(t.range_max),
            t.labels.as_object().map(format_labels).unwrap_or_default(),
        ]);
    }
    csv_response("tags.csv", rows)
}

// ---------------------------------------------------------------------------------------------
// CSV import.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub rows: usize,
    pub created: usize,
    pub updated: usize,
}

fn invalid(errors: Vec<RowError>) -> ApiError {
    ApiError::Invalid(
        errors
            .into_iter()
            .take(1000)
            .map(|e| {
                let field = if e.column.is_empty() {
                    format!("line {}", e.line)
                } else {
                    format!("line {}: {}", e.line, e.column)
                };
                FieldError::new(field, e.message)
            })
            .collect(),
    )
}

/// An asset as an import sees it.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: Uuid,
    site: Uuid,
}

pub async fn import_assets(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    auth.require(Permission::RegistryWrite)?;
    let (rows, mut errors) = rc::parse_assets(&body);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let order = rc::parents_first(&rows).map_err(|lines| {
        invalid(
            lines
                .iter()
                .map(|&line| RowError {
                    line,
                    column: "parent".into(),
                    message: "these rows name each other as parents in a cycle".into(),
                })
                .collect(),
        )
    })?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let sites: HashMap<String, Uuid> =
        sqlx::query_as::<_, (String, Uuid)>("SELECT name, id FROM sites WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let areas: HashMap<(Uuid, String), Uuid> = sqlx::query_as::<_, (Uuid, String, Uuid)>(
        "SELECT site_id, name, id FROM areas WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(s, n, id)| ((s, n), id))
    .collect();
    let mut assets: HashMap<String, Known> = sqlx::query_as::<_, (String, Uuid, Uuid)>(
        "SELECT name, id, site_id FROM assets WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(n, id, site)| (n, Known { id, site }))
    .collect();
    let mut report = ImportReport {
        dry_run: q.dry_run,
        rows: rows.len(),
        ..ImportReport::default()
    };
    for i in order {
        let row = &rows[i];
        match import_asset(&mut tx, tenant, row, &sites, &areas, &mut assets).await? {
            Ok(true) => report.created += 1,
            Ok(false) => report.updated += 1,
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Err(invalid(errors));
    }
    finish_import(tx, &auth, &meta, ("asset.import", "asset"), report).await
}

/// Ends an import whose rows are all good: a dry run rolls back, an import commits with its
/// audit entry (the counts).
async fn finish_import(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    auth: &AuthUser,
    meta: &RequestMeta,
    (action, kind): (&str, &str),
    report: ImportReport,
) -> Result<Json<ImportReport>, ApiError> {
    if report.dry_run {
        tx.rollback().await?;
    } else {
        let detail =
            json!({ "rows": report.rows, "created": report.created, "updated": report.updated });
        audit::write_change(&mut tx, auth, meta, action, (kind, Uuid::nil()), detail).await?;
        tx.commit().await?;
    }
    Ok(Json(report))
}

/// Creates or updates one asset; `Ok(Ok(true))` when created. Problems only the database can
/// tell are returned, not raised, so that every row is checked.
async fn import_asset(
    conn: &mut PgConnection,
    tenant: Uuid,
    row: &AssetRow,
    sites: &HashMap<String, Uuid>,
    areas: &HashMap<(Uuid, String), Uuid>,
    assets: &mut HashMap<String, Known>,
) -> Result<Result<bool, Vec<RowError>>, ApiError> {
    let mut errors = Vec::new();
    let err = |column: &str, message: String| RowError {
        line: row.line,
        column: column.into(),
        message,
    };
    let existing = assets.get(&row.name).copied();
    let parent = match &row.parent {
        Some(p) => match assets.get(p) {
            Some(k) => Some(*k),
            None => {
                errors.push(err(
                    "parent",
                    format!("no asset named {p:?} here or earlier in the file"),
                ));
                None
            }
        },
        None => None,
    };
    let named_site = match &row.site {
        Some(s) => match sites.get(s) {
            Some(id) => Some(*id),
            None => {
                errors.push(err(
                    "site",
                    format!("no site named {s:?}; create it first (POST /api/v1/sites)"),
                ));
                None
            }
        },
        None => None,
    };
    let site = match (parent, named_site) {
        (Some(p), Some(s)) if p.site != s => {
            errors.push(err(
                "site",
                "a child is on its parent's site; leave site empty".into(),
            ));
            None
        }
        (Some(p), _) => Some(p.site),
        (None, Some(s)) => Some(s),
        (None, None) => existing.map(|e| e.site),
    };
    if site.is_none() && errors.is_empty() {
        errors.push(err("site", "a new asset needs a site, or a parent".into()));
    }
    let area = match (&row.area, site) {
        (Some(a), Some(s)) => match areas.get(&(s, a.clone())) {
            Some(id) => Some(*id),
            None => {
                errors.push(err(
                    "area",
                    format!("the asset's site has no area named {a:?}"),
                ));
                None
            }
        },
        _ => None,
    };
    if let (Some(e), Some(p)) = (existing, parent) {
        let below: bool = sqlx::query_scalar(&format!("SELECT $3 IN ({SUBTREE})"))
            .bind(tenant)
            .bind(e.id)
            .bind(p.id)
            .fetch_one(&mut *conn)
            .await?;
        if below {
            errors.push(err(
                "parent",
                "an asset cannot move under itself or one of its descendants".into(),
            ));
        }
    }
    if !errors.is_empty() {
        return Ok(Err(errors));
    }
    let site = site.expect("checked above");
    let labels = (!row.labels.is_empty()).then(|| json!(row.labels));
    let created = existing.is_none();
    let id = existing.map_or_else(Uuid::new_v4, |e| e.id);
    if created {
        sqlx::query(
            "INSERT INTO assets (id, tenant_id, site_id, parent_id, area_id, name, criticality,
                                 status, asset_class, labels, manufacturer, model, serial_number,
                                 installed_on, warranty_until)
             VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, 3), coalesce($8, 'operational'), $9,
                     coalesce($10, '{}'::jsonb), $11, $12, $13, $14, $15)",
        )
        .bind(id)
        .bind(tenant)
        .bind(site)
        .bind(parent.map(|p| p.id))
        .bind(area)
        .bind(&row.name)
        .bind(row.criticality)
        .bind(&row.status)
        .bind(&row.asset_class)
        .bind(&labels)
        .bind(&row.manufacturer)
        .bind(&row.model)
        .bind(&row.serial_number)
        .bind(row.installed_on)
        .bind(row.warranty_until)
        .execute(&mut *conn)
        .await?;
    } else {
        sqlx::query(
            "UPDATE assets SET site_id = $3, parent_id = coalesce($4, parent_id),
                area_id = CASE WHEN $16 THEN NULL ELSE coalesce($5, area_id) END,
                criticality = coalesce($6, criticality), status = coalesce($7, status),
                asset_class = coalesce($8, asset_class), labels = coalesce($9, labels),
                manufacturer = coalesce($10, manufacturer), model = coalesce($11, model),
                serial_number = coalesce($12, serial_number),
                installed_on = coalesce($13, installed_on),
                warranty_until = coalesce($14, warranty_until), updated_at = now()
             WHERE tenant_id = $1 AND id = $2 AND name = $15",
        )
        .bind(tenant)
        .bind(id)
        .bind(site)
        .bind(parent.map(|p| p.id))
        .bind(area)
        .bind(row.criticality)
        .bind(&row.status)
        .bind(&row.asset_class)
        .bind(&labels)
        .bind(&row.manufacturer)
        .bind(&row.model)
        .bind(&row.serial_number)
        .bind(row.installed_on)
        .bind(row.warranty_until)
        .bind(&row.name)
        // A move to another site leaves the old site's area.
        .bind(area.is_none() && existing.is_some_and(|e| e.site != site))
        .execute(&mut *conn)
        .await?;
        if existing.is_some_and(|e| e.site != site) {
            sqlx::query(&format!(
                "UPDATE assets SET site_id = $3, area_id = NULL, updated_at = now()
                 WHERE tenant_id = $1 AND id <> $2 AND id IN ({SUBTREE})"
            ))
            .bind(tenant)
            .bind(id)
            .bind(site)
            .execute(&mut *conn)
            .await?;
        }
    }
    assets.insert(row.name.clone(), Known { id, site });
    Ok(Ok(created))
}

pub async fn import_tags(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Json<ImportReport>, ApiError> {
    auth.require(Permission::RegistryWrite)?;
    let (rows, mut errors) = rc::parse_tags(&body);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let gateways: HashMap<String, Uuid> =
        sqlx::query_as::<_, (String, Uuid)>("SELECT code, id FROM gateways WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let assets: HashMap<String, Uuid> =
        sqlx::query_as::<_, (String, Uuid)>("SELECT name, id FROM assets WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let mut report = ImportReport {
        dry_run: q.dry_run,
        rows: rows.len(),
        ..ImportReport::default()
    };
    for row in &rows {
        match import_tag(&mut tx, tenant, row, &gateways, &assets).await? {
            Ok(true) => report.created += 1,
            Ok(false) => report.updated += 1,
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    finish_import(tx, &auth, &meta, ("tag.import", "tag"), report).await
}

async fn import_tag(
    conn: &mut PgConnection,
    tenant: Uuid,
    row: &TagRow,
    gateways: &HashMap<String, Uuid>,
    assets: &HashMap<String, Uuid>,
) -> Result<Result<bool, RowError>, ApiError> {
    let err = |column: &str, message: String| RowError {
        line: row.line,
        column: column.into(),
        message,
    };
    let Some(gateway) = gateways.get(&row.gateway).copied() else {
        return Ok(Err(err(
            "gateway",
            format!(
                "no gateway with code {:?}; create it first (POST /api/v1/gateways)",
                row.gateway
            ),
        )));
    };
    let asset = match &row.asset {
        Some(a) => match assets.get(a) {
            Some(id) => Some(*id),
            None => return Ok(Err(err("asset", format!("no asset named {a:?}")))),
        },
        None => None,
    };
    let labels = (!row.labels.is_empty()).then(|| json!(row.labels));
    let existing: Option<(i64, Option<f64>, Option<f64>)> = sqlx::query_as(
        "SELECT id, range_min, range_max FROM tags WHERE tenant_id = $1 AND gateway_id = $2 AND name = $3",
    )
    .bind(tenant)
    .bind(gateway)
    .bind(&row.name)
    .fetch_optional(&mut *conn)
    .await?;
    match existing {
        None => {
            sqlx::query(
                "INSERT INTO tags (tenant_id, gateway_id, name, asset_id, unit, description,
                                   range_min, range_max, labels)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, '{}'::jsonb))",
            )
            .bind(tenant)
            .bind(gateway)
            .bind(&row.name)
            .bind(asset)
            .bind(&row.unit)
            .bind(&row.description)
            .bind(row.range_min)
            .bind(row.range_max)
            .bind(&labels)
            .execute(&mut *conn)
            .await?;
            Ok(Ok(true))
        }
        Some((id, lo, hi)) => {
            let (lo, hi) = (row.range_min.or(lo), row.range_max.or(hi));
            if let (Some(lo), Some(hi)) = (lo, hi)
                && lo >= hi
            {
                return Ok(Err(err(
                    "range_max",
                    "must be above range_min (with the tag's present range)".into(),
                )));
            }
            sqlx::query(
                "UPDATE tags SET asset_id = coalesce($3, asset_id), unit = coalesce($4, unit),
                        description = CASE WHEN $5 = '' THEN description ELSE $5 END,
                        range_min = $6, range_max = $7, labels = coalesce($8, labels)
                 WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(asset)
            .bind(&row.unit)
            .bind(&row.description)
            .bind(lo)
            .bind(hi)
            .bind(&labels)
            .execute(&mut *conn)
            .await?;
            Ok(Ok(false))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The ingest policy.

/// Whether ingest registers tags it does not know from a known gateway's readings, and up to
/// how many tags a gateway may have (registration stops there; further unknown tags go on
/// dead-lettering as `unknown_tag`).
#[derive(Debug, Serialize, Deserialize, FromRow)]
#[serde(deny_unknown_fields)]
pub struct IngestPolicy {
    pub auto_register_tags: bool,
    #[serde(default = "default_max_tags")]
    pub max_tags_per_gateway: i32,
}

fn default_max_tags() -> i32 {
    10_000
}

async fn read_ingest_policy(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<IngestPolicy, ApiError> {
    Ok(sqlx::query_as(
        "SELECT auto_register_tags, max_tags_per_gateway FROM tenant_ingest_policy
         WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(IngestPolicy {
        auto_register_tags: false,
        max_tags_per_gateway: default_max_tags(),
    }))
}

pub async fn ingest_policy(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<IngestPolicy>, ApiError> {
    auth.require(Permission::RegistryWrite)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let policy = read_ingest_policy(&mut tx, tenant).await?;
    tx.commit().await?;
    Ok(Json(policy))
}

pub async fn set_ingest_policy(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<IngestPolicy>,
) -> Result<Json<IngestPolicy>, ApiError> {
    auth.require(Permission::OrganisationManage)?;
    if !(1..=1_000_000).contains(&req.max_tags_per_gateway) {
        return Err(ApiError::field(
            "max_tags_per_gateway",
            "must be between 1 and 1000000",
        ));
    }
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let before = read_ingest_policy(&mut tx, tenant).await?;
    sqlx::query(
        "INSERT INTO tenant_ingest_policy (tenant_id, auto_register_tags, max_tags_per_gateway,
                                           updated_by)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id) DO UPDATE
             SET auto_register_tags = EXCLUDED.auto_register_tags,
                 max_tags_per_gateway = EXCLUDED.max_tags_per_gateway,
                 updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(tenant)
    .bind(req.auto_register_tags)
    .bind(req.max_tags_per_gateway)
    .bind(auth.user)
    .execute(&mut *tx)
    .await?;
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "organisation.ingest_policy",
        ("tenant", tenant),
        json!({ "before": before, "after": req }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(req))
}
