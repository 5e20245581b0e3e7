//! Rule kinds. Each kind lives in its own module whose doc comment is its reference page
//! (What it does / Why / Example), and is registered once: in [`Kind`] and in [`REGISTRY`].
//!
//! A kind's reference text sits in a Markdown file next to its module and is included twice:
//! as the module's doc comment and as the module's `DOC` constant, from which
//! [`crate::reference::markdown`] renders `docs/RULES-REFERENCE.md`. One text, no drift.

pub mod bad_quality;
pub mod combination;
pub mod count_in_window;
pub mod flatline;
pub mod rate_of_change;
pub mod rolling;
pub mod stale;
pub mod threshold;

use std::time::Duration;

use model::Timestamp;

use crate::alarm::Verdict;

/// A kind's table name and reference text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    pub name: &'static str,
    pub doc: &'static str,
}

/// Every kind, in the order of the reference page.
pub const REGISTRY: &[KindInfo] = &[
    KindInfo {
        name: "threshold",
        doc: threshold::DOC,
    },
    KindInfo {
        name: "rate_of_change",
        doc: rate_of_change::DOC,
    },
    KindInfo {
        name: "rolling",
        doc: rolling::DOC,
    },
    KindInfo {
        name: "flatline",
        doc: flatline::DOC,
    },
    KindInfo {
        name: "stale",
        doc: stale::DOC,
    },
    KindInfo {
        name: "count_in_window",
        doc: count_in_window::DOC,
    },
    KindInfo {
        name: "combination",
        doc: combination::DOC,
    },
    KindInfo {
        name: "bad_quality",
        doc: bad_quality::DOC,
    },
];

/// The condition a rule watches for. A rule file names it by a table of the kind's name
/// (`[rule.threshold]`); exactly one per rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Threshold(threshold::Threshold),
    RateOfChange(rate_of_change::RateOfChange),
    Rolling(rolling::Rolling),
    Flatline(flatline::Flatline),
    Stale(stale::Stale),
    CountInWindow(count_in_window::CountInWindow),
    Combination(combination::Combination),
    BadQuality(bad_quality::BadQuality),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Threshold(_) => "threshold",
            Kind::RateOfChange(_) => "rate_of_change",
            Kind::Rolling(_) => "rolling",
            Kind::Flatline(_) => "flatline",
            Kind::Stale(_) => "stale",
            Kind::CountInWindow(_) => "count_in_window",
            Kind::Combination(_) => "combination",
            Kind::BadQuality(_) => "bad_quality",
        }
    }

    /// The limit shown as `{limit}` in work-order text; `None` renders as nothing.
    pub fn limit(&self) -> Option<f64> {
        match self {
            Kind::Threshold(t) => t.limit(),
            Kind::RateOfChange(r) => r.limit(),
            Kind::Rolling(r) => Some(r.limit()),
            Kind::Flatline(f) => Some(f.duration.as_secs_f64()),
            Kind::Stale(s) => Some(s.after.as_secs_f64()),
            Kind::CountInWindow(c) => Some(f64::from(c.count)),
            Kind::Combination(c) => c.limit(),
            Kind::BadQuality(_) => None,
        }
    }

    /// How far back in event time the kind's memory of a tag reaches: `Some(ZERO)` for kinds
    /// that judge the current reading alone, `None` for memory counted in readings rather than
    /// time (a z-score over `samples`, an EWMA, a rate against the previous reading).
    pub fn memory_span(&self) -> Option<Duration> {
        match self {
            Kind::Threshold(_) | Kind::Stale(_) | Kind::BadQuality(_) => Some(Duration::ZERO),
            Kind::RateOfChange(r) => r.window,
            Kind::Rolling(r) => match r.method {
                rolling::Method::ZScore {
                    window: rolling::Window::Span(span),
                    ..
                } => Some(span),
                rolling::Method::ZScore { .. } | rolling::Method::Ewma { .. } => None,
            },
            Kind::Flatline(f) => Some(f.duration),
            Kind::CountInWindow(c) => Some(c.window),
            Kind::Combination(c) => Some(c.max_age),
        }
    }

    /// Whether the kind judges values, so that a reading of bad quality must not reach it.
    /// `stale` and `bad_quality` watch the delivery of readings instead.
    pub fn judges_values(&self) -> bool {
        !matches!(self, Kind::Stale(_) | Kind::BadQuality(_))
    }

    /// Fresh per-tag memory: `Memory::None` for kinds that judge the current reading alone
    /// and for those the engine drives itself.
    pub(crate) fn memory(&self) -> Memory {
        match self {
            Kind::RateOfChange(r) => Memory::RateOfChange(r.memory()),
            Kind::Rolling(r) => Memory::Rolling(r.memory()),
            Kind::Flatline(_) => Memory::Flatline(flatline::Run::default()),
            Kind::CountInWindow(c) => Memory::CountInWindow(c.memory()),
            Kind::Threshold(_) | Kind::Stale(_) | Kind::Combination(_) | Kind::BadQuality(_) => {
                Memory::None
            }
        }
    }

    /// Judges one good reading of a value kind, updating the tag's memory.
    pub(crate) fn measure(&self, memory: &mut Memory, ts: Timestamp, value: f64) -> Measure {
        match (self, memory) {
            (Kind::Threshold(t), _) => Measure {
                verdict: t.verdict(value),
                observed: value,
            },
            (Kind::RateOfChange(r), Memory::RateOfChange(m)) => r.measure(m, ts, value),
            (Kind::Rolling(r), Memory::Rolling(m)) => r.measure(m, ts, value),
            (Kind::Flatline(f), Memory::Flatline(m)) => f.measure(m, ts, value),
            (Kind::CountInWindow(c), Memory::CountInWindow(m)) => c.measure(m, ts, value),
            // A slot's memory is made by `memory()` from the same kind, and the engine drives
            // stale, combination and bad-quality slots itself: nothing else reaches here.
            _ => Measure::HOLD,
        }
    }
}

