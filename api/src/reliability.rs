//! Reliability figures over a period: failures, downtime, MTTR and MTBF, from the failures'
//! work orders. Pure: the route reads the failures and hands them here.
//!
//! Definitions (`docs/WORK-ORDERS.md`, "Reliability"):
//! - A **failure** is a corrective or emergency work order that began (`created_at`) in the
//!   period and did not turn out to be nothing: not cancelled, and not resolved as
//!   `no_fault_found`, `duplicate` or `cleared_automatically`.
//! - **Downtime** of an asset is the union of its failures' intervals, from the report to the
//!   completion (or the period's end while still open), within the period; overlapping
//!   failures of one asset count once. A group's downtime is the sum over its assets.
//! - **MTTR** is the mean time from report to completion of the failures completed.
//! - **MTBF** is the operating time (the assets in scope times the period, less their
//!   downtime) divided by the failures; none without failures.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One failure: its asset, failure mode, and when it was reported and completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub asset: Uuid,
    pub failure_mode: Option<String>,
    pub began: DateTime<Utc>,
    /// `None` while the work order is not completed.
    pub ended: Option<DateTime<Utc>>,
}

/// `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Period {
    pub fn length(&self) -> Duration {
        self.to - self.from
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub failures: u32,
    /// Failures not completed yet.
    pub open: u32,
    pub downtime_hours: f64,
    pub mttr_hours: Option<f64>,
    pub mtbf_hours: Option<f64>,
}

/// `[start, end)`.
type Interval = (DateTime<Utc>, DateTime<Utc>);

fn hours(d: Duration) -> f64 {
    d.num_milliseconds() as f64 / 3_600_000.0
}

/// The downtime within `period` of `failures`: per asset, the union of their intervals (open
/// ones until `now` or the period's end, whichever is first), summed over the assets.
pub fn downtime<'a>(
    failures: impl IntoIterator<Item = &'a Failure>,
    period: Period,
    now: DateTime<Utc>,
) -> Duration {
    let end_of_open = now.min(period.to);
    let mut by_asset: BTreeMap<Uuid, Vec<Interval>> = BTreeMap::new();
    for f in failures {
        let start = f.began.max(period.from);
        let end = f.ended.unwrap_or(end_of_open).min(period.to);
        if end > start {
            by_asset.entry(f.asset).or_default().push((start, end));
        }
    }
    let mut total = Duration::zero();
    for intervals in by_asset.values_mut() {
        intervals.sort();
        let mut current: Option<Interval> = None;
        for &(start, end) in intervals.iter() {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    total += e - s;
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = current {
            total += e - s;
        }
    }
    total
}

/// The figures of `failures` (those of one group) in `period`. `operating` is the operating
/// time the MTBF divides: the assets in scope times the period, less their downtime.
pub fn figures(
    failures: &[&Failure],
    period: Period,
    operating: Duration,
    now: DateTime<Utc>,
) -> Figures {
    let repairs: Vec<Duration> = failures
        .iter()
        .filter_map(|f| f.ended.map(|end| end - f.began))
        .collect();
    let count = failures.len() as u32;
    Figures {
        failures: count,
        open: failures.iter().filter(|f| f.ended.is_none()).count() as u32,
        downtime_hours: hours(downtime(failures.iter().copied(), period, now)),
        mttr_hours: (!repairs.is_empty()).then(|| {
            hours(repairs.iter().fold(Duration::zero(), |a, b| a + *b)) / repairs.len() as f64
        }),
        mtbf_hours: (count > 0).then(|| hours(operating.max(Duration::zero())) / f64::from(count)),
    }
}

/// How a report groups its failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Asset,
    FailureMode,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The asset's id, or the failure mode (`null`: none recorded).
    pub key: Option<String>,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Every failure in scope.
    pub total: Figures,
    /// Most downtime first.
    pub groups: Vec<Group>,
}

