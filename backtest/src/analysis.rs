//! Per-rule metrics of a replay, the difference against a baseline replay, and how the
//! predicted work orders compare with the work orders the plant really had.
//!
//! The replay's results are turned into polars frames and every metric is a lazy query over
//! them; nothing here runs per reading.
//!
//! Definitions (docs/BACKTEST.md explains them for engineers):
//! - **flap**: a raise of a rule on a tag that follows the clear of the same rule on the same
//!   tag by at most the flap window.
//! - **time in alarm**: the sum of the rule's alarms' durations, an alarm still active at the
//!   end of the window counting up to that end.
//! - **match**: a predicted work order matches a past work order of the same asset and
//!   failure mode created within the match window of the predicted opening (before or after);
//!   of several, the nearest in time. A real failure is **caught** by a rule when one of its
//!   predicted work orders matches it, and **missed** when it was created inside the window on
//!   an asset the rule watched, for the rule's failure mode, and nothing of the rule matches it.

use std::time::Duration;

use model::{AssetId, Timestamp};
use polars::prelude::*;
use uuid::Uuid;

use crate::BacktestError;
use crate::replay::{ReplayResult, ReplayStats, Window};

/// The windows of the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A raise this soon after a clear of the same rule on the same tag is a flap.
    pub flap_window: Duration,
    /// A past work order created this close to a predicted opening matches it.
    pub match_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            flap_window: Duration::from_secs(10 * 60),
            match_window: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// How a past work order ended, as far as a backtest cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PastOutcome {
    /// Completed or verified as fixed (or with no resolution recorded): a real failure.
    ConfirmedFailure,
    /// Cancelled, or closed as no fault found or cleared automatically.
    NotAFailure,
    /// Not closed yet.
    StillOpen,
    /// Closed otherwise (a duplicate, or resolution `other`).
    OtherClosed,
}

impl PastOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PastOutcome::ConfirmedFailure => "failure",
            PastOutcome::NotAFailure => "no_fault",
            PastOutcome::StillOpen => "open",
            PastOutcome::OtherClosed => "other",
        }
    }
}

/// Classifies a work order by its `status` and `resolution` columns.
pub fn classify(status: &str, resolution: Option<&str>) -> PastOutcome {
    match (status, resolution) {
        ("cancelled", _) => PastOutcome::NotAFailure,
        ("completed" | "verified", None | Some("fixed")) => PastOutcome::ConfirmedFailure,
        ("completed" | "verified", Some("no_fault_found" | "cleared_automatically")) => {
            PastOutcome::NotAFailure
        }
        ("completed" | "verified", Some(_)) => PastOutcome::OtherClosed,
        _ => PastOutcome::StillOpen,
    }
}

/// A work order the plant really had, of an asset and failure mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastWorkOrder {
    pub id: Uuid,
    pub asset: AssetId,
    pub failure_mode: String,
    pub created_at: Timestamp,
    pub status: String,
    pub resolution: Option<String>,
}

impl PastWorkOrder {
    pub fn outcome(&self) -> PastOutcome {
        classify(&self.status, self.resolution.as_deref())
    }
}

/// What one rule did over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleMetrics {
    pub alarms: i64,
    /// Work orders its alarms opened (alarms appended to an open one open none).
    pub work_orders: i64,
    /// Microseconds.
    pub time_in_alarm: i64,
    pub flaps: i64,
    pub escalations: i64,
    /// Alarms still active at the end of the window.
    pub active_at_end: i64,
    /// Predicted work orders whose nearest match was a confirmed failure.
    pub matched_failure: i64,
    /// ... cancelled, or closed as no fault found or cleared automatically.
    pub matched_no_fault: i64,
    /// ... a work order still open.
    pub matched_open: i64,
    /// ... closed otherwise (duplicate, other).
    pub matched_other: i64,
    /// Predicted work orders no past work order matches.
    pub unmatched: i64,
    /// Distinct confirmed failures one of the rule's predicted work orders matched.
    pub failures_caught: i64,
    /// Confirmed failures inside the window, on assets the rule watched and of its failure
    /// mode, that none of its predicted work orders matched.
    pub failures_missed: i64,
}

/// Reads one metric.
pub type Metric = fn(&RuleMetrics) -> i64;

