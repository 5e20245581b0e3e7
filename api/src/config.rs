//! API settings: `[api]` in the server's configuration file.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

pub use model::settings::Secret;
use serde::Deserialize;

pub use crate::protect::{AllowedOrigin, Rate, TrustedProxy};

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_issuer() -> String {
    "maintainpro".into()
}
fn default_audience() -> String {
    "maintainpro-api".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_kid() -> String {
    "primary".into()
}
fn default_refresh_ttl() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_session_max_age() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_auth_rate_per_ip() -> Rate {
    Rate::from_str("20/min").expect("a valid rate")
}
fn default_auth_burst_per_ip() -> NonZeroU32 {
    NonZeroU32::new(20).expect("not zero")
}
fn default_tenant_rate() -> Rate {
    Rate::from_str("50/s").expect("a valid rate")
}
fn default_tenant_burst() -> NonZeroU32 {
    NonZeroU32::new(100).expect("not zero")
}
fn default_api_key_rate() -> Rate {
    Rate::from_str("10/s").expect("a valid rate")
}
fn default_api_key_burst() -> NonZeroU32 {
    NonZeroU32::new(20).expect("not zero")
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}

/// Webhook delivery: how often, how patiently, and when to give up on a receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// The first retry waits this long; each further one twice as long (at most an hour).
    #[serde(default = "default_webhook_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
    /// Attempts per event before it is given up (logged as failed).
    #[serde(default = "default_webhook_max_attempts")]
    pub max_attempts: u32,
    /// Events given up in a row after which the webhook is disabled until an admin enables
    /// it again.
    #[serde(default = "default_webhook_disable_after")]
    pub disable_after: u32,
    /// How long one delivery may take, connecting included.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the dispatcher looks for events to deliver.
    #[serde(default = "default_webhook_poll", with = "humantime_serde")]
    pub poll: Duration,
}

fn default_attachments_dir() -> std::path::PathBuf {
    "data/attachments".into()
}
fn default_attachment_max_bytes() -> usize {
    20 * 1024 * 1024
}
fn default_session_cache() -> Duration {
    Duration::from_secs(30)
}
fn default_pm_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_webhook_retry_base() -> Duration {
    Duration::from_secs(10)
}
fn default_webhook_max_attempts() -> u32 {
    8
}
fn default_webhook_disable_after() -> u32 {
    5
}
fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_webhook_poll() -> Duration {
    Duration::from_secs(1)
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            retry_base: default_webhook_retry_base(),
            max_attempts: default_webhook_max_attempts(),
            disable_after: default_webhook_disable_after(),
            timeout: default_webhook_timeout(),
            poll: default_webhook_poll(),
        }
    }
}