/// The report of `failures` in `period` over `assets` assets in scope. Grouped by asset, each
/// group's MTBF is its own asset's operating time; by failure mode, each divides the
/// operating time of every asset in scope (a mode's failures happen across all of them).
pub fn report(
    failures: &[Failure],
    period: Period,
    assets: u32,
    group_by: GroupBy,
    now: DateTime<Utc>,
) -> Report {
    let all: Vec<&Failure> = failures.iter().collect();
    let scope_time = period.length() * assets as i32;
    let all_downtime = downtime(all.iter().copied(), period, now);
    let total = figures(&all, period, scope_time - all_downtime, now);
    let mut grouped: BTreeMap<Option<String>, Vec<&Failure>> = BTreeMap::new();
    for f in failures {
        let key = match group_by {
            GroupBy::Asset => Some(f.asset.to_string()),
            GroupBy::FailureMode => f.failure_mode.clone(),
        };
        grouped.entry(key).or_default().push(f);
    }
    let mut groups: Vec<Group> = grouped
        .into_iter()
        .map(|(key, members)| {
            let operating = match group_by {
                GroupBy::Asset => period.length() - downtime(members.iter().copied(), period, now),
                GroupBy::FailureMode => scope_time - all_downtime,
            };
            Group {
                key,
                figures: figures(&members, period, operating, now),
            }
        })
        .collect();
    groups.sort_by(|a, b| {
        b.figures
            .downtime_hours
            .total_cmp(&a.figures.downtime_hours)
            .then_with(|| a.key.cmp(&b.key))
    });
    Report { total, groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: i64) -> DateTime<Utc> {
        "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::hours(hour)
    }

    fn failure(asset: u128, mode: &str, began: i64, ended: Option<i64>) -> Failure {
        Failure {
            asset: Uuid::from_u128(asset),
            failure_mode: Some(mode.to_owned()),
            began: at(began),
            ended: ended.map(at),
        }
    }

    /// 100 hours from `at(0)`.
    fn period() -> Period {
        Period {
            from: at(0),
            to: at(100),
        }
    }

    #[test]
    fn overlapping_failures_of_one_asset_count_their_downtime_once() {
        let f = [
            failure(1, "a", 10, Some(20)),
            failure(1, "b", 15, Some(25)),
            failure(1, "a", 30, Some(31)),
            failure(2, "a", 10, Some(20)),
        ];
        assert_eq!(
            downtime(&f, period(), at(200)),
            Duration::hours(15 + 1 + 10)
        );
    }

    #[test]
    fn downtime_is_clipped_to_the_period_and_open_failures_run_until_now() {
        let f = [failure(1, "a", 90, Some(150)), failure(2, "a", 95, None)];
        assert_eq!(downtime(&f, period(), at(97)), Duration::hours(10 + 2));
        assert_eq!(downtime(&f, period(), at(300)), Duration::hours(10 + 5));
    }

    #[test]
    fn mttr_counts_completed_failures_and_mtbf_divides_the_operating_time() {
        let f = [
            failure(1, "bearing", 10, Some(14)),
            failure(1, "bearing", 50, Some(52)),
            failure(1, "seal", 80, None),
        ];
        let r = report(&f, period(), 1, GroupBy::FailureMode, at(90));
        assert_eq!(r.total.failures, 3);
        assert_eq!(r.total.open, 1);
        assert_eq!(r.total.downtime_hours, 16.0);
        assert_eq!(r.total.mttr_hours, Some(3.0));
        assert_eq!(r.total.mtbf_hours, Some((100.0 - 16.0) / 3.0));
        // Most downtime first: seal (10 h open) before bearing (6 h).
        assert_eq!(r.groups[0].key.as_deref(), Some("seal"));
        assert_eq!(r.groups[0].figures.mttr_hours, None);
        assert_eq!(r.groups[1].figures.failures, 2);
        assert_eq!(r.groups[1].figures.mtbf_hours, Some((100.0 - 16.0) / 2.0));
    }

    #[test]
    fn grouped_by_asset_each_asset_has_its_own_operating_time() {
        let f = [failure(1, "a", 0, Some(10)), failure(2, "a", 0, Some(40))];
        let r = report(&f, period(), 3, GroupBy::Asset, at(100));
        assert_eq!(r.total.mtbf_hours, Some((300.0 - 50.0) / 2.0));
        assert_eq!(r.groups[0].key, Some(Uuid::from_u128(2).to_string()));
        assert_eq!(r.groups[0].figures.mtbf_hours, Some(60.0));
        assert_eq!(r.groups[1].figures.mtbf_hours, Some(90.0));
    }

    #[test]
    fn no_failures_no_means() {
        let r = report(&[], period(), 4, GroupBy::Asset, at(100));
        assert_eq!(r.total.failures, 0);
        assert_eq!(r.total.mtbf_hours, None);
        assert_eq!(r.total.mttr_hours, None);
        assert!(r.groups.is_empty());
    }
}
