//! MQTT topic names shared by edge agents and ingest, and the broker URLs they connect to.
//!
//! Readings travel on `maintainpro/v1/<tenant uuid>/<gateway id>/readings` (edge agents' binary
//! batches) and `.../readings/json` (JSON batches of other publishers). The tenant is part of
//! the topic so that a broker ACL can bind a gateway's credentials to its tenant's subtree.

use crate::{GatewayId, IdError, TenantId};

pub const PREFIX: &str = "maintainpro/v1";

/// The topic a gateway publishes its reading batches on.
pub fn readings(tenant: TenantId, gateway: &GatewayId) -> String {
    format!("{PREFIX}/{tenant}/{gateway}/readings")
}

/// The topic a publisher that is not an edge agent sends JSON batches on
/// ([`crate::json_batch`]).
pub fn json_readings(tenant: TenantId, gateway: &GatewayId) -> String {
    format!("{PREFIX}/{tenant}/{gateway}/readings/json")
}

/// The subscription filter that matches every gateway of every tenant.
pub fn all_readings_filter() -> String {
    format!("{PREFIX}/+/+/readings")
}

/// The filter of every gateway's batch topic of one tenant: what a gateway's broker account
/// may publish to.
pub fn tenant_readings_filter(tenant: TenantId) -> String {
    format!("{PREFIX}/{tenant}/+/readings")
}

/// The subscription filter that matches every JSON batch topic.
pub fn all_json_readings_filter() -> String {
    format!("{PREFIX}/+/+/readings/json")
}

/// How a readings topic's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The binary batches of edge agents ([`crate::wire`]).
    Wire,
    /// JSON batches ([`crate::json_batch`]).
    Json,
}

/// The largest MQTT packet MaintAInPro's subscribers accept: well above every decoder's own
/// limit, so that an oversized message is read and refused (a dead letter, a counted problem)
/// instead of breaking the connection, which would have the broker deliver it again forever.
pub const MAX_INCOMING_PACKET: usize = 16 * 1024 * 1024 + 4096;

/// The port of `mqtt://` when the URL names none.
pub const DEFAULT_BROKER_PORT: u16 = 1883;
/// The port of `mqtts://` (MQTT over TLS) when the URL names none.
pub const DEFAULT_TLS_BROKER_PORT: u16 = 8883;

/// Why a broker URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} must start with mqtt:// here (mqtts:// is for the edge agent's uplink)")]
    Scheme(String),
    #[error("{0:?} must start with mqtt:// or mqtts:// (MQTT over TLS)")]
    TlsScheme(String),
    #[error("{url:?} has an invalid port {port:?}")]
    Port { url: String, port: String },
    #[error("{0:?} names no host")]
    NoHost(String),
}

/// A broker to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: MQTT over TLS.
    pub tls: bool,
}

/// Splits a broker URL `mqtt://host[:port][/]` into host and port (default 1883).
pub fn broker_address(url: &str) -> Result<(String, u16), BrokerUrlError> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| BrokerUrlError::Scheme(url.to_owned()))?;
    host_port(url, rest, DEFAULT_BROKER_PORT)
}

/// Reads `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (TLS, default 8883).
pub fn broker_endpoint(url: &str) -> Result<BrokerEndpoint, BrokerUrlError> {
    let (rest, tls, default) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, true, DEFAULT_TLS_BROKER_PORT)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (rest, false, DEFAULT_BROKER_PORT)
    } else {
        return Err(BrokerUrlError::TlsScheme(url.to_owned()));
    };
    let (host, port) = host_port(url, rest, default)?;
    Ok(BrokerEndpoint { host, port, tls })
}

fn host_port(url: &str, rest: &str, default: u16) -> Result<(String, u16), BrokerUrlError> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| BrokerUrlError::Port {
                url: url.to_owned(),
                port: p.to_owned(),
            })?,
        ),
        None => (rest, default),
    };
    // An IPv6 address is written in brackets (`mqtt://[::1]:1883`); the host is the address.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(BrokerUrlError::NoHost(url.to_owned()));
    }
    Ok((host.to_owned(), port))
}

