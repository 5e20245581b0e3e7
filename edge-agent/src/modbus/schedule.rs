//! When each device of a line is polled next. Pure: instants in, instants out.
//!
//! Every device keeps its own `poll_interval` although the devices of a line are polled one
//! after another. A device polled a little late (another device held the line) keeps its
//! rhythm; one whose poll started a whole interval late or more starts a new rhythm from that
//! start, so a slow line never bursts to catch up. With one device this is tokio's
//! `MissedTickBehavior::Delay`.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    due: Vec<Instant>,
    every: Vec<Duration>,
}

impl Schedule {
    /// Every device is due at `start`.
    pub fn new(start: Instant, every: Vec<Duration>) -> Self {
        Self {
            due: vec![start; every.len()],
            every,
        }
    }

    /// The device due first and when; on a tie, the one configured first. `None` without
    /// devices.
    pub fn next(&self) -> Option<(usize, Instant)> {
        self.due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(i, due)| (due, i))
    }

    /// Records that `device`'s poll started at `started`.
    pub fn polled(&mut self, device: usize, started: Instant) {
        let next = self.due[device] + self.every[device];
        self.due[device] = if next > started {
            next
        } else {
            started + self.every[device]
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_keep_their_own_rhythm_on_one_line() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let every = |n: u64| Duration::from_millis(n);
        let mut s = Schedule::new(t0, vec![every(100), every(250), every(100)]);
        // (device expected next, when it is due, when its poll actually starts)
        let steps = [
            (0, ms(0), ms(0)),
            (1, ms(0), ms(30)), // waited for device 0
            (2, ms(0), ms(60)), // waited for 0 and 1
            (0, ms(100), ms(100)),
            (2, ms(100), ms(130)), // late, keeps its rhythm
            (0, ms(200), ms(200)),
            (2, ms(200), ms(420)), // a whole interval late: a new rhythm from 420
            (1, ms(250), ms(450)), // late, but within its interval of 250
            (0, ms(300), ms(480)), // a whole interval late: a new rhythm from 480
            (1, ms(500), ms(500)),
            (2, ms(520), ms(520)),
            (0, ms(580), ms(580)),
        ];
        for (n, &(device, due, started)) in steps.iter().enumerate() {
            assert_eq!(s.next(), Some((device, due)), "step {n}");
            s.polled(device, started);
        }
    }

    #[test]
    fn an_empty_line_has_nothing_due() {
        assert_eq!(Schedule::new(Instant::now(), Vec::new()).next(), None);
    }
}
