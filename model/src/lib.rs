//! Shared domain types and the edge -> ingest wire format of MaintAInPro.
//!
//! # Layout
//! - [`ids`]: identifiers that are valid once built (`TenantId`, `GatewayId`, `TagName`, ...).
//! - [`alarm`]: alarm transitions and the work-order drafts rules hand to the CMMS.
//! - [`reading`]: a `Reading` (tag, event time, value, quality) and its `Quality`.
//! - [`wire`]: the versioned binary batch format edge agents publish and ingest decodes.
//! - [`json_batch`]: the JSON form of a batch, for publishers that are not edge agents.
//! - [`sparkplug`]: Sparkplug B topics and payloads, and an edge node's session as a host
//!   follows it (births, aliases, sequence numbers, deaths) turned into readings.
//! - [`topic`]: the MQTT topic names both sides agree on.
//! - [`gateway_key`]: a gateway's API key as its broker login (user name and password).
//! - [`priority`]: rule severity, asset criticality and the priority matrix between them.
//! - [`settings`]: layered configuration (file, then environment) with every error at once.
//!
//! This crate is pure: no tokio, no sockets, no database. Everything here is a value that can
//! be built, checked and round-tripped in a unit test.

pub mod alarm;
pub mod gateway_key;
pub mod ids;
pub mod json_batch;
pub mod priority;
pub mod reading;
pub mod settings;
pub mod sparkplug;
pub mod topic;
pub mod wire;

pub use ids::{AssetId, GatewayId, IdError, TagName, TenantId};
pub use priority::{Criticality, Priority, Severity};
pub use reading::{Quality, Reading, Timestamp};
