//! Which alarm events page someone now, and which are history.
//!
//! After an outage the edge agent replays its backlog, and the engine sees, late, conditions
//! that began and ended while nobody could see them. Those belong on the asset's history, not
//! in a technician's queue as if they were happening now. The [`Pager`] sits between the
//! engine and the CMMS and sorts events:
//!
//! - A raise whose event time is older than the replay horizon (measured against the current
//!   time) is held, with every later event of the same alarm.
//! - If the alarm's clear arrives while it is held, the whole occurrence becomes
//!   [`Page::History`]: recorded, no work order.
//! - A held alarm is released as [`Page::Now`] (in its original order) once its tag has
//!   caught up, that is, its latest reading is within the horizon of now and the alarm is
//!   still active; or once the tag's replay has made no progress for a horizon's worth of
//!   time, so that a replay that stops short never hides an alarm for good.
//! - Everything else passes through at once.
//!
//! Pure: the caller supplies the current time and the engine's view of each tag's latest
//! reading ([`crate::Engine::last_seen`]).

use std::collections::HashMap;
use std::time::Duration;

use model::Timestamp;
use model::alarm::AlarmEvent;

use crate::kinds::micros;

/// The default replay horizon: a raise whose event time is older than this is treated as
/// replayed data.
pub const DEFAULT_HORIZON: Duration = Duration::from_secs(5 * 60);

/// What to do with alarm events.
// Pages live only between the pager and the CMMS call; boxing the common variant would cost
// an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    /// Apply to the CMMS now: may open or update a work order.
    Now(AlarmEvent),
    /// An alarm that began and cleared in replayed data: the raise, any escalations and the
    /// clear, in order. Record it on the asset's history without opening a work order.
    History(Vec<AlarmEvent>),
}

#[derive(Debug)]
struct Held {
    tag_id: i64,
    events: Vec<AlarmEvent>,
    /// The tag's latest reading when the replay last made progress, and when that was.
    seen: Option<Timestamp>,
    progress_at: Timestamp,
}

/// Holds replayed raises until their outcome is known. See the module documentation.
#[derive(Debug)]
pub struct Pager {
    horizon: i64,
    held: HashMap<String, Held>,
}

impl Pager {
    pub fn new(horizon: Duration) -> Self {
        Self {
            horizon: micros(horizon),
            held: HashMap::new(),
        }
    }

    /// Number of alarms held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Sorts one event from the engine; `now` is the current time.
    pub fn offer(&mut self, event: AlarmEvent, now: Timestamp, out: &mut Vec<Page>) {
        if self.held.is_empty() && !matches!(event, AlarmEvent::Raised { .. }) {
            out.push(Page::Now(event));
            return;
        }
        let key = event.alarm_key();
        match event {
            AlarmEvent::Raised { at, .. } if now.micros_since(at) > self.horizon => {
                let tag_id = event.subject().tag_id;
                self.held.insert(
                    key,
                    Held {
                        tag_id,
                        events: vec![event],
                        seen: None,
                        progress_at: now,
                    },
                );
            }
            AlarmEvent::Cleared { .. } => match self.held.remove(&key) {
                Some(mut held) => {
                    held.events.push(event);
                    out.push(Page::History(held.events));
                }
                None => out.push(Page::Now(event)),
            },
            AlarmEvent::Escalated { .. } => match self.held.get_mut(&key) {
                Some(held) => held.events.push(event),
                None => out.push(Page::Now(event)),
            },
            AlarmEvent::Raised { .. } => out.push(Page::Now(event)),
        }
    }

    /// Releases the held alarms whose tag has caught up with `now`, or whose replay has
    /// stalled for longer than the horizon. `last_seen` gives a tag's latest reading.
    pub fn release(
        &mut self,
        now: Timestamp,
        last_seen: impl Fn(i64) -> Option<Timestamp>,
        out: &mut Vec<Page>,
    ) {
        if self.held.is_empty() {
            return;
        }
        let horizon = self.horizon;
        let mut released: Vec<Vec<AlarmEvent>> = Vec::new();
        self.held.retain(|_, held| {
            let seen = last_seen(held.tag_id);
            let caught_up = seen.is_some_and(|s| now.micros_since(s) <= horizon);
            if seen > held.seen {
                held.seen = seen;
                held.progress_at = now;
            }
            let stalled = now.micros_since(held.progress_at) > horizon;
            if caught_up || stalled {
                released.push(std::mem::take(&mut held.events));
                false
            } else {
                true
            }
        });
        // Oldest raise first, as the engine emitted them.
        released.sort_by_key(|events| events.first().map(raise_time));
        out.extend(released.into_iter().flatten().map(Page::Now));
    }

    /// The alarms still held, oldest raise first, each with the events of the same alarm
    /// that followed its raise.
    pub fn into_held(self) -> Vec<Vec<AlarmEvent>> {
        let mut held: Vec<Vec<AlarmEvent>> = self.held.into_values().map(|h| h.events).collect();
        held.sort_by_key(|events| events.first().map(raise_time));
        held
    }
}

