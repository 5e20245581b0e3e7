//! The edge agent against real failures: SIGKILL mid-stream, and the broker going away under
//! load. A ledger subscriber on the broker records every batch that arrives; the test checks
//! that every batch the agent confirmed to its outbox arrives, whatever happened in between.
//!
//! Needs Mosquitto: `MPTEST_MQTT_URL` for a shared broker and the `mosquitto` binary
//! for a private one (both provided by `scripts/test.sh`).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use edge_agent::{Agent, AgentConfig, AgentStats};
use model::{GatewayId, TenantId};
use simulators::mosquitto::PrivateBroker;
use simulators::{Scenario, spawn_modbus_plc};
use tokio_util::sync::CancellationToken;

/// seq -> (readings, times received)
type Ledger = Arc<Mutex<BTreeMap<u64, (usize, usize)>>>;

/// A subscriber with a persistent session that records every batch on `topic`.
fn ledger(broker: &str, topic: String, cancel: CancellationToken) -> anyhow::Result<Ledger> {
    let ledger: Ledger = Arc::default();
    let out = Arc::clone(&ledger);
    common::on_batches(broker, topic, cancel, move |batch| {
        let mut l = out.lock().expect("ledger lock");
        let entry = l.entry(batch.seq).or_insert((batch.points.len(), 0));
        entry.1 += 1;
    })?;
    Ok(ledger)
}

fn config_text(
    tenant: TenantId,
    broker: &str,
    plc: SocketAddr,
    outbox: &Path,
    poll: &str,
) -> String {
    let mut text = format!(
        "[gateway]\ntenant = \"{tenant}\"\nid = \"gw-test\"\n\n[uplink]\nbroker = \"{broker}\"\n\
         batch_max_age = \"200ms\"\nbatch_max_readings = 50\n\n[outbox]\ndir = {}\n\n\
         [[device]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"{plc}\"\npoll_interval = \"{poll}\"\n",
        toml::Value::String(outbox.display().to_string())
    );
    for (i, name) in ["bearing_temp", "vibration", "motor_current", "cycle_count"]
        .iter()
        .enumerate()
    {
        text.push_str(&format!(
            "\n[[device.tag]]\nname = \"{name}\"\ntable = \"holding\"\naddress = {}\ndata_type = \"f32\"\n",
            i * 2
        ));
    }
    text
}

async fn wait_for(
    within: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `(seq, readings)` of every "sealed" line the agent logged: batches confirmed durable.
fn sealed_in(log: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("sealed")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(seq), Some(n)) = (field("seq="), field("readings=")) {
            out.insert(seq, n as usize);
        }
    }
    out
}

fn spawn_agent(config: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("run")
        .arg(config)
        .env("RUST_LOG", "edge_agent::agent=debug")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_confirmed_batch() -> anyhow::Result<()> {
    let broker = std::env::var("MPTEST_MQTT_URL")
        .context("MPTEST_MQTT_URL is not set: run scripts/test.sh")?;
    let tenant = TenantId::new_random();
    let topic = model::topic::readings(tenant, &GatewayId::parse("gw-test")?);
    let stop = CancellationToken::new();
    let ledger = ledger(&broker, topic, stop.clone())?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plc = spawn_modbus_plc("127.0.0.1:0".parse()?, Scenario::demo()).await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        config_text(
            tenant,
            &broker,
            plc.local_addr(),
            &dir.path().join("outbox"),
            "50ms",
        ),
    )?;
    let log = dir.path().join("agent.log");

    for round in 0..3 {
        let mut child = spawn_agent(&config, &log)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if round < 2 {
            child.kill()?; // SIGKILL
        } else {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        child.wait()?;
    }
    let log_text = std::fs::read_to_string(&log)?;
    let sealed = sealed_in(&log_text);
    assert!(
        sealed.len() >= 15,
        "the agent sealed too little to prove anything:\n{log_text}"
    );
    wait_for(
        Duration::from_secs(15),
        "every confirmed batch at the broker",
        || {
            let l = ledger.lock().expect("ledger lock");
            sealed.keys().all(|s| l.contains_key(s))
        },
    )
    .await
    .with_context(|| {
        let l = ledger.lock().expect("ledger lock");
        let missing: Vec<_> = sealed.keys().filter(|s| !l.contains_key(s)).collect();
        format!("missing batches {missing:?}")
    })?;
    {
        let l = ledger.lock().expect("ledger lock");
        for (seq, readings) in &sealed {
            assert_eq!(
                l[seq].0, *readings,
                "batch {seq} arrived with other content"
            );
        }
    }
    assert!(
        log_text.contains("outbox recovered"),
        "restarts replayed the outbox:\n{log_text}"
    );
    stop.cancel();
    plc.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_under_load_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut broker = PrivateBroker::start(dir.path())?;
    let tenant = TenantId::new_random();
    let topic = model::topic::readings(tenant, &GatewayId::parse("gw-test")?);
    let stop_ledger = CancellationToken::new();
    let ledger = ledger(&broker.url(), topic, stop_ledger.clone())?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plc = spawn_modbus_plc("127.0.0.1:0".parse()?, Scenario::demo()).await?;
    let config = AgentConfig::from_toml_with_env(
        "agent",
        &config_text(
            tenant,
            &broker.url(),
            plc.local_addr(),
            &dir.path().join("outbox"),
            "20ms",
        ),
        Vec::new(),
    )?;
    let agent = Agent::build(config);
    let stats = agent.stats();
    let stop_agent = CancellationToken::new();
    let run = {
        let stop = stop_agent.clone();
        tokio::spawn(agent.run_until(async move { stop.cancelled().await }))
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.pause()?;
    let acked_at_cut = AgentStats::get(&stats.readings_acked);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sealed_during = AgentStats::get(&stats.readings_sealed);
    broker.resume()?;
    wait_for(
        Duration::from_secs(20),
        "the backlog to drain after the outage",
        || AgentStats::get(&stats.readings_acked) >= sealed_during,
    )
    .await?;
    stop_agent.cancel();
    run.await??;

    let sealed = AgentStats::get(&stats.readings_sealed);
    assert_eq!(AgentStats::get(&stats.readings_dropped), 0);
    assert_eq!(
        AgentStats::get(&stats.readings_acked),
        sealed,
        "every sealed reading was acknowledged"
    );
    assert!(
        sealed_during > acked_at_cut,
        "readings kept coming during the outage"
    );
    wait_for(
        Duration::from_secs(15),
        "every reading at the ledger",
        || {
            let l = ledger.lock().expect("ledger lock");
            l.values().map(|(n, _)| *n as u64).sum::<u64>() >= sealed
        },
    )
    .await?;
    let received: u64 = ledger
        .lock()
        .expect("ledger lock")
        .values()
        .map(|(n, _)| *n as u64)
        .sum();
    assert_eq!(
        received, sealed,
        "each reading arrived, counted once per batch"
    );
    stop_ledger.cancel();
    plc.shutdown().await?;
    Ok(())
}
