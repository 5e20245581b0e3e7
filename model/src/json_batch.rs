//! The JSON form of a reading batch, for publishers that are not our edge agents (a SCADA
//! export, a vendor gateway, a script), on `maintainpro/v1/<tenant>/<gateway>/readings/json`:
//!
//! ```json
//! {"seq": 17,
//!  "readings": [
//!    {"tag": "press-1.oil_temp", "value": 42.5, "ts": "2026-12-02T10:00:00.250Z"},
//!    {"tag": "press-1.oil_temp", "value": 42.7, "ts": 1796205601250, "quality": "uncertain"}
//!  ]}
//! ```
//!
//! - `readings`: up to [`MAX_POINTS`] objects, naming at most [`MAX_TAGS`] distinct tags, with `tag` (a registered tag of the topic's
//!   gateway), `value` (a finite number), `ts` (RFC 3339 text with an offset, or an integer of
//!   milliseconds since the Unix epoch) and optional `quality` (`good`, the default,
//!   `uncertain` or `bad`). Other fields are refused, so that a misspelt one is not ignored.
//! - `seq`: optional, below 2^62: the publisher's batch number on this gateway. Ingest stores
//!   a gateway's batch once per number, as it does for edge agents: a publisher that numbers
//!   its batches gets exactly-once storage even when it publishes one again after a restart.
//!   Without it the number is derived from the payload's bytes (SHA-256, in `[2^62, 2^63)`),
//!   so a redelivered message is still stored once, but the same readings sent again with
//!   other formatting are stored again. A JSON publisher and an edge agent should not share a
//!   gateway code: their numbers would share one ledger.
//!
//! Pure: [`decode`] turns bytes into the same [`Batch`] the wire format gives.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::wire::{Batch, MAX_MESSAGE_BYTES, MAX_POINTS, MAX_TAGS};
use crate::{GatewayId, Quality, Reading, TagName, Timestamp};

/// Explicit sequence numbers stay below this; derived ones are at or above it.
pub const DERIVED_SEQ_BASE: u64 = 1 << 62;

/// Why a JSON message is not a valid batch. Each reason is stable text kept with a dead letter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonBatchError {
    #[error("message is {len} bytes; the limit is {MAX_MESSAGE_BYTES}")]
    TooLarge { len: usize },
    #[error("not a JSON reading batch: {0}")]
    Malformed(String),
    #[error("batch has {0} readings; the limit is {MAX_POINTS}")]
    TooMany(usize),
    #[error("batch names {0} distinct tags; the limit is {MAX_TAGS}")]
    TooManyTags(usize),
    #[error("seq {0} is not below 2^62")]
    BadSequence(u64),
    #[error("readings[{index}].tag: {reason}")]
    BadTag { index: usize, reason: String },
    #[error("readings[{index}].value is not a finite number")]
    NonFinite { index: usize },
    #[error("readings[{index}].ts: {reason}")]
    BadTime { index: usize, reason: String },
    #[error("readings[{index}].quality {given:?} is not good, uncertain or bad")]
    BadQuality { index: usize, given: String },
}

