//! A whole backtest or export, from a history source to its result: what the command line
//! and the tests call.
//!
//! One pass over the history feeds the rule set under test and the baseline side by side, so
//! the database is read once whatever is compared.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::Timestamp;
use rules::RuleSet;
use sqlx::PgPool;

use crate::BacktestError;
use crate::analysis::{Analysis, PastWorkOrder, Settings, analyse};
use crate::history::{self, Progress, StreamStats};
use crate::parquet::{
    HistoryFile, HistoryHeader, HistoryWriter, work_orders_path, write_work_orders,
};
use crate::replay::{Replay, Tags, Window};

/// What to backtest.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rules: Arc<RuleSet>,
    pub baseline: Option<Arc<RuleSet>>,
    pub settings: Settings,
}

/// The result of a backtest, and where its history came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub analysis: Analysis,
    pub tenant: String,
    /// Readings of tags created while the history was read (database only): skipped.
    pub unknown_tags: u64,
}

fn replays(plan: &Plan, tags: &Arc<Tags>, window: Window) -> Vec<Replay> {
    std::iter::once(&plan.rules)
        .chain(plan.baseline.as_ref())
        .map(|rules| Replay::new(Arc::clone(rules), Arc::clone(tags), window))
        .collect()
}

fn conclude(
    plan: &Plan,
    replays: Vec<Replay>,
    past: Option<&[PastWorkOrder]>,
) -> Result<Analysis, BacktestError> {
    let mut results = replays.into_iter().map(Replay::finish);
    let current = results.next().ok_or_else(|| {
        BacktestError::Analysis("the replay of the rule set under test is missing".into())
    })?;
    let baseline = results.next();
    analyse(&current, baseline.as_ref(), past, plan.settings)
}

/// Only the work orders a backtest of `window` can match.
fn in_reach(
    mut orders: Vec<PastWorkOrder>,
    window: Window,
    settings: Settings,
) -> Vec<PastWorkOrder> {
    let (from, to) = history::work_order_reach(window, settings.match_window);
    orders.retain(|o| from <= o.created_at && o.created_at < to);
    orders
}

/// Backtests `plan` over the tenant's history of `window` in the database.
pub async fn from_database(
    pool: &PgPool,
    tenant_slug: &str,
    window: Window,
    plan: &Plan,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, BacktestError> {
    let tenant = history::tenant_by_slug(pool, tenant_slug).await?;
    let tags = Arc::new(history::load_tags(pool, tenant).await?);
    let mut replays = replays(plan, &tags, window);
    let stats =
        history::stream_readings(pool, tenant, &tags, window, &mut replays, progress).await?;
    let reach = history::work_order_reach(window, plan.settings.match_window);
    let past = history::past_work_orders(pool, tenant, reach).await?;
    // polars may not run on an async worker thread (it blocks in place, which a
    // current-thread runtime forbids), and the analysis is CPU work anyway.
    let plan_for_analysis = plan.clone();
    let analysis =
        tokio::task::spawn_blocking(move || conclude(&plan_for_analysis, replays, Some(&past)))
            .await
            .map_err(|e| BacktestError::Analysis(format!("the analysis task failed: {e}")))??;
    Ok(Outcome {
        analysis,
        tenant: tenant_slug.to_owned(),
        unknown_tags: stats.unknown_tags,
    })
}

/// Backtests `plan` over a history file, from `from` to `to` (each by default the file's
/// window's). The past work orders come from the file's work-order file, when it is there.
///
/// Blocking and CPU-bound: from async code, call it through `tokio::task::spawn_blocking`
/// (polars refuses to run on a current-thread runtime's thread).
pub fn from_file(
    path: &Path,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    plan: &Plan,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, BacktestError> {
    let file = HistoryFile::open(path)?;
    let window = Window::new(
        from.unwrap_or(file.header.window.from()),
        to.unwrap_or(file.header.window.to()),
    )?;
    let tags = Arc::new(file.tags.clone());
    let mut replays = replays(plan, &tags, window);
    file.stream_readings(window, &mut replays, progress)?;
    let past = file
        .past_work_orders()?
        .map(|orders| in_reach(orders, window, plan.settings));
    Ok(Outcome {
        analysis: conclude(plan, replays, past.as_deref())?,
        tenant: file.header.tenant_slug.clone(),
        unknown_tags: 0,
    })
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub readings: u64,
    pub tags: usize,
    pub work_orders: usize,
    pub work_orders_path: PathBuf,
    pub stream: StreamStats,
}

/// How far before and after the window an export keeps work orders: backtests of the file
/// can match with a match window up to this long.
pub const EXPORT_MATCH_REACH: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Writes the tenant's history of `window` to the history file `out`, and the work orders a
/// backtest of it can match (created within [`EXPORT_MATCH_REACH`] of the window) next to it.
pub async fn export(
    pool: &PgPool,
    tenant_slug: &str,
    window: Window,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Export, BacktestError> {
    let tenant = history::tenant_by_slug(pool, tenant_slug).await?;
    let tags = history::load_tags(pool, tenant).await?;
    let header = HistoryHeader {
        tenant,
        tenant_slug: tenant_slug.to_owned(),
        window,
    };
    let mut writer = HistoryWriter::create(out, &tags, &header)?;
    let stream =
        history::stream_readings(pool, tenant, &tags, window, &mut writer, progress).await?;
    let readings = writer.finish()?;
    let reach = history::work_order_reach(window, EXPORT_MATCH_REACH);
    let orders = history::past_work_orders(pool, tenant, reach).await?;
    let orders_path = work_orders_path(out);
    write_work_orders(&orders_path, &orders)?;
    Ok(Export {
        readings,
        tags: tags.len(),
        work_orders: orders.len(),
        work_orders_path: orders_path,
        stream,
    })
}
