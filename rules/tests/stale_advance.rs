//! `Engine::advance` against a reference model of stale rules that does what the engine's
//! documentation says in the plainest way: every call walks every tag a stale rule watches,
//! judges each one's silence and escalates each active stale alarm whose next step is due.
//!
//! The engine keeps its stale deadlines in an index so that `advance` visits only the tags
//! whose silence or escalation step is due; the model keeps no index. Random stale rules (with
//! and without escalation steps, with and without off-delay, on overlapping sets of tags,
//! beside a threshold rule whose slots sit between theirs), restored alarms, and random
//! readings (late, repeated, of bad quality) mixed with `advance` calls (not always forward,
//! sometimes after a long silence) must give the same stale events in the same order: same
//! type, rule, tag, severity, times, value and rendered work-order title (which shows the
//! observed quantity).

use std::collections::HashMap;
use std::sync::Arc;

use model::alarm::AlarmEvent;
use model::{AssetId, Criticality, Quality, Severity, TagName, TenantId, Timestamp};
use proptest::prelude::*;
use rules::{ActiveAlarm, Engine, RuleSet, TagContext};

const TAGS: [&str; 4] = ["a-1.x", "a-1.y", "a-2.x", "a-2.y"];

/// The grain of the generated times: half a second, so that a silence of exactly `after`
/// (normal) and one a grain longer (stale) both occur often. Some times are off the grain by
/// a microsecond, so that a silence one microsecond longer than `after` occurs too.
const GRAIN: i64 = 500_000;
const SECOND: i64 = 1_000_000;

fn contexts() -> Vec<TagContext> {
    TAGS.iter()
        .enumerate()
        .map(|(i, name)| {
            let asset = (i / 2) as u128 + 1;
            TagContext {
                tenant: TenantId::from_uuid(uuid::Uuid::nil()),
                tag_id: i as i64 + 1,
                tag: TagName::parse(*name).expect("valid tag name"),
                unit: None,
                asset: Some(AssetId::from_uuid(uuid::Uuid::from_u128(asset))),
                asset_name: format!("a-{asset}"),
                asset_class: None,
                labels: Default::default(),
                criticality: Criticality::DEFAULT,
            }
        })
        .collect()
}

/// Which tags a stale rule selects.
#[derive(Debug, Clone, Copy)]
enum Selection {
    All,
    FirstAsset,
    X,
}

impl Selection {
    fn pattern(self) -> &'static str {
        match self {
            Selection::All => "*",
            Selection::FirstAsset => "a-1.*",
            Selection::X => "*.x",
        }
    }

    fn selects(self, tag: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::FirstAsset => tag.starts_with("a-1."),
            Selection::X => tag.ends_with(".x"),
        }
    }
}

/// A stale rule, in microseconds.
#[derive(Debug, Clone)]
struct StaleRule {
    id: String,
    selection: Selection,
    after: i64,
    off_delay: i64,
    escalation: Vec<(i64, Severity)>,
}

impl StaleRule {
    fn severity_after(&self, steps: usize) -> Severity {
        steps
            .checked_sub(1)
            .map_or(Severity::Low, |i| self.escalation[i].1)
    }

