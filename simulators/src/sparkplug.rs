//! A Sparkplug B edge node that publishes a scenario's signals to a broker.
//!
//! [`NodeMessages`] builds the messages (pure): births that name every signal with an alias
//! (alias = the signal's index + 1), data messages by alias only, deaths carrying the
//! connection's `bdSeq`. Signals go on the node itself, or on one device of it (`DBIRTH`,
//! `DDATA`, `DDEATH`). A dropout fault is a null value; the scenario's outages are comms loss:
//! the device dies (or, without a device, the node dies) at the start and is born again at
//! the end.
//!
//! [`spawn_sparkplug_node`] runs it against a broker: the `NDEATH` is the MQTT will, a
//! `Node Control/Rebirth` command on the node's `NCMD` topic makes it publish its births
//! again, and every new connection counts `bdSeq` up, as the specification asks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use model::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use model::sparkplug::{BD_SEQ, MessageType, REBIRTH_METRIC, Topic};
use prost::Message as _;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Scenario;

/// Where and how the node publishes.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// `mqtt://host:port`.
    pub broker: String,
    pub group: String,
    pub edge_node: String,
    /// Publish the signals on this device of the node rather than on the node itself.
    pub device: Option<String>,
    pub interval: Duration,
}

/// The messages of one edge node, numbered as the specification asks. Pure.
#[derive(Debug, Clone)]
pub struct NodeMessages {
    scenario: Scenario,
    group: String,
    node: String,
    device: Option<String>,
    bd_seq: u64,
    seq: u8,
}

impl NodeMessages {
    pub fn new(scenario: Scenario, group: &str, node: &str, device: Option<&str>) -> Self {
        Self {
            scenario,
            group: group.to_owned(),
            node: node.to_owned(),
            device: device.map(str::to_owned),
            bd_seq: 0,
            seq: 0,
        }
    }

    /// The `bdSeq` of the current connection.
    pub fn bd_seq(&self) -> u64 {
        self.bd_seq
    }

    /// A new MQTT connection: the next `bdSeq`.
    pub fn next_connection(&mut self) {
        self.bd_seq = (self.bd_seq + 1) % 256;
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(seq)
    }

    fn node_topic(&self, kind: MessageType) -> String {
        Topic::node(&self.group, kind, &self.node)
    }

    fn signal_topic(&self, kind: MessageType) -> String {
        match (&self.device, kind) {
            (Some(d), MessageType::NBirth) => {
                Topic::device(&self.group, MessageType::DBirth, &self.node, d)
            }
            (Some(d), MessageType::NData) => {
                Topic::device(&self.group, MessageType::DData, &self.node, d)
            }
            (Some(d), MessageType::NDeath) => {
                Topic::device(&self.group, MessageType::DDeath, &self.node, d)
            }
            _ => self.node_topic(kind),
        }
    }

    fn bd_seq_metric(&self) -> Metric {
        Metric::new(BD_SEQ, DataType::Int64, MetricValue::Long(self.bd_seq))
    }

    /// The node's will: its death with this connection's `bdSeq`.
    pub fn death(&self) -> (String, Vec<u8>) {
        let payload = Payload {
            metrics: vec![self.bd_seq_metric()],
            ..Payload::default()
        };
        (
            self.node_topic(MessageType::NDeath),
            payload.encode_to_vec(),
        )
    }