/// A signing key being retired: tokens it signed are still accepted until `until`, so that a
/// key rotation does not log everyone out. Nothing new is signed with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKey {
    pub kid: String,
    pub secret: Secret,
    /// RFC 3339; after it, tokens with this key id are refused.
    pub until: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HMAC key for access tokens: at least 32 bytes. Required (reported by `problems`).
    #[serde(default)]
    pub jwt_secret: Secret,
    /// Pepper of the password hashes (Argon2id secret): at least 32 bytes of random data, kept
    /// out of the database. Changing it invalidates every password. Required: left out, it is
    /// reported by [`ApiConfig::problems`] with the rest.
    #[serde(default)]
    pub password_pepper: Secret,
    /// The key id (`kid`) of `jwt_secret`, written in every token's header.
    #[serde(default = "default_kid")]
    pub jwt_kid: String,
    /// Keys being retired, still accepted for verification until their `until`.
    #[serde(default)]
    pub jwt_previous_keys: Vec<PreviousKey>,
    #[serde(default = "default_issuer")]
    pub jwt_issuer: String,
    #[serde(default = "default_audience")]
    pub jwt_audience: String,
    /// Access-token lifetime; at most 15 minutes.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// How long a refresh token may wait to be used; each use issues a new one.
    #[serde(default = "default_refresh_ttl", with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// A session's absolute lifetime from login: refreshing never extends it past this.
    #[serde(default = "default_session_max_age", with = "humantime_serde")]
    pub session_max_age: Duration,
    /// Proxies (addresses or CIDR networks) whose `X-Forwarded-For` and `X-Request-Id` are
    /// believed. Empty: the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<TrustedProxy>,
    /// Sustained rate of requests to `/api/v1/auth/` per client address (IPv6: per /64).
    #[serde(default = "default_auth_rate_per_ip")]
    pub auth_rate_per_ip: Rate,
    /// Requests to `/api/v1/auth/` one client address may make at once.
    #[serde(default = "default_auth_burst_per_ip")]
    pub auth_burst_per_ip: NonZeroU32,
    /// Sustained rate of authenticated requests per tenant.
    #[serde(default = "default_tenant_rate")]
    pub tenant_rate: Rate,
    /// Authenticated requests one tenant may make at once.
    #[serde(default = "default_tenant_burst")]
    pub tenant_burst: NonZeroU32,
    /// Sustained rate of requests per API key, on top of its tenant's limit.
    #[serde(default = "default_api_key_rate")]
    pub api_key_rate: Rate,
    /// Requests one API key may make at once.
    #[serde(default = "default_api_key_burst")]
    pub api_key_burst: NonZeroU32,
    /// The largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API (CORS). Empty: no CORS headers at all.
    #[serde(default)]
    pub cors_allowed_origins: Vec<AllowedOrigin>,
    /// The link an asset's QR code holds: an `http(s)://` URL with `{id}` where the asset's id
    /// goes, e.g. `https://cmms.example.com/assets/{id}`. Unset: this API's own asset URL
    /// (`/api/v1/assets/{id}`) on the host the request for the code named.
    #[serde(default)]
    pub asset_link: Option<String>,
    /// The link a password-reset mail holds: an `http(s)://` URL with `{token}` where the
    /// reset token goes, e.g. `https://cmms.example.com/reset-password?token={token}` (a page
    /// that asks for the new password and posts it with the token). Unset: the mail gives the
    /// token and the API call that uses it.
    #[serde(default)]
    pub reset_link: Option<String>,
    /// Webhook delivery (`[api.webhooks]`).
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// How long an access token's session check may be answered from memory while the
    /// database's announcements of session, user and role changes are heard (see
    /// `session_cache`); `0s` checks every request against the database.
    #[serde(default = "default_session_cache", with = "humantime_serde")]
    pub session_cache: Duration,
    /// How often the preventive-maintenance scheduler looks for occurrences to generate.
    #[serde(default = "default_pm_interval", with = "humantime_serde")]
    pub pm_interval: Duration,
    /// Where work-order attachments are stored (`<dir>/<tenant>/<id>`); created when missing.
    #[serde(default = "default_attachments_dir")]
    pub attachments_dir: std::path::PathBuf,
    /// The largest attachment accepted, in bytes.
    #[serde(default = "default_attachment_max_bytes")]
    pub attachment_max_bytes: usize,
    /// Email to assignees and requesters (`[api.smtp]`); unset: no email is sent.
    #[serde(default)]
    pub smtp: Option<SmtpSettings>,
    /// Broker accounts of gateway API keys (`[api.broker_accounts]`); unset: keys with the
    /// scope `readings:publish` cannot be created.
    #[serde(default)]
    pub broker_accounts: Option<BrokerAccountsSettings>,
}

