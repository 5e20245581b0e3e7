//! `maintainpro rules test` as a reliability engineer runs it: the demo rule file against the
//! fixtures in `config/rules/tests`, and a fixture whose snapshot no longer matches.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate sits in the workspace")
        .to_owned()
}

/// Runs `maintainpro rules test config/rules/demo.toml --fixtures DIR [extra...]` from the
/// workspace root.
fn rules_test(fixtures: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maintainpro"))
        .current_dir(workspace())
        .args(["rules", "test", "config/rules/demo.toml", "--fixtures"])
        .arg(fixtures)
        .args(extra)
        .output()
        .expect("the maintainpro binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary fixtures directory holding a copy of one demo fixture's readings.
fn fixtures_with(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::copy(
        workspace().join(format!("config/rules/tests/{name}.csv")),
        dir.path().join(format!("{name}.csv")),
    )
    .expect("the demo fixture is copied");
    dir
}

#[test]
fn the_demo_fixtures_pass() {
    let out = rules_test(Path::new("config/rules/tests"), &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for name in ["bearing-overheat", "critical-press", "normal-operation"] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {name}")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("3 fixtures: 3 passed, 0 failed"),
        "{stdout}"
    );
    let snapshot =
        std::fs::read_to_string(workspace().join("config/rules/tests/bearing-overheat.snap"))
            .expect("the snapshot is there");
    assert!(
        snapshot.contains("  -> work order WO-1 opened priority=high")
            && snapshot.contains("  -> appended to WO-1"),
        "{snapshot}"
    );
}

#[test]
fn a_wrong_snapshot_fails_with_a_diff() {
    let dir = fixtures_with("bearing-overheat");
    let expected =
        std::fs::read_to_string(workspace().join("config/rules/tests/bearing-overheat.snap"))
            .expect("the snapshot is there");
    let wrong = expected.replace("appended to WO-1", "work order WO-2 opened");
    assert_ne!(wrong, expected);
    std::fs::write(dir.path().join("bearing-overheat.snap"), wrong).expect("snapshot written");

    let out = rules_test(dir.path(), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.starts_with("FAIL bearing-overheat\n"), "{stdout}");
    assert!(
        stdout.contains("  -   -> work order WO-2 opened"),
        "{stdout}"
    );
    assert!(stdout.contains("  +   -> appended to WO-1"), "{stdout}");
    assert!(stdout.contains("1 fixture: 0 passed, 1 failed"), "{stdout}");
}

#[test]
fn a_missing_snapshot_fails_until_update_writes_it() {
    let dir = fixtures_with("bearing-overheat");

    let out = rules_test(dir.path(), &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("bearing-overheat.snap is missing"),
        "{stdout}"
    );
    assert!(stdout.contains("--update"), "{stdout}");
    assert!(stdout.contains("  + raised    t=13"), "{stdout}");

    let out = rules_test(dir.path(), &["--update"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("created bearing-overheat.snap"), "{stdout}");
    let written = std::fs::read_to_string(dir.path().join("bearing-overheat.snap"))
        .expect("the snapshot was written");
    let demo =
        std::fs::read_to_string(workspace().join("config/rules/tests/bearing-overheat.snap"))
            .expect("the snapshot is there");
    assert_eq!(written, demo);

    let out = rules_test(dir.path(), &["--update"]);
    assert!(text(&out).0.contains("unchanged bearing-overheat"));
    let out = rules_test(dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out).0);
}

#[test]
fn a_bad_readings_line_fails_with_its_number() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("typo.csv"),
        "tag,ts_seconds,value,quality\npress-1.bearing_temp,0,72,good\npress-1.bearing temp,1,73,good\n",
    )
    .expect("fixture written");
    std::fs::write(dir.path().join("typo.snap"), "").expect("snapshot written");
    let out = rules_test(dir.path(), &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("typo.csv: line 3: tag name"), "{stdout}");
}
