//! History windows as Parquet files, so that engineers can backtest offline.
//!
//! A history file has one row per reading, in event-time order (tag id among readings of the
//! same time), with the columns of [`COLUMNS`]: `tag`, `tag_id`, `asset` (UUID, null for a
//! tag on no asset), `asset_name`, `criticality`, `unit`, `asset_class`, `labels` (the tag's
//! labels for rules, its asset's with its own on top, as a JSON object), `ts` (timestamp,
//! microseconds, UTC), `value` and `quality` (0 good, 1 uncertain, 2 bad). Its file metadata names the tenant and
//! the exported window. Next to it, `<name>.work-orders.parquet` holds the tenant's work
//! orders that a backtest of the window can match (see [`work_orders_path`]).
//!
//! Files are written and read a slice of rows at a time: neither side holds a whole history.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::{AssetId, Criticality, Quality, TagName, TenantId, Timestamp};
use polars::prelude::*;
use rules::{Labels, TagContext};
use uuid::Uuid;

use crate::BacktestError;
use crate::analysis::PastWorkOrder;
use crate::history::{PROGRESS_EVERY, Progress};
use crate::replay::{HistoryReading, ReadingSink, Tags, Window};

/// The columns of a history file, in order.
pub const COLUMNS: [&str; 11] = [
    "tag",
    "tag_id",
    "asset",
    "asset_name",
    "criticality",
    "unit",
    "asset_class",
    "labels",
    "ts",
    "value",
    "quality",
];

/// The columns of a work-order file, in order.
pub const WORK_ORDER_COLUMNS: [&str; 6] = [
    "id",
    "asset",
    "failure_mode",
    "created_at",
    "status",
    "resolution",
];

/// How many of [`COLUMNS`] describe the reading's tag; the rest describe the reading.
const TAG_COLUMNS: usize = 8;

/// The history file format this build writes and reads (2 added `asset_class` and `labels`).
const FORMAT_VERSION: &str = "2";
const META_VERSION: &str = "maintainpro.history.version";
const META_TENANT_ID: &str = "maintainpro.tenant_id";
const META_TENANT: &str = "maintainpro.tenant";
const META_FROM: &str = "maintainpro.from";
const META_TO: &str = "maintainpro.to";

/// Rows per row group written, and per slice read.
const ROWS_PER_GROUP: usize = 1 << 18;

/// Where the work orders that go with the history file `history` are kept:
/// `history.parquet` -> `history.work-orders.parquet`.
pub fn work_orders_path(history: &Path) -> PathBuf {
    history.with_extension("work-orders.parquet")
}

