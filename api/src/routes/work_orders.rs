//! `GET /api/v1/work-orders` and `GET /api/v1/work-orders/{id}`.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

use crate::api_keys::Scope;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::users::ROLES;

#[derive(Debug, Serialize, FromRow)]
pub struct WorkOrder {
    pub id: Uuid,
    pub asset_id: Uuid,
    pub title: String,
    pub description: String,
    pub priority: String,
    pub status: String,
    pub work_type: String,
    pub failure_mode: Option<String>,
    pub source: String,
    pub rule_id: Option<String>,
    pub alarm_id: Option<Uuid>,
    /// How a closed work order ended, e.g. `cleared_automatically`.
    pub resolution: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
    /// When it closes by itself if the condition stays clear and nobody starts on it.
    pub auto_close_at: Option<DateTime<Utc>>,
    /// The earlier work order of the same failure mode when this one is a repeat failure.
    pub repeat_of: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, FromRow)]
pub struct WorkOrderEvent {
    pub kind: String,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct WorkOrderDetail {
    #[serde(flatten)]
    pub work_order: WorkOrder,
    pub events: Vec<WorkOrderEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WorkOrderList {
    pub items: Vec<WorkOrder>,
}

const COLUMNS: &str = "id, asset_id, title, description, priority, status, work_type, failure_mode, \
                       source, rule_id, alarm_id, resolution, closed_at, auto_close_at, repeat_of, \
                       created_at, updated_at";

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<WorkOrderList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let auth = caller.require_scope(Scope::WorkOrdersRead, ROLES)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let items = sqlx::query_as::<_, WorkOrder>(&format!(
        "SELECT {COLUMNS} FROM work_orders
         WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY created_at DESC, id LIMIT $3"
    ))
    .bind(tenant)
    .bind(q.status)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(WorkOrderList { items }))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<WorkOrderDetail>, ApiError> {
    let auth = caller.require_scope(Scope::WorkOrdersRead, ROLES)?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let work_order = sqlx::query_as::<_, WorkOrder>(&format!(
        "SELECT {COLUMNS} FROM work_orders WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    let events = sqlx::query_as::<_, WorkOrderEvent>(
        "SELECT kind, detail, at FROM work_order_events
         WHERE tenant_id = $1 AND work_order_id = $2 ORDER BY id",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(WorkOrderDetail { work_order, events }))
}