/// How the server reaches Mosquitto's dynamic-security plugin to keep gateway keys' broker
/// accounts ([`crate::broker_accounts`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerAccountsSettings {
    /// `mqtt://host[:port]`, or `mqtts://host[:port]` for MQTT over TLS (default port 8883):
    /// the broker the gateways publish to.
    pub broker: String,
    /// PEM file of the CA certificates that sign the broker's certificate (`mqtts://` only);
    /// without it, the platform's trusted roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate chain and key, for brokers that ask for one (`mqtts://` only;
    /// both or neither).
    #[serde(default)]
    pub client_cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
    /// The MQTT client id's start; each connection adds a random suffix, so that concurrent
    /// requests never take each other's connection.
    #[serde(default = "default_broker_accounts_client_id")]
    pub client_id: String,
    /// An account of the plugin holding its admin role (`mosquitto_ctrl dynsec init`).
    pub username: String,
    pub password: Secret,
    /// How often accounts are compared with the keys: revoked, expired and orphaned accounts
    /// go, missing ones are reported.
    #[serde(
        default = "default_broker_accounts_reconcile",
        with = "humantime_serde"
    )]
    pub reconcile: Duration,
    /// How long one exchange with the broker may take (connect, command, answer).
    #[serde(default = "default_broker_accounts_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_broker_accounts_client_id() -> String {
    "maintainpro-broker-accounts".into()
}
fn default_broker_accounts_reconcile() -> Duration {
    Duration::from_secs(60)
}
fn default_broker_accounts_timeout() -> Duration {
    Duration::from_secs(5)
}

impl BrokerAccountsSettings {
    /// Settings with the defaults, for `broker` and the plugin admin's login.
    pub fn new(broker: impl Into<String>, username: impl Into<String>, password: Secret) -> Self {
        Self {
            broker: broker.into(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            client_id: default_broker_accounts_client_id(),
            username: username.into(),
            password,
            reconcile: default_broker_accounts_reconcile(),
            timeout: default_broker_accounts_timeout(),
        }
    }

    pub fn tls_files(&self) -> mqtt_tls::TlsFiles<'_> {
        mqtt_tls::TlsFiles {
            section: "api.broker_accounts",
            ca_file: self.ca_file.as_deref(),
            client_cert_file: self.client_cert_file.as_deref(),
            client_key_file: self.client_key_file.as_deref(),
        }
    }

