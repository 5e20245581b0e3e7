use super::*;
use proto::PropertySet;
use proto::PropertyValue;

const T0: u64 = 1_796_205_600_000;

fn topic(text: &str) -> Topic {
    Topic::parse(text).unwrap()
}

fn nbirth(seq: u64, bd: u64, metrics: Vec<Metric>) -> Vec<u8> {
    let mut all = vec![Metric::new(BD_SEQ, DataType::Int64, MetricValue::Long(bd))];
    all.extend(metrics);
    Payload {
        timestamp: Some(T0),
        metrics: all,
        seq: Some(seq),
        ..Payload::default()
    }
    .encode_to_vec()
}

fn message(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(T0 + 1000),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn death(bd: u64) -> Vec<u8> {
    Payload {
        metrics: vec![Metric::new(BD_SEQ, DataType::Int64, MetricValue::Long(bd))],
        ..Payload::default()
    }
    .encode_to_vec()
}

fn received() -> Timestamp {
    Timestamp::from_micros(1_800_000_000_000_000)
}

fn values(out: &Outcome) -> Vec<(&str, f64, Quality)> {
    out.readings
        .iter()
        .map(|r| (r.tag.as_str(), r.value, r.quality))
        .collect()
}

/// A node born with two aliased metrics and one text metric.
fn born() -> NodeSession {
    let mut s = NodeSession::new("n1/");
    let out = s.on_message(
        &topic("spBv1.0/plant/NBIRTH/n1"),
        &nbirth(
            0,
            7,
            vec![
                Metric::new("Oil Temp", DataType::Float, MetricValue::Float(41.5)).with_alias(1),
                Metric::new("Cycles", DataType::UInt32, MetricValue::Long(10)).with_alias(2),
                Metric::new("Recipe", DataType::String, MetricValue::String("A".into()))
                    .with_alias(3),
                Metric::new(
                    "Node Control/Rebirth",
                    DataType::Boolean,
                    MetricValue::Boolean(false),
                ),
            ],
        ),
        received(),
    );
    assert_eq!(
        values(&out),
        vec![
            ("n1/Oil_Temp", 41.5, Quality::Good),
            ("n1/Cycles", 10.0, Quality::Good)
        ]
    );
    assert_eq!(out.readings[0].ts, Timestamp::from_micros(T0 as i64 * 1000));
    assert_eq!(
        out.problems,
        vec![Problem::Unsupported {
            metric: "Recipe".into(),
            datatype: 12
        }]
    );
    assert!(!out.rebirth);
    s
}

#[test]
fn topics_parse_and_print() {
    let t = topic("spBv1.0/plant/DDATA/n1/press-2");
    assert_eq!(t.kind, MessageType::DData);
    assert_eq!(t.device.as_deref(), Some("press-2"));
    assert_eq!(t.to_string(), "spBv1.0/plant/DDATA/n1/press-2");
    assert_eq!(
        topic("spBv1.0/plant/NCMD/n1").to_string(),
        Topic::node("plant", MessageType::NCmd, "n1")
    );
    for bad in [
        "spBv1.0/STATE/host",
        "spBv2.0/plant/NDATA/n1",
        "spBv1.0/plant/NDATA/n1/dev",
        "spBv1.0/plant/DDATA/n1",
        "spBv1.0//NDATA/n1",
        "spBv1.0/plant/XDATA/n1",
        "spBv1.0/plant/DDATA/n1/dev/extra",
    ] {
        assert!(Topic::parse(bad).is_err(), "{bad} was accepted");
    }
}

#[test]
fn tag_names_replace_what_a_tag_cannot_hold() {
    assert_eq!(
        tag_name("gw/", Some("Press #2"), "Temp (°C)")
            .unwrap()
            .as_str(),
        "gw/Press__2/Temp___C_"
    );
    assert!(tag_name("", None, &"x".repeat(200)).is_err());
}

#[test]
fn data_by_alias_and_by_name_after_birth() {
    let mut s = born();
    let out = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &message(
            Some(1),
            vec![
                Metric::aliased(1, MetricValue::Float(42.0)).at(T0 + 500),
                Metric {
                    name: Some("Cycles".into()),
                    value: Some(MetricValue::Long(11)),
                    ..Metric::default()
                },
                // Text metrics are skipped quietly after the birth reported them.
                Metric::aliased(3, MetricValue::String("B".into())),
            ],
        ),
        received(),
    );
    assert_eq!(
        values(&out),
        vec![
            ("n1/Oil_Temp", 42.0, Quality::Good),
            ("n1/Cycles", 11.0, Quality::Good)
        ]
    );
    assert_eq!(
        out.readings[0].ts,
        Timestamp::from_micros((T0 as i64 + 500) * 1000)
    );
    assert_eq!(
        out.readings[1].ts,
        Timestamp::from_micros((T0 as i64 + 1000) * 1000)
    );
    assert!(out.problems.is_empty(), "{:?}", out.problems);
}

