//! Rule fixtures: readings written as CSV text, run through the engine as a backtest would,
//! and rendered as text for comparison with a snapshot: every alarm event, and what the CMMS
//! would do with it.
//!
//! This module reads no file: callers hand it the text of the readings and a [`RuleSet`], and
//! receive the rendered run (or a [`FixtureError`] naming the line to fix).
//!
//! # The readings
//!
//! ```text
//! tag,ts_seconds,value,quality
//! # A comment line; blank lines are skipped too.
//! press-1.bearing_temp,0,70,good
//! press-1.bearing_temp,1.5,90,good
//! ```
//!
//! The first line that is neither blank nor a comment is the header; every other one is a
//! reading:
//!
//! - `tag`: the tag name (letters, digits, `-`, `_`, `.`, `:`, `/`). Tags are numbered from 1
//!   in order of first appearance; the number is the tag id in idempotency keys. The tag's
//!   asset is the part of its name before the first `.` (the whole name when it has none).
//! - `ts_seconds`: the event time in seconds since the Unix epoch; decimals are allowed.
//! - `value`: a finite number.
//! - `quality`: `good`, `uncertain` or `bad`.
//!
//! The header may add, in any order and each at most once, columns that describe the
//! reading's asset, so that rules selecting by asset class or label, and the priority matrix,
//! can be tested:
//!
//! - `criticality`: 1-5 (empty: 3).
//! - `asset_class`: the asset's class, e.g. `hydraulic-press` (empty: none).
//! - `labels`: the asset's labels as space-separated `key=value` pairs, e.g. `line=2 medium=oil`
//!   (empty: none).
//!
//! An asset's first reading fixes these (e.g. `tag,ts_seconds,value,quality,criticality` with
//! `press-1.temp,0,70,good,5`); later readings of the asset leave the field empty or repeat the
//! same value.
//!
//! One more optional column replays data that arrived late, as after an outage:
//!
//! - `arrived_seconds`: when the reading reached the server, in seconds since the Unix epoch
//!   (empty: it arrived live, at its event time).
//!
//! Readings go through the engine in file order. Before each reading the engine's time is
//! advanced ([`Engine::advance`]) to the reading's arrival (its event time without the
//! column), so that silence raises `stale` alarms; then the reading is evaluated. A reading
//! not later than its tag's previous one is skipped by the engine, as it would be live.
//!
//! With an `arrived_seconds` column the events pass the [`Pager`] as they do live, with the
//! default replay horizon ([`DEFAULT_HORIZON`], 5 minutes) and each reading's arrival as the
//! current time: a raise older than the horizon is held until its tag catches up. One that
//! clears before then is shown as history (no work order); one still held when the readings
//! end is shown as held.
//!
//! # The output
//!
//! One line per alarm event, followed by one `  -> ` line saying what the CMMS did with it:
//!
//! ```text
//! raised    t=13 rule=bearing-hot tag=press-1.bearing_temp severity=high value=88 priority=high work_type=corrective key=alarm:bearing-hot:1:13000000 title="Bearing overheating on press-1" description="..."
//!   -> work order WO-1 opened priority=high work_type=corrective title="Bearing overheating on press-1"
//! escalated t=33 rule=bearing-hot tag=press-1.bearing_temp severity=critical raised_at=13 value=90 priority=critical key=alarm:bearing-hot:1:13000000:escalated:critical title="Bearing overheating on press-1"
//!   -> appended to WO-1, priority raised to critical
//! cleared   t=45 rule=bearing-hot tag=press-1.bearing_temp severity=critical raised_at=13 value=75
//!   -> noted on WO-1 (condition cleared)
//! ```
//!
//! An alarm replayed after an outage that began and ended before its tag caught up shows
//! `-> replayed, began and ended before its tag caught up: on the asset's history, no work
//! order` under each of its events; one still held at the end, `-> replayed and still active
//! when the readings end: held until its tag catches up`.
//!
//! # The simulated CMMS
//!
//! [`SimulatedCmms`] applies the CMMS's dedup decision ([`model::alarm::decide`]) to the
//! events: at most one open work order per asset and failure mode, numbered `WO-1`, `WO-2`,
//! ... in order of opening. A raise or an escalation opens one when none is open, and is
//! otherwise appended to the open one, raising its priority when it is more urgent; a clear
//! is noted on it. An event whose idempotency key was seen before changes nothing.
//!
//! Nobody works a work order during a fixture run, and nothing closes one: once opened, a
//! work order stays open to the end of the run, so a later raise of the same asset and failure
//! mode is appended to it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use model::alarm::{AlarmEvent, Decision, WorkType, decide};
use model::{AssetId, Criticality, IdError, Priority, Quality, TagName, TenantId, Timestamp};

