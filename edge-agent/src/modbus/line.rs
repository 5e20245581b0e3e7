//! A line: one link (a TCP connection or a serial port) and the devices polled over it, one
//! after another.
//!
//! The transport is chosen once per line ([`Transport::of`] of its first device; devices of
//! one line have the same transport by construction and by the configuration check). The link
//! is opened on the first request and reopened after a failure that closes it
//! ([`Failure::closes_link`]), or when no device of the line answered anything in its latest
//! poll. One unit that stays silent on a shared RTU line therefore only turns its own tags
//! bad; the port stays open for the others.
//!
//! Every failure becomes data, never a crash: the tags concerned get `Quality::Bad` and the
//! device error is counted. A request that still fails after its retries (other than by a
//! Modbus exception) ends the device's poll: its remaining requests are marked bad unsent.

use std::sync::Arc;
use std::time::Duration;

use model::{Quality, Reading, TagName, Timestamp};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::slave::{Slave, SlaveContext};

use crate::agent::AgentStats;
use crate::config::{DeviceConfig, Parity, SerialSettings, Table, TagConfig};
use crate::modbus::decode::{DataType, decode_registers, decode_text};
use crate::modbus::failure::{Failure, RetryPolicy};
use crate::modbus::plan::{Request, plan};
use crate::modbus::schedule::Schedule;
use crate::modbus::transport::Transport;

/// Which tags a line reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagScope {
    /// The tags the agent publishes: every tag but `string` ones, which are never read.
    Published,
    /// Every tag, for `edge-agent read`.
    All,
}

impl TagScope {
    fn includes(self, tag: &TagConfig) -> bool {
        self == TagScope::All || tag.is_published()
    }
}

/// A decoded value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// The engineering value of a number; 0.0 or 1.0 for a bool.
    Number(f64),
    /// The text of a `string` tag.
    Text(String),
}

/// One tag's value as read, before it becomes a [`Reading`] (which only carries numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tag: TagName,
    /// When the read request returned, on the gateway's clock.
    pub ts: Timestamp,
    /// `None` when the quality is bad.
    pub value: Option<Value>,
    pub quality: Quality,
}

impl Sample {
    /// The reading the agent publishes: a bad sample carries 0.0. `None` for a text value,
    /// which a reading cannot carry (lines that publish never read `string` tags).
    pub fn to_reading(&self) -> Option<Reading> {
        let value = match &self.value {
            Some(Value::Text(_)) => return None,
            Some(Value::Number(v)) => *v,
            None => 0.0,
        };
        Some(Reading {
            tag: self.tag.clone(),
            ts: self.ts,
            value,
            quality: self.quality,
        })
    }
}

/// A read's answer.
enum Values {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// The connection a line's requests travel over, opened on demand.
struct Link {
    /// An error only for a device configuration that was never validated; every request
    /// then fails to connect with this message.
    transport: Result<Transport, String>,
    conn: Option<Context>,
}

impl Link {
    /// The open connection, addressed to `unit`; opens it first if needed.
    async fn context(&mut self, unit: u8, limit: Duration) -> Result<&mut Context, Failure> {
        let ctx = match self.conn.take() {
            Some(ctx) => ctx,
            None => {
                let transport = self
                    .transport
                    .as_ref()
                    .map_err(|e| Failure::Connect(e.clone()))?;
                open(transport, limit).await?
            }
        };
        let ctx = self.conn.insert(ctx);
        ctx.set_slave(Slave(unit));
        Ok(ctx)
    }

