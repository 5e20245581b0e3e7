//! What the rules engine tells the work-order service: an alarm was raised or cleared.
//!
//! An `AlarmEvent` carries everything needed to open or update a work order without looking
//! anything up: the tenant, asset, failure mode, the rendered work-order draft, and a
//! deterministic idempotency key derived from event time, so a redelivered reading that raises
//! the same alarm again maps to the same key.

use serde::{Deserialize, Serialize};

use crate::{AssetId, Priority, Severity, TagName, TenantId, Timestamp};

/// The trade a work order is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkType {
    #[default]
    Corrective,
    Preventive,
    Inspection,
    Emergency,
    Instrumentation,
}

impl WorkType {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkType::Corrective => "corrective",
            WorkType::Preventive => "preventive",
            WorkType::Inspection => "inspection",
            WorkType::Emergency => "emergency",
            WorkType::Instrumentation => "instrumentation",
        }
    }
}

/// A work order as a rule would open it, with its text already rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrderDraft {
    pub title: String,
    pub description: String,
    pub work_type: WorkType,
    pub priority: Priority,
    pub checklist: Vec<String>,
}

/// Where an alarm happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmSubject {
    pub tenant: TenantId,
    pub asset: AssetId,
    pub tag_id: i64,
    pub tag: TagName,
    pub rule_id: String,
    pub failure_mode: String,
    pub severity: Severity,
}

/// A transition of one alarm (one rule on one tag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlarmEvent {
    /// The condition held long enough: the alarm became active at `at` (event time).
    Raised {
        subject: AlarmSubject,
        at: Timestamp,
        value: f64,
        work_order: WorkOrderDraft,
    },
    /// The clear condition held long enough: the alarm returned to normal at `at`.
    Cleared {
        subject: AlarmSubject,
        raised_at: Timestamp,
        at: Timestamp,
        value: f64,
    },
}

impl AlarmEvent {
    pub fn subject(&self) -> &AlarmSubject {
        match self {
            AlarmEvent::Raised { subject, .. } | AlarmEvent::Cleared { subject, .. } => subject,
        }
    }

    /// The same alarm occurrence always yields the same key: rule, tag and the event time at
    /// which it became active.
    pub fn idempotency_key(&self) -> String {
        let (subject, raised_at) = match self {
            AlarmEvent::Raised { subject, at, .. } => (subject, at),
            AlarmEvent::Cleared {
                subject, raised_at, ..
            } => (subject, raised_at),
        };
        format!(
            "alarm:{}:{}:{}",
            subject.rule_id,
            subject.tag_id,
            raised_at.as_micros()
        )
    }
}
