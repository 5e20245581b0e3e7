//! Plain JSON messages to readings, after the `[[mqtt.json]]` mappings. Pure.
//!
//! A message on a topic that matches a mapping's filter gives one reading per matching
//! mapping: the tag named by the mapping's template (`{N}` is the topic's N-th level, with
//! characters a tag name cannot hold replaced by `_`), the value, time and quality found at
//! the mapping's JSON pointers. A message that is not JSON, or a mapping whose value is
//! missing or not a number, gives a [`JsonProblem`] for that mapping; the others still read.

use model::{Quality, Reading, TagName, Timestamp};
use serde_json::Value;

use super::config::JsonMapping;

/// The largest JSON message read; larger ones are refused with a problem.
pub const MAX_JSON_BYTES: usize = 256 * 1024;

/// A tag name template: text and topic levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// A topic level, 0-based.
    Level(usize),
}

impl Template {
    /// Parses `text` for a filter of `levels` levels (`filter` is named in errors). With a
    /// multi-level wildcard (`#`), levels beyond the filter's are allowed.
    pub fn parse(text: &str, levels: usize, filter: &str) -> Result<Self, String> {
        let open_ended = filter.ends_with('#');
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let close = rest
                        .find('}')
                        .ok_or_else(|| format!("{text:?}: a {{ without its }}"))?;
                    let n: usize = rest[1..close].parse().map_err(|_| {
                        format!(
                            "{text:?}: {{{}}} is not a topic level; write {{1}} for the first",
                            &rest[1..close]
                        )
                    })?;
                    if n == 0 || (n > levels && !open_ended) {
                        return Err(format!(
                            "{text:?}: {{{n}}} is not a level of {filter:?} (1 to {levels})"
                        ));
                    }
                    pieces.push(Piece::Level(n - 1));
                    rest = &rest[close + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    pieces.push(Piece::Text(rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        let template = Self { pieces };
        // Literal text must be valid as it stands; topic levels are cleaned when rendered.
        let sample: String = template
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Level(_) => "x",
            })
            .collect();
        TagName::parse(sample).map_err(|e| format!("{text:?} does not give a tag name: {e}"))?;
        Ok(template)
    }

    /// The tag name for a message on `topic`.
    pub fn render(&self, topic: &str) -> Result<TagName, JsonProblem> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut name = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => name.push_str(t),
                Piece::Level(i) => name.push_str(
                    levels
                        .get(*i)
                        .ok_or(JsonProblem::NoLevel { level: i + 1 })?,
                ),
            }
        }
        TagName::parse_lossy(&name).map_err(|e| JsonProblem::BadTag(e.to_string()))
    }
}

/// Why a mapping gave no reading for a message (or gave one with a doubt).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonProblem {
    #[error("message is {len} bytes; the limit is {MAX_JSON_BYTES}")]
    TooLarge { len: usize },
    #[error("message is not JSON: {0}")]
    NotJson(String),
    #[error("the topic has no level {level} for the tag name")]
    NoLevel { level: usize },
    #[error("the tag name is not valid: {0}")]
    BadTag(String),
    #[error("no value at {0:?}")]
    NoValue(String),
    #[error("the value at {0:?} is not a number, a boolean or text holding a number")]
    NotNumber(String),
    #[error("no valid time at {pointer:?} ({reason}); the time of receipt is used")]
    BadTime { pointer: String, reason: String },
    #[error("no valid quality at {0:?}; the reading is marked uncertain")]
    BadQuality(String),
}

impl JsonProblem {
    /// A stable short reason, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            JsonProblem::TooLarge { .. } => "oversized",
            JsonProblem::NotJson(_) => "malformed",
            JsonProblem::NoLevel { .. } | JsonProblem::BadTag(_) => "bad_name",
            JsonProblem::NoValue(_) | JsonProblem::NotNumber(_) => "wrong_value",
            JsonProblem::BadTime { .. } => "bad_timestamp",
            JsonProblem::BadQuality(_) => "bad_quality",
        }
    }
}

/// The mappings of one source, templates parsed.
#[derive(Debug, Clone)]
pub struct JsonMapper {
    rules: Vec<(JsonMapping, Template)>,
}

impl JsonMapper {
    /// Mappings that passed validation; one that does not parse is left out (validation has
    /// reported it already).
    pub fn new(mappings: &[JsonMapping]) -> Self {
        let rules = mappings
            .iter()
            .filter_map(|m| {
                let levels = m.topic.split('/').count();
                Template::parse(&m.tag, levels, &m.topic)
                    .ok()
                    .map(|t| (m.clone(), t))
            })
            .collect();
        Self { rules }
    }

