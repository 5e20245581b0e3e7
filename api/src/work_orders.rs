//! The work-order service: what an alarm does to the CMMS.
//!
//! A raised alarm opens a work order unless one is already open for the same asset and
//! failure mode; then the alarm is appended to it as an event, and raises its priority if the
//! new alarm is more urgent. Every effect carries the alarm's idempotency key, so a retried or
//! redelivered alarm changes nothing the second time. The database backs both rules with
//! unique indexes.
//!
//! After the raise:
//! - A cleared alarm leaves a note on the work order. If nobody has started on it (status
//!   open or assigned), no other alarm of its failure mode is active and the rule allows it,
//!   it is due to close by itself once the condition has stayed clear for the rule's healthy
//!   period; [`WorkOrderService::close_healthy`] closes it as `cleared_automatically` with the
//!   evidence. A new alarm of the failure mode before then cancels that.
//! - A work order opened less than the rule's repeat window after the previous one of its
//!   asset and failure mode closed is flagged as a repeat failure (`repeat_of`).
//! - An alarm that began and ended in data replayed after an outage is recorded on the
//!   asset's history ([`WorkOrderService::record_history`]) and opens nothing.
//! - [`WorkOrderService::active_alarms`] hands the alarms on record as active back to a
//!   restarted rules engine.
//! - A raise while its rule is shelved on its tag (`alarm_shelves`) is recorded as a
//!   suppressed alarm and opens or touches no work order; nor does its clear.

use std::time::Duration;

use chrono::{DateTime, Utc};
use model::alarm::{AlarmEvent, AlarmSubject, Decision, WorkOrderDraft, decide};
use model::{Priority, Severity, TenantId, Timestamp};
use serde_json::json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

/// What handling an alarm event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmOutcome {
    Created {
        work_order: Uuid,
    },
    Appended {
        work_order: Uuid,
        escalated: bool,
    },
    /// This event was handled before (same idempotency key): nothing changed.
    AlreadyApplied,
    /// The alarm's rule is shelved on its tag: recorded, no work order opened or touched.
    Suppressed {
        until: DateTime<Utc>,
    },
    Cleared {
        work_order: Option<Uuid>,
        /// When the work order closes by itself unless the condition returns or work starts.
        auto_close_at: Option<DateTime<Utc>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WorkOrderError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl WorkOrderError {
    /// Whether retrying the same event may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkOrderError::Database(e) => migrations::is_transient(e),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkOrderService {
    pool: PgPool,
}

/// The statuses in which a work order is no longer open.
const CLOSED_STATUSES: &str = "('completed', 'verified', 'cancelled')";
/// The statuses in which nobody has started work on a work order yet (see also `cleared`).
const NOT_STARTED_STATUSES: &str = "('open', 'assigned')";

/// An alarm the database has on record as active, for the rules engine to take over.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedAlarm {
    pub tenant: TenantId,
    pub tag_id: i64,
    pub rule_id: String,
    pub raised_at: Timestamp,
    pub severity: Severity,
    pub value: f64,
}