#[test]
fn readings_without_a_time_of_their_own_take_the_receipt_time_and_say_so() {
    let mut s = born();
    let stamped = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &Payload {
            seq: Some(1),
            metrics: vec![
                Metric::aliased(1, MetricValue::Float(42.0)).at(T0 + 500),
                Metric::aliased(2, MetricValue::Long(11)),
            ],
            ..Payload::default()
        }
        .encode_to_vec(),
        received(),
    );
    assert_eq!(stamped.readings[1].ts, received());
    assert!(stamped.stamped_on_receipt);
    // Each metric dated, or the payload: nothing takes the receipt time.
    let dated = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &message(Some(2), vec![Metric::aliased(2, MetricValue::Long(12))]),
        received(),
    );
    assert_eq!(dated.readings.len(), 1);
    assert!(!dated.stamped_on_receipt);
}

#[test]
fn sequence_gaps_and_unknown_aliases_ask_for_a_rebirth() {
    let mut s = born();
    let ndata = topic("spBv1.0/plant/NDATA/n1");
    let out = s.on_message(
        &ndata,
        &message(Some(3), vec![Metric::aliased(1, MetricValue::Float(1.0))]),
        received(),
    );
    assert_eq!(
        out.problems,
        vec![Problem::OutOfSequence {
            expected: 1,
            got: 3
        }]
    );
    assert!(out.rebirth);
    assert_eq!(
        out.readings.len(),
        1,
        "the values of the message are still read"
    );
    // The numbering continues from the node's own: the next one is in order.
    let out = s.on_message(
        &ndata,
        &message(Some(4), vec![Metric::aliased(9, MetricValue::Float(1.0))]),
        received(),
    );
    assert_eq!(out.problems, vec![Problem::UnknownAlias(9)]);
    assert!(out.rebirth);
}

#[test]
fn sequence_numbers_wrap_after_255() {
    let mut s = NodeSession::new("");
    s.on_message(
        &topic("spBv1.0/g/NBIRTH/n"),
        &nbirth(
            254,
            0,
            vec![Metric::new("v", DataType::Int16, MetricValue::Int(1)).with_alias(1)],
        ),
        received(),
    );
    for seq in [255, 0, 1] {
        let out = s.on_message(
            &topic("spBv1.0/g/NDATA/n"),
            &message(
                Some(seq),
                vec![Metric::aliased(1, MetricValue::Int(0xFFFF))],
            ),
            received(),
        );
        assert!(out.problems.is_empty(), "seq {seq}: {:?}", out.problems);
        assert_eq!(out.readings[0].value, -1.0, "Int16 0xFFFF is -1");
    }
}

#[test]
fn data_before_birth_is_refused_with_a_rebirth_request() {
    let mut s = NodeSession::new("");
    let out = s.on_message(
        &topic("spBv1.0/g/NDATA/n"),
        &message(Some(5), vec![Metric::aliased(1, MetricValue::Float(1.0))]),
        received(),
    );
    assert!(out.readings.is_empty());
    assert_eq!(
        out.problems,
        vec![Problem::NoBirth {
            kind: "NDATA",
            birth: "NBIRTH"
        }]
    );
    assert!(out.rebirth);
    assert!(out.problems[0].is_fatal());
}

#[test]
fn node_death_marks_every_metric_bad_but_a_stale_will_is_ignored() {
    let mut s = born();
    s.on_message(
        &topic("spBv1.0/plant/DBIRTH/n1/pump"),
        &message(
            Some(1),
            vec![Metric::new("rpm", DataType::Double, MetricValue::Double(1450.0)).with_alias(10)],
        ),
        received(),
    );
    // The will of an earlier connection (bdSeq 6) changes nothing.
    let out = s.on_message(&topic("spBv1.0/plant/NDEATH/n1"), &death(6), received());
    assert!(out.readings.is_empty());
    assert!(s.is_online());
    let out = s.on_message(&topic("spBv1.0/plant/NDEATH/n1"), &death(7), received());
    assert_eq!(
        values(&out),
        vec![
            ("n1/Oil_Temp", 0.0, Quality::Bad),
            ("n1/Cycles", 0.0, Quality::Bad),
            ("n1/pump/rpm", 0.0, Quality::Bad),
        ]
    );
    assert!(out.readings.iter().all(|r| r.ts == received()));
    assert!(!s.is_online());
}

