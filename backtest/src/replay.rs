//! Replays a history through the rules engine exactly as the live path drives it, and plays
//! the CMMS's part: one open work order per asset and failure mode.
//!
//! Pure: no I/O, no clock, no polars. Readings come in event-time order; before each one the
//! engine's time is advanced to the reading's time (live, the wall clock does that), so silent
//! tags go stale as they would have. At the end the engine is advanced to the end of the
//! window. In a backtest nobody works the work orders, so a predicted work order counts as
//! closed when the last alarm appended to it clears.
//!
//! The hot path ([`Replay::push`]) allocates nothing unless the engine emits an event or meets
//! a tag for the first time, and never goes through a hash map keyed by anything but the
//! engine's own tag id.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use model::alarm::{AlarmEvent, Decision, decide};
use model::{AssetId, Priority, Quality, Timestamp};
use rules::{Engine, RuleSet, TagContext};

use crate::BacktestError;

/// The half-open span of event time a backtest covers: `from` included, `to` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: Timestamp,
    to: Timestamp,
}

impl Window {
    /// A window of at least one microsecond, of dates that can be written down.
    pub fn new(from: Timestamp, to: Timestamp) -> Result<Self, BacktestError> {
        if from.to_datetime().is_none() || to.to_datetime().is_none() {
            return Err(BacktestError::BadWindow {
                reason: format!("{from} or {to} is not a date; give RFC 3339 times"),
            });
        }
        if from >= to {
            return Err(BacktestError::BadWindow {
                reason: format!(
                    "--from {from} is not before --to {to}; give a --from earlier than --to"
                ),
            });
        }
        Ok(Self { from, to })
    }

    pub fn from(self) -> Timestamp {
        self.from
    }

    pub fn to(self) -> Timestamp {
        self.to
    }

    pub fn contains(self, ts: Timestamp) -> bool {
        self.from <= ts && ts < self.to
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.from, self.to)
    }
}

/// The tags of a history. Readings name their tag by its index here, so that the replay
/// looks nothing up by name or database id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags {
    contexts: Vec<TagContext>,
    by_id: HashMap<i64, u32>,
}

impl Tags {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tag and returns its index. A tag id seen before keeps its index and takes the
    /// new context.
    pub fn insert(&mut self, ctx: TagContext) -> u32 {
        if let Some(&index) = self.by_id.get(&ctx.tag_id) {
            self.contexts[index as usize] = ctx;
            return index;
        }
        let index = u32::try_from(self.contexts.len()).unwrap_or(u32::MAX);
        self.by_id.insert(ctx.tag_id, index);
        self.contexts.push(ctx);
        index
    }

    pub fn index_of(&self, tag_id: i64) -> Option<u32> {
        self.by_id.get(&tag_id).copied()
    }

    pub fn get(&self, index: u32) -> Option<&TagContext> {
        self.contexts.get(index as usize)
    }

    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TagContext> {
        self.contexts.iter()
    }
}

/// One reading of a history, its tag given by its index in [`Tags`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryReading {
    pub tag: u32,
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
}

/// Where the readings of a history go as it is read: a replay, several replays over the same
/// pass, or a history file being written.
pub trait ReadingSink {
    fn push(&mut self, reading: HistoryReading) -> Result<(), BacktestError>;
}

impl<S: ReadingSink> ReadingSink for Vec<S> {
    fn push(&mut self, reading: HistoryReading) -> Result<(), BacktestError> {
        for sink in self.iter_mut() {
            sink.push(reading)?;
        }
        Ok(())
    }
}

/// A rule of the replayed rule set, as the results name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: String,
    pub failure_mode: String,
}

/// One alarm (one rule on one tag, from raise to clear).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRecord {
    /// Index into [`ReplayResult::rules`].
    pub rule: u32,
    /// Index into the history's [`Tags`].
    pub tag: u32,
    pub tag_id: i64,
    pub asset: AssetId,
    pub raised_at: Timestamp,
    /// `None`: still active at the end of the window.
    pub cleared_at: Option<Timestamp>,
    /// The value that raised it.
    pub value: f64,
    pub escalations: u32,
    /// Index into [`ReplayResult::work_orders`]: the work order it opened or was appended to.
    pub work_order: u32,
}

