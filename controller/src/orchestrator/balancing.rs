//! The balancer's place in the engine (DESIGN.md §10): on each balance tick the
//! engine photographs the keyspace and the roster into a
//! [`crate::balancer::Snapshot`], asks the pure planner for a plan, and (mode
//! `on`, not paused) queues the plan's actions as operations of origin
//! [`Origin::Balancer`], through the same machinery as `rangerctl`'s: queued,
//! cancellable, listed, and checked against the same preconditions.
//!
//! The planner never reads a clock; the engine hands it wall-clock milliseconds
//! (the runtime's clock at the engine's start plus the engine's own `now`), and
//! notes when each range last moved, split or joined in the keyspace
//! ([`crate::keyspace::RangeHistory`]), which persists it with the range: a
//! controller that takes over keeps the cooldowns (no A→B→A, no join right
//! after a split). The planner's own memory (smoothed loads, hot counts) stays
//! volatile: a new leader's first rounds are only less informed.

use std::time::Duration;

use ranger_proto::{NodeId, RangeId, RangeState};
use tokio::time::Instant;

use super::Engine;
use super::types::{
    BalancerOrigin, OpError, OpId, OpPhase, OpRequest, Operation, Origin, Progress,
};
use crate::balancer::{
    self, Action, BalancerMemory, InFlightOp, NodeSnapshot, NodeState, Plan, PlannedAction,
    RangeLoad, RangeSnapshot, Snapshot, Timestamp,
};
use crate::config::BalanceMode;

/// The wall clock now, in milliseconds since the Unix epoch, for
/// [`Engine::with_wall_clock`] (0 on a clock set before 1970).
pub fn wall_clock_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest pause: long enough for any maintenance, short enough that a
/// forgotten pause ends (and that no clock arithmetic can overflow).
const MAX_PAUSE: Duration = Duration::from_secs(30 * 86_400);

/// What the engine keeps between balancing rounds.
#[derive(Debug, Default)]
pub(super) struct Balancing {
    /// The runtime's balance tick came: plan at the next step.
    due: bool,
    /// No rounds until then (always with an end, so a crashed operator tool
    /// cannot leave balancing off for good).
    paused_until: Option<Instant>,
    /// The planner's memory: smoothed loads, hot counts, recent moves.
    memory: BalancerMemory,
    last: Option<BalanceRound>,
    /// Counts since this engine began, for metrics.
    totals: BalanceTotals,
}

/// What the balancer did since this engine began: rounds planned, actions by
/// reason (queued as operations, or only shown in a dry run), candidates
/// skipped by reason, and actions the engine refused to queue. Cumulative, so
/// that a scrape between two rounds misses nothing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BalanceTotals {
    pub rounds: u64,
    pub actions: std::collections::BTreeMap<crate::balancer::Reason, u64>,
    pub skips: std::collections::BTreeMap<crate::balancer::SkipReason, u64>,
    pub refused: u64,
}

/// One balancing round as operators see it (`rangerctl balance`).
#[derive(Debug, Clone)]
pub struct BalanceRound {
    pub at: Instant,
    pub mode: BalanceMode,
    pub plan: Plan,
    /// The plan's actions queued as operations (mode `on`).
    pub queued: Vec<(OpId, PlannedAction)>,
    /// Actions the engine refused when queueing them, and why (the keyspace
    /// changed since the snapshot, a node became unknown...).
    pub refused: Vec<(PlannedAction, String)>,
}

/// The balancer's state for `rangerctl balance`.
#[derive(Debug, Clone)]
pub struct BalanceStatus {
    pub mode: BalanceMode,
    pub paused_for: Option<Duration>,
    pub last: Option<BalanceRound>,
}

impl Engine {
    /// The runtime's balance interval elapsed: the next step plans a round
    /// (unless balancing is off or paused).
    pub fn balance_tick(&mut self) {
        self.balancing.due = true;
    }

