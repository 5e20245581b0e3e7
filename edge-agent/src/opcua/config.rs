//! `[[opcua]]`: an OPC-UA server the agent reads, how it connects, and its tags.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use model::TagName;
use model::settings::{Report, Secret};
use serde::Deserialize;

use crate::config::{Conversion, validate_conversion};

/// The shortest publishing, sampling or poll interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// The largest monitored-item queue accepted.
pub const MAX_QUEUE_SIZE: u32 = 10_000;

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn default_pki_dir() -> PathBuf {
    PathBuf::from("opcua-pki")
}

/// Default publishing and poll interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default keep-alive count of a subscription.
pub const DEFAULT_KEEP_ALIVE_COUNT: u32 = 10;
/// Default heartbeat of tags without a deadband: a subscription reports only changes, and a
/// polled steady value is not sent again each poll, so a steady value is repeated this often.
pub const STEADY_HEARTBEAT: Duration = Duration::from_secs(60);
/// The longest publishing, sampling or poll interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest watchdog bound accepted.
pub const MAX_WATCHDOG: Duration = Duration::from_secs(86_400);
/// The longest request timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

fn default_scale() -> f64 {
    1.0
}

/// How the agent learns a tag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A subscription with one monitored item per tag: the server samples and reports changes.
    #[default]
    Subscribe,
    /// Read every tag on `poll_interval`, for servers whose subscriptions cannot be trusted.
    Poll,
}

/// The security policy of the secure channel. The deprecated `Basic128Rsa15` and `Basic256`
/// are not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SecurityPolicy {
    #[default]
    None,
    Basic256Sha256,
    #[serde(rename = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    /// The policy's name as OPC-UA writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
        }
    }
}

/// Whether messages are signed, or signed and encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SecurityMode {
    #[default]
    None,
    Sign,
    SignAndEncrypt,
}

/// One OPC-UA server and what to read from it.
#[derive(Debug, Clone, Deserialize)]
pub struct OpcUaSourceConfig {
    /// Names the source in logs and metrics; unique among `[[opcua]]` sources.
    pub name: String,
    /// `opc.tcp://host:port[/path]` of the server's endpoint.
    pub endpoint: String,
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    #[serde(default)]
    pub security_mode: SecurityMode,
    /// The client's certificate store: its own certificate and key, trusted and rejected
    /// server certificates. Created if missing.
    #[serde(default = "default_pki_dir")]
    pub pki_dir: PathBuf,
    /// The client's application instance certificate (`.der` or `.pem`) and private key
    /// (`.pem`), absolute or relative to `pki_dir`. Without them, a self-signed pair is
    /// created in `pki_dir` (`own/cert.der`, `private/private.pem`) on the first start.
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// Accept whatever certificate the server presents. Off by default: the server's
    /// certificate must then be in `<pki_dir>/trusted`; an unknown one lands in
    /// `<pki_dir>/rejected`, from where an operator moves it after checking it. A
    /// certificate left in `rejected` stays rejected even with this on.
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// The application URI the client presents; default `urn:maintainpro:edge:<gateway>`.
    pub application_uri: Option<String>,
    /// User name authentication; anonymous without it.
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default)]
    pub mode: Mode,
    /// `subscribe`: how often the server sends what changed (default 1 s).
    #[serde(default, with = "humantime_serde")]
    pub publishing_interval: Option<Duration>,
    /// `subscribe`: publishing intervals without data after which the server sends a
    /// keep-alive (default 10).
    pub keep_alive_count: Option<u32>,
    /// `subscribe`: rebuild the subscription when it delivered neither data nor a keep-alive
    /// for this long. Default: three keep-alive periods, and at least 5 s.
    #[serde(default, with = "humantime_serde")]
    pub watchdog: Option<Duration>,
    /// `poll`: how often every tag is read (default 1 s).
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// How long a request may take before the server counts as unreachable.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub tag: Vec<OpcUaTagConfig>,
}

