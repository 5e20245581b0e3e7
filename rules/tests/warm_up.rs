//! A fresh engine fed recent history (`Engine::warm_up`) and then the alarms on record
//! (`Engine::restore`) carries on where the previous engine stopped: baselines and pending
//! delays go on, the record decides which alarms are active, and silence in the history is
//! not judged.

use std::sync::Arc;
use std::time::Duration;

use model::alarm::AlarmEvent;
use model::{AssetId, Criticality, Quality, Severity, TagName, TenantId, Timestamp};
use rules::{ActiveAlarm, Engine, RuleSet, TagContext};

const S: i64 = 1_000_000;

fn ctx() -> TagContext {
    TagContext {
        tenant: TenantId::from_uuid(uuid::Uuid::nil()),
        tag_id: 7,
        tag: TagName::parse("pump-1.temp").expect("valid tag name"),
        unit: None,
        asset: Some(AssetId::from_uuid(uuid::Uuid::from_u128(1))),
        asset_name: "pump-1".into(),
        asset_class: None,
        labels: Default::default(),
        criticality: Criticality::DEFAULT,
    }
}

fn rules(kind: &str, extra: &str) -> Arc<RuleSet> {
    let text = format!(
        r#"version = 1
[[rule]]
id = "r"
tags = ["pump-*.temp"]
severity = "high"
failure_mode = "overheat"
{extra}
{kind}
[rule.work_order]
title = "Overheat on {{asset}}"
"#
    );
    Arc::new(RuleSet::parse("test.toml", &text).expect("valid rules"))
}

fn threshold(extra: &str) -> Arc<RuleSet> {
    rules("[rule.threshold]\nabove = 90.0\nclear_below = 80.0", extra)
}

fn feed(engine: &mut Engine, from: i64, values: &[f64]) -> Vec<AlarmEvent> {
    let mut out = Vec::new();
    for (i, &v) in values.iter().enumerate() {
        let ts = Timestamp::from_micros(from + i as i64 * S);
        engine.evaluate(&ctx(), ts, v, Quality::Good, &mut out);
    }
    out
}

fn warm(engine: &mut Engine, from: i64, values: &[f64]) {
    for (i, &v) in values.iter().enumerate() {
        let ts = Timestamp::from_micros(from + i as i64 * S);
        engine.warm_up(&ctx(), ts, v, Quality::Good);
    }
}

fn recorded(raised_at: i64) -> ActiveAlarm {
    ActiveAlarm {
        tag_id: 7,
        rule_id: "r".into(),
        raised_at: Timestamp::from_micros(raised_at),
        severity: Severity::High,
        value: 95.0,
    }
}

fn kinds(events: &[AlarmEvent]) -> Vec<(&'static str, i64)> {
    events
        .iter()
        .map(|e| match e {
            AlarmEvent::Raised { at, .. } => ("raised", at.as_micros() / S),
            AlarmEvent::Escalated { at, .. } => ("escalated", at.as_micros() / S),
            AlarmEvent::Cleared { raised_at, .. } => ("cleared", raised_at.as_micros() / S),
        })
        .collect()
}

#[test]
fn a_pending_on_delay_goes_on_from_where_the_history_left_it() {
    let rules = threshold("on_delay = \"10s\"");
    let mut engine = Engine::new(Arc::clone(&rules));
    // Hot from second 100 to 105 in the history: pending since 100.
    warm(&mut engine, 100 * S, &[95.0; 6]);
    assert!(engine.restore([]).is_empty());
    let events = feed(&mut engine, 106 * S, &[95.0; 5]);
    assert_eq!(kinds(&events), [("raised", 110)]);

    // Without the history the on-delay starts over at the first live reading.
    let mut cold = Engine::new(rules);
    cold.restore([]);
    let events = feed(&mut cold, 106 * S, &[95.0; 11]);
    assert_eq!(kinds(&events), [("raised", 116)]);
}

#[test]
fn a_rolling_baseline_learned_in_the_history_judges_the_first_live_reading() {
    let rules = rules(
        "[rule.rolling]\nmethod = \"zscore\"\nsamples = 20\nz_above = 4.0\nmin_samples = 20",
        "",
    );
    let steady: Vec<f64> = (0..30).map(|i| 50.0 + f64::from(i % 3)).collect();
    let mut engine = Engine::new(Arc::clone(&rules));
    warm(&mut engine, 0, &steady);
    engine.restore([]);
    let events = feed(&mut engine, 30 * S, &[80.0]);
    assert_eq!(kinds(&events), [("raised", 30)]);

    let mut cold = Engine::new(rules);
    cold.restore([]);
    assert!(feed(&mut cold, 30 * S, &[80.0]).is_empty());
}

