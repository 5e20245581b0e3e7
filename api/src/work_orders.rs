//! The work-order service: what an alarm does to the CMMS.
//!
//! A raised alarm opens a work order unless one is already open for the same asset and
//! failure mode; then the alarm is appended to it as an event, and raises its priority if the
//! new alarm is more urgent. Every effect carries the alarm's idempotency key, so a retried or
//! redelivered alarm changes nothing the second time. The database backs both rules with
//! unique indexes.

use model::Priority;
use model::alarm::{AlarmEvent, AlarmSubject, Decision, WorkOrderDraft, decide};
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
    Cleared {
        work_order: Option<Uuid>,
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
            AlarmEvent::Cleared { at, value, .. } => {
                cleared(&mut tx, subject, &key, *at, *value).await?
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}

async fn already_applied(
    tx: &mut Transaction<'_, Postgres>,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let hit = sqlx::query(
        "SELECT 1 FROM work_orders WHERE idempotency_key = $1
         UNION ALL SELECT 1 FROM work_order_events WHERE idempotency_key = $1 LIMIT 1",
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
    // The alarm row: one active per rule and tag. A raise for an alarm still recorded active
    // (a restart forgot it had been raised) reuses that row.
    let alarm_id: Uuid = sqlx::query_scalar(
        "WITH ins AS (
             INSERT INTO alarms (id, tenant_id, rule_id, tag_id, asset_id, failure_mode, severity,
                                 state, trigger_value, raised_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9)
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
    .fetch_one(&mut **tx)
    .await?;

    // An escalation reuses the active alarm row: it carries the severity now in force.
    sqlx::query("UPDATE alarms SET severity = $1 WHERE id = $2 AND severity <> $1")
        .bind(s.severity.as_str())
        .bind(alarm_id)
        .execute(&mut **tx)
        .await?;

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
            sqlx::query(
                "INSERT INTO work_orders (id, tenant_id, asset_id, title, description, priority,
                                          work_type, failure_mode, source, rule_id, alarm_id,
                                          idempotency_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'rule', $9, $10, $11)",
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
            .execute(&mut **tx)
            .await?;
            insert_event(tx, tenant, id, "opened_by_alarm", detail, None).await?;
            tracing::info!(work_order = %id, priority = %draft.priority, "work order opened");
            Ok(AlarmOutcome::Created { work_order: id })
        }
    }
}

async fn cleared(
    tx: &mut Transaction<'_, Postgres>,
    s: &AlarmSubject,
    raise_key: &str,
    at: model::Timestamp,
    value: f64,
) -> Result<AlarmOutcome, sqlx::Error> {
    let key = format!("{raise_key}:cleared");
    if already_applied(tx, &key).await? {
        return Ok(AlarmOutcome::AlreadyApplied);
    }
    let tenant = s.tenant.as_uuid();
    sqlx::query(
        "UPDATE alarms SET state = 'cleared', cleared_at = $4
         WHERE tenant_id = $1 AND rule_id = $2 AND tag_id = $3 AND state = 'active'",
    )
    .bind(tenant)
    .bind(&s.rule_id)
    .bind(s.tag_id)
    .bind(at.to_datetime())
    .execute(&mut **tx)
    .await?;
    let open: Option<Uuid> = sqlx::query_scalar(&format!(
        "SELECT id FROM work_orders
         WHERE tenant_id = $1 AND asset_id = $2 AND failure_mode = $3 AND status NOT IN {CLOSED_STATUSES}"
    ))
    .bind(tenant)
    .bind(s.asset.as_uuid())
    .bind(&s.failure_mode)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = open {
        let detail = json!({ "rule_id": s.rule_id, "tag": s.tag.as_str(), "value": value, "at": at.to_string() });
        insert_event(tx, tenant, id, "alarm_cleared", detail, Some(&key)).await?;
    }
    Ok(AlarmOutcome::Cleared { work_order: open })
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
