//! Preventive maintenance schedules: when their occurrences fall, and which of them to turn
//! into work orders now. Pure; the scheduler (`routes::pm::run_due`) reads the schedules, asks
//! here and writes.
//!
//! - A **calendar** schedule repeats every N days, weeks or months from a start, at a local
//!   time in an IANA time zone: occurrence `n` is the start plus `n` steps, computed from the
//!   start each time, so a schedule starting on the 31st falls on the last day of shorter
//!   months and goes back to the 31st after them. Local times are turned into UTC in the
//!   schedule's zone: across a DST change the local time stays (08:00 stays 08:00); a local
//!   time that does not exist (the hour skipped in spring) is read with the offset before the
//!   change (02:30 becomes 03:30), a time that exists twice (autumn) is the first of the two.
//! - A **meter** schedule repeats every N units of a counter tag (operating hours, cycles):
//!   occurrence `n` (from 0) falls when the counter reaches `start + (n + 1) * every`.
//!
//! [`plan`] decides, from the occurrences not handled yet, what to generate: every occurrence
//! whose lead window has opened and that is still ahead, and of those already past only the
//! latest (generated late); the older past ones are skipped, visibly. A restarted scheduler
//! asks again with what it recorded and gets nothing twice.

use chrono::{DateTime, Duration, Months, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The step of a calendar schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Every {
    Days(u32),
    Weeks(u32),
    Months(u32),
    /// The local times a five-field cron expression matches (boxed: a parsed expression is
    /// a few hundred bytes, the steps four).
    Cron(Box<CronRule>),
}

/// A cron expression (minute, hour, day of month, month, day of week; names, ranges, steps,
/// lists, `L` and `#`; a day of month and a day of week both restricted match either, as in
/// Vixie cron), with the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronRule {
    text: String,
    cron: croner::Cron,
}

impl CronRule {
    pub fn parse(text: &str) -> Result<CronRule, String> {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.split(' ').count() != 5 {
            return Err(
                "a cron expression has five fields: minute hour day-of-month month day-of-week"
                    .into(),
            );
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(&text)
            .map_err(|e| format!("not a valid cron expression: {e}"))?;
        Ok(CronRule { text, cron })
    }

    /// The first local time at or after `from` that the expression matches, within about
    /// five years (an expression that matches nothing, e.g. `0 0 30 2 *`, has none).
    fn next_at_or_after(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        // Matched on the wall clock: the local time read as if it were UTC, which has no
        // DST; the schedule's zone turns matches into instants afterwards.
        let found = self
            .cron
            .find_next_occurrence(&Utc.from_utc_datetime(&from), true)
            .ok()?
            .naive_utc();
        (found - from <= Duration::days(5 * 366)).then_some(found)
    }
}

impl Every {
    /// Parses `"3 days"`, `"1 week"`, `"6 months"` (1-1000), or `"cron <expression>"`.
    pub fn parse(text: &str) -> Option<Every> {
        Self::parse_or_explain(text).ok()
    }

    /// As [`Every::parse`], with what is wrong when it is not valid.
    pub fn parse_or_explain(text: &str) -> Result<Every, String> {
        if let Some(expression) = text.trim_start().strip_prefix("cron ") {
            return CronRule::parse(expression).map(|rule| Every::Cron(Box::new(rule)));
        }
        Self::parse_step(text).ok_or_else(|| {
            "must be \"N days\", \"N weeks\" or \"N months\" (N 1-1000), or \"cron \" and a \
             five-field cron expression"
                .into()
        })
    }

    fn parse_step(text: &str) -> Option<Every> {
        let mut parts = text.split_whitespace();
        let n: u32 = parts.next()?.parse().ok()?;
        let unit = parts.next()?;
        if parts.next().is_some() || !(1..=1000).contains(&n) {
            return None;
        }
        match unit {
            "day" | "days" => Some(Every::Days(n)),
            "week" | "weeks" => Some(Every::Weeks(n)),
            "month" | "months" => Some(Every::Months(n)),
            _ => None,
        }
    }

