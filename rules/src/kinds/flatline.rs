//! # flatline
//!
#![doc = include_str!("flatline.md")]

use std::time::Duration;

use model::Timestamp;
use serde::Deserialize;

use crate::alarm::Verdict;
use crate::kinds::{Measure, Problem, check_positive, micros};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("flatline.md");

/// `[rule.flatline]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    #[serde(with = "humantime_serde")]
    duration: Duration,
    #[serde(default)]
    tolerance: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Flatline {
    pub duration: Duration,
    pub tolerance: f64,
    duration_micros: i64,
}

/// The current run of readings within the band.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Run {
    start: Option<i64>,
    min: f64,
    max: f64,
}

impl Flatline {
    pub(crate) fn parse(t: Table) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        check_positive("duration", t.duration, "15m", &mut problems);
        if !(t.tolerance.is_finite() && t.tolerance >= 0.0) {
            problems.push(Problem::new(format!(
                "`tolerance` ({}) must be a finite number, 0 or more",
                t.tolerance
            )));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            duration: t.duration,
            tolerance: t.tolerance,
            duration_micros: micros(t.duration),
        })
    }

    pub(crate) fn measure(&self, run: &mut Run, ts: Timestamp, value: f64) -> Measure {
        let t = ts.as_micros();
        let min = run.min.min(value);
        let max = run.max.max(value);
        let start = match run.start {
            Some(start) if max - min <= self.tolerance => {
                run.min = min;
                run.max = max;
                start
            }
            _ => {
                *run = Run {
                    start: Some(t),
                    min: value,
                    max: value,
                };
                t
            }
        };
        let stuck = t.saturating_sub(start);
        Measure {
            verdict: if stuck >= self.duration_micros {
                Verdict::Breach
            } else {
                Verdict::Clear
            },
            observed: stuck as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &Flatline, points: &[(i64, f64)]) -> Vec<(Verdict, f64)> {
        let mut m = Run::default();
        points
            .iter()
            .map(|&(s, v)| {
                let got = f.measure(&mut m, Timestamp::from_micros(s * 1_000_000), v);
                (got.verdict, got.observed)
            })
            .collect()
    }

    fn rule(duration: u64, tolerance: f64) -> Flatline {
        Flatline::parse(Table {
            duration: Duration::from_secs(duration),
            tolerance,
        })
        .expect("valid test rule")
    }

    #[test]
    fn a_value_within_the_band_for_the_duration_breaches_and_a_change_clears() {
        let f = rule(10, 0.5);
        let got = run(
            &f,
            &[
                (0, 1.0),
                (5, 1.3),
                (10, 0.9),
                (11, 1.2),
                (12, 2.0),
                (13, 2.0),
            ],
        );
        let verdicts: Vec<_> = got.iter().map(|g| g.0).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Clear, Clear, Breach, Breach, Clear, Clear]);
        assert_eq!(got[3].1, 11.0);
        assert_eq!(got[5].1, 1.0);
    }

    #[test]
    fn a_slow_drift_is_a_change() {
        let f = rule(10, 0.5);
        let points: Vec<_> = (0..20).map(|s| (s, s as f64 * 0.1)).collect();
        assert!(run(&f, &points).iter().all(|g| g.0 == Verdict::Clear));
    }

    #[test]
    fn nonsense_is_reported() {
        let problems = Flatline::parse(Table {
            duration: Duration::ZERO,
            tolerance: -1.0,
        })
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
