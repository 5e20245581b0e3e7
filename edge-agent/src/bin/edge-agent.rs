//! `edge-agent`: runs on a gateway, checks a configuration file, or reads the devices and
//! prints their values.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use edge_agent::modbus::line::{Line, Sample, TagScope};
use edge_agent::modbus::transport::group_devices;
use edge_agent::read::{Format, Printer};
use edge_agent::{Agent, AgentConfig, AgentStats};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "edge-agent",
    version,
    about = "MaintAInPro edge agent: PLCs and sensors to MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll the configured devices and publish their readings.
    Run { config: PathBuf },
    /// Validate a configuration file without connecting to anything.
    Check { config: PathBuf },
    /// Read the configured devices and print decoded values; nothing is published.
    Read {
        config: PathBuf,
        /// Only this tag (its exact name).
        #[arg(long, value_name = "NAME")]
        tag: Option<String>,
        /// Read every device once and exit, instead of repeating until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &PathBuf) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    AgentConfig::from_toml(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                let unpublished = match c.unpublished_tag_count() {
                    0 => String::new(),
                    1 => "; 1 string tag, shown by `edge-agent read` but not published".into(),
                    n => format!("; {n} string tags, shown by `edge-agent read` but not published"),
                };
                let sources = match c.mqtt.len() {
                    0 => String::new(),
                    1 => ", 1 MQTT source".into(),
                    n => format!(", {n} MQTT sources"),
                };
                println!(
                    "{}: ok ({} devices, {} tags{sources}{unpublished})",
                    config.display(),
                    c.device.len(),
                    c.tag_count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Read {
            config,
            tag,
            once,
            json,
        } => {
            let devices = match load(&config).and_then(|c| {
                edge_agent::read::select(&c.device, tag.as_deref()).map_err(|e| e.to_string())
            }) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let format = if json {
                Format::JsonLines
            } else {
                Format::Table
            };
            let printer = Printer::new(&devices, format);
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            runtime.block_on(read(devices, printer, once));
            ExitCode::SUCCESS
        }
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}\nthe agent did not start; fix the configuration and retry");
                    return ExitCode::from(2);
                }
            };
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            let metrics = config.metrics.listen;
            let agent = async move {
                if let Some(addr) = metrics {
                    edge_agent::exporter::serve(addr).map_err(|e| e.to_string())?;
                }
                Agent::build(config)
                    .run_until(shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            };
            match runtime.block_on(agent) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge agent failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

/// Polls the lines of `devices` (all tags, strings included) and prints every sample: each
/// device once with `once`, otherwise on its poll interval until Ctrl-C or SIGTERM. Lines are
/// polled concurrently, as the agent does; the devices of one line one after another.
async fn read(devices: Vec<edge_agent::config::DeviceConfig>, printer: Printer, once: bool) {
    let stats = Arc::new(AgentStats::default());
    let lines: Vec<Line> = group_devices(&devices)
        .into_iter()
        .map(|line| {
            let members = line.into_iter().map(|i| devices[i].clone()).collect();
            Line::new(members, TagScope::All, Arc::clone(&stats))
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if let Some(header) = printer.header()
        && writeln!(out, "{header}").is_err()
    {
        return;
    }
    let print = |out: &mut std::io::StdoutLock<'_>, samples: &[Sample]| {
        samples
            .iter()
            .try_for_each(|s| writeln!(out, "{}", printer.line(s)))
            .and_then(|()| out.flush())
    };
    if once {
        let mut polls = tokio::task::JoinSet::new();
        for (n, mut line) in lines.into_iter().enumerate() {
            polls.spawn(async move { (n, line.poll_once().await) });
        }
        let mut done = Vec::new();
        while let Some(joined) = polls.join_next().await {
            match joined {
                Ok(result) => done.push(result),
                Err(e) => eprintln!("a line's poll failed: {e}"),
            }
        }
        // Printed in configuration order, whatever line answered first.
        done.sort_by_key(|(n, _)| *n);
        for (_, samples) in done {
            if print(&mut out, &samples).is_err() {
                return;
            }
        }
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Vec<Sample>>(16);
    let mut polls = tokio::task::JoinSet::new();
    for mut line in lines {
        let tx = tx.clone();
        polls.spawn(async move {
            loop {
                let samples = line.next().await;
                if tx.send(samples).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            samples = rx.recv() => match samples {
                Some(samples) if print(&mut out, &samples).is_ok() => {}
                _ => break,
            },
        }
    }
    polls.abort_all();
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