    /// Whether any mapping's filter matches `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|(m, _)| rumqttc::matches(topic, &m.topic))
    }

    /// The readings one message gives, and what was wrong with it.
    pub fn map(
        &self,
        topic: &str,
        payload: &[u8],
        received: Timestamp,
    ) -> (Vec<Reading>, Vec<JsonProblem>) {
        let mut readings = Vec::new();
        let mut problems = Vec::new();
        if payload.len() > MAX_JSON_BYTES {
            problems.push(JsonProblem::TooLarge { len: payload.len() });
            return (readings, problems);
        }
        let doc: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                problems.push(JsonProblem::NotJson(e.to_string()));
                return (readings, problems);
            }
        };
        for (m, template) in &self.rules {
            if !rumqttc::matches(topic, &m.topic) {
                continue;
            }
            match reading(m, template, topic, &doc, received, &mut problems) {
                Ok(r) => readings.push(r),
                Err(p) => problems.push(p),
            }
        }
        (readings, problems)
    }
}

fn reading(
    m: &JsonMapping,
    template: &Template,
    topic: &str,
    doc: &Value,
    received: Timestamp,
    problems: &mut Vec<JsonProblem>,
) -> Result<Reading, JsonProblem> {
    let tag = template.render(topic)?;
    let (value, mut quality) = match doc.pointer(&m.value) {
        None => return Err(JsonProblem::NoValue(m.value.clone())),
        Some(Value::Null) => (0.0, Quality::Bad),
        Some(v) => (
            number(v).ok_or_else(|| JsonProblem::NotNumber(m.value.clone()))?,
            Quality::Good,
        ),
    };
    let ts = match &m.timestamp {
        None => received,
        Some(pointer) => match time(doc.pointer(pointer)) {
            Ok(ts) => ts,
            Err(reason) => {
                problems.push(JsonProblem::BadTime {
                    pointer: pointer.clone(),
                    reason,
                });
                received
            }
        },
    };
    if quality == Quality::Good
        && let Some(pointer) = &m.quality
    {
        quality = match doc.pointer(pointer).and_then(quality_of) {
            Some(q) => q,
            None => {
                problems.push(JsonProblem::BadQuality(pointer.clone()));
                Quality::Uncertain
            }
        };
    }
    Ok(Reading {
        tag,
        ts,
        value,
        quality,
    })
}

fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

fn time(v: Option<&Value>) -> Result<Timestamp, String> {
    let micros = match v {
        None => return Err("missing".into()),
        Some(Value::Number(n)) => {
            let ms = n.as_f64().ok_or("not a number")?;
            // Milliseconds with a fraction are common (JavaScript's Date.now() / 1 is not).
            let micros = (ms * 1000.0).round();
            if micros.is_nan() || micros.abs() >= 9.0e15 {
                return Err(format!("{ms} ms is out of range"));
            }
            // In range, checked just above.
            #[allow(clippy::cast_possible_truncation)]
            let micros = micros as i64;
            micros
        }
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("{s:?} is not RFC 3339 time with an offset: {e}"))?
            .timestamp_micros(),
        Some(_) => return Err("neither RFC 3339 text nor milliseconds".into()),
    };
    Ok(Timestamp::from_micros(micros))
}

