//! Backtest replay throughput: readings per second through the replay that
//! `maintainpro rules backtest` runs, from the readings in memory to its result.
//!
//! The measured path is the backtest crate's public one: a `Vec<Replay>` as the reading sink
//! (the command's sink, here without a baseline), every reading handed to it through
//! [`ReadingSink::push`] in event-time order, then [`Replay::finish`]. Left out: reading the
//! history from PostgreSQL or Parquet, and the polars analysis of the result.
//!
//! The history is generated once, before timing: 1,000 tags on 100 assets (10 tags each: four
//! bearing temperatures under a threshold rule, three vibrations under a rolling z-score, three
//! flows), every tag also under a stale rule (a plant-wide "signal lost" rule), each asset's
//! tags read once a second in one poll. Breaches are occasional: one bearing in ten runs hot
//! for 20 s every 10 minutes, one vibration in ten spikes every 10 minutes, about one asset in
//! twenty (seven) loses its connection for a minute once. A replay outside timing checks that every
//! reading was evaluated and that every rule raised and cleared alarms and opened work orders.
//!
//! The replay moves the engine's time forward before every reading whose time is later than
//! the previous one's. Each such move once visited every tag a stale rule watches; it now
//! visits only the stale slots whose deadline has passed. The cases vary the two quantities
//! the old cost grew with, distinct timestamps and tags under a stale rule, to show that the
//! cost no longer depends on them:
//! - `plant`: each asset polled at its own phase within the second (100 distinct times a
//!   second, ten readings each), the stale rule on all 1,000 tags: the shape of a plant of
//!   independent devices.
//! - `plant_without_stale`: the same history and rules without the stale rule.
//! - `one_time_per_second`: every asset stamped at the same instant (one time a second), the
//!   stale rule on all tags.
//! - `stale_on_100_tags`: the `plant` history, the stale rule on one tag per asset.
//!
//! Target (from the issue): at least 5 million readings/s. Run with `bench/run.sh backtest`;
//! the results are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use backtest::replay::ReplayResult;
use backtest::{HistoryReading, ReadingSink, Replay, Tags, Window};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use model::{AssetId, Criticality, Quality, TagName, TenantId, Timestamp};
use rules::{RuleSet, TagContext};
use uuid::Uuid;

const ASSETS: usize = 100;
const TAGS_PER_ASSET: usize = 10;
const TAGS: usize = ASSETS * TAGS_PER_ASSET;
/// Seconds of history: 2,000,000 readings, less those of the assets' outages.
const SECONDS: i64 = 2_000;
const SECOND_MICROS: i64 = 1_000_000;
/// 2026-01-01T00:00:00Z.
const START_MICROS: i64 = 1_767_225_600 * SECOND_MICROS;
/// Breaches of a bearing or a vibration repeat with this period, in seconds.
const PERIOD: i64 = 600;
/// How long a hot bearing stays hot, and how long a lost asset stays silent, in seconds.
const HOT_FOR: i64 = 20;
const SILENT_FOR: i64 = 60;
/// The polling phase between one asset and the next, in microseconds (100 assets: 0.98 s).
const DEVICE_PHASE_MICROS: i64 = 9_901;

/// What each tag of an asset measures, by its position on the asset.
fn signal(n: usize) -> Signal {
    match n {
        0..4 => Signal::BearingTemp,
        4..7 => Signal::Vibration,
        _ => Signal::Flow,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    BearingTemp,
    Vibration,
    Flow,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::BearingTemp => "bearing_temp",
            Signal::Vibration => "vibration",
            Signal::Flow => "flow",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Signal::BearingTemp => "degC",
            Signal::Vibration => "mm/s",
            Signal::Flow => "m3/h",
        }
    }
}

const THRESHOLD_RULE: &str = r#"
[[rule]]
id = "bearing-hot"
tags = ["*.bearing_temp_*"]
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
"#;

const ROLLING_RULE: &str = r#"
[[rule]]
id = "vibration-unusual"
tags = ["*.vibration_*"]
severity = "medium"
failure_mode = "vibration"

[rule.rolling]
method = "zscore"
window = "5m"
z_above = 4.0
z_clear = 2.5
min_samples = 60