use crate::paging::{DEFAULT_HORIZON, Page, Pager};
use crate::select::{Labels, is_label_key, is_label_value};
use crate::{Engine, RuleSet, TagContext};

/// The header of a readings file.
pub const HEADER: &str = "tag,ts_seconds,value,quality";
/// Columns the header may add after [`HEADER`], in any order, each at most once.
pub const EXTRA_COLUMNS: [&str; 4] = ["criticality", "asset_class", "labels", "arrived_seconds"];

/// Why a readings file was refused, with the line (from 1) to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FixtureError {
    #[error(
        "the file has no header: its first line that is not blank or a comment must be `{HEADER}`, optionally followed by criticality, asset_class, labels and arrived_seconds columns"
    )]
    NoHeader,
    #[error(
        "line {line}: the header must be `{HEADER}`, optionally followed by criticality, asset_class, labels and arrived_seconds (each at most once), not {found:?}"
    )]
    Header { line: usize, found: String },
    #[error("line {line}: expected {expected} fields ({header}), found {found}")]
    FieldCount {
        line: usize,
        expected: usize,
        found: usize,
        header: String,
    },
    #[error("line {line}: {source}")]
    Tag { line: usize, source: IdError },
    #[error("line {line}: ts_seconds {found:?} is not a number of seconds, such as 12 or 12.5")]
    Timestamp { line: usize, found: String },
    #[error(
        "line {line}: arrived_seconds {found:?} is not a number of seconds (leave it empty for a reading that arrived live)"
    )]
    Arrived { line: usize, found: String },
    #[error("line {line}: value {found:?} is not a finite number")]
    Value { line: usize, found: String },
    #[error("line {line}: quality {found:?} is not good, uncertain or bad")]
    Quality { line: usize, found: String },
    #[error("line {line}: criticality {found:?} is not 1 to 5 (leave it empty for 3)")]
    Criticality { line: usize, found: String },
    #[error(
        "line {line}: asset_class {found:?} is not valid: use 1-64 letters, digits, `-`, `_` or `.`"
    )]
    AssetClass { line: usize, found: String },
    #[error(
        "line {line}: labels {found:?} are not space-separated key=value pairs (keys: 1-64 letters, digits, `-`, `_` or `.`)"
    )]
    Labels { line: usize, found: String },
    #[error(
        "line {line}: asset {asset:?} already has {column} {value} (from line {first_line}); leave the field empty or write {value}"
    )]
    AssetChanged {
        line: usize,
        asset: String,
        column: &'static str,
        value: String,
        first_line: usize,
    },
}

impl FixtureError {
    /// The line to fix, from 1; `None` when the file as a whole is wrong.
    pub fn line(&self) -> Option<usize> {
        match self {
            FixtureError::NoHeader => None,
            FixtureError::Header { line, .. }
            | FixtureError::FieldCount { line, .. }
            | FixtureError::Tag { line, .. }
            | FixtureError::Timestamp { line, .. }
            | FixtureError::Arrived { line, .. }
            | FixtureError::Value { line, .. }
            | FixtureError::Quality { line, .. }
            | FixtureError::Criticality { line, .. }
            | FixtureError::AssetClass { line, .. }
            | FixtureError::Labels { line, .. }
            | FixtureError::AssetChanged { line, .. } => Some(*line),
        }
    }
}

/// One reading of a fixture; `tag` indexes [`Fixture::tags`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct FixtureReading {
    tag: usize,
    ts: Timestamp,
    value: f64,
    quality: Quality,
    /// When the reading reached the server; `None`: live, at its event time.
    arrived: Option<Timestamp>,
}

/// A parsed readings file: its tags, with their assets, and its readings in file order.
#[derive(Debug, Clone)]
pub struct Fixture {
    tags: Vec<TagContext>,
    readings: Vec<FixtureReading>,
    /// The file has an `arrived_seconds` column: events go through the pager.
    replay: bool,
}