    pub fn to_text(&self) -> String {
        match self {
            Every::Days(n) => format!("{n} days"),
            Every::Weeks(n) => format!("{n} weeks"),
            Every::Months(n) => format!("{n} months"),
            Every::Cron(rule) => format!("cron {}", rule.text),
        }
    }
}

/// A calendar schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    /// The first occurrence, in local time of `zone`.
    pub start: NaiveDateTime,
    pub zone: Tz,
    pub every: Every,
}

impl Calendar {
    /// The first occurrence numbered `from` or later. Steps number occurrences 0, 1, 2, ...
    /// from the start; a cron calendar numbers each match by the minutes from the start to
    /// it (so the next one after occurrence `n` is found from `n` alone, without counting
    /// the matches before it). `None` past the calendar's range.
    pub fn next_occurrence(&self, from: u32) -> Option<Occurrence> {
        match &self.every {
            Every::Cron(rule) => {
                let at = rule.next_at_or_after(
                    self.start
                        .checked_add_signed(Duration::minutes(i64::from(from)))?,
                )?;
                let n = u32::try_from((at - self.start).num_minutes()).ok()?;
                Some(Occurrence {
                    n,
                    due: to_utc(self.zone, at),
                })
            }
            _ => Some(Occurrence {
                n: from,
                due: self.occurrence(from)?,
            }),
        }
    }

    /// The due times of the next `count` occurrences numbered `from` or later.
    pub fn upcoming(&self, from: u32, count: usize) -> Vec<DateTime<Utc>> {
        let mut due = Vec::with_capacity(count);
        let mut n = Some(from);
        while let Some(o) = n
            .filter(|_| due.len() < count)
            .and_then(|n| self.next_occurrence(n))
        {
            due.push(o.due);
            n = o.n.checked_add(1);
        }
        due
    }

    /// Occurrence `n` (0 = the start) in UTC; `None` past the calendar's range, and for
    /// numbers a cron calendar does not use.
    pub fn occurrence(&self, n: u32) -> Option<DateTime<Utc>> {
        let local = match self.every {
            Every::Days(k) => self
                .start
                .checked_add_signed(Duration::days(i64::from(k) * i64::from(n)))?,
            Every::Weeks(k) => self
                .start
                .checked_add_signed(Duration::weeks(i64::from(k) * i64::from(n)))?,
            Every::Months(k) => self
                .start
                .checked_add_months(Months::new(k.checked_mul(n)?))?,
            Every::Cron(_) => return self.next_occurrence(n).filter(|o| o.n == n).map(|o| o.due),
        };
        Some(to_utc(self.zone, local))
    }
}

/// `local` in `zone` as UTC: the first of two times in an overlap; in a gap, read with the
/// offset in force before it.
pub fn to_utc(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    use chrono::LocalResult;
    use chrono::Offset;
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // Gaps are shorter than a day: the offset a day before is the one before the gap.
            let before = zone
                .offset_from_utc_datetime(&(local - Duration::days(1)))
                .fix();
            Utc.from_utc_datetime(&(local - Duration::seconds(i64::from(before.local_minus_utc()))))
        }
    }
}

/// An occurrence to handle: its number and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub n: u32,
    pub due: DateTime<Utc>,
}

/// What to do with the occurrences whose lead window has opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// To turn into work orders, with whether each is late (its due time has passed).
    pub generate: Vec<(Occurrence, bool)>,
    /// Past occurrences left out because a later one is generated.
    pub skipped: Vec<Occurrence>,
}

/// The most occurrences one round handles for one schedule.
pub const MAX_PER_ROUND: u32 = 100;

