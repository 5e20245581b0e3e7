//! The alarm state machine of one rule on one tag, after OPC UA Part 9:
//! Normal -> Pending (the condition holds, on-delay running) -> Active -> Normal once the clear
//! condition has held for the off-delay. Time is event time, in microseconds.

use model::Timestamp;

/// What a rule kind says about one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The abnormal condition holds.
    Breach,
    /// The value is back inside the clear limit (past any hysteresis band).
    Clear,
    /// Neither: inside the hysteresis band. Keeps whatever state the alarm is in.
    Hold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmState {
    Normal,
    Pending {
        since: Timestamp,
    },
    Active {
        since: Timestamp,
        /// When the clear condition started to hold, while the off-delay runs.
        clearing_since: Option<Timestamp>,
    },
}

/// A change the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Raised { at: Timestamp },
    Cleared { raised_at: Timestamp, at: Timestamp },
}

/// Delays, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delays {
    pub on: i64,
    pub off: i64,
}

impl AlarmState {
    /// Advances the state with one verdict at event time `ts`.
    pub fn step(
        self,
        verdict: Verdict,
        ts: Timestamp,
        delays: Delays,
    ) -> (Self, Option<Transition>) {
        use AlarmState::{Active, Normal, Pending};
        use Verdict::{Breach, Clear, Hold};
        match (self, verdict) {
            (Normal, Breach) | (Pending { .. }, Breach) => {
                let since = match self {
                    Pending { since } => since,
                    _ => ts,
                };
                if ts.micros_since(since) >= delays.on {
                    (
                        Active {
                            since: ts,
                            clearing_since: None,
                        },
                        Some(Transition::Raised { at: ts }),
                    )
                } else {
                    (Pending { since }, None)
                }
            }
            (Normal, _) | (Pending { .. }, Clear) => (Normal, None),
            (Pending { since }, Hold) => (Pending { since }, None),
            (Active { since, .. }, Breach) => (
                Active {
                    since,
                    clearing_since: None,
                },
                None,
            ),
            (
                Active {
                    since,
                    clearing_since,
                },
                Hold,
            ) => (
                Active {
                    since,
                    clearing_since,
                },
                None,
            ),
            (
                Active {
                    since,
                    clearing_since,
                },
                Clear,
            ) => {
                let clearing = clearing_since.unwrap_or(ts);
                if ts.micros_since(clearing) >= delays.off {
                    (
                        Normal,
                        Some(Transition::Cleared {
                            raised_at: since,
                            at: ts,
                        }),
                    )
                } else {
                    (
                        Active {
                            since,
                            clearing_since: Some(clearing),
                        },
                        None,
                    )
                }
            }
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, AlarmState::Active { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    fn run(verdicts: &[(i64, Verdict)], delays: Delays) -> Vec<Transition> {
        let mut state = AlarmState::Normal;
        let mut out = Vec::new();
        for &(t, v) in verdicts {
            let (next, tr) = state.step(v, Timestamp::from_micros(t), delays);
            state = next;
            out.extend(tr);
        }
        out
    }

    fn ts(t: i64) -> Timestamp {
        Timestamp::from_micros(t)
    }

    #[test]
    fn raises_at_once_without_on_delay() {
        let got = run(&[(0, Clear), (1, Breach), (2, Breach)], Delays::default());
        assert_eq!(got, [Transition::Raised { at: ts(1) }]);
    }

    #[test]
    fn on_delay_needs_the_breach_to_hold() {
        let d = Delays { on: 10, off: 0 };
        assert_eq!(
            run(&[(0, Breach), (5, Clear), (6, Breach), (15, Breach)], d),
            []
        );
        assert_eq!(
            run(&[(0, Breach), (5, Hold), (10, Breach)], d),
            [Transition::Raised { at: ts(10) }]
        );
    }

    #[test]
    fn hysteresis_band_keeps_the_alarm_active() {
        let got = run(
            &[(0, Breach), (1, Hold), (2, Breach), (3, Hold), (4, Clear)],
            Delays::default(),
        );
        assert_eq!(
            got,
            [
                Transition::Raised { at: ts(0) },
                Transition::Cleared {
                    raised_at: ts(0),
                    at: ts(4)
                }
            ]
        );
    }

    #[test]
    fn off_delay_restarts_when_the_breach_returns() {
        let d = Delays { on: 0, off: 10 };
        let got = run(
            &[
                (0, Breach),
                (1, Clear),
                (5, Breach),
                (6, Clear),
                (15, Clear),
                (16, Clear),
            ],
            d,
        );
        assert_eq!(
            got,
            [
                Transition::Raised { at: ts(0) },
                Transition::Cleared {
                    raised_at: ts(0),
                    at: ts(16)
                }
            ]
        );
    }
}
