//! Sparkplug B: topics, payloads, and the state of one edge node as a host application
//! follows it.
//!
//! Sparkplug B edge nodes publish on `spBv1.0/<group>/<type>/<edge node>[/<device>]`: a birth
//! (`NBIRTH`, `DBIRTH`) names every metric with its data type and usually an alias, data
//! messages (`NDATA`, `DDATA`) then often carry only aliases, and deaths (`NDEATH`, the node's
//! MQTT will, and `DDEATH`) say the values are no longer current. Messages of a node carry a
//! sequence number 0..=255; `NBIRTH` and `NDEATH` carry the same `bdSeq` metric, so a late will
//! of an earlier connection is told from the death of the current one.
//!
//! [`NodeSession`] turns the messages of one edge node into readings:
//! - metric values become readings named `<prefix>[<device>/]<metric>`, with characters a tag
//!   name cannot hold replaced by `_` ([`tag_name`]);
//! - numbers and booleans are read (booleans as 0 and 1); text, bytes, data sets, templates and
//!   date-times are reported once per birth and skipped;
//! - a null value, a NaN, a `Quality` property below 192 (OPC's Good), and every metric of a
//!   node or device that died become readings of lower quality (a bad one carries 0.0);
//! - a message out of sequence, data before a birth, or an unknown alias is reported, and the
//!   session asks for a rebirth (the caller publishes [`rebirth_request`]);
//! - a birth, or a death that takes effect, is named in the outcome ([`SessionChange`]), so
//!   that the caller can keep the births it needs to [`NodeSession::restore`] the session
//!   after a restart.
//!
//! Pure: no clock (the receipt time is an argument), no I/O.

pub mod proto;

use std::collections::{HashMap, HashSet};
use std::fmt;

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::json_batch::DERIVED_SEQ_BASE;
use crate::{Quality, Reading, TagName, Timestamp};
use proto::{DataType, Metric, MetricValue, Payload, PropertyValueKind};

/// The topic namespace of Sparkplug B.
pub const NAMESPACE: &str = "spBv1.0";
/// The name of the birth/death sequence metric.
pub const BD_SEQ: &str = "bdSeq";
/// The metric a host sets to `true` in an `NCMD` to ask a node to publish its births again.
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";
/// A message larger than this is refused before it is decoded.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// The message types of the Sparkplug B topic namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    NBirth,
    NDeath,
    NData,
    NCmd,
    DBirth,
    DDeath,
    DData,
    DCmd,
}

impl MessageType {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "NBIRTH" => Self::NBirth,
            "NDEATH" => Self::NDeath,
            "NDATA" => Self::NData,
            "NCMD" => Self::NCmd,
            "DBIRTH" => Self::DBirth,
            "DDEATH" => Self::DDeath,
            "DDATA" => Self::DData,
            "DCMD" => Self::DCmd,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NBirth => "NBIRTH",
            Self::NDeath => "NDEATH",
            Self::NData => "NDATA",
            Self::NCmd => "NCMD",
            Self::DBirth => "DBIRTH",
            Self::DDeath => "DDEATH",
            Self::DData => "DDATA",
            Self::DCmd => "DCMD",
        }
    }

    /// Whether messages of this type name a device (the topic's fifth level).
    pub fn is_device(self) -> bool {
        matches!(self, Self::DBirth | Self::DDeath | Self::DData | Self::DCmd)
    }
}

/// A parsed Sparkplug B topic of an edge node or device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub group: String,
    pub kind: MessageType,
    pub edge_node: String,
    pub device: Option<String>,
}

/// Why a topic is not a Sparkplug B edge node or device topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{topic:?} is not a Sparkplug B topic: {reason}")]
pub struct TopicError {
    pub topic: String,
    pub reason: &'static str,
}

