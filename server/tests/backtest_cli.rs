//! `maintainpro rules backtest` as an engineer runs it offline: a history file written with
//! the backtest crate, a rule change against its baseline, the report in each format.

use std::path::Path;
use std::process::{Command, Output};

use backtest::parquet::{HistoryHeader, HistoryWriter};
use backtest::{HistoryReading, ReadingSink, Tags, Window};
use model::{AssetId, Criticality, Quality, TagName, TenantId, Timestamp};
use rules::TagContext;

const RULES: &str = r#"
version = 1

[[rule]]
id = "bearing-hot"
tags = ["press-*.bearing_temp"]
severity = "high"
failure_mode = "bearing-overheat"

[rule.threshold]
above = LIMIT
clear_below = 80.0

[rule.work_order]
title = "Bearing overheating on {asset}"
"#;

fn second(s: i64) -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000 + s * 1_000_000)
}

/// One tag, a reading a second for an hour: 60, with 90 for a minute at 10 min and 95 for a
/// minute at 40 min.
fn write_history(path: &Path) {
    let mut tags = Tags::new();
    tags.insert(TagContext {
        tenant: TenantId::from_uuid(uuid::Uuid::from_u128(1)),
        tag_id: 7,
        tag: TagName::parse("press-1.bearing_temp").expect("a valid tag name"),
        unit: Some("degC".into()),
        asset: Some(AssetId::from_uuid(uuid::Uuid::from_u128(2))),
        asset_name: "Press 1".into(),
        asset_class: None,
        labels: Default::default(),
        criticality: Criticality::DEFAULT,
    });
    let header = HistoryHeader {
        tenant: TenantId::from_uuid(uuid::Uuid::from_u128(1)),
        tenant_slug: "acme".into(),
        window: Window::new(second(0), second(3600)).expect("a window"),
    };
    let mut writer = HistoryWriter::create(path, &tags, &header).expect("history file created");
    for s in 0..3600 {
        let value = match s {
            600..660 => 90.0,
            2400..2460 => 95.0,
            _ => 60.0,
        };
        writer
            .push(HistoryReading {
                tag: 0,
                ts: second(s),
                value,
                quality: Quality::Good,
            })
            .expect("reading written");
    }
    writer.finish().expect("history file finished");
}

fn backtest(dir: &Path, extra: &[&str]) -> Output {
    for (name, limit) in [("new.toml", "85.0"), ("current.toml", "92.0")] {
        std::fs::write(dir.join(name), RULES.replace("LIMIT", limit)).expect("rule file written");
    }
    Command::new(env!("CARGO_BIN_EXE_maintainpro"))
        .current_dir(dir)
        .args([
            "rules",
            "backtest",
            "--rules",
            "new.toml",
            "--baseline",
            "current.toml",
        ])
        .args(["--from-parquet", "history.parquet"])
        .args(extra)
        .env_remove("MAINTAINPRO_DATABASE__URL")
        .output()
        .expect("the maintainpro binary runs")
}

#[test]
fn a_rule_change_is_reported_against_its_baseline_in_every_format() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_history(&dir.path().join("history.parquet"));

    let out = backtest(dir.path(), &["--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["tenant"], "acme");
    assert_eq!(report["history"]["readings"], 3600);
    let rule = &report["rules"][0];
    assert_eq!(rule["rule"], "bearing-hot");
    assert_eq!(rule["change"], "changed");
    assert_eq!(rule["current"]["alarms"], 2);
    assert_eq!(rule["baseline"]["alarms"], 1);
    assert_eq!(rule["delta"]["work_orders"], 1);
    assert_eq!(rule["current"]["time_in_alarm_s"], 120.0);
    // No work-order file next to the history: nothing to match.
    assert_eq!(report["past_work_orders"], serde_json::Value::Null);

    let out = backtest(dir.path(), &["--format", "csv", "--flap-window", "1h"]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(csv.starts_with("rule,failure_mode,change,alarms,"), "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("bearing-hot,bearing-overheat,changed,2,2,120,1,")),
        "{csv}"
    );

    let out = backtest(dir.path(), &[]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("bearing-hot"), "{table}");
    assert!(table.contains("2 (+1)"), "{table}");
}

#[test]
fn bad_arguments_say_what_to_fix() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write_history(&dir.path().join("history.parquet"));
    let out = backtest(
        dir.path(),
        &[
            "--from",
            "2026-01-01T01:00:00Z",
            "--to",
            "2026-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not before --to"));

    let out = Command::new(env!("CARGO_BIN_EXE_maintainpro"))
        .args([
            "rules", "backtest", "--rules", "new.toml", "--tenant", "acme",
        ])
        .output()
        .expect("the maintainpro binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
}