/// What a fixture run did with the alarm events: in the order they left the pager, each
/// applied to the CMMS or recorded as history, and the alarms still held when the readings
/// end.
#[derive(Debug, Clone, Default)]
pub struct FixtureRun {
    pub pages: Vec<Page>,
    /// Replayed raises whose outcome the readings do not show, each with the events of the
    /// same alarm that followed, oldest raise first.
    pub held: Vec<Vec<AlarmEvent>>,
}

impl FixtureRun {
    /// Every event, in the order of [`FixtureRun::pages`], then the held ones.
    pub fn events(&self) -> Vec<&AlarmEvent> {
        self.pages
            .iter()
            .flat_map(|page| match page {
                Page::Now(event) => std::slice::from_ref(event),
                Page::History(events) => events.as_slice(),
            })
            .chain(self.held.iter().flatten())
            .collect()
    }
}

/// An asset met in the readings, and the line that fixed its attributes.
struct FixtureAsset {
    id: AssetId,
    criticality: Criticality,
    class: Option<String>,
    labels: Labels,
    line: usize,
}

/// The asset attributes a reading's optional columns give; `None`: the field is empty.
#[derive(Default)]
struct AssetFields {
    criticality: Option<Criticality>,
    class: Option<String>,
    labels: Option<Labels>,
}

