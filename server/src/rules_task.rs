//! Feeds stored readings to the rules engine and applies its alarm events to the CMMS.
//!
//! The tags are split into [`RulesSource::shards`] shards by asset (so a combination, which
//! spans the tags of one asset, stays in one shard); each shard is a task that owns its own
//! [`Engine`], so the hot path takes no lock, and applies its own events, so one shard's
//! round trip to the database never holds up another's evaluation. Around the shards:
//! - Routing: the coordinating task takes ingest's batches and hands each shard its readings.
//! - Order: with a reorder window, each tag's readings wait that long (event time) in its
//!   shard's [`Reorder`] buffer so that late ones are evaluated in order; by default none wait.
//! - Start: the engines are fed the recent stored history ([`RulesSource::warm_up`] at most,
//!   as far back as the rules' windows and delays reach), emitting nothing, so baselines,
//!   windows and running delays carry on; then the alarms the database has on record as
//!   active are restored, so none is forgotten and none fires a second time.
//! - Paging: each shard's [`Pager`] holds raises found in replayed data until their outcome is
//!   known; a condition that began and ended during an outage goes on the asset's history only.
//! - Events: each is retried until the work-order service has applied it. The service is
//!   idempotent, so a retry after an ambiguous failure cannot open a second work order. At
//!   the server's stop, once ingest has ended, the events still to apply wait at most
//!   [`RulesSource::database_timeout`] for the database ([`run`]'s `give_up`); what it has
//!   not confirmed by then is logged, its statement is cancelled at the end of the stop
//!   (`Services::stop`), and the next start settles the alarm against the record and the
//!   readings.
//! - Healthy periods: every [`SWEEP_EVERY`], work orders whose condition has stayed clear
//!   long enough before work started are closed.
//! - Reload: when rule files are given, they are re-read every [`RELOAD_EVERY`]; on a changed,
//!   valid set every shard finishes what it has and pauses, new engines are built as at start
//!   and handed over; an invalid set keeps the running rules and is reported in the log, a
//!   metric and the API. A stop during a reload gives the reload up: the shards carry on
//!   with the engines they had.
//! - Database: building engines waits at most [`RulesSource::database_timeout`] for each
//!   answer and tries again after a backoff; the server's stop ends the waiting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use api::{AlarmOutcome, RecordedAlarm, RetireReason, RulesStatus, WorkOrderService};
use ingest::RuleInput;
use ingest::queue;
use ingest::store::StoreError;
use model::Timestamp;
use model::alarm::AlarmEvent;
use rules::paging::{Page, Pager};
use rules::reorder::Reorder;
use rules::{ActiveAlarm, Engine, RuleSet, TagContext};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::services::load_rule_files;

/// How often the engine's time is moved to the wall clock, so that silent tags go stale (and
/// their alarms escalate) while no reading arrives, and held replayed alarms are released.
const ADVANCE_EVERY: Duration = Duration::from_secs(1);
/// How often work orders past their healthy period are closed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// How often watched rule files are re-read.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// Batches waiting for one shard; a full queue holds up the routing, and so ingest.
const SHARD_QUEUE: usize = 64;
/// The longest wait for the first row of the warm-up's history, however often it timed out.
const MAX_FIRST_ROW_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub struct RulesStats {
    pub alarms_raised: AtomicU64,
    pub alarms_cleared: AtomicU64,
    pub alarms_history: AtomicU64,
    pub work_orders_opened: AtomicU64,
    pub work_orders_appended: AtomicU64,
    pub work_orders_auto_closed: AtomicU64,
    pub reloads: AtomicU64,
    /// Steps of building engines given up because the database did not answer within
    /// [`RulesSource::database_timeout`] (each tried again).
    pub database_timeouts: AtomicU64,
    /// Alarm events (and replayed alarms) given up at the server's stop, the database not
    /// having confirmed them within [`RulesSource::database_timeout`].
    pub events_given_up: AtomicU64,
}