    /// The births at `t` seconds after start: `NBIRTH`, then `DBIRTH` when there is a device.
    /// The node's sequence starts again at 0.
    pub fn births(&mut self, t: f64, now_ms: u64) -> Vec<(String, Vec<u8>)> {
        self.seq = 0;
        let mut node_metrics = vec![
            self.bd_seq_metric(),
            Metric::new(
                REBIRTH_METRIC,
                DataType::Boolean,
                MetricValue::Boolean(false),
            ),
        ];
        let signals: Vec<Metric> = self
            .scenario
            .signals()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let metric = value_metric(self.scenario.value_of(s.name.as_str(), t));
                Metric {
                    name: Some(s.name.as_str().to_owned()),
                    datatype: Some(DataType::Double.code()),
                    ..metric
                }
                .with_alias(i as u64 + 1)
            })
            .collect();
        let mut out = Vec::new();
        if self.device.is_none() {
            node_metrics.extend(signals);
            let seq = self.next_seq();
            out.push((
                self.node_topic(MessageType::NBirth),
                payload(now_ms, seq, node_metrics),
            ));
        } else {
            let seq = self.next_seq();
            out.push((
                self.node_topic(MessageType::NBirth),
                payload(now_ms, seq, node_metrics),
            ));
            let seq = self.next_seq();
            out.push((
                self.signal_topic(MessageType::NBirth),
                payload(now_ms, seq, signals),
            ));
        }
        out
    }

    /// The values at `t` seconds after start, by alias.
    pub fn data(&mut self, t: f64, now_ms: u64) -> (String, Vec<u8>) {
        let metrics = self
            .scenario
            .signals()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let m = value_metric(self.scenario.value_of(s.name.as_str(), t));
                Metric {
                    alias: Some(i as u64 + 1),
                    ..m
                }
            })
            .collect();
        let seq = self.next_seq();
        (
            self.signal_topic(MessageType::NData),
            payload(now_ms, seq, metrics),
        )
    }

    /// Comms loss: the device's death, or without a device the node's.
    pub fn comms_lost(&mut self, now_ms: u64) -> (String, Vec<u8>) {
        if self.device.is_some() {
            let seq = self.next_seq();
            (
                self.signal_topic(MessageType::NDeath),
                payload(now_ms, seq, Vec::new()),
            )
        } else {
            self.death()
        }
    }

    /// Whether `t` seconds after start falls in one of the scenario's outages.
    pub fn in_outage(&self, t: f64) -> bool {
        self.scenario.outage_at(t).is_some()
    }
}

fn payload(now_ms: u64, seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(now_ms),
        metrics,
        seq: Some(seq),
        ..Payload::default()
    }
    .encode_to_vec()
}

/// A double metric, or a null one for a value that is not a number (a dropout).
fn value_metric(value: Option<f64>) -> Metric {
    match value {
        Some(v) if v.is_finite() => Metric {
            value: Some(MetricValue::Double(v)),
            ..Metric::default()
        },
        _ => Metric {
            is_null: Some(true),
            ..Metric::default()
        },
    }
}

fn now_ms() -> u64 {
    u64::try_from(model::Timestamp::now().as_micros() / 1000).unwrap_or(0)
}

/// A running simulated edge node.
#[derive(Debug)]
pub struct NodeHandle {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    births: Arc<AtomicU64>,
    data: Arc<AtomicU64>,
}

impl NodeHandle {
    /// Births published so far (one per connection, and one per rebirth request).
    pub fn births(&self) -> u64 {
        self.births.load(Ordering::Relaxed)
    }

    /// Data messages published so far.
    pub fn data_messages(&self) -> u64 {
        self.data.load(Ordering::Relaxed)
    }

    /// Stops publishing and disconnects cleanly (a clean disconnect does not send the will).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// Connects to the broker and publishes until shut down, reconnecting with the next `bdSeq`
/// when the connection drops.
pub fn spawn_sparkplug_node(spec: NodeSpec, scenario: Scenario) -> Result<NodeHandle, String> {
    let (host, port) = model::topic::broker_address(&spec.broker).map_err(|e| e.to_string())?;
    let cancel = CancellationToken::new();
    let births = Arc::new(AtomicU64::new(0));
    let data = Arc::new(AtomicU64::new(0));
    let mut messages = NodeMessages::new(
        scenario,
        &spec.group,
        &spec.edge_node,
        spec.device.as_deref(),
    );
    let task = {
        let (cancel, births, data) = (cancel.clone(), Arc::clone(&births), Arc::clone(&data));
        tokio::spawn(async move {
            let started = Instant::now();
            while !cancel.is_cancelled() {
                let (will_topic, will) = messages.death();
                let mut options = MqttOptions::new(
                    format!(
                        "sparkplug-sim-{}-{}",
                        spec.edge_node,
                        uuid::Uuid::new_v4().simple()
                    ),
                    host.clone(),
                    port,
                );
                options
                    .set_keep_alive(Duration::from_secs(5))
                    .set_last_will(LastWill::new(will_topic, will, QoS::AtLeastOnce, false));
                let (client, eventloop) = AsyncClient::new(options, 64);
                let stats = (&births, &data);
                connection(
                    &client,
                    eventloop,
                    &mut messages,
                    &spec,
                    started,
                    stats,
                    &cancel,
                )
                .await;
                messages.next_connection();
                if !cancel.is_cancelled() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        })
    };
    Ok(NodeHandle {
        cancel,
        task,
        births,
        data,
    })
}

/// One MQTT connection of the node, until it drops or the node is shut down.
async fn connection(
    client: &AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    messages: &mut NodeMessages,
    spec: &NodeSpec,
    started: Instant,
    (births, data): (&Arc<AtomicU64>, &Arc<AtomicU64>),
    cancel: &CancellationToken,
) {
    let ncmd = Topic::node(&spec.group, MessageType::NCmd, &spec.edge_node);
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut born = false;
    let mut out_of_service = false;
    let publish = |(topic, payload): (String, Vec<u8>)| {
        let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload);
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = client.try_disconnect();
                // Let the disconnect go out.
                let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
                return;
            }
            _ = tick.tick(), if born => {
                let t = started.elapsed().as_secs_f64();
                match (messages.in_outage(t), out_of_service) {
                    (true, false) => {
                        out_of_service = true;
                        publish(messages.comms_lost(now_ms()));
                    }
                    (false, true) => {
                        out_of_service = false;
                        for m in messages.births(t, now_ms()) {
                            publish(m);
                        }
                        births.fetch_add(1, Ordering::Relaxed);
                    }
                    (false, false) => {
                        publish(messages.data(t, now_ms()));
                        data.fetch_add(1, Ordering::Relaxed);
                    }
                    (true, true) => {}
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(ncmd.clone(), QoS::AtLeastOnce);
                    for m in messages.births(started.elapsed().as_secs_f64(), now_ms()) {
                        publish(m);
                    }
                    births.fetch_add(1, Ordering::Relaxed);
                    born = true;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ncmd => {
                    if asks_rebirth(&p.payload) {
                        tracing::info!("rebirth requested");
                        for m in messages.births(started.elapsed().as_secs_f64(), now_ms()) {
                            publish(m);
                        }
                        births.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "connection to the broker lost");
                    return;
                }
            }
        }
    }
}

