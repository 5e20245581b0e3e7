//! The agent: sources -> buffer -> uplink, and a graceful stop.
//!
//! On shutdown the pollers stop first, whatever they read is buffered and published, and the
//! agent waits (up to a grace period) for the broker to acknowledge every batch before it
//! disconnects; anything still unacknowledged is reported.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use model::Reading;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::config::AgentConfig;
use crate::modbus::poller::DevicePoller;
use crate::uplink::{Uplink, UplinkError, UplinkEvent};

/// How long a stopping agent waits for outstanding acknowledgements.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Uplink(#[from] UplinkError),
}

/// Counters the agent keeps; also exported as Prometheus metrics.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub readings_polled: AtomicU64,
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

    fn count_acked(&self, readings: usize) {
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.readings_acked
            .fetch_add(readings as u64, Ordering::Relaxed);
        metrics::counter!("maintainpro_edge_readings_acked_total").increment(readings as u64);
    }

    fn count_dropped(&self, n: u64) {
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
        let stop_sources = CancellationToken::new();
        let stop_uplink = CancellationToken::new();
        let (uplink, mut events, driver) = Uplink::start(cfg, stop_uplink.clone())?;
        let mut uplink = uplink;
        let (tx, mut readings) = mpsc::channel::<Vec<Reading>>(64);
        let mut pollers = tokio::task::JoinSet::new();
        for device in &cfg.device {
            let poller = DevicePoller::new(device.clone(), tx.clone(), Arc::clone(&self.stats));
            pollers.spawn(poller.run(stop_sources.clone()));
        }
        drop(tx);
        tracing::info!(
            devices = cfg.device.len(),
            tags = cfg.tag_count(),
            broker = %cfg.uplink.broker,
            "edge agent started"
        );

        let mut buffer = Buffer::new(cfg.uplink.buffer_max_readings);
        let mut flush = tokio::time::interval(cfg.uplink.batch_max_age);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(chunk) = readings.recv() => {
                    self.stats.count_polled(chunk.len());
                    self.stats.count_dropped(buffer.push(chunk));
                    if buffer.waiting() >= cfg.uplink.batch_max_readings {
                        self.publish_ready(&mut uplink, &mut buffer, false).await?;
                    }
                }
                _ = flush.tick() => self.publish_ready(&mut uplink, &mut buffer, true).await?,
                Some(event) = events.recv() => self.on_event(&mut uplink, &mut buffer, &event),
            }
        }

        tracing::info!("stopping: draining sources and waiting for acknowledgements");
        stop_sources.cancel();
        while pollers.join_next().await.is_some() {}
        while let Ok(chunk) = readings.try_recv() {
            self.stats.count_polled(chunk.len());
            self.stats.count_dropped(buffer.push(chunk));
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while buffer.waiting() + buffer.in_flight() > 0 {
            self.publish_ready(&mut uplink, &mut buffer, true).await?;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                Some(event) = events.recv() => self.on_event(&mut uplink, &mut buffer, &event),
            }
        }
        let left = buffer.waiting() + buffer.in_flight();
        if left > 0 {
            tracing::warn!(
                readings = left,
                "stopped with readings not acknowledged by the broker"
            );
        }
        uplink.disconnect().await;
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

    fn on_event(&self, uplink: &mut Uplink, buffer: &mut Buffer, event: &UplinkEvent) {
        match event {
            UplinkEvent::Connected => tracing::info!("connected to broker"),
            UplinkEvent::Disconnected(e) => {
                tracing::warn!(error = %e, "broker connection lost; retrying")
            }
            _ => {}
        }
        if let Some(batch) = uplink.on_event(event) {
            buffer.acknowledged(batch.readings);
            self.stats.count_acked(batch.readings);
        }
    }

    /// Publishes full batches, and with `partial` also a last partial one, while the in-flight
    /// window has room.
    async fn publish_ready(
        &self,
        uplink: &mut Uplink,
        buffer: &mut Buffer,
        partial: bool,
    ) -> Result<(), AgentError> {
        let max = self.config.uplink.batch_max_readings;
        while uplink.in_flight() < self.config.uplink.max_in_flight
            && (buffer.waiting() >= max || (partial && buffer.waiting() > 0))
        {
            let batch = buffer.take(max);
            uplink.publish(&batch).await?;
        }
        Ok(())
    }
}