impl Topic {
    /// Parses `spBv1.0/<group>/<type>/<edge node>[/<device>]`. The host state topic
    /// (`spBv1.0/STATE/<host>`) is not an edge node topic and is refused.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let fail = |reason| TopicError {
            topic: topic.to_owned(),
            reason,
        };
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.first() != Some(&NAMESPACE) {
            return Err(fail("it does not start with spBv1.0/"));
        }
        let (group, kind, node, device) = match parts.as_slice() {
            [_, group, kind, node] => (*group, *kind, *node, None),
            [_, group, kind, node, device] => (*group, *kind, *node, Some(*device)),
            _ => {
                return Err(fail(
                    "it needs spBv1.0/<group>/<type>/<edge node>[/<device>]",
                ));
            }
        };
        let kind = MessageType::parse(kind).ok_or_else(|| fail("unknown message type"))?;
        if group.is_empty() || node.is_empty() || device.is_some_and(str::is_empty) {
            return Err(fail("an empty group, edge node or device id"));
        }
        if kind.is_device() != device.is_some() {
            return Err(fail(
                "device messages need a device id and node messages must not have one",
            ));
        }
        Ok(Self {
            group: group.to_owned(),
            kind,
            edge_node: node.to_owned(),
            device: device.map(str::to_owned),
        })
    }

    /// The topic of a node message.
    pub fn node(group: &str, kind: MessageType, edge_node: &str) -> String {
        format!("{NAMESPACE}/{group}/{}/{edge_node}", kind.as_str())
    }

    /// The topic of a device message.
    pub fn device(group: &str, kind: MessageType, edge_node: &str, device: &str) -> String {
        format!("{NAMESPACE}/{group}/{}/{edge_node}/{device}", kind.as_str())
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Some(d) => f.write_str(&Topic::device(&self.group, self.kind, &self.edge_node, d)),
            None => f.write_str(&Topic::node(&self.group, self.kind, &self.edge_node)),
        }
    }
}

/// The filters a host subscribes to for the births, data and deaths (not the commands) of
/// `edge_node` in `group` (`+` for every group or node).
pub fn host_filters(group: &str, edge_node: &str) -> Vec<String> {
    ["NBIRTH", "NDATA", "NDEATH"]
        .iter()
        .map(|k| format!("{NAMESPACE}/{group}/{k}/{edge_node}"))
        .chain(
            ["DBIRTH", "DDATA", "DDEATH"]
                .iter()
                .map(|k| format!("{NAMESPACE}/{group}/{k}/{edge_node}/+")),
        )
        .collect()
}

/// The tag a metric becomes: `<prefix>[<device>/]<metric>`, every character a tag name cannot
/// hold (anything but ASCII letters, digits and `-_.:/`) replaced by `_`. Fails only when the
/// result is empty or longer than a tag name may be.
pub fn tag_name(
    prefix: &str,
    device: Option<&str>,
    metric: &str,
) -> Result<TagName, crate::IdError> {
    let mut name = String::with_capacity(prefix.len() + metric.len() + 16);
    name.push_str(prefix);
    if let Some(d) = device {
        name.push_str(d);
        name.push('/');
    }
    name.push_str(metric);
    TagName::parse_lossy(&name)
}

/// The `NCMD` payload that asks an edge node to publish its births again.
pub fn rebirth_request(now_ms: u64) -> Vec<u8> {
    Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric::new(
            REBIRTH_METRIC,
            DataType::Boolean,
            MetricValue::Boolean(true),
        )],
        ..Payload::default()
    }
    .encode_to_vec()
}

/// The least time between two rebirth requests to one edge node.
pub const REBIRTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// When a host last asked each edge node for its births, so that a stream of unreadable
/// messages gives one request per [`REBIRTH_INTERVAL`], not one per message. Holds at most
/// about [`RebirthRequests::TRACKED`] nodes: once that many were asked, those asked longer than
/// the interval ago (which would be asked again anyway) are forgotten, so node names that
/// come and go cannot grow it without end.
#[derive(Debug, Default, Clone)]
pub struct RebirthRequests {
    asked: HashMap<(String, String), std::time::Instant>,
}

