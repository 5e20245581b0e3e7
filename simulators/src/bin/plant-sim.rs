//! `plant-sim`: serves a simulated plant as a Modbus PLC or an OPC-UA server, or publishes it
//! as a Sparkplug B edge node, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use simulators::opcua::{OpcUaServerSpec, spawn_opcua_server};
use simulators::sparkplug::{NodeSpec, spawn_sparkplug_node};
use simulators::{Scenario, spawn_modbus_plc, spawn_modbus_rtu_over_tcp_plc};
use tracing_subscriber::EnvFilter;

/// Serve a simulated plant as a Modbus TCP PLC (or RTU over TCP) or an OPC-UA server, or
/// publish it as a Sparkplug B edge node.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5020")]
    listen: SocketAddr,
    /// Scenario file (TOML); without it, the built-in demo plant is served.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Speak RTU frames over TCP, like a serial device behind a converter, instead of
    /// Modbus TCP.
    #[arg(long)]
    rtu_over_tcp: bool,
    /// Serve the plant as an OPC-UA server (opc.tcp://<listen>/) instead of Modbus: one
    /// variable per signal, `ns=2;s=<signal name>`.
    #[arg(long, conflicts_with_all = ["rtu_over_tcp", "sparkplug"])]
    opcua: bool,
    /// With --opcua: accept this user name and password (USER:PASSWORD; repeatable). Without
    /// any, logins are anonymous.
    #[arg(long, value_name = "USER:PASSWORD", requires = "opcua")]
    opcua_user: Vec<String>,
    /// With --opcua: where the server keeps its certificate.
    #[arg(long, value_name = "DIR", requires = "opcua")]
    pki_dir: Option<PathBuf>,
    /// Publish the plant as a Sparkplug B edge node to this broker (mqtt://host:port)
    /// instead of serving Modbus.
    #[arg(long, value_name = "BROKER")]
    sparkplug: Option<String>,
    /// Sparkplug group id.
    #[arg(long, default_value = "plant", requires = "sparkplug")]
    group: String,
    /// Sparkplug edge node id.
    #[arg(long, default_value = "plant-sim", requires = "sparkplug")]
    edge_node: String,
    /// Publish the signals on this device of the node (DBIRTH/DDATA) rather than on the node.
    #[arg(long, requires = "sparkplug")]
    device: Option<String>,
    /// Time between two data messages, such as 1s or 250ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "sparkplug")]
    interval: std::time::Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::demo(),
    };
    if let Some(broker) = args.sparkplug {
        let spec = NodeSpec {
            broker,
            group: args.group,
            edge_node: args.edge_node,
            device: args.device,
            interval: args.interval,
        };
        let node = spawn_sparkplug_node(spec, scenario).map_err(anyhow::Error::msg)?;
        stop_requested().await?;
        tracing::info!(
            births = node.births(),
            data = node.data_messages(),
            "stopping"
        );
        node.shutdown().await;
        return Ok(());
    }
    if args.opcua {
        let pki_dir = args
            .pki_dir
            .unwrap_or_else(|| std::env::temp_dir().join("maintainpro-plant-sim-pki"));
        let mut spec = OpcUaServerSpec::new(args.listen, pki_dir);
        for pair in &args.opcua_user {
            let (user, password) = pair
                .split_once(':')
                .with_context(|| format!("--opcua-user {pair:?} is not USER:PASSWORD"))?;
            spec.users.push((user.to_owned(), password.to_owned()));
        }
        spec.anonymous = spec.users.is_empty();
        let server = spawn_opcua_server(spec, scenario)
            .await
            .map_err(anyhow::Error::msg)?;
        tracing::info!(endpoint = %server.endpoint(), "serving OPC-UA");
        stop_requested().await?;
        tracing::info!("stopping");
        server.shutdown().await.map_err(anyhow::Error::msg)?;
        return Ok(());
    }
    let plc = if args.rtu_over_tcp {
        spawn_modbus_rtu_over_tcp_plc(args.listen, scenario).await
    } else {
        spawn_modbus_plc(args.listen, scenario).await
    };
    let plc = plc.with_context(|| format!("cannot listen on {}", args.listen))?;
    stop_requested().await?;
    tracing::info!("stopping");
    let served = plc.requests_served();
    plc.shutdown().await?;
    tracing::info!(served, "stopped");
    Ok(())
}

/// Waits for Ctrl-C or, on Unix, SIGTERM (what service managers and containers send).
async fn stop_requested() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot watch for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot watch for Ctrl-C")
    }
}
