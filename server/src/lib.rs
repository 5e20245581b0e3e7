//! The `maintainpro` server: composes the API, ingest and the rules engine in one process, and
//! runs the demo plant.
//!
//! # Layout
//! - [`config`]: the server's configuration file (`[database]`, `[api]`, `[ingest]`,
//!   `[rules]`, `[metrics]`), with environment overrides (`MAINTAINPRO_...`).
//! - [`services`]: starts the selected roles against one database pool and stops them in order.
//! - [`rules_task`]: the task that feeds stored readings to the rules engine and hands alarm
//!   events to the work-order service.
//! - [`rules_cli`]: `maintainpro rules test`: fixture readings run through rule files,
//!   compared with snapshot files of the alarms and work orders they produce.
//! - `backtest_cli` (feature `backtest`): `maintainpro rules backtest` and
//!   `rules export-history`, the command line around the `backtest` crate.
//! - [`admin_cli`]: `maintainpro admin`: organisations, users, passwords and sessions from
//!   the command line.
//! - [`broker`]: the embedded MQTT broker (rumqttd) for running without an external one.
//! - [`demo`]: the demo plant: throwaway database, embedded broker, simulated PLC, edge agent
//!   and all services, with a summary at the end.
//!
//! This crate holds composition only: no domain rule, no SQL beyond seeding the demo.

pub mod admin_cli;
#[cfg(feature = "backtest")]
pub mod backtest_cli;
pub mod broker;
pub mod config;
pub mod demo;
pub mod rules_cli;
pub mod rules_task;
pub mod services;

pub use config::ServerConfig;
pub use services::{Services, ServicesError, Summary};
