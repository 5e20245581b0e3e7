//! The edge agent's configuration file.
//!
//! ```toml
//! [gateway]
//! tenant = "0b7e4a6e-..."        # the tenant's UUID, from the CMMS
//! id = "line-1-gw"               # this gateway's id within the tenant
//!
//! [uplink]
//! broker = "mqtt://127.0.0.1:1883"   # or mqtts://host:8883 for MQTT over TLS, with:
//! # ca_file = "/etc/maintainpro/tls/ca.pem"            # default: the platform's roots
//! # client_cert_file = "/etc/maintainpro/tls/gateway.pem"
//! # client_key_file = "/etc/maintainpro/tls/gateway.key"
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
//! [metrics]
//! listen = "127.0.0.1:9465"      # Prometheus text at http://127.0.0.1:9465/metrics (default: none)
//!
//! [[device]]
//! name = "press-1"
//! protocol = "modbus-tcp"        # modbus-tcp | modbus-rtu-over-tcp | modbus-rtu
//! address = "127.0.0.1:5020"     # host:port; modbus-rtu takes `device` and `baud_rate` instead
//! unit_id = 1
//! poll_interval = "1s"
//! timeout = "1s"
//! retries = 2                    # per request, after a timeout or a transport error
//! retry_backoff = "100ms"        # before the first retry, doubling after each
//! request_pause = "0ms"          # between two requests to this device
//!
//! [[device.tag]]
//! name = "press-1.bearing_temp"
//! table = "holding"              # holding | input | coil | discrete
//! address = 0
//! data_type = "f32"              # bool u16 i16 u32 i32 f32 u64 i64 f64 string
//! byte_order = "ABCD"            # ABCD | CDAB | BADC | DCBA
//! scale = 1.0                    # engineering value = raw * scale + offset ...
//! offset = 0.0                   # ... or raw_min, raw_max, eng_min, eng_max
//! deadband = 0.5                 # report by exception; heartbeat = "60s" by default
//! unit = "degC"
//!
//! [[device]]
//! name = "meter-3"
//! protocol = "modbus-rtu"        # devices with the same `device` share the serial line
//! device = "/dev/ttyUSB0"
//! baud_rate = 19200
//! parity = "even"                # none | even | odd
//! unit_id = 3
//! ```
//!
//! Every key outside the `[[device]]` lists can be overridden by an environment variable:
//! `EDGE_AGENT_UPLINK__BROKER`, `EDGE_AGENT_UPLINK__PASSWORD`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use model::settings::{self, ConfigErrors, Report, Secret, Validate};
use model::{GatewayId, TagName, TenantId};
use serde::Deserialize;

use crate::exception::Deadband;
use crate::modbus::decode::{ByteOrder, DataType, Scaling};
use crate::modbus::plan::MAX_REGISTERS;
pub use crate::mqtt::config::{JsonMapping, MqttSourceConfig, SparkplugSubscription};
pub use crate::opcua::config::{OpcUaSourceConfig, OpcUaTagConfig};
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
    /// Local brokers to read Sparkplug B and JSON messages from.
    #[serde(default)]
    pub mqtt: Vec<MqttSourceConfig>,
    /// OPC-UA servers to subscribe to or poll.
    #[serde(default)]
    pub opcua: Vec<OpcUaSourceConfig>,
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[metrics]`: the agent's Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MetricsSection {
    /// Serve the metrics at `http://<listen>/metrics`; no endpoint when left out.
    pub listen: Option<SocketAddr>,
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
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff() -> Duration {
    Duration::from_millis(100)
}

/// Upper bound of `retries`.
pub const MAX_RETRIES: u32 = 10;
/// Upper bound of `retry_backoff` and `request_pause`.
pub const MAX_PAUSE: Duration = Duration::from_secs(10);
/// The heartbeat of a tag with a deadband that does not set one.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// Defaults of a serial line, after the Modbus over Serial Line specification (8E1).
pub const DEFAULT_PARITY: Parity = Parity::Even;
pub const DEFAULT_STOP_BITS: u8 = 1;
pub const DEFAULT_DATA_BITS: u8 = 8;

#[derive(Debug, Clone, Deserialize)]
pub struct UplinkConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for MQTT over TLS (default port 8883).
    pub broker: String,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts://` only);
    /// without it, the platform's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// PEM files of the gateway's client certificate (with its chain) and private key, for
    /// brokers that authenticate clients by certificate (`mqtts://` only; both or neither).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub client_id: Option<String>,
    /// A broker login of the plant's own (both or neither).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Or an API key with the scope `readings:publish`, made by an admin of the gateway's
    /// organisation: the server keeps a broker account for it that may publish only that
    /// organisation's readings. Instead of `username` and `password`.
    pub api_key: Option<Secret>,
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
    /// Modbus TCP (MBAP framing) to a device or a gateway.
    ModbusTcp,
    /// RTU frames over a TCP socket, as serial-to-Ethernet converters in transparent mode
    /// forward them.
    ModbusRtuOverTcp,
    /// RTU frames on a local serial port (RS-485 or RS-232).
    ModbusRtu,
}

