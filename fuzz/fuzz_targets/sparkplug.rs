//! Sparkplug B payloads (`model::sparkplug`) as an edge node's session follows them: any bytes
//! as a birth, data or death of a node or device, after a birth that named aliases, give
//! finite readings or counted problems, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::Timestamp;
use model::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use model::sparkplug::{NodeSession, Topic};
use prost::Message as _;

fn topic(text: &str) -> Topic {
    Topic::parse(text).expect("a Sparkplug B topic")
}

fuzz_target!(|data: &[u8]| {
    let mut session = NodeSession::new("g/n/");
    let birth = Payload {
        seq: Some(0),
        metrics: vec![
            Metric::new("temp", DataType::Float, MetricValue::Float(1.0)).with_alias(1),
            Metric::new("rpm", DataType::UInt32, MetricValue::Long(1)).with_alias(2),
        ],
        ..Payload::default()
    };
    let now = Timestamp::from_micros(0);
    session.on_message(&topic("spBv1.0/g/NBIRTH/n"), &birth.encode_to_vec(), now);
    for kind in ["NDATA", "DBIRTH", "DDATA", "DDEATH", "NDEATH", "NBIRTH"] {
        let name = if kind.starts_with('D') {
            format!("spBv1.0/g/{kind}/n/d")
        } else {
            format!("spBv1.0/g/{kind}/n")
        };
        let out = session.on_message(&topic(&name), data, now);
        assert!(out.readings.iter().all(|r| r.value.is_finite()));
    }
});