/// A work order the CMMS would have opened.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictedWorkOrder {
    /// The rule whose alarm opened it (index into [`ReplayResult::rules`]).
    pub rule: u32,
    pub asset: AssetId,
    pub asset_name: String,
    pub failure_mode: String,
    pub opened_at: Timestamp,
    /// When its last alarm cleared; `None`: still open at the end of the window.
    pub closed_at: Option<Timestamp>,
    /// Its priority at the end: the opening alarm's, raised by later or escalated alarms.
    pub priority: Priority,
    /// Alarms it collected, the opening one included.
    pub alarms: u32,
}

/// Counts of what the replay was fed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Readings pushed, whatever became of them.
    pub readings: u64,
    /// Readings the engine evaluated (of tags linked to an asset, in order).
    pub evaluated: u64,
    /// Readings not newer than their tag's previous one: the engine skips them, as live.
    pub skipped_out_of_order: u64,
    /// Readings of tags not linked to an asset: never evaluated, as live.
    pub without_asset: u64,
    /// Readings outside the window, or naming no known tag: ignored.
    pub ignored: u64,
    /// Tags with at least one reading.
    pub tags_with_readings: u64,
    pub first_reading: Option<Timestamp>,
    pub last_reading: Option<Timestamp>,
}

/// What a replay produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayResult {
    /// The rule set's source (file names).
    pub rule_set: String,
    pub rules: Vec<RuleInfo>,
    pub window: Window,
    /// In the order they were raised.
    pub alarms: Vec<AlarmRecord>,
    /// In the order they were opened.
    pub work_orders: Vec<PredictedWorkOrder>,
    /// Every (rule, asset) the rule watched: a rule selected a tag of the asset that had
    /// readings in the window. What a rule could have caught.
    pub coverage: Vec<(u32, AssetId)>,
    pub stats: ReplayStats,
}

/// A replay in progress: push readings in event-time order, then [`Replay::finish`].
#[derive(Debug)]
pub struct Replay {
    engine: Engine,
    rules: Arc<RuleSet>,
    tags: Arc<Tags>,
    window: Window,
    rule_index: HashMap<String, u32>,
    events: Vec<AlarmEvent>,
    last_advance: Option<Timestamp>,
    readings_per_tag: Vec<u64>,
    alarms: Vec<AlarmRecord>,
    /// (rule, tag id) -> index into `alarms`, while active.
    active: HashMap<(u32, i64), usize>,
    work_orders: Vec<PredictedWorkOrder>,
    /// Parallel to `work_orders`: alarms still active on each.
    active_per_work_order: Vec<u32>,
    /// (asset, failure mode) -> index into `work_orders`, while open.
    open: HashMap<(AssetId, String), usize>,
    stats: ReplayStats,
}

impl Replay {
    pub fn new(rules: Arc<RuleSet>, tags: Arc<Tags>, window: Window) -> Self {
        let rule_index = rules
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        Self {
            engine: Engine::new(Arc::clone(&rules)),
            readings_per_tag: vec![0; tags.len()],
            rules,
            tags,
            window,
            rule_index,
            events: Vec::new(),
            last_advance: None,
            alarms: Vec::new(),
            active: HashMap::new(),
            work_orders: Vec::new(),
            active_per_work_order: Vec::new(),
            open: HashMap::new(),
            stats: ReplayStats::default(),
        }
    }

    /// Replays every reading of `readings` and finishes.
    pub fn run(
        rules: Arc<RuleSet>,
        tags: Arc<Tags>,
        window: Window,
        readings: impl IntoIterator<Item = HistoryReading>,
    ) -> ReplayResult {
        let mut replay = Replay::new(rules, tags, window);
        for reading in readings {
            replay.feed(reading);
        }
        replay.finish()
    }

