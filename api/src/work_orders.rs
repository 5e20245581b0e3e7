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
//!
//! # One round trip per alarm event
//!
//! [`WorkOrderService::on_alarm`] sits between a breach and its committed work order, and the
//! rules engine applies events one after another, so its latency is every later event's too.
//! Its effects are two database functions (migration `alarm_effects`):
//! `alarm_raised_effects` for a raise or an escalation, `alarm_cleared_effects` for a clear.
//! Each is called in one statement, sent on its own: that statement is its own transaction,
//! which the server commits before it reports the statement done, so an `Ok` here means
//! committed. Its first argument is `set_config('app.tenant_id', <tenant>, true)`: PostgreSQL
//! evaluates arguments before it runs the function, so the tenant is set for the function's
//! statements and ends with the transaction. One round trip, where the same effects done
//! statement by statement took about ten, one per statement, plus the begin and the commit.
//!
//! Why functions rather than pipelining the statements: sqlx waits for each statement's
//! answer before it sends the next and offers no pipeline, and most statements depend on the
//! answer of one before (is it a duplicate, is the rule shelved, is a work order open), which a
//! pipeline could not branch on anyway. The functions run as their caller (SECURITY INVOKER),
//! so row-level security applies to them as it did to the statements.
//!
//! What stays here: the priority (from the rule's severity and the asset's criticality, in
//! the draft), the work order's texts, the ids of new rows and the event details up to what
//! only the database knows (the alarm row, the previous work order, whether the work order
//! closes by itself). What moved: the order of priorities when deciding an escalation (as
//! `model::alarm::decide`), and the statuses and reasons that decide a healthy-period close.

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use model::alarm::{AlarmEvent, AlarmSubject, WorkOrderDraft};
use model::{Severity, TenantId, Timestamp};
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

/// The statuses in which a work order is no longer open (the alarm-effect functions of migration
/// `alarm_effects` name them too).
const CLOSED_STATUSES: &str = "('completed', 'verified', 'cancelled')";
/// The statuses in which nobody has started work on a work order yet (as
/// `alarm_cleared_effects`).
const NOT_STARTED_STATUSES: &str = "('open', 'assigned')";

/// An alarm the database has on record as active, for the rules engine to take over.
/// Why an active alarm is retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    /// Its rule was removed or renamed.
    RuleRemoved,
    /// Its rule no longer selects its tag (the rule's selection or the tag's asset, class or
    /// labels changed).
    TagNoLongerSelected,
}

impl RetireReason {
    fn explanation(self) -> &'static str {
        match self {
            RetireReason::RuleRemoved => {
                "the rule is no longer loaded; the alarm can no longer clear by itself"
            }
            RetireReason::TagNoLongerSelected => {
                "the rule no longer watches this tag; the alarm can no longer clear by itself"
            }
        }
    }
}

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
        let outcome = match event {
            // An escalation is a raise at a higher severity: appended to the open work order,
            // whose priority it raises if it is more urgent.
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
            } => raised(&self.pool, subject, &key, *at, *value, work_order).await?,
            AlarmEvent::Cleared {
                at,
                value,
                healthy_period,
                ..
            } => cleared(&self.pool, subject, &key, *at, *value, *healthy_period).await?,
        };
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

    /// Retires an alarm on record as active that can no longer clear by itself, for
    /// `reason`: it is marked cleared now, and its open work order, if any, gets an
    /// `alarm_retired` note with the reason. The work order stays with people; nothing closes
    /// it by itself.
    pub async fn retire(
        &self,
        alarm: &RecordedAlarm,
        reason: RetireReason,
    ) -> Result<(), WorkOrderError> {
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
                    "reason": reason.explanation(),
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

/// A raise or an escalation in one statement: the tenant setting, then
/// `alarm_raised_effects`. PostgreSQL evaluates a function's arguments before it runs it, so
/// the function and its row-level security see the tenant set in its first argument.
///
/// The same statement adds the effect's event to the tenant's log (`emit_event`), so the event
/// exists exactly when the effect committed: the CTE runs the effects (and sets the tenant)
/// before the outer select's expressions are evaluated. A work order the raise created gets
/// the rule's checklist as items in the same statement (`c` reads `e`, so it runs after it).
const RAISED: &str = "WITH e AS (
       SELECT * FROM alarm_raised_effects(
         p_tenant => set_config($1, $2, true)::uuid, p_key => $3, p_rule_id => $4,
         p_tag_id => $5, p_asset_id => $6, p_failure_mode => $7, p_severity => $8,
         p_value => $9, p_raised_at => $10, p_detail => $11, p_new_alarm => $12,
         p_new_work_order => $13, p_title => $14, p_description => $15, p_priority => $16,
         p_work_type => $17, p_repeat_since => $18, p_repeat_window_s => $19)),
     c AS (
       INSERT INTO work_order_checklist_items (id, tenant_id, work_order_id, position, text)
       SELECT gen_random_uuid(), $2::uuid, e.work_order, item.n - 1, item.text
       FROM e, unnest($20::text[]) WITH ORDINALITY AS item(text, n)
       WHERE e.outcome = 'created')
     SELECT outcome, work_order, escalated, shelved_until, auto_close_at,
            CASE WHEN outcome IN ('created', 'appended') THEN emit_event(
                $2::uuid,
                CASE outcome WHEN 'created' THEN 'work_order.opened_by_alarm'
                             ELSE 'work_order.alarm_appended' END,
                work_order::text,
                jsonb_build_object('work_order_id', work_order, 'rule_id', $4::text,
                                   'tag_id', $5::bigint, 'asset_id', $6::uuid,
                                   'failure_mode', $7::text, 'severity', $8::text,
                                   'value', $9::float8, 'escalated', escalated))
            END AS event_seq
     FROM e";