impl WorkOrderService {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Applies one alarm event, exactly once per idempotency key.
    #[tracing::instrument(skip_all, fields(tenant = %event.subject().tenant, rule = %event.subject().rule_id))]
    pub async fn on_alarm(&self, event: &AlarmEvent) -> Result<AlarmOutcome, WorkOrderError> {
        let subject = event.subject();
        let key = event.idempotency_key();
        let mut tx = migrations::begin_tenant(&self.pool, subject.tenant.as_uuid()).await?;
        let outcome = match event {
            // An escalation is a raise at a higher severity: appended to the open work order,
            // whose priority `decide` raises.
            AlarmEvent::Raised {
                at,
                value,
                work_order,
                ..
            }
            | AlarmEvent::Escalated {
                at,
                value,
                work_order,
                ..
            } => raised(&mut tx, subject, &key, *at, *value, work_order).await?,
            AlarmEvent::Cleared {
                at,
                value,
                healthy_period,
                ..
            } => cleared(&mut tx, subject, &key, *at, *value, *healthy_period).await?,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Records an alarm that began and ended in replayed data on its asset's history: one
    /// alarm row, cleared and marked replayed, at the highest severity it reached. No work
    /// order is opened or touched. Recording the same occurrence twice changes nothing.
    /// Returns whether a row was written.
    #[tracing::instrument(skip_all)]
    pub async fn record_history(&self, events: &[AlarmEvent]) -> Result<bool, WorkOrderError> {
        let (
            Some(AlarmEvent::Raised {
                subject, at, value, ..
            }),
            Some(AlarmEvent::Cleared { at: cleared_at, .. }),
        ) = (events.first(), events.last())
        else {
            return Ok(false);
        };
        let severity = events
            .iter()
            .map(|e| e.subject().severity)
            .max()
            .unwrap_or(subject.severity);
        let mut tx = migrations::begin_tenant(&self.pool, subject.tenant.as_uuid()).await?;
        let written = sqlx::query(
            "INSERT INTO alarms (id, tenant_id, rule_id, tag_id, asset_id, failure_mode, severity,
                                 state, trigger_value, raised_at, cleared_at, replayed, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'cleared', $8, $9, $10, true, $11)
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(subject.tenant.as_uuid())
        .bind(&subject.rule_id)
        .bind(subject.tag_id)
        .bind(subject.asset.as_uuid())
        .bind(&subject.failure_mode)
        .bind(severity.as_str())
        .bind(*value)
        .bind(at.to_datetime())
        .bind(cleared_at.to_datetime())
        .bind(events[0].alarm_key())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(written)
    }

    /// Retires an alarm on record as active whose rule is no longer loaded (removed or
    /// renamed): it is marked cleared now, and its open work order, if any, gets an
    /// `alarm_retired` note. The work order stays with people; nothing closes it by itself.
    pub async fn retire(&self, alarm: &RecordedAlarm) -> Result<(), WorkOrderError> {
        let tenant = alarm.tenant.as_uuid();
        let mut tx = migrations::begin_tenant(&self.pool, tenant).await?;
        let retired: Option<(Uuid, Option<String>)> = sqlx::query_as(
            "UPDATE alarms SET state = 'cleared', cleared_at = now()
             WHERE tenant_id = $1 AND rule_id = $2 AND tag_id = $3 AND state = 'active'
             RETURNING asset_id, failure_mode",
        )
        .bind(tenant)
        .bind(&alarm.rule_id)
        .bind(alarm.tag_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((asset, Some(failure_mode))) = retired {
            let open: Option<Uuid> = sqlx::query_scalar(&format!(
                "SELECT id FROM work_orders
                 WHERE tenant_id = $1 AND asset_id = $2 AND failure_mode = $3 AND status NOT IN {CLOSED_STATUSES}"
            ))
            .bind(tenant)
            .bind(asset)
            .bind(&failure_mode)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = open {
                let detail = json!({
                    "rule_id": alarm.rule_id,
                    "tag_id": alarm.tag_id,
                    "raised_at": alarm.raised_at.to_string(),
                    "reason": "the rule is no longer loaded; the alarm can no longer clear by itself",
                });
                insert_event(&mut tx, tenant, id, "alarm_retired", detail, None).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every alarm on record as active, in every tenant: what a restarted rules engine
    /// takes over. Each tenant is read in its own tenant-scoped transaction.
    pub async fn active_alarms(&self) -> Result<Vec<RecordedAlarm>, WorkOrderError> {
        let mut out = Vec::new();
        for tenant in self.tenants().await? {
            let mut tx = migrations::begin_tenant(&self.pool, tenant).await?;
            let rows = sqlx::query(
                "SELECT tag_id, rule_id, raised_at, severity, trigger_value FROM alarms
                 WHERE tenant_id = $1 AND state = 'active'",
            )
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            for row in rows {
                let severity: String = row.try_get("severity")?;
                let raised_at: DateTime<Utc> = row.try_get("raised_at")?;
                out.push(RecordedAlarm {
                    tenant: TenantId::from_uuid(tenant),
                    tag_id: row.try_get("tag_id")?,
                    rule_id: row.try_get("rule_id")?,
                    raised_at: Timestamp::from_datetime(raised_at),
                    // The column's check constraint admits only the four levels.
                    severity: Severity::parse(&severity).unwrap_or(Severity::Critical),
                    value: row.try_get("trigger_value")?,
                });
            }
        }
        Ok(out)
    }

    /// Closes, in every tenant, the work orders whose healthy period has passed: still not
    /// started, and no alarm of their failure mode active. Each closes as `cancelled` with
    /// resolution `cleared_automatically` and an event carrying the evidence (the alarms
    /// behind it). Returns the work orders closed.
    #[tracing::instrument(skip_all)]
    pub async fn close_healthy(&self, now: DateTime<Utc>) -> Result<Vec<Uuid>, WorkOrderError> {
        let mut closed = Vec::new();
        for tenant in self.tenants().await? {
            let mut tx = migrations::begin_tenant(&self.pool, tenant).await?;
            let due: Vec<Uuid> = sqlx::query_scalar(&format!(
                "UPDATE work_orders w
                 SET status = 'cancelled', resolution = 'cleared_automatically', closed_at = $2,
                     updated_at = $2, auto_close_at = NULL
                 WHERE w.tenant_id = $1 AND w.auto_close_at <= $2
                   AND w.status IN {NOT_STARTED_STATUSES}
                   AND NOT EXISTS (SELECT 1 FROM alarms a
                                   WHERE a.tenant_id = w.tenant_id AND a.asset_id = w.asset_id
                                     AND a.failure_mode = w.failure_mode AND a.state = 'active')
                 RETURNING w.id"
            ))
            .bind(tenant)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            for id in &due {
                // The alarms behind the work order: the one that opened it and those appended.
                let evidence: Vec<serde_json::Value> = sqlx::query_scalar(
                    "SELECT jsonb_build_object('alarm_id', a.id, 'rule_id', a.rule_id,
                                               'tag_id', a.tag_id, 'severity', a.severity,
                                               'trigger_value', a.trigger_value,
                                               'raised_at', a.raised_at, 'cleared_at', a.cleared_at)
                     FROM alarms a
                     WHERE a.tenant_id = $1
                       AND (a.id = (SELECT alarm_id FROM work_orders WHERE id = $2)
                            OR a.id IN (SELECT (detail->>'alarm_id')::uuid FROM work_order_events
                                        WHERE work_order_id = $2 AND kind = 'alarm_repeated'))
                     ORDER BY a.raised_at",
                )
                .bind(tenant)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                let detail = json!({
                    "resolution": "cleared_automatically",
                    "reason": "the condition cleared and stayed clear for the rule's healthy period before work started",
                    "alarms": evidence,
                });
                insert_event(&mut tx, tenant, *id, "closed_automatically", detail, None).await?;
            }
            tx.commit().await?;
            closed.extend(due);
        }
        Ok(closed)
    }

    /// Every tenant's id (readable by the application role for any tenant).
    async fn tenants(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await
    }
}

async fn already_applied(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let hit = sqlx::query(
        "SELECT 1 FROM work_orders WHERE idempotency_key = $1
         UNION ALL SELECT 1 FROM work_order_events WHERE idempotency_key = $1
         UNION ALL SELECT 1 FROM alarms WHERE idempotency_key = $1 LIMIT 1",
    )
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(hit.is_some())
}

async fn raised(
    tx: &mut Transaction<'_, Postgres>,
    s: &AlarmSubject,
    key: &str,
    at: model::Timestamp,
    value: f64,
    draft: &WorkOrderDraft,
) -> Result<AlarmOutcome, sqlx::Error> {
    if already_applied(tx, key).await? {
        return Ok(AlarmOutcome::AlreadyApplied);
    }
    let tenant = s.tenant.as_uuid();
    let raised_at = at.to_datetime();
    let shelved_until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(until) FROM alarm_shelves
         WHERE tenant_id = $1 AND rule_id = $2 AND tag_id = $3 AND ended_at IS NULL AND until > now()",
    )
    .bind(tenant)
    .bind(&s.rule_id)
    .bind(s.tag_id)
    .fetch_one(&mut **tx)
    .await?;
    // The alarm row: one active per rule and tag. A raise for an alarm still recorded active
    // (a restart forgot it had been raised) reuses that row.
    let alarm_id: Uuid = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO alarms (id, tenant_id, rule_id, tag_id, asset_id, failure_mode, severity,
                                 state, trigger_value, raised_at, suppressed, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9, $10, $11)
             ON CONFLICT (tenant_id, rule_id, tag_id) WHERE state = 'active' DO NOTHING
             RETURNING id)
         SELECT id FROM ins
         UNION ALL
         SELECT id FROM alarms WHERE tenant_id = $2 AND rule_id = $3 AND tag_id = $4 AND state = 'active'
         LIMIT 1",
    )
    .bind(Uuid::new_v4())
    .bind(tenant)
    .bind(&s.rule_id)
    .bind(s.tag_id)
    .bind(s.asset.as_uuid())
    .bind(&s.failure_mode)
    .bind(s.severity.as_str())
    .bind(value)
    .bind(raised_at)
    .bind(shelved_until.is_some())
    // A suppressed raise touches no work order: its key on the alarm row is what makes a
    // redelivery of it a no-op.
    .bind(shelved_until.is_some().then_some(key))
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("UPDATE alarms SET severity = $1 WHERE id = $2 AND severity <> $1")
        .bind(s.severity.as_str())
        .bind(alarm_id)
        .execute(&mut **tx)
        .await?;
    if let Some(until) = shelved_until {
        tracing::info!(rule = %s.rule_id, tag = %s.tag, %until, "alarm raised while shelved: no work order");
        return Ok(AlarmOutcome::Suppressed { until });
    }

    let open = sqlx::query(&format!(
        "SELECT id, priority FROM work_orders
         WHERE tenant_id = $1 AND asset_id = $2 AND failure_mode = $3 AND status NOT IN {CLOSED_STATUSES}
         FOR UPDATE"
    ))
    .bind(tenant)
    .bind(s.asset.as_uuid())
    .bind(&s.failure_mode)
    .fetch_optional(&mut **tx)
    .await?;
    let open = match open {
        Some(row) => {
            let id: Uuid = row.try_get("id")?;
            let p: String = row.try_get("priority")?;
            Some((id, Priority::parse(&p).unwrap_or(Priority::Low)))
        }
        None => None,
    };
    let detail = json!({
        "alarm_id": alarm_id,
        "rule_id": s.rule_id,
        "tag": s.tag.as_str(),
        "value": value,
        "at": at.to_string(),
        "severity": s.severity.as_str(),
    });
    match (open, decide(open.map(|(_, p)| p), draft.priority)) {
        (Some((id, _)), Decision::Append { escalate_to }) => {
            insert_event(tx, tenant, id, "alarm_repeated", detail, Some(key)).await?;
            // The condition is back: whatever healthy period was running is over.
            sqlx::query(
                "UPDATE work_orders SET auto_close_at = NULL WHERE id = $1 AND auto_close_at IS NOT NULL",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
            if let Some(p) = escalate_to {
                sqlx::query(
                    "UPDATE work_orders SET priority = $1, updated_at = now() WHERE id = $2",
                )
                .bind(p.as_str())
                .bind(id)
                .execute(&mut **tx)
                .await?;
                insert_event(
                    tx,
                    tenant,
                    id,
                    "escalated",
                    json!({ "priority": p.as_str() }),
                    None,
                )
                .await?;
            }
            Ok(AlarmOutcome::Appended {
                work_order: id,
                escalated: escalate_to.is_some(),
            })
        }
        _ => {
            let id = Uuid::new_v4();
            let description = if draft.checklist.is_empty() {
                draft.description.clone()
            } else {
                let lines: Vec<String> = draft
                    .checklist
                    .iter()
                    .map(|c| format!("- [ ] {c}"))
                    .collect();
                format!("{}\n\nChecklist:\n{}", draft.description, lines.join("\n"))
            };
            let repeat_of = previous_failure(tx, s, at, draft.repeat_window).await?;
            sqlx::query(
                "INSERT INTO work_orders (id, tenant_id, asset_id, title, description, priority,
                                          work_type, failure_mode, source, rule_id, alarm_id,
                                          idempotency_key, repeat_of)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'rule', $9, $10, $11, $12)",
            )
            .bind(id)
            .bind(tenant)
            .bind(s.asset.as_uuid())
            .bind(&draft.title)
            .bind(description)
            .bind(draft.priority.as_str())
            .bind(draft.work_type.as_str())
            .bind(&s.failure_mode)
            .bind(&s.rule_id)
            .bind(alarm_id)
            .bind(key)
            .bind(repeat_of.map(|(previous, _)| previous))
            .execute(&mut **tx)
            .await?;
            insert_event(tx, tenant, id, "opened_by_alarm", detail, None).await?;
            if let Some((previous, closed_at)) = repeat_of {
                let detail = json!({
                    "previous_work_order": previous,
                    "previous_closed_at": closed_at,
                    "repeat_window_s": draft.repeat_window.as_secs(),
                });
                insert_event(tx, tenant, id, "repeat_failure", detail, None).await?;
            }
            tracing::info!(work_order = %id, priority = %draft.priority, "work order opened");
            Ok(AlarmOutcome::Created { work_order: id })
        }
    }
}

/// The latest work order of the subject's asset and failure mode that closed within `window`
/// before `at`: (id, closed at).
async fn previous_failure(
    tx: &mut Transaction<'_, Postgres>,
    s: &AlarmSubject,
    at: Timestamp,
    window: Duration,
) -> Result<Option<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let since = at
        .to_datetime()
        .and_then(|t| t.checked_sub_signed(window))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    sqlx::query_as(
        "SELECT id, closed_at FROM work_orders
         WHERE tenant_id = $1 AND asset_id = $2 AND failure_mode = $3
           AND closed_at IS NOT NULL AND closed_at >= $4
         ORDER BY closed_at DESC LIMIT 1",
    )
    .bind(s.tenant.as_uuid())
    .bind(s.asset.as_uuid())
    .bind(&s.failure_mode)
    .bind(since)
    .fetch_optional(&mut **tx)
    .await
}

