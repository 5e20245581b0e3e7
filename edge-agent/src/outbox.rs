//! The durable outbox: every batch is written here before it is published, and leaves only
//! after the broker acknowledged it.
//!
//! # On disk
//! A directory of segment files `seg-<first seq, 20 digits>.log` and a `state` file. A segment
//! is a sequence of records:
//!
//! | bytes | field |
//! |-------|-------|
//! | 1     | marker `0xB7` |
//! | 4     | payload length, little-endian |
//! | 4     | CRC-32 of the next three fields |
//! | 8     | batch sequence number |
//! | 4     | readings in the batch |
//! | n     | the batch in the wire format, as it is published |
//!
//! Segments are only ever appended to, and a process appends only to segments it created: a
//! segment found at start-up is read, never written. A segment whose every batch has been
//! acknowledged is deleted. `state` holds a lease on sequence numbers: every number ever
//! assigned is below it. It is replaced atomically (write, fsync, rename) before the lease runs
//! out, so numbering never goes backwards, even when the segments holding the last batches are
//! damaged or gone; a restart may skip up to `SEQ_LEASE` numbers, which is harmless.
//!
//! # Durability (the fsync policy)
//! - `always` (default): a batch is fsync'd before `append` returns, and is published only
//!   after that. A power cut loses at most the readings not yet sealed into a batch (up to
//!   `uplink.batch_max_age`).
//! - `interval`: fsync at most every `fsync_interval`; a power cut may also lose batches of the
//!   last interval, including published ones the broker has not acknowledged.
//! - `never`: the operating system decides. For disposable test setups only.
//!
//! # Damage
//! At start-up every record is checked. A torn tail (a record cut short by a power cut) or a
//! corrupted record is skipped and reported with its segment and offset; scanning resumes at
//! the next record that checks out, so the rest of the segment is kept.
//!
//! # Bound
//! The outbox is bounded in bytes. When a new batch would exceed the bound, the oldest segment
//! is deleted and every unacknowledged reading in it is counted as dropped.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use model::wire::Batch;
use model::{GatewayId, Reading};
use serde::Deserialize;

const MARKER: u8 = 0xB7;
const HEADER: usize = 1 + 4 + 4 + 8 + 4;
const STATE: &str = "state";
/// Sequence numbers reserved by one write of the state file.
const SEQ_LEASE: u64 = 1024;

/// When appended batches reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    #[default]
    Always,
    Interval,
    Never,
}

fn default_dir() -> PathBuf {
    PathBuf::from("outbox")
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_segment_bytes() -> u64 {
    8 * 1024 * 1024
}
fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_replay_batches_per_second() -> u32 {
    50
}

/// `[outbox]` in the agent's configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxConfig {
    /// Directory of the segment files; created if missing.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Upper bound of the outbox on disk. Beyond it the oldest data is dropped and counted.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Size at which a segment is closed and a new one started.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    #[serde(default)]
    pub fsync: FsyncPolicy,
    #[serde(default = "default_fsync_interval", with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// How fast a backlog (after an outage or a restart) is replayed, in batches per second,
    /// on top of live data.
    #[serde(default = "default_replay_batches_per_second")]
    pub replay_batches_per_second: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            max_bytes: default_max_bytes(),
            segment_bytes: default_segment_bytes(),
            fsync: FsyncPolicy::default(),
            fsync_interval: default_fsync_interval(),
            replay_batches_per_second: default_replay_batches_per_second(),
        }
    }
}

impl OutboxConfig {
    pub(crate) fn validate(&self, report: &mut model::settings::Report) {
        if self.segment_bytes < 64 * 1024 {
            report.error("outbox.segment_bytes", "must be at least 65536");
        }
        if self.max_bytes < self.segment_bytes.saturating_mul(4) {
            report.error(
                "outbox.max_bytes",
                "must be at least four segments (4 x outbox.segment_bytes)",
            );
        }
        if self.fsync_interval.is_zero() {
            report.error("outbox.fsync_interval", "must be greater than 0");
        }
        if self.replay_batches_per_second == 0 {
            report.error("outbox.replay_batches_per_second", "must be at least 1");
        }
    }
}

