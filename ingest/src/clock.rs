//! Whether a reading's time is one a working clock gives: not far ahead of ingest's clock, not
//! far behind it (pure). A gateway whose clock lost its year (1970 after a battery change) or
//! sends local time as UTC would otherwise store readings where no query looks, and one stamped
//! years ahead would hide every later reading of its tag from the rules (they evaluate a tag's
//! readings in time order).

use std::time::Duration;

use model::Timestamp;

/// How far from ingest's clock a reading's time may lie (`ingest.max_clock_ahead`,
/// `ingest.max_reading_age`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub ahead: Duration,
    pub age: Duration,
}

/// A time outside the [`Window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untimely {
    /// Later than the clock by more than [`Window::ahead`], by this much.
    Ahead(Duration),
    /// Earlier than the clock by more than [`Window::age`], by this much.
    TooOld(Duration),
}

impl Untimely {
    /// The dead letter's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Untimely::Ahead(_) => "future_timestamp",
            Untimely::TooOld(_) => "old_timestamp",
        }
    }
}

impl Window {
    /// Whether `ts` lies within the window around `now`.
    pub fn check(&self, ts: Timestamp, now: Timestamp) -> Result<(), Untimely> {
        let offset = ts.micros_since(now);
        let by = Duration::from_micros(offset.unsigned_abs());
        if offset > 0 && by > self.ahead {
            Err(Untimely::Ahead(by))
        } else if offset < 0 && by > self.age {
            Err(Untimely::TooOld(by))
        } else {
            Ok(())
        }
    }

    /// What a dead letter says of point `index`, stamped `ts`, which [`Window::check`] refused.
    pub fn explain(&self, index: usize, ts: Timestamp, untimely: Untimely) -> String {
        // Whole seconds: what the clock is off by, not how long the check took.
        let round = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        match untimely {
            Untimely::Ahead(by) => format!(
                "point {index} is stamped {ts}, {} ahead of this server's clock (at most {} \
                 allowed, ingest.max_clock_ahead); set the gateway's clock right",
                round(by),
                round(self.ahead)
            ),
            Untimely::TooOld(by) => format!(
                "point {index} is stamped {ts}, {} before this server's clock (at most {} \
                 allowed, ingest.max_reading_age); set the gateway's clock right, or raise \
                 the limit to take older history",
                round(by),
                round(self.age)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn window() -> Window {
        Window {
            ahead: HOUR,
            age: 30 * DAY,
        }
    }

    fn at(now: Timestamp, offset: i64) -> Timestamp {
        now.plus_micros(offset)
    }

    #[test]
    fn times_within_the_window_pass_up_to_its_edges() {
        let now = Timestamp::from_micros(1_800_000_000_000_000);
        let hour = 3_600_000_000;
        let w = window();
        for offset in [0, 1, -1, hour, -30 * 24 * hour] {
            assert_eq!(w.check(at(now, offset), now), Ok(()), "{offset}");
        }
        assert_eq!(
            w.check(at(now, hour + 1), now),
            Err(Untimely::Ahead(Duration::from_micros(hour as u64 + 1)))
        );
        assert_eq!(
            w.check(at(now, -30 * 24 * hour - 1), now),
            Err(Untimely::TooOld(Duration::from_micros(
                30 * 24 * hour as u64 + 1
            )))
        );
    }

    #[test]
    fn the_extremes_of_a_timestamp_do_not_overflow() {
        let now = Timestamp::from_micros(1_800_000_000_000_000);
        let w = Window {
            ahead: Duration::MAX,
            age: Duration::MAX,
        };
        assert_eq!(w.check(Timestamp::from_micros(i64::MAX), now), Ok(()));
        assert_eq!(w.check(Timestamp::from_micros(i64::MIN), now), Ok(()));
        let w = window();
        assert!(matches!(
            w.check(Timestamp::from_micros(i64::MAX), now),
            Err(Untimely::Ahead(_))
        ));
        assert!(matches!(
            w.check(Timestamp::from_micros(i64::MIN), now),
            Err(Untimely::TooOld(_))
        ));
    }

    #[test]
    fn a_refusal_says_by_how_much_which_setting_and_what_to_do() {
        let now = Timestamp::from_micros(1_800_000_000_000_000);
        let w = window();
        let ts = at(now, 2 * 3_600_000_000 + 500_000);
        let untimely = w.check(ts, now).unwrap_err();
        assert_eq!(untimely.reason(), "future_timestamp");
        let text = w.explain(3, ts, untimely);
        assert!(
            text.starts_with("point 3 is stamped 2027-01-15T10:00:00.500000Z, 2h ahead"),
            "{text}"
        );
        assert!(
            text.contains("at most 1h allowed, ingest.max_clock_ahead"),
            "{text}"
        );
        let ts = Timestamp::from_micros(0);
        let untimely = w.check(ts, now).unwrap_err();
        assert_eq!(untimely.reason(), "old_timestamp");
        let text = w.explain(0, ts, untimely);
        assert!(text.contains("1970-01-01T00:00:00.000000Z"), "{text}");
        assert!(text.contains("ingest.max_reading_age"), "{text}");
    }
}
