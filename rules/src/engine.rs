//! The evaluation engine: readings in, alarm events out.
//!
//! State is kept per tag: the event time of the last reading evaluated and, for every rule
//! that selects the tag, one slot with the alarm state and the rule kind's memory. A
//! combination keeps its alarm per rule and asset instead, shared by the slots of the asset's
//! tags. A reading whose event time is not after the tag's last one (a redelivery, or a late
//! reading) is skipped, so evaluating the same batch twice changes nothing. An engine
//! instance is owned by one task (one shard of tags): no locks.
//!
//! The engine reads no clock. Time moves with the readings' event time, and with
//! [`Engine::advance`], which the caller invokes periodically with the current time (the
//! wall clock live, event time in a backtest) so that silence can raise `stale` alarms, and
//! stale alarms escalate, while no reading arrives. Every other alarm runs on its readings'
//! event time alone, escalation included: a replayed backlog escalates only as far as its own
//! data shows. The latest time given to `advance` is the engine's time for stale rules: a
//! reading already older than `after` by then leaves its tag stale, and the stale alarm's
//! escalation steps due by then fire. Feeding the same calls again therefore emits nothing.
//!
//! A fresh engine can carry on where another stopped: [`Engine::warm_up`] feeds it stored
//! readings without emitting anything, which rebuilds the kinds' memory and running delays,
//! and [`Engine::restore`] then settles which alarms are active against the CMMS's record.
//!
//! The hot path (one reading) does one hash lookup for the tag and then walks the tag's
//! slots by index; it allocates only when it emits an event, meets a tag for the first time,
//! or grows the deadline heap past its largest size so far.
//!
//! [`Engine::advance`] visits only the stale slots that have something due. Each stale slot's
//! next deadline (the first moment its silence is longer than `after`, or its active alarm's
//! next escalation step) waits in a min-heap. A reading pushes it only when it is earlier than
//! the slot's entry already there; an entry is checked against its slot when it falls due and,
//! if a reading has moved the deadline on since, queued again at the new one. An `advance`
//! with nothing due looks at the top of the heap and returns; the events of one call come in
//! tag and rule order, as from a walk over every watched tag.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use model::alarm::{AlarmEvent, AlarmSubject, WorkOrderDraft};
use model::{AssetId, Criticality, Priority, Quality, Severity, TagName, TenantId, Timestamp};

use crate::alarm::{AlarmState, Transition, Verdict};
use crate::file::{Rule, RuleSet, render};
use crate::kinds::combination::Member;
use crate::kinds::{Kind, Memory};
use crate::select::Labels;

/// What the engine needs to know about a tag besides its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct TagContext {
    pub tenant: TenantId,
    pub tag_id: i64,
    pub tag: TagName,
    pub unit: Option<String>,
    /// Tags not linked to an asset are stored but never evaluated: a work order needs an asset.
    pub asset: Option<AssetId>,
    pub asset_name: String,
    /// The asset's class (e.g. `hydraulic-press`), which rules may select by.
    pub asset_class: Option<String>,
    /// The asset's labels with the tag's own on top, which rules may select by.
    pub labels: Labels,
    pub criticality: Criticality,
}

/// One alarm: its state, how many escalation steps have fired since it was raised, and the
/// value and observed quantity of the last reading judged, which escalation events carry.
#[derive(Debug, Clone, Copy)]
struct Alarm {
    state: AlarmState,
    steps: usize,
    value: f64,
    observed: f64,
}

impl Alarm {
    const NORMAL: Alarm = Alarm {
        state: AlarmState::Normal,
        steps: 0,
        value: f64::NAN,
        observed: f64::NAN,
    };

    fn step(&mut self, rule: &Rule, verdict: Verdict, ts: Timestamp) -> Option<Transition> {
        let (next, transition) = self.state.step(verdict, ts, rule.delays());
        self.state = next;
        if let Some(Transition::Raised { .. }) = transition {
            self.steps = 0;
        }
        transition
    }

    /// The next escalation step due at `now`, if the alarm is active: (raise time, the
    /// time the step was reached). Marks the step fired.
    fn next_step(&mut self, rule: &Rule, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        let AlarmState::Active { since, .. } = self.state else {
            return None;
        };
        let step = rule.escalation.get(self.steps)?;
        if now.micros_since(since) < step.after_micros() {
            return None;
        }
        self.steps += 1;
        Some((since, since.plus_micros(step.after_micros())))
    }

    /// This recorded alarm, carrying on an off-delay that `before` (the same alarm as a
    /// warm-up left it) is timing.
    fn continuing(self, before: &Alarm) -> Alarm {
        let AlarmState::Active { since, .. } = self.state else {
            return self;
        };
        let clearing_since = match before.state {
            AlarmState::Active { clearing_since, .. } => clearing_since,
            _ => None,
        };
        Alarm {
            state: AlarmState::Active {
                since,
                clearing_since,
            },
            ..self
        }
    }

    /// The earliest `now` at which [`Alarm::next_step`] has a step, if any.
    fn next_step_due(&self, rule: &Rule) -> Option<Timestamp> {
        let AlarmState::Active { since, .. } = self.state else {
            return None;
        };
        let step = rule.escalation.get(self.steps)?;
        // Past the end of time the step never falls due.
        let due = since.as_micros().checked_add(step.after_micros())?;
        Some(Timestamp::from_micros(due))
    }
}

/// How a slot is driven.
#[derive(Debug)]
enum Watch {
    /// A value kind, with its memory.
    Value(Memory),
    Stale(StaleWatch),
    BadQuality,
    /// A tag of an asset in a combination: the alarm lives in the group.
    Member {
        group: usize,
        member: usize,
    },
}

/// One rule on one tag.
#[derive(Debug)]
struct Slot {
    rule: usize,
    alarm: Alarm,
    watch: Watch,
}

