//! The per-device polling task: runs the device's request plan on a timer.
//!
//! Every failure becomes data, never a crash: a timeout, a refused connection or a Modbus
//! exception yields readings with `Quality::Bad` for the tags concerned, a counted error, and
//! (for transport failures) a fresh connection on the next cycle. Each device has its own
//! task, so a slow or dead device never delays another.

use std::net::SocketAddr;
use std::sync::Arc;

use model::{Quality, Reading, Timestamp};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::slave::Slave;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentStats;
use crate::config::{DeviceConfig, Table, TagConfig};
use crate::modbus::decode::{DataType, decode_registers};
use crate::modbus::plan::{Request, plan};

/// Polls one Modbus TCP device until `cancel` fires.
#[derive(Debug)]
pub struct DevicePoller {
    device: DeviceConfig,
    requests: Vec<Request>,
    out: mpsc::Sender<Vec<Reading>>,
    stats: Arc<AgentStats>,
}

enum ReadFailure {
    /// The device answered with a Modbus exception: the connection is fine.
    Exception(String),
    /// Timeout or transport error: reconnect before the next request.
    Transport(String),
}

fn engineering(t: &TagConfig, raw: f64) -> f64 {
    raw * t.scale + t.offset
}

impl DevicePoller {
    pub fn new(
        device: DeviceConfig,
        out: mpsc::Sender<Vec<Reading>>,
        stats: Arc<AgentStats>,
    ) -> Self {
        let requests = plan(&device.tag, device.max_gap);
        Self {
            device,
            requests,
            out,
            stats,
        }
    }

    /// The read requests one poll cycle makes.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    async fn connect(&self) -> Result<Context, String> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.device.address)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.device.address))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.device.address))?;
        let slave = Slave(self.device.unit_id);
        match timeout(
            self.device.timeout,
            tokio_modbus::client::tcp::connect_slave(addr, slave),
        )
        .await
        {
            Ok(Ok(ctx)) => Ok(ctx),
            Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
            Err(_) => Err(format!(
                "connect to {addr}: no answer within {:?}",
                self.device.timeout
            )),
        }
    }

    async fn read(&self, ctx: &mut Context, r: &Request) -> Result<Values, ReadFailure> {
        let fut = async {
            match r.table {
                Table::Holding => ctx
                    .read_holding_registers(r.start, r.count)
                    .await
                    .map(|v| v.map(Values::Words)),
                Table::Input => ctx
                    .read_input_registers(r.start, r.count)
                    .await
                    .map(|v| v.map(Values::Words)),
                Table::Coil => ctx
                    .read_coils(r.start, r.count)
                    .await
                    .map(|v| v.map(Values::Bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(r.start, r.count)
                    .await
                    .map(|v| v.map(Values::Bits)),
            }
        };
        match timeout(self.device.timeout, fut).await {
            Ok(Ok(Ok(values))) => Ok(values),
            Ok(Ok(Err(exception))) => Err(ReadFailure::Exception(format!(
                "Modbus exception {exception:?}"
            ))),
            Ok(Err(e)) => Err(ReadFailure::Transport(e.to_string())),
            Err(_) => Err(ReadFailure::Transport(format!(
                "no answer within {:?}",
                self.device.timeout
            ))),
        }
    }

    fn decode(&self, r: &Request, values: &Values, ts: Timestamp, out: &mut Vec<Reading>) {
        for &i in &r.tags {
            let t = &self.device.tag[i];
            let offset = usize::from(t.address - r.start);
            let width = usize::from(t.width());
            let raw = match values {
                Values::Bits(bits) => bits.get(offset).map(|&b| Ok(f64::from(u8::from(b)))),
                Values::Words(words) => words
                    .get(offset..offset + width)
                    .map(|w| decode_registers(w, t.data_type, t.byte_order, t.bit)),
            };
            let (value, quality) = match raw {
                Some(Ok(v)) if v.is_finite() => {
                    let v = if t.data_type == DataType::Bool {
                        v
                    } else {
                        engineering(t, v)
                    };
                    (v, Quality::Good)
                }
                // A short answer or a NaN/inf register value is bad data, not a measurement.
                _ => {
                    self.stats
                        .decode_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    (0.0, Quality::Bad)
                }
            };
            out.push(Reading {
                tag: t.name.clone(),
                ts,
                value,
                quality,
            });
        }
    }

    fn bad(&self, r: &Request, ts: Timestamp, out: &mut Vec<Reading>) {
        out.extend(r.tags.iter().map(|&i| Reading {
            tag: self.device.tag[i].name.clone(),
            ts,
            value: 0.0,
            quality: Quality::Bad,
        }));
    }

    /// One poll cycle. Returns the connection if it is still usable.
    pub async fn poll_once(&self, mut conn: Option<Context>) -> (Vec<Reading>, Option<Context>) {
        let mut readings = Vec::with_capacity(self.device.tag.len());
        if conn.is_none() {
            match self.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    self.stats.count_device_error();
                    tracing::warn!(device = %self.device.name, error = %e, "device unreachable; tags marked bad");
                    let ts = Timestamp::now();
                    for r in &self.requests {
                        self.bad(r, ts, &mut readings);
                    }
                    return (readings, None);
                }
            }
        }
        for r in &self.requests {
            let Some(ctx) = conn.as_mut() else {
                self.bad(r, Timestamp::now(), &mut readings);
                continue;
            };
            self.stats.count_request();
            let result = self.read(ctx, r).await;
            let ts = Timestamp::now();
            match result {
                Ok(values) => self.decode(r, &values, ts, &mut readings),
                Err(ReadFailure::Exception(e)) => {
                    self.stats.count_device_error();
                    tracing::warn!(device = %self.device.name, table = ?r.table, start = r.start, count = r.count, error = %e, "read refused");
                    self.bad(r, ts, &mut readings);
                }
                Err(ReadFailure::Transport(e)) => {
                    self.stats.count_device_error();
                    tracing::warn!(device = %self.device.name, error = %e, "read failed; reconnecting next cycle");
                    self.bad(r, ts, &mut readings);
                    conn = None;
                }
            }
        }
        (readings, conn)
    }

    /// Polls until cancelled. Readings go to the buffer in one chunk per cycle.
    #[tracing::instrument(skip_all, fields(device = %self.device.name))]
    pub async fn run(self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.device.poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut conn = None;
        tracing::info!(
            address = %self.device.address,
            tags = self.device.tag.len(),
            requests = self.requests.len(),
            "polling"
        );
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let (readings, next) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.poll_once(conn.take()) => r,
            };
            conn = next;
            if self.out.send(readings).await.is_err() {
                break;
            }
        }
        tracing::info!("stopped");
    }
}

/// A read's answer.
enum Values {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}