/// The plan for a calendar schedule whose occurrences up to `handled` (if any) are recorded,
/// at `now`, with work orders generated `lead` ahead of their due time.
pub fn plan(calendar: &Calendar, handled: Option<u32>, now: DateTime<Utc>, lead: Duration) -> Plan {
    let first = handled.map_or(0, |h| h + 1);
    let mut open = Vec::new();
    let mut n = first;
    while let Some(o) = calendar.next_occurrence(n) {
        if o.due - lead > now {
            break;
        }
        open.push(o);
        // Far behind (a schedule started long ago, or a long outage): only the latest past
        // occurrences matter; the count stays bounded.
        if open.len() as u32 >= MAX_PER_ROUND * 10 {
            open.drain(..open.len() - 1);
        }
        let Some(next) = o.n.checked_add(1) else {
            break;
        };
        n = next;
    }
    split(open, now)
}

/// Past occurrences but the latest are skipped; the latest past one is generated late; the
/// ones still ahead are generated on time. At most [`MAX_PER_ROUND`] are generated.
fn split(open: Vec<Occurrence>, now: DateTime<Utc>) -> Plan {
    let past = open.iter().take_while(|o| o.due <= now).count();
    let mut result = Plan::default();
    for (i, o) in open.into_iter().enumerate() {
        if i + 1 < past {
            result.skipped.push(o);
        } else if (result.generate.len() as u32) < MAX_PER_ROUND {
            result.generate.push((o, i < past));
        }
    }
    result
}

/// A meter schedule: every `every` units of a counter from `start`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Meter {
    pub start: f64,
    pub every: f64,
}

impl Meter {
    /// The counter value at which occurrence `n` falls: the first `every` after the start.
    pub fn threshold(&self, n: u32) -> f64 {
        self.start + (f64::from(n) + 1.0) * self.every
    }
}