impl Protocol {
    pub fn is_rtu(self) -> bool {
        matches!(self, Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// The settings of a serial line, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    pub path: PathBuf,
    pub baud_rate: u32,
    pub parity: Parity,
    pub stop_bits: u8,
    pub data_bits: u8,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceConfig {
    pub name: String,
    pub protocol: Protocol,
    /// `host:port` of the Modbus TCP server or of the serial-to-Ethernet converter; not for
    /// `modbus-rtu`.
    pub address: Option<String>,
    /// The serial port of a `modbus-rtu` device, such as `/dev/ttyUSB0`. Devices naming the
    /// same port share it.
    pub device: Option<PathBuf>,
    /// Serial line settings, `modbus-rtu` only.
    pub baud_rate: Option<u32>,
    pub parity: Option<Parity>,
    pub stop_bits: Option<u8>,
    pub data_bits: Option<u8>,
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Registers that may be read in between two tags to merge their requests.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Further attempts of a request after a timeout or a transport error (not after a Modbus
    /// exception: the device answered).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled before each further one.
    #[serde(default = "default_retry_backoff", with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Wait between two consecutive requests to this device, for devices that need a rest.
    #[serde(default, with = "humantime_serde")]
    pub request_pause: Duration,
    #[serde(default)]
    pub tag: Vec<TagConfig>,
}

impl DeviceConfig {
    /// The serial line of a `modbus-rtu` device with defaults filled in; `None` for other
    /// protocols or when `device` or `baud_rate` is missing.
    pub fn serial_settings(&self) -> Option<SerialSettings> {
        if self.protocol != Protocol::ModbusRtu {
            return None;
        }
        Some(SerialSettings {
            path: self.device.clone()?,
            baud_rate: self.baud_rate?,
            parity: self.parity.unwrap_or(DEFAULT_PARITY),
            stop_bits: self.stop_bits.unwrap_or(DEFAULT_STOP_BITS),
            data_bits: self.data_bits.unwrap_or(DEFAULT_DATA_BITS),
        })
    }
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
    /// For `string` tags: how many registers the text spans (two characters each).
    pub length: Option<u16>,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Linear range mapping, the alternative to scale and offset: all four or none.
    pub raw_min: Option<f64>,
    pub raw_max: Option<f64>,
    pub eng_min: Option<f64>,
    pub eng_max: Option<f64>,
    /// Report by exception: forward a reading only when it moved by more than this.
    pub deadband: Option<f64>,
    /// With a deadband: forward at least this often (default 60 s).
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
    pub unit: Option<String>,
}

impl TagConfig {
    /// How many registers (or bits) the tag spans.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type
                .registers()
                .unwrap_or_else(|| self.length.unwrap_or(1).max(1))
        }
    }

    /// Whether the agent publishes the tag. Readings are numbers, so a `string` tag is only
    /// shown by `edge-agent read`.
    pub fn is_published(&self) -> bool {
        self.data_type != DataType::String
    }

    /// The tag's scaling and deadband keys.
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

    /// How the decoded number becomes the engineering value (not used for bool tags).
    pub fn scaling(&self) -> Scaling {
        self.conversion().scaling()
    }

    /// The tag's report-by-exception state, if it has a deadband.
    pub fn deadband(&self) -> Option<Deadband> {
        self.conversion().deadband()
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

    /// The uplink's MQTT client id: the configured one, else the API key's user name (the
    /// broker binds a key's account to it), else `edge-<gateway id>`.
    pub fn client_id(&self) -> String {
        if let Some(id) = &self.uplink.client_id {
            return id.clone();
        }
        let key = self.uplink.api_key.as_ref();
        match key.and_then(|key| model::gateway_key::broker_login(key.expose())) {
            Some((_, username)) => username.to_owned(),
            None => format!("edge-{}", self.gateway.id),
        }
    }

    /// Tags of the devices and the OPC-UA servers (MQTT sources' tags are known only once
    /// their messages arrive).
    pub fn tag_count(&self) -> usize {
        self.device.iter().map(|d| d.tag.len()).sum::<usize>()
            + self.opcua.iter().map(|o| o.tag.len()).sum::<usize>()
    }

    /// Tags that `edge-agent read` shows but the agent does not publish (`string` tags).
    pub fn unpublished_tag_count(&self) -> usize {
        self.device
            .iter()
            .flat_map(|d| &d.tag)
            .filter(|t| !t.is_published())
            .count()
    }
}

/// Whether `address` looks like `host:port` (a hostname is resolved only on connect).
fn is_host_port(address: &str) -> bool {
    address.parse::<std::net::SocketAddr>().is_ok()
        || address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl UplinkConfig {
    /// The broker login (user name, password): of the API key when one is given, else the
    /// configured pair, else none.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match (&self.api_key, &self.username, &self.password) {
            (Some(key), _, _) => model::gateway_key::broker_login(key.expose())
                .map(|(_, username)| (username, key.expose())),
            (None, Some(user), Some(password)) => Some((user, password.expose())),
            _ => None,
        }
    }

    fn validate_login(&self, tenant: TenantId, report: &mut Report) {
        if self.username.is_some() != self.password.is_some() {
            report.error(
                "uplink.password",
                "give both username and password, or neither",
            );
        }
        let Some(key) = &self.api_key else {
            return;
        };
        if self.username.is_some() || self.password.is_some() {
            report.error(
                "uplink.api_key",
                "give either api_key or username and password, not both",
            );
        }
        match model::gateway_key::broker_login(key.expose()) {
            None => report.error(
                "uplink.api_key",
                "is not an API key (mpak.<organisation>.<key id>.<secret>): an admin creates \
                 one with the scope readings:publish (POST /api/v1/api-keys), shown once",
            ),
            Some((of, _)) if of != tenant => report.error(
                "uplink.api_key",
                format!(
                    "belongs to organisation {of}, but gateway.tenant is {tenant}: a key \
                     publishes only its own organisation's readings"
                ),
            ),
            Some((_, username)) => {
                if self.client_id.as_deref().is_some_and(|id| id != username) {
                    report.error(
                        "uplink.client_id",
                        format!(
                            "with an API key the broker accepts only the client id {username}: leave client_id out"
                        ),
                    );
                }
            }
        }
    }

    /// The uplink's TLS files, for `mqtts://`.
    pub fn tls_files(&self) -> crate::tls::TlsFiles<'_> {
        crate::tls::TlsFiles {
            section: "uplink",
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }
}

impl Validate for AgentConfig {
    fn validate(&self, report: &mut Report) {
        match model::topic::broker_endpoint(&self.uplink.broker) {
            Err(e) => report.error("uplink.broker", e.to_string()),
            Ok(endpoint) => self.uplink.tls_files().validate(endpoint.tls, report),
        }
        let u = &self.uplink;
        u.validate_login(self.gateway.tenant, report);
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
            validate_transport(&at, d, report);
            validate_polling(&at, d, report);
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
                validate_tag(&at, t, report);
            }
        }
        validate_shared_lines(&self.device, report);
        let mut source_names = HashSet::new();
        for (i, m) in self.mqtt.iter().enumerate() {
            m.validate(&format!("mqtt[{i}]"), &mut source_names, report);
        }
        let mut opcua_names = HashSet::new();
        for (i, o) in self.opcua.iter().enumerate() {
            let at = format!("opcua[{i}]");
            o.validate(&at, &mut opcua_names, report);
            for (j, t) in o.tag.iter().enumerate() {
                if !tag_names.insert(t.name.as_str()) {
                    report.error(
                        format!("{at}.tag[{j}].name"),
                        format!(
                            "tag name {:?} is used twice in this gateway",
                            t.name.as_str()
                        ),
                    );
                }
            }
        }
    }
}