impl RebirthRequests {
    /// Nodes remembered before those asked more than [`REBIRTH_INTERVAL`] ago are forgotten.
    pub const TRACKED: usize = 4096;

    /// How many nodes are remembered.
    pub fn len(&self) -> usize {
        self.asked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.asked.is_empty()
    }

    /// The `NCMD` topic and payload to publish for the node of `topic`, or `None` when it was
    /// asked less than [`REBIRTH_INTERVAL`] before `now`. `at` stamps the payload.
    pub fn due(
        &mut self,
        topic: &Topic,
        now: std::time::Instant,
        at: Timestamp,
    ) -> Option<(String, Vec<u8>)> {
        let key = (topic.group.clone(), topic.edge_node.clone());
        if self
            .asked
            .get(&key)
            .is_some_and(|last| now.duration_since(*last) < REBIRTH_INTERVAL)
        {
            return None;
        }
        if self.asked.len() >= Self::TRACKED {
            self.asked
                .retain(|_, last| now.duration_since(*last) < REBIRTH_INTERVAL);
        }
        self.asked.insert(key, now);
        let ms = u64::try_from(at.as_micros() / 1000).unwrap_or(0);
        Some((
            Topic::node(&topic.group, MessageType::NCmd, &topic.edge_node),
            rebirth_request(ms),
        ))
    }
}

/// A number in `[2^62, 2^63)` derived from a message's topic and bytes: the batch number a
/// Sparkplug message is stored under by ingest, so a redelivered message is stored once.
pub fn derived_seq(topic: &str, payload: &[u8]) -> u64 {
    let mut hash = Sha256::new();
    hash.update(topic.as_bytes());
    hash.update([0]);
    hash.update(payload);
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 2) | DERIVED_SEQ_BASE
}

/// Something wrong with a message or one of its metrics; the rest of the message is still read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("payload is {len} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge { len: usize },
    #[error("not a Sparkplug B payload: {0}")]
    Malformed(String),
    #[error("{kind} before the {birth} that names its metrics")]
    NoBirth {
        kind: &'static str,
        birth: &'static str,
    },
    #[error("sequence number {got} where {expected} was due: messages were lost or reordered")]
    OutOfSequence { expected: u8, got: u64 },
    #[error("metric alias {0} was not named in a birth")]
    UnknownAlias(u64),
    #[error("metric {0:?} was not named in a birth")]
    UnknownMetric(String),
    #[error("a metric with neither name nor alias")]
    Anonymous,
    #[error("metric {metric:?} cannot become a tag: {reason}")]
    BadName { metric: String, reason: String },
    #[error("metric {metric:?} is of type {datatype}, which a reading cannot carry; it is skipped")]
    Unsupported { metric: String, datatype: u32 },
    #[error("metric {metric:?}: the value does not match its data type")]
    WrongValue { metric: String },
    #[error("metric {metric:?}: timestamp {ms} ms is out of range")]
    BadTimestamp { metric: String, ms: u64 },
}

impl Problem {
    /// A stable short reason, for metrics labels and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::TooLarge { .. } => "oversized",
            Problem::Malformed(_) => "malformed",
            Problem::NoBirth { .. } => "no_birth",
            Problem::OutOfSequence { .. } => "out_of_sequence",
            Problem::UnknownAlias(_) | Problem::UnknownMetric(_) | Problem::Anonymous => {
                "unknown_metric"
            }
            Problem::BadName { .. } => "bad_name",
            Problem::Unsupported { .. } => "unsupported_type",
            Problem::WrongValue { .. } => "wrong_value",
            Problem::BadTimestamp { .. } => "bad_timestamp",
        }
    }

    /// Whether a value was left unread (a metric skipped); a gap in the sequence loses nothing
    /// of the message itself.
    pub fn loses_data(&self) -> bool {
        !matches!(self, Problem::OutOfSequence { .. })
    }

    /// Whether the message as a whole could not be read (nothing of it became a reading).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Problem::TooLarge { .. } | Problem::Malformed(_) | Problem::NoBirth { .. }
        )
    }
}

