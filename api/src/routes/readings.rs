//! Readings of tags over a time window, raw or in time buckets, never more than a set number of
//! points per series. The endpoints and their rules are in `docs/READINGS-API.md`; in short:
//!
//! - `GET /api/v1/tags/{id}/readings?from=&to=&bucket=&max_points=`: one tag's series.
//! - `GET /api/v1/assets/{id}/readings?from=&to=&bucket=&max_points=&tag=`: one series per tag
//!   of the asset, by tag name.
//!
//! Readings carry no tenant: they are read only through the view `tenant_readings`, in a
//! transaction scoped to the caller's tenant, and every query names the tenant as well. Another
//! tenant's tag or asset answers 404, as one that does not exist. Whether a series is answered
//! raw or in buckets, and how wide, is decided by [`resolve`], which does no I/O. Any role may
//! read; API keys may not.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use model::Quality;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, FieldErrors};
use crate::permissions::Permission;

const DEFAULT_MAX_POINTS: u32 = 1000;
const MAX_POINTS: u32 = 10_000;
const DEFAULT_WINDOW_HOURS: i64 = 24;
/// The longest window, and the widest bucket: 366 days.
const MAX_SPAN_SECONDS: u64 = 366 * 86_400;
/// The most series one asset request answers: each may hold `max_points` points.
const MAX_TAGS: i64 = 100;
const MICROS_PER_SECOND: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------
// Choosing how a series is answered (pure).

/// `[from, to)` to the microsecond (what PostgreSQL keeps): not before the epoch, `from`
/// before `to`, at most 366 days long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Microseconds since the epoch, for the bucket arithmetic.
    from_us: u64,
    to_us: u64,
}

impl Window {
    /// The window, or what is wrong with `from` (the parameter the fix usually belongs to).
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Window, &'static str> {
        let (from, to) = (from.trunc_subsecs(6), to.trunc_subsecs(6));
        let from_us = u64::try_from(from.timestamp_micros())
            .map_err(|_| "must not be before 1970-01-01T00:00:00Z")?;
        let to_us = u64::try_from(to.timestamp_micros()).map_err(|_| "must be before to")?;
        if from_us >= to_us {
            return Err("must be before to");
        }
        if to_us - from_us > MAX_SPAN_SECONDS * MICROS_PER_SECOND {
            return Err("the window may be at most 366 days long");
        }
        Ok(Window {
            from,
            to,
            from_us,
            to_us,
        })
    }

    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    fn span_us(&self) -> u64 {
        self.to_us - self.from_us
    }
}

/// What the request asked for with `bucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Left out: raw when the readings fit, else buckets as narrow as fit.
    Auto,
    /// `raw`: the readings themselves, the first `max_points` of them.
    Raw,
    /// A width in whole seconds, e.g. `5m`.
    Width(u64),
}

impl Requested {
    /// `raw`, or a duration of whole seconds from 1 s to 366 days in humantime's notation.
    pub fn parse(s: &str) -> Result<Requested, &'static str> {
        const WHAT: &str = "must be raw or a duration of whole seconds such as 30s, 5m or 1h";
        if s == "raw" {
            return Ok(Requested::Raw);
        }
        let width = humantime::parse_duration(s).map_err(|_| WHAT)?;
        if width.subsec_nanos() != 0 || width.as_secs() == 0 {
            return Err(WHAT);
        }
        if width > Duration::from_secs(MAX_SPAN_SECONDS) {
            return Err("must be at most 366d");
        }
        Ok(Requested::Width(width.as_secs()))
    }
}

/// How a series is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Raw,
    /// Buckets of this many seconds, aligned to the epoch.
    Buckets {
        seconds: u64,
    },
}

/// The narrowest whole-second width that cuts `window` into at most `max_points` equal parts:
/// `ceil(span / max_points)`, rounded up to a whole second. An explicit `bucket` narrower than
/// this is refused.
pub fn min_width(window: Window, max_points: u32) -> u64 {
    window
        .span_us()
        .div_ceil(u64::from(max_points.max(1)) * MICROS_PER_SECOND)
}

