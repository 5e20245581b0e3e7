//! What the rules engine tells the work-order service: an alarm was raised, escalated or
//! cleared.
//!
//! An `AlarmEvent` carries everything needed to open or update a work order without looking
//! anything up: the tenant, asset, failure mode, the rendered work-order draft, and a
//! deterministic idempotency key derived from event time, so a redelivered reading that raises
//! the same alarm again maps to the same key.

use std::time::Duration;

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
    /// A work order of the same asset and failure mode closed less than this long before
    /// this one opens makes it a repeat failure.
    pub repeat_window: Duration,
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
    /// The alarm has stayed active long enough to reach the next step of its rule's
    /// escalation: `subject.severity` is the new severity and `work_order` carries the
    /// priority that goes with it. `at` is the moment the step was reached (event time).
    Escalated {
        subject: AlarmSubject,
        raised_at: Timestamp,
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
        /// How long the condition must stay clear before a work order nobody has started
        /// closes by itself; `None`: it never does.
        healthy_period: Option<Duration>,
    },
}

impl AlarmEvent {
    pub fn subject(&self) -> &AlarmSubject {
        match self {
            AlarmEvent::Raised { subject, .. }
            | AlarmEvent::Escalated { subject, .. }
            | AlarmEvent::Cleared { subject, .. } => subject,
        }
    }

    /// The alarm occurrence an event belongs to: its rule, tag and the event time at which
    /// it became active (`alarm:<rule>:<tag_id>:<raised_at>`). Every event of one occurrence
    /// shares it.
    pub fn alarm_key(&self) -> String {
        let (subject, raised_at) = match self {
            AlarmEvent::Raised { subject, at, .. } => (subject, at),
            AlarmEvent::Escalated {
                subject, raised_at, ..
            }
            | AlarmEvent::Cleared {
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

    /// The same alarm occurrence always yields the same key: [`AlarmEvent::alarm_key`], to
    /// which an escalation adds the severity it escalated to
    /// (`alarm:<rule>:<tag>:<raised_at>:escalated:<severity>`).
    pub fn idempotency_key(&self) -> String {
        let key = self.alarm_key();
        match self {
            AlarmEvent::Escalated { subject, .. } => {
                format!("{key}:escalated:{}", subject.severity)
            }
            _ => key,
        }
    }
}

/// What to do with a raised alarm, given the open work order for its asset and failure mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Create,
    Append { escalate_to: Option<Priority> },
}

/// The pure dedup decision of the CMMS: a raised alarm opens a work order unless one is
/// already open for its asset and failure mode (`open`, with that work order's priority);
/// then it is appended to it, raising the priority if the alarm is more urgent.
pub fn decide(open: Option<Priority>, incoming: Priority) -> Decision {
    match open {
        None => Decision::Create,
        Some(current) => Decision::Append {
            escalate_to: (incoming > current).then_some(incoming),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;

    #[test]
    fn keys_name_the_raise_and_an_escalation_its_severity() {
        let subject = AlarmSubject {
            tenant: TenantId::from_uuid(uuid::Uuid::nil()),
            asset: AssetId::from_uuid(uuid::Uuid::nil()),
            tag_id: 7,
            tag: TagName::parse("press-1.temp").expect("valid tag name"),
            rule_id: "hot".into(),
            failure_mode: "overheat".into(),
            severity: Severity::Critical,
        };
        let draft = WorkOrderDraft {
            title: "t".into(),
            description: String::new(),
            work_type: WorkType::Corrective,
            priority: Priority::Critical,
            checklist: Vec::new(),
            repeat_window: Duration::from_secs(86_400),
        };
        let raised = AlarmEvent::Raised {
            subject: subject.clone(),
            at: Timestamp::from_micros(5),
            value: 1.0,
            work_order: draft.clone(),
        };
        let escalated = AlarmEvent::Escalated {
            subject,
            raised_at: Timestamp::from_micros(5),
            at: Timestamp::from_micros(9),
            value: 1.0,
            work_order: draft,
        };
        assert_eq!(raised.idempotency_key(), "alarm:hot:7:5");
        assert_eq!(
            escalated.idempotency_key(),
            "alarm:hot:7:5:escalated:critical"
        );
    }

    #[test]
    fn dedup_decisions() {
        use Priority::*;
        assert_eq!(decide(None, Low), Decision::Create);
        assert_eq!(
            decide(Some(Medium), Low),
            Decision::Append { escalate_to: None }
        );
        assert_eq!(
            decide(Some(Medium), Medium),
            Decision::Append { escalate_to: None }
        );
        assert_eq!(
            decide(Some(Medium), Critical),
            Decision::Append {
                escalate_to: Some(Critical)
            }
        );
    }
}
