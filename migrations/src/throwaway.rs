//! A throwaway PostgreSQL server: started from the locally installed binaries in a fresh
//! temporary directory, listening on 127.0.0.1 only, and gone (process and data) when the
//! [`Cluster`] is stopped or dropped, or when the process that started it exits.
//!
//! It is for tests and local runs, never for data that matters: `fsync` may be off and
//! the data directory is deleted on stop.
//!
//! The server is a plain child process, independent of any async runtime, so one cluster can
//! serve tests that each run their own runtime. A small guardian shell process watches a pipe
//! from this process: if this process exits without stopping the cluster (a `static` is never
//! dropped; a test may abort), the pipe closes and the guardian stops the server and deletes
//! its directory, so no server outlives its tests.

mod binaries;
mod server;

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use std::{fmt, fs};

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use tempfile::TempDir;
use thiserror::Error;
use uuid::Uuid;

use self::binaries::{RunAs, find_bin_dir, unprivileged_user};
use self::server::Server;

/// Why a throwaway cluster could not be started.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// `initdb` and `postgres` were not found.
    #[error(
        "PostgreSQL server binaries (initdb and postgres) not found ({looked_in}); install the \
         PostgreSQL server binaries, e.g. `apt-get install postgresql` on Debian/Ubuntu, or set \
         PG_BIN_DIR"
    )]
    BinariesMissing {
        /// Where they were looked for.
        looked_in: String,
    },

    /// Running as root with no user to run PostgreSQL as.
    #[error(
        "PostgreSQL refuses to run as root, and neither a `postgres` nor a `nobody` user exists \
         to run it as; create a `postgres` system user or run as an ordinary user"
    )]
    NoUnprivilegedUser,

    /// Looking up a system user failed.
    #[error("looking up system user {user:?} failed: {source}")]
    UserLookup {
        /// The user looked up.
        user: &'static str,
        /// The system error.
        source: nix::Error,
    },

    /// A file system or process operation failed.
    #[error("{what} failed: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system error.
        source: io::Error,
    },

    /// `initdb` failed.
    #[error("initdb failed ({status}); its output ends with:\n{output_tail}")]
    Initdb {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its output.
        output_tail: String,
    },

    /// The server exited while starting.
    #[error(
        "the PostgreSQL server exited while starting ({status}); its log ends with:\n{log_tail}"
    )]
    ServerExited {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },

    /// The server did not accept a connection in time.
    #[error(
        "the PostgreSQL server on port {port} accepted no connection within {waited:?} (last \
         attempt: {last_error}); its log ends with:\n{log_tail}"
    )]
    StartTimeout {
        /// The port it was started on.
        port: u16,
        /// How long it was given.
        waited: Duration,
        /// Why the last connection attempt failed.
        last_error: String,
        /// The last lines of its log.
        log_tail: String,
    },
}

impl ClusterError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// How to run a throwaway cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Whether the server syncs its writes to disk. Off (the default) makes databases and
    /// migrations several times faster and loses nothing that matters: the data is deleted
    /// on stop anyway.
    pub fsync: bool,
}

/// How long a starting server has to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Cluster::stop`] waits for a fast shutdown before killing the server.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long dropping a [`Cluster`] waits (blocking its thread) before killing the server.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Tries with a fresh port when another process took the chosen one before the server bound it.
const PORT_ATTEMPTS: u32 = 3;
/// The superuser initdb creates.
const SUPERUSER: &str = "postgres";

/// A running throwaway PostgreSQL server. Dropping it stops the server (blocking for up to
/// a few seconds) and deletes its data.
pub struct Cluster {
    // Declared before `dir`: fields drop in order, and dropping `server` stops the server,
    // which must happen before its directory is deleted.
    server: Server,
    port: u16,
    password: String,
    bin_dir: PathBuf,
    options: ClusterOptions,
    run_as: Option<RunAs>,
    dir: TempDir,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("port", &self.port)
            .field("pid", &self.server.pid())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Creates a cluster in a new temporary directory and starts its server on a free port of
    /// 127.0.0.1, returning once it accepts connections.
    ///
    /// The binaries come from `PG_BIN_DIR`, else from the directory of `initdb` on `PATH`,
    /// else from the newest `/usr/lib/postgresql/<version>/bin`. When this process runs as
    /// root, PostgreSQL runs as the `postgres` user (or `nobody`), since it refuses root.
    pub async fn start(options: ClusterOptions) -> Result<Self, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new()
            .prefix("maintainpro-pg-")
            .tempdir()
            .map_err(ClusterError::io(
                "creating a temporary directory for the cluster",
            ))?;
        let password = Uuid::new_v4().simple().to_string();

