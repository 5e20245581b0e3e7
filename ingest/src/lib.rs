//! Ingest: MQTT batches from edge agents into PostgreSQL, exactly once, and on to the rules.
//!
//! # Layout
//! - [`config`]: broker (plain or TLS), client id and subscription settings.
//! - [`clock`]: whether a reading's time lies within reach of ingest's clock (pure).
//! - [`copy`]: the binary COPY encoding of reading rows and the times it can hold (pure).
//! - [`directory`]: resolves (tenant, gateway, tag name) to tag ids and rule context, cached
//!   until the database announces a change.
//! - [`latency`]: the receipt-to-commit latency histogram.
//! - [`store`]: the PostgreSQL side: one transaction per group of messages with the batch
//!   ledger, dead letters and the kept Sparkplug B births; partition upkeep.
//! - [`recent`]: recent stored readings read back, tenant by tenant, to warm up a fresh
//!   rules engine.
//! - [`queue`]: the bounded lock-free queues (crossbeam's ring, a waker per end) that join the
//!   pipeline's tasks, and the rules engine's dispatcher to its shards.
//! - [`consumer`]: the MQTT session (fixed client id, persistent session, manual acks) and the
//!   pipeline of three tasks joined by bounded queues: the driver (the broker connection), the
//!   decode stage (decode, resolve, hand the readings to the rules at once; restore a Sparkplug
//!   B node's session from its kept births at its first message) and the store stage (group,
//!   write, then ack).
//!
//! Ingest acknowledges an MQTT message only after what it carried is committed: stored readings
//! or a dead letter. It never writes a batch twice: (gateway, seq) is recorded in the same
//! transaction as the rows. The rules get a message's readings before that commit, so a
//! message delivered again hands them on again (the engine skips readings it has seen).

pub mod clock;
pub mod config;
pub mod consumer;
pub mod copy;
pub mod directory;
pub mod latency;
pub mod queue;
pub mod recent;
pub mod store;

pub use config::IngestConfig;
pub use consumer::{Consumer, IngestStats, RuleInput};
pub use store::{PgStore, StoreError};