/// The plan for a meter schedule at counter value `value`, generating `lead` units ahead.
/// Only the latest reached occurrence is generated (a counter that jumped skips the ones in
/// between); it is late when the counter is past its threshold. `now` dates the occurrences.
pub fn meter_plan(
    meter: &Meter,
    handled: Option<u32>,
    value: f64,
    lead: f64,
    now: DateTime<Utc>,
) -> Plan {
    if !(value.is_finite() && meter.every > 0.0) {
        return Plan::default();
    }
    let first = handled.map_or(0, |h| h + 1);
    // The highest n with threshold(n) - lead <= value.
    let reached = ((value + lead - meter.start) / meter.every).floor() - 1.0;
    if reached < f64::from(first) {
        return Plan::default();
    }
    let latest = reached.min(f64::from(u32::MAX - 1)) as u32;
    let mut result = Plan::default();
    let skipped_from = first.max(latest.saturating_sub(MAX_PER_ROUND * 10));
    for n in skipped_from..latest {
        result.skipped.push(Occurrence { n, due: now });
    }
    let late = value >= meter.threshold(latest);
    result.generate.push((
        Occurrence {
            n: latest,
            due: now,
        },
        late,
    ));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, min, 0)
            .unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(Every::parse("3 days"), Some(Every::Days(3)));
        assert_eq!(Every::parse("1 week"), Some(Every::Weeks(1)));
        assert_eq!(Every::parse("6 months"), Some(Every::Months(6)));
        for bad in [
            "",
            "0 days",
            "days",
            "3",
            "3 fortnights",
            "1 day extra",
            "1001 days",
        ] {
            assert_eq!(Every::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn monthly_from_the_31st_falls_on_month_ends_and_returns_to_the_31st() {
        let cal = Calendar {
            start: local(2027, 1, 31, 8, 0),
            zone: chrono_tz::UTC,
            every: Every::Months(1),
        };
        let days: Vec<String> = (0..5)
            .map(|n| cal.occurrence(n).unwrap().format("%Y-%m-%d").to_string())
            .collect();
        assert_eq!(
            days,
            [
                "2027-01-31",
                "2027-02-28",
                "2027-03-31",
                "2027-04-30",
                "2027-05-31"
            ]
        );
        let leap = Calendar {
            start: local(2028, 1, 31, 8, 0),
            ..cal
        };
        assert_eq!(
            leap.occurrence(1).unwrap().format("%Y-%m-%d").to_string(),
            "2028-02-29"
        );
    }

    #[test]
    fn the_local_time_stays_across_dst_changes() {
        // Europe/Berlin: CET (+1) until 2027-03-28 02:00, then CEST (+2) until 2027-10-31.
        let cal = Calendar {
            start: local(2027, 3, 27, 8, 0),
            zone: chrono_tz::Europe::Berlin,
            every: Every::Days(1),
        };
        assert_eq!(cal.occurrence(0).unwrap(), utc("2027-03-27T07:00:00Z"));
        assert_eq!(cal.occurrence(1).unwrap(), utc("2027-03-28T06:00:00Z"));
        let autumn = Calendar {
            start: local(2027, 10, 30, 8, 0),
            ..cal.clone()
        };
        assert_eq!(autumn.occurrence(1).unwrap(), utc("2027-10-31T07:00:00Z"));
        // Weekly across both changes keeps 08:00 local.
        let weekly = Calendar {
            start: local(2027, 3, 1, 8, 0),
            zone: chrono_tz::America::New_York,
            every: Every::Weeks(2),
        };
        for n in 0..30 {
            let t = weekly
                .occurrence(n)
                .unwrap()
                .with_timezone(&chrono_tz::America::New_York);
            assert_eq!(t.format("%H:%M").to_string(), "08:00", "occurrence {n}");
        }
    }

    #[test]
    fn times_in_a_gap_move_forward_and_times_in_an_overlap_take_the_first() {
        let berlin = chrono_tz::Europe::Berlin;
        // 02:30 does not exist on 2027-03-28: read with +01:00, it is 01:30Z (03:30 CEST).
        assert_eq!(
            to_utc(berlin, local(2027, 3, 28, 2, 30)),
            utc("2027-03-28T01:30:00Z")
        );
        // 02:30 exists twice on 2027-10-31: the first is CEST, 00:30Z.
        assert_eq!(
            to_utc(berlin, local(2027, 10, 31, 2, 30)),
            utc("2027-10-31T00:30:00Z")
        );
    }

    fn daily() -> Calendar {
        Calendar {
            start: local(2027, 5, 1, 6, 0),
            zone: chrono_tz::UTC,
            every: Every::Days(1),
        }
    }

    #[test]
    fn occurrences_are_generated_a_lead_ahead_and_never_twice() {
        let cal = daily();
        let lead = Duration::days(2);
        let now = utc("2027-04-29T07:00:00Z");
        let first = plan(&cal, None, now, lead);
        assert_eq!(first.generate.len(), 1);
        assert_eq!(first.generate[0].0.n, 0);
        assert!(!first.generate[0].1);
        // A restart that recorded n = 0 gets nothing until the next window opens.
        assert_eq!(plan(&cal, Some(0), now, lead), Plan::default());
        let later = plan(&cal, Some(0), utc("2027-04-30T06:00:00Z"), lead);
        assert_eq!(
            later.generate.iter().map(|g| g.0.n).collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn after_an_outage_the_latest_past_occurrence_is_late_and_the_older_ones_skipped() {
        let cal = daily();
        let now = utc("2027-05-05T12:00:00Z");
        let p = plan(&cal, Some(0), now, Duration::hours(12));
        // Past: 1 (May 2), 2, 3, 4 (May 5 06:00); ahead within 12 h: none (May 6 06:00).
        assert_eq!(p.skipped.iter().map(|o| o.n).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            p.generate,
            vec![(
                Occurrence {
                    n: 4,
                    due: utc("2027-05-05T06:00:00Z")
                },
                true
            )]
        );
        // With a longer lead the next one, still ahead, comes too, on time.
        let p = plan(&cal, Some(0), now, Duration::days(1));
        assert_eq!(
            p.generate
                .iter()
                .map(|(o, late)| (o.n, *late))
                .collect::<Vec<_>>(),
            [(4, true), (5, false)]
        );
    }

    #[test]
    fn a_schedule_far_behind_stays_bounded() {
        let cal = Calendar {
            start: local(2000, 1, 1, 0, 0),
            zone: chrono_tz::UTC,
            every: Every::Days(1),
        };
        let p = plan(&cal, None, utc("2027-01-01T00:00:00Z"), Duration::zero());
        assert_eq!(p.generate.len(), 1);
        assert!(p.skipped.len() <= (MAX_PER_ROUND * 10) as usize);
    }

    #[test]
    fn meters_generate_the_latest_reached_occurrence() {
        let m = Meter {
            start: 0.0,
            every: 500.0,
        };
        let now = utc("2027-05-01T00:00:00Z");
        assert_eq!(meter_plan(&m, None, 420.0, 50.0, now), Plan::default());
        // The first service falls at 500; 50 ahead it is generated, not late.
        let p = meter_plan(&m, None, 460.0, 50.0, now);
        assert_eq!(p.generate, vec![(Occurrence { n: 0, due: now }, false)]);
        assert!(p.skipped.is_empty());
        assert_eq!(meter_plan(&m, Some(0), 470.0, 50.0, now), Plan::default());
        // The counter jumped past two thresholds: the latest is late, the one between skipped.
        let p = meter_plan(&m, Some(0), 1600.0, 50.0, now);
        assert_eq!(p.generate, vec![(Occurrence { n: 2, due: now }, true)]);
        assert_eq!(p.skipped.iter().map(|o| o.n).collect::<Vec<_>>(), [1]);
        assert_eq!(meter_plan(&m, None, f64::NAN, 50.0, now), Plan::default());
    }

    fn cron(zone: Tz, start: NaiveDateTime, expression: &str) -> Calendar {
        Calendar {
            start,
            zone,
            every: Every::parse(&format!("cron {expression}")).unwrap(),
        }
    }

    /// The due times of the first `count` occurrences, in the calendar's zone.
    fn dues(cal: &Calendar, count: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut n = 0;
        while out.len() < count {
            let o = cal.next_occurrence(n).unwrap();
            out.push(
                o.due
                    .with_timezone(&cal.zone)
                    .format("%a %Y-%m-%d %H:%M %Z")
                    .to_string(),
            );
            n = o.n + 1;
        }
        out
    }

    #[test]
    fn cron_expressions_parse_or_say_what_is_wrong() {
        let every = Every::parse("cron  0 6   * * 1-5").unwrap();
        assert_eq!(every.to_text(), "cron 0 6 * * 1-5");
        assert_eq!(Every::parse(&every.to_text()), Some(every));
        for (bad, says) in [
            ("cron 0 6 * *", "five fields"),
            ("cron 0 6 * * * *", "five fields"),
            ("cron 61 6 * * *", "not a valid cron expression"),
            ("cron 0 6 * * mon-fry", "not a valid cron expression"),
            ("every day", "N days"),
        ] {
            let problem = Every::parse_or_explain(bad).unwrap_err();
            assert!(problem.contains(says), "{bad}: {problem}");
        }
    }

    #[test]
    fn weekday_mornings_keep_their_local_time_across_dst() {
        // 06:00 on working days in Berlin, over the spring change (Sunday 2027-03-28).
        let cal = cron(
            chrono_tz::Europe::Berlin,
            local(2027, 3, 25, 0, 0),
            "0 6 * * 1-5",
        );
        assert_eq!(
            dues(&cal, 4),
            [
                "Thu 2027-03-25 06:00 CET",
                "Fri 2027-03-26 06:00 CET",
                "Mon 2027-03-29 06:00 CEST",
                "Tue 2027-03-30 06:00 CEST"
            ]
        );
        assert_eq!(cal.upcoming(0, 2).len(), 2);
        // Numbered by minutes from the start: Thursday 06:00 is 360.
        assert_eq!(cal.next_occurrence(0).unwrap().n, 360);
        assert_eq!(cal.occurrence(360), Some(utc("2027-03-25T05:00:00Z")));
        assert_eq!(cal.occurrence(361), None);
    }

    #[test]
    fn cron_times_in_the_skipped_hour_move_later_and_repeated_hours_count_once() {
        // 02:30 does not exist on 2027-03-28 in Berlin: read with the offset before, 03:30.
        let spring = cron(
            chrono_tz::Europe::Berlin,
            local(2027, 3, 27, 0, 0),
            "30 2 * * *",
        );
        assert_eq!(
            dues(&spring, 3),
            [
                "Sat 2027-03-27 02:30 CET",
                "Sun 2027-03-28 03:30 CEST",
                "Mon 2027-03-29 02:30 CEST"
            ]
        );
        // 02:30 exists twice on 2027-10-31: the first.
        let autumn = cron(
            chrono_tz::Europe::Berlin,
            local(2027, 10, 30, 0, 0),
            "30 2 * * *",
        );
        let due = autumn.next_occurrence(24 * 60).unwrap().due;
        assert_eq!(due, utc("2027-10-31T00:30:00Z"));
    }

    #[test]
    fn cron_days_follow_vixie_cron() {
        // Day of month and day of week both given: either matches (the 1st, and Mondays).
        let cal = cron(chrono_tz::UTC, local(2027, 2, 25, 0, 0), "0 8 1 * mon");
        assert_eq!(
            dues(&cal, 3),
            [
                "Mon 2027-03-01 08:00 UTC",
                "Mon 2027-03-08 08:00 UTC",
                "Mon 2027-03-15 08:00 UTC"
            ]
        );
        // The last day of each month.
        let last = cron(chrono_tz::UTC, local(2027, 1, 1, 0, 0), "0 7 L * *");
        assert_eq!(
            dues(&last, 3),
            [
                "Sun 2027-01-31 07:00 UTC",
                "Sun 2027-02-28 07:00 UTC",
                "Wed 2027-03-31 07:00 UTC"
            ]
        );
        // An expression that never matches has no occurrence, rather than a search forever.
        let never = cron(chrono_tz::UTC, local(2027, 1, 1, 0, 0), "0 0 30 2 *");
        assert_eq!(never.next_occurrence(0), None);
    }

    #[test]
    fn cron_plans_generate_ahead_skip_the_past_and_never_twice() {
        // Every Monday 07:00 from Monday 2027-01-04; the scheduler was down for three weeks.
        let cal = cron(chrono_tz::UTC, local(2027, 1, 4, 0, 0), "0 7 * * mon");
        let now = utc("2027-01-20T12:00:00Z");
        let p = plan(&cal, None, now, Duration::days(7));
        let dates = |os: Vec<Occurrence>| -> Vec<String> {
            os.iter()
                .map(|o| o.due.format("%m-%d").to_string())
                .collect()
        };
        assert_eq!(dates(p.skipped.clone()), ["01-04", "01-11"]);
        let generated: Vec<(String, bool)> = p
            .generate
            .iter()
            .map(|(o, late)| (o.due.format("%m-%d").to_string(), *late))
            .collect();
        assert_eq!(
            generated,
            [("01-18".to_owned(), true), ("01-25".to_owned(), false)]
        );
        // A restart with what was recorded generates nothing again.
        let handled = p.generate.last().unwrap().0.n;
        assert_eq!(
            plan(&cal, Some(handled), now, Duration::days(7)),
            Plan::default()
        );
        // A week later, the next Monday's lead window opens.
        let later = plan(
            &cal,
            Some(handled),
            now + Duration::days(7),
            Duration::days(7),
        );
        assert_eq!(later.generate.len(), 1);
        assert_eq!(later.generate[0].0.due, utc("2027-02-01T07:00:00Z"));
    }
}