/// Whose history a file holds, and of which window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryHeader {
    pub tenant: TenantId,
    pub tenant_slug: String,
    pub window: Window,
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> BacktestError {
    BacktestError::ParquetWrite {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn file_error(path: &Path, reason: impl Into<String>) -> BacktestError {
    BacktestError::HistoryFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn timestamps(name: &str, micros: Vec<i64>) -> Column {
    Int64Chunked::from_vec(name.into(), micros)
        .into_datetime(TimeUnit::Microseconds, Some(TimeZone::UTC))
        .into_series()
        .into()
}

/// Rows of a history file: the tag columns gathered by tag index, then the readings'.
fn readings_frame(
    tag_rows: &DataFrame,
    index: Vec<IdxSize>,
    ts: Vec<i64>,
    value: Vec<f64>,
    quality: Vec<i32>,
) -> PolarsResult<DataFrame> {
    let mut frame = tag_rows.take(&IdxCa::from_vec("index".into(), index))?;
    frame.with_column(timestamps("ts", ts))?;
    frame.with_column(Column::new("value".into(), value))?;
    frame.with_column(Column::new("quality".into(), quality))?;
    Ok(frame)
}

/// Writes a history file: push the readings in event-time order, then [`HistoryWriter::finish`].
pub struct HistoryWriter {
    path: PathBuf,
    /// One row per tag index: the tag columns of a reading.
    tag_rows: DataFrame,
    writer: polars::io::parquet::write::BatchedWriter<File>,
    index: Vec<IdxSize>,
    ts: Vec<i64>,
    value: Vec<f64>,
    quality: Vec<i32>,
    rows: u64,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl HistoryWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path, tags: &Tags, header: &HistoryHeader) -> Result<Self, BacktestError> {
        let tag_rows = df!(
            "tag" => tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(),
            "tag_id" => tags.iter().map(|t| t.tag_id).collect::<Vec<i64>>(),
            "asset" => tags.iter().map(|t| t.asset.map(|a| a.as_uuid().to_string())).collect::<Vec<_>>(),
            "asset_name" => tags.iter().map(|t| t.asset.map(|_| t.asset_name.as_str())).collect::<Vec<_>>(),
            "criticality" => tags.iter().map(|t| i32::from(t.criticality.level())).collect::<Vec<i32>>(),
            "unit" => tags.iter().map(|t| t.unit.as_deref()).collect::<Vec<_>>(),
            "asset_class" => tags.iter().map(|t| t.asset_class.as_deref()).collect::<Vec<_>>(),
            "labels" => tags
                .iter()
                .map(|t| serde_json::to_string(&t.labels).unwrap_or_else(|_| "{}".into()))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| write_error(path, e))?;
        let schema = readings_frame(&tag_rows, Vec::new(), Vec::new(), Vec::new(), Vec::new())
            .map_err(|e| write_error(path, e))?
            .schema()
            .as_ref()
            .clone();
        let file = File::create(path).map_err(|source| BacktestError::Write {
            path: path.to_owned(),
            source,
        })?;
        let metadata = KeyValueMetadata::from_static(vec![
            (META_VERSION.into(), FORMAT_VERSION.into()),
            (META_TENANT_ID.into(), header.tenant.as_uuid().to_string()),
            (META_TENANT.into(), header.tenant_slug.clone()),
            (META_FROM.into(), header.window.from().to_string()),
            (META_TO.into(), header.window.to().to_string()),
        ]);
        let writer = ParquetWriter::new(file)
            .with_key_value_metadata(Some(metadata))
            .with_row_group_size(Some(ROWS_PER_GROUP))
            .batched(&schema)
            .map_err(|e| write_error(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            tag_rows,
            writer,
            index: Vec::with_capacity(ROWS_PER_GROUP),
            ts: Vec::with_capacity(ROWS_PER_GROUP),
            value: Vec::with_capacity(ROWS_PER_GROUP),
            quality: Vec::with_capacity(ROWS_PER_GROUP),
            rows: 0,
        })
    }

    fn flush(&mut self) -> Result<(), BacktestError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let frame = readings_frame(
            &self.tag_rows,
            std::mem::take(&mut self.index),
            std::mem::take(&mut self.ts),
            std::mem::take(&mut self.value),
            std::mem::take(&mut self.quality),
        )
        .map_err(|e| write_error(&self.path, e))?;
        self.writer
            .write_batch(&frame)
            .map_err(|e| write_error(&self.path, e))?;
        self.index.reserve(ROWS_PER_GROUP);
        self.ts.reserve(ROWS_PER_GROUP);
        self.value.reserve(ROWS_PER_GROUP);
        self.quality.reserve(ROWS_PER_GROUP);
        Ok(())
    }

    /// Writes what is buffered and the file's footer; returns the rows written.
    pub fn finish(mut self) -> Result<u64, BacktestError> {
        self.flush()?;
        self.writer
            .finish()
            .map_err(|e| write_error(&self.path, e))?;
        Ok(self.rows)
    }
}

impl ReadingSink for HistoryWriter {
    fn push(&mut self, reading: HistoryReading) -> Result<(), BacktestError> {
        self.index.push(reading.tag);
        self.ts.push(reading.ts.as_micros());
        self.value.push(reading.value);
        self.quality.push(i32::from(reading.quality.as_u8()));
        self.rows += 1;
        if self.index.len() >= ROWS_PER_GROUP {
            self.flush()?;
        }
        Ok(())
    }
}

/// Writes the work orders that go with a history file (see [`work_orders_path`]).
pub fn write_work_orders(path: &Path, orders: &[PastWorkOrder]) -> Result<(), BacktestError> {
    let mut frame = df!(
        "id" => orders.iter().map(|o| o.id.to_string()).collect::<Vec<_>>(),
        "asset" => orders.iter().map(|o| o.asset.as_uuid().to_string()).collect::<Vec<_>>(),
        "failure_mode" => orders.iter().map(|o| o.failure_mode.as_str()).collect::<Vec<_>>(),
        "status" => orders.iter().map(|o| o.status.as_str()).collect::<Vec<_>>(),
        "resolution" => orders.iter().map(|o| o.resolution.as_deref()).collect::<Vec<_>>(),
    )
    .map_err(|e| write_error(path, e))?;
    frame
        .insert_column(
            3,
            timestamps(
                "created_at",
                orders.iter().map(|o| o.created_at.as_micros()).collect(),
            ),
        )
        .map_err(|e| write_error(path, e))?;
    let file = File::create(path).map_err(|source| BacktestError::Write {
        path: path.to_owned(),
        source,
    })?;
    ParquetWriter::new(file)
        .finish(&mut frame)
        .map_err(|e| write_error(path, e))?;
    Ok(())
}

fn open(path: &Path) -> Result<File, BacktestError> {
    File::open(path).map_err(|source| BacktestError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Microseconds since the epoch of a timestamp column (any unit) or an integer column
/// (taken as microseconds).
fn micros_of(path: &Path, frame: &DataFrame, name: &str) -> Result<Vec<i64>, BacktestError> {
    let column = frame
        .column(name)
        .map_err(|e| file_error(path, e.to_string()))?;
    let (physical, scale): (Column, fn(i64) -> i64) = match column.dtype() {
        DataType::Datetime(unit, _) => {
            let scale: fn(i64) -> i64 = match unit {
                TimeUnit::Nanoseconds => |v| v.div_euclid(1000),
                TimeUnit::Microseconds => |v| v,
                TimeUnit::Milliseconds => |v| v.saturating_mul(1000),
            };
            (column.to_physical_repr(), scale)
        }
        dtype if dtype.is_integer() => (
            column
                .cast(&DataType::Int64)
                .map_err(|e| file_error(path, format!("column {name}: {e}")))?,
            |v| v,
        ),
        other => {
            return Err(file_error(
                path,
                format!("column {name} is {other}, not a timestamp"),
            ));
        }
    };
    let values = physical
        .i64()
        .map_err(|e| file_error(path, format!("column {name}: {e}")))?;
    values
        .iter()
        .map(|v| {
            v.map(scale)
                .ok_or_else(|| file_error(path, format!("column {name} has missing values")))
        })
        .collect()
}

fn numbers<T>(
    path: &Path,
    frame: &DataFrame,
    name: &str,
    dtype: DataType,
    get: impl Fn(&Column) -> PolarsResult<Vec<Option<T>>>,
) -> Result<Vec<T>, BacktestError> {
    let column = frame
        .column(name)
        .and_then(|c| c.strict_cast(&dtype))
        .map_err(|e| file_error(path, format!("column {name}: {e}")))?;
    get(&column)
        .map_err(|e| file_error(path, format!("column {name}: {e}")))?
        .into_iter()
        .map(|v| v.ok_or_else(|| file_error(path, format!("column {name} has missing values"))))
        .collect()
}

fn strings(
    path: &Path,
    frame: &DataFrame,
    name: &str,
) -> Result<Vec<Option<String>>, BacktestError> {
    let column = frame
        .column(name)
        .and_then(|c| c.str().cloned())
        .map_err(|e| file_error(path, format!("column {name}: {e}")))?;
    Ok(column.iter().map(|s| s.map(str::to_owned)).collect())
}

/// A history file opened for a backtest: its header and its tags read, its readings still
/// on disk.
#[derive(Debug)]
pub struct HistoryFile {
    path: PathBuf,
    metadata: FileMetadataRef,
    pub header: HistoryHeader,
    pub tags: Tags,
}

impl HistoryFile {
    /// Reads the header and the tags of the history file at `path`.
    pub fn open(path: &Path) -> Result<Self, BacktestError> {
        let metadata = ParquetReader::new(open(path)?)
            .get_metadata()
            .map_err(|e| file_error(path, e.to_string()))?
            .clone();
        let value_of = |key: &str| {
            metadata
                .key_value_metadata()
                .iter()
                .flatten()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
        };
        match value_of(META_VERSION) {
            Some(v) if v == FORMAT_VERSION => {}
            Some(v) => {
                return Err(file_error(
                    path,
                    format!(
                        "it is history format {v}, this build reads {FORMAT_VERSION}; export the history again with `maintainpro rules export-history`"
                    ),
                ));
            }
            None => return Err(file_error(path, "it has no MaintAInPro history header")),
        }
        let tenant = value_of(META_TENANT_ID)
            .and_then(|v| Uuid::parse_str(&v).ok())
            .map(TenantId::from_uuid)
            .ok_or_else(|| file_error(path, "its header names no tenant id"))?;
        let time = |key: &str| {
            value_of(key)
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(&v).ok())
                .map(|t| Timestamp::from_datetime(t.to_utc()))
                .ok_or_else(|| file_error(path, format!("its header has no valid {key}")))
        };
        let header = HistoryHeader {
            tenant,
            tenant_slug: value_of(META_TENANT).unwrap_or_default(),
            window: Window::new(time(META_FROM)?, time(META_TO)?)?,
        };
        let mut file = Self {
            path: path.to_owned(),
            metadata,
            header,
            tags: Tags::new(),
        };
        file.tags = file.read_tags()?;
        Ok(file)
    }

    pub fn rows(&self) -> usize {
        self.metadata.num_rows
    }

    /// Rows `[offset, offset + ROWS_PER_GROUP)` of `columns`.
    fn slice(&self, offset: usize, columns: &[&str]) -> Result<DataFrame, BacktestError> {
        let mut reader = ParquetReader::new(open(&self.path)?)
            .with_columns(Some(columns.iter().map(|c| (*c).to_owned()).collect()))
            .with_slice(Some((offset, ROWS_PER_GROUP)));
        reader.set_metadata(Arc::clone(&self.metadata));
        reader
            .finish()
            .map_err(|e| file_error(&self.path, e.to_string()))
    }

    fn read_tags(&self) -> Result<Tags, BacktestError> {
        let path = self.path.as_path();
        let mut tags = Tags::new();
        for offset in (0..self.rows()).step_by(ROWS_PER_GROUP) {
            let ids = numbers(
                path,
                &self.slice(offset, &["tag_id"])?,
                "tag_id",
                DataType::Int64,
                |c| Ok(c.i64()?.iter().collect()),
            )?;
            if ids.iter().all(|id| tags.index_of(*id).is_some()) {
                continue;
            }
            // Only slices where a tag first appears decode the tag columns.
            let frame = self.slice(offset, &COLUMNS[..TAG_COLUMNS])?;
            let names = strings(path, &frame, "tag")?;
            let assets = strings(path, &frame, "asset")?;
            let asset_names = strings(path, &frame, "asset_name")?;
            let units = strings(path, &frame, "unit")?;
            let classes = strings(path, &frame, "asset_class")?;
            let labels = strings(path, &frame, "labels")?;
            let criticalities = numbers(path, &frame, "criticality", DataType::Int32, |c| {
                Ok(c.i32()?.iter().collect())
            })?;
            for (row, &tag_id) in ids.iter().enumerate() {
                if tags.index_of(tag_id).is_some() {
                    continue;
                }
                let bad = |what: &str| file_error(path, format!("row {}: {what}", offset + row));
                let tag = names
                    .get(row)
                    .cloned()
                    .flatten()
                    .and_then(|n| TagName::parse(n).ok())
                    .ok_or_else(|| bad("`tag` is not a valid tag name"))?;
                let asset = match assets.get(row).cloned().flatten() {
                    None => None,
                    Some(a) => Some(
                        Uuid::parse_str(&a)
                            .map(AssetId::from_uuid)
                            .map_err(|_| bad("`asset` is not a UUID"))?,
                    ),
                };
                let criticality = criticalities
                    .get(row)
                    .and_then(|c| u8::try_from(*c).ok())
                    .and_then(Criticality::new)
                    .ok_or_else(|| bad("`criticality` is not 1 to 5"))?;
                tags.insert(TagContext {
                    tenant: self.header.tenant,
                    tag_id,
                    tag,
                    unit: units.get(row).cloned().flatten(),
                    asset,
                    asset_name: asset_names.get(row).cloned().flatten().unwrap_or_default(),
                    asset_class: classes.get(row).cloned().flatten(),
                    labels: match labels.get(row).cloned().flatten() {
                        None => Labels::new(),
                        Some(text) => serde_json::from_str(&text)
                            .map_err(|_| bad("`labels` is not a JSON object of strings"))?,
                    },
                    criticality,
                });
            }
        }
        Ok(tags)
    }

    /// Streams the readings of `window` into `sink`, in the file's order, which must be
    /// event-time order. Returns the readings handed on.
    pub fn stream_readings<S: ReadingSink>(
        &self,
        window: Window,
        sink: &mut S,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<u64, BacktestError> {
        let path = self.path.as_path();
        let mut handed = 0u64;
        let mut previous = i64::MIN;
        let mut at = window.from();
        for offset in (0..self.rows()).step_by(ROWS_PER_GROUP) {
            let frame = self.slice(
                offset,
                &COLUMNS[TAG_COLUMNS..]
                    .iter()
                    .chain(["tag_id"].iter())
                    .copied()
                    .collect::<Vec<_>>(),
            )?;
            let ids = numbers(path, &frame, "tag_id", DataType::Int64, |c| {
                Ok(c.i64()?.iter().collect())
            })?;
            let ts = micros_of(path, &frame, "ts")?;
            let values = numbers(path, &frame, "value", DataType::Float64, |c| {
                Ok(c.f64()?.iter().collect())
            })?;
            let qualities = numbers(path, &frame, "quality", DataType::Int32, |c| {
                Ok(c.i32()?.iter().collect())
            })?;
            for (row, (((&tag_id, &ts), &value), &quality)) in
                ids.iter().zip(&ts).zip(&values).zip(&qualities).enumerate()
            {
                let row = (offset + row) as u64;
                if ts < previous {
                    return Err(BacktestError::UnsortedHistory {
                        path: path.to_owned(),
                        row,
                    });
                }
                previous = ts;
                let ts = Timestamp::from_micros(ts);
                if !window.contains(ts) {
                    continue;
                }
                let tag = self.tags.index_of(tag_id).ok_or_else(|| {
                    file_error(path, format!("row {row}: unknown tag id {tag_id}"))
                })?;
                let quality = u8::try_from(quality)
                    .ok()
                    .and_then(Quality::from_u8)
                    .ok_or_else(|| {
                        file_error(
                            path,
                            format!("row {row}: quality {quality} is not 0, 1 or 2"),
                        )
                    })?;
                sink.push(HistoryReading {
                    tag,
                    ts,
                    value,
                    quality,
                })?;
                at = ts;
                handed += 1;
                if handed.is_multiple_of(PROGRESS_EVERY) {
                    progress(Progress {
                        readings: handed,
                        at,
                        window,
                    });
                }
            }
        }
        progress(Progress {
            readings: handed,
            at: at.max(window.to()),
            window,
        });
        Ok(handed)
    }

    /// The work orders that go with the file, or `None` when the work-order file is absent.
    pub fn past_work_orders(&self) -> Result<Option<Vec<PastWorkOrder>>, BacktestError> {
        let path = work_orders_path(&self.path);
        if !path.exists() {
            return Ok(None);
        }
        read_work_orders(&path).map(Some)
    }
}

/// Reads a work-order file written by [`write_work_orders`].
pub fn read_work_orders(path: &Path) -> Result<Vec<PastWorkOrder>, BacktestError> {
    let frame = ParquetReader::new(open(path)?)
        .finish()
        .map_err(|e| file_error(path, e.to_string()))?;
    let ids = strings(path, &frame, "id")?;
    let assets = strings(path, &frame, "asset")?;
    let modes = strings(path, &frame, "failure_mode")?;
    let created = micros_of(path, &frame, "created_at")?;
    let statuses = strings(path, &frame, "status")?;
    let resolutions = strings(path, &frame, "resolution")?;
    let mut orders = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let bad = |what: &str| file_error(path, format!("row {row}: {what}"));
        let uuid = |v: Option<&Option<String>>, what: &str| {
            v.cloned()
                .flatten()
                .and_then(|s| Uuid::parse_str(&s).ok())
                .ok_or_else(|| bad(what))
        };
        orders.push(PastWorkOrder {
            id: uuid(ids.get(row), "`id` is not a UUID")?,
            asset: AssetId::from_uuid(uuid(assets.get(row), "`asset` is not a UUID")?),
            failure_mode: modes
                .get(row)
                .cloned()
                .flatten()
                .ok_or_else(|| bad("`failure_mode` is missing"))?,
            created_at: created
                .get(row)
                .copied()
                .map(Timestamp::from_micros)
                .ok_or_else(|| bad("`created_at` is missing"))?,
            status: statuses
                .get(row)
                .cloned()
                .flatten()
                .ok_or_else(|| bad("`status` is missing"))?,
            resolution: resolutions.get(row).cloned().flatten(),
        });
    }
    Ok(orders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Replay;
    use crate::replay::tests::{HOT, asset, reading, rules, tags, ts};

    /// Collects what it is fed.
    #[derive(Default)]
    struct Collect(Vec<HistoryReading>);

    impl ReadingSink for Collect {
        fn push(&mut self, reading: HistoryReading) -> Result<(), BacktestError> {
            self.0.push(reading);
            Ok(())
        }
    }

    fn header() -> HistoryHeader {
        HistoryHeader {
            tenant: TenantId::from_uuid(Uuid::nil()),
            tenant_slug: "acme".into(),
            window: Window::new(ts(0), ts(1_000_000)).expect("non-empty"),
        }
    }

    #[test]
    fn a_history_survives_the_round_trip_through_a_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("history.parquet");
        let tags = tags();
        // More than one row group, with every quality and every tag (one on no asset).
        let readings: Vec<_> = (0..(ROWS_PER_GROUP as i64 + 1000))
            .map(|i| HistoryReading {
                quality: Quality::from_u8((i % 3) as u8).expect("0..3"),
                ..reading((i % 3) as u32, i, 60.0 + (i % 50) as f64)
            })
            .collect();
        let mut writer = HistoryWriter::create(&path, &tags, &header()).expect("file created");
        for r in &readings {
            writer.push(*r).expect("row written");
        }
        assert_eq!(
            writer.finish().expect("file finished"),
            readings.len() as u64
        );
        let orders = vec![PastWorkOrder {
            id: Uuid::from_u128(7),
            asset: asset(1),
            failure_mode: "overheat".into(),
            created_at: ts(30),
            status: "completed".into(),
            resolution: Some("fixed".into()),
        }];
        write_work_orders(&work_orders_path(&path), &orders).expect("work orders written");

        let file = HistoryFile::open(&path).expect("file opens");
        assert_eq!(file.header, header());
        assert_eq!(file.tags, *tags);
        let mut collected = Collect::default();
        let mut reports = 0;
        let handed = file
            .stream_readings(header().window, &mut collected, &mut |_| reports += 1)
            .expect("readings stream");
        assert_eq!(handed, readings.len() as u64);
        assert_eq!(collected.0, readings);
        assert!(reports >= 2);
        assert_eq!(file.past_work_orders().expect("readable"), Some(orders));

        // A narrower window hands on only its readings, and replays like the original.
        let window = Window::new(ts(100), ts(5000)).expect("non-empty");
        let mut replay = Replay::new(rules(HOT), Arc::new(file.tags.clone()), window);
        file.stream_readings(window, &mut replay, &mut |_| {})
            .expect("readings stream");
        let in_window = readings.iter().copied().filter(|r| window.contains(r.ts));
        let direct = Replay::run(rules(HOT), tags, window, in_window);
        assert_eq!(replay.finish(), direct);
    }

    #[test]
    fn files_that_are_not_histories_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("none.parquet");
        assert!(matches!(
            HistoryFile::open(&missing),
            Err(BacktestError::Read { .. })
        ));

        let other = dir.path().join("other.parquet");
        write_work_orders(&other, &[]).expect("written");
        let err = HistoryFile::open(&other).expect_err("not a history");
        assert!(
            err.to_string().contains("no MaintAInPro history header"),
            "{err}"
        );

        let garbage = dir.path().join("garbage.parquet");
        std::fs::write(&garbage, b"not parquet at all").expect("written");
        assert!(matches!(
            HistoryFile::open(&garbage),
            Err(BacktestError::HistoryFile { .. })
        ));
        assert_eq!(
            HistoryFile::open(&dir.path().join("none.parquet"))
                .map(|_| ())
                .map_err(|e| e.to_string())
                .err()
                .map(|m| m.contains("check the path")),
            Some(true)
        );
    }

    #[test]
    fn an_unsorted_file_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("history.parquet");
        let tags = tags();
        let mut writer = HistoryWriter::create(&path, &tags, &header()).expect("file created");
        for r in [reading(0, 10, 1.0), reading(1, 5, 1.0)] {
            writer.push(r).expect("row written");
        }
        writer.finish().expect("file finished");
        let file = HistoryFile::open(&path).expect("file opens");
        let err = file
            .stream_readings(header().window, &mut Collect::default(), &mut |_| {})
            .expect_err("unsorted");
        assert!(
            matches!(err, BacktestError::UnsortedHistory { row: 1, .. }),
            "{err}"
        );
    }
}
