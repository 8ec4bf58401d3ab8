//! Operations (move, split, join) as the operator sees them: queued, started,
//! followed to their end, rolled back while they still may be, rolled forward
//! past their point of no return (SCENARIOS.md #7-#29, #37, #41, #42), and the
//! moves a drain starts on its own.

use ranger_proto::Command;
use ranger_proto::{NodeId, PlacementState, RangeId, RangeState, RemoteState};
use tokio::time::Instant;

use super::types::{Effect, OpError, OpId, OpPhase, OpRequest, Origin, Progress};
use super::{Engine, Subject};
use crate::keyspace::{Placement, PlacementId, Range};

impl Engine {
    pub(super) fn drive_operations(&mut self, now: Instant) {
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        for id in ids {
            let Some(op) = self.ops.get(&id).cloned() else {
                continue;
            };
            let result = match op.phase {
                OpPhase::Queued => self.try_start(&op, now),
                OpPhase::Running | OpPhase::RollingBack => self.check_running(&op, now),
            };
            if let Some(result) = result {
                self.ops.remove(&id);
                if result.is_ok() {
                    self.note_balance_history(&op, now);
                }
                match &result {
                    Ok(()) => tracing::info!(op = %id, kind = %op, "operation done"),
                    Err(e) => {
                        tracing::warn!(op = %id, kind = %op, error = %e, "operation failed")
                    }
                }
                self.history.record(&op, &result, now);
                self.effects.push(Effect::Finished { op: id, result });
            }
        }
    }

    /// The started operation that works on `range`: the range it was asked
    /// about, or a child its split or join built.
    pub(super) fn operation_touching(&self, range: RangeId) -> Option<OpId> {
        self.ops
            .values()
            .filter(|op| op.phase != OpPhase::Queued)
            .find(|op| {
                op.request.ranges().contains(&range)
                    || match op.progress {
                        Progress::Split { left, right } => left == range || right == range,
                        Progress::Join { child } => child == range,
                        Progress::NotStarted | Progress::Move { .. } => false,
                    }
            })
            .map(|op| op.id)
    }

    /// Whether another running operation touches any of these ranges.
    pub(super) fn busy(&self, ranges: &[RangeId], except: OpId) -> bool {
        self.ops.values().any(|op| {
            op.id != except
                && op.phase != OpPhase::Queued
                && op.ranges().iter().any(|r| ranges.contains(r))
        })
    }

    /// Starts a queued operation if nothing blocks it. `Some` ends it at once.
    pub(super) fn try_start(
        &mut self,
        op: &super::Operation,
        now: Instant,
    ) -> Option<Result<(), OpError>> {
        if self.busy(&op.ranges(), op.id) {
            return None;
        }
        // A range that started waiting for a lost copy while this was queued.
        for range in op.ranges() {
            if let Err(e) = self.check_available(range) {
                return Some(Err(e));
            }
        }
        let from = match &op.origin {
            Origin::Drain(node) => Some(node.clone()),
            Origin::Balancer(balancer) => balancer.from.clone(),
            Origin::Operator | Origin::Resumed => None,
        };
        let started = match op.request.clone() {
            OpRequest::Move { range, node } => self.start_move(range, node, from, now),
            OpRequest::Split { range, key, .. } => self.start_split(range, key),
            OpRequest::Join { left, right, .. } => self.start_join(left, right),
        };
        match started {
            Ok(Some(progress)) => {
                if let Some(entry) = self.ops.get_mut(&op.id) {
                    entry.progress = progress;
                    entry.phase = OpPhase::Running;
                    entry.started = now;
                    entry.deadline = now + self.config.op_deadline;
                }
                None
            }
            Ok(None) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        }
    }

