//! The MQTT consumer and the pipeline every message goes through.
//!
//! Three stages joined by bounded lock-free queues ([`crate::queue`]), so that the rules never
//! wait for the database:
//!
//! ```text
//! broker -> driver -[ingest.queue]-> decode -+-[STORE_QUEUE]-> store: up to ingest.writers
//!                                            |                 transactions at once; each
//!                                            |                 group's PUBACKs after its COMMIT,
//!                                            |                 in arrival order
//!                                            +-> rules: the message's readings, at once
//! ```
//!
//! - The driver owns rumqttc's event loop: it (re)subscribes after every connect and passes each
//!   PUBLISH, with the instant it arrived, into the decode queue. When that queue is full, or
//!   the messages not yet acknowledged hold `PIPELINE_BYTES`, it stops polling, so the broker
//!   holds further messages.
//! - The decode stage takes messages in arrival order: parses the topic, decodes the batch and
//!   resolves its gateway and tags (cached; a name not seen before is looked up, retrying
//!   transient database errors). It hands the message's readings, sorted by event time, to the
//!   rules, then passes the message on to the store queue.
//! - The store stage takes what is queued, up to [`GROUP_READINGS`] readings,
//!   [`GROUP_MESSAGES`] messages or `GROUP_BYTES` of them (waiting `ingest.linger` for more
//!   when there is one and the group is not full), and writes it in one transaction
//!   ([`crate::store`]), retrying transient errors and splitting a group the database refuses
//!   until the poison message is alone and becomes a dead letter. It writes up to
//!   `ingest.writers` groups at once, each on its own connection, so that one group is copied
//!   while another waits for its commit to reach the disk. Groups are acknowledged in the
//!   order they were formed: a group that commits before the one formed ahead of it waits for
//!   it, so the broker sees the acknowledgements in the order it sent the messages.
//!
//! Nothing is acknowledged before its commit, nor on a connection other than the one the
//! message came on ([`Connections`]). A full queue stops the stage before it: while
//! the database is down the store stage holds its groups, the queues fill, and the driver stops
//! taking messages from the broker.
//!
//! # Readings reach the rules before they are stored
//!
//! The rules get a message's readings once per delivery of the message, before its commit, so
//! they may get the same readings more than once: after a crash, or a stop with the database
//! down, before the commit (the broker delivers the message again), and when a message already
//! stored is delivered again (the ledger skips it as a duplicate, but it was decoded and handed
//! on). A write that is retried hands nothing on again. That is safe: the engine skips a
//! reading whose event time is not after its tag's last one, a restarted engine restores the
//! alarms on record as active so that a condition still present is not raised again, and the
//! work-order service applies an alarm event once per idempotency key.
//!
//! What becomes a dead letter in the decode stage never reaches the rules: a message that does
//! not decode, names an unknown gateway, or carries a time PostgreSQL cannot store, and the
//! readings of tags not registered. A message that passed all that and is still refused by
//! the database in the store stage (`store_rejected`) has been evaluated. That is accepted:
//! the data the database would refuse for what it is, a time outside `timestamptz`, is caught
//! in the decode stage, so what is left is the configuration changing under a message (its
//! gateway deleted after it was resolved) or a fault of the schema. The readings are genuine
//! measurements of registered tags, and the dead letter keeps their bytes.
//!
//! # Shutdown
//!
//! The driver stops passing messages on (what it receives from then on stays with the
//! broker). The decode stage decodes what it was passed before, its queue included, unless
//! the database is down or the rules cannot take readings (then it leaves the rest with the
//! broker); the store stage stores and acknowledges everything decoded: the groups in flight,
//! then the rest of its queue (it stops retrying if the database is down, without
//! acknowledging, but retries a write the database refused for a passing reason a few quick
//! times; an operation the database does not answer is given up after
//! `ingest.database_timeout`). Then ingest disconnects once the acknowledgements are out.
//! Messages not taken stay with the broker, which delivers them again to the next session.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use model::sparkplug::{self, MessageType, NodeSession, SessionChange};
use model::topic::Format;
use model::wire::Batch;
use model::{GatewayId, Quality, TenantId, Timestamp};
use rules::TagContext;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::IngestConfig;
use crate::copy::{self, Row};
use crate::directory::{self, Changes, Directory, Resolved};
use crate::queue::{Receiver, Sender};
use crate::store::{BirthRecord, DeadLetter, Item, Numbered, PgStore, StoreError, Written};

/// A reading on its way to the rules engine, handed over before it is stored.
#[derive(Debug, Clone)]
pub struct RuleInput {
    pub ctx: Arc<TagContext>,
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest.broker {0:?} is not mqtt://host[:port] or mqtts://host[:port]")]
    BadBroker(String),
    #[error("ingest TLS: {0}")]
    Tls(String),
    /// A stage of the pipeline ended before it was told to (a panic, a bug): ingest takes no
    /// more messages; what it had not stored is not acknowledged and comes again.
    #[error("ingest stopped by itself: {0}; restart it (nothing unstored was acknowledged)")]
    Stopped(String),
}

/// Counters ingest keeps; also exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages the driver passed into the decode queue (redelivered copies included).
    pub received: AtomicU64,
    /// Messages the decode stage took from its queue.
    pub messages: AtomicU64,
    pub readings_stored: AtomicU64,
    pub batches_stored: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub dead_letters: AtomicU64,
    pub retries: AtomicU64,
    /// Database operations given up because the database did not answer in time
    /// (`ingest.database_timeout`); each is retried on another connection.
    pub database_timeouts: AtomicU64,
    /// Subscriptions the broker confirmed at QoS 1 or 2 (one per connect): non-zero once
    /// messages flow.
    pub subscriptions: AtomicU64,
    /// Subscriptions the broker refused, or granted only at QoS 0, in part or whole.
    pub subscriptions_refused: AtomicU64,
    /// Messages stored but not acknowledged because the connection they came on was lost
    /// meanwhile (see [`Connections`]); the broker delivers them again and the ledger skips them.
    pub acks_withheld: AtomicU64,
    /// Announcements of changed gateways, tags or assets heard, and subscriptions of their
    /// listener made or lost: each makes the decode stage forget what it cached of them.
    pub directory_changes: AtomicU64,
    /// Lookups of a gateway or of tag names in the database by the decode stage: what it had
    /// not cached, found or not (see [`crate::directory`]).
    pub directory_lookups: AtomicU64,
    /// From a message's receipt to the commit of what it carried.
    pub receipt_to_commit: crate::latency::Histogram,
}

impl IngestStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Consumer {
    config: IngestConfig,
    store: PgStore,
    rules: Option<Sender<Vec<RuleInput>>>,
    stats: Arc<IngestStats>,
}