    /// Problems with these settings, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match model::topic::broker_endpoint(&self.broker) {
            Err(_) => out.push((
                "api.broker_accounts.broker".to_owned(),
                format!(
                    "{:?} is not mqtt://host[:port] or mqtts://host[:port]",
                    self.broker
                ),
            )),
            Ok(endpoint) => out.extend(self.tls_files().problems(endpoint.tls)),
        }
        if self.client_id.is_empty()
            || self.client_id.len() > 64
            || !self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            out.push((
                "api.broker_accounts.client_id".to_owned(),
                "use 1-64 letters, digits or `-` (a random suffix is added)".to_owned(),
            ));
        }
        if self.username.is_empty() {
            out.push((
                "api.broker_accounts.username".to_owned(),
                "name the account with the plugin's admin role".to_owned(),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.reconcile) {
            out.push((
                "api.broker_accounts.reconcile".to_owned(),
                "must be 1s to 1h".to_owned(),
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.timeout) {
            out.push((
                "api.broker_accounts.timeout".to_owned(),
                "must be 100ms to 60s".to_owned(),
            ));
        }
        out
    }
}

/// How the API sends email.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    /// Default 587 (STARTTLS); 465 for `tls = "tls"`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` (implicit TLS), or `none` (only to a relay on this host).
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
    /// The sender, e.g. `MaintAInPro <cmms@example.com>`.
    pub from: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// How often the notifier reads the event log.
    #[serde(default = "default_smtp_poll", with = "humantime_serde")]
    pub poll: Duration,
}

fn default_smtp_tls() -> String {
    "starttls".into()
}
fn default_smtp_poll() -> Duration {
    Duration::from_secs(2)
}

impl ApiConfig {
    pub fn new(listen: SocketAddr, jwt_secret: Secret, password_pepper: Secret) -> Self {
        Self {
            listen,
            jwt_secret,
            password_pepper,
            jwt_kid: default_kid(),
            jwt_previous_keys: Vec::new(),
            jwt_issuer: default_issuer(),
            jwt_audience: default_audience(),
            access_token_ttl: default_ttl(),
            refresh_token_ttl: default_refresh_ttl(),
            session_max_age: default_session_max_age(),
            trusted_proxies: Vec::new(),
            auth_rate_per_ip: default_auth_rate_per_ip(),
            auth_burst_per_ip: default_auth_burst_per_ip(),
            tenant_rate: default_tenant_rate(),
            tenant_burst: default_tenant_burst(),
            api_key_rate: default_api_key_rate(),
            api_key_burst: default_api_key_burst(),
            max_body_bytes: default_max_body_bytes(),
            cors_allowed_origins: Vec::new(),
            asset_link: None,
            reset_link: None,
            webhooks: WebhookSettings::default(),
            session_cache: default_session_cache(),
            pm_interval: default_pm_interval(),
            attachments_dir: default_attachments_dir(),
            attachment_max_bytes: default_attachment_max_bytes(),
            smtp: None,
            broker_accounts: None,
        }
    }

    /// Problems with these settings, as (key, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        if self.session_cache > Duration::from_secs(300) {
            out.push((
                "api.session_cache",
                "must be at most 5m (0s turns it off)".to_owned(),
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.pm_interval) {
            out.push(("api.pm_interval", "must be 10ms to 1h".to_owned()));
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.attachment_max_bytes) {
            out.push((
                "api.attachment_max_bytes",
                "must be 1 KiB to 1 GiB".to_owned(),
            ));
        }
        if let Some(smtp) = &self.smtp {
            if !["starttls", "tls", "none"].contains(&smtp.tls.as_str()) {
                out.push(("api.smtp.tls", "must be starttls, tls or none".to_owned()));
            }
            if smtp.tls == "none"
                && !["127.0.0.1", "::1", "localhost"].contains(&smtp.host.as_str())
            {
                out.push((
                    "api.smtp.tls",
                    "none only to a relay on this host (127.0.0.1, ::1, localhost): use starttls or tls".to_owned(),
                ));
            }
            if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                out.push((
                    "api.smtp.from",
                    "must be an address, e.g. MaintAInPro <cmms@example.com>".to_owned(),
                ));
            }
            if smtp.username.is_some() != smtp.password.is_some() {
                out.push((
                    "api.smtp.password",
                    "give both username and password, or neither".to_owned(),
                ));
            }
            if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&smtp.poll) {
                out.push(("api.smtp.poll", "must be 10ms to 1h".to_owned()));
            }
        }
        let w = &self.webhooks;
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&w.retry_base) {
            out.push(("api.webhooks.retry_base", "must be 10ms to 1h".to_owned()));
        }
        if !(1..=20).contains(&w.max_attempts) {
            out.push(("api.webhooks.max_attempts", "must be 1-20".to_owned()));
        }
        if !(1..=1000).contains(&w.disable_after) {
            out.push(("api.webhooks.disable_after", "must be 1-1000".to_owned()));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&w.timeout) {
            out.push(("api.webhooks.timeout", "must be 100ms to 60s".to_owned()));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&w.poll) {
            out.push(("api.webhooks.poll", "must be 10ms to 60s".to_owned()));
        }
        if let Some(link) = &self.asset_link
            && (!(link.starts_with("https://") || link.starts_with("http://"))
                || !link.contains("{id}")
                || link.len() > 500)
        {
            out.push((
                "api.asset_link",
                "must be an http(s):// URL of at most 500 characters with {id} where the asset's id goes, e.g. https://cmms.example.com/assets/{id}"
                    .to_owned(),
            ));
        }
        if let Some(link) = &self.reset_link
            && (!(link.starts_with("https://") || link.starts_with("http://"))
                || !link.contains("{token}")
                || link.len() > 500)
        {
            out.push((
                "api.reset_link",
                "must be an http(s):// URL of at most 500 characters with {token} where the reset token goes, e.g. https://cmms.example.com/reset-password?token={token}"
                    .to_owned(),
            ));
        }
        if self.password_pepper.expose().len() < crate::password::PasswordHasher::MIN_PEPPER_BYTES {
            out.push((
                "api.password_pepper",
                "must be at least 32 bytes of random data (e.g. `openssl rand -base64 48`)"
                    .to_owned(),
            ));
        }
        if self.jwt_secret.expose().len() < 32 {
            out.push((
                "api.jwt_secret",
                "must be at least 32 bytes of random data".to_owned(),
            ));
        }
        if self.access_token_ttl > Duration::from_secs(15 * 60) || self.access_token_ttl.is_zero() {
            out.push((
                "api.access_token_ttl",
                "must be between 1s and 15m".to_owned(),
            ));
        }
        let mut kids = std::collections::HashSet::from([self.jwt_kid.as_str()]);
        if !is_kid(&self.jwt_kid) {
            out.push((
                "api.jwt_kid",
                "use 1-64 letters, digits, `-`, `_` or `.`".to_owned(),
            ));
        }
        for key in &self.jwt_previous_keys {
            if !is_kid(&key.kid) || !kids.insert(key.kid.as_str()) {
                out.push((
                    "api.jwt_previous_keys",
                    format!(
                        "key id {:?}: must be unique and 1-64 letters, digits, `-`, `_` or `.`",
                        key.kid
                    ),
                ));
            }
            if key.secret.expose().len() < 32 {
                out.push((
                    "api.jwt_previous_keys",
                    format!("key {:?}: secret must be at least 32 bytes", key.kid),
                ));
            }
        }
        if self.refresh_token_ttl.is_zero() || self.refresh_token_ttl > self.session_max_age {
            out.push((
                "api.refresh_token_ttl",
                "must be more than 0s and at most session_max_age".to_owned(),
            ));
        }
        if self.session_max_age > Duration::from_secs(90 * 86_400) {
            out.push(("api.session_max_age", "at most 90 days".to_owned()));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            out.push((
                "api.max_body_bytes",
                "must be between 1024 (1 KiB) and 67108864 (64 MiB)".to_owned(),
            ));
        }
        if self.trusted_proxies.iter().any(TrustedProxy::is_everyone) {
            out.push((
                "api.trusted_proxies",
                "a network of every address (0.0.0.0/0, ::/0) would let any client choose \
                 its own address; list the proxies"
                    .to_owned(),
            ));
        }
        let mut out: Vec<(String, String)> =
            out.into_iter().map(|(k, m)| (k.to_owned(), m)).collect();
        if let Some(accounts) = &self.broker_accounts {
            out.extend(accounts.problems());
        }
        out
    }
}