fn asks_rebirth(payload: &[u8]) -> bool {
    Payload::decode(payload).is_ok_and(|p| {
        p.metrics.iter().any(|m| {
            m.name.as_deref() == Some(REBIRTH_METRIC) && m.value == Some(MetricValue::Boolean(true))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::sparkplug::NodeSession;
    use model::{Quality, Timestamp};

    fn read_all(session: &mut NodeSession, messages: &[(String, Vec<u8>)]) -> Vec<model::Reading> {
        let mut readings = Vec::new();
        for (topic, payload) in messages {
            let out = session.on_message(
                &Topic::parse(topic).unwrap(),
                payload,
                Timestamp::from_micros(0),
            );
            assert!(out.problems.is_empty(), "{topic}: {:?}", out.problems);
            readings.extend(out.readings);
        }
        readings
    }

    #[test]
    fn a_host_session_reads_what_the_node_publishes() {
        for device in [None, Some("press-1")] {
            let mut node = NodeMessages::new(Scenario::demo(), "plant", "sim", device);
            let mut host = NodeSession::new("sim/");
            let mut messages = node.births(0.0, 1000);
            messages.push(node.data(1.0, 2000));
            messages.push(node.data(2.0, 3000));
            let readings = read_all(&mut host, &messages);
            assert_eq!(readings.len(), 12, "{device:?}");
            let first = device.map_or("sim/bearing_temp".to_owned(), |d| {
                format!("sim/{d}/bearing_temp")
            });
            assert_eq!(readings[0].tag.as_str(), first);
            let expected = Scenario::demo().value_of("bearing_temp", 2.0).unwrap();
            assert_eq!(readings[8].value, expected);
            assert_eq!(readings[8].ts, Timestamp::from_micros(3_000_000));

            // Comms loss, and the births after it.
            let lost = node.comms_lost(4000);
            let dead = read_all(&mut host, &[lost]);
            assert_eq!(dead.len(), 4);
            assert!(dead.iter().all(|r| r.quality == Quality::Bad));
            let again = node.births(5.0, 5000);
            // Without a device the node died, so its births start a new session.
            assert_eq!(read_all(&mut host, &again).len(), 4);
        }
    }

    #[test]
    fn each_connection_has_its_own_bd_seq_and_will() {
        let mut node = NodeMessages::new(Scenario::demo(), "plant", "sim", None);
        let (topic, first) = node.death();
        assert_eq!(topic, "spBv1.0/plant/NDEATH/sim");
        node.next_connection();
        assert_eq!(node.bd_seq(), 1);
        assert_ne!(node.death().1, first);
        assert!(asks_rebirth(&model::sparkplug::rebirth_request(1)));
        assert!(!asks_rebirth(b"junk"));
    }
}
