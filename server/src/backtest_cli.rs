//! `maintainpro rules backtest` and `maintainpro rules export-history` (feature `backtest`):
//! the command line around the `backtest` crate. Arguments, the progress bar on stderr, the
//! report on stdout, exit codes: 0 done, 2 bad arguments or rule files, 1 anything else.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use backtest::history::Progress;
use backtest::report::{self, Format, Source};
use backtest::run::{self, Plan};
use backtest::{BacktestError, Settings, Window};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::Timestamp;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::services::load_rule_files;

/// The environment variable of the application role's database URL, as in `serve`.
const DATABASE_URL_VAR: &str = "MAINTAINPRO_DATABASE__URL";

fn parse_time(text: &str) -> Result<Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Timestamp::from_datetime(t.to_utc()))
        .map_err(|e| format!("{e}: give an RFC 3339 time such as 2026-03-01T00:00:00Z"))
}

/// Replay stored history through rule files and report what they would have done.
#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// The rule files under test (merged as the server merges `[rules] files`).
    #[arg(long = "rules", required = true, num_args = 1..)]
    rules: Vec<PathBuf>,
    /// The rule files to compare with, usually those running now.
    #[arg(long, num_args = 1..)]
    baseline: Vec<PathBuf>,
    /// The tenant's slug. Not needed with --from-parquet.
    #[arg(long, required_unless_present = "from_parquet")]
    tenant: Option<String>,
    /// Start of the history window (RFC 3339, included). Default with --from-parquet: the
    /// file's.
    #[arg(long, value_parser = parse_time, required_unless_present = "from_parquet")]
    from: Option<Timestamp>,
    /// End of the history window (RFC 3339, excluded). Default with --from-parquet: the
    /// file's.
    #[arg(long, value_parser = parse_time, required_unless_present = "from_parquet")]
    to: Option<Timestamp>,
    /// postgres:// URL of the application role.
    #[arg(long, env = DATABASE_URL_VAR, hide_env_values = true)]
    database_url: Option<String>,
    /// Read the history from a file written by `rules export-history` instead of the
    /// database (any database URL is then ignored).
    #[arg(long)]
    from_parquet: Option<PathBuf>,
    /// table, json or csv.
    #[arg(long, default_value = "table")]
    format: Format,
    /// A raise this soon after a clear of the same rule on the same tag counts as a flap.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    flap_window: Duration,
    /// A past work order created this close to a predicted one (before or after) matches it.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    match_window: Duration,
}

/// Export a tenant's history window to a Parquet file for offline backtests.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The tenant's slug.
    #[arg(long)]
    tenant: String,
    /// Start of the window (RFC 3339, included).
    #[arg(long, value_parser = parse_time)]
    from: Timestamp,
    /// End of the window (RFC 3339, excluded).
    #[arg(long, value_parser = parse_time)]
    to: Timestamp,
    /// The history file to write; its work orders go next to it as
    /// `<name>.work-orders.parquet`.
    #[arg(long)]
    out: PathBuf,
    /// postgres:// URL of the application role.
    #[arg(long, env = DATABASE_URL_VAR, hide_env_values = true)]
    database_url: String,
}

/// A bar over the window's event time, on stderr; hidden when stderr is not a terminal.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn on_progress(bar: &ProgressBar) -> impl FnMut(Progress) + '_ {
    |p: Progress| {
        bar.set_position((p.fraction() * 1000.0) as u64);
        bar.set_message(format!("{} readings, at {}", p.readings, p.at));
    }
}

async fn connect(url: &str) -> Result<PgPool, BacktestError> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// Exit code 2 for what the user can fix in the command line, 1 for the rest.
fn fail(e: &BacktestError) -> ExitCode {
    eprintln!("{e}");
    match e {
        BacktestError::BadWindow { .. } | BacktestError::UnknownTenant { .. } => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

fn bad_arguments(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(2)
}

/// `maintainpro rules backtest`.
pub async fn backtest(args: BacktestArgs) -> ExitCode {
    let load = |files: &[PathBuf]| load_rule_files(files).map(Arc::new);
    let rules = match load(&args.rules) {
        Ok(r) => r,
        Err(e) => return bad_arguments(&e.to_string()),
    };
    let baseline = if args.baseline.is_empty() {
        None
    } else {
        match load(&args.baseline) {
            Ok(r) => Some(r),
            Err(e) => return bad_arguments(&format!("baseline: {e}")),
        }
    };
    let plan = Plan {
        rules,
        baseline,
        settings: Settings {
            flap_window: args.flap_window,
            match_window: args.match_window,
        },
    };
    let bar = progress_bar();
    let outcome = match (&args.from_parquet, args.from, args.to) {
        (Some(path), from, to) => {
            // polars runs on a blocking thread, never on the runtime's workers.
            let (path, plan, bar) = (path.clone(), plan.clone(), bar.clone());
            tokio::task::spawn_blocking(move || {
                run::from_file(&path, from, to, &plan, &mut on_progress(&bar))
            })
            .await
            .unwrap_or_else(|e| {
                Err(BacktestError::Analysis(format!(
                    "the backtest task failed: {e}"
                )))
            })
        }
        (None, Some(from), Some(to)) => {
            let Some(url) = &args.database_url else {
                return bad_arguments(&format!(
                    "give the database with --database-url or {DATABASE_URL_VAR}, or a history file with --from-parquet"
                ));
            };
            let Some(tenant) = &args.tenant else {
                return bad_arguments("give the tenant's slug with --tenant");
            };
            match (Window::new(from, to), connect(url).await) {
                (Ok(window), Ok(pool)) => {
                    run::from_database(&pool, tenant, window, &plan, &mut on_progress(&bar)).await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        _ => return bad_arguments("give --from and --to, or --from-parquet"),
    };
    bar.finish_and_clear();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if outcome.unknown_tags > 0 {
        eprintln!(
            "note: {} readings of tags created during the backtest were left out",
            outcome.unknown_tags
        );
    }
    let source = Source {
        tenant: args.tenant.unwrap_or(outcome.tenant),
        origin: args
            .from_parquet
            .map_or_else(|| "the database".to_owned(), |p| p.display().to_string()),
    };
    match report::render(&outcome.analysis, &source, args.format) {
        Ok(text) => match std::io::stdout().lock().write_all(text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cannot write the report: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => fail(&e),
    }
}

/// `maintainpro rules export-history`.
pub async fn export_history(args: ExportArgs) -> ExitCode {
    let window = match Window::new(args.from, args.to) {
        Ok(w) => w,
        Err(e) => return fail(&e),
    };
    let bar = progress_bar();
    let result = match connect(&args.database_url).await {
        Ok(pool) => {
            run::export(
                &pool,
                &args.tenant,
                window,
                &args.out,
                &mut on_progress(&bar),
            )
            .await
        }
        Err(e) => Err(e),
    };
    bar.finish_and_clear();
    match result {
        Ok(export) => {
            println!(
                "wrote {} readings of {} tags to {} and {} work orders to {}",
                export.readings,
                export.tags,
                args.out.display(),
                export.work_orders,
                export.work_orders_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
