//! `maintainpro rules test`: runs fixture readings through rule files and compares the alarm
//! events and the work orders they would open with snapshot files, so that a rule file is
//! tested before it ships.
//!
//! A fixtures directory holds pairs of files:
//!
//! - `NAME.csv`: readings, in the format of [`rules::fixture`]
//!   (`tag,ts_seconds,value,quality`, one reading a line);
//! - `NAME.snap`: the expected output, as `--update` writes it: one line per alarm event, each
//!   followed by a `  -> ` line saying what the CMMS would do with it (open a work order,
//!   append to one, note a clear). A fixture that raises nothing has an empty snapshot.
//!
//! Every CSV runs in a fresh engine against the rule set that all the rule files form
//! together, loaded as the server loads them ([`crate::services::load_rule_files`]).
//!
//! This module reads and writes the files and prints; running a fixture is pure and lives in
//! [`rules::fixture`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use rules::RuleSet;

/// Arguments of `maintainpro rules test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Rule files, merged into one rule set as the server merges them.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Directory of fixtures: NAME.csv (readings) and NAME.snap (expected output) pairs.
    #[arg(long)]
    pub fixtures: PathBuf,
    /// Write each NAME.snap from the actual output instead of comparing with it.
    #[arg(long)]
    pub update: bool,
}

/// Lines of context around each change in a diff.
const CONTEXT: usize = 2;

/// What became of one fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    /// The output differs from the snapshot: the diff.
    Differs(String),
    /// There is no snapshot: the actual output, as a diff from nothing.
    NoSnapshot(String),
    /// The fixture could not run (or, when updating, its snapshot could not be written).
    Broken(String),
    /// A snapshot without readings.
    NoReadings,
    /// `--update` wrote the snapshot; `created` when there was none.
    Written {
        created: bool,
    },
    /// `--update` found the snapshot up to date.
    Unchanged,
}

impl Outcome {
    fn failed(&self) -> bool {
        matches!(
            self,
            Outcome::Differs(_) | Outcome::NoSnapshot(_) | Outcome::Broken(_) | Outcome::NoReadings
        )
    }
}

/// One fixture's result, printed as its `ok`/`FAIL` line and what explains a failure.
#[derive(Debug)]
struct FixtureResult {
    name: String,
    outcome: Outcome,
}

impl fmt::Display for FixtureResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.outcome {
            Outcome::Passed => write!(f, "ok {name}"),
            Outcome::Unchanged => write!(f, "unchanged {name}"),
            Outcome::Written { created: true } => write!(f, "created {name}.snap"),
            Outcome::Written { created: false } => write!(f, "updated {name}.snap"),
            Outcome::Differs(diff) => write!(
                f,
                "FAIL {name}\n  --- {name}.snap (expected)\n  +++ actual output\n{}",
                diff.trim_end()
            ),
            Outcome::NoSnapshot(output) => {
                write!(
                    f,
                    "FAIL {name}\n  {name}.snap is missing; check the output below, then run with --update to write it\n"
                )?;
                if output.is_empty() {
                    write!(f, "  (no output: the readings raise no alarm)")
                } else {
                    write!(f, "  +++ actual output\n{}", output.trim_end())
                }
            }
            Outcome::Broken(why) => write!(f, "FAIL {name}\n  {why}"),
            Outcome::NoReadings => write!(
                f,
                "FAIL {name}\n  {name}.snap has no {name}.csv: add the readings or delete the snapshot"
            ),
        }
    }
}

