//! `maintainpro`: the server (API, ingest, rules), the demo plant, and rule tooling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use server::demo::{self, DemoOptions};
use server::{ServerConfig, Services};

#[derive(Debug, Parser)]
#[command(
    name = "maintainpro",
    version,
    about = "MaintAInPro: industrial IoT ingestion and automatic work orders"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo plant: simulated PLC -> edge agent -> broker -> ingest -> rules -> work orders.
    Demo {
        /// Stop by itself after this long (e.g. 90s, 5m) and print a JSON summary.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        run_for: Option<Duration>,
        /// Superuser URL of an existing PostgreSQL; default: a throwaway local cluster.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// mqtt://host:port of an existing broker; default: the embedded broker.
        #[arg(long, env = "MQTT_URL")]
        broker: Option<String>,
        /// Where the API listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// When the simulated bearing starts to overheat.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        breach_after: Duration,
    },
    /// Run the configured roles (api, ingest, rules) until SIGTERM or Ctrl-C (a second one
    /// while stopping exits at once, with status 130).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Apply database migrations as the owner role.
    Migrate {
        /// postgres:// URL of the owner role.
        #[arg(long, env = "MAINTAINPRO_DATABASE__OWNER_URL")]
        owner_url: String,
    },
    /// Organisations and users: bootstrap the first tenant and admin, reset passwords,
    /// disable users, end sessions.
    Admin(server::admin_cli::AdminArgs),
    /// Print the permission matrix (Markdown, as docs/PERMISSIONS.md holds it).
    Permissions,
    /// Rule-file tooling.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Check rule files and report every problem with file, line and column.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run fixture readings through rule files and compare the alarms and work orders with
    /// snapshot files.
    Test(server::rules_cli::TestArgs),
    /// Replay stored history through rule files and report what they would have done.
    #[cfg(feature = "backtest")]
    Backtest(server::backtest_cli::BacktestArgs),
    /// Export a tenant's history window to a Parquet file for offline backtests.
    #[cfg(feature = "backtest")]
    ExportHistory(server::backtest_cli::ExportArgs),
    /// Replay stored history through rule files (needs a build with `--features backtest`).
    #[cfg(not(feature = "backtest"))]
    #[command(disable_help_flag = true)]
    Backtest {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Export history to Parquet (needs a build with `--features backtest`).
    #[cfg(not(feature = "backtest"))]
    #[command(disable_help_flag = true)]
    ExportHistory {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

fn init_tracing() {
    // Libraries' warnings and errors about normal events (see each entry).
    let mut noise = vec![edge_agent::logging::OPCUA_CLOSED_CLEANLY];
    noise.extend(server::broker::CLEAN_DISCONNECT);
    edge_agent::logging::init("info,rumqttd=warn,sqlx=warn,tokio_modbus=warn", noise);
}

/// The exit status of `serve` stopped by a second SIGTERM or Ctrl-C while it was stopping.
const SECOND_SIGNAL: u8 = 130;

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The server's allocator (see the workspace's `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Command::Permissions = &cli.command {
        return match api::openapi::document() {
            Ok(doc) => {
                print!("{}", api::permissions::matrix_markdown(&doc));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("the embedded OpenAPI document is broken: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Rules {
        command: RulesCommand::Check { files },
    } = &cli.command
    {
        return rules_check(files);
    }
    if let Command::Rules {
        command: RulesCommand::Test(args),
    } = &cli.command
    {
        return server::rules_cli::test(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Demo {
                run_for,
                database_url,
                broker,
                listen,
                breach_after,
            } => {
                run_demo(
                    DemoOptions {
                        admin_url: database_url,
                        broker,
                        listen,
                        breach_after,
                    },
                    run_for,
                )
                .await
            }
            Command::Serve { config } => serve(&config).await,
            Command::Admin(args) => server::admin_cli::run(&args).await,
            Command::Migrate { owner_url } => match migrations::migrate(&owner_url).await {
                Ok(layout) => {
                    println!("migrations applied; readings storage: {layout}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            },
            #[cfg(feature = "backtest")]
            Command::Rules {
                command: RulesCommand::Backtest(args),
            } => server::backtest_cli::backtest(args).await,
            #[cfg(feature = "backtest")]
            Command::Rules {
                command: RulesCommand::ExportHistory(args),
            } => server::backtest_cli::export_history(args).await,
            #[cfg(not(feature = "backtest"))]
            Command::Rules {
                command: RulesCommand::Backtest { .. } | RulesCommand::ExportHistory { .. },
            } => {
                eprintln!(
                    "this maintainpro was built without backtesting (it keeps the default build lean);\n\
                     build it with: cargo build --release --features backtest --bin maintainpro"
                );
                ExitCode::from(2)
            }
            Command::Rules { .. } | Command::Permissions => ExitCode::SUCCESS,
        }
    })
}

fn rules_check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                failed = true;
                continue;
            }
        };
        match rules::RuleSet::parse(&path.display().to_string(), &text) {
            Ok(set) => println!("{}: ok ({} rules)", path.display(), set.rules.len()),
            Err(diags) => {
                failed = true;
                for d in diags {
                    eprintln!("{d}");
                }
            }
        }
    }
    if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

async fn run_demo(options: DemoOptions, run_for: Option<Duration>) -> ExitCode {
    let stop = async move {
        match run_for {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown_signal() => {}
                }
            }
            None => shutdown_signal().await,
        }
    };
    let result = demo::run(options, stop, |access| {
        println!();
        println!("MaintAInPro demo plant is running.");
        println!("  API:      {}/api/v1/work-orders", access.api_url);
        println!("  Login:    organisation {:?}, email {:?}, password {:?}", access.tenant, access.email, access.password);
        println!(
            "  Token:    curl -s -X POST {}/api/v1/auth/login -H 'content-type: application/json' \\\n              -d '{{\"tenant\":\"{}\",\"email\":\"{}\",\"password\":\"{}\"}}'",
            access.api_url, access.tenant, access.email, access.password
        );
        println!("  The press bearing starts to overheat shortly; watch for \"work order opened\". Ctrl-C stops.");
        println!();
    })
    .await;
    match result {
        Ok(summary) => {
            match serde_json::to_string(&summary) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("cannot print the summary: {e}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let config = match ServerConfig::from_toml(&path.display().to_string(), &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\nthe server did not start; fix the configuration and retry");
            return ExitCode::from(2);
        }
    };
    let rules = if config.runs(server::config::Role::Rules) {
        match server::services::load_rule_files(&config.rules.files) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let services = match Services::start(&config, rules).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let role_ended = tokio::select! {
        _ = shutdown_signal() => false,
        _ = services.ended() => true,
    };
    // A stop waits for the database at most each role's database_timeout; a second signal
    // ends it at once. Nothing unstored has been acknowledged, so the broker delivers again
    // what was not stored, as after a crash.
    let summary = tokio::select! {
        summary = services.stop() => summary,
        _ = shutdown_signal() => {
            eprintln!(
                "stopped at a second signal without waiting for the roles to finish; what was \
                 not stored stays with the broker"
            );
            return ExitCode::from(SECOND_SIGNAL);
        }
    };
    tracing::info!(?summary, "stopped");
    if role_ended {
        eprintln!("a role of the server stopped by itself (see the log); the server stopped too");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
