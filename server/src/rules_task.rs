//! Feeds stored readings to the rules engine and applies its alarm events to the CMMS.
//!
//! One task owns the engine (no locks on the hot path). Around it:
//! - Order: with a reorder window, each tag's readings wait that long (event time) in a
//!   [`Reorder`] buffer so that late ones are evaluated in order; by default none wait.
//! - Start: the alarms the database has on record as active are restored into the engine
//!   before the first reading, so none is forgotten and none fires a second time.
//! - Paging: a [`Pager`] holds raises found in replayed data until their outcome is known; a
//!   condition that began and ended during an outage goes on the asset's history only.
//! - Events: each is retried until the work-order service has applied it. The service is
//!   idempotent, so a retry after an ambiguous failure cannot open a second work order.
//! - Healthy periods: every [`SWEEP_EVERY`], work orders whose condition has stayed clear
//!   long enough before work started are closed.
//! - Reload: when rule files are given, they are re-read every [`RELOAD_EVERY`]; a changed,
//!   valid set replaces the engine (which then restores the active alarms again), an invalid
//!   one keeps the running rules and is reported in the log, a metric and the API.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api::{AlarmOutcome, RecordedAlarm, RulesStatus, WorkOrderService};
use ingest::RuleInput;
use model::Timestamp;
use model::alarm::AlarmEvent;
use rules::paging::{Page, Pager};
use rules::reorder::Reorder;
use rules::{ActiveAlarm, Engine, RuleSet};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::services::load_rule_files;

/// How often the engine's time is moved to the wall clock, so that silent tags go stale (and
/// their alarms escalate) while no reading arrives, and held replayed alarms are released.
const ADVANCE_EVERY: Duration = Duration::from_secs(1);
/// How often work orders past their healthy period are closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// How often watched rule files are re-read.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct RulesStats {
    pub alarms_raised: AtomicU64,
    pub alarms_cleared: AtomicU64,
    pub alarms_history: AtomicU64,
    pub work_orders_opened: AtomicU64,
    pub work_orders_appended: AtomicU64,
    pub work_orders_auto_closed: AtomicU64,
    pub reloads: AtomicU64,
}

/// Where the rules come from.
#[derive(Debug, Clone)]
pub struct RulesSource {
    pub rules: Arc<RuleSet>,
    /// The files `rules` was loaded from, watched for changes; empty for built-in rules.
    pub files: Vec<PathBuf>,
    /// Raises older than this (event time against the wall clock) are replayed data.
    pub replay_horizon: Duration,
    /// How late (in event time) a reading may arrive and still be evaluated in order.
    pub reorder_window: Duration,
}

/// Runs until the ingest side closes the channel.
#[tracing::instrument(skip_all, name = "rules")]
pub async fn run(
    source: RulesSource,
    mut input: mpsc::Receiver<Vec<RuleInput>>,
    work_orders: WorkOrderService,
    stats: Arc<RulesStats>,
    status: Arc<RulesStatus>,
) {
    let watching = !source.files.is_empty();
    let mut loaded_text = if watching {
        read_files(&source.files).await.ok()
    } else {
        None
    };
    let mut engine = start_engine(Arc::clone(&source.rules), &work_orders).await;
    status.loaded(
        &source.rules.source_name,
        source.rules.rules.len(),
        watching,
    );
    let mut pager = Pager::new(source.replay_horizon);
    let mut reorder = Reorder::new(source.reorder_window);
    let mut ready: Vec<(Timestamp, RuleInput)> = Vec::new();
    let mut events = Vec::new();
    let mut pages = Vec::new();
    let mut advance = interval(ADVANCE_EVERY);
    let mut sweep = interval(SWEEP_EVERY);
    let mut reload = interval(RELOAD_EVERY);
    let mut closed = false;
    while !closed {
        tokio::select! {
            batch = input.recv() => {
                match batch {
                    Some(batch) => {
                        for r in batch {
                            reorder.push(r.ctx.tag_id, r.ts, r, &mut ready);
                        }
                    }
                    // Ingest has stopped: evaluate what is held, apply, and stop.
                    None => {
                        closed = true;
                        reorder.drain(&mut ready);
                    }
                }
                evaluate(&mut engine, &mut ready, &mut events);
            }
            _ = advance.tick() => {
                let now = Timestamp::now();
                reorder.flush(now, &mut ready);
                evaluate(&mut engine, &mut ready, &mut events);
                engine.advance(now, &mut events);
                metrics::gauge!("maintainpro_rules_readings_reordering").set(reorder.held() as f64);
            }
            _ = sweep.tick() => close_healthy(&work_orders, &stats).await,
            _ = reload.tick(), if watching => {
                if let Some(rules) = changed_rules(&source.files, &mut loaded_text, &status).await {
                    stats.reloads.fetch_add(1, Ordering::Relaxed);
                    status.loaded(&rules.source_name, rules.rules.len(), watching);
                    tracing::info!(rules = rules.rules.len(), "rule files reloaded");
                    engine = start_engine(rules, &work_orders).await;
                }
            }
        }
        let now = Timestamp::now();
        for event in events.drain(..) {
            pager.offer(event, now, &mut pages);
        }
        pager.release(now, |tag| engine.last_seen(tag), &mut pages);
        metrics::gauge!("maintainpro_rules_alarms_held").set(pager.held() as f64);
        for page in pages.drain(..) {
            match page {
                Page::Now(event) => apply(&work_orders, &event, &stats).await,
                Page::History(events) => record_history(&work_orders, &events, &stats).await,
            }
        }
    }
    tracing::info!("rules engine stopped");
}

