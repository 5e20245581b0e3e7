//! Shared by the interoperability tests: starts a peer written in Python (a server built on an
//! implementation independent of ours) and waits for the line it prints once it listens.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Runs `tests/<script>` with `args` under the Python of `MPTEST_PYTHON` (which has `needs`
/// installed) and returns the process, killed when dropped (its standard input closes then
/// too), with the first line it printed.
pub async fn start(script: &str, args: &[&std::ffi::OsStr], needs: &str) -> (Child, String) {
    let python = std::env::var("MPTEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "MPTEST_PYTHON is not set: it names a Python with {needs} installed. \
             Run the tests through scripts/test.sh, which creates that environment."
        )
    });
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} {script}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .expect("the peer starts within a minute")
    .expect("the peer's output is readable")
    .expect("the peer prints a line once it listens");
    (child, line)
}
