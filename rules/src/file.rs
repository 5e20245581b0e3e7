//! The rule-file format.
//!
//! ```toml
//! version = 1
//!
//! [[rule]]
//! id = "press-bearing-overheat"          # unique in the file; letters, digits, - _ .
//! description = "Press bearing running hot"
//! tags = ["press-*.bearing_temp"]        # tag-name patterns: * any run, ? one character
//! asset_classes = ["hydraulic-press"]    # optional: also assets, labels (see `select`)
//! severity = "high"                      # low | medium | high | critical
//! failure_mode = "bearing-overheat"      # one open work order per asset and failure mode
//! on_delay = "5s"                        # the condition must hold this long (default 0s)
//! off_delay = "10s"                      # the clear condition must hold this long (default 0s)
//!
//! escalate = [{ after = "30m", severity = "critical" }]  # while active (default none)
//!
//! [rule.threshold]                       # the kind, exactly one: see `kinds`
//! above = 85.0
//! clear_below = 80.0
//!
//! [rule.work_order]
//! title = "Bearing overheating on {asset}"
//! description = "{tag} reached {value} {unit} (limit {limit}) at {at}."
//! work_type = "corrective"               # corrective | inspection | emergency | instrumentation
//! checklist = ["Check lubrication", "Measure bearing play"]
//! healthy_period = "30m"                 # clear this long before work started: closes itself
//! auto_close = true                      # false: a cleared condition only adds a note
//! repeat_window = "30d"                  # reopening within this flags a repeat failure
//! ```
//!
//! Placeholders in title and description: `{asset}`, `{tag}`, `{value}`, `{observed}`,
//! `{limit}`, `{unit}`, `{rule}`, `{at}`.

use std::fmt;
use std::time::Duration;

use crate::alarm::Delays;
use crate::engine::TagContext;
use crate::kinds::{
    Kind, Problem, REGISTRY, bad_quality, combination, count_in_window, flatline, micros,
    rate_of_change, rolling, stale, threshold,
};
use crate::select::{Labels, Selector};
use model::Severity;
use model::alarm::WorkType;
use serde::Deserialize;
use toml::Spanned;

/// The file format version this build reads.
pub const VERSION: u32 = 1;

/// Placeholders a work-order template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "asset", "tag", "value", "observed", "limit", "unit", "rule", "at",
];

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
    tags: Option<Spanned<Vec<String>>>,
    assets: Option<Spanned<Vec<String>>>,
    asset_classes: Option<Spanned<Vec<String>>>,
    labels: Option<Spanned<Labels>>,
    severity: Severity,
    failure_mode: Spanned<String>,
    #[serde(default, with = "humantime_serde")]
    on_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    off_delay: Option<Duration>,
    escalate: Option<Spanned<Vec<RawStep>>>,
    // The kinds: one optional table each, exactly one per rule.
    threshold: Option<threshold::Threshold>,
    rate_of_change: Option<rate_of_change::Table>,
    rolling: Option<rolling::Table>,
    flatline: Option<flatline::Table>,
    stale: Option<stale::Table>,
    count_in_window: Option<count_in_window::Table>,
    combination: Option<combination::Table>,
    bad_quality: Option<bad_quality::BadQuality>,
    work_order: Spanned<RawWorkOrder>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(with = "humantime_serde")]
    after: Duration,
    severity: Severity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkOrder {
    title: String,
    #[serde(default)]
    description: String,
    work_type: Option<WorkType>,
    #[serde(default)]
    checklist: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    healthy_period: Option<Duration>,
    auto_close: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    repeat_window: Option<Duration>,
}

/// Most checklist items a rule's work order may carry, and the longest item: what a work
/// order's checklist holds through the API as well.
pub const MAX_CHECKLIST_ITEMS: usize = 100;
pub const MAX_CHECKLIST_TEXT: usize = 500;

