//! # stale
//!
#![doc = include_str!("stale.md")]

use std::time::Duration;

use serde::Deserialize;

use crate::kinds::{Problem, check_positive, micros};

/// The reference text of this kind (the module's doc comment).
pub const DOC: &str = include_str!("stale.md");

/// `[rule.stale]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Table {
    #[serde(with = "humantime_serde")]
    after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    pub after: Duration,
    after_micros: i64,
}

impl Stale {
    pub(crate) fn parse(t: Table) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        check_positive("after", t.after, "5m", &mut problems);
        if problems.is_empty() {
            Ok(Self {
                after: t.after,
                after_micros: micros(t.after),
            })
        } else {
            Err(problems)
        }
    }

    /// The longest normal silence, in microseconds.
    pub(crate) fn after_micros(&self) -> i64 {
        self.after_micros
    }
}
