//! A private Mosquitto broker for tests and benchmarks that must take the broker away: it
//! listens on a free port of 127.0.0.1, persists its sessions in a directory of the caller's,
//! and can be stopped gracefully and started again on the same port with those sessions.
//!
//! Needs the `mosquitto` binary (on `PATH` or in `/usr/sbin`); `scripts/test.sh` installs it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a starting broker has to accept a connection.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the broker could not be run.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("mosquitto is not installed (looked on PATH and in /usr/sbin): run scripts/test.sh")]
    NotInstalled,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("mosquitto did not accept connections on port {0} within 5 s")]
    NotListening(u16),
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> BrokerError {
    move |source| BrokerError::Io { what, source }
}

/// A running (or paused) private Mosquitto. Dropping it kills the process.
#[derive(Debug)]
pub struct PrivateBroker {
    binary: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    port: u16,
}

impl PrivateBroker {
    /// Starts a broker whose configuration and persistence live under `dir`.
    pub fn start(dir: &Path) -> Result<Self, BrokerError> {
        Self::start_with(dir, "")
    }

    /// As [`PrivateBroker::start`], with `extra` lines appended to its configuration (more
    /// listeners, TLS files).
    pub fn start_with(dir: &Path, extra: &str) -> Result<Self, BrokerError> {
        let binary = ["mosquitto", "/usr/sbin/mosquitto"]
            .iter()
            .map(PathBuf::from)
            .find(|p| {
                Command::new(p)
                    .arg("-h")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .ok_or(BrokerError::NotInstalled)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_error("finding a free port"))?
            .port();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).map_err(io_error("creating the persistence directory"))?;
        #[cfg(unix)]
        {
            // Mosquitto started as root drops to its own user, which must reach the directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777))
                .map_err(io_error("opening the persistence directory to the broker"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(io_error("opening the directory to the broker"))?;
        }
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n{extra}",
                data.display()
            ),
        )
        .map_err(io_error("writing mosquitto.conf"))?;
        let mut broker = Self {
            binary,
            conf,
            child: None,
            port,
        };
        broker.resume()?;
        Ok(broker)
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts the broker again after [`PrivateBroker::pause`], on the same port.
    pub fn resume(&mut self) -> Result<(), BrokerError> {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("starting mosquitto"))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(BrokerError::NotListening(self.port))
    }

    /// Stops the broker with SIGTERM, so that it saves its persistent sessions, and waits for
    /// it to exit.
    pub fn pause(&mut self) -> Result<(), BrokerError> {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).map_err(|_| BrokerError::Io {
                what: "signalling mosquitto",
                source: io::Error::other("process id out of range"),
            })?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .map_err(|e| BrokerError::Io {
                what: "signalling mosquitto",
                source: io::Error::from(e),
            })?;
            child
                .wait()
                .map_err(io_error("waiting for mosquitto to stop"))?;
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