/// A source's `name`: not empty, and unique among the sources of its kind (`names`).
pub(crate) fn validate_source_name(
    at: &str,
    name: &str,
    names: &mut HashSet<String>,
    report: &mut Report,
) {
    if name.trim().is_empty() {
        report.error(format!("{at}.name"), "must not be empty");
    } else if !names.insert(name.to_owned()) {
        report.error(
            format!("{at}.name"),
            format!("source name {name:?} is used twice"),
        );
    }
}

const SERIAL_KEYS: [&str; 5] = ["device", "baud_rate", "parity", "stop_bits", "data_bits"];

fn validate_transport(at: &str, d: &DeviceConfig, report: &mut Report) {
    let serial_keys_set = [
        d.device.is_some(),
        d.baud_rate.is_some(),
        d.parity.is_some(),
        d.stop_bits.is_some(),
        d.data_bits.is_some(),
    ];
    match d.protocol {
        Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => {
            match &d.address {
                None => report.error(
                    format!("{at}.address"),
                    "required: host:port of the device (e.g. 192.168.1.20:502)",
                ),
                Some(a) if !is_host_port(a) => report.error(
                    format!("{at}.address"),
                    format!("{a:?} is not host:port (e.g. 192.168.1.20:502)"),
                ),
                Some(_) => {}
            }
            for (key, set) in SERIAL_KEYS.iter().zip(serial_keys_set) {
                if set {
                    report.error(
                        format!("{at}.{key}"),
                        "serial line settings apply only to protocol = \"modbus-rtu\"",
                    );
                }
            }
        }
        Protocol::ModbusRtu => {
            if d.address.is_some() {
                report.error(
                    format!("{at}.address"),
                    "a modbus-rtu device is reached through `device`, its serial port; \
                     for a serial-to-Ethernet converter use protocol = \"modbus-rtu-over-tcp\"",
                );
            }
            match &d.device {
                None => report.error(
                    format!("{at}.device"),
                    "required: the serial port (e.g. /dev/ttyUSB0)",
                ),
                Some(p) if p.as_os_str().is_empty() => {
                    report.error(format!("{at}.device"), "must not be empty")
                }
                Some(_) => {}
            }
            match d.baud_rate {
                None => report.error(
                    format!("{at}.baud_rate"),
                    "required for a serial line (e.g. 9600 or 19200)",
                ),
                Some(0) => report.error(format!("{at}.baud_rate"), "must be greater than 0"),
                Some(_) => {}
            }
            if d.stop_bits.is_some_and(|b| !(1..=2).contains(&b)) {
                report.error(format!("{at}.stop_bits"), "must be 1 or 2");
            }
            if d.data_bits.is_some_and(|b| !(7..=8).contains(&b)) {
                report.error(format!("{at}.data_bits"), "must be 7 or 8");
            }
        }
    }
    // RTU addresses a device on a bus: 0 is broadcast (never answered), 248-255 are reserved.
    if d.protocol.is_rtu() && !(1..=247).contains(&d.unit_id) {
        report.error(
            format!("{at}.unit_id"),
            "must be 1-247 on an RTU line (0 is broadcast, which no device answers)",
        );
    }
}