/// What [`Engine::advance`] keeps of a stale slot.
#[derive(Debug, Default)]
struct StaleWatch {
    /// `advance` has judged the silence since the tag's last reading. Judging the same
    /// silence again changes nothing, so until the next reading only escalation is left.
    judged: bool,
    /// The time of the slot's live entry in [`Deadlines`]; never later than its deadline.
    queued: Option<Timestamp>,
}

impl StaleWatch {
    /// The earliest `now` at which `advance` has work on the slot: the first moment the tag's
    /// silence is longer than `after`, unless judged already, or the alarm's next escalation
    /// step, whichever comes first. `None`: nothing before the tag's next reading.
    fn deadline(
        &self,
        alarm: &Alarm,
        rule: &Rule,
        after: i64,
        last_ts: Timestamp,
    ) -> Option<Timestamp> {
        let silent = if self.judged {
            None
        } else {
            last_ts
                .as_micros()
                .checked_add(after)
                .and_then(|t| t.checked_add(1))
                .map(Timestamp::from_micros)
        };
        match (silent, alarm.next_step_due(rule)) {
            (Some(silent), Some(step)) => Some(silent.min(step)),
            (silent, step) => silent.or(step),
        }
    }
}

/// The stale slots' deadlines, earliest first: (deadline, tag, slot). An entry is live while
/// its time is its slot's `queued`; an entry superseded by an earlier one is dropped when it
/// comes up.
#[derive(Debug, Default)]
struct Deadlines(BinaryHeap<Reverse<(Timestamp, usize, usize)>>);

impl Deadlines {
    /// Queues a slot's deadline unless the slot's live entry comes no later: that entry, when
    /// it comes up, finds the slot not due yet and queues it at its deadline then.
    fn queue(
        &mut self,
        watch: &mut StaleWatch,
        deadline: Option<Timestamp>,
        tag: usize,
        slot: usize,
    ) {
        if let Some(at) = deadline
            && watch.queued.is_none_or(|queued| at < queued)
        {
            self.0.push(Reverse((at, tag, slot)));
            watch.queued = Some(at);
        }
    }

    /// Takes the earliest entry if it is due by `now`.
    fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, usize, usize)> {
        let &Reverse(entry) = self.0.peek()?;
        if entry.0 > now {
            return None;
        }
        self.0.pop();
        Some(entry)
    }
}

/// What the hot path needs of a tag.
#[derive(Debug)]
struct TagState {
    last_ts: Timestamp,
    /// The last value of good or uncertain quality.
    last_value: f64,
    slots: Vec<Slot>,
}

/// What events need of a tag, kept apart from [`TagState`] so that the hot path does not
/// drag it through the cache.
#[derive(Debug)]
struct TagIdentity {
    /// The context of the tag's first reading, refreshed by each reading that produces an
    /// event: what events that no reading of the tag triggers name (from
    /// [`Engine::advance`], or a combination cleared by another tag).
    ctx: TagContext,
    asset: AssetId,
}

/// A combination rule on one asset.
#[derive(Debug)]
struct Group {
    alarm: Alarm,
    /// The latest event time among the members' readings: the combination's clock.
    now: Option<Timestamp>,
    members: Vec<Member>,
    /// The tag (index into the engine's tags) whose reading raised the active alarm.
    raised_by: usize,
}

/// Tag ids are assigned by the database, not chosen by clients, so a fast multiplicative
/// hash is safe here and saves most of a lookup's cost over SipHash.
#[derive(Debug, Default, Clone, Copy)]
struct TagIdHasher(u64);

impl Hasher for TagIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, n: i64) {
        let x = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 32);
    }
}

/// Evaluates one rule set over the tags it is fed.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    index: HashMap<i64, usize, BuildHasherDefault<TagIdHasher>>,
    tags: Vec<TagState>,
    /// Parallel to `tags`.
    identities: Vec<TagIdentity>,
    groups: Vec<Group>,
    group_index: HashMap<(usize, AssetId), usize>,
    /// When each stale slot next has something for [`Engine::advance`] to do.
    deadlines: Deadlines,
    /// The stale slots due in one call to [`Engine::advance`], as (tag, slot); kept for its
    /// capacity.
    due: Vec<(usize, usize)>,
    /// The latest time given to [`Engine::advance`].
    clock: Option<Timestamp>,
    /// Restored alarms of tags not seen yet, by tag id: (rule index, alarm). Applied when the
    /// tag's first reading sets up its state.
    restored: HashMap<i64, Vec<(usize, Alarm)>>,
    /// Where [`Engine::warm_up`] drops the events of history; kept for its capacity.
    discarded: Vec<AlarmEvent>,
}

/// An alarm the CMMS has on record as active, handed to a fresh engine (after a restart or a
/// rule reload) so that it is neither forgotten nor raised a second time.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlarm {
    pub tag_id: i64,
    pub rule_id: String,
    pub raised_at: Timestamp,
    /// The severity in force: tells how many escalation steps have fired.
    pub severity: Severity,
    /// The value that triggered it.
    pub value: f64,
}

/// Counts of what one call to [`Engine::evaluate`] did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub evaluated: bool,
    pub skipped_out_of_order: bool,
}