impl JsonBatchError {
    /// The dead-letter reason.
    pub fn reason(&self) -> &'static str {
        match self {
            JsonBatchError::TooLarge { .. } => "oversized",
            JsonBatchError::Malformed(_) => "malformed_json",
            JsonBatchError::TooMany(_) => "too_many",
            JsonBatchError::TooManyTags(_) => "too_many_tags",
            JsonBatchError::BadSequence(_) => "bad_sequence",
            JsonBatchError::BadTag { .. } => "bad_tag",
            JsonBatchError::NonFinite { .. } => "non_finite_value",
            JsonBatchError::BadTime { .. } => "bad_timestamp",
            JsonBatchError::BadQuality { .. } => "bad_quality",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBatch {
    seq: Option<u64>,
    readings: Vec<JsonReading>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonReading {
    tag: String,
    value: f64,
    ts: JsonTime,
    quality: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonTime {
    Millis(i64),
    Text(String),
}

/// Decodes a JSON batch published on `gateway`'s topic.
pub fn decode(gateway: &GatewayId, payload: &[u8]) -> Result<Batch, JsonBatchError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(JsonBatchError::TooLarge { len: payload.len() });
    }
    let malformed = |e: &dyn std::fmt::Display| JsonBatchError::Malformed(e.to_string());
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parsed: JsonBatch = serde_path_to_error::deserialize(&mut de).map_err(|e| malformed(&e))?;
    de.end().map_err(|e| malformed(&e))?;
    if parsed.readings.len() > MAX_POINTS {
        return Err(JsonBatchError::TooMany(parsed.readings.len()));
    }
    let seq = match parsed.seq {
        Some(seq) if seq >= DERIVED_SEQ_BASE => return Err(JsonBatchError::BadSequence(seq)),
        Some(seq) => seq,
        None => derived_seq(payload),
    };
    let mut readings = Vec::with_capacity(parsed.readings.len());
    for (index, r) in parsed.readings.into_iter().enumerate() {
        let tag = TagName::parse(r.tag).map_err(|e| JsonBatchError::BadTag {
            index,
            reason: e.to_string(),
        })?;
        if !r.value.is_finite() {
            return Err(JsonBatchError::NonFinite { index });
        }
        let ts = time(&r.ts).map_err(|reason| JsonBatchError::BadTime { index, reason })?;
        let quality = match r.quality.as_deref() {
            None | Some("good") => Quality::Good,
            Some("uncertain") => Quality::Uncertain,
            Some("bad") => Quality::Bad,
            Some(other) => {
                return Err(JsonBatchError::BadQuality {
                    index,
                    given: other.chars().take(40).collect(),
                });
            }
        };
        readings.push(Reading {
            tag,
            ts,
            value: r.value,
            quality,
        });
    }
    let batch = Batch::from_readings(gateway.clone(), seq, &readings);
    if batch.tags.len() > MAX_TAGS {
        return Err(JsonBatchError::TooManyTags(batch.tags.len()));
    }
    Ok(batch)
}

fn time(ts: &JsonTime) -> Result<Timestamp, String> {
    let micros = match ts {
        JsonTime::Millis(ms) => ms
            .checked_mul(1000)
            .ok_or_else(|| format!("{ms} ms is out of range"))?,
        JsonTime::Text(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("{text:?} is not RFC 3339 time with an offset: {e}"))?
            .timestamp_micros(),
    };
    Ok(Timestamp::from_micros(micros))
}

/// The sequence number of a batch that gives none: from the payload's bytes, in
/// `[DERIVED_SEQ_BASE, 2^63)`.
fn derived_seq(payload: &[u8]) -> u64 {
    let digest = Sha256::digest(payload);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 2) | DERIVED_SEQ_BASE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> GatewayId {
        GatewayId::parse("scada-export").unwrap()
    }

    #[test]
    fn a_batch_decodes_into_the_wire_batch_of_the_same_readings() {
        let payload = br#"{"seq": 17, "readings": [
            {"tag": "press-1.oil_temp", "value": 42.5, "ts": "2026-12-02T10:00:00.250Z"},
            {"tag": "press-1.speed", "value": -1, "ts": 1796205601250, "quality": "uncertain"},
            {"tag": "press-1.oil_temp", "value": 42.7, "ts": "2026-12-02T11:00:01.250+01:00", "quality": "bad"}
        ]}"#;
        let b = decode(&gw(), payload).unwrap();
        assert_eq!(b.seq, 17);
        assert_eq!(b.gateway, gw());
        let names: Vec<&str> = b.tags.iter().map(TagName::as_str).collect();
        assert_eq!(names, ["press-1.oil_temp", "press-1.speed"]);
        let t0 = Timestamp::from_micros(1_796_205_600_250_000);
        assert_eq!(b.points[0].ts, t0);
        assert_eq!(
            b.points[1].ts,
            Timestamp::from_micros(1_796_205_601_250_000)
        );
        assert_eq!(
            b.points[2].ts,
            Timestamp::from_micros(1_796_205_601_250_000)
        );
        let tags: Vec<u32> = b.points.iter().map(|p| p.tag).collect();
        assert_eq!(tags, [0, 1, 0]);
        let qualities: Vec<u8> = b.points.iter().map(|p| p.quality.as_u8()).collect();
        assert_eq!(qualities, [0, 1, 2]);
        // The same readings through the wire format come out the same.
        let round = Batch::decode(&b.encode()).unwrap();
        assert_eq!(round, b);
    }

    #[test]
    fn without_seq_the_number_follows_the_bytes() {
        let one = br#"{"readings": [{"tag": "a", "value": 1, "ts": 0}]}"#;
        let same = decode(&gw(), one).unwrap().seq;
        assert!((DERIVED_SEQ_BASE..1 << 63).contains(&same));
        assert_eq!(
            decode(&gw(), one).unwrap().seq,
            same,
            "a redelivery has the same number"
        );
        let other = br#"{"readings": [{"tag": "a", "value": 2, "ts": 0}]}"#;
        assert_ne!(decode(&gw(), other).unwrap().seq, same);
    }

    #[test]
    fn poison_is_refused_with_its_reason() {
        let cases: [(&[u8], &str); 12] = [
            (b"{\"readings\": [", "malformed_json"),
            (b"[1, 2]", "malformed_json"),
            (br#"{"readings": [], "extra": 1}"#, "malformed_json"),
            (
                br#"{"readings": [{"tag": "a", "value": 1, "ts": 0, "unit": "C"}]}"#,
                "malformed_json",
            ),
            (
                br#"{"readings": [{"tag": "a", "value": "1", "ts": 0}]}"#,
                "malformed_json",
            ),
            (
                br#"{"readings": [{"tag": "a", "value": 1e999, "ts": 0}]}"#,
                "malformed_json",
            ),
            (br#"{"readings": []} trailing"#, "malformed_json"),
            (
                br#"{"seq": 4611686018427387904, "readings": []}"#,
                "bad_sequence",
            ),
            (
                br#"{"readings": [{"tag": "bad tag!", "value": 1, "ts": 0}]}"#,
                "bad_tag",
            ),
            (
                br#"{"readings": [{"tag": "a", "value": 1, "ts": "yesterday"}]}"#,
                "bad_timestamp",
            ),
            (
                br#"{"readings": [{"tag": "a", "value": 1, "ts": "2026-12-02T10:00:00"}]}"#,
                "bad_timestamp",
            ),
            (
                br#"{"readings": [{"tag": "a", "value": 1, "ts": 0, "quality": "fine"}]}"#,
                "bad_quality",
            ),
        ];
        for (payload, reason) in cases {
            let err = decode(&gw(), payload).unwrap_err();
            assert_eq!(
                err.reason(),
                reason,
                "{}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&gw(), &big).unwrap_err().reason(), "oversized");
    }

    #[test]
    fn a_batch_names_at_most_max_tags_tags() {
        let batch = |tags: usize| {
            let readings: Vec<String> = (0..tags)
                .map(|i| format!(r#"{{"tag": "t{i}", "value": 1, "ts": 1796205600000}}"#))
                .collect();
            format!(r#"{{"readings": [{}]}}"#, readings.join(","))
        };
        assert!(decode(&gw(), batch(MAX_TAGS).as_bytes()).is_ok());
        let err = decode(&gw(), batch(MAX_TAGS + 1).as_bytes()).unwrap_err();
        assert_eq!(err, JsonBatchError::TooManyTags(MAX_TAGS + 1));
        assert_eq!(err.reason(), "too_many_tags");
    }
}