fn validate_polling(at: &str, d: &DeviceConfig, report: &mut Report) {
    if d.poll_interval < Duration::from_millis(10) {
        report.error(format!("{at}.poll_interval"), "must be at least 10ms");
    }
    if d.timeout.is_zero() {
        report.error(format!("{at}.timeout"), "must be greater than 0");
    }
    if d.retries > MAX_RETRIES {
        report.error(format!("{at}.retries"), format!("must be 0-{MAX_RETRIES}"));
    }
    if d.retry_backoff > MAX_PAUSE {
        report.error(format!("{at}.retry_backoff"), "must be at most 10s");
    }
    if d.request_pause > MAX_PAUSE {
        report.error(format!("{at}.request_pause"), "must be at most 10s");
    }
}

fn validate_tag(at: &str, t: &TagConfig, report: &mut Report) {
    let is_string = t.data_type == DataType::String;
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
    match (is_string, t.length) {
        (true, None) => report.error(
            format!("{at}.length"),
            format!(
                "a string tag needs `length`: registers of two characters each, 1-{MAX_REGISTERS}"
            ),
        ),
        (true, Some(n)) if n == 0 || n > MAX_REGISTERS => report.error(
            format!("{at}.length"),
            format!("must be 1-{MAX_REGISTERS} (one read request)"),
        ),
        (false, Some(_)) => report.error(
            format!("{at}.length"),
            "length applies only to data_type = \"string\"",
        ),
        _ => {}
    }
    if u32::from(t.address) + u32::from(t.width()) > 65536 {
        report.error(format!("{at}.address"), "the tag runs past address 65535");
    }
    let numbers_only = match t.data_type {
        DataType::String => Some("string"),
        DataType::Bool => Some("bool"),
        _ => None,
    };
    validate_conversion(at, &t.conversion(), numbers_only, t.is_published(), report);
}

/// The keys that turn a source's raw number into the engineering value and decide which
/// readings are forwarded; Modbus and OPC-UA tags share them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    pub scale: f64,
    pub offset: f64,
    pub raw_min: Option<f64>,
    pub raw_max: Option<f64>,
    pub eng_min: Option<f64>,
    pub eng_max: Option<f64>,
    pub deadband: Option<f64>,
    pub heartbeat: Option<Duration>,
}

impl Conversion {
    /// How the raw number becomes the engineering value.
    pub fn scaling(&self) -> Scaling {
        match (self.raw_min, self.raw_max, self.eng_min, self.eng_max) {
            (Some(raw_min), Some(raw_max), Some(eng_min), Some(eng_max)) => Scaling::Range {
                raw_min,
                raw_max,
                eng_min,
                eng_max,
            },
            _ => Scaling::Linear {
                scale: self.scale,
                offset: self.offset,
            },
        }
    }

    /// The report-by-exception state, if there is a deadband.
    pub fn deadband(&self) -> Option<Deadband> {
        let band = self.deadband?;
        Some(Deadband::new(
            band,
            self.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
        ))
    }
}