fn raise_time(event: &AlarmEvent) -> Timestamp {
    match event {
        AlarmEvent::Raised { at, .. } => *at,
        AlarmEvent::Escalated { raised_at, .. } | AlarmEvent::Cleared { raised_at, .. } => {
            *raised_at
        }
    }
}

#[cfg(test)]
mod tests {
    use model::alarm::{AlarmSubject, WorkOrderDraft, WorkType};
    use model::{AssetId, Priority, Severity, TagName, TenantId};

    use super::*;

    const MIN: i64 = 60_000_000;

    fn t(minutes: i64) -> Timestamp {
        Timestamp::from_micros(minutes * MIN)
    }

    fn subject(tag_id: i64) -> AlarmSubject {
        AlarmSubject {
            tenant: TenantId::from_uuid(uuid::Uuid::nil()),
            asset: AssetId::from_uuid(uuid::Uuid::nil()),
            tag_id,
            tag: TagName::parse("press-1.temp").expect("valid tag name"),
            rule_id: "hot".into(),
            failure_mode: "overheat".into(),
            severity: Severity::High,
        }
    }

    fn raised(tag_id: i64, at: i64) -> AlarmEvent {
        AlarmEvent::Raised {
            subject: subject(tag_id),
            at: t(at),
            value: 90.0,
            work_order: WorkOrderDraft {
                title: "hot".into(),
                description: String::new(),
                work_type: WorkType::Corrective,
                priority: Priority::High,
                checklist: Vec::new(),
                repeat_window: Duration::from_secs(86_400),
            },
        }
    }

    fn cleared(tag_id: i64, raised_at: i64, at: i64) -> AlarmEvent {
        AlarmEvent::Cleared {
            subject: subject(tag_id),
            raised_at: t(raised_at),
            at: t(at),
            value: 70.0,
            healthy_period: None,
        }
    }

    fn pager() -> Pager {
        Pager::new(Duration::from_secs(5 * 60))
    }

    #[test]
    fn live_events_pass_through() {
        let mut p = pager();
        let mut out = Vec::new();
        p.offer(raised(1, 100), t(101), &mut out);
        p.offer(cleared(1, 100, 102), t(102), &mut out);
        assert_eq!(
            out,
            [Page::Now(raised(1, 100)), Page::Now(cleared(1, 100, 102))]
        );
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn a_condition_that_began_and_ended_in_a_replay_is_history() {
        let mut p = pager();
        let mut out = Vec::new();
        p.offer(raised(1, 10), t(100), &mut out);
        assert!(out.is_empty());
        p.release(t(100), |_| Some(t(10)), &mut out);
        assert!(out.is_empty(), "still replaying: {out:?}");
        p.offer(cleared(1, 10, 20), t(101), &mut out);
        assert_eq!(
            out,
            [Page::History(vec![raised(1, 10), cleared(1, 10, 20)])]
        );
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn a_replayed_condition_still_active_once_caught_up_pages_now() {
        let mut p = pager();
        let mut out = Vec::new();
        p.offer(raised(1, 10), t(100), &mut out);
        p.release(t(100), |_| Some(t(50)), &mut out);
        assert!(out.is_empty());
        p.release(t(101), |_| Some(t(99)), &mut out);
        assert_eq!(out, [Page::Now(raised(1, 10))]);
        out.clear();
        // Its clear, later, is a live event.
        p.offer(cleared(1, 10, 120), t(120), &mut out);
        assert_eq!(out, [Page::Now(cleared(1, 10, 120))]);
    }

    #[test]
    fn a_replay_that_stops_short_releases_the_alarm_after_the_horizon() {
        let mut p = pager();
        let mut out = Vec::new();
        p.offer(raised(1, 10), t(100), &mut out);
        p.release(t(100), |_| Some(t(40)), &mut out);
        p.release(t(104), |_| Some(t(60)), &mut out);
        assert!(out.is_empty(), "progressing: {out:?}");
        p.release(t(109), |_| Some(t(60)), &mut out);
        assert!(out.is_empty(), "stalled for less than the horizon: {out:?}");
        p.release(t(110), |_| Some(t(60)), &mut out);
        assert_eq!(out, [Page::Now(raised(1, 10))]);
    }

    #[test]
    fn other_alarms_are_not_held_behind_a_held_one() {
        let mut p = pager();
        let mut out = Vec::new();
        p.offer(raised(1, 10), t(100), &mut out);
        p.offer(raised(2, 99), t(100), &mut out);
        p.offer(cleared(3, 1, 2), t(100), &mut out);
        assert_eq!(out, [Page::Now(raised(2, 99)), Page::Now(cleared(3, 1, 2))]);
        assert_eq!(p.held(), 1);
    }
}
