//! Ingest settings, a section of the server's configuration file (`[ingest]`).

use model::settings::Secret;
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
    pub password: Option<Secret>,
    /// Messages received but not yet processed; a full queue stops reading from the broker.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Topic filters to subscribe to. The default takes every tenant's gateways and every
    /// Sparkplug B group's births, data and deaths; a process that serves some tenants only
    /// lists theirs (`maintainpro/v1/<tenant>/+/readings`,
    /// `maintainpro/v1/<tenant>/+/readings/json`, `spBv1.0/<tenant>/NDATA/+`, ...).
    #[serde(default = "default_subscribe")]
    pub subscribe: Vec<String>,
}

fn default_subscribe() -> Vec<String> {
    let mut filters = vec![
        model::topic::all_readings_filter(),
        model::topic::all_json_readings_filter(),
    ];
    filters.extend(model::sparkplug::host_filters("+", "+"));
    filters
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

impl IngestConfig {
    /// Problems with these settings, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if model::topic::broker_address(&self.broker).is_err() {
            out.push((
                "ingest.broker",
                format!("{:?} is not mqtt://host[:port]", self.broker),
            ));
        }
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            out.push(("ingest.client_id", "must be 1-128 characters".to_owned()));
        }
        if self.queue == 0 {
            out.push((
                "ingest.queue",
                "must be at least 1, and should exceed the broker's in-flight limit per client"
                    .to_owned(),
            ));
        }
        if self.subscribe.is_empty() {
            out.push((
                "ingest.subscribe",
                "list at least one topic filter".to_owned(),
            ));
        }
        if self.password.is_some() != self.username.is_some() {
            out.push((
                "ingest.password",
                "username and password go together".to_owned(),
            ));
        }
        out
    }
}
