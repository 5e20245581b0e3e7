//! One simulated measurement: its waveform, its noise, an optional process fault ("breach")
//! and injected instrument faults (spike, drift, stuck value, dropout).
//!
//! Everything here is a pure function of a seed and a time in seconds since the simulator
//! started, so a run can be replayed exactly and tests never wait for wall-clock time. This
//! module never reads a clock and never uses a global random generator.

use std::f64::consts::TAU;
use std::time::Duration;

use model::TagName;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// A signal as written in a scenario file under `[[signal]]`.
///
/// The fields are public because a signal is a specification, not a checked value: a
/// [`Scenario`](crate::Scenario) validates its signals as a whole (addresses, names, periods),
/// and only signals that passed that check give meaningful values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Signal {
    /// The tag name a gateway would map this signal to.
    pub name: TagName,
    /// First of the two holding registers carrying the value as a big-endian `f32`.
    pub address: u16,
    /// The undisturbed waveform.
    pub kind: SignalKind,
    /// Amplitude of uniform noise added on top: the value moves within `±noise`. 0 means none.
    #[serde(default)]
    pub noise: f64,
    /// A fault that takes over the signal some time after start.
    #[serde(default)]
    pub breach: Option<Breach>,
    /// Instrument faults injected on top, written as `[[signal.fault]]` tables.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
}

/// An instrument fault injected into one signal: what a failing transmitter, cable or input
/// card does to a reading, as opposed to a [`Breach`], which is the process itself going
/// wrong. In TOML a `[[signal.fault]]` table whose `kind` names the variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The signal reads `value` for `duration` (default 1 s) from `at`: a spike.
    Spike {
        #[serde(with = "humantime_serde")]
        at: Duration,
        #[serde(with = "humantime_serde", default = "default_spike")]
        duration: Duration,
        value: f64,
    },
    /// From `at` on, the signal reads `per_second` more for every second since `at`: a
    /// transmitter drifting out of calibration.
    Drift {
        #[serde(with = "humantime_serde")]
        at: Duration,
        per_second: f64,
    },
    /// From `at`, for `duration` (for good without it), the signal repeats the value it had
    /// at `at`, noise included: a frozen transmitter.
    Stuck {
        #[serde(with = "humantime_serde")]
        at: Duration,
        #[serde(with = "humantime_serde", default)]
        duration: Option<Duration>,
    },
    /// From `at`, for `duration`, the registers hold NaN: a broken sensor the PLC reports as
    /// not a number (a gateway turns it into a reading of bad quality).
    Dropout {
        #[serde(with = "humantime_serde")]
        at: Duration,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

/// How long a spike lasts when the scenario does not say.
pub const DEFAULT_SPIKE: Duration = Duration::from_secs(1);

fn default_spike() -> Duration {
    DEFAULT_SPIKE
}

/// Whether `t` lies in the window of `duration` from `at`; `None` is a window without end.
fn within(t: f64, at: Duration, duration: Option<Duration>) -> bool {
    let from = at.as_secs_f64();
    t >= from && duration.is_none_or(|d| t < from + d.as_secs_f64())
}

/// The waveform of a signal. In TOML it is a table with exactly one of these keys, for
/// example `kind.sine = { base = 62.0, amplitude = 3.0, period = "60s" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// `base + amplitude * sin(2π t / period)`.
    Sine {
        base: f64,
        amplitude: f64,
        #[serde(with = "humantime_serde")]
        period: Duration,
    },
    /// `start + slope_per_s * t`, such as a counter of press cycles.
    Ramp { start: f64, slope_per_s: f64 },
    /// Always `value`.
    Constant { value: f64 },
    /// `before` until `at` after start, then `after`.
    Step {
        before: f64,
        after: f64,
        #[serde(with = "humantime_serde")]
        at: Duration,
    },
}

/// A fault: from `after` on, the signal moves in a straight line from its normal value to
/// `value` over `ramp`, then holds `value`. Noise stays on, as it would on a real sensor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Breach {
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    pub value: f64,
    #[serde(with = "humantime_serde", default = "default_breach_ramp")]
    pub ramp: Duration,
}

/// How long a breach takes to reach its value when the scenario does not say.
pub const DEFAULT_BREACH_RAMP: Duration = Duration::from_secs(5);

fn default_breach_ramp() -> Duration {
    DEFAULT_BREACH_RAMP
}