    /// Pauses balancing until `now + duration` (always with an end). Queued
    /// balancer operations are cancelled; running handoffs go on.
    pub fn pause_balancing(&mut self, duration: Duration, now: Instant) -> Result<(), OpError> {
        if duration.is_zero() {
            return Err(OpError::InvalidArgument(
                "a pause needs a duration (it always ends on its own)".into(),
            ));
        }
        if duration > MAX_PAUSE {
            return Err(OpError::InvalidArgument(format!(
                "a pause may last at most {} days; pause again when it ends",
                MAX_PAUSE.as_secs() / 86_400
            )));
        }
        self.balancing.paused_until = Some(now + duration);
        let queued: Vec<OpId> = self
            .ops
            .values()
            .filter(|op| op.phase == OpPhase::Queued && matches!(op.origin, Origin::Balancer(_)))
            .map(|op| op.id)
            .collect();
        for id in queued {
            let result = Err(OpError::Cancelled("balancer paused".into()));
            if let Some(op) = self.ops.remove(&id) {
                self.history.record(&op, &result, now);
            }
            tracing::info!(op = %id, "balancer paused: queued operation cancelled");
            self.effects
                .push(super::Effect::Finished { op: id, result });
        }
        tracing::info!(?duration, "balancing paused");
        Ok(())
    }

    /// Ends a pause at once.
    pub fn resume_balancing(&mut self) {
        self.balancing.paused_until = None;
        self.balancing.due = true;
        tracing::info!("balancing resumed");
    }

    /// The balancer's counts since this engine began.
    pub fn balance_totals(&self) -> &BalanceTotals {
        &self.balancing.totals
    }

    /// Mode, pause and the last round's plan.
    pub fn balance_status(&self, now: Instant) -> BalanceStatus {
        BalanceStatus {
            mode: self.config.balancing.mode,
            paused_for: self.balance_paused_for(now),
            last: self.last_balance_round().cloned(),
        }
    }

