//! Kept Sparkplug B births, as read back at a start: any bytes as an edge agent's births file
//! (`model::sparkplug::KeptBirths`) decode or give an error, decoded births encode to the same
//! births again, and the session restored from them, or from any bytes as the node's and a
//! device's birth (what ingest's `sparkplug_births` rows hold), reads the node's next data
//! into finite readings, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model::Timestamp;
use model::sparkplug::proto::{Metric, MetricValue, Payload};
use model::sparkplug::{KeptBirths, NodeSession, Topic};
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(kept) = KeptBirths::decode(data) {
        let again = KeptBirths::decode(&kept.encode()).expect("encoded births decode");
        assert_eq!(again, kept);
        follow(kept.restore("g/n/"));
    }
    // The same bytes as a node's birth and as its device's, as a damaged file may hold.
    follow(NodeSession::restore("g/n/", data, [("d", data)]));
});

/// Data by alias (one alias not finite) for the node and its device, after the restore.
fn follow(mut session: NodeSession) {
    let data = Payload {
        seq: Some(1),
        metrics: vec![
            Metric::aliased(1, MetricValue::Float(1.5)),
            Metric::aliased(2, MetricValue::Long(7)),
            Metric::aliased(3, MetricValue::Double(f64::NAN)),
        ],
        ..Payload::default()
    }
    .encode_to_vec();
    let now = Timestamp::from_micros(0);
    for name in ["spBv1.0/g/NDATA/n", "spBv1.0/g/DDATA/n/d"] {
        let topic = Topic::parse(name).expect("a Sparkplug B topic");
        let out = session.on_message(&topic, &data, now);
        assert!(out.readings.iter().all(|r| r.value.is_finite()));
    }
}
