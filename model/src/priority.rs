//! Rule severity, asset criticality, and the matrix that turns the two into a work-order
//! priority.
//!
//! | severity \ criticality | low (1-2) | medium (3) | high (4-5) |
//! |------------------------|-----------|------------|------------|
//! | low                    | low       | low        | medium     |
//! | medium                 | low       | medium     | high       |
//! | high                   | medium    | high       | critical   |
//! | critical               | high      | critical   | critical   |

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! level {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            Low,
            Medium,
            High,
            Critical,
        }

        impl $name {
            pub const ALL: [$name; 4] = [$name::Low, $name::Medium, $name::High, $name::Critical];

            pub fn as_str(self) -> &'static str {
                match self {
                    $name::Low => "low",
                    $name::Medium => "medium",
                    $name::High => "high",
                    $name::Critical => "critical",
                }
            }

            pub fn parse(value: &str) -> Option<Self> {
                Self::ALL.into_iter().find(|l| l.as_str() == value)
            }

            /// 0 for low up to 3 for critical.
            pub fn rank(self) -> u8 {
                self as u8
            }

            /// The level of a rank; ranks above 3 mean critical.
            pub fn from_rank(rank: u8) -> Self {
                Self::ALL[usize::from(rank.min(3))]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

level!(
    /// How bad a rule says a condition is.
    Severity
);
level!(
    /// How urgently a work order must be worked.
    Priority
);

/// How much an asset matters to the plant, 1 (spare, redundant) to 5 (line stops without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Criticality(u8);

impl Criticality {
    pub const DEFAULT: Criticality = Criticality(3);

    pub fn new(level: u8) -> Option<Self> {
        (1..=5).contains(&level).then_some(Self(level))
    }

    pub fn level(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Criticality {
    type Error = String;
    fn try_from(level: u8) -> Result<Self, Self::Error> {
        Self::new(level).ok_or_else(|| format!("criticality {level} is outside 1..=5"))
    }
}

impl From<Criticality> for u8 {
    fn from(c: Criticality) -> u8 {
        c.0
    }
}

impl Priority {
    /// The documented matrix: criticality 3 keeps the severity, 4-5 raise it one step,
    /// 1-2 lower it one step.
    pub fn from_matrix(severity: Severity, criticality: Criticality) -> Priority {
        let base = severity.rank();
        let rank = match criticality.level() {
            1 | 2 => base.saturating_sub(1),
            3 => base,
            _ => base + 1,
        };
        Priority::from_rank(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_matches_the_documented_table() {
        let c = |l| Criticality::new(l).unwrap();
        let table = [
            (
                Severity::Low,
                [Priority::Low, Priority::Low, Priority::Medium],
            ),
            (
                Severity::Medium,
                [Priority::Low, Priority::Medium, Priority::High],
            ),
            (
                Severity::High,
                [Priority::Medium, Priority::High, Priority::Critical],
            ),
            (
                Severity::Critical,
                [Priority::High, Priority::Critical, Priority::Critical],
            ),
        ];
        for (sev, row) in table {
            assert_eq!(Priority::from_matrix(sev, c(1)), row[0]);
            assert_eq!(Priority::from_matrix(sev, c(2)), row[0]);
            assert_eq!(Priority::from_matrix(sev, c(3)), row[1]);
            assert_eq!(Priority::from_matrix(sev, c(4)), row[2]);
            assert_eq!(Priority::from_matrix(sev, c(5)), row[2]);
        }
    }

    #[test]
    fn criticality_is_bounded() {
        assert!(Criticality::new(0).is_none());
        assert!(Criticality::new(6).is_none());
        assert!(serde_json::from_str::<Criticality>("9").is_err());
    }
}