/// How long a cleared condition must stay clear before an untouched work order closes.
pub const DEFAULT_HEALTHY_PERIOD: Duration = Duration::from_secs(30 * 60);
/// How recently a work order of the same failure mode must have closed for a new one to be a
/// repeat failure.
pub const DEFAULT_REPEAT_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// A work-order template with validated placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkOrderTemplate {
    pub title: String,
    pub description: String,
    pub work_type: WorkType,
    pub checklist: Vec<String>,
    /// `None`: the work order never closes by itself.
    pub healthy_period: Option<Duration>,
    pub repeat_window: Duration,
}

/// One step of severity escalation: once the alarm has been active for `after`, its severity
/// becomes `severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EscalationStep {
    pub after: Duration,
    pub severity: Severity,
    after_micros: i64,
}

impl EscalationStep {
    pub(crate) fn after_micros(&self) -> i64 {
        self.after_micros
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    /// The tags the rule watches: `tags` (for a combination, the patterns of its
    /// conditions), narrowed by `assets`, `asset_classes` and `labels`.
    pub selector: Selector,
    pub severity: Severity,
    pub failure_mode: String,
    pub on_delay: Duration,
    pub off_delay: Duration,
    /// Severity steps while the alarm stays active, in order of `after`; may be empty.
    pub escalation: Vec<EscalationStep>,
    pub kind: Kind,
    pub work_order: WorkOrderTemplate,
    delays: Delays,
}

impl Rule {
    pub fn selects(&self, ctx: &TagContext) -> bool {
        self.selector.selects(ctx)
    }

    pub(crate) fn delays(&self) -> Delays {
        self.delays
    }

    /// How much of a tag's recent history rebuilds this rule's state on the tag: its kind's
    /// memory plus the on- and off-delays a pending raise or clear may be timing. `None`
    /// when the kind remembers a number of readings rather than a span of time.
    pub fn memory_span(&self) -> Option<Duration> {
        self.kind.memory_span().map(|span| {
            span.saturating_add(self.on_delay)
                .saturating_add(self.off_delay)
        })
    }