impl Signal {
    /// The value `t` seconds after start. `seed` is this signal's own noise seed (a
    /// [`Scenario`](crate::Scenario) derives one per signal from its seed and the signal's
    /// position), so two signals of one scenario never share their noise.
    ///
    /// Noise changes once per whole second: every read within the same second sees the same
    /// value, as if the PLC sampled its sensors once a second.
    ///
    /// Faults apply in a fixed order whatever their order in the file: a stuck value freezes
    /// the signal's time, drifts add up on top, a spike replaces the value, a dropout (NaN)
    /// overrides everything.
    pub fn value_at(&self, seed: u64, t: f64) -> f64 {
        let frozen = self
            .faults
            .iter()
            .filter_map(|f| match *f {
                Fault::Stuck { at, duration } if within(t, at, duration) => Some(at.as_secs_f64()),
                _ => None,
            })
            .reduce(f64::min)
            .unwrap_or(t);
        let normal = self.kind.value_at(frozen);
        let clean = match &self.breach {
            Some(breach) => breach.apply(normal, frozen),
            None => normal,
        };
        let mut value = clean + self.noise_at(seed, frozen);
        for fault in &self.faults {
            if let Fault::Drift { at, per_second } = *fault
                && within(t, at, None)
            {
                value += per_second * (t - at.as_secs_f64());
            }
        }
        for fault in &self.faults {
            match *fault {
                Fault::Spike {
                    at,
                    duration,
                    value: spike,
                } if within(t, at, Some(duration)) => value = spike,
                _ => {}
            }
        }
        let dropped = self.faults.iter().any(
            |f| matches!(*f, Fault::Dropout { at, duration } if within(t, at, Some(duration))),
        );
        if dropped { f64::NAN } else { value }
    }

    fn noise_at(&self, seed: u64, t: f64) -> f64 {
        // Written so that NaN and infinite amplitudes also mean "no noise": a signal that
        // was never validated must still not poison its neighbours' registers.
        if !(self.noise > 0.0 && self.noise.is_finite()) {
            return 0.0;
        }
        // `as` saturates, which is what a negative or absurd time should get; the cast to
        // u64 only reinterprets the bits to feed the mixer.
        let tick = t.floor() as i64;
        let mut rng = SmallRng::seed_from_u64(mix(seed, tick as u64));
        (rng.random::<f64>() * 2.0 - 1.0) * self.noise
    }
}

impl SignalKind {
    /// The noiseless value `t` seconds after start.
    pub fn value_at(&self, t: f64) -> f64 {
        match *self {
            Self::Sine {
                base,
                amplitude,
                period,
            } => base + amplitude * (TAU * t / period.as_secs_f64()).sin(),
            Self::Ramp { start, slope_per_s } => start + slope_per_s * t,
            Self::Constant { value } => value,
            Self::Step { before, after, at } => {
                if t < at.as_secs_f64() {
                    before
                } else {
                    after
                }
            }
        }
    }
}

impl Breach {
    fn apply(&self, normal: f64, t: f64) -> f64 {
        let since = t - self.after.as_secs_f64();
        if since < 0.0 {
            return normal;
        }
        let ramp = self.ramp.as_secs_f64();
        if since >= ramp {
            // Returned directly rather than interpolated so that the held value is exact.
            return self.value;
        }
        normal + (self.value - normal) * (since / ramp)
    }
}