/// The file operations the outbox needs. [`DirStorage`] is the real one; tests substitute
/// one that loses unsynced writes to simulate power cuts.
pub trait Storage {
    /// Names of the files present, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>>;
    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Appends to `name`, creating it if missing.
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    fn sync(&mut self, name: &str) -> io::Result<()>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Replaces `name` with `bytes` so that a crash leaves either the old or the new content.
    fn replace(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
}

/// Segment files in a directory, locked against a second agent for as long as it is open.
#[derive(Debug)]
pub struct DirStorage {
    dir: PathBuf,
    /// The segment being appended to, kept open.
    open: Option<(String, File)>,
    /// Holds the directory's advisory lock; released when dropped.
    _lock: File,
}

impl DirStorage {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let lock = File::create(dir.join("lock"))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io::Error::other(format!(
                "{} is in use by another edge agent; give each agent its own outbox.dir",
                dir.display()
            )),
            fs::TryLockError::Error(e) => e,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            open: None,
            _lock: lock,
        })
    }

    fn file(&mut self, name: &str) -> io::Result<&mut File> {
        if self.open.as_ref().is_none_or(|(n, _)| n != name) {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))?;
            self.open = Some((name.to_owned(), f));
        }
        Ok(&mut self.open.as_mut().expect("opened above").1)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl Storage for DirStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.dir.join(name))
    }

    fn read_at(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.dir.join(name))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let new = !self.dir.join(name).exists();
        self.file(name)?.write_all(bytes)?;
        if new {
            // The new file's directory entry must survive a crash as well as its data.
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        if self.open.as_ref().is_some_and(|(n, _)| n == name) {
            self.open = None;
        }
        match fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn replace(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
        self.sync_dir()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox I/O on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OutboxError {
    let what = what.into();
    move |source| OutboxError::Io { what, source }
}

#[derive(Debug, Clone, Copy)]
struct RecordMeta {
    seq: u64,
    readings: u32,
    offset: u64,
    len: u32,
    acked: bool,
}

#[derive(Debug)]
struct Segment {
    name: String,
    records: Vec<RecordMeta>,
    bytes: u64,
    /// Created by this process: the only kind appended to.
    writable: bool,
}

/// Damage found while opening the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: String,
    pub offset: u64,
    pub bytes_skipped: u64,
}

/// What opening the outbox found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub batches: usize,
    pub readings: u64,
    pub damage: Vec<Damage>,
}

