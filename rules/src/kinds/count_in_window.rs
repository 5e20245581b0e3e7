//! # count_in_window
//!
#![doc = include_str!("count_in_window.md")]

use std::collections::VecDeque;
use std::time::Duration;

use model::Timestamp;
use serde::Deserialize;

use crate::alarm::Verdict;
use crate::kinds::{Measure, Problem, check_positive, micros};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("count_in_window.md");

/// `[rule.count_in_window]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    above: Option<f64>,
    below: Option<f64>,
    count: u32,
    #[serde(with = "humantime_serde")]
    window: Duration,
    clear_count: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CountInWindow {
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub count: u32,
    pub clear_count: u32,
    pub window: Duration,
    window_micros: i64,
}

/// The times of the latest breaching readings, at most `count` of them: enough to tell
/// both `count` and `clear_count` apart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    breaches: VecDeque<i64>,
}

impl CountInWindow {
    pub(crate) fn parse(t: Table) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        if t.above.is_none() && t.below.is_none() {
            problems.push(
                Problem::new("count_in_window needs `above`, `below`, or both")
                    .hint("the limit a reading must break to count, e.g. above = 8.0"),
            );
        }
        for (name, v) in [("above", t.above), ("below", t.below)] {
            if v.is_some_and(|v| !v.is_finite()) {
                problems.push(Problem::new(format!("`{name}` must be a finite number")));
            }
        }
        if let (Some(a), Some(b)) = (t.above, t.below)
            && b >= a
        {
            problems.push(Problem::new(format!(
                "`below` ({b}) must be less than `above` ({a})"
            )));
        }
        if t.count == 0 {
            problems.push(Problem::new("`count` must be at least 1"));
        }
        let clear_count = t.clear_count.unwrap_or(t.count);
        if t.count > 0 && !(1..=t.count).contains(&clear_count) {
            problems.push(
                Problem::new(format!(
                    "`clear_count` ({clear_count}) must lie between 1 and `count` ({})",
                    t.count
                ))
                .hint("the alarm clears when fewer than `clear_count` breaching readings remain"),
            );
        }
        check_positive("window", t.window, "10m", &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            above: t.above,
            below: t.below,
            count: t.count,
            clear_count,
            window: t.window,
            window_micros: micros(t.window),
        })
    }

    pub(crate) fn memory(&self) -> Memory {
        Memory {
            breaches: VecDeque::with_capacity(self.count as usize),
        }
    }

    pub(crate) fn measure(&self, m: &mut Memory, ts: Timestamp, value: f64) -> Measure {
        let t = ts.as_micros();
        let breach = self.above.is_some_and(|a| value > a) || self.below.is_some_and(|b| value < b);
        if breach {
            if m.breaches.len() == self.count as usize {
                m.breaches.pop_front();
            }
            m.breaches.push_back(t);
        }
        let oldest = t.saturating_sub(self.window_micros);
        while m.breaches.front().is_some_and(|&b| b <= oldest) {
            m.breaches.pop_front();
        }
        let n = m.breaches.len() as u32;
        let verdict = if n >= self.count {
            Verdict::Breach
        } else if n < self.clear_count {
            Verdict::Clear
        } else {
            Verdict::Hold
        };
        Measure {
            verdict,
            observed: f64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> CountInWindow {
        let table: Table = toml::from_str(text).expect("test table");
        CountInWindow::parse(table).expect("valid test table")
    }

    #[test]
    fn counts_breaches_in_the_window_with_a_clear_count() {
        let r = rule("above = 8.0\ncount = 3\nwindow = \"10s\"\nclear_count = 2");
        let mut m = r.memory();
        let mut verdicts = Vec::new();
        for (s, v) in [
            (0, 9.0),
            (2, 1.0),
            (4, 9.0),
            (6, 9.0),
            (12, 1.0),
            (15, 1.0),
            (17, 1.0),
        ] {
            let got = r.measure(&mut m, Timestamp::from_micros(s * 1_000_000), v);
            verdicts.push((got.verdict, got.observed));
        }
        use Verdict::*;
        assert_eq!(
            verdicts,
            [
                (Clear, 1.0),
                (Clear, 1.0),
                (Hold, 2.0),
                (Breach, 3.0),
                (Hold, 2.0),
                (Clear, 1.0),
                (Clear, 0.0)
            ]
        );
    }

    #[test]
    fn nonsense_is_reported() {
        let table: Table =
            toml::from_str("count = 2\nclear_count = 3\nwindow = \"0s\"").expect("test table");
        let problems = CountInWindow::parse(table).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
