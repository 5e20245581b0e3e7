//! Sites, their areas, and the asset tree. The endpoints and rules are in
//! `docs/WORK-ORDERS.md` (section "Assets"); in short:
//!
//! - `GET/POST /api/v1/sites`, `POST /api/v1/sites/{id}/areas`.
//! - `GET /api/v1/assets` (filtered, by name, cursor-paginated), `POST /api/v1/assets`.
//! - `GET /api/v1/assets/{id}`: the asset with its path from the root, its children and its
//!   open work orders; `PATCH` edits it or moves it (with its subtree) under another parent.
//! - `GET /api/v1/assets/{id}/qr.svg` and `/qr.png?scale=`: a QR code of the asset's link.
//!
//! Reading needs any role; creating and changing, admin or manager. Moving keeps the asset's
//! id, so its work orders, alarms and tags keep their history; a move that would put an asset
//! under itself or its own descendant is refused. Every change is audited.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::permissions::Permission;
use crate::registry_csv::valid_key;

const STATUSES: [&str; 5] = [
    "operational",
    "degraded",
    "down",
    "standby",
    "decommissioned",
];

// ---------------------------------------------------------------------------------------------
// Sites and areas.

#[derive(Debug, Serialize, FromRow)]
pub struct Site {
    pub id: Uuid,
    pub name: String,
    /// `[{"id", "name"}]`, by name.
    pub areas: Value,
}

#[derive(Debug, Serialize)]
pub struct SiteList {
    pub items: Vec<Site>,
}

const SITES: &str = "SELECT s.id, s.name,
        coalesce((SELECT jsonb_agg(jsonb_build_object('id', a.id, 'name', a.name) ORDER BY a.name)
                  FROM areas a WHERE a.tenant_id = s.tenant_id AND a.site_id = s.id), '[]')
          AS areas
    FROM sites s WHERE s.tenant_id = $1";

pub async fn list_sites(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<SiteList>, ApiError> {
    auth.require(Permission::AssetsRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, Site>(&format!("{SITES} ORDER BY s.name"))
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Json(SiteList { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRequest {
    pub name: String,
}

fn check_name(errors: &mut FieldErrors, name: &str) {
    if name.trim().is_empty() || name.trim().chars().count() > 200 {
        errors.add("name", "must be 1-200 characters");
    }
}

pub async fn create_site(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<NameRequest>,
) -> Result<(StatusCode, Json<Site>), ApiError> {
    auth.require(Permission::AssetsWrite)?;
    let tenant = auth.tenant.as_uuid();
    let mut errors = FieldErrors::default();
    check_name(&mut errors, &req.name);
    errors.finish()?;
    let name = req.name.trim();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO sites (id, tenant_id, name) VALUES ($1, $2, $3)
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
            "a site with this name exists already",
        ));
    }
    let detail = json!({ "name": name });
    audit::write_change(&mut tx, &auth, &meta, "site.create", ("site", id), detail).await?;
    let site = sqlx::query_as::<_, Site>(&format!("{SITES} AND s.id = $2"))
        .bind(tenant)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(site)))
}

pub async fn create_area(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(site): Path<Uuid>,
    Body(req): Body<NameRequest>,
) -> Result<(StatusCode, Json<Site>), ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let found = sqlx::query_as::<_, Site>(&format!("{SITES} AND s.id = $2"))
        .bind(tenant)
        .bind(site)
        .fetch_optional(&mut *tx)
        .await?;
    found.ok_or(ApiError::NotFound)?;
    auth.require(Permission::AssetsWrite)?;
    let mut errors = FieldErrors::default();
    check_name(&mut errors, &req.name);
    errors.finish()?;
    let name = req.name.trim();
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO areas (id, tenant_id, site_id, name) VALUES ($1, $2, $3, $4)
         ON CONFLICT (site_id, name) DO NOTHING",
    )
    .bind(id)
    .bind(tenant)
    .bind(site)
    .bind(name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::field(
            "name",
            "this site has an area with this name already",
        ));
    }
    let detail = json!({ "name": name, "site_id": site });
    audit::write_change(&mut tx, &auth, &meta, "area.create", ("area", id), detail).await?;
    let site = sqlx::query_as::<_, Site>(&format!("{SITES} AND s.id = $2"))
        .bind(tenant)
        .bind(site)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(site)))
}

