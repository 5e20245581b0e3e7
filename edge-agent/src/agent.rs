//! The agent: sources -> outbox -> uplink, and a graceful stop.
//!
//! Readings from the pollers are sealed into numbered batches (by size or age), written to the
//! outbox, and only then published. A batch leaves the outbox when the broker acknowledges it.
//! Whatever is not published at once (the broker is unreachable, the in-flight window is full,
//! or a previous run left it) is the backlog: it is replayed oldest first at a bounded rate, in
//! at most half of the in-flight window, so live batches keep going out during the replay.
//!
//! On shutdown the pollers stop first, what they read is sealed, and the agent waits (up to a
//! grace period) for acknowledgements; whatever is still unacknowledged stays in the outbox for
//! the next start.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use model::Reading;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::outbox::{DirStorage, FsyncPolicy, Outbox, OutboxError};
use crate::uplink::{Uplink, UplinkError, UplinkEvent};

/// How long a stopping agent waits for its sources to stop reading.
const SOURCES_STOP: Duration = Duration::from_secs(3);
/// Then, how long it waits for MQTT sources to acknowledge what was sealed.
const SOURCES_ACK: Duration = Duration::from_secs(10);
/// How long a stopping agent waits for outstanding acknowledgements.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the backlog is replayed (the rate is spread over these ticks).
const REPLAY_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Readings a source hands to the agent, and whom to tell once they are durable in the outbox
/// (sealed, and synced when the fsync policy is `interval`; sealed with `never`) or dropped and
/// counted.
#[derive(Debug)]
pub struct Chunk {
    pub readings: Vec<Reading>,
    pub on_sealed: Option<oneshot::Sender<()>>,
}

impl From<Vec<Reading>> for Chunk {
    fn from(readings: Vec<Reading>) -> Self {
        Self {
            readings,
            on_sealed: None,
        }
    }
}

/// Counters the agent keeps; also exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub readings_polled: AtomicU64,
    pub readings_sealed: AtomicU64,
    pub readings_acked: AtomicU64,
    pub batches_acked: AtomicU64,
    pub readings_dropped: AtomicU64,
    pub device_errors: AtomicU64,
    pub requests: AtomicU64,
    pub decode_errors: AtomicU64,
}

impl AgentStats {
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_modbus_requests_total").increment(1);
    }

    pub(crate) fn count_device_error(&self) {
        self.device_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_device_errors_total").increment(1);
    }

    fn count_polled(&self, n: usize) {
        self.readings_polled.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_readings_polled_total").increment(n as u64);
    }

    fn count_sealed(&self, n: usize) {
        self.readings_sealed.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_readings_sealed_total").increment(n as u64);
    }

    pub(crate) fn count_decode_error(&self) {
        self.decode_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_decode_errors_total").increment(1);
    }

    fn count_acked(&self, readings: usize) {
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.readings_acked
            .fetch_add(readings as u64, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_readings_acked_total").increment(readings as u64);
    }

    pub(crate) fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.readings_dropped.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("maintainpro_edge_readings_dropped_total").increment(n);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A configured edge agent, ready to run.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    stats: Arc<AgentStats>,
}

