//! Rules engine throughput: readings evaluated per second on one core, per rule kind.
//!
//! Each kind gets its own engine and 1,000 tags on 100 assets (10 tags each), all read once a
//! second in event time. Every tag is selected by exactly one rule of the kind, so one reading
//! is one rule evaluation. Most values are normal; about one tag in ten has one excursion per
//! 100 s that raises its alarm and then clears it, so alarm state changes, with their events
//! and rendered work orders, are part of what is measured, at a low rate (about two events per
//! 1,000 readings).
//!
//! The readings are generated once; each timed pass shifts their event times past the previous
//! pass, because the engine skips a reading that is not later than its tag's last one. A pass
//! outside timing before and after the measurement checks that no reading was skipped.
//!
//! Targets (from the issue): at least 10 million threshold evaluations/s, and 2 million/s for
//! the rolling statistics (z-score and EWMA). Run with `bench/run.sh rules`; the results are
//! recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::alarm::AlarmEvent;
use model::{AssetId, Criticality, Quality, TagName, TenantId, Timestamp};
use rules::{Engine, RuleSet, TagContext};
use uuid::Uuid;

const ASSETS: usize = 100;
const TAGS_PER_ASSET: usize = 10;
const TAGS: usize = ASSETS * TAGS_PER_ASSET;
/// Readings per tag in one pass, one a second: the excursions repeat with this period.
const CYCLES: u64 = 100;
const SECOND_MICROS: i64 = 1_000_000;
const PASS_MICROS: i64 = CYCLES as i64 * SECOND_MICROS;
/// 2026-01-01T00:00:00Z.
const START_MICROS: i64 = 1_767_225_600 * SECOND_MICROS;
/// Passes before anything is checked or measured: 15 minutes of event time, so that the
/// 10-minute z-score window is full and every kind is in its steady state.
const WARM_UP_PASSES: usize = 9;

/// A plant's rule file: one rule per kind, each on its own family of tags.
const RULES: &str = r#"
version = 1

[[rule]]
id = "bearing-hot"
description = "Press bearing running hot"
tags = ["press-*.bearing_temp_*"]
severity = "high"
failure_mode = "bearing-overheat"
on_delay = "2s"

[rule.threshold]
above = 85.0
clear_below = 80.0

[rule.work_order]
title = "Bearing overheating on {asset}"
description = "{tag} reached {value} {unit} (limit {limit}) at {at}."
checklist = ["Check lubrication", "Measure bearing play"]

[[rule]]
id = "vibration-unusual"
tags = ["pump-*.vibration_*"]
severity = "medium"
failure_mode = "vibration"

[rule.rolling]
method = "zscore"
window = "10m"
z_above = 4.0
z_clear = 2.5
min_samples = 60

[rule.work_order]
title = "Unusual vibration on {asset}: z = {observed}"

[[rule]]
id = "current-drift"
tags = ["motor-*.current_*"]
severity = "low"
failure_mode = "motor-load"

[rule.rolling]
method = "ewma"
alpha = 0.05
deviation_above = 3.0
deviation_clear = 1.5

[rule.work_order]
title = "Motor current off its baseline on {asset} by {observed} {unit}"

[[rule]]
id = "flow-sensor-stuck"
tags = ["line-*.flow_*"]
severity = "medium"
failure_mode = "sensor-stuck"

[rule.flatline]
duration = "30s"
tolerance = 0.1

[rule.work_order]
title = "{tag} stuck for {observed} s"
work_type = "instrumentation"

[[rule]]
id = "oven-heating-fast"
tags = ["oven-*.temp_*"]
severity = "medium"
failure_mode = "heater-runaway"

[rule.rate_of_change]
per = "1m"
window = "1m"
rise_above = 6.0
clear_below = 3.0

[rule.work_order]
title = "{tag} rising {observed} {unit} per minute"

[[rule]]
id = "pressure-spikes"
tags = ["valve-*.pressure_*"]
severity = "high"
failure_mode = "valve-sticking"

[rule.count_in_window]
above = 8.0
count = 3
window = "60s"
clear_count = 1

