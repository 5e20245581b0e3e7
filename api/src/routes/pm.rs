//! Preventive-maintenance schedules, and the scheduler that turns their occurrences into work
//! orders ([`run_due`], run every `[api] pm_interval` by [`run`]). When occurrences fall and
//! which to generate is [`crate::pm`]'s; the endpoints are in `docs/WORK-ORDERS.md`
//! ("Preventive maintenance").
//!
//! - `POST /api/v1/pm-schedules`, `GET /api/v1/pm-schedules`,
//!   `GET /api/v1/pm-schedules/{id}` (with the latest occurrences and, for a calendar, the next
//!   ones), `PATCH /api/v1/pm-schedules/{id}` (`active`, `title`, `description`, `priority`).
//!
//! Admins and managers plan; every role but requester reads. Condition-based maintenance is a
//! rule (RULES.md) whose work order is of type `preventive`.

use std::time::Duration as StdDuration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{FromRow, PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::app::AppState;
use crate::audit::{self, RequestMeta};
use crate::auth::AuthUser;
use crate::error::{ApiError, Body, FieldErrors};
use crate::events;
use crate::permissions::Permission;
use crate::pm::{self, Calendar, Every, Meter, Occurrence, Plan};
use crate::routes::KeyCursor;
use crate::users;

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    pub asset_id: Uuid,
    pub title: String,
    pub description: String,
    pub priority: String,
    pub work_type: String,
    pub checklist: Value,
    pub assignee_user: Option<Uuid>,
    pub assignee_team: Option<Uuid>,
    pub kind: String,
    pub cal_start: Option<NaiveDateTime>,
    pub cal_zone: Option<String>,
    pub cal_every: Option<String>,
    /// Seconds before an occurrence its work order is generated (calendar).
    pub lead_seconds: i64,
    pub meter_tag_id: Option<i64>,
    pub meter_start: Option<f64>,
    pub meter_every: Option<f64>,
    pub meter_lead: Option<f64>,
    pub active: bool,
    pub handled: Option<i32>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, asset_id, title, description, priority, work_type, checklist, \
     assignee_user, assignee_team, kind, cal_start, cal_zone, cal_every, \
     extract(epoch FROM lead)::bigint AS lead_seconds, meter_tag_id, meter_start, meter_every, \
     meter_lead, active, handled, created_at";

impl Schedule {
    fn calendar(&self) -> Option<Calendar> {
        Some(Calendar {
            start: self.cal_start?,
            zone: self.cal_zone.as_deref()?.parse::<Tz>().ok()?,
            every: Every::parse(self.cal_every.as_deref()?)?,
        })
    }

    fn meter(&self) -> Option<Meter> {
        Some(Meter {
            start: self.meter_start?,
            every: self.meter_every?,
        })
    }

    fn handled(&self) -> Option<u32> {
        self.handled.and_then(|h| u32::try_from(h).ok())
    }
}

// ---------------------------------------------------------------------------------------------
// The scheduler.

/// What one round of the scheduler did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub generated: u32,
    pub skipped: u32,
}

/// Generates the work orders of every active schedule of every tenant whose lead window has
/// opened by `now`, and records skipped occurrences. Safe to run from several processes and
/// again after a crash: each schedule is locked while handled, and an occurrence is recorded
/// (and its work order keyed) once.
pub async fn run_due(pool: &PgPool, now: DateTime<Utc>) -> Result<RunSummary, sqlx::Error> {
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(pool)
        .await?;
    let mut summary = RunSummary::default();
    for tenant in tenants {
        let mut tx = migrations::begin_tenant(pool, tenant).await?;
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM pm_schedules WHERE tenant_id = $1 AND active")
                .bind(tenant)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        for id in ids {
            let mut tx = migrations::begin_tenant(pool, tenant).await?;
            let schedule: Option<Schedule> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM pm_schedules WHERE tenant_id = $1 AND id = $2 AND active
                 FOR UPDATE SKIP LOCKED"
            ))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(schedule) = schedule else {
                continue;
            };
            let plan = plan_for(&mut tx, tenant, &schedule, now).await?;
            let done = apply(&mut tx, tenant, &schedule, &plan).await?;
            tx.commit().await?;
            summary.generated += done.generated;
            summary.skipped += done.skipped;
        }
    }
    if summary.generated > 0 || summary.skipped > 0 {
        tracing::info!(
            generated = summary.generated,
            skipped = summary.skipped,
            "preventive maintenance"
        );
    }
    Ok(summary)
}