/// Checks a tag's scaling and deadband. `numbers_only` names the tag's kind when it is not a
/// number that scaling applies to (`"bool"`, `"string"`); `published` is false for tags that
/// only `edge-agent read` shows.
pub(crate) fn validate_conversion(
    at: &str,
    c: &Conversion,
    numbers_only: Option<&str>,
    published: bool,
    report: &mut Report,
) {
    if !c.scale.is_finite() || c.scale == 0.0 || !c.offset.is_finite() {
        report.error(
            format!("{at}.scale"),
            "scale must be finite and non-zero, offset finite",
        );
    }
    let linear_is_default = c.scale == 1.0 && c.offset == 0.0;
    if numbers_only == Some("string") && !linear_is_default {
        report.error(
            format!("{at}.scale"),
            "a string tag is text; scale and offset do not apply",
        );
    }
    validate_range(at, c, linear_is_default, numbers_only, report);
    validate_deadband(at, c, published, report);
}

fn validate_range(
    at: &str,
    c: &Conversion,
    linear_is_default: bool,
    numbers_only: Option<&str>,
    report: &mut Report,
) {
    let keys = [
        ("raw_min", c.raw_min),
        ("raw_max", c.raw_max),
        ("eng_min", c.eng_min),
        ("eng_max", c.eng_max),
    ];
    let Some((first, _)) = keys.iter().find(|(_, v)| v.is_some()) else {
        return;
    };
    for (key, value) in keys {
        match value {
            None => report.error(
                format!("{at}.{key}"),
                "missing: raw_min, raw_max, eng_min and eng_max are set together or not at all",
            ),
            Some(v) if !v.is_finite() => {
                report.error(format!("{at}.{key}"), "must be a finite number")
            }
            Some(_) => {}
        }
    }
    if let (Some(lo), Some(hi)) = (c.raw_min, c.raw_max)
        && lo == hi
    {
        report.error(
            format!("{at}.raw_max"),
            "must differ from raw_min: the range maps raw_min..raw_max onto eng_min..eng_max",
        );
    }
    if !linear_is_default {
        report.error(
            format!("{at}.scale"),
            "scale/offset and raw_min/raw_max/eng_min/eng_max are two ways to scale; use one",
        );
    }
    if numbers_only.is_some() {
        report.error(
            format!("{at}.{first}"),
            "a range mapping scales numbers; it does not apply to bool or string tags",
        );
    }
}

fn validate_deadband(at: &str, c: &Conversion, published: bool, report: &mut Report) {
    if let Some(band) = c.deadband {
        if !(band.is_finite() && band >= 0.0) {
            report.error(
                format!("{at}.deadband"),
                "must be a finite amount of 0 or more, in engineering units",
            );
        }
        if !published {
            report.error(
                format!("{at}.deadband"),
                "string tags are not published, so they have no deadband",
            );
        }
    }
    match c.heartbeat {
        Some(_) if c.deadband.is_none() => report.error(
            format!("{at}.heartbeat"),
            "applies only with a deadband (without one, every reading is forwarded)",
        ),
        Some(h) if h.is_zero() => report.error(format!("{at}.heartbeat"), "must be greater than 0"),
        _ => {}
    }
}

