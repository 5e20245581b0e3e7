//! Properties of the engine over random rules of every kind and random readings.
//!
//! The rule set holds one rule of each kind with random parameters (limits, windows, delays,
//! escalation steps); every rule selects every tag. Four tags on two assets (`a-1.x`,
//! `a-1.y`, `a-2.x`, `a-2.y`) deliver readings with small integer values (so that limits
//! are crossed and values repeat), mostly good quality, at increasing event times with
//! occasional long gaps.
//!
//! 1. **Lifecycle.** Per (rule, tag) the events alternate: `Raised`, then any `Escalated`
//!    (each to a higher severity, for the same raise), then `Cleared` for that raise, then
//!    `Raised` again. Never two raises without a clear between them, never a clear or an
//!    escalation without an active raise. A combination has at most one active alarm per
//!    asset.
//! 2. **Redelivery.** Feeding the same sequence (readings and `advance` calls) a second time
//!    to the same engine emits nothing: every reading is at or before its tag's latest one,
//!    and every `advance` time has been seen.
//! 3. **Duplicated and reordered delivery.** Without `advance` calls, a delivery in which
//!    about 10% of the readings are duplicated (the copy delivered up to five positions after
//!    the original) and neighbouring readings of different assets are swapped yields exactly
//!    the events of the clean, time-ordered delivery, compared as the set of (event type,
//!    rule, tag, time, raise time).
//!
//!    Why exactly this constraint: the engine evaluates each tag in event-time order and
//!    skips a reading not later than the tag's latest (that is what makes redelivery safe),
//!    so a reading delivered after a later one of its own tag is dropped by design and the
//!    outcome must differ; a combination reads the latest values of all tags of its asset,
//!    so the order among one asset's tags matters too. The state of different assets is
//!    disjoint, so any interleaving of assets that keeps each asset's own order must give the
//!    same events, and a duplicate delivered after its original must change nothing.
//!    `advance` is left out of this property because it reads the engine's time across
//!    tags: where it falls in the delivery legitimately changes when silence is seen.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use model::alarm::AlarmEvent;
use model::{AssetId, Criticality, Quality, Severity, TagName, TenantId, Timestamp};
use proptest::prelude::*;
use rules::{Engine, RuleSet, TagContext};

const TAGS: [&str; 4] = ["a-1.x", "a-1.y", "a-2.x", "a-2.y"];

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

/// One step of a delivery: a reading of tag `TAGS[tag]`, or an `advance` of the engine's time.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Reading {
        tag: usize,
        ts: i64,
        value: f64,
        quality: Quality,
    },
    Advance(i64),
}

fn escalation() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (1u32..8, 1u32..8).prop_map(|(a, b)| format!(
            "escalate = [{{ after = \"{a}s\", severity = \"medium\" }}, {{ after = \"{}s\", severity = \"critical\" }}]\n",
            a + b
        )),
    ]
}

fn delays() -> impl Strategy<Value = String> {
    (0u32..3, 0u32..3)
        .prop_map(|(on, off)| format!("on_delay = \"{on}s\"\noff_delay = \"{off}s\"\n"))
}

/// The kind tables, one per kind, with random parameters that are valid by construction.
fn kind_tables() -> impl Strategy<Value = Vec<(String, String)>> {
    let threshold = (-3i32..5, 0i32..3, any::<bool>()).prop_map(|(above, band, lower)| {
        let below = if lower {
            format!("below = {}.0\n", above - 4)
        } else {
            String::new()
        };
        format!(
            "[rule.threshold]\nabove = {above}.0\nclear_below = {}.0\n{below}",
            above - band
        )
    });
    let rate = (1i32..5, any::<bool>()).prop_map(|(r, window)| {
        let window = if window { "window = \"3s\"\n" } else { "" };
        format!(
            "[rule.rate_of_change]\nper = \"1s\"\n{window}rise_above = {r}.0\nclear_below = {}.0\nfall_below = -{r}.0\n",
            r - 1
        )
    });
    let zscore = (3u32..8, 2u32..5, any::<bool>()).prop_map(|(samples, z, by_time)| {
        let window = if by_time {
            "window = \"5s\"".to_owned()
        } else {
            format!("samples = {samples}")
        };
        format!(
            "[rule.rolling]\nmethod = \"zscore\"\n{window}\nz_above = {}\nz_clear = {}\nmin_samples = 3\n",
            f64::from(z) / 2.0,
            f64::from(z) / 4.0
        )
    });
    let ewma = (1u32..6, 1u32..4, 1u32..4).prop_map(|(alpha, dev, min)| {
        format!(
            "[rule.rolling]\nmethod = \"ewma\"\nalpha = {}\ndeviation_above = {dev}.0\ndeviation_clear = {}\nmin_samples = {min}\n",
            f64::from(alpha) / 5.0,
            f64::from(dev) / 2.0
        )
    });
    let flatline = (1u32..6, 0u32..3).prop_map(|(d, tol)| {
        format!(
            "[rule.flatline]\nduration = \"{d}s\"\ntolerance = {}\n",
            f64::from(tol) / 2.0
        )
    });
    let stale = (1u32..6).prop_map(|after| format!("[rule.stale]\nafter = \"{after}s\"\n"));
    let count = (0i32..4, 1u32..5, 0u32..5, 2u32..10).prop_map(|(above, count, clear, window)| {
        format!(
            "[rule.count_in_window]\nabove = {above}.0\ncount = {count}\nclear_count = {}\nwindow = \"{window}s\"\n",
            1 + clear % count
        )
    });
    let combination = (any::<bool>(), -2i32..4, -2i32..4, 1u32..6).prop_map(|(all, x, y, age)| {
        format!(
            "[rule.combination]\nmax_age = \"{age}s\"\n{} = [{{ tag = \"*.x\", above = {x}.0, clear_below = {}.0 }}, {{ tag = \"*.y\", above = {y}.0 }}]\n",
            if all { "all" } else { "any" },
            x - 1
        )
    });
    let bad = any::<bool>().prop_map(|u| format!("[rule.bad_quality]\ninclude_uncertain = {u}\n"));
    (
        threshold,
        rate,
        zscore,
        ewma,
        flatline,
        stale,
        count,
        combination,
        bad,
    )
        .prop_map(|(t, r, z, e, f, s, c, k, b)| {
            vec![
                ("threshold".into(), t),
                ("rate".into(), r),
                ("zscore".into(), z),
                ("ewma".into(), e),
                ("flatline".into(), f),
                ("stale".into(), s),
                ("count".into(), c),
                ("combination".into(), k),
                ("bad".into(), b),
            ]
        })
}