    /// Evaluates one reading, as the live path would at its event time.
    #[inline]
    pub fn feed(&mut self, reading: HistoryReading) {
        self.stats.readings += 1;
        let HistoryReading {
            tag,
            ts,
            value,
            quality,
        } = reading;
        let Some(ctx) = self.tags.get(tag) else {
            self.stats.ignored += 1;
            return;
        };
        if !self.window.contains(ts) {
            self.stats.ignored += 1;
            return;
        }
        if let Some(count) = self.readings_per_tag.get_mut(tag as usize) {
            *count += 1;
        }
        self.stats.first_reading = Some(self.stats.first_reading.map_or(ts, |f| f.min(ts)));
        self.stats.last_reading = Some(self.stats.last_reading.map_or(ts, |l| l.max(ts)));
        if ctx.asset.is_none() {
            self.stats.without_asset += 1;
            return;
        }
        // Advancing to a time not after the last one changes nothing: skip the call.
        if self.last_advance.is_none_or(|last| ts > last) {
            self.engine.advance(ts, &mut self.events);
            self.last_advance = Some(ts);
        }
        let outcome = self
            .engine
            .evaluate(ctx, ts, value, quality, &mut self.events);
        if outcome.evaluated {
            self.stats.evaluated += 1;
        }
        if outcome.skipped_out_of_order {
            self.stats.skipped_out_of_order += 1;
        }
        if !self.events.is_empty() {
            self.apply_events();
        }
    }

    /// Advances the engine to the end of the window (silence up to then raises stale
    /// alarms, as it would have live) and returns the results.
    pub fn finish(mut self) -> ReplayResult {
        self.engine.advance(self.window.to, &mut self.events);
        self.apply_events();
        self.stats.tags_with_readings =
            self.readings_per_tag.iter().filter(|&&n| n > 0).count() as u64;
        let mut coverage = Vec::new();
        for (index, &n) in self.readings_per_tag.iter().enumerate() {
            let ctx = u32::try_from(index).ok().and_then(|i| self.tags.get(i));
            let (true, Some(ctx)) = (n > 0, ctx) else {
                continue;
            };
            let Some(asset) = ctx.asset else { continue };
            for (rule, r) in self.rules.rules.iter().enumerate() {
                if r.selects(ctx) {
                    coverage.push((u32::try_from(rule).unwrap_or(u32::MAX), asset));
                }
            }
        }
        coverage.sort_unstable_by_key(|&(rule, asset)| (rule, asset.as_uuid()));
        coverage.dedup();
        ReplayResult {
            rule_set: self.rules.source_name.clone(),
            rules: self
                .rules
                .rules
                .iter()
                .map(|r| RuleInfo {
                    id: r.id.clone(),
                    failure_mode: r.failure_mode.clone(),
                })
                .collect(),
            window: self.window,
            alarms: self.alarms,
            work_orders: self.work_orders,
            coverage,
            stats: self.stats,
        }
    }

    /// Plays the CMMS's part for the events the engine emitted.
    #[cold]
    fn apply_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            let subject = event.subject();
            let Some(&rule) = self.rule_index.get(&subject.rule_id) else {
                continue;
            };
            let key = (rule, subject.tag_id);
            match &event {
                AlarmEvent::Raised {
                    at,
                    value,
                    work_order,
                    ..
                } => {
                    if self.active.contains_key(&key) {
                        continue;
                    }
                    let slot = (subject.asset, subject.failure_mode.clone());
                    let open = self.open.get(&slot).copied();
                    let current = open
                        .and_then(|i| self.work_orders.get(i))
                        .map(|w| w.priority);
                    let index = match (decide(current, work_order.priority), open) {
                        (Decision::Append { escalate_to }, Some(index)) => {
                            if let Some(w) = self.work_orders.get_mut(index) {
                                w.alarms += 1;
                                if let Some(p) = escalate_to {
                                    w.priority = p;
                                }
                            }
                            if let Some(n) = self.active_per_work_order.get_mut(index) {
                                *n += 1;
                            }
                            index
                        }
                        _ => {
                            let asset_name = self
                                .tags
                                .index_of(subject.tag_id)
                                .and_then(|t| self.tags.get(t))
                                .map(|c| c.asset_name.clone())
                                .unwrap_or_default();
                            self.work_orders.push(PredictedWorkOrder {
                                rule,
                                asset: subject.asset,
                                asset_name,
                                failure_mode: subject.failure_mode.clone(),
                                opened_at: *at,
                                closed_at: None,
                                priority: work_order.priority,
                                alarms: 1,
                            });
                            self.active_per_work_order.push(1);
                            let index = self.work_orders.len() - 1;
                            self.open.insert(slot, index);
                            index
                        }
                    };
                    self.active.insert(key, self.alarms.len());
                    self.alarms.push(AlarmRecord {
                        rule,
                        tag: self.tags.index_of(subject.tag_id).unwrap_or(u32::MAX),
                        tag_id: subject.tag_id,
                        asset: subject.asset,
                        raised_at: *at,
                        cleared_at: None,
                        value: *value,
                        escalations: 0,
                        work_order: u32::try_from(index).unwrap_or(u32::MAX),
                    });
                }
                AlarmEvent::Escalated { work_order, .. } => {
                    let Some(alarm) = self.active.get(&key).and_then(|&a| self.alarms.get_mut(a))
                    else {
                        continue;
                    };
                    alarm.escalations += 1;
                    if let Some(w) = self.work_orders.get_mut(alarm.work_order as usize)
                        && work_order.priority > w.priority
                    {
                        w.priority = work_order.priority;
                    }
                }
                AlarmEvent::Cleared { at, .. } => {
                    let Some(alarm) = self
                        .active
                        .remove(&key)
                        .and_then(|a| self.alarms.get_mut(a))
                    else {
                        continue;
                    };
                    alarm.cleared_at = Some(*at);
                    let index = alarm.work_order as usize;
                    let Some(remaining) = self.active_per_work_order.get_mut(index) else {
                        continue;
                    };
                    *remaining = remaining.saturating_sub(1);
                    if *remaining == 0
                        && let Some(w) = self.work_orders.get_mut(index)
                    {
                        w.closed_at = Some(*at);
                        self.open.remove(&(w.asset, w.failure_mode.clone()));
                    }
                }
            }
        }
        self.events = events;
    }
}