/// What one message gave.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub readings: Vec<Reading>,
    pub problems: Vec<Problem>,
    /// The node's births are needed again (data without a birth, a sequence gap, an unknown
    /// alias): publish [`rebirth_request`] on its `NCMD` topic.
    pub rebirth: bool,
    /// What the message changed in the births the session follows, if anything.
    pub change: Option<SessionChange>,
    /// A reading took the receipt time for want of a timestamp in its metric and payload: the
    /// same bytes received again are then new readings, not the same ones delivered again.
    pub stamped_on_receipt: bool,
}

/// A change to what a session knows from births: what a caller keeps to restore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// An `NBIRTH`: the node's metrics are its payload's, and no device is born.
    NodeBorn,
    /// An `NDEATH` of the current connection: nothing is known until the next `NBIRTH`.
    NodeDied,
    /// A `DBIRTH` of this device: its metrics are its payload's.
    DeviceBorn(String),
    /// A `DDEATH` of a device that was born: its metrics are no longer known.
    DeviceDied(String),
}

#[derive(Debug, Clone)]
struct Known {
    /// `None` for a metric whose name cannot become a tag (reported at its birth): it stays
    /// known, so that its values are skipped without asking for births again and again.
    tag: Option<TagName>,
    datatype: DataType,
    device: Option<String>,
}

impl Known {
    /// The tag, when the metric's values become readings.
    fn readable(&self) -> Option<&TagName> {
        self.tag.as_ref().filter(|_| self.datatype.is_numeric())
    }
}

/// What a host application knows of one edge node between its birth and its death.
#[derive(Debug, Clone)]
pub struct NodeSession {
    prefix: String,
    online: bool,
    bd_seq: Option<u64>,
    last_seq: Option<u8>,
    /// Metrics named in the births, by device (`None` for the node's own) and name.
    by_name: HashMap<(Option<String>, String), usize>,
    by_alias: HashMap<u64, usize>,
    metrics: Vec<Known>,
    devices: HashSet<String>,
    /// Restored from stored births: the next sequence number is taken as it comes, since the
    /// messages between the last one read and the restart were never seen.
    resync: bool,
}

