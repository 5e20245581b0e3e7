//! Report by exception: forward a tag's reading only when it says something new.
//!
//! A tag with a `deadband` forwards a reading when its value moved by more than the deadband
//! from the last forwarded value, when its quality changed, or when `heartbeat` has passed
//! since the last forwarded reading (so a steady value still shows the tag is alive). The first
//! reading is always forwarded. Time is the readings' own event time, so the decision is a pure
//! function of the readings seen. Tags without a deadband forward every reading.
//!
//! Pure: no clock, no I/O. The poller applies it just before readings leave for the buffer.

use std::collections::HashMap;
use std::time::Duration;

use model::{Quality, Reading, TagName, Timestamp};

use crate::config::{Conversion, TagConfig};

/// The report-by-exception state of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadband {
    band: f64,
    heartbeat_micros: i64,
    last: Option<Forwarded>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Forwarded {
    value: f64,
    quality: Quality,
    ts: Timestamp,
}

impl Deadband {
    /// `band` is an absolute amount in engineering units (0 forwards every change).
    pub fn new(band: f64, heartbeat: Duration) -> Self {
        Self {
            band,
            heartbeat_micros: i64::try_from(heartbeat.as_micros()).unwrap_or(i64::MAX),
            last: None,
        }
    }

    /// Whether `reading` is forwarded; if so, it becomes the reference for the next ones.
    pub fn admit(&mut self, reading: &Reading) -> bool {
        let forward = match self.last {
            None => true,
            Some(last) => {
                let elapsed = reading.ts.micros_since(last.ts);
                reading.quality != last.quality
                    || (reading.value - last.value).abs() > self.band
                    || elapsed >= self.heartbeat_micros
                    // The clock stepped back: the heartbeat cannot be measured, so report.
                    || elapsed < 0
            }
        };
        if forward {
            self.last = Some(Forwarded {
                value: reading.value,
                quality: reading.quality,
                ts: reading.ts,
            });
        }
        forward
    }
}

/// The deadbands of one line's tags, by tag name.
#[derive(Debug, Clone, Default)]
pub struct ExceptionFilter {
    tags: HashMap<TagName, Deadband>,
}

impl ExceptionFilter {
    /// A filter for the tags whose conversion has a `deadband`.
    pub fn for_conversions(tags: impl IntoIterator<Item = (TagName, Conversion)>) -> Self {
        Self {
            tags: tags
                .into_iter()
                .filter_map(|(name, c)| Some((name, c.deadband()?)))
                .collect(),
        }
    }

    /// Whether `tag` is reported by exception.
    pub fn has(&self, tag: &TagName) -> bool {
        self.tags.contains_key(tag)
    }

    /// A filter for the tags that have a `deadband`.
    pub fn for_tags<'a>(tags: impl IntoIterator<Item = &'a TagConfig>) -> Self {
        Self::for_conversions(tags.into_iter().map(|t| (t.name.clone(), t.conversion())))
    }

    /// Keeps the readings that are forwarded, in their order.
    pub fn retain(&mut self, readings: &mut Vec<Reading>) {
        readings.retain(|r| self.tags.get_mut(&r.tag).is_none_or(|d| d.admit(r)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn reading(tag: &str, second: i64, value: f64, quality: Quality) -> Reading {
        Reading {
            tag: TagName::parse(tag).expect("test tag names are valid"),
            ts: Timestamp::from_micros(1_700_000_000 * S + second * S),
            value,
            quality,
        }
    }

    #[test]
    fn a_deadband_from_a_table() {
        use Quality::{Bad, Good};
        // Deadband 0.5, heartbeat 60 s. (second, value, quality, forwarded, why)
        let table: &[(i64, f64, Quality, bool, &str)] = &[
            (0, 20.0, Good, true, "the first reading"),
            (1, 20.3, Good, false, "within the band"),
            (2, 20.5, Good, false, "exactly on the band is within it"),
            (3, 19.6, Good, false, "within the band below"),
            (
                4,
                20.6,
                Good,
                true,
                "beyond the band, from the last forwarded 20.0",
            ),
            (
                5,
                20.2,
                Good,
                false,
                "within the band of the new reference 20.6",
            ),
            (6, 0.0, Bad, true, "quality changed"),
            (7, 0.0, Bad, false, "still bad, same value"),
            (
                8,
                20.6,
                Good,
                true,
                "quality changed back, though within the band",
            ),
            (67, 20.6, Good, false, "59 s since the last forwarded"),
            (68, 20.6, Good, true, "60 s: the heartbeat"),
            (69, 20.0, Good, true, "beyond the band below"),
            (30, 20.0, Good, true, "the clock stepped back"),
            (
                31,
                20.0,
                Good,
                false,
                "measured from the stepped-back reading",
            ),
        ];
        let mut d = Deadband::new(0.5, Duration::from_secs(60));
        for &(second, value, quality, forwarded, why) in table {
            let r = reading("t", second, value, quality);
            assert_eq!(
                d.admit(&r),
                forwarded,
                "t={second} {value} {quality:?}: {why}"
            );
        }
    }

    #[test]
    fn deadband_zero_forwards_every_change_and_nothing_else() {
        let mut d = Deadband::new(0.0, Duration::from_secs(3600));
        let admitted: Vec<bool> = [1.0, 1.0, 0.0, 0.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| d.admit(&reading("t", i as i64, v, Quality::Good)))
            .collect();
        assert_eq!(admitted, [true, false, true, false, true]);
    }

    #[test]
    fn the_filter_passes_tags_without_a_deadband() {
        let mut filter = ExceptionFilter {
            tags: HashMap::from([(
                TagName::parse("banded").expect("valid"),
                Deadband::new(1.0, Duration::from_secs(60)),
            )]),
        };
        let mut cycle = |second: i64, value: f64| {
            let mut readings = vec![
                reading("banded", second, value, Quality::Good),
                reading("plain", second, value, Quality::Good),
            ];
            filter.retain(&mut readings);
            readings
                .iter()
                .map(|r| r.tag.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(cycle(0, 5.0), ["banded", "plain"]);
        assert_eq!(cycle(1, 5.5), ["plain"]);
        assert_eq!(cycle(2, 6.5), ["banded", "plain"]);
    }
}