// ---------------------------------------------------------------------------------------------
// Assets.

#[derive(Debug, Serialize, FromRow)]
pub struct Asset {
    pub id: Uuid,
    pub site_id: Uuid,
    pub area_id: Option<Uuid>,
    pub parent_id: Option<Uuid>,
    pub name: String,
    /// 1 (least) to 5 (most critical).
    pub criticality: i16,
    pub status: String,
    pub asset_class: Option<String>,
    pub labels: Value,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub installed_on: Option<NaiveDate>,
    pub warranty_until: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ASSET_COLUMNS: &str = "id, site_id, area_id, parent_id, name, criticality, status, asset_class, \
     labels, manufacturer, model, serial_number, installed_on, warranty_until, created_at, updated_at";

#[derive(Debug, Serialize, FromRow)]
pub struct AssetRef {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct AssetDetail {
    #[serde(flatten)]
    pub asset: Asset,
    /// From the root down to the parent.
    pub path: Vec<AssetRef>,
    pub children: Vec<AssetRef>,
    /// Work orders of this asset and its subtree that are not closed.
    pub open_work_orders: i64,
    /// What the asset's QR code links to.
    pub link: String,
    /// Whether the warranty runs today.
    pub under_warranty: bool,
}

async fn fetch_asset(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<Asset, ApiError> {
    sqlx::query_as::<_, Asset>(&format!(
        "SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(ApiError::NotFound)
}

/// The link an asset's QR code holds.
fn asset_link(state: &AppState, headers: &HeaderMap, id: Uuid) -> String {
    match &state.asset_link {
        Some(template) => template.replace("{id}", &id.to_string()),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("localhost");
            format!("http://{host}/api/v1/assets/{id}")
        }
    }
}

async fn detail(
    conn: &mut PgConnection,
    state: &AppState,
    headers: &HeaderMap,
    tenant: Uuid,
    asset: Asset,
) -> Result<AssetDetail, ApiError> {
    let id = asset.id;
    // Ancestors, nearest first: the depth guard ends a (never expected) cycle.
    let mut path = sqlx::query_as::<_, AssetRef>(
        "WITH RECURSIVE up AS (
            SELECT a.id, a.name, a.parent_id, 1 AS depth FROM assets a
             WHERE a.tenant_id = $1 AND a.id = (SELECT parent_id FROM assets WHERE tenant_id = $1 AND id = $2)
            UNION ALL
            SELECT a.id, a.name, a.parent_id, up.depth + 1 FROM assets a JOIN up ON a.id = up.parent_id
             WHERE a.tenant_id = $1 AND up.depth < 1000)
         SELECT id, name FROM up ORDER BY depth",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    path.reverse();
    let children = sqlx::query_as::<_, AssetRef>(
        "SELECT id, name FROM assets WHERE tenant_id = $1 AND parent_id = $2 ORDER BY name, id",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let open_work_orders: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM work_orders
         WHERE tenant_id = $1 AND closed_at IS NULL AND asset_id IN ({SUBTREE})"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let today = Utc::now().date_naive();
    Ok(AssetDetail {
        under_warranty: asset.warranty_until.is_some_and(|w| w >= today),
        link: asset_link(state, headers, id),
        asset,
        path,
        children,
        open_work_orders,
    })
}

/// The ids of asset `$2` and every asset below it, of tenant `$1`.
pub const SUBTREE: &str = "WITH RECURSIVE subtree AS (
        SELECT id FROM assets WHERE tenant_id = $1 AND id = $2
        UNION SELECT a.id FROM assets a JOIN subtree s ON a.parent_id = s.id WHERE a.tenant_id = $1)
    SELECT id FROM subtree";

pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<AssetDetail>, ApiError> {
    auth.require(Permission::AssetsRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let asset = fetch_asset(&mut tx, tenant, id).await?;
    let detail = detail(&mut tx, &state, &headers, tenant, asset).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// Where the previous page ended (base64url of this as JSON).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
struct Cursor {
    name: String,
    id: Uuid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub site_id: Option<Uuid>,
    pub area_id: Option<Uuid>,
    /// A parent's id, or `root` for assets without a parent.
    pub parent_id: Option<String>,
    pub status: Option<String>,
    pub asset_class: Option<String>,
    /// Part of the name, serial number or model (case-insensitive).
    pub q: Option<String>,
    /// 1-500, default 100.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AssetList {
    pub items: Vec<Asset>,
    pub next_cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<AssetList>, ApiError> {
    auth.require(Permission::AssetsRead)?;
    let mut errors = FieldErrors::default();
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        errors.add("limit", "must be between 1 and 500");
    }
    let parent = match q.parent_id.as_deref() {
        None => None,
        Some("root") => Some(None),
        Some(text) => match Uuid::parse_str(text) {
            Ok(id) => Some(Some(id)),
            Err(_) => {
                errors.add("parent_id", "must be an asset id or root");
                None
            }
        },
    };
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        errors.add("status", format!("must be one of {}", STATUSES.join(", ")));
    }
    errors.check_search(q.q.as_deref());
    let cursor = q.cursor.as_deref().and_then(|c| {
        let decoded = URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok());
        if decoded.is_none() {
            errors.add("cursor", "is not a cursor this list handed out");
        }
        decoded
    });
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut query = sqlx::QueryBuilder::new(format!(
        "SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = "
    ));
    query.push_bind(tenant);
    if let Some(site) = q.site_id {
        query.push(" AND site_id = ").push_bind(site);
    }
    if let Some(area) = q.area_id {
        query.push(" AND area_id = ").push_bind(area);
    }
    match parent {
        Some(None) => {
            query.push(" AND parent_id IS NULL");
        }
        Some(Some(p)) => {
            query.push(" AND parent_id = ").push_bind(p);
        }
        None => {}
    }
    if let Some(s) = q.status {
        query.push(" AND status = ").push_bind(s);
    }
    if let Some(c) = q.asset_class {
        query.push(" AND asset_class = ").push_bind(c);
    }
    if let Some(text) = q.q.filter(|t| !t.trim().is_empty()) {
        let pattern = crate::routes::contains_pattern(&text);
        query
            .push(" AND (name ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR serial_number ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR model ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
    if let Some(c) = cursor {
        query
            .push(" AND (name, id) > (")
            .push_bind(c.name)
            .push(", ")
            .push_bind(c.id)
            .push(")");
    }
    query.push(" ORDER BY name, id LIMIT ").push_bind(limit + 1);
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let mut items: Vec<Asset> = query.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| {
            items.last().map(|a| {
                let cursor = Cursor {
                    name: a.name.clone(),
                    id: a.id,
                };
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).expect("serializes"))
            })
        })
        .flatten();
    Ok(Json(AssetList { items, next_cursor }))
}

/// The fields of an asset a create sets and a `PATCH` may change. In a `PATCH`, a field left
/// out stays; `null` clears it (where it may be empty).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetFields {
    pub name: Option<String>,
    /// Another site moves the asset with its subtree; only for an asset without a parent (a
    /// child is on its parent's site).
    pub site_id: Option<Uuid>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub parent_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub area_id: Option<Option<Uuid>>,
    pub criticality: Option<i16>,
    pub status: Option<String>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub asset_class: Option<Option<String>>,
    pub labels: Option<serde_json::Map<String, Value>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub manufacturer: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub model: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub serial_number: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub installed_on: Option<Option<NaiveDate>>,
    #[serde(default, deserialize_with = "crate::error::present")]
    pub warranty_until: Option<Option<NaiveDate>>,
}

impl AssetFields {
    /// The checks that need no database, every problem reported.
    fn check(&self, errors: &mut FieldErrors) {
        if let Some(name) = &self.name {
            check_name(errors, name);
        }
        if let Some(c) = self.criticality
            && !(1..=5).contains(&c)
        {
            errors.add("criticality", "must be 1 (least) to 5 (most critical)");
        }
        if let Some(s) = &self.status
            && !STATUSES.contains(&s.as_str())
        {
            errors.add("status", format!("must be one of {}", STATUSES.join(", ")));
        }
        if let Some(Some(class)) = &self.asset_class
            && !valid_key(class)
        {
            errors.add(
                "asset_class",
                "use 1-64 letters, digits, `.`, `_` and `-`, e.g. hydraulic-press",
            );
        }
        if let Some(labels) = &self.labels {
            for (key, value) in labels {
                let field = format!("labels.{key}");
                if !valid_key(key) {
                    errors.add(field, "keys are 1-64 letters, digits, `.`, `_` and `-`");
                } else if !value.as_str().is_some_and(|v| {
                    (1..=200).contains(&v.chars().count()) && !v.chars().any(char::is_control)
                }) {
                    errors.add(field, "values are text of 1-200 characters");
                }
            }
        }
        for (field, value) in [
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial_number", &self.serial_number),
        ] {
            if let Some(Some(v)) = value
                && v.chars().count() > 200
            {
                errors.add(field, "must be at most 200 characters");
            }
        }
        if let (Some(Some(installed)), Some(Some(warranty))) =
            (self.installed_on, self.warranty_until)
            && warranty < installed
        {
            errors.add("warranty_until", "must not be before installed_on");
        }
    }
}

/// The checks that need the database: the site, area and parent exist in the tenant, the area
/// is on the site, and the parent is not the asset or below it. Returns the site the asset is
/// on afterwards.
async fn check_place(
    conn: &mut PgConnection,
    tenant: Uuid,
    asset: Option<&Asset>,
    fields: &AssetFields,
    errors: &mut FieldErrors,
) -> Result<Option<Uuid>, ApiError> {
    let parent = match fields.parent_id {
        Some(p) => p,
        None => asset.and_then(|a| a.parent_id),
    };
    let mut site = fields.site_id.or(asset.map(|a| a.site_id));
    if let Some(parent) = parent {
        let parent_site: Option<Uuid> =
            sqlx::query_scalar("SELECT site_id FROM assets WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(parent)
                .fetch_optional(&mut *conn)
                .await?;
        match parent_site {
            None => errors.add("parent_id", "no asset with this id"),
            Some(parent_site) => {
                if fields.site_id.is_some_and(|s| s != parent_site) {
                    errors.add(
                        "site_id",
                        "an asset with a parent is on its parent's site; leave site_id out",
                    );
                }
                site = Some(parent_site);
            }
        }
        if let Some(asset) = asset
            && fields.parent_id.is_some()
        {
            let below: bool = sqlx::query_scalar(&format!("SELECT $3 IN ({SUBTREE})"))
                .bind(tenant)
                .bind(asset.id)
                .bind(parent)
                .fetch_one(&mut *conn)
                .await?;
            if below {
                errors.add(
                    "parent_id",
                    "an asset cannot move under itself or one of its own descendants",
                );
            }
        }
    } else if let Some(site_id) = fields.site_id {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sites WHERE tenant_id = $1 AND id = $2)",
        )
        .bind(tenant)
        .bind(site_id)
        .fetch_one(&mut *conn)
        .await?;
        if !known {
            errors.add("site_id", "no site with this id");
        }
    }
    if site.is_none() && !errors_mention(errors, "parent_id") {
        errors.add("site_id", "name the site, or a parent asset");
    }
    let area = match fields.area_id {
        Some(a) => a,
        None => asset.and_then(|a| a.area_id),
    };
    if let (Some(area), Some(site)) = (area, site) {
        let area_site: Option<Uuid> =
            sqlx::query_scalar("SELECT site_id FROM areas WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(area)
                .fetch_optional(&mut *conn)
                .await?;
        match area_site {
            None => errors.add("area_id", "no area with this id"),
            Some(s) if s != site => errors.add(
                "area_id",
                "the area is on another site than the asset; name an area of the asset's site, or null",
            ),
            Some(_) => {}
        }
    }
    Ok(site)
}

fn errors_mention(errors: &FieldErrors, field: &str) -> bool {
    errors.fields().any(|f| f == field)
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    headers: HeaderMap,
    Body(fields): Body<AssetFields>,
) -> Result<(StatusCode, Json<AssetDetail>), ApiError> {
    auth.require(Permission::AssetsWrite)?;
    let tenant = auth.tenant.as_uuid();
    let mut errors = FieldErrors::default();
    if fields.name.is_none() {
        errors.add("name", "is required");
    }
    fields.check(&mut errors);
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let site = check_place(&mut tx, tenant, None, &fields, &mut errors).await?;
    let name = fields.name.as_deref().unwrap_or_default().trim().to_owned();
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM assets WHERE tenant_id = $1 AND name = $2)",
    )
    .bind(tenant)
    .bind(&name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        errors.add("name", "an asset with this name exists already");
    }
    errors.finish()?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO assets (id, tenant_id, site_id, parent_id, area_id, name, criticality, status,
                             asset_class, labels, manufacturer, model, serial_number, installed_on,
                             warranty_until)
         VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, 3), coalesce($8, 'operational'), $9,
                 coalesce($10, '{}'::jsonb), $11, $12, $13, $14, $15)",
    )
    .bind(id)
    .bind(tenant)
    .bind(site)
    .bind(fields.parent_id.flatten())
    .bind(fields.area_id.flatten())
    .bind(&name)
    .bind(fields.criticality)
    .bind(&fields.status)
    .bind(fields.asset_class.clone().flatten())
    .bind(fields.labels.clone().map(Value::Object))
    .bind(fields.manufacturer.clone().flatten())
    .bind(fields.model.clone().flatten())
    .bind(fields.serial_number.clone().flatten())
    .bind(fields.installed_on.flatten())
    .bind(fields.warranty_until.flatten())
    .execute(&mut *tx)
    .await
    .map_err(|e| ApiError::unique(e, "name", "an asset with this name exists already"))?;
    let asset = fetch_asset(&mut tx, tenant, id).await?;
    let detail_json = serde_json::to_value(&asset).map_err(anyhow::Error::from)?;
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "asset.create",
        ("asset", id),
        detail_json,
    )
    .await?;
    let detail = detail(&mut tx, &state, &headers, tenant, asset).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Body(fields): Body<AssetFields>,
) -> Result<Json<AssetDetail>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Moves of one tenant's tree run one at a time: two concurrent moves could otherwise each
    // pass the cycle check and together make a cycle.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 7))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let before = fetch_asset(&mut tx, tenant, id).await?;
    auth.require(Permission::AssetsWrite)?;
    let mut errors = FieldErrors::default();
    fields.check(&mut errors);
    if fields.site_id.is_some() && fields.parent_id.is_none() && before.parent_id.is_some() {
        errors.add(
            "site_id",
            "a child asset is on its parent's site: move it (parent_id) instead",
        );
    }
    let site = check_place(&mut tx, tenant, Some(&before), &fields, &mut errors).await?;
    if let Some(name) = &fields.name {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM assets WHERE tenant_id = $1 AND name = $2 AND id <> $3)",
        )
        .bind(tenant)
        .bind(name.trim())
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            errors.add("name", "an asset with this name exists already");
        }
    }
    errors.finish()?;
    let site = site.unwrap_or(before.site_id);
    // A new site (a move across sites) takes the asset's area with it only if it is on that
    // site, which `check_place` made sure of.
    sqlx::query(
        "UPDATE assets SET
            name = coalesce($3, name),
            site_id = $4,
            parent_id = CASE WHEN $5 THEN $6 ELSE parent_id END,
            area_id = CASE WHEN $7 THEN $8 ELSE area_id END,
            criticality = coalesce($9, criticality),
            status = coalesce($10, status),
            asset_class = CASE WHEN $11 THEN $12 ELSE asset_class END,
            labels = coalesce($13, labels),
            manufacturer = CASE WHEN $14 THEN $15 ELSE manufacturer END,
            model = CASE WHEN $16 THEN $17 ELSE model END,
            serial_number = CASE WHEN $18 THEN $19 ELSE serial_number END,
            installed_on = CASE WHEN $20 THEN $21 ELSE installed_on END,
            warranty_until = CASE WHEN $22 THEN $23 ELSE warranty_until END,
            updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(fields.name.as_deref().map(str::trim))
    .bind(site)
    .bind(fields.parent_id.is_some())
    .bind(fields.parent_id.flatten())
    .bind(fields.area_id.is_some())
    .bind(fields.area_id.flatten())
    .bind(fields.criticality)
    .bind(&fields.status)
    .bind(fields.asset_class.is_some())
    .bind(fields.asset_class.clone().flatten())
    .bind(fields.labels.clone().map(Value::Object))
    .bind(fields.manufacturer.is_some())
    .bind(fields.manufacturer.clone().flatten())
    .bind(fields.model.is_some())
    .bind(fields.model.clone().flatten())
    .bind(fields.serial_number.is_some())
    .bind(fields.serial_number.clone().flatten())
    .bind(fields.installed_on.is_some())
    .bind(fields.installed_on.flatten())
    .bind(fields.warranty_until.is_some())
    .bind(fields.warranty_until.flatten())
    .execute(&mut *tx)
    .await?;
    if site != before.site_id {
        // The subtree follows to the new site; areas of the old site no longer apply.
        sqlx::query(&format!(
            "UPDATE assets SET site_id = $3, area_id = NULL, updated_at = now()
             WHERE tenant_id = $1 AND id <> $2 AND id IN ({SUBTREE})"
        ))
        .bind(tenant)
        .bind(id)
        .bind(site)
        .execute(&mut *tx)
        .await?;
    }
    let after = fetch_asset(&mut tx, tenant, id).await?;
    let (old, new) = (
        serde_json::to_value(&before).map_err(anyhow::Error::from)?,
        serde_json::to_value(&after).map_err(anyhow::Error::from)?,
    );
    let mut changes = serde_json::Map::new();
    if let (Value::Object(old), Value::Object(new)) = (&old, &new) {
        for (key, value) in new {
            if key != "updated_at" && old.get(key) != Some(value) {
                changes.insert(key.clone(), json!({ "from": old.get(key), "to": value }));
            }
        }
    }
    if !changes.is_empty() {
        let action = if changes.contains_key("parent_id") || changes.contains_key("site_id") {
            "asset.move"
        } else {
            "asset.update"
        };
        let detail = Value::Object(changes);
        audit::write_change(&mut tx, &auth, &meta, action, ("asset", id), detail).await?;
    }
    let detail = detail(&mut tx, &state, &headers, tenant, after).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

// ---------------------------------------------------------------------------------------------
// QR codes.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrQuery {
    /// Pixels per module of the PNG, 1-32 (default 8).
    pub scale: Option<u32>,
}

