//! Sparkplug B edge nodes straight to ingest, through Mosquitto: group id = tenant, edge node
//! id = gateway. Births name the metrics, data by alias is stored, a death marks every metric
//! bad, a message delivered again is stored once, and what cannot be read is kept as a dead
//! letter while ingest asks the node for a rebirth. Then the simulated edge node publishes a
//! plant. Needs `scripts/test.sh`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use maintainpro_tests::{Plant, publish_all};
use model::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use model::sparkplug::{BD_SEQ, MessageType, REBIRTH_METRIC, Topic};
use model::{TagName, TenantId, Timestamp};
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use server::demo::DEMO_GATEWAY;
use simulators::sparkplug::{NodeSpec, spawn_sparkplug_node};
use simulators::{Scenario, Signal};

fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        seq,
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

/// The birth sequence number metric of an `NBIRTH` or `NDEATH`.
fn bd_seq(n: u64) -> Metric {
    Metric::new(BD_SEQ, DataType::Int64, MetricValue::Long(n))
}

/// The press bearing's temperature as a birth names it: alias 1, `value` at `ms`.
fn bearing_born(value: f64, ms: u64) -> Metric {
    Metric::new(
        "press-1.bearing_temp",
        DataType::Double,
        MetricValue::Double(value),
    )
    .with_alias(1)
    .at(ms)
}

/// Counts the rebirth commands published on `topic`.
async fn watch_commands(broker: &str, topic: String) -> anyhow::Result<Arc<Mutex<usize>>> {
    let (host, port) = model::topic::broker_address(broker)?;
    let options = MqttOptions::new(
        format!("ncmd-{}", uuid::Uuid::new_v4().simple()),
        host,
        port,
    );
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let seen = Arc::new(Mutex::new(0));
    let out = Arc::clone(&seen);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::ConnAck(_)) => {
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let rebirth = Payload::decode(&p.payload[..]).is_ok_and(|p| {
                        p.metrics
                            .iter()
                            .any(|m| m.name.as_deref() == Some(REBIRTH_METRIC))
                    });
                    if rebirth {
                        *out.lock().expect("lock") += 1;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed).await??;
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_nodes_are_stored_once_and_what_cannot_be_read_is_kept() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let group = tenant.to_string();
    let topic = |kind| Topic::node(&group, kind, DEMO_GATEWAY);
    let rebirths = watch_commands(&plant.broker, topic(MessageType::NCmd)).await?;
    let ms = u64::try_from(Timestamp::now().as_micros() / 1000 - 60_000)?;
    let birth = payload(
        Some(0),
        vec![
            bd_seq(1),
            bearing_born(61.5, ms),
            Metric::new(
                "press-1.vibration",
                DataType::Float,
                MetricValue::Float(2.25),
            )
            .with_alias(2)
            .at(ms + 1),
            Metric::new("recipe", DataType::String, MetricValue::String("A".into())).with_alias(3),
        ],
    );
    let data = payload(
        Some(1),
        vec![
            Metric::aliased(1, MetricValue::Double(62.0)).at(ms + 2),
            Metric::aliased(99, MetricValue::Double(1.0)).at(ms + 2),
        ],
    );
    let death = payload(None, vec![bd_seq(1)]);
    // Data before any birth: nothing can be read, the node is asked for its births.
    publish_all(
        &plant.broker,
        &topic(MessageType::NData),
        vec![data.clone()],
    )
    .await?;
    publish_all(&plant.broker, &topic(MessageType::NBirth), vec![birth]).await?;
    // The same data twice: delivered again, stored once.
    publish_all(
        &plant.broker,
        &topic(MessageType::NData),
        vec![data.clone(), data],
    )
    .await?;
    publish_all(&plant.broker, &topic(MessageType::NDeath), vec![death]).await?;
    Plant::eventually(Duration::from_secs(20), "five messages handled", || async {
        let s = plant.services.summary();
        Ok(
            (s.readings_stored >= 5 && s.batches_duplicate >= 1 && s.dead_letters >= 3)
                .then_some(()),
        )
    })
    .await?;

    let (readings, letters) = stored(&plant, tenant).await?;
    let bearing = "press-1.bearing_temp".to_owned();
    let vibration = "press-1.vibration".to_owned();
    assert_eq!(
        readings,
        [
            (bearing.clone(), 61.5, 0),
            (vibration.clone(), 2.25, 0),
            (bearing.clone(), 62.0, 0),
            // The death: every metric bad at the time ingest received it.
            (bearing, 0.0, 2),
            (vibration, 0.0, 2),
        ]
    );
    // Messages written by different writers at once may be numbered in either order.
    let mut reasons: Vec<&str> = letters.iter().map(|(r, _)| r.as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        ["no_birth", "unknown_metric", "unsupported_type"],
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .any(|(r, d)| r == "unknown_metric" && d.contains("alias 99")),
        "{letters:?}"
    );
    assert_eq!(plant.services.summary().batches_duplicate, 1);
    Plant::eventually(Duration::from_secs(10), "a rebirth request", || async {
        Ok((*rebirths.lock().expect("lock") >= 1).then_some(()))
    })
    .await?;

    // A simulated edge node publishing the plant's signals under the registered tag names.
    let pool = plant.db.app_pool().await;
    let signals: Vec<Signal> = Scenario::demo()
        .signals()
        .iter()
        .map(|s| Signal {
            name: TagName::parse(format!("press-1.{}", s.name.as_str())).expect("a tag name"),
            ..s.clone()
        })
        .collect();
    let node = spawn_sparkplug_node(
        NodeSpec {
            broker: plant.broker.clone(),
            group: group.clone(),
            edge_node: DEMO_GATEWAY.into(),
            device: None,
            interval: Duration::from_millis(100),
        },
        Scenario::new(7, signals)?,
    )
    .map_err(anyhow::Error::msg)?;
    Plant::eventually(
        Duration::from_secs(20),
        "the simulated node's readings",
        || async {
            let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tenant_readings r JOIN tags t ON t.id = r.tag_id
             WHERE t.name = 'press-1.motor_current' AND r.quality = 0",
            )
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((n >= 10).then_some(()))
        },
    )
    .await?;
    node.shutdown().await;
    Ok(())
}