    fn text(&self) -> String {
        let escalate = self
            .escalation
            .iter()
            .map(|(after, severity)| {
                format!(
                    "{{ after = \"{}s\", severity = \"{severity}\" }}",
                    after / SECOND
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "\n[[rule]]\nid = \"{}\"\ntags = [\"{}\"]\nseverity = \"low\"\nfailure_mode = \"no-data\"\noff_delay = \"{}s\"\nescalate = [{escalate}]\n[rule.stale]\nafter = \"{}s\"\n[rule.work_order]\ntitle = \"{{observed}} {{value}}\"\n",
            self.id,
            self.selection.pattern(),
            self.off_delay / SECOND,
            self.after / SECOND,
        )
    }
}

/// A rule whose slots lie between the stale rules' on every tag.
const THRESHOLD: &str = r#"
[[rule]]
id = "hot"
tags = ["*"]
severity = "high"
failure_mode = "overheat"
escalate = [{ after = "2s", severity = "critical" }]
[rule.threshold]
above = 3.0
clear_below = 1.0
[rule.work_order]
title = "{value}"
"#;

fn rule_set(stale: &[StaleRule]) -> RuleSet {
    let mut text = String::from("version = 1\n");
    for (i, rule) in stale.iter().enumerate() {
        text.push_str(&rule.text());
        if i == 0 {
            text.push_str(THRESHOLD);
        }
    }
    RuleSet::parse("stale.toml", &text)
        .unwrap_or_else(|d| panic!("generated rules must parse: {d:?}\n{text}"))
}

/// What is compared of an event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    kind: &'static str,
    rule: String,
    tag_id: i64,
    severity: Severity,
    at: i64,
    raised_at: i64,
    value: String,
    title: Option<String>,
}

fn seen(event: &AlarmEvent) -> Seen {
    let s = event.subject();
    let (kind, at, raised_at, value, title) = match event {
        AlarmEvent::Raised {
            at,
            value,
            work_order,
            ..
        } => ("raised", at, at, value, Some(work_order.title.clone())),
        AlarmEvent::Escalated {
            raised_at,
            at,
            value,
            work_order,
            ..
        } => (
            "escalated",
            at,
            raised_at,
            value,
            Some(work_order.title.clone()),
        ),
        AlarmEvent::Cleared {
            raised_at,
            at,
            value,
            ..
        } => ("cleared", at, raised_at, value, None),
    };
    Seen {
        kind,
        rule: s.rule_id.clone(),
        tag_id: s.tag_id,
        severity: s.severity,
        at: at.as_micros(),
        raised_at: raised_at.as_micros(),
        value: format!("{value:?}"),
        title,
    }
}

/// One alarm of the model: `since` is the raise time while active.
#[derive(Debug, Clone, Copy)]
struct Alarm {
    since: Option<i64>,
    clearing_since: Option<i64>,
    steps: usize,
    value: f64,
    observed: f64,
}

const NORMAL: Alarm = Alarm {
    since: None,
    clearing_since: None,
    steps: 0,
    value: f64::NAN,
    observed: f64::NAN,
};

#[derive(Debug)]
struct Tag {
    tag: usize,
    last_ts: i64,
    last_value: f64,
    /// (index into the stale rules, alarm), in rule order.
    alarms: Vec<(usize, Alarm)>,
}

/// The reference: stale rules only, no index.
#[derive(Debug)]
struct Model<'a> {
    rules: &'a [StaleRule],
    clock: Option<i64>,
    /// In the order of their first reading.
    tags: Vec<Tag>,
    restored: HashMap<usize, Vec<(usize, Alarm)>>,
    out: Vec<Seen>,
}

fn title(observed: f64, value: f64) -> String {
    format!("{observed:.2} {value:.2}")
}

/// Applies a breach (`true`) or a clear verdict at `ts`.
fn judge(
    rule: &StaleRule,
    tag_id: i64,
    alarm: &mut Alarm,
    breach: bool,
    ts: i64,
    (value, observed): (f64, f64),
    out: &mut Vec<Seen>,
) {
    alarm.value = value;
    alarm.observed = observed;
    match (alarm.since, breach) {
        (None, true) => {
            *alarm = Alarm {
                since: Some(ts),
                clearing_since: None,
                steps: 0,
                value,
                observed,
            };
            out.push(Seen {
                kind: "raised",
                rule: rule.id.clone(),
                tag_id,
                severity: Severity::Low,
                at: ts,
                raised_at: ts,
                value: format!("{value:?}"),
                title: Some(title(observed, value)),
            });
        }
        (None, false) => {}
        (Some(_), true) => alarm.clearing_since = None,
        (Some(since), false) => {
            let clearing = alarm.clearing_since.unwrap_or(ts);
            if ts - clearing >= rule.off_delay {
                out.push(Seen {
                    kind: "cleared",
                    rule: rule.id.clone(),
                    tag_id,
                    severity: rule.severity_after(alarm.steps),
                    at: ts,
                    raised_at: since,
                    value: format!("{value:?}"),
                    title: None,
                });
                alarm.since = None;
                alarm.clearing_since = None;
            } else {
                alarm.clearing_since = Some(clearing);
            }
        }
    }
}

fn escalate(rule: &StaleRule, tag_id: i64, alarm: &mut Alarm, now: i64, out: &mut Vec<Seen>) {
    let Some(since) = alarm.since else { return };
    while let Some(&(after, severity)) = rule.escalation.get(alarm.steps)
        && now - since >= after
    {
        alarm.steps += 1;
        out.push(Seen {
            kind: "escalated",
            rule: rule.id.clone(),
            tag_id,
            severity,
            at: since + after,
            raised_at: since,
            value: format!("{:?}", alarm.value),
            title: Some(title(alarm.observed, alarm.value)),
        });
    }
}