[rule.work_order]
title = "Unusual vibration on {asset}: z = {observed}"
"#;

/// `{tags}`: the pattern of the tags it watches.
const STALE_RULE: &str = r#"
[[rule]]
id = "signal-lost"
tags = ["{tags}"]
severity = "medium"
failure_mode = "communication"

[rule.stale]
after = "30s"

[rule.work_order]
title = "No data from {tag} for {observed} s"
work_type = "instrumentation"
"#;

/// How the readings of a history are stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamping {
    /// One time a second for the whole plant.
    PerSecond,
    /// One time per asset poll, each asset at its own phase.
    PerDevice,
}

/// One benchmark: a history shape and a rule set.
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    stamping: Stamping,
    /// The tags the stale rule watches; `None`: no stale rule.
    stale: Option<&'static str>,
}

const CASES: [Case; 4] = [
    Case {
        name: "plant",
        stamping: Stamping::PerDevice,
        stale: Some("*"),
    },
    Case {
        name: "plant_without_stale",
        stamping: Stamping::PerDevice,
        stale: None,
    },
    Case {
        name: "one_time_per_second",
        stamping: Stamping::PerSecond,
        stale: Some("*"),
    },
    Case {
        name: "stale_on_100_tags",
        stamping: Stamping::PerDevice,
        stale: Some("*.flow_7"),
    },
];

/// A fixed, well-mixed hash (SplitMix64): deterministic noise without a random generator.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rule_set(stale: Option<&str>) -> Arc<RuleSet> {
    let mut text = format!("version = 1\n{THRESHOLD_RULE}{ROLLING_RULE}");
    if let Some(tags) = stale {
        text.push_str(&STALE_RULE.replace("{tags}", tags));
    }
    let rules = RuleSet::parse("backtest-bench.toml", &text).unwrap_or_else(|diagnostics| {
        let text: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        panic!("the benchmark's rule file is invalid:\n{}", text.join("\n"))
    });
    Arc::new(rules)
}

/// The plant's tags; tag `t` (index `t` in [`Tags`]) is tag `t % 10` of asset `t / 10`.
fn tags() -> Arc<Tags> {
    let tenant = TenantId::from_uuid(Uuid::from_u128(1));
    let mut tags = Tags::new();
    for t in 0..TAGS {
        let (asset, n) = (t / TAGS_PER_ASSET, t % TAGS_PER_ASSET);
        let signal = signal(n);
        let index = tags.insert(TagContext {
            tenant,
            tag_id: 1 + t as i64,
            tag: TagName::parse(format!("press-{asset:03}.{}_{n}", signal.name()))
                .expect("generated tag names use allowed characters only"),
            unit: Some(signal.unit().to_owned()),
            asset: Some(AssetId::from_uuid(Uuid::from_u128(0x1000 + asset as u128))),
            asset_name: format!("Press {asset:03}"),
            asset_class: None,
            labels: Default::default(),
            criticality: Criticality::new(1 + (asset % 5) as u8).expect("1 to 5 is a criticality"),
        });
        assert_eq!(index as usize, t, "tags are indexed in insertion order");
    }
    Arc::new(tags)
}

/// When, in seconds into the history, the breaches of a tag or the outage of an asset begin:
/// `None` for the nine in ten (or nineteen in twenty) that have none.
fn breach_phase(tag: usize) -> Option<i64> {
    let h = mix((0xB0 << 32) | tag as u64);
    h.is_multiple_of(10)
        .then_some(((h >> 32) % PERIOD as u64) as i64)
}

fn outage_start(asset: usize) -> Option<i64> {
    let h = mix((0x0A << 32) | asset as u64);
    let span = (SECONDS - 2 * SILENT_FOR) as u64;
    h.is_multiple_of(20)
        .then_some(SILENT_FOR + ((h >> 32) % span) as i64)
}