fn quality_of(v: &Value) -> Option<Quality> {
    match v {
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "good" => Some(Quality::Good),
            "uncertain" => Some(Quality::Uncertain),
            "bad" => Some(Quality::Bad),
            _ => None,
        },
        Value::Bool(true) => Some(Quality::Good),
        Value::Bool(false) => Some(Quality::Bad),
        Value::Number(n) => {
            let code = n.as_u64()?;
            Some(if code >= 192 {
                Quality::Good
            } else if code >= 64 {
                Quality::Uncertain
            } else {
                Quality::Bad
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(topic: &str, tag: &str, value: &str) -> JsonMapping {
        JsonMapping {
            topic: topic.into(),
            tag: tag.into(),
            value: value.into(),
            timestamp: None,
            quality: None,
        }
    }

    fn received() -> Timestamp {
        Timestamp::from_micros(1_796_205_600_000_000)
    }

    #[test]
    fn templates_name_tags_from_topic_levels() {
        let t = Template::parse("{2}.{3}.temp", 4, "plant/+/+/telemetry").unwrap();
        assert_eq!(
            t.render("plant/line 1/press#2/telemetry").unwrap().as_str(),
            "line_1.press_2.temp"
        );
        for (bad, why) in [
            ("{0}.x", "not a level"),
            ("{5}", "not a level"),
            ("{a}", "not a topic level"),
            ("{1", "without its"),
            ("a b{1}", "does not give a tag name"),
        ] {
            let err = Template::parse(bad, 4, "plant/+/+/telemetry").unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        // Past a multi-level wildcard, a level is checked when a message arrives.
        let t = Template::parse("{3}", 2, "plant/#").unwrap();
        assert_eq!(t.render("plant/a"), Err(JsonProblem::NoLevel { level: 3 }));
    }

    #[test]
    fn values_times_and_qualities_are_read_where_the_pointers_say() {
        let mut m = mapping("plant/+/state", "{2}.temp", "/data/temp");
        m.timestamp = Some("/ts".into());
        m.quality = Some("/q".into());
        let mapper = JsonMapper::new(&[m, mapping("plant/+/state", "{2}.running", "/run")]);
        let (readings, problems) = mapper.map(
            "plant/p1/state",
            br#"{"data": {"temp": "41.5"}, "ts": "2026-12-02T10:00:00.250Z", "q": 100, "run": true}"#,
            received(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0].tag.as_str(), "p1.temp");
        assert_eq!(readings[0].value, 41.5);
        assert_eq!(readings[0].quality, Quality::Uncertain);
        assert_eq!(readings[0].ts.to_string(), "2026-12-02T10:00:00.250000Z");
        assert_eq!((readings[1].value, readings[1].ts), (1.0, received()));

        let (readings, _) = mapper.map(
            "plant/p1/state",
            br#"{"data": {"temp": 2}, "ts": 1796205600250.5, "q": "BAD", "run": null}"#,
            received(),
        );
        assert_eq!(readings[0].ts.as_micros(), 1_796_205_600_250_500);
        assert_eq!(readings[0].quality, Quality::Bad);
        assert_eq!(
            (readings[1].value, readings[1].quality),
            (0.0, Quality::Bad)
        );
    }

    #[test]
    fn problems_are_reported_per_mapping() {
        let mut m = mapping("t/#", "x", "/v");
        m.timestamp = Some("/ts".into());
        m.quality = Some("/q".into());
        let mapper = JsonMapper::new(&[m, mapping("t/#", "y", "/missing")]);
        let (readings, problems) = mapper.map(
            "t/a",
            br#"{"v": 3, "ts": "yesterday", "q": "meh"}"#,
            received(),
        );
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].ts, received());
        assert_eq!(readings[0].quality, Quality::Uncertain);
        let reasons: Vec<&str> = problems.iter().map(JsonProblem::reason).collect();
        assert_eq!(reasons, ["bad_timestamp", "bad_quality", "wrong_value"]);

        let (readings, problems) = mapper.map("t/a", b"{not json", received());
        assert!(readings.is_empty());
        assert_eq!(problems[0].reason(), "malformed");
        let (_, problems) = mapper.map("t/a", br#"{"v": [1]}"#, received());
        assert_eq!(problems[0], JsonProblem::NotNumber("/v".into()));
        assert!(!mapper.wants("u/a"));
    }

    #[test]
    fn a_bare_value_is_the_whole_message() {
        let mapper = JsonMapper::new(&[mapping("sensors/+", "{2}", "")]);
        let (readings, problems) = mapper.map("sensors/flow", b"12.25", received());
        assert!(problems.is_empty());
        assert_eq!(readings[0].value, 12.25);
    }

    /// What a broker may hand the mapper: any topic, any bytes, JSON of any shape.
    fn payload() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            "[a-z0-9:. -]{0,12}".prop_map(Value::String),
        ];
        let json = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("(v|ts|q|[a-z]{1,3})", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![
            json.prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a message holds, the mapper answers with readings and problems, never a
        /// panic; every reading has a finite value and a valid name, and a message either
        /// gives readings or says what was wrong.
        #[test]
        fn any_message_is_mapped_or_refused_without_a_panic(
            topic in "[a-z0-9/+# ]{0,24}",
            payload in payload(),
        ) {
            let mut timed = mapping("t/+/x", "{2}.v", "/v");
            timed.timestamp = Some("/ts".into());
            timed.quality = Some("/q".into());
            let mapper = JsonMapper::new(&[
                timed,
                mapping("t/#", "{2}.{3}", "/v/0"),
                mapping("#", "whole", ""),
            ]);
            let (readings, problems) = mapper.map(&topic, &payload, received());
            for r in &readings {
                proptest::prop_assert!(r.value.is_finite(), "{r:?}");
                proptest::prop_assert!(TagName::parse(r.tag.as_str()).is_ok(), "{r:?}");
            }
            for p in &problems {
                proptest::prop_assert!(!p.reason().is_empty());
            }
        }
    }
}
