//! The load generator: publishes numbered batches of readings for many tags to an MQTT
//! broker, the way a fleet of edge agents would, for ingest benchmarks and load tests.
//!
//! Values are deterministic (tag index and batch number); timestamps advance one millisecond
//! per batch from a fixed start, so a run can be checked reading by reading. Publishing is
//! QoS 1 with a bounded in-flight window and an optional rate limit; every batch is counted as
//! sent only when the broker acknowledged it.

use std::time::{Duration, Instant};

use model::wire::Batch;
use model::{GatewayId, Quality, Reading, TagName, TenantId, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// What to publish.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `mqtt://host:port`; only loopback addresses make sense for load tests.
    pub broker: String,
    pub tenant: TenantId,
    pub gateway: GatewayId,
    pub tags: Vec<TagName>,
    pub readings_per_batch: usize,
    pub batches: u64,
    /// First batch number (sequence numbers are `first_seq..first_seq + batches`).
    pub first_seq: u64,
    /// Readings per second to aim for; `None` publishes as fast as the broker acknowledges.
    pub rate: Option<f64>,
    /// Batches published but not yet acknowledged.
    pub in_flight: u16,
    /// Event time of the first batch.
    pub start: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadReport {
    pub batches: u64,
    pub readings: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("broker URL {0:?} is not mqtt://host:port")]
    BadBroker(String),
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("MQTT connection: {0}")]
    Connection(#[from] rumqttc::ConnectionError),
}

/// The readings of batch `n`: every `readings_per_batch` consecutive tags (wrapping), one
/// reading each.
pub fn batch_readings(spec: &LoadSpec, n: u64) -> Vec<Reading> {
    let tags = spec.tags.len().max(1) as u64;
    (0..spec.readings_per_batch as u64)
        .map(|i| {
            let k = n * spec.readings_per_batch as u64 + i;
            Reading {
                tag: spec.tags[(k % tags) as usize].clone(),
                ts: spec
                    .start
                    .plus_micros(i64::try_from(n).unwrap_or(i64::MAX).saturating_mul(1000)),
                value: (k % 1000) as f64 * 0.1,
                quality: Quality::Good,
            }
        })
        .collect()
}

/// Publishes the whole load and returns once the broker acknowledged every batch.
pub async fn publish(spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    let (host, port) = model::topic::broker_address(&spec.broker)
        .map_err(|_| LoadError::BadBroker(spec.broker.clone()))?;
    let mut options = MqttOptions::new(
        format!("load-{}", uuid::Uuid::new_v4().simple()),
        host,
        port,
    );
    options
        .set_max_packet_size(
            model::wire::MAX_MESSAGE_BYTES + 4096,
            model::wire::MAX_MESSAGE_BYTES + 4096,
        )
        .set_inflight(spec.in_flight)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, usize::from(spec.in_flight) * 2);
    let topic = model::topic::readings(spec.tenant, &spec.gateway);
    let started = Instant::now();
    let mut published = 0u64;
    let mut acked = 0u64;
    let mut outstanding = 0u64;
    while acked < spec.batches {
        while published < spec.batches && outstanding < u64::from(spec.in_flight) {
            if let Some(rate) = spec.rate {
                let due = Duration::from_secs_f64(
                    published as f64 * spec.readings_per_batch as f64 / rate,
                );
                if started.elapsed() < due {
                    break;
                }
            }
            let readings = batch_readings(spec, published);
            let payload =
                Batch::from_readings(spec.gateway.clone(), spec.first_seq + published, &readings)
                    .encode();
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await?;
            published += 1;
            outstanding += 1;
        }
        let wait = if spec.rate.is_some()
            && outstanding < u64::from(spec.in_flight)
            && published < spec.batches
        {
            Duration::from_millis(1)
        } else {
            Duration::from_secs(30)
        };
        match tokio::time::timeout(wait, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                acked += 1;
                outstanding -= 1;
            }
            Ok(Ok(
                Event::Outgoing(Outgoing::Publish(_)) | Event::Incoming(_) | Event::Outgoing(_),
            ))
            | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    client.disconnect().await?;
    Ok(LoadReport {
        batches: acked,
        readings: acked * spec.readings_per_batch as u64,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_deterministic_and_cycle_through_the_tags() {
        let spec = LoadSpec {
            broker: "mqtt://127.0.0.1:1".into(),
            tenant: TenantId::from_uuid(uuid::Uuid::nil()),
            gateway: GatewayId::parse("g").expect("valid"),
            tags: (0..3)
                .map(|i| TagName::parse(format!("t{i}")).expect("valid"))
                .collect(),
            readings_per_batch: 2,
            batches: 10,
            first_seq: 1,
            rate: None,
            in_flight: 4,
            start: Timestamp::from_micros(0),
        };
        let b1 = batch_readings(&spec, 1);
        assert_eq!(b1, batch_readings(&spec, 1));
        assert_eq!(b1[0].tag.as_str(), "t2");
        assert_eq!(b1[1].tag.as_str(), "t0");
        assert_eq!(b1[0].ts, Timestamp::from_micros(1000));
    }
}