#[test]
fn the_history_emits_nothing_and_the_record_decides_what_is_active() {
    let rules = threshold("");
    // The history shows a breach; the CMMS has it on record from second 3.
    let mut engine = Engine::new(Arc::clone(&rules));
    warm(&mut engine, 0, &[70.0, 70.0, 70.0, 95.0, 95.0]);
    engine.restore([recorded(3 * S)]);
    assert_eq!(engine.active_alarms(), 1);
    assert!(
        feed(&mut engine, 5 * S, &[96.0]).is_empty(),
        "no second raise"
    );
    let events = feed(&mut engine, 6 * S, &[70.0]);
    assert_eq!(
        kinds(&events),
        [("cleared", 3)],
        "the recorded raise clears"
    );

    // The same history without a record (the raise never reached the CMMS): the alarm is
    // back to normal and the breach, still there, raises it now.
    let mut engine = Engine::new(rules);
    warm(&mut engine, 0, &[70.0, 70.0, 70.0, 95.0, 95.0]);
    engine.restore([]);
    assert_eq!(engine.active_alarms(), 0);
    let events = feed(&mut engine, 5 * S, &[96.0]);
    assert_eq!(kinds(&events), [("raised", 5)]);
}

#[test]
fn an_off_delay_the_history_shows_running_goes_on_for_the_recorded_alarm() {
    let rules = threshold("off_delay = \"10s\"");
    let mut engine = Engine::new(rules);
    // Hot at 0 and 1 (raised at 0), cool from 2: clearing since 2.
    warm(&mut engine, 0, &[95.0, 95.0, 70.0, 70.0, 70.0]);
    engine.restore([recorded(0)]);
    let events = feed(&mut engine, 5 * S, &[70.0; 8]);
    assert_eq!(kinds(&events), [("cleared", 0)]);
    let ts = match &events[0] {
        AlarmEvent::Cleared { at, .. } => at.as_micros() / S,
        other => panic!("{other:?}"),
    };
    assert_eq!(ts, 12, "cleared 10 s after the cool readings began at 2");
}

#[test]
fn silence_in_the_history_raises_no_stale_alarm_but_a_recorded_one_keeps_escalating() {
    let stale = rules(
        "[rule.stale]\nafter = \"30s\"",
        "escalate = [{ after = \"60s\", severity = \"critical\" }]",
    );
    // The tag's last stored reading is at 10; the engine starts at 100.
    let mut engine = Engine::new(Arc::clone(&stale));
    warm(&mut engine, 0, &[1.0; 11]);
    engine.restore([]);
    let mut out = Vec::new();
    engine.advance(Timestamp::from_micros(100 * S), &mut out);
    engine.advance(Timestamp::from_micros(200 * S), &mut out);
    assert!(out.is_empty(), "{out:?}");

    // Recorded as stale since 40: escalates at 100 without a reading.
    let mut engine = Engine::new(stale);
    warm(&mut engine, 0, &[1.0; 11]);
    engine.restore([ActiveAlarm {
        value: 1.0,
        ..recorded(40 * S)
    }]);
    engine.advance(Timestamp::from_micros(99 * S), &mut out);
    assert!(out.is_empty(), "{out:?}");
    engine.advance(Timestamp::from_micros(100 * S), &mut out);
    assert_eq!(kinds(&out), [("escalated", 100)]);
}

#[test]
fn the_warm_up_span_covers_windows_and_delays_and_is_capped() {
    let limit = Duration::from_secs(3600);
    assert_eq!(
        threshold("on_delay = \"10s\"\noff_delay = \"5s\"").warm_up_span(limit),
        Duration::from_secs(15)
    );
    let windowed = rules(
        "[rule.count_in_window]\nabove = 1.0\ncount = 3\nwindow = \"10m\"",
        "on_delay = \"1m\"",
    );
    assert_eq!(windowed.warm_up_span(limit), Duration::from_secs(660));
    assert_eq!(
        windowed.warm_up_span(Duration::from_secs(60)),
        Duration::from_secs(60)
    );
    let counted = rules(
        "[rule.rolling]\nmethod = \"ewma\"\nalpha = 0.1\ndeviation_above = 5.0",
        "",
    );
    assert_eq!(counted.warm_up_span(limit), limit);
    assert_eq!(counted.warm_up_span(Duration::ZERO), Duration::ZERO);
}

#[test]
fn an_alarm_whose_rule_no_longer_selects_a_known_tag_is_found() {
    let rules = threshold("");
    let mut engine = Engine::new(rules);
    warm(&mut engine, 0, &[70.0]);
    let flow = TagContext {
        tag_id: 8,
        tag: TagName::parse("pump-1.flow").expect("valid tag name"),
        ..ctx()
    };
    engine.warm_up(&flow, Timestamp::from_micros(0), 1.0, Quality::Good);
    let alarms = [
        recorded(0),
        ActiveAlarm {
            tag_id: 8,
            ..recorded(0)
        },
        ActiveAlarm {
            tag_id: 9,
            ..recorded(0)
        },
        ActiveAlarm {
            rule_id: "gone".into(),
            ..recorded(0)
        },
    ];
    let found: Vec<i64> = alarms
        .iter()
        .filter(|a| engine.no_longer_selects(a))
        .map(|a| a.tag_id)
        .collect();
    assert_eq!(found, [8], "only the known tag the rule does not select");
}