/// Where the rules come from and how they run.
#[derive(Debug, Clone)]
pub struct RulesSource {
    pub rules: Arc<RuleSet>,
    /// The files `rules` was loaded from, watched for changes; empty for built-in rules.
    pub files: Vec<PathBuf>,
    /// Raises older than this (event time against the wall clock) are replayed data.
    pub replay_horizon: Duration,
    /// How late (in event time) a reading may arrive and still be evaluated in order.
    pub reorder_window: Duration,
    /// The most stored history a fresh engine is fed; zero starts engines empty.
    pub warm_up: Duration,
    /// Engines, each owning the tags of some assets; at least one.
    pub shards: usize,
    /// How long building engines waits for one answer of the database, and how long after
    /// the server's stop the alarm events still to apply wait for it.
    pub database_timeout: Duration,
}

/// What the coordinating task tells a shard.
enum ToShard {
    Readings(Vec<RuleInput>),
    /// A reload: once every event so far is applied, answer on `paused` with what the
    /// engine has seen of each tag, then carry on with the engine that comes on `next`.
    /// A `next` dropped unsent (the reload given up) keeps the engine the shard has.
    Swap {
        paused: oneshot::Sender<Seen>,
        next: oneshot::Receiver<Engine>,
    },
}

/// The event time of the latest reading each tag's engine has evaluated, by tag id.
type Seen = HashMap<i64, Timestamp>;

/// What every shard shares.
#[derive(Clone)]
struct ShardContext {
    work_orders: WorkOrderService,
    stats: Arc<RulesStats>,
    replay_horizon: Duration,
    reorder_window: Duration,
    /// Once cancelled (at the server's stop), events not yet applied are given up.
    give_up: CancellationToken,
}

/// Runs until the ingest side closes the channel and every shard has applied its events.
/// `ready` fires once the engines are built: ingest must not store anything before, or the
/// warm-up would take readings that are still to come as live ones for history. Once
/// `stopping` is cancelled no reload starts, and one under way is given up (as is the start,
/// without `ready`). Once `give_up` is cancelled (by the stop, when the database has had long
/// enough), the events not yet applied are given up, and so are readings still waiting for
/// a shard that cannot take them.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(skip_all, name = "rules")]
pub async fn run(
    source: RulesSource,
    mut input: queue::Receiver<Vec<RuleInput>>,
    work_orders: WorkOrderService,
    pool: PgPool,
    stats: Arc<RulesStats>,
    status: Arc<RulesStatus>,
    ready: oneshot::Sender<()>,
    stopping: CancellationToken,
    give_up: CancellationToken,
) {
    let shards = source.shards.max(1);
    let watching = !source.files.is_empty();
    let mut loaded_text = if watching {
        read_files(&source.files).await.ok()
    } else {
        None
    };
    let build = Builder {
        shards,
        work_orders: work_orders.clone(),
        pool,
        warm_up: source.warm_up,
        timeout: source.database_timeout,
        stats: Arc::clone(&stats),
        stopping: stopping.clone(),
    };
    let Some(engines) = build.engines(&source.rules, None).await else {
        tracing::info!("rules engine stopped before it started");
        return;
    };
    let _ = ready.send(());
    status.loaded(
        &source.rules.source_name,
        source.rules.rules.len(),
        watching,
    );
    let context = ShardContext {
        work_orders: work_orders.clone(),
        stats: Arc::clone(&stats),
        replay_horizon: source.replay_horizon,
        reorder_window: source.reorder_window,
        give_up: give_up.clone(),
    };
    let mut senders = Vec::with_capacity(shards);
    let mut tasks = JoinSet::new();
    for (id, engine) in engines.into_iter().enumerate() {
        let (tx, rx) = queue::bounded(SHARD_QUEUE);
        tasks.spawn(shard(id, engine, rx, context.clone()));
        senders.push(tx);
    }
    let sweeper = tokio::spawn(sweep(work_orders, Arc::clone(&stats)));
    let mut split: Vec<Vec<RuleInput>> = (0..shards).map(|_| Vec::new()).collect();
    let mut reload = interval(RELOAD_EVERY);
    loop {
        tokio::select! {
            // A shard ends only when its channel closes, after this loop. One that ended
            // before (a panic) would leave its assets unevaluated while ingest stores their
            // readings: the task ends instead, so that the server stops (and ingest stops
            // storing what the rules can no longer see) and can be restarted.
            Some(ended) = tasks.join_next() => {
                match ended {
                    Err(e) => tracing::error!(error = %e, "a rules shard failed; the rules engine stops"),
                    Ok(()) => tracing::error!("a rules shard stopped; the rules engine stops"),
                }
                break;
            }
            batch = input.recv() => {
                // Ingest has stopped: the shards evaluate what they hold, apply, and stop.
                let Some(batch) = batch else { break };
                // Ingest sets the rules channel's depth as it sends; here as it drains.
                metrics::gauge!("maintainpro_ingest_queue_depth", "stage" => "rules")
                    .set(input.len() as f64);
                for r in batch {
                    if let Some(i) = shard_of(&r.ctx, shards) {
                        split[i].push(r);
                    }
                }
                for (tx, readings) in senders.iter().zip(split.iter_mut()) {
                    if !readings.is_empty() {
                        let readings = std::mem::take(readings);
                        tokio::select! {
                            // A shard with room takes its readings even after the give-up.
                            biased;
                            // A shard that has stopped is seen above at the next turn.
                            sent = tx.send(ToShard::Readings(readings)) => if sent.is_err() {
                                tracing::error!("a rules shard has stopped; its readings are not evaluated");
                            },
                            // The shard is stuck applying events the database does not take.
                            () = give_up.cancelled() => tracing::error!(
                                "readings not evaluated: the server is stopping and their \
                                 rules shard is waiting for the database"
                            ),
                        }
                    }
                }
                let fullest = senders
                    .iter()
                    .map(|tx| tx.len())
                    .max()
                    .unwrap_or(0);
                metrics::gauge!("maintainpro_rules_shard_queue_depth_max").set(fullest as f64);
            }
            _ = reload.tick(), if watching && !stopping.is_cancelled() => {
                if let Some(rules) = changed_rules(&source.files, &mut loaded_text, &status).await {
                    if swap_engines(&build, &rules, &senders).await {
                        stats.reloads.fetch_add(1, Ordering::Relaxed);
                        status.loaded(&rules.source_name, rules.rules.len(), watching);
                        tracing::info!(rules = rules.rules.len(), "rule files reloaded");
                    } else {
                        tracing::info!("rule reload given up: the server is stopping");
                    }
                }
            }
        }
    }
    drop(senders);
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a rules shard failed");
        }
    }
    sweeper.abort();
    tracing::info!("rules engine stopped");
}

