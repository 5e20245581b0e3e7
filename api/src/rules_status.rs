//! What the running rules engine reports about its rule files, for `GET /api/v1/rules/status`.
//!
//! The rules task writes it when it loads or fails to reload its files; the API reads it. An
//! invalid edit keeps the previous rules running, and the error stays visible here (and in the
//! log and the `maintainpro_rules_reload_failures_total` metric) until a valid file replaces it.

use std::sync::RwLock;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A snapshot of the rules engine's configuration state.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RulesSnapshot {
    /// Whether this process runs the rules engine.
    pub running: bool,
    /// The rule files in force.
    pub source: String,
    pub rules: usize,
    pub loaded_at: Option<DateTime<Utc>>,
    /// Whether the files are watched for changes.
    pub watching: bool,
    /// The last failed reload, while the files on disk are still invalid.
    pub last_error: Option<ReloadError>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReloadError {
    pub at: DateTime<Utc>,
    pub message: String,
}

/// Shared between the rules task (writer) and the API (reader).
#[derive(Debug, Default)]
pub struct RulesStatus(RwLock<RulesSnapshot>);

impl RulesStatus {
    pub fn snapshot(&self) -> RulesSnapshot {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records rules now in force; clears any reload error.
    pub fn loaded(&self, source: &str, rules: usize, watching: bool) {
        self.update(|s| {
            *s = RulesSnapshot {
                running: true,
                source: source.to_owned(),
                rules,
                loaded_at: Some(Utc::now()),
                watching,
                last_error: None,
            };
        });
    }

    /// Records a reload that failed; the rules in force stay.
    pub fn reload_failed(&self, message: String) {
        self.update(|s| {
            s.last_error = Some(ReloadError {
                at: Utc::now(),
                message,
            });
        });
    }

    fn update(&self, f: impl FnOnce(&mut RulesSnapshot)) {
        match self.0.write() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}
