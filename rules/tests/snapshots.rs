//! A fixture and a snapshot per rule kind, and the generated reference page.
//!
//! For each kind in the registry, `fixtures/<kind>.toml` is a rule file and `fixtures/<kind>.csv`
//! the readings fed to it (`tag,ts_seconds,value,quality`; `#` starts a comment line). The
//! readings go through the engine in file order, as a backtest would: before each reading the
//! engine's time is advanced to the reading's time. The alarm events, one line each, must equal
//! `snapshots/<kind>.txt`.
//!
//! Each tag gets the id of its order of first appearance (from 1); its asset is the part of its
//! name before the first `.`, with criticality 3.
//!
//! `UPDATE_SNAPSHOTS=1 cargo test -p rules --test snapshots` rewrites the snapshots and
//! `docs/RULES-REFERENCE.md` instead of comparing them; review the diff before committing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::alarm::AlarmEvent;
use model::{AssetId, Criticality, Quality, TagName, TenantId, Timestamp};
use rules::kinds::REGISTRY;
use rules::{Engine, RuleSet, TagContext};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn updating() -> bool {
    std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1")
}

/// Compares `actual` with the file at `path`, or rewrites the file when updating. Returns a
/// description of the difference.
fn check(path: &Path, actual: &str) -> Option<String> {
    if updating() {
        std::fs::write(path, actual).expect("snapshot directory is writable");
        return None;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return None;
    }
    let mut diff = format!("{} differs:\n", path.display());
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (el, al) = (e.get(i), a.get(i));
        if el != al {
            let _ = writeln!(
                diff,
                "  line {}:\n  - {}\n  + {}",
                i + 1,
                el.unwrap_or(&""),
                al.unwrap_or(&"")
            );
        }
    }
    Some(diff)
}

fn seconds(ts: Timestamp) -> String {
    let micros = ts.as_micros();
    if micros % 1_000_000 == 0 {
        format!("{}", micros / 1_000_000)
    } else {
        format!("{}", micros as f64 / 1e6)
    }
}

fn line(event: &AlarmEvent) -> String {
    let s = event.subject();
    let head = |what: &str, at: Timestamp| {
        format!(
            "{what:<9} t={} rule={} tag={} severity={}",
            seconds(at),
            s.rule_id,
            s.tag,
            s.severity
        )
    };
    match event {
        AlarmEvent::Raised {
            at,
            value,
            work_order: w,
            ..
        } => format!(
            "{} value={value} priority={} work_type={} key={} title={:?} description={:?}",
            head("raised", *at),
            w.priority,
            w.work_type.as_str(),
            event.idempotency_key(),
            w.title,
            w.description
        ),
        AlarmEvent::Escalated {
            raised_at,
            at,
            value,
            work_order: w,
            ..
        } => format!(
            "{} raised_at={} value={value} priority={} key={} title={:?}",
            head("escalated", *at),
            seconds(*raised_at),
            w.priority,
            event.idempotency_key(),
            w.title
        ),
        AlarmEvent::Cleared {
            raised_at,
            at,
            value,
            ..
        } => format!(
            "{} raised_at={} value={value}",
            head("cleared", *at),
            seconds(*raised_at)
        ),
    }
}

/// Runs a fixture and renders its events, one line each.
fn run(kind: &str) -> Result<String, String> {
    let dir = crate_dir().join("tests/fixtures");
    let toml_path = dir.join(format!("{kind}.toml"));
    let csv_path = dir.join(format!("{kind}.csv"));
    let text =
        std::fs::read_to_string(&toml_path).map_err(|e| format!("{}: {e}", toml_path.display()))?;
    let rules = RuleSet::parse(&format!("{kind}.toml"), &text).map_err(|diags| {
        diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let csv =
        std::fs::read_to_string(&csv_path).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let mut engine = Engine::new(Arc::new(rules));
    let mut contexts: HashMap<String, TagContext> = HashMap::new();
    let mut assets: HashMap<String, AssetId> = HashMap::new();
    let mut out = Vec::new();
    let mut rendered = String::new();
    let mut rows = csv.lines().enumerate().filter(|(_, l)| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    });
    let header = rows.next().map(|(_, l)| l.trim());
    if header != Some("tag,ts_seconds,value,quality") {
        return Err(format!(
            "{}: header must be tag,ts_seconds,value,quality",
            csv_path.display()
        ));
    }
    for (n, row) in rows {
        let bad_row = |what: &str| format!("{}:{}: {what}", csv_path.display(), n + 1);
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        let [tag, ts, value, quality] = fields[..] else {
            return Err(bad_row("expected 4 fields"));
        };
        let ts: f64 = ts
            .parse()
            .map_err(|_| bad_row("ts_seconds is not a number"))?;
        let ts = Timestamp::from_micros((ts * 1e6).round() as i64);
        let value: f64 = value
            .parse()
            .map_err(|_| bad_row("value is not a number"))?;
        let quality = match quality {
            "good" => Quality::Good,
            "uncertain" => Quality::Uncertain,
            "bad" => Quality::Bad,
            _ => return Err(bad_row("quality is good, uncertain or bad")),
        };
        let next_id = contexts.len() as i64 + 1;
        let asset_name = tag.split('.').next().unwrap_or(tag).to_owned();
        let next_asset = assets.len() as u128 + 1;
        let asset = *assets
            .entry(asset_name.clone())
            .or_insert_with(|| AssetId::from_uuid(uuid::Uuid::from_u128(next_asset)));
        let ctx = contexts
            .entry(tag.to_owned())
            .or_insert_with(|| TagContext {
                tenant: TenantId::from_uuid(uuid::Uuid::nil()),
                tag_id: next_id,
                tag: TagName::parse(tag).expect("fixture tag names are valid"),
                unit: None,
                asset: Some(asset),
                asset_name,
                criticality: Criticality::DEFAULT,
            });
        engine.advance(ts, &mut out);
        engine.evaluate(ctx, ts, value, quality, &mut out);
        for event in out.drain(..) {
            rendered.push_str(&line(&event));
            rendered.push('\n');
        }
    }
    Ok(rendered)
}

#[test]
fn every_kind_matches_its_snapshot() {
    let mut failures = Vec::new();
    for kind in REGISTRY {
        match run(kind.name) {
            Ok(actual) => {
                if actual.is_empty() {
                    failures.push(format!("{}: the fixture raises no alarm", kind.name));
                }
                let path = crate_dir().join(format!("tests/snapshots/{}.txt", kind.name));
                failures.extend(check(&path, &actual));
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(rerun with UPDATE_SNAPSHOTS=1 to accept the new output)",
        failures.join("\n")
    );
}

#[test]
fn the_reference_page_is_generated_from_the_kinds() {
    let path = crate_dir().join("../docs/RULES-REFERENCE.md");
    if let Some(diff) = check(&path, &rules::reference::markdown()) {
        panic!("{diff}\n(rerun with UPDATE_SNAPSHOTS=1 to regenerate it)");
    }
}
