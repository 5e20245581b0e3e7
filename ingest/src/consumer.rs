//! The MQTT consumer and the per-message flow.
//!
//! A driver task owns rumqttc's event loop: it (re)subscribes after every connect and passes
//! each PUBLISH into a bounded queue; when the queue is full it stops polling, so the broker
//! holds further messages. The processing loop takes one message at a time: decode, resolve,
//! store (retrying transient database errors until they pass), then ack, then hand the
//! readings to the rules. Nothing is acked before it is committed; a message in the queue at
//! shutdown is simply not acked, and the broker delivers it again to the next session.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use model::wire::Batch;
use model::{Quality, TenantId, Timestamp};
use rules::TagContext;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::copy::Row;
use crate::directory::{Directory, Resolved};
use crate::store::{DeadLetter, Item, PgStore, StoreError, Written};

/// A stored reading on its way to the rules engine.
#[derive(Debug, Clone)]
pub struct RuleInput {
    pub ctx: Arc<TagContext>,
    pub ts: Timestamp,
    pub value: f64,
    pub quality: Quality,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ingest.broker {0:?} is not mqtt://host[:port]")]
    BadBroker(String),
}

/// Counters ingest keeps; also exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub messages: AtomicU64,
    pub readings_stored: AtomicU64,
    pub batches_stored: AtomicU64,
    pub batches_duplicate: AtomicU64,
    pub dead_letters: AtomicU64,
    pub retries: AtomicU64,
    /// Subscriptions the broker confirmed (one per connect): non-zero once messages flow.
    pub subscriptions: AtomicU64,
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
    rules: Option<mpsc::Sender<Vec<RuleInput>>>,
    stats: Arc<IngestStats>,
    directory: Directory,
}

/// Most messages stored in one transaction. A busy queue fills groups up to this; a quiet one
/// commits each message at once, so grouping adds no latency.
const MAX_GROUP_MESSAGES: usize = 64;

impl Consumer {
    /// `rules` receives every stored batch's readings, sorted by event time.
    pub fn new(
        config: IngestConfig,
        store: PgStore,
        rules: Option<mpsc::Sender<Vec<RuleInput>>>,
    ) -> Self {
        Self {
            config,
            store,
            rules,
            stats: Arc::new(IngestStats::default()),
            directory: Directory::default(),
        }
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        Arc::clone(&self.stats)
    }

