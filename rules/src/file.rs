//! The rule-file format.
//!
//! ```toml
//! version = 1
//!
//! [[rule]]
//! id = "press-bearing-overheat"          # unique in the file; letters, digits, - _ .
//! description = "Press bearing running hot"
//! tags = ["press-*.bearing_temp"]        # tag-name patterns: * any run, ? one character
//! severity = "high"                      # low | medium | high | critical
//! failure_mode = "bearing-overheat"      # one open work order per asset and failure mode
//! on_delay = "5s"                        # the condition must hold this long (default 0s)
//! off_delay = "10s"                      # the clear condition must hold this long (default 0s)
//!
//! [rule.threshold]                       # the kind: see `kinds`
//! above = 85.0
//! clear_below = 80.0
//!
//! [rule.work_order]
//! title = "Bearing overheating on {asset}"
//! description = "{tag} reached {value} {unit} (limit {limit}) at {at}."
//! work_type = "corrective"               # corrective | inspection | emergency | instrumentation
//! checklist = ["Check lubrication", "Measure bearing play"]
//! ```
//!
//! Placeholders in title and description: `{asset}`, `{tag}`, `{value}`, `{limit}`, `{unit}`,
//! `{rule}`, `{at}`.

use std::fmt;
use std::time::Duration;

use model::Severity;
use model::alarm::WorkType;
use serde::Deserialize;
use toml::Spanned;
use wildmatch::WildMatch;

use crate::kinds::{Kind, threshold::Threshold};

/// The file format version this build reads.
pub const VERSION: u32 = 1;

/// Placeholders a work-order template may use.
pub const PLACEHOLDERS: &[&str] = &["asset", "tag", "value", "limit", "unit", "rule", "at"];

/// One problem in a rule file, where it is, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Spanned<u32>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    tags: Spanned<Vec<String>>,
    severity: Severity,
    failure_mode: Spanned<String>,
    #[serde(default, with = "humantime_serde")]
    on_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    off_delay: Option<Duration>,
    threshold: Option<Threshold>,
    work_order: Spanned<RawWorkOrder>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkOrder {
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    work_type: WorkType,
    #[serde(default)]
    checklist: Vec<String>,
}

/// A work-order template with validated placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkOrderTemplate {
    pub title: String,
    pub description: String,
    pub work_type: WorkType,
    pub checklist: Vec<String>,
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    pub tag_patterns: Vec<String>,
    matchers: Vec<WildMatch>,
    pub severity: Severity,
    pub failure_mode: String,
    pub on_delay: Duration,
    pub off_delay: Duration,
    pub kind: Kind,
    pub work_order: WorkOrderTemplate,
}

impl Rule {
    pub fn selects(&self, tag: &str) -> bool {
        self.matchers.iter().any(|m| m.matches(tag))
    }
}

/// A validated rule file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub source_name: String,
    pub rules: Vec<Rule>,
}

fn is_plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Every `{name}` in `text` that is not a known placeholder (or an unclosed `{`).
fn unknown_placeholders(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                if !PLACEHOLDERS.contains(&name) {
                    bad.push(format!("{{{name}}}"));
                }
                rest = &after[close + 1..];
            }
            None => {
                bad.push("an unclosed `{`".into());
                break;
            }
        }
    }
    bad
}

/// Replaces the placeholders of a checked template.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