    pub(super) fn start_move(
        &mut self,
        range: RangeId,
        to: Option<NodeId>,
        from: Option<NodeId>,
        now: Instant,
    ) -> Result<Option<Progress>, OpError> {
        let r = self.operable(range, "moved")?;
        let live = r.placements().iter().filter(|p| p.is_live()).count();
        if live >= self.config.replication.max_placements {
            return Err(OpError::FailedPrecondition(format!(
                "range {range} already has {live} placements (the maximum)"
            )));
        }
        let candidates = r
            .placements()
            .iter()
            .filter(|p| p.is_live() && !p.retiring() && p.replaces().is_none());
        let load = self.node_loads();
        // Without a named source, move the copy on the busiest node (oldest first).
        let source = match &from {
            Some(node) => candidates.clone().rfind(|p| p.node() == node),
            None => candidates
                .filter(|p| Some(p.node()) != to.as_ref())
                .max_by_key(|p| {
                    (
                        p.state() == PlacementState::Active,
                        load.ranges_on(p.node()),
                        std::cmp::Reverse(p.id()),
                    )
                }),
        }
        .cloned()
        .ok_or_else(|| {
            OpError::FailedPrecondition(format!("range {range} has no placement to move"))
        })?;
        let avoid = [source.node().clone()];
        let dest_node = match &to {
            Some(node) => {
                self.choose_node(r, Some(node), &avoid, now, &load)
                    .filter(|chosen| chosen == node)
                    .ok_or_else(|| {
                        OpError::FailedPrecondition(format!(
                            "node {node} cannot take range {range} now (unknown, lost, draining, excluded, or already holding it)"
                        ))
                    })?
            }
            None => self
                .choose_node(r, None, &avoid, now, &load)
                .ok_or_else(|| OpError::FailedPrecondition(format!("no eligible node to move range {range} to")))?,
        };
        let dest = self
            .keyspace
            .add_placement(range, dest_node.clone(), Some(source.id()))
            .map_err(|e| OpError::FailedPrecondition(e.to_string()))?;
        self.roster.forget_range(&dest_node, range);
        self.emit(
            range,
            format!(
                "{dest} on {dest_node}: placed (Pending), replacing {} on {}",
                source.id(),
                source.node()
            ),
        );
        Ok(Some(Progress::Move {
            source: source.id(),
            dest,
            to: dest_node,
        }))
    }

    pub(super) fn start_split(
        &mut self,
        range: RangeId,
        key: ranger_proto::Key,
    ) -> Result<Option<Progress>, OpError> {
        let placed = self
            .keyspace
            .range(range)
            .map_err(|_| OpError::UnknownRange(range))?
            .first_live_placement()
            .is_some();
        let (left, right) = self
            .keyspace
            .split(range, key)
            .map_err(|e| OpError::FailedPrecondition(e.to_string()))?;
        self.emit(range, format!("split begun: {left} and {right}"));
        if !placed {
            // Nothing serves it: the children take over at once.
            self.keyspace
                .finish_subsume(&[range])
                .map_err(|e| OpError::Aborted(e.to_string()))?;
            return Ok(None);
        }
        self.subsuming.insert(range);
        Ok(Some(Progress::Split { left, right }))
    }

    pub(super) fn start_join(
        &mut self,
        left: RangeId,
        right: RangeId,
    ) -> Result<Option<Progress>, OpError> {
        let placed = [left, right].iter().any(|id| {
            self.keyspace
                .range(*id)
                .is_ok_and(|r| r.first_live_placement().is_some())
        });
        let child = self
            .keyspace
            .join(left, right)
            .map_err(|e| OpError::FailedPrecondition(e.to_string()))?;
        self.emit(left, format!("join begun: {left} + {right} -> {child}"));
        if !placed {
            self.keyspace
                .finish_subsume(&[left, right])
                .map_err(|e| OpError::Aborted(e.to_string()))?;
            return Ok(None);
        }
        self.subsuming.insert(left);
        self.subsuming.insert(right);
        Ok(Some(Progress::Join { child }))
    }

    /// Follows a running operation: done, failed, or to be rolled back.
    pub(super) fn check_running(
        &mut self,
        op: &super::Operation,
        now: Instant,
    ) -> Option<Result<(), OpError>> {
        match (&op.request, &op.progress) {
            (OpRequest::Move { range, .. }, Progress::Move { dest, .. }) => {
                self.check_move(op, *range, *dest, now)
            }
            (_, Progress::Split { left, right }) => self.check_subsume(op, &[*left, *right], now),
            (_, Progress::Join { child }) => self.check_subsume(op, &[*child], now),
            _ => Some(Err(OpError::Aborted(format!(
                "{op} lost track of its ranges"
            )))),
        }
    }

