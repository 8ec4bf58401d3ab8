//! What became of the operations that ended: a short list of the latest ones
//! (the dashboard's "recent operations", with durations and failures) and
//! running totals by kind, origin and result with a histogram of durations (the
//! controller's metrics). Kept by the engine because only it knows when an
//! operation truly ends: an operator may be answered early (a rolled-forward
//! move past its deadline) while the work goes on.
//!
//! Volatile, like operation ids: a new leader starts counting from zero, which
//! Prometheus reads as a counter reset.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use ranger_proto::RangeId;
use tokio::time::Instant;

use super::{OpError, OpId, OpRequest, Operation, Origin};

/// How many ended operations [`OpHistory::recent`] keeps.
pub const RECENT_OPERATIONS: usize = 200;

/// How long after an operation ended its clean-up (dropping a handoff's
/// sources) is still counted as its own, for logs.
pub const CLEAN_UP_WINDOW: Duration = Duration::from_secs(60);

/// Upper bounds, in seconds, of the duration histogram's buckets: from a
/// handoff of an empty range to one that copies for minutes.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// The three verbs, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    Move,
    Split,
    Join,
}

impl OpKind {
    pub fn of(request: &OpRequest) -> Self {
        match request {
            OpRequest::Move { .. } => OpKind::Move,
            OpRequest::Split { .. } => OpKind::Split,
            OpRequest::Join { .. } => OpKind::Join,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Move => "move",
            OpKind::Split => "split",
            OpKind::Join => "join",
        }
    }
}

/// Who asked, as a metric label (without the node or reason [`Origin`] names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OriginKind {
    Operator,
    Drain,
    Balancer,
    Resumed,
}

impl OriginKind {
    pub fn of(origin: &Origin) -> Self {
        match origin {
            Origin::Operator => OriginKind::Operator,
            Origin::Drain(_) => OriginKind::Drain,
            Origin::Balancer(_) => OriginKind::Balancer,
            Origin::Resumed => OriginKind::Resumed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OriginKind::Operator => "operator",
            OriginKind::Drain => "drain",
            OriginKind::Balancer => "balancer",
            OriginKind::Resumed => "resumed",
        }
    }
}

/// How an operation ended, as a metric label: success, or the error's kind.
pub fn result_label(result: &Result<(), OpError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(OpError::UnknownRange(_) | OpError::UnknownNode(_) | OpError::UnknownOp(_)) => {
            "not_found"
        }
        Err(OpError::InvalidArgument(_)) => "invalid_argument",
        Err(OpError::FailedPrecondition(_)) => "failed_precondition",
        Err(OpError::Aborted(_)) => "aborted",
        Err(OpError::Cancelled(_)) => "cancelled",
    }
}

/// One ended operation, as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedOp {
    pub id: OpId,
    /// As `rangerctl ops` prints it ("move 3 to n2").
    pub description: String,
    pub kind: OpKind,
    pub origin: String,
    pub ranges: Vec<RangeId>,
    pub started: Instant,
    pub ended: Instant,
    pub result: Result<(), OpError>,
}

impl EndedOp {
    pub fn duration(&self) -> Duration {
        self.ended.saturating_duration_since(self.started)
    }
}

/// A histogram of durations over [`DURATION_BUCKETS`] (cumulative counts, as
/// Prometheus wants them, are computed when read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurationHistogram {
    /// Observations per bucket; the last slot is above every bound (+Inf).
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum_seconds: f64,
}