/// A batch written to the outbox, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u64,
    pub readings: u32,
    pub payload: Vec<u8>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    pub readings: u64,
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn checksum(seq: u64, readings: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&readings.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_record(seq: u64, readings: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.push(MARKER);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&checksum(seq, readings, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&readings.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the record at `at`, if a whole, intact one starts there.
fn parse_record(bytes: &[u8], at: usize) -> Option<RecordMeta> {
    let head = bytes.get(at..at + HEADER)?;
    if head[0] != MARKER {
        return None;
    }
    let len = le_u32(&head[1..5]);
    let crc = le_u32(&head[5..9]);
    let seq = u64::from_le_bytes(head[9..17].try_into().ok()?);
    let readings = le_u32(&head[17..21]);
    let payload = bytes.get(at + HEADER..at + HEADER + len as usize)?;
    (checksum(seq, readings, payload) == crc).then_some(RecordMeta {
        seq,
        readings,
        offset: at as u64,
        len,
        acked: false,
    })
}

/// Every intact record of a segment, and the damaged ranges between them.
fn scan(name: &str, bytes: &[u8]) -> (Vec<RecordMeta>, Vec<Damage>) {
    let mut records = Vec::new();
    let mut damage = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(r) = parse_record(bytes, at) {
            at += HEADER + r.len as usize;
            records.push(r);
            continue;
        }
        let start = at;
        at += 1;
        while at < bytes.len() && parse_record(bytes, at).is_none() {
            at += 1;
        }
        damage.push(Damage {
            segment: name.to_owned(),
            offset: start as u64,
            bytes_skipped: (at - start) as u64,
        });
    }
    (records, damage)
}

/// The outbox over some storage.
#[derive(Debug)]
pub struct Outbox<S: Storage> {
    storage: S,
    config: OutboxConfig,
    gateway: GatewayId,
    segments: VecDeque<Segment>,
    /// Where each unacknowledged batch lives: seq -> its segment's name.
    index: BTreeMap<u64, String>,
    next_seq: u64,
    /// Every number below this is reserved by the state file on disk.
    leased_to: u64,
    total_bytes: u64,
    unsynced: bool,
    dropped: Dropped,
}

impl Outbox<DirStorage> {
    /// Opens the outbox directory of `config`.
    pub fn open_dir(
        config: OutboxConfig,
        gateway: GatewayId,
        seq_floor: u64,
    ) -> Result<(Self, Recovery), OutboxError> {
        let storage = DirStorage::open(&config.dir)
            .map_err(io_err(format!("directory {}", config.dir.display())))?;
        Outbox::open(storage, config, gateway, seq_floor)
    }
}

impl<S: Storage> Outbox<S> {
    /// Reads what a previous run left. New sequence numbers continue above every number ever
    /// assigned; an outbox that never held anything starts at `seq_floor` (the agent passes the
    /// wall clock in microseconds, so a gateway whose outbox was wiped still numbers upwards).
    pub fn open(
        mut storage: S,
        config: OutboxConfig,
        gateway: GatewayId,
        seq_floor: u64,
    ) -> Result<(Self, Recovery), OutboxError> {
        let mut names: Vec<String> = storage
            .list()
            .map_err(io_err("listing the outbox"))?
            .into_iter()
            .filter(|n| n.starts_with("seg-") && n.ends_with(".log"))
            .collect();
        names.sort();
        let mut next_seq = 1;
        let mut known = false;
        if let Ok(state) = storage.read(STATE)
            && let Some(bytes) = state.get(..8)
        {
            next_seq = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])).max(1);
            known = true;
        }
        let mut recovery = Recovery::default();
        let mut segments = VecDeque::new();
        let mut index = BTreeMap::new();
        let mut total_bytes = 0;
        for name in names {
            let bytes = storage
                .read(&name)
                .map_err(io_err(format!("reading {name}")))?;
            let (records, damage) = scan(&name, &bytes);
            for d in &damage {
                tracing::warn!(segment = %d.segment, offset = d.offset, bytes = d.bytes_skipped, "outbox damage skipped");
            }
            recovery.damage.extend(damage);
            if records.is_empty() {
                storage
                    .remove(&name)
                    .map_err(io_err(format!("removing {name}")))?;
                continue;
            }
            known = true;
            for r in &records {
                next_seq = next_seq.max(r.seq + 1);
                recovery.batches += 1;
                recovery.readings += u64::from(r.readings);
                index.insert(r.seq, name.clone());
            }
            total_bytes += bytes.len() as u64;
            segments.push_back(Segment {
                name,
                records,
                bytes: bytes.len() as u64,
                writable: false,
            });
        }
        if !known {
            next_seq = seq_floor.max(1);
        }
        let outbox = Outbox {
            storage,
            config,
            gateway,
            segments,
            index,
            next_seq,
            leased_to: next_seq,
            total_bytes,
            unsynced: false,
            dropped: Dropped::default(),
        };
        Ok((outbox, recovery))
    }

    /// Seals `readings` into the next numbered batch and writes it (synced per the policy).
    pub fn append(&mut self, readings: &[Reading]) -> Result<Sealed, OutboxError> {
        let seq = self.next_seq;
        if seq >= self.leased_to {
            let lease = seq + SEQ_LEASE;
            self.storage
                .replace(STATE, &lease.to_le_bytes())
                .map_err(io_err("writing the outbox state"))?;
            self.leased_to = lease;
        }
        let payload = Batch::from_readings(self.gateway.clone(), seq, readings).encode();
        let count = u32::try_from(readings.len()).unwrap_or(u32::MAX);
        let record = encode_record(seq, count, &payload);
        self.make_room(record.len() as u64)?;
        let name = match self.segments.back() {
            Some(s) if s.writable && s.bytes + record.len() as u64 <= self.config.segment_bytes => {
                s.name.clone()
            }
            _ => {
                if let Some(prev) = self.segments.back()
                    && prev.writable
                    && self.unsynced
                {
                    let prev = prev.name.clone();
                    self.storage
                        .sync(&prev)
                        .map_err(io_err(format!("syncing {prev}")))?;
                }
                let name = segment_name(seq);
                self.segments.push_back(Segment {
                    name: name.clone(),
                    records: Vec::new(),
                    bytes: 0,
                    writable: true,
                });
                name
            }
        };
        self.storage
            .append(&name, &record)
            .map_err(io_err(format!("appending to {name}")))?;
        if self.config.fsync == FsyncPolicy::Always {
            self.storage
                .sync(&name)
                .map_err(io_err(format!("syncing {name}")))?;
        } else {
            self.unsynced = true;
        }
        // Numbering advances only once the batch is written: a failed append reuses the number,
        // which is safe because nothing carrying it was published.
        self.next_seq = seq + 1;
        let segment = self.segments.back_mut().expect("pushed or reused above");
        segment.records.push(RecordMeta {
            seq,
            readings: count,
            offset: segment.bytes,
            len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            acked: false,
        });
        segment.bytes += record.len() as u64;
        self.total_bytes += record.len() as u64;
        self.index.insert(seq, name);
        Ok(Sealed {
            seq,
            readings: count,
            payload,
        })
    }

    /// For the `interval` policy: syncs the open segment if anything is unsynced.
    pub fn sync(&mut self) -> Result<(), OutboxError> {
        if !self.unsynced {
            return Ok(());
        }
        if let Some(s) = self.segments.back().filter(|s| s.writable) {
            let name = s.name.clone();
            self.storage
                .sync(&name)
                .map_err(io_err(format!("syncing {name}")))?;
        }
        self.unsynced = false;
        Ok(())
    }

    fn make_room(&mut self, incoming: u64) -> Result<(), OutboxError> {
        while self.total_bytes + incoming > self.config.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("more than one segment");
            let lost: Vec<&RecordMeta> = oldest.records.iter().filter(|r| !r.acked).collect();
            let readings: u64 = lost.iter().map(|r| u64::from(r.readings)).sum();
            self.dropped.batches += lost.len() as u64;
            self.dropped.readings += readings;
            for r in &oldest.records {
                self.index.remove(&r.seq);
            }
            self.total_bytes -= oldest.bytes;
            tracing::warn!(
                segment = %oldest.name,
                batches = lost.len(),
                readings,
                "outbox full: oldest unacknowledged data dropped"
            );
            self.storage
                .remove(&oldest.name)
                .map_err(io_err(format!("removing {}", oldest.name)))?;
        }
        Ok(())
    }

    /// The broker acknowledged `seq`. Segments whose every batch is acknowledged are deleted.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        let Some(name) = self.index.remove(&seq) else {
            return Ok(()); // already dropped or acknowledged
        };
        if let Some(seg) = self.segments.iter_mut().find(|s| s.name == name)
            && let Some(r) = seg.records.iter_mut().find(|r| r.seq == seq)
        {
            r.acked = true;
        }
        // Delete fully acknowledged segments, except the one being written to.
        let mut i = 0;
        while i < self.segments.len() {
            let s = &self.segments[i];
            let done = s.records.iter().all(|r| r.acked);
            let current = s.writable && i + 1 == self.segments.len();
            if done && !current {
                let s = self.segments.remove(i).expect("index in range");
                self.total_bytes -= s.bytes;
                self.storage
                    .remove(&s.name)
                    .map_err(io_err(format!("removing {}", s.name)))?;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    /// Unacknowledged batches in sequence order.
    pub fn unacked(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }

    pub fn unacked_count(&self) -> usize {
        self.index.len()
    }

    /// Reads back an unacknowledged batch for publishing (after a restart or an outage).
    pub fn load(&mut self, seq: u64) -> Result<Option<Sealed>, OutboxError> {
        let Some(name) = self.index.get(&seq).cloned() else {
            return Ok(None);
        };
        let Some(meta) = self
            .segments
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.records.iter().find(|r| r.seq == seq))
            .copied()
        else {
            return Ok(None);
        };
        let payload = self
            .storage
            .read_at(&name, meta.offset + HEADER as u64, meta.len as usize)
            .map_err(io_err(format!("reading {name}")))?;
        Ok(Some(Sealed {
            seq,
            readings: meta.readings,
            payload,
        }))
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use model::{Quality, TagName, Timestamp};
    use proptest::prelude::*;

    use super::*;

    /// Files in memory with a power-cut model: bytes appended but not synced may be lost, or
    /// kept in part (a torn write), when the machine "crashes". `replace` and `remove` are
    /// durable at once, like rename and unlink after a directory fsync.
    #[derive(Debug, Default, Clone)]
    struct MemStorage {
        files: HashMap<String, (Vec<u8>, usize)>,
        /// Operations left before the simulated crash; `None` never crashes.
        fuel: Option<usize>,
        crashed: bool,
    }

    impl MemStorage {
        fn step(&mut self) -> io::Result<()> {
            if self.crashed {
                return Err(io::Error::other("crashed"));
            }
            if let Some(f) = &mut self.fuel {
                if *f == 0 {
                    self.crashed = true;
                    return Err(io::Error::other("crashed"));
                }
                *f -= 1;
            }
            Ok(())
        }

        /// The machine restarts: unsynced bytes are cut, keeping `keep` of them (torn write).
        fn power_cut(&self, keep: usize) -> MemStorage {
            let files = self
                .files
                .iter()
                .map(|(name, (bytes, synced))| {
                    let kept = (*synced + keep).min(bytes.len());
                    (name.clone(), (bytes[..kept].to_vec(), kept))
                })
                .collect();
            MemStorage {
                files,
                fuel: None,
                crashed: false,
            }
        }
    }

    impl Storage for MemStorage {
        fn list(&self) -> io::Result<Vec<String>> {
            Ok(self.files.keys().cloned().collect())
        }
        fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
            self.files
                .get(name)
                .map(|(b, _)| b.clone())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn read_at(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            let bytes = self.read(name)?;
            bytes
                .get(offset as usize..offset as usize + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        }
        fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
            self.step()?;
            self.files
                .entry(name.to_owned())
                .or_default()
                .0
                .extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self, name: &str) -> io::Result<()> {
            self.step()?;
            if let Some((bytes, synced)) = self.files.get_mut(name) {
                *synced = bytes.len();
            }
            Ok(())
        }
        fn remove(&mut self, name: &str) -> io::Result<()> {
            self.step()?;
            self.files.remove(name);
            Ok(())
        }
        fn replace(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
            self.step()?;
            self.files
                .insert(name.to_owned(), (bytes.to_vec(), bytes.len()));
            Ok(())
        }
    }

    fn config() -> OutboxConfig {
        OutboxConfig {
            segment_bytes: 600,
            max_bytes: 1 << 30,
            ..OutboxConfig::default()
        }
    }

    fn readings(n: usize, at: i64) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading {
                tag: TagName::parse(format!("t{}", i % 3)).unwrap(),
                ts: Timestamp::from_micros(at + i as i64),
                value: i as f64,
                quality: Quality::Good,
            })
            .collect()
    }

    fn gw() -> GatewayId {
        GatewayId::parse("gw").unwrap()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Ack(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![3 => (1usize..12).prop_map(Op::Append), 2 => (0usize..8).prop_map(Op::Ack)],
            1..60,
        )
    }

    proptest! {
        /// Crash at every write step: whatever `append` confirmed and nobody acknowledged is
        /// there after the restart, byte for byte; nothing unknown appears; numbers never repeat.
        #[test]
        fn nothing_confirmed_is_lost_and_no_number_repeats(
            ops in ops(),
            fuel in 0usize..200,
            torn in 0usize..64,
        ) {
            let storage = MemStorage { fuel: Some(fuel), ..MemStorage::default() };
            let (mut outbox, _) = Outbox::open(storage, config(), gw(), 1000).unwrap();
            let mut confirmed: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut acked = BTreeSet::new();
            let mut issued = BTreeSet::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Append(n) => match outbox.append(&readings(*n, i as i64 * 100)) {
                        Ok(sealed) => {
                            prop_assert!(issued.insert(sealed.seq), "number {} issued twice", sealed.seq);
                            confirmed.insert(sealed.seq, sealed.payload);
                        }
                        Err(_) => break,
                    },
                    Op::Ack(k) => {
                        let pending: Vec<u64> = confirmed.keys().filter(|s| !acked.contains(*s)).copied().collect();
                        if let Some(&seq) = pending.get(k % pending.len().max(1)) {
                            // The broker holds the batch once its acknowledgement is passed on,
                            // so it may be gone even if `ack` fails part way: its segment can
                            // be deleted before the removal of another one fails.
                            acked.insert(seq);
                            if outbox.ack(seq).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            let after = outbox.storage.power_cut(torn);
            let (mut reopened, _) = Outbox::open(after, config(), gw(), 1000).unwrap();
            let present: BTreeSet<u64> = reopened.unacked().collect();
            for (seq, payload) in &confirmed {
                if !acked.contains(seq) {
                    prop_assert!(present.contains(seq), "confirmed batch {} lost", seq);
                    let loaded = reopened.load(*seq).unwrap().unwrap();
                    prop_assert_eq!(&loaded.payload, payload);
                }
            }
            for seq in &present {
                prop_assert!(confirmed.contains_key(seq) || !acked.contains(seq), "phantom batch {}", seq);
                prop_assert!(issued.contains(seq) || !confirmed.contains_key(seq));
            }
            let last = issued.iter().next_back().copied().unwrap_or(0);
            let next = reopened.append(&readings(1, 0)).unwrap().seq;
            prop_assert!(next > last, "number {} reused after restart (last issued {})", next, last);
        }
    }

    #[test]
    fn a_torn_tail_and_a_corrupted_record_are_skipped_and_reported() {
        let (mut outbox, _) = Outbox::open(MemStorage::default(), config(), gw(), 1).unwrap();
        let a = outbox.append(&readings(2, 0)).unwrap();
        let b = outbox.append(&readings(2, 10)).unwrap();
        let c = outbox.append(&readings(2, 20)).unwrap();
        let mut storage = outbox.storage.clone();
        let (name, (bytes, _)) = storage
            .files
            .iter_mut()
            .find(|(n, _)| n.starts_with("seg-"))
            .unwrap();
        let name = name.clone();
        // Flip a payload byte of the middle record, and cut the last one short.
        let second = HEADER + a.payload.len();
        bytes[second + HEADER + 3] ^= 0xFF;
        let cut = bytes.len() - 5;
        bytes.truncate(cut);
        let len = bytes.len();
        storage.files.get_mut(&name).unwrap().1 = len;
        let (mut reopened, recovery) = Outbox::open(storage, config(), gw(), 1).unwrap();
        assert_eq!(reopened.unacked().collect::<Vec<_>>(), [a.seq]);
        assert_eq!(recovery.damage.len(), 1, "{recovery:?}");
        assert_eq!(recovery.damage[0].offset, second as u64);
        assert_eq!(reopened.load(a.seq).unwrap().unwrap().payload, a.payload);
        assert!(reopened.append(&readings(1, 0)).unwrap().seq > c.seq.max(b.seq));
    }

    #[test]
    fn the_bound_drops_the_oldest_segment_and_counts_it() {
        let cfg = OutboxConfig {
            segment_bytes: 300,
            max_bytes: 900,
            ..OutboxConfig::default()
        };
        let (mut outbox, _) = Outbox::open(MemStorage::default(), cfg, gw(), 1).unwrap();
        for i in 0..20 {
            outbox.append(&readings(5, i * 10)).unwrap();
        }
        assert!(outbox.bytes() <= 900);
        let d = outbox.dropped();
        assert!(d.batches > 0 && d.readings == d.batches * 5, "{d:?}");
        assert_eq!(outbox.unacked_count() as u64 + d.batches, 20);
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_numbering_survives() {
        let (mut outbox, _) = Outbox::open(MemStorage::default(), config(), gw(), 1).unwrap();
        let seqs: Vec<u64> = (0..30)
            .map(|i| outbox.append(&readings(4, i * 10)).unwrap().seq)
            .collect();
        for s in &seqs {
            outbox.ack(*s).unwrap();
        }
        let segs = outbox
            .storage
            .files
            .keys()
            .filter(|n| n.starts_with("seg-"))
            .count();
        assert_eq!(segs, 1, "only the segment being written remains");
        let storage = outbox.storage.power_cut(0);
        let (mut reopened, recovery) = Outbox::open(storage, config(), gw(), 1).unwrap();
        // The current segment's batches come back (their acks were not persisted): ingest's
        // ledger absorbs the duplicates.
        assert!(recovery.batches < 30);
        let next = reopened.append(&readings(1, 0)).unwrap().seq;
        assert!(next > 30 && next <= 30 + SEQ_LEASE + 1, "{next}");
    }

    #[test]
    fn a_directory_serves_one_agent_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirStorage::open(dir.path()).unwrap();
        let err = DirStorage::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("in use by another edge agent"),
            "{err}"
        );
        drop(first);
        assert!(DirStorage::open(dir.path()).is_ok());
    }

    #[test]
    fn a_real_directory_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = OutboxConfig {
            dir: dir.path().to_owned(),
            ..config()
        };
        let (mut outbox, _) = Outbox::open_dir(cfg.clone(), gw(), 5).unwrap();
        let a = outbox.append(&readings(3, 0)).unwrap();
        assert_eq!(a.seq, 5);
        drop(outbox);
        let (mut reopened, recovery) = Outbox::open_dir(cfg, gw(), 5).unwrap();
        assert_eq!(recovery.batches, 1);
        let back = reopened.load(a.seq).unwrap().unwrap();
        let batch = Batch::decode(&back.payload).unwrap();
        assert_eq!((batch.seq, batch.points.len()), (5, 3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever a power cut or a bad disk left in a segment, scanning it finds intact
        /// records within the bytes and reports the rest as damage, never a panic; the two
        /// together cover every byte.
        #[test]
        fn segments_of_any_bytes_scan_into_records_and_damage(
            records in prop::collection::vec((any::<u64>(), prop::collection::vec(any::<u8>(), 0..40)), 0..4),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            tail in prop::collection::vec(any::<u8>(), 0..30),
        ) {
            let mut bytes = Vec::new();
            for (seq, payload) in &records {
                bytes.extend(encode_record(*seq, 1, payload));
            }
            bytes.extend(tail);
            if !bytes.is_empty() {
                for (at, b) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
            }
            let (found, damage) = scan("fuzz", &bytes);
            let covered: u64 = found.iter().map(|r| HEADER as u64 + u64::from(r.len)).sum::<u64>()
                + damage.iter().map(|d| d.bytes_skipped).sum::<u64>();
            prop_assert_eq!(covered, bytes.len() as u64);
            for r in &found {
                prop_assert!(r.offset + HEADER as u64 + u64::from(r.len) <= bytes.len() as u64);
            }
        }
    }
}