/// The shard that owns a tag's state: by its asset, so that the tags of one asset (and the
/// combinations across them) share a shard. Tags without an asset are never evaluated.
fn shard_of(ctx: &TagContext, shards: usize) -> Option<usize> {
    let asset = ctx.asset?.as_uuid().as_u128();
    // Fold the 128 bits: random in a v4 id, partly time in a v7 one.
    let folded = (asset as u64) ^ ((asset >> 64) as u64);
    Some((folded % shards as u64) as usize)
}

/// Pauses every shard once it has applied its events, builds the new engines and hands
/// them over. Readings queue up meanwhile, and push back on ingest. The new engines are
/// warmed up with the stored readings the old ones had evaluated, and no others: a reading
/// stored but still queued (ingest hands readings on before it commits them) comes to the
/// new engine live, and its events with it. Returns false when the server began to stop
/// before the engines were built: the shards then go on with their old ones.
async fn swap_engines(
    build: &Builder,
    rules: &Arc<RuleSet>,
    senders: &[queue::Sender<ToShard>],
) -> bool {
    let mut paused = Vec::with_capacity(senders.len());
    let mut next = Vec::with_capacity(senders.len());
    for tx in senders {
        let (paused_tx, paused_rx) = oneshot::channel();
        let (next_tx, next_rx) = oneshot::channel();
        // A shard that has stopped has nothing to swap.
        if tx
            .send(ToShard::Swap {
                paused: paused_tx,
                next: next_rx,
            })
            .await
            .is_ok()
        {
            paused.push(paused_rx);
        }
        next.push(next_tx);
    }
    let mut seen = Seen::new();
    for p in paused {
        if let Ok(part) = p.await {
            seen.extend(part);
        }
    }
    let Some(engines) = build.engines(rules, Some(&seen)).await else {
        // Dropping `next` unsent tells each shard to keep its engine.
        return false;
    };
    for (tx, engine) in next.into_iter().zip(engines) {
        let _ = tx.send(engine);
    }
    true
}