/// Combines two 64-bit values into a well-spread seed (the SplitMix64 finaliser). Plain XOR
/// would make (seed 1, tick 0) and (seed 0, tick 1) collide.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(kind: SignalKind, noise: f64, breach: Option<Breach>) -> Signal {
        Signal {
            name: TagName::parse("s").expect("a valid tag name"),
            address: 0,
            kind,
            noise,
            breach,
            faults: Vec::new(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn each_fault_acts_in_its_window_only() {
        let ramp = |faults| Signal {
            faults,
            ..signal(
                SignalKind::Ramp {
                    start: 0.0,
                    slope_per_s: 1.0,
                },
                0.0,
                None,
            )
        };
        let spike = ramp(vec![Fault::Spike {
            at: secs(10),
            duration: secs(2),
            value: 500.0,
        }]);
        assert_eq!(
            [9.0, 10.0, 11.5, 12.0].map(|t| spike.value_at(1, t)),
            [9.0, 500.0, 500.0, 12.0]
        );
        let drift = ramp(vec![Fault::Drift {
            at: secs(10),
            per_second: 0.5,
        }]);
        assert_eq!(
            [5.0, 10.0, 20.0].map(|t| drift.value_at(1, t)),
            [5.0, 10.0, 25.0]
        );
        let stuck = ramp(vec![Fault::Stuck {
            at: secs(10),
            duration: Some(secs(5)),
        }]);
        assert_eq!(
            [9.0, 10.0, 14.9, 15.0].map(|t| stuck.value_at(1, t)),
            [9.0, 10.0, 10.0, 15.0]
        );
        let for_good = ramp(vec![Fault::Stuck {
            at: secs(10),
            duration: None,
        }]);
        assert_eq!(for_good.value_at(1, 1e6), 10.0);
        let dropout = ramp(vec![Fault::Dropout {
            at: secs(10),
            duration: secs(1),
        }]);
        assert!(dropout.value_at(1, 10.5).is_nan());
        assert_eq!(dropout.value_at(1, 11.0), 11.0);
    }

    #[test]
    fn a_stuck_value_keeps_its_noise_and_a_dropout_overrides_a_spike() {
        let noisy = Signal {
            faults: vec![Fault::Stuck {
                at: secs(30),
                duration: None,
            }],
            ..signal(SignalKind::Constant { value: 10.0 }, 0.5, None)
        };
        let frozen = noisy.value_at(3, 30.0);
        assert!((1..100).all(|i| noisy.value_at(3, 30.0 + f64::from(i) * 7.3) == frozen));
        let both = Signal {
            faults: vec![
                Fault::Dropout {
                    at: secs(0),
                    duration: secs(5),
                },
                Fault::Spike {
                    at: secs(0),
                    duration: secs(5),
                    value: 1.0,
                },
            ],
            ..signal(SignalKind::Constant { value: 10.0 }, 0.0, None)
        };
        assert!(both.value_at(1, 2.0).is_nan());
    }

    fn sine(period_s: u64) -> SignalKind {
        SignalKind::Sine {
            base: 62.0,
            amplitude: 3.0,
            period: Duration::from_secs(period_s),
        }
    }

    #[test]
    fn same_seed_gives_same_values_and_other_seeds_differ() {
        let s = signal(sine(60), 0.5, None);
        let times: Vec<f64> = (0..200).map(|i| f64::from(i) * 0.37).collect();
        let a: Vec<f64> = times.iter().map(|&t| s.value_at(7, t)).collect();
        let b: Vec<f64> = times.iter().map(|&t| s.value_at(7, t)).collect();
        let c: Vec<f64> = times.iter().map(|&t| s.value_at(8, t)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn noise_is_bounded_and_constant_within_a_second() {
        let s = signal(SignalKind::Constant { value: 10.0 }, 0.5, None);
        for tick in 0..500 {
            let t = f64::from(tick);
            let v = s.value_at(1, t);
            assert!((v - 10.0).abs() <= 0.5, "{v} at {t}");
            assert_eq!(v, s.value_at(1, t + 0.999));
        }
        let distinct: std::collections::HashSet<u64> = (0..100)
            .map(|tick| s.value_at(1, f64::from(tick)).to_bits())
            .collect();
        assert!(
            distinct.len() > 90,
            "noise barely varies: {}",
            distinct.len()
        );
    }

    #[test]
    fn sine_repeats_after_its_period_and_peaks_at_a_quarter() {
        let s = signal(sine(60), 0.0, None);
        for t in [0.0, 3.3, 17.0, 41.9] {
            assert!((s.value_at(0, t) - s.value_at(0, t + 60.0)).abs() < 1e-9);
        }
        assert!((s.value_at(0, 15.0) - 65.0).abs() < 1e-9);
        assert!((s.value_at(0, 45.0) - 59.0).abs() < 1e-9);
        assert!((s.value_at(0, 30.0) - 62.0).abs() < 1e-9);
    }

    #[test]
    fn breach_moves_linearly_then_holds_its_value() {
        let breach = Breach {
            after: Duration::from_secs(20),
            value: 92.0,
            ramp: Duration::from_secs(5),
        };
        let s = signal(SignalKind::Constant { value: 62.0 }, 0.0, Some(breach));
        assert_eq!(s.value_at(0, 19.9), 62.0);
        assert_eq!(s.value_at(0, 20.0), 62.0);
        assert!((s.value_at(0, 22.5) - 77.0).abs() < 1e-9);
        for t in [25.0, 26.0, 1000.0] {
            assert_eq!(s.value_at(0, t), 92.0);
        }
    }

    #[test]
    fn breach_keeps_the_noise() {
        let breach = Breach {
            after: Duration::from_secs(20),
            value: 92.0,
            ramp: Duration::from_secs(5),
        };
        let s = signal(sine(60), 0.5, Some(breach));
        let held: Vec<f64> = (25..60).map(|t| s.value_at(3, f64::from(t))).collect();
        assert!(held.iter().all(|v| (v - 92.0).abs() <= 0.5), "{held:?}");
        assert!(held.iter().any(|&v| v != 92.0));
    }

    #[test]
    fn zero_ramp_breach_jumps() {
        let breach = Breach {
            after: Duration::from_secs(3),
            value: -1.0,
            ramp: Duration::ZERO,
        };
        let s = signal(SignalKind::Constant { value: 5.0 }, 0.0, Some(breach));
        assert_eq!(s.value_at(0, 2.999), 5.0);
        assert_eq!(s.value_at(0, 3.0), -1.0);
    }

    #[test]
    fn ramp_and_step() {
        let ramp = signal(
            SignalKind::Ramp {
                start: 10.0,
                slope_per_s: 0.5,
            },
            0.0,
            None,
        );
        assert_eq!(ramp.value_at(0, 0.0), 10.0);
        assert_eq!(ramp.value_at(0, 30.0), 25.0);
        let step = signal(
            SignalKind::Step {
                before: 1.0,
                after: 2.0,
                at: Duration::from_secs(10),
            },
            0.0,
            None,
        );
        assert_eq!(step.value_at(0, 9.99), 1.0);
        assert_eq!(step.value_at(0, 10.0), 2.0);
    }

    #[test]
    fn unusable_noise_is_ignored_rather_than_panicking() {
        for noise in [f64::NAN, f64::INFINITY, -1.0] {
            let s = signal(SignalKind::Constant { value: 1.0 }, noise, None);
            assert_eq!(s.value_at(0, 1.0), 1.0);
        }
    }
}
