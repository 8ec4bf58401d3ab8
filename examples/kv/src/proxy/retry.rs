//! When to retry, and how long to wait in between.
//!
//! A handoff shows up at the proxy as "no Active route" or as a node refusing the
//! key (FAILED_PRECONDITION / ABORTED: not served here, or not writable right now);
//! a dead node as UNAVAILABLE. All of these are transient from the client's point
//! of view, so they are retried. Every other answer is the node's verdict on the
//! request itself and goes back to the client unchanged.

use std::time::Duration;

use tonic::Code;

/// How long a request may keep trying, and the pause between attempts when the
/// routing table does not move by itself.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total time one client request may take, waits included.
    pub deadline: Duration,
    /// First pause after a failed attempt; doubled after each one.
    pub initial_backoff: Duration,
    /// Cap on the pause. Kept short: the routing table's change signal usually
    /// wakes the request first, the pause only covers changes it cannot see (a
    /// node that refuses a key its stream has not yet reported as moved).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(50),
        }
    }
}

impl RetryPolicy {
    /// The pauses of one request, growing from `initial_backoff` to `max_backoff`.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            next: self.initial_backoff,
            max: self.max_backoff,
        }
    }
}

/// An exponential sequence of pauses.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// The next pause.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Whether a node's error answer is worth another attempt.
pub fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        // Not served here / not writable now: a handoff is in progress, or our
        // routing table is behind the node's.
        Code::FailedPrecondition | Code::Aborted
        // The node is down or restarting; its ranges will show up elsewhere (or
        // on it again) in the routing table.
        | Code::Unavailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            deadline: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(30),
        };
        let mut backoff = policy.backoff();
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 30, 30]);
    }

    #[test]
    fn only_transient_codes_are_retried() {
        for code in [Code::FailedPrecondition, Code::Aborted, Code::Unavailable] {
            assert!(is_retryable(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Internal,
        ] {
            assert!(!is_retryable(code), "{code:?}");
        }
    }
}
