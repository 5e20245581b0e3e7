//! The polling task of one line: polls its devices on their timers and hands the readings to
//! the agent's buffer.
//!
//! A Modbus TCP device is a line of its own, so a slow or dead device never delays another;
//! the RTU devices of one serial port or converter share a line and wait for each other, as
//! they share the wire. Before readings leave, `string` tags (never read here: readings carry
//! numbers) are left out and tags with a deadband are reported by exception
//! ([`crate::exception`]).

use std::sync::Arc;

use model::Reading;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentStats, Chunk};
use crate::config::DeviceConfig;
use crate::exception::ExceptionFilter;
use crate::modbus::line::{Line, Sample, TagScope};
use crate::modbus::transport::group_devices;

/// Polls the devices of one line until cancelled.
#[derive(Debug)]
pub struct DevicePoller {
    line: Line,
    exceptions: ExceptionFilter,
    out: mpsc::Sender<Chunk>,
}

impl DevicePoller {
    /// A poller for one device on a line of its own.
    pub fn new(device: DeviceConfig, out: mpsc::Sender<Chunk>, stats: Arc<AgentStats>) -> Self {
        Self::for_line(vec![device], out, stats)
    }

    /// A poller for devices that share a line (see [`pollers`]).
    pub fn for_line(
        devices: Vec<DeviceConfig>,
        out: mpsc::Sender<Chunk>,
        stats: Arc<AgentStats>,
    ) -> Self {
        let exceptions = ExceptionFilter::for_tags(devices.iter().flat_map(|d| &d.tag));
        Self {
            line: Line::new(devices, TagScope::Published, stats),
            exceptions,
            out,
        }
    }

    /// Polls until cancelled. Each device's poll goes to the buffer as one chunk.
    #[tracing::instrument(skip_all, fields(line = %self.line.label()))]
    pub async fn run(mut self, cancel: CancellationToken) {
        let (tags, requests) = self.line.size();
        tracing::info!(tags, requests, "polling");
        loop {
            let samples = tokio::select! {
                _ = cancel.cancelled() => break,
                samples = self.line.next() => samples,
            };
            let mut readings: Vec<Reading> =
                samples.iter().filter_map(Sample::to_reading).collect();
            self.exceptions.retain(&mut readings);
            if readings.is_empty() {
                continue;
            }
            if self.out.send(readings.into()).await.is_err() {
                break;
            }
        }
        tracing::info!("stopped");
    }
}

/// One poller per line of `devices`: RTU devices on the same serial port or converter share
/// one, every other device gets its own.
pub fn pollers(
    devices: &[DeviceConfig],
    out: &mpsc::Sender<Chunk>,
    stats: &Arc<AgentStats>,
) -> Vec<DevicePoller> {
    group_devices(devices)
        .into_iter()
        .map(|line| {
            let devices = line.into_iter().map(|i| devices[i].clone()).collect();
            DevicePoller::for_line(devices, out.clone(), Arc::clone(stats))
        })
        .collect()
}