/// The stored readings of `tenant` as (tag, value, quality), by time and tag, and the reason
/// and detail of each of its dead letters.
async fn stored(
    plant: &Plant,
    tenant: TenantId,
) -> anyhow::Result<(Vec<(String, f64, i16)>, Vec<(String, String)>)> {
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    let readings = sqlx::query_as(
        "SELECT t.name, r.value, r.quality FROM tenant_readings r JOIN tags t ON t.id = r.tag_id
         ORDER BY r.ts, t.name",
    )
    .fetch_all(&mut *tx)
    .await?;
    let letters = sqlx::query_as("SELECT reason, detail FROM dead_letters ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((readings, letters))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_outlive_an_ingest_restart() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let group = tenant.to_string();
    let node = |kind| Topic::node(&group, kind, DEMO_GATEWAY);
    let pump = |kind| Topic::device(&group, kind, DEMO_GATEWAY, "pump");
    // The device's metric becomes the tag `pump/rpm`, registered on the demo gateway.
    let pool = plant.db.app_pool().await;
    let mut tx = migrations::begin_tenant(&pool, tenant.as_uuid()).await?;
    sqlx::query(
        "INSERT INTO tags (tenant_id, gateway_id, name)
         SELECT tenant_id, id, 'pump/rpm' FROM gateways WHERE code = $1",
    )
    .bind(DEMO_GATEWAY)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let rebirths = watch_commands(&plant.broker, node(MessageType::NCmd)).await?;
    let ms = u64::try_from(Timestamp::now().as_micros() / 1000 - 60_000)?;
    let value = |alias, v, at| Metric::aliased(alias, MetricValue::Double(v)).at(at);
    let node_birth = payload(Some(0), vec![bd_seq(4), bearing_born(60.0, ms)]);
    let pump_birth = payload(
        Some(1),
        vec![
            Metric::new("rpm", DataType::Double, MetricValue::Double(1450.0))
                .with_alias(2)
                .at(ms),
        ],
    );
    publish_all(&plant.broker, &node(MessageType::NBirth), vec![node_birth]).await?;
    publish_all(&plant.broker, &pump(MessageType::DBirth), vec![pump_birth]).await?;
    Plant::eventually(Duration::from_secs(20), "the births stored", || async {
        Ok((plant.services.summary().readings_stored >= 2).then_some(()))
    })
    .await?;

    // While ingest is stopped the node goes on by alias; the broker keeps its data.
    let broker = plant.broker.clone();
    let (node_data, pump_data) = (node(MessageType::NData), pump(MessageType::DData));
    let (plant, _) = plant
        .restart_after(async move {
            publish_all(
                &broker,
                &node_data,
                vec![payload(Some(2), vec![value(1, 61.0, ms + 1)])],
            )
            .await?;
            publish_all(
                &broker,
                &pump_data,
                vec![payload(Some(3), vec![value(2, 1460.0, ms + 1)])],
            )
            .await
        })
        .await?;
    Plant::eventually(
        Duration::from_secs(20),
        "the data read by alias",
        || async { Ok((plant.services.summary().readings_stored >= 2).then_some(())) },
    )
    .await?;
    // Read as the births named it, in sequence: nothing lost, no rebirth asked for.
    let bearing = "press-1.bearing_temp".to_owned();
    let rpm = "pump/rpm".to_owned();
    let (readings, letters) = stored(&plant, tenant).await?;
    assert_eq!(
        readings,
        [
            (bearing.clone(), 60.0, 0),
            (rpm.clone(), 1450.0, 0),
            (bearing.clone(), 61.0, 0),
            (rpm.clone(), 1460.0, 0),
        ]
    );
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(*rebirths.lock().expect("lock"), 0, "no rebirth asked for");

    // The node dies: its device's metric is marked bad too, since the device's birth came
    // back with the node's.
    publish_all(
        &plant.broker,
        &node(MessageType::NDeath),
        vec![payload(None, vec![bd_seq(4)])],
    )
    .await?;
    Plant::eventually(Duration::from_secs(20), "the death stored", || async {
        Ok((plant.services.summary().readings_stored >= 4).then_some(()))
    })
    .await?;
    let (readings, _) = stored(&plant, tenant).await?;
    let bad: Vec<&str> = readings
        .iter()
        .filter(|(_, _, q)| *q == 2)
        .map(|(t, _, _)| t.as_str())
        .collect();
    assert_eq!(bad, ["press-1.bearing_temp", "pump/rpm"]);

    // After another restart the node is still dead: its data waits for a birth.
    let (plant, _) = plant.restart().await?;
    publish_all(
        &plant.broker,
        &node(MessageType::NData),
        vec![payload(Some(0), vec![value(1, 62.0, ms + 2)])],
    )
    .await?;
    Plant::eventually(Duration::from_secs(20), "data after the death", || async {
        Ok((plant.services.summary().dead_letters >= 1).then_some(()))
    })
    .await?;
    let (_, letters) = stored(&plant, tenant).await?;
    let reasons: Vec<&str> = letters.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(reasons, ["no_birth"]);
    Plant::eventually(Duration::from_secs(10), "a rebirth request", || async {
        Ok((*rebirths.lock().expect("lock") == 1).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_without_a_time_are_new_readings_at_each_receipt() -> anyhow::Result<()> {
    let plant = Plant::start().await?;
    let tenant = TenantId::from_uuid(plant.tenant_a.tenant);
    let group = tenant.to_string();
    let topic = |kind| Topic::node(&group, kind, DEMO_GATEWAY);
    let ms = u64::try_from(Timestamp::now().as_micros() / 1000 - 60_000)?;
    let birth = payload(Some(0), vec![bd_seq(1), bearing_born(60.0, ms)]);
    // A node that dates nothing, with a steady value: its bytes repeat whenever its sequence
    // number comes round again (every 256 messages), here at once.
    let steady = payload(Some(1), vec![Metric::aliased(1, MetricValue::Double(61.0))]);
    publish_all(&plant.broker, &topic(MessageType::NBirth), vec![birth]).await?;
    for stored in [2, 3] {
        publish_all(
            &plant.broker,
            &topic(MessageType::NData),
            vec![steady.clone()],
        )
        .await?;
        Plant::eventually(Duration::from_secs(20), "the data stored", || async {
            Ok((plant.services.summary().readings_stored >= stored).then_some(()))
        })
        .await?;
    }
    let bearing = "press-1.bearing_temp".to_owned();
    let (readings, letters) = stored(&plant, tenant).await?;
    assert_eq!(
        readings,
        [
            (bearing.clone(), 60.0, 0),
            (bearing.clone(), 61.0, 0),
            (bearing, 61.0, 0),
        ]
    );
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(plant.services.summary().batches_duplicate, 0);
    Ok(())
}