/// One shard: evaluates its readings, pages and applies the events, moves its engine's time.
#[tracing::instrument(skip_all, fields(shard = id))]
async fn shard(
    id: usize,
    mut engine: Engine,
    mut input: queue::Receiver<ToShard>,
    context: ShardContext,
) {
    let label = id.to_string();
    let mut pager = Pager::new(context.replay_horizon);
    let mut reorder = Reorder::new(context.reorder_window);
    let mut ready: Vec<(Timestamp, RuleInput)> = Vec::new();
    let mut events = Vec::new();
    let mut pages = Vec::new();
    let mut advance = interval(ADVANCE_EVERY);
    let mut closed = false;
    while !closed {
        tokio::select! {
            message = input.recv() => {
                match message {
                    Some(ToShard::Readings(batch)) => {
                        for r in batch {
                            reorder.push(r.ctx.tag_id, r.ts, r, &mut ready);
                        }
                    }
                    Some(ToShard::Swap { paused, next }) => {
                        // Every event so far has been applied at the end of the last turn.
                        let _ = paused.send(engine.last_seen_all().collect());
                        // Without a new engine (the reload given up) the old one goes on.
                        if let Ok(fresh) = next.await {
                            engine = fresh;
                        }
                    }
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
                metrics::gauge!("maintainpro_rules_readings_reordering", "shard" => label.clone())
                    .set(reorder.held() as f64);
            }
        }
        let now = Timestamp::now();
        for event in events.drain(..) {
            pager.offer(event, now, &mut pages);
        }
        pager.release(now, |tag| engine.last_seen(tag), &mut pages);
        metrics::gauge!("maintainpro_rules_alarms_held", "shard" => label.clone())
            .set(pager.held() as f64);
        for page in pages.drain(..) {
            match page {
                Page::Now(event) => apply(&context, &event).await,
                Page::History(events) => record_history(&context, &events).await,
            }
        }
    }
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

/// Builds the shards' engines for a rule set, at start and at every reload.
struct Builder {
    shards: usize,
    work_orders: WorkOrderService,
    pool: PgPool,
    warm_up: Duration,
    /// The longest wait for one answer of the database.
    timeout: Duration,
    stats: Arc<RulesStats>,
    /// Cancelled when the server stops: building is given up.
    stopping: CancellationToken,
}

impl Builder {
    /// Fresh engines for `rules`, one per shard: fed the recent history (with `seen`, only
    /// readings up to each tag's time in it), then given the alarms on record as active.
    /// Waits (retrying) for the database: evaluating without the active alarms would raise
    /// them a second time. None once the server is stopping.
    async fn engines(&self, rules: &Arc<RuleSet>, seen: Option<&Seen>) -> Option<Vec<Engine>> {
        let recorded = self
            .until_done("read the active alarms", || {
                self.work_orders.active_alarms()
            })
            .await?;
        // An alarm of a rule no longer loaded could never clear: retire it.
        let (known, orphans): (Vec<RecordedAlarm>, Vec<RecordedAlarm>) = recorded
            .into_iter()
            .partition(|a| rules.rules.iter().any(|r| r.id == a.rule_id));
        for orphan in &orphans {
            self.retire(orphan, RetireReason::RuleRemoved).await?;
        }
        let mut engines = self.warmed_up(rules, seen).await?;
        // Nor could an alarm whose rule no longer selects its tag, as far as an engine that
        // has set the tag up can tell.
        let (unselected, kept): (Vec<_>, Vec<_>) = known
            .iter()
            .map(|a| {
                let active = ActiveAlarm {
                    tag_id: a.tag_id,
                    rule_id: a.rule_id.clone(),
                    raised_at: a.raised_at,
                    severity: a.severity,
                    value: a.value,
                };
                (a, active)
            })
            .partition(|(_, a)| engines.iter().any(|e| e.no_longer_selects(a)));
        for (alarm, _) in &unselected {
            self.retire(alarm, RetireReason::TagNoLongerSelected)
                .await?;
        }
        // Each engine takes over the alarms of its own tags; the others wait unused in
        // case a tag moves to another asset, and so to another shard.
        for engine in &mut engines {
            engine.restore(kept.iter().map(|(_, a)| a.clone()));
        }
        tracing::info!(
            restored = kept.len(),
            retired = orphans.len() + unselected.len(),
            "active alarms restored"
        );
        Some(engines)
    }

    /// Runs `op` until it succeeds, each try given at most the database timeout, backing off
    /// between tries (100 ms doubling to 5 s). None once the server is stopping.
    async fn until_done<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        mut op: impl FnMut() -> F,
    ) -> Option<T> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let answer = tokio::select! {
                biased;
                () = self.stopping.cancelled() => return None,
                answer = tokio::time::timeout(self.timeout, op()) => answer,
            };
            match answer {
                Ok(Ok(v)) => return Some(v),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot {what}; retrying");
                }
                Err(_) => self.timed_out(what, self.timeout, backoff),
            }
            back_off(&mut backoff, &self.stopping).await?;
        }
    }

    /// Counts and logs a step the database did not answer within `waited`.
    fn timed_out(&self, what: &str, waited: Duration, retry_in: Duration) {
        self.stats.database_timeouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_rules_database_timeouts_total").increment(1);
        tracing::warn!(
            timeout = ?waited,
            ?retry_in,
            "cannot {what}: the database did not answer within the timeout (if it is only \
             slow, raise rules.database_timeout); retrying"
        );
    }

    /// Retires an alarm that can no longer clear by itself (retrying until the database
    /// has done it) and says so in the log. None once the server is stopping.
    async fn retire(&self, alarm: &RecordedAlarm, reason: RetireReason) -> Option<()> {
        self.until_done("retire an alarm that can no longer clear", || {
            self.work_orders.retire(alarm, reason)
        })
        .await?;
        let why = match reason {
            RetireReason::RuleRemoved => "its rule is no longer loaded",
            RetireReason::TagNoLongerSelected => "its rule no longer selects its tag",
        };
        tracing::warn!(
            rule = %alarm.rule_id,
            tag_id = alarm.tag_id,
            raised_at = %alarm.raised_at,
            "active alarm retired: {why}"
        );
        Some(())
    }

    /// Engines fed the stored readings as far back as the rules' memory reaches (at most
    /// `warm_up`), and with `seen` no later than each tag's time there. A database that
    /// refuses the query for good leaves them empty, as before any history existed; one that
    /// is away, or does not answer within the timeout, is waited for. None once the server
    /// is stopping.
    async fn warmed_up(&self, rules: &Arc<RuleSet>, seen: Option<&Seen>) -> Option<Vec<Engine>> {
        let fresh = || -> Vec<Engine> {
            (0..self.shards)
                .map(|_| Engine::new(Arc::clone(rules)))
                .collect()
        };
        if self.warm_up.is_zero() {
            return Some(fresh());
        }
        // Even a span of zero feeds each tag's latest reading: its time is what a stale rule
        // needs, and a tag the engine knows takes its recorded alarms over at once.
        let span = rules.warm_up_span(self.warm_up);
        let now = Timestamp::now();
        let mut backoff = Duration::from_millis(100);
        // The first row of a long history comes only once the database has sorted it: after
        // a timeout, each try waits twice as long for it (at most an hour), so that a slow
        // read finishes in the end rather than start over for good. Every other step keeps
        // the timeout.
        let mut first_row = self.timeout;
        loop {
            let started = Instant::now();
            let mut engines = fresh();
            let read = ingest::recent::recent_readings(
                &self.pool,
                now,
                span,
                self.timeout,
                first_row,
                |r| {
                    let evaluated_before = seen.is_none_or(|seen| {
                        seen.get(&r.ctx.tag_id).is_some_and(|&last| r.ts <= last)
                    });
                    if let (true, Some(i)) = (evaluated_before, shard_of(&r.ctx, self.shards)) {
                        engines[i].warm_up(&r.ctx, r.ts, r.value, r.quality);
                    }
                },
            );
            let result = tokio::select! {
                biased;
                () = self.stopping.cancelled() => return None,
                result = read => result,
            };
            match result {
                Ok(found) => {
                    metrics::counter!("maintainpro_rules_warm_up_readings_total")
                        .increment(found.readings);
                    if found.bad_quality_codes > 0 {
                        tracing::warn!(
                            rows = found.bad_quality_codes,
                            "stored readings with an unknown quality code left out of the warm-up"
                        );
                    }
                    tracing::info!(
                        readings = found.readings,
                        tenants = found.tenants,
                        span = %humantime::format_duration(span),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "rules engine warmed up from stored history"
                    );
                    return Some(engines);
                }
                Err(StoreError::TimedOut(waited)) => {
                    self.timed_out("read the recent history", waited, backoff);
                    first_row = (first_row * 2).min(MAX_FIRST_ROW_WAIT);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot read the recent history; retrying");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the recent history: the rules start without it");
                    return Some(fresh());
                }
            }
            back_off(&mut backoff, &self.stopping).await?;
        }
    }
}