impl ReadingSink for Replay {
    #[inline]
    fn push(&mut self, reading: HistoryReading) -> Result<(), BacktestError> {
        self.feed(reading);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use model::{Criticality, TagName, TenantId};

    pub(crate) const S: i64 = 1_000_000;

    pub(crate) fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_micros(seconds * S)
    }

    pub(crate) fn rules(text: &str) -> Arc<RuleSet> {
        match RuleSet::parse("test.toml", text) {
            Ok(r) => Arc::new(r),
            Err(d) => panic!("test rules are valid: {d:?}"),
        }
    }

    /// Tags `p1.temp` (id 1) and `p2.temp` (id 2) on assets 1 and 2, and `loose.temp` (id 3)
    /// on no asset.
    pub(crate) fn tags() -> Arc<Tags> {
        let mut tags = Tags::new();
        for (id, name, asset) in [
            (1, "p1.temp", Some(1)),
            (2, "p2.temp", Some(2)),
            (3, "loose.temp", None),
        ] {
            tags.insert(TagContext {
                tenant: TenantId::from_uuid(uuid::Uuid::nil()),
                tag_id: id,
                tag: TagName::parse(name).expect("valid tag name"),
                unit: Some("C".into()),
                asset: asset.map(|a| AssetId::from_uuid(uuid::Uuid::from_u128(a))),
                asset_name: asset.map(|a| format!("Pump {a}")).unwrap_or_default(),
                asset_class: None,
                labels: Default::default(),
                criticality: Criticality::DEFAULT,
            });
        }
        Arc::new(tags)
    }

    pub(crate) fn asset(n: u128) -> AssetId {
        AssetId::from_uuid(uuid::Uuid::from_u128(n))
    }

    pub(crate) const HOT: &str = r#"
version = 1

[[rule]]
id = "hot"
tags = ["*.temp"]
severity = "high"
failure_mode = "overheat"
escalate = [{ after = "30s", severity = "critical" }]

[rule.threshold]
above = 80.0
clear_below = 70.0

[rule.work_order]
title = "Hot {asset}"

[[rule]]
id = "very-hot"
tags = ["p1.*"]
severity = "critical"
failure_mode = "overheat"

[rule.threshold]
above = 95.0
clear_below = 90.0

[rule.work_order]
title = "Very hot {asset}"
"#;

    pub(crate) fn reading(tag: u32, seconds: i64, value: f64) -> HistoryReading {
        HistoryReading {
            tag,
            ts: ts(seconds),
            value,
            quality: Quality::Good,
        }
    }