impl<'a> Model<'a> {
    fn new(rules: &'a [StaleRule]) -> Self {
        Self {
            rules,
            clock: None,
            tags: Vec::new(),
            restored: HashMap::new(),
            out: Vec::new(),
        }
    }

    fn restore(&mut self, alarms: &[ActiveAlarm]) {
        for a in alarms {
            let Some(rule) = self.rules.iter().position(|r| r.id == a.rule_id) else {
                continue;
            };
            let steps = self.rules[rule]
                .escalation
                .iter()
                .rposition(|s| s.1 == a.severity)
                .map_or(0, |i| i + 1);
            let alarm = Alarm {
                since: Some(a.raised_at.as_micros()),
                clearing_since: None,
                steps,
                value: a.value,
                observed: a.value,
            };
            let tag = usize::try_from(a.tag_id - 1).expect("generated tag ids start at 1");
            self.restored.entry(tag).or_default().push((rule, alarm));
        }
    }

    fn reading(&mut self, tag: usize, ts: i64, value: f64, quality: Quality) {
        let (index, previous) = match self.tags.iter().position(|t| t.tag == tag) {
            Some(index) => {
                let t = &mut self.tags[index];
                if ts <= t.last_ts {
                    return;
                }
                let previous = (t.last_ts, t.last_value);
                t.last_ts = ts;
                (index, Some(previous))
            }
            None => {
                let mut alarms: Vec<(usize, Alarm)> = (0..self.rules.len())
                    .filter(|&r| self.rules[r].selection.selects(TAGS[tag]))
                    .map(|r| (r, NORMAL))
                    .collect();
                for (rule, alarm) in self.restored.remove(&tag).unwrap_or_default() {
                    for slot in alarms.iter_mut().filter(|s| s.0 == rule) {
                        slot.1 = alarm;
                    }
                }
                self.tags.push(Tag {
                    tag,
                    last_ts: ts,
                    last_value: f64::NAN,
                    alarms,
                });
                (self.tags.len() - 1, None)
            }
        };
        let t = &mut self.tags[index];
        if quality != Quality::Bad {
            t.last_value = value;
        }
        let tag_id = tag as i64 + 1;
        for (rule, alarm) in &mut t.alarms {
            let rule = &self.rules[*rule];
            let silence = rule.after as f64 / SECOND as f64;
            if let Some((last_ts, last_value)) = previous
                && ts - last_ts > rule.after
            {
                let at = last_ts + rule.after;
                judge(
                    rule,
                    tag_id,
                    alarm,
                    true,
                    at,
                    (last_value, silence),
                    &mut self.out,
                );
            }
            escalate(rule, tag_id, alarm, ts, &mut self.out);
            if self.clock.is_some_and(|now| now - ts > rule.after) {
                let at = ts + rule.after;
                judge(
                    rule,
                    tag_id,
                    alarm,
                    true,
                    at,
                    (value, silence),
                    &mut self.out,
                );
            } else {
                let at = alarm.since.map_or(ts, |since| ts.max(since));
                judge(
                    rule,
                    tag_id,
                    alarm,
                    false,
                    at,
                    (value, value),
                    &mut self.out,
                );
            }
            if let Some(now) = self.clock {
                escalate(rule, tag_id, alarm, now, &mut self.out);
            }
        }
    }