/// Evaluates the readings that are ready, in order.
fn evaluate(
    engine: &mut Engine,
    ready: &mut Vec<(Timestamp, RuleInput)>,
    events: &mut Vec<AlarmEvent>,
) {
    if ready.is_empty() {
        return;
    }
    let mut late = 0u64;
    for (_, r) in ready.iter() {
        late += u64::from(
            engine
                .evaluate(&r.ctx, r.ts, r.value, r.quality, events)
                .skipped_out_of_order,
        );
    }
    metrics::counter!("maintainpro_rules_evaluations_total").increment(ready.len() as u64);
    if late > 0 {
        metrics::counter!("maintainpro_rules_readings_too_late_total").increment(late);
    }
    ready.clear();
}

fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

/// A fresh engine for `rules`, with the alarms on record as active restored. Waits (retrying)
/// for the database: evaluating without them would raise those alarms a second time.
async fn start_engine(rules: Arc<RuleSet>, work_orders: &WorkOrderService) -> Engine {
    let recorded = retry("read the active alarms", || work_orders.active_alarms()).await;
    // An alarm of a rule no longer loaded could never clear: retire it.
    let (known, orphans): (Vec<RecordedAlarm>, Vec<RecordedAlarm>) = recorded
        .into_iter()
        .partition(|a| rules.rules.iter().any(|r| r.id == a.rule_id));
    for orphan in &orphans {
        retry("retire an alarm of a removed rule", || {
            work_orders.retire(orphan)
        })
        .await;
        tracing::warn!(
            rule = %orphan.rule_id,
            tag_id = orphan.tag_id,
            raised_at = %orphan.raised_at,
            "active alarm of a rule that is no longer loaded: retired"
        );
    }
    let restored = known.len();
    let mut engine = Engine::new(rules);
    engine.restore(known.into_iter().map(
        |RecordedAlarm {
             tag_id,
             rule_id,
             raised_at,
             severity,
             value,
             ..
         }| ActiveAlarm {
            tag_id,
            rule_id,
            raised_at,
            severity,
            value,
        },
    ));
    tracing::info!(restored, retired = orphans.len(), "active alarms restored");
    engine
}

/// Runs `op` until it succeeds, backing off on errors.
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut op: impl FnMut() -> F,
) -> T {
    let mut backoff = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot {what}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn read_files(files: &[PathBuf]) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push(tokio::fs::read(f).await?);
    }
    Ok(out)
}

