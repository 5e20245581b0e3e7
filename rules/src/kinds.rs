//! Rule kinds. Each kind lives in its own module whose doc comment is its reference page
//! (What it does / Why / Example), and is registered once in [`Kind`].

pub mod threshold;

/// The condition a rule watches for. A rule file names it by a table of the kind's name
/// (`[rule.threshold]`); exactly one per rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Threshold(threshold::Threshold),
}

impl Kind {
    /// Every kind's table name, for messages.
    pub const NAMES: &'static [&'static str] = &["threshold"];

    pub fn name(&self) -> &'static str {
        match self {
            Kind::Threshold(_) => "threshold",
        }
    }

    pub fn verdict(&self, value: f64) -> crate::alarm::Verdict {
        match self {
            Kind::Threshold(t) => t.verdict(value),
        }
    }

    /// The limit that was crossed, for work-order text.
    pub fn limit(&self) -> f64 {
        match self {
            Kind::Threshold(t) => t.limit(),
        }
    }

    pub(crate) fn check(&self, problems: &mut Vec<String>) {
        match self {
            Kind::Threshold(t) => t.check(problems),
        }
    }
}