        let init = {
            let bin_dir = bin_dir.clone();
            let root = dir.path().to_owned();
            let password = password.clone();
            tokio::task::spawn_blocking(move || initdb(&bin_dir, &root, run_as, &password))
        };
        init.await.map_err(|e| ClusterError::Io {
            what: "running initdb".to_owned(),
            source: io::Error::other(e),
        })??;

        let mut attempt = 1;
        loop {
            let port = free_port()?;
            let mut server = spawn_postgres(&bin_dir, dir.path(), port, options, run_as)?;
            match wait_until_ready(&mut server, dir.path(), port, &password).await {
                Ok(()) => {
                    tracing::info!(
                        port,
                        pid = server.pid(),
                        "throwaway PostgreSQL cluster started"
                    );
                    return Ok(Self {
                        server,
                        port,
                        password,
                        bin_dir,
                        options,
                        run_as,
                        dir,
                    });
                }
                Err(ClusterError::ServerExited { log_tail, .. })
                    if attempt < PORT_ATTEMPTS && log_tail.contains("could not bind") =>
                {
                    tracing::debug!(
                        port,
                        "port taken before the server bound it; trying another"
                    );
                    attempt += 1;
                }
                Err(error) => {
                    server.shutdown(STOP_GRACE).await;
                    return Err(error);
                }
            }
        }
    }

    /// The superuser's URL to database `postgres`. It holds the superuser's password, which
    /// is random per cluster.
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/postgres?sslmode=disable",
            self.password, self.port
        )
    }

    /// The TCP port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the server (the postmaster).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// The temporary directory holding the data directory, the socket and the server log;
    /// deleted when the cluster stops.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server with a fast shutdown (open sessions are ended) and starts it again on
    /// the same port with the same data, returning once it accepts connections: what clients
    /// see when a production database restarts.
    pub async fn restart(&mut self) -> Result<(), ClusterError> {
        self.server.shutdown(STOP_GRACE).await;
        self.server = spawn_postgres(
            &self.bin_dir,
            self.dir.path(),
            self.port,
            self.options,
            self.run_as,
        )?;
        wait_until_ready(&mut self.server, self.dir.path(), self.port, &self.password).await?;
        tracing::info!(
            port = self.port,
            pid = self.server.pid(),
            "throwaway PostgreSQL cluster restarted"
        );
        Ok(())
    }

    /// Stops the server with a fast shutdown (open sessions are ended), killing it if it has
    /// not exited within 10 s, and deletes its data.
    pub async fn stop(mut self) {
        self.server.shutdown(STOP_GRACE).await;
    }
}