/// The new rule set when the files changed since `loaded` and are valid. A change that
/// does not load is reported once (log, metric, API) and the running rules stay.
async fn changed_rules(
    files: &[PathBuf],
    loaded: &mut Option<Vec<Vec<u8>>>,
    status: &RulesStatus,
) -> Option<Arc<RuleSet>> {
    let text = read_files(files).await;
    let changed = match (&text, &*loaded) {
        (Ok(now), Some(before)) => now != before,
        _ => true,
    };
    if !changed {
        return None;
    }
    let result = match text {
        Ok(text) => {
            *loaded = Some(text);
            let files = files.to_vec();
            tokio::task::spawn_blocking(move || load_rule_files(&files))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        Err(e) => {
            // Unreadable (e.g. mid-replace): report it and try again next time.
            *loaded = None;
            Err(format!("cannot read the rule files: {e}"))
        }
    };
    match result {
        Ok(rules) => {
            metrics::gauge!("maintainpro_rules_files_valid").set(1.0);
            Some(Arc::new(rules))
        }
        Err(message) => {
            if status.snapshot().last_error.map(|e| e.message) != Some(message.clone()) {
                metrics::counter!("maintainpro_rules_reload_failures_total").increment(1);
                tracing::error!(error = %message, "rule files changed but do not load; the running rules stay");
                status.reload_failed(message);
            }
            metrics::gauge!("maintainpro_rules_files_valid").set(0.0);
            None
        }
    }
}

async fn close_healthy(work_orders: &WorkOrderService, stats: &RulesStats) {
    match work_orders.close_healthy(chrono::Utc::now()).await {
        Ok(closed) => {
            for id in &closed {
                tracing::info!(work_order = %id, "work order closed: cleared automatically");
            }
            stats
                .work_orders_auto_closed
                .fetch_add(closed.len() as u64, Ordering::Relaxed);
            metrics::counter!("maintainpro_work_orders_auto_closed_total")
                .increment(closed.len() as u64);
        }
        // Due work orders stay due: the next sweep closes them.
        Err(e) => tracing::warn!(error = %e, "cannot close healthy work orders; will retry"),
    }
}

async fn record_history(work_orders: &WorkOrderService, events: &[AlarmEvent], stats: &RulesStats) {
    let Some(first) = events.first() else { return };
    let s = first.subject();
    stats.alarms_history.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("maintainpro_rules_alarms_replayed_total").increment(1);
    tracing::info!(rule = %s.rule_id, tag = %s.tag, key = %first.alarm_key(),
        "alarm began and cleared in replayed data: recorded on the asset's history, no work order");
    let write = || async {
        match work_orders.record_history(events).await {
            Err(e) if !e.is_transient() => {
                tracing::error!(error = %e, "replayed alarm rejected by the database");
                Ok(false)
            }
            other => other,
        }
    };
    retry("record a replayed alarm", write).await;
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
    let attempt = || async {
        match work_orders.on_alarm(event).await {
            // Retrying cannot help; the alarm stays in the log and the metric, and the
            // engine moves on rather than stall every tenant's rules behind it.
            Err(e) if !e.is_transient() => {
                metrics::counter!("maintainpro_rules_alarm_events_rejected_total").increment(1);
                tracing::error!(error = %e, rule = %s.rule_id, tag = %s.tag, "alarm event rejected by the database");
                Ok(None)
            }
            other => other.map(Some),
        }
    };
    match retry("apply an alarm event", attempt).await {
        Some(AlarmOutcome::Created { work_order }) => {
            stats.work_orders_opened.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("maintainpro_work_orders_opened_total").increment(1);
            tracing::info!(%work_order, rule = %s.rule_id, "work order opened");
        }
        Some(AlarmOutcome::Appended {
            work_order,
            escalated,
        }) => {
            stats.work_orders_appended.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%work_order, escalated, "alarm added to the open work order");
        }
        Some(AlarmOutcome::Cleared {
            work_order: Some(work_order),
            auto_close_at,
        }) => {
            tracing::info!(%work_order, ?auto_close_at, "condition cleared; noted on the work order");
        }
        Some(AlarmOutcome::Suppressed { until }) => {
            metrics::counter!("maintainpro_rules_alarms_suppressed_total").increment(1);
            tracing::info!(rule = %s.rule_id, tag = %s.tag, %until, "alarm suppressed: shelved");
        }
        Some(AlarmOutcome::AlreadyApplied | AlarmOutcome::Cleared { .. }) | None => {}
    }
}
