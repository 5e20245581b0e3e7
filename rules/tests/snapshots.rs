//! A fixture and a snapshot per rule kind, and the generated reference page.
//!
//! For each kind in the registry, `fixtures/<kind>.toml` is a rule file and `fixtures/<kind>.csv`
//! the readings fed to it, in the format of [`rules::fixture`]. The rendered run (each alarm
//! event, and what the CMMS would do with it) must equal `snapshots/<kind>.txt`.
//!
//! `UPDATE_SNAPSHOTS=1 cargo test -p rules --test snapshots` rewrites the snapshots and
//! `docs/RULES-REFERENCE.md` instead of comparing them; review the diff before committing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rules::RuleSet;
use rules::kinds::REGISTRY;

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

/// Runs a kind's fixture and renders it.
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
    rules::fixture::run(Arc::new(rules), &csv).map_err(|e| format!("{}: {e}", csv_path.display()))
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
