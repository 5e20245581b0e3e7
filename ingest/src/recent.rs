//! Recent stored readings, read back for the rules' warm-up: a fresh engine (after a restart
//! or a rule reload) is fed them so that baselines, windows and running delays carry on
//! where the previous engine left them.
//!
//! "Recent" is counted back from each tag's latest stored reading, not from the clock, so a
//! server that was down for a while still finds the history it stopped with; a tag whose
//! latest reading is older than [`LATEST_WITHIN`] has none.
//!
//! Every query runs as the application role in a tenant-scoped transaction and reads the
//! `tenant_readings` view, so row-level security scopes it to one tenant at a time. Rows are
//! streamed, never collected. Each step (a statement, the next row) waits a bounded time for
//! the database's answer, so a connection that neither answers nor breaks ends the read with
//! [`StoreError::TimedOut`] instead of holding it for good.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use model::{Quality, TenantId, Timestamp};
use rules::TagContext;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::consumer::RuleInput;
use crate::directory::{TAG_CONTEXT_QUERY, tag_context};
use crate::store::{StoreError, answered_within, release};

/// How old a tag's latest stored reading may be for its history to count as recent. It also
/// bounds the search for that reading to the newest partitions of the readings table.
pub const LATEST_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// What reading the history back found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentStats {
    pub tenants: u64,
    /// Readings handed on.
    pub readings: u64,
    /// Rows with a quality code no reading can have: left out.
    pub bad_quality_codes: u64,
}

/// Hands `each` the stored readings of the last `span` before each tag's latest one (if that
/// is no older than [`LATEST_WITHIN`] before `now`), for every tag linked to an asset (only
/// those are evaluated), tenant after tenant, each tenant's in event-time order (tag id among
/// equal times). Tags created while this runs are left out. Each step waits at most `step`
/// for the database, but a tenant's first row of readings, which comes only once the
/// database has sorted them all, `first_row`: then the read ends with
/// [`StoreError::TimedOut`] and its connection is closed rather than handed back to the
/// pool, where its statement could hold it (the readings handed on so far stay handed on; a
/// caller that tries again starts from fresh engines).
pub async fn recent_readings(
    pool: &PgPool,
    now: Timestamp,
    span: Duration,
    step: Duration,
    first_row: Duration,
    mut each: impl FnMut(RuleInput),
) -> Result<RecentStats, StoreError> {
    let mut conn = answered_within(step, pool.acquire()).await?;
    let read = read_recent(&mut conn, now, span, (step, first_row), &mut each).await;
    release(conn, &read);
    read
}

async fn read_recent(
    conn: &mut PgConnection,
    now: Timestamp,
    span: Duration,
    (step, first_row): (Duration, Duration),
    each: &mut impl FnMut(RuleInput),
) -> Result<RecentStats, StoreError> {
    let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    let latest_since = now.plus_micros(-micros(LATEST_WITHIN));
    let latest_since: DateTime<Utc> = latest_since
        .to_datetime()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let tenants: Vec<Uuid> = answered_within(
        step,
        sqlx::query_scalar("SELECT id FROM tenants ORDER BY id").fetch_all(&mut *conn),
    )
    .await?;
    let mut stats = RecentStats::default();
    for tenant in tenants {
        stats.tenants += 1;
        let mut tx = answered_within(step, migrations::begin_tenant_on(conn, tenant)).await?;
        let tag_query = format!("{TAG_CONTEXT_QUERY} WHERE t.asset_id IS NOT NULL ORDER BY t.id");
        let rows = answered_within(step, sqlx::query(&tag_query).fetch_all(&mut *tx)).await?;
        let mut tags: HashMap<i64, Arc<TagContext>> = HashMap::with_capacity(rows.len());
        for row in &rows {
            if let Some(ctx) = tag_context(row, TenantId::from_uuid(tenant))? {
                tags.insert(ctx.tag_id, Arc::new(ctx));
            }
        }
        if !tags.is_empty() {
            let ids: Vec<i64> = tags.keys().copied().collect();
            // The latest reading of each tag is one probe of the (tag_id, ts) index per recent
            // partition; its span back is a range scan of the same index.
            let mut readings = sqlx::query(
                "WITH latest AS (
                     SELECT t.id AS tag_id,
                            (SELECT max(r.ts) FROM tenant_readings r
                             WHERE r.tag_id = t.id AND r.ts >= $1) AS last
                     FROM unnest($2::bigint[]) AS t(id)
                 )
                 SELECT r.tag_id, r.ts, r.value, r.quality
                 FROM latest l
                 JOIN tenant_readings r ON r.tag_id = l.tag_id
                     AND r.ts >= l.last - $3 * interval '1 microsecond'
                 ORDER BY r.ts, r.tag_id",
            )
            .bind(latest_since)
            .bind(&ids)
            .bind(micros(span))
            .fetch(&mut *tx);
            let mut wait = first_row;
            while let Some(row) = answered_within(wait, readings.try_next()).await? {
                wait = step;
                let tag_id: i64 = row.try_get(0)?;
                let ts: DateTime<Utc> = row.try_get(1)?;
                let code: i16 = row.try_get(3)?;
                // The query names only these tags.
                let Some(ctx) = tags.get(&tag_id) else {
                    continue;
                };
                let Some(quality) = u8::try_from(code).ok().and_then(Quality::from_u8) else {
                    stats.bad_quality_codes += 1;
                    continue;
                };
                each(RuleInput {
                    ctx: Arc::clone(ctx),
                    ts: Timestamp::from_datetime(ts),
                    value: row.try_get(2)?,
                    quality,
                });
                stats.readings += 1;
            }
        }
        answered_within(step, tx.commit()).await?;
    }
    Ok(stats)
}