/// Devices on one serial port share its settings, since they share the wire.
fn validate_shared_lines(devices: &[DeviceConfig], report: &mut Report) {
    let mut first_on: HashMap<PathBuf, (usize, SerialSettings)> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        let Some(line) = d.serial_settings() else {
            continue;
        };
        let Some((first, settings)) = first_on.get(&line.path) else {
            first_on.insert(line.path.clone(), (i, line));
            continue;
        };
        let differing = [
            ("baud_rate", settings.baud_rate != line.baud_rate),
            ("parity", settings.parity != line.parity),
            ("stop_bits", settings.stop_bits != line.stop_bits),
            ("data_bits", settings.data_bits != line.data_bits),
        ];
        for (key, differs) in differing {
            if differs {
                report.error(
                    format!("device[{i}].{key}"),
                    format!(
                        "differs from device[{first}] ({:?}) on the same serial port {}: \
                         devices on one line share its settings",
                        devices[*first].name,
                        line.path.display()
                    ),
                );
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
    fn the_metrics_endpoint_is_off_unless_an_address_is_given() {
        assert_eq!(load(GOOD).unwrap().metrics.listen, None);
        let on = load(&format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9465\"\n")).unwrap();
        assert_eq!(on.metrics.listen, Some("127.0.0.1:9465".parse().unwrap()));
        let err = load(&format!("{GOOD}\n[metrics]\nlisten = \"localhost\"\n")).unwrap_err();
        assert_eq!(err.errors[0].path, "metrics.listen", "{err}");
        let err = load(&format!("{GOOD}\n[metrics]\nport = 9465\n")).unwrap_err();
        assert_eq!(err.errors[0].path, "metrics.port", "{err}");
    }

    #[test]
    fn an_api_key_is_the_uplink_login_of_its_own_organisation() {
        let tenant = "8c1c5a4e3f574d8e9d551c1f6f0c9a11";
        let key = format!(
            "mpak.{tenant}.0b7e9d6c52a14c3e8f2d9a6b5c4d3e2f.{}",
            "s".repeat(43)
        );
        let with = |extra: &str| {
            load(&GOOD.replace(
                "broker = \"mqtt://127.0.0.1:1883\"",
                &format!("broker = \"mqtt://127.0.0.1:1883\"\n{extra}"),
            ))
        };
        let c = with(&format!("api_key = \"{key}\"")).unwrap();
        assert_eq!(
            c.uplink.credentials(),
            Some((&key[..key.len() - 44], key.as_str()))
        );
        assert_eq!(
            c.client_id(),
            &key[..key.len() - 44],
            "bound to the key's name"
        );
        let errs = with(&format!("api_key = \"{key}\"\nclient_id = \"edge-gw-1\""))
            .unwrap_err()
            .errors;
        assert_eq!(errs[0].path, "uplink.client_id", "{errs:?}");
        let c = with("username = \"u\"\npassword = \"p\"").unwrap();
        assert_eq!(c.uplink.credentials(), Some(("u", "p")));
        assert_eq!(load(GOOD).unwrap().uplink.credentials(), None);

        let paths = |extra: &str| -> Vec<(String, String)> {
            with(extra)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| (e.path, e.message))
                .collect()
        };
        let other = key.replace(tenant, "0b7e9d6c52a14c3e8f2d9a6b5c4d3e2f");
        let errs = paths(&format!("api_key = \"{other}\""));
        assert_eq!(errs[0].0, "uplink.api_key");
        assert!(errs[0].1.contains("gateway.tenant is"), "{errs:?}");
        let errs = paths("api_key = \"secret\"");
        assert_eq!(errs[0].0, "uplink.api_key");
        assert!(
            !errs[0].1.contains("secret\""),
            "the value is not echoed: {errs:?}"
        );
        let errs = paths(&format!(
            "api_key = \"{key}\"\nusername = \"u\"\npassword = \"p\""
        ));
        assert_eq!(errs[0].0, "uplink.api_key", "{errs:?}");
        let errs = paths("username = \"u\"");
        assert_eq!(errs[0].0, "uplink.password", "{errs:?}");
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

    fn paths(err: &ConfigErrors) -> Vec<&str> {
        let mut paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        paths
    }

    const HEAD: &str = r#"
[gateway]
tenant = "8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11"
id = "gw-1"

[uplink]
broker = "mqtt://127.0.0.1:1883"
"#;

    #[test]
    fn transports_polling_and_tag_options_parse_with_their_defaults() {
        let text = format!(
            r#"{HEAD}
[[device]]
name = "meter-1"
protocol = "modbus-rtu"
device = "/dev/ttyUSB0"
baud_rate = 9600
unit_id = 3
retries = 0
request_pause = "20ms"

[[device.tag]]
name = "meter-1.serial"
table = "holding"
address = 0
data_type = "string"
length = 8
byte_order = "BADC"

[[device.tag]]
name = "meter-1.level"
table = "input"
address = 8
data_type = "u16"
raw_min = 0
raw_max = 27648
eng_min = 0.0
eng_max = 100.0
deadband = 0.5

[[device]]
name = "drive-2"
protocol = "modbus-rtu-over-tcp"
address = "10.0.0.9:4001"
unit_id = 2
"#
        );
        let c = load(&text).unwrap_or_else(|e| panic!("{e}"));
        let serial = c.device[0].serial_settings().expect("a serial device");
        assert_eq!(
            (
                serial.baud_rate,
                serial.parity,
                serial.stop_bits,
                serial.data_bits
            ),
            (9600, Parity::Even, 1, 8)
        );
        assert_eq!(c.device[0].retries, 0);
        assert_eq!(c.device[0].request_pause, Duration::from_millis(20));
        assert_eq!(c.device[1].retries, 2);
        assert_eq!(c.device[1].retry_backoff, Duration::from_millis(100));
        assert_eq!(c.device[1].request_pause, Duration::ZERO);
        assert_eq!(c.device[1].serial_settings(), None);
        let [text_tag, level] = [&c.device[0].tag[0], &c.device[0].tag[1]];
        assert_eq!(text_tag.width(), 8);
        assert!(!text_tag.is_published());
        assert_eq!(c.unpublished_tag_count(), 1);
        assert_eq!(level.scaling().apply(13824.0), 50.0);
        assert_eq!(
            level.deadband(),
            Some(Deadband::new(0.5, DEFAULT_HEARTBEAT))
        );
        assert_eq!(c.device[0].tag[0].deadband(), None);
    }

    #[test]
    fn every_misused_option_is_listed_with_its_key() {
        let text = format!(
            r#"{HEAD}
[[device]]
name = "a"
protocol = "modbus-rtu"
address = "10.0.0.1:502"
stop_bits = 3
data_bits = 9
unit_id = 0
retries = 11
retry_backoff = "11s"
request_pause = "1m"

[[device.tag]]
name = "text"
table = "holding"
address = 0
data_type = "string"
scale = 2.0
deadband = 1.0

[[device.tag]]
name = "text-too-long"
table = "holding"
address = 100
data_type = "string"
length = 126

[[device.tag]]
name = "half-range"
table = "holding"
address = 300
data_type = "u16"
raw_min = 0
eng_max = inf
length = 2

[[device.tag]]
name = "both-scalings"
table = "holding"
address = 301
data_type = "i16"
offset = 1.5
raw_min = 5
raw_max = 5
eng_min = 0
eng_max = 1

[[device.tag]]
name = "bool-range"
table = "coil"
address = 0
data_type = "bool"
eng_min = 0
raw_min = 0
raw_max = 1
eng_max = 1

[[device.tag]]
name = "bad-deadband"
table = "holding"
address = 302
data_type = "u16"
deadband = -1
heartbeat = "0s"

[[device.tag]]
name = "heartbeat-alone"
table = "holding"
address = 303
data_type = "u16"
heartbeat = "5s"

[[device]]
name = "b"
protocol = "modbus-tcp"
address = "10.0.0.2:502"
device = "/dev/ttyS0"
baud_rate = 9600
parity = "odd"

[[device]]
name = "c"
protocol = "modbus-rtu-over-tcp"
unit_id = 248
"#
        );
        let err = load(&text).unwrap_err();
        assert_eq!(
            paths(&err),
            [
                "device[0].address",
                "device[0].baud_rate",
                "device[0].data_bits",
                "device[0].device",
                "device[0].request_pause",
                "device[0].retries",
                "device[0].retry_backoff",
                "device[0].stop_bits",
                "device[0].tag[0].deadband",
                "device[0].tag[0].length",
                "device[0].tag[0].scale",
                "device[0].tag[1].length",
                "device[0].tag[2].eng_max",
                "device[0].tag[2].eng_min",
                "device[0].tag[2].length",
                "device[0].tag[2].raw_max",
                "device[0].tag[3].raw_max",
                "device[0].tag[3].scale",
                "device[0].tag[4].raw_min",
                "device[0].tag[5].deadband",
                "device[0].tag[5].heartbeat",
                "device[0].tag[6].heartbeat",
                "device[0].unit_id",
                "device[1].baud_rate",
                "device[1].device",
                "device[1].parity",
                "device[2].address",
                "device[2].unit_id",
            ],
            "{err}"
        );
    }

    #[test]
    fn devices_on_one_serial_port_must_agree_on_its_settings() {
        let device = |name: &str, unit: u8, extra: &str| {
            format!(
                "[[device]]\nname = \"{name}\"\nprotocol = \"modbus-rtu\"\ndevice = \"/dev/ttyUSB0\"\n\
                 baud_rate = 9600\nunit_id = {unit}\n{extra}\n"
            )
        };
        let agreeing = format!(
            "{HEAD}{}{}",
            device("m1", 1, ""),
            device("m2", 2, "parity = \"even\"")
        );
        load(&agreeing).unwrap_or_else(|e| panic!("{e}"));
        let differing = format!(
            "{HEAD}{}{}{}",
            device("m1", 1, ""),
            device("m2", 2, "parity = \"none\"\nstop_bits = 2"),
            device("m3", 3, "").replace("9600", "19200")
        );
        let err = load(&differing).unwrap_err();
        assert_eq!(
            paths(&err),
            [
                "device[1].parity",
                "device[1].stop_bits",
                "device[2].baud_rate"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("device[0] (\"m1\")"), "{err}");
    }

    #[test]
    fn environment_overrides_the_broker() {
        let env = vec![(
            "EDGE_AGENT_UPLINK__BROKER".to_string(),
            "mqtt://10.0.0.5".to_string(),
        )];
        let c = AgentConfig::from_toml_with_env("agent.toml", GOOD, env).unwrap();
        assert_eq!(
            model::topic::broker_address(&c.uplink.broker),
            Ok(("10.0.0.5".into(), 1883))
        );
    }

    #[test]
    fn mqtt_sources_parse_with_their_defaults() {
        let text = format!(
            r#"{HEAD}
[[mqtt]]
name = "line-broker"
broker = "mqtt://127.0.0.1:1884"

[[mqtt.sparkplug]]
group = "plant"

[[mqtt.json]]
topic = "sensors/+/state"
tag = "{{2}}.temp"
value = "/temp"
timestamp = "/ts"
"#
        );
        let c = load(&text).unwrap();
        let m = &c.mqtt[0];
        assert_eq!(m.client_id(&c.gateway.id), "edge-gw-1-line-broker");
        assert_eq!(m.sparkplug[0].edge_node, "+");
        assert!(m.sparkplug[0].rebirth);
        assert_eq!(
            m.sparkplug[0].filters(),
            [
                "spBv1.0/plant/NBIRTH/+",
                "spBv1.0/plant/NDATA/+",
                "spBv1.0/plant/NDEATH/+",
                "spBv1.0/plant/DBIRTH/+/+",
                "spBv1.0/plant/DDATA/+/+",
                "spBv1.0/plant/DDEATH/+/+"
            ]
        );
        assert_eq!(m.json[0].quality, None);
    }

    #[test]
    fn mqtt_source_problems_are_listed_with_their_keys() {
        let text = format!(
            r#"{HEAD}
[[mqtt]]
name = "a"
broker = "tcp://x"
password = "p"

[[mqtt.sparkplug]]
group = "pl/ant"
edge_node = "n#"
tag_prefix = "bad prefix"

[[mqtt.json]]
topic = "a/#/b"
tag = "x"
value = "temp"

[[mqtt.json]]
topic = "a/+"
tag = "{{3}}"
value = ""
quality = "q"

[[mqtt]]
name = "a"
broker = "mqtt://h:1"
"#
        );
        let err = load(&text).unwrap_err();
        assert_eq!(
            paths(&err),
            [
                "mqtt[0].broker",
                "mqtt[0].json[0].topic",
                "mqtt[0].json[0].value",
                "mqtt[0].json[1].quality",
                "mqtt[0].json[1].tag",
                "mqtt[0].password",
                "mqtt[0].sparkplug[0].edge_node",
                "mqtt[0].sparkplug[0].group",
                "mqtt[0].sparkplug[0].tag_prefix",
                "mqtt[1]",
                "mqtt[1].name",
            ],
            "{err}"
        );
    }
    #[test]
    fn opcua_sources_parse_with_their_defaults() {
        let text = format!(
            r#"{HEAD}
[[opcua]]
name = "oven"
endpoint = "opc.tcp://10.0.0.9:4840/"

[[opcua.tag]]
name = "oven.temp"
node = "ns=2;s=Oven.Temp"
sampling_interval = "250ms"
"#
        );
        let c = load(&text).unwrap();
        let o = &c.opcua[0];
        assert_eq!(o.mode, crate::opcua::config::Mode::Subscribe);
        assert_eq!(o.publishing_interval(), Duration::from_secs(1));
        assert_eq!(o.keep_alive_count(), 10);
        assert_eq!(o.watchdog(), Duration::from_secs(30));
        assert_eq!(
            o.tag[0].queue_size(o),
            4,
            "one publishing interval of samples"
        );
        // Subscribed tags repeat a steady value once a minute.
        assert_eq!(
            o.effective_conversion(&o.tag[0]).heartbeat,
            Some(Duration::from_secs(60))
        );
        assert_eq!(c.tag_count(), 1);
    }

    #[test]
    fn opcua_source_problems_are_listed_with_their_keys() {
        let text = format!(
            r#"{HEAD}
[[opcua]]
name = "a"
endpoint = "http://x"
security_mode = "Sign"
password = "p"
mode = "poll"
publishing_interval = "1s"
certificate_file = "own.crt"
private_key_file = "nowhere.pem"

[[opcua.tag]]
name = "press-1.bearing_temp"
node = "ns=two;s=x"
queue_size = 0
raw_min = 1.0

[[opcua]]
name = "a"
endpoint = "opc.tcp://h:1"
security_policy = "Basic256Sha256"
keep_alive_count = 10
watchdog = "5s"

[[opcua.tag]]
name = "press-1.bearing_temp"
node = "i=2261"
"#
        );
        let err = load(&text).unwrap_err();
        assert_eq!(
            paths(&err),
            [
                "opcua[0].certificate_file",
                "opcua[0].certificate_file",
                "opcua[0].endpoint",
                "opcua[0].password",
                "opcua[0].private_key_file",
                "opcua[0].publishing_interval",
                "opcua[0].security_policy",
                "opcua[0].tag[0].eng_max",
                "opcua[0].tag[0].eng_min",
                "opcua[0].tag[0].node",
                "opcua[0].tag[0].queue_size",
                "opcua[0].tag[0].queue_size",
                "opcua[0].tag[0].raw_max",
                "opcua[1].name",
                "opcua[1].security_mode",
                "opcua[1].tag[0].name",
                "opcua[1].watchdog",
            ],
            "{err}"
        );
    }
}
