//! The actuator's memory: which commands are in flight, how often each failed,
//! and when it may be tried again. One command per (node, range) is in flight at a
//! time, because a node knows ranges by id: that is the de-duplication.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ranger_proto::Command;
use ranger_proto::{NodeId, RangeId};
use tokio::time::Instant;

use crate::keyspace::PlacementId;

/// What a command is about: a placement, or a range a node holds that no
/// placement accounts for (an orphan, to be dropped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Placement(PlacementId),
    Orphan(NodeId, RangeId),
}

/// The failure history of one command for one subject.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub failures: u32,
    /// When the command was first sent: deadlines count from here.
    pub first_sent: Instant,
    /// Not before then (backoff).
    pub next_at: Instant,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Attempts {
    inflight: HashSet<(NodeId, RangeId)>,
    history: HashMap<(Subject, Command), Attempt>,
}

impl Attempts {
    /// Whether `command` may be sent now; if so, records it as in flight.
    pub fn try_begin(
        &mut self,
        node: &NodeId,
        range: RangeId,
        subject: &Subject,
        command: Command,
        now: Instant,
    ) -> bool {
        if self.inflight.contains(&(node.clone(), range)) {
            return false;
        }
        let attempt = self
            .history
            .entry((subject.clone(), command))
            .or_insert(Attempt {
                failures: 0,
                first_sent: now,
                next_at: now,
                last_error: None,
            });
        if attempt.next_at > now {
            return false;
        }
        self.inflight.insert((node.clone(), range));
        true
    }

    /// The answer (any answer) arrived: the (node, range) is free again.
    pub fn end(&mut self, node: &NodeId, range: RangeId) {
        self.inflight.remove(&(node.clone(), range));
    }

    pub fn is_inflight(&self, node: &NodeId, range: RangeId) -> bool {
        self.inflight.contains(&(node.clone(), range))
    }

    /// The command failed: back off exponentially.
    pub fn failed(
        &mut self,
        subject: &Subject,
        command: Command,
        error: String,
        now: Instant,
        initial: Duration,
        max: Duration,
    ) -> u32 {
        let attempt = self
            .history
            .entry((subject.clone(), command))
            .or_insert(Attempt {
                failures: 0,
                first_sent: now,
                next_at: now,
                last_error: None,
            });
        attempt.failures += 1;
        let exponent = attempt.failures.saturating_sub(1).min(16);
        let backoff = initial.saturating_mul(1u32 << exponent).min(max);
        attempt.next_at = now + backoff;
        attempt.last_error = Some(error);
        attempt.failures
    }

    /// The command reached its goal: forget its history.
    pub fn succeeded(&mut self, subject: &Subject, command: Command) {
        self.history.remove(&(subject.clone(), command));
    }

    pub fn get(&self, subject: &Subject, command: Command) -> Option<&Attempt> {
        self.history.get(&(subject.clone(), command))
    }

    /// Forgets everything about a subject (its placement is gone).
    pub fn forget(&mut self, subject: &Subject) {
        for command in [
            Command::Prepare,
            Command::Activate,
            Command::Deactivate,
            Command::Drop,
        ] {
            self.history.remove(&(subject.clone(), command));
        }
    }

    /// The latest error recorded for a subject, for reports.
    pub fn last_error(&self, subject: &Subject) -> Option<String> {
        [
            Command::Drop,
            Command::Activate,
            Command::Deactivate,
            Command::Prepare,
        ]
        .iter()
        .filter_map(|c| self.history.get(&(subject.clone(), *c)))
        .filter_map(|a| a.last_error.clone())
        .next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deduplicates_and_backs_off() {
        let mut attempts = Attempts::default();
        let node = NodeId::new("a").unwrap();
        let range = RangeId::FIRST;
        let subject = Subject::Placement(PlacementId::new(1));
        let now = Instant::now();
        assert!(attempts.try_begin(&node, range, &subject, Command::Prepare, now));
        assert!(
            !attempts.try_begin(&node, range, &subject, Command::Prepare, now),
            "in flight"
        );
        attempts.end(&node, range);
        let ms = Duration::from_millis;
        assert_eq!(
            attempts.failed(&subject, Command::Prepare, "x".into(), now, ms(10), ms(25)),
            1
        );
        assert!(!attempts.try_begin(&node, range, &subject, Command::Prepare, now + ms(9)));
        assert!(attempts.try_begin(&node, range, &subject, Command::Prepare, now + ms(10)));
        attempts.end(&node, range);
        attempts.failed(&subject, Command::Prepare, "y".into(), now, ms(10), ms(25));
        attempts.failed(&subject, Command::Prepare, "z".into(), now, ms(10), ms(25));
        let attempt = attempts.get(&subject, Command::Prepare).unwrap();
        assert_eq!(attempt.next_at, now + ms(25), "capped");
        assert_eq!(attempts.last_error(&subject).as_deref(), Some("z"));
        attempts.succeeded(&subject, Command::Prepare);
        assert!(attempts.get(&subject, Command::Prepare).is_none());
    }
}
