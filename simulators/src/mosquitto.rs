//! A private Mosquitto broker for tests and benchmarks that must take the broker away: it
//! listens on a free port of 127.0.0.1, persists its sessions in a directory of the caller's,
//! and can be stopped gracefully and started again on the same port with those sessions.
//!
//! [`PrivateBroker::start_with_accounts`] runs it with Mosquitto's dynamic-security plugin, as
//! a plant whose gateways log in with API keys runs it (docs/GATEWAY.md), and
//! [`PrivateBroker::dynsec`] runs `mosquitto_ctrl dynsec` commands against it.
//!
//! Needs the `mosquitto` binary (on `PATH` or in `/usr/sbin`) and, for accounts, its plugin and
//! `mosquitto_ctrl` (same package); `scripts/test.sh` installs it.

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
    #[error(
        "mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed under /usr/lib"
    )]
    NoPlugin,
    #[error("mosquitto_ctrl {args}: {output}")]
    Ctrl { args: String, output: String },
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
    /// The dynamic-security plugin's admin login, when the broker runs it.
    admin: Option<(String, String)>,
}

impl PrivateBroker {
    /// Starts a broker whose configuration and persistence live under `dir`.
    pub fn start(dir: &Path) -> Result<Self, BrokerError> {
        Self::start_with(dir, "")
    }

    /// As [`PrivateBroker::start`], with `extra` lines appended to its configuration (more
    /// listeners, TLS files).
    pub fn start_with(dir: &Path, extra: &str) -> Result<Self, BrokerError> {
        Self::launch(dir, "allow_anonymous true\n", extra, None)
    }

    /// A broker whose accounts and ACLs the dynamic-security plugin keeps, in
    /// `<dir>/mosquitto/dynamic-security.json`, made by `mosquitto_ctrl dynsec init` with the
    /// admin login `admin` (user, password). Anonymous clients are refused.
    pub fn start_with_accounts(dir: &Path, admin: (&str, &str)) -> Result<Self, BrokerError> {
        let plugin = dynsec_plugin().ok_or(BrokerError::NoPlugin)?;
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).map_err(io_error("creating the persistence directory"))?;
        let store = data.join("dynamic-security.json");
        let output = Command::new(ctrl_binary())
            .args(["dynsec", "init"])
            .arg(&store)
            .args([admin.0, admin.1])
            .output()
            .map_err(io_error("running mosquitto_ctrl"))?;
        if !output.status.success() {
            return Err(BrokerError::Ctrl {
                args: "dynsec init".to_owned(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        #[cfg(unix)]
        {
            // Mosquitto started as root reads and rewrites the store as its own user.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o666))
                .map_err(io_error("opening the account store to the broker"))?;
        }
        Self::launch(
            dir,
            "allow_anonymous false\n",
            &format!(
                "plugin {}\nplugin_opt_config_file {}\n",
                plugin.display(),
                store.display()
            ),
            Some((admin.0.to_owned(), admin.1.to_owned())),
        )
    }

    /// Runs `mosquitto_ctrl dynsec <args>` against this broker as the plugin's admin; answers
    /// what it printed.
    pub fn dynsec(&self, args: &[&str]) -> Result<String, BrokerError> {
        let (user, password) = self.admin.as_ref().ok_or(BrokerError::Ctrl {
            args: args.join(" "),
            output: "this broker runs without the dynamic-security plugin".to_owned(),
        })?;
        let output = Command::new(ctrl_binary())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-u", user, "-P", password, "dynsec"])
            .args(args)
            .output()
            .map_err(io_error("running mosquitto_ctrl"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // mosquitto_ctrl exits 0 on some refusals; its and the plugin's refusals are lines
        // that start with "Error".
        if !output.status.success() || text.lines().any(|l| l.starts_with("Error")) {
            return Err(BrokerError::Ctrl {
                args: args.join(" "),
                output: text,
            });
        }
        Ok(text)
    }

    fn launch(
        dir: &Path,
        anonymous: &str,
        extra: &str,
        admin: Option<(String, String)>,
    ) -> Result<Self, BrokerError> {
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
                "listener {port} 127.0.0.1\n{anonymous}persistence true\npersistence_location {}/\n{extra}",
                data.display()
            ),
        )
        .map_err(io_error("writing mosquitto.conf"))?;
        let mut broker = Self {
            binary,
            conf,
            child: None,
            port,
            admin,
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

/// `mosquitto_ctrl` on `PATH`, else where Debian puts it.
fn ctrl_binary() -> PathBuf {
    let on_path = Command::new("mosquitto_ctrl")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    PathBuf::from(if on_path {
        "mosquitto_ctrl"
    } else {
        "/usr/bin/mosquitto_ctrl"
    })
}

/// The dynamic-security plugin: in `/usr/lib` or a multiarch folder of it.
fn dynsec_plugin() -> Option<PathBuf> {
    const NAME: &str = "mosquitto_dynamic_security.so";
    let top = Path::new("/usr/lib");
    std::iter::once(top.join(NAME))
        .chain(
            std::fs::read_dir(top)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join(NAME)),
        )
        .find(|path| path.is_file())
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