    pub(super) fn check_move(
        &mut self,
        op: &super::Operation,
        range: RangeId,
        dest: PlacementId,
        now: Instant,
    ) -> Option<Result<(), OpError>> {
        // Answers that arrived since the last step count before any deadline
        // does: an Active answer at the deadline completes the move. (A given
        // up destination keeps its state until reported below.)
        let given_up = self
            .keyspace
            .range(range)
            .ok()
            .and_then(|r| r.placement(dest))
            .is_some_and(|d| d.state() == PlacementState::GiveUp);
        if !given_up {
            self.sync_placements(range, now);
        }
        let last_error = |engine: &Engine| {
            engine
                .attempts
                .last_error(&Subject::Placement(dest))
                .or_else(|| engine.notes.get(&range).cloned())
                .unwrap_or_else(|| "no error recorded".into())
        };
        let Some(d) = self
            .keyspace
            .range(range)
            .ok()
            .and_then(|r| r.placement(dest))
            .cloned()
        else {
            return Some(Err(OpError::Aborted(format!(
                "move of {range}: destination {dest} was dropped: {}",
                last_error(self)
            ))));
        };
        match d.state() {
            PlacementState::Active if !d.retiring() => return Some(Ok(())),
            PlacementState::GiveUp => {
                return Some(Err(OpError::Aborted(format!(
                    "move of {range}: prepare failed on {}: {}",
                    d.node(),
                    last_error(self)
                ))));
            }
            PlacementState::Missing | PlacementState::Dropped => {
                return Some(Err(OpError::Aborted(format!(
                    "move of {range}: destination {} lost the range",
                    d.node()
                ))));
            }
            _ => {}
        }
        if d.retiring() {
            return Some(Err(OpError::Aborted(format!(
                "move of {range}: activate failed on {}, rolled back: {}",
                d.node(),
                last_error(self)
            ))));
        }
        let cancelled = op.rollback_reason.is_some();
        if self.may_have_served(&d) {
            // Past the point of no return: d may be serving, so it owns the
            // range and the move only rolls forward (SCENARIOS.md #37).
            if now >= self.answer_deadline(op, &[dest]) {
                self.report_rolling_forward(
                    op,
                    format!(
                        "move of {range}: not confirmed in time: {} was told to activate and owns the range now; the controller keeps activating it ({})",
                        d.node(),
                        last_error(self)
                    ),
                );
            }
            return None;
        }
        let deadline = self.prepare_aware_deadline(op.deadline, range, &d, now);
        if (cancelled || now >= deadline) && !self.attempts.is_inflight(d.node(), range) {
            let source_stuck = self
                .keyspace
                .range(range)
                .ok()
                .and_then(|r| d.replaces().and_then(|s| r.placement(s)))
                .is_some_and(|s| s.state() == PlacementState::Active);
            let why = if cancelled {
                "cancelled by operator".to_owned()
            } else if source_stuck && d.state() == PlacementState::Inactive {
                format!(
                    "source would not deactivate: {}",
                    self.source_error(range, &d)
                )
            } else {
                format!("deadline passed: {}", last_error(self))
            };
            self.retire(range, dest, &why);
            return Some(Err(if cancelled {
                OpError::Cancelled(format!("move of {range}"))
            } else {
                OpError::Aborted(format!("move of {range}: {why}"))
            }));
        }
        None
    }

    pub(super) fn source_error(&self, range: RangeId, dest: &Placement) -> String {
        dest.replaces()
            .and_then(|s| self.attempts.last_error(&Subject::Placement(s)))
            .or_else(|| self.notes.get(&range).cloned())
            .unwrap_or_else(|| "no answer".into())
    }