/// How many buckets of `seconds`, aligned to the epoch as `date_bin` aligns them, `window`
/// touches.
pub fn aligned_buckets(window: Window, seconds: u64) -> u64 {
    let width = seconds.max(1) * MICROS_PER_SECOND;
    (window.to_us - 1) / width - window.from_us / width + 1
}

/// The width of automatic buckets: the narrowest whole-second width, at least
/// [`min_width`], whose epoch-aligned buckets over `window` number at most `max_points`.
///
/// [`min_width`] alone may miss by one: a window that does not start on a bucket boundary
/// touches one more bucket than it spans. With `from` in bucket `k`, `max_points` buckets of
/// width `w` reach `to` when `to - 1 < (k + max_points) * w`; each step widens to the narrowest
/// width that meets this for the current `k`. Every width skipped is too narrow (a wider one
/// puts `from` in bucket `k` or before, which asks for more), so the result is the narrowest
/// that fits; `k` falls at every step that does not end, so the search ends.
fn auto_width(window: Window, max_points: u32) -> u64 {
    let mut seconds = min_width(window, max_points).max(1);
    let max_points = u64::from(max_points.max(1));
    loop {
        let k = window.from_us / (seconds * MICROS_PER_SECOND);
        let needed = ((window.to_us - 1) / (k + max_points) + 1).div_ceil(MICROS_PER_SECOND);
        if needed <= seconds {
            return seconds;
        }
        seconds = needed;
    }
}

