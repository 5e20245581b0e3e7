//! `[[mqtt]]`: a local broker the agent subscribes to, and how its messages become tags.

use std::collections::HashSet;

use model::settings::{Report, Secret};
use serde::Deserialize;

use super::json::Template;

/// The longest `tag_prefix`: a tag name holds at most 128 characters.
pub const MAX_PREFIX: usize = 48;

fn every_node() -> String {
    "+".to_owned()
}

fn yes() -> bool {
    true
}

/// One broker on the plant floor and what to read from it.
#[derive(Debug, Clone, Deserialize)]
pub struct MqttSourceConfig {
    /// Names the source in logs and metrics; unique among `[[mqtt]]` sources.
    pub name: String,
    /// `mqtt://host:port` of the local broker, or `mqtts://host:port` for MQTT over TLS
    /// (default port 8883), with:
    pub broker: String,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts://` only);
    /// without it, the platform's trusted roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain and private key of the gateway, for brokers that authenticate
    /// clients by certificate (`mqtts://` only; both or neither).
    pub client_cert_file: Option<std::path::PathBuf>,
    pub client_key_file: Option<std::path::PathBuf>,
    /// Default `edge-<gateway>-<name>`. The session is persistent (clean session off), so
    /// messages published while the agent restarts wait at the broker.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Plain JSON messages, one `[[mqtt.json]]` per tag (or per family of tags).
    #[serde(default)]
    pub json: Vec<JsonMapping>,
    /// Sparkplug B edge nodes, one `[[mqtt.sparkplug]]` per group (or node).
    #[serde(default)]
    pub sparkplug: Vec<SparkplugSubscription>,
}

/// A JSON message topic and where its value, time and quality are.
#[derive(Debug, Clone, Deserialize)]
pub struct JsonMapping {
    /// An MQTT topic filter (`+` and `#` allowed).
    pub topic: String,
    /// The tag's name; `{1}`, `{2}`, ... stand for the levels of the message's topic.
    pub tag: String,
    /// JSON pointer (RFC 6901) to the value: a number, a boolean, or text holding a number;
    /// `""` for a message that is the bare value.
    pub value: String,
    /// JSON pointer to the sample time: RFC 3339 text or milliseconds since the Unix epoch.
    /// Without it, the time the agent received the message.
    pub timestamp: Option<String>,
    /// JSON pointer to the quality: `good`/`uncertain`/`bad`, a boolean, or an OPC quality
    /// code (192 and up good). Without it, good.
    pub quality: Option<String>,
}

/// Sparkplug B edge nodes to follow as a host application.
#[derive(Debug, Clone, Deserialize)]
pub struct SparkplugSubscription {
    /// The Sparkplug group id.
    pub group: String,
    /// One edge node id, or `+` (the default) for every node of the group.
    #[serde(default = "every_node")]
    pub edge_node: String,
    /// Prepended to every tag: tags are `<tag_prefix><edge node>/[<device>/]<metric>`.
    #[serde(default)]
    pub tag_prefix: String,
    /// Ask a node to publish its births again (`NCMD` with `Node Control/Rebirth`) when its
    /// messages cannot be read without them: after a sequence gap, an unknown alias, or data
    /// seen before any birth (as after the agent restarts). Default true.
    #[serde(default = "yes")]
    pub rebirth: bool,
}

impl SparkplugSubscription {
    /// The topic filters that carry this subscription's births, data and deaths (not the
    /// commands, which hosts publish).
    pub fn filters(&self) -> Vec<String> {
        model::sparkplug::host_filters(&self.group, &self.edge_node)
    }

    pub fn covers(&self, group: &str, edge_node: &str) -> bool {
        self.group == group && (self.edge_node == "+" || self.edge_node == edge_node)
    }
}

impl MqttSourceConfig {
    pub fn client_id(&self, gateway: &model::GatewayId) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("edge-{gateway}-{}", self.name))
    }

    /// The source's TLS files, for `mqtts://`; `section` names it in errors (`mqtt[0]`).
    pub fn tls_files<'a>(&'a self, section: &'a str) -> crate::tls::TlsFiles<'a> {
        crate::tls::TlsFiles {
            section,
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }

    pub fn validate(&self, at: &str, names: &mut HashSet<String>, report: &mut Report) {
        crate::config::validate_source_name(at, &self.name, names, report);
        match model::topic::broker_endpoint(&self.broker) {
            Err(e) => report.error(format!("{at}.broker"), e.to_string()),
            Ok(endpoint) => self.tls_files(at).validate(endpoint.tls, report),
        }
        if self.password.is_some() && self.username.is_none() {
            report.error(format!("{at}.password"), "a password needs a username");
        }
        if self.json.is_empty() && self.sparkplug.is_empty() {
            report.error(
                at.to_owned(),
                "reads nothing: add [[mqtt.json]] mappings or [[mqtt.sparkplug]] subscriptions",
            );
        }
        for (i, m) in self.json.iter().enumerate() {
            m.validate(&format!("{at}.json[{i}]"), report);
        }
        for (i, s) in self.sparkplug.iter().enumerate() {
            s.validate(&format!("{at}.sparkplug[{i}]"), report);
        }
    }
}

impl JsonMapping {
    fn validate(&self, at: &str, report: &mut Report) {
        if !rumqttc::valid_filter(&self.topic) || self.topic.is_empty() {
            report.error(
                format!("{at}.topic"),
                format!(
                    "{:?} is not an MQTT topic filter (levels split by /, + for one level, # last)",
                    self.topic
                ),
            );
        } else if let Err(e) =
            Template::parse(&self.tag, self.topic.split('/').count(), &self.topic)
        {
            report.error(format!("{at}.tag"), e);
        }
        for (key, pointer) in [
            ("value", Some(&self.value)),
            ("timestamp", self.timestamp.as_ref()),
            ("quality", self.quality.as_ref()),
        ] {
            if let Some(p) = pointer
                && !(p.is_empty() || p.starts_with('/'))
            {
                report.error(
                    format!("{at}.{key}"),
                    format!("{p:?} is not a JSON pointer: it starts with / (e.g. \"/data/temp\"), or is \"\" for the whole message"),
                );
            }
        }
    }
}

impl SparkplugSubscription {
    fn validate(&self, at: &str, report: &mut Report) {
        let bad_id = |id: &str| id.is_empty() || id.contains(['/', '+', '#']);
        if bad_id(&self.group) {
            report.error(
                format!("{at}.group"),
                format!(
                    "{:?} is not a Sparkplug group id (not empty, no / + #)",
                    self.group
                ),
            );
        }
        if self.edge_node != "+" && bad_id(&self.edge_node) {
            report.error(
                format!("{at}.edge_node"),
                format!(
                    "{:?} is neither an edge node id (not empty, no / + #) nor + for every node",
                    self.edge_node
                ),
            );
        }
        if self
            .tag_prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "-_.:/".contains(c)))
        {
            report.error(
                format!("{at}.tag_prefix"),
                "may hold only ASCII letters, digits and - _ . : /",
            );
        }
        if self.tag_prefix.len() > MAX_PREFIX {
            report.error(
                format!("{at}.tag_prefix"),
                format!(
                    "at most {MAX_PREFIX} characters, so that tag names stay within their limit"
                ),
            );
        }
    }
}
