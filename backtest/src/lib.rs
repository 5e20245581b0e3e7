//! Backtesting rule files: replay stored history through the same engine that runs live,
//! and report per rule what it would have done (alarms, work orders, time in alarm,
//! flapping), how that differs from a baseline rule set, and how its predicted work orders
//! compare with the work orders the plant really had.
//!
//! # Layout
//! - [`replay`]: pure: readings in event-time order through [`rules::Engine`], driven as
//!   live, plus the CMMS's part (one open work order per asset and failure mode). The hot
//!   loop; no I/O, no polars.
//! - [`analysis`]: per-rule metrics, the baseline difference and the matching against past
//!   work orders, as polars queries over the replay's results.
//! - [`history`]: one tenant's tags, readings and past work orders from PostgreSQL, through
//!   the tenant-scoped `tenant_readings` view, streamed in time order.
//! - [`parquet`]: history windows written to and read from Parquet files, so that a backtest
//!   runs offline.
//! - [`report`]: the analysis as a table, JSON or CSV.
//! - [`run`]: a whole backtest (from the database or a history file) or export, one pass
//!   over the history feeding the rule set under test and the baseline side by side.
//! - `error.rs`: [`BacktestError`].
//!
//! Nothing here belongs in the edge agent: this crate pulls polars.

mod error;

pub mod analysis;
pub mod history;
pub mod parquet;
pub mod replay;
pub mod report;
pub mod run;

pub use analysis::{Analysis, PastWorkOrder, Settings, analyse};
pub use error::BacktestError;
pub use replay::{HistoryReading, ReadingSink, Replay, ReplayResult, Tags, Window};
