//! A lock-free latency histogram of microseconds, log-linear: every power of two is split
//! into 16 buckets, so a quantile is good to 1/16 (6.25 %) of its value; below 16 µs the
//! buckets are exact. Cheap enough to record every message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: 2^SUB_BITS.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Up to 2^40 µs (about 12 days); longer times count in the last bucket.
const MAX_EXPONENT: u32 = 40;
const BUCKETS: usize = (SUB + (MAX_EXPONENT - SUB_BITS + 1) as u64 * SUB) as usize;

/// The bucket of `micros`.
fn bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    let exponent = (63 - micros.leading_zeros()).min(MAX_EXPONENT);
    let shift = exponent - SUB_BITS;
    let mantissa = ((micros >> shift) - SUB).min(SUB - 1);
    ((SUB + u64::from(shift) * SUB + mantissa) as usize).min(BUCKETS - 1)
}

/// The exclusive upper bound of bucket `i`, in microseconds (`i` itself below [`SUB`]).
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    (SUB + mantissa + 1) << shift
}

#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts counting afresh (a benchmark's measured phase).
    pub fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), or `None` when empty: at
    /// most 1/16 above the true quantile.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(Duration::from_micros(upper_bound(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.99), None);
        for _ in 0..99 {
            h.record(Duration::from_micros(100)); // bucket [96, 104)
        }
        h.record(Duration::from_millis(30)); // bucket [29696, 30720)
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(104)));
        assert_eq!(h.quantile(0.99), Some(Duration::from_micros(104)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_micros(30720)));
    }

    #[test]
    fn small_times_are_exact_and_bounds_stay_within_a_sixteenth() {
        for micros in 0..16 {
            assert_eq!(upper_bound(bucket(micros)), micros);
        }
        let mut previous = 0;
        for micros in (16..5_000_000u64).step_by(997).chain([1 << 39]) {
            let i = bucket(micros);
            let upper = upper_bound(i);
            assert!(upper > micros, "{micros} -> [.., {upper})");
            assert!(upper - micros <= micros / 16 + 1, "{micros} -> {upper}");
            assert!(i >= previous, "buckets grow with the time");
            previous = i;
        }
        // 250 ms lies in [245.76, 253.95) ms: a p99 shown as <= 245.76 ms is under 250 ms.
        assert_eq!(upper_bound(bucket(245_759)), 245_760);
        assert_eq!(upper_bound(bucket(250_000)), 253_952);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