[rule.work_order]
title = "{observed} pressure spikes within a minute on {asset}"
"#;

/// One benchmark: a rule kind and the signal of the tags it watches.
#[derive(Debug, Clone, Copy)]
enum Case {
    Threshold,
    ZScore,
    Ewma,
    Flatline,
    RateOfChange,
    CountInWindow,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::Threshold,
        Case::ZScore,
        Case::Ewma,
        Case::Flatline,
        Case::RateOfChange,
        Case::CountInWindow,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::Threshold => "threshold",
            Case::ZScore => "rolling_zscore",
            Case::Ewma => "rolling_ewma",
            Case::Flatline => "flatline",
            Case::RateOfChange => "rate_of_change",
            Case::CountInWindow => "count_in_window",
        }
    }

    /// Equipment, signal and unit of the tags, matching the case's rule.
    fn signal(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Case::Threshold => ("press", "bearing_temp", "degC"),
            Case::ZScore => ("pump", "vibration", "mm/s"),
            Case::Ewma => ("motor", "current", "A"),
            Case::Flatline => ("line", "flow", "m3/h"),
            Case::RateOfChange => ("oven", "temp", "degC"),
            Case::CountInWindow => ("valve", "pressure", "bar"),
        }
    }

    /// The value of a reading, from uniform noise in [-1, 1) and, for a tag with an
    /// excursion, the readings since the excursion began (0 to `CYCLES - 1`).
    fn value(self, noise: f64, since: Option<u64>) -> f64 {
        match (self, since) {
            // Held above the limit past the on-delay, then back to normal.
            (Case::Threshold, Some(s)) if s < 5 => 90.0 + noise,
            (Case::Threshold, _) => 60.0 + 5.0 * noise,
            // One spike of more than eight standard deviations.
            (Case::ZScore, Some(0)) => 10.0,
            (Case::ZScore, _) => 5.0 + noise,
            // One reading far from the baseline.
            (Case::Ewma, Some(0)) => 15.0,
            (Case::Ewma, _) => 10.0 + 0.5 * noise,
            // Stuck for 40 s.
            (Case::Flatline, Some(s)) if s < 40 => 20.0,
            (Case::Flatline, _) => 20.0 + noise,
            // Up by 10 in 10 s, held for 20 s, back down in 10 s.
            (Case::RateOfChange, Some(s)) if s < 40 => {
                let ramp = match s {
                    0..10 => s + 1,
                    10..30 => 10,
                    _ => 39 - s,
                };
                100.0 + ramp as f64 + 0.05 * noise
            }
            (Case::RateOfChange, _) => 100.0 + 0.05 * noise,
            // Three spikes within 10 s, then quiet until the window empties.
            (Case::CountInWindow, Some(0 | 5 | 10)) => 9.0,
            (Case::CountInWindow, _) => 5.0 + noise,
        }
    }
}

/// A reading of the pre-generated pass: the tag (index into the contexts), its event time
/// relative to the start of the pass, and its value.
#[derive(Debug, Clone, Copy)]
struct Reading {
    tag: u32,
    at: i64,
    value: f64,
}

/// A fixed, well-mixed hash (SplitMix64): deterministic noise without a random generator.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn contexts(case: Case) -> Vec<TagContext> {
    let (equipment, signal, unit) = case.signal();
    let tenant = TenantId::from_uuid(Uuid::from_u128(1));
    (0..TAGS)
        .map(|t| {
            let (asset, n) = (t / TAGS_PER_ASSET, t % TAGS_PER_ASSET);
            TagContext {
                tenant,
                tag_id: 1 + t as i64,
                tag: TagName::parse(format!("{equipment}-{asset:03}.{signal}_{n}"))
                    .expect("generated tag names use allowed characters only"),
                unit: Some(unit.to_owned()),
                asset: Some(AssetId::from_uuid(Uuid::from_u128(0x1000 + asset as u128))),
                asset_name: format!("{equipment} {asset:03}"),
                asset_class: None,
                labels: Default::default(),
                criticality: Criticality::new(1 + (asset % 5) as u8)
                    .expect("1 to 5 is a criticality"),
            }
        })
        .collect()
}

