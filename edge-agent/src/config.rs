//! The edge agent's configuration file.
//!
//! ```toml
//! [gateway]
//! tenant = "0b7e4a6e-..."        # the tenant's UUID, from the CMMS
//! id = "line-1-gw"               # this gateway's id within the tenant
//!
//! [uplink]
//! broker = "mqtt://127.0.0.1:1883"
//! client_id = "edge-line-1-gw"   # default: "edge-<gateway id>"
//! batch_max_readings = 1000      # publish when this many readings wait ...
//! batch_max_age = "1s"           # ... or when the oldest has waited this long
//! buffer_max_readings = 100000   # readings in memory waiting to be sealed into a batch
//! max_in_flight = 16             # batches published but not yet acknowledged
//!
//! [outbox]
//! dir = "/var/lib/maintainpro-edge/outbox"
//! max_bytes = 268435456          # bound on disk; beyond, the oldest batches are dropped and counted
//! segment_bytes = 8388608
//! fsync = "always"               # always | interval | never
//! fsync_interval = "1s"          # with fsync = "interval"
//! replay_batches_per_second = 50 # backlog replay rate after an outage, on top of live data
//!
//! [[device]]
//! name = "press-1"
//! protocol = "modbus-tcp"
//! address = "127.0.0.1:5020"
//! unit_id = 1
//! poll_interval = "1s"
//! timeout = "1s"
//!
//! [[device.tag]]
//! name = "press-1.bearing_temp"
//! table = "holding"              # holding | input | coil | discrete
//! address = 0
//! data_type = "f32"              # bool u16 i16 u32 i32 f32 u64 i64 f64
//! byte_order = "ABCD"            # ABCD | CDAB | BADC | DCBA
//! scale = 1.0                    # engineering value = raw * scale + offset
//! offset = 0.0
//! unit = "degC"
//! ```
//!
//! Every key outside the `[[device]]` lists can be overridden by an environment variable:
//! `EDGE_AGENT_UPLINK__BROKER`, `EDGE_AGENT_UPLINK__PASSWORD`.

use std::collections::HashSet;
use std::time::Duration;

use model::settings::{self, ConfigErrors, Report, Secret, Validate};
use model::{GatewayId, TagName, TenantId};
use serde::Deserialize;

use crate::modbus::decode::{ByteOrder, DataType};
use crate::outbox::OutboxConfig;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "EDGE_AGENT_";

#[derive(Debug, Clone, Deserialize)]
pub struct AgentConfig {
    pub gateway: GatewaySection,
    pub uplink: UplinkConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub device: Vec<DeviceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySection {
    pub tenant: TenantId,
    pub id: GatewayId,
}

fn default_batch_max_readings() -> usize {
    1000
}
fn default_batch_max_age() -> Duration {
    Duration::from_secs(1)
}
fn default_buffer_max_readings() -> usize {
    100_000
}
fn default_max_in_flight() -> usize {
    16
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unit_id() -> u8 {
    1
}
fn default_max_gap() -> u16 {
    8
}
fn default_scale() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
pub struct UplinkConfig {
    /// `mqtt://host:port`.
    pub broker: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(default = "default_batch_max_readings")]
    pub batch_max_readings: usize,
    #[serde(default = "default_batch_max_age", with = "humantime_serde")]
    pub batch_max_age: Duration,
    /// Readings held in memory before they are sealed into a batch in the outbox (normally at
    /// most one batch; more only while the outbox cannot be written). Beyond it the oldest are
    /// dropped and counted.
    #[serde(default = "default_buffer_max_readings")]
    pub buffer_max_readings: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    ModbusTcp,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceConfig {
    pub name: String,
    pub protocol: Protocol,
    /// `host:port` of the Modbus TCP server.
    pub address: String,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Registers that may be read in between two tags to merge their requests.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    #[serde(default)]
    pub tag: Vec<TagConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TagConfig {
    pub name: TagName,
    pub table: Table,
    pub address: u16,
    pub data_type: DataType,
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// For `bool` tags in a register table: which bit (0 = least significant).
    pub bit: Option<u8>,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub unit: Option<String>,
}

impl TagConfig {
    /// How many registers (or bits) the tag spans.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.registers()
        }
    }
}

impl AgentConfig {
    /// Reads a configuration from its text and the process environment.
    pub fn from_toml(source_name: &str, text: &str) -> Result<Self, ConfigErrors> {
        Self::from_toml_with_env(source_name, text, std::env::vars())
    }

