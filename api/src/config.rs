//! API settings: `[api]` in the server's configuration file.

use std::net::SocketAddr;
use std::time::Duration;

pub use model::settings::Secret;
use serde::Deserialize;

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

#[derive(Debug, Clone, Deserialize)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// HMAC key for access tokens: at least 32 bytes.
    pub jwt_secret: Secret,
    #[serde(default = "default_issuer")]
    pub jwt_issuer: String,
    #[serde(default = "default_audience")]
    pub jwt_audience: String,
    /// Access-token lifetime; at most 15 minutes.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub access_token_ttl: Duration,
}

impl ApiConfig {
    pub fn new(listen: SocketAddr, jwt_secret: Secret) -> Self {
        Self {
            listen,
            jwt_secret,
            jwt_issuer: default_issuer(),
            jwt_audience: default_audience(),
            access_token_ttl: default_ttl(),
        }
    }

    /// Problems with these settings, as (key, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
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
        out
    }
}