/// Most readings the store stage puts in one transaction; a group stops growing once it holds
/// this many. Measured with `ingest-bench` and `breach-bench` (BENCHMARKS.md): throughput is
/// the same as with groups of 64 messages of 1,000 readings, while a COPY and commit of at most
/// about 8,000 rows stays in the tens of milliseconds, so a backlog drains in short steps.
pub const GROUP_READINGS: usize = 8_000;
/// Most messages in one transaction, for groups of small batches. A quiet queue commits each
/// message at once, so grouping adds no latency.
pub const GROUP_MESSAGES: usize = 64;
/// Most bytes of messages in one transaction (a group stops growing once it holds this many).
/// A dead letter keeps its message's bytes, up to 16 MiB for an oversized one: without this
/// bound, 64 of them would make one transaction of a gigabyte that could outlast
/// `ingest.database_timeout` at every try. A batch of 1,000 readings is about 20 KB.
const GROUP_BYTES: usize = 8 << 20;
/// Bytes of messages received and not yet acknowledged (or let go at a stop) the pipeline
/// holds at most: beyond them the driver waits before it takes the next message, as it does
/// when the decode queue is full, so that large messages cannot fill memory before the queues
/// do. A message larger than this takes the whole budget.
const PIPELINE_BYTES: usize = 64 << 20;
/// Decoded messages waiting for the store stage: one full group can wait while the one before
/// is written.
const STORE_QUEUE: usize = GROUP_MESSAGES;
/// Sparkplug B nodes whose sessions the decode stage keeps in memory before it forgets those
/// offline (see `DecodeStage::restore_node`).
const MAX_NODES: usize = 65_536;
/// Tries of a write whose statement was cancelled or denied a lock (a timeout, an operator)
/// before it counts as refused, is split, and its poison message becomes a dead letter.
const INTERRUPTED_RETRIES: usize = 3;
/// The longest backoff after which a stopping store stage still retries a write the
/// database refused for a passing reason (a deadlock, a serialization failure, too many
/// connections): the first three retries, 700 ms in all. The database is up, so the messages
/// are stored and acknowledged instead of left with the broker; one that does not answer is
/// not waited for at a stop.
const STOPPING_BACKOFF: Duration = Duration::from_millis(400);
/// How long a stopping consumer waits for its acknowledgements and DISCONNECT to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);
/// The reason of the dead letter of a message from a gateway not registered.
const UNKNOWN_GATEWAY: &str = "unknown_gateway";
/// How often upcoming readings partitions are created.
const PARTITION_UPKEEP: Duration = Duration::from_secs(3600);

/// A message as the driver received it: when, on which connection ([`Connections`]), what,
/// and its share of [`PIPELINE_BYTES`], given back when the message is let go.
type Received = (Instant, u64, Publish, OwnedSemaphorePermit);

/// A decoded and resolved message on its way to the store stage.
#[derive(Debug)]
struct Decoded {
    received: Instant,
    delivery: Delivery,
    item: Item,
}

/// A message to acknowledge once stored, and the connection it came on.
#[derive(Debug)]
struct Delivery {
    connection: u64,
    publish: Publish,
    /// The message's share of [`PIPELINE_BYTES`].
    _bytes: OwnedSemaphorePermit,
}

/// Messages the store stage writes in one transaction.
#[derive(Debug, Default)]
struct Group {
    received: Vec<Instant>,
    deliveries: Vec<Delivery>,
    items: Vec<Item>,
    readings: usize,
    bytes: usize,
}

impl Group {
    fn push(&mut self, message: Decoded) {
        if let Item::Batch { rows, .. } = &message.item {
            self.readings += rows.len();
        }
        self.bytes += message.delivery.publish.payload.len();
        self.received.push(message.received);
        self.deliveries.push(message.delivery);
        self.items.push(message.item);
    }

    /// Whether the group has reached one of its limits.
    fn full(&self) -> bool {
        self.items.len() >= GROUP_MESSAGES
            || self.readings >= GROUP_READINGS
            || self.bytes >= GROUP_BYTES
    }
}

