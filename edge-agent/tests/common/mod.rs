//! Shared by the edge agent's broker tests: a subscriber that hands every batch published on
//! a topic to a callback.

use std::time::Duration;

use model::wire::Batch;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// Subscribes to `topic` on `broker` with a persistent session (so batches published while it
/// reconnects still arrive) until `cancel`, calling `each` with every batch that decodes.
pub fn on_batches(
    broker: &str,
    topic: String,
    cancel: CancellationToken,
    mut each: impl FnMut(Batch) + Send + 'static,
) -> anyhow::Result<()> {
    let (host, port) = model::topic::broker_address(broker)?;
    let mut options = MqttOptions::new(
        format!("ledger-{}", uuid::Uuid::new_v4().simple()),
        host,
        port,
    );
    options
        .set_clean_session(false)
        .set_max_packet_size(2 << 20, 2 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(batch) = Batch::decode(&p.payload) {
                        each(batch);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok(())
}