/// What an event says about the reading behind it.
#[derive(Debug, Clone, Copy)]
struct Facts<'a> {
    ctx: &'a TagContext,
    asset: AssetId,
    value: f64,
    observed: f64,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Self {
        Self {
            rules,
            index: HashMap::default(),
            tags: Vec::new(),
            identities: Vec::new(),
            groups: Vec::new(),
            group_index: HashMap::new(),
            deadlines: Deadlines::default(),
            due: Vec::new(),
            clock: None,
            restored: HashMap::new(),
            discarded: Vec::new(),
        }
    }

    /// Feeds a reading of stored history to rebuild the engine's memory (rolling baselines,
    /// windows, pending on- and off-delays) where a previous engine left it, emitting nothing.
    /// Feed the history of each tag in event-time order, all of it before
    /// [`Engine::restore`] and the first live reading. The alarms it leaves active are only
    /// provisional: `restore` settles them against what the CMMS has on record.
    pub fn warm_up(&mut self, ctx: &TagContext, ts: Timestamp, value: f64, quality: Quality) {
        let mut discarded = std::mem::take(&mut self.discarded);
        self.evaluate(ctx, ts, value, quality, &mut discarded);
        discarded.clear();
        self.discarded = discarded;
    }

    /// Takes over alarms recorded as active, so that none is forgotten and none raised a
    /// second time: each continues from `raised_at` instead of starting from normal. A breach
    /// then raises nothing new, a clear emits the `Cleared` of the original raise (same
    /// idempotency key), and escalation resumes after the step its severity shows. Returns
    /// the alarms whose rule this rule set does not have (the rule was removed or renamed):
    /// the caller decides what becomes of them.
    ///
    /// Call it once, after any [`Engine::warm_up`] and before the first live reading. A tag
    /// not seen yet takes its alarms over at its first reading. On a tag the warm-up has set
    /// up, the record is the truth about which alarms are active: a recorded alarm is active
    /// from its `raised_at` (an off-delay the history shows running goes on), and an alarm the
    /// history left active without a record (its raise never reached the CMMS) is back to
    /// normal, so that a breach still present raises it anew; pending raises stay pending.
    /// Silence in the history is not judged: a `stale` rule watches each tag from its next
    /// reading, or escalates its recorded alarm while the tag stays silent.
    pub fn restore(&mut self, alarms: impl IntoIterator<Item = ActiveAlarm>) -> Vec<ActiveAlarm> {
        let mut orphans = Vec::new();
        let mut taken: HashSet<(usize, usize)> = HashSet::new();
        let mut taken_groups: HashSet<usize> = HashSet::new();
        for a in alarms {
            let Some(rule_index) = self.rules.rules.iter().position(|r| r.id == a.rule_id) else {
                orphans.push(a);
                continue;
            };
            let rule = &self.rules.rules[rule_index];
            let steps = rule
                .escalation
                .iter()
                .rposition(|s| s.severity == a.severity)
                .map_or(0, |i| i + 1);
            let alarm = Alarm {
                state: AlarmState::Active {
                    since: a.raised_at,
                    clearing_since: None,
                },
                steps,
                value: a.value,
                observed: a.value,
            };
            let Some(&index) = self.index.get(&a.tag_id) else {
                self.restored
                    .entry(a.tag_id)
                    .or_default()
                    .push((rule_index, alarm));
                continue;
            };
            for (slot_index, slot) in self.tags[index].slots.iter_mut().enumerate() {
                if slot.rule != rule_index {
                    continue;
                }
                match slot.watch {
                    Watch::Member { group, .. } => {
                        if taken_groups.insert(group) {
                            let g = &mut self.groups[group];
                            g.alarm = alarm.continuing(&g.alarm);
                            g.raised_by = index;
                        }
                    }
                    _ => {
                        slot.alarm = alarm.continuing(&slot.alarm);
                        taken.insert((index, slot_index));
                    }
                }
            }
        }
        for (group, g) in self.groups.iter_mut().enumerate() {
            if g.alarm.state.is_active() && !taken_groups.contains(&group) {
                g.alarm = Alarm::NORMAL;
            }
        }
        self.deadlines = Deadlines::default();
        for (index, tag) in self.tags.iter_mut().enumerate() {
            for (slot_index, slot) in tag.slots.iter_mut().enumerate() {
                if slot.alarm.state.is_active() && !taken.contains(&(index, slot_index)) {
                    slot.alarm = Alarm::NORMAL;
                }
                let rule = &self.rules.rules[slot.rule];
                if let (Watch::Stale(watch), Kind::Stale(stale)) = (&mut slot.watch, &rule.kind) {
                    *watch = StaleWatch {
                        judged: true,
                        queued: None,
                    };
                    let deadline =
                        watch.deadline(&slot.alarm, rule, stale.after_micros(), tag.last_ts);
                    self.deadlines.queue(watch, deadline, index, slot_index);
                }
            }
        }
        orphans
    }

    /// The event time of the latest reading evaluated for a tag.
    pub fn last_seen(&self, tag_id: i64) -> Option<Timestamp> {
        self.index.get(&tag_id).map(|&i| self.tags[i].last_ts)
    }

    /// Whether this engine can tell that `alarm` will never clear: its tag is one the engine
    /// has set up (seen in a warm-up or live), its rule is loaded, but the rule does not
    /// select the tag (the rule's selection, or the tag's asset, class or labels, changed
    /// since the alarm was raised). An alarm of a tag it has not seen, or of a rule it does
    /// not have, is not its to judge.
    pub fn no_longer_selects(&self, alarm: &ActiveAlarm) -> bool {
        let Some(rule) = self.rules.rules.iter().position(|r| r.id == alarm.rule_id) else {
            return false;
        };
        self.index
            .get(&alarm.tag_id)
            .is_some_and(|&i| self.tags[i].slots.iter().all(|s| s.rule != rule))
    }

    /// Every tag seen, with the event time of its latest reading evaluated.
    pub fn last_seen_all(&self) -> impl Iterator<Item = (i64, Timestamp)> + '_ {
        self.index
            .iter()
            .map(|(&id, &i)| (id, self.tags[i].last_ts))
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Number of alarms currently active.
    pub fn active_alarms(&self) -> usize {
        let on_tags = self
            .tags
            .iter()
            .flat_map(|t| &t.slots)
            .filter(|s| !matches!(s.watch, Watch::Member { .. }) && s.alarm.state.is_active())
            .count();
        let on_groups = self
            .groups
            .iter()
            .filter(|g| g.alarm.state.is_active())
            .count();
        on_tags + on_groups
    }

    /// Sets up the state of a tag at its first reading.
    fn add_tag(&mut self, ctx: &TagContext, asset: AssetId, ts: Timestamp) -> usize {
        let index = self.tags.len();
        let mut slots = Vec::new();
        for (rule_index, rule) in self.rules.rules.iter().enumerate() {
            if !rule.selects(ctx) {
                continue;
            }
            let watch = match &rule.kind {
                Kind::Stale(_) => Watch::Stale(StaleWatch::default()),
                Kind::BadQuality(_) => Watch::BadQuality,
                Kind::Combination(c) => {
                    let groups = &mut self.groups;
                    let group = *self
                        .group_index
                        .entry((rule_index, asset))
                        .or_insert_with(|| {
                            groups.push(Group {
                                alarm: Alarm::NORMAL,
                                now: None,
                                members: Vec::new(),
                                raised_by: index,
                            });
                            groups.len() - 1
                        });
                    let members = &mut self.groups[group].members;
                    members.push(Member {
                        conditions: c.conditions_of(ctx.tag.as_str()),
                        latest: None,
                    });
                    Watch::Member {
                        group,
                        member: members.len() - 1,
                    }
                }
                kind => Watch::Value(kind.memory()),
            };
            slots.push(Slot {
                rule: rule_index,
                alarm: Alarm::NORMAL,
                watch,
            });
        }
        for (rule_index, alarm) in self.restored.remove(&ctx.tag_id).unwrap_or_default() {
            for slot in slots.iter_mut().filter(|s| s.rule == rule_index) {
                match slot.watch {
                    Watch::Member { group, .. } => {
                        let g = &mut self.groups[group];
                        if !g.alarm.state.is_active() {
                            g.alarm = alarm;
                            g.raised_by = index;
                        }
                    }
                    _ => slot.alarm = alarm,
                }
            }
        }
        self.tags.push(TagState {
            last_ts: ts,
            last_value: f64::NAN,
            slots,
        });
        self.identities.push(TagIdentity {
            ctx: ctx.clone(),
            asset,
        });
        self.index.insert(ctx.tag_id, index);
        index
    }

    /// Evaluates one reading of `ctx`'s tag, appending alarm events to `out`.
    pub fn evaluate(
        &mut self,
        ctx: &TagContext,
        ts: Timestamp,
        value: f64,
        quality: Quality,
        out: &mut Vec<AlarmEvent>,
    ) -> Outcome {
        let Some(asset) = ctx.asset else {
            return Outcome::default();
        };
        let (index, previous) = match self.index.get(&ctx.tag_id) {
            Some(&index) => {
                let tag = &mut self.tags[index];
                if ts <= tag.last_ts {
                    return Outcome {
                        evaluated: false,
                        skipped_out_of_order: true,
                    };
                }
                let previous = (tag.last_ts, tag.last_value);
                tag.last_ts = ts;
                (index, Some(previous))
            }
            None => (self.add_tag(ctx, asset, ts), None),
        };
        // A bad-quality value is not a measurement: the value kinds neither raise nor clear on
        // it, and it is not the tag's value.
        let good = quality != Quality::Bad;
        if good {
            self.tags[index].last_value = value;
        }
        let emitted = out.len();
        let identities = &self.identities;
        let here = Facts {
            ctx,
            asset,
            value,
            observed: value,
        };
        let clock = self.clock;
        for (slot_index, slot) in self.tags[index].slots.iter_mut().enumerate() {
            let rule = &self.rules.rules[slot.rule];
            let alarm = &mut slot.alarm;
            match &mut slot.watch {
                Watch::Value(memory) => {
                    escalate(alarm, rule, here, ts, out);
                    if good {
                        let measure = rule.kind.measure(memory, ts, value);
                        let facts = Facts {
                            observed: measure.observed,
                            ..here
                        };
                        judge(alarm, rule, measure.verdict, ts, facts, out);
                    }
                }
                Watch::BadQuality => {
                    escalate(alarm, rule, here, ts, out);
                    if let Kind::BadQuality(b) = &rule.kind {
                        judge(alarm, rule, b.verdict(quality), ts, here, out);
                    }
                }
                Watch::Stale(watch) => {
                    let Kind::Stale(stale) = &rule.kind else {
                        continue;
                    };
                    let after = stale.after_micros();
                    let silence = Facts {
                        observed: stale.after.as_secs_f64(),
                        ..here
                    };
                    if let Some((last_ts, last_value)) = previous
                        && ts.micros_since(last_ts) > after
                    {
                        // The gap before this reading was too long: record it, even though
                        // it has ended by now.
                        let facts = Facts {
                            value: last_value,
                            ..silence
                        };
                        judge(
                            alarm,
                            rule,
                            Verdict::Breach,
                            last_ts.plus_micros(after),
                            facts,
                            out,
                        );
                    }
                    escalate(alarm, rule, here, ts, out);
                    if clock.is_some_and(|now| now.micros_since(ts) > after) {
                        // The engine's time is already more than `after` past this reading:
                        // the tag is still silent as of now (a backlog being replayed, or a
                        // tag first seen late). Its alarm stays, or is raised.
                        judge(
                            alarm,
                            rule,
                            Verdict::Breach,
                            ts.plus_micros(after),
                            silence,
                            out,
                        );
                    } else {
                        // A reading that was in transit while `advance` raised the alarm
                        // clears it, but not before it was raised.
                        let at = match alarm.state {
                            AlarmState::Active { since, .. } => ts.max(since),
                            _ => ts,
                        };
                        judge(alarm, rule, Verdict::Clear, at, here, out);
                    }
                    // Brought up to the engine's time, as `advance` would have.
                    if let Some(now) = clock {
                        escalate(alarm, rule, here, now, out);
                    }
                    // A new silence starts at this reading, for `advance` to judge again.
                    watch.judged = false;
                    let deadline = watch.deadline(alarm, rule, after, ts);
                    self.deadlines.queue(watch, deadline, index, slot_index);
                }
                Watch::Member { group, member } => {
                    let Kind::Combination(combination) = &rule.kind else {
                        continue;
                    };
                    let g = &mut self.groups[*group];
                    g.members[*member].latest = good.then_some((ts.as_micros(), value));
                    let now = g.now.map_or(ts, |n| n.max(ts));
                    g.now = Some(now);
                    let raiser = |raised_by: usize| Facts {
                        ctx: if raised_by == index {
                            ctx
                        } else {
                            &identities[raised_by].ctx
                        },
                        ..here
                    };
                    escalate(&mut g.alarm, rule, raiser(g.raised_by), now, out);
                    if good {
                        let verdict = combination.verdict(&g.members, now.as_micros());
                        g.alarm.value = value;
                        g.alarm.observed = value;
                        match g.alarm.step(rule, verdict, now) {
                            Some(Transition::Raised { at }) => {
                                g.raised_by = index;
                                out.push(raised_event(rule, here, at));
                            }
                            Some(Transition::Cleared { raised_at, at }) => {
                                let facts = raiser(g.raised_by);
                                out.push(cleared_event(rule, facts, g.alarm.steps, raised_at, at));
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        let identity = &mut self.identities[index];
        if out.len() > emitted && identity.ctx != *ctx {
            identity.ctx = ctx.clone();
        }
        Outcome {
            evaluated: true,
            skipped_out_of_order: false,
        }
    }

    /// Moves the engine's time to `now` without a reading: raises `stale` alarms of tags
    /// whose last reading is more than the rule's `after` older than `now`, and escalates
    /// active stale alarms whose next step is due. Call it periodically: with the wall clock
    /// when live, with event time in a backtest. A `now` earlier than a previous one does no
    /// harm.
    ///
    /// Only tags the engine has seen are watched: a tag that never delivered a reading since
    /// the engine started cannot go stale. Alarms of the other kinds run on their readings'
    /// event time and are left alone.
    ///
    /// The cost is that of the stale slots with something due, not of every watched tag.
    pub fn advance(&mut self, now: Timestamp, out: &mut Vec<AlarmEvent>) {
        self.clock = self.clock.max(Some(now));
        while let Some((at, index, slot_index)) = self.deadlines.pop_due(now) {
            let tag = &mut self.tags[index];
            let slot = &mut tag.slots[slot_index];
            let rule = &self.rules.rules[slot.rule];
            let (Watch::Stale(watch), Kind::Stale(stale)) = (&mut slot.watch, &rule.kind) else {
                continue;
            };
            if watch.queued != Some(at) {
                continue;
            }
            watch.queued = None;
            // A reading may have moved the deadline on since the entry was queued.
            match watch.deadline(&slot.alarm, rule, stale.after_micros(), tag.last_ts) {
                Some(deadline) if deadline <= now => self.due.push((index, slot_index)),
                deadline => self.deadlines.queue(watch, deadline, index, slot_index),
            }
        }
        // In tag and rule order, as a walk over every watched tag would emit them.
        self.due.sort_unstable();
        for &(index, slot_index) in &self.due {
            let tag = &mut self.tags[index];
            let identity = &self.identities[index];
            let here = Facts {
                ctx: &identity.ctx,
                asset: identity.asset,
                value: tag.last_value,
                observed: f64::NAN,
            };
            let slot = &mut tag.slots[slot_index];
            let rule = &self.rules.rules[slot.rule];
            let (Watch::Stale(watch), Kind::Stale(stale)) = (&mut slot.watch, &rule.kind) else {
                continue;
            };
            let after = stale.after_micros();
            if now.micros_since(tag.last_ts) > after {
                let facts = Facts {
                    observed: stale.after.as_secs_f64(),
                    ..here
                };
                let became_stale = tag.last_ts.plus_micros(after);
                judge(
                    &mut slot.alarm,
                    rule,
                    Verdict::Breach,
                    became_stale,
                    facts,
                    out,
                );
                watch.judged = true;
            }
            escalate(&mut slot.alarm, rule, here, now, out);
            let deadline = watch.deadline(&slot.alarm, rule, after, tag.last_ts);
            self.deadlines.queue(watch, deadline, index, slot_index);
        }
        self.due.clear();
    }
}

/// Applies a verdict to an alarm and emits the transition, if any.
fn judge(
    alarm: &mut Alarm,
    rule: &Rule,
    verdict: Verdict,
    ts: Timestamp,
    facts: Facts<'_>,
    out: &mut Vec<AlarmEvent>,
) {
    alarm.value = facts.value;
    alarm.observed = facts.observed;
    match alarm.step(rule, verdict, ts) {
        Some(Transition::Raised { at }) => out.push(raised_event(rule, facts, at)),
        Some(Transition::Cleared { raised_at, at }) => {
            out.push(cleared_event(rule, facts, alarm.steps, raised_at, at));
        }
        None => {}
    }
}

/// Emits every escalation step of an active alarm that is due at `now`. The event carries the
/// value and observed quantity of the last reading judged.
///
/// Inlined so that a rule without escalation steps, the common case, costs its callers one
/// check on every reading instead of a call.
#[inline]
fn escalate(
    alarm: &mut Alarm,
    rule: &Rule,
    facts: Facts<'_>,
    now: Timestamp,
    out: &mut Vec<AlarmEvent>,
) {
    if !rule.escalation.is_empty() {
        escalate_steps(alarm, rule, facts, now, out);
    }
}

fn escalate_steps(
    alarm: &mut Alarm,
    rule: &Rule,
    facts: Facts<'_>,
    now: Timestamp,
    out: &mut Vec<AlarmEvent>,
) {
    let facts = Facts {
        value: alarm.value,
        observed: alarm.observed,
        ..facts
    };
    while let Some((raised_at, at)) = alarm.next_step(rule, now) {
        out.push(escalated_event(rule, facts, alarm.steps, raised_at, at));
    }
}

/// The longest work-order title the CMMS stores.
pub const MAX_TITLE_CHARS: usize = 300;

/// Cuts `text` to at most `max` characters, marking the cut with an ellipsis.
/// A title the CMMS accepts: never empty (a template of placeholders that rendered to nothing
/// falls back to the rule id), never longer than [`MAX_TITLE_CHARS`].
fn fit_title(text: String, rule_id: &str) -> String {
    if text.trim().is_empty() {
        return truncate(format!("Alarm of rule {rule_id}"), MAX_TITLE_CHARS);
    }
    truncate(text, MAX_TITLE_CHARS)
}

fn truncate(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn subject(rule: &Rule, facts: Facts<'_>, severity: Severity) -> AlarmSubject {
    AlarmSubject {
        tenant: facts.ctx.tenant,
        asset: facts.asset,
        tag_id: facts.ctx.tag_id,
        tag: facts.ctx.tag.clone(),
        rule_id: rule.id.clone(),
        failure_mode: rule.failure_mode.clone(),
        severity,
    }
}

/// The rule's work order, rendered for an alarm at `at` with `severity`.
fn draft(rule: &Rule, facts: Facts<'_>, at: Timestamp, severity: Severity) -> WorkOrderDraft {
    let value_text = format!("{:.2}", facts.value);
    let observed_text = format!("{:.2}", facts.observed);
    let limit_text = rule.kind.limit().map(|l| l.to_string()).unwrap_or_default();
    let at_text = at.to_string();
    let vars = [
        ("asset", facts.ctx.asset_name.as_str()),
        ("tag", facts.ctx.tag.as_str()),
        ("value", value_text.as_str()),
        ("observed", observed_text.as_str()),
        ("limit", limit_text.as_str()),
        ("unit", facts.ctx.unit.as_deref().unwrap_or("")),
        ("rule", rule.id.as_str()),
        ("at", at_text.as_str()),
    ];
    let t = &rule.work_order;
    WorkOrderDraft {
        title: fit_title(render(&t.title, &vars), &rule.id),
        description: render(&t.description, &vars),
        work_type: t.work_type,
        priority: Priority::from_matrix(severity, facts.ctx.criticality),
        checklist: t.checklist.clone(),
        repeat_window: t.repeat_window,
    }
}

fn raised_event(rule: &Rule, facts: Facts<'_>, at: Timestamp) -> AlarmEvent {
    AlarmEvent::Raised {
        subject: subject(rule, facts, rule.severity),
        at,
        value: facts.value,
        work_order: draft(rule, facts, at, rule.severity),
    }
}

fn escalated_event(
    rule: &Rule,
    facts: Facts<'_>,
    steps: usize,
    raised_at: Timestamp,
    at: Timestamp,
) -> AlarmEvent {
    let severity = rule.severity_after(steps);
    AlarmEvent::Escalated {
        subject: subject(rule, facts, severity),
        raised_at,
        at,
        value: facts.value,
        work_order: draft(rule, facts, at, severity),
    }
}

fn cleared_event(
    rule: &Rule,
    facts: Facts<'_>,
    steps: usize,
    raised_at: Timestamp,
    at: Timestamp,
) -> AlarmEvent {
    AlarmEvent::Cleared {
        subject: subject(rule, facts, rule.severity_after(steps)),
        raised_at,
        at,
        value: facts.value,
        healthy_period: rule.work_order.healthy_period,
    }
}

#[cfg(test)]
mod tests {
    use model::alarm::WorkType;

    use super::*;

    const RULES: &str = r#"
version = 1
[[rule]]
id = "hot"
tags = ["press-*.temp"]
severity = "high"
failure_mode = "overheat"
on_delay = "2s"
[rule.threshold]
above = 80.0
clear_below = 75.0
[rule.work_order]
title = "{asset} is hot"
description = "{tag} at {value} {unit}, limit {limit}"
"#;

    fn ctx(name: &str) -> TagContext {
        TagContext {
            tenant: TenantId::from_uuid(uuid::Uuid::nil()),
            tag_id: 7,
            tag: TagName::parse(name).unwrap(),
            unit: Some("degC".into()),
            asset: Some(AssetId::from_uuid(uuid::Uuid::nil())),
            asset_name: "Press 1".into(),
            asset_class: None,
            labels: Default::default(),
            criticality: Criticality::new(4).unwrap(),
        }
    }

    fn feed(engine: &mut Engine, ctx: &TagContext, points: &[(i64, f64)]) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        for &(s, v) in points {
            engine.evaluate(
                ctx,
                Timestamp::from_micros(s * 1_000_000),
                v,
                Quality::Good,
                &mut out,
            );
        }
        out
    }

    fn engine() -> Engine {
        Engine::new(Arc::new(RuleSet::parse("r.toml", RULES).unwrap()))
    }

    #[test]
    fn a_held_breach_raises_one_alarm_with_a_rendered_work_order() {
        let mut e = engine();
        let c = ctx("press-1.temp");
        let events = feed(
            &mut e,
            &c,
            &[(0, 70.0), (1, 81.0), (2, 82.0), (3, 90.0), (4, 95.0)],
        );
        assert_eq!(events.len(), 1, "{events:?}");
        let AlarmEvent::Raised { work_order, at, .. } = &events[0] else {
            panic!("expected a raise, got {events:?}");
        };
        assert_eq!(*at, Timestamp::from_micros(3_000_000));
        assert_eq!(work_order.title, "Press 1 is hot");
        assert_eq!(
            work_order.description,
            "press-1.temp at 90.00 degC, limit 80"
        );
        assert_eq!(work_order.priority, Priority::Critical);
        assert_eq!(e.active_alarms(), 1);
    }

    #[test]
    fn replayed_and_late_readings_change_nothing() {
        let mut e = engine();
        let c = ctx("press-1.temp");
        let first = feed(&mut e, &c, &[(0, 90.0), (2, 90.0), (3, 70.0)]);
        assert_eq!(first.len(), 2);
        let again = feed(&mut e, &c, &[(0, 90.0), (2, 90.0), (3, 70.0), (1, 99.0)]);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn unselected_tags_and_tags_without_asset_raise_nothing() {
        let mut e = engine();
        let other = ctx("press-1.vibration");
        assert!(feed(&mut e, &other, &[(0, 999.0), (5, 999.0)]).is_empty());
        let mut orphan = ctx("press-2.temp");
        orphan.asset = None;
        assert!(feed(&mut e, &orphan, &[(0, 999.0), (5, 999.0)]).is_empty());
    }

    #[test]
    fn long_rendered_titles_are_cut_to_what_the_cmms_stores() {
        let t = truncate("é".repeat(400), MAX_TITLE_CHARS);
        assert_eq!(t.chars().count(), MAX_TITLE_CHARS);
        assert!(t.ends_with('…'));
        assert_eq!(truncate("short".into(), MAX_TITLE_CHARS), "short");
        assert_eq!(fit_title("  ".into(), "r1"), "Alarm of rule r1");
    }

    #[test]
    fn bad_quality_neither_raises_nor_clears() {
        let mut e = engine();
        let c = ctx("press-1.temp");
        let mut out = Vec::new();
        for s in 0..5 {
            e.evaluate(
                &c,
                Timestamp::from_micros(s * 1_000_000),
                999.0,
                Quality::Bad,
                &mut out,
            );
        }
        assert!(out.is_empty());
    }

    fn engine_for(text: &str) -> Engine {
        Engine::new(Arc::new(
            RuleSet::parse("r.toml", text).expect("valid test rules"),
        ))
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    fn keys(events: &[AlarmEvent]) -> Vec<String> {
        events.iter().map(AlarmEvent::idempotency_key).collect()
    }

    const STALE: &str = r#"
version = 1
[[rule]]
id = "silent"
tags = ["press-*.temp"]
severity = "medium"
failure_mode = "no-data"
escalate = [{ after = "100s", severity = "high" }]
[rule.stale]
after = "30s"
[rule.work_order]
title = "{tag} silent since {observed} s"
"#;

    #[test]
    fn stale_is_raised_by_advance_at_the_moment_the_silence_got_too_long() {
        let mut e = engine_for(STALE);
        let c = ctx("press-1.temp");
        let mut out = feed(&mut e, &c, &[(0, 70.0), (10, 71.0)]);
        e.advance(at(40), &mut out);
        assert!(
            out.is_empty(),
            "silence of exactly `after` is normal: {out:?}"
        );
        e.advance(at(55), &mut out);
        e.advance(at(60), &mut out);
        assert_eq!(keys(&out), ["alarm:silent:7:40000000"]);
        let AlarmEvent::Raised {
            value, work_order, ..
        } = &out[0]
        else {
            panic!("expected a raise: {out:?}");
        };
        assert_eq!(*value, 71.0);
        assert_eq!(work_order.title, "press-1.temp silent since 30.00 s");
        assert_eq!(work_order.work_type, WorkType::Instrumentation);
        out.clear();
        // A late reading, in transit while the alarm was raised, clears it at the raise time.
        e.evaluate(&c, at(35), 72.0, Quality::Good, &mut out);
        let AlarmEvent::Cleared { at: cleared, .. } = &out[0] else {
            panic!("expected a clear: {out:?}");
        };
        assert_eq!(*cleared, at(40));
    }

    #[test]
    fn a_backlog_older_than_after_keeps_the_tag_stale_until_it_catches_up() {
        let mut e = engine_for(STALE);
        let c = ctx("press-1.temp");
        let mut out = feed(&mut e, &c, &[(0, 70.0)]);
        e.advance(at(100), &mut out);
        assert_eq!(keys(&out), ["alarm:silent:7:30000000"]);
        out.clear();
        // Replayed readings more than 30 s behind the engine's time do not clear it ...
        out.extend(feed(&mut e, &c, &[(20, 70.0), (60, 70.0)]));
        assert!(out.is_empty(), "{out:?}");
        // ... the first one within 30 s of it does.
        out.extend(feed(&mut e, &c, &[(75, 70.0)]));
        assert!(matches!(out[..], [AlarmEvent::Cleared { at: t, .. }] if t == at(75)));
        // A tag first seen with a reading already older than `after` is stale at once.
        let mut other = ctx("press-2.temp");
        other.tag_id = 8;
        out.clear();
        out.extend(feed(&mut e, &other, &[(50, 70.0)]));
        assert_eq!(keys(&out), ["alarm:silent:8:80000000"]);
    }

    #[test]
    fn a_gap_seen_only_by_the_next_reading_is_recorded_with_the_same_key() {
        let mut e = engine_for(STALE);
        let c = ctx("press-1.temp");
        let out = feed(&mut e, &c, &[(0, 70.0), (10, 71.0), (200, 72.0)]);
        assert_eq!(
            keys(&out),
            [
                "alarm:silent:7:40000000",
                "alarm:silent:7:40000000:escalated:high",
                "alarm:silent:7:40000000",
            ]
        );
        assert!(matches!(out[2], AlarmEvent::Cleared { at: t, .. } if t == at(200)));
        assert!(
            matches!(&out[1], AlarmEvent::Escalated { at: t, subject, work_order, .. }
            if *t == at(140) && subject.severity == Severity::High
                && work_order.priority == Priority::Critical)
        );
    }

    #[test]
    fn escalation_runs_on_the_readings_event_time() {
        let text = RULES.replace(
            "on_delay = \"2s\"",
            "escalate = [{ after = \"10s\", severity = \"critical\" }]",
        );
        let mut e = engine_for(&text);
        let c = ctx("press-1.temp");
        let mut out = feed(&mut e, &c, &[(0, 90.0), (5, 90.0)]);
        // The wall clock says nothing about a value alarm: only its readings do.
        e.advance(at(60), &mut out);
        assert_eq!(keys(&out), ["alarm:hot:7:0"]);
        out.extend(feed(&mut e, &c, &[(12, 90.0), (13, 90.0), (20, 70.0)]));
        assert_eq!(
            keys(&out),
            [
                "alarm:hot:7:0",
                "alarm:hot:7:0:escalated:critical",
                "alarm:hot:7:0"
            ]
        );
        let AlarmEvent::Escalated { at: reached, .. } = &out[1] else {
            panic!("expected an escalation: {out:?}");
        };
        assert_eq!(*reached, at(10));
        let AlarmEvent::Cleared { subject, .. } = &out[2] else {
            panic!("expected a clear: {out:?}");
        };
        assert_eq!(subject.severity, Severity::Critical);
        // A reading that clears reports the steps reached before it first.
        let mut e = engine_for(&text);
        let out = feed(&mut e, &c, &[(0, 90.0), (30, 70.0)]);
        assert_eq!(
            keys(&out),
            [
                "alarm:hot:7:0",
                "alarm:hot:7:0:escalated:critical",
                "alarm:hot:7:0"
            ]
        );
    }

    #[test]
    fn a_combination_names_the_tag_that_completed_it() {
        let text = r#"
version = 1
[[rule]]
id = "bearing"
severity = "high"
failure_mode = "bearing-failure"
[rule.combination]
max_age = "10s"
all = [{ tag = "*.temp", above = 80.0 }, { tag = "*.vib", above = 7.0 }]
[rule.work_order]
title = "{tag}: {value} over {limit}"
"#;
        let mut e = engine_for(text);
        let temp = ctx("press-1.temp");
        let mut vib = ctx("press-1.vib");
        vib.tag_id = 8;
        let mut out = Vec::new();
        for (c, s, v) in [
            (&temp, 0, 85.0),
            (&vib, 1, 8.0),
            (&temp, 2, 86.0),
            (&temp, 3, 70.0),
        ] {
            e.evaluate(c, at(s), v, Quality::Good, &mut out);
        }
        assert_eq!(
            keys(&out),
            ["alarm:bearing:8:1000000", "alarm:bearing:8:1000000"]
        );
        let AlarmEvent::Raised { work_order, .. } = &out[0] else {
            panic!("expected a raise: {out:?}");
        };
        assert_eq!(work_order.title, "press-1.vib: 8.00 over 80");
        assert!(matches!(&out[1], AlarmEvent::Cleared { value, .. } if *value == 70.0));
        assert_eq!(e.active_alarms(), 0);
    }

    #[test]
    fn bad_quality_opens_an_instrumentation_work_order_after_its_delay() {
        let text = r#"
version = 1
[[rule]]
id = "instrument"
tags = ["press-*"]
severity = "medium"
failure_mode = "instrument-fault"
on_delay = "5s"
[rule.bad_quality]
[rule.work_order]
title = "Instrument fault on {tag}"
"#;
        let mut e = engine_for(text);
        let c = ctx("press-1.temp");
        let mut out = Vec::new();
        for (s, q) in [
            (0, Quality::Bad),
            (3, Quality::Good),
            (4, Quality::Bad),
            (8, Quality::Uncertain),
            (9, Quality::Bad),
            (10, Quality::Good),
        ] {
            e.evaluate(&c, at(s), 0.0, q, &mut out);
        }
        assert_eq!(
            keys(&out),
            ["alarm:instrument:7:9000000", "alarm:instrument:7:9000000"]
        );
        let AlarmEvent::Raised { work_order, .. } = &out[0] else {
            panic!("expected a raise: {out:?}");
        };
        assert_eq!(work_order.work_type, WorkType::Instrumentation);
    }

    fn restored(rule: &str, raised: i64, severity: Severity) -> ActiveAlarm {
        ActiveAlarm {
            tag_id: 7,
            rule_id: rule.into(),
            raised_at: at(raised),
            severity,
            value: 90.0,
        }
    }

    #[test]
    fn a_restored_alarm_neither_refires_nor_is_forgotten() {
        let mut e = engine();
        let orphans = e.restore([
            restored("hot", 100, Severity::High),
            restored("gone", 100, Severity::High),
        ]);
        assert_eq!(orphans, [restored("gone", 100, Severity::High)]);
        let c = ctx("press-1.temp");
        // Still breaching after the restart: no second raise.
        let out = feed(&mut e, &c, &[(200, 91.0), (203, 92.0)]);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(e.active_alarms(), 1);
        // The clear belongs to the raise on record.
        let out = feed(&mut e, &c, &[(210, 70.0)]);
        assert_eq!(keys(&out), ["alarm:hot:7:100000000"]);
        assert!(matches!(&out[0], AlarmEvent::Cleared { at: t, .. } if *t == at(210)));
    }

    #[test]
    fn a_restored_alarm_clears_at_once_if_the_condition_ended_during_the_restart() {
        let mut e = engine();
        e.restore([restored("hot", 100, Severity::High)]);
        let out = feed(&mut e, &ctx("press-1.temp"), &[(200, 60.0)]);
        assert_eq!(keys(&out), ["alarm:hot:7:100000000"]);
        assert_eq!(e.active_alarms(), 0);
    }

    #[test]
    fn escalation_resumes_after_the_step_the_restored_severity_shows() {
        let text = RULES.replace(
            "on_delay = \"2s\"",
            "escalate = [{ after = \"10s\", severity = \"critical\" }]",
        );
        let c = ctx("press-1.temp");
        let mut e = engine_for(&text);
        e.restore([restored("hot", 0, Severity::Critical)]);
        assert!(feed(&mut e, &c, &[(30, 90.0)]).is_empty());
        let mut e = engine_for(&text);
        e.restore([restored("hot", 0, Severity::High)]);
        assert_eq!(
            keys(&feed(&mut e, &c, &[(30, 90.0)])),
            ["alarm:hot:7:0:escalated:critical"]
        );
    }
}