    /// The severity after `steps` escalation steps have fired.
    pub fn severity_after(&self, steps: usize) -> Severity {
        steps
            .checked_sub(1)
            .and_then(|i| self.escalation.get(i))
            .map_or(self.severity, |s| s.severity)
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

/// Validates escalation steps: each later and more severe than the one before, all more
/// severe than the rule itself.
fn escalation(rule_severity: Severity, steps: Vec<RawStep>) -> (Vec<EscalationStep>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut previous: Option<&RawStep> = None;
    for (i, step) in steps.iter().enumerate() {
        if step.after.is_zero() {
            problems.push(
                Problem::new(format!("escalate[{i}]: `after` must be longer than 0s"))
                    .hint("the time the alarm has been active, e.g. after = \"30m\""),
            );
        }
        let floor = previous.map_or(rule_severity, |p| p.severity);
        if step.severity <= floor {
            problems.push(
                Problem::new(format!(
                    "escalate[{i}]: severity {} must be above {floor}",
                    step.severity
                ))
                .hint("each step raises the severity above the rule's and the previous step's"),
            );
        }
        if let Some(p) = previous
            && step.after <= p.after
        {
            problems.push(Problem::new(format!(
                "escalate[{i}]: `after` must be later than the previous step's ({})",
                humantime_serde::re::humantime::format_duration(p.after)
            )));
        }
        previous = Some(step);
    }
    let steps = steps
        .into_iter()
        .map(|s| EscalationStep {
            after: s.after,
            severity: s.severity,
            after_micros: micros(s.after),
        })
        .collect();
    (steps, problems)
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
    /// How much recent history an engine for these rules must be fed to carry on where a
    /// previous one stopped: the longest [`Rule::memory_span`], where a rule that remembers a
    /// number of readings counts as `limit`, and never more than `limit`.
    pub fn warm_up_span(&self, limit: Duration) -> Duration {
        self.rules
            .iter()
            .map(|r| r.memory_span().unwrap_or(limit))
            .max()
            .unwrap_or_default()
            .min(limit)
    }

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
            let is_combination = r.combination.is_some();
            let narrows_assets =
                r.assets.is_some() || r.asset_classes.is_some() || r.labels.is_some();
            match &r.tags {
                Some(tags) if is_combination => diags.push(loc.at(
                    tags.span().start,
                    format!("rule {id:?}: a combination selects its tags through its conditions"),
                    Some("remove `tags`; each condition's `tag` pattern selects the tags"),
                )),
                Some(tags) if tags.get_ref().is_empty() => diags.push(loc.at(
                    tags.span().start,
                    format!("rule {id:?}: `tags` is empty, so the rule selects no tags"),
                    Some("list tag-name patterns, e.g. tags = [\"press-*.bearing_temp\"], or remove `tags` to select by asset, class or label alone"),
                )),
                None if !is_combination && !narrows_assets => diags.push(loc.at(
                    rule_at,
                    format!("rule {id:?} selects no tags"),
                    Some("list tag-name patterns, e.g. tags = [\"press-*.bearing_temp\"], or select by `assets`, `asset_classes` or `labels`"),
                )),
                _ => {}
            }
            for (key, list) in [("assets", &r.assets), ("asset_classes", &r.asset_classes)] {
                if let Some(list) = list
                    && list.get_ref().iter().all(|p| p.trim().is_empty())
                {
                    diags.push(loc.at(
                        list.span().start,
                        format!(
                            "rule {id:?}: `{key}` lists no pattern, so the rule selects no tags"
                        ),
                        Some("list at least one non-empty pattern, or remove the key"),
                    ));
                }
            }
            if let Some(labels) = &r.labels {
                if labels.get_ref().is_empty() {
                    diags.push(loc.at(
                        labels.span().start,
                        format!("rule {id:?}: `labels` is empty"),
                        Some("give key = \"value pattern\" pairs, e.g. labels = { line = \"2\" }, or remove the key"),
                    ));
                }
                for problem in Selector::label_problems(labels.get_ref()) {
                    diags.push(loc.at(
                        labels.span().start,
                        format!("rule {id:?}: {problem}"),
                        None,
                    ));
                }
            }
            if !is_plain_id(r.failure_mode.get_ref()) {
                diags.push(loc.at(
                    r.failure_mode.span().start,
                    format!("failure mode {:?} is not valid", r.failure_mode.get_ref()),
                    Some("use 1-100 letters, digits, `-`, `_` or `.`, e.g. \"bearing-overheat\""),
                ));
            }
            let kinds: Vec<Result<Kind, Vec<Problem>>> = [
                r.threshold.map(|t| t.parse().map(Kind::Threshold)),
                r.rate_of_change
                    .map(|t| rate_of_change::RateOfChange::parse(t).map(Kind::RateOfChange)),
                r.rolling
                    .map(|t| rolling::Rolling::parse(t).map(Kind::Rolling)),
                r.flatline
                    .map(|t| flatline::Flatline::parse(t).map(Kind::Flatline)),
                r.stale.map(|t| stale::Stale::parse(t).map(Kind::Stale)),
                r.count_in_window
                    .map(|t| count_in_window::CountInWindow::parse(t).map(Kind::CountInWindow)),
                r.combination
                    .map(|t| combination::Combination::parse(t).map(Kind::Combination)),
                r.bad_quality.map(|t| Ok(Kind::BadQuality(t))),
            ]
            .into_iter()
            .flatten()
            .collect();
            let one_kind = kinds.len() == 1;
            match kinds.len() {
                0 => diags.push(loc.at(
                    rule_at,
                    format!("rule {id:?} has no kind"),
                    Some(&format!(
                        "add one table naming the kind: {}",
                        REGISTRY
                            .iter()
                            .map(|k| format!("[rule.{}]", k.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                )),
                1 => {}
                n => diags.push(loc.at(
                    rule_at,
                    format!("rule {id:?} has {n} kinds; a rule has exactly one"),
                    Some("split it into one rule per kind; rules may share a failure_mode"),
                )),
            }
            let mut kind = None;
            for parsed in kinds {
                match parsed {
                    Ok(k) if one_kind => kind = Some(k),
                    Ok(_) => {}
                    Err(problems) => {
                        for p in problems {
                            diags.push(loc.at(
                                rule_at,
                                format!("rule {id:?}: {}", p.message),
                                p.hint.as_deref(),
                            ));
                        }
                    }
                }
            }
            let on_delay = r.on_delay.unwrap_or_default();
            let off_delay = r.off_delay.unwrap_or_default();
            if matches!(kind, Some(Kind::Stale(_))) && !on_delay.is_zero() {
                diags.push(loc.at(
                    rule_at,
                    format!("rule {id:?}: `on_delay` does not apply to a stale rule"),
                    Some("`after` is the delay: add the on-delay to it and remove `on_delay`"),
                ));
            }
            let escalation = match r.escalate {
                Some(steps) => {
                    let at = steps.span().start;
                    let (escalation, problems) = escalation(r.severity, steps.into_inner());
                    for p in problems {
                        diags.push(loc.at(
                            at,
                            format!("rule {id:?}: {}", p.message),
                            p.hint.as_deref(),
                        ));
                    }
                    escalation
                }
                None => Vec::new(),
            };
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
            if wo.auto_close == Some(false) && wo.healthy_period.is_some() {
                diags.push(loc.at(
                    wo_at,
                    format!("rule {id:?}: work_order.healthy_period is set but auto_close is false"),
                    Some("remove one: healthy_period only applies when work orders close by themselves"),
                ));
            }
            if wo.title.trim().is_empty() || wo.title.chars().count() > 300 {
                diags.push(loc.at(
                    wo_at,
                    format!("rule {id:?}: work_order.title must be 1-300 characters"),
                    None,
                ));
            }
            if wo.checklist.len() > MAX_CHECKLIST_ITEMS {
                diags.push(loc.at(
                    wo_at,
                    format!(
                        "rule {id:?}: work_order.checklist has {} items; at most {MAX_CHECKLIST_ITEMS}",
                        wo.checklist.len()
                    ),
                    None,
                ));
            }
            for (i, item) in wo.checklist.iter().enumerate() {
                if item.trim().is_empty() || item.chars().count() > MAX_CHECKLIST_TEXT {
                    diags.push(loc.at(
                        wo_at,
                        format!(
                            "rule {id:?}: work_order.checklist[{i}] must be 1-{MAX_CHECKLIST_TEXT} characters"
                        ),
                        None,
                    ));
                }
            }
            if let Some(kind) = kind {
                let tag_patterns = match &kind {
                    Kind::Combination(c) => c.patterns().map(str::to_owned).collect(),
                    _ => r.tags.map(Spanned::into_inner).unwrap_or_default(),
                };
                let selector = Selector::new(
                    tag_patterns,
                    r.assets.map(Spanned::into_inner).unwrap_or_default(),
                    r.asset_classes.map(Spanned::into_inner).unwrap_or_default(),
                    r.labels.map(Spanned::into_inner).unwrap_or_default(),
                );
                // Comms and instrument faults are work for a different trade.
                let default_work_type = if kind.judges_values() {
                    WorkType::Corrective
                } else {
                    WorkType::Instrumentation
                };
                rules.push(Rule {
                    id,
                    description: r.description,
                    selector,
                    severity: r.severity,
                    failure_mode: r.failure_mode.into_inner(),
                    on_delay,
                    off_delay,
                    escalation,
                    kind,
                    work_order: WorkOrderTemplate {
                        title: wo.title,
                        description: wo.description,
                        work_type: wo.work_type.unwrap_or(default_work_type),
                        checklist: wo.checklist,
                        healthy_period: (wo.auto_close != Some(false))
                            .then(|| wo.healthy_period.unwrap_or(DEFAULT_HEALTHY_PERIOD)),
                        repeat_window: wo.repeat_window.unwrap_or(DEFAULT_REPEAT_WINDOW),
                    },
                    delays: Delays {
                        on: micros(on_delay),
                        off: micros(off_delay),
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
        assert!(rule.selects(&tag("press-1.bearing_temp")));
        assert!(!rule.selects(&tag("press-1.vibration")));
    }

    /// A tag on asset `press-1` of class `hydraulic-press`, labelled `line=2`.
    fn tag(name: &str) -> TagContext {
        TagContext {
            tenant: model::TenantId::from_uuid(uuid::Uuid::nil()),
            tag_id: 1,
            tag: model::TagName::parse(name).unwrap(),
            unit: None,
            asset: Some(model::AssetId::from_uuid(uuid::Uuid::from_u128(1))),
            asset_name: "press-1".into(),
            asset_class: Some("hydraulic-press".into()),
            labels: [("line".to_owned(), "2".to_owned())].into(),
            criticality: model::Criticality::DEFAULT,
        }
    }

    #[test]
    fn checklist_items_are_kept_in_order_and_checked() {
        let text = format!("{GOOD}checklist = [\"Grease\", \"Measure play\"]\n");
        let rule = &RuleSet::parse("r.toml", &text).unwrap().rules[0];
        assert_eq!(rule.work_order.checklist, ["Grease", "Measure play"]);
        let long = "x".repeat(MAX_CHECKLIST_TEXT + 1);
        let text = format!("{GOOD}checklist = [\"ok\", \" \", \"{long}\"]\n");
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].contains("work_order.checklist[1]"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("work_order.checklist[2]"),
            "{messages:?}"
        );
    }

    #[test]
    fn rules_select_by_asset_class_and_labels_without_tag_patterns() {
        let text = GOOD.replace(
            "tags = [\"press-*.bearing_temp\"]",
            "asset_classes = [\"hydraulic-*\"]\nlabels = { line = \"2\" }",
        );
        let set = RuleSet::parse("r.toml", &text).unwrap();
        let rule = &set.rules[0];
        assert!(rule.selector.tag_patterns().is_empty());
        assert!(rule.selects(&tag("press-1.anything")));
        let mut elsewhere = tag("press-1.anything");
        elsewhere.labels.insert("line".into(), "3".into());
        assert!(!rule.selects(&elsewhere));
        let text = GOOD.replace(
            "tags = [\"press-*.bearing_temp\"]",
            "tags = [\"*.temp\"]\nassets = [\"press-*\"]",
        );
        let rule = &RuleSet::parse("r.toml", &text).unwrap().rules[0];
        assert!(rule.selects(&tag("press-1.temp")));
        assert!(!rule.selects(&tag("press-1.vib")));
    }

    #[test]
    fn empty_or_bad_selections_are_reported() {
        let text = GOOD.replace(
            "tags = [\"press-*.bearing_temp\"]",
            "assets = []\nasset_classes = [\" \"]\nlabels = { \"bad key\" = \"x\" }",
        );
        assert_eq!(
            messages(&text),
            [
                "rule \"bearing-hot\": `assets` lists no pattern, so the rule selects no tags",
                "rule \"bearing-hot\": `asset_classes` lists no pattern, so the rule selects no tags",
                "rule \"bearing-hot\": label key \"bad key\" is not valid: use 1-64 letters, digits, `-`, `_` or `.`",
            ]
        );
        let text = GOOD.replace("tags = [\"press-*.bearing_temp\"]", "labels = {}");
        assert_eq!(messages(&text), ["rule \"bearing-hot\": `labels` is empty"]);
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

    fn messages(text: &str) -> Vec<String> {
        RuleSet::parse("r.toml", text)
            .unwrap_err()
            .into_iter()
            .map(|d| d.message)
            .collect()
    }

    #[test]
    fn a_rule_has_exactly_one_kind() {
        let text = GOOD.replace(
            "[rule.work_order]",
            "[rule.stale]\nafter = \"5m\"\n\n[rule.work_order]",
        );
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        assert_eq!(diags.len(), 1, "{diags:#?}");
        assert_eq!(
            diags[0].message,
            "rule \"bearing-hot\" has 2 kinds; a rule has exactly one"
        );
        assert_eq!((diags[0].line, diags[0].column), (4, 1));
        assert!(diags[0].hint.is_some());
        // Alone, the stale kind refuses the rule's on-delay.
        let text = text.replace("[rule.threshold]\nabove = 85.0\nclear_below = 80.0\n", "");
        assert_eq!(
            messages(&text),
            ["rule \"bearing-hot\": `on_delay` does not apply to a stale rule"]
        );
    }

    #[test]
    fn kind_problems_carry_their_hints() {
        let text = GOOD.replace(
            "[rule.threshold]\nabove = 85.0\nclear_below = 80.0",
            "[rule.rolling]\nmethod = \"ewma\"\ndeviation_above = 2.0",
        );
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        assert_eq!(diags.len(), 1, "{diags:#?}");
        assert_eq!(diags[0].message, "rule \"bearing-hot\": ewma needs `alpha`");
        assert_eq!(
            diags[0].hint.as_deref(),
            Some("the weight of each new reading, e.g. alpha = 0.05")
        );
    }

    #[test]
    fn combinations_select_through_their_conditions() {
        let combination = "[rule.combination]\nmax_age = \"1m\"\nall = [{ tag = \"*.temp\", above = 80.0 }, { tag = \"*.vib\", above = 7.0 }]";
        let text = GOOD.replace(
            "[rule.threshold]\nabove = 85.0\nclear_below = 80.0",
            combination,
        );
        assert_eq!(
            messages(&text),
            ["rule \"bearing-hot\": a combination selects its tags through its conditions"]
        );
        let text = text.replace("tags = [\"press-*.bearing_temp\"]\n", "");
        let set = RuleSet::parse("r.toml", &text).unwrap();
        assert_eq!(set.rules[0].selector.tag_patterns(), ["*.temp", "*.vib"]);
        assert!(set.rules[0].selects(&tag("press-1.vib")));
        let text = GOOD.replace("tags = [\"press-*.bearing_temp\"]\n", "");
        assert_eq!(messages(&text), ["rule \"bearing-hot\" selects no tags"]);
    }

    #[test]
    fn escalation_steps_must_rise_in_time_and_severity() {
        let text = GOOD.replace(
            "on_delay = \"5s\"",
            "escalate = [{ after = \"10m\", severity = \"critical\" }, { after = \"5m\", severity = \"critical\" }, { after = \"0s\", severity = \"medium\" }]",
        );
        let diags = RuleSet::parse("r.toml", &text).unwrap_err();
        let got: Vec<_> = diags.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            got,
            [
                "rule \"bearing-hot\": escalate[1]: severity critical must be above critical",
                "rule \"bearing-hot\": escalate[1]: `after` must be later than the previous step's (10m)",
                "rule \"bearing-hot\": escalate[2]: `after` must be longer than 0s",
                "rule \"bearing-hot\": escalate[2]: severity medium must be above critical",
                "rule \"bearing-hot\": escalate[2]: `after` must be later than the previous step's (5m)",
            ]
        );
        assert_eq!(diags[0].line, 9);
        let text = GOOD.replace(
            "on_delay = \"5s\"",
            "[[rule.escalate]]\nafter = \"30m\"\nseverity = \"critical\"",
        );
        let set = RuleSet::parse("r.toml", &text).unwrap();
        assert_eq!(set.rules[0].severity_after(0), Severity::High);
        assert_eq!(set.rules[0].severity_after(1), Severity::Critical);
    }

    #[test]
    fn instrument_kinds_default_to_instrumentation_work() {
        let text = GOOD.replace("on_delay = \"5s\"\n", "").replace(
            "[rule.threshold]\nabove = 85.0\nclear_below = 80.0",
            "[rule.bad_quality]",
        );
        let set = RuleSet::parse("r.toml", &text).unwrap();
        assert_eq!(set.rules[0].work_order.work_type, WorkType::Instrumentation);
        let set = RuleSet::parse("r.toml", GOOD).unwrap();
        assert_eq!(set.rules[0].work_order.work_type, WorkType::Corrective);
    }

    #[test]
    fn render_fills_placeholders() {
        assert_eq!(
            render("{asset}: {value}", &[("asset", "P1"), ("value", "3")]),
            "P1: 3"
        );
    }
}