/// Closes work orders past their healthy period, every [`SWEEP_EVERY`].
async fn sweep(work_orders: WorkOrderService, stats: Arc<RulesStats>) {
    let mut every = interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        close_healthy(&work_orders, &stats).await;
    }
}

/// Runs `op` until it succeeds, backing off on errors. None once `give_up` is cancelled,
/// whether `op` was waiting for an answer or for its next try.
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut op: impl FnMut() -> F,
    give_up: &CancellationToken,
) -> Option<T> {
    let mut backoff = Duration::from_millis(100);
    loop {
        // After the give-up no try starts: it would hold a connection waiting for a database
        // known not to answer, and might still be applied when it does.
        if give_up.is_cancelled() {
            return None;
        }
        let e = tokio::select! {
            // An answer that came in time wins over a give-up at the same moment.
            biased;
            result = op() => match result {
                Ok(v) => return Some(v),
                Err(e) => e,
            },
            () = give_up.cancelled() => return None,
        };
        tracing::warn!(error = %e, retry_in = ?backoff, "cannot {what}; retrying");
        back_off(&mut backoff, give_up).await?;
    }
}

/// Sleeps `backoff` and doubles it (at most 5 s). None, at once, when `stop` is cancelled.
async fn back_off(backoff: &mut Duration, stop: &CancellationToken) -> Option<()> {
    tokio::select! {
        biased;
        () = stop.cancelled() => return None,
        () = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    Some(())
}

/// Logs and counts an event (or a replayed alarm) the database did not take before the stop;
/// `next` says what becomes of it.
fn given_up(context: &ShardContext, event: &AlarmEvent, what: &str, next: &str) {
    let s = event.subject();
    context
        .stats
        .events_given_up
        .fetch_add(1, Ordering::Relaxed);
    metrics::counter!("maintainpro_rules_events_given_up_total").increment(1);
    tracing::error!(
        rule = %s.rule_id,
        tag = %s.tag,
        key = %event.alarm_key(),
        "{what} given up: the server is stopping and the database has not confirmed it; {next}"
    );
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

async fn record_history(context: &ShardContext, events: &[AlarmEvent]) {
    let (work_orders, stats) = (&context.work_orders, &context.stats);
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
    if retry("record a replayed alarm", write, &context.give_up)
        .await
        .is_none()
    {
        given_up(
            context,
            first,
            "replayed alarm",
            "its statement, if still running, is cancelled at the end of the stop, and the \
             alarm stays off the asset's history",
        );
    }
}

async fn apply(context: &ShardContext, event: &AlarmEvent) {
    let (work_orders, stats) = (&context.work_orders, &context.stats);
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
    let Some(outcome) = retry("apply an alarm event", attempt, &context.give_up).await else {
        given_up(
            context,
            event,
            "alarm event",
            "its statement, if still running, is cancelled at the end of the stop, and the \
             next start settles the alarm against the record and the stored readings",
        );
        return;
    };
    match outcome {
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