/// The loop's state between events.
struct Flow {
    outbox: Outbox<DirStorage>,
    uplink: Uplink,
    /// Readings not yet sealed into a batch.
    unsealed: VecDeque<Reading>,
    /// Sealed batches not yet published, oldest first.
    backlog: BTreeSet<u64>,
    connected: bool,
    /// The current outage has been logged (retries are not).
    reported_unreachable: bool,
    outbox_dropped: u64,
    /// Batches the replay may still send: refilled at the configured rate, capped at one
    /// second's worth.
    replay_budget: f64,
    /// Readings taken from the sources so far.
    accepted: u64,
    /// Of those, readings sealed into the outbox or dropped, in the order they came.
    released: u64,
    /// Of those, readings known durable (or dropped): the sources waiting up to there are told.
    durable: u64,
    /// Sources waiting for their readings to be durable: (accepted count after their chunk,
    /// whom to tell).
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl Flow {
    /// Everything released so far is durable: tell the sources waiting for it.
    fn mark_durable(&mut self) {
        self.durable = self.released;
        while self
            .waiting
            .front()
            .is_some_and(|(upto, _)| *upto <= self.durable)
        {
            if let Some((_, tx)) = self.waiting.pop_front() {
                // A source that stopped waiting has nothing to acknowledge.
                let _ = tx.send(());
            }
        }
    }
}

impl Agent {
    pub fn build(config: AgentConfig) -> Self {
        Self {
            config,
            stats: Arc::new(AgentStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<AgentStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` completes, then stops gracefully.
    #[tracing::instrument(skip_all, fields(gateway = %self.config.gateway.id))]
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        let cfg = &self.config;
        // A gateway whose outbox is new numbers its batches from the wall clock, so that a
        // replaced or wiped gateway never reuses a number ingest has already seen.
        let floor = u64::try_from(model::Timestamp::now().as_micros()).unwrap_or(1);
        let (outbox, recovery) =
            Outbox::open_dir(cfg.outbox.clone(), cfg.gateway.id.clone(), floor)?;
        if recovery.batches > 0 || !recovery.damage.is_empty() {
            tracing::info!(
                batches = recovery.batches,
                readings = recovery.readings,
                damaged_ranges = recovery.damage.len(),
                "outbox recovered; unacknowledged batches will be replayed"
            );
        }
        let stop_sources = CancellationToken::new();
        let stop_uplink = CancellationToken::new();
        let (uplink, mut events, driver) = Uplink::start(cfg, stop_uplink.clone())?;
        let mut flow = Flow {
            backlog: outbox.unacked().collect(),
            outbox,
            uplink,
            unsealed: VecDeque::new(),
            connected: false,
            reported_unreachable: false,
            outbox_dropped: 0,
            replay_budget: 0.0,
            accepted: 0,
            released: 0,
            durable: 0,
            waiting: VecDeque::new(),
        };
        let (tx, mut readings) = mpsc::channel::<Chunk>(64);
        let mut pollers = tokio::task::JoinSet::new();
        // One task per line: a TCP device, or all units sharing one serial port or converter.
        for poller in crate::modbus::poller::pollers(&cfg.device, &tx, &self.stats) {
            pollers.spawn(poller.run(stop_sources.clone()));
        }
        for source in &cfg.mqtt {
            let births = crate::mqtt::births::BirthFiles::new(
                cfg.outbox.dir.join("sparkplug"),
                &source.name,
            );
            let source = crate::mqtt::source::MqttSource::new(
                source.clone(),
                cfg.gateway.id.clone(),
                Arc::clone(&self.stats),
            )
            .keeping_births(births);
            pollers.spawn(source.run(tx.clone(), stop_sources.clone()));
        }
        for source in &cfg.opcua {
            let source = crate::opcua::source::OpcUaSource::new(
                source.clone(),
                cfg.gateway.id.clone(),
                Arc::clone(&self.stats),
            );
            pollers.spawn(source.run(tx.clone(), stop_sources.clone()));
        }
        drop(tx);
        tracing::info!(
            devices = cfg.device.len(),
            mqtt_sources = cfg.mqtt.len(),
            opcua_sources = cfg.opcua.len(),
            tags = cfg.tag_count(),
            broker = %cfg.uplink.broker,
            outbox = %cfg.outbox.dir.display(),
            "edge agent started"
        );

        let mut flush = tokio::time::interval(cfg.uplink.batch_max_age);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fsync = tokio::time::interval(cfg.outbox.fsync_interval);
        fsync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replay = tokio::time::interval(REPLAY_TICK);
        replay.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(chunk) = readings.recv() => {
                    self.accept(&mut flow, chunk);
                    if flow.unsealed.len() >= cfg.uplink.batch_max_readings {
                        self.seal(&mut flow, false).await?;
                    }
                }
                _ = flush.tick() => self.seal(&mut flow, true).await?,
                _ = fsync.tick(), if cfg.outbox.fsync == FsyncPolicy::Interval => {
                    flow.outbox.sync()?;
                    flow.mark_durable();
                }
                _ = replay.tick() => self.replay(&mut flow).await?,
                Some(event) = events.recv() => self.on_event(&mut flow, &event)?,
            }
        }

        tracing::info!("stopping: draining sources and waiting for acknowledgements");
        stop_sources.cancel();
        // Every source drops its sender when it stops; what they handed over before is sealed.
        // A source that does not stop in time is not waited for: what the others handed over
        // is sealed all the same.
        let drain_until = tokio::time::Instant::now() + SOURCES_STOP;
        loop {
            tokio::select! {
                chunk = readings.recv() => match chunk {
                    Some(chunk) => self.accept(&mut flow, chunk),
                    None => break,
                },
                _ = tokio::time::sleep_until(drain_until) => {
                    tracing::warn!(?SOURCES_STOP, "a source did not stop in time; sealing what was handed over");
                    break;
                }
            }
        }
        self.seal(&mut flow, true).await?;
        flow.outbox.sync()?;
        flow.mark_durable();
        // MQTT sources acknowledge to their brokers what is now durable, then end.
        let joined = async { while pollers.join_next().await.is_some() {} };
        if tokio::time::timeout(SOURCES_ACK, joined).await.is_err() {
            pollers.abort_all();
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while flow.outbox.unacked_count() > 0 {
            self.replay(&mut flow).await?;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                Some(event) = events.recv() => self.on_event(&mut flow, &event)?,
            }
        }
        let left = flow.outbox.unacked_count();
        if left > 0 {
            tracing::info!(
                batches = left,
                "unacknowledged batches stay in the outbox for the next start"
            );
        }
        flow.uplink.disconnect().await;
        stop_uplink.cancel();
        // The driver ends on cancel; a panic in it has already been logged by tokio.
        let _ = driver.await;
        tracing::info!(
            acked = AgentStats::get(&self.stats.readings_acked),
            dropped = AgentStats::get(&self.stats.readings_dropped),
            "edge agent stopped"
        );
        Ok(())
    }

    /// Takes polled readings into memory, dropping (and counting) the oldest beyond the bound.
    fn accept(&self, flow: &mut Flow, chunk: Chunk) {
        self.stats.count_polled(chunk.readings.len());
        flow.accepted += chunk.readings.len() as u64;
        if let Some(tx) = chunk.on_sealed {
            flow.waiting.push_back((flow.accepted, tx));
        }
        flow.unsealed.extend(chunk.readings);
        let max = self.config.uplink.buffer_max_readings;
        if flow.unsealed.len() > max {
            let excess = flow.unsealed.len() - max;
            flow.unsealed.drain(..excess);
            flow.released += excess as u64;
            self.stats.count_dropped(excess as u64);
            tracing::warn!(
                readings = excess,
                "unsealed readings dropped: the outbox is not keeping up"
            );
        }
    }

    /// Seals full batches (and with `partial` a last partial one) into the outbox and publishes
    /// them if the window has room; otherwise they join the backlog.
    async fn seal(&self, flow: &mut Flow, partial: bool) -> Result<(), AgentError> {
        let max = self.config.uplink.batch_max_readings;
        while flow.unsealed.len() >= max || (partial && !flow.unsealed.is_empty()) {
            let n = max.min(flow.unsealed.len());
            let batch: Vec<Reading> = flow.unsealed.iter().take(n).cloned().collect();
            let sealed = match flow.outbox.append(&batch) {
                Ok(s) => s,
                Err(e) => {
                    // Keep the readings in memory and retry on the next tick.
                    tracing::error!(error = %e, "cannot write to the outbox");
                    return Ok(());
                }
            };
            flow.unsealed.drain(..n);
            flow.released += n as u64;
            self.stats.count_sealed(n);
            let dropped = flow.outbox.dropped().readings;
            self.stats.count_dropped(dropped - flow.outbox_dropped);
            flow.outbox_dropped = dropped;
            tracing::debug!(seq = sealed.seq, readings = sealed.readings, "sealed");
            if flow.connected && flow.uplink.in_flight() < self.config.uplink.max_in_flight {
                flow.uplink.publish(sealed).await?;
            } else {
                flow.backlog.insert(sealed.seq);
            }
        }
        // With `interval` the next sync makes them durable; `never` leaves that to the
        // operating system, so sealed is as durable as they get.
        if self.config.outbox.fsync != FsyncPolicy::Interval {
            flow.mark_durable();
        }
        metrics::gauge!("maintainpro_edge_outbox_bytes").set(flow.outbox.bytes() as f64);
        metrics::gauge!("maintainpro_edge_backlog_batches").set(flow.backlog.len() as f64);
        Ok(())
    }

    /// Publishes the oldest backlog batches within the replay rate and half the window.
    async fn replay(&self, flow: &mut Flow) -> Result<(), AgentError> {
        if !flow.connected || flow.backlog.is_empty() {
            return Ok(());
        }
        let rate = f64::from(self.config.outbox.replay_batches_per_second);
        flow.replay_budget = (flow.replay_budget + rate * REPLAY_TICK.as_secs_f64()).min(rate);
        let window = (self.config.uplink.max_in_flight / 2).max(1);
        while flow.replay_budget >= 1.0 && flow.uplink.in_flight() < window {
            let Some(seq) = flow.backlog.pop_first() else {
                break;
            };
            // A batch dropped from a full outbox has nothing left to send.
            if let Some(sealed) = flow.outbox.load(seq)? {
                flow.uplink.publish(sealed).await?;
                flow.replay_budget -= 1.0;
            }
        }
        Ok(())
    }

    fn on_event(&self, flow: &mut Flow, event: &UplinkEvent) -> Result<(), AgentError> {
        match event {
            UplinkEvent::Connected => {
                flow.connected = true;
                flow.reported_unreachable = false;
                tracing::info!(backlog = flow.backlog.len(), "connected to broker");
            }
            UplinkEvent::Disconnected(e) => {
                if flow.connected {
                    tracing::warn!(error = %e, "broker connection lost; readings go to the outbox");
                } else if !flow.reported_unreachable {
                    // Once per outage, not on every retry: a TLS handshake refused, a wrong
                    // port, a broker not yet up.
                    tracing::warn!(error = %e, "cannot connect to the broker; readings go to the outbox, retrying");
                }
                flow.reported_unreachable = true;
                flow.connected = false;
            }
            _ => {}
        }
        if let Some(batch) = flow.uplink.on_event(event) {
            flow.outbox.ack(batch.seq)?;
            self.stats.count_acked(batch.readings);
        }
        Ok(())
    }
}
