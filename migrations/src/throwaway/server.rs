//! The server process and its guardian. The one thing this module must never do is leave a
//! server running: every path out (stop, drop, failed start, this process exiting) ends it.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ClusterError;

/// How often a stopping server is checked for having exited.
const POLL: Duration = Duration::from_millis(20);

/// Run by `/bin/sh` with the server's pid as `$1` and the cluster directory as `$2`. It blocks
/// on its standard input, a pipe from this process: a "dismissed" line means the server was
/// stopped in order; end of file without it means this process exited (a pipe's write end is
/// closed by the kernel however a process dies), so the guardian stops the server itself and
/// deletes the directory.
const GUARDIAN_SCRIPT: &str = r#"
if read -r word && [ "$word" = dismissed ]; then exit 0; fi
kill -INT "$1" 2>/dev/null
tries=0
while kill -0 "$1" 2>/dev/null && [ "$tries" -lt 100 ]; do
    sleep 0.1
    tries=$((tries + 1))
done
kill -KILL "$1" 2>/dev/null
[ -n "$2" ] && rm -rf -- "$2"
"#;

/// A started postgres process and its guardian.
pub(super) struct Server {
    postgres: Child,
    guardian: Option<Guardian>,
}

impl Server {
    /// Spawns `postgres` and, at once, the guardian that stops it should this process die.
    pub(super) fn spawn(mut postgres: Command, root: &Path) -> Result<Self, ClusterError> {
        let program = postgres.get_program().to_string_lossy().into_owned();
        let child = postgres
            .spawn()
            .map_err(ClusterError::io(format!("starting {program}")))?;
        let mut server = Self {
            postgres: child,
            guardian: None,
        };
        // On failure `server` is dropped here, which stops the postgres just started.
        server.guardian = Some(Guardian::spawn(server.pid(), root)?);
        Ok(server)
    }

    pub(super) fn pid(&self) -> u32 {
        self.postgres.id()
    }

    /// The exit status once the server has exited.
    pub(super) fn exit_status(&mut self) -> Option<ExitStatus> {
        self.postgres.try_wait().ok().flatten()
    }

    fn has_exited(&mut self) -> bool {
        // An error means the child is already reaped or cannot be waited for: either way
        // there is nothing left to stop.
        !matches!(self.postgres.try_wait(), Ok(None))
    }

    /// Sends the fast-shutdown signal; false when the server has already exited.
    fn request_fast_shutdown(&mut self) -> bool {
        if self.has_exited() {
            return false;
        }
        signal(self.pid(), Signal::SIGINT);
        true
    }

    fn kill_if_running(&mut self) {
        if !self.has_exited() {
            tracing::warn!(
                pid = self.pid(),
                "throwaway PostgreSQL did not shut down in time; killing it"
            );
            if let Err(e) = self.postgres.kill() {
                tracing::warn!(error = %e, "killing throwaway PostgreSQL failed");
            }
            if let Err(e) = self.postgres.wait() {
                tracing::warn!(error = %e, "waiting for throwaway PostgreSQL failed");
            }
        }
    }

    /// Fast shutdown, SIGKILL after `grace`, then the guardian is dismissed. Idempotent.
    pub(super) async fn shutdown(&mut self, grace: Duration) {
        if self.request_fast_shutdown() {
            let deadline = Instant::now() + grace;
            while !self.has_exited() && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
            self.kill_if_running();
        }
        self.dismiss_guardian();
    }

    /// [`Server::shutdown`] for places that cannot await (Drop).
    pub(super) fn shutdown_blocking(&mut self, grace: Duration) {
        if self.request_fast_shutdown() {
            let deadline = Instant::now() + grace;
            while !self.has_exited() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
            self.kill_if_running();
        }
        self.dismiss_guardian();
    }

    fn dismiss_guardian(&mut self) {
        if let Some(guardian) = self.guardian.take() {
            guardian.dismiss();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Covers a start that failed or was cancelled half-way; after a shutdown it is a no-op.
        self.shutdown_blocking(super::DROP_GRACE);
    }
}

struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    fn spawn(postgres_pid: u32, root: &Path) -> Result<Self, ClusterError> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(GUARDIAN_SCRIPT)
            .arg("maintainpro-pg-guardian")
            .arg(postgres_pid.to_string())
            .arg(root)
            .stdin(Stdio::piped())
            // Never inherit this process's stdout/stderr: a guardian that outlives it must not
            // hold a pipe open that a test runner or `| tee` waits on.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group, so a Ctrl-C that ends the tests leaves the
            // guardian alive to clean up.
            .process_group(0)
            .spawn()
            .map_err(ClusterError::io("starting the cluster guardian (/bin/sh)"))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// Tells the guardian the server is stopped, and waits for it to exit.
    fn dismiss(mut self) {
        if let Some(mut stdin) = self.stdin.take()
            && let Err(e) = stdin.write_all(b"dismissed\n")
        {
            tracing::debug!(error = %e, "dismissing the cluster guardian failed");
        }
        // The guardian exits as soon as it reads the line; the bound only guards against a
        // wedged shell.
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                if let Err(e) = self.child.kill() {
                    tracing::debug!(error = %e, "killing the cluster guardian failed");
                }
                if let Err(e) = self.child.wait() {
                    tracing::debug!(error = %e, "waiting for the cluster guardian failed");
                }
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn signal(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    if let Err(e) = kill(Pid::from_raw(raw), signal) {
        tracing::debug!(pid, %signal, error = %e, "signalling throwaway PostgreSQL failed");
    }
}