    /// How long an operator's pause still lasts, if one does.
    pub fn balance_paused_for(&self, now: Instant) -> Option<Duration> {
        self.balancing
            .paused_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// The last planning round, without copying it (for samplers that read a
    /// few figures of it on every scrape).
    pub fn last_balance_round(&self) -> Option<&BalanceRound> {
        self.balancing.last.as_ref()
    }

    /// Why `range` is where it is and why it is (not) moving: its placements,
    /// the operations on it, and what the last round planned or skipped for it.
    pub fn explain(&self, range: RangeId) -> Result<Vec<String>, OpError> {
        let r = self
            .keyspace
            .range(range)
            .map_err(|_| OpError::UnknownRange(range))?;
        if !self.keyspace.is_current(range) {
            let children: Vec<String> = r.children().iter().map(ToString::to_string).collect();
            return Ok(vec![format!(
                "range {range} {} is {}: no longer part of the keyspace; its keys are in {}",
                r.meta(),
                r.state(),
                if children.is_empty() {
                    "its replacement".to_owned()
                } else {
                    format!("range(s) {}", children.join(", "))
                }
            )]);
        }
        let mut lines = Vec::new();
        let nodes: Vec<String> = r
            .placements()
            .iter()
            .filter(|p| p.is_live())
            .map(|p| format!("{} ({})", p.node(), p.state()))
            .collect();
        lines.push(format!(
            "range {range} {} is {} on {}",
            r.meta(),
            r.state(),
            if nodes.is_empty() {
                "no node".to_owned()
            } else {
                nodes.join(", ")
            }
        ));
        if let Some(unavailable) = self.unavailable(range) {
            lines.push(format!("unavailable: {}", unavailable.reason));
        }
        for op in self.ops.values().filter(|op| op.ranges().contains(&range)) {
            lines.push(format!(
                "{}: {op} ({:?}, started by {})",
                op.id, op.phase, op.origin
            ));
        }
        let history = r.history();
        let now_ts = self.balancing.last.as_ref().map(|l| l.plan.now);
        let horizon = self.history_horizon();
        for (what, at) in [
            ("moved", history.moved),
            ("split", history.split),
            ("joined", history.joined),
        ] {
            let at = at.map(Timestamp::from_millis);
            if let (Some(at), Some(now)) = (at, now_ts)
                && now.within(Some(at), horizon)
            {
                lines.push(format!(
                    "last {what} {:.1} s before the last round",
                    now.since(at).as_secs_f64()
                ));
            }
        }
        match &self.balancing.last {
            None => lines.push(format!(
                "the balancer has not planned a round yet (mode {})",
                self.config.balancing.mode
            )),
            Some(last) => {
                let planned: Vec<String> = last
                    .plan
                    .actions
                    .iter()
                    .filter(|a| action_ranges(&a.action).contains(&range))
                    .map(|a| {
                        format!(
                            "last round planned {} ({:?})",
                            describe(&a.action),
                            a.reason
                        )
                    })
                    .collect();
                let skipped: Vec<String> = last
                    .plan
                    .skipped
                    .iter()
                    .filter(|s| s.range == Some(range))
                    .map(|s| {
                        let node = s
                            .node
                            .as_ref()
                            .map(|n| format!(" on {n}"))
                            .unwrap_or_default();
                        format!("last round skipped a {:?}{node}: {}", s.candidate, s.reason)
                    })
                    .collect();
                if planned.is_empty() && skipped.is_empty() {
                    lines.push(format!(
                        "last round left it alone: imbalance {:.2} (tolerance {:.0}%){}",
                        last.plan.imbalance.load,
                        self.config.balancing.planner.tolerance * 100.0,
                        if last.plan.skipped_for(balancer::SkipReason::WithinTolerance) > 0 {
                            ", every node within tolerance"
                        } else {
                            ""
                        }
                    ));
                }
                lines.extend(planned);
                lines.extend(skipped);
            }
        }
        Ok(lines)
    }

    /// Plans a round if one is due (called by the step after reconciling).
    pub(super) fn balance_if_due(&mut self, now: Instant) {
        if !std::mem::take(&mut self.balancing.due) {
            return;
        }
        let mode = self.config.balancing.mode;
        if mode == BalanceMode::Off {
            return;
        }
        if self.balancing.paused_until.is_some_and(|until| until > now) {
            return;
        }
        self.balancing.paused_until = None;
        let snapshot = self.balance_snapshot(now);
        let (plan, mut memory) = balancer::plan(
            &snapshot,
            &self.config.balancing.planner,
            &self.balancing.memory,
        );
        let mut queued = Vec::new();
        let mut refused = Vec::new();
        if mode == BalanceMode::On {
            for planned in &plan.actions {
                match self.queue_balancer_action(planned, now) {
                    Ok(id) => queued.push((id, planned.clone())),
                    Err(e) => refused.push((planned.clone(), e.to_string())),
                }
            }
        }
        // The planner remembers the moves it planned (for cooldowns and no
        // A->B->A); only moves that became operations count. A dry run must
        // show the same plan round after round, as `on` would run it.
        let unsent: Vec<&Action> = match mode {
            BalanceMode::On => refused.iter().map(|(p, _)| &p.action).collect(),
            _ => plan.actions.iter().map(|p| &p.action).collect(),
        };
        let unsent_moves: Vec<(ranger_proto::Key, ranger_proto::Key, NodeId, NodeId)> = unsent
            .into_iter()
            .filter_map(|action| match action {
                Action::Move { range, from, to } => {
                    let meta = self.keyspace.range(*range).ok()?.meta();
                    Some((
                        meta.start().clone(),
                        meta.end().clone(),
                        from.clone(),
                        to.clone(),
                    ))
                }
                _ => None,
            })
            .collect();
        memory.recent_moves.retain(|m| {
            m.at != plan.now
                || !unsent_moves.iter().any(|(start, end, from, to)| {
                    m.start == *start && m.end == *end && m.from == *from && m.to == *to
                })
        });
        self.balancing.memory = memory;
        let totals = &mut self.balancing.totals;
        totals.rounds += 1;
        for planned in &plan.actions {
            *totals.actions.entry(planned.reason).or_default() += 1;
        }
        for (reason, count) in &plan.skip_counts {
            *totals.skips.entry(*reason).or_default() += *count as u64;
        }
        totals.refused += refused.len() as u64;
        tracing::info!(
            %mode,
            actions = plan.actions.len(),
            queued = queued.len(),
            imbalance = plan.imbalance.load,
            "balancing round"
        );
        self.balancing.last = Some(BalanceRound {
            at: now,
            mode,
            plan,
            queued,
            refused,
        });
    }

    fn queue_balancer_action(
        &mut self,
        planned: &PlannedAction,
        now: Instant,
    ) -> Result<OpId, OpError> {
        let (request, from) = match &planned.action {
            Action::Split {
                range,
                key,
                left,
                right,
            } => (
                OpRequest::Split {
                    range: *range,
                    key: key.clone(),
                    left: left.clone(),
                    right: right.clone(),
                },
                None,
            ),
            Action::Join { left, right } => (
                OpRequest::Join {
                    left: *left,
                    right: *right,
                    node: None,
                },
                None,
            ),
            Action::Move { range, from, to } => (
                OpRequest::Move {
                    range: *range,
                    node: Some(to.clone()),
                },
                Some(from.clone()),
            ),
        };
        let ranges = request.ranges();
        if self
            .ops
            .values()
            .any(|op| op.ranges().iter().any(|r| ranges.contains(r)))
        {
            return Err(OpError::FailedPrecondition(
                "another operation holds the range".into(),
            ));
        }
        self.check_request(&request)?;
        let origin = Origin::Balancer(BalancerOrigin {
            from,
            reason: format!("{:?}", planned.reason),
        });
        Ok(self.new_op(request, origin, Progress::NotStarted, OpPhase::Queued, now))
    }

    /// How long an event of a range's history still matters: the longest
    /// cooldown.
    fn history_horizon(&self) -> Duration {
        let planner = &self.config.balancing.planner;
        planner.move_cooldown.max(planner.join_cooldown_after_split)
    }

    /// Notes in the keyspace (which persists it) when a finished operation
    /// moved, split or joined its ranges, whoever started it and whatever the
    /// balancer's mode: an operator's move made while balancing was off must
    /// still hold for a cooldown when a controller with balancing on takes
    /// over, or the balancer would undo it at once. The children of a split
    /// or join already inherited their parents' last move when they were
    /// created.
    pub(super) fn note_balance_history(&mut self, op: &Operation, now: Instant) {
        let at = self.timestamp(now).as_millis();
        let noted = match (&op.request, &op.progress) {
            (OpRequest::Move { range, .. }, _) => {
                self.keyspace.note_history(*range, |h| h.moved = Some(at))
            }
            (_, Progress::Split { left, right }) => [left, right]
                .into_iter()
                .try_for_each(|child| self.keyspace.note_history(*child, |h| h.split = Some(at))),
            (_, Progress::Join { child }) => {
                self.keyspace.note_history(*child, |h| h.joined = Some(at))
            }
            _ => Ok(()),
        };
        if let Err(error) = noted {
            tracing::warn!(op = %op.id, %error, "could not note the balancing history");
        }
    }

    /// Moves every history event later than `now_ms` (written by a predecessor
    /// whose clock was ahead of this one's, or before this machine's clock was
    /// stepped back) to `now_ms`, to be saved: such a cooldown then lasts one
    /// window, not until this clock catches up (a day ahead would block a range
    /// for a day). Once, when the engine learns its wall clock: its own
    /// timestamps only grow from there (the clock runs on `Instant`s).
    pub(super) fn bring_future_history_to(&mut self, now_ms: u64) {
        let future: Vec<RangeId> = self
            .keyspace
            .current_ranges_unordered()
            .filter(|r| {
                let h = r.history();
                [h.split, h.moved, h.joined]
                    .into_iter()
                    .any(|at| at.is_some_and(|at| at > now_ms))
            })
            .map(|r| r.id())
            .collect();
        for id in future {
            let clamped = self.keyspace.note_history(id, |h| {
                for at in [&mut h.split, &mut h.moved, &mut h.joined] {
                    *at = at.map(|ms| ms.min(now_ms));
                }
            });
            if let Err(error) = clamped {
                tracing::warn!(range = %id, %error, "could not correct a future history");
            }
        }
    }

    /// The balancer's time at `now`: wall-clock milliseconds.
    fn timestamp(&self, now: Instant) -> Timestamp {
        let millis = now.saturating_duration_since(self.started).as_millis();
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        Timestamp::from_millis(self.wall_start_ms.saturating_add(millis))
    }

    /// The planner's view of the cluster now.
    fn balance_snapshot(&self, now: Instant) -> Snapshot {
        let loss_after = self.config.node_loss_after();
        let nodes = self
            .roster
            .nodes()
            .filter(|n| n.registered)
            .map(|n| NodeSnapshot {
                id: n.id.clone(),
                capacity: n.capacity,
                state: if n.is_lost(now, loss_after) || n.lease_suspended {
                    NodeState::RecentlyFailed
                } else if n.draining() {
                    NodeState::Draining
                } else {
                    NodeState::Active
                },
                report_age: n.last_ok.map(|at| now.saturating_duration_since(at)),
            })
            .collect();
        let ranges = self
            .keyspace
            .current_ranges()
            .filter(|r| r.state() == RangeState::Active)
            .map(|r| {
                let placements: Vec<NodeId> = r
                    .placements()
                    .iter()
                    .filter(|p| p.is_live() && !p.retiring())
                    .map(|p| p.node().clone())
                    .collect();
                // The load as the first holder reports it (replicas of one range
                // serve the same keys).
                let info = placements.iter().find_map(|node| {
                    self.roster
                        .get(node)
                        .and_then(|n| n.ranges.get(&r.id()))
                        .map(|view| &view.load)
                });
                let history = r.history();
                let mut snapshot = RangeSnapshot::new(
                    r.id(),
                    r.meta().start().clone(),
                    r.meta().end().clone(),
                    placements,
                );
                if let Some(info) = info {
                    snapshot.load = RangeLoad::from(info);
                    // Nodes suggest the two cuts apart: a hot range is split
                    // where its requests halve, a big one where its bytes do (a
                    // reference node sends only size keys; the planner falls
                    // back on them).
                    snapshot.split_keys_by_size = info.split_keys.clone();
                    snapshot.split_keys_by_load = info.load_split_keys.clone();
                    snapshot.load_cuts = info.load_cuts.clone();
                }
                snapshot.last_split = history.split.map(Timestamp::from_millis);
                snapshot.last_moved = history.moved.map(Timestamp::from_millis);
                snapshot.last_joined = history.joined.map(Timestamp::from_millis);
                snapshot
            })
            .collect();
        let in_flight = self
            .ops
            .values()
            .map(|op| InFlightOp {
                kind: match op.request {
                    OpRequest::Move { .. } => balancer::OpKind::Move,
                    OpRequest::Split { .. } => balancer::OpKind::Split,
                    OpRequest::Join { .. } => balancer::OpKind::Join,
                },
                ranges: op.ranges(),
                from: match &op.origin {
                    Origin::Drain(node) => Some(node.clone()),
                    Origin::Balancer(b) => b.from.clone(),
                    Origin::Operator | Origin::Resumed => None,
                },
                to: match (&op.request, &op.progress) {
                    (_, Progress::Move { to, .. }) => Some(to.clone()),
                    (OpRequest::Move { node, .. }, _) => node.clone(),
                    _ => None,
                },
            })
            .collect();
        Snapshot {
            now: self.timestamp(now),
            ranges,
            nodes,
            excluded: self
                .exclusions
                .pairs()
                .map(|(range, node)| (range, node.clone()))
                .collect(),
            in_flight,
        }
    }
}

fn action_ranges(action: &Action) -> Vec<RangeId> {
    match action {
        Action::Split { range, .. } | Action::Move { range, .. } => vec![*range],
        Action::Join { left, right } => vec![*left, *right],
    }
}

/// An action as `rangerctl` prints it.
pub fn describe(action: &Action) -> String {
    match action {
        Action::Split {
            range,
            key,
            left,
            right,
        } => match (left, right) {
            (Some(l), Some(r)) if l != r => {
                format!("split {range} at {key}, left half on {l}, right half on {r}")
            }
            (Some(node), Some(_)) => format!("split {range} at {key} on {node}"),
            _ => format!("split {range} at {key}"),
        },
        Action::Join { left, right } => format!("join {left} + {right}"),
        Action::Move { range, from, to } => format!("move {range} from {from} to {to}"),
    }
}