impl DurationHistogram {
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum_seconds += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }

    /// (upper bound, observations at or below it), the last bound +Inf.
    pub fn cumulative_buckets(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .map(|(bound, count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }
}

/// Totals since this engine started, per (kind, origin, result).
pub type OpTotals = BTreeMap<(OpKind, OriginKind, &'static str), u64>;

/// The engine's memory of ended operations.
#[derive(Debug, Clone, Default)]
pub struct OpHistory {
    recent: VecDeque<EndedOp>,
    totals: OpTotals,
    durations: BTreeMap<(OpKind, &'static str), DurationHistogram>,
}

impl OpHistory {
    /// Notes that `op` ended at `now` with `result`.
    pub fn record(&mut self, op: &Operation, result: &Result<(), OpError>, now: Instant) {
        let kind = OpKind::of(&op.request);
        let label = result_label(result);
        let ended = EndedOp {
            id: op.id,
            description: op.to_string(),
            kind,
            origin: op.origin.to_string(),
            ranges: op.ranges(),
            started: op.started,
            ended: now,
            result: result.clone(),
        };
        *self
            .totals
            .entry((kind, OriginKind::of(&op.origin), label))
            .or_default() += 1;
        self.durations
            .entry((kind, label))
            .or_default()
            .observe(ended.duration());
        if self.recent.len() == RECENT_OPERATIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(ended);
    }

    /// The latest ended operations, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &EndedOp> {
        self.recent.iter().rev()
    }

    /// The latest operation on `range` that ended less than
    /// [`CLEAN_UP_WINDOW`] before `now`: what a clean-up after it belongs to.
    pub fn recently_ended_on(&self, range: RangeId, now: Instant) -> Option<OpId> {
        self.recent()
            .take_while(|op| now.saturating_duration_since(op.ended) < CLEAN_UP_WINDOW)
            .find(|op| op.ranges.contains(&range))
            .map(|op| op.id)
    }

    pub fn totals(&self) -> &OpTotals {
        &self.totals
    }

    /// Durations per (kind, result).
    pub fn durations(&self) -> &BTreeMap<(OpKind, &'static str), DurationHistogram> {
        &self.durations
    }
}

#[cfg(test)]
mod tests {
    use ranger_proto::NodeId;

    use super::*;
    use crate::orchestrator::{OpPhase, Progress};

    fn operation(id: u64, request: OpRequest, origin: Origin, started: Instant) -> Operation {
        Operation {
            id: OpId(id),
            request,
            origin,
            progress: Progress::NotStarted,
            phase: OpPhase::Running,
            started,
            deadline: started + Duration::from_secs(30),
            rollback_reason: None,
            reported: false,
        }
    }

    fn a_move(id: u64, started: Instant) -> Operation {
        let node = NodeId::new("n2").expect("valid id");
        operation(
            id,
            OpRequest::Move {
                range: RangeId::new(id).expect("valid id"),
                node: Some(node),
            },
            Origin::Operator,
            started,
        )
    }

    #[test]
    fn an_ended_operation_is_counted_by_kind_origin_and_result_with_its_duration() {
        let t0 = Instant::now();
        let mut history = OpHistory::default();
        history.record(&a_move(1, t0), &Ok(()), t0 + Duration::from_millis(40));
        history.record(
            &a_move(2, t0),
            &Err(OpError::Aborted("dest failed".into())),
            t0 + Duration::from_secs(3),
        );
        history.record(&a_move(3, t0), &Ok(()), t0 + Duration::from_millis(200));

        let totals = history.totals();
        assert_eq!(totals[&(OpKind::Move, OriginKind::Operator, "ok")], 2);
        assert_eq!(totals[&(OpKind::Move, OriginKind::Operator, "aborted")], 1);
        let ok = &history.durations()[&(OpKind::Move, "ok")];
        assert_eq!(ok.count(), 2);
        assert!((ok.sum_seconds() - 0.24).abs() < 1e-9);
        let buckets = ok.cumulative_buckets();
        assert_eq!(buckets.len(), DURATION_BUCKETS.len() + 1);
        // 40 ms falls in the 0.05 s bucket, 200 ms in the 0.25 s one.
        assert_eq!(buckets[1], (0.025, 0));
        assert_eq!(buckets[2], (0.05, 1));
        assert_eq!(buckets[4], (0.25, 2));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2)));
    }

    #[test]
    fn recent_operations_are_newest_first_and_bounded() {
        let t0 = Instant::now();
        let mut history = OpHistory::default();
        for id in 1..=(RECENT_OPERATIONS as u64 + 5) {
            history.record(&a_move(id, t0), &Ok(()), t0 + Duration::from_secs(1));
        }
        let ids: Vec<u64> = history.recent().map(|op| op.id.0).collect();
        assert_eq!(ids.len(), RECENT_OPERATIONS);
        assert_eq!(ids[0], RECENT_OPERATIONS as u64 + 5);
        assert_eq!(*ids.last().expect("some"), 6);
        // The totals keep counting past the list's bound.
        assert_eq!(
            history.totals()[&(OpKind::Move, OriginKind::Operator, "ok")],
            RECENT_OPERATIONS as u64 + 5
        );
    }

    #[test]
    fn a_duration_beyond_every_bound_lands_in_the_infinite_bucket() {
        let mut histogram = DurationHistogram::default();
        histogram.observe(Duration::from_secs(600));
        let buckets = histogram.cumulative_buckets();
        assert_eq!(buckets[DURATION_BUCKETS.len() - 1].1, 0);
        assert_eq!(buckets[DURATION_BUCKETS.len()], (f64::INFINITY, 1));
    }
}