impl Consumer {
    /// `rules` receives each decoded message's readings, sorted by event time, before they
    /// are stored (see the module's documentation). The store waits for the database at
    /// most `config.database_timeout`.
    pub fn new(
        config: IngestConfig,
        store: PgStore,
        rules: Option<Sender<Vec<RuleInput>>>,
    ) -> Self {
        let store = store
            .with_timeout(config.database_timeout)
            .with_ledger_keep(config.ledger_keep());
        Self {
            config,
            store,
            rules,
            stats: Arc::new(IngestStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` completes; then stores and acknowledges what was decoded and
    /// disconnects. Dropping the returned future stops every task at once, acknowledging
    /// nothing more.
    #[tracing::instrument(skip_all, fields(client_id = %self.config.client_id))]
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), IngestError> {
        let endpoint = model::topic::broker_endpoint(&self.config.broker)
            .map_err(|_| IngestError::BadBroker(self.config.broker.clone()))?;
        let mut options =
            MqttOptions::new(self.config.client_id.clone(), endpoint.host, endpoint.port);
        if endpoint.tls {
            let tls = mqtt_tls::client_config(&self.config.tls_files())
                .map_err(|e| IngestError::Tls(format!("{}: {e}", e.key())))?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(
                model::topic::MAX_INCOMING_PACKET,
                model::wire::MAX_MESSAGE_BYTES + 4096,
            );
        if let (Some(u), Some(p)) = (&self.config.username, &self.config.password) {
            options.set_credentials(u, p.expose());
        }
        // rumqttc hands out buffered incoming packets before it reads its request channel, so
        // while the broker keeps sending, acks queue up there. If the channel could fill, an
        // ack waiting for room (with the queue full behind it) would stall ingest for good.
        // Packet ids are 16 bits: no more than 65,535 deliveries can await an ack, so a
        // channel of that size never makes an ack wait.
        let (client, mut eventloop) = AsyncClient::new(options, usize::from(u16::MAX) + 1);
        // PUBACKs are a few bytes each: with Nagle's algorithm one could wait for the broker's
        // TCP acknowledgement of the one before, holding the broker's in-flight window full.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (received_tx, received_rx) = crate::queue::bounded(self.config.queue);
        let (decoded_tx, decoded_rx) = crate::queue::bounded(STORE_QUEUE);
        let stop_intake = CancellationToken::new();
        let connections = Arc::new(Connections::default());
        let mut driver = AbortOnDropHandle::new(tokio::spawn(drive(
            eventloop,
            client.clone(),
            self.config.subscribe.clone(),
            Arc::clone(&self.stats),
            Arc::clone(&connections),
            received_tx,
            stop_intake.clone(),
        )));
        let changes = Arc::new(Changes::new(Arc::clone(&self.stats)));
        let stop_listener = CancellationToken::new();
        let mut listener = AbortOnDropHandle::new(tokio::spawn({
            let (pool, changes) = (self.store.pool().clone(), Arc::clone(&changes));
            let stop = stop_listener.clone();
            async move {
                migrations::announcements::follow(
                    &pool,
                    directory::CHANNEL,
                    "directory",
                    &*changes,
                    stop.cancelled_owned(),
                )
                .await;
            }
        }));
        if let Err(e) = self.store.ensure_partitions().await {
            tracing::warn!(error = %e, "could not create upcoming readings partitions; will retry");
        }
        let decode = AbortOnDropHandle::new(tokio::spawn(
            DecodeStage {
                store: self.store.clone(),
                directory: Directory::new(changes),
                clock: self.config.clock_window(),
                stats: Arc::clone(&self.stats),
                rules: self.rules,
                client: client.clone(),
                nodes: HashMap::new(),
                rebirths: sparkplug::RebirthRequests::default(),
                version: 0,
            }
            .run(received_rx, decoded_tx, stop_intake.clone()),
        ));
        let storage = AbortOnDropHandle::new(tokio::spawn(
            StoreStage {
                store: self.store.clone(),
                stats: Arc::clone(&self.stats),
                client: client.clone(),
                connections,
            }
            .run(
                decoded_rx,
                self.config.writers,
                self.config.linger,
                stop_intake.clone(),
            ),
        ));
        // Both stages end once intake stops: the decode stage at once, the store stage when
        // it has written what the decode stage passed on.
        let pipeline = async move {
            let (decode, storage) = tokio::join!(decode, storage);
            let failed: Vec<String> = [decode, storage]
                .into_iter()
                .filter_map(|stage| stage.err().map(|e| e.to_string()))
                .collect();
            for e in &failed {
                tracing::error!(error = %e, "an ingest stage failed");
            }
            failed
        };
        tokio::pin!(shutdown, pipeline);
        let mut asked_to_stop = false;
        let mut upkeep = tokio::time::interval_at(
            tokio::time::Instant::now() + PARTITION_UPKEEP,
            PARTITION_UPKEEP,
        );
        let mut failed = loop {
            tokio::select! {
                _ = &mut shutdown, if !stop_intake.is_cancelled() => {
                    asked_to_stop = true;
                    stop_intake.cancel();
                }
                _ = upkeep.tick(), if !stop_intake.is_cancelled() => {
                    // A stop does not wait for the upkeep: what is left is done next time.
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => {
                            asked_to_stop = true;
                            stop_intake.cancel();
                        }
                        () = upkeep_once(&self.store) => {}
                    }
                }
                stages = &mut pipeline => break stages,
            }
        };
        tracing::info!("ingest stopping");
        // The acknowledgements are ahead of the DISCONNECT in the client's request channel:
        // the driver writes them out, then the DISCONNECT, and returns. Ignored: the
        // connection may be gone already; unacked messages stay with the broker.
        let _ = client.disconnect().await;
        match tokio::time::timeout(DISCONNECT_GRACE, &mut driver).await {
            Err(_) => tracing::warn!("broker connection did not close in time; dropping it"),
            Ok(Err(e)) => failed.push(format!("the broker connection's driver: {e}")),
            Ok(Ok(())) => {}
        }
        // The listener closes its connection (within its own grace) before ingest returns, so
        // that a database stopped next finds none of ingest's connections open.
        stop_listener.cancel();
        if let Err(e) = (&mut listener).await {
            failed.push(format!("the directory listener: {e}"));
        }
        if !failed.is_empty() {
            return Err(IngestError::Stopped(failed.join("; ")));
        }
        if !asked_to_stop {
            return Err(IngestError::Stopped(
                "the pipeline ended without being asked to".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Decodes and resolves messages, hands their readings to the rules, passes them on to be
/// stored.
struct DecodeStage {
    store: PgStore,
    directory: Directory,
    /// The times of readings taken (`ingest.max_clock_ahead`, `ingest.max_reading_age`).
    clock: crate::clock::Window,
    stats: Arc<IngestStats>,
    rules: Option<Sender<Vec<RuleInput>>>,
    /// Publishes Sparkplug B rebirth requests.
    client: AsyncClient,
    /// Sparkplug B edge nodes by (tenant, gateway), each restored from its kept births at its
    /// first message since the start.
    nodes: HashMap<(TenantId, GatewayId), Followed>,
    /// When each Sparkplug node was last asked for a rebirth.
    rebirths: sparkplug::RebirthRequests,
    /// The version of the last Sparkplug birth record ([`BirthRecord::version`]): the receipt
    /// time in microseconds, kept increasing, and above every version of the births restored.
    version: i64,
}

/// A Sparkplug B node ingest follows: its session, and the version of its current birth (what
/// the records of its devices' births and deaths belong to).
#[derive(Debug)]
struct Followed {
    session: NodeSession,
    born: i64,
}

impl Default for Followed {
    fn default() -> Self {
        Self {
            session: NodeSession::new(""),
            born: 0,
        }
    }
}

/// What a message's topic and bytes gave, before any database lookup.
#[derive(Debug)]
enum Decoding {
    BadTopic(String),
    Batch {
        tenant: TenantId,
        gateway: GatewayId,
        /// The batch, or the dead-letter reason and detail of a message that does not decode.
        batch: Result<Batch, (&'static str, String)>,
        /// The reason and detail of what a decodable message lost (Sparkplug metrics that
        /// could not be read); the message is also kept as a dead letter.
        partial: Option<(&'static str, String)>,
        /// What a Sparkplug B birth or death changed in its node's kept births (boxed: few
        /// messages have one).
        birth: Option<Box<BirthRecord>>,
        /// Whether the publisher numbered the batch (rather than ingest, from its content):
        /// then a second batch it numbered alike can be told from a redelivery.
        numbered: bool,
    },
}

impl DecodeStage {
    async fn run(
        mut self,
        mut received: Receiver<Received>,
        decoded: Sender<Decoded>,
        stop_intake: CancellationToken,
    ) {
        loop {
            let next = if stop_intake.is_cancelled() {
                // Stopping: the driver passes nothing more on, and what it passed before is
                // still decoded and handed on, to be stored and acknowledged now rather than
                // delivered again.
                received.try_recv()
            } else {
                tokio::select! {
                    biased;
                    _ = stop_intake.cancelled() => continue,
                    next = received.recv() => next,
                }
            };
            let Some((at, connection, publish, bytes)) = next else {
                break;
            };
            queue_depth("decode", received.len());
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("maintainpro_ingest_messages_total").increment(1);
            let sparkplug = read_sparkplug_topic(&publish.topic);
            let node = match &sparkplug {
                Some(Ok((_, node))) => Some(node.clone()),
                _ => None,
            };
            if let Some(node) = &node
                && !self.restore_node(node, &publish.topic, &stop_intake).await
            {
                break; // stopped while the database was down: not stored, so not acked
            }
            let decoding = match sparkplug {
                Some(topic) => self.decode_sparkplug(topic, &publish),
                None => self.decode(&publish),
            };
            let Some((item, mut inputs)) = self
                .prepare_with_retry(&publish, &decoding, &stop_intake)
                .await
            else {
                break; // stopped while the database was down: not stored, so not acked
            };
            // Topics come from the network: no session is kept for a node of a gateway (or
            // organisation) not registered, whose births could otherwise fill memory. Should
            // it be registered, its next message starts a session as after a restart.
            if let (Some(node), Item::Dead(letter)) = (&node, &item)
                && letter.reason == UNKNOWN_GATEWAY
            {
                self.nodes.remove(node);
            }
            if !inputs.is_empty()
                && let Some(rules) = &self.rules
            {
                inputs.sort_by_key(|i| i.ts);
                // A rules task stuck on the database must not keep ingest from stopping; the
                // message is then neither stored nor acknowledged.
                let sent = tokio::select! {
                    biased;
                    sent = rules.send(inputs) => sent,
                    _ = stop_intake.cancelled() => break,
                };
                if sent.is_err() {
                    // The rules engine ended by itself (it outlives ingest at a stop): storing
                    // on would keep readings the rules never see, and a restarted engine
                    // takes stored readings for history. The message is neither stored nor
                    // acknowledged; intake stops, and the broker delivers it again.
                    tracing::error!("the rules engine has stopped; ingest stops");
                    break;
                }
                queue_depth("rules", rules.len());
            }
            // Readings in: of known tags, decoded for storage, redelivered copies included.
            if let Item::Batch { rows, .. } = &item {
                metrics::counter!("maintainpro_ingest_readings_total").increment(rows.len() as u64);
            }
            let message = Decoded {
                received: at,
                delivery: Delivery {
                    connection,
                    publish,
                    _bytes: bytes,
                },
                item,
            };
            if decoded.send(message).await.is_err() {
                break; // the store stage has stopped
            }
            queue_depth("store", decoded.len());
        }
    }

    /// Prepares a message, retrying transient database errors with backoff. A lookup the
    /// database refuses for good makes the message a dead letter. `None` when intake stops
    /// while the database is down.
    async fn prepare_with_retry(
        &mut self,
        publish: &Publish,
        decoding: &Decoding,
        stop_intake: &CancellationToken,
    ) -> Option<(Item, Vec<RuleInput>)> {
        let mut backoff = Duration::from_millis(100);
        let mut interrupted = 0;
        loop {
            match self.prepare(publish, decoding).await {
                Ok(prepared) => return Some(prepared),
                Err(e) if worth_retrying(&e, &mut interrupted) => {
                    if !self.wait_to_retry(&e, &mut backoff, stop_intake).await {
                        return None;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, topic = %publish.topic, "message rejected by the database");
                    return Some((store_rejected(publish, None, &e), Vec::new()));
                }
            }
        }
    }

    /// Logs a database error the message waits out, then [`pause_to_retry`].
    async fn wait_to_retry(
        &self,
        error: &StoreError,
        backoff: &mut Duration,
        stop_intake: &CancellationToken,
    ) -> bool {
        tracing::warn!(error = %error, retry_in = ?*backoff, "database unavailable; holding the message");
        pause_to_retry(&self.stats, error, backoff, stop_intake).await
    }

    /// At the first message of a Sparkplug B node since the start, restores the node's
    /// session from the births kept in the database, retrying while the database is
    /// unavailable. A node without kept births (or whose gateway is not registered) starts
    /// unborn. `false` when intake stops while the database is down.
    async fn restore_node(
        &mut self,
        key: &(TenantId, GatewayId),
        topic: &str,
        stop_intake: &CancellationToken,
    ) -> bool {
        if self.nodes.contains_key(key) {
            return true;
        }
        if self.nodes.len() >= MAX_NODES {
            // Node names come from the network. Those offline (dead, or never born) are
            // restored from the kept births as they were, should they speak again; only
            // when that is not enough do the online ones go too (the next message of each
            // is then taken as after a restart).
            self.nodes.retain(|_, node| node.session.is_online());
            if self.nodes.len() >= MAX_NODES {
                self.nodes.clear();
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.kept_births(key).await {
                Ok(followed) => {
                    self.nodes.insert(key.clone(), followed);
                    return true;
                }
                Err(e) if e.is_transient() => {
                    if !self.wait_to_retry(&e, &mut backoff, stop_intake).await {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, topic, "cannot read the node's kept births; it is read from its next birth");
                    self.nodes.insert(key.clone(), Followed::default());
                    return true;
                }
            }
        }
    }

    /// The session of a Sparkplug B node as its kept births left it.
    async fn kept_births(
        &mut self,
        (tenant, gateway): &(TenantId, GatewayId),
    ) -> Result<Followed, StoreError> {
        let id = match self
            .directory
            .resolve(&self.store, *tenant, gateway, &[])
            .await?
        {
            Resolved::Gateway(entry) => entry.id,
            Resolved::UnknownGateway { .. } => return Ok(Followed::default()),
        };
        let Some(kept) = self.store.load_births(tenant.as_uuid(), id).await? else {
            return Ok(Followed::default());
        };
        self.version = self.version.max(kept.latest);
        let Some(birth) = kept.born else {
            return Ok(Followed::default());
        };
        tracing::info!(%tenant, gateway = gateway.as_str(), devices = birth.births.devices.len(), "Sparkplug node restored from its kept births");
        Ok(Followed {
            session: birth.births.restore(""),
            born: birth.version,
        })
    }

    /// Reads a message of our wire format or of plain JSON: its topic and bytes.
    fn decode(&self, publish: &Publish) -> Decoding {
        let (tenant, gateway, format) = match model::topic::parse_readings_topic(&publish.topic) {
            Ok(t) => t,
            Err(e) => return Decoding::BadTopic(e.to_string()),
        };
        let batch = match format {
            Format::Wire => {
                Batch::decode(&publish.payload).map_err(|e| (e.reason(), e.to_string()))
            }
            Format::Json => model::json_batch::decode(&gateway, &publish.payload)
                .map_err(|e| (e.reason(), e.to_string())),
        };
        // A JSON batch without `seq` is numbered from its bytes (at or above the base).
        let numbered = match format {
            Format::Wire => true,
            Format::Json => batch
                .as_ref()
                .is_ok_and(|b| b.seq < model::json_batch::DERIVED_SEQ_BASE),
        };
        Decoding::Batch {
            tenant,
            gateway,
            batch,
            partial: None,
            birth: None,
            numbered,
        }
    }

    /// A Sparkplug B message: group id = tenant, edge node id = gateway, tags named
    /// `[<device>/]<metric>`; births, data and deaths go through the node's session. Once per
    /// delivery: the session moves on with every message, so this is not repeated when a
    /// lookup is retried.
    fn decode_sparkplug(&mut self, topic: SparkplugTopic, publish: &Publish) -> Decoding {
        let (topic, (tenant, gateway)) = match topic {
            Ok(read) => read,
            Err(detail) => return Decoding::BadTopic(detail),
        };
        let received = Timestamp::now();
        let node = self.nodes.entry((tenant, gateway.clone())).or_default();
        let outcome = node.session.on_message(&topic, &publish.payload, received);
        let birth = outcome.change.as_ref().map(|change| {
            // Later than every record before it, whatever the clock did.
            self.version = (self.version + 1).max(received.as_micros());
            let version = self.version;
            // The node's own records are of the birth they make or end.
            let (device, node_version, payload) = match change {
                SessionChange::NodeBorn => {
                    node.born = version;
                    (String::new(), version, Some(publish.payload.clone()))
                }
                SessionChange::NodeDied => (String::new(), version, None),
                SessionChange::DeviceBorn(d) => {
                    (d.clone(), node.born, Some(publish.payload.clone()))
                }
                SessionChange::DeviceDied(d) => (d.clone(), node.born, None),
            };
            Box::new(BirthRecord {
                device,
                version,
                node_version,
                payload,
            })
        });
        for p in &outcome.problems {
            metrics::counter!("maintainpro_ingest_sparkplug_problems_total", "reason" => p.reason())
                .increment(1);
            tracing::warn!(%topic, problem = %p, "Sparkplug message not fully read");
        }
        if outcome.rebirth {
            self.ask_rebirth(&topic);
        }
        let batch = match outcome.problems.iter().find(|p| p.is_fatal()) {
            Some(p) => Err((p.reason(), p.to_string())),
            None => {
                // A death's bytes repeat (a node's will is the same for every death of one
                // connection), so its number also takes the receipt time: two deaths are two
                // batches, each stored. A death delivered again finds the node or device
                // already dead (or, after a restart, not yet born) and gives no readings.
                // So do the bytes of a message whose readings carry no time of their own (a
                // steady value under a sequence number that wraps at 256): each receipt is new
                // readings, stored at its time, and a copy delivered again after a crash
                // between commit and acknowledgement is stored again at the time it came.
                let seq = if outcome.stamped_on_receipt
                    || matches!(topic.kind, MessageType::NDeath | MessageType::DDeath)
                {
                    let at = format!("{}@{}", publish.topic, received.as_micros());
                    sparkplug::derived_seq(&at, &publish.payload)
                } else {
                    sparkplug::derived_seq(&publish.topic, &publish.payload)
                };
                Ok(Batch::from_readings(
                    gateway.clone(),
                    seq,
                    &outcome.readings,
                ))
            }
        };
        let lost: Vec<&sparkplug::Problem> = outcome
            .problems
            .iter()
            .filter(|p| !p.is_fatal() && p.loses_data())
            .collect();
        let partial = lost.first().map(|p| {
            let detail: Vec<String> = lost.iter().map(ToString::to_string).collect();
            (p.reason(), detail.join("; "))
        });
        Decoding::Batch {
            tenant,
            gateway,
            batch,
            partial,
            birth,
            // By its topic and bytes, and for a death or readings without a time of their own
            // also by the time it came.
            numbered: false,
        }
    }

    /// Asks an edge node for its births (at most once per
    /// [`sparkplug::REBIRTH_INTERVAL`] per node).
    fn ask_rebirth(&mut self, topic: &sparkplug::Topic) {
        let Some((ncmd, payload)) = self.rebirths.due(topic, Instant::now(), Timestamp::now())
        else {
            return;
        };
        metrics::counter!("maintainpro_ingest_sparkplug_rebirths_requested_total").increment(1);
        tracing::info!(topic = %ncmd, "asking the edge node to publish its births again");
        if let Err(e) = self
            .client
            .try_publish(ncmd, QoS::AtLeastOnce, false, payload)
        {
            tracing::warn!(error = %e, "cannot ask for a rebirth");
        }
    }

    /// Resolves one decoded message into what to store, and the readings for the rules.
    async fn prepare(
        &mut self,
        publish: &Publish,
        decoding: &Decoding,
    ) -> Result<(Item, Vec<RuleInput>), StoreError> {
        let dead = |tenant: Option<TenantId>, reason: &'static str, detail: String| {
            (
                Item::Dead(DeadLetter::new(
                    tenant.map(|t| t.as_uuid()),
                    &publish.topic,
                    reason,
                    detail,
                    publish.payload.clone(),
                )),
                Vec::new(),
            )
        };
        let (tenant, gateway, decoded, partial, birth, numbered) = match decoding {
            Decoding::BadTopic(detail) => return Ok(dead(None, "bad_topic", detail.clone())),
            Decoding::Batch {
                tenant,
                gateway,
                batch,
                partial,
                birth,
                numbered,
            } => (*tenant, gateway, batch, partial, birth, *numbered),
        };
        let batch = match decoded {
            Ok(b) => b,
            Err((reason, detail)) => {
                let known = self.tenant_if_known(tenant, gateway).await?;
                return Ok(dead(known, reason, detail.clone()));
            }
        };
        if batch.gateway != *gateway {
            let known = self.tenant_if_known(tenant, gateway).await?;
            let detail = format!(
                "batch names gateway {:?} but was published on the topic of {:?}",
                batch.gateway.as_str(),
                gateway.as_str()
            );
            return Ok(dead(known, "gateway_mismatch", detail));
        }
        let Ok(seq) = i64::try_from(batch.seq) else {
            let known = self.tenant_if_known(tenant, gateway).await?;
            let detail = format!(
                "batch sequence number {} exceeds the ledger's range",
                batch.seq
            );
            return Ok(dead(known, "bad_sequence", detail));
        };
        // Caught here rather than by the COPY, so that the rules never see a reading the
        // database refuses.
        if let Some((index, p)) = batch
            .points
            .iter()
            .enumerate()
            .find(|(_, p)| !copy::storable(p.ts))
        {
            let known = self.tenant_if_known(tenant, gateway).await?;
            let detail = format!(
                "point {index} is stamped {}, outside the times PostgreSQL stores",
                p.ts
            );
            return Ok(dead(known, "bad_timestamp", detail));
        }
        let entry = match self
            .directory
            .resolve(&self.store, tenant, gateway, &batch.tags)
            .await?
        {
            Resolved::Gateway(entry) => entry,
            Resolved::UnknownGateway { tenant_exists } => {
                let detail = format!(
                    "gateway {:?} is not registered for tenant {tenant}",
                    gateway.as_str()
                );
                return Ok(dead(
                    tenant_exists.then_some(tenant),
                    UNKNOWN_GATEWAY,
                    detail,
                ));
            }
        };
        let contexts: Vec<Option<Arc<TagContext>>> = batch
            .tags
            .iter()
            .map(|t| entry.tags.get(t).cloned())
            .collect();
        let unknown: Vec<&str> = batch
            .tags
            .iter()
            .zip(&contexts)
            .filter(|(_, c)| c.is_none())
            .map(|(t, _)| t.as_str())
            .collect();
        let mut rows = Vec::with_capacity(batch.points.len());
        let mut inputs = Vec::with_capacity(batch.points.len());
        // Readings stamped too far from this clock are left out, as those of unknown tags are:
        // how many, and the first.
        let now = Timestamp::now();
        let (mut unknown_count, mut untimely_count) = (0, 0);
        let mut first_untimely = None;
        for (index, p) in batch.points.iter().enumerate() {
            let Some(ctx) = &contexts[p.tag as usize] else {
                unknown_count += 1;
                continue;
            };
            if let Err(untimely) = self.clock.check(p.ts, now) {
                untimely_count += 1;
                first_untimely.get_or_insert((index, p.ts, untimely));
                continue;
            }
            rows.push(Row {
                tag_id: ctx.tag_id,
                ts: p.ts,
                value: p.value,
                quality: p.quality,
            });
            inputs.push(RuleInput {
                ctx: Arc::clone(ctx),
                ts: p.ts,
                value: p.value,
                quality: p.quality,
            });
        }
        // What of the message could not be stored (metrics it could not read, readings
        // stamped too far from this clock, readings of unknown tags) is kept whole as one dead
        // letter, with the reason of its first problem and each problem in the detail.
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        if let Some((reason, detail)) = partial {
            problems.push((reason, detail.clone()));
        }
        if let Some((index, ts, untimely)) = first_untimely {
            problems.push((
                untimely.reason(),
                format!(
                    "{untimely_count} of {} readings are not stored, being stamped too far from \
                     this server's clock; the first: {}",
                    batch.points.len(),
                    self.clock.explain(index, ts, untimely)
                ),
            ));
        }
        if !unknown.is_empty() {
            problems.push((
                "unknown_tag",
                format!(
                    "{unknown_count} of {} readings name tags not registered for gateway {:?}: {}",
                    batch.points.len(),
                    gateway.as_str(),
                    unknown.join(", ")
                ),
            ));
        }
        let rejected = problems.first().map(|&(reason, _)| {
            let detail: Vec<&str> = problems.iter().map(|(_, d)| d.as_str()).collect();
            DeadLetter::new(
                Some(tenant.as_uuid()),
                &publish.topic,
                reason,
                detail.join("; "),
                publish.payload.clone(),
            )
        });
        let numbered = numbered.then(|| {
            Box::new(Numbered {
                digest: batch.content_digest(),
                reused: DeadLetter::new(
                    Some(tenant.as_uuid()),
                    &publish.topic,
                    "sequence_reused",
                    format!(
                        "batch {seq} of gateway {:?} was stored before with other readings: two \
                     batches were numbered alike (a publisher's counter that started over?), so \
                     this one is kept here, not stored; number batches on from the last one \
                     stored, or publish JSON without seq",
                        gateway.as_str()
                    ),
                    publish.payload.clone(),
                ),
            })
        });
        Ok((
            Item::Batch {
                tenant: tenant.as_uuid(),
                gateway: entry.id,
                seq,
                rows,
                rejected,
                birth: birth.as_deref().cloned(),
                numbered,
            },
            inputs,
        ))
    }

    async fn tenant_if_known(
        &mut self,
        tenant: TenantId,
        gateway: &model::GatewayId,
    ) -> Result<Option<TenantId>, StoreError> {
        Ok(
            match self
                .directory
                .resolve(&self.store, tenant, gateway, &[])
                .await?
            {
                Resolved::Gateway(_)
                | Resolved::UnknownGateway {
                    tenant_exists: true,
                } => Some(tenant),
                Resolved::UnknownGateway {
                    tenant_exists: false,
                } => None,
            },
        )
    }
}

/// Groups decoded messages, stores each group in one transaction (several at once), then
/// acknowledges the groups in order.
struct StoreStage {
    store: PgStore,
    stats: Arc<IngestStats>,
    client: AsyncClient,
    connections: Arc<Connections>,
}

impl StoreStage {
    /// Forms groups from the queue and writes up to `writers` of them at once, each in its
    /// own transaction; acknowledges the groups in the order they were formed, which is the
    /// order their messages arrived (MQTT wants acknowledgements in that order).
    ///
    /// A group is written once it is full, or once nothing more is queued and `linger` has
    /// passed since its first message was taken (at once with no linger, and at a stop).
    async fn run(
        self,
        mut decoded: Receiver<Decoded>,
        writers: usize,
        linger: Duration,
        stop_intake: CancellationToken,
    ) {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        // The group waiting for more messages, and when it is written all the same.
        let mut forming: Option<(Group, tokio::time::Instant)> = None;
        loop {
            let due = forming.as_ref().map(|(_, due)| *due);
            tokio::select! {
                biased;
                Some(done) = in_flight.next() => {
                    let Some(deliveries): Option<Vec<Delivery>> = done else {
                        break; // stopped while the database was down: not stored, so not acked
                    };
                    if !self.ack(&deliveries) {
                        break;
                    }
                }
                next = decoded.recv(), if open && in_flight.len() < writers => {
                    let Some(next) = next else {
                        open = false;
                        if let Some((group, _)) = forming.take() {
                            in_flight.push_back(self.write(group, &stop_intake));
                        }
                        continue;
                    };
                    let (mut group, due) = forming.take().unwrap_or_else(|| {
                        (Group::default(), tokio::time::Instant::now() + linger)
                    });
                    group.push(next);
                    Self::fill(&mut group, &mut decoded);
                    if group.full()
                        || stop_intake.is_cancelled()
                        || tokio::time::Instant::now() >= due
                    {
                        in_flight.push_back(self.write(group, &stop_intake));
                    } else {
                        forming = Some((group, due));
                    }
                }
                // Only a writer free to take the group forms one, so it is written at once:
                // when it is due, or at a stop.
                () = due_or_stop(due, &stop_intake), if due.is_some() => {
                    if let Some((group, _)) = forming.take() {
                        in_flight.push_back(self.write(group, &stop_intake));
                    }
                }
                else => break,
            }
        }
        // Whatever ended this stage ends intake too.
        stop_intake.cancel();
    }

    /// `first` and what else is queued, up to a group's limits.
    #[cfg(test)]
    fn group(first: Decoded, decoded: &mut Receiver<Decoded>) -> Group {
        let mut group = Group::default();
        group.push(first);
        Self::fill(&mut group, decoded);
        group
    }

    /// Adds what is queued to `group`, up to its limits.
    fn fill(group: &mut Group, decoded: &mut Receiver<Decoded>) {
        while !group.full() {
            match decoded.try_recv() {
                Some(next) => group.push(next),
                None => break,
            }
        }
        queue_depth("store", decoded.len());
    }

    /// Stores a group and records its messages' receipt-to-commit latency. The group's
    /// messages, to be acknowledged, or `None` when intake stopped before it was stored.
    async fn write(&self, group: Group, stop_intake: &CancellationToken) -> Option<Vec<Delivery>> {
        metrics::histogram!("maintainpro_ingest_group_messages").record(group.items.len() as f64);
        metrics::histogram!("maintainpro_ingest_group_readings").record(group.readings as f64);
        let Group {
            received,
            deliveries,
            items,
            ..
        } = group;
        if !self
            .store_with_retry(&deliveries, &items, stop_intake)
            .await
        {
            return None;
        }
        for at in &received {
            let latency = at.elapsed();
            self.stats.receipt_to_commit.record(latency);
            metrics::histogram!("maintainpro_ingest_receipt_to_commit_seconds")
                .record(latency.as_secs_f64());
        }
        Some(deliveries)
    }

    /// Acknowledges stored messages that came on the current connection; `false` when the
    /// client is gone. One that came on an earlier connection is not acknowledged: its
    /// packet id means nothing on this one, or another message (see [`Connections`]).
    fn ack(&self, deliveries: &[Delivery]) -> bool {
        let current = self.connections.lock();
        for delivery in deliveries {
            if delivery.connection != *current {
                metrics::counter!("maintainpro_ingest_acks_withheld_total").increment(1);
                self.stats.acks_withheld.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // The request channel has room for every packet id there is (see `run_until`),
            // so it is never full: an error means the event loop has ended.
            if let Err(e) = self.client.try_ack(&delivery.publish) {
                tracing::warn!(error = %e, "ack not sent; the broker will redeliver");
                return false;
            }
        }
        true
    }

    /// Stores a group, retrying transient database errors with backoff. A group the database
    /// refuses for good is split, so that one poison message becomes a dead letter without
    /// holding back the others. `false` when intake stopped before the group could be stored.
    async fn store_with_retry(
        &self,
        deliveries: &[Delivery],
        items: &[Item],
        stop_intake: &CancellationToken,
    ) -> bool {
        let mut parts = vec![Range {
            start: 0,
            end: items.len(),
        }];
        // Whether an attempt may have committed without ingest learning it (it did not
        // answer, or its connection broke): a batch the ledger then has is this group's own.
        let mut maybe_committed = false;
        while let Some(part) = parts.pop() {
            let mut interrupted = 0;
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = Instant::now();
                match self.store.write_group(&items[part.clone()]).await {
                    Ok(written) => {
                        metrics::histogram!("maintainpro_ingest_flush_seconds")
                            .record(started.elapsed().as_secs_f64());
                        self.account(&items[part], &written, maybe_committed);
                        break;
                    }
                    // A refusal of every write is told from one of a message's by splitting
                    // first: only a message refused alone holds ingest.
                    Err(e)
                        if !(part.len() > 1 && matches!(e, StoreError::Refused(_)))
                            && worth_retrying(&e, &mut interrupted) =>
                    {
                        maybe_committed |= outcome_unknown(&e);
                        tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; holding the messages");
                        if !pause_to_retry(&self.stats, &e, &mut backoff, stop_intake).await {
                            return false;
                        }
                    }
                    Err(e) if part.len() > 1 => {
                        tracing::warn!(error = %e, messages = part.len(), "group refused; storing its messages one by one");
                        let middle = part.start + part.len() / 2;
                        parts.push(middle..part.end);
                        parts.push(part.start..middle);
                        break;
                    }
                    Err(e) => {
                        // The database refuses this message for good: keep it as a dead letter
                        // so nothing is lost, and move on.
                        let publish = &deliveries[part.start].publish;
                        tracing::error!(error = %e, topic = %publish.topic, "message rejected by the database");
                        let letter = store_rejected(publish, items[part.start].tenant(), &e);
                        if !self.store_dead_letter(letter, stop_intake).await {
                            return false;
                        }
                        break;
                    }
                }
            }
        }
        true
    }

    /// Stores the dead letter of a message the database refused, retrying with backoff
    /// whatever the error: the message is acknowledged only once something of it is stored,
    /// so a database that refuses even the dead letter (a permission revoked, the table
    /// broken) holds ingest until an operator mends it. If the letter names a tenant, later
    /// attempts name none, in case the tenant was the trouble. `false` when intake stopped
    /// first.
    async fn store_dead_letter(&self, mut letter: Item, stop_intake: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.write_group(std::slice::from_ref(&letter)).await {
                Ok(_) => {
                    count_dead_letter(&self.stats, "store_rejected");
                    return true;
                }
                Err(e) => {
                    if e.is_transient() {
                        tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; holding the message");
                    } else {
                        tracing::error!(error = %e, retry_in = ?backoff, "the database refuses the message's dead letter too; holding the message until it takes it");
                        if let Item::Dead(d) = &mut letter {
                            d.tenant = None;
                        }
                    }
                    if !pause_to_retry(&self.stats, &e, &mut backoff, stop_intake).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Counts what a stored group did, and how old each stored batch's newest reading was at
    /// the commit (the ingest lag).
    fn account(&self, items: &[Item], written: &[Written], maybe_committed: bool) {
        let now = Timestamp::now();
        for (item, w) in items.iter().zip(written) {
            // After an attempt that may have committed, a batch the ledger has is taken for
            // one that attempt stored (a copy delivered again at that very moment is counted
            // as stored too).
            let w = match (w, item) {
                (Written::Duplicate, Item::Batch { rows, .. }) if maybe_committed => {
                    &Written::Stored { rows: rows.len() }
                }
                _ => w,
            };
            match (w, item) {
                (
                    Written::Stored { rows },
                    Item::Batch {
                        rejected,
                        rows: batch,
                        ..
                    },
                ) => {
                    if let Some(newest) = batch.iter().map(|r| r.ts).max() {
                        metrics::histogram!("maintainpro_ingest_lag_seconds")
                            .record(lag_seconds(now, newest));
                    }
                    self.stats.batches_stored.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .readings_stored
                        .fetch_add(*rows as u64, Ordering::Relaxed);
                    metrics::counter!("maintainpro_ingest_readings_stored_total")
                        .increment(*rows as u64);
                    if let Some(letter) = rejected {
                        count_dead_letter(&self.stats, letter.reason);
                    }
                }
                (Written::Duplicate, _) => {
                    self.stats.batches_duplicate.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("maintainpro_ingest_duplicate_batches_total").increment(1);
                }
                (
                    Written::Reused,
                    Item::Batch {
                        numbered: Some(numbered),
                        ..
                    },
                ) => dead_lettered(&self.stats, &numbered.reused),
                (Written::DeadLettered, Item::Dead(letter)) => {
                    dead_lettered(&self.stats, letter);
                }
                _ => {}
            }
        }
    }
}

/// A Sparkplug B topic read once per message: the topic and its node (tenant, gateway), or
/// why the message cannot be stored.
type SparkplugTopic = Result<(sparkplug::Topic, (TenantId, GatewayId)), String>;

/// `None` when `topic` is not in the Sparkplug B namespace.
fn read_sparkplug_topic(topic: &str) -> Option<SparkplugTopic> {
    topic.starts_with(sparkplug::NAMESPACE).then(|| {
        let topic = sparkplug::Topic::parse(topic).map_err(|e| e.to_string())?;
        let node = node_key(&topic)?;
        Ok((topic, node))
    })
}

/// The tenant and gateway of a Sparkplug B node or device topic (group id = tenant UUID, edge
/// node id = gateway code), or why the topic is not one ingest reads.
fn node_key(topic: &sparkplug::Topic) -> Result<(TenantId, GatewayId), String> {
    if matches!(topic.kind, MessageType::NCmd | MessageType::DCmd) {
        return Err(format!(
            "{topic}: commands carry no readings; subscribe to births, data and deaths only"
        ));
    }
    let Ok(tenant) = TenantId::parse(&topic.group) else {
        return Err(format!(
            "{topic}: the Sparkplug group id {:?} is not a tenant id; ingest reads group ids as tenant UUIDs",
            topic.group
        ));
    };
    let gateway = GatewayId::parse(topic.edge_node.as_str())
        .map_err(|e| format!("{topic}: the edge node id is not a gateway code: {e}"))?;
    Ok((tenant, gateway))
}

/// The dead letter of a message the database refuses for good, in `tenant`'s name when
/// ingest knows the tenant.
fn store_rejected(publish: &Publish, tenant: Option<uuid::Uuid>, error: &StoreError) -> Item {
    Item::Dead(DeadLetter::new(
        tenant,
        &publish.topic,
        "store_rejected",
        error.to_string(),
        publish.payload.clone(),
    ))
}

/// The hourly upkeep: the readings' upcoming partitions, and the batch ledger's rows no longer
/// kept ([`PgStore::prune_ledger`]).
async fn upkeep_once(store: &PgStore) {
    match store.ensure_partitions().await {
        Ok(n) if n > 0 => tracing::info!(created = n, "readings partitions created"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "readings partition upkeep failed"),
    }
    match store.prune_ledger().await {
        Ok(n) => {
            metrics::counter!("maintainpro_ingest_ledger_pruned_total").increment(n);
            if n > 0 {
                tracing::info!(pruned = n, "batch ledger pruned");
            }
        }
        Err(e) => tracing::warn!(error = %e, "batch ledger pruning failed; tried again in an hour"),
    }
}

/// Logs and counts a message stored as a dead letter.
fn dead_lettered(stats: &IngestStats, letter: &DeadLetter) {
    tracing::warn!(topic = %letter.topic, reason = letter.reason, detail = %letter.detail, "dead letter");
    count_dead_letter(stats, letter.reason);
}

fn count_dead_letter(stats: &IngestStats, reason: &'static str) {
    stats.dead_letters.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("maintainpro_ingest_dead_letters_total", "reason" => reason).increment(1);
}

/// Seconds from a reading's event time to `now`; zero for a reading stamped ahead of this
/// clock (a gateway's clock a little fast), so that the lag never reads negative.
fn lag_seconds(now: Timestamp, reading: Timestamp) -> f64 {
    (now.as_micros().saturating_sub(reading.as_micros())).max(0) as f64 / 1e6
}

/// Whether a failed database operation is tried again: a transient error or a refusal of
/// every write ([`StoreError::Refused`]) always, an interrupted statement up to
/// [`INTERRUPTED_RETRIES`] times (counted in `interrupted`).
fn worth_retrying(error: &StoreError, interrupted: &mut usize) -> bool {
    // A database that refuses whatever is written is held out like one that is down: set
    // aside as dead letters, every message would leave the broker unstored.
    if error.is_transient() || matches!(error, StoreError::Refused(_)) {
        return true;
    }
    if error.is_interrupted() && *interrupted < INTERRUPTED_RETRIES {
        *interrupted += 1;
        return true;
    }
    false
}

/// Whether the attempt that failed with `error` may have committed: the database did not
/// answer, or the connection broke. An error the database itself returned means the
/// transaction was rolled back.
fn outcome_unknown(error: &StoreError) -> bool {
    match error {
        StoreError::TimedOut(_) => true,
        StoreError::Transient(e) => !matches!(
            e,
            sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
        ),
        StoreError::Permanent(_) | StoreError::Refused(_) => false,
    }
}

/// Counts a retry (and a database that did not answer, when `error` says so) and waits
/// `backoff` (doubled for the next time, up to 5 s). `false` when intake stops meanwhile,
/// unless the database answered `error` itself and the backoff is still short
/// ([`STOPPING_BACKOFF`]).
async fn pause_to_retry(
    stats: &IngestStats,
    error: &StoreError,
    backoff: &mut Duration,
    stop_intake: &CancellationToken,
) -> bool {
    metrics::counter!("maintainpro_ingest_retries_total").increment(1);
    stats.retries.fetch_add(1, Ordering::Relaxed);
    if matches!(error, StoreError::TimedOut(_)) {
        metrics::counter!("maintainpro_ingest_database_timeouts_total").increment(1);
        stats.database_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    let answered = matches!(error, StoreError::Transient(sqlx::Error::Database(_)));
    if answered && *backoff <= STOPPING_BACKOFF {
        tokio::time::sleep(*backoff).await;
    } else {
        tokio::select! {
            _ = stop_intake.cancelled() => return false,
            _ = tokio::time::sleep(*backoff) => {}
        }
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    true
}

/// Completes at `due` (never without one) or once intake stops, whichever comes first.
async fn due_or_stop(due: Option<tokio::time::Instant>, stop_intake: &CancellationToken) {
    let due = async {
        match due {
            Some(due) => tokio::time::sleep_until(due).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = due => {}
        () = stop_intake.cancelled() => {}
    }
}

/// Messages waiting in front of `stage`: `decode`, `store`, or `rules` (the rules task's
/// channel, in messages' worth of readings).
fn queue_depth(stage: &'static str, depth: usize) {
    metrics::gauge!("maintainpro_ingest_queue_depth", "stage" => stage).set(depth as f64);
}

/// Which connection to the broker is the current one, counted from zero, so that a message
/// is acknowledged only on the connection it came on.
///
/// rumqttc acknowledges by packet id alone. When a connection fails it drops the
/// acknowledgements still queued, but one queued after that goes out on the next connection,
/// where the id names nothing, or another message: one of a new session (the broker lost the
/// old one), or one the broker sent after the first copy's ack freed the id while the second
/// copy of a resumed session was still being stored. Acknowledging such a message before it
/// is stored could lose it. Not acknowledging a stored message is harmless: on a resumed
/// session the broker delivers it again and the ledger skips it as a duplicate; a lost
/// session does not expect the ack at all.
#[derive(Debug, Default)]
struct Connections(std::sync::Mutex<u64>);

impl Connections {
    /// The current connection, held: no connection starts while the guard lives.
    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After the connection failed: counts the next one, and drops the acknowledgements
    /// queued since rumqttc dropped its own (which it did when the failure surfaced), all
    /// under the lock, so an acknowledgement is either dropped or never queued. The other
    /// requests queued (subscriptions, rebirth commands, the DISCONNECT) are kept for the
    /// next connection, as rumqttc keeps them.
    fn next(&self, eventloop: &mut EventLoop) -> u64 {
        let mut current = self.lock();
        *current += 1;
        eventloop.clean();
        *current
    }
}

/// Whether the broker granted every filter at QoS 1 or 2, reporting each one it did not:
/// refused (its access rules), or granted at QoS 0, which would take deliveries without
/// acknowledgements and lose whatever is in flight when ingest stops.
fn granted(filters: &[String], codes: &[rumqttc::SubscribeReasonCode]) -> bool {
    let mut all = codes.len() == filters.len();
    for (i, code) in codes.iter().enumerate() {
        let filter = filters.get(i).map_or("?", String::as_str);
        match code {
            rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce) => {}
            rumqttc::SubscribeReasonCode::Success(QoS::AtMostOnce) => {
                all = false;
                metrics::counter!("maintainpro_ingest_subscriptions_refused_total").increment(1);
                tracing::error!(
                    filter,
                    "the broker granted only QoS 0, which could lose messages; allow QoS 1 on this filter in the broker's settings"
                );
            }
            rumqttc::SubscribeReasonCode::Failure => {
                all = false;
                metrics::counter!("maintainpro_ingest_subscriptions_refused_total").increment(1);
                tracing::error!(
                    filter,
                    "the broker refused the subscription; check its access rules for ingest's user"
                );
            }
        }
    }
    all
}

/// Owns the event loop: subscribes after every connect, passes each PUBLISH into `queue`
/// until intake stops, and sends what the client asks for (acknowledgements, the DISCONNECT).
/// Returns once the DISCONNECT is out, or when the connection fails after intake stopped.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    stats: Arc<IngestStats>,
    connections: Arc<Connections>,
    queue: Sender<Received>,
    stop_intake: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut connection = *connections.lock();
    let budget = Arc::new(Semaphore::new(PIPELINE_BYTES));
    let pass_on = async |connection, publish| {
        pass_into(&queue, &budget, &stop_intake, &stats, connection, publish).await
    };
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(session_present = ack.session_present, "connected to broker");
                let topics = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                // The filters were checked with the configuration: this fails only when the
                // request channel is closed or full.
                if let Err(e) = client.try_subscribe_many(topics) {
                    tracing::error!(error = %e, retry_in = ?backoff, "cannot subscribe; reconnecting to try again");
                    tokio::select! {
                        _ = queue.closed() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    connection = connections.next(&mut eventloop);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // Connected and subscribed: the next failure starts the backoff over.
                backoff = Duration::from_millis(200);
                if granted(&filters, &ack.return_codes) {
                    stats.subscriptions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("subscribed to the readings topics");
                } else {
                    stats.subscriptions_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Once intake has stopped the message is left unacknowledged: the broker
                // delivers it again to the next session.
                pass_on(connection, p).await;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(ConnectionError::RequestsDone) => break,
            Err(e) if queue.is_closed() => {
                tracing::warn!(error = %e, "broker connection lost while stopping");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost");
                let lost = connection;
                connection = connections.next(&mut eventloop);
                // Messages rumqttc read off the lost connection but had not handed out yet
                // would come after the next CONNACK, as if they came on the new one: passed on
                // now, as the lost connection's.
                for event in std::mem::take(&mut eventloop.state.events) {
                    if let Event::Incoming(Packet::Publish(p)) = event
                        && !pass_on(lost, p).await
                    {
                        break;
                    }
                }
                tokio::select! {
                    _ = queue.closed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Puts a message the driver received on `connection` into the decode queue, once the
/// pipeline can hold it ([`PIPELINE_BYTES`]) and the queue has room, and counts it. `false`
/// when intake stops first: the message is left with the broker, which delivers it again to
/// the next session.
async fn pass_into(
    queue: &Sender<Received>,
    budget: &Arc<Semaphore>,
    stop_intake: &CancellationToken,
    stats: &IngestStats,
    connection: u64,
    publish: Publish,
) -> bool {
    let at = Instant::now();
    let share = share_of(&publish);
    let passed = tokio::select! {
        biased;
        _ = stop_intake.cancelled() => false,
        _ = queue.closed() => false,
        passed = async {
            let Ok(bytes) = Arc::clone(budget).acquire_many_owned(share).await else {
                return false;
            };
            queue.send((at, connection, publish, bytes)).await.is_ok()
        } => passed,
    };
    if passed {
        stats.received.fetch_add(1, Ordering::Relaxed);
        queue_depth("decode", queue.len());
    }
    passed
}

/// A message's share of [`PIPELINE_BYTES`]: its size, within the budget.
fn share_of(publish: &Publish) -> u32 {
    // Within u32 as PIPELINE_BYTES is.
    publish.payload.len().clamp(1, PIPELINE_BYTES) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead letter of `bytes` bytes as the decode stage passes it on, holding its share of
    /// `budget`.
    fn letter(bytes: usize, budget: &Arc<Semaphore>) -> Decoded {
        let payload = vec![0u8; bytes];
        let publish = Publish::new("t/readings", QoS::AtLeastOnce, payload.clone());
        let share = share_of(&publish);
        Decoded {
            received: Instant::now(),
            delivery: Delivery {
                connection: 0,
                publish,
                _bytes: Arc::clone(budget)
                    .try_acquire_many_owned(share)
                    .expect("room in the budget"),
            },
            item: Item::Dead(DeadLetter::new(
                None,
                "t/readings",
                "oversized",
                String::new(),
                payload.into(),
            )),
        }
    }

    #[test]
    fn a_group_of_large_messages_stops_at_its_bytes_and_gives_their_budget_back() {
        let budget = Arc::new(Semaphore::new(PIPELINE_BYTES));
        let (tx, mut rx) = crate::queue::bounded(STORE_QUEUE);
        let large = 3 << 20;
        for _ in 0..5 {
            tx.try_send(letter(large, &budget))
                .expect("room in the queue");
        }
        assert_eq!(budget.available_permits(), PIPELINE_BYTES - 5 * large);
        // The first message always, then more until the group holds GROUP_BYTES.
        let first = StoreStage::group(letter(large, &budget), &mut rx);
        assert_eq!(first.items.len(), 3, "3 MiB messages: 9 MiB in the group");
        assert!(first.bytes >= GROUP_BYTES);
        let second = StoreStage::group(rx.try_recv().expect("queued"), &mut rx);
        assert_eq!(second.items.len(), 3);
        assert!(rx.try_recv().is_none());
        // The budget comes back as the messages are let go (acknowledged or left).
        drop(first);
        assert_eq!(budget.available_permits(), PIPELINE_BYTES - 3 * large);
        drop(second);
        assert_eq!(budget.available_permits(), PIPELINE_BYTES);
        // Small messages group by their count as before.
        for _ in 0..STORE_QUEUE {
            tx.try_send(letter(100, &budget))
                .expect("room in the queue");
        }
        let small = StoreStage::group(letter(100, &budget), &mut rx);
        assert_eq!(small.items.len(), GROUP_MESSAGES);
        assert_eq!(rx.len(), STORE_QUEUE + 1 - GROUP_MESSAGES);
    }

    #[test]
    fn a_subscription_counts_only_when_every_filter_is_granted_at_qos_1_or_more() {
        use rumqttc::SubscribeReasonCode::{Failure, Success};
        let filters = vec!["a/#".to_owned(), "b/#".to_owned()];
        let at = |qos| Success(qos);
        assert!(granted(
            &filters,
            &[at(QoS::AtLeastOnce), at(QoS::ExactlyOnce)]
        ));
        assert!(!granted(
            &filters,
            &[at(QoS::AtLeastOnce), at(QoS::AtMostOnce)]
        ));
        assert!(!granted(&filters, &[Failure, at(QoS::AtLeastOnce)]));
        // An answer that does not cover every filter.
        assert!(!granted(&filters, &[at(QoS::AtLeastOnce)]));
    }

    #[test]
    fn the_lag_is_seconds_since_the_event_and_never_negative() {
        let now = Timestamp::from_micros(10_000_000);
        assert_eq!(lag_seconds(now, Timestamp::from_micros(7_500_000)), 2.5);
        assert_eq!(lag_seconds(now, now), 0.0);
        // A gateway's clock ahead of ours.
        assert_eq!(lag_seconds(now, Timestamp::from_micros(12_000_000)), 0.0);
        // The oldest time there is does not overflow.
        assert!(lag_seconds(now, Timestamp::from_micros(i64::MIN)) > 9.0e12);
    }
}
