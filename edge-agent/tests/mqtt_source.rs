//! The MQTT source against a real broker: a simulated Sparkplug B edge node and a plain JSON
//! publisher on Mosquitto, the agent subscribed to both, and a ledger subscriber reading the
//! batches the agent publishes.
//!
//! Needs Mosquitto: `MPTEST_MQTT_URL` (provided by `scripts/test.sh`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use edge_agent::{Agent, AgentConfig};
use model::{GatewayId, Quality, Reading, TenantId, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use simulators::Scenario;
use simulators::sparkplug::{NodeSpec, spawn_sparkplug_node};
use tokio_util::sync::CancellationToken;

type Seen = Arc<Mutex<Vec<Reading>>>;

/// Collects every reading of every batch published on `topic`.
fn ledger(broker: &str, topic: String, cancel: CancellationToken) -> anyhow::Result<Seen> {
    let seen: Seen = Arc::default();
    let out = Arc::clone(&seen);
    common::on_batches(broker, topic, cancel, move |batch| {
        out.lock().expect("ledger lock").extend(batch.readings());
    })?;
    Ok(seen)
}

/// Publishes `messages` with QoS 1 and returns once the broker acknowledged them all.
async fn publish(broker: &str, messages: Vec<(String, String)>) -> anyhow::Result<()> {
    let (host, port) = model::topic::broker_address(broker)?;
    let options = MqttOptions::new(
        format!("json-pub-{}", uuid::Uuid::new_v4().simple()),
        host,
        port,
    );
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let total = messages.len();
    for (topic, body) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
            .await?;
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while acked < total {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                acked += 1;
            }
        }
        client.disconnect().await?;
        while !matches!(
            eventloop.poll().await?,
            Event::Outgoing(Outgoing::Disconnect)
        ) {}
        anyhow::Ok(())
    })
    .await
    .context("the broker did not acknowledge the JSON messages")?
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

fn json_message(topic: &str, i: i64) -> (String, String) {
    let ts = 1_796_205_600_000 + i * 1000;
    (
        topic.to_owned(),
        format!(r#"{{"t": {}.5, "ts": {ts}}}"#, 40 + i),
    )
}

fn json_readings_in(seen: &Seen) -> Vec<(f64, i64)> {
    let mut v: Vec<(f64, i64)> = seen
        .lock()
        .expect("ledger lock")
        .iter()
        .filter(|r| r.tag.as_str() == "pump-1.temp")
        .map(|r| (r.value, r.ts.as_micros()))
        .collect();
    v.sort_by_key(|r| r.1);
    v.dedup();
    v
}

/// Starts the agent on `config` in this process; cancel the token to stop it.
fn start_agent(
    config: &AgentConfig,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let stop = CancellationToken::new();
    let agent = Agent::build(config.clone());
    let until = stop.clone();
    let task = tokio::spawn(async move {
        agent.run_until(until.cancelled_owned()).await?;
        anyhow::Ok(())
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_nodes_and_json_publishers_become_readings() -> anyhow::Result<()> {
    let broker = std::env::var("MPTEST_MQTT_URL")
        .context("MPTEST_MQTT_URL is not set: run scripts/test.sh")?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let group = format!("g{run}");
    let json_root = format!("j{run}");
    let tenant = TenantId::new_random();
    let gateway = GatewayId::parse("gw-mqtt")?;
    let stop_ledger = CancellationToken::new();
    let seen = ledger(
        &broker,
        model::topic::readings(tenant, &gateway),
        stop_ledger.clone(),
    )?;

    // The node is up before the agent: the agent sees data whose aliases it cannot read
    // and must ask for a rebirth.
    let node = spawn_sparkplug_node(
        NodeSpec {
            broker: broker.clone(),
            group: group.clone(),
            edge_node: "sim".into(),
            device: Some("press-1".into()),
            interval: Duration::from_millis(200),
        },
        Scenario::demo(),
    )
    .map_err(anyhow::Error::msg)?;
    wait_for(Duration::from_secs(10), "the node's first data", || {
        node.data_messages() >= 2
    })
    .await?;

    let outbox = tempfile::tempdir()?;
    let text = format!(
        r#"
[gateway]
tenant = "{tenant}"
id = "{gateway}"

[uplink]
broker = "{broker}"
batch_max_age = "100ms"

[outbox]
dir = {outbox}

[[mqtt]]
name = "floor"
broker = "{broker}"
client_id = "agent-{run}"

[[mqtt.sparkplug]]
group = "{group}"

[[mqtt.json]]
topic = "{json_root}/+/state"
tag = "{{2}}.temp"
value = "/t"
timestamp = "/ts"
"#,
        outbox = toml::Value::String(outbox.path().display().to_string()),
    );
    let config = AgentConfig::from_toml_with_env("agent.toml", &text, Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (stop, agent) = start_agent(&config);

    wait_for(
        Duration::from_secs(15),
        "a rebirth requested by the agent",
        || node.births() >= 2,
    )
    .await?;
    let state = format!("{json_root}/pump-1/state");
    publish(&broker, (0..5).map(|i| json_message(&state, i)).collect()).await?;
    wait_for(
        Duration::from_secs(15),
        "Sparkplug and JSON readings",
        || {
            let l = seen.lock().expect("ledger lock");
            let sparkplug = l
                .iter()
                .filter(|r| {
                    r.tag.as_str() == "sim/press-1/bearing_temp" && r.quality == Quality::Good
                })
                .count();
            drop(l);
            sparkplug >= 5 && json_readings_in(&seen).len() == 5
        },
    )
    .await?;
    // Event times are the node's own, not the time the agent got them.
    let temps: Vec<Reading> = seen
        .lock()
        .expect("ledger lock")
        .iter()
        .filter(|r| r.tag.as_str() == "sim/press-1/bearing_temp")
        .cloned()
        .collect();
    let now = Timestamp::now();
    assert!(
        temps
            .iter()
            .all(|r| now.micros_since(r.ts) < 60_000_000 && r.value > 50.0)
    );

    // Messages published while the agent is down wait in its persistent session. The node
    // goes on publishing data by alias meanwhile: the agent reads it by the births it kept on
    // disk, without waiting for a new birth.
    stop.cancel();
    agent.await??;
    let stopped = Timestamp::now();
    publish(&broker, (5..8).map(|i| json_message(&state, i)).collect()).await?;
    let data_before = node.data_messages();
    wait_for(
        Duration::from_secs(10),
        "data while the agent is down",
        || node.data_messages() >= data_before + 3,
    )
    .await?;
    let restarted = Timestamp::now();
    let (stop, agent) = start_agent(&config);
    wait_for(
        Duration::from_secs(15),
        "the messages published during the restart",
        || {
            let while_down = seen
                .lock()
                .expect("ledger lock")
                .iter()
                .filter(|r| {
                    r.tag.as_str() == "sim/press-1/bearing_temp"
                        && r.ts > stopped
                        && r.ts < restarted
                })
                .count();
            json_readings_in(&seen).len() == 8 && while_down >= 2
        },
    )
    .await?;
    assert!(
        std::fs::read_dir(outbox.path().join("sparkplug"))?.count() >= 1,
        "the node's births are kept in the outbox directory"
    );
    let json = json_readings_in(&seen);
    for (i, (value, ts)) in json.iter().enumerate() {
        let i = i as i64;
        assert_eq!(*value, 40.5 + i as f64);
        assert_eq!(*ts, (1_796_205_600_000 + i * 1000) * 1000);
    }

    stop.cancel();
    agent.await??;
    node.shutdown().await;
    stop_ledger.cancel();
    Ok(())
}
