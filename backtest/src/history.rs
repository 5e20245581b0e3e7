//! One tenant's history from PostgreSQL: its tags, its readings of a window in event-time
//! order, and its past work orders.
//!
//! Everything runs as the application role inside [`migrations::begin_tenant`]: readings are
//! read through the `tenant_readings` view, never from `readings`, so row-level security
//! scopes every query to the tenant. Readings are streamed row by row into a
//! [`ReadingSink`]; no query result is collected whole except the tags and the work orders,
//! which are few.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use ingest::directory::{TAG_CONTEXT_QUERY, tag_context};
use model::{AssetId, Quality, TenantId, Timestamp};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::BacktestError;
use crate::analysis::PastWorkOrder;
use crate::replay::{HistoryReading, ReadingSink, Tags, Window};

/// How far a history has been read, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub readings: u64,
    /// The event time reached.
    pub at: Timestamp,
    pub window: Window,
}

impl Progress {
    /// The part of the window read so far, 0 to 1.
    pub fn fraction(&self) -> f64 {
        let span = self.window.to().micros_since(self.window.from()) as f64;
        let done = self.at.micros_since(self.window.from()) as f64;
        (done / span).clamp(0.0, 1.0)
    }
}

/// How often (in readings) progress is reported.
pub const PROGRESS_EVERY: u64 = 1 << 16;

/// What streaming a history met besides the readings it handed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Readings handed to the sink.
    pub readings: u64,
    /// Readings of tags created after the tags were loaded: skipped.
    pub unknown_tags: u64,
}

pub(crate) fn datetime(ts: Timestamp) -> Result<DateTime<Utc>, BacktestError> {
    ts.to_datetime().ok_or_else(|| BacktestError::BadWindow {
        reason: format!("{ts} is outside the range of dates the database stores"),
    })
}

/// The tenant with slug `slug`.
pub async fn tenant_by_slug(pool: &PgPool, slug: &str) -> Result<TenantId, BacktestError> {
    // Any tenant's id can be found by its slug without a tenant set (see the foundation
    // migration): that is how a login names its organisation.
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = $1")
        .bind(slug)
        .fetch_optional(pool)
        .await?;
    id.map(TenantId::from_uuid)
        .ok_or_else(|| BacktestError::UnknownTenant { slug: slug.into() })
}

/// Every tag of the tenant, with what the engine needs to know of it.
pub async fn load_tags(pool: &PgPool, tenant: TenantId) -> Result<Tags, BacktestError> {
    let mut tx = migrations::begin_tenant(pool, tenant.as_uuid()).await?;
    let rows = sqlx::query(&format!("{TAG_CONTEXT_QUERY} ORDER BY t.id"))
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut tags = Tags::new();
    for row in &rows {
        // A name no gateway could send has no readings to replay.
        if let Some(ctx) = tag_context(row, tenant)? {
            tags.insert(ctx);
        }
    }
    Ok(tags)
}

/// Streams the tenant's readings of `window` into `sink`, ordered by event time (and tag id
/// among readings of the same time, so that every run and every export sees one order).
pub async fn stream_readings<S: ReadingSink>(
    pool: &PgPool,
    tenant: TenantId,
    tags: &Tags,
    window: Window,
    sink: &mut S,
    progress: &mut dyn FnMut(Progress),
) -> Result<StreamStats, BacktestError> {
    let mut tx = migrations::begin_tenant(pool, tenant.as_uuid()).await?;
    let mut stats = StreamStats::default();
    {
        let mut rows = sqlx::query(
            "SELECT tag_id, ts, value, quality FROM tenant_readings
             WHERE ts >= $1 AND ts < $2
             ORDER BY ts, tag_id",
        )
        .bind(datetime(window.from())?)
        .bind(datetime(window.to())?)
        .fetch(&mut *tx);
        let mut at = window.from();
        while let Some(row) = rows.try_next().await? {
            let tag_id: i64 = row.try_get(0)?;
            let ts: DateTime<Utc> = row.try_get(1)?;
            let value: f64 = row.try_get(2)?;
            let code: i16 = row.try_get(3)?;
            let Some(tag) = tags.index_of(tag_id) else {
                stats.unknown_tags += 1;
                continue;
            };
            let quality = u8::try_from(code).ok().and_then(Quality::from_u8).ok_or(
                BacktestError::BadQualityCode {
                    tag_id,
                    code: i64::from(code),
                },
            )?;
            at = Timestamp::from_datetime(ts);
            sink.push(HistoryReading {
                tag,
                ts: at,
                value,
                quality,
            })?;
            stats.readings += 1;
            if stats.readings.is_multiple_of(PROGRESS_EVERY) {
                progress(Progress {
                    readings: stats.readings,
                    at,
                    window,
                });
            }
        }
        progress(Progress {
            readings: stats.readings,
            at: at.max(window.to()),
            window,
        });
    }
    tx.commit().await?;
    Ok(stats)
}

/// The span of creation times of the past work orders a backtest of `window` can match:
/// the window widened by the match window on both sides.
pub fn work_order_reach(window: Window, match_window: Duration) -> (Timestamp, Timestamp) {
    let margin = i64::try_from(match_window.as_micros()).unwrap_or(i64::MAX);
    (
        window.from().plus_micros(margin.saturating_neg()),
        window.to().plus_micros(margin),
    )
}

/// The tenant's work orders with a failure mode created within `reach` (see
/// [`work_order_reach`]), oldest first.
pub async fn past_work_orders(
    pool: &PgPool,
    tenant: TenantId,
    reach: (Timestamp, Timestamp),
) -> Result<Vec<PastWorkOrder>, BacktestError> {
    let mut tx = migrations::begin_tenant(pool, tenant.as_uuid()).await?;
    let rows = sqlx::query(
        "SELECT id, asset_id, failure_mode, created_at, status, resolution FROM work_orders
         WHERE failure_mode IS NOT NULL AND created_at >= $1 AND created_at < $2
         ORDER BY created_at, id",
    )
    .bind(datetime(reach.0)?)
    .bind(datetime(reach.1)?)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|row| {
            Ok(PastWorkOrder {
                id: row.try_get("id")?,
                asset: AssetId::from_uuid(row.try_get("asset_id")?),
                failure_mode: row.try_get("failure_mode")?,
                created_at: Timestamp::from_datetime(row.try_get("created_at")?),
                status: row.try_get("status")?,
                resolution: row.try_get("resolution")?,
            })
        })
        .collect()
}