/// Why a topic is not a readings topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not of the form {PREFIX}/<tenant>/<gateway>/readings[/json]")]
    Shape(String),
    #[error("topic {topic:?}: {source}")]
    Id { topic: String, source: IdError },
}

/// Splits a readings topic (either format) into its tenant and gateway.
pub fn parse_readings(topic: &str) -> Result<(TenantId, GatewayId), TopicError> {
    parse_readings_topic(topic).map(|(tenant, gateway, _)| (tenant, gateway))
}

/// Splits a readings topic into its tenant, gateway and payload format.
pub fn parse_readings_topic(topic: &str) -> Result<(TenantId, GatewayId, Format), TopicError> {
    let rest = topic
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| TopicError::Shape(topic.to_owned()))?;
    let mut parts = rest.split('/');
    let (Some(tenant), Some(gateway), Some("readings")) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(TopicError::Shape(topic.to_owned()));
    };
    let format = match (parts.next(), parts.next()) {
        (None, _) => Format::Wire,
        (Some("json"), None) => Format::Json,
        _ => return Err(TopicError::Shape(topic.to_owned())),
    };
    let id_err = |source| TopicError::Id {
        topic: topic.to_owned(),
        source,
    };
    Ok((
        TenantId::parse(tenant).map_err(id_err)?,
        GatewayId::parse(gateway).map_err(id_err)?,
        format,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_topic_round_trips() {
        let tenant = TenantId::new_random();
        let gw = GatewayId::parse("gw-1").unwrap();
        assert_eq!(
            parse_readings(&readings(tenant, &gw)),
            Ok((tenant, gw.clone()))
        );
        assert_eq!(
            parse_readings_topic(&json_readings(tenant, &gw)),
            Ok((tenant, gw.clone(), Format::Json))
        );
        assert_eq!(
            parse_readings_topic(&readings(tenant, &gw)).map(|t| t.2),
            Ok(Format::Wire)
        );
        for bad in ["readings/xml", "readings/json/more"] {
            let topic = format!("{PREFIX}/{tenant}/{gw}/{bad}");
            assert!(parse_readings_topic(&topic).is_err(), "{topic}");
        }
    }

    #[test]
    fn broker_urls_split_into_host_and_port() {
        assert_eq!(
            broker_address("mqtt://10.0.0.5"),
            Ok(("10.0.0.5".into(), 1883))
        );
        assert_eq!(
            broker_address("mqtt://broker:8883/"),
            Ok(("broker".into(), 8883))
        );
        assert!(matches!(
            broker_address("tcp://x"),
            Err(BrokerUrlError::Scheme(_))
        ));
        assert!(matches!(
            broker_address("mqtt://x:y"),
            Err(BrokerUrlError::Port { .. })
        ));
        assert!(matches!(
            broker_address("mqtt://:1"),
            Err(BrokerUrlError::NoHost(_))
        ));
        assert!(matches!(
            broker_address("mqtts://x"),
            Err(BrokerUrlError::Scheme(_))
        ));
    }

    #[test]
    fn tls_broker_urls_default_to_8883() {
        let tls = |host: &str, port| BrokerEndpoint {
            host: host.into(),
            port,
            tls: true,
        };
        assert_eq!(
            broker_endpoint("mqtts://broker.plant"),
            Ok(tls("broker.plant", 8883))
        );
        assert_eq!(
            broker_endpoint("mqtts://10.0.0.5:9883/"),
            Ok(tls("10.0.0.5", 9883))
        );
        assert_eq!(
            broker_endpoint("mqtt://b").map(|e| (e.port, e.tls)),
            Ok((1883, false))
        );
        assert_eq!(broker_endpoint("mqtts://[::1]:8883"), Ok(tls("::1", 8883)));
        assert!(matches!(
            broker_endpoint("ssl://b"),
            Err(BrokerUrlError::TlsScheme(_))
        ));
    }

    #[test]
    fn foreign_topics_are_refused() {
        assert!(parse_readings("maintainpro/v1/x/gw/readings").is_err());
        assert!(parse_readings("other/v1/a/b/readings").is_err());
        let t = TenantId::new_random();
        assert!(parse_readings(&format!("maintainpro/v1/{t}/gw/readings/extra")).is_err());
    }
}
