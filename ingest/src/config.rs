//! Ingest settings, a section of the server's configuration file (`[ingest]`).

use serde::Deserialize;

fn default_client_id() -> String {
    "maintainpro-ingest".into()
}
fn default_queue() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
pub struct IngestConfig {
    /// `mqtt://host:port` of the broker edge agents publish to.
    pub broker: String,
    /// Fixed, so the broker keeps this consumer's session (and unacknowledged messages) across
    /// restarts. Two ingest processes must never share one.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Messages received but not yet processed; a full queue stops reading from the broker.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Topic filters to subscribe to. The default takes every tenant's gateways; a process that
    /// serves some tenants only lists theirs (`maintainpro/v1/<tenant>/+/readings`).
    #[serde(default = "default_subscribe")]
    pub subscribe: Vec<String>,
}

fn default_subscribe() -> Vec<String> {
    vec![model::topic::all_readings_filter()]
}

impl IngestConfig {
    pub fn new(broker: impl Into<String>) -> Self {
        Self {
            broker: broker.into(),
            client_id: default_client_id(),
            username: None,
            password: None,
            queue: default_queue(),
            subscribe: default_subscribe(),
        }
    }
}
