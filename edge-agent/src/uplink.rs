//! The MQTT uplink: publishes the outbox's numbered batches with QoS 1 and reports which were
//! acknowledged.
//!
//! rumqttc's event loop owns the socket; a driver task polls it and forwards what matters
//! (a publish went out with packet id N, packet id N was acknowledged, the connection dropped)
//! over a channel, so the agent's own loop stays cancel-safe. Packet ids are matched to batches
//! in the order the publishes were requested; a publish rumqttc retransmits after a reconnect
//! keeps its packet id and is recognised as already known.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::outbox::Sealed;

/// What the driver task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkEvent {
    Connected,
    Disconnected(String),
    Sent(u16),
    Acked(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink.broker: {0}")]
    BadBroker(String),
    #[error("{0}")]
    Tls(String),
    #[error("the MQTT client stopped: {0}")]
    ClientGone(String),
}

/// A batch published but not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub seq: u64,
    pub readings: usize,
}

/// Matches packet ids to batches. Pure: driven by [`UplinkEvent`]s.
#[derive(Debug, Default)]
pub struct AckTracker {
    unassigned: VecDeque<InFlight>,
    by_packet: HashMap<u16, InFlight>,
}

impl AckTracker {
    pub fn published(&mut self, batch: InFlight) {
        self.unassigned.push_back(batch);
    }

    /// A publish left with packet id `pkid`.
    pub fn sent(&mut self, pkid: u16) {
        if self.by_packet.contains_key(&pkid) {
            return; // a retransmission of a batch already matched
        }
        if let Some(b) = self.unassigned.pop_front() {
            self.by_packet.insert(pkid, b);
        }
    }

    /// The broker acknowledged `pkid`: the batch it carried, if known.
    pub fn acked(&mut self, pkid: u16) -> Option<InFlight> {
        self.by_packet.remove(&pkid)
    }

    pub fn in_flight(&self) -> usize {
        self.unassigned.len() + self.by_packet.len()
    }
}

/// The publishing side of the uplink.
#[derive(Debug)]
pub struct Uplink {
    client: AsyncClient,
    topic: String,
    tracker: AckTracker,
}

impl Uplink {
    /// Connects (lazily: the driver task retries until the broker answers) and returns the
    /// uplink, the stream of its events, and the driver task's handle.
    pub fn start(
        config: &AgentConfig,
        cancel: CancellationToken,
    ) -> Result<
        (
            Uplink,
            mpsc::Receiver<UplinkEvent>,
            tokio::task::JoinHandle<()>,
        ),
        UplinkError,
    > {
        let endpoint = model::topic::broker_endpoint(&config.uplink.broker)
            .map_err(|e| UplinkError::BadBroker(e.to_string()))?;
        let mut options = MqttOptions::new(config.client_id(), endpoint.host, endpoint.port);
        if endpoint.tls {
            let tls = crate::tls::client_config(&config.uplink.tls_files())
                .map_err(|e| UplinkError::Tls(format!("{}: {e}", e.key())))?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        options
            .set_keep_alive(Duration::from_secs(15))
            .set_clean_session(false)
            .set_max_packet_size(
                model::wire::MAX_MESSAGE_BYTES + 4096,
                model::wire::MAX_MESSAGE_BYTES + 4096,
            )
            .set_inflight(u16::try_from(config.uplink.max_in_flight).unwrap_or(u16::MAX));
        if let Some((user, password)) = config.uplink.credentials() {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) =
            AsyncClient::new(options, config.uplink.max_in_flight * 2 + 8);
        // A batch that carries a breach must not wait for the broker's TCP acknowledgement
        // of the batch before (Nagle's algorithm); batches are large, so few packets are saved.
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, rx) = mpsc::channel(1024);
        let driver = tokio::spawn(drive(eventloop, tx, cancel));
        Ok((
            Uplink {
                client,
                topic: model::topic::readings(config.gateway.tenant, &config.gateway.id),
                tracker: AckTracker::default(),
            },
            rx,
            driver,
        ))
    }

    /// Publishes one sealed batch; it stays in flight until its PUBACK.
    pub async fn publish(&mut self, batch: Sealed) -> Result<(), UplinkError> {
        self.tracker.published(InFlight {
            seq: batch.seq,
            readings: batch.readings as usize,
        });
        self.client
            .publish_bytes(
                self.topic.clone(),
                QoS::AtLeastOnce,
                false,
                Bytes::from(batch.payload),
            )
            .await
            .map_err(|e| UplinkError::ClientGone(e.to_string()))
    }

    /// Applies a driver event; returns the batch it acknowledged, if any.
    pub fn on_event(&mut self, event: &UplinkEvent) -> Option<InFlight> {
        match *event {
            UplinkEvent::Sent(pkid) => {
                self.tracker.sent(pkid);
                None
            }
            UplinkEvent::Acked(pkid) => self.tracker.acked(pkid),
            UplinkEvent::Connected | UplinkEvent::Disconnected(_) => None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    pub async fn disconnect(&self) {
        // Ignored: the event loop may already be gone, and there is nothing left to flush.
        let _ = self.client.disconnect().await;
    }
}

async fn drive(mut eventloop: EventLoop, tx: mpsc::Sender<UplinkEvent>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let polled = tokio::select! {
            _ = cancel.cancelled() => break,
            p = eventloop.poll() => p,
        };
        let event = match polled {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Some(UplinkEvent::Sent(pkid)),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Some(UplinkEvent::Acked(ack.pkid)),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                Some(UplinkEvent::Connected)
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => None,
            Err(e) => {
                let _ = tx.send(UplinkEvent::Disconnected(e.to_string())).await;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                // Short: a gateway should be back on line within seconds of the broker.
                backoff = (backoff * 2).min(Duration::from_secs(2));
                None
            }
        };
        if let Some(event) = event
            && tx.send(event).await.is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_match_batches_in_order_and_retransmits_are_ignored() {
        let mut t = AckTracker::default();
        let b = |seq| InFlight { seq, readings: 1 };
        t.published(b(1));
        t.published(b(2));
        t.sent(10);
        t.sent(11);
        t.sent(10); // retransmitted after a reconnect
        assert_eq!(t.acked(11), Some(b(2)));
        assert_eq!(t.acked(10), Some(b(1)));
        assert_eq!(t.acked(10), None);
        assert_eq!(t.in_flight(), 0);
    }
}
