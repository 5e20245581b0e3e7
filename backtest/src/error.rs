//! [`BacktestError`]: everything a backtest or a history export can fail on, each message
//! saying what was wrong and how to fix it.

use std::path::PathBuf;

/// The error of a backtest or a history export.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("bad time window: {reason}")]
    BadWindow { reason: String },
    #[error("no tenant with slug {slug:?}; check the organisation's slug (as used at login)")]
    UnknownTenant { slug: String },
    #[error(
        "cannot read history from the database: {0}; check --database-url (or MAINTAINPRO_DATABASE__URL) and that the database is migrated"
    )]
    Database(#[from] sqlx::Error),
    #[error(
        "the database holds a reading of tag {tag_id} with quality code {code}, which is not 0 (good), 1 (uncertain) or 2 (bad); fix the row or leave its time out of the window"
    )]
    BadQualityCode { tag_id: i64, code: i64 },
    #[error("cannot write {path}: {source}; check that its directory exists and is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}; check the path")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a history file this build can read: {reason}; export it again with `maintainpro rules export-history`"
    )]
    HistoryFile { path: PathBuf, reason: String },
    #[error(
        "{path} is not sorted by event time (row {row} is older than the row before it); export it again with `maintainpro rules export-history`, which writes rows in time order"
    )]
    UnsortedHistory { path: PathBuf, row: u64 },
    #[error("cannot write the Parquet file {path}: {reason}")]
    ParquetWrite { path: PathBuf, reason: String },
    #[error(
        "the analysis of the replay failed: {0}; this is a bug, please report it with the command line used"
    )]
    Analysis(String),
    #[error("cannot write the report: {0}")]
    Report(String),
}

impl From<polars::error::PolarsError> for BacktestError {
    fn from(e: polars::error::PolarsError) -> Self {
        BacktestError::Analysis(e.to_string())
    }
}
