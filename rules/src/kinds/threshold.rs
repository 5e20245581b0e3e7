//! # threshold
//!
//! **What it does.** Raises an alarm when a value goes above a limit (`above`) or below one
//! (`below`); with both, when it leaves the band between them. It clears when the value comes
//! back past the clear limit: `clear_below` for an upper limit and `clear_above` for a lower
//! one. Between limit and clear limit the alarm keeps its state (hysteresis), so a value that
//! hovers at the limit does not flap.
//!
//! **Why.** Most equipment limits are fixed numbers from a datasheet or a standard: a bearing
//! above 85 °C, a tank below 10 %. A deadband is what separates a useful alarm from a flapping
//! one.
//!
//! **Example.**
//! ```toml
//! [rule.threshold]
//! above = 85.0        # alarm when the value exceeds 85
//! clear_below = 80.0  # clear only once it is back under 80 (default: 85)
//! ```

use serde::Deserialize;

use crate::alarm::Verdict;

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

    pub fn limit(&self) -> f64 {
        self.above.or(self.below).unwrap_or(f64::NAN)
    }

    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        if self.above.is_none() && self.below.is_none() {
            problems.push("threshold needs `above`, `below`, or both".into());
        }
        for (name, v) in [
            ("above", self.above),
            ("below", self.below),
            ("clear_below", self.clear_below),
            ("clear_above", self.clear_above),
        ] {
            if v.is_some_and(|v| !v.is_finite()) {
                problems.push(format!("`{name}` must be a finite number"));
            }
        }
        if let (Some(a), Some(b)) = (self.above, self.below)
            && b >= a
        {
            problems.push(format!("`below` ({b}) must be less than `above` ({a})"));
        }
        match (self.above, self.clear_below) {
            (None, Some(_)) => problems.push("`clear_below` only makes sense with `above`".into()),
            (Some(a), Some(c)) if c > a => problems.push(format!(
                "`clear_below` ({c}) must not exceed `above` ({a}); it is the lower edge of the deadband"
            )),
            _ => {}
        }
        match (self.below, self.clear_above) {
            (None, Some(_)) => problems.push("`clear_above` only makes sense with `below`".into()),
            (Some(b), Some(c)) if c < b => problems.push(format!(
                "`clear_above` ({c}) must not be under `below` ({b}); it is the upper edge of the deadband"
            )),
            _ => {}
        }
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
        assert_eq!(p, ["threshold needs `above`, `below`, or both"]);
    }
}