#[test]
fn devices_are_born_die_and_are_born_again() {
    let mut s = born();
    let dbirth = topic("spBv1.0/plant/DBIRTH/n1/pump");
    let out = s.on_message(
        &dbirth,
        &message(
            Some(1),
            vec![Metric::new("rpm", DataType::Double, MetricValue::Double(1450.0)).with_alias(10)],
        ),
        received(),
    );
    assert_eq!(values(&out), vec![("n1/pump/rpm", 1450.0, Quality::Good)]);
    let out = s.on_message(
        &topic("spBv1.0/plant/DDEATH/n1/pump"),
        &message(Some(2), vec![]),
        received(),
    );
    assert_eq!(values(&out), vec![("n1/pump/rpm", 0.0, Quality::Bad)]);
    let out = s.on_message(
        &topic("spBv1.0/plant/DDATA/n1/pump"),
        &message(Some(3), vec![Metric::aliased(10, MetricValue::Double(1.0))]),
        received(),
    );
    assert!(out.rebirth && out.readings.is_empty(), "{out:?}");
    // Born again with another alias: the old alias is gone, the tag stays the same.
    s.on_message(
        &dbirth,
        &message(
            Some(4),
            vec![Metric::new("rpm", DataType::Double, MetricValue::Double(1.0)).with_alias(11)],
        ),
        received(),
    );
    let out = s.on_message(
        &topic("spBv1.0/plant/DDATA/n1/pump"),
        &message(
            Some(5),
            vec![
                Metric::aliased(11, MetricValue::Double(2.0)),
                Metric::aliased(10, MetricValue::Double(3.0)),
            ],
        ),
        received(),
    );
    assert_eq!(values(&out), vec![("n1/pump/rpm", 2.0, Quality::Good)]);
    assert_eq!(out.problems, vec![Problem::UnknownAlias(10)]);
    let tags: Vec<&str> = s.tags().map(TagName::as_str).collect();
    assert_eq!(
        tags,
        ["n1/Oil_Temp", "n1/Cycles", "n1/Recipe", "n1/pump/rpm"]
    );
}

#[test]
fn nulls_nans_and_quality_properties_lower_the_quality() {
    let mut s = born();
    let quality = |code: u32| PropertySet {
        keys: vec!["Quality".into()],
        values: vec![PropertyValue {
            r#type: Some(3),
            is_null: None,
            value: Some(PropertyValueKind::Int(code)),
        }],
    };
    let mut uncertain = Metric::aliased(1, MetricValue::Float(5.0));
    uncertain.properties = Some(quality(64));
    let mut bad = Metric::aliased(2, MetricValue::Long(5));
    bad.properties = Some(quality(0));
    let mut null = Metric::aliased(1, MetricValue::Float(0.0));
    null.is_null = Some(true);
    let out = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &message(
            Some(1),
            vec![
                uncertain,
                bad,
                null,
                Metric::aliased(1, MetricValue::Float(f32::NAN)),
                Metric::aliased(1, MetricValue::Boolean(true)),
            ],
        ),
        received(),
    );
    assert_eq!(
        values(&out),
        vec![
            ("n1/Oil_Temp", 5.0, Quality::Uncertain),
            ("n1/Cycles", 5.0, Quality::Bad),
            ("n1/Oil_Temp", 0.0, Quality::Bad),
            ("n1/Oil_Temp", 0.0, Quality::Bad),
        ]
    );
    assert_eq!(
        out.problems,
        vec![Problem::WrongValue {
            metric: "n1/Oil_Temp".into()
        }]
    );
}

