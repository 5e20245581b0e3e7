//! What `edge-agent read` prints: which tags it reads and how each sample looks, as a table
//! row or as a JSON line. Pure: the binary polls the lines and writes what this returns.

use std::collections::HashMap;
use std::fmt;

use model::TagName;
use serde::Serialize;

use crate::config::{DeviceConfig, OpcUaSourceConfig};
use crate::modbus::line::{Sample, Value};

/// `--tag` named a tag the configuration does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTag {
    pub name: String,
    pub known: Vec<String>,
}

impl fmt::Display for UnknownTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no tag is named {:?}; ", self.name)?;
        if self.known.is_empty() {
            write!(f, "the configuration has no tags")
        } else {
            write!(f, "the configuration has: {}", self.known.join(", "))
        }
    }
}

/// The devices to read: all of them, or the one holding the tag named exactly `tag`, with
/// that tag alone.
pub fn select(
    devices: &[DeviceConfig],
    tag: Option<&str>,
) -> Result<Vec<DeviceConfig>, UnknownTag> {
    let Some(name) = tag else {
        return Ok(devices.to_vec());
    };
    for device in devices {
        if let Some(t) = device.tag.iter().find(|t| t.name.as_str() == name) {
            let mut only = device.clone();
            only.tag = vec![t.clone()];
            return Ok(vec![only]);
        }
    }
    Err(UnknownTag {
        name: name.to_owned(),
        known: devices
            .iter()
            .flat_map(|d| &d.tag)
            .map(|t| t.name.as_str().to_owned())
            .collect(),
    })
}

/// The OPC-UA servers to read, each with only the tag named exactly `tag` (servers without
/// it left out), or all of them.
pub fn select_opcua(servers: &[OpcUaSourceConfig], tag: Option<&str>) -> Vec<OpcUaSourceConfig> {
    let Some(name) = tag else {
        return servers.to_vec();
    };
    servers
        .iter()
        .filter_map(|s| {
            let t = s.tag.iter().find(|t| t.name.as_str() == name)?;
            let mut only = s.clone();
            only.tag = vec![t.clone()];
            Some(only)
        })
        .collect()
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns: tag, value, unit, quality, timestamp.
    Table,
    /// One JSON object per line: `{"tag", "value", "unit", "quality", "ts"}`.
    JsonLines,
}

/// Turns samples into lines of output.
#[derive(Debug, Clone)]
pub struct Printer {
    format: Format,
    units: HashMap<TagName, String>,
    tag_width: usize,
    unit_width: usize,
}

/// Width of the value column; longer values push the row out rather than being cut.
const VALUE_WIDTH: usize = 20;

#[derive(Serialize)]
struct JsonSample<'a> {
    tag: &'a str,
    value: Option<&'a Value>,
    unit: Option<&'a str>,
    quality: &'static str,
    ts: String,
}

impl Printer {
    /// A printer for the tags of `devices`; column widths fit their names and units, so rows
    /// line up while they stream.
    pub fn new(devices: &[DeviceConfig], format: Format) -> Self {
        let tags = || devices.iter().flat_map(|d| &d.tag);
        let units: HashMap<TagName, String> = tags()
            .filter_map(|t| Some((t.name.clone(), t.unit.clone()?)))
            .collect();
        Self {
            format,
            tag_width: tags()
                .map(|t| t.name.as_str().len())
                .max()
                .unwrap_or(0)
                .max(3),
            unit_width: units.values().map(String::len).max().unwrap_or(0).max(4),
            units,
        }
    }

    /// Adds tags that are not on a device (OPC-UA tags), with their units.
    pub fn with_tags(mut self, tags: impl IntoIterator<Item = (TagName, Option<String>)>) -> Self {
        for (tag, unit) in tags {
            self.tag_width = self.tag_width.max(tag.as_str().len());
            if let Some(unit) = unit {
                self.unit_width = self.unit_width.max(unit.len());
                self.units.insert(tag, unit);
            }
        }
        self
    }

    /// The first line of output: the table's column names; none for JSON lines.
    pub fn header(&self) -> Option<String> {
        match self.format {
            Format::Table => Some(self.row("TAG", "VALUE", "UNIT", "QUALITY", "TIMESTAMP")),
            Format::JsonLines => None,
        }
    }

