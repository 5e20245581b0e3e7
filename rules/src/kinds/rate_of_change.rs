//! # rate_of_change
//!
#![doc = include_str!("rate_of_change.md")]

use std::collections::VecDeque;
use std::time::Duration;

use model::Timestamp;
use serde::Deserialize;

use crate::kinds::threshold::Threshold;
use crate::kinds::{LimitNames, Measure, Problem, check_limits, check_positive, micros};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("rate_of_change.md");

/// `[rule.rate_of_change]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    #[serde(with = "humantime_serde")]
    per: Duration,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    rise_above: Option<f64>,
    fall_below: Option<f64>,
    clear_below: Option<f64>,
    clear_above: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateOfChange {
    pub per: Duration,
    pub window: Option<Duration>,
    /// The limits on the rate: `above` is `rise_above`, `below` is `fall_below`.
    pub limits: Threshold,
    per_micros: f64,
    window_micros: Option<i64>,
}

/// The readings the rate is taken against: the previous one, or those inside the window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    points: VecDeque<(i64, f64)>,
}

impl RateOfChange {
    pub(crate) fn parse(t: Table) -> Result<Self, Vec<Problem>> {
        let limits = Threshold {
            above: t.rise_above,
            below: t.fall_below,
            clear_below: t.clear_below,
            clear_above: t.clear_above,
        };
        let mut problems = Vec::new();
        check_positive("per", t.per, "1m", &mut problems);
        if let Some(w) = t.window {
            check_positive("window", w, "5m", &mut problems);
        }
        check_limits(
            &LimitNames {
                kind: "rate_of_change",
                upper: "rise_above",
                lower: "fall_below",
                clear_upper: "clear_below",
                clear_lower: "clear_above",
            },
            &limits,
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(problems);
        }
        let per_micros = micros(t.per) as f64;
        Ok(Self {
            per: t.per,
            window: t.window,
            limits,
            per_micros,
            window_micros: t.window.map(micros),
        })
    }

    pub fn limit(&self) -> Option<f64> {
        self.limits.limit()
    }

    pub(crate) fn memory(&self) -> Memory {
        Memory::default()
    }

    pub(crate) fn measure(&self, m: &mut Memory, ts: Timestamp, value: f64) -> Measure {
        let t = ts.as_micros();
        let reference = match self.window_micros {
            None => m.points.pop_front(),
            Some(w) => {
                let oldest = t.saturating_sub(w);
                while m.points.front().is_some_and(|&(pt, _)| pt < oldest) {
                    m.points.pop_front();
                }
                m.points.front().copied()
            }
        };
        m.points.push_back((t, value));
        match reference {
            Some((t0, v0)) if t0 < t => {
                let rate = (value - v0) / (t - t0) as f64 * self.per_micros;
                Measure {
                    verdict: self.limits.verdict(rate),
                    observed: rate,
                }
            }
            _ => Measure::HOLD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::Verdict;

    fn rule(text: &str) -> RateOfChange {
        let table: Table = toml::from_str(text).expect("test table");
        RateOfChange::parse(table).expect("valid test table")
    }

    fn run(r: &RateOfChange, points: &[(i64, f64)]) -> Vec<(Verdict, f64)> {
        let mut m = r.memory();
        points
            .iter()
            .map(|&(s, v)| {
                let got = r.measure(&mut m, Timestamp::from_micros(s * 1_000_000), v);
                (got.verdict, got.observed)
            })
            .collect()
    }

    #[test]
    fn consecutive_readings_give_the_rate_per_unit() {
        let r = rule("per = \"1m\"\nrise_above = 5.0\nclear_below = 2.0");
        let got = run(&r, &[(0, 10.0), (60, 20.0), (120, 23.0), (180, 24.0)]);
        assert_eq!(got[0].0, Verdict::Hold);
        assert_eq!(got[1], (Verdict::Breach, 10.0));
        assert_eq!(got[2], (Verdict::Hold, 3.0));
        assert_eq!(got[3], (Verdict::Clear, 1.0));
    }

    #[test]
    fn a_window_takes_the_rate_from_its_oldest_reading() {
        let r = rule("per = \"1s\"\nwindow = \"10s\"\nfall_below = -1.0");
        let got = run(&r, &[(0, 100.0), (5, 100.0), (10, 85.0), (16, 85.0)]);
        assert_eq!(got[2], (Verdict::Breach, -1.5));
        // At 16 the reading at 0 has left the window; the reference is the one at 10.
        assert_eq!(got[3], (Verdict::Clear, 0.0));
    }

    #[test]
    fn nonsense_is_reported() {
        let table: Table = toml::from_str("per = \"0s\"").expect("test table");
        let problems = RateOfChange::parse(table).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].message.contains("`rise_above`, `fall_below`"));
    }
}
