//! Ingest settings, a section of the server's configuration file (`[ingest]`).

use model::settings::Secret;
use serde::Deserialize;

fn default_client_id() -> String {
    "maintainpro-ingest".into()
}
fn default_queue() -> usize {
    256
}
/// The largest `ingest.queue`: MQTT's packet ids are 16 bits, so no more deliveries can
/// await an acknowledgement at once.
const MAX_QUEUE: usize = u16::MAX as usize;
fn default_writers() -> usize {
    3
}
fn default_linger() -> std::time::Duration {
    std::time::Duration::ZERO
}
/// The longest `ingest.linger`.
const MAX_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
fn default_database_timeout() -> std::time::Duration {
    crate::store::DEFAULT_TIMEOUT
}

fn default_max_clock_ahead() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

fn default_max_reading_age() -> std::time::Duration {
    std::time::Duration::from_secs(90 * 86_400)
}

/// [`IngestConfig::ledger_keep`] with the default settings.
pub fn default_ledger_keep() -> std::time::Duration {
    ledger_keep(default_max_reading_age(), default_max_clock_ahead())
}

/// How long the ledger keeps a batch's number under these settings: a day more than a copy
/// of the batch could still be stored.
fn ledger_keep(
    max_reading_age: std::time::Duration,
    max_clock_ahead: std::time::Duration,
) -> std::time::Duration {
    max_reading_age
        .saturating_add(max_clock_ahead)
        .saturating_add(std::time::Duration::from_secs(86_400))
        .min(MAX_WINDOW.saturating_mul(3))
}

/// The longest `max_clock_ahead` or `max_reading_age` taken: about a century.
const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// Most store writers a consumer runs.
pub const MAX_WRITERS: usize = 16;

#[derive(Debug, Clone, Deserialize)]
pub struct IngestConfig {
    /// `mqtt://host:port` of the broker edge agents publish to, or `mqtts://host:port` for
    /// MQTT over TLS (default port 8883), with:
    pub broker: String,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts://` only);
    /// without it, the platform's trusted roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain and private key of this ingest process, for brokers that
    /// authenticate clients by certificate (`mqtts://` only; both or neither).
    pub client_cert_file: Option<std::path::PathBuf>,
    pub client_key_file: Option<std::path::PathBuf>,
    /// Fixed, so the broker keeps this consumer's session (and unacknowledged messages) across
    /// restarts. Two ingest processes must never share one.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Messages received but not yet processed; a full queue stops reading from the broker.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Transactions the store stage writes at once, each a group of messages on its own
    /// connection. A second writer copies while the first waits for its commit to reach the
    /// disk; see BENCHMARKS.md for the measurement behind the default.
    #[serde(default = "default_writers")]
    pub writers: usize,
    /// How long a group of messages that is not full waits for more before it is written,
    /// from its first message. With none (the default) a free writer writes what is queued at
    /// once, and messages gather into larger groups only while every writer is busy. A linger
    /// makes fewer, larger transactions out of a steady trickle, at that much latency.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: std::time::Duration,
    /// How long ingest waits for the database to answer one operation (a group's transaction,
    /// a look-up) before it gives the connection up and tries again on a new one. Nothing is
    /// acknowledged before its commit, and the ledger keeps a group tried again from being
    /// stored twice. It bounds how long a connection that neither answers nor breaks holds
    /// ingest, and its shutdown.
    #[serde(default = "default_database_timeout", with = "humantime_serde")]
    pub database_timeout: std::time::Duration,
    /// Topic filters to subscribe to. The default takes every tenant's gateways and every
    /// Sparkplug B group's births, data and deaths; a process that serves some tenants only
    /// lists theirs (`maintainpro/v1/<tenant>/+/readings`,
    /// `maintainpro/v1/<tenant>/+/readings/json`, `spBv1.0/<tenant>/NDATA/+`, ...).
    #[serde(default = "default_subscribe")]
    pub subscribe: Vec<String>,
    /// How far ahead of this server's clock a reading's time may be; a message with one
    /// further ahead becomes a `future_timestamp` dead letter.
    #[serde(default = "default_max_clock_ahead", with = "humantime_serde")]
    pub max_clock_ahead: std::time::Duration,
    /// How far behind this server's clock a reading's time may be; a message with an older
    /// one becomes an `old_timestamp` dead letter.
    #[serde(default = "default_max_reading_age", with = "humantime_serde")]
    pub max_reading_age: std::time::Duration,
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
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            client_id: default_client_id(),
            username: None,
            password: None,
            queue: default_queue(),
            writers: default_writers(),
            linger: default_linger(),
            database_timeout: default_database_timeout(),
            subscribe: default_subscribe(),
            max_clock_ahead: default_max_clock_ahead(),
            max_reading_age: default_max_reading_age(),
        }
    }
}

