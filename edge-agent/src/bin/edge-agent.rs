//! `edge-agent`: runs on a gateway, checks a configuration file, or reads the devices and
//! prints their values.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use edge_agent::agent::Chunk;
use edge_agent::modbus::line::{Line, Sample, TagScope, Value};
use edge_agent::modbus::transport::group_devices;
use edge_agent::mqtt::source::MqttSource;
use edge_agent::opcua::source::OpcUaSource;
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
    /// Read the configured devices and OPC-UA servers and print decoded values; nothing is
    /// published. MQTT sources are watched in a session of their own: the agent's queued
    /// messages stay.
    Read {
        config: PathBuf,
        /// Only this tag (its exact name).
        #[arg(long, value_name = "NAME")]
        tag: Option<String>,
        /// Read every device and OPC-UA server once and exit, instead of repeating until
        /// Ctrl-C. MQTT sources are watched for `--listen` and then left.
        #[arg(long)]
        once: bool,
        /// With `--once`: how long MQTT sources are watched (e.g. 5s, 1m).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        listen: std::time::Duration,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is not a duration; write it like 5s, 500ms or 1m"))
}

fn load(path: &PathBuf) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    AgentConfig::from_toml(&path.display().to_string(), &text).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    edge_agent::logging::init("info", vec![edge_agent::logging::OPCUA_CLOSED_CLEANLY]);
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
                let opcua = match c.opcua.len() {
                    0 => String::new(),
                    1 => ", 1 OPC-UA server".into(),
                    n => format!(", {n} OPC-UA servers"),
                };
                println!(
                    "{}: ok ({} devices, {} tags{sources}{opcua}{unpublished})",
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
            listen,
            json,
        } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let opcua = edge_agent::read::select_opcua(&config.opcua, tag.as_deref());
            // A tag no device has may still come from an MQTT source (its names are known
            // only once messages arrive) or an OPC-UA server.
            let devices = match edge_agent::read::select(&config.device, tag.as_deref()) {
                Ok(d) => d,
                Err(_) if !config.mqtt.is_empty() || !opcua.is_empty() => Vec::new(),
                Err(mut e) => {
                    e.known.extend(
                        config
                            .opcua
                            .iter()
                            .flat_map(|o| &o.tag)
                            .map(|t| t.name.as_str().to_owned()),
                    );
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let format = if json {
                Format::JsonLines
            } else {
                Format::Table
            };
            let printer = Printer::new(&devices, format).with_tags(
                opcua
                    .iter()
                    .flat_map(|o| &o.tag)
                    .map(|t| (t.name.clone(), t.unit.clone())),
            );
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            let watch = Watch {
                sources: config.mqtt.clone(),
                opcua,
                gateway: config.gateway.id.clone(),
                tag,
                listen,
            };
            runtime.block_on(read(devices, watch, printer, once));
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

/// The MQTT and OPC-UA sources `read` watches, and which of their tags it prints.
struct Watch {
    sources: Vec<edge_agent::config::MqttSourceConfig>,
    /// OPC-UA servers, each with only the tags to print.
    opcua: Vec<edge_agent::config::OpcUaSourceConfig>,
    gateway: model::GatewayId,
    /// Only this tag.
    tag: Option<String>,
    /// With `--once`, how long the sources are watched.
    listen: std::time::Duration,
}

impl Watch {
    /// Starts watching every source (OPC-UA servers as the agent reads them, `read_once`
    /// being for `--once`); their readings, as samples, go to the returned receiver until
    /// `stop` is cancelled.
    fn start(
        &self,
        stats: &Arc<AgentStats>,
        stop: &tokio_util::sync::CancellationToken,
        once: bool,
    ) -> mpsc::Receiver<Vec<Sample>> {
        let (chunks, mut incoming) = mpsc::channel::<Chunk>(64);
        for source in &self.sources {
            let source =
                MqttSource::new(source.clone(), self.gateway.clone(), Arc::clone(stats)).watching();
            tokio::spawn(source.run(chunks.clone(), stop.clone()));
        }
        if !once {
            for server in &self.opcua {
                let source =
                    OpcUaSource::new(server.clone(), self.gateway.clone(), Arc::clone(stats))
                        .watching();
                tokio::spawn(source.run(chunks.clone(), stop.clone()));
            }
        }
        drop(chunks);
        let (tx, rx) = mpsc::channel(64);
        let tag = self.tag.clone();
        tokio::spawn(async move {
            while let Some(chunk) = incoming.recv().await {
                let samples: Vec<Sample> = chunk
                    .readings
                    .into_iter()
                    .filter(|r| tag.as_deref().is_none_or(|t| r.tag.as_str() == t))
                    .map(|r| Sample {
                        value: (r.quality != model::Quality::Bad).then_some(Value::Number(r.value)),
                        tag: r.tag,
                        ts: r.ts,
                        quality: r.quality,
                    })
                    .collect();
                if !samples.is_empty() && tx.send(samples).await.is_err() {
                    break;
                }
            }
        });
        rx
    }
}

/// Polls the lines of `devices` (all tags, strings included) and prints every sample: each
/// device once with `once`, otherwise on its poll interval until Ctrl-C or SIGTERM. Lines are
/// polled concurrently, as the agent does; the devices of one line one after another. The
/// MQTT sources' readings are printed as they arrive: for `watch.listen` with `once`,
/// otherwise until Ctrl-C or SIGTERM.
async fn read(
    devices: Vec<edge_agent::config::DeviceConfig>,
    watch: Watch,
    printer: Printer,
    once: bool,
) {
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
    let stop_watching = tokio_util::sync::CancellationToken::new();
    let mut watched = watch.start(&stats, &stop_watching, once);
    if once {
        let mut polls = tokio::task::JoinSet::new();
        let line_count = lines.len();
        for (n, mut line) in lines.into_iter().enumerate() {
            polls.spawn(async move { (n, line.poll_once().await) });
        }
        for (n, server) in watch.opcua.iter().enumerate() {
            let source =
                OpcUaSource::new(server.clone(), watch.gateway.clone(), Arc::clone(&stats));
            let name = server.name.clone();
            polls.spawn(async move {
                let samples = match source.read_once().await {
                    Ok(samples) => samples,
                    Err(e) => {
                        eprintln!("opcua {name}: {e}");
                        source.unreadable(model::Timestamp::now())
                    }
                };
                (line_count + n, samples)
            });
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
        if !watch.sources.is_empty() {
            let until = tokio::time::sleep(watch.listen);
            tokio::pin!(until);
            loop {
                tokio::select! {
                    _ = &mut until => break,
                    samples = watched.recv() => match samples {
                        Some(samples) if print(&mut out, &samples).is_ok() => {}
                        _ => break,
                    },
                }
            }
        }
        stop_watching.cancel();
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
    {
        let tx = tx.clone();
        polls.spawn(async move {
            while let Some(samples) = watched.recv().await {
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
    stop_watching.cancel();
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