/// Runs `maintainpro rules test`. Exit status: 0 when every fixture passes (or, with
/// `--update`, every snapshot was written or up to date), 1 when one fails, 2 when the
/// rule files or the fixtures directory cannot be used.
pub fn test(args: &TestArgs) -> ExitCode {
    let rules = match crate::services::load_rule_files(&args.files) {
        Ok(rules) => Arc::new(rules),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let names = match fixture_names(&args.fixtures) {
        Ok(names) if names.values().any(|pair| pair.csv) => names,
        Ok(_) => {
            eprintln!(
                "{}: no fixtures: the directory has no NAME.csv readings files",
                args.fixtures.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!(
                "{}: cannot read the directory: {e}",
                args.fixtures.display()
            );
            return ExitCode::from(2);
        }
    };
    let mut failed = 0;
    let mut written = 0;
    let mut changed_output = false;
    for (stem, pair) in &names {
        let result = FixtureResult {
            name: stem.to_string_lossy().into_owned(),
            outcome: run_fixture(&rules, &args.fixtures, stem, pair, args.update),
        };
        failed += usize::from(result.outcome.failed());
        written += usize::from(matches!(result.outcome, Outcome::Written { .. }));
        changed_output |= matches!(result.outcome, Outcome::Differs(_) | Outcome::NoSnapshot(_));
        println!("{result}");
    }
    let total = names.len();
    let fixtures = if total == 1 { "fixture" } else { "fixtures" };
    if args.update {
        println!(
            "{total} {fixtures}: {written} written, {} unchanged, {failed} failed",
            total - written - failed
        );
    } else {
        println!(
            "{total} {fixtures}: {} passed, {failed} failed",
            total - failed
        );
        if changed_output {
            println!(
                "a changed output that is right: rerun with --update to write it, and review the change"
            );
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Which files of a fixture exist.
#[derive(Debug, Default, Clone, Copy)]
struct Pair {
    csv: bool,
    snap: bool,
}

/// The fixtures of a directory by name, in name order.
fn fixture_names(dir: &Path) -> std::io::Result<BTreeMap<OsString, Pair>> {
    let mut names: BTreeMap<OsString, Pair> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        if !path.is_file() {
            continue;
        }
        if ext == "csv" {
            names.entry(stem.to_owned()).or_default().csv = true;
        } else if ext == "snap" {
            names.entry(stem.to_owned()).or_default().snap = true;
        }
    }
    Ok(names)
}

fn file(dir: &Path, stem: &OsString, ext: &str) -> PathBuf {
    let mut name = stem.clone();
    name.push(".");
    name.push(ext);
    dir.join(name)
}

fn run_fixture(
    rules: &Arc<RuleSet>,
    dir: &Path,
    stem: &OsString,
    pair: &Pair,
    update: bool,
) -> Outcome {
    if !pair.csv {
        return Outcome::NoReadings;
    }
    let csv_path = file(dir, stem, "csv");
    let snap_path = file(dir, stem, "snap");
    let actual = match std::fs::read_to_string(&csv_path) {
        Ok(text) => match rules::fixture::run(Arc::clone(rules), &text) {
            Ok(actual) => actual,
            Err(e) => return Outcome::Broken(format!("{}: {e}", csv_path.display())),
        },
        Err(e) => return Outcome::Broken(format!("{}: cannot read: {e}", csv_path.display())),
    };
    let expected = if pair.snap {
        match std::fs::read_to_string(&snap_path) {
            Ok(text) => Some(text),
            Err(e) => {
                return Outcome::Broken(format!("{}: cannot read: {e}", snap_path.display()));
            }
        }
    } else {
        None
    };
    // Compared line by line: a final newline or CRLF line ends do not make a difference.
    let same = expected
        .as_deref()
        .is_some_and(|e| e.lines().eq(actual.lines()));
    match (update, expected) {
        (false, _) if same => Outcome::Passed,
        (false, Some(expected)) => Outcome::Differs(unified_diff(&expected, &actual)),
        (false, None) => Outcome::NoSnapshot(unified_diff("", &actual)),
        (true, _) if same => Outcome::Unchanged,
        (true, expected) => match std::fs::write(&snap_path, &actual) {
            Ok(()) => Outcome::Written {
                created: expected.is_none(),
            },
            Err(e) => Outcome::Broken(format!("{}: cannot write: {e}", snap_path.display())),
        },
    }
}

/// One line of a line diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit<'a> {
    Same(&'a str),
    Removed(&'a str),
    Added(&'a str),
}

/// The longest common subsequence table above this many cells is not built: the differing
/// middle is then shown as all removed, then all added.
const MAX_TABLE: usize = 4_000_000;

/// A line diff of `expected` to `actual` (longest common subsequence, after the common
/// beginning and end are set aside).
fn diff_lines<'a>(expected: &[&'a str], actual: &[&'a str]) -> Vec<Edit<'a>> {
    let prefix = expected
        .iter()
        .zip(actual)
        .take_while(|(e, a)| e == a)
        .count();
    let suffix = expected[prefix..]
        .iter()
        .rev()
        .zip(actual[prefix..].iter().rev())
        .take_while(|(e, a)| e == a)
        .count();
    let e = &expected[prefix..expected.len() - suffix];
    let a = &actual[prefix..actual.len() - suffix];
    let mut edits: Vec<Edit<'a>> = expected[..prefix].iter().map(|l| Edit::Same(l)).collect();
    let width = a.len() + 1;
    if (e.len() + 1).saturating_mul(width) > MAX_TABLE {
        edits.extend(e.iter().map(|l| Edit::Removed(l)));
        edits.extend(a.iter().map(|l| Edit::Added(l)));
    } else {
        // lcs[i * width + j]: the common subsequence length of e[i..] and a[j..].
        let mut lcs = vec![0u32; (e.len() + 1) * width];
        for i in (0..e.len()).rev() {
            for j in (0..a.len()).rev() {
                lcs[i * width + j] = if e[i] == a[j] {
                    lcs[(i + 1) * width + j + 1] + 1
                } else {
                    lcs[(i + 1) * width + j].max(lcs[i * width + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < e.len() && j < a.len() {
            if e[i] == a[j] {
                edits.push(Edit::Same(e[i]));
                i += 1;
                j += 1;
            } else if lcs[(i + 1) * width + j] >= lcs[i * width + j + 1] {
                edits.push(Edit::Removed(e[i]));
                i += 1;
            } else {
                edits.push(Edit::Added(a[j]));
                j += 1;
            }
        }
        edits.extend(e[i..].iter().map(|l| Edit::Removed(l)));
        edits.extend(a[j..].iter().map(|l| Edit::Added(l)));
    }
    edits.extend(
        expected[expected.len() - suffix..]
            .iter()
            .map(|l| Edit::Same(l)),
    );
    edits
}

/// The differences between two texts as unified-diff hunks (`@@ -line,count +line,count @@`,
/// then ` `, `-` and `+` lines), each line indented by two spaces.
fn unified_diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let edits = diff_lines(&e, &a);
    // Lines of each side before each edit.
    let mut before = Vec::with_capacity(edits.len() + 1);
    let (mut ei, mut ai) = (0, 0);
    for edit in &edits {
        before.push((ei, ai));
        match edit {
            Edit::Same(_) => (ei, ai) = (ei + 1, ai + 1),
            Edit::Removed(_) => ei += 1,
            Edit::Added(_) => ai += 1,
        }
    }
    before.push((ei, ai));
    let changed: Vec<usize> = edits
        .iter()
        .enumerate()
        .filter(|(_, edit)| !matches!(edit, Edit::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        let mut last = k;
        while last + 1 < changed.len() && changed[last + 1] - changed[last] - 1 <= 2 * CONTEXT {
            last += 1;
        }
        let start = changed[k].saturating_sub(CONTEXT);
        let end = (changed[last] + CONTEXT + 1).min(edits.len());
        let ((e0, a0), (e1, a1)) = (before[start], before[end]);
        let at = |first: usize, count: usize| if count == 0 { first } else { first + 1 };
        let _ = writeln!(
            out,
            "  @@ -{},{} +{},{} @@",
            at(e0, e1 - e0),
            e1 - e0,
            at(a0, a1 - a0),
            a1 - a0
        );
        for edit in &edits[start..end] {
            let _ = match edit {
                Edit::Same(l) => writeln!(out, "    {l}"),
                Edit::Removed(l) => writeln!(out, "  - {l}"),
                Edit::Added(l) => writeln!(out, "  + {l}"),
            };
        }
        k = last + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_is_shown_with_its_context() {
        let expected = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let actual = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified_diff(expected, actual),
            "  @@ -3,5 +3,5 @@\n    c\n    d\n  - e\n  + E\n    f\n    g\n"
        );
    }

    #[test]
    fn an_inserted_line_does_not_shift_the_rest_into_the_diff() {
        let expected = "one\ntwo\nthree\nfour\nfive\nsix\nseven\n";
        let actual = "one\nnew\ntwo\nthree\nfour\nfive\nsix\nseven\nlast\n";
        assert_eq!(
            unified_diff(expected, actual),
            "  @@ -1,3 +1,4 @@\n    one\n  + new\n    two\n    three\n  @@ -6,2 +7,3 @@\n    six\n    seven\n  + last\n"
        );
    }

    #[test]
    fn nearby_changes_share_a_hunk_and_nothing_is_shown_for_equal_texts() {
        let diff = unified_diff("a\nb\nc\nd\n", "A\nb\nc\nD\n");
        assert_eq!(
            diff,
            "  @@ -1,4 +1,4 @@\n  - a\n  + A\n    b\n    c\n  - d\n  + D\n"
        );
        assert_eq!(unified_diff("a\nb\n", "a\nb"), "");
        assert_eq!(unified_diff("", "x\n"), "  @@ -0,0 +1,1 @@\n  + x\n");
    }
}