    fn window() -> Window {
        Window::new(ts(0), ts(1000)).expect("non-empty")
    }

    #[test]
    fn an_empty_window_is_refused() {
        assert!(matches!(
            Window::new(ts(5), ts(5)),
            Err(BacktestError::BadWindow { .. })
        ));
    }

    #[test]
    fn alarms_open_one_work_order_per_asset_and_failure_mode_and_close_it_with_the_last_clear() {
        let readings = [
            reading(0, 10, 85.0), // hot raised on p1: opens a work order
            reading(1, 11, 85.0), // hot raised on p2: a second asset, a second work order
            reading(0, 20, 96.0), // very-hot raised on p1: appended, lifts the priority
            reading(0, 30, 75.0), // very-hot clears (below 90); hot holds (75 >= 70)
            reading(0, 50, 60.0), // hot escalates (40 s active), then clears: the order closes
            reading(2, 55, 99.0), // no asset: never evaluated
            reading(0, 60, 85.0), // hot raised again on p1: a new work order
        ];
        let result = Replay::run(rules(HOT), tags(), window(), readings);
        let summary: Vec<_> = result
            .alarms
            .iter()
            .map(|a| {
                (
                    result.rules[a.rule as usize].id.as_str(),
                    a.tag_id,
                    a.raised_at,
                    a.cleared_at,
                    a.work_order,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("hot", 1, ts(10), Some(ts(50)), 0),
                ("hot", 2, ts(11), None, 1),
                ("very-hot", 1, ts(20), Some(ts(30)), 0),
                ("hot", 1, ts(60), None, 2),
            ]
        );
        let orders: Vec<_> = result
            .work_orders
            .iter()
            .map(|w| {
                (
                    w.rule,
                    w.asset,
                    w.opened_at,
                    w.closed_at,
                    w.alarms,
                    w.priority,
                )
            })
            .collect();
        assert_eq!(
            orders,
            [
                (0, asset(1), ts(10), Some(ts(50)), 2, Priority::Critical),
                (0, asset(2), ts(11), None, 1, Priority::High),
                (0, asset(1), ts(60), None, 1, Priority::High),
            ]
        );
        // Escalation runs on the tag's own readings: p2 has none after its raise.
        assert_eq!(result.alarms[0].escalations, 1);
        assert_eq!(result.alarms[1].escalations, 0);
        assert_eq!(result.stats.readings, 7);
        assert_eq!(result.stats.evaluated, 6);
        assert_eq!(result.stats.without_asset, 1);
        assert_eq!(result.stats.tags_with_readings, 3);
        assert_eq!(
            result.coverage,
            [(0, asset(1)), (0, asset(2)), (1, asset(1))]
        );
    }

    #[test]
    fn stale_alarms_are_raised_by_silence_up_to_the_end_of_the_window() {
        let stale = r#"
version = 1

[[rule]]
id = "silent"
tags = ["p1.temp"]
severity = "low"
failure_mode = "comms"

[rule.stale]
after = "100s"

[rule.work_order]
title = "Silent {tag}"
"#;
        let result = Replay::run(
            rules(stale),
            tags(),
            window(),
            [reading(0, 10, 1.0), reading(0, 20, 1.0)],
        );
        assert_eq!(result.alarms.len(), 1);
        assert_eq!(result.alarms[0].raised_at, ts(120));
        assert_eq!(result.alarms[0].cleared_at, None);
        assert_eq!(result.work_orders.len(), 1);
    }

    #[test]
    fn readings_outside_the_window_or_of_unknown_tags_are_ignored_and_late_ones_skipped() {
        let result = Replay::run(
            rules(HOT),
            tags(),
            Window::new(ts(10), ts(100)).expect("non-empty"),
            [
                reading(0, 5, 99.0),
                reading(9, 20, 99.0),
                reading(0, 30, 50.0),
                reading(0, 25, 99.0),
                reading(0, 100, 99.0),
            ],
        );
        assert!(result.alarms.is_empty());
        assert_eq!(result.stats.ignored, 3);
        assert_eq!(result.stats.skipped_out_of_order, 1);
        assert_eq!(result.stats.first_reading, Some(ts(25)));
        assert_eq!(result.stats.last_reading, Some(ts(30)));
    }
}
