//! Feeds stored readings to the rules engine and applies its alarm events to the CMMS.
//!
//! One task owns the engine (no locks on the hot path). An alarm event is retried until the
//! work-order service has applied it: the service is idempotent, so a retry after an
//! ambiguous failure cannot open a second work order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api::{AlarmOutcome, WorkOrderService};
use ingest::RuleInput;
use model::Timestamp;
use model::alarm::AlarmEvent;
use rules::{Engine, RuleSet};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

/// How often the engine's time is moved to the wall clock, so that silent tags go stale (and
/// their alarms escalate) while no reading arrives.
const ADVANCE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct RulesStats {
    pub alarms_raised: AtomicU64,
    pub alarms_cleared: AtomicU64,
    pub work_orders_opened: AtomicU64,
    pub work_orders_appended: AtomicU64,
}

/// Runs until the ingest side closes the channel.
#[tracing::instrument(skip_all, name = "rules")]
pub async fn run(
    rules: Arc<RuleSet>,
    mut input: mpsc::Receiver<Vec<RuleInput>>,
    work_orders: WorkOrderService,
    stats: Arc<RulesStats>,
) {
    let mut engine = Engine::new(rules);
    let mut events = Vec::new();
    let mut advance = tokio::time::interval(ADVANCE_EVERY);
    advance.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = input.recv() => {
                let Some(batch) = batch else { break };
                for r in &batch {
                    engine.evaluate(&r.ctx, r.ts, r.value, r.quality, &mut events);
                }
                metrics::counter!("maintainpro_rules_evaluations_total")
                    .increment(batch.len() as u64);
            }
            _ = advance.tick() => engine.advance(Timestamp::now(), &mut events),
        }
        for event in events.drain(..) {
            apply(&work_orders, &event, &stats).await;
        }
    }
    tracing::info!("rules engine stopped");
}

async fn apply(work_orders: &WorkOrderService, event: &AlarmEvent, stats: &RulesStats) {
    let s = event.subject();
    match event {
        AlarmEvent::Raised { value, at, .. } => {
            stats.alarms_raised.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("maintainpro_rules_alarms_raised_total").increment(1);
            tracing::info!(rule = %s.rule_id, tag = %s.tag, value, %at, severity = %s.severity, "alarm raised");
        }
        AlarmEvent::Escalated { value, at, .. } => {
            metrics::counter!("maintainpro_rules_alarms_escalated_total").increment(1);
            tracing::info!(rule = %s.rule_id, tag = %s.tag, value, %at, severity = %s.severity, "alarm escalated");
        }
        AlarmEvent::Cleared { value, at, .. } => {
            stats.alarms_cleared.fetch_add(1, Ordering::Relaxed);
            tracing::info!(rule = %s.rule_id, tag = %s.tag, value, %at, "alarm cleared");
        }
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match work_orders.on_alarm(event).await {
            Ok(AlarmOutcome::Created { work_order }) => {
                stats.work_orders_opened.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("maintainpro_work_orders_opened_total").increment(1);
                tracing::info!(%work_order, rule = %s.rule_id, "work order opened");
                return;
            }
            Ok(AlarmOutcome::Appended {
                work_order,
                escalated,
            }) => {
                stats.work_orders_appended.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%work_order, escalated, "alarm added to the open work order");
                return;
            }
            Ok(AlarmOutcome::AlreadyApplied | AlarmOutcome::Cleared { .. }) => return,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "work-order service unavailable; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                // Retrying cannot help; the alarm stays in the log and the metric, and the
                // engine moves on rather than stall every tenant's rules behind it.
                metrics::counter!("maintainpro_rules_alarm_events_rejected_total").increment(1);
                tracing::error!(error = %e, rule = %s.rule_id, tag = %s.tag, "alarm event rejected by the database");
                return;
            }
        }
    }
}
