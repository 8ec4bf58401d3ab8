//! One reconciliation step: what every range in play needs next.

use std::collections::{HashMap, HashSet};

use ranger_node_sdk::Command;
use ranger_proto::{
    NodeId, Parent, ParentPlacement, PlacementState, RangeId, RangeState, RemoteState,
};
use tokio::time::Instant;

use super::types::{Call, Dispatch, Effect, OpError, OpId, OpKind, OpPhase};
use super::{Engine, SWEEP_CHUNK, Subject};

/// How many entries Prepare's parents list holds at most: the range and its
/// history, nearest first. Bounded so that a range with a long history of
/// splits and joins does not make every Prepare huge.
const MAX_PREPARE_HISTORY: usize = 32;
use crate::keyspace::{Placement, PlacementId, Range};

/// The remote state a command aims for.
pub(super) fn goal(command: Command) -> RemoteState {
    match command {
        Command::Prepare | Command::Deactivate => RemoteState::Inactive,
        Command::Activate => RemoteState::Active,
        Command::Drop => RemoteState::NotFound,
    }
}

/// The controller-side states a placement must pass through to agree with what
/// its node reports, or nothing if they agree (or the report says nothing new).
fn sync_path(
    state: PlacementState,
    remote: RemoteState,
    retiring: bool,
) -> &'static [PlacementState] {
    use PlacementState as P;
    use RemoteState as R;
    match (state, remote) {
        (P::Pending, R::Preparing) => &[P::Loading],
        (P::Pending | P::Loading, R::Inactive) => &[P::Inactive],
        (P::Pending | P::Loading, R::Active | R::Activating | R::Deactivating) => {
            &[P::Inactive, P::Active]
        }
        (P::Inactive, R::Active) => &[P::Active],
        (P::Active, R::Inactive) => &[P::Inactive],
        (P::Inactive, R::NotFound) if retiring => &[P::Dropped],
        (P::Inactive | P::Active, R::NotFound) => &[P::Missing],
        (P::GiveUp, R::NotFound) => &[P::Dropped],
        (P::Pending | P::Loading, R::NotFound) if retiring => &[P::Dropped],
        // A lost node is back with its copy (SCENARIOS.md #31): it is Inactive
        // (a lapsed lease fenced and deactivated it) until activated again.
        (P::Missing, R::Inactive | R::Active | R::Activating | R::Deactivating) => &[P::Inactive],
        _ => &[],
    }
}

impl Engine {
    /// Reconciles everything in play once and returns what to do. Keyspace changes
    /// made here must be persisted (the runtime takes them) before the `Send`s run.
    pub fn step(&mut self, now: Instant) -> Vec<Effect> {
        let loss_after = self.config.node_loss_after();
        self.exclusions.retain(|_, until| *until > now);
        let stall = self.config.prepare_stall;
        self.prepare_progress
            .retain(|_, at| now.saturating_duration_since(*at) < stall);
        self.roster.forget_lost(now, loss_after);
        self.notice_lost_nodes(now);
        self.drive_operations(now);
        self.start_drain_moves(now);
        let mut load = None;
        for id in self.ranges_to_reconcile() {
            let settled = self.reconcile_range(id, now, &mut load);
            if !settled {
                self.dirty.insert(id);
            }
        }
        self.drop_orphans(now);
        std::mem::take(&mut self.effects)
    }

    /// Nodes that just became lost (or came back) concern all their ranges: look
    /// at everything once.
    fn notice_lost_nodes(&mut self, now: Instant) {
        let loss_after = self.config.node_loss_after();
        let lost: HashSet<NodeId> = self
            .roster
            .nodes()
            .filter(|n| n.is_lost(now, loss_after))
            .map(|n| n.id.clone())
            .collect();
        if lost != self.lost_nodes {
            self.lost_nodes = lost;
            self.full_sweep = true;
        }
        if !self.unknown_nodes_lost && now.saturating_duration_since(self.started) > loss_after {
            self.unknown_nodes_lost = true;
            self.full_sweep = true;
        }
    }