fn parse_labels(line: usize, field: &str) -> Result<Option<Labels>, FixtureError> {
    if field.is_empty() {
        return Ok(None);
    }
    let bad = || FixtureError::Labels {
        line,
        found: field.to_owned(),
    };
    let mut labels = Labels::new();
    for pair in field.split_whitespace() {
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        if !is_label_key(key) || !is_label_value(value) || labels.contains_key(key) {
            return Err(bad());
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(Some(labels))
}

fn show_labels(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{:?}", pairs.join(" "))
}

impl FixtureAsset {
    /// Checks that a later reading's fields repeat what the asset's first reading fixed.
    fn check(&self, line: usize, asset: &str, fields: &AssetFields) -> Result<(), FixtureError> {
        let changed = |column: &'static str, value: String| FixtureError::AssetChanged {
            line,
            asset: asset.to_owned(),
            column,
            value,
            first_line: self.line,
        };
        if let Some(level) = fields.criticality
            && level != self.criticality
        {
            return Err(changed("criticality", self.criticality.level().to_string()));
        }
        if let Some(class) = &fields.class
            && Some(class) != self.class.as_ref()
        {
            let was = self.class.as_deref().unwrap_or("");
            return Err(changed("asset_class", format!("{was:?}")));
        }
        if let Some(labels) = &fields.labels
            && labels != &self.labels
        {
            return Err(changed("labels", show_labels(&self.labels)));
        }
        Ok(())
    }
}

fn parse_criticality(line: usize, field: &str) -> Result<Option<Criticality>, FixtureError> {
    if field.is_empty() {
        return Ok(None);
    }
    field
        .parse::<u8>()
        .ok()
        .and_then(Criticality::new)
        .map(Some)
        .ok_or_else(|| FixtureError::Criticality {
            line,
            found: field.to_owned(),
        })
}

impl Fixture {
    /// Parses a readings file (see the [module documentation](self)).
    pub fn parse(text: &str) -> Result<Fixture, FixtureError> {
        let mut rows = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let (header_line, header) = rows.next().ok_or(FixtureError::NoHeader)?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let header = columns.join(",");
        let extra = columns.get(4..).unwrap_or_default();
        let known_extra = extra
            .iter()
            .enumerate()
            .all(|(i, c)| EXTRA_COLUMNS.contains(c) && !extra[..i].contains(c));
        if columns.len() < 4 || columns[..4].join(",") != HEADER || !known_extra {
            return Err(FixtureError::Header {
                line: header_line,
                found: header,
            });
        }
        let expected = columns.len();
        let column = |name: &str| extra.iter().position(|c| *c == name).map(|i| i + 4);
        let (criticality_at, class_at, labels_at, arrived_at) = (
            column("criticality"),
            column("asset_class"),
            column("labels"),
            column("arrived_seconds"),
        );
        let tenant = TenantId::from_uuid(uuid::Uuid::nil());
        let mut tags: Vec<TagContext> = Vec::new();
        let mut tag_index: HashMap<String, usize> = HashMap::new();
        let mut assets: HashMap<String, FixtureAsset> = HashMap::new();
        let mut readings = Vec::new();
        for (line, row) in rows {
            let fields: Vec<&str> = row.split(',').map(str::trim).collect();
            if fields.len() != expected {
                return Err(FixtureError::FieldCount {
                    line,
                    expected,
                    found: fields.len(),
                    header: header.clone(),
                });
            }
            let (tag, ts, value, quality) = (fields[0], fields[1], fields[2], fields[3]);
            let given = AssetFields {
                criticality: match criticality_at {
                    Some(i) => parse_criticality(line, fields[i])?,
                    None => None,
                },
                class: match class_at.map(|i| fields[i]) {
                    Some("") | None => None,
                    Some(class) if is_label_key(class) => Some(class.to_owned()),
                    Some(class) => {
                        return Err(FixtureError::AssetClass {
                            line,
                            found: class.to_owned(),
                        });
                    }
                },
                labels: match labels_at {
                    Some(i) => parse_labels(line, fields[i])?,
                    None => None,
                },
            };
            let tag_name =
                TagName::parse(tag).map_err(|source| FixtureError::Tag { line, source })?;
            let ts = ts
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .ok_or_else(|| FixtureError::Timestamp {
                    line,
                    found: ts.to_owned(),
                })?;
            let ts = Timestamp::from_micros((ts * 1e6).round() as i64);
            let arrived = match arrived_at.map(|i| fields[i]) {
                Some("") | None => None,
                Some(field) => Some(
                    field
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite())
                        .map(|s| Timestamp::from_micros((s * 1e6).round() as i64))
                        .ok_or_else(|| FixtureError::Arrived {
                            line,
                            found: field.to_owned(),
                        })?,
                ),
            };
            let value = value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| FixtureError::Value {
                    line,
                    found: value.to_owned(),
                })?;
            let quality = match quality {
                "good" => Quality::Good,
                "uncertain" => Quality::Uncertain,
                "bad" => Quality::Bad,
                _ => {
                    return Err(FixtureError::Quality {
                        line,
                        found: quality.to_owned(),
                    });
                }
            };
            let asset_name = tag.split('.').next().unwrap_or(tag);
            let next_asset = assets.len() as u128 + 1;
            let asset = match assets.entry(asset_name.to_owned()) {
                Entry::Occupied(e) => {
                    e.get().check(line, asset_name, &given)?;
                    e.into_mut()
                }
                Entry::Vacant(e) => e.insert(FixtureAsset {
                    id: AssetId::from_uuid(uuid::Uuid::from_u128(next_asset)),
                    criticality: given.criticality.unwrap_or(Criticality::DEFAULT),
                    class: given.class,
                    labels: given.labels.unwrap_or_default(),
                    line,
                }),
            };
            let index = match tag_index.entry(tag.to_owned()) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => {
                    tags.push(TagContext {
                        tenant,
                        tag_id: tags.len() as i64 + 1,
                        tag: tag_name,
                        unit: None,
                        asset: Some(asset.id),
                        asset_name: asset_name.to_owned(),
                        asset_class: asset.class.clone(),
                        labels: asset.labels.clone(),
                        criticality: asset.criticality,
                    });
                    *e.insert(tags.len() - 1)
                }
            };
            readings.push(FixtureReading {
                tag: index,
                ts,
                value,
                quality,
                arrived,
            });
        }
        Ok(Fixture {
            tags,
            readings,
            replay: arrived_at.is_some(),
        })
    }

    /// The tags in order of first appearance, as the engine sees them.
    pub fn tags(&self) -> &[TagContext] {
        &self.tags
    }

    /// Runs the readings through a fresh engine over `rules`. Without an `arrived_seconds`
    /// column every event goes to the CMMS as it is emitted. With one, the current time at
    /// each reading is its arrival (its event time where the field is empty), and the events
    /// go through the [`Pager`] with the default replay horizon, as live.
    pub fn run(&self, rules: Arc<RuleSet>) -> FixtureRun {
        let mut engine = Engine::new(rules);
        let mut pager = Pager::new(DEFAULT_HORIZON);
        let mut events = Vec::new();
        let mut run = FixtureRun::default();
        for reading in &self.readings {
            let ctx = &self.tags[reading.tag];
            let now = reading.arrived.unwrap_or(reading.ts);
            engine.advance(now, &mut events);
            engine.evaluate(ctx, reading.ts, reading.value, reading.quality, &mut events);
            if self.replay {
                for event in events.drain(..) {
                    pager.offer(event, now, &mut run.pages);
                }
                pager.release(now, |tag| engine.last_seen(tag), &mut run.pages);
            } else {
                run.pages.extend(events.drain(..).map(Page::Now));
            }
        }
        run.held = pager.into_held();
        run
    }
}

