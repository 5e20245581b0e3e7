//! # threshold
//!
#![doc = include_str!("threshold.md")]

use serde::Deserialize;

use crate::alarm::Verdict;
use crate::kinds::{LimitNames, Problem, check_limits};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("threshold.md");

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Upper limit: values greater than this breach.
    pub above: Option<f64>,
    /// Lower limit: values less than this breach.
    pub below: Option<f64>,
    /// With `above`: the alarm clears only below this value. Defaults to `above`.
    pub clear_below: Option<f64>,
    /// With `below`: the alarm clears only above this value. Defaults to `below`.
    pub clear_above: Option<f64>,
}

impl Threshold {
    pub fn verdict(&self, value: f64) -> Verdict {
        let high = self.above.is_some_and(|a| value > a);
        let low = self.below.is_some_and(|b| value < b);
        if high || low {
            return Verdict::Breach;
        }
        // Without a clear limit the alarm clears as soon as the value is back at the limit.
        let clear_high = match (self.above, self.clear_below) {
            (None, _) => true,
            (Some(_), Some(c)) => value < c,
            (Some(a), None) => value <= a,
        };
        let clear_low = match (self.below, self.clear_above) {
            (None, _) => true,
            (Some(_), Some(c)) => value > c,
            (Some(b), None) => value >= b,
        };
        if clear_high && clear_low {
            Verdict::Clear
        } else {
            Verdict::Hold
        }
    }

    pub fn limit(&self) -> Option<f64> {
        self.above.or(self.below)
    }

    /// Validates the table as written.
    pub(crate) fn parse(self) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        self.check(&mut problems);
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        check_limits(
            &LimitNames {
                kind: "threshold",
                upper: "above",
                lower: "below",
                clear_upper: "clear_below",
                clear_lower: "clear_above",
            },
            self,
            problems,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(above: f64, clear_below: Option<f64>) -> Threshold {
        Threshold {
            above: Some(above),
            below: None,
            clear_below,
            clear_above: None,
        }
    }

    #[test]
    fn verdicts_with_and_without_deadband() {
        let t = upper(80.0, Some(75.0));
        let table = [
            (81.0, Verdict::Breach),
            (80.0, Verdict::Hold),
            (76.0, Verdict::Hold),
            (75.0, Verdict::Hold),
            (74.9, Verdict::Clear),
        ];
        for (v, want) in table {
            assert_eq!(t.verdict(v), want, "value {v}");
        }
        let plain = upper(80.0, None);
        assert_eq!(plain.verdict(80.1), Verdict::Breach);
        assert_eq!(plain.verdict(80.0), Verdict::Clear);
    }

    #[test]
    fn band_breaches_on_both_sides() {
        let t = Threshold {
            above: Some(10.0),
            below: Some(2.0),
            clear_below: Some(9.0),
            clear_above: Some(3.0),
        };
        assert_eq!(t.verdict(11.0), Verdict::Breach);
        assert_eq!(t.verdict(1.0), Verdict::Breach);
        assert_eq!(t.verdict(2.5), Verdict::Hold);
        assert_eq!(t.verdict(5.0), Verdict::Clear);
    }

    #[test]
    fn nonsense_limits_are_reported() {
        let mut p = Vec::new();
        Threshold {
            above: Some(1.0),
            below: Some(5.0),
            clear_below: Some(3.0),
            clear_above: None,
        }
        .check(&mut p);
        assert_eq!(p.len(), 2, "{p:?}");
        let mut p = Vec::new();
        Threshold {
            above: None,
            below: None,
            clear_below: None,
            clear_above: None,
        }
        .check(&mut p);
        assert_eq!(
            p,
            [Problem::new("threshold needs `above`, `below`, or both")]
        );
    }
}