impl NodeSession {
    /// A session whose tags are named `<prefix>[<device>/]<metric>`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            online: false,
            bd_seq: None,
            last_seq: None,
            by_name: HashMap::new(),
            by_alias: HashMap::new(),
            metrics: Vec::new(),
            devices: HashSet::new(),
            resync: false,
        }
    }

    /// A session as it was after `node_birth` (the bytes of the node's last `NBIRTH`) and
    /// the `DBIRTH`s of the devices born since, each `(device, bytes)`: what a host that read
    /// those births knows of the node. The next message's sequence number is accepted as it
    /// comes; from there on gaps are reported as usual. A birth that does not decode leaves
    /// the session as it was before it (a node birth: offline).
    pub fn restore<'a>(
        prefix: impl Into<String>,
        node_birth: &[u8],
        devices: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Self {
        let mut session = Self::new(prefix);
        let mut ignored = Outcome::default();
        let Ok(birth) = Payload::decode(node_birth) else {
            return session;
        };
        session.node_birth(&birth, Timestamp::from_micros(0), &mut ignored);
        for (device, bytes) in devices {
            if let Ok(birth) = Payload::decode(bytes) {
                session.device_birth(device, &birth, Timestamp::from_micros(0), &mut ignored);
            }
        }
        session.last_seq = None;
        session.resync = true;
        session
    }

    /// Whether the node has been born and has not died since.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// The tags named by the current births.
    pub fn tags(&self) -> impl Iterator<Item = &TagName> {
        self.metrics.iter().filter_map(|m| m.tag.as_ref())
    }

    /// Reads one message of this node. `received` stands in for missing timestamps (and is
    /// the time of the bad readings a death produces).
    pub fn on_message(&mut self, topic: &Topic, payload: &[u8], received: Timestamp) -> Outcome {
        let mut out = Outcome::default();
        if payload.len() > MAX_PAYLOAD_BYTES {
            out.problems.push(Problem::TooLarge { len: payload.len() });
            return out;
        }
        let payload = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                out.problems.push(Problem::Malformed(e.to_string()));
                return out;
            }
        };
        let device = topic.device.as_deref();
        match topic.kind {
            MessageType::NBirth => self.node_birth(&payload, received, &mut out),
            MessageType::NDeath => self.node_death(&payload, received, &mut out),
            MessageType::NData | MessageType::DBirth | MessageType::DData | MessageType::DDeath => {
                if !self.online {
                    out.problems.push(Problem::NoBirth {
                        kind: topic.kind.as_str(),
                        birth: "NBIRTH",
                    });
                    out.rebirth = true;
                    return out;
                }
                self.check_seq(&payload, &mut out);
                match (topic.kind, device) {
                    (MessageType::DBirth, Some(d)) => {
                        self.device_birth(d, &payload, received, &mut out)
                    }
                    (MessageType::DDeath, Some(d)) => {
                        self.device_death(d, &payload, received, &mut out)
                    }
                    (MessageType::DData, Some(d)) if !self.devices.contains(d) => {
                        out.problems.push(Problem::NoBirth {
                            kind: "DDATA",
                            birth: "DBIRTH",
                        });
                        out.rebirth = true;
                    }
                    _ => self.data(device, &payload, received, &mut out),
                }
            }
            // Commands travel from hosts to nodes; they carry no readings.
            MessageType::NCmd | MessageType::DCmd => {}
        }
        out
    }

    fn check_seq(&mut self, payload: &Payload, out: &mut Outcome) {
        if std::mem::take(&mut self.resync) {
            self.last_seq = payload.seq.and_then(|s| u8::try_from(s).ok());
            return;
        }
        let expected = self.last_seq.map_or(0, |s| s.wrapping_add(1));
        match payload.seq {
            Some(seq) if seq == u64::from(expected) => self.last_seq = Some(expected),
            got => {
                out.problems.push(Problem::OutOfSequence {
                    expected,
                    got: got.unwrap_or(u64::MAX),
                });
                out.rebirth = true;
                // Follow the node's numbering from here, so one gap is reported once.
                self.last_seq = got.and_then(|s| u8::try_from(s).ok()).or(self.last_seq);
            }
        }
    }

    fn node_birth(&mut self, payload: &Payload, received: Timestamp, out: &mut Outcome) {
        out.change = Some(SessionChange::NodeBorn);
        self.online = true;
        self.resync = false;
        self.by_name.clear();
        self.by_alias.clear();
        self.metrics.clear();
        self.devices.clear();
        self.last_seq = payload.seq.and_then(|s| u8::try_from(s).ok());
        self.bd_seq = bd_seq(payload);
        self.register(None, payload, received, out);
    }

    fn device_birth(
        &mut self,
        device: &str,
        payload: &Payload,
        received: Timestamp,
        out: &mut Outcome,
    ) {
        out.change = Some(SessionChange::DeviceBorn(device.to_owned()));
        self.forget_device(device);
        self.devices.insert(device.to_owned());
        self.register(Some(device), payload, received, out);
    }

    /// Drops what an earlier birth of `device` named: a device born again replaces it.
    fn forget_device(&mut self, device: &str) {
        let mut renumber = Vec::with_capacity(self.metrics.len());
        let mut next = 0;
        for m in &self.metrics {
            if m.device.as_deref() == Some(device) {
                renumber.push(None);
            } else {
                renumber.push(Some(next));
                next += 1;
            }
        }
        if next == self.metrics.len() {
            return;
        }
        self.metrics.retain(|m| m.device.as_deref() != Some(device));
        renumber_map(&mut self.by_name, &renumber);
        renumber_map(&mut self.by_alias, &renumber);
    }

    /// Records the metrics a birth names and reads the values it carries.
    fn register(
        &mut self,
        device: Option<&str>,
        payload: &Payload,
        received: Timestamp,
        out: &mut Outcome,
    ) {
        for metric in &payload.metrics {
            let name = metric.name.as_deref();
            if name.is_some_and(is_control) {
                continue;
            }
            let datatype = DataType::from_code(metric.datatype.unwrap_or(0));
            let tag = match name {
                None => {
                    out.problems.push(Problem::Anonymous);
                    None
                }
                Some(name) => match tag_name(&self.prefix, device, name) {
                    Ok(tag) => Some(tag),
                    Err(e) => {
                        out.problems.push(Problem::BadName {
                            metric: name.to_owned(),
                            reason: e.to_string(),
                        });
                        None
                    }
                },
            };
            if let (Some(name), Some(_)) = (name, &tag)
                && !datatype.is_numeric()
            {
                out.problems.push(Problem::Unsupported {
                    metric: name.to_owned(),
                    datatype: metric.datatype.unwrap_or(0),
                });
            }
            if name.is_none() && metric.alias.is_none() {
                continue; // nothing could ever refer to it
            }
            let index = self.metrics.len();
            self.metrics.push(Known {
                tag,
                datatype,
                device: device.map(str::to_owned),
            });
            if let Some(name) = name {
                self.by_name
                    .insert((device.map(str::to_owned), name.to_owned()), index);
            }
            if let Some(alias) = metric.alias {
                self.by_alias.insert(alias, index);
            }
            if self.metrics[index].readable().is_some() {
                self.read(index, metric, payload, received, out);
            }
        }
    }

    fn data(
        &mut self,
        device: Option<&str>,
        payload: &Payload,
        received: Timestamp,
        out: &mut Outcome,
    ) {
        for metric in &payload.metrics {
            let index = match (metric.alias, metric.name.as_deref()) {
                (Some(alias), _) => match self.by_alias.get(&alias) {
                    Some(&i) => i,
                    None => {
                        out.problems.push(Problem::UnknownAlias(alias));
                        out.rebirth = true;
                        continue;
                    }
                },
                (None, Some(name)) if is_control(name) => continue,
                (None, Some(name)) => {
                    match self
                        .by_name
                        .get(&(device.map(str::to_owned), name.to_owned()))
                    {
                        Some(&i) => i,
                        None => {
                            out.problems.push(Problem::UnknownMetric(name.to_owned()));
                            out.rebirth = true;
                            continue;
                        }
                    }
                }
                (None, None) => {
                    out.problems.push(Problem::Anonymous);
                    continue;
                }
            };
            if self.metrics[index].readable().is_some() {
                self.read(index, metric, payload, received, out);
            }
        }
    }

    /// Turns one metric's value into a reading of the known metric `index`.
    fn read(
        &self,
        index: usize,
        metric: &Metric,
        payload: &Payload,
        received: Timestamp,
        out: &mut Outcome,
    ) {
        let known = &self.metrics[index];
        let Some(tag) = known.readable() else {
            return;
        };
        let name = || tag.as_str().to_owned();
        let ms = metric.timestamp.or(payload.timestamp);
        let ts = match ms {
            None => {
                out.stamped_on_receipt = true;
                received
            }
            Some(ms) => match ms_to_timestamp(ms) {
                Some(ts) => ts,
                None => {
                    out.problems
                        .push(Problem::BadTimestamp { metric: name(), ms });
                    return;
                }
            },
        };
        let datatype = metric
            .datatype
            .map(DataType::from_code)
            .filter(|t| t.is_numeric())
            .unwrap_or(known.datatype);
        let (value, quality) = if metric.is_null == Some(true) {
            (0.0, Quality::Bad)
        } else {
            match metric.value.as_ref().and_then(|v| number(datatype, v)) {
                Some(v) if v.is_finite() => (v, property_quality(metric)),
                Some(_) => (0.0, Quality::Bad),
                None => {
                    out.problems.push(Problem::WrongValue { metric: name() });
                    return;
                }
            }
        };
        out.readings.push(Reading {
            tag: tag.clone(),
            ts,
            value,
            quality,
        });
    }

    fn node_death(&mut self, payload: &Payload, received: Timestamp, out: &mut Outcome) {
        // The will of an earlier connection arrives after the node is born again; its bdSeq
        // differs from the current birth's, and it is ignored.
        if !self.online || matches!((bd_seq(payload), self.bd_seq), (Some(a), Some(b)) if a != b) {
            return;
        }
        out.change = Some(SessionChange::NodeDied);
        self.online = false;
        self.last_seq = None;
        self.resync = false;
        // A will's payload was written when the node connected: its time is not the death's.
        self.mark_bad(|_| true, received, out);
    }

    fn device_death(
        &mut self,
        device: &str,
        payload: &Payload,
        received: Timestamp,
        out: &mut Outcome,
    ) {
        if !self.devices.remove(device) {
            return;
        }
        out.change = Some(SessionChange::DeviceDied(device.to_owned()));
        let ts = death_time(payload, received);
        self.mark_bad(|m| m.device.as_deref() == Some(device), ts, out);
    }

    /// A reading of bad quality at `ts` for every readable metric `which` selects.
    fn mark_bad(&self, which: impl Fn(&Known) -> bool, ts: Timestamp, out: &mut Outcome) {
        out.readings.extend(
            self.metrics
                .iter()
                .filter(|m| which(m))
                .filter_map(Known::readable)
                .map(|tag| Reading {
                    tag: tag.clone(),
                    ts,
                    value: 0.0,
                    quality: Quality::Bad,
                }),
        );
    }
}