/// The QR code (error correction M) of an asset's link.
fn qr(link: &str) -> Result<qrcode::QrCode, ApiError> {
    qrcode::QrCode::with_error_correction_level(link.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| anyhow::anyhow!("the asset link does not fit a QR code: {e}").into())
}

async fn link_of(
    state: &AppState,
    auth: &AuthUser,
    headers: &HeaderMap,
    id: Uuid,
) -> Result<String, ApiError> {
    auth.require(Permission::AssetsRead)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    fetch_asset(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(asset_link(state, headers, id))
}

pub async fn qr_svg(
    State(state): State<AppState>,
    auth: AuthUser,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let link = link_of(&state, &auth, &headers, id).await?;
    let svg = qr(&link)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    Ok(image_response("image/svg+xml", svg.into_bytes()))
}

pub async fn qr_png(
    State(state): State<AppState>,
    auth: AuthUser,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(q): Query<QrQuery>,
) -> Result<Response, ApiError> {
    let scale = q.scale.unwrap_or(8);
    if !(1..=32).contains(&scale) {
        return Err(ApiError::field("scale", "must be 1-32 pixels per module"));
    }
    let link = link_of(&state, &auth, &headers, id).await?;
    let png = png_of(&qr(&link)?, scale).map_err(anyhow::Error::from)?;
    Ok(image_response("image/png", png))
}

fn image_response(content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    response
}

/// Modules of quiet zone around the code, as ISO/IEC 18004 asks.
const QUIET_ZONE: u32 = 4;

/// A grayscale PNG of `code`, `scale` pixels per module, with its quiet zone.
fn png_of(code: &qrcode::QrCode, scale: u32) -> Result<Vec<u8>, png::EncodingError> {
    let modules = code.width() as u32;
    let side = (modules + 2 * QUIET_ZONE) * scale;
    let colors = code.to_colors();
    let mut pixels = vec![255u8; (side * side) as usize];
    for (i, color) in colors.iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i as u32 % modules, i as u32 / modules);
        for dy in 0..scale {
            let y = (my + QUIET_ZONE) * scale + dy;
            let x = (mx + QUIET_ZONE) * scale;
            let row = (y * side + x) as usize;
            pixels[row..row + scale as usize].fill(0);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_has_the_code_s_modules_and_a_quiet_zone() {
        let code = qr("https://cmms.example.com/assets/5f0c").unwrap();
        let png = png_of(&code, 3).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let modules = code.width() as u32;
        assert_eq!(info.width, (modules + 8) * 3);
        // The quiet zone is light; the top-left finder pattern's corner module is dark.
        assert_eq!(buf[0], 255);
        let corner = ((QUIET_ZONE * 3) * info.width + QUIET_ZONE * 3) as usize;
        assert_eq!(buf[corner], 0);
        let dark = buf.iter().filter(|p| **p == 0).count();
        let dark_modules = code
            .to_colors()
            .iter()
            .filter(|c| **c == qrcode::Color::Dark)
            .count();
        assert_eq!(dark, dark_modules * 9);
    }

    #[test]
    fn asset_fields_report_every_problem() {
        let fields: AssetFields = serde_json::from_value(json!({
            "name": "",
            "criticality": 9,
            "status": "broken",
            "asset_class": "has space",
            "labels": { "line": 1, "ok": "fine", "bad key": "x" },
            "serial_number": "x".repeat(201),
            "installed_on": "2026-05-01",
            "warranty_until": "2025-05-01",
        }))
        .unwrap();
        let mut errors = FieldErrors::default();
        fields.check(&mut errors);
        let got: Vec<String> = errors.fields().map(str::to_owned).collect();
        assert_eq!(
            got,
            [
                "name",
                "criticality",
                "status",
                "asset_class",
                "labels.bad key",
                "labels.line",
                "serial_number",
                "warranty_until"
            ]
        );
    }

    #[test]
    fn patch_fields_tell_left_out_from_null() {
        let fields: AssetFields =
            serde_json::from_value(json!({ "parent_id": null, "model": "X-200" })).unwrap();
        assert_eq!(fields.parent_id, Some(None));
        assert_eq!(fields.area_id, None);
        assert_eq!(fields.model, Some(Some("X-200".to_owned())));
    }
}