impl IngestConfig {
    /// The times of readings ingest takes.
    pub fn clock_window(&self) -> crate::clock::Window {
        crate::clock::Window {
            ahead: self.max_clock_ahead,
            age: self.max_reading_age,
        }
    }

    /// How long the batch ledger keeps a batch: until a copy of it delivered again could no
    /// longer be stored anyway (its readings would all be older than `max_reading_age`, having
    /// been at most `max_clock_ahead` ahead when it was stored), and a day more.
    pub fn ledger_keep(&self) -> std::time::Duration {
        ledger_keep(self.max_reading_age, self.max_clock_ahead)
    }

    /// The TLS files, for `mqtts://`.
    pub fn tls_files(&self) -> mqtt_tls::TlsFiles<'_> {
        mqtt_tls::TlsFiles {
            section: "ingest",
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }

    /// Problems with these settings, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        match model::topic::broker_endpoint(&self.broker) {
            Err(_) => out.push((
                "ingest.broker".to_owned(),
                format!(
                    "{:?} is not mqtt://host[:port] or mqtts://host[:port]",
                    self.broker
                ),
            )),
            Ok(endpoint) => out.extend(self.tls_files().problems(endpoint.tls)),
        }
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            out.push((
                "ingest.client_id".to_owned(),
                "must be 1-128 characters".to_owned(),
            ));
        }
        if !(1..=MAX_QUEUE).contains(&self.queue) {
            out.push((
                "ingest.queue".to_owned(),
                format!(
                    "must be 1-{MAX_QUEUE} (no more messages can await an acknowledgement), and \
                     should exceed the broker's in-flight limit per client"
                ),
            ));
        }
        if !(1..=MAX_WRITERS).contains(&self.writers) {
            out.push((
                "ingest.writers".to_owned(),
                format!("must be 1-{MAX_WRITERS}; each writer holds a database connection"),
            ));
        }
        if self.linger > MAX_LINGER {
            out.push((
                "ingest.linger".to_owned(),
                "must be 0-1s; every message of a group waits for it before its commit".to_owned(),
            ));
        }
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600))
            .contains(&self.database_timeout)
        {
            out.push((
                "ingest.database_timeout".to_owned(),
                "must be 1s-1h; a busy database can take seconds to commit a group, so leave \
                 it well above that"
                    .to_owned(),
            ));
        }
        if self.subscribe.is_empty() {
            out.push((
                "ingest.subscribe".to_owned(),
                "list at least one topic filter".to_owned(),
            ));
        }
        for filter in &self.subscribe {
            if filter.is_empty() || !rumqttc::valid_filter(filter) {
                out.push((
                    "ingest.subscribe".to_owned(),
                    format!(
                        "{filter:?} is not an MQTT topic filter ('#' only as the last level, \
                         '+' and '#' only as whole levels)"
                    ),
                ));
            }
        }
        if !(std::time::Duration::from_secs(60)..=MAX_WINDOW).contains(&self.max_clock_ahead) {
            out.push((
                "ingest.max_clock_ahead".to_owned(),
                "must be 1m-100y; gateways' clocks drift, so leave room for it".to_owned(),
            ));
        }
        if !(std::time::Duration::from_secs(3600)..=MAX_WINDOW).contains(&self.max_reading_age) {
            out.push((
                "ingest.max_reading_age".to_owned(),
                "must be 1h-100y, and longer than a gateway may hold readings while it cannot \
                 reach the broker"
                    .to_owned(),
            ));
        }
        if self.password.is_some() != self.username.is_some() {
            out.push((
                "ingest.password".to_owned(),
                "username and password go together".to_owned(),
            ));
        }
        out
    }
}