#[test]
fn every_numeric_type_reads_its_value() {
    use DataType as T;
    use MetricValue as V;
    let cases = [
        (T::Int8, V::Int(0xFFFF_FF80), -128.0),
        (T::Int8, V::Int(0x80), -128.0),
        (T::Int16, V::Int(0x8000), -32768.0),
        (T::Int32, V::Int(0xFFFF_FFFF), -1.0),
        (T::Int64, V::Long(u64::MAX), -1.0),
        (T::UInt8, V::Int(255), 255.0),
        (T::UInt16, V::Int(65535), 65535.0),
        (T::UInt32, V::Int(4_000_000_000), 4e9),
        (T::UInt32, V::Long(4_000_000_000), 4e9),
        (T::UInt64, V::Long(1 << 40), (1u64 << 40) as f64),
        (T::Float, V::Float(1.5), 1.5),
        (T::Double, V::Double(-2.25), -2.25),
        (T::Boolean, V::Boolean(true), 1.0),
        (T::Boolean, V::Boolean(false), 0.0),
    ];
    for (datatype, value, expected) in cases {
        assert_eq!(
            number(datatype, &value),
            Some(expected),
            "{datatype:?} {value:?}"
        );
    }
    assert_eq!(number(T::Int32, &V::Float(1.0)), None);
    assert_eq!(number(T::Boolean, &V::Int(1)), None);
    assert_eq!(number(T::String, &V::String("1".into())), None);
}

#[test]
fn garbage_and_oversized_payloads_are_reported() {
    let mut s = born();
    let t = topic("spBv1.0/plant/NDATA/n1");
    let out = s.on_message(&t, &[0xFF, 0xFF, 0xFF], received());
    assert!(
        matches!(out.problems[..], [Problem::Malformed(_)]),
        "{out:?}"
    );
    let out = s.on_message(&t, &vec![0; MAX_PAYLOAD_BYTES + 1], received());
    assert_eq!(out.problems[0].reason(), "oversized");
    let out = s.on_message(
        &t,
        &message(
            Some(1),
            vec![Metric::aliased(1, MetricValue::Float(1.0)).at(u64::MAX)],
        ),
        received(),
    );
    assert_eq!(out.problems[0].reason(), "bad_timestamp");
}

#[test]
fn a_rebirth_request_is_an_ncmd_payload() {
    let p = Payload::decode(rebirth_request(T0).as_slice()).unwrap();
    assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
    assert_eq!(p.metrics[0].value, Some(MetricValue::Boolean(true)));
}

#[test]
fn derived_numbers_differ_by_topic_and_bytes() {
    let a = derived_seq("spBv1.0/g/NDATA/n", b"x");
    assert!((DERIVED_SEQ_BASE..1 << 63).contains(&a));
    assert_eq!(a, derived_seq("spBv1.0/g/NDATA/n", b"x"));
    assert_ne!(a, derived_seq("spBv1.0/g/NDATA/m", b"x"));
    assert_ne!(a, derived_seq("spBv1.0/g/NDATA/n", b"y"));
}

#[test]
fn metrics_that_cannot_become_tags_are_skipped_without_asking_again() {
    let mut s = NodeSession::new("");
    let long = "m".repeat(200);
    let out = s.on_message(
        &topic("spBv1.0/g/NBIRTH/n"),
        &nbirth(
            0,
            1,
            vec![
                Metric::new(&long, DataType::Double, MetricValue::Double(1.0)).with_alias(1),
                Metric {
                    alias: Some(2),
                    datatype: Some(DataType::Double.code()),
                    value: Some(MetricValue::Double(2.0)),
                    ..Metric::default()
                },
                Metric::new("ok", DataType::Double, MetricValue::Double(3.0)).with_alias(3),
            ],
        ),
        received(),
    );
    let reasons: Vec<&str> = out.problems.iter().map(Problem::reason).collect();
    assert_eq!(reasons, ["bad_name", "unknown_metric"]);
    assert_eq!(values(&out), vec![("ok", 3.0, Quality::Good)]);
    let out = s.on_message(
        &topic("spBv1.0/g/NDATA/n"),
        &message(
            Some(1),
            vec![
                Metric::aliased(1, MetricValue::Double(1.5)),
                Metric::aliased(2, MetricValue::Double(2.5)),
                Metric::aliased(3, MetricValue::Double(3.5)),
            ],
        ),
        received(),
    );
    assert!(out.problems.is_empty() && !out.rebirth, "{out:?}");
    assert_eq!(values(&out), vec![("ok", 3.5, Quality::Good)]);
}

