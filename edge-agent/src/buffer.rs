//! The bounded store of readings between the sources and the broker.
//!
//! Readings wait here until they are published, and count against the bound until the broker
//! has acknowledged them. When the bound is reached the oldest waiting readings are dropped,
//! and every drop is counted: a full buffer never blocks the sources and never loses data
//! silently. Pure: no I/O, no clock.

use std::collections::VecDeque;

use model::Reading;

#[derive(Debug)]
pub struct Buffer {
    waiting: VecDeque<Reading>,
    in_flight: usize,
    max: usize,
    dropped: u64,
}

impl Buffer {
    pub fn new(max: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: 0,
            max,
            dropped: 0,
        }
    }

    /// Adds readings, dropping the oldest waiting ones if the bound is reached. Returns how many
    /// readings were dropped by this call.
    pub fn push(&mut self, readings: impl IntoIterator<Item = Reading>) -> u64 {
        let before = self.dropped;
        for r in readings {
            if self.waiting.len() + self.in_flight >= self.max {
                if self.waiting.pop_front().is_none() {
                    // Everything held is in flight: the new reading itself is the one dropped.
                    self.dropped += 1;
                    continue;
                }
                self.dropped += 1;
            }
            self.waiting.push_back(r);
        }
        self.dropped - before
    }

    /// Takes up to `max` of the oldest waiting readings for publishing; they stay counted
    /// against the bound until [`Buffer::acknowledged`].
    pub fn take(&mut self, max: usize) -> Vec<Reading> {
        let n = max.min(self.waiting.len());
        self.in_flight += n;
        self.waiting.drain(..n).collect()
    }

    /// The broker acknowledged `n` in-flight readings.
    pub fn acknowledged(&mut self, n: usize) {
        self.in_flight = self.in_flight.saturating_sub(n);
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Quality, TagName, Timestamp};

    fn r(n: i64) -> Reading {
        Reading {
            tag: TagName::parse("t").unwrap(),
            ts: Timestamp::from_micros(n),
            value: n as f64,
            quality: Quality::Good,
        }
    }

    #[test]
    fn oldest_waiting_readings_are_dropped_and_counted() {
        let mut b = Buffer::new(3);
        assert_eq!(b.push((0..5).map(r)), 2);
        let batch = b.take(10);
        assert_eq!(
            batch.iter().map(|x| x.value).collect::<Vec<_>>(),
            [2.0, 3.0, 4.0]
        );
        // All three are in flight: new readings have no room until the ack.
        assert_eq!(b.push([r(5)]), 1);
        b.acknowledged(3);
        assert_eq!(b.push([r(6)]), 0);
        assert_eq!(b.dropped(), 3);
        assert_eq!((b.waiting(), b.in_flight()), (1, 0));
    }
}