/// Parses `readings_csv`, runs it over `rules` and renders the events with what the
/// simulated CMMS did with each: the text a snapshot holds.
pub fn run(rules: Arc<RuleSet>, readings_csv: &str) -> Result<String, FixtureError> {
    let fixture = Fixture::parse(readings_csv)?;
    Ok(render(&fixture.run(rules)))
}

/// One line per event, each followed by the line of what a fresh [`SimulatedCmms`] did with
/// it, or why it reached no work order.
pub fn render(run: &FixtureRun) -> String {
    let mut cmms = SimulatedCmms::default();
    let mut out = String::new();
    let mut line = |event: &AlarmEvent, outcome: &str| {
        out.push_str(&describe(event));
        out.push_str("\n  -> ");
        out.push_str(outcome);
        out.push('\n');
    };
    for page in &run.pages {
        match page {
            Page::Now(event) => line(event, &cmms.apply(event).to_string()),
            Page::History(events) => {
                for event in events {
                    line(
                        event,
                        "replayed, began and ended before its tag caught up: on the asset's history, no work order",
                    );
                }
            }
        }
    }
    for event in run.held.iter().flatten() {
        line(
            event,
            "replayed and still active when the readings end: held until its tag catches up",
        );
    }
    out
}

/// Seconds with as many decimals as needed.
fn seconds(ts: Timestamp) -> String {
    let micros = ts.as_micros();
    if micros % 1_000_000 == 0 {
        format!("{}", micros / 1_000_000)
    } else {
        format!("{}", micros as f64 / 1e6)
    }
}

/// One alarm event on one line.
pub fn describe(event: &AlarmEvent) -> String {
    let s = event.subject();
    let head = |what: &str, at: Timestamp| {
        format!(
            "{what:<9} t={} rule={} tag={} severity={}",
            seconds(at),
            s.rule_id,
            s.tag,
            s.severity
        )
    };
    match event {
        AlarmEvent::Raised {
            at,
            value,
            work_order: w,
            ..
        } => format!(
            "{} value={value} priority={} work_type={} key={} title={:?} description={:?}",
            head("raised", *at),
            w.priority,
            w.work_type.as_str(),
            event.idempotency_key(),
            w.title,
            w.description
        ),
        AlarmEvent::Escalated {
            raised_at,
            at,
            value,
            work_order: w,
            ..
        } => format!(
            "{} raised_at={} value={value} priority={} key={} title={:?}",
            head("escalated", *at),
            seconds(*raised_at),
            w.priority,
            event.idempotency_key(),
            w.title
        ),
        AlarmEvent::Cleared {
            raised_at,
            at,
            value,
            ..
        } => format!(
            "{} raised_at={} value={value}",
            head("cleared", *at),
            seconds(*raised_at)
        ),
    }
}

/// What the simulated CMMS did with one alarm event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkOrderAction {
    /// A raise or an escalation with no open work order for its asset and failure mode.
    Opened {
        number: usize,
        priority: Priority,
        work_type: WorkType,
        title: String,
    },
    /// A raise or an escalation while a work order is open; `priority_raised_to` when it was
    /// more urgent than the work order.
    Appended {
        number: usize,
        priority_raised_to: Option<Priority>,
    },
    /// A clear, noted on the open work order.
    Noted { number: usize },
    /// A clear with no open work order to note it on.
    NothingOpen,
    /// An event whose idempotency key was seen before.
    Duplicate,
}