/// The births a session follows, as bytes, for a host that keeps them across its restarts
/// (the edge agent, in a file per node): the node's last `NBIRTH` and the `DBIRTH` of each
/// device born since. [`KeptBirths::apply`] follows a session's changes;
/// [`KeptBirths::restore`] gives the session back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptBirths {
    pub node: Vec<u8>,
    pub devices: std::collections::BTreeMap<String, Vec<u8>>,
}

/// The stored form of [`KeptBirths`] (protobuf, as the births themselves).
#[derive(Clone, PartialEq, prost::Message)]
struct KeptBirthsMessage {
    #[prost(bytes = "vec", tag = "1")]
    node: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    devices: Vec<KeptDevice>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KeptDevice {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bytes = "vec", tag = "2")]
    birth: Vec<u8>,
}

impl KeptBirths {
    /// What `kept` becomes after a message with `payload` made `change`: `None` once the
    /// node died (nothing to keep).
    pub fn apply(kept: Option<Self>, change: &SessionChange, payload: &[u8]) -> Option<Self> {
        match change {
            SessionChange::NodeBorn => Some(Self {
                node: payload.to_vec(),
                devices: std::collections::BTreeMap::new(),
            }),
            SessionChange::NodeDied => None,
            SessionChange::DeviceBorn(device) => kept.map(|mut k| {
                k.devices.insert(device.clone(), payload.to_vec());
                k
            }),
            SessionChange::DeviceDied(device) => kept.map(|mut k| {
                k.devices.remove(device);
                k
            }),
        }
    }

