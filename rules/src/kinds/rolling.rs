//! # rolling
//!
#![doc = include_str!("rolling.md")]

use std::collections::VecDeque;
use std::time::Duration;

use model::Timestamp;
use serde::Deserialize;

use crate::kinds::{Measure, Problem, check_positive, magnitude_verdict, micros};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("rolling.md");

/// `min_samples` when the file does not say.
const DEFAULT_MIN_SAMPLES: u32 = 10;

/// `[rule.rolling]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    method: MethodName,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
    samples: Option<u32>,
    z_above: Option<f64>,
    z_clear: Option<f64>,
    alpha: Option<f64>,
    deviation_above: Option<f64>,
    deviation_clear: Option<f64>,
    min_samples: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MethodName {
    Zscore,
    Ewma,
}

/// Which readings form a z-score baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The readings younger than this.
    Span(Duration),
    /// The last this many readings.
    Samples(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    ZScore {
        window: Window,
        z_above: f64,
        z_clear: Option<f64>,
    },
    Ewma {
        alpha: f64,
        deviation_above: f64,
        deviation_clear: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rolling {
    pub method: Method,
    /// Readings the baseline must hold before any verdict.
    pub min_samples: u32,
}

/// Per-tag baseline. The window's moments are boxed so that the memory of every other kind,
/// which shares the engine's slot type, stays small.
#[derive(Debug, Clone)]
pub(crate) enum Memory {
    ZScore(Box<Moments>),
    Ewma { baseline: f64, samples: u32 },
}

/// Mean and sum of squared deviations of the readings in a window, kept up to date as
/// readings join and leave (Welford's update and its inverse), so that no reading re-scans
/// the window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Moments {
    points: VecDeque<(i64, f64)>,
    mean: f64,
    m2: f64,
    /// Readings removed since the sums were last recomputed from the window.
    removed: usize,
}

impl Moments {
    fn push(&mut self, t: i64, x: f64) {
        self.points.push_back((t, x));
        let n = self.points.len() as f64;
        let d = x - self.mean;
        self.mean += d / n;
        self.m2 += d * (x - self.mean);
    }

    fn pop(&mut self) {
        let Some((_, x)) = self.points.pop_front() else {
            return;
        };
        self.removed += 1;
        if self.points.is_empty() {
            self.mean = 0.0;
            self.m2 = 0.0;
            return;
        }
        let n = self.points.len() as f64;
        let d = x - self.mean;
        self.mean -= d / n;
        self.m2 = (self.m2 - d * (x - self.mean)).max(0.0);
    }

    /// Removing readings lets rounding errors pile up in the running sums; recomputing them
    /// once for every window's worth of removals keeps them exact at a constant cost per
    /// reading.
    fn resync_if_due(&mut self) {
        if self.removed <= self.points.len() {
            return;
        }
        self.removed = 0;
        let n = self.points.len() as f64;
        self.mean = self.points.iter().map(|&(_, x)| x).sum::<f64>() / n;
        self.m2 = self
            .points
            .iter()
            .map(|&(_, x)| (x - self.mean) * (x - self.mean))
            .sum();
    }

    /// The sample standard deviation; `None` with fewer than two readings.
    fn stddev(&self) -> Option<f64> {
        let n = self.points.len();
        (n >= 2).then(|| (self.m2 / (n - 1) as f64).sqrt())
    }
}

impl Rolling {
    pub(crate) fn parse(t: Table) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let foreign = |name: &str, given: bool, problems: &mut Vec<Problem>, other: &str| {
            if given {
                problems.push(
                    Problem::new(format!("`{name}` only applies to method = \"{other}\""))
                        .hint(format!("remove `{name}`")),
                );
            }
        };
        let method = match t.method {
            MethodName::Zscore => {
                for (name, given) in [
                    ("alpha", t.alpha.is_some()),
                    ("deviation_above", t.deviation_above.is_some()),
                    ("deviation_clear", t.deviation_clear.is_some()),
                ] {
                    foreign(name, given, &mut problems, "ewma");
                }
                let window = match (t.window, t.samples) {
                    (Some(w), None) => {
                        check_positive("window", w, "30m", &mut problems);
                        Some(Window::Span(w))
                    }
                    (None, Some(n)) => {
                        if n < 2 {
                            problems.push(Problem::new(format!(
                                "`samples` ({n}) must be at least 2 to have a standard deviation"
                            )));
                        }
                        Some(Window::Samples(n))
                    }
                    (Some(_), Some(_)) => {
                        problems.push(
                            Problem::new("zscore takes `window` or `samples`, not both")
                                .hint("a window of time (window = \"30m\") or of readings (samples = 600)"),
                        );
                        None
                    }
                    (None, None) => {
                        problems.push(Problem::new("zscore needs `window` or `samples`").hint(
                            "a window of time (window = \"30m\") or of readings (samples = 600)",
                        ));
                        None
                    }
                };
                check_limit("z_above", "z_clear", t.z_above, t.z_clear, &mut problems);
                match (window, t.z_above) {
                    (Some(window), Some(z_above)) => Some(Method::ZScore {
                        window,
                        z_above,
                        z_clear: t.z_clear,
                    }),
                    _ => None,
                }
            }
            MethodName::Ewma => {
                for (name, given) in [
                    ("window", t.window.is_some()),
                    ("samples", t.samples.is_some()),
                    ("z_above", t.z_above.is_some()),
                    ("z_clear", t.z_clear.is_some()),
                ] {
                    foreign(name, given, &mut problems, "zscore");
                }
                match t.alpha {
                    None => problems.push(
                        Problem::new("ewma needs `alpha`")
                            .hint("the weight of each new reading, e.g. alpha = 0.05"),
                    ),
                    Some(a) if !(a > 0.0 && a <= 1.0) => problems.push(Problem::new(format!(
                        "`alpha` ({a}) must be greater than 0 and at most 1"
                    ))),
                    Some(_) => {}
                }
                check_limit(
                    "deviation_above",
                    "deviation_clear",
                    t.deviation_above,
                    t.deviation_clear,
                    &mut problems,
                );
                match (t.alpha, t.deviation_above) {
                    (Some(alpha), Some(deviation_above)) => Some(Method::Ewma {
                        alpha,
                        deviation_above,
                        deviation_clear: t.deviation_clear,
                    }),
                    _ => None,
                }
            }
        };
        let min_samples = match (t.min_samples, method) {
            (Some(n), _) => n,
            (
                None,
                Some(Method::ZScore {
                    window: Window::Samples(s),
                    ..
                }),
            ) => DEFAULT_MIN_SAMPLES.min(s),
            (None, _) => DEFAULT_MIN_SAMPLES,
        };
        match method {
            Some(Method::ZScore { window, .. }) => {
                if min_samples < 2 {
                    problems.push(Problem::new(format!(
                        "`min_samples` ({min_samples}) must be at least 2 for zscore"
                    )));
                }
                if let Window::Samples(s) = window
                    && min_samples > s
                {
                    problems.push(
                        Problem::new(format!(
                            "`min_samples` ({min_samples}) exceeds `samples` ({s}): the rule could never alarm"
                        ))
                        .hint("the baseline never holds more than `samples` readings"),
                    );
                }
            }
            Some(Method::Ewma { .. }) if min_samples == 0 => {
                problems.push(Problem::new(
                    "`min_samples` must be at least 1: the baseline starts from a reading",
                ));
            }
            _ => {}
        }
        match method {
            Some(method) if problems.is_empty() => Ok(Self {
                method,
                min_samples,
            }),
            _ => Err(problems),
        }
    }

    pub fn limit(&self) -> f64 {
        match self.method {
            Method::ZScore { z_above, .. } => z_above,
            Method::Ewma {
                deviation_above, ..
            } => deviation_above,
        }
    }

    pub(crate) fn memory(&self) -> Memory {
        match self.method {
            Method::ZScore { .. } => Memory::ZScore(Box::default()),
            Method::Ewma { .. } => Memory::Ewma {
                baseline: 0.0,
                samples: 0,
            },
        }
    }

    pub(crate) fn measure(&self, m: &mut Memory, ts: Timestamp, value: f64) -> Measure {
        match (self.method, m) {
            (
                Method::ZScore {
                    window,
                    z_above,
                    z_clear,
                },
                Memory::ZScore(moments),
            ) => {
                let t = ts.as_micros();
                if let Window::Span(span) = window {
                    let oldest = t.saturating_sub(micros(span));
                    while moments.points.front().is_some_and(|&(pt, _)| pt <= oldest) {
                        moments.pop();
                    }
                }
                moments.resync_if_due();
                let enough = moments.points.len() >= self.min_samples as usize;
                let measure = match moments.stddev() {
                    Some(sd) if enough && sd > 0.0 => {
                        let z = (value - moments.mean) / sd;
                        Measure {
                            verdict: magnitude_verdict(z.abs(), z_above, z_clear),
                            observed: z,
                        }
                    }
                    _ => Measure::HOLD,
                };
                moments.push(t, value);
                if let Window::Samples(n) = window
                    && moments.points.len() > n as usize
                {
                    moments.pop();
                }
                measure
            }
            (
                Method::Ewma {
                    alpha,
                    deviation_above,
                    deviation_clear,
                },
                Memory::Ewma { baseline, samples },
            ) => {
                if *samples == 0 {
                    *baseline = value;
                }
                let deviation = value - *baseline;
                let measure = if *samples >= self.min_samples {
                    Measure {
                        verdict: magnitude_verdict(
                            deviation.abs(),
                            deviation_above,
                            deviation_clear,
                        ),
                        observed: deviation,
                    }
                } else {
                    Measure::HOLD
                };
                *baseline += alpha * deviation;
                *samples = samples.saturating_add(1);
                measure
            }
            // The memory is made by `memory()` from the same method.
            _ => Measure::HOLD,
        }
    }
}

