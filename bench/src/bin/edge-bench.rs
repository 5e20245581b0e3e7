//! The edge agent at gateway scale: 1,000 tags polled every second from 10 simulated Modbus
//! PLCs (100 f32 tags each), published to a local Mosquitto. Reports the agent's resident
//! memory and CPU share over the measured window, and the Modbus requests it made per poll
//! cycle next to the coalesced minimum (each PLC's 200 registers need 2 requests of <= 125).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use maintainpro_bench::{Mosquitto, sample};
use model::TagName;
use simulators::{Scenario, Signal, SignalKind, spawn_modbus_plc};

const DEVICES: usize = 10;
const TAGS_PER_DEVICE: usize = 100;

#[derive(Debug, Parser)]
struct Args {
    /// Measured window, after the warm-up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// The edge-agent binary (default: next to this program).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
}

fn scenario() -> anyhow::Result<Scenario> {
    let signals = (0..TAGS_PER_DEVICE)
        .map(|i| -> anyhow::Result<Signal> {
            Ok(Signal {
                name: TagName::parse(format!("s{i:03}"))?,
                address: u16::try_from(i * 2)?,
                kind: SignalKind::Sine {
                    base: 50.0,
                    amplitude: 10.0,
                    period: Duration::from_secs(30 + i as u64),
                },
                noise: 0.2,
                breach: None,
                faults: Vec::new(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Scenario::new(7, signals)?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let agent_bin = match args.agent {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("program directory")?
            .join("edge-agent"),
    };
    if !agent_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p edge-agent`",
            agent_bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let mosquitto = Mosquitto::start(&args.mosquitto, dir.path(), "")?;

    let mut plcs = Vec::new();
    for _ in 0..DEVICES {
        plcs.push(spawn_modbus_plc("127.0.0.1:0".parse()?, scenario()?).await?);
    }
    let mut config = format!(
        "[gateway]\ntenant = \"{}\"\nid = \"bench-gw\"\n\n[uplink]\nbroker = \"{}\"\n\n\
         [outbox]\ndir = {}\n",
        uuid::Uuid::new_v4(),
        mosquitto.url,
        toml::Value::String(dir.path().join("outbox").display().to_string())
    );
    for (d, plc) in plcs.iter().enumerate() {
        config.push_str(&format!(
            "\n[[device]]\nname = \"plc-{d}\"\nprotocol = \"modbus-tcp\"\naddress = \"{}\"\npoll_interval = \"1s\"\n",
            plc.local_addr()
        ));
        for i in 0..TAGS_PER_DEVICE {
            config.push_str(&format!(
                "[[device.tag]]\nname = \"plc-{d}.s{i:03}\"\ntable = \"holding\"\naddress = {}\ndata_type = \"f32\"\n",
                i * 2
            ));
        }
    }
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, config)?;
    let mut agent = Command::new(&agent_bin)
        .arg("run")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = agent.id();

    tokio::time::sleep(args.warmup).await;
    let before = sample(pid).context("the agent exited during warm-up")?;
    let requests_before: u64 = plcs.iter().map(|p| p.requests_served()).sum();
    let start = Instant::now();
    let mut max_rss = before.rss_bytes;
    while start.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = sample(pid).context("the agent exited during the run")?;
        max_rss = max_rss.max(s.rss_bytes);
    }
    let after = sample(pid).context("the agent exited during the run")?;
    let elapsed = start.elapsed().as_secs_f64();
    let requests: u64 = plcs.iter().map(|p| p.requests_served()).sum::<u64>() - requests_before;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    agent.wait()?;
    drop(mosquitto);
    for p in plcs {
        p.shutdown().await?;
    }

    let cpu_share = (after.cpu - before.cpu).as_secs_f64() / elapsed * 100.0;
    let cycles = elapsed; // one poll cycle per second
    let minimum = DEVICES * TAGS_PER_DEVICE.div_ceil(62); // 62 f32 tags fit in 125 registers
    println!(
        "{}",
        serde_json::json!({
            "tags": DEVICES * TAGS_PER_DEVICE,
            "devices": DEVICES,
            "window_s": elapsed.round(),
            "agent_max_rss_mib": (max_rss as f64 / 1048576.0 * 10.0).round() / 10.0,
            "agent_cpu_percent_of_one_core": (cpu_share * 100.0).round() / 100.0,
            "modbus_requests_per_cycle": (requests as f64 / cycles * 10.0).round() / 10.0,
            "coalesced_minimum_per_cycle": minimum,
        })
    );
    Ok(())
}
