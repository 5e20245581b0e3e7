//! Identifiers. Each is built only through `parse` (or from a UUID) so that a value of the type
//! is always valid: topic-safe, bounded in length, never empty.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; the limit is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} {value:?} contains {found:?}; allowed are letters, digits and {allowed}")]
    BadCharacter {
        kind: &'static str,
        value: String,
        found: char,
        allowed: &'static str,
    },
    #[error("{kind} {value:?} is not a UUID")]
    NotUuid { kind: &'static str, value: String },
}

fn check_name(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = value.chars().count();
    if len > max {
        return Err(IdError::TooLong { kind, len, max });
    }
    if let Some(found) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || allowed.contains(*c)))
    {
        return Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
            found,
            allowed,
        });
    }
    Ok(())
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }

            pub fn parse(value: &str) -> Result<Self, IdError> {
                Uuid::parse_str(value).map(Self).map_err(|_| IdError::NotUuid {
                    kind: $kind,
                    value: value.to_owned(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// An organisation using MaintAInPro; every CMMS row belongs to exactly one.
    TenantId,
    "tenant id"
);
uuid_id!(
    /// A piece of equipment maintained as a unit (a pump, a press, a conveyor).
    AssetId,
    "asset id"
);

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The longest value accepted, in characters.
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_name($kind, &value, $max, $allowed)?;
                Ok(Self(value))
            }

            /// Like [`Self::parse`], but every character the name cannot hold becomes `_`
            /// first: for names built from other systems' identifiers. Fails only when the
            /// result is empty or too long.
            pub fn parse_lossy(value: &str) -> Result<Self, IdError> {
                let clean: String = value
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || $allowed.contains(c) { c } else { '_' })
                    .collect();
                Self::parse(clean)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A gateway's code, unique within its tenant. It appears in MQTT topics, so it excludes
    /// `/`, `+` and `#`.
    GatewayId,
    "gateway id",
    64,
    "-_."
);
name_id!(
    /// A tag's name, unique within its gateway (for example `press-1.bearing_temp`).
    TagName,
    "tag name",
    128,
    "-_.:/"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_ids_are_topic_safe() {
        assert!(GatewayId::parse("line-1_gw.a").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "a b"] {
            assert!(GatewayId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = "x".repeat(65);
        assert!(matches!(
            GatewayId::parse(long),
            Err(IdError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn tag_names_allow_plant_paths() {
        assert!(TagName::parse("site/line-1:press_2.temp").is_ok());
        let err = TagName::parse("temp#1").unwrap_err();
        assert!(err.to_string().contains("'#'"), "{err}");
    }

    #[test]
    fn uuid_ids_parse_or_say_why() {
        let id = TenantId::new_random();
        assert_eq!(TenantId::parse(&id.to_string()), Ok(id));
        assert!(
            TenantId::parse("acme")
                .unwrap_err()
                .to_string()
                .contains("not a UUID")
        );
    }
}
