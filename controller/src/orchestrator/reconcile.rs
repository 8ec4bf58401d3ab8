//! One reconciliation step: what every range in play needs next, placement by
//! placement (sync with what nodes report, hand over, send the next command).
//! Operations live in `operations.rs`, node choice in `placement.rs`, the
//! ownership rules in `ownership.rs`.

use std::collections::{HashMap, HashSet};

use ranger_proto::Command;
use ranger_proto::{
    NodeId, Parent, ParentPlacement, PlacementState, RangeId, RangeState, RemoteState,
};
use tokio::time::Instant;

use super::node_loads::NodeLoads;
use super::types::{Call, Dispatch, Effect, OpPhase, OpRequest};
use super::{Engine, SWEEP_CHUNK, Subject};
use crate::keyspace::{Placement, PlacementId, Range};
use crate::roster::NodeStatus;

/// How many entries Prepare's parents list holds at most: the range and its
/// history, nearest first. Bounded so that a range with a long history of
/// splits and joins does not make every Prepare huge.
const MAX_PREPARE_HISTORY: usize = 32;

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
    /// Reconciles everything in play once; what to do piles up in `effects`
    /// (the step in `output.rs` orders it for the runtime).
    pub(super) fn reconcile_all(&mut self, now: Instant) {
        let loss_after = self.config.node_loss_after();
        self.exclusions.expire(now);
        let stall = self.config.prepare_stall;
        self.prepare_progress
            .retain(|_, at| now.saturating_duration_since(*at) < stall);
        self.roster.forget_lost(now, loss_after);
        self.notice_lost_nodes(now);
        self.account_for_first_answers();
        self.drive_operations(now);
        self.start_drain_moves(now);
        let mut load = None;
        let ids = self.ranges_to_reconcile(now);
        for id in &ids {
            // Looked at again when a node it waits for answers or is lost.
            if self.park_if_waiting_for_first_answers(*id, now) {
                continue;
            }
            let settled = self.reconcile_range(*id, now, &mut load);
            if !settled {
                self.dirty.insert(*id);
            }
        }
        self.drop_orphans(now);
        // Last: the groups follow what this step decided.
        self.refresh_groups(&ids, now);
    }

    /// Nodes that just became lost (or came back) concern all their ranges: look
    /// at everything once.
    pub(super) fn notice_lost_nodes(&mut self, now: Instant) {
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
    pub(super) fn ranges_to_reconcile(&mut self, now: Instant) -> Vec<RangeId> {
        if std::mem::take(&mut self.full_sweep) {
            self.dirty.clear();
            self.parked.clear();
            return self.unsettled_in_play(now);
        }
        let mut ids: Vec<RangeId> = self.dirty.drain().collect();
        for parent in &self.subsuming {
            ids.push(*parent);
            if let Ok(range) = self.keyspace.range(*parent) {
                ids.extend(range.children().iter().copied());
            }
        }
        for op in self.ops.values() {
            ids.extend(op.ranges());
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

    /// What a full pass must look at: every range in play that is not steady,
    /// in id order. Steady ranges (the vast majority at scale) need nothing
    /// ([`Engine::reconcile_range`] would return at once), so the pass only has
    /// to find the others, and it does so in two walks: the keyspace's own
    /// checks range by range, then what each node reported, node by node. At a
    /// million ranges, looking up each range's report as the keyspace walk
    /// reaches it missed the cache twice per range (a thousand nodes' tables
    /// of 112 MB together); one node's table at a time stays in the CPU's
    /// cache. Subsuming parents and their children are always looked at.
    pub(super) fn unsettled_in_play(&self, now: Instant) -> Vec<RangeId> {
        let mut unsettled = Vec::new();
        let mut to_confirm: HashMap<&NodeId, Vec<RangeId>> = HashMap::new();
        for range in self.keyspace.current_ranges_unordered() {
            if !self.steady_here(range) {
                unsettled.push(range.id());
                continue;
            }
            for p in range.placements() {
                to_confirm.entry(p.node()).or_default().push(range.id());
            }
        }
        for (node, ids) in to_confirm {
            let status = self.roster.get(node);
            for id in ids {
                if !status.is_some_and(|n| self.node_confirms(n, id, now)) {
                    unsettled.push(id);
                }
            }
        }
        unsettled.extend(self.subsuming_in_play());
        unsettled.sort_unstable();
        unsettled.dedup();
        unsettled
    }

    /// The parents of splits and joins in progress and their children, in id
    /// order: in play whether or not they are current.
    pub(super) fn subsuming_in_play(&self) -> Vec<RangeId> {
        let mut ids = Vec::new();
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

    pub(super) fn node_lost(&self, node: &NodeId, now: Instant) -> bool {
        let loss_after = self.config.node_loss_after();
        match self.roster.get(node) {
            Some(status) => status.is_lost(now, loss_after),
            None => now.saturating_duration_since(self.started) > loss_after,
        }
    }

    /// Whether the placement may be accepting writes, as far as anyone knows.
    pub(super) fn may_serve(&self, range: RangeId, p: &Placement, now: Instant) -> bool {
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
    pub(super) fn is_steady(&self, range: &Range, now: Instant) -> bool {
        self.steady_here(range)
            && range.placements().iter().all(|p| {
                self.roster
                    .get(p.node())
                    .is_some_and(|n| self.node_confirms(n, range.id(), now))
            })
    }

    /// The half of [`Engine::is_steady`] the keyspace answers alone: the range
    /// and every placement Active, as many as the replication wants, none on
    /// its way out or replacing another.
    pub(super) fn steady_here(&self, range: &Range) -> bool {
        range.state() == RangeState::Active
            && range.placements().len() == self.config.replication.target
            && range.placements().iter().all(|p| {
                p.state() == PlacementState::Active && !p.retiring() && p.replaces().is_none()
            })
    }

    /// The half the node answers: it may hold the range (neither draining nor
    /// lost) and said it is Active there.
    pub(super) fn node_confirms(&self, node: &NodeStatus, range: RangeId, now: Instant) -> bool {
        !node.draining()
            && !node.is_lost(now, self.config.node_loss_after())
            && node.ranges.get(&range).map(|v| v.state) == Some(RemoteState::Active)
    }

    /// Does what the range needs next. Returns whether it was settled (nothing to
    /// do); a range that is not stays under watch until it is.
    pub(super) fn reconcile_range(
        &mut self,
        id: RangeId,
        now: Instant,
        load: &mut Option<NodeLoads>,
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
        self.hand_over(id, now);
        self.act_on_placements(id, now);
        self.clear_unavailable_if_no_longer_waiting(id, now);
        self.finish_subsume_if_done(id);
        self.place_if_needed(id, now, load);
        false
    }

    /// Brings placement states in line with node reports and lost nodes.
    pub(super) fn sync_placements(&mut self, id: RangeId, now: Instant) {
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

    pub(super) fn set_state(
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

    pub(super) fn retire(&mut self, range: RangeId, placement: PlacementId, why: &str) {
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

    /// A split or join whose children have all been activated, and whose
    /// children's copies no longer wait to be, hands over: the parents'
    /// placements retire. A move whose destination is Active retires its
    /// source.
    pub(super) fn hand_over(&mut self, id: RangeId, now: Instant) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let mut to_retire: Vec<(PlacementId, &'static str)> = Vec::new();
        if range.state() == RangeState::Subsuming
            && self.children_all_activated(range)
            && !self.child_copy_activating(range, now)
        {
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

    pub(super) fn children_all_activated(&self, range: &Range) -> bool {
        !range.children().is_empty()
            && range
                .children()
                .iter()
                .all(|c| self.keyspace.range(*c).is_ok_and(Range::ever_activated))
    }

    /// Some child of a Subsuming range has a copy on its way to serving that
    /// may still read from the parents, so the parents must not be dropped
    /// under it. At R3 a child's copies activate one by one (each once a probe
    /// has told its node the range's group), and a copy prepared from the
    /// frozen parents reads from them again as it activates (the KV store
    /// fetches the writes made since its snapshot).
    pub(super) fn child_copy_activating(&self, range: &Range, now: Instant) -> bool {
        range.children().iter().any(|c| {
            self.keyspace.range(*c).is_ok_and(|child| {
                child
                    .placements()
                    .iter()
                    .any(|p| self.may_still_read_parents(*c, p, now))
            })
        })
    }

    /// A copy of `child` that may yet read from the child's parents: one being
    /// prepared (placed before the child first served, its Prepare listed
    /// them), or an Inactive one still to be activated. Copies the child has
    /// no use for (surplus, retiring, given up, lost) do not count, nor does
    /// one whose activation failed `max_attempts` times or has gone on for
    /// `activate_deadline`: a copy that may have served is retried for as
    /// long as it takes (SCENARIOS.md #37), and one stuck activating may never
    /// answer, and the parents must not wait for those. So the wait ends:
    /// every other copy succeeds or is given up within `max_attempts` or the
    /// prepare deadline. (A copy placed after the child first served was
    /// prepared from the child; it may hold the parents a little longer, no
    /// more.)
    fn may_still_read_parents(&self, child: RangeId, p: &Placement, now: Instant) -> bool {
        if !p.is_live() || p.retiring() {
            return false;
        }
        match p.state() {
            PlacementState::Pending | PlacementState::Loading => true,
            PlacementState::Inactive => {
                let still_trying = self
                    .attempts
                    .get(&Subject::Placement(p.id()), Command::Activate)
                    .is_none_or(|attempt| {
                        attempt.failures < self.config.max_attempts
                            && now.saturating_duration_since(attempt.first_sent)
                                < self.config.activate_deadline
                    });
                still_trying && self.wants_active(child, p, now)
            }
            PlacementState::Active
            | PlacementState::Missing
            | PlacementState::GiveUp
            | PlacementState::Dropped => false,
        }
    }

    pub(super) fn act_on_placements(&mut self, id: RangeId, now: Instant) {
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
                    self.activation_refused.remove(&p.id());
                    self.activation_may_have_taken.remove(&p.id());
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
                            "its only newest copy is on node {}, which is lost ({}); waiting for it to return with its data, or run `rangerctl forget {}` to re-create the range empty",
                            p.node(),
                            self.loss_reason(p.node(), now),
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

    pub(super) fn prepare_or_give_up(&mut self, id: RangeId, p: &Placement, now: Instant) {
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

    pub(super) fn activate_or_give_up(&mut self, id: RangeId, p: &Placement, now: Instant) {
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
        if !self.group_reached(id, p) {
            // Held: see `group_reached`. Looked at again when the node's
            // next probe (due soon: the group's change asked for it) answers.
            self.activations_held
                .entry(p.node().clone())
                .or_default()
                .insert(id);
            return;
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
    pub(super) fn give_up(
        &mut self,
        id: RangeId,
        p: &Placement,
        why: String,
        state: PlacementState,
        now: Instant,
    ) {
        tracing::warn!(range = %id, placement = %p.id(), node = %p.node(), %why, "giving up on placement");
        self.exclusions
            .exclude(id, p.node(), now + self.config.exclusion);
        self.notes.insert(id, why.clone());
        if state == PlacementState::GiveUp {
            self.set_state(id, p.id(), p.node(), PlacementState::GiveUp);
        } else {
            self.retire(id, p.id(), &why);
        }
    }

    /// Whether an Inactive placement should become Active now (and may, safely).
    pub(super) fn wants_active(&self, id: RangeId, p: &Placement, now: Instant) -> bool {
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
    pub(super) fn safe_to_activate(&self, range: &Range, p: &Placement, now: Instant) -> bool {
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
    pub(super) fn should_deactivate(&self, id: RangeId, p: &Placement, now: Instant) -> bool {
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
    pub(super) fn children_ready(&self, range: &Range) -> bool {
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

    pub(super) fn rolling_back_parent(&self, parent: RangeId) -> bool {
        self.ops.values().any(|op| {
            op.phase == OpPhase::RollingBack
                && match &op.request {
                    OpRequest::Split { range, .. } => *range == parent,
                    OpRequest::Join { left, right, .. } => *left == parent || *right == parent,
                    OpRequest::Move { .. } => false,
                }
        })
    }

    pub(super) fn child_rolling_back(&self, range: &Range) -> bool {
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
    pub(super) fn parents_for_prepare(&self, range: &Range) -> Vec<Parent> {
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
    /// activate, a source whose destination may have served since, or any copy of
    /// a range never activated (a split or join child: its data is in its
    /// parents). A copy on a lost node is listed as Missing: not a source, but
    /// it tells the node that data exists that it cannot reach (so it fails the
    /// prepare instead of starting empty).
    pub(super) fn as_parent(&self, range: &Range) -> Parent {
        let newest = |p: &Placement| {
            range.ever_activated()
                && p.is_live()
                && !p.retiring()
                && matches!(
                    p.state(),
                    PlacementState::Active | PlacementState::Inactive | PlacementState::Missing
                )
                && (p.replaces().is_none() || self.may_have_served(p))
                && !range
                    .placements()
                    .iter()
                    .any(|d| d.replaces() == Some(p.id()) && self.may_have_served(d))
        };
        Parent {
            meta: range.meta().clone(),
            parents: range.parents().to_vec(),
            placements: range
                .placements()
                .iter()
                .filter(|p| newest(p))
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
    pub(super) fn send(&mut self, range: RangeId, p: &Placement, call: Call, now: Instant) -> bool {
        self.send_to(
            range,
            p.node().clone(),
            Subject::Placement(p.id()),
            call,
            now,
        )
    }

    pub(super) fn send_to(
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
        let op = self.operation_touching(range).or_else(|| match call {
            // A handoff's sources are dropped after it ended: the clean-up is
            // still its own.
            Call::Drop { .. } => self.history.recently_ended_on(range, now),
            _ => None,
        });
        self.effects.push(Effect::Send(Dispatch {
            node,
            addr,
            range,
            subject,
            call,
            term: self.keyspace.term(),
            timeout: self.config.rpc_timeout,
            op,
        }));
        true
    }

    /// A Subsuming range whose children all serve and which holds nothing anymore
    /// becomes Obsolete, with the rest of its split or join.
    pub(super) fn finish_subsume_if_done(&mut self, id: RangeId) {
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

    /// Ranges that nodes hold but no live placement accounts for are dropped.
    /// Candidates come from probes (see `on_probe`); each is re-checked here.
    pub(super) fn drop_orphans(&mut self, now: Instant) {
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
            // From the placements themselves, not the index by node that
            // found the candidate: a drop destroys data, so it rests on the
            // keyspace's record and nothing derived from it.
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
}
