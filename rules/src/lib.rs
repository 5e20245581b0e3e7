//! Anomaly rules: the rule-file format, its validation, and the pure evaluation engine.
//!
//! # Layout
//! - [`file`](mod@file): the TOML rule-file format, parsed into a validated [`RuleSet`] with
//!   diagnostics that carry file, line and column.
//! - [`select`]: which tags a rule watches: by tag name, asset, asset class and labels.
//! - [`kinds`]: one module per rule kind; each module's doc comment is its reference page.
//! - [`reference`](mod@reference): the rule-kind reference page, rendered from the kinds' documentation.
//! - [`alarm`]: the alarm state machine (normal, pending, active) with on- and off-delay.
//! - [`engine`]: readings in, [`model::alarm::AlarmEvent`]s out, on event time; restored
//!   from the alarms the CMMS has on record as active.
//! - [`reorder`]: per-tag buffers that put readings arriving late (within a bound) back in
//!   event-time order before evaluation.
//! - [`paging`]: which events page someone now, and which (conditions that began and ended
//!   in data replayed after an outage) only go on the asset's history.
//! - [`fixture`]: rule fixtures: readings as CSV text run through the engine, rendered with
//!   what the CMMS would do with each alarm event, for snapshot tests of rule files.
//!
//! This crate never does I/O: no sockets, no database, no clock. Callers hand it readings
//! (and, for silence and escalation, the current time) and receive alarm events; everything
//! here runs the same live and in a backtest.

pub mod alarm;
pub mod engine;
pub mod file;
pub mod fixture;
pub mod kinds;
pub mod paging;
pub mod reference;
pub mod reorder;
pub mod select;

pub use engine::{ActiveAlarm, Engine, TagContext};
pub use file::{Diagnostic, Rule, RuleSet};
pub use select::{Labels, Selector};