fn rule_set() -> impl Strategy<Value = RuleSet> {
    (
        kind_tables(),
        prop::collection::vec((escalation(), delays()), 9),
    )
        .prop_map(|(kinds, extras)| {
            let mut text = String::from("version = 1\n");
            for ((id, table), (escalate, delays)) in kinds.into_iter().zip(extras) {
                let tags = if id == "combination" {
                    ""
                } else {
                    "tags = [\"*\"]\n"
                };
                // `after` is a stale rule's delay; it takes no on-delay.
                let delays = if id == "stale" {
                    delays
                        .lines()
                        .filter(|l| !l.starts_with("on_delay"))
                        .map(|l| format!("{l}\n"))
                        .collect()
                } else {
                    delays
                };
                text.push_str(&format!(
                    "\n[[rule]]\nid = \"{id}\"\n{tags}severity = \"low\"\nfailure_mode = \"{id}\"\n{delays}{escalate}\n{table}\n[rule.work_order]\ntitle = \"{{rule}} on {{tag}}\"\n"
                ));
            }
            RuleSet::parse("random.toml", &text)
                .unwrap_or_else(|d| panic!("generated rules must parse: {d:?}\n{text}"))
        })
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        17 => Just(Quality::Good),
        2 => Just(Quality::Bad),
        1 => Just(Quality::Uncertain),
    ]
}

/// Readings at strictly increasing event times (milliseconds apart, now and then seconds).
fn readings() -> impl Strategy<Value = Vec<Step>> {
    let gap = prop_oneof![9 => 1i64..1_500, 1 => 3_000i64..12_000];
    prop::collection::vec((0..TAGS.len(), gap, -6i32..=6, quality()), 1..150).prop_map(|raw| {
        let mut ts = 0;
        raw.into_iter()
            .map(|(tag, gap, value, quality)| {
                ts += gap * 1_000;
                Step::Reading {
                    tag,
                    ts,
                    value: f64::from(value),
                    quality,
                }
            })
            .collect()
    })
}

/// Readings with `advance` calls mixed in, at times around the readings' (not always
/// increasing).
fn steps() -> impl Strategy<Value = Vec<Step>> {
    (
        readings(),
        prop::collection::vec((any::<bool>(), -3_000i64..8_000), 150),
    )
        .prop_map(|(readings, advances)| {
            let mut steps = Vec::new();
            for (step, (advance, offset)) in readings.into_iter().zip(advances) {
                steps.push(step);
                if let (true, Step::Reading { ts, .. }) = (advance, step) {
                    steps.push(Step::Advance((ts + offset * 1_000).max(0)));
                }
            }
            steps
        })
}

fn run(engine: &mut Engine, ctxs: &[TagContext], steps: &[Step]) -> Vec<AlarmEvent> {
    let mut out = Vec::new();
    for step in steps {
        match *step {
            Step::Reading {
                tag,
                ts,
                value,
                quality,
            } => {
                engine.evaluate(
                    &ctxs[tag],
                    Timestamp::from_micros(ts),
                    value,
                    quality,
                    &mut out,
                );
            }
            Step::Advance(now) => engine.advance(Timestamp::from_micros(now), &mut out),
        }
    }
    out
}