    /// The line for one sample, without a line break.
    pub fn line(&self, sample: &Sample) -> String {
        let unit = self.units.get(&sample.tag).map(String::as_str);
        match self.format {
            Format::Table => {
                let value = match &sample.value {
                    None => "-".to_owned(),
                    Some(Value::Number(v)) => v.to_string(),
                    Some(Value::Text(text)) => format!("{text:?}"),
                };
                self.row(
                    sample.tag.as_str(),
                    &value,
                    unit.unwrap_or("-"),
                    sample.quality.as_str(),
                    &sample.ts.to_string(),
                )
            }
            Format::JsonLines => {
                let json = JsonSample {
                    tag: sample.tag.as_str(),
                    value: sample.value.as_ref(),
                    unit,
                    quality: sample.quality.as_str(),
                    ts: sample.ts.to_string(),
                };
                serde_json::to_string(&json)
                    .expect("a sample serializes: strings and finite numbers only")
            }
        }
    }

    fn row(&self, tag: &str, value: &str, unit: &str, quality: &str, ts: &str) -> String {
        format!(
            "{tag:<tw$}  {value:<VALUE_WIDTH$}  {unit:<uw$}  {quality:<7}  {ts}",
            tw = self.tag_width,
            uw = self.unit_width,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Quality, Timestamp};

    fn devices() -> Vec<DeviceConfig> {
        let text = r#"
[gateway]
tenant = "8c1c5a4e-3f57-4d8e-9d55-1c1f6f0c9a11"
id = "gw"
[uplink]
broker = "mqtt://127.0.0.1"
[[device]]
name = "a"
protocol = "modbus-tcp"
address = "127.0.0.1:502"
[[device.tag]]
name = "a.temp"
table = "holding"
address = 0
data_type = "f32"
unit = "degC"
[[device.tag]]
name = "a.label"
table = "holding"
address = 2
data_type = "string"
length = 4
[[device]]
name = "b"
protocol = "modbus-tcp"
address = "127.0.0.1:503"
[[device.tag]]
name = "b.running"
table = "coil"
address = 0
data_type = "bool"
"#;
        match crate::AgentConfig::from_toml_with_env("t.toml", text, Vec::new()) {
            Ok(c) => c.device,
            Err(e) => panic!("{e}"),
        }
    }

    fn sample(tag: &str, value: Option<Value>) -> Sample {
        Sample {
            tag: TagName::parse(tag).expect("valid"),
            // 2026-01-02T03:04:05.000006Z
            ts: Timestamp::from_micros(1_767_323_045_000_006),
            quality: if value.is_some() {
                Quality::Good
            } else {
                Quality::Bad
            },
            value,
        }
    }

    #[test]
    fn a_tag_selects_its_device_alone() {
        let all = devices();
        assert_eq!(select(&all, None).map(|d| d.len()), Ok(2));
        let one = select(&all, Some("b.running")).expect("the tag exists");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "b");
        assert_eq!(one[0].tag.len(), 1);
        let err = select(&all, Some("a.tem")).expect_err("no such tag");
        assert_eq!(
            err.to_string(),
            "no tag is named \"a.tem\"; the configuration has: a.temp, a.label, b.running"
        );
    }

    #[test]
    fn json_lines_carry_numbers_text_and_bad_values() {
        let p = Printer::new(&devices(), Format::JsonLines);
        assert_eq!(p.header(), None);
        let table = [
            (
                sample("a.temp", Some(Value::Number(21.5))),
                r#"{"tag":"a.temp","value":21.5,"unit":"degC","quality":"good","ts":"2026-01-02T03:04:05.000006Z"}"#,
            ),
            (
                sample("a.label", Some(Value::Text("PUMP \"7\"".into()))),
                r#"{"tag":"a.label","value":"PUMP \"7\"","unit":null,"quality":"good","ts":"2026-01-02T03:04:05.000006Z"}"#,
            ),
            (
                sample("b.running", None),
                r#"{"tag":"b.running","value":null,"unit":null,"quality":"bad","ts":"2026-01-02T03:04:05.000006Z"}"#,
            ),
        ];
        for (s, want) in table {
            assert_eq!(p.line(&s), want);
        }
    }

    #[test]
    fn table_rows_line_up() {
        let p = Printer::new(&devices(), Format::Table);
        let lines = [
            p.header().expect("a table has a header"),
            p.line(&sample("a.temp", Some(Value::Number(-3.25)))),
            p.line(&sample("a.label", Some(Value::Text("PUMP-7".into())))),
            p.line(&sample("b.running", None)),
        ];
        assert_eq!(
            lines,
            [
                "TAG        VALUE                 UNIT  QUALITY  TIMESTAMP",
                "a.temp     -3.25                 degC  good     2026-01-02T03:04:05.000006Z",
                "a.label    \"PUMP-7\"              -     good     2026-01-02T03:04:05.000006Z",
                "b.running  -                     -     bad      2026-01-02T03:04:05.000006Z",
            ]
        );
    }
}
