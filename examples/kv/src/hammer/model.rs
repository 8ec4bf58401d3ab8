//! The expected state of one key, and the verdict on a read of it.
//!
//! One worker is the only writer of its keys and sends one request at a time, so
//! after an acknowledged write the key must read back exactly that write. A write
//! whose outcome is unknown (timeout, UNAVAILABLE, lost connection) may or may not
//! have been applied: until a read says which, either outcome is accepted.
//!
//! Limitation, by design: once a read settled an uncertain write as not applied,
//! the write counts as never applied. A server that applies it later still (it
//! kept working on a request the client gave up on) is then reported stale. Give
//! requests a timeout longer than the server's own deadline (the proxy's retry
//! deadline) so that the server answers first.

use std::time::{Duration, Instant};

/// What a key holds: nothing, or the value of one of its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Never written, or deleted.
    Absent,
    /// The value of write number `seq` (see [`super::value`]).
    Value(u64),
}

/// What a read returned, once decoded against the key's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// NOT_FOUND.
    Absent,
    /// The value of write `seq` of this key.
    Value(u64),
    /// A value this key was never given.
    Foreign,
}

/// The verdict on one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The read returned a state the key may hold.
    Ok,
    /// The read returned an older state than the last acknowledged write;
    /// `newly_lost` is true the first time this acknowledged write is missed.
    Stale {
        /// The acknowledged write the read should have returned.
        expected: Stored,
        /// What it returned.
        got: Stored,
        /// First detection of this lost write.
        newly_lost: bool,
    },
    /// The read returned a value never written to the key.
    Unexpected,
}

/// Everything the hammer knows about one key.
#[derive(Debug, Clone)]
pub struct KeyModel {
    /// The last acknowledged state.
    expected: Stored,
    /// States of later writes with unknown outcome; any of them may be current.
    uncertain: Vec<Stored>,
    /// The write number the next put uses.
    next_seq: u64,
    /// The acknowledged write in `expected` was already reported lost.
    loss_reported: bool,
    /// When the current run of failed writes to this key began.
    failing_since: Option<Instant>,
    /// A write was attempted, so the final verification reads this key.
    written: bool,
}

impl Default for KeyModel {
    fn default() -> KeyModel {
        KeyModel {
            expected: Stored::Absent,
            uncertain: Vec::new(),
            next_seq: 0,
            loss_reported: false,
            failing_since: None,
            written: false,
        }
    }
}

impl KeyModel {
    /// Whether a write with unknown outcome is pending resolution.
    pub fn is_uncertain(&self) -> bool {
        !self.uncertain.is_empty()
    }

    /// Whether the key is certainly present (for choosing update and delete).
    pub fn is_present(&self) -> bool {
        !self.is_uncertain() && self.expected != Stored::Absent
    }

    /// Whether the key is certainly absent (for choosing create).
    pub fn is_absent(&self) -> bool {
        !self.is_uncertain() && self.expected == Stored::Absent
    }

    /// Whether a write was ever attempted.
    pub fn was_written(&self) -> bool {
        self.written
    }

    /// Reserves the write number of the next put.
    pub fn next_put(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Decodes a read: `value` is `None` for NOT_FOUND and `Some(seq)` for a
    /// value that decodes as write `seq`; other values are foreign.
    pub fn observe(&self, value: Option<Option<u64>>) -> Observed {
        match value {
            None => Observed::Absent,
            Some(Some(seq)) if seq < self.next_seq => Observed::Value(seq),
            Some(_) => Observed::Foreign,
        }
    }

    /// Records an acknowledged write. Returns the write-unavailable window it
    /// closes, if writes to this key had been failing.
    pub fn acknowledged(&mut self, state: Stored, now: Instant) -> Option<Duration> {
        self.written = true;
        self.expected = state;
        self.uncertain.clear();
        self.loss_reported = false;
        self.failing_since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }

    /// Records a failed write; `uncertain` says it may have been applied.
    pub fn failed(&mut self, state: Stored, uncertain: bool, now: Instant) {
        self.written = true;
        if uncertain {
            self.uncertain.push(state);
        }
        self.failing_since.get_or_insert(now);
    }

    /// Whether writes to this key are failing with no success since.
    pub fn is_failing(&self) -> bool {
        self.failing_since.is_some()
    }

    /// Judges a read and updates the model: a read that settles an uncertain
    /// write makes the key certain again.
    pub fn check(&mut self, observed: Observed) -> Verdict {
        let got = match observed {
            Observed::Foreign => return Verdict::Unexpected,
            Observed::Absent => Stored::Absent,
            Observed::Value(seq) => Stored::Value(seq),
        };
        if got == self.expected || self.uncertain.contains(&got) {
            self.expected = got;
            self.uncertain.clear();
            return Verdict::Ok;
        }
        // Every write after `expected` is in `uncertain`, so `got` is older (or a
        // write settled as not applied that landed late: see the module docs).
        let newly_lost = !self.loss_reported;
        self.loss_reported = true;
        Verdict::Stale {
            expected: self.expected,
            got,
            newly_lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_writes_must_be_read_back() {
        let now = Instant::now();
        let mut key = KeyModel::default();
        assert_eq!(key.check(Observed::Absent), Verdict::Ok);
        let seq = key.next_put();
        key.acknowledged(Stored::Value(seq), now);
        assert_eq!(key.check(key.observe(Some(Some(seq)))), Verdict::Ok);
        // NOT_FOUND after an acknowledged put: lost, reported once.
        assert!(matches!(
            key.check(Observed::Absent),
            Verdict::Stale {
                newly_lost: true,
                ..
            }
        ));
        assert!(matches!(
            key.check(Observed::Absent),
            Verdict::Stale {
                newly_lost: false,
                ..
            }
        ));
        // A write number never issued is foreign.
        assert_eq!(key.observe(Some(Some(99))), Observed::Foreign);
        assert_eq!(key.check(Observed::Foreign), Verdict::Unexpected);
    }

    #[test]
    fn uncertain_writes_accept_either_outcome_once() {
        let now = Instant::now();
        let mut key = KeyModel::default();
        let first = key.next_put();
        key.acknowledged(Stored::Value(first), now);
        let second = key.next_put();
        key.failed(Stored::Value(second), true, now);
        assert!(key.is_uncertain() && key.is_failing());
        // The old value is fine, and settles the key...
        assert_eq!(key.check(Observed::Value(first)), Verdict::Ok);
        assert!(!key.is_uncertain());
        // ...so the failed write showing up now is an anomaly.
        assert!(matches!(
            key.check(Observed::Value(second)),
            Verdict::Stale { .. }
        ));
        let window = key.acknowledged(Stored::Absent, now + Duration::from_millis(5));
        assert_eq!(window, Some(Duration::from_millis(5)));
        assert!(!key.is_failing());
    }
}