/// How to answer a series over `window`. `readings` is the number of readings in the window,
/// counted up to at least `max_points + 1`; only [`Requested::Auto`] looks at it. An explicit
/// width is taken as it is: the request was refused if it was narrower than [`min_width`].
pub fn resolve(requested: Requested, window: Window, readings: u64, max_points: u32) -> Resolution {
    match requested {
        Requested::Raw => Resolution::Raw,
        Requested::Width(seconds) => Resolution::Buckets { seconds },
        Requested::Auto if readings <= u64::from(max_points) => Resolution::Raw,
        Requested::Auto => Resolution::Buckets {
            seconds: auto_width(window, max_points),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The request.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagReadingsQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub bucket: Option<String>,
    pub max_points: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetReadingsQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub bucket: Option<String>,
    pub max_points: Option<String>,
    /// One tag of the asset, by its exact name.
    pub tag: Option<String>,
}

/// The parameters every series of a request shares, all checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Params {
    window: Window,
    max_points: u32,
    requested: Requested,
}

impl Params {
    /// Parses the shared parameters; `errors` may hold problems of other parameters already,
    /// and every problem is answered at once.
    fn parse(
        from: Option<&str>,
        to: Option<&str>,
        bucket: Option<&str>,
        max_points: Option<&str>,
        now: DateTime<Utc>,
        mut errors: FieldErrors,
    ) -> Result<Params, ApiError> {
        let from = from
            .map(parse_time)
            .transpose()
            .map_err(|m| errors.add("from", m))
            .ok();
        let to = to
            .map(parse_time)
            .transpose()
            .map_err(|m| errors.add("to", m))
            .ok();
        let window = match (from, to) {
            (Some(from), Some(to)) => {
                let to = to.unwrap_or(now);
                let from = from.unwrap_or(to - TimeDelta::hours(DEFAULT_WINDOW_HOURS));
                Window::new(from, to)
                    .map_err(|m| errors.add("from", m))
                    .ok()
            }
            _ => None,
        };
        let max_points = match max_points {
            None => Some(DEFAULT_MAX_POINTS),
            Some(s) => {
                let n = s.parse().ok().filter(|n| (1..=MAX_POINTS).contains(n));
                if n.is_none() {
                    errors.add("max_points", "must be a whole number from 1 to 10000");
                }
                n
            }
        };
        let requested = bucket
            .map_or(Ok(Requested::Auto), Requested::parse)
            .map_err(|m| errors.add("bucket", m))
            .ok();
        if let (Some(window), Some(max_points), Some(Requested::Width(seconds))) =
            (window, max_points, requested)
        {
            let least = min_width(window, max_points);
            if seconds < least {
                errors.add(
                    "bucket",
                    format!(
                        "too narrow for this window: at most {max_points} buckets (max_points) \
                         fit, so it must be at least {}",
                        humantime::format_duration(Duration::from_secs(least))
                    ),
                );
            }
        }
        errors.finish()?;
        let (Some(window), Some(max_points), Some(requested)) = (window, max_points, requested)
        else {
            unreachable!("a parameter that did not parse added its problem to the errors");
        };
        Ok(Params {
            window,
            max_points,
            requested,
        })
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, &'static str> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(
            |_| "must be an RFC 3339 time such as 2026-11-22T06:00:00Z (write a + offset as %2B)",
        )
}

// ---------------------------------------------------------------------------------------------
// The answer.

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Tag {
    pub id: i64,
    pub name: String,
    pub unit: Option<String>,
    pub asset_id: Option<Uuid>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub tag: Tag,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// `raw` or `buckets`.
    pub mode: &'static str,
    /// The buckets' width; `null` when raw.
    pub bucket_seconds: Option<u64>,
    pub points: Points,
    /// More points lie in the window than were answered: ask again from `next_from`.
    pub truncated: bool,
    pub next_from: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Points {
    Raw(Vec<RawPoint>),
    Buckets(Vec<Bucket>),
}

#[derive(Debug, Serialize)]
pub struct RawPoint {
    pub ts: DateTime<Utc>,
    pub value: f64,
    /// `good`, `uncertain` or `bad`.
    pub quality: &'static str,
}

#[derive(Debug, FromRow)]
struct RawRow {
    ts: DateTime<Utc>,
    value: f64,
    quality: i16,
}

impl From<RawRow> for RawPoint {
    fn from(row: RawRow) -> Self {
        let quality = u8::try_from(row.quality)
            .ok()
            .and_then(Quality::from_u8)
            .map_or("unknown", Quality::as_str);
        RawPoint {
            ts: row.ts,
            value: row.value,
            quality,
        }
    }
}

/// The readings of one bucket, whatever their quality.
#[derive(Debug, Serialize, FromRow)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    /// The value of the latest reading in the bucket.
    pub last: f64,
    pub count: i64,
    /// Readings whose quality is not good (uncertain or bad).
    pub bad: i64,
}

#[derive(Debug, Serialize)]
pub struct AssetReadings {
    pub asset_id: Uuid,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// One per tag of the asset, by name.
    pub series: Vec<Series>,
}

// ---------------------------------------------------------------------------------------------
// Handlers.

pub async fn tag_readings(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<i64>,
    Query(q): Query<TagReadingsQuery>,
) -> Result<Json<Series>, ApiError> {
    auth.require(Permission::ReadingsRead)?;
    let params = Params::parse(
        q.from.as_deref(),
        q.to.as_deref(),
        q.bucket.as_deref(),
        q.max_points.as_deref(),
        Utc::now(),
        FieldErrors::default(),
    )?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let tag = sqlx::query_as::<_, Tag>(
        "SELECT id, name, unit, asset_id FROM tags WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound)?;
    let series = series(&mut tx, tenant, tag, params).await?;
    tx.commit().await?;
    Ok(Json(series))
}

pub async fn asset_readings(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<AssetReadingsQuery>,
) -> Result<Json<AssetReadings>, ApiError> {
    auth.require(Permission::ReadingsRead)?;
    let mut errors = FieldErrors::default();
    if let Some(name) = &q.tag
        && !(1..=128).contains(&name.chars().count())
    {
        errors.add("tag", "must be a tag name of 1-128 characters");
    }
    let params = Params::parse(
        q.from.as_deref(),
        q.to.as_deref(),
        q.bucket.as_deref(),
        q.max_points.as_deref(),
        Utc::now(),
        errors,
    )?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM assets WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    found.ok_or(ApiError::NotFound)?;
    let tags = sqlx::query_as::<_, Tag>(
        "SELECT id, name, unit, asset_id FROM tags
         WHERE tenant_id = $1 AND asset_id = $2 AND ($3::text IS NULL OR name = $3)
         ORDER BY name, id LIMIT $4",
    )
    .bind(tenant)
    .bind(id)
    .bind(&q.tag)
    .bind(MAX_TAGS + 1)
    .fetch_all(&mut *tx)
    .await?;
    if i64::try_from(tags.len()).unwrap_or(i64::MAX) > MAX_TAGS {
        return Err(ApiError::field(
            "tag",
            format!("the asset has more than {MAX_TAGS} tags: name the one to read"),
        ));
    }
    let mut all = Vec::with_capacity(tags.len());
    for tag in tags {
        all.push(series(&mut tx, tenant, tag, params).await?);
    }
    tx.commit().await?;
    Ok(Json(AssetReadings {
        asset_id: id,
        from: params.window.from(),
        to: params.window.to(),
        series: all,
    }))
}

// ---------------------------------------------------------------------------------------------
// Queries. Each filters by tag and time range, which the covering index `readings_tag_ts
// (tag_id, ts DESC) INCLUDE (value, quality)` answers alone (an index-only scan), and by
// tenant through the tag, on top of the view's row-level security.

/// The readings in a window, counted up to a limit (public for the history benchmark's plans).
pub const COUNT_SQL: &str = "SELECT count(*) FROM (
        SELECT 1 FROM tenant_readings r JOIN tags t ON t.id = r.tag_id
        WHERE t.tenant_id = $1 AND r.tag_id = $2 AND r.ts >= $3 AND r.ts < $4
        LIMIT $5) bounded";

const RAW: &str = "SELECT r.ts, r.value, r.quality
    FROM tenant_readings r JOIN tags t ON t.id = r.tag_id
    WHERE t.tenant_id = $1 AND r.tag_id = $2 AND r.ts >= $3 AND r.ts < $4
    ORDER BY r.ts LIMIT $5";

/// Settings of the bucket query, for this transaction only: memory to group a day of
/// one-second readings in a hash table, no sort of the window's readings for the grouping
/// (the planner cannot know how few buckets `date_bin` makes and would sort every reading;
/// only the buckets are sorted then), and a plan made for this window and bucket width
/// rather than a generic one cached by the connection. Measured with `history-bench`
/// (BENCHMARKS.md).
pub const BUCKETS_SETTINGS: &str = "SELECT set_config('work_mem', '32MB', true),
            set_config('enable_sort', 'off', true),
            set_config('plan_cache_mode', 'force_custom_plan', true)";

/// One tag's window in time buckets (public for the history benchmark's plans). The buckets
/// are aggregated in one pass (hashed, no sort of the window's readings) keeping each one's
/// latest time; the value at that time is then looked up by index, once per bucket. Measured
/// with `history-bench` against taking the last value with `array_agg(... ORDER BY ts DESC)`,
/// which sorts every bucket's readings (BENCHMARKS.md).
pub const BUCKETS_SQL: &str = "
    WITH b AS (
        SELECT date_bin($6::bigint * interval '1 second', r.ts, 'epoch'::timestamptz) AS start,
               min(r.value) AS min, max(r.value) AS max, avg(r.value) AS avg,
               max(r.ts) AS last_ts,
               count(*) AS count,
               count(*) FILTER (WHERE r.quality <> $7) AS bad
        FROM tenant_readings r
        WHERE r.tag_id = $2 AND r.ts >= $3 AND r.ts < $4
          AND EXISTS (SELECT 1 FROM tags t WHERE t.id = $2 AND t.tenant_id = $1)
        GROUP BY start)
    SELECT b.start, b.min, b.max, b.avg, l.value AS last, b.count, b.bad
    FROM (SELECT * FROM b ORDER BY start LIMIT $5) b
    CROSS JOIN LATERAL (
        SELECT r.value FROM tenant_readings r
        WHERE r.tag_id = $2 AND r.ts = b.last_ts
        LIMIT 1) l
    ORDER BY b.start";

/// One tag's series over the window: counts the readings first when the resolution depends on
/// them, then reads at most `max_points + 1` points, the last of which only says where to go
/// on.
async fn series(
    conn: &mut PgConnection,
    tenant: Uuid,
    tag: Tag,
    params: Params,
) -> Result<Series, ApiError> {
    let Params {
        window,
        max_points,
        requested,
    } = params;
    let one_more = i64::from(max_points) + 1;
    let readings = match requested {
        Requested::Auto => {
            let n: i64 = sqlx::query_scalar(COUNT_SQL)
                .bind(tenant)
                .bind(tag.id)
                .bind(window.from())
                .bind(window.to())
                .bind(one_more)
                .fetch_one(&mut *conn)
                .await?;
            u64::try_from(n).unwrap_or(0)
        }
        Requested::Raw | Requested::Width(_) => 0,
    };
    let cap = usize::try_from(max_points).unwrap_or(usize::MAX);
    let resolution = resolve(requested, window, readings, max_points);
    let (points, next_from, bucket_seconds) = match resolution {
        Resolution::Raw => {
            let mut rows: Vec<RawRow> = sqlx::query_as(RAW)
                .bind(tenant)
                .bind(tag.id)
                .bind(window.from())
                .bind(window.to())
                .bind(one_more)
                .fetch_all(&mut *conn)
                .await?;
            let next_from = cut(&mut rows, cap, |r| r.ts);
            let points = rows.into_iter().map(RawPoint::from).collect();
            (Points::Raw(points), next_from, None)
        }
        Resolution::Buckets { seconds } => {
            sqlx::query(BUCKETS_SETTINGS).execute(&mut *conn).await?;
            let mut rows: Vec<Bucket> = sqlx::query_as(BUCKETS_SQL)
                .bind(tenant)
                .bind(tag.id)
                .bind(window.from())
                .bind(window.to())
                .bind(one_more)
                .bind(i64::try_from(seconds).unwrap_or(i64::MAX))
                .bind(i16::from(Quality::Good.as_u8()))
                .fetch_all(&mut *conn)
                .await?;
            let next_from = cut(&mut rows, cap, |b| b.start);
            (Points::Buckets(rows), next_from, Some(seconds))
        }
    };
    Ok(Series {
        tag,
        from: window.from(),
        to: window.to(),
        mode: match resolution {
            Resolution::Raw => "raw",
            Resolution::Buckets { .. } => "buckets",
        },
        bucket_seconds,
        points,
        truncated: next_from.is_some(),
        next_from,
    })
}

/// Keeps the first `cap` points; when there were more, the time of the first one left out,
/// where the next request starts.
fn cut<T>(
    points: &mut Vec<T>,
    cap: usize,
    at: impl Fn(&T) -> DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let next = points.get(cap).map(at);
    points.truncate(cap);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("in range")
    }

    fn window(from: i64, to: i64) -> Window {
        Window::new(at(from), at(to)).expect("valid window")
    }

    const T0: i64 = 1_740_787_200; // 2025-03-01T00:00:00Z

    #[test]
    fn windows_are_ordered_after_the_epoch_and_at_most_366_days() {
        assert!(Window::new(at(T0), at(T0 + 1)).is_ok());
        assert_eq!(Window::new(at(T0), at(T0)), Err("must be before to"));
        assert_eq!(Window::new(at(T0 + 1), at(T0)), Err("must be before to"));
        assert!(Window::new(at(-1), at(T0)).is_err());
        assert!(Window::new(at(0), at(86_400)).is_ok());
        let year = 366 * 86_400;
        assert!(Window::new(at(T0), at(T0 + year)).is_ok());
        assert!(Window::new(at(T0), at(T0 + year + 1)).is_err());
    }

    #[test]
    fn windows_keep_microseconds_only() {
        let from = at(T0) + TimeDelta::nanoseconds(1_500);
        let w = Window::new(from, at(T0 + 1)).expect("valid");
        assert_eq!(w.from(), at(T0) + TimeDelta::microseconds(1));
    }

    #[test]
    fn bucket_parameter_is_raw_or_whole_seconds() {
        assert_eq!(Requested::parse("raw"), Ok(Requested::Raw));
        assert_eq!(Requested::parse("5m"), Ok(Requested::Width(300)));
        assert_eq!(Requested::parse("1h 30m"), Ok(Requested::Width(5400)));
        assert_eq!(Requested::parse("1s"), Ok(Requested::Width(1)));
        assert_eq!(Requested::parse("366d"), Ok(Requested::Width(366 * 86_400)));
        for bad in ["", "RAW", "5", "500ms", "1.5s", "0s", "-5m", "367d", "soon"] {
            assert!(Requested::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn min_width_is_the_span_over_max_points_rounded_up_to_a_second() {
        for (span, max_points, expected) in [
            (3000, 1000, 3),
            (3001, 1000, 4),
            (3000, 100, 30),
            (999, 1000, 1),
            (1, 1, 1),
            (86_400, 1, 86_400),
            (366 * 86_400, 10_000, 3163),
        ] {
            assert_eq!(
                min_width(window(T0, T0 + span), max_points),
                expected,
                "{span} s in {max_points}"
            );
        }
        // Sub-second spans still get a whole second.
        let w = Window::new(at(T0), at(T0) + TimeDelta::milliseconds(1)).expect("valid");
        assert_eq!(min_width(w, 10), 1);
    }

    #[test]
    fn aligned_buckets_count_partial_buckets_at_both_ends() {
        assert_eq!(aligned_buckets(window(T0, T0 + 3000), 30), 100);
        assert_eq!(aligned_buckets(window(T0 + 15, T0 + 3015), 30), 101);
        assert_eq!(aligned_buckets(window(T0 + 15, T0 + 3000), 30), 100);
        assert_eq!(aligned_buckets(window(T0, T0 + 1), 60), 1);
    }

    #[test]
    fn resolution_follows_the_request_and_the_readings() {
        let w = window(T0, T0 + 3000);
        for (requested, readings, max_points, expected) in [
            (Requested::Auto, 0, 1000, Resolution::Raw),
            (Requested::Auto, 1000, 1000, Resolution::Raw),
            (
                Requested::Auto,
                1001,
                1000,
                Resolution::Buckets { seconds: 3 },
            ),
            (
                Requested::Auto,
                101,
                100,
                Resolution::Buckets { seconds: 30 },
            ),
            (Requested::Raw, 5000, 10, Resolution::Raw),
            (
                Requested::Width(60),
                0,
                1000,
                Resolution::Buckets { seconds: 60 },
            ),
        ] {
            assert_eq!(
                resolve(requested, w, readings, max_points),
                expected,
                "{requested:?} {readings} {max_points}"
            );
        }
        // Off the bucket grid, 30 s buckets would be 101: the next width that fits is taken.
        let off = window(T0 + 15, T0 + 3015);
        let Resolution::Buckets { seconds } = resolve(Requested::Auto, off, 101, 100) else {
            panic!("buckets expected");
        };
        assert!(seconds > 30);
        assert!(aligned_buckets(off, seconds) <= 100);
    }

    /// Over many windows and point limits: automatic buckets never exceed the limit, and no
    /// narrower width from `min_width` on would have fitted.
    #[test]
    fn automatic_width_is_the_narrowest_that_fits() {
        let check = |w: Window, max_points: u32| {
            let seconds = auto_width(w, max_points);
            let least = min_width(w, max_points).max(1);
            assert!(seconds >= least);
            let fits = |s| aligned_buckets(w, s) <= u64::from(max_points);
            assert!(fits(seconds), "{w:?} {max_points}");
            assert!(!(least..seconds).any(fits), "{w:?} {max_points}");
            seconds
        };
        // Around a midnight that many widths divide, one point must take both sides.
        let seconds = check(window(T0 - 1, T0 + 1), 1);
        assert!(seconds > 2 && aligned_buckets(window(T0 - 1, T0 + 1), seconds) == 1);
        assert_eq!(check(window(0, 10), 1), 10);
        assert_eq!(check(window(T0, T0 + 3000), 100), 30);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        let t0 = u64::try_from(T0).expect("positive");
        for _ in 0..2000 {
            let from_us = (t0 + next(10_000_000)) * 1_000_000 + next(1_000_000);
            let span_us = 1 + next(366 * 86_400 * 1_000_000);
            let from = DateTime::from_timestamp_micros(i64::try_from(from_us).expect("fits"))
                .expect("in range");
            let to = from + TimeDelta::microseconds(i64::try_from(span_us).expect("fits"));
            let max_points =
                [1, 2, 3, 10, 100, 1000, 10_000][usize::try_from(next(7)).expect("small")];
            check(Window::new(from, to).expect("valid"), max_points);
        }
    }

    #[test]
    fn cut_keeps_the_cap_and_says_where_to_go_on() {
        let mut points = vec![at(T0), at(T0 + 1), at(T0 + 2)];
        assert_eq!(cut(&mut points, 2, |t| *t), Some(at(T0 + 2)));
        assert_eq!(points, vec![at(T0), at(T0 + 1)]);
        assert_eq!(cut(&mut points, 2, |t| *t), None);
        assert_eq!(points.len(), 2);
    }

    fn parse(
        from: Option<&str>,
        to: Option<&str>,
        bucket: Option<&str>,
        max_points: Option<&str>,
    ) -> Result<Params, Vec<String>> {
        let now = at(T0);
        Params::parse(from, to, bucket, max_points, now, FieldErrors::default()).map_err(
            |e| match e {
                ApiError::Invalid(fields) => fields.into_iter().map(|f| f.field).collect(),
                other => panic!("unexpected {other:?}"),
            },
        )
    }

    #[test]
    fn parameters_default_to_the_last_day_and_a_thousand_points() {
        let p = parse(None, None, None, None).expect("defaults");
        assert_eq!(p.window.to(), at(T0));
        assert_eq!(p.window.from(), at(T0 - 86_400));
        assert_eq!(p.max_points, 1000);
        assert_eq!(p.requested, Requested::Auto);
        let p = parse(None, Some("2025-03-01T12:00:00+01:00"), None, Some("5")).expect("to");
        assert_eq!(p.window.to(), at(T0 + 11 * 3600));
        assert_eq!(p.window.from(), at(T0 - 13 * 3600));
        assert_eq!(p.max_points, 5);
    }

    #[test]
    fn every_wrong_parameter_is_named() {
        assert_eq!(
            parse(Some("yesterday"), Some("now"), Some("5 parsecs"), Some("0")),
            Err(vec![
                "from".to_owned(),
                "to".to_owned(),
                "max_points".to_owned(),
                "bucket".to_owned()
            ])
        );
        assert_eq!(
            parse(None, Some("later"), None, None),
            Err(vec!["to".to_owned()])
        );
        assert_eq!(
            parse(
                Some("2025-03-02T00:00:00Z"),
                Some("2025-03-01T00:00:00Z"),
                None,
                None
            ),
            Err(vec!["from".to_owned()])
        );
        assert_eq!(
            parse(None, None, None, Some("10001")),
            Err(vec!["max_points".to_owned()])
        );
        // 24 h in at most 1000 buckets: 87 s at least (86.4 rounded up).
        assert_eq!(
            parse(None, None, Some("86s"), None),
            Err(vec!["bucket".to_owned()])
        );
        assert!(parse(None, None, Some("87s"), None).is_ok());
        assert!(parse(None, None, Some("raw"), Some("1")).is_ok());
    }

    #[test]
    fn raw_points_name_their_quality() {
        let point = |quality| {
            RawPoint::from(RawRow {
                ts: at(T0),
                value: 1.0,
                quality,
            })
            .quality
        };
        assert_eq!(point(0), "good");
        assert_eq!(point(1), "uncertain");
        assert_eq!(point(2), "bad");
        assert_eq!(point(7), "unknown");
        assert_eq!(point(-1), "unknown");
    }
}