/// A clear in one statement, as [`RAISED`]: the tenant setting, then `alarm_cleared_effects`.
const CLEARED: &str = "WITH e AS (
       SELECT * FROM alarm_cleared_effects(
         p_tenant => set_config($1, $2, true)::uuid, p_key => $3, p_rule_id => $4,
         p_tag_id => $5, p_asset_id => $6, p_failure_mode => $7, p_cleared_at => $8,
         p_detail => $9, p_closes_by_itself => $10, p_auto_close_at => $11))
     SELECT outcome, work_order, escalated, shelved_until, auto_close_at,
            CASE WHEN outcome = 'cleared' AND work_order IS NOT NULL THEN emit_event(
                $2::uuid, 'work_order.alarm_cleared', work_order::text,
                jsonb_build_object('work_order_id', work_order, 'rule_id', $4::text,
                                   'tag_id', $5::bigint, 'asset_id', $6::uuid,
                                   'failure_mode', $7::text, 'auto_close_at', auto_close_at))
            END AS event_seq
     FROM e";

/// What `alarm_raised_effects` or `alarm_cleared_effects` did (type `alarm_effect`).
#[derive(Debug, sqlx::FromRow)]
struct Effect {
    outcome: String,
    work_order: Option<Uuid>,
    escalated: bool,
    shelved_until: Option<DateTime<Utc>>,
    auto_close_at: Option<DateTime<Utc>>,
}

impl Effect {
    fn into_outcome(self) -> Result<AlarmOutcome, sqlx::Error> {
        let outcome = match (self.outcome.as_str(), self.work_order, self.shelved_until) {
            ("duplicate", _, _) => AlarmOutcome::AlreadyApplied,
            ("suppressed", _, Some(until)) => AlarmOutcome::Suppressed { until },
            ("created", Some(work_order), _) => AlarmOutcome::Created { work_order },
            ("appended", Some(work_order), _) => AlarmOutcome::Appended {
                work_order,
                escalated: self.escalated,
            },
            ("cleared", work_order, _) => AlarmOutcome::Cleared {
                work_order,
                auto_close_at: self.auto_close_at,
            },
            _ => {
                return Err(sqlx::Error::Decode(
                    format!("alarm effect {self:?} is none the service knows").into(),
                ));
            }
        };
        Ok(outcome)
    }
}

async fn raised(
    pool: &PgPool,
    s: &AlarmSubject,
    key: &str,
    at: Timestamp,
    value: f64,
    draft: &WorkOrderDraft,
) -> Result<AlarmOutcome, sqlx::Error> {
    // The event's detail but for `alarm_id`, which the database adds.
    let detail = json!({
        "rule_id": s.rule_id,
        "tag": s.tag.as_str(),
        "value": value,
        "at": at.to_string(),
        "severity": s.severity.as_str(),
    });
    let effect: Effect = sqlx::query_as(RAISED)
        .bind(migrations::TENANT_SETTING)
        .bind(s.tenant.as_uuid().to_string())
        .bind(key)
        .bind(&s.rule_id)
        .bind(s.tag_id)
        .bind(s.asset.as_uuid())
        .bind(&s.failure_mode)
        .bind(s.severity.as_str())
        .bind(value)
        .bind(at.to_datetime())
        .bind(detail)
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .bind(&draft.title)
        .bind(&draft.description)
        .bind(draft.priority.as_str())
        .bind(draft.work_type.as_str())
        .bind(repeat_since(at, draft.repeat_window))
        .bind(i64::try_from(draft.repeat_window.as_secs()).unwrap_or(i64::MAX))
        .bind(&draft.checklist)
        .fetch_one(pool)
        .await?;
    let outcome = effect.into_outcome()?;
    match outcome {
        AlarmOutcome::Suppressed { until } => {
            tracing::info!(rule = %s.rule_id, tag = %s.tag, %until, "alarm raised while shelved: no work order");
        }
        AlarmOutcome::Created { work_order } => {
            tracing::info!(%work_order, priority = %draft.priority, "work order opened");
        }
        _ => {}
    }
    Ok(outcome)
}