/// The metrics, by column name, in report order.
pub const METRICS: [(&str, Metric); 13] = [
    ("alarms", |m| m.alarms),
    ("work_orders", |m| m.work_orders),
    ("time_in_alarm", |m| m.time_in_alarm),
    ("flaps", |m| m.flaps),
    ("escalations", |m| m.escalations),
    ("active_at_end", |m| m.active_at_end),
    ("matched_failure", |m| m.matched_failure),
    ("matched_no_fault", |m| m.matched_no_fault),
    ("matched_open", |m| m.matched_open),
    ("matched_other", |m| m.matched_other),
    ("unmatched", |m| m.unmatched),
    ("failures_caught", |m| m.failures_caught),
    ("failures_missed", |m| m.failures_missed),
];

impl RuleMetrics {
    fn from_values(v: [i64; 13]) -> Self {
        let [
            alarms,
            work_orders,
            time_in_alarm,
            flaps,
            escalations,
            active_at_end,
            matched_failure,
            matched_no_fault,
            matched_open,
            matched_other,
            unmatched,
            failures_caught,
            failures_missed,
        ] = v;
        Self {
            alarms,
            work_orders,
            time_in_alarm,
            flaps,
            escalations,
            active_at_end,
            matched_failure,
            matched_no_fault,
            matched_open,
            matched_other,
            unmatched,
            failures_caught,
            failures_missed,
        }
    }
}

/// How a rule compares with the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No baseline was given.
    NoBaseline,
    /// Only in the rule set under test.
    Added,
    /// Only in the baseline.
    Removed,
    Changed,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::NoBaseline => "",
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// One rule's line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleReport {
    pub rule: String,
    pub failure_mode: String,
    pub change: Change,
    /// `None` for a rule only in the baseline.
    pub current: Option<RuleMetrics>,
    pub baseline: Option<RuleMetrics>,
    /// `current - baseline`, when the rule is in both.
    pub delta: Option<RuleMetrics>,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub rule_set: String,
    pub baseline_rule_set: Option<String>,
    pub window: Window,
    pub settings: Settings,
    pub stats: ReplayStats,
    /// Past work orders considered; `None` when none were available (an offline history file
    /// without its work-order file).
    pub past_work_orders: Option<usize>,
    /// The rules under test in file order, then rules only in the baseline.
    pub rules: Vec<RuleReport>,
}

const KEY: &str = "rule_id";
const BASELINE_SUFFIX: &str = "_baseline";

