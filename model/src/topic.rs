//! MQTT topic names shared by edge agents and ingest.
//!
//! Readings travel on `maintainpro/v1/<tenant uuid>/<gateway id>/readings`. The tenant is part of
//! the topic so that a broker ACL can bind a gateway's credentials to its tenant's subtree.

use crate::{GatewayId, IdError, TenantId};

pub const PREFIX: &str = "maintainpro/v1";

/// The topic a gateway publishes its reading batches on.
pub fn readings(tenant: TenantId, gateway: &GatewayId) -> String {
    format!("{PREFIX}/{tenant}/{gateway}/readings")
}

/// The subscription filter that matches every gateway of every tenant.
pub fn all_readings_filter() -> String {
    format!("{PREFIX}/+/+/readings")
}

/// Why a topic is not a readings topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not of the form {PREFIX}/<tenant>/<gateway>/readings")]
    Shape(String),
    #[error("topic {topic:?}: {source}")]
    Id { topic: String, source: IdError },
}

/// Splits a readings topic into its tenant and gateway.
pub fn parse_readings(topic: &str) -> Result<(TenantId, GatewayId), TopicError> {
    let rest = topic
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| TopicError::Shape(topic.to_owned()))?;
    let mut parts = rest.split('/');
    let (Some(tenant), Some(gateway), Some("readings"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TopicError::Shape(topic.to_owned()));
    };
    let id_err = |source| TopicError::Id {
        topic: topic.to_owned(),
        source,
    };
    Ok((
        TenantId::parse(tenant).map_err(id_err)?,
        GatewayId::parse(gateway).map_err(id_err)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_topic_round_trips() {
        let tenant = TenantId::new_random();
        let gw = GatewayId::parse("gw-1").unwrap();
        assert_eq!(parse_readings(&readings(tenant, &gw)), Ok((tenant, gw)));
    }

    #[test]
    fn foreign_topics_are_refused() {
        assert!(parse_readings("maintainpro/v1/x/gw/readings").is_err());
        assert!(parse_readings("other/v1/a/b/readings").is_err());
        let t = TenantId::new_random();
        assert!(parse_readings(&format!("maintainpro/v1/{t}/gw/readings/extra")).is_err());
    }
}