/// The earliest closing of a previous work order that makes a new one a repeat failure:
/// `window` before `at`. `None` (no bound) when that is before the year 1: no work order
/// closed before then, and PostgreSQL cannot hold every such time.
fn repeat_since(at: Timestamp, window: Duration) -> Option<DateTime<Utc>> {
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    at.to_datetime()
        .and_then(|t| t.checked_sub_signed(window))
        .filter(|since| since.year() >= 1)
}

async fn cleared(
    pool: &PgPool,
    s: &AlarmSubject,
    raise_key: &str,
    at: Timestamp,
    value: f64,
    healthy_period: Option<Duration>,
) -> Result<AlarmOutcome, sqlx::Error> {
    // When the work order closes by itself, should the database find nobody has started on
    // it and no other alarm of its failure mode active.
    let auto_close_at = healthy_period.and_then(|period| {
        let period = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
        at.to_datetime().and_then(|t| t.checked_add_signed(period))
    });
    // The note's detail but for `auto_close_at` and `stays_open`, which the database adds.
    let detail = json!({
        "rule_id": s.rule_id,
        "tag": s.tag.as_str(),
        "value": value,
        "at": at.to_string(),
    });
    let effect: Effect = sqlx::query_as(CLEARED)
        .bind(migrations::TENANT_SETTING)
        .bind(s.tenant.as_uuid().to_string())
        .bind(format!("{raise_key}:cleared"))
        .bind(&s.rule_id)
        .bind(s.tag_id)
        .bind(s.asset.as_uuid())
        .bind(&s.failure_mode)
        .bind(at.to_datetime())
        .bind(detail)
        .bind(healthy_period.is_some())
        .bind(auto_close_at)
        .fetch_one(pool)
        .await?;
    effect.into_outcome()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn effect(outcome: &str) -> Effect {
        Effect {
            outcome: outcome.to_owned(),
            work_order: None,
            escalated: false,
            shelved_until: None,
            auto_close_at: None,
        }
    }

    #[test]
    fn effects_become_outcomes() {
        let id = Uuid::new_v4();
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let cases = [
            (effect("duplicate"), AlarmOutcome::AlreadyApplied),
            (
                Effect {
                    shelved_until: Some(at),
                    ..effect("suppressed")
                },
                AlarmOutcome::Suppressed { until: at },
            ),
            (
                Effect {
                    work_order: Some(id),
                    ..effect("created")
                },
                AlarmOutcome::Created { work_order: id },
            ),
            (
                Effect {
                    work_order: Some(id),
                    escalated: true,
                    ..effect("appended")
                },
                AlarmOutcome::Appended {
                    work_order: id,
                    escalated: true,
                },
            ),
            (
                effect("cleared"),
                AlarmOutcome::Cleared {
                    work_order: None,
                    auto_close_at: None,
                },
            ),
            (
                Effect {
                    work_order: Some(id),
                    auto_close_at: Some(at),
                    ..effect("cleared")
                },
                AlarmOutcome::Cleared {
                    work_order: Some(id),
                    auto_close_at: Some(at),
                },
            ),
        ];
        for (effect, expected) in cases {
            let shown = format!("{effect:?}");
            assert_eq!(effect.into_outcome().ok(), Some(expected), "{shown}");
        }
    }

    #[test]
    fn an_effect_missing_what_its_outcome_needs_is_an_error() {
        for effect in [
            effect("created"),
            effect("appended"),
            effect("suppressed"),
            effect("opened"),
        ] {
            let shown = format!("{effect:?}");
            assert!(
                matches!(effect.into_outcome(), Err(sqlx::Error::Decode(_))),
                "{shown}"
            );
        }
    }

    #[test]
    fn the_repeat_window_reaches_back_at_most_to_the_year_1() {
        let at = Timestamp::from_micros(1_790_000_000_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(
            repeat_since(at, day),
            at.to_datetime().map(|t| t - chrono::Duration::days(1))
        );
        assert_eq!(repeat_since(at, day * 366 * 3_000), None);
        assert_eq!(repeat_since(at, Duration::MAX), None);
    }
}