/// Checks the lifecycle of every alarm; returns a description of the first violation.
fn lifecycle(events: &[AlarmEvent]) -> Result<(), String> {
    // (rule, tag) -> (raise time, severity of the last escalation) while active.
    let mut active: HashMap<(String, i64), (Timestamp, Severity)> = HashMap::new();
    let mut combined: HashMap<(String, AssetId), i64> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let s = event.subject();
        let key = (s.rule_id.clone(), s.tag_id);
        match event {
            AlarmEvent::Raised { at, .. } => {
                if let Some(previous) = active.insert(key, (*at, s.severity)) {
                    return Err(format!("event {i}: raised twice, first at {previous:?}"));
                }
                if s.rule_id == "combination"
                    && let Some(tag) = combined.insert((s.rule_id.clone(), s.asset), s.tag_id)
                {
                    return Err(format!(
                        "event {i}: combination already active on tag {tag}"
                    ));
                }
            }
            AlarmEvent::Escalated { raised_at, .. } => match active.get_mut(&key) {
                Some((at, severity)) if at == raised_at && s.severity > *severity => {
                    *severity = s.severity;
                }
                other => return Err(format!("event {i}: escalation of {other:?}")),
            },
            AlarmEvent::Cleared { raised_at, .. } => {
                match active.remove(&key) {
                    Some((at, _)) if at == *raised_at => {}
                    other => return Err(format!("event {i}: clear of {other:?}")),
                }
                combined.remove(&(s.rule_id.clone(), s.asset));
            }
        }
    }
    Ok(())
}

/// What identifies an event, for comparing deliveries.
fn identity(event: &AlarmEvent) -> (u8, String, i64, i64, i64) {
    let s = event.subject();
    let (kind, at, raised_at) = match event {
        AlarmEvent::Raised { at, .. } => (0, at, at),
        AlarmEvent::Escalated { at, raised_at, .. } => (1, at, raised_at),
        AlarmEvent::Cleared { at, raised_at, .. } => (2, at, raised_at),
    };
    (
        kind,
        s.rule_id.clone(),
        s.tag_id,
        at.as_micros(),
        raised_at.as_micros(),
    )
}

/// Swaps neighbouring readings of different assets at the given positions, then delivers
/// copies of some readings again a few positions after their original.
fn perturb(clean: &[Step], swaps: &[usize], duplicates: &[(usize, usize)]) -> Vec<Step> {
    let asset = |s: &Step| match *s {
        Step::Reading { tag, .. } => tag / 2,
        Step::Advance(_) => usize::MAX,
    };
    let mut steps = clean.to_vec();
    if steps.len() > 1 {
        for &i in swaps {
            let i = i % (steps.len() - 1);
            if asset(&steps[i]) != asset(&steps[i + 1]) {
                steps.swap(i, i + 1);
            }
        }
    }
    for &(pick, offset) in duplicates {
        let original = pick % clean.len();
        let copy = clean[original];
        let at = steps
            .iter()
            .position(|s| *s == copy)
            .expect("every clean reading is delivered");
        steps.insert((at + 1 + offset).min(steps.len()), copy);
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn alarms_follow_their_lifecycle(rules in rule_set(), steps in steps()) {
        let ctxs = contexts();
        let mut engine = Engine::new(Arc::new(rules));
        let events = run(&mut engine, &ctxs, &steps);
        prop_assert_eq!(lifecycle(&events), Ok(()), "events: {:#?}", events);
    }

    #[test]
    fn a_redelivered_sequence_emits_nothing(rules in rule_set(), steps in steps()) {
        let ctxs = contexts();
        let mut engine = Engine::new(Arc::new(rules));
        run(&mut engine, &ctxs, &steps);
        let again = run(&mut engine, &ctxs, &steps);
        prop_assert!(again.is_empty(), "second pass emitted {:#?}", again);
    }

    #[test]
    fn duplicates_and_reordering_across_assets_change_nothing(
        rules in rule_set(),
        clean in readings(),
        swaps in prop::collection::vec(any::<usize>(), 0..60),
        duplicates in prop::collection::vec((any::<usize>(), 0usize..5), 0..15),
    ) {
        let ctxs = contexts();
        let rules = Arc::new(rules);
        // About 10% of the readings are duplicated.
        let duplicates = &duplicates[..duplicates.len().min(clean.len().div_ceil(10))];
        let delivered = perturb(&clean, &swaps, duplicates);
        prop_assert_eq!(delivered.len(), clean.len() + duplicates.len());
        let expected: BTreeSet<_> =
            run(&mut Engine::new(rules.clone()), &ctxs, &clean).iter().map(identity).collect();
        let got: BTreeSet<_> =
            run(&mut Engine::new(rules), &ctxs, &delivered).iter().map(identity).collect();
        prop_assert_eq!(got, expected);
    }
}