#[test]
fn a_device_death_is_dated_by_its_payload() {
    let mut s = born();
    s.on_message(
        &topic("spBv1.0/plant/DBIRTH/n1/pump"),
        &message(
            Some(1),
            vec![Metric::new("rpm", DataType::Double, MetricValue::Double(1.0)).with_alias(10)],
        ),
        received(),
    );
    let out = s.on_message(
        &topic("spBv1.0/plant/DDEATH/n1/pump"),
        &message(Some(2), vec![]),
        received(),
    );
    assert_eq!(
        out.readings[0].ts,
        Timestamp::from_micros((T0 as i64 + 1000) * 1000)
    );
}

#[test]
fn rebirth_requests_are_spaced_per_node() {
    let mut requests = RebirthRequests::default();
    let start = std::time::Instant::now();
    let n1 = topic("spBv1.0/plant/NDATA/n1");
    let (ncmd, payload) = requests.due(&n1, start, received()).unwrap();
    assert_eq!(ncmd, "spBv1.0/plant/NCMD/n1");
    assert_eq!(payload, rebirth_request(1_800_000_000_000));
    assert!(
        requests
            .due(&n1, start + std::time::Duration::from_secs(4), received())
            .is_none()
    );
    assert!(
        requests
            .due(&topic("spBv1.0/plant/NDATA/n2"), start, received())
            .is_some()
    );
    assert!(
        requests
            .due(&n1, start + REBIRTH_INTERVAL, received())
            .is_some()
    );
}

#[test]
fn rebirth_requests_forget_nodes_asked_long_ago_once_many_were_asked() {
    let mut requests = RebirthRequests::default();
    let start = std::time::Instant::now();
    let node = |i: usize| topic(&format!("spBv1.0/plant/NDATA/n{i}"));
    for i in 0..RebirthRequests::TRACKED {
        assert!(requests.due(&node(i), start, received()).is_some());
    }
    assert_eq!(requests.len(), RebirthRequests::TRACKED);
    // Within the interval nothing can be forgotten: each is still spaced.
    let soon = start + std::time::Duration::from_secs(1);
    assert!(requests.due(&node(0), soon, received()).is_none());
    assert!(
        requests
            .due(&node(RebirthRequests::TRACKED), soon, received())
            .is_some()
    );
    assert_eq!(requests.len(), RebirthRequests::TRACKED + 1);
    // After it, the next new node makes room: only what was asked within the interval stays.
    let later = start + REBIRTH_INTERVAL + std::time::Duration::from_millis(500);
    assert!(
        requests
            .due(&node(RebirthRequests::TRACKED + 1), later, received())
            .is_some()
    );
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .due(&node(RebirthRequests::TRACKED), later, received())
            .is_none(),
        "asked a few seconds ago: still spaced"
    );
}

#[test]
fn births_and_deaths_that_take_effect_are_named_as_changes() {
    let mut s = NodeSession::new("");
    let out = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &message(Some(0), vec![]),
        received(),
    );
    assert_eq!(out.change, None, "data before a birth changes nothing");
    let out = s.on_message(
        &topic("spBv1.0/plant/NBIRTH/n1"),
        &nbirth(0, 7, vec![]),
        received(),
    );
    assert_eq!(out.change, Some(SessionChange::NodeBorn));
    let pump = |kind: &str| topic(&format!("spBv1.0/plant/{kind}/n1/pump"));
    let out = s.on_message(&pump("DBIRTH"), &message(Some(1), vec![]), received());
    assert_eq!(out.change, Some(SessionChange::DeviceBorn("pump".into())));
    let out = s.on_message(&pump("DDATA"), &message(Some(2), vec![]), received());
    assert_eq!(out.change, None);
    let out = s.on_message(&pump("DDEATH"), &message(Some(3), vec![]), received());
    assert_eq!(out.change, Some(SessionChange::DeviceDied("pump".into())));
    let out = s.on_message(&pump("DDEATH"), &message(Some(4), vec![]), received());
    assert_eq!(out.change, None, "a device that is not born cannot die");
    let out = s.on_message(&topic("spBv1.0/plant/NDEATH/n1"), &death(6), received());
    assert_eq!(out.change, None, "a stale will");
    let out = s.on_message(&topic("spBv1.0/plant/NDEATH/n1"), &death(7), received());
    assert_eq!(out.change, Some(SessionChange::NodeDied));
}

