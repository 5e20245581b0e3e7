//! What a failed request means: whether it is retried, and whether the link survives it.
//! Pure: the line applies these decisions.
//!
//! - A Modbus exception is an answer: the device is there and refused the request. Retrying
//!   would get the same answer, and the link is fine.
//! - A timeout, an answer that does not match the request, or a transport error may pass, so
//!   the request is retried (`retries` times, waiting `retry_backoff`, doubled each time).
//! - On Modbus TCP a timeout or a mismatched answer leaves the connection out of step (a late
//!   answer would arrive for the next request), so it is closed. On an RTU line the silence of
//!   one unit says nothing about the others: the line stays open, and each request clears
//!   what is left of a late answer before it is sent.
//! - A transport error (connection reset, serial port gone) closes the link on every transport.

use std::fmt;
use std::time::Duration;

use crate::modbus::transport::Framing;

/// Cap of one wait between retries, whatever the doubling reaches.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The link could not be opened (connection refused, no such serial port, ...).
    Connect(String),
    /// The device answered with a Modbus exception.
    Exception(String),
    /// No answer within the device's timeout.
    Timeout(Duration),
    /// An answer that does not belong to the request (another unit's, or a late one).
    Mismatch(String),
    /// The link failed while the request was under way.
    Transport(String),
}

impl Failure {
    /// Whether trying the request again may succeed.
    pub fn is_retried(&self) -> bool {
        !matches!(self, Failure::Exception(_))
    }

    /// Whether the link must be closed (and reopened for the next request).
    pub fn closes_link(&self, framing: Framing) -> bool {
        match self {
            Failure::Exception(_) => false,
            Failure::Connect(_) | Failure::Transport(_) => true,
            Failure::Timeout(_) | Failure::Mismatch(_) => framing == Framing::Tcp,
        }
    }

    /// Whether something on the line answered: the line is alive even if this request failed.
    pub fn heard_an_answer(&self) -> bool {
        matches!(self, Failure::Exception(_) | Failure::Mismatch(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Exception(e) => write!(f, "Modbus exception {e}"),
            Failure::Timeout(t) => write!(f, "no answer within {t:?}"),
            Failure::Mismatch(e) => write!(f, "answer does not match the request: {e}"),
            Failure::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

/// How often and after how long a request is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The wait before the next attempt after `failed` attempts of one request (1 after the
    /// first failure), or `None` when the retries are used up.
    pub fn delay_after(&self, failed: u32) -> Option<Duration> {
        if failed == 0 || failed > self.retries {
            return None;
        }
        let factor = 1u32.checked_shl(failed - 1).unwrap_or(u32::MAX);
        Some(
            self.backoff
                .checked_mul(factor)
                .unwrap_or(MAX_RETRY_DELAY)
                .min(MAX_RETRY_DELAY),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_failure_does_to_the_request_and_the_link() {
        let t = Duration::from_secs(1);
        // (failure, retried, closes a TCP link, closes an RTU link, the line answered)
        let table = [
            (Failure::Connect("refused".into()), true, true, true, false),
            (
                Failure::Exception("IllegalDataAddress".into()),
                false,
                false,
                false,
                true,
            ),
            (Failure::Timeout(t), true, true, false, false),
            (Failure::Mismatch("unit 2".into()), true, true, false, true),
            (Failure::Transport("reset".into()), true, true, true, false),
        ];
        for (failure, retried, closes_tcp, closes_rtu, heard) in table {
            assert_eq!(failure.is_retried(), retried, "{failure}");
            assert_eq!(failure.closes_link(Framing::Tcp), closes_tcp, "{failure}");
            assert_eq!(failure.closes_link(Framing::Rtu), closes_rtu, "{failure}");
            assert_eq!(failure.heard_an_answer(), heard, "{failure}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_retries_and_the_cap() {
        let ms = Duration::from_millis;
        let policy = RetryPolicy {
            retries: 3,
            backoff: ms(100),
        };
        let delays: Vec<_> = (0..=4).map(|n| policy.delay_after(n)).collect();
        assert_eq!(
            delays,
            [None, Some(ms(100)), Some(ms(200)), Some(ms(400)), None]
        );

        let none = RetryPolicy {
            retries: 0,
            backoff: ms(100),
        };
        assert_eq!(none.delay_after(1), None);

        let immediate = RetryPolicy {
            retries: 2,
            backoff: Duration::ZERO,
        };
        assert_eq!(immediate.delay_after(2), Some(Duration::ZERO));

        let long = RetryPolicy {
            retries: 10,
            backoff: Duration::from_secs(10),
        };
        assert_eq!(long.delay_after(10), Some(MAX_RETRY_DELAY));
        let huge = RetryPolicy {
            retries: u32::MAX,
            backoff: Duration::MAX,
        };
        assert_eq!(huge.delay_after(40), Some(MAX_RETRY_DELAY));
    }
}
