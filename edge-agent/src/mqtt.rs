//! The MQTT source: local brokers the agent subscribes to, as a Sparkplug B host application
//! and as a reader of plain JSON messages.
//!
//! Pure:
//! - [`config`]: the `[[mqtt]]` sections and their checks.
//! - [`json`]: JSON messages to readings, by topic filter, tag template and JSON pointers.
//! - Sparkplug B sessions (births, aliases, sequence numbers, deaths) are
//!   [`model::sparkplug::NodeSession`]s.
//!
//! I/O:
//! - [`births`]: the Sparkplug B births of each node kept in a file, for the next start.
//! - [`source`]: one task per broker; acknowledges a message only once its readings are
//!   durable in the outbox, and asks Sparkplug nodes for a rebirth when it must.

pub mod births;
pub mod config;
pub mod json;
pub mod source;