/// An `NBIRTH` (bdSeq 7, `Oil Temp` by alias 1) and a `DBIRTH` of a pump (`rpm` by alias 10).
fn node_and_pump_births() -> (Vec<u8>, Vec<u8>) {
    let node = nbirth(
        0,
        7,
        vec![Metric::new("Oil Temp", DataType::Float, MetricValue::Float(41.5)).with_alias(1)],
    );
    let pump = message(
        Some(1),
        vec![Metric::new("rpm", DataType::Double, MetricValue::Double(1450.0)).with_alias(10)],
    );
    (node, pump)
}

#[test]
fn a_restored_session_reads_data_as_the_births_named_it() {
    let (node_birth, pump_birth) = node_and_pump_births();
    let mut s = NodeSession::restore("n1/", &node_birth, [("pump", pump_birth.as_slice())]);
    assert!(s.is_online());
    // Messages 2..=40 went by while the host was down: the first one read is taken as due.
    let out = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &message(Some(41), vec![Metric::aliased(1, MetricValue::Float(42.0))]),
        received(),
    );
    assert_eq!(values(&out), vec![("n1/Oil_Temp", 42.0, Quality::Good)]);
    assert!(out.problems.is_empty() && !out.rebirth, "{out:?}");
    let out = s.on_message(
        &topic("spBv1.0/plant/DDATA/n1/pump"),
        &message(
            Some(42),
            vec![Metric::aliased(10, MetricValue::Double(1460.0))],
        ),
        received(),
    );
    assert_eq!(values(&out), vec![("n1/pump/rpm", 1460.0, Quality::Good)]);
    assert!(out.problems.is_empty(), "{out:?}");
    // From there on, gaps count.
    let out = s.on_message(
        &topic("spBv1.0/plant/NDATA/n1"),
        &message(Some(44), vec![]),
        received(),
    );
    assert_eq!(
        out.problems,
        vec![Problem::OutOfSequence {
            expected: 43,
            got: 44
        }]
    );
    // The birth's bdSeq came back too: an earlier connection's will is still ignored.
    let out = s.on_message(&topic("spBv1.0/plant/NDEATH/n1"), &death(6), received());
    assert!(out.readings.is_empty() && s.is_online());
    let out = s.on_message(&topic("spBv1.0/plant/NDEATH/n1"), &death(7), received());
    assert_eq!(out.readings.len(), 2);
    assert!(!s.is_online());
}

#[test]
fn a_birth_that_does_not_decode_restores_nothing() {
    let s = NodeSession::restore("", b"\xff\xff not protobuf", []);
    assert!(!s.is_online());
    let good = nbirth(0, 1, vec![]);
    let s = NodeSession::restore("", &good, [("pump", &b"\xff\xff"[..])]);
    assert!(s.is_online());
    let mut s = s;
    let out = s.on_message(
        &topic("spBv1.0/plant/DDATA/n1/pump"),
        &message(Some(5), vec![]),
        received(),
    );
    assert!(out.rebirth, "the device was not restored: {out:?}");
}

#[test]
fn kept_births_follow_the_changes_and_round_trip() {
    let (node, pump) = node_and_pump_births();
    let kept = KeptBirths::apply(None, &SessionChange::DeviceBorn("pump".into()), &pump);
    assert_eq!(
        kept, None,
        "a device birth without a node birth keeps nothing"
    );
    let kept = KeptBirths::apply(None, &SessionChange::NodeBorn, &node);
    let kept = KeptBirths::apply(kept, &SessionChange::DeviceBorn("pump".into()), &pump);
    let kept = KeptBirths::apply(kept, &SessionChange::DeviceBorn("fan".into()), &pump);
    let kept = KeptBirths::apply(kept, &SessionChange::DeviceDied("fan".into()), &[]).unwrap();
    assert_eq!(kept.devices.keys().collect::<Vec<_>>(), ["pump"]);
    let again = KeptBirths::decode(&kept.encode()).unwrap();
    assert_eq!(again, kept);
    let mut s = again.restore("n1/");
    let out = s.on_message(
        &topic("spBv1.0/plant/DDATA/n1/pump"),
        &message(Some(9), vec![Metric::aliased(10, MetricValue::Double(1.0))]),
        received(),
    );
    assert_eq!(values(&out), vec![("n1/pump/rpm", 1.0, Quality::Good)]);
    assert_eq!(
        KeptBirths::apply(Some(kept), &SessionChange::NodeDied, &[]),
        None
    );
    assert!(KeptBirths::decode(b"\xff\xff\xff").is_err());
}