/// One OPC-UA variable read as a tag.
#[derive(Debug, Clone, Deserialize)]
pub struct OpcUaTagConfig {
    pub name: TagName,
    /// The variable's node id in OPC-UA text form: `ns=2;s=Oven.Temperature`, `ns=3;i=1001`.
    pub node: String,
    /// `subscribe`: how often the server samples the variable; default the publishing
    /// interval.
    #[serde(default, with = "humantime_serde")]
    pub sampling_interval: Option<Duration>,
    /// `subscribe`: samples the server keeps between two publishes; default enough for one
    /// publishing interval, so no sample is lost between them.
    pub queue_size: Option<u32>,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub raw_min: Option<f64>,
    pub raw_max: Option<f64>,
    pub eng_min: Option<f64>,
    pub eng_max: Option<f64>,
    /// Report by exception, in engineering units. With `subscribe` it is also sent to the
    /// server as an absolute data-change deadband (on the raw value, so only without scaling).
    pub deadband: Option<f64>,
    /// With a deadband: forward at least this often (default 60 s). Tags without a deadband
    /// repeat a steady value every 60 s as well.
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    pub unit: Option<String>,
}

impl OpcUaTagConfig {
    /// The scaling and deadband keys as configured.
    pub fn conversion(&self) -> Conversion {
        Conversion {
            scale: self.scale,
            offset: self.offset,
            raw_min: self.raw_min,
            raw_max: self.raw_max,
            eng_min: self.eng_min,
            eng_max: self.eng_max,
            deadband: self.deadband,
            heartbeat: self.heartbeat,
        }
    }

    /// The sampling interval asked of the server.
    pub fn sampling_interval(&self, source: &OpcUaSourceConfig) -> Duration {
        self.sampling_interval
            .unwrap_or_else(|| source.publishing_interval())
    }

    /// The monitored item's queue: as asked, or one publishing interval's samples.
    pub fn queue_size(&self, source: &OpcUaSourceConfig) -> u32 {
        self.queue_size.unwrap_or_else(|| {
            let sampling = self.sampling_interval(source).as_secs_f64();
            let per_publish = (source.publishing_interval().as_secs_f64() / sampling).ceil();
            // Bounded by validation: both intervals are at least MIN_INTERVAL.
            (per_publish as u32).clamp(1, MAX_QUEUE_SIZE)
        })
    }

    /// The deadband the server applies, when it can: only an unscaled value's deadband
    /// means the same thing on the server's side (and a deadband of 0 asks nothing of it).
    pub fn server_deadband(&self) -> Option<f64> {
        let c = self.conversion();
        let unscaled = c.scale == 1.0 && c.offset == 0.0 && c.raw_min.is_none();
        self.deadband.filter(|band| unscaled && *band > 0.0)
    }
}

impl OpcUaSourceConfig {
    /// The application URI the client presents to the server.
    pub fn application_uri(&self, gateway: &model::GatewayId) -> String {
        self.application_uri
            .clone()
            .unwrap_or_else(|| format!("urn:maintainpro:edge:{gateway}"))
    }

    pub fn publishing_interval(&self) -> Duration {
        self.publishing_interval.unwrap_or(DEFAULT_INTERVAL)
    }

    pub fn keep_alive_count(&self) -> u32 {
        self.keep_alive_count.unwrap_or(DEFAULT_KEEP_ALIVE_COUNT)
    }

    pub fn poll_interval(&self) -> Duration {
        self.poll_interval.unwrap_or(DEFAULT_INTERVAL)
    }

    /// The longest a healthy subscription stays silent: one keep-alive period.
    fn keep_alive_period(&self) -> Duration {
        self.publishing_interval()
            .saturating_mul(self.keep_alive_count().max(1))
    }

    /// How long the subscription may stay silent before it is rebuilt.
    pub fn watchdog(&self) -> Duration {
        self.watchdog.unwrap_or_else(|| {
            self.keep_alive_period()
                .saturating_mul(3)
                .max(Duration::from_secs(5))
        })
    }