fn is_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ApiConfig {
        ApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            Secret::new("k".repeat(64)),
            Secret::new("p".repeat(48)),
        )
    }

    #[test]
    fn links_need_a_url_with_their_placeholder() {
        let mut c = config();
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.asset_link = Some("https://cmms.example.com/assets/{id}".into());
        c.reset_link = Some("https://cmms.example.com/reset-password?token={token}".into());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.asset_link = Some("cmms.example.com/assets".into());
        c.reset_link = Some("https://cmms.example.com/reset-password".into());
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["api.asset_link", "api.reset_link"]);
    }

    #[test]
    fn broker_accounts_are_checked_with_every_problem() {
        let mut c = config();
        c.broker_accounts = Some(BrokerAccountsSettings::new(
            "mqtt://127.0.0.1:1883",
            "admin",
            Secret::new("pw".to_owned()),
        ));
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.broker_accounts = Some(BrokerAccountsSettings {
            ca_file: Some("ca.pem".into()),
            client_id: "not an id".to_owned(),
            username: String::new(),
            reconcile: Duration::ZERO,
            timeout: Duration::from_secs(600),
            ..BrokerAccountsSettings::new("mqtt://h:1883", "a", Secret::new("p".to_owned()))
        });
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "api.broker_accounts.ca_file",
                "api.broker_accounts.client_id",
                "api.broker_accounts.username",
                "api.broker_accounts.reconcile",
                "api.broker_accounts.timeout",
            ]
        );
        c.broker_accounts = Some(BrokerAccountsSettings::new(
            "http://h",
            "a",
            Secret::new("p".to_owned()),
        ));
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["api.broker_accounts.broker"]);
    }
}