    /// The ranges this step looks at: everything on a full sweep; otherwise what
    /// changed, what operations are working on, and the next chunk of the
    /// background sweep.
    fn ranges_to_reconcile(&mut self) -> Vec<RangeId> {
        if std::mem::take(&mut self.full_sweep) {
            self.dirty.clear();
            return self.ranges_in_play();
        }
        let mut ids: Vec<RangeId> = self.dirty.drain().collect();
        for parent in &self.subsuming {
            ids.push(*parent);
            if let Ok(range) = self.keyspace.range(*parent) {
                ids.extend(range.children().iter().copied());
            }
        }
        for op in self.ops.values() {
            ids.extend(op.kind.ranges());
        }
        let chunk: Vec<&Range> = self
            .keyspace
            .current_ranges_from(self.sweep_cursor.as_bytes())
            .take(SWEEP_CHUNK + 1)
            .collect();
        let next = if chunk.len() > SWEEP_CHUNK {
            chunk[SWEEP_CHUNK].meta().start().clone()
        } else {
            ranger_proto::Key::empty()
        };
        ids.extend(chunk.iter().take(SWEEP_CHUNK).map(|r| r.id()));
        self.sweep_cursor = next;
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Current ranges, plus the parents and children of splits and joins under
    /// way (which are not all in the current tiling).
    fn ranges_in_play(&self) -> Vec<RangeId> {
        let mut ids: Vec<RangeId> = self.keyspace.current_ranges().map(Range::id).collect();
        for parent in &self.subsuming {
            ids.push(*parent);
            if let Ok(range) = self.keyspace.range(*parent) {
                ids.extend(range.children().iter().copied());
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn placements_per_node(&self) -> HashMap<NodeId, usize> {
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        for node in self.roster.nodes() {
            load.insert(node.id.clone(), 0);
        }
        for id in self.ranges_in_play() {
            if let Ok(range) = self.keyspace.range(id) {
                for p in range.placements().iter().filter(|p| p.is_live()) {
                    *load.entry(p.node().clone()).or_default() += 1;
                }
            }
        }
        load
    }

    pub(super) fn node_lost(&self, node: &NodeId, now: Instant) -> bool {
        let loss_after = self.config.node_loss_after();
        match self.roster.get(node) {
            Some(status) => status.is_lost(now, loss_after),
            None => now.saturating_duration_since(self.started) > loss_after,
        }
    }

    /// Whether the placement may be accepting writes, as far as anyone knows.
    fn may_serve(&self, range: RangeId, p: &Placement, now: Instant) -> bool {
        if !p.is_live() || self.node_lost(p.node(), now) {
            return false;
        }
        p.state() == PlacementState::Active
            || self
                .roster
                .remote(p.node(), range)
                .is_some_and(RemoteState::may_serve_writes)
    }

    /// A range in the steady state needs nothing: checked first, cheaply, so that a
    /// pass over a million settled ranges stays fast.
    fn is_steady(&self, range: &Range, now: Instant) -> bool {
        range.state() == RangeState::Active
            && range.placements().len() == self.config.replication.target
            && range.placements().iter().all(|p| {
                // One roster lookup per placement: this runs for every range on
                // a full pass.
                let node = self.roster.get(p.node());
                p.state() == PlacementState::Active
                    && !p.retiring()
                    && p.replaces().is_none()
                    && node.is_some_and(|n| {
                        !n.draining()
                            && !n.is_lost(now, self.config.node_loss_after())
                            && n.ranges.get(&range.id()).map(|v| v.state)
                                == Some(RemoteState::Active)
                    })
            })
    }

    /// Does what the range needs next. Returns whether it was settled (nothing to
    /// do); a range that is not stays under watch until it is.
    fn reconcile_range(
        &mut self,
        id: RangeId,
        now: Instant,
        load: &mut Option<HashMap<NodeId, usize>>,
    ) -> bool {
        let Ok(range) = self.keyspace.range(id) else {
            return true;
        };
        if range.state() == RangeState::Obsolete && range.first_live_placement().is_none() {
            return true;
        }
        if self.is_steady(range, now) {
            return true;
        }
        self.sync_placements(id, now);
        self.hand_over(id);
        self.act_on_placements(id, now);
        self.clear_unavailable_if_served(id, now);
        self.finish_subsume_if_done(id);
        self.place_if_needed(id, now, load);
        false
    }

    /// Brings placement states in line with node reports and lost nodes.
    fn sync_placements(&mut self, id: RangeId, now: Instant) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let mut changes: Vec<(PlacementId, NodeId, Vec<PlacementState>)> = Vec::new();
        for p in range.placements().iter().filter(|p| p.is_live()) {
            let path: Vec<PlacementState> = if self.node_lost(p.node(), now) {
                match p.state() {
                    PlacementState::GiveUp => vec![PlacementState::Dropped],
                    PlacementState::Missing => vec![],
                    _ => vec![PlacementState::Missing],
                }
            } else if let Some(remote) = self.roster.remote(p.node(), id) {
                sync_path(p.state(), remote, p.retiring()).to_vec()
            } else {
                vec![]
            };
            if !path.is_empty() {
                changes.push((p.id(), p.node().clone(), path));
            }
        }
        for (placement, node, path) in changes {
            for state in path {
                self.set_state(id, placement, &node, state);
            }
        }
    }

    fn set_state(
        &mut self,
        range: RangeId,
        placement: PlacementId,
        node: &NodeId,
        state: PlacementState,
    ) {
        let from = self
            .keyspace
            .range(range)
            .ok()
            .and_then(|r| r.placement(placement))
            .map(Placement::state);
        match self.keyspace.set_placement_state(range, placement, state) {
            Ok(()) => {
                if let Some(from) = from
                    && from != state
                {
                    self.emit(range, format!("{placement} on {node}: {from} -> {state}"));
                }
            }
            Err(e) => {
                tracing::error!(%range, %placement, error = %e, "placement state change refused")
            }
        }
    }

    fn retire(&mut self, range: RangeId, placement: PlacementId, why: &str) {
        let already = self
            .keyspace
            .range(range)
            .ok()
            .and_then(|r| r.placement(placement))
            .is_none_or(|p| p.retiring() || !p.is_live());
        if already {
            return;
        }
        match self.keyspace.set_retiring(range, placement, true) {
            Ok(()) => self.emit(range, format!("{placement} retiring: {why}")),
            Err(e) => tracing::error!(%range, %placement, error = %e, "could not retire placement"),
        }
    }

    /// A split or join whose children have all been activated hands over: the
    /// parents' placements retire. A move whose destination is Active retires its
    /// source.
    fn hand_over(&mut self, id: RangeId) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let mut to_retire: Vec<(PlacementId, &'static str)> = Vec::new();
        if range.state() == RangeState::Subsuming && self.children_all_activated(range) {
            to_retire.extend(
                range
                    .placements()
                    .iter()
                    .filter(|p| p.is_live() && !p.retiring())
                    .map(|p| (p.id(), "its children serve now")),
            );
        }
        for dest in range.placements() {
            if dest.state() == PlacementState::Active
                && !dest.retiring()
                && let Some(source) = dest.replaces()
            {
                to_retire.push((source, "moved away"));
            }
        }
        for (placement, why) in to_retire {
            self.retire(id, placement, why);
        }
    }

    fn children_all_activated(&self, range: &Range) -> bool {
        !range.children().is_empty()
            && range
                .children()
                .iter()
                .all(|c| self.keyspace.range(*c).is_ok_and(Range::ever_activated))
    }

    fn act_on_placements(&mut self, id: RangeId, now: Instant) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let placements: Vec<Placement> = range.placements().to_vec();
        for p in placements {
            let subject = Subject::Placement(p.id());
            match p.state() {
                PlacementState::Dropped => {
                    if let Err(e) = self.keyspace.remove_placement(id, p.id()) {
                        tracing::error!(range = %id, placement = %p.id(), error = %e, "could not remove placement");
                    }
                    self.attempts.forget(&subject);
                }
                PlacementState::Missing => {
                    // A copy worth waiting for is dropped only once its node,
                    // back and answering, reports that it no longer holds it;
                    // not merely because this controller (say, just restarted)
                    // has not counted the node lost yet.
                    let gone_from_node = !self.node_lost(p.node(), now)
                        && self.roster.remote(p.node(), id) == Some(RemoteState::NotFound);
                    if !gone_from_node && self.waits_for_lost_copy(id, &p, now) {
                        let why = format!(
                            "its only newest copy is on node {}, which is lost (no lease since {:?} ago); waiting for it to return with its data, or run `rangerctl forget {}` to re-create the range empty",
                            p.node(),
                            self.lease_age(p.node(), now),
                            p.node()
                        );
                        self.set_unavailable(id, Some(why), now);
                    } else {
                        self.notes
                            .insert(id, format!("{} lost its placement on {}", id, p.node()));
                        self.set_state(id, p.id(), p.node(), PlacementState::Dropped);
                    }
                }
                PlacementState::GiveUp => {
                    self.send(id, &p, Call::Drop { force: false }, now);
                }
                PlacementState::Pending | PlacementState::Loading => {
                    if p.retiring() {
                        self.send(id, &p, Call::Drop { force: false }, now);
                    } else {
                        self.prepare_or_give_up(id, &p, now);
                    }
                }
                PlacementState::Inactive => {
                    if p.retiring() {
                        self.send(id, &p, Call::Drop { force: false }, now);
                    } else if self.wants_active(id, &p, now) {
                        self.activate_or_give_up(id, &p, now);
                    }
                }
                PlacementState::Active => {
                    if p.retiring() || self.should_deactivate(id, &p, now) {
                        self.send(id, &p, Call::Deactivate, now);
                    }
                }
            }
        }
    }

    fn prepare_or_give_up(&mut self, id: RangeId, p: &Placement, now: Instant) {
        let subject = Subject::Placement(p.id());
        if let Some(attempt) = self.attempts.get(&subject, Command::Prepare) {
            let too_many = attempt.failures >= self.config.max_attempts;
            // A prepare that keeps copying is not too long (SCENARIOS.md #42).
            let progressing = self
                .prepare_progress_at(p.node(), id)
                .is_some_and(|t| now.saturating_duration_since(t) < self.config.prepare_stall);
            let too_long = !progressing
                && now.saturating_duration_since(attempt.first_sent)
                    >= self.config.prepare_deadline;
            if (too_many || too_long) && !self.attempts.is_inflight(p.node(), id) {
                let why = if too_many {
                    format!(
                        "prepare of {id} failed {} times on {}: {}",
                        attempt.failures,
                        p.node(),
                        attempt.last_error.clone().unwrap_or_default()
                    )
                } else {
                    format!("prepare of {id} on {} exceeded its deadline", p.node())
                };
                self.give_up(id, p, why, PlacementState::GiveUp, now);
                return;
            }
        }
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let call = Call::Prepare {
            meta: range.meta().clone(),
            parents: self.parents_for_prepare(range),
        };
        self.send(id, p, call, now);
    }

    fn activate_or_give_up(&mut self, id: RangeId, p: &Placement, now: Instant) {
        let subject = Subject::Placement(p.id());
        if let Some(attempt) = self.attempts.get(&subject, Command::Activate)
            && attempt.failures >= self.config.max_attempts
            && !self.attempts.is_inflight(p.node(), id)
        {
            let why = format!(
                "activate of {id} failed {} times on {}: {}",
                attempt.failures,
                p.node(),
                attempt.last_error.clone().unwrap_or_default()
            );
            if !self.may_have_served(p) {
                self.give_up(id, p, why, PlacementState::Inactive, now);
                return;
            }
            // Not proven to have refused (the answers were lost, or it served
            // before): it may be serving, so it stays the owner and activation
            // is retried with backoff (SCENARIOS.md #37).
            let why = format!("{why}; it may be serving, so it stays the owner and is retried");
            if self.notes.get(&id) != Some(&why) {
                self.emit(id, why.clone());
                self.notes.insert(id, why);
            }
        }
        if self.send(id, p, Call::Activate, now) {
            // Persisted with this step, before the runtime sends the command.
            self.activation_refused.remove(&p.id());
            if let Err(e) = self.keyspace.mark_activate_sent(id, p.id()) {
                tracing::error!(range = %id, placement = %p.id(), error = %e, "could not mark activate sent");
            }
        }
    }

    /// Stops using a node for a range: GiveUp (prepare) or retire (activate), and
    /// exclude the node for that range for a while.
    fn give_up(
        &mut self,
        id: RangeId,
        p: &Placement,
        why: String,
        state: PlacementState,
        now: Instant,
    ) {
        tracing::warn!(range = %id, placement = %p.id(), node = %p.node(), %why, "giving up on placement");
        self.exclusions
            .insert((id, p.node().clone()), now + self.config.exclusion);
        self.notes.insert(id, why.clone());
        if state == PlacementState::GiveUp {
            self.set_state(id, p.id(), p.node(), PlacementState::GiveUp);
        } else {
            self.retire(id, p.id(), &why);
        }
    }

    /// Whether an Inactive placement should become Active now (and may, safely).
    fn wants_active(&self, id: RangeId, p: &Placement, now: Instant) -> bool {
        let Ok(range) = self.keyspace.range(id) else {
            return false;
        };
        let wanted = match range.state() {
            RangeState::Obsolete => false,
            // A split or join being rolled back gives the parents their writes back.
            RangeState::Subsuming => self.rolling_back_parent(id),
            RangeState::Active => {
                let replaced = range
                    .placements()
                    .iter()
                    .any(|d| d.replaces() == Some(p.id()) && d.is_live() && !d.retiring());
                let serving = range
                    .placements()
                    .iter()
                    .filter(|x| x.id() != p.id() && self.may_serve(id, x, now))
                    .count();
                let limit = if p.replaces().is_some() {
                    self.config.replication.max_active
                } else {
                    self.config.replication.target
                };
                !replaced && serving < limit && !self.child_rolling_back(range)
            }
        };
        wanted && self.safe_to_activate(range, p, now)
    }

    /// Invariant 1: no overlapping placement of another range (a parent or child)
    /// may be serving, and for R1 no other placement of this range either.
    fn safe_to_activate(&self, range: &Range, p: &Placement, now: Instant) -> bool {
        let relatives = range.parents().iter().chain(range.children());
        for other in relatives {
            let Ok(other) = self.keyspace.range(*other) else {
                continue;
            };
            if other
                .placements()
                .iter()
                .any(|x| self.may_serve(other.id(), x, now))
            {
                return false;
            }
        }
        if self.config.replication.max_active == 1 {
            return !range
                .placements()
                .iter()
                .any(|x| x.id() != p.id() && self.may_serve(range.id(), x, now));
        }
        true
    }

    /// Whether an Active placement should step down for a handoff.
    fn should_deactivate(&self, id: RangeId, p: &Placement, now: Instant) -> bool {
        let Ok(range) = self.keyspace.range(id) else {
            return false;
        };
        if range.state() == RangeState::Subsuming {
            return !self.rolling_back_parent(id) && self.children_ready(range);
        }
        // A move: the destination is prepared; with no spare active slot, the
        // source steps down first (R1), else the destination activates first.
        let dest_ready = range.placements().iter().any(|d| {
            d.replaces() == Some(p.id()) && !d.retiring() && d.state() == PlacementState::Inactive
        });
        if !dest_ready {
            return false;
        }
        let serving = range
            .placements()
            .iter()
            .filter(|x| self.may_serve(id, x, now))
            .count();
        serving >= self.config.replication.max_active
    }

    /// Every child of a Subsuming range has its placements prepared.
    fn children_ready(&self, range: &Range) -> bool {
        let target = self.config.replication.target;
        range.children().iter().all(|c| {
            self.keyspace.range(*c).is_ok_and(|child| {
                child
                    .placements()
                    .iter()
                    .filter(|p| {
                        !p.retiring()
                            && matches!(
                                p.state(),
                                PlacementState::Inactive | PlacementState::Active
                            )
                    })
                    .count()
                    >= target
            })
        })
    }

    fn rolling_back_parent(&self, parent: RangeId) -> bool {
        self.ops.values().any(|op| {
            op.phase == OpPhase::RollingBack
                && match &op.kind {
                    OpKind::Split { range, .. } => *range == parent,
                    OpKind::Join { left, right, .. } => *left == parent || *right == parent,
                    OpKind::Move { .. } => false,
                }
        })
    }

    fn child_rolling_back(&self, range: &Range) -> bool {
        range.parents().iter().any(|p| self.rolling_back_parent(*p))
    }

    /// The parents list Prepare carries, as the reference sends it: the range
    /// itself with its placements, then its parents, then theirs, and so on
    /// through the history the keyspace still holds; each range once.
    ///
    /// A range that has ever been activated holds its own data: its parents'
    /// data moved into it long ago, so only its own entry is listed. With no
    /// placement there (its only copy was lost and forgotten, or its node
    /// forgot it), that tells the node to start the range empty.
    fn parents_for_prepare(&self, range: &Range) -> Vec<Parent> {
        let mut out = vec![self.as_parent(range)];
        if range.ever_activated() {
            return out;
        }
        let mut seen: HashSet<RangeId> = HashSet::from([range.id()]);
        let mut frontier: Vec<RangeId> = range.parents().to_vec();
        while !frontier.is_empty() && out.len() < MAX_PREPARE_HISTORY {
            let mut next = Vec::new();
            for id in frontier {
                if !seen.insert(id) || out.len() >= MAX_PREPARE_HISTORY {
                    continue;
                }
                if let Ok(parent) = self.keyspace.range(id) {
                    out.push(self.as_parent(parent));
                    next.extend(parent.parents().iter().copied());
                }
            }
            frontier = next;
        }
        out
    }

    /// A range as a Prepare parent entry. Only placements that hold the range's
    /// newest data are listed, because nodes copy from what is listed
    /// (SCENARIOS.md #39): the copy that serves or last served, or a frozen
    /// parent. Never a retiring copy (a rolled-back destination, a moved-away
    /// source), a copy still being prepared, a destination that was never told to
    /// activate, or a copy on a lost node.
    fn as_parent(&self, range: &Range) -> Parent {
        Parent {
            meta: range.meta().clone(),
            parents: range.parents().to_vec(),
            placements: range
                .placements()
                .iter()
                .filter(|p| {
                    p.is_live()
                        && !p.retiring()
                        && matches!(p.state(), PlacementState::Active | PlacementState::Inactive)
                        && (p.replaces().is_none() || self.may_have_served(p))
                })
                .filter_map(|p| {
                    self.roster.get(p.node()).map(|n| ParentPlacement {
                        node_addr: n.addr.clone(),
                        state: p.state(),
                    })
                })
                .collect(),
        }
    }

    /// Queues a command unless one is in flight for (node, range) or its backoff
    /// has not elapsed. Returns whether it was queued.
    fn send(&mut self, range: RangeId, p: &Placement, call: Call, now: Instant) -> bool {
        self.send_to(
            range,
            p.node().clone(),
            Subject::Placement(p.id()),
            call,
            now,
        )
    }

    fn send_to(
        &mut self,
        range: RangeId,
        node: NodeId,
        subject: Subject,
        call: Call,
        now: Instant,
    ) -> bool {
        let Some(addr) = self.roster.get(&node).map(|n| n.addr.clone()) else {
            return false;
        };
        if !self
            .attempts
            .try_begin(&node, range, &subject, call.command(), now)
        {
            return false;
        }
        self.effects.push(Effect::Send(Dispatch {
            node,
            addr,
            range,
            subject,
            call,
        }));
        true
    }

    /// A Subsuming range whose children all serve and which holds nothing anymore
    /// becomes Obsolete, with the rest of its split or join.
    fn finish_subsume_if_done(&mut self, id: RangeId) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        if range.state() != RangeState::Subsuming || !self.children_all_activated(range) {
            return;
        }
        let group: Vec<RangeId> = range
            .children()
            .first()
            .and_then(|c| self.keyspace.range(*c).ok())
            .map(|c| c.parents().to_vec())
            .unwrap_or_default();
        let all_empty = group.iter().all(|g| {
            self.keyspace
                .range(*g)
                .is_ok_and(|r| r.first_live_placement().is_none())
        });
        if !all_empty {
            return;
        }
        match self.keyspace.finish_subsume(&group) {
            Ok(()) => {
                for g in &group {
                    self.subsuming.remove(g);
                }
                self.emit(id, format!("{group:?} obsolete: split/join complete"));
            }
            Err(e) => tracing::error!(range = %id, error = %e, "could not finish split/join"),
        }
    }

    /// Adds a placement if the range has fewer than it should.
    fn place_if_needed(
        &mut self,
        id: RangeId,
        now: Instant,
        load: &mut Option<HashMap<NodeId, usize>>,
    ) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        if range.state() != RangeState::Active || self.child_rolling_back(range) {
            return;
        }
        let in_play = self.keyspace.is_current(id)
            || range.parents().iter().any(|p| self.subsuming.contains(p));
        if !in_play {
            return;
        }
        if range
            .placements()
            .iter()
            .any(|p| p.state() == PlacementState::Missing)
        {
            // A lost copy is waited for (see `waits_for_lost_copy`); placing an
            // empty one now would serve a range without its data.
            return;
        }
        let useful = range
            .placements()
            .iter()
            .filter(|p| {
                p.is_live()
                    && !p.retiring()
                    && !matches!(p.state(), PlacementState::GiveUp | PlacementState::Missing)
            })
            .count();
        let live = range.placements().iter().filter(|p| p.is_live()).count();
        let replication = self.config.replication;
        if useful >= replication.target || live >= replication.max_placements {
            return;
        }
        let hint = self.placement_hint(id);
        let load = load.get_or_insert_with(|| self.placements_per_node());
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let Some(node) = self.choose_node(range, hint.as_ref(), &[], now, load) else {
            let why = format!("{id} is unplaced: no eligible node");
            if self.notes.get(&id) != Some(&why) {
                self.emit(id, why.clone());
            }
            self.notes.insert(id, why);
            return;
        };
        match self.keyspace.add_placement(id, node.clone(), None) {
            Ok(placement) => {
                self.roster.forget_range(&node, id);
                *load.entry(node.clone()).or_default() += 1;
                self.emit(id, format!("{placement} on {node}: placed (Pending)"));
            }
            Err(e) => tracing::error!(range = %id, error = %e, "could not add placement"),
        }
    }

