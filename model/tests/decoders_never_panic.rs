//! Robustness of the decoders that read what the network hands ingest (and the edge agent's
//! kept Sparkplug B births, read back from disk): any bytes and any
//! damage to a valid message give a value or an error, never a panic, and what decodes
//! encodes back to itself. Property tests over random and mutated input (coverage-guided
//! fuzzing needs a nightly toolchain; these run in every test run).

use model::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use model::sparkplug::{KeptBirths, NodeSession, Topic};
use model::wire::{Batch, Point};
use model::{GatewayId, Quality, TagName, Timestamp};
use proptest::prelude::*;
use prost::Message as _;

fn valid_batch() -> Vec<u8> {
    let tags = vec![
        TagName::parse("press-1.bearing_temp").expect("a tag name"),
        TagName::parse("press-1.vibration").expect("a tag name"),
    ];
    let points = (0..20)
        .map(|i| Point {
            tag: i % 2,
            ts: Timestamp::from_micros(1_796_205_600_000_000 + i64::from(i) * 1000),
            value: f64::from(i) * 1.5,
            quality: Quality::Good,
        })
        .collect();
    Batch {
        gateway: GatewayId::parse("gw-1").expect("a gateway id"),
        seq: 42,
        tags,
        points,
    }
    .encode()
}

/// The births file of a node with one device, as the edge agent keeps it.
fn kept_births() -> Vec<u8> {
    let mut kept = KeptBirths {
        node: valid_sparkplug(),
        ..KeptBirths::default()
    };
    kept.devices.insert("d".into(), valid_sparkplug());
    kept.encode()
}

fn valid_sparkplug() -> Vec<u8> {
    Payload {
        timestamp: Some(1_796_205_600_000),
        seq: Some(1),
        metrics: vec![
            Metric::aliased(1, MetricValue::Float(41.5)).at(1_796_205_600_100),
            Metric::new("rpm", DataType::UInt32, MetricValue::Long(1450)).with_alias(2),
            Metric::new(
                "Node Control/Rebirth",
                DataType::Boolean,
                MetricValue::Boolean(false),
            ),
        ],
        ..Payload::default()
    }
    .encode_to_vec()
}

/// A session that has seen a birth naming aliases 1 and 2.
fn born_session() -> NodeSession {
    let mut session = NodeSession::new("n/");
    let birth = Payload {
        seq: Some(0),
        metrics: vec![
            Metric::new("temp", DataType::Float, MetricValue::Float(1.0)).with_alias(1),
            Metric::new("rpm", DataType::UInt32, MetricValue::Long(1)).with_alias(2),
        ],
        ..Payload::default()
    };
    let topic = Topic::parse("spBv1.0/g/NBIRTH/n").expect("a topic");
    session.on_message(&topic, &birth.encode_to_vec(), Timestamp::from_micros(0));
    session
}

const VALID_JSON: &str = r#"{"seq": 17, "readings": [
    {"tag": "press-1.oil_temp", "value": 42.5, "ts": "2026-12-02T10:00:00.250Z"},
    {"tag": "press-1.speed", "value": -1, "ts": 1796205601250, "quality": "uncertain"}]}"#;

/// A valid message with some of its bytes changed, some cut off, or some added.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        prop::collection::vec((0..len, any::<u8>()), 0..8),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(flips, keep, tail)| {
            let mut bytes = valid.clone();
            for (at, b) in flips {
                bytes[at] = b;
            }
            bytes.truncate(keep.max(1));
            bytes.extend(tail);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn wire_batches_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Batch::decode(&bytes);
    }

    #[test]
    fn damaged_wire_batches(bytes in mutated(valid_batch())) {
        if let Ok(batch) = Batch::decode(&bytes) {
            prop_assert_eq!(Batch::decode(&batch.encode()), Ok(batch));
        }
    }

    #[test]
    fn json_batches_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = model::json_batch::decode(&GatewayId::parse("gw-1").expect("a gateway id"), &bytes);
    }

    #[test]
    fn damaged_json_batches(bytes in mutated(VALID_JSON.as_bytes().to_vec())) {
        let gw = GatewayId::parse("gw-1").expect("a gateway id");
        if let Ok(batch) = model::json_batch::decode(&gw, &bytes) {
            prop_assert!(batch.points.iter().all(|p| p.value.is_finite()));
            prop_assert!(batch.points.iter().all(|p| (p.tag as usize) < batch.tags.len()));
        }
    }

    #[test]
    fn json_shaped_text(text in r#"\{("(seq|readings|tag|value|ts|quality)": ?(-?[0-9]{1,25}(\.[0-9]+)?(e[0-9]{1,4})?|"[a-z0-9:.T+-]{0,30}"|\[|\{|\]|\}|,|null|true) ?,? ?){0,12}\}?"#) {
        let _ = model::json_batch::decode(&GatewayId::parse("gw-1").expect("a gateway id"), text.as_bytes());
    }

    #[test]
    fn topics_of_any_text(text in ".{0,120}") {
        let _ = model::topic::parse_readings_topic(&text);
        let _ = Topic::parse(&text);
    }

    #[test]
    fn damaged_sparkplug_payloads(bytes in mutated(valid_sparkplug())) {
        let mut session = born_session();
        for kind in ["NDATA", "NBIRTH", "NDEATH"] {
            let topic = Topic::parse(&format!("spBv1.0/g/{kind}/n")).expect("a topic");
            let out = session.on_message(&topic, &bytes, Timestamp::from_micros(0));
            prop_assert!(out.readings.iter().all(|r| r.value.is_finite()));
        }
    }

    #[test]
    fn damaged_kept_births(bytes in mutated(kept_births())) {
        if let Ok(kept) = KeptBirths::decode(&bytes) {
            prop_assert_eq!(KeptBirths::decode(&kept.encode()), Ok(kept.clone()));
            let mut session = kept.restore("n/");
            let topic = Topic::parse("spBv1.0/g/DDATA/n/d").expect("a topic");
            let _ = session.on_message(&topic, &valid_sparkplug(), Timestamp::from_micros(0));
        }
    }

    #[test]
    fn sparkplug_payloads_of_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut session = born_session();
        let topic = Topic::parse("spBv1.0/g/DDATA/n/d").expect("a topic");
        let _ = session.on_message(&topic, &bytes, Timestamp::from_micros(0));
    }
}