async fn plan_for(
    conn: &mut PgConnection,
    tenant: Uuid,
    s: &Schedule,
    now: DateTime<Utc>,
) -> Result<Plan, sqlx::Error> {
    match s.kind.as_str() {
        "calendar" => Ok(match s.calendar() {
            Some(cal) => pm::plan(
                &cal,
                s.handled(),
                now,
                chrono::Duration::seconds(s.lead_seconds),
            ),
            None => Plan::default(),
        }),
        _ => {
            let (Some(meter), Some(tag)) = (s.meter(), s.meter_tag_id) else {
                return Ok(Plan::default());
            };
            // The counter's latest good reading (quality 0); none yet: nothing is due.
            let value: Option<f64> = sqlx::query_scalar(
                "SELECT r.value FROM tenant_readings r JOIN tags t ON t.id = r.tag_id
                 WHERE t.tenant_id = $1 AND r.tag_id = $2 AND r.quality = 0
                 ORDER BY r.ts DESC LIMIT 1",
            )
            .bind(tenant)
            .bind(tag)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(match value {
                Some(v) => pm::meter_plan(&meter, s.handled(), v, s.meter_lead.unwrap_or(0.0), now),
                None => Plan::default(),
            })
        }
    }
}

async fn apply(
    conn: &mut PgConnection,
    tenant: Uuid,
    s: &Schedule,
    plan: &Plan,
) -> Result<RunSummary, sqlx::Error> {
    let mut summary = RunSummary::default();
    let mut last: Option<u32> = None;
    for o in &plan.skipped {
        record_occurrence(conn, tenant, s.id, *o, "skipped", false, None).await?;
        summary.skipped += 1;
        last = last.max(Some(o.n));
    }
    for (o, late) in &plan.generate {
        let work_order = generate(conn, tenant, s, *o, *late).await?;
        record_occurrence(conn, tenant, s.id, *o, "generated", *late, Some(work_order)).await?;
        summary.generated += 1;
        last = last.max(Some(o.n));
    }
    if let Some(n) = last {
        sqlx::query("UPDATE pm_schedules SET handled = $3 WHERE tenant_id = $1 AND id = $2")
            .bind(tenant)
            .bind(s.id)
            .bind(i32::try_from(n).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await?;
    }
    Ok(summary)
}

async fn record_occurrence(
    conn: &mut PgConnection,
    tenant: Uuid,
    schedule: Uuid,
    o: Occurrence,
    status: &str,
    late: bool,
    work_order: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pm_occurrences (tenant_id, schedule_id, n, due_at, status, late, work_order_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (schedule_id, n) DO NOTHING",
    )
    .bind(tenant)
    .bind(schedule)
    .bind(i32::try_from(o.n).unwrap_or(i32::MAX))
    .bind(o.due)
    .bind(status)
    .bind(late)
    .bind(work_order)
    .execute(conn)
    .await?;
    Ok(())
}

/// The work order of occurrence `o`; an occurrence generated before (same key) is answered
/// with the work order it made.
async fn generate(
    conn: &mut PgConnection,
    tenant: Uuid,
    s: &Schedule,
    o: Occurrence,
    late: bool,
) -> Result<Uuid, sqlx::Error> {
    let key = format!("pm:{}:{}", s.id, o.n);
    if let Some(existing) = sqlx::query_scalar::<_, Uuid>(
        "SELECT id FROM work_orders WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant)
    .bind(&key)
    .fetch_optional(&mut *conn)
    .await?
    {
        return Ok(existing);
    }
    let id = Uuid::new_v4();
    let assigned = s.assignee_user.is_some() || s.assignee_team.is_some();
    // A calendar occurrence is due at its time; a meter occurrence by the priority's service
    // level from now.
    let due = (s.kind == "calendar").then_some(o.due);
    sqlx::query(
        "INSERT INTO work_orders (id, tenant_id, asset_id, title, description, priority, work_type,
                                  source, idempotency_key, pm_schedule_id, assignee_user,
                                  assignee_team, status, due_at, due_from_sla)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pm', $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(id)
    .bind(tenant)
    .bind(s.asset_id)
    .bind(&s.title)
    .bind(&s.description)
    .bind(&s.priority)
    .bind(&s.work_type)
    .bind(&key)
    .bind(s.id)
    .bind(s.assignee_user)
    .bind(s.assignee_team)
    .bind(if assigned { "assigned" } else { "open" })
    .bind(due)
    .bind(due.is_none())
    .execute(&mut *conn)
    .await?;
    let items: Vec<String> = serde_json::from_value(s.checklist.clone()).unwrap_or_default();
    for (position, text) in items.iter().enumerate() {
        sqlx::query(
            "INSERT INTO work_order_checklist_items (id, tenant_id, work_order_id, position, text)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::new_v4())
        .bind(tenant)
        .bind(id)
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .bind(text)
        .execute(&mut *conn)
        .await?;
    }
    let detail = json!({ "schedule_id": s.id, "schedule": s.name, "occurrence": o.n, "due_at": o.due, "late": late });
    sqlx::query(
        "INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail)
         VALUES ($1, $2, 'opened_by_schedule', $3)",
    )
    .bind(tenant)
    .bind(id)
    .bind(&detail)
    .execute(&mut *conn)
    .await?;
    let mut payload = detail;
    payload["work_order_id"] = json!(id);
    events::emit(conn, tenant, "work_order.opened_by_schedule", id, &payload).await?;
    metrics::counter!("maintainpro_pm_work_orders_generated_total").increment(1);
    Ok(id)
}

/// Runs [`run_due`] every `every` until `closing` turns true.
pub async fn run(pool: PgPool, every: StdDuration, mut closing: watch::Receiver<bool>) {
    loop {
        if *closing.borrow() {
            break;
        }
        if let Err(e) = run_due(&pool, Utc::now()).await {
            tracing::warn!(error = %e, "preventive maintenance round failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = closing.changed() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Endpoints.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    /// The first occurrence in local time, e.g. `2027-01-31T08:00:00`.
    pub start: NaiveDateTime,
    /// An IANA time zone, e.g. `Europe/Berlin`; default `UTC`.
    pub zone: Option<String>,
    /// `"N days"`, `"N weeks"` or `"N months"`, or `"cron "` and a five-field cron
    /// expression matched on the local wall clock from `start` on, e.g. `"cron 0 6 * * 1-5"`.
    pub every: String,
    /// How long before an occurrence its work order is made, e.g. `"3d"`; default none.
    #[serde(default, with = "humantime_serde")]
    pub lead: Option<StdDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSpec {
    pub tag_id: i64,
    /// The counter's value the schedule counts from; the first occurrence is `every` after it.
    pub start: f64,
    pub every: f64,
    /// How many units ahead the work order is made; default 0.
    #[serde(default)]
    pub lead: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    pub name: String,
    pub asset_id: Uuid,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub priority: Option<String>,
    pub work_type: Option<String>,
    #[serde(default)]
    pub checklist: Vec<String>,
    pub assignee_user: Option<Uuid>,
    pub assignee_team: Option<Uuid>,
    pub calendar: Option<CalendarSpec>,
    pub meter: Option<MeterSpec>,
}

pub async fn create(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Body(req): Body<CreateSchedule>,
) -> Result<(StatusCode, Json<ScheduleDetail>), ApiError> {
    auth.require(Permission::PmWrite)?;
    let mut errors = FieldErrors::default();
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.add("name", "must be 1-200 characters");
    }
    if req.title.trim().is_empty() || req.title.chars().count() > 300 {
        errors.add("title", "must be 1-300 characters");
    }
    if req.description.chars().count() > 10_000 {
        errors.add("description", "must be at most 10000 characters");
    }
    let priority = req.priority.as_deref().unwrap_or("medium");
    if !["low", "medium", "high", "critical"].contains(&priority) {
        errors.add("priority", "must be low, medium, high or critical");
    }
    let work_type = req.work_type.as_deref().unwrap_or("preventive");
    if ![
        "corrective",
        "preventive",
        "inspection",
        "emergency",
        "instrumentation",
    ]
    .contains(&work_type)
    {
        errors.add(
            "work_type",
            "must be corrective, preventive, inspection, emergency or instrumentation",
        );
    }
    if req.checklist.len() > 100
        || req
            .checklist
            .iter()
            .any(|c| c.trim().is_empty() || c.chars().count() > 500)
    {
        errors.add("checklist", "at most 100 items of 1-500 characters");
    }
    let kind = match (&req.calendar, &req.meter) {
        (Some(_), None) => "calendar",
        (None, Some(_)) => "meter",
        _ => {
            errors.add("calendar", "give either calendar or meter");
            "calendar"
        }
    };
    let mut zone_name = "UTC".to_owned();
    let mut every_text = None;
    let mut lead = StdDuration::ZERO;
    if let Some(c) = &req.calendar {
        zone_name = c.zone.clone().unwrap_or_else(|| "UTC".to_owned());
        if zone_name.parse::<Tz>().is_err() {
            errors.add(
                "calendar.zone",
                "must be an IANA time zone, e.g. Europe/Berlin",
            );
        }
        match Every::parse_or_explain(&c.every) {
            Ok(e) => every_text = Some(e.to_text()),
            Err(problem) => errors.add("calendar.every", problem),
        }
        lead = c.lead.unwrap_or_default();
        if lead > StdDuration::from_secs(366 * 86_400) {
            errors.add("calendar.lead", "must be at most 366 days");
        }
    }
    if let Some(m) = &req.meter
        && !(m.every.is_finite()
            && m.every > 0.0
            && m.start.is_finite()
            && m.lead.is_finite()
            && m.lead >= 0.0)
    {
        errors.add(
            "meter",
            "every must be above 0, start and lead finite numbers, lead not negative",
        );
    }
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let exists =
        |sql: &'static str, id: Uuid| sqlx::query_scalar::<_, bool>(sql).bind(tenant).bind(id);
    if !exists(
        "SELECT EXISTS (SELECT 1 FROM assets WHERE tenant_id = $1 AND id = $2)",
        req.asset_id,
    )
    .fetch_one(&mut *tx)
    .await?
    {
        errors.add("asset_id", "no asset with this id");
    }
    if let Some(u) = req.assignee_user
        && users::assignable(&mut tx, tenant, u).await? != users::Assignable::Yes
    {
        errors.add(
            "assignee_user",
            "no enabled user with this id whose role may work on work orders",
        );
    }
    if let Some(t) = req.assignee_team
        && !exists(
            "SELECT EXISTS (SELECT 1 FROM teams WHERE tenant_id = $1 AND id = $2)",
            t,
        )
        .fetch_one(&mut *tx)
        .await?
    {
        errors.add("assignee_team", "no team with this id");
    }
    if let Some(m) = &req.meter {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tags WHERE tenant_id = $1 AND id = $2)",
        )
        .bind(tenant)
        .bind(m.tag_id)
        .fetch_one(&mut *tx)
        .await?;
        if !known {
            errors.add("meter.tag_id", "no tag with this id");
        }
    }
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pm_schedules WHERE tenant_id = $1 AND name = $2)",
    )
    .bind(tenant)
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        errors.add("name", "a schedule with this name exists already");
    }
    errors.finish()?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO pm_schedules (id, tenant_id, name, asset_id, title, description, priority,
                                   work_type, checklist, assignee_user, assignee_team, kind,
                                   cal_start, cal_zone, cal_every, lead, meter_tag_id,
                                   meter_start, meter_every, meter_lead, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $21)",
    )
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(req.asset_id)
    .bind(req.title.trim())
    .bind(&req.description)
    .bind(priority)
    .bind(work_type)
    .bind(json!(
        req.checklist.iter().map(|c| c.trim()).collect::<Vec<_>>()
    ))
    .bind(req.assignee_user)
    .bind(req.assignee_team)
    .bind(kind)
    .bind(req.calendar.as_ref().map(|c| c.start))
    .bind(req.calendar.as_ref().map(|_| zone_name.clone()))
    .bind(every_text)
    .bind(lead)
    .bind(req.meter.as_ref().map(|m| m.tag_id))
    .bind(req.meter.as_ref().map(|m| m.start))
    .bind(req.meter.as_ref().map(|m| m.every))
    .bind(req.meter.as_ref().map(|m| m.lead))
    .bind(auth.user)
    .execute(&mut *tx)
    .await
    .map_err(|e| ApiError::unique(e, "name", "a schedule with this name exists already"))?;
    let detail_json = json!({ "name": name, "kind": kind, "asset_id": req.asset_id });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "pm_schedule.create",
        ("pm_schedule", id),
        detail_json,
    )
    .await?;
    let detail = detail(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

#[derive(Debug, Serialize, FromRow)]
pub struct OccurrenceRow {
    pub n: i32,
    pub due_at: DateTime<Utc>,
    pub status: String,
    pub late: bool,
    pub work_order_id: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub schedule: Schedule,
    /// The latest 50 occurrences handled, newest first.
    pub occurrences: Vec<OccurrenceRow>,
    /// A calendar's next 5 occurrences not handled yet.
    pub upcoming: Vec<DateTime<Utc>>,
}

async fn detail(
    conn: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<ScheduleDetail, ApiError> {
    let schedule: Schedule = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM pm_schedules WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound)?;
    let occurrences = sqlx::query_as::<_, OccurrenceRow>(
        "SELECT n, due_at, status, late, work_order_id, recorded_at FROM pm_occurrences
         WHERE tenant_id = $1 AND schedule_id = $2 ORDER BY n DESC LIMIT 50",
    )
    .bind(tenant)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let next = schedule.handled().map_or(0, |h| h + 1);
    let upcoming = schedule
        .calendar()
        .map(|cal| cal.upcoming(next, 5))
        .unwrap_or_default();
    Ok(ScheduleDetail {
        schedule,
        occurrences,
        upcoming,
    })
}

#[derive(Debug, Serialize)]
pub struct ScheduleList {
    pub items: Vec<Schedule>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1-500, default 100.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<ScheduleList>, ApiError> {
    auth.require(Permission::PmRead)?;
    let mut errors = FieldErrors::default();
    let (limit, cursor) = KeyCursor::parse(q.limit, q.cursor.as_deref(), &mut errors);
    errors.finish()?;
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    let mut items = sqlx::query_as::<_, Schedule>(&format!(
        "SELECT {COLUMNS} FROM pm_schedules WHERE tenant_id = $1
           AND ($2::text IS NULL OR (name, id) > ($2, $3))
         ORDER BY name, id LIMIT $4"
    ))
    .bind(tenant)
    .bind(cursor.as_ref().map(|c| c.key.clone()))
    .bind(cursor.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let next_cursor = KeyCursor::next(&mut items, limit, |s| (s.name.clone(), s.id));
    Ok(Json(ScheduleList { items, next_cursor }))
}

pub async fn get(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    // Another tenant's schedule, or none: 404 before the permission question.
    let detail = detail(&mut tx, tenant, id).await?;
    tx.commit().await?;
    auth.require(Permission::PmRead)?;
    Ok(Json(detail))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    pub active: Option<bool>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub priority: Option<String>,
}

/// Pausing (`active: false`) stops generation; resuming goes on from the occurrences not
/// handled yet, skipping the past ones but the latest.
pub async fn update(
    State(state): State<AppState>,
    auth: AuthUser,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Body(req): Body<UpdateSchedule>,
) -> Result<Json<ScheduleDetail>, ApiError> {
    let tenant = auth.tenant.as_uuid();
    let mut tx = migrations::begin_tenant(&state.pool, tenant).await?;
    detail(&mut tx, tenant, id).await?;
    auth.require(Permission::PmWrite)?;
    let mut errors = FieldErrors::default();
    if req
        .title
        .as_ref()
        .is_some_and(|t| t.trim().is_empty() || t.chars().count() > 300)
    {
        errors.add("title", "must be 1-300 characters");
    }
    if req
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 10_000)
    {
        errors.add("description", "must be at most 10000 characters");
    }
    if req
        .priority
        .as_ref()
        .is_some_and(|p| !["low", "medium", "high", "critical"].contains(&p.as_str()))
    {
        errors.add("priority", "must be low, medium, high or critical");
    }
    errors.finish()?;
    sqlx::query(
        "UPDATE pm_schedules SET active = coalesce($3, active), title = coalesce($4, title),
                description = coalesce($5, description), priority = coalesce($6, priority)
         WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(req.active)
    .bind(req.title.as_deref().map(str::trim))
    .bind(&req.description)
    .bind(&req.priority)
    .execute(&mut *tx)
    .await?;
    let detail_json = json!({ "active": req.active, "title": req.title, "priority": req.priority });
    audit::write_change(
        &mut tx,
        &auth,
        &meta,
        "pm_schedule.update",
        ("pm_schedule", id),
        detail_json,
    )
    .await?;
    let detail = detail(&mut tx, tenant, id).await?;
    tx.commit().await?;
    Ok(Json(detail))
}