    /// The node an operator asked for, for a child of a split or join.
    fn placement_hint(&self, child: RangeId) -> Option<NodeId> {
        self.ops.values().find_map(|op| match &op.kind {
            OpKind::Split {
                left_node,
                right_node,
                children: Some((l, r)),
                ..
            } => {
                if *l == child {
                    left_node.clone()
                } else if *r == child {
                    right_node.clone()
                } else {
                    None
                }
            }
            OpKind::Join {
                node,
                child: Some(c),
                ..
            } if *c == child => node.clone(),
            _ => None,
        })
    }

    /// The least loaded eligible node for a new placement of `range`: registered,
    /// answering, not draining, not excluded for this range, not already holding it.
    pub(super) fn choose_node(
        &self,
        range: &Range,
        hint: Option<&NodeId>,
        avoid: &[NodeId],
        now: Instant,
        load: &HashMap<NodeId, usize>,
    ) -> Option<NodeId> {
        let eligible = |node: &NodeId| -> bool {
            self.roster.get(node).is_some_and(|n| {
                n.registered
                    && n.last_ok.is_some()
                    && !n.draining()
                    && !n.is_lost(now, self.config.node_loss_after())
            }) && !avoid.contains(node)
                && !self.exclusions.contains_key(&(range.id(), node.clone()))
                && !range
                    .placements()
                    .iter()
                    .any(|p| p.is_live() && p.node() == node)
        };
        if let Some(hint) = hint
            && eligible(hint)
        {
            return Some(hint.clone());
        }
        self.roster
            .nodes()
            .filter(|n| eligible(&n.id))
            .min_by_key(|n| {
                (
                    load.get(&n.id).copied().unwrap_or(0),
                    n.reported_bytes(),
                    n.id.clone(),
                )
            })
            .map(|n| n.id.clone())
    }

