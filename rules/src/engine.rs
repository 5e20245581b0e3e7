//! The evaluation engine: readings in, alarm events out.
//!
//! State is kept per tag: the event time of the last reading evaluated and one alarm state per
//! rule that selects the tag. A reading whose event time is not after the tag's last one
//! (a redelivery, or a late reading) is skipped, so evaluating the same batch twice changes
//! nothing. An engine instance is owned by one task (one shard of tags): no locks.

use std::collections::HashMap;
use std::sync::Arc;

use model::alarm::{AlarmEvent, AlarmSubject, WorkOrderDraft};
use model::{AssetId, Criticality, Priority, Quality, TagName, TenantId, Timestamp};

use crate::alarm::{AlarmState, Delays, Transition};
use crate::file::{Rule, RuleSet, render};

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
    pub criticality: Criticality,
}

#[derive(Debug)]
struct TagState {
    last_ts: Option<Timestamp>,
    /// (index into the rule set, alarm state) for every rule that selects this tag.
    alarms: Vec<(usize, AlarmState)>,
}

/// Evaluates one rule set over the tags it is fed.
#[derive(Debug)]
pub struct Engine {
    rules: Arc<RuleSet>,
    tags: HashMap<i64, TagState>,
}

/// Counts of what one call to [`Engine::evaluate`] did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub evaluated: bool,
    pub skipped_out_of_order: bool,
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Self {
        Self {
            rules,
            tags: HashMap::new(),
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Number of alarms currently active.
    pub fn active_alarms(&self) -> usize {
        self.tags
            .values()
            .flat_map(|t| &t.alarms)
            .filter(|(_, s)| s.is_active())
            .count()
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
        let rules = &self.rules;
        let state = self.tags.entry(ctx.tag_id).or_insert_with(|| TagState {
            last_ts: None,
            alarms: rules
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.selects(ctx.tag.as_str()))
                .map(|(i, _)| (i, AlarmState::Normal))
                .collect(),
        });
        if state.last_ts.is_some_and(|last| ts <= last) {
            return Outcome {
                evaluated: false,
                skipped_out_of_order: true,
            };
        }
        state.last_ts = Some(ts);
        // A bad-quality value is not a measurement: it neither raises nor clears.
        if quality == Quality::Bad {
            return Outcome::default();
        }
        for (index, alarm) in &mut state.alarms {
            let rule = &rules.rules[*index];
            let delays = Delays {
                on: micros(rule.on_delay),
                off: micros(rule.off_delay),
            };
            let (next, transition) = alarm.step(rule.kind.verdict(value), ts, delays);
            *alarm = next;
            if let Some(t) = transition {
                out.push(event(rule, ctx, asset, t, value));
            }
        }
        Outcome {
            evaluated: true,
            skipped_out_of_order: false,
        }
    }
}

/// The longest work-order title the CMMS stores.
pub const MAX_TITLE_CHARS: usize = 300;

/// Cuts `text` to at most `max` characters, marking the cut with an ellipsis.
fn truncate(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn event(rule: &Rule, ctx: &TagContext, asset: AssetId, t: Transition, value: f64) -> AlarmEvent {
    let subject = AlarmSubject {
        tenant: ctx.tenant,
        asset,
        tag_id: ctx.tag_id,
        tag: ctx.tag.clone(),
        rule_id: rule.id.clone(),
        failure_mode: rule.failure_mode.clone(),
        severity: rule.severity,
    };
    match t {
        Transition::Raised { at } => {
            let value_text = format!("{value:.2}");
            let limit_text = format!("{}", rule.kind.limit());
            let at_text = at.to_string();
            let vars = [
                ("asset", ctx.asset_name.as_str()),
                ("tag", ctx.tag.as_str()),
                ("value", value_text.as_str()),
                ("limit", limit_text.as_str()),
                ("unit", ctx.unit.as_deref().unwrap_or("")),
                ("rule", rule.id.as_str()),
                ("at", at_text.as_str()),
            ];
            let t = &rule.work_order;
            AlarmEvent::Raised {
                subject,
                at,
                value,
                work_order: WorkOrderDraft {
                    title: truncate(render(&t.title, &vars), MAX_TITLE_CHARS),
                    description: render(&t.description, &vars),
                    work_type: t.work_type,
                    priority: Priority::from_matrix(rule.severity, ctx.criticality),
                    checklist: t.checklist.clone(),
                },
            }
        }
        Transition::Cleared { raised_at, at } => AlarmEvent::Cleared {
            subject,
            raised_at,
            at,
            value,
        },
    }
}

#[cfg(test)]
mod tests {
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
}