struct Locator<'a> {
    file: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(file: &'a str, text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { file, line_starts }
    }

    fn at(&self, offset: usize, message: impl Into<String>, hint: Option<&str>) -> Diagnostic {
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let column = offset - self.line_starts[line.saturating_sub(1)] + 1;
        Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

impl RuleSet {
    /// Parses and validates a rule file, returning every problem found.
    pub fn parse(source_name: &str, text: &str) -> Result<RuleSet, Vec<Diagnostic>> {
        let loc = Locator::new(source_name, text);
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            vec![loc.at(
                offset,
                e.message().trim_end().to_owned(),
                Some("see the rule-file reference in docs/RULES.md"),
            )]
        })?;
        let mut diags = Vec::new();
        if *raw.version.get_ref() != VERSION {
            diags.push(loc.at(
                raw.version.span().start,
                format!(
                    "rule-file version {} is not supported",
                    raw.version.get_ref()
                ),
                Some("this build reads `version = 1`"),
            ));
        }
        let mut rules = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for spanned in raw.rule {
            let rule_at = spanned.span().start;
            let r = spanned.into_inner();
            let id = r.id.get_ref().clone();
            let id_at = r.id.span().start;
            if !is_plain_id(&id) {
                diags.push(loc.at(
                    id_at,
                    format!("rule id {id:?} is not valid"),
                    Some("use 1-100 letters, digits, `-`, `_` or `.`"),
                ));
            }
            if let Some(first_line) = seen.insert(id.clone(), loc.at(id_at, "", None).line) {
                diags.push(loc.at(
                    id_at,
                    format!("rule id {id:?} is used twice (first on line {first_line})"),
                    Some("rule ids must be unique within a file"),
                ));
            }
            if r.tags.get_ref().is_empty() {
                diags.push(loc.at(
                    r.tags.span().start,
                    format!("rule {id:?} selects no tags"),
                    Some("list tag-name patterns, e.g. tags = [\"press-*.bearing_temp\"]"),
                ));
            }
            if !is_plain_id(r.failure_mode.get_ref()) {
                diags.push(loc.at(
                    r.failure_mode.span().start,
                    format!("failure mode {:?} is not valid", r.failure_mode.get_ref()),
                    Some("use 1-100 letters, digits, `-`, `_` or `.`, e.g. \"bearing-overheat\""),
                ));
            }
            let kind = match r.threshold {
                Some(t) => Some(Kind::Threshold(t)),
                None => {
                    diags.push(loc.at(
                        rule_at,
                        format!("rule {id:?} has no kind"),
                        Some(&format!(
                            "add one table naming the kind: {}",
                            Kind::NAMES
                                .iter()
                                .map(|k| format!("[rule.{k}]"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    ));
                    None
                }
            };
            if let Some(kind) = &kind {
                let mut problems = Vec::new();
                kind.check(&mut problems);
                for p in problems {
                    diags.push(loc.at(rule_at, format!("rule {id:?}: {p}"), None));
                }
            }
            let wo_at = r.work_order.span().start;
            let wo = r.work_order.into_inner();
            for (field, text) in [("title", &wo.title), ("description", &wo.description)] {
                for bad in unknown_placeholders(text) {
                    diags.push(loc.at(
                        wo_at,
                        format!("rule {id:?}: work_order.{field} uses {bad}"),
                        Some(&format!(
                            "known placeholders: {}",
                            PLACEHOLDERS
                                .iter()
                                .map(|p| format!("{{{p}}}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    ));
                }
            }
            if wo.title.trim().is_empty() || wo.title.len() > 300 {
                diags.push(loc.at(
                    wo_at,
                    format!("rule {id:?}: work_order.title must be 1-300 characters"),
                    None,
                ));
            }
            if let Some(kind) = kind {
                let tag_patterns = r.tags.into_inner();
                rules.push(Rule {
                    id,
                    description: r.description,
                    matchers: tag_patterns.iter().map(|p| WildMatch::new(p)).collect(),
                    tag_patterns,
                    severity: r.severity,
                    failure_mode: r.failure_mode.into_inner(),
                    on_delay: r.on_delay.unwrap_or_default(),
                    off_delay: r.off_delay.unwrap_or_default(),
                    kind,
                    work_order: WorkOrderTemplate {
                        title: wo.title,
                        description: wo.description,
                        work_type: wo.work_type,
                        checklist: wo.checklist,
                    },
                });
            }
        }
        if diags.is_empty() {
            Ok(RuleSet {
                source_name: source_name.to_owned(),
                rules,
            })
        } else {
            Err(diags)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[[rule]]
id = "bearing-hot"
tags = ["press-*.bearing_temp"]
severity = "high"
failure_mode = "bearing-overheat"
on_delay = "5s"

[rule.threshold]
above = 85.0
clear_below = 80.0

[rule.work_order]
title = "Bearing overheating on {asset}"
description = "{tag} reached {value}"
"#;

    #[test]
    fn a_good_file_parses() {
        let set = RuleSet::parse("r.toml", GOOD).unwrap();
        let rule = &set.rules[0];
        assert_eq!(rule.on_delay, Duration::from_secs(5));
        assert!(rule.selects("press-1.bearing_temp"));
        assert!(!rule.selects("press-1.vibration"));
    }

    #[test]
    fn every_semantic_problem_is_reported_with_a_position() {
        let text = GOOD
            .replace("version = 1", "version = 2")
            .replace(
                "failure_mode = \"bearing-overheat\"",
                "failure_mode = \"bad mode\"",
            )
            .replace("{value}", "{valu}");
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        assert_eq!(diags.len(), 3, "{diags:#?}");
        assert_eq!((diags[0].line, diags[0].column), (2, 11));
        assert!(diags[2].message.contains("{valu}"));
        assert!(diags[2].hint.as_deref().unwrap_or("").contains("{value}"));
    }

    #[test]
    fn unknown_keys_and_bad_types_point_at_the_line() {
        let text = GOOD.replace("on_delay = \"5s\"", "on_dealy = \"5s\"");
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        assert_eq!(diags.len(), 1);
        assert!(diags[0].message.contains("on_dealy"), "{}", diags[0]);
        assert_eq!(diags[0].line, 9);
        let text = GOOD.replace("above = 85.0", "above = \"hot\"");
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        assert_eq!(diags[0].line, 12, "{}", diags[0]);
    }

    #[test]
    fn a_rule_without_a_kind_says_which_kinds_exist() {
        let text = GOOD.replace("[rule.threshold]\nabove = 85.0\nclear_below = 80.0\n", "");
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        assert!(
            diags[0]
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("[rule.threshold]")
        );
    }

    #[test]
    fn render_fills_placeholders() {
        assert_eq!(
            render("{asset}: {value}", &[("asset", "P1"), ("value", "3")]),
            "P1: 3"
        );
    }
}