    fn close(&mut self) {
        // Dropping the context closes the socket or the port.
        self.conn = None;
    }
}

async fn open(transport: &Transport, limit: Duration) -> Result<Context, Failure> {
    match transport {
        Transport::Tcp { address } => Ok(tokio_modbus::client::tcp::attach(
            connect_tcp(address, limit).await?,
        )),
        Transport::RtuOverTcp { address } => Ok(tokio_modbus::client::rtu::attach(
            connect_tcp(address, limit).await?,
        )),
        Transport::RtuSerial(line) => Ok(tokio_modbus::client::rtu::attach(open_serial(line)?)),
    }
}

async fn connect_tcp(address: &str, limit: Duration) -> Result<TcpStream, Failure> {
    let connect = async {
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(|e| format!("cannot resolve {address}: {e}"))?
            .next()
            .ok_or_else(|| format!("{address} resolves to no address"))?;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        // Requests are a few bytes each and wait for their answer: never hold them back.
        stream
            .set_nodelay(true)
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(stream)
    };
    match timeout(limit, connect).await {
        Ok(result) => result.map_err(Failure::Connect),
        Err(_) => Err(Failure::Connect(format!(
            "{address}: no answer within {limit:?}"
        ))),
    }
}

fn open_serial(line: &SerialSettings) -> Result<tokio_serial::SerialStream, Failure> {
    let builder = tokio_serial::new(line.path.to_string_lossy(), line.baud_rate)
        .parity(match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .stop_bits(if line.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .data_bits(if line.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        });
    tokio_serial::SerialStream::open(&builder)
        .map_err(|e| Failure::Connect(format!("{}: {e}", line.path.display())))
}

/// One device of a line: its tags, read plan and retry policy.
struct DeviceReader {
    device: DeviceConfig,
    requests: Vec<Request>,
    retry: RetryPolicy,
    stats: Arc<AgentStats>,
}

impl DeviceReader {
    fn new(mut device: DeviceConfig, scope: TagScope, stats: Arc<AgentStats>) -> Self {
        device.tag.retain(|t| scope.includes(t));
        let requests = plan(&device.tag, device.max_gap);
        let retry = RetryPolicy {
            retries: device.retries,
            backoff: device.retry_backoff,
        };
        Self {
            device,
            requests,
            retry,
            stats,
        }
    }

    /// One poll of every request. Returns the samples, in the order of the configured tags,
    /// and whether the device answered anything (data or an exception).
    async fn poll(&self, link: &mut Link) -> (Vec<Sample>, bool) {
        let mut samples = Vec::with_capacity(self.device.tag.len());
        let mut heard = false;
        let mut reachable = true;
        for (n, r) in self.requests.iter().enumerate() {
            if !reachable {
                self.bad(r, Timestamp::now(), &mut samples);
                continue;
            }
            if n > 0 && !self.device.request_pause.is_zero() {
                sleep(self.device.request_pause).await;
            }
            let result = self.read_with_retries(link, r).await;
            let ts = Timestamp::now();
            match result {
                Ok(values) => {
                    heard = true;
                    self.decode(r, &values, ts, &mut samples);
                }
                Err(failure) => {
                    heard |= failure.heard_an_answer();
                    self.stats.count_device_error();
                    if failure.is_retried() {
                        reachable = false;
                        tracing::warn!(device = %self.device.name, error = %failure, "device unreachable; its tags are marked bad for this poll");
                    } else {
                        tracing::warn!(device = %self.device.name, table = ?r.table, start = r.start, count = r.count, error = %failure, "read refused");
                    }
                    self.bad(r, ts, &mut samples);
                }
            }
        }
        samples.sort_by_key(|&(i, _)| i);
        (samples.into_iter().map(|(_, s)| s).collect(), heard)
    }

    async fn read_with_retries(&self, link: &mut Link, r: &Request) -> Result<Values, Failure> {
        let limit = self.device.timeout;
        let mut failed = 0;
        loop {
            let result = match link.context(self.device.unit_id, limit).await {
                Ok(ctx) => {
                    self.stats.count_request();
                    read(ctx, r, limit).await
                }
                Err(failure) => Err(failure),
            };
            let failure = match result {
                Ok(values) => return Ok(values),
                Err(failure) => failure,
            };
            if link
                .transport
                .as_ref()
                .is_ok_and(|t| failure.closes_link(t.framing()))
            {
                link.close();
            }
            failed += 1;
            match self.retry.delay_after(failed) {
                Some(delay) if failure.is_retried() => {
                    metrics::counter!("maintainpro_edge_modbus_retries_total").increment(1);
                    tracing::debug!(device = %self.device.name, error = %failure, ?delay, "retrying");
                    sleep(delay).await;
                }
                _ => return Err(failure),
            }
        }
    }

    fn decode(&self, r: &Request, values: &Values, ts: Timestamp, out: &mut Vec<(usize, Sample)>) {
        for &i in &r.tags {
            let t = &self.device.tag[i];
            let offset = usize::from(t.address - r.start);
            let value = match values {
                Values::Bits(bits) => bits
                    .get(offset)
                    .map(|&b| Value::Number(f64::from(u8::from(b)))),
                Values::Words(words) => words
                    .get(offset..offset + usize::from(t.width()))
                    .and_then(|w| decode_tag(t, w)),
            };
            if value.is_none() {
                self.stats.count_decode_error();
            }
            let sample = Sample {
                tag: t.name.clone(),
                ts,
                quality: if value.is_some() {
                    Quality::Good
                } else {
                    Quality::Bad
                },
                value,
            };
            out.push((i, sample));
        }
    }

    fn bad(&self, r: &Request, ts: Timestamp, out: &mut Vec<(usize, Sample)>) {
        out.extend(r.tags.iter().map(|&i| {
            let sample = Sample {
                tag: self.device.tag[i].name.clone(),
                ts,
                value: None,
                quality: Quality::Bad,
            };
            (i, sample)
        }));
    }
}

/// The value of a register tag, or `None` for bad data: a NaN or infinite register value, or
/// an engineering value that overflows, is not a measurement (and the wire format refuses it).
fn decode_tag(t: &TagConfig, words: &[u16]) -> Option<Value> {
    if t.data_type == DataType::String {
        return Some(Value::Text(decode_text(words, t.byte_order)));
    }
    let raw = decode_registers(words, t.data_type, t.byte_order, t.bit).ok()?;
    let value = if t.data_type == DataType::Bool {
        raw
    } else {
        t.scaling().apply(raw)
    };
    value.is_finite().then_some(Value::Number(value))
}

async fn read(ctx: &mut Context, r: &Request, limit: Duration) -> Result<Values, Failure> {
    let request = async {
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
    match timeout(limit, request).await {
        Ok(Ok(Ok(values))) => Ok(values),
        Ok(Ok(Err(exception))) => Err(Failure::Exception(format!("{exception:?}"))),
        Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(Failure::Mismatch(e.to_string())),
        Ok(Err(tokio_modbus::Error::Transport(e))) => Err(Failure::Transport(e.to_string())),
        Err(_) => Err(Failure::Timeout(limit)),
    }
}

/// The devices of one line and their link.
pub struct Line {
    link: Link,
    devices: Vec<DeviceReader>,
    schedule: Schedule,
    /// Per device: whether its latest poll sent requests and heard no answer.
    silent: Vec<bool>,
    label: String,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("label", &self.label)
            .field("connected", &self.link.conn.is_some())
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl Line {
    /// A line of `devices`, which share a transport (see
    /// [`group_devices`](crate::modbus::transport::group_devices)); a single device is a
    /// line of its own. Nothing is opened before the first poll.
    pub fn new(devices: Vec<DeviceConfig>, scope: TagScope, stats: Arc<AgentStats>) -> Self {
        let transport = devices
            .first()
            .map_or_else(|| Err("a line without devices".to_owned()), Transport::of);
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        let label = match &transport {
            Ok(t) => format!("{} ({})", t.endpoint(), names.join(", ")),
            Err(_) => names.join(", "),
        };
        let schedule = Schedule::new(
            Instant::now(),
            devices.iter().map(|d| d.poll_interval).collect(),
        );
        Self {
            link: Link {
                transport,
                conn: None,
            },
            silent: vec![false; devices.len()],
            devices: devices
                .into_iter()
                .map(|d| DeviceReader::new(d, scope, Arc::clone(&stats)))
                .collect(),
            schedule,
            label,
        }
    }

    /// The endpoint and the device names, for logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// How many tags and read requests one poll of every device covers.
    pub fn size(&self) -> (usize, usize) {
        self.devices.iter().fold((0, 0), |(tags, requests), d| {
            (tags + d.device.tag.len(), requests + d.requests.len())
        })
    }

    /// Polls every device once, in configuration order, now.
    pub async fn poll_once(&mut self) -> Vec<Sample> {
        let mut samples = Vec::new();
        for i in 0..self.devices.len() {
            samples.extend(self.poll_device(i).await);
        }
        samples
    }

    /// Waits until the next device is due, polls it and returns its samples. A line without
    /// devices never returns.
    pub async fn next(&mut self) -> Vec<Sample> {
        let Some((device, due)) = self.schedule.next() else {
            return std::future::pending().await;
        };
        sleep_until(due).await;
        let started = Instant::now();
        let samples = self.poll_device(device).await;
        self.schedule.polled(device, started);
        samples
    }

    async fn poll_device(&mut self, i: usize) -> Vec<Sample> {
        let reader = &self.devices[i];
        let (samples, heard) = reader.poll(&mut self.link).await;
        self.silent[i] = !heard && !reader.requests.is_empty();
        if self.link.conn.is_some() && self.silent.iter().all(|&s| s) {
            // Nobody on the line answers: the link itself may be dead (a converter that
            // rebooted, a half-open socket), so the next poll opens it afresh.
            tracing::warn!(line = %self.label, "no device on the line answers; reopening it");
            self.link.close();
        }
        samples
    }
}
