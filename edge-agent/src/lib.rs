//! The edge agent: reads PLCs and sensors on the factory floor and publishes their readings to
//! the plant's MQTT broker in MaintAInPro's wire format.
//!
//! # Layout
//! - [`config`]: the agent's TOML configuration, validated as a whole before anything starts.
//! - [`modbus`]: the Modbus source (TCP, RTU over TCP, RTU on serial lines): pure decoding,
//!   request planning and line grouping, and the polling task.
//! - [`mqtt`]: the MQTT source (Sparkplug B edge nodes and plain JSON on a local broker).
//! - [`opcua`]: the OPC-UA source (subscriptions or polling, security, a subscription
//!   watchdog): pure conversion and watchdog, and the task per server.
//! - [`exception`]: report by exception (deadband and heartbeat), pure.
//! - [`read`]: what `edge-agent read` prints.
//! - [`outbox`]: the durable, bounded, checksummed store of batches waiting for the broker's
//!   acknowledgement.
//! - [`tls`]: the `mqtts://` TLS client configuration from a section's PEM files (the
//!   `mqtt-tls` crate, shared with ingest).
//! - [`uplink`]: the MQTT publisher (QoS 1) that numbers batches and releases them on PUBACK.
//! - [`agent`]: wires sources, buffer and uplink together and shuts them down gracefully.
//! - [`exporter`]: the optional Prometheus endpoint (`[metrics] listen`).
//! - [`logging`]: the log set-up, leaving out libraries' warnings about normal events.
//!
//! The agent runs on small gateways for years: it never links a database driver or an HTTP
//! server framework, keeps every queue bounded, and never drops a reading without counting it.

pub mod agent;
pub mod config;
pub mod exception;
pub mod exporter;
pub mod logging;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod outbox;
pub mod read;
pub use mqtt_tls as tls;
pub mod uplink;

pub use agent::{Agent, AgentError, AgentStats};
pub use config::AgentConfig;