/// Analyses a replay, against a baseline replay of the same history when given.
pub fn analyse(
    current: &ReplayResult,
    baseline: Option<&ReplayResult>,
    past: Option<&[PastWorkOrder]>,
    settings: Settings,
) -> Result<Analysis, BacktestError> {
    let empty = Vec::new();
    let past_orders = past.unwrap_or(&empty);
    let current_frame = per_rule(current, past_orders, settings)?;
    let rules = match baseline {
        None => extract(&current_frame, false)?,
        Some(b) => {
            let baseline_frame = per_rule(b, past_orders, settings)?;
            extract(&compare(current_frame, baseline_frame)?, true)?
        }
    };
    Ok(Analysis {
        rule_set: current.rule_set.clone(),
        baseline_rule_set: baseline.map(|b| b.rule_set.clone()),
        window: current.window,
        settings,
        stats: current.stats,
        past_work_orders: past.map(<[PastWorkOrder]>::len),
        rules,
    })
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn u32_index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// One row per rule of `result`, in file order: `rule`, `rule_id`, `failure_mode` and the
/// [`METRICS`], all Int64.
fn per_rule(
    result: &ReplayResult,
    past: &[PastWorkOrder],
    settings: Settings,
) -> Result<DataFrame, BacktestError> {
    let rules = df!(
        "rule" => (0..result.rules.len()).map(u32_index).collect::<Vec<u32>>(),
        KEY => result.rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        "failure_mode" => result.rules.iter().map(|r| r.failure_mode.as_str()).collect::<Vec<_>>(),
    )?;

    let alarms = df!(
        "rule" => result.alarms.iter().map(|a| a.rule).collect::<Vec<u32>>(),
        "tag_id" => result.alarms.iter().map(|a| a.tag_id).collect::<Vec<i64>>(),
        "raised_at" => result.alarms.iter().map(|a| a.raised_at.as_micros()).collect::<Vec<i64>>(),
        "cleared_at" => result.alarms.iter().map(|a| a.cleared_at.map(Timestamp::as_micros)).collect::<Vec<Option<i64>>>(),
        "escalations" => result.alarms.iter().map(|a| i64::from(a.escalations)).collect::<Vec<i64>>(),
    )?;
    let end = result.window.to().as_micros();
    let same_alarm = col("rule")
        .shift(lit(1))
        .eq(col("rule"))
        .and(col("tag_id").shift(lit(1)).eq(col("tag_id")));
    let flap = same_alarm
        .and(
            (col("raised_at") - col("cleared_at").shift(lit(1)))
                .lt_eq(lit(micros(settings.flap_window))),
        )
        .fill_null(lit(false));
    let alarm_metrics = alarms
        .lazy()
        .sort(
            ["rule", "tag_id", "raised_at"],
            SortMultipleOptions::default(),
        )
        .with_columns([
            (col("cleared_at").fill_null(lit(end)) - col("raised_at")).alias("duration"),
            flap.alias("flap"),
        ])
        .group_by([col("rule")])
        .agg([
            len().alias("alarms"),
            col("duration").sum().alias("time_in_alarm"),
            col("flap").sum().alias("flaps"),
            col("escalations").sum().alias("escalations"),
            col("cleared_at").null_count().alias("active_at_end"),
        ]);

    let predicted = df!(
        "wo" => (0..result.work_orders.len()).map(u32_index).collect::<Vec<u32>>(),
        "rule" => result.work_orders.iter().map(|w| w.rule).collect::<Vec<u32>>(),
        "asset" => result.work_orders.iter().map(|w| w.asset.as_uuid().to_string()).collect::<Vec<_>>(),
        "failure_mode" => result.work_orders.iter().map(|w| w.failure_mode.as_str()).collect::<Vec<_>>(),
        "opened_at" => result.work_orders.iter().map(|w| w.opened_at.as_micros()).collect::<Vec<i64>>(),
    )?;
    let window = result.window;
    let past = df!(
        "past" => (0..past.len()).map(u32_index).collect::<Vec<u32>>(),
        "asset" => past.iter().map(|p| p.asset.as_uuid().to_string()).collect::<Vec<_>>(),
        "failure_mode" => past.iter().map(|p| p.failure_mode.as_str()).collect::<Vec<_>>(),
        "created_at" => past.iter().map(|p| p.created_at.as_micros()).collect::<Vec<i64>>(),
        "outcome" => past.iter().map(|p| p.outcome().as_str()).collect::<Vec<_>>(),
        "in_window" => past.iter().map(|p| window.contains(p.created_at)).collect::<Vec<bool>>(),
    )?;
    let failure = || col("outcome").eq(lit(PastOutcome::ConfirmedFailure.as_str()));
    let offset = col("created_at") - col("opened_at");
    let candidates = predicted
        .clone()
        .lazy()
        .join(
            past.clone().lazy(),
            [col("asset"), col("failure_mode")],
            [col("asset"), col("failure_mode")],
            JoinArgs::new(JoinType::Inner),
        )
        .with_column(
            when(offset.clone().lt(lit(0i64)))
                .then(lit(0i64) - offset.clone())
                .otherwise(offset)
                .alias("distance"),
        )
        .filter(col("distance").lt_eq(lit(micros(settings.match_window))))
        .cache();
    // Within a group, rows keep the frame's order: `first` is the nearest.
    let nearest = candidates
        .clone()
        .sort(["wo", "distance", "past"], SortMultipleOptions::default())
        .group_by([col("wo")])
        .agg([col("outcome").first()]);
    let count_of = |outcome: PastOutcome| {
        col("outcome")
            .eq(lit(outcome.as_str()))
            .fill_null(lit(false))
            .sum()
            .alias(format!("matched_{}", outcome.as_str()))
    };
    let work_order_metrics = predicted
        .lazy()
        .join(
            nearest,
            [col("wo")],
            [col("wo")],
            JoinArgs::new(JoinType::Left),
        )
        .group_by([col("rule")])
        .agg([
            len().alias("work_orders"),
            count_of(PastOutcome::ConfirmedFailure),
            count_of(PastOutcome::NotAFailure),
            count_of(PastOutcome::StillOpen),
            count_of(PastOutcome::OtherClosed),
            col("outcome").null_count().alias("unmatched"),
        ]);
    let caught = candidates
        .filter(failure())
        .select([col("rule"), col("past")])
        .unique(None, UniqueKeepStrategy::Any)
        .with_column(lit(true).alias("caught"))
        .cache();
    let caught_metrics = caught
        .clone()
        .group_by([col("rule")])
        .agg([len().alias("failures_caught")]);

    let coverage = df!(
        "rule" => result.coverage.iter().map(|c| c.0).collect::<Vec<u32>>(),
        "asset" => result.coverage.iter().map(|c| c.1.as_uuid().to_string()).collect::<Vec<_>>(),
    )?;
    let missed_metrics = coverage
        .lazy()
        .join(
            rules
                .clone()
                .lazy()
                .select([col("rule"), col("failure_mode")]),
            [col("rule")],
            [col("rule")],
            JoinArgs::new(JoinType::Inner),
        )
        .join(
            past.lazy().filter(failure().and(col("in_window"))),
            [col("asset"), col("failure_mode")],
            [col("asset"), col("failure_mode")],
            JoinArgs::new(JoinType::Inner),
        )
        .select([col("rule"), col("past")])
        .join(
            caught,
            [col("rule"), col("past")],
            [col("rule"), col("past")],
            JoinArgs::new(JoinType::Left),
        )
        .filter(col("caught").is_null())
        .group_by([col("rule")])
        .agg([len().alias("failures_missed")]);

    let mut frame = rules.lazy();
    for metrics in [
        alarm_metrics,
        work_order_metrics,
        caught_metrics,
        missed_metrics,
    ] {
        frame = frame.join(
            metrics,
            [col("rule")],
            [col("rule")],
            JoinArgs::new(JoinType::Left),
        );
    }
    let int64 = METRICS.map(|(name, _)| col(name).cast(DataType::Int64).fill_null(lit(0i64)));
    Ok(frame
        .with_columns(int64)
        .sort(["rule"], SortMultipleOptions::default())
        .collect()?)
}

/// Joins the per-rule frames of the rule set under test and the baseline by rule id.
fn compare(current: DataFrame, baseline: DataFrame) -> Result<DataFrame, BacktestError> {
    let baseline = baseline
        .lazy()
        .with_column(col("rule").alias("baseline_rule"));
    let current = current.lazy().with_column(lit(true).alias("in_current"));
    Ok(current
        .join(
            baseline,
            [col(KEY)],
            [col(KEY)],
            JoinArgs::new(JoinType::Full)
                .with_coalesce(JoinCoalesce::CoalesceColumns)
                .with_suffix(Some(BASELINE_SUFFIX.into())),
        )
        .with_columns(METRICS.map(|(name, _)| {
            (col(name) - col(format!("{name}{BASELINE_SUFFIX}"))).alias(format!("{name}_delta"))
        }))
        // The rules under test in file order, then the removed ones in baseline order.
        .sort(
            ["in_current", "rule", "baseline_rule"],
            SortMultipleOptions::default()
                .with_order_descending_multi([true, false, false])
                .with_nulls_last(true),
        )
        .collect()?)
}

fn ints(frame: &DataFrame, name: &str) -> Result<Vec<Option<i64>>, BacktestError> {
    Ok(frame.column(name)?.i64()?.iter().collect())
}

fn strings(frame: &DataFrame, name: &str) -> Result<Vec<Option<String>>, BacktestError> {
    Ok(frame
        .column(name)?
        .str()?
        .iter()
        .map(|s| s.map(str::to_owned))
        .collect())
}

/// Reads the metrics named `name{suffix}` of row `row`, or `None` when the row has none.
fn metrics_at(columns: &[Vec<Option<i64>>], row: usize) -> Option<RuleMetrics> {
    let mut values = [0i64; METRICS.len()];
    for (value, column) in values.iter_mut().zip(columns) {
        *value = column.get(row).copied().flatten()?;
    }
    Some(RuleMetrics::from_values(values))
}

fn metric_columns(frame: &DataFrame, suffix: &str) -> Result<Vec<Vec<Option<i64>>>, BacktestError> {
    METRICS
        .iter()
        .map(|(name, _)| ints(frame, &format!("{name}{suffix}")))
        .collect()
}

fn extract(frame: &DataFrame, with_baseline: bool) -> Result<Vec<RuleReport>, BacktestError> {
    let ids = strings(frame, KEY)?;
    let modes = strings(frame, "failure_mode")?;
    let current = metric_columns(frame, "")?;
    let (baseline, delta, baseline_modes, in_current) = if with_baseline {
        let in_current: Vec<bool> = frame
            .column("in_current")?
            .bool()?
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect();
        (
            metric_columns(frame, BASELINE_SUFFIX)?,
            metric_columns(frame, "_delta")?,
            strings(frame, &format!("failure_mode{BASELINE_SUFFIX}"))?,
            in_current,
        )
    } else {
        (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            vec![true; frame.height()],
        )
    };
    let mut reports = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let rule = ids.get(row).cloned().flatten().unwrap_or_default();
        let failure_mode = modes
            .get(row)
            .cloned()
            .flatten()
            .or_else(|| baseline_modes.get(row).cloned().flatten())
            .unwrap_or_default();
        let here = in_current.get(row).copied().unwrap_or(false);
        let current = if here {
            metrics_at(&current, row)
        } else {
            None
        };
        let (baseline_metrics, delta_metrics) = if with_baseline {
            (metrics_at(&baseline, row), metrics_at(&delta, row))
        } else {
            (None, None)
        };
        let change = match (with_baseline, &current, &baseline_metrics, &delta_metrics) {
            (false, ..) => Change::NoBaseline,
            (true, Some(_), None, _) => Change::Added,
            (true, None, _, _) => Change::Removed,
            (true, Some(c), Some(b), _) if c == b => Change::Unchanged,
            (true, Some(_), Some(_), _) => Change::Changed,
        };
        reports.push(RuleReport {
            rule,
            failure_mode,
            change,
            current,
            baseline: baseline_metrics,
            delta: delta_metrics,
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::tests::{HOT, asset, reading, rules, tags, ts};
    use crate::replay::{Replay, Window};

    fn window() -> Window {
        Window::new(ts(0), ts(10_000)).expect("non-empty")
    }

    fn past(
        n: u128,
        asset_no: u128,
        mode: &str,
        at: i64,
        status: &str,
        resolution: Option<&str>,
    ) -> PastWorkOrder {
        PastWorkOrder {
            id: Uuid::from_u128(n),
            asset: asset(asset_no),
            failure_mode: mode.into(),
            created_at: ts(at),
            status: status.into(),
            resolution: resolution.map(str::to_owned),
        }
    }

    #[test]
    fn classification_follows_status_and_resolution() {
        use PastOutcome::*;
        let cases = [
            ("completed", None, ConfirmedFailure),
            ("verified", Some("fixed"), ConfirmedFailure),
            ("completed", Some("no_fault_found"), NotAFailure),
            ("verified", Some("cleared_automatically"), NotAFailure),
            ("cancelled", Some("fixed"), NotAFailure),
            ("cancelled", None, NotAFailure),
            ("completed", Some("duplicate"), OtherClosed),
            ("completed", Some("other"), OtherClosed),
            ("open", None, StillOpen),
            ("in_progress", None, StillOpen),
        ];
        for (status, resolution, expected) in cases {
            assert_eq!(
                classify(status, resolution),
                expected,
                "{status} {resolution:?}"
            );
        }
    }

    /// p1 raises `hot` three times: at 100 (clears 200), at 500 (flap: 300 s after the
    /// clear, within 10 min; clears 600), at 2000 (clears 2100: 1400 s after, no flap).
    /// p2 raises at 5000 and is still active at the end (10 000).
    fn history() -> Vec<crate::replay::HistoryReading> {
        vec![
            reading(0, 100, 85.0),
            reading(0, 200, 60.0),
            reading(0, 500, 85.0),
            reading(0, 600, 60.0),
            reading(0, 2000, 85.0),
            reading(0, 2100, 60.0),
            reading(1, 5000, 85.0),
        ]
    }

    fn metrics(analysis: &Analysis, rule: &str) -> RuleMetrics {
        analysis
            .rules
            .iter()
            .find(|r| r.rule == rule)
            .and_then(|r| r.current)
            .unwrap_or_else(|| panic!("{rule} has metrics"))
    }

    #[test]
    fn per_rule_metrics_count_alarms_time_flaps_and_matches() {
        let result = Replay::run(rules(HOT), tags(), window(), history());
        let past_orders = [
            // 1 h after the first opening: a confirmed failure.
            past(1, 1, "overheat", 100 + 3600, "completed", Some("fixed")),
            // Near the second opening, but cancelled.
            past(2, 1, "overheat", 400, "cancelled", None),
            // Another failure mode: never matched.
            past(3, 1, "leak", 2000, "completed", None),
            // Near the third opening, still open; further than #2 is from the second.
            past(4, 1, "overheat", 1990, "in_progress", None),
            // A real failure on p2 two days before anything: missed.
            past(5, 2, "overheat", 3000, "verified", None),
        ];
        let settings = Settings::default();
        let analysis = analyse(&result, None, Some(&past_orders), settings).expect("analysis runs");
        assert_eq!(analysis.past_work_orders, Some(5));
        assert_eq!(analysis.rules.len(), 2);
        assert_eq!(analysis.rules[0].rule, "hot");
        assert_eq!(analysis.rules[0].change, Change::NoBaseline);
        let hot = metrics(&analysis, "hot");
        assert_eq!(hot.alarms, 4);
        assert_eq!(hot.work_orders, 4);
        assert_eq!(hot.time_in_alarm, (100 + 100 + 100 + 5000) * 1_000_000);
        assert_eq!(hot.flaps, 1);
        assert_eq!(hot.escalations, 3);
        assert_eq!(hot.active_at_end, 1);
        // Opening at 100: #1 (3600 s) and #2 (300 s) are candidates: #2 is nearer.
        // Opening at 500: #2 (100 s) and #1 (3200 s): #2. Opening at 2000: #4 (10 s).
        // Opening at 5000 (p2): #5 (2000 s).
        assert_eq!(hot.matched_no_fault, 2);
        assert_eq!(hot.matched_open, 1);
        assert_eq!(hot.matched_failure, 1);
        assert_eq!(hot.unmatched, 0);
        // #1 and #5 are both within a day of an opening of the rule.
        assert_eq!(hot.failures_caught, 2);
        assert_eq!(hot.failures_missed, 0);
        // very-hot watches p1 for the same failure mode but never fired: #1 is its miss.
        let very_hot = metrics(&analysis, "very-hot");
        assert_eq!(
            very_hot,
            RuleMetrics {
                failures_missed: 1,
                ..RuleMetrics::default()
            }
        );
    }

    #[test]
    fn failures_no_predicted_work_order_comes_near_are_missed() {
        let result = Replay::run(rules(HOT), tags(), window(), history());
        let past_orders = [past(1, 1, "overheat", 9000, "completed", None)];
        let settings = Settings {
            match_window: Duration::from_secs(60),
            ..Settings::default()
        };
        let analysis = analyse(&result, None, Some(&past_orders), settings).expect("analysis runs");
        let hot = metrics(&analysis, "hot");
        assert_eq!(hot.unmatched, 4);
        assert_eq!(hot.failures_caught, 0);
        assert_eq!(hot.failures_missed, 1);
        // very-hot watches p1 too, with the same failure mode.
        assert_eq!(metrics(&analysis, "very-hot").failures_missed, 1);
    }

    #[test]
    fn the_flap_window_is_configurable() {
        let result = Replay::run(rules(HOT), tags(), window(), history());
        let settings = Settings {
            flap_window: Duration::from_secs(2000),
            ..Settings::default()
        };
        let analysis = analyse(&result, None, None, settings).expect("analysis runs");
        assert_eq!(analysis.past_work_orders, None);
        assert_eq!(metrics(&analysis, "hot").flaps, 2);
    }

    #[test]
    fn the_baseline_diff_names_added_removed_changed_and_unchanged_rules() {
        let baseline_rules = HOT
            .replace("above = 80.0", "above = 90.0")
            .replace("id = \"very-hot\"", "id = \"gone\"");
        let current = Replay::run(rules(HOT), tags(), window(), history());
        let baseline = Replay::run(rules(&baseline_rules), tags(), window(), history());
        let analysis =
            analyse(&current, Some(&baseline), None, Settings::default()).expect("analysis runs");
        let summary: Vec<_> = analysis
            .rules
            .iter()
            .map(|r| (r.rule.as_str(), r.change, r.delta.map(|d| d.alarms)))
            .collect();
        assert_eq!(
            summary,
            [
                ("hot", Change::Changed, Some(4)),
                ("very-hot", Change::Added, None),
                ("gone", Change::Removed, None),
            ]
        );
        let hot = &analysis.rules[0];
        assert_eq!(hot.baseline.map(|b| b.alarms), Some(0));
        assert_eq!(analysis.rules[2].current, None);
        assert_eq!(analysis.rules[2].failure_mode, "overheat");

        let same = analyse(&current, Some(&current), None, Settings::default()).expect("runs");
        assert!(same.rules.iter().all(|r| r.change == Change::Unchanged));
    }
}
