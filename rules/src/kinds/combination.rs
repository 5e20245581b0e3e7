//! # combination
//!
#![doc = include_str!("combination.md")]

use std::time::Duration;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::alarm::Verdict;
use crate::kinds::threshold::Threshold;
use crate::kinds::{Problem, check_positive, micros};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("combination.md");

/// The most conditions one combination may have (one bit each in a member's mask).
pub const MAX_CONDITIONS: usize = 64;

/// `[rule.combination]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    all: Option<Vec<ConditionTable>>,
    any: Option<Vec<ConditionTable>>,
    #[serde(with = "humantime_serde")]
    max_age: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionTable {
    tag: String,
    above: Option<f64>,
    below: Option<f64>,
    clear_below: Option<f64>,
    clear_above: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    All,
    Any,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::All => "all",
            Mode::Any => "any",
        }
    }
}

/// One condition: limits on the tags of the asset that match a pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub tag: String,
    matcher: WildMatch,
    pub limits: Threshold,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Combination {
    pub mode: Mode,
    pub conditions: Vec<Condition>,
    pub max_age: Duration,
    max_age_micros: i64,
}

/// One tag of the asset within a combination: which conditions it feeds and its latest
/// usable value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    /// Bit `i` set when condition `i` matches the tag.
    pub(crate) conditions: u64,
    /// Event time (microseconds) and value of the latest reading; `None` until a reading of
    /// good or uncertain quality, and again after one of bad quality.
    pub(crate) latest: Option<(i64, f64)>,
}

