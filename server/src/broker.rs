//! The embedded MQTT broker: rumqttd on a loopback port, for the demo and for running without
//! an external broker. Production plants use their own broker (Mosquitto, EMQX, ...).

use std::net::SocketAddr;

use edge_agent::logging::Noise;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot find a free port for the embedded broker: {0}")]
    Port(std::io::Error),
    #[error("embedded broker configuration: {0}")]
    Config(String),
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// rumqttd logs two errors when a client leaves cleanly (it sends DISCONNECT, then closes its
/// socket), as its source notes: the router hears of the one connection's end twice and finds
/// it gone the second time ("no-connection id N is already gone"; the same words when data of
/// a connection it has removed reaches it), and the connection's task finds its channel from
/// the router closed because the router has already removed it ("router-drop
/// error=Recv(Disconnected)"). Neither is a fault; a connection lost to one is still logged,
/// as "disconnected" with its error.
pub const CLEAN_DISCONNECT: [Noise; 2] = [
    Noise {
        target: "rumqttd::router::routing",
        message: |m| m.starts_with("no-connection id ") && m.ends_with(" is already gone"),
    },
    Noise {
        target: "rumqttd::server::broker",
        message: |m| m == "router-drop error=Recv(Disconnected)",
    },
];

/// A running embedded broker. Its threads end with the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd on 127.0.0.1 with a free port. It binds in its own thread; clients
    /// connecting before it listens simply retry.
    pub fn start() -> Result<Self, BrokerError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BrokerError::Port)?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let text = format!(
            r#"
id = 0
[router]
max_connections = 1000
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {payload}
max_inflight_count = 200
dynamic_filters = true
"#,
            payload = model::wire::MAX_MESSAGE_BYTES + 4096
        );
        let config: rumqttd::Config =
            toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))?;
        let mut broker = rumqttd::Broker::new(config);
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        Ok(Self { addr })
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_disconnect_counts_as_noise() {
        let noise = edge_agent::logging::KnownNoise(CLEAN_DISCONNECT.to_vec());
        let (routing, broker) = ("rumqttd::router::routing", "rumqttd::server::broker");
        assert!(noise.is_noise(routing, "no-connection id 0 is already gone"));
        assert!(noise.is_noise(routing, "no-connection id 17 is already gone"));
        assert!(noise.is_noise(broker, "router-drop error=Recv(Disconnected)"));
        assert!(!noise.is_noise(routing, "Failed to append to commitlog"));
        assert!(!noise.is_noise(broker, "no-connection id 0 is already gone"));
        assert!(!noise.is_noise(broker, "router-drop error=SessionEnd"));
        assert!(!noise.is_noise(broker, "disconnected error=Timeout(Elapsed(()))"));
    }
}