fn initdb(
    bin_dir: &Path,
    root: &Path,
    run_as: Option<RunAs>,
    password: &str,
) -> Result<(), ClusterError> {
    let pwfile = root.join("superuser.pw");
    fs::write(&pwfile, password)
        .map_err(ClusterError::io("writing the superuser password file"))?;
    if let Some(ids) = run_as {
        for path in [root, pwfile.as_path()] {
            std::os::unix::fs::chown(path, Some(ids.uid), Some(ids.gid)).map_err(
                ClusterError::io(format!("handing {} to uid {}", path.display(), ids.uid)),
            )?;
        }
    }
    let mut command = Command::new(bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(root.join("data"))
        .args([
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        // The C locale exists everywhere; the host's default locale may not be installed.
        .args(["-E", "UTF8", "--locale=C", "--no-sync"])
        .stdin(Stdio::null());
    as_user(&mut command, run_as);
    let output = command.output().map_err(ClusterError::io(format!(
        "running {}",
        bin_dir.join("initdb").display()
    )))?;
    // The password now lives (hashed) in the cluster; the clear copy has no further use.
    if let Err(e) = fs::remove_file(&pwfile) {
        tracing::debug!(error = %e, "removing the superuser password file failed");
    }
    if output.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Err(ClusterError::Initdb {
            status: output.status,
            output_tail: last_lines(&text),
        })
    }
}

fn as_user(command: &mut Command, run_as: Option<RunAs>) {
    if let Some(ids) = run_as {
        command.uid(ids.uid).gid(ids.gid);
    }
}

/// A port that was free a moment ago. Another process may take it before the server binds
/// it; `start` then tries again with another.
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(ClusterError::io("finding a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(ClusterError::io("finding a free port on 127.0.0.1"))?
        .port();
    Ok(port)
}

fn spawn_postgres(
    bin_dir: &Path,
    root: &Path,
    port: u16,
    options: ClusterOptions,
    run_as: Option<RunAs>,
) -> Result<Server, ClusterError> {
    let log_path = log_path(root);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(ClusterError::io(format!("opening {}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(ClusterError::io(format!("opening {}", log_path.display())))?;
    let mut command = Command::new(bin_dir.join("postgres"));
    command
        .arg("-D")
        .arg(root.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        // The socket goes in the private directory, so it never collides with a system
        // server's socket and only this cluster's user can reach its trust-authenticated end.
        .arg("-k")
        .arg(root)
        .arg("-c")
        .arg(format!(
            "fsync={}",
            if options.fsync { "on" } else { "off" }
        ))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for the tests reaches the tests, and the
        // guardian then stops the server in order.
        .process_group(0);
    as_user(&mut command, run_as);
    Server::spawn(command, root)
}

fn log_path(root: &Path) -> PathBuf {
    root.join("server.log")
}

async fn wait_until_ready(
    server: &mut Server,
    root: &Path,
    port: u16,
    password: &str,
) -> Result<(), ClusterError> {
    let options = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(SUPERUSER)
        .password(password)
        .database("postgres")
        // The server has no TLS; a PGSSLMODE in the environment must not demand it.
        .ssl_mode(PgSslMode::Disable)
        .disable_statement_logging();
    let started = Instant::now();
    loop {
        if let Some(status) = server.exit_status() {
            return Err(ClusterError::ServerExited {
                status,
                log_tail: log_tail(root),
            });
        }
        let last_error = match tokio::time::timeout(
            Duration::from_secs(2),
            PgConnection::connect_with(&options),
        )
        .await
        {
            Ok(Ok(conn)) => {
                if let Err(e) = conn.close().await {
                    tracing::debug!(error = %e, "closing the readiness probe failed");
                }
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connection attempt timed out".to_owned(),
        };
        if started.elapsed() >= START_TIMEOUT {
            return Err(ClusterError::StartTimeout {
                port,
                waited: START_TIMEOUT,
                last_error,
                log_tail: log_tail(root),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(root: &Path) -> String {
    match fs::read(log_path(root)) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes)),
        Err(e) => format!("(server log unreadable: {e})"),
    }
}

/// The last lines of `text`, enough to show why a server or initdb failed.
fn last_lines(text: &str) -> String {
    const LINES: usize = 25;
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        let text: String = (1..=40).map(|i| format!("line {i}\n")).collect();
        let tail = last_lines(&text);
        assert!(tail.starts_with("line 16\n"), "{tail}");
        assert!(tail.ends_with("line 40"), "{tail}");
        assert_eq!(last_lines("only"), "only");
        assert_eq!(last_lines(""), "");
    }

    #[test]
    fn missing_binaries_say_what_to_install() {
        let message = ClusterError::BinariesMissing {
            looked_in: "PATH".to_owned(),
        }
        .to_string();
        assert!(
            message.contains(
                "install the PostgreSQL server binaries, e.g. `apt-get install postgresql` on \
                 Debian/Ubuntu, or set PG_BIN_DIR"
            ),
            "{message}"
        );
    }
}