async fn cleared(
    tx: &mut Transaction<'_, Postgres>,
    s: &AlarmSubject,
    raise_key: &str,
    at: Timestamp,
    value: f64,
    healthy_period: Option<Duration>,
) -> Result<AlarmOutcome, sqlx::Error> {
    let key = format!("{raise_key}:cleared");
    if already_applied(tx, &key).await? {
        return Ok(AlarmOutcome::AlreadyApplied);
    }
    let tenant = s.tenant.as_uuid();
    let suppressed: Option<bool> = sqlx::query_scalar(
        "UPDATE alarms SET state = 'cleared', cleared_at = $4
         WHERE tenant_id = $1 AND rule_id = $2 AND tag_id = $3 AND state = 'active'
         RETURNING suppressed",
    )
    .bind(tenant)
    .bind(&s.rule_id)
    .bind(s.tag_id)
    .bind(at.to_datetime())
    .fetch_optional(&mut **tx)
    .await?;
    if suppressed == Some(true) {
        // Its raise touched no work order; neither does its clear.
        return Ok(AlarmOutcome::Cleared {
            work_order: None,
            auto_close_at: None,
        });
    }
    let open: Option<(Uuid, String)> = sqlx::query_as(&format!(
        "SELECT id, status FROM work_orders
         WHERE tenant_id = $1 AND asset_id = $2 AND failure_mode = $3 AND status NOT IN {CLOSED_STATUSES}
         FOR UPDATE"
    ))
    .bind(tenant)
    .bind(s.asset.as_uuid())
    .bind(&s.failure_mode)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((id, status)) = open else {
        return Ok(AlarmOutcome::Cleared {
            work_order: None,
            auto_close_at: None,
        });
    };
    let still_active: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM alarms WHERE tenant_id = $1 AND asset_id = $2
                        AND failure_mode = $3 AND state = 'active')",
    )
    .bind(tenant)
    .bind(s.asset.as_uuid())
    .bind(&s.failure_mode)
    .fetch_one(&mut **tx)
    .await?;
    let not_started = matches!(status.as_str(), "open" | "assigned");
    let auto_close_at = match healthy_period {
        Some(period) if not_started && !still_active => {
            let period = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
            at.to_datetime().and_then(|t| t.checked_add_signed(period))
        }
        _ => None,
    };
    sqlx::query("UPDATE work_orders SET auto_close_at = $2 WHERE id = $1")
        .bind(id)
        .bind(auto_close_at)
        .execute(&mut **tx)
        .await?;
    let stays_because = match (healthy_period, not_started, still_active) {
        (_, _, true) => Some("another alarm of this failure mode is still active"),
        (_, false, _) => Some("work has started: it stays with the technician"),
        (None, _, _) => Some("the rule does not close work orders by itself"),
        _ => None,
    };
    let detail = json!({
        "rule_id": s.rule_id,
        "tag": s.tag.as_str(),
        "value": value,
        "at": at.to_string(),
        "auto_close_at": auto_close_at,
        "stays_open": stays_because,
    });
    insert_event(tx, tenant, id, "alarm_cleared", detail, Some(&key)).await?;
    Ok(AlarmOutcome::Cleared {
        work_order: Some(id),
        auto_close_at,
    })
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    work_order: Uuid,
    kind: &str,
    detail: serde_json::Value,
    key: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO work_order_events (tenant_id, work_order_id, kind, detail, idempotency_key)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(work_order)
    .bind(kind)
    .bind(detail)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
