//! Late readings within a bound, put back in event-time order before the engine sees them.
//!
//! The engine evaluates each tag's readings in event-time order and skips a reading that is
//! not newer than the tag's last one. Readings that arrive slightly out of order (two
//! gateways' batches crossing, a retry overtaking) would be lost to evaluation. A
//! [`Reorder`] buffer holds each tag's readings for `bound` of event time and releases them
//! sorted: a reading is released once a reading of the same tag at least `bound` newer has
//! arrived, or once the current time is `bound` past it (so a tag that falls silent is not
//! held back). A reading later than that is still handed on, and the engine skips it as
//! before: the bound is what the caller trades in latency for order.
//!
//! With a zero bound nothing is held: readings pass straight through.

use std::collections::HashMap;
use std::time::Duration;

use model::Timestamp;

use crate::kinds::micros;

/// Per-tag reordering buffers. `T` is whatever the caller evaluates (a reading with its tag's
/// context).
#[derive(Debug)]
pub struct Reorder<T> {
    bound: i64,
    tags: HashMap<i64, Buffer<T>>,
    held: usize,
}

#[derive(Debug)]
struct Buffer<T> {
    /// The newest event time seen for the tag.
    newest: Timestamp,
    /// Held readings, sorted by event time (arrival order among equal times).
    pending: Vec<(Timestamp, T)>,
}

impl<T> Reorder<T> {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound: micros(bound),
            tags: HashMap::new(),
            held: 0,
        }
    }

    /// Readings held back now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes one reading; appends to `out` the readings of its tag that are now due, oldest
    /// first.
    pub fn push(&mut self, tag_id: i64, ts: Timestamp, item: T, out: &mut Vec<(Timestamp, T)>) {
        if self.bound == 0 {
            out.push((ts, item));
            return;
        }
        let buffer = self.tags.entry(tag_id).or_insert_with(|| Buffer {
            newest: ts,
            pending: Vec::new(),
        });
        buffer.newest = buffer.newest.max(ts);
        // Usually the newest: a push at the end.
        let at = buffer.pending.partition_point(|(t, _)| *t <= ts);
        buffer.pending.insert(at, (ts, item));
        self.held += 1;
        let due = buffer.newest.plus_micros(-self.bound);
        self.held -= release(buffer, due, out);
    }

    /// Releases, in order per tag, every reading that is `bound` or more older than `now`.
    pub fn flush(&mut self, now: Timestamp, out: &mut Vec<(Timestamp, T)>) {
        if self.held == 0 {
            return;
        }
        let due = now.plus_micros(-self.bound);
        for buffer in self.tags.values_mut() {
            self.held -= release(buffer, due, out);
        }
    }

    /// Releases everything held, in order per tag (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<(Timestamp, T)>) {
        for buffer in self.tags.values_mut() {
            out.append(&mut buffer.pending);
        }
        self.held = 0;
    }
}

/// Moves the readings at or before `due` to `out`; returns how many.
fn release<T>(buffer: &mut Buffer<T>, due: Timestamp, out: &mut Vec<(Timestamp, T)>) -> usize {
    let n = buffer.pending.partition_point(|(t, _)| *t <= due);
    out.extend(buffer.pending.drain(..n));
    n
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    fn secs(out: &[(Timestamp, char)]) -> Vec<(i64, char)> {
        out.iter()
            .map(|(ts, c)| (ts.as_micros() / 1_000_000, *c))
            .collect()
    }

    #[test]
    fn a_zero_bound_holds_nothing() {
        let mut r = Reorder::new(Duration::ZERO);
        let mut out = Vec::new();
        r.push(1, t(5), 'a', &mut out);
        r.push(1, t(4), 'b', &mut out);
        assert_eq!(secs(&out), [(5, 'a'), (4, 'b')]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn late_readings_within_the_bound_come_out_in_order() {
        let mut r = Reorder::new(Duration::from_secs(2));
        let mut out = Vec::new();
        r.push(1, t(10), 'a', &mut out);
        r.push(1, t(12), 'c', &mut out);
        assert_eq!(secs(&out), [(10, 'a')]);
        r.push(1, t(11), 'b', &mut out);
        r.push(2, t(11), 'x', &mut out);
        r.push(1, t(15), 'd', &mut out);
        assert_eq!(secs(&out), [(10, 'a'), (11, 'b'), (12, 'c')]);
        assert_eq!(r.held(), 2);
        // A silent tag is released by the clock.
        out.clear();
        r.flush(t(13), &mut out);
        assert_eq!(secs(&out), [(11, 'x')]);
        out.clear();
        r.drain(&mut out);
        assert_eq!(secs(&out), [(15, 'd')]);
        assert_eq!(r.held(), 0);
    }

    proptest! {
        /// Readings no later than the bound come out sorted, whatever their arrival order.
        #[test]
        fn lateness_within_the_bound_is_undone(
            swaps in proptest::collection::vec(0usize..40, 0..30),
        ) {
            let mut arrival: Vec<i64> = (0..40).collect();
            for &i in &swaps {
                if i + 1 < arrival.len() {
                    arrival.swap(i, i + 1);
                }
            }
            // The bound: how late the latest reading of this arrival order is.
            let (mut newest, mut lateness) = (i64::MIN, 0);
            for &s in &arrival {
                lateness = lateness.max(newest.saturating_sub(s));
                newest = newest.max(s);
            }
            let mut r = Reorder::new(Duration::from_secs(lateness as u64));
            let mut out = Vec::new();
            for s in arrival {
                r.push(7, t(s), 'r', &mut out);
            }
            r.drain(&mut out);
            let got: Vec<i64> = secs(&out).into_iter().map(|(s, _)| s).collect();
            prop_assert_eq!(got, (0..40).collect::<Vec<_>>());
        }
    }
}