    /// A certificate or key file as the client reads it: relative paths start at `pki_dir`.
    pub fn pki_path(&self, file: &std::path::Path) -> PathBuf {
        self.pki_dir.join(file)
    }

    /// The tag's report-by-exception keys as the source applies them: a tag without a
    /// deadband forwards every change and repeats a steady value every
    /// [`STEADY_HEARTBEAT`].
    pub fn effective_conversion(&self, tag: &OpcUaTagConfig) -> Conversion {
        let mut c = tag.conversion();
        if c.deadband.is_none() {
            c.deadband = Some(0.0);
            c.heartbeat = Some(STEADY_HEARTBEAT);
        }
        c
    }

    pub fn validate(&self, at: &str, names: &mut HashSet<String>, report: &mut Report) {
        crate::config::validate_source_name(at, &self.name, names, report);
        if let Err(e) = endpoint_host_port(&self.endpoint) {
            report.error(format!("{at}.endpoint"), e);
        }
        match (self.security_policy, self.security_mode) {
            (SecurityPolicy::None, SecurityMode::None) => {}
            (SecurityPolicy::None, _) => report.error(
                format!("{at}.security_policy"),
                "security_mode signs messages, which needs a policy: Basic256Sha256, \
                 Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss",
            ),
            (_, SecurityMode::None) => report.error(
                format!("{at}.security_mode"),
                "a security policy needs security_mode = \"Sign\" or \"SignAndEncrypt\"",
            ),
            _ => {}
        }
        match (&self.certificate_file, &self.private_key_file) {
            (Some(_), None) => report.error(
                format!("{at}.private_key_file"),
                "certificate_file needs its private key too (both or neither)",
            ),
            (None, Some(_)) => report.error(
                format!("{at}.certificate_file"),
                "private_key_file needs its certificate too (both or neither)",
            ),
            _ => {}
        }
        for (key, file, extensions) in [
            (
                "certificate_file",
                &self.certificate_file,
                &["der", "pem"][..],
            ),
            ("private_key_file", &self.private_key_file, &["pem"][..]),
        ] {
            let Some(path) = file else { continue };
            let full = self.pki_path(path);
            if !full.is_file() {
                report.error(
                    format!("{at}.{key}"),
                    format!(
                        "{} is not a readable file (a relative path starts at pki_dir)",
                        full.display()
                    ),
                );
            }
            let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !extensions.contains(&extension) {
                report.error(
                    format!("{at}.{key}"),
                    format!("must end in .{}", extensions.join(" or .")),
                );
            }
        }
        match (&self.username, &self.password) {
            (Some(u), _) if u.is_empty() => {
                report.error(format!("{at}.username"), "must not be empty")
            }
            (Some(_), None) => report.error(
                format!("{at}.password"),
                "user name authentication needs a password",
            ),
            (None, Some(_)) => {
                report.error(format!("{at}.password"), "a password needs a username")
            }
            _ => {}
        }
        for (key, interval) in [
            ("publishing_interval", self.publishing_interval),
            ("poll_interval", self.poll_interval),
        ] {
            if interval.is_some_and(|i| i < MIN_INTERVAL || i > MAX_INTERVAL) {
                report.error(format!("{at}.{key}"), "must be from 50ms to 1h");
            }
        }
        let other_mode = [
            (
                "publishing_interval",
                self.publishing_interval.is_some(),
                Mode::Subscribe,
            ),
            (
                "keep_alive_count",
                self.keep_alive_count.is_some(),
                Mode::Subscribe,
            ),
            ("watchdog", self.watchdog.is_some(), Mode::Subscribe),
            ("poll_interval", self.poll_interval.is_some(), Mode::Poll),
        ];
        for (key, set, mode) in other_mode {
            if set && self.mode != mode {
                let name = match mode {
                    Mode::Subscribe => "subscribe",
                    Mode::Poll => "poll",
                };
                report.error(
                    format!("{at}.{key}"),
                    format!("applies only with mode = \"{name}\""),
                );
            }
        }
        if self
            .keep_alive_count
            .is_some_and(|k| !(1..=1000).contains(&k))
        {
            report.error(format!("{at}.keep_alive_count"), "must be 1-1000");
        }
        if self.watchdog.is_some_and(|w| w > MAX_WATCHDOG) {
            report.error(format!("{at}.watchdog"), "must be at most 24h");
        } else if let Some(w) = self.watchdog
            && w <= self.keep_alive_period()
        {
            report.error(
                format!("{at}.watchdog"),
                "must be longer than publishing_interval * keep_alive_count, or every quiet \
                 subscription would be rebuilt",
            );
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > MAX_TIMEOUT {
            report.error(format!("{at}.timeout"), "must be from 100ms to 10m");
        }
        if self.tag.is_empty() {
            report.error(
                format!("{at}.tag"),
                "reads nothing: add [[opcua.tag]] entries",
            );
        }
        for (i, t) in self.tag.iter().enumerate() {
            t.validate(&format!("{at}.tag[{i}]"), self, report);
        }
    }
}

impl OpcUaTagConfig {
    fn validate(&self, at: &str, source: &OpcUaSourceConfig, report: &mut Report) {
        if let Err(e) = opcua::types::NodeId::from_str(&self.node) {
            report.error(
                format!("{at}.node"),
                format!(
                    "{:?} is not a node id ({e}); write it as ns=<index>;s=<name> or \
                     ns=<index>;i=<number>",
                    self.node
                ),
            );
        }
        let subscription_only = [
            ("sampling_interval", self.sampling_interval.is_some()),
            ("queue_size", self.queue_size.is_some()),
        ];
        for (key, set) in subscription_only {
            if set && source.mode == Mode::Poll {
                report.error(
                    format!("{at}.{key}"),
                    "applies only with mode = \"subscribe\"",
                );
            }
        }
        if self
            .sampling_interval
            .is_some_and(|s| s < MIN_INTERVAL || s > MAX_INTERVAL)
        {
            report.error(format!("{at}.sampling_interval"), "must be from 50ms to 1h");
        }
        if self
            .queue_size
            .is_some_and(|q| q == 0 || q > MAX_QUEUE_SIZE)
        {
            report.error(
                format!("{at}.queue_size"),
                format!("must be 1-{MAX_QUEUE_SIZE}"),
            );
        }
        validate_conversion(at, &self.conversion(), None, true, report);
    }
}

/// The host and port of an `opc.tcp://host:port[/path]` URL (port 4840 when left out).
pub fn endpoint_host_port(endpoint: &str) -> Result<(String, u16), String> {
    let hint = "write it as opc.tcp://host:port, e.g. opc.tcp://192.168.1.30:4840";
    let Some(rest) = endpoint.strip_prefix("opc.tcp://") else {
        return Err(format!("{endpoint:?} is not an opc.tcp:// URL; {hint}"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (host, port.strip_prefix(':').map(str::to_owned)),
            None => {
                return Err(format!(
                    "{endpoint:?} has an unclosed [ in its host; {hint}"
                ));
            }
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.to_owned())),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{endpoint:?} names no host; {hint}"));
    }
    let port = match port {
        None => 4840,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{endpoint:?} has no valid port; {hint}"))?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_give_host_and_port() {
        assert_eq!(
            endpoint_host_port("opc.tcp://10.0.0.5:4841/UA/Server"),
            Ok(("10.0.0.5".into(), 4841))
        );
        assert_eq!(
            endpoint_host_port("opc.tcp://plc-7"),
            Ok(("plc-7".into(), 4840))
        );
        assert_eq!(
            endpoint_host_port("opc.tcp://[::1]:4850/"),
            Ok(("::1".into(), 4850))
        );
        for bad in [
            "http://h:1",
            "opc.tcp://:4840",
            "opc.tcp://h:0",
            "opc.tcp://h:x",
            "opc.tcp://[::1",
        ] {
            assert!(endpoint_host_port(bad).is_err(), "{bad}");
        }
    }
}