/// Per-(rule, tag) memory of the kinds that look at more than the current value.
#[derive(Debug, Clone)]
pub(crate) enum Memory {
    None,
    RateOfChange(rate_of_change::Memory),
    Rolling(rolling::Memory),
    Flatline(flatline::Run),
    CountInWindow(count_in_window::Memory),
}

/// A kind's judgement of one reading: the verdict and the quantity it was based on (the
/// value, a rate, a z-score, ...), shown as `{observed}` in work-order text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
    pub verdict: Verdict,
    pub observed: f64,
}

impl Measure {
    pub(crate) const HOLD: Measure = Measure {
        verdict: Verdict::Hold,
        observed: f64::NAN,
    };
}

/// One problem a kind found in its table, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Microseconds of a duration, saturating.
pub(crate) fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Names of the four limits of an upper/lower pair with hysteresis, for messages.
pub(crate) struct LimitNames {
    pub kind: &'static str,
    pub upper: &'static str,
    pub lower: &'static str,
    pub clear_upper: &'static str,
    pub clear_lower: &'static str,
}

/// Checks an upper/lower limit pair with clear limits (threshold, rate of change).
pub(crate) fn check_limits(
    names: &LimitNames,
    limits: &threshold::Threshold,
    problems: &mut Vec<Problem>,
) {
    let LimitNames {
        kind,
        upper,
        lower,
        clear_upper,
        clear_lower,
    } = *names;
    if limits.above.is_none() && limits.below.is_none() {
        problems.push(Problem::new(format!(
            "{kind} needs `{upper}`, `{lower}`, or both"
        )));
    }
    for (name, v) in [
        (upper, limits.above),
        (lower, limits.below),
        (clear_upper, limits.clear_below),
        (clear_lower, limits.clear_above),
    ] {
        if v.is_some_and(|v| !v.is_finite()) {
            problems.push(Problem::new(format!("`{name}` must be a finite number")));
        }
    }
    if let (Some(a), Some(b)) = (limits.above, limits.below)
        && b >= a
    {
        problems.push(Problem::new(format!(
            "`{lower}` ({b}) must be less than `{upper}` ({a})"
        )));
    }
    match (limits.above, limits.clear_below) {
        (None, Some(_)) => problems.push(Problem::new(format!(
            "`{clear_upper}` only makes sense with `{upper}`"
        ))),
        (Some(a), Some(c)) if c > a => problems.push(Problem::new(format!(
            "`{clear_upper}` ({c}) must not exceed `{upper}` ({a}); it is the lower edge of the deadband"
        ))),
        _ => {}
    }
    match (limits.below, limits.clear_above) {
        (None, Some(_)) => problems.push(Problem::new(format!(
            "`{clear_lower}` only makes sense with `{lower}`"
        ))),
        (Some(b), Some(c)) if c < b => problems.push(Problem::new(format!(
            "`{clear_lower}` ({c}) must not be under `{lower}` ({b}); it is the upper edge of the deadband"
        ))),
        _ => {}
    }
}

/// Checks that a duration option is longer than zero.
pub(crate) fn check_positive(
    name: &str,
    d: std::time::Duration,
    example: &str,
    problems: &mut Vec<Problem>,
) {
    if d.is_zero() {
        problems.push(
            Problem::new(format!("`{name}` must be longer than 0s"))
                .hint(format!("e.g. {name} = \"{example}\"")),
        );
    }
}

/// The verdict of a magnitude against a limit with a clear limit below it: breach above
/// `above`, clear below `clear` (or at or below `above` without one), hold in between.
pub(crate) fn magnitude_verdict(magnitude: f64, above: f64, clear: Option<f64>) -> Verdict {
    if magnitude > above {
        Verdict::Breach
    } else if clear.map_or(magnitude <= above, |c| magnitude < c) {
        Verdict::Clear
    } else {
        Verdict::Hold
    }
}
