//! The subscription watchdog and the gap marks. Pure: time is passed in.
//!
//! A subscription shows it is alive by what it delivers: data, or a keep-alive after
//! `keep_alive_count` empty publishing intervals. One that delivers neither within the
//! watchdog's bound is dead even if the session says it is connected (a server that lost it
//! after a restart, a reconnect that did not bring it back), and is rebuilt.
//!
//! Whenever data stops for a reason the agent knows (connection lost, subscription silent,
//! server unreachable), every tag gets one bad reading at the moment it was noticed, so the
//! gap shows in the history instead of the last good value seeming to hold. The next gap is
//! marked only once data has resumed.

use std::time::{Duration, Instant};

use model::{Quality, Reading, TagName, Timestamp};

/// Whether a subscription has shown a sign of life recently enough.
#[derive(Debug, Clone)]
pub struct Watchdog {
    bound: Duration,
    last_sign: Instant,
}

impl Watchdog {
    /// A watchdog over a subscription created at `now`.
    pub fn new(bound: Duration, now: Instant) -> Self {
        Self {
            bound,
            last_sign: now,
        }
    }

    /// Data or a keep-alive arrived at `now`.
    pub fn sign(&mut self, now: Instant) {
        self.last_sign = self.last_sign.max(now);
    }

    /// The moment the subscription counts as dead unless a sign arrives first.
    pub fn deadline(&self) -> Instant {
        // A bound too large for the clock (validation refuses them) means a year.
        self.last_sign
            .checked_add(self.bound)
            .unwrap_or_else(|| self.last_sign + Duration::from_secs(365 * 86_400))
    }

    /// Whether the subscription is dead at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// How long the subscription has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_sign)
    }
}

/// Marks each gap in a source's data once.
#[derive(Debug, Clone, Default)]
pub struct GapMarker {
    in_gap: bool,
}

impl GapMarker {
    /// Data stopped at `at`: one bad reading per tag, or none if this gap is already marked.
    pub fn gap<'a>(
        &mut self,
        tags: impl IntoIterator<Item = &'a TagName>,
        at: Timestamp,
    ) -> Vec<Reading> {
        if self.in_gap {
            return Vec::new();
        }
        self.in_gap = true;
        tags.into_iter()
            .map(|tag| Reading {
                tag: tag.clone(),
                ts: at,
                value: 0.0,
                quality: Quality::Bad,
            })
            .collect()
    }

    /// Data arrived: the next stop is a new gap.
    pub fn resumed(&mut self) {
        self.in_gap = false;
    }

    pub fn in_gap(&self) -> bool {
        self.in_gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_subscription_expires_after_the_bound_and_signs_push_the_deadline() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::from_secs(30), t0);
        assert!(!w.expired(t0 + Duration::from_secs(29)));
        assert!(w.expired(t0 + Duration::from_secs(30)));
        w.sign(t0 + Duration::from_secs(20));
        assert!(!w.expired(t0 + Duration::from_secs(49)));
        assert!(w.expired(t0 + Duration::from_secs(50)));
        assert_eq!(
            w.silent_for(t0 + Duration::from_secs(50)),
            Duration::from_secs(30)
        );
        // A sign that arrives late (out of order) never moves the deadline back.
        w.sign(t0 + Duration::from_secs(5));
        assert_eq!(w.deadline(), t0 + Duration::from_secs(50));
    }

    #[test]
    fn each_gap_is_marked_once_with_a_bad_reading_per_tag() {
        let tags = [TagName::parse("a").unwrap(), TagName::parse("b").unwrap()];
        let at = Timestamp::from_micros(1_000);
        let mut g = GapMarker::default();
        let marks = g.gap(&tags, at);
        assert_eq!(marks.len(), 2);
        assert!(
            marks
                .iter()
                .all(|r| r.quality == Quality::Bad && r.ts == at)
        );
        assert!(g.gap(&tags, at.plus_micros(5)).is_empty(), "same gap");
        g.resumed();
        assert_eq!(g.gap(&tags, at.plus_micros(9)).len(), 2, "a new gap");
    }
}