    /// Consumes until `shutdown` completes; then finishes the group in hand and disconnects.
    #[tracing::instrument(skip_all, fields(client_id = %self.config.client_id))]
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), IngestError> {
        let (host, port) = model::topic::broker_address(&self.config.broker)
            .map_err(|_| IngestError::BadBroker(self.config.broker.clone()))?;
        let mut options = MqttOptions::new(self.config.client_id.clone(), host, port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(
                model::wire::MAX_MESSAGE_BYTES + 4096,
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
        let (client, eventloop) = AsyncClient::new(options, usize::from(u16::MAX) + 1);
        let (tx, mut rx) = mpsc::channel(self.config.queue);
        let stats = Arc::clone(&self.stats);
        let stop_driver = CancellationToken::new();
        let driver = tokio::spawn(drive(
            eventloop,
            client.clone(),
            self.config.subscribe.clone(),
            stats,
            tx,
            stop_driver.clone(),
        ));
        let cancel = CancellationToken::new();
        tokio::pin!(shutdown);
        if let Err(e) = self.store.ensure_partitions().await {
            tracing::warn!(error = %e, "could not create upcoming readings partitions; will retry");
        }
        let mut upkeep = tokio::time::interval(Duration::from_secs(3600));
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                _ = upkeep.tick() => {
                    match self.store.ensure_partitions().await {
                        Ok(n) if n > 0 => tracing::info!(created = n, "readings partitions created"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "readings partition upkeep failed"),
                    }
                    continue;
                }
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
            };
            let mut received = vec![first.0];
            let mut group = vec![first.1];
            while group.len() < MAX_GROUP_MESSAGES {
                match rx.try_recv() {
                    Ok((at, p)) => {
                        received.push(at);
                        group.push(p);
                    }
                    Err(_) => break,
                }
            }
            let stored = tokio::select! {
                o = self.store_with_retry(&group, &cancel) => o,
                _ = &mut shutdown => {
                    // Finish what is in hand: the retry loop stops waiting once cancelled.
                    cancel.cancel();
                    self.store_with_retry(&group, &cancel).await
                }
            };
            let Some(inputs) = stored else {
                break; // cancelled while the database was down: not stored, so not acked
            };
            for at in &received {
                let latency = at.elapsed();
                self.stats.receipt_to_commit.record(latency);
                metrics::histogram!("maintainpro_ingest_receipt_to_commit_seconds")
                    .record(latency.as_secs_f64());
            }
            let mut acked = true;
            for publish in &group {
                if let Err(e) = client.ack(publish).await {
                    tracing::warn!(error = %e, "ack not sent; the broker will redeliver");
                    acked = false;
                    break;
                }
            }
            if let Some(rules) = &self.rules
                && !inputs.is_empty()
                && rules.send(inputs).await.is_err()
            {
                tracing::warn!("rules engine stopped; readings are still stored");
            }
            if !acked || cancel.is_cancelled() {
                break;
            }
        }
        tracing::info!("ingest stopping");
        // Ignored: the connection may be gone already; unacked messages stay with the broker.
        let _ = client.disconnect().await;
        stop_driver.cancel();
        let _ = driver.await;
        Ok(())
    }

    /// Stores a group, retrying transient database errors with backoff. A group the database
    /// refuses for good is split, so that one poison message becomes a dead letter without
    /// holding back the others. Returns the stored readings for the rules, or `None` when
    /// cancelled before the group could be stored.
    async fn store_with_retry(
        &mut self,
        group: &[Publish],
        cancel: &CancellationToken,
    ) -> Option<Vec<RuleInput>> {
        let mut backoff = Duration::from_millis(100);
        let mut parts: Vec<&[Publish]> = vec![group];
        let mut inputs = Vec::new();
        while let Some(part) = parts.pop() {
            loop {
                let attempt = async {
                    let prepared = self.prepare_all(part).await?;
                    let written = self.store.write_group(&prepared.items).await?;
                    Ok::<_, StoreError>((prepared, written))
                };
                match attempt.await {
                    Ok((prepared, written)) => {
                        inputs.extend(self.account(prepared, &written));
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("maintainpro_ingest_retries_total").increment(1);
                        tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; holding the messages");
                        tokio::select! {
                            _ = cancel.cancelled() => return None,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    Err(e) if part.len() > 1 => {
                        tracing::warn!(error = %e, messages = part.len(), "group refused; storing its messages one by one");
                        let (a, b) = part.split_at(part.len() / 2);
                        parts.push(b);
                        parts.push(a);
                        break;
                    }
                    Err(e) => {
                        // The database refuses this message for good: keep it as a dead letter
                        // so nothing is lost, and move on.
                        tracing::error!(error = %e, topic = %part[0].topic, "message rejected by the database");
                        let letter = Item::Dead(DeadLetter {
                            tenant: None,
                            topic: part[0].topic.clone(),
                            reason: "store_rejected",
                            detail: e.to_string(),
                            payload: part[0].payload.clone(),
                        });
                        match self.store.write_group(&[letter]).await {
                            Ok(_) => {
                                self.count_dead_letter("store_rejected");
                                break;
                            }
                            Err(e2) if e2.is_transient() => {
                                tokio::select! {
                                    _ = cancel.cancelled() => return None,
                                    _ = tokio::time::sleep(backoff) => {}
                                }
                            }
                            Err(e2) => {
                                tracing::error!(error = %e2, "dead letter rejected too; dropping the message");
                                metrics::counter!("maintainpro_ingest_messages_lost_total")
                                    .increment(1);
                                break;
                            }
                        }
                    }
                }
            }
        }
        inputs.sort_by_key(|i| i.ts);
        Some(inputs)
    }

    fn count_dead_letter(&self, reason: &'static str) {
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_ingest_dead_letters_total", "reason" => reason).increment(1);
    }

    /// Counts what a stored group did; returns the readings of its new batches.
    fn account(&self, prepared: Prepared, written: &[Written]) -> Vec<RuleInput> {
        let mut inputs = Vec::new();
        for ((item, rule_inputs), w) in prepared.items.iter().zip(prepared.inputs).zip(written) {
            match (w, item) {
                (Written::Stored { rows }, Item::Batch { rejected, .. }) => {
                    self.stats.batches_stored.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .readings_stored
                        .fetch_add(*rows as u64, Ordering::Relaxed);
                    metrics::counter!("maintainpro_ingest_readings_stored_total")
                        .increment(*rows as u64);
                    if let Some(letter) = rejected {
                        self.count_dead_letter(letter.reason);
                    }
                    inputs.extend(rule_inputs);
                }
                (Written::Duplicate, _) => {
                    self.stats.batches_duplicate.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("maintainpro_ingest_duplicate_batches_total").increment(1);
                }
                (Written::DeadLettered, Item::Dead(letter)) => {
                    tracing::warn!(topic = %letter.topic, reason = letter.reason, detail = %letter.detail, "dead letter");
                    self.count_dead_letter(letter.reason);
                }
                _ => {}
            }
        }
        metrics::histogram!("maintainpro_ingest_group_messages").record(written.len() as f64);
        inputs
    }

    async fn prepare_all(&mut self, group: &[Publish]) -> Result<Prepared, StoreError> {
        let mut prepared = Prepared {
            items: Vec::with_capacity(group.len()),
            inputs: Vec::with_capacity(group.len()),
        };
        for publish in group {
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("maintainpro_ingest_messages_total").increment(1);
            let (item, inputs) = self.prepare(publish).await?;
            prepared.items.push(item);
            prepared.inputs.push(inputs);
        }
        Ok(prepared)
    }

    /// Decodes and resolves one message into what to store, and the readings for the rules
    /// should it be stored.
    async fn prepare(&mut self, publish: &Publish) -> Result<(Item, Vec<RuleInput>), StoreError> {
        let dead = |tenant: Option<TenantId>, reason: &'static str, detail: String| {
            (
                Item::Dead(DeadLetter {
                    tenant: tenant.map(|t| t.as_uuid()),
                    topic: publish.topic.clone(),
                    reason,
                    detail,
                    payload: publish.payload.clone(),
                }),
                Vec::new(),
            )
        };
        let (tenant, gateway) = match model::topic::parse_readings(&publish.topic) {
            Ok(t) => t,
            Err(e) => return Ok(dead(None, "bad_topic", e.to_string())),
        };
        let batch = match Batch::decode(&publish.payload) {
            Ok(b) => b,
            Err(e) => {
                let known = self.tenant_if_known(tenant, &gateway).await?;
                return Ok(dead(known, e.reason(), e.to_string()));
            }
        };
        if batch.gateway != gateway {
            let known = self.tenant_if_known(tenant, &gateway).await?;
            let detail = format!(
                "batch names gateway {:?} but was published on the topic of {:?}",
                batch.gateway.as_str(),
                gateway.as_str()
            );
            return Ok(dead(known, "gateway_mismatch", detail));
        }
        let Ok(seq) = i64::try_from(batch.seq) else {
            let known = self.tenant_if_known(tenant, &gateway).await?;
            let detail = format!(
                "batch sequence number {} exceeds the ledger's range",
                batch.seq
            );
            return Ok(dead(known, "bad_sequence", detail));
        };
        let entry = match self
            .directory
            .resolve(self.store.pool(), tenant, &gateway, &batch.tags)
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
                    "unknown_gateway",
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
        for p in &batch.points {
            if let Some(ctx) = &contexts[p.tag as usize] {
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
        }
        let rejected = (!unknown.is_empty()).then(|| DeadLetter {
            tenant: Some(tenant.as_uuid()),
            topic: publish.topic.clone(),
            reason: "unknown_tag",
            detail: format!(
                "{} of {} readings name tags not registered for gateway {:?}: {}",
                batch.points.len() - rows.len(),
                batch.points.len(),
                gateway.as_str(),
                unknown.join(", ")
            ),
            payload: publish.payload.clone(),
        });
        Ok((
            Item::Batch {
                tenant: tenant.as_uuid(),
                gateway: entry.id,
                seq,
                rows,
                rejected,
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
                .resolve(self.store.pool(), tenant, gateway, &[])
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

/// A group of messages decoded and resolved, with each one's readings for the rules.
struct Prepared {
    items: Vec<Item>,
    inputs: Vec<Vec<RuleInput>>,
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<(std::time::Instant, Publish)>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let polled = tokio::select! {
            _ = cancel.cancelled() => break,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(session_present = ack.session_present, "connected to broker");
                let topics = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(topics) {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                stats.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics::gauge!("maintainpro_ingest_queue_depth")
                    .set((tx.max_capacity() - tx.capacity()) as f64);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    sent = tx.send((std::time::Instant::now(), p)) => if sent.is_err() { break },
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