impl Combination {
    pub(crate) fn parse(t: Table) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let (mode, tables) = match (t.all, t.any) {
            (Some(all), None) => (Mode::All, all),
            (None, Some(any)) => (Mode::Any, any),
            (Some(_), Some(_)) => {
                problems.push(
                    Problem::new("combination takes `all` or `any`, not both")
                        .hint("split it into two rules with the same failure_mode"),
                );
                (Mode::All, Vec::new())
            }
            (None, None) => {
                problems.push(
                    Problem::new("combination needs `all` or `any`").hint(
                        "e.g. all = [{ tag = \"*.bearing_temp\", above = 80.0 }, { tag = \"*.vibration\", above = 7.0 }]",
                    ),
                );
                (Mode::All, Vec::new())
            }
        };
        let key = mode.as_str();
        // Without one clear list there are no conditions to count.
        let listed = problems.is_empty();
        if listed && tables.len() < 2 {
            problems.push(
                Problem::new(format!(
                    "`{key}` needs at least 2 conditions, has {}",
                    tables.len()
                ))
                .hint("a single condition is a `threshold` rule"),
            );
        } else if tables.len() > MAX_CONDITIONS {
            problems.push(Problem::new(format!(
                "`{key}` has {} conditions; at most {MAX_CONDITIONS} are supported",
                tables.len()
            )));
        }
        let mut conditions = Vec::with_capacity(tables.len());
        for (i, c) in tables.into_iter().enumerate() {
            if c.tag.is_empty() {
                problems.push(
                    Problem::new(format!("`{key}[{i}]`: `tag` is empty"))
                        .hint("a tag-name pattern, e.g. tag = \"*.vibration\""),
                );
            }
            let limits = Threshold {
                above: c.above,
                below: c.below,
                clear_below: c.clear_below,
                clear_above: c.clear_above,
            };
            let mut own = Vec::new();
            limits.check(&mut own);
            problems.extend(own.into_iter().map(|p| Problem {
                message: format!("`{key}[{i}]`: {}", p.message),
                hint: p.hint,
            }));
            conditions.push(Condition {
                matcher: WildMatch::new(&c.tag),
                tag: c.tag,
                limits,
            });
        }
        check_positive("max_age", t.max_age, "1m", &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            mode,
            conditions,
            max_age: t.max_age,
            max_age_micros: micros(t.max_age),
        })
    }

    /// The tag-name patterns of the conditions: what the rule selects.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| c.tag.as_str())
    }

    pub fn limit(&self) -> Option<f64> {
        self.conditions.first().and_then(|c| c.limits.limit())
    }

    /// The conditions whose pattern matches `tag`, as a bit mask.
    pub(crate) fn conditions_of(&self, tag: &str) -> u64 {
        self.conditions
            .iter()
            .enumerate()
            .filter(|(_, c)| c.matcher.matches(tag))
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    /// The combined verdict over the members' latest values at time `now` (microseconds).
    pub(crate) fn verdict(&self, members: &[Member], now: i64) -> Verdict {
        let mut breaches = 0;
        let mut clears = 0;
        for (i, condition) in self.conditions.iter().enumerate() {
            let bit = 1u64 << i;
            let mut known = false;
            let mut breach = false;
            let mut all_clear = true;
            for m in members.iter().filter(|m| m.conditions & bit != 0) {
                let Some((t, v)) = m.latest else { continue };
                if now.saturating_sub(t) > self.max_age_micros {
                    continue;
                }
                known = true;
                match condition.limits.verdict(v) {
                    Verdict::Breach => breach = true,
                    Verdict::Hold => all_clear = false,
                    Verdict::Clear => {}
                }
            }
            if known && breach {
                breaches += 1;
            } else if known && all_clear {
                clears += 1;
            }
        }
        let n = self.conditions.len();
        match self.mode {
            Mode::All if breaches == n => Verdict::Breach,
            Mode::All if clears > 0 => Verdict::Clear,
            Mode::Any if breaches > 0 => Verdict::Breach,
            Mode::Any if clears == n => Verdict::Clear,
            _ => Verdict::Hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Combination {
        let table: Table = toml::from_str(text).expect("test table");
        Combination::parse(table).expect("valid test table")
    }

    const ALL: &str = r#"
max_age = "10s"
all = [
  { tag = "*.temp", above = 80.0, clear_below = 75.0 },
  { tag = "*.vib", above = 7.0 },
]
"#;

    fn member(mask: u64, latest: Option<(i64, f64)>) -> Member {
        Member {
            conditions: mask,
            latest,
        }
    }

    #[test]
    fn all_needs_every_condition_and_clears_on_one() {
        let c = rule(ALL);
        assert_eq!(c.conditions_of("p.temp"), 0b01);
        assert_eq!(c.conditions_of("p.vib"), 0b10);
        let at = |t: f64, v: f64| [member(1, Some((0, t))), member(2, Some((0, v)))];
        assert_eq!(c.verdict(&at(85.0, 8.0), 0), Verdict::Breach);
        assert_eq!(c.verdict(&at(85.0, 6.0), 0), Verdict::Clear);
        assert_eq!(c.verdict(&at(77.0, 8.0), 0), Verdict::Hold);
        assert_eq!(c.verdict(&at(70.0, 8.0), 0), Verdict::Clear);
    }

    #[test]
    fn an_old_or_missing_value_is_unknown() {
        let c = rule(ALL);
        let members = [
            member(1, Some((0, 85.0))),
            member(2, Some((20_000_000, 8.0))),
        ];
        // The temperature is 20 s old: unknown, so neither breach nor clear.
        assert_eq!(c.verdict(&members, 20_000_000), Verdict::Hold);
        let members = [member(1, None), member(2, Some((0, 1.0)))];
        assert_eq!(c.verdict(&members, 0), Verdict::Clear);
        let any = rule(&ALL.replace("all =", "any ="));
        let members = [member(1, None), member(2, Some((0, 1.0)))];
        assert_eq!(any.verdict(&members, 0), Verdict::Hold);
        let members = [member(1, None), member(2, Some((0, 9.0)))];
        assert_eq!(any.verdict(&members, 0), Verdict::Breach);
    }

    #[test]
    fn nonsense_is_reported() {
        let table: Table =
            toml::from_str("max_age = \"0s\"\nany = [{ tag = \"\", above = 1.0, below = 2.0 }]")
                .expect("test table");
        let problems: Vec<_> = Combination::parse(table)
            .unwrap_err()
            .into_iter()
            .map(|p| p.message)
            .collect();
        assert_eq!(
            problems,
            [
                "`any` needs at least 2 conditions, has 1",
                "`any[0]`: `tag` is empty",
                "`any[0]`: `below` (2) must be less than `above` (1)",
                "`max_age` must be longer than 0s",
            ]
        );
    }
}