    /// Ranges that nodes hold but no live placement accounts for are dropped.
    /// Candidates come from probes (see `on_probe`); each is re-checked here.
    fn drop_orphans(&mut self, now: Instant) {
        let candidates: Vec<(NodeId, RangeId)> = self.orphans.iter().cloned().collect();
        for (node, range) in candidates {
            let reachable = self
                .roster
                .get(&node)
                .is_some_and(|n| n.registered && !n.is_lost(now, self.config.node_loss_after()));
            let held = self
                .roster
                .remote(&node, range)
                .is_some_and(|s| s != RemoteState::NotFound);
            let accounted = self.keyspace.range(range).is_ok_and(|r| {
                r.placements()
                    .iter()
                    .any(|p| p.is_live() && p.node() == &node)
            });
            if !reachable || !held || accounted {
                self.orphans.remove(&(node, range));
                continue;
            }
            let subject = Subject::Orphan(node.clone(), range);
            self.send_to(range, node, subject, Call::Drop { force: true }, now);
        }
    }

    // ---- operations ----

    fn drive_operations(&mut self, now: Instant) {
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
                match &result {
                    Ok(()) => tracing::info!(op = %id, kind = %op.kind, "operation done"),
                    Err(e) => {
                        tracing::warn!(op = %id, kind = %op.kind, error = %e, "operation failed")
                    }
                }
                self.effects.push(Effect::Finished { op: id, result });
            }
        }
    }

    /// Whether another running operation touches any of these ranges.
    fn busy(&self, ranges: &[RangeId], except: OpId) -> bool {
        self.ops.values().any(|op| {
            op.id != except
                && op.phase != OpPhase::Queued
                && op.kind.ranges().iter().any(|r| ranges.contains(r))
        })
    }

    /// Starts a queued operation if nothing blocks it. `Some` ends it at once.
    fn try_start(&mut self, op: &super::Operation, now: Instant) -> Option<Result<(), OpError>> {
        if self.busy(&op.kind.ranges(), op.id) {
            return None;
        }
        let started = match op.kind.clone() {
            OpKind::Move {
                range, to, from, ..
            } => self.start_move(range, to, from, now),
            OpKind::Split {
                range,
                key,
                left_node,
                right_node,
                ..
            } => self.start_split(range, key, left_node, right_node),
            OpKind::Join {
                left, right, node, ..
            } => self.start_join(left, right, node),
        };
        match started {
            Ok(Some(kind)) => {
                if let Some(entry) = self.ops.get_mut(&op.id) {
                    entry.kind = kind;
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

    fn start_move(
        &mut self,
        range: RangeId,
        to: Option<NodeId>,
        from: Option<NodeId>,
        now: Instant,
    ) -> Result<Option<OpKind>, OpError> {
        let r = self
            .keyspace
            .range(range)
            .map_err(|_| OpError::UnknownRange(range))?;
        if r.state() != RangeState::Active || !self.keyspace.is_current(range) {
            return Err(OpError::FailedPrecondition(format!(
                "range {range} is {} and cannot be moved",
                r.state()
            )));
        }
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
        let load = self.placements_per_node();
        // Without a named source, move the copy on the busiest node (oldest first).
        let source = match &from {
            Some(node) => candidates.clone().rfind(|p| p.node() == node),
            None => candidates
                .filter(|p| Some(p.node()) != to.as_ref())
                .max_by_key(|p| {
                    (
                        p.state() == PlacementState::Active,
                        load.get(p.node()).copied().unwrap_or(0),
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
        Ok(Some(OpKind::Move {
            range,
            to: Some(dest_node),
            from: Some(source.node().clone()),
            source: Some(source.id()),
            dest: Some(dest),
        }))
    }

    fn start_split(
        &mut self,
        range: RangeId,
        key: ranger_proto::Key,
        left_node: Option<NodeId>,
        right_node: Option<NodeId>,
    ) -> Result<Option<OpKind>, OpError> {
        let placed = self
            .keyspace
            .range(range)
            .map_err(|_| OpError::UnknownRange(range))?
            .first_live_placement()
            .is_some();
        let (left, right) = self
            .keyspace
            .split(range, key.clone())
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
        Ok(Some(OpKind::Split {
            range,
            key,
            left_node,
            right_node,
            children: Some((left, right)),
        }))
    }

    fn start_join(
        &mut self,
        left: RangeId,
        right: RangeId,
        node: Option<NodeId>,
    ) -> Result<Option<OpKind>, OpError> {
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
        Ok(Some(OpKind::Join {
            left,
            right,
            node,
            child: Some(child),
        }))
    }

    /// Follows a running operation: done, failed, or to be rolled back.
    fn check_running(
        &mut self,
        op: &super::Operation,
        now: Instant,
    ) -> Option<Result<(), OpError>> {
        match &op.kind {
            OpKind::Move {
                range,
                dest: Some(dest),
                ..
            } => self.check_move(op, *range, *dest, now),
            OpKind::Split {
                children: Some((l, r)),
                ..
            } => self.check_subsume(op, &[*l, *r], now),
            OpKind::Join {
                child: Some(child), ..
            } => self.check_subsume(op, &[*child], now),
            _ => Some(Err(OpError::Aborted(format!(
                "{} lost track of its ranges",
                op.kind
            )))),
        }
    }

    fn check_move(
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

    fn source_error(&self, range: RangeId, dest: &Placement) -> String {
        dest.replaces()
            .and_then(|s| self.attempts.last_error(&Subject::Placement(s)))
            .or_else(|| self.notes.get(&range).cloned())
            .unwrap_or_else(|| "no answer".into())
    }

    fn check_subsume(
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
                "{}: a child range vanished",
                op.kind
            ))));
        }
        if ranges.iter().all(Range::ever_activated) {
            return Some(Ok(()));
        }
        if ranges.iter().any(|c| c.state() == RangeState::Obsolete) {
            return Some(Err(OpError::Aborted(format!(
                "{} was rolled back",
                op.kind
            ))));
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
                        "{}: not complete in time: a child was told to activate, so it rolls forward: {}",
                        op.kind,
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
                        .kind
                        .ranges()
                        .iter()
                        .chain(children)
                        .filter_map(|r| self.notes.get(r).cloned())
                        .collect();
                    format!("deadline passed: {}", errors.join("; "))
                })
            });
            match reason {
                Some(reason) if !any_activated => {
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
                _ => return None,
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
                        "{} rolled back: {reason}; the parents serve again only once every child copy is dropped, and dropping goes on with backoff",
                        op.kind
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
            return Some(Err(OpError::Aborted(format!(
                "{}: rollback failed: {e}",
                op.kind
            ))));
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
            format!("{} rolled back", op.kind),
        );
        Some(Err(if reason.starts_with("cancelled") {
            OpError::Cancelled(format!("{} rolled back", op.kind))
        } else {
            OpError::Aborted(format!("{} rolled back: {reason}", op.kind))
        }))
    }

    /// When the operator stops waiting for an operation past its point of no
    /// return: the operation deadline, extended by `activate_deadline` from the
    /// first Activate of its destinations (so an activation under way at the
    /// deadline can still answer).
    fn answer_deadline(&self, op: &super::Operation, placements: &[PlacementId]) -> Instant {
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
    fn prepare_aware_deadline(
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
    fn report_rolling_forward(&mut self, op: &super::Operation, message: String) {
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
    fn start_drain_moves(&mut self, now: Instant) {
        let draining: Vec<NodeId> = self
            .roster
            .nodes()
            .filter(|n| n.draining())
            .map(|n| n.id.clone())
            .collect();
        if draining.is_empty() {
            return;
        }
        let running = self.ops.values().filter(|op| op.drain).count();
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
            if range.state() != RangeState::Active || !self.keyspace.is_current(id) {
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
                        .any(|op| op.kind.ranges().contains(&range.id()));
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
            let kind = OpKind::Move {
                range,
                to: None,
                from: Some(node.clone()),
                source: None,
                dest: None,
            };
            let id = self.new_op(kind, OpPhase::Queued, now, true);
            tracing::info!(op = %id, %range, %node, "draining: moving range away");
        }
    }
}