    pub(super) fn check_subsume(
        &mut self,
        op: &super::Operation,
        children: &[RangeId],
        now: Instant,
    ) -> Option<Result<(), OpError>> {
        for child in children {
            self.sync_placements(*child, now);
        }
        let ranges: Vec<Range> = children
            .iter()
            .filter_map(|c| self.keyspace.range(*c).ok().cloned())
            .collect();
        if ranges.len() != children.len() {
            return Some(Err(OpError::Aborted(format!(
                "{op}: a child range vanished"
            ))));
        }
        if ranges.iter().all(Range::ever_activated) {
            return Some(Ok(()));
        }
        if ranges.iter().any(|c| c.state() == RangeState::Obsolete) {
            return Some(Err(OpError::Aborted(format!("{op} was rolled back"))));
        }
        let any_activated = children.iter().any(|c| self.child_may_have_served(*c));
        if any_activated && op.phase == OpPhase::Running {
            // Past the point of no return: roll forward only (SCENARIOS.md #37).
            let placements: Vec<PlacementId> = ranges
                .iter()
                .flat_map(|c| c.placements().iter().map(Placement::id))
                .collect();
            if now >= self.answer_deadline(op, &placements) {
                let errors: Vec<String> = children
                    .iter()
                    .filter_map(|r| self.notes.get(r).cloned())
                    .collect();
                self.report_rolling_forward(
                    op,
                    format!(
                        "{op}: not complete in time: a child was told to activate, so it rolls forward: {}",
                        errors.join("; ")
                    ),
                );
            }
            return None;
        }
        if op.phase == OpPhase::Running {
            // Children still copying with progress push the deadline back.
            let deadline = ranges
                .iter()
                .flat_map(|c| c.placements().iter().map(move |p| (c.id(), p)))
                .map(|(c, p)| self.prepare_aware_deadline(op.deadline, c, p, now))
                .max()
                .unwrap_or(op.deadline);
            let reason = op.rollback_reason.clone().or_else(|| {
                (now >= deadline).then(|| {
                    let errors: Vec<String> = op
                        .ranges()
                        .iter()
                        .chain(children)
                        .filter_map(|r| self.notes.get(r).cloned())
                        .collect();
                    format!("deadline passed: {}", errors.join("; "))
                })
            });
            // No child may have served (checked above): rolling back is safe.
            match reason {
                Some(reason) => {
                    tracing::warn!(op = %op.id, %reason, "rolling back");
                    if let Some(entry) = self.ops.get_mut(&op.id) {
                        entry.phase = OpPhase::RollingBack;
                        entry.rollback_reason = Some(reason);
                        // The rollback gets a deadline of its own: if child
                        // drops keep failing, the operator is answered then
                        // while the drops go on (SCENARIOS.md #42).
                        entry.deadline = now + self.config.op_deadline;
                    }
                }
                None => return None,
            }
        }
        // Rolling back: drop every child placement, then restore the parents.
        for child in &ranges {
            for p in child.placements().iter().filter(|p| p.is_live()) {
                self.retire(child.id(), p.id(), "split/join rolled back");
            }
        }
        let empty = children.iter().all(|c| {
            self.keyspace
                .range(*c)
                .is_ok_and(|r| r.first_live_placement().is_none())
        });
        if !empty {
            if op.phase == OpPhase::RollingBack && now >= op.deadline {
                let reason = op.rollback_reason.clone().unwrap_or_default();
                self.report_rolling_forward(
                    op,
                    format!(
                        "{op} rolled back: {reason}; the parents serve again only once every child copy is dropped, and dropping goes on with backoff"
                    ),
                );
            }
            return None;
        }
        let parents: Vec<RangeId> = ranges
            .first()
            .map(|c| c.parents().to_vec())
            .unwrap_or_default();
        if let Err(e) = self.keyspace.rollback_subsume(children) {
            return Some(Err(OpError::Aborted(format!("{op}: rollback failed: {e}"))));
        }
        for p in &parents {
            self.subsuming.remove(p);
        }
        let reason = self
            .ops
            .get(&op.id)
            .and_then(|o| o.rollback_reason.clone())
            .unwrap_or_default();
        self.emit(
            parents.first().copied().unwrap_or(RangeId::FIRST),
            format!("{op} rolled back"),
        );
        Some(Err(if reason.starts_with("cancelled") {
            OpError::Cancelled(format!("{op} rolled back"))
        } else {
            OpError::Aborted(format!("{op} rolled back: {reason}"))
        }))
    }