fn value(tag: usize, second: i64) -> f64 {
    let h = mix(((tag as u64) << 32) | second as u64);
    let noise = (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    let since = breach_phase(tag).map(|p| (second - p).rem_euclid(PERIOD));
    match (signal(tag % TAGS_PER_ASSET), since) {
        (Signal::BearingTemp, Some(s)) if s < HOT_FOR => 90.0 + noise,
        (Signal::BearingTemp, _) => 60.0 + 5.0 * noise,
        (Signal::Vibration, Some(0)) => 10.0,
        (Signal::Vibration, _) => 5.0 + noise,
        (Signal::Flow, _) => 20.0 + noise,
    }
}

/// The history of a case, in event-time order (and tag order among readings of one time, as
/// the database hands them out).
fn history(case: Case) -> Vec<HistoryReading> {
    let outages: Vec<Option<i64>> = (0..ASSETS).map(outage_start).collect();
    let mut out = Vec::with_capacity(TAGS * SECONDS as usize);
    for second in 0..SECONDS {
        for (asset, outage) in outages.iter().enumerate() {
            if outage.is_some_and(|o| (o..o + SILENT_FOR).contains(&second)) {
                continue;
            }
            for n in 0..TAGS_PER_ASSET {
                let offset = match case.stamping {
                    Stamping::PerSecond => 0,
                    Stamping::PerDevice => asset as i64 * DEVICE_PHASE_MICROS,
                };
                let tag = asset * TAGS_PER_ASSET + n;
                out.push(HistoryReading {
                    tag: tag as u32,
                    ts: Timestamp::from_micros(START_MICROS + second * SECOND_MICROS + offset),
                    value: value(tag, second),
                    quality: Quality::Good,
                });
            }
        }
    }
    out
}

/// The measured work: the command's replay of `history`, without I/O and without analysis.
fn replay(
    rules: &Arc<RuleSet>,
    tags: &Arc<Tags>,
    window: Window,
    history: &[HistoryReading],
) -> ReplayResult {
    let mut sink = vec![Replay::new(Arc::clone(rules), Arc::clone(tags), window)];
    for &reading in history {
        ReadingSink::push(&mut sink, reading).expect("a replay accepts every reading");
    }
    sink.pop().expect("the sink holds one replay").finish()
}

/// A replay outside timing: every reading evaluated, every rule raising, clearing and
/// opening work orders.
fn check(case: Case, rules: &RuleSet, result: &ReplayResult, history: &[HistoryReading]) {
    let stats = result.stats;
    assert_eq!(stats.readings, history.len() as u64);
    assert_eq!(
        stats.evaluated, stats.readings,
        "{}: every reading must be evaluated: {stats:?}",
        case.name
    );
    let mut summary = Vec::new();
    for (index, rule) in rules.rules.iter().enumerate() {
        let alarms = result.alarms.iter().filter(|a| a.rule as usize == index);
        let (raised, cleared) = alarms.fold((0, 0), |(r, c), a| {
            (r + 1, c + usize::from(a.cleared_at.is_some()))
        });
        let work_orders = result
            .work_orders
            .iter()
            .filter(|w| w.rule as usize == index)
            .count();
        assert!(
            raised > 0 && cleared > 0 && work_orders > 0,
            "{}: rule {} must raise, clear and open work orders ({raised} raised, {cleared} cleared, {work_orders} work orders)",
            case.name,
            rule.id
        );
        summary.push(format!(
            "{}: {raised} alarms, {work_orders} work orders",
            rule.id
        ));
    }
    let times = 1 + history.windows(2).filter(|w| w[1].ts > w[0].ts).count();
    println!(
        "{}: {} readings at {times} distinct times; {}",
        case.name,
        history.len(),
        summary.join("; ")
    );
}

fn backtest(c: &mut Criterion) {
    let tags = tags();
    let mut group = c.benchmark_group("backtest");
    group.sampling_mode(SamplingMode::Flat);
    for case in CASES {
        let rules = rule_set(case.stale);
        let history = history(case);
        let window = Window::new(
            Timestamp::from_micros(START_MICROS),
            Timestamp::from_micros(START_MICROS + SECONDS * SECOND_MICROS),
        )
        .expect("the history's window is a valid window");
        check(
            case,
            &rules,
            &replay(&rules, &tags, window, &history),
            &history,
        );
        group.throughput(Throughput::Elements(history.len() as u64));
        group.bench_function(case.name, |b| {
            b.iter(|| black_box(replay(&rules, &tags, window, &history)))
        });
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
    targets = backtest
}
criterion_main!(benches);