/// One pass: `CYCLES` polls of every tag, in tag order within a poll.
fn readings(case: Case) -> Vec<Reading> {
    let excursion_start = |tag: u64| {
        let h = mix(tag);
        h.is_multiple_of(10).then_some((h >> 32) % CYCLES)
    };
    let starts: Vec<Option<u64>> = (0..TAGS as u64).map(excursion_start).collect();
    let mut out = Vec::with_capacity(TAGS * CYCLES as usize);
    for cycle in 0..CYCLES {
        for (tag, start) in starts.iter().enumerate() {
            let h = mix(((case as u64) << 40) | ((tag as u64) << 20) | cycle);
            let noise = (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            let since = start.map(|s| (cycle + CYCLES - s) % CYCLES);
            out.push(Reading {
                tag: tag as u32,
                at: cycle as i64 * SECOND_MICROS,
                value: case.value(noise, since),
            });
        }
    }
    out
}

/// The measured work: every reading of a pass, event times moved by `shift`, its events
/// handed on (here: dropped) as they come.
fn pass(
    engine: &mut Engine,
    contexts: &[TagContext],
    readings: &[Reading],
    shift: i64,
    out: &mut Vec<AlarmEvent>,
) {
    for r in readings {
        black_box(engine.evaluate(
            &contexts[r.tag as usize],
            Timestamp::from_micros(r.at + shift),
            r.value,
            Quality::Good,
            out,
        ));
        for event in out.drain(..) {
            black_box(event);
        }
    }
}

/// A pass outside timing that checks every reading was evaluated (none skipped as out of
/// order) and counts the alarms raised and cleared.
fn checked_pass(
    engine: &mut Engine,
    contexts: &[TagContext],
    readings: &[Reading],
    shift: i64,
    out: &mut Vec<AlarmEvent>,
) -> (usize, usize) {
    let (mut raised, mut cleared) = (0, 0);
    for r in readings {
        let ctx = &contexts[r.tag as usize];
        let at = Timestamp::from_micros(r.at + shift);
        let outcome = engine.evaluate(ctx, at, r.value, Quality::Good, out);
        assert!(
            outcome.evaluated,
            "the reading of {} at {at} was not evaluated: {outcome:?}",
            ctx.tag
        );
        for event in out.drain(..) {
            match event {
                AlarmEvent::Raised { .. } => raised += 1,
                AlarmEvent::Cleared { .. } => cleared += 1,
                _ => {}
            }
        }
    }
    (raised, cleared)
}

fn rules(c: &mut Criterion) {
    let rules = RuleSet::parse("bench.toml", RULES).unwrap_or_else(|diagnostics| {
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        panic!("the benchmark's rule file is invalid:\n{}", text.join("\n"))
    });
    let rules = Arc::new(rules);
    let mut group = c.benchmark_group("rules");
    for case in Case::ALL {
        let contexts = contexts(case);
        let readings = readings(case);
        let mut engine = Engine::new(Arc::clone(&rules));
        let mut out = Vec::new();
        let mut shift = START_MICROS;
        for _ in 0..WARM_UP_PASSES {
            pass(&mut engine, &contexts, &readings, shift, &mut out);
            shift += PASS_MICROS;
        }
        let (raised, cleared) = checked_pass(&mut engine, &contexts, &readings, shift, &mut out);
        shift += PASS_MICROS;
        assert!(
            raised > 0 && cleared > 0,
            "{}: alarms must raise and clear in the measured path ({raised} raised, {cleared} cleared)",
            case.name()
        );
        println!(
            "{}: {} readings per pass, {raised} alarms raised and {cleared} cleared",
            case.name(),
            readings.len()
        );

        group.throughput(Throughput::Elements(readings.len() as u64));
        group.bench_function(case.name(), |b| {
            b.iter(|| {
                pass(&mut engine, &contexts, &readings, shift, &mut out);
                shift += PASS_MICROS;
            })
        });
        checked_pass(&mut engine, &contexts, &readings, shift, &mut out);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .without_plots()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = rules
}
criterion_main!(benches);