    /// When the operator stops waiting for an operation past its point of no
    /// return: the operation deadline, extended by `activate_deadline` from the
    /// first Activate of its destinations (so an activation under way at the
    /// deadline can still answer).
    pub(super) fn answer_deadline(
        &self,
        op: &super::Operation,
        placements: &[PlacementId],
    ) -> Instant {
        let first_activate = placements
            .iter()
            .filter_map(|p| {
                self.attempts
                    .get(&Subject::Placement(*p), Command::Activate)
                    .map(|a| a.first_sent)
            })
            .min();
        let extended = first_activate.map_or(op.deadline, |t| t + self.config.activate_deadline);
        op.deadline.max(extended)
    }

    /// An operation's deadline, pushed back while its destination is still being
    /// prepared and the prepare keeps making progress.
    pub(super) fn prepare_aware_deadline(
        &self,
        deadline: Instant,
        range: RangeId,
        p: &Placement,
        now: Instant,
    ) -> Instant {
        // Until the destination is told to activate: a prepare that just ended
        // after copying for long still gets its handoff.
        if !matches!(
            p.state(),
            PlacementState::Pending | PlacementState::Loading | PlacementState::Inactive
        ) || p.activate_sent()
        {
            return deadline;
        }
        match self.prepare_progress_at(p.node(), range) {
            Some(at) if now.saturating_duration_since(at) < self.config.prepare_stall => {
                deadline.max(at + self.config.prepare_stall)
            }
            _ => deadline,
        }
    }

    /// Answers the operator with an error, once, while the operation goes on.
    pub(super) fn report_rolling_forward(&mut self, op: &super::Operation, message: String) {
        if op.reported {
            return;
        }
        tracing::warn!(op = %op.id, %message, "operation answered before it ended");
        if let Some(entry) = self.ops.get_mut(&op.id) {
            entry.reported = true;
        }
        self.effects.push(Effect::Finished {
            op: op.id,
            result: Err(OpError::Aborted(message)),
        });
    }

    /// Nodes that want to be emptied get their ranges moved away, a few at a time.
    pub(super) fn start_drain_moves(&mut self, now: Instant) {
        let draining: Vec<NodeId> = self
            .roster
            .nodes()
            .filter(|n| n.draining())
            .map(|n| n.id.clone())
            .collect();
        if draining.is_empty() {
            return;
        }
        let running = self
            .ops
            .values()
            .filter(|op| matches!(op.origin, Origin::Drain(_)))
            .count();
        if running >= self.config.max_drain_moves {
            return;
        }
        // Candidates are what the draining nodes report holding: no walk of the
        // whole tiling, however large the keyspace.
        let mut candidates: Vec<RangeId> = draining
            .iter()
            .filter_map(|n| self.roster.get(n))
            .flat_map(|n| {
                n.ranges
                    .iter()
                    .filter(|(_, view)| view.state != RemoteState::NotFound)
                    .map(|(id, _)| *id)
            })
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut wanted: Vec<(RangeId, NodeId)> = Vec::new();
        for id in candidates {
            if running + wanted.len() >= self.config.max_drain_moves {
                break;
            }
            let Ok(range) = self.keyspace.range(id) else {
                continue;
            };
            if range.state() != RangeState::Active
                || !self.keyspace.is_current(id)
                || self.check_available(id).is_err()
            {
                continue;
            }
            for p in range.placements() {
                if p.is_live()
                    && !p.retiring()
                    && p.replaces().is_none()
                    && draining.contains(p.node())
                {
                    let has_op = self
                        .ops
                        .values()
                        .any(|op| op.ranges().contains(&range.id()));
                    let moving = range
                        .placements()
                        .iter()
                        .any(|d| d.replaces() == Some(p.id()));
                    if !has_op && !moving {
                        wanted.push((range.id(), p.node().clone()));
                    }
                }
            }
        }
        for (range, node) in wanted {
            let request = OpRequest::Move { range, node: None };
            let origin = Origin::Drain(node.clone());
            let id = self.new_op(request, origin, Progress::NotStarted, OpPhase::Queued, now);
            tracing::info!(op = %id, %range, %node, "draining: moving range away");
        }
    }
}
