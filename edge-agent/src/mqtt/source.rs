//! The task that subscribes to one local broker and hands what it reads to the agent.
//!
//! The session is persistent (clean session off, QoS 1 subscriptions) and acknowledgements
//! are manual: a message is acknowledged to the local broker only after the readings it gave
//! are sealed into the outbox, so a crash of the agent before that point makes the broker
//! deliver the message again. Acknowledgements go out in the order the messages came, from a
//! task of their own, so waiting for a seal never stops the reading of later messages.
//!
//! `edge-agent read` runs a source as a watcher instead ([`MqttSource::watching`]): a session
//! of its own that the broker forgets (clean session, a client id of its own), so it takes
//! nothing from the agent's queued messages; it publishes nothing, not even rebirth requests.
//!
//! The agent's sources keep each Sparkplug B node's births on disk ([`BirthFiles`]), written
//! before the birth or death that changed them is acknowledged, and restore the node's session
//! from them at its first message after a start. A watcher keeps none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::sparkplug::{self, KeptBirths, NodeSession, Topic};
use model::{GatewayId, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::births::BirthFiles;
use super::config::MqttSourceConfig;
use super::json::JsonMapper;
use crate::agent::{AgentStats, Chunk};

/// Acknowledgements waiting for their seal; beyond it, reading waits.
const PENDING_ACKS: usize = 1024;
/// How long a stopping source waits to acknowledge what the agent sealed.
const DRAIN: Duration = Duration::from_secs(10);

/// One `[[mqtt]]` source, ready to run.
#[derive(Debug)]
pub struct MqttSource {
    config: MqttSourceConfig,
    gateway: GatewayId,
    json: JsonMapper,
    /// Edge nodes by (group, node id): the session and the births it follows.
    nodes: HashMap<(String, String), (NodeSession, Option<KeptBirths>)>,
    /// Where the nodes' births are kept; `None` keeps them in memory only.
    births: Option<BirthFiles>,
    rebirths: sparkplug::RebirthRequests,
    stats: Arc<AgentStats>,
    /// Watching for `edge-agent read`: no persistent session, no acknowledgements held back,
    /// nothing published.
    watch: bool,
}

impl MqttSource {
    pub fn new(config: MqttSourceConfig, gateway: GatewayId, stats: Arc<AgentStats>) -> Self {
        Self {
            json: JsonMapper::new(&config.json),
            config,
            gateway,
            nodes: HashMap::new(),
            births: None,
            rebirths: sparkplug::RebirthRequests::default(),
            stats,
            watch: false,
        }
    }

    /// Keeps the Sparkplug B nodes' births in `files`, and restores each node from them.
    pub fn keeping_births(mut self, files: BirthFiles) -> Self {
        self.births = Some(files);
        self
    }

    /// The source as `edge-agent read` runs it: in a session of its own that the broker
    /// forgets, publishing nothing. Its chunks carry no seal to wait for.
    pub fn watching(mut self) -> Self {
        self.watch = true;
        self
    }

    fn filters(&self) -> Vec<String> {
        let mut filters: Vec<String> = self.config.json.iter().map(|m| m.topic.clone()).collect();
        filters.extend(self.config.sparkplug.iter().flat_map(|s| s.filters()));
        filters.sort();
        filters.dedup();
        filters
    }

    /// Reads until `cancel`; readings go to `out`.
    #[tracing::instrument(skip_all, fields(source = %self.config.name))]
    pub async fn run(mut self, out: mpsc::Sender<Chunk>, cancel: CancellationToken) {
        let Ok(endpoint) = model::topic::broker_endpoint(&self.config.broker) else {
            // Validation refuses such a configuration before the agent starts.
            tracing::error!(broker = %self.config.broker, "not a broker URL; source stopped");
            return;
        };
        let (host, port) = (endpoint.host, endpoint.port);
        let client_id = if self.watch {
            format!(
                "{}-read-{}",
                self.config.client_id(&self.gateway),
                std::process::id()
            )
        } else {
            self.config.client_id(&self.gateway)
        };
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_clean_session(self.watch)
            .set_manual_acks(!self.watch)
            .set_max_packet_size(model::topic::MAX_INCOMING_PACKET, 64 * 1024);
        if endpoint.tls {
            // Validation builds the same configuration before the agent starts.
            match crate::tls::client_config(&self.config.tls_files(&self.config.name)) {
                Ok(tls) => {
                    options.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls),
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, key = e.key(), "TLS files unusable; source stopped");
                    return;
                }
            }
        }
        if let Some(user) = &self.config.username {
            let password = self.config.password.as_ref().map_or("", |p| p.expose());
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (acks, pending) = mpsc::channel(PENDING_ACKS);
        let acker = tokio::spawn(acknowledge(client.clone(), pending));
        let filters = self.filters();
        let mut connected = false;
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    tracing::info!(broker = %self.config.broker, "subscribed");
                    for f in &filters {
                        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                            tracing::error!(filter = %f, error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let sealed = self.on_publish(&client, &publish, &out).await;
                    // A watcher's client acknowledges by itself.
                    if !self.watch && acks.send((publish, sealed)).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!(error = %e, "connection to the local broker lost; retrying");
                        metrics::counter!("maintainpro_edge_mqtt_source_disconnects_total", "source" => self.config.name.clone()).increment(1);
                    }
                    connected = false;
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        // Stop handing readings over, then keep the connection turning until what the agent
        // sealed is acknowledged; later messages stay with the broker for the next start.
        drop(out);
        drop(acks);
        let drain = async {
            let mut acker = acker;
            let mut acked = false;
            loop {
                tokio::select! {
                    _ = &mut acker, if !acked => {
                        acked = true;
                        // Queued after the acknowledgements, so it goes out after them.
                        let _ = client.try_disconnect();
                    }
                    e = eventloop.poll() => match e {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) if acked => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Ok(_) => {}
                    },
                }
            }
        };
        if tokio::time::timeout(DRAIN, drain).await.is_err() {
            tracing::warn!(
                "acknowledgements still pending at stop; the broker will deliver those messages again"
            );
        }
    }

    /// Reads one message; the returned receiver fires once its readings are sealed.
    async fn on_publish(
        &mut self,
        client: &AsyncClient,
        publish: &Publish,
        out: &mpsc::Sender<Chunk>,
    ) -> Option<oneshot::Receiver<()>> {
        let received = Timestamp::now();
        let topic = publish.topic.clone();
        let readings = if let Some(sp) = self.sparkplug_topic(&topic) {
            self.sparkplug(client, &sp, &publish.payload, received)
                .await
        } else if self.json.wants(&topic) {
            let (readings, problems) = self.json.map(&topic, &publish.payload, received);
            for p in &problems {
                self.problem(&topic, p.reason(), p);
            }
            readings
        } else {
            Vec::new()
        };
        if readings.is_empty() {
            return None;
        }
        if self.watch {
            let chunk = Chunk {
                readings,
                on_sealed: None,
            };
            out.send(chunk).await.ok()?;
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let chunk = Chunk {
            readings,
            on_sealed: Some(tx),
        };
        // The agent is stopping when this fails; the message stays unacknowledged.
        out.send(chunk).await.ok()?;
        Some(rx)
    }

    fn sparkplug_topic(&self, topic: &str) -> Option<Topic> {
        let t = Topic::parse(topic).ok()?;
        self.config
            .sparkplug
            .iter()
            .any(|s| s.covers(&t.group, &t.edge_node))
            .then_some(t)
    }

    async fn sparkplug(
        &mut self,
        client: &AsyncClient,
        topic: &Topic,
        payload: &[u8],
        received: Timestamp,
    ) -> Vec<model::Reading> {
        let Some(sub) = self
            .config
            .sparkplug
            .iter()
            .find(|s| s.covers(&topic.group, &topic.edge_node))
        else {
            return Vec::new();
        };
        let key = (topic.group.clone(), topic.edge_node.clone());
        let prefix = format!("{}{}/", sub.tag_prefix, topic.edge_node);
        let rebirth = sub.rebirth;
        if !self.nodes.contains_key(&key) {
            let kept = self.load_births(&key).await;
            let session = match &kept {
                Some(k) => k.restore(prefix),
                None => NodeSession::new(prefix),
            };
            self.nodes.insert(key.clone(), (session, kept));
        }
        let (session, kept) = self.nodes.get_mut(&key).expect("inserted above");
        let outcome = session.on_message(topic, payload, received);
        // A source that keeps no births (the watcher) follows none.
        if let Some(change) = &outcome.change
            && self.births.is_some()
        {
            *kept = KeptBirths::apply(kept.take(), change, payload);
            let kept = kept.clone();
            self.save_births(&key, kept).await;
        }
        for p in &outcome.problems {
            self.problem(&topic.to_string(), p.reason(), p);
        }
        if outcome.rebirth && rebirth && !self.watch {
            self.ask_rebirth(client, topic);
        }
        outcome.readings
    }

    /// The births kept for a node, read at its first message since the start.
    async fn load_births(&self, (group, node): &(String, String)) -> Option<KeptBirths> {
        let files = self.births.clone()?;
        let (g, n) = (group.clone(), node.clone());
        match tokio::task::spawn_blocking(move || files.load(&g, &n)).await {
            Ok(Ok(Some(kept))) => {
                tracing::info!(%group, %node, devices = kept.devices.len(), "Sparkplug node restored from its kept births");
                Some(kept)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %group, %node, "kept births unreadable; the node is read from its next birth");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading kept births failed");
                None
            }
        }
    }

    /// Writes what a birth or death changed, before its message is acknowledged. A failure is
    /// logged and counted: the readings still flow, but after a restart the node's data waits
    /// for its next birth.
    async fn save_births(&self, (group, node): &(String, String), kept: Option<KeptBirths>) {
        let Some(files) = self.births.clone() else {
            return;
        };
        let (g, n) = (group.clone(), node.clone());
        let saved = tokio::task::spawn_blocking(move || files.save(&g, &n, kept.as_ref()))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        if let Err(e) = saved {
            metrics::counter!("maintainpro_edge_sparkplug_births_unsaved_total").increment(1);
            tracing::error!(error = %e, %group, %node, "cannot keep the node's births on disk");
        }
    }

    fn ask_rebirth(&mut self, client: &AsyncClient, topic: &Topic) {
        let Some((ncmd, payload)) = self.rebirths.due(topic, Instant::now(), Timestamp::now())
        else {
            return;
        };
        tracing::info!(topic = %ncmd, "asking the edge node to publish its births again");
        metrics::counter!("maintainpro_edge_sparkplug_rebirths_requested_total").increment(1);
        if let Err(e) = client.try_publish(ncmd, QoS::AtLeastOnce, false, payload) {
            tracing::warn!(error = %e, "cannot ask for a rebirth");
        }
    }

    fn problem(&self, topic: &str, reason: &'static str, problem: &dyn std::fmt::Display) {
        self.stats.count_decode_error();
        metrics::counter!("maintainpro_edge_mqtt_problems_total", "source" => self.config.name.clone(), "reason" => reason).increment(1);
        tracing::warn!(%topic, %problem, "message not fully read");
    }
}

/// Acknowledges messages in arrival order, each once its readings are sealed (at once when it
/// gave none).
async fn acknowledge(
    client: AsyncClient,
    mut pending: mpsc::Receiver<(Publish, Option<oneshot::Receiver<()>>)>,
) {
    while let Some((publish, sealed)) = pending.recv().await {
        if let Some(sealed) = sealed
            && sealed.await.is_err()
        {
            // The agent stopped before sealing: leave this and every later message
            // unacknowledged, so the broker delivers them again.
            return;
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "cannot acknowledge a message to the local broker");
            return;
        }
    }
}
