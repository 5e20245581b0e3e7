//! `GET /api/v1/reliability?from=&to=&asset_id=&subtree=&group_by=`: failures, downtime, MTTR
//! and MTBF over a period, for the whole organisation or an asset (with its subtree unless
//! `subtree=false`), grouped by asset or failure mode. Definitions in [`crate::reliability`].
//!
//! `from` and `to` are RFC 3339 (default: the last 30 days; at most 5 years). `group_by`
//! defaults to `failure_mode` for one asset and `asset` otherwise. Any role but requester.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, FieldErrors};
use crate::permissions::Permission;
use crate::reliability::{self, Failure, GroupBy, Period};
use crate::routes::assets::SUBTREE;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReliabilityQuery {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub asset_id: Option<Uuid>,
    pub subtree: Option<bool>,
    pub group_by: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
struct FailureRow {
    asset_id: Uuid,
    failure_mode: Option<String>,
    began: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
pub struct ReliabilityAnswer {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Assets in scope (their operating time is what the MTBF divides).
    pub assets: u32,
    pub group_by: &'static str,
    #[serde(flatten)]
    pub report: reliability::Report,
}

pub async fn report(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<ReliabilityQuery>,
) -> Result<Json<ReliabilityAnswer>, ApiError> {
    auth.require(Permission::ReliabilityRead)?;
    let now = Utc::now();
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to - chrono::Duration::days(30));
    let mut errors = FieldErrors::default();
    if from >= to {
        errors.add("from", "must be before to");
    } else if to - from > chrono::Duration::days(5 * 366) {
        errors.add("from", "the period may be at most 5 years");
    }
    if q.subtree.is_some() && q.asset_id.is_none() {
        errors.add("subtree", "applies only with asset_id");
    }
    let group_by = match q.group_by.as_deref() {
        None if q.asset_id.is_some() => GroupBy::FailureMode,
        None | Some("asset") => GroupBy::Asset,
        Some("failure_mode") => GroupBy::FailureMode,
        Some(_) => {
            errors.add("group_by", "must be asset or failure_mode");
            GroupBy::Asset
        }
    };
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let scope: Vec<Uuid> = match q.asset_id {
        Some(asset) if q.subtree.unwrap_or(true) => {
            sqlx::query_scalar(SUBTREE)
                .bind(tenant)
                .bind(asset)
                .fetch_all(&mut *tx)
                .await?
        }
        Some(asset) => {
            sqlx::query_scalar("SELECT id FROM assets WHERE tenant_id = $1 AND id = $2")
                .bind(tenant)
                .bind(asset)
                .fetch_all(&mut *tx)
                .await?
        }
        None => {
            sqlx::query_scalar("SELECT id FROM assets WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    if q.asset_id.is_some() && scope.is_empty() {
        return Err(ApiError::NotFound);
    }
    let rows: Vec<FailureRow> = sqlx::query_as(
        "SELECT asset_id, failure_mode, created_at AS began,
                CASE WHEN status IN ('completed', 'verified') THEN closed_at END AS ended
         FROM work_orders
         WHERE tenant_id = $1 AND asset_id = ANY($2)
           AND created_at >= $3 AND created_at < $4
           AND work_type IN ('corrective', 'emergency')
           AND status <> 'cancelled'
           AND (resolution IS NULL OR resolution NOT IN
                ('no_fault_found', 'duplicate', 'cleared_automatically'))",
    )
    .bind(tenant)
    .bind(&scope)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let failures: Vec<Failure> = rows
        .into_iter()
        .map(|r| Failure {
            asset: r.asset_id,
            failure_mode: r.failure_mode,
            began: r.began,
            ended: r.ended,
        })
        .collect();
    let assets = u32::try_from(scope.len()).unwrap_or(u32::MAX);
    let period = Period { from, to };
    Ok(Json(ReliabilityAnswer {
        from,
        to,
        assets,
        group_by: match group_by {
            GroupBy::Asset => "asset",
            GroupBy::FailureMode => "failure_mode",
        },
        report: reliability::report(&failures, period, assets, group_by, now),
    }))
}