    /// Walks every watched tag, as the engine did before it indexed its deadlines.
    fn advance(&mut self, now: i64) {
        self.clock = self.clock.max(Some(now));
        for t in &mut self.tags {
            let tag_id = t.tag as i64 + 1;
            for (rule, alarm) in &mut t.alarms {
                let rule = &self.rules[*rule];
                if now - t.last_ts > rule.after {
                    let silence = rule.after as f64 / SECOND as f64;
                    let at = t.last_ts + rule.after;
                    let facts = (t.last_value, silence);
                    judge(rule, tag_id, alarm, true, at, facts, &mut self.out);
                }
                escalate(rule, tag_id, alarm, now, &mut self.out);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Reading {
        tag: usize,
        ts: i64,
        value: f64,
        quality: Quality,
    },
    Advance(i64),
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        6 => Just(Quality::Good),
        2 => Just(Quality::Bad),
        1 => Just(Quality::Uncertain),
    ]
}

fn stale_rule(i: usize) -> impl Strategy<Value = StaleRule> {
    let selection = prop_oneof![
        2 => Just(Selection::All),
        1 => Just(Selection::FirstAsset),
        1 => Just(Selection::X),
    ];
    let escalation = prop_oneof![
        Just(Vec::new()),
        (1i64..8).prop_map(|a| vec![(a * SECOND, Severity::Medium)]),
        (1i64..8, 1i64..8).prop_map(|(a, b)| vec![
            (a * SECOND, Severity::Medium),
            ((a + b) * SECOND, Severity::Critical)
        ]),
    ];
    let off_delay = prop_oneof![Just(0i64), 1i64..3];
    (selection, 1i64..6, off_delay, escalation).prop_map(
        move |(selection, after, off_delay, escalation)| StaleRule {
            id: format!("silent-{i}"),
            selection,
            after: after * SECOND,
            off_delay: off_delay * SECOND,
            escalation,
        },
    )
}

fn stale_rules() -> impl Strategy<Value = Vec<StaleRule>> {
    prop_oneof![
        stale_rule(0).prop_map(|a| vec![a]),
        (stale_rule(0), stale_rule(1)).prop_map(|(a, b)| vec![a, b]),
        (stale_rule(0), stale_rule(1), stale_rule(2)).prop_map(|(a, b, c)| vec![a, b, c]),
    ]
}

/// Alarms on record before the first reading: of the stale rules, of the threshold rule, and
/// of a rule that no longer exists; at any severity.
fn restored() -> impl Strategy<Value = Vec<ActiveAlarm>> {
    let rule = prop_oneof![
        3 => (0usize..3).prop_map(|i| format!("silent-{i}")),
        1 => Just("hot".to_owned()),
        1 => Just("gone".to_owned()),
    ];
    let alarm = (
        0..TAGS.len(),
        rule,
        -20i64..40,
        prop::sample::select(Severity::ALL.to_vec()),
        -6i32..6,
    )
        .prop_map(|(tag, rule_id, raised, severity, value)| ActiveAlarm {
            tag_id: tag as i64 + 1,
            rule_id,
            raised_at: Timestamp::from_micros(raised * GRAIN),
            severity,
            value: f64::from(value),
        });
    prop::collection::vec(alarm, 0..4)
}

/// Readings and `advance` calls around a time that moves forward, mostly by a few grains and
/// now and then by many (a silence). Readings may be late or repeated; an `advance` may go
/// back in time.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    let forward = prop_oneof![8 => 0i64..4, 1 => 10i64..60];
    let step = (
        prop::bool::weighted(0.3),
        forward,
        -6i64..=1,
        prop_oneof![4 => Just(0i64), 1 => -1i64..=1],
        0..TAGS.len(),
        -2i32..6,
        quality(),
    );
    prop::collection::vec(step, 1..200).prop_map(|raw| {
        let mut cursor = 0;
        raw.into_iter()
            .map(|(advance, forward, offset, jitter, tag, value, quality)| {
                cursor += forward;
                let ts = (cursor + offset) * GRAIN + jitter;
                if advance {
                    Step::Advance(ts)
                } else {
                    Step::Reading {
                        tag,
                        ts,
                        value: f64::from(value),
                        quality,
                    }
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn advance_emits_what_a_walk_over_every_watched_tag_emits(
        stale in stale_rules(),
        restored in restored(),
        steps in steps(),
    ) {
        let ctxs = contexts();
        let mut engine = Engine::new(Arc::new(rule_set(&stale)));
        let orphans = engine.restore(restored.clone());
        let known = |id: &str| id == "hot" || stale.iter().any(|r| r.id == id);
        let expected: Vec<&ActiveAlarm> = restored.iter().filter(|a| !known(&a.rule_id)).collect();
        prop_assert_eq!(orphans.iter().collect::<Vec<_>>(), expected);
        let mut model = Model::new(&stale);
        model.restore(&restored);
        let mut out = Vec::new();
        for step in &steps {
            match *step {
                Step::Reading { tag, ts, value, quality } => {
                    engine.evaluate(&ctxs[tag], Timestamp::from_micros(ts), value, quality, &mut out);
                    model.reading(tag, ts, value, quality);
                }
                Step::Advance(now) => {
                    engine.advance(Timestamp::from_micros(now), &mut out);
                    model.advance(now);
                }
            }
        }
        let got: Vec<Seen> = out.iter().map(seen).filter(|s| s.rule != "hot").collect();
        prop_assert_eq!(&got, &model.out);
    }
}