/// Checks a breach limit on a magnitude and its clear limit.
fn check_limit(
    name: &str,
    clear_name: &str,
    limit: Option<f64>,
    clear: Option<f64>,
    problems: &mut Vec<Problem>,
) {
    match limit {
        None => problems.push(
            Problem::new(format!("the method needs `{name}`")).hint(format!("e.g. {name} = 3.0")),
        ),
        Some(l) if !(l.is_finite() && l > 0.0) => problems.push(Problem::new(format!(
            "`{name}` ({l}) must be a finite number greater than 0"
        ))),
        Some(_) => {}
    }
    if let Some(c) = clear
        && !(c.is_finite() && c >= 0.0 && limit.is_none_or(|l| c <= l))
    {
        problems.push(Problem::new(format!(
            "`{clear_name}` ({c}) must lie between 0 and `{name}`; it is the lower edge of the deadband"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::Verdict;

    fn rule(text: &str) -> Rolling {
        let table: Table = toml::from_str(text).expect("test table");
        Rolling::parse(table).expect("valid test table")
    }

    fn problems(text: &str) -> Vec<String> {
        let table: Table = toml::from_str(text).expect("test table");
        Rolling::parse(table)
            .unwrap_err()
            .into_iter()
            .map(|p| p.message)
            .collect()
    }

    fn feed(r: &Rolling, values: &[f64]) -> Vec<Measure> {
        let mut m = r.memory();
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| r.measure(&mut m, Timestamp::from_micros(i as i64 * 1_000_000), v))
            .collect()
    }

    #[test]
    fn zscore_over_samples_flags_a_jump_and_waits_for_min_samples() {
        let r = rule("method = \"zscore\"\nsamples = 4\nz_above = 3.0\nz_clear = 1.0");
        assert_eq!(r.min_samples, 4);
        let got = feed(&r, &[10.0, 11.0, 10.0, 11.0, 30.0, 10.5]);
        assert!(got[..4].iter().all(|m| m.verdict == Verdict::Hold));
        assert_eq!(got[4].verdict, Verdict::Breach);
        // mean 10.5, sample stddev of [10, 11, 10, 11] = 0.577...
        assert!((got[4].observed - 19.5 / (1.0f64 / 3.0).sqrt()).abs() < 1e-9);
        // The jump has joined the baseline: [11, 10, 11, 30].
        assert_eq!(got[5].verdict, Verdict::Clear);
    }

    #[test]
    fn zscore_over_time_drops_old_readings_and_holds_on_a_flat_window() {
        let r = rule("method = \"zscore\"\nwindow = \"3s\"\nz_above = 2.0\nmin_samples = 2");
        let got = feed(&r, &[5.0, 5.0, 5.0, 9.0]);
        assert_eq!(got[3].verdict, Verdict::Hold);
    }

    #[test]
    fn running_moments_match_a_recount() {
        let mut m = Moments::default();
        let mut reference = VecDeque::new();
        for i in 0..10_000i64 {
            let x = ((i * 7919) % 1000) as f64 * 1e3 + 1e9;
            m.push(i, x);
            reference.push_back(x);
            if reference.len() > 50 {
                m.pop();
                reference.pop_front();
            }
            m.resync_if_due();
        }
        let n = reference.len() as f64;
        let mean = reference.iter().sum::<f64>() / n;
        let m2: f64 = reference.iter().map(|x| (x - mean) * (x - mean)).sum();
        assert!((m.mean - mean).abs() / mean < 1e-12);
        assert!((m.m2 - m2).abs() / m2 < 1e-6, "{} vs {m2}", m.m2);
    }

    #[test]
    fn ewma_follows_the_baseline() {
        let r = rule(
            "method = \"ewma\"\nalpha = 0.5\ndeviation_above = 4.0\ndeviation_clear = 1.0\nmin_samples = 2",
        );
        let got = feed(&r, &[10.0, 10.0, 16.0, 14.0, 13.0]);
        assert_eq!(got[1].verdict, Verdict::Hold);
        assert_eq!((got[2].verdict, got[2].observed), (Verdict::Breach, 6.0));
        // baseline 13, deviation 1: inside the deadband.
        assert_eq!((got[3].verdict, got[3].observed), (Verdict::Hold, 1.0));
        // baseline 13.5, deviation -0.5.
        assert_eq!((got[4].verdict, got[4].observed), (Verdict::Clear, -0.5));
    }

    #[test]
    fn options_of_the_other_method_and_missing_ones_are_reported() {
        let got = problems("method = \"zscore\"\nalpha = 0.1\nz_above = 3.0");
        assert_eq!(
            got,
            [
                "`alpha` only applies to method = \"ewma\"",
                "zscore needs `window` or `samples`"
            ]
        );
        let got = problems("method = \"ewma\"\nalpha = 1.5\ndeviation_above = -1.0");
        assert_eq!(got.len(), 2, "{got:?}");
        let got = problems("method = \"zscore\"\nsamples = 5\nz_above = 3.0\nmin_samples = 6");
        assert!(got[0].contains("could never alarm"), "{got:?}");
    }
}
