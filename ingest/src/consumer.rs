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
use model::{Quality, TagName, TenantId, Timestamp};
use rules::TagContext;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::copy::Row;
use crate::directory::{Directory, Resolved};
use crate::store::{DeadLetter, PgStore, StoreError, Written};

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
}

impl IngestStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) fn parse_broker(url: &str) -> Result<(String, u16), IngestError> {
    let bad = || IngestError::BadBroker(url.to_owned());
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(bad)?
        .trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Ok((h.to_owned(), p.parse().map_err(|_| bad())?)),
        None if !rest.is_empty() => Ok((rest.to_owned(), 1883)),
        _ => Err(bad()),
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

/// What became of one message.
enum Outcome {
    Stored(Vec<RuleInput>),
    Nothing,
}

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

    /// Consumes until `shutdown` completes; then finishes the message in hand and disconnects.
    #[tracing::instrument(skip_all, fields(client_id = %self.config.client_id))]
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), IngestError> {
        let (host, port) = parse_broker(&self.config.broker)?;
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
        let (client, eventloop) = AsyncClient::new(options, 64);
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
            let publish = tokio::select! {
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
            let outcome = tokio::select! {
                o = self.process_with_retry(&publish, &cancel) => o,
                _ = &mut shutdown => {
                    // Finish what is in hand: the retry loop stops waiting once cancelled.
                    cancel.cancel();
                    self.process_with_retry(&publish, &cancel).await
                }
            };
            let Some(outcome) = outcome else {
                break; // cancelled while the database was down: not stored, so not acked
            };
            if let Err(e) = client.ack(&publish).await {
                tracing::warn!(error = %e, "ack not sent; the broker will redeliver");
                break;
            }
            if let (Outcome::Stored(inputs), Some(rules)) = (outcome, &self.rules)
                && !inputs.is_empty()
                && rules.send(inputs).await.is_err()
            {
                tracing::warn!("rules engine stopped; readings are still stored");
            }
            if cancel.is_cancelled() {
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

    /// Processes one message, retrying transient database errors with backoff. `None` when
    /// cancelled before it could be stored.
    async fn process_with_retry(
        &mut self,
        publish: &Publish,
        cancel: &CancellationToken,
    ) -> Option<Outcome> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.process(publish).await {
                Ok(o) => return Some(o),
                Err(e) if e.is_transient() => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("maintainpro_ingest_retries_total").increment(1);
                    tracing::warn!(error = %e, retry_in = ?backoff, "database unavailable; holding the message");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // The database refuses this message for good: keep it as a dead letter so
                    // nothing is lost, and move on.
                    tracing::error!(error = %e, topic = %publish.topic, "message rejected by the database");
                    let letter = DeadLetter {
                        tenant: None,
                        topic: &publish.topic,
                        reason: "store_rejected",
                        detail: e.to_string(),
                        payload: &publish.payload,
                    };
                    match self.store.dead_letter(letter).await {
                        Ok(()) => {
                            self.count_dead_letter("store_rejected");
                            return Some(Outcome::Nothing);
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
                            return Some(Outcome::Nothing);
                        }
                    }
                }
            }
        }
    }

    fn count_dead_letter(&self, reason: &'static str) {
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_ingest_dead_letters_total", "reason" => reason).increment(1);
    }

    async fn dead_letter(
        &self,
        tenant: Option<TenantId>,
        publish: &Publish,
        reason: &'static str,
        detail: String,
    ) -> Result<Outcome, StoreError> {
        tracing::warn!(topic = %publish.topic, reason, %detail, "dead letter");
        self.store
            .dead_letter(DeadLetter {
                tenant: tenant.map(|t| t.as_uuid()),
                topic: &publish.topic,
                reason,
                detail,
                payload: &publish.payload,
            })
            .await?;
        self.count_dead_letter(reason);
        Ok(Outcome::Nothing)
    }

    async fn process(&mut self, publish: &Publish) -> Result<Outcome, StoreError> {
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_ingest_messages_total").increment(1);
        let (tenant, gateway) = match model::topic::parse_readings(&publish.topic) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .dead_letter(None, publish, "bad_topic", e.to_string())
                    .await;
            }
        };
        let batch = match Batch::decode(&publish.payload) {
            Ok(b) => b,
            Err(e) => {
                let known = self.tenant_if_known(tenant, &gateway).await?;
                return self
                    .dead_letter(known, publish, e.reason(), e.to_string())
                    .await;
            }
        };
        if batch.gateway != gateway {
            let known = self.tenant_if_known(tenant, &gateway).await?;
            let detail = format!(
                "batch names gateway {:?} but was published on the topic of {:?}",
                batch.gateway.as_str(),
                gateway.as_str()
            );
            return self
                .dead_letter(known, publish, "gateway_mismatch", detail)
                .await;
        }
        let resolved = self
            .directory
            .resolve(self.store.pool(), tenant, &gateway, &batch.tags)
            .await?;
        let entry = match resolved {
            Resolved::Gateway(entry) => entry,
            Resolved::UnknownGateway { tenant_exists } => {
                let detail = format!(
                    "gateway {:?} is not registered for tenant {tenant}",
                    gateway.as_str()
                );
                return self
                    .dead_letter(
                        tenant_exists.then_some(tenant),
                        publish,
                        "unknown_gateway",
                        detail,
                    )
                    .await;
            }
        };
        let contexts: Vec<Option<Arc<TagContext>>> = batch
            .tags
            .iter()
            .map(|t| entry.tags.get(t).cloned())
            .collect();
        let unknown: Vec<&TagName> = batch
            .tags
            .iter()
            .zip(&contexts)
            .filter(|(_, c)| c.is_none())
            .map(|(t, _)| t)
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
            topic: &publish.topic,
            reason: "unknown_tag",
            detail: format!(
                "{} of {} readings name tags not registered for gateway {:?}: {}",
                batch.points.len() - rows.len(),
                batch.points.len(),
                gateway.as_str(),
                unknown
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            payload: &publish.payload,
        });
        let gateway_id = entry.id;
        let started = std::time::Instant::now();
        match self
            .store
            .write_batch(tenant.as_uuid(), gateway_id, batch.seq, &rows, rejected)
            .await?
        {
            Written::Stored { rows: n } => {
                metrics::histogram!("maintainpro_ingest_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.stats.batches_stored.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .readings_stored
                    .fetch_add(n as u64, Ordering::Relaxed);
                metrics::counter!("maintainpro_ingest_readings_stored_total").increment(n as u64);
                if !unknown.is_empty() {
                    self.count_dead_letter("unknown_tag");
                }
                inputs.sort_by_key(|i| i.ts);
                Ok(Outcome::Stored(inputs))
            }
            Written::Duplicate => {
                self.stats.batches_duplicate.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("maintainpro_ingest_duplicate_batches_total").increment(1);
                tracing::debug!(gateway = %gateway, seq = batch.seq, "redelivered batch skipped");
                Ok(Outcome::Nothing)
            }
        }
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

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<Publish>,
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
                    sent = tx.send(p) => if sent.is_err() { break },
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