    pub fn from_toml_with_env(
        source_name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigErrors> {
        settings::load(source_name, text, ENV_PREFIX, env)
    }

    pub fn client_id(&self) -> String {
        self.uplink
            .client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{}", self.gateway.id))
    }

    pub fn tag_count(&self) -> usize {
        self.device.iter().map(|d| d.tag.len()).sum()
    }
}

/// Splits `mqtt://host:port` (port defaults to 1883).
pub fn parse_broker_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("{url:?} must start with mqtt:// (TLS arrives with mqtts://)"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url:?} has an invalid port {p:?}"))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    Ok((host.to_owned(), port))
}

impl Validate for AgentConfig {
    fn validate(&self, report: &mut Report) {
        if let Err(e) = parse_broker_url(&self.uplink.broker) {
            report.error("uplink.broker", e);
        }
        let u = &self.uplink;
        if u.batch_max_readings == 0 || u.batch_max_readings > model::wire::MAX_POINTS {
            report.error(
                "uplink.batch_max_readings",
                format!("must be between 1 and {}", model::wire::MAX_POINTS),
            );
        }
        if u.buffer_max_readings < u.batch_max_readings {
            report.error(
                "uplink.buffer_max_readings",
                "must be at least uplink.batch_max_readings",
            );
        }
        self.outbox.validate(report);
        if u.max_in_flight < 2 || u.max_in_flight > 1000 {
            report.error("uplink.max_in_flight", "must be between 2 and 1000");
        }
        if u.batch_max_age < Duration::from_millis(10) {
            report.error("uplink.batch_max_age", "must be at least 10ms");
        }
        let mut device_names = HashSet::new();
        let mut tag_names = HashSet::new();
        for (i, d) in self.device.iter().enumerate() {
            let at = format!("device[{i}]");
            if !device_names.insert(d.name.as_str()) {
                report.error(
                    format!("{at}.name"),
                    format!("device name {:?} is used twice", d.name),
                );
            }
            if d.address.parse::<std::net::SocketAddr>().is_err()
                && d.address
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
            {
                report.error(
                    format!("{at}.address"),
                    format!("{:?} is not host:port (e.g. 192.168.1.20:502)", d.address),
                );
            }
            if d.poll_interval < Duration::from_millis(10) {
                report.error(format!("{at}.poll_interval"), "must be at least 10ms");
            }
            if d.timeout.is_zero() {
                report.error(format!("{at}.timeout"), "must be greater than 0");
            }
            for (j, t) in d.tag.iter().enumerate() {
                let at = format!("{at}.tag[{j}]");
                if !tag_names.insert(t.name.as_str()) {
                    report.error(
                        format!("{at}.name"),
                        format!(
                            "tag name {:?} is used twice in this gateway",
                            t.name.as_str()
                        ),
                    );
                }
                if t.table.is_bits() && t.data_type != DataType::Bool {
                    report.error(
                        format!("{at}.data_type"),
                        format!(
                            "{:?} tables hold single bits; use data_type = \"bool\"",
                            t.table
                        ),
                    );
                }
                if t.bit.is_some() && (t.table.is_bits() || t.data_type != DataType::Bool) {
                    report.error(
                        format!("{at}.bit"),
                        "bit selects one bit of a register; use it only with data_type = \"bool\" in a holding or input table",
                    );
                }
                if t.bit.is_some_and(|b| b > 15) {
                    report.error(format!("{at}.bit"), "must be 0-15");
                }
                if !t.table.is_bits() && t.data_type == DataType::Bool && t.bit.is_none() {
                    report.error(
                        format!("{at}.bit"),
                        "a bool tag in a register table needs `bit` (0-15)",
                    );
                }
                if u32::from(t.address) + u32::from(t.width()) > 65536 {
                    report.error(format!("{at}.address"), "the tag runs past address 65535");
                }
                if !t.scale.is_finite() || t.scale == 0.0 || !t.offset.is_finite() {
                    report.error(
                        format!("{at}.scale"),
                        "scale must be finite and non-zero, offset finite",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
tenant = "8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11"
id = "gw-1"

[uplink]
broker = "mqtt://127.0.0.1:1883"

[[device]]
name = "press-1"
protocol = "modbus-tcp"
address = "127.0.0.1:5020"

[[device.tag]]
name = "press-1.temp"
table = "holding"
address = 0
data_type = "f32"
"#;

    fn load(text: &str) -> Result<AgentConfig, ConfigErrors> {
        AgentConfig::from_toml_with_env("agent.toml", text, Vec::new())
    }

    #[test]
    fn defaults_fill_the_rest() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.client_id(), "edge-gw-1");
        assert_eq!(c.uplink.batch_max_age, Duration::from_secs(1));
        assert_eq!(c.device[0].tag[0].byte_order, ByteOrder::Abcd);
        assert_eq!(c.device[0].unit_id, 1);
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = GOOD
            .replace("mqtt://127.0.0.1:1883", "tcp://x")
            .replace(
                "data_type = \"f32\"",
                "data_type = \"f32\"\nbit = 3\nscael = 2",
            )
            .replace("address = \"127.0.0.1:5020\"", "address = \"nowhere\"");
        let err = load(&text).unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "uplink.broker",
            "device[0].address",
            "device[0].tag[0].bit",
            "device[0].tag[0].scael",
        ] {
            assert!(paths.contains(&want), "missing {want} in {err}");
        }
    }

    #[test]
    fn a_bad_type_names_the_key() {
        let err = load(&GOOD.replace("address = 0", "address = -4")).unwrap_err();
        assert!(err.errors[0].path.contains("address"), "{err}");
        let err = load(&GOOD.replace("gw-1", "gw/1")).unwrap_err();
        assert_eq!(err.errors[0].path, "gateway.id", "{err}");
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    #[test]
    fn environment_overrides_the_broker() {
        let env = vec![(
            "EDGE_AGENT_UPLINK__BROKER".to_string(),
            "mqtt://10.0.0.5".to_string(),
        )];
        let c = AgentConfig::from_toml_with_env("agent.toml", GOOD, env).unwrap();
        assert_eq!(
            parse_broker_url(&c.uplink.broker),
            Ok(("10.0.0.5".into(), 1883))
        );
    }
}