    /// The session these births give (see [`NodeSession::restore`]).
    pub fn restore(&self, prefix: impl Into<String>) -> NodeSession {
        NodeSession::restore(
            prefix,
            &self.node,
            self.devices.iter().map(|(d, b)| (d.as_str(), b.as_slice())),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        KeptBirthsMessage {
            node: self.node.clone(),
            devices: self
                .devices
                .iter()
                .map(|(name, birth)| KeptDevice {
                    name: name.clone(),
                    birth: birth.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Reads what [`KeptBirths::encode`] wrote; the error says why the bytes are not that.
    pub fn decode(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        let message = KeptBirthsMessage::decode(bytes)?;
        Ok(Self {
            node: message.node,
            devices: message
                .devices
                .into_iter()
                .map(|d| (d.name, d.birth))
                .collect(),
        })
    }
}

/// Points a map's values at the renumbered metrics, dropping those that are gone.
fn renumber_map<K>(map: &mut HashMap<K, usize>, renumber: &[Option<usize>]) {
    map.retain(|_, i| match renumber[*i] {
        Some(n) => {
            *i = n;
            true
        }
        None => false,
    });
}

/// Metrics that control the node rather than describe the process.
fn is_control(name: &str) -> bool {
    name == BD_SEQ || name.starts_with("Node Control/") || name.starts_with("Device Control/")
}

/// When a device's values stopped being current: its death's time, else the receipt.
fn death_time(payload: &Payload, received: Timestamp) -> Timestamp {
    payload
        .timestamp
        .and_then(ms_to_timestamp)
        .unwrap_or(received)
}

fn bd_seq(payload: &Payload) -> Option<u64> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ))
        .and_then(|m| match m.value {
            Some(MetricValue::Long(v)) => Some(v),
            Some(MetricValue::Int(v)) => Some(u64::from(v)),
            _ => None,
        })
}

fn ms_to_timestamp(ms: u64) -> Option<Timestamp> {
    let micros = i64::try_from(ms).ok()?.checked_mul(1000)?;
    let ts = Timestamp::from_micros(micros);
    ts.to_datetime().map(|_| ts)
}

/// A number or boolean as a reading's value, read as `datatype` says. Signed integers are
/// read from the low bits of their field, so both the sign-extended form the specification
/// asks for and the zero-extended form some publishers send give the same value.
fn number(datatype: DataType, value: &MetricValue) -> Option<f64> {
    use DataType as T;
    use MetricValue as V;
    let wide = match value {
        V::Int(v) => u64::from(*v),
        V::Long(v) => *v,
        V::Float(v) => return matches!(datatype, T::Float | T::Double).then_some(f64::from(*v)),
        V::Double(v) => return matches!(datatype, T::Float | T::Double).then_some(*v),
        V::Boolean(b) => return (datatype == T::Boolean).then_some(if *b { 1.0 } else { 0.0 }),
        _ => return None,
    };
    // Truncating to the declared width is the decoding, as the doc comment says.
    #[allow(clippy::cast_possible_truncation)]
    Some(match datatype {
        T::Int8 => f64::from(wide as u8 as i8),
        T::Int16 => f64::from(wide as u16 as i16),
        T::Int32 => f64::from(wide as u32 as i32),
        T::Int64 => wide as i64 as f64,
        T::UInt8 => f64::from(wide as u8),
        T::UInt16 => f64::from(wide as u16),
        T::UInt32 => f64::from(wide as u32),
        T::UInt64 => wide as f64,
        _ => return None,
    })
}

/// The quality a metric's `Quality` property gives (OPC DA codes: 192 and up good, 64 to 191
/// uncertain, below 64 bad); good without one.
fn property_quality(metric: &Metric) -> Quality {
    let Some(props) = &metric.properties else {
        return Quality::Good;
    };
    let code = props
        .keys
        .iter()
        .zip(&props.values)
        .find(|(k, _)| k.eq_ignore_ascii_case("quality"))
        .and_then(|(_, v)| match v.value {
            Some(PropertyValueKind::Int(c)) => Some(u64::from(c)),
            Some(PropertyValueKind::Long(c)) => Some(c),
            _ => None,
        });
    match code {
        None => Quality::Good,
        Some(c) if c >= 192 => Quality::Good,
        Some(c) if c >= 64 => Quality::Uncertain,
        Some(_) => Quality::Bad,
    }
}

#[cfg(test)]
mod tests;
