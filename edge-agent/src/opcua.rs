//! The OPC-UA source: servers the agent subscribes to or polls.
//!
//! Pure:
//! - [`config`]: the `[[opcua]]` sections and their checks.
//! - [`convert`]: data values to samples (number, quality, time).
//! - [`watchdog`]: when a silent subscription is dead, and the bad readings that mark a gap.
//!
//! I/O:
//! - [`source`]: one task per server: connects with the configured security, subscribes or
//!   polls, rebuilds dead subscriptions and reconnects with backoff.

pub mod config;
pub mod convert;
pub mod source;
pub mod watchdog;