impl fmt::Display for WorkOrderAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkOrderAction::Opened {
                number,
                priority,
                work_type,
                title,
            } => write!(
                f,
                "work order WO-{number} opened priority={priority} work_type={} title={title:?}",
                work_type.as_str()
            ),
            WorkOrderAction::Appended {
                number,
                priority_raised_to: None,
            } => write!(f, "appended to WO-{number}"),
            WorkOrderAction::Appended {
                number,
                priority_raised_to: Some(priority),
            } => write!(f, "appended to WO-{number}, priority raised to {priority}"),
            WorkOrderAction::Noted { number } => {
                write!(f, "noted on WO-{number} (condition cleared)")
            }
            WorkOrderAction::NothingOpen => write!(f, "no open work order to note the clear on"),
            WorkOrderAction::Duplicate => write!(f, "ignored: idempotency key already seen"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct OpenWorkOrder {
    number: usize,
    priority: Priority,
}

/// The CMMS's handling of alarm events, reduced to what a fixture shows: which work order
/// each event opens or lands on (see the [module documentation](self)). No work order is ever
/// closed.
#[derive(Debug, Default)]
pub struct SimulatedCmms {
    open: HashMap<(TenantId, AssetId, String), OpenWorkOrder>,
    opened: usize,
    keys: HashSet<String>,
}

impl SimulatedCmms {
    /// Applies one alarm event and says what it did.
    pub fn apply(&mut self, event: &AlarmEvent) -> WorkOrderAction {
        let key = match event {
            AlarmEvent::Cleared { .. } => format!("{}:cleared", event.idempotency_key()),
            _ => event.idempotency_key(),
        };
        if !self.keys.insert(key) {
            return WorkOrderAction::Duplicate;
        }
        let s = event.subject();
        let group = (s.tenant, s.asset, s.failure_mode.clone());
        let draft = match event {
            AlarmEvent::Raised { work_order, .. } | AlarmEvent::Escalated { work_order, .. } => {
                work_order
            }
            AlarmEvent::Cleared { .. } => {
                return match self.open.get(&group) {
                    Some(open) => WorkOrderAction::Noted {
                        number: open.number,
                    },
                    None => WorkOrderAction::NothingOpen,
                };
            }
        };
        let open = self.open.get_mut(&group);
        match (
            decide(open.as_ref().map(|o| o.priority), draft.priority),
            open,
        ) {
            (Decision::Append { escalate_to }, Some(open)) => {
                if let Some(priority) = escalate_to {
                    open.priority = priority;
                }
                WorkOrderAction::Appended {
                    number: open.number,
                    priority_raised_to: escalate_to,
                }
            }
            _ => {
                self.opened += 1;
                self.open.insert(
                    group,
                    OpenWorkOrder {
                        number: self.opened,
                        priority: draft.priority,
                    },
                );
                WorkOrderAction::Opened {
                    number: self.opened,
                    priority: draft.priority,
                    work_type: draft.work_type,
                    title: draft.title.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> FixtureError {
        Fixture::parse(text).unwrap_err()
    }

    #[test]
    fn tags_are_numbered_by_first_appearance_and_grouped_by_asset() {
        let fixture = Fixture::parse(
            "# comment first\n\ntag,ts_seconds,value,quality\npress-2.temp,0,1,good\npress-1.temp,1,2,bad\npress-2.vib,2.5,3,uncertain\npress-2.temp,3,4,good\nmixer,4,5,good\n",
        )
        .unwrap();
        let tags: Vec<_> = fixture
            .tags()
            .iter()
            .map(|t| (t.tag_id, t.tag.as_str(), t.asset_name.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                (1, "press-2.temp", "press-2"),
                (2, "press-1.temp", "press-1"),
                (3, "press-2.vib", "press-2"),
                (4, "mixer", "mixer"),
            ]
        );
        assert_eq!(fixture.tags()[0].asset, fixture.tags()[2].asset);
        assert_ne!(fixture.tags()[0].asset, fixture.tags()[1].asset);
        assert!(
            fixture
                .tags()
                .iter()
                .all(|t| t.criticality == Criticality::DEFAULT)
        );
        assert_eq!(fixture.readings.len(), 5);
        assert_eq!(fixture.readings[2].ts, Timestamp::from_micros(2_500_000));
        assert_eq!(fixture.readings[1].quality, Quality::Bad);
    }

    #[test]
    fn the_criticality_column_sets_the_assets_criticality_once() {
        let fixture = Fixture::parse(
            "tag , ts_seconds, value, quality, criticality\npress-1.temp,0,1,good,5\npress-1.vib,0,1,good,\npress-2.temp,0,1,good,\npress-1.temp,1,1,good,5\n",
        )
        .unwrap();
        let levels: Vec<_> = fixture
            .tags()
            .iter()
            .map(|t| t.criticality.level())
            .collect();
        assert_eq!(levels, [5, 5, 3]);
        let err = error(
            "tag,ts_seconds,value,quality,criticality\npress-1.temp,0,1,good,\npress-1.vib,1,1,good,4\n",
        );
        assert_eq!(
            err,
            FixtureError::AssetChanged {
                line: 3,
                asset: "press-1".into(),
                column: "criticality",
                value: "3".into(),
                first_line: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "line 3: asset \"press-1\" already has criticality 3 (from line 2); leave the field empty or write 3"
        );
    }

    #[test]
    fn asset_class_and_label_columns_describe_the_asset_for_rules_that_select_by_them() {
        let fixture = Fixture::parse(
            "tag,ts_seconds,value,quality,labels,asset_class\npress-1.temp,0,1,good,line=2 medium=oil,hydraulic-press\npress-1.vib,0,1,good,,\npump-1.temp,0,1,good,line=2,\n",
        )
        .unwrap();
        let tags = fixture.tags();
        assert_eq!(tags[1].asset_class.as_deref(), Some("hydraulic-press"));
        assert_eq!(
            tags[1].labels.get("medium").map(String::as_str),
            Some("oil")
        );
        assert_eq!(tags[2].asset_class, None);
        let rules = RuleSet::parse(
            "r.toml",
            "version = 1\n[[rule]]\nid = \"hot\"\nasset_classes = [\"hydraulic-*\"]\nlabels = { line = \"2\" }\nseverity = \"high\"\nfailure_mode = \"overheat\"\n[rule.threshold]\nabove = 0.5\n[rule.work_order]\ntitle = \"Hot {tag}\"\n",
        )
        .unwrap();
        let raised: Vec<String> = fixture
            .run(Arc::new(rules))
            .events()
            .into_iter()
            .filter(|e| matches!(e, AlarmEvent::Raised { .. }))
            .map(|e| e.subject().tag.as_str().to_owned())
            .collect();
        assert_eq!(raised, ["press-1.temp", "press-1.vib"]);
        assert_eq!(
            error("tag,ts_seconds,value,quality,labels\np.t,0,1,good,line\n"),
            FixtureError::Labels {
                line: 2,
                found: "line".into()
            }
        );
        assert_eq!(
            error(
                "tag,ts_seconds,value,quality,asset_class\np.t,0,1,good,pump\np.u,1,1,good,fan\n"
            )
            .to_string(),
            "line 3: asset \"p\" already has asset_class \"pump\" (from line 2); leave the field empty or write \"pump\""
        );
        assert!(matches!(
            error("tag,ts_seconds,value,quality,labels,labels\n"),
            FixtureError::Header { line: 1, .. }
        ));
    }

    #[test]
    fn every_bad_line_is_refused_with_its_number() {
        let head = "tag,ts_seconds,value,quality\n# a comment\n\n";
        let cases: [(&str, usize, &str); 9] = [
            ("p.t,0,1", 4, "expected 4 fields"),
            ("p.t,0,1,good,3", 4, "found 5"),
            ("temp#1,0,1,good", 4, "contains '#'"),
            (",0,1,good", 4, "must not be empty"),
            ("p.t,soon,1,good", 4, "ts_seconds \"soon\""),
            ("p.t,inf,1,good", 4, "ts_seconds \"inf\""),
            ("p.t,0,NaN,good", 4, "value \"NaN\" is not a finite number"),
            ("p.t,0,,good", 4, "value \"\""),
            (
                "p.t,0,1,ok",
                4,
                "quality \"ok\" is not good, uncertain or bad",
            ),
        ];
        for (row, line, says) in cases {
            let err = error(&format!("{head}{row}\n"));
            assert_eq!(err.line(), Some(line), "{row}: {err}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("line {line}: ")), "{message}");
            assert!(message.contains(says), "{row}: {message}");
        }
        let err = error("tag,ts_seconds,value,quality,criticality\np.t,0,1,good,6\n");
        assert_eq!(
            err.to_string(),
            "line 2: criticality \"6\" is not 1 to 5 (leave it empty for 3)"
        );
        let err = error(
            "tag,ts_seconds,value,quality,arrived_seconds\np.t,0,1,good,\np.t,1,1,good,later\n",
        );
        assert_eq!(
            err.to_string(),
            "line 3: arrived_seconds \"later\" is not a number of seconds (leave it empty for a reading that arrived live)"
        );
    }

    #[test]
    fn a_missing_or_wrong_header_says_what_it_must_be() {
        assert_eq!(error(""), FixtureError::NoHeader);
        assert_eq!(error("# only a comment\n\n"), FixtureError::NoHeader);
        let err = error("# readings\np.t,0,1,good\n");
        assert_eq!(err.line(), Some(2));
        assert!(err.to_string().contains(HEADER), "{err}");
        assert!(matches!(
            error("tag,time,value,quality\n"),
            FixtureError::Header { line: 1, .. }
        ));
    }

    const RULES: &str = r#"
version = 1

[[rule]]
id = "hot"
tags = ["*.temp"]
severity = "medium"
failure_mode = "overheat"
escalate = [{ after = "10s", severity = "high" }]

[rule.threshold]
above = 80.0

[rule.work_order]
title = "Hot {asset}"

[[rule]]
id = "very-hot"
tags = ["*.temp"]
severity = "critical"
failure_mode = "overheat"

[rule.threshold]
above = 100.0

[rule.work_order]
title = "Very hot {asset}"
work_type = "emergency"
"#;

    fn simulate(readings: &str) -> Vec<String> {
        let rules = Arc::new(RuleSet::parse("r.toml", RULES).unwrap());
        run(rules, readings)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("  -> "))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn one_open_work_order_per_asset_and_failure_mode() {
        let actions = simulate(
            "tag,ts_seconds,value,quality\n\
             # raised, opens WO-1\n\
             press-1.temp,0,90,good\n\
             # another asset: WO-2\n\
             press-2.temp,1,90,good\n\
             # escalated at 10 (medium to high)\n\
             press-1.temp,12,90,good\n\
             # the more severe rule of the same failure mode\n\
             press-1.temp,13,105,good\n\
             # both clear\n\
             press-1.temp,14,20,good\n\
             # raised again: WO-1 is still open\n\
             press-1.temp,15,90,good\n",
        );
        assert_eq!(
            actions,
            [
                "work order WO-1 opened priority=medium work_type=corrective title=\"Hot press-1\"",
                "work order WO-2 opened priority=medium work_type=corrective title=\"Hot press-2\"",
                "appended to WO-1, priority raised to high",
                "appended to WO-1, priority raised to critical",
                "noted on WO-1 (condition cleared)",
                "noted on WO-1 (condition cleared)",
                "appended to WO-1",
            ]
        );
    }

    #[test]
    fn criticality_changes_the_priority_a_work_order_opens_with() {
        let actions = simulate(
            "tag,ts_seconds,value,quality,criticality\npress-1.temp,0,90,good,5\npress-1.temp,1,105,good,\n",
        );
        assert_eq!(
            actions,
            [
                "work order WO-1 opened priority=high work_type=corrective title=\"Hot press-1\"",
                "appended to WO-1, priority raised to critical",
            ]
        );
    }

    #[test]
    fn a_redelivered_event_changes_nothing() {
        let rules = Arc::new(RuleSet::parse("r.toml", RULES).unwrap());
        let fixture =
            Fixture::parse("tag,ts_seconds,value,quality\np.temp,0,90,good\np.temp,1,20,good\n")
                .unwrap();
        let run = fixture.run(rules);
        let events = run.events();
        assert_eq!(events.len(), 2);
        let mut cmms = SimulatedCmms::default();
        assert!(matches!(
            cmms.apply(events[0]),
            WorkOrderAction::Opened { number: 1, .. }
        ));
        assert_eq!(cmms.apply(events[0]), WorkOrderAction::Duplicate);
        assert_eq!(cmms.apply(events[1]), WorkOrderAction::Noted { number: 1 });
        assert_eq!(cmms.apply(events[1]), WorkOrderAction::Duplicate);
        // A clear the CMMS has no work order for is reported, not dropped.
        let mut fresh = SimulatedCmms::default();
        assert_eq!(fresh.apply(events[1]), WorkOrderAction::NothingOpen);
    }

    #[test]
    fn normal_operation_renders_nothing() {
        assert_eq!(
            simulate("tag,ts_seconds,value,quality\np.temp,0,20,good\n"),
            Vec::<String>::new()
        );
    }
}
