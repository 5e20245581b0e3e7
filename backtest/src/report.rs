//! The analysis of a backtest as a table for people, JSON for tools, or CSV for spreadsheets.
//!
//! Times in alarm are microseconds inside the analysis; JSON and CSV give them in seconds
//! (`time_in_alarm_s`), the table in a short human form.

use std::fmt::Write as _;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use crate::BacktestError;
use crate::analysis::{Analysis, Change, METRICS, Metric, RuleMetrics, RuleReport};

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(format!("unknown format {other:?}: use table, json or csv")),
        }
    }
}

/// Where the history came from, for the report's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The tenant's slug.
    pub tenant: String,
    /// `database`, or the history file's path.
    pub origin: String,
}

/// Renders `analysis` in `format`.
pub fn render(
    analysis: &Analysis,
    source: &Source,
    format: Format,
) -> Result<String, BacktestError> {
    match format {
        Format::Table => Ok(table(analysis, source)),
        Format::Json => serde_json::to_string_pretty(&json_value(analysis, source))
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| BacktestError::Report(e.to_string())),
        Format::Csv => Ok(csv(analysis)),
    }
}

const MICROS: i64 = 1_000_000;

fn seconds(micros: i64) -> f64 {
    micros as f64 / MICROS as f64
}

/// A duration in at most its two largest units: `3d 4h`, `2h 5m`, `45s`, `0s`.
fn duration(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let mut left = micros.unsigned_abs() / MICROS.unsigned_abs();
    let units = [("d", 86_400u64), ("h", 3600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    for (name, size) in units {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push(format!("{n}{name}"));
        } else if !parts.is_empty() {
            // `1h 0m 5s` reads as `1h`: the second unit is the one after the first.
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    if parts.is_empty() {
        return "0s".into();
    }
    format!("{sign}{}", parts.join(" "))
}

fn metrics_json(m: &RuleMetrics) -> Value {
    let mut object = Map::new();
    for (name, get) in METRICS {
        let value = get(m);
        if name == "time_in_alarm" {
            object.insert("time_in_alarm_s".into(), json!(seconds(value)));
        } else {
            object.insert(name.into(), json!(value));
        }
    }
    Value::Object(object)
}

fn json_value(a: &Analysis, source: &Source) -> Value {
    let rules: Vec<Value> = a
        .rules
        .iter()
        .map(|r| {
            json!({
                "rule": r.rule,
                "failure_mode": r.failure_mode,
                "change": (r.change != Change::NoBaseline).then(|| r.change.as_str()),
                "current": r.current.as_ref().map(metrics_json),
                "baseline": r.baseline.as_ref().map(metrics_json),
                "delta": r.delta.as_ref().map(metrics_json),
            })
        })
        .collect();
    let s = &a.stats;
    json!({
        "rule_set": a.rule_set,
        "baseline_rule_set": a.baseline_rule_set,
        "tenant": source.tenant,
        "source": source.origin,
        "window": { "from": a.window.from().to_string(), "to": a.window.to().to_string() },
        "flap_window_s": a.settings.flap_window.as_secs_f64(),
        "match_window_s": a.settings.match_window.as_secs_f64(),
        "history": {
            "readings": s.readings,
            "evaluated": s.evaluated,
            "skipped_out_of_order": s.skipped_out_of_order,
            "without_asset": s.without_asset,
            "ignored": s.ignored,
            "tags_with_readings": s.tags_with_readings,
            "first_reading": s.first_reading.map(|t| t.to_string()),
            "last_reading": s.last_reading.map(|t| t.to_string()),
        },
        "past_work_orders": a.past_work_orders,
        "rules": rules,
    })
}

fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

fn csv_metric(name: &str, value: Option<i64>) -> String {
    match (name, value) {
        (_, None) => String::new(),
        ("time_in_alarm", Some(v)) => seconds(v).to_string(),
        (_, Some(v)) => v.to_string(),
    }
}

/// One row per rule: `rule,failure_mode,change`, the metrics, and with a baseline the
/// baseline's metrics (`baseline_` prefix) and the differences (`delta_` prefix).
fn csv(a: &Analysis) -> String {
    let with_baseline = a.baseline_rule_set.is_some();
    let column = |name: &str| {
        if name == "time_in_alarm" {
            "time_in_alarm_s".to_owned()
        } else {
            name.to_owned()
        }
    };
    let mut header: Vec<String> = vec!["rule".into(), "failure_mode".into(), "change".into()];
    header.extend(METRICS.iter().map(|(n, _)| column(n)));
    if with_baseline {
        header.extend(
            METRICS
                .iter()
                .map(|(n, _)| format!("baseline_{}", column(n))),
        );
        header.extend(METRICS.iter().map(|(n, _)| format!("delta_{}", column(n))));
    }
    let mut out = header.join(",");
    out.push('\n');
    for r in &a.rules {
        let mut fields = vec![
            r.rule.clone(),
            r.failure_mode.clone(),
            r.change.as_str().to_owned(),
        ];
        let mut add = |m: Option<&RuleMetrics>| {
            for (name, get) in METRICS {
                fields.push(csv_metric(name, m.map(get)));
            }
        };
        add(r.current.as_ref());
        if with_baseline {
            add(r.baseline.as_ref());
            add(r.delta.as_ref());
        }
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, field);
        }
        out.push('\n');
    }
    out
}

/// A cell of the table: the value under test, its change against the baseline, or for a
/// removed rule the baseline's value.
fn cell(r: &RuleReport, get: Metric, show: fn(i64) -> String, signed: fn(i64) -> String) -> String {
    match (&r.current, &r.delta, &r.baseline) {
        (Some(c), Some(d), _) if get(d) != 0 => format!("{} ({})", show(get(c)), signed(get(d))),
        (Some(c), _, _) => show(get(c)),
        (None, _, Some(b)) => format!("(was {})", show(get(b))),
        (None, _, None) => String::new(),
    }
}

fn count(v: i64) -> String {
    v.to_string()
}

fn signed_count(v: i64) -> String {
    format!("{v:+}")
}

fn signed_duration(v: i64) -> String {
    if v > 0 {
        format!("+{}", duration(v))
    } else {
        duration(v)
    }
}

/// Lays out rows under a header: the first `text_columns` columns left-aligned, the rest
/// right-aligned.
fn layout(out: &mut String, header: &[&str], rows: &[Vec<String>], text_columns: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            if i < text_columns {
                let _ = write!(text, "{cell:<width$}");
            } else {
                let _ = write!(text, "{cell:>width$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

fn table(a: &Analysis, source: &Source) -> String {
    let mut out = String::new();
    let s = &a.stats;
    let _ = writeln!(out, "Backtest of {}", a.rule_set);
    if let Some(b) = &a.baseline_rule_set {
        let _ = writeln!(out, "against the baseline {b} (changes in parentheses)");
    }
    let _ = writeln!(
        out,
        "History: tenant {}, {} to {}, from {}",
        source.tenant,
        a.window.from(),
        a.window.to(),
        source.origin
    );
    let _ = writeln!(
        out,
        "  {} readings of {} tags; {} evaluated, {} skipped as out of order, {} on tags without an asset",
        s.readings, s.tags_with_readings, s.evaluated, s.skipped_out_of_order, s.without_asset
    );
    let _ = writeln!(
        out,
        "Flap window {}, match window {}",
        duration(i64::try_from(a.settings.flap_window.as_micros()).unwrap_or(i64::MAX)),
        duration(i64::try_from(a.settings.match_window.as_micros()).unwrap_or(i64::MAX)),
    );
    out.push('\n');

    let with_baseline = a.baseline_rule_set.is_some();
    let mut header = vec!["rule"];
    if with_baseline {
        header.push("change");
    }
    header.extend([
        "alarms",
        "work orders",
        "time in alarm",
        "flaps",
        "escalations",
        "active at end",
    ]);
    let rows: Vec<Vec<String>> = a
        .rules
        .iter()
        .map(|r| {
            let mut row = vec![r.rule.clone()];
            if with_baseline {
                row.push(r.change.as_str().to_owned());
            }
            row.push(cell(r, |m| m.alarms, count, signed_count));
            row.push(cell(r, |m| m.work_orders, count, signed_count));
            row.push(cell(r, |m| m.time_in_alarm, duration, signed_duration));
            row.push(cell(r, |m| m.flaps, count, signed_count));
            row.push(cell(r, |m| m.escalations, count, signed_count));
            row.push(cell(r, |m| m.active_at_end, count, signed_count));
            row
        })
        .collect();
    layout(&mut out, &header, &rows, if with_baseline { 2 } else { 1 });
    out.push('\n');

    match a.past_work_orders {
        None => out.push_str(
            "Past work orders: none available (a history file without its work-order file), so no matching.\n",
        ),
        Some(n) => {
            let _ = writeln!(
                out,
                "Predicted work orders against the {n} past work orders in reach, by the nearest match:"
            );
            let header = [
                "rule",
                "real failure",
                "no fault",
                "still open",
                "other",
                "no match",
                "failures caught",
                "failures missed",
            ];
            let rows: Vec<Vec<String>> = a
                .rules
                .iter()
                .map(|r| {
                    vec![
                        r.rule.clone(),
                        cell(r, |m| m.matched_failure, count, signed_count),
                        cell(r, |m| m.matched_no_fault, count, signed_count),
                        cell(r, |m| m.matched_open, count, signed_count),
                        cell(r, |m| m.matched_other, count, signed_count),
                        cell(r, |m| m.unmatched, count, signed_count),
                        cell(r, |m| m.failures_caught, count, signed_count),
                        cell(r, |m| m.failures_missed, count, signed_count),
                    ]
                })
                .collect();
            layout(&mut out, &header, &rows, 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::analysis::{Settings, analyse};
    use crate::replay::tests::{HOT, reading, rules, tags, ts};
    use crate::replay::{Replay, Window};

    fn analysis(with_baseline: bool) -> Analysis {
        let window = Window::new(ts(0), ts(7200)).expect("non-empty");
        let history = [
            reading(0, 100, 85.0),
            reading(0, 200, 60.0),
            reading(0, 500, 96.0),
            reading(0, 4200, 60.0),
        ];
        let current = Replay::run(rules(HOT), tags(), window, history);
        let baseline_rules = HOT.replace("id = \"very-hot\"", "id = \"old-rule\"");
        let baseline = Replay::run(rules(&baseline_rules), tags(), window, history);
        let settings = Settings {
            flap_window: Duration::from_secs(600),
            match_window: Duration::from_secs(3600),
        };
        analyse(
            &current,
            with_baseline.then_some(&baseline),
            Some(&[]),
            settings,
        )
        .expect("analysis runs")
    }

    fn source() -> Source {
        Source {
            tenant: "acme".into(),
            origin: "database".into(),
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45 * MICROS), "45s");
        assert_eq!(duration(3725 * MICROS), "1h 2m");
        assert_eq!(duration(3605 * MICROS), "1h");
        assert_eq!(duration(-(90 * MICROS)), "-1m 30s");
        assert_eq!(duration(2 * 86_400 * MICROS + 7200 * MICROS), "2d 2h");
    }

    /// The cells of a table line: columns are two or more spaces apart.
    fn cells(line: &str) -> Vec<&str> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn the_table_shows_values_and_changes() {
        let text = render(&analysis(true), &source(), Format::Table).expect("renders");
        let lines: Vec<&str> = text.lines().collect();
        let at = |first: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(first))
                .unwrap_or_else(|| panic!("no line starts with {first:?} in\n{text}"))
        };
        let head = at("rule ");
        assert_eq!(
            cells(lines[head]),
            [
                "rule",
                "change",
                "alarms",
                "work orders",
                "time in alarm",
                "flaps",
                "escalations",
                "active at end"
            ]
        );
        assert_eq!(
            cells(lines[head + 1]),
            ["hot", "unchanged", "2", "2", "1h 3m", "1", "2", "0"]
        );
        assert_eq!(
            cells(lines[head + 2]),
            ["very-hot", "added", "1", "0", "1h 1m", "0", "0", "0"]
        );
        assert_eq!(
            cells(lines[head + 3]),
            [
                "old-rule",
                "removed",
                "(was 1)",
                "(was 0)",
                "(was 1h 1m)",
                "(was 0)",
                "(was 0)",
                "(was 0)"
            ]
        );
        let matches = at("Predicted work orders") + 1;
        assert!(
            lines[matches - 1].contains("against the 0 past work orders"),
            "{text}"
        );
        assert_eq!(
            cells(lines[matches]),
            [
                "rule",
                "real failure",
                "no fault",
                "still open",
                "other",
                "no match",
                "failures caught",
                "failures missed"
            ]
        );
        assert_eq!(
            cells(lines[matches + 1]),
            ["hot", "0", "0", "0", "0", "2", "0", "0"]
        );
        assert!(text.contains("against the baseline test.toml"), "{text}");
        assert!(text.contains("4 readings of 1 tags"), "{text}");
        assert!(text.contains("Flap window 10m, match window 1h"), "{text}");
    }

    #[test]
    fn a_change_shows_next_to_the_value() {
        let mut a = analysis(true);
        let hot = &mut a.rules[0];
        hot.delta = hot.delta.map(|d| RuleMetrics {
            alarms: 1,
            time_in_alarm: -60 * MICROS,
            ..d
        });
        let text = render(&a, &source(), Format::Table).expect("renders");
        let line = text
            .lines()
            .find(|l| l.starts_with("hot "))
            .expect("a line for hot");
        assert_eq!(cells(line)[2..5], ["2 (+1)", "2", "1h 3m (-1m)"]);
    }

    #[test]
    fn json_carries_every_metric_and_the_baseline() {
        let text = render(&analysis(true), &source(), Format::Json).expect("renders");
        let value: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["tenant"], "acme");
        assert_eq!(value["past_work_orders"], 0);
        assert_eq!(value["history"]["readings"], 4);
        let hot = &value["rules"][0];
        assert_eq!(hot["rule"], "hot");
        assert_eq!(hot["change"], "unchanged");
        assert_eq!(hot["current"]["alarms"], 2);
        assert_eq!(hot["current"]["time_in_alarm_s"], 3800.0);
        assert_eq!(hot["delta"]["flaps"], 0);
        assert_eq!(value["rules"][2]["current"], Value::Null);
        let plain = render(&analysis(false), &source(), Format::Json).expect("renders");
        let value: Value = serde_json::from_str(&plain).expect("valid JSON");
        assert_eq!(value["rules"][0]["change"], Value::Null);
        assert_eq!(value["baseline_rule_set"], Value::Null);
    }

    #[test]
    fn csv_quotes_what_needs_it_and_adds_baseline_columns() {
        let text = render(&analysis(true), &source(), Format::Csv).expect("renders");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0]
                .starts_with("rule,failure_mode,change,alarms,work_orders,time_in_alarm_s,flaps,")
        );
        assert!(lines[0].contains(",baseline_alarms,"));
        assert!(lines[0].ends_with(",delta_failures_missed"));
        assert!(
            lines[1].starts_with("hot,overheat,unchanged,2,2,3800,1,2,0,"),
            "{}",
            lines[1]
        );
        assert!(
            lines[3].starts_with("old-rule,overheat,removed,,,"),
            "{}",
            lines[3]
        );
        let mut quoted = String::new();
        csv_field(&mut quoted, "a, \"b\"");
        assert_eq!(quoted, "\"a, \"\"b\"\"\"");
        let header_fields = lines[0].split(',').count();
        assert_eq!(header_fields, 3 + 3 * METRICS.len());
        let plain = render(&analysis(false), &source(), Format::Csv).expect("renders");
        assert_eq!(
            plain.lines().next().map(|l| l.split(',').count()),
            Some(3 + METRICS.len())
        );
    }

    #[test]
    fn formats_parse_from_their_names() {
        assert_eq!("csv".parse(), Ok(Format::Csv));
        assert!("xml".parse::<Format>().is_err());
    }
}
