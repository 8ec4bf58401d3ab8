//! The orchestrator: decides, from the keyspace (what we want) and the roster
//! (what nodes say), which commands to send and how the keyspace moves on.
//!
//! It is pure, like openraft's `Engine`: events go in ([`Engine::on_answer`],
//! [`Engine::on_probe`], [`Engine::persisted`], [`Engine::probe_tick`],
//! discovery changes, operator requests), [`Engine::step`] reconciles, and
//! [`Effect`]s come out for the runtime to execute: saves, probes, commands,
//! operation ends, events. That output is complete: the runtime decides
//! nothing and never reaches inside. The engine never does I/O or reads a
//! clock, so `tests/engine.rs` drives it step by step with no runtime at all.
//!
//! Reconciliation is level-triggered: each step looks at every range in play and
//! does what its current state calls for, so a controller restarted at any instant
//! picks up where the durable keyspace says it was (DESIGN.md invariant 4).
//! Operations (move, split, join) are durable through the keyspace itself: a move
//! is a placement that `replaces` another, a split or join is a Subsuming range
//! with children. Only deadlines and waiters are volatile.
//!
//! The rules, per placement (see `reconcile.rs` for the exact conditions):
//! - Pending/Loading: Prepare until Inactive; too many failures, or Preparing past
//!   the prepare deadline (while its copy stops growing): GiveUp, exclude the
//!   node for a while, place elsewhere.
//! - Inactive: Activate when the range needs it and no overlapping placement
//!   (this range's, its parents', its children's) may be serving; a move
//!   destination first waits for its source to be deactivated (R1). The first
//!   Activate marks the placement durably: it owns the range from then on and
//!   operations only roll forward (`ownership.rs`, SCENARIOS.md #37). Too many
//!   activations that the node itself answered as failed: retire it.
//! - Active: Deactivate when a move destination or a split/join's children are
//!   prepared and waiting, or when retiring.
//! - Retiring Inactive, GiveUp: Drop until gone (forever, with backoff).
//! - Missing (the node lost it, or its lease ran out): if it holds the range's
//!   only newest copy, the range waits, Unavailable, until the node returns or
//!   an operator forgets it (SCENARIOS.md #31); otherwise Dropped, place again.
//!
//! Files: `output.rs` (the step's output: saves before commands, probes),
//! `reconcile.rs` (reconciliation, per range), `operations.rs`, `placement.rs`
//! (node choice), `ownership.rs` (who holds the newest data), `groups.rs`
//! (replica groups probes carry at R3), `attempts.rs` (in flight, failures,
//! backoff), `exclusions.rs` (nodes not to choose again for a range),
//! `first_answers.rs` (what a node's first answer tells, and the ranges that
//! wait for it), `types.rs` (what goes in and out).

mod attempts;
mod balancing;
mod exclusions;
mod first_answers;
mod groups;
pub mod history;
mod node_loads;
mod operations;
mod output;
mod ownership;
mod placement;
mod reconcile;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ranger_proto::{Key, NodeId, RangeId, RangeState, ReportedRange};
use tokio::time::Instant;

use crate::range_maps::{RangeMap, RangeSet};

pub use attempts::{Attempt, Subject};
pub use balancing::{
    BalanceRound, BalanceStatus, BalanceTotals, describe as describe_action, wall_clock_now,
};
pub use ownership::{ForgetReport, Unavailable};
pub use types::{
    Answer, BalancerOrigin, Call, CallError, Dispatch, Effect, Event, OpError, OpId, OpPhase,
    OpRequest, Operation, Origin, Persisted, Probe, Progress,
};

use crate::config::OrchestratorConfig;

/// The longest key a range may start or end at (Bigtable's limit for row
/// keys). Every range record, listing and Prepare carries its boundaries,
/// some several times: a boundary of a mebibyte made the Consul record too
/// large to save (the split stuck half begun) and the `Debug` listing larger
/// than a gRPC message (rangerctl could no longer list ranges). Keys of the
/// data may be longer; a boundary between them need not be a whole key.
pub const MAX_BOUNDARY_BYTES: usize = 4096;
use crate::keyspace::{Keyspace, PlacementId, Range};
use crate::roster::Roster;
use attempts::Attempts;
use output::Output;

/// The orchestrator's state: the keyspace it owns, the roster it reads, and the
/// volatile bookkeeping of commands and operations.
#[derive(Debug)]
pub struct Engine {
    keyspace: Keyspace,
    roster: Roster,
    config: OrchestratorConfig,
    /// When this controller started: a placement on a node it never heard from is
    /// lost once the loss period has passed since then.
    started: Instant,
    /// The wall-clock time at `started`, in milliseconds since the Unix epoch:
    /// the balancer's timestamps are wall-clock, so that the history persisted
    /// with each range (`RangeHistory`) means the same to the next leader. 0
    /// unless the runtime sets it ([`Engine::with_wall_clock`]): tests then
    /// count from the engine's start.
    wall_start_ms: u64,
    attempts: Attempts,
    ops: BTreeMap<OpId, Operation>,
    next_op: u64,
    /// (range, node) pairs not to choose again until the instant given.
    exclusions: exclusions::Exclusions,
    /// The latest problem per range, for operators ("why is it unplaced?").
    notes: HashMap<RangeId, String>,
    /// Parents of splits and joins in progress: they stay in play even after they
    /// leave the current tiling, until their placements are dropped.
    subsuming: BTreeSet<RangeId>,
    /// Ranges to look at in the next step: touched by an answer, a probe, an
    /// operation, or not settled yet. A settled range is left alone, so a step
    /// costs what changed, not the size of the keyspace.
    dirty: RangeSet,
    /// Per node, the replicated ranges whose Activate waits until a probe of
    /// that node carried their current group (see
    /// [`Engine::group_reached`]): looked at again when its next probe answers.
    activations_held: HashMap<NodeId, HashSet<RangeId>>,
    /// Per node with a probe out: the epoch below which that probe carries
    /// every group of the node ([`groups::Groups::next_epoch`] when built).
    groups_carried: HashMap<NodeId, u64>,
    /// Per node: the same, for the newest probe it answered. Groups with a
    /// lower epoch have reached it.
    groups_delivered: HashMap<NodeId, u64>,
    /// Look at every range in the next step (start-up, a node appearing, leaving,
    /// being lost or draining: events that concern many ranges at once).
    full_sweep: bool,
    /// Where the background sweep resumes: each step also re-checks a chunk of
    /// the tiling in key order, so nothing is missed for long even if an event was.
    sweep_cursor: Key,
    /// Nodes whose first answer since the roster took them in came since the
    /// last step, with when that probe was sent: what they hold is checked
    /// against the keyspace at the next step (`first_answers.rs`).
    first_answers: Vec<(NodeId, Instant)>,
    /// Per node not heard from since the roster took it in: settled ranges
    /// that wait only for such nodes, left out of the dirty set until one of
    /// them answers (`first_answers.rs`). Cleared by a full sweep.
    parked: HashMap<NodeId, RangeSet>,
    /// Nodes known to be lost, to notice the moment one becomes lost.
    lost_nodes: HashSet<NodeId>,
    /// Whether placements on nodes this controller never heard from are lost yet.
    unknown_nodes_lost: bool,
    /// (node, range) pairs a node reports that no live placement accounts for.
    orphans: HashSet<(NodeId, RangeId)>,
    /// Placements whose latest Activate the node answered with a failed callback
    /// (rolled back to Inactive): proven not serving, so they may be given up.
    /// Cleared when another Activate is sent. Volatile: after a restart the
    /// durable `activate_sent` mark counts, conservatively.
    activation_refused: HashSet<PlacementId>,
    /// Placements an Activate may have reached and taken effect on: an answer
    /// was lost, or said Activating/Active. Once here, no later refusal proves
    /// the placement never served (it may have served, then fenced itself back
    /// to Inactive when its lease lapsed). Volatile, like the set above.
    activation_may_have_taken: HashSet<PlacementId>,
    /// Ranges waiting for a lost node that holds their only newest copy (R1):
    /// shown loudly until the node returns or an operator forgets it.
    unavailable: RangeMap<Unavailable>,
    /// When each (node, range) being prepared last showed progress: its copy's
    /// keys or bytes grew between two probes. Deadlines wait for a prepare that
    /// keeps making progress.
    prepare_progress: HashMap<(NodeId, RangeId), Instant>,
    /// Nodes an operator declared gone for good (`rangerctl forget`): their lost
    /// copies are not waited for. Cleared when the node answers again.
    forgotten: HashSet<NodeId>,
    /// Decided this step, not yet handed out (`output.rs` orders them).
    effects: Vec<Effect>,
    /// Saves in flight, commands held behind them, probes due and out.
    output: Output,
    /// The balancer's rounds, pause and memory.
    balancing: balancing::Balancing,
    /// Operations that ended: the latest, and totals for metrics.
    history: history::OpHistory,
    /// The replica group of each replicated range, as probes carry them.
    groups: groups::Groups,
}

/// How many ranges of the tiling the background sweep re-checks per step.
const SWEEP_CHUNK: usize = 1000;

impl Engine {
    /// An engine over a loaded (or new) keyspace. Operations found in flight in the
    /// keyspace (moves, splits, joins) are resumed with fresh deadlines.
    ///
    /// The engine begins a new controller term (see [`Engine::term`]); the
    /// runtime persists it before sending any command.
    pub fn new(mut keyspace: Keyspace, config: OrchestratorConfig, now: Instant) -> Self {
        let term = keyspace.begin_term();
        tracing::info!(term, "controller term begun");
        let subsuming = keyspace
            .ranges()
            .filter(|r| r.state() == RangeState::Subsuming)
            .map(|r| r.id())
            .collect();
        let mut engine = Engine {
            keyspace,
            roster: Roster::new(),
            config,
            started: now,
            wall_start_ms: 0,
            attempts: Attempts::default(),
            ops: BTreeMap::new(),
            next_op: 1,
            exclusions: exclusions::Exclusions::default(),
            notes: HashMap::new(),
            history: history::OpHistory::default(),
            subsuming,
            dirty: RangeSet::default(),
            activations_held: HashMap::new(),
            groups_carried: HashMap::new(),
            groups_delivered: HashMap::new(),
            full_sweep: true,
            sweep_cursor: Key::empty(),
            first_answers: Vec::new(),
            parked: HashMap::new(),
            lost_nodes: HashSet::new(),
            unknown_nodes_lost: false,
            orphans: HashSet::new(),
            activation_refused: HashSet::new(),
            activation_may_have_taken: HashSet::new(),
            unavailable: RangeMap::default(),
            prepare_progress: HashMap::new(),
            forgotten: HashSet::new(),
            effects: Vec::new(),
            output: Output::default(),
            balancing: balancing::Balancing::default(),
            groups: groups::Groups::new(),
        };
        engine.resume_operations(now);
        engine
    }

    /// Sets the wall-clock time at the `now` given to [`Engine::new`], in
    /// milliseconds since the Unix epoch (see [`wall_clock_now`]): the runtime
    /// does, so that the balancing history kept with each range is wall-clock
    /// time that a later leader reads the same way.
    pub fn with_wall_clock(mut self, unix_ms_at_start: u64) -> Self {
        self.wall_start_ms = unix_ms_at_start;
        self.bring_future_history_to(unix_ms_at_start);
        self
    }

    /// Rebuilds operation records for what the keyspace shows in flight.
    fn resume_operations(&mut self, now: Instant) {
        let mut found = Vec::new();
        for parent in &self.subsuming {
            let Ok(range) = self.keyspace.range(*parent) else {
                continue;
            };
            match range.children() {
                [left, right] => found.push((
                    OpRequest::Split {
                        range: *parent,
                        key: self
                            .keyspace
                            .range(*right)
                            .map(|r| r.meta().start().clone())
                            .unwrap_or_default(),
                        left: None,
                        right: None,
                    },
                    Progress::Split {
                        left: *left,
                        right: *right,
                    },
                )),
                [child] => {
                    let parents = self
                        .keyspace
                        .range(*child)
                        .map(|c| c.parents().to_vec())
                        .unwrap_or_default();
                    if let [left, right] = parents[..]
                        && left == *parent
                    {
                        found.push((
                            OpRequest::Join {
                                left,
                                right,
                                node: None,
                            },
                            Progress::Join { child: *child },
                        ));
                    }
                }
                _ => {}
            }
        }
        for range in self.keyspace.current_ranges() {
            for dest in range.placements() {
                if let Some(source) = dest.replaces()
                    && dest.is_live()
                    && !dest.retiring()
                {
                    found.push((
                        OpRequest::Move {
                            range: range.id(),
                            node: Some(dest.node().clone()),
                        },
                        Progress::Move {
                            source,
                            dest: dest.id(),
                            to: dest.node().clone(),
                        },
                    ));
                }
            }
        }
        for (request, progress) in found {
            tracing::info!(op = %request, "resuming operation found in the keyspace");
            let id = self.new_op(request, Origin::Resumed, progress, OpPhase::Running, now);
            tracing::debug!(%id, "resumed");
        }
    }

    fn new_op(
        &mut self,
        request: OpRequest,
        origin: Origin,
        progress: Progress,
        phase: OpPhase,
        now: Instant,
    ) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(
            id,
            Operation {
                id,
                request,
                origin,
                progress,
                phase,
                started: now,
                deadline: now + self.config.op_deadline,
                rollback_reason: None,
                reported: false,
            },
        );
        id
    }

    // ---- read access ----

    pub fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// This controller's term: higher than that of every controller before it
    /// on the same store. Every command carries it, and nodes refuse commands
    /// from an older term (SCENARIOS.md #43).
    pub fn term(&self) -> u64 {
        self.keyspace.term()
    }

    pub fn config(&self) -> &OrchestratorConfig {
        &self.config
    }

    /// Operations in flight (and queued), oldest first.
    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.ops.values()
    }

    /// Operations that ended (the latest, and totals since this engine began).
    pub fn history(&self) -> &history::OpHistory {
        &self.history
    }

    /// The latest problem noted for a range.
    pub fn note(&self, range: RangeId) -> Option<&str> {
        self.notes.get(&range).map(String::as_str)
    }

    pub fn attempt(&self, subject: &Subject, command: ranger_proto::Command) -> Option<&Attempt> {
        self.attempts.get(subject, command)
    }

    // ---- events in ----

    /// Discovery lists a node (new, or at a new address): it is probed at the
    /// next step.
    pub fn node_registered(&mut self, id: NodeId, addr: String, now: Instant) {
        if self.roster.get(&id).is_none_or(|n| n.addr != addr) {
            // What the roster knew of it is gone: a first answer not yet
            // checked no longer says what the node holds.
            self.first_answers.retain(|(node, _)| *node != id);
        }
        self.roster.register(id.clone(), addr, now);
        self.probe_soon(id);
        self.full_sweep = true;
    }

    /// Discovery stopped listing a node. Its placements are lost only when its lease
    /// runs out.
    pub fn node_deregistered(&mut self, id: &NodeId) {
        self.roster.deregister(id);
        self.full_sweep = true;
    }

    /// A probe (`Info`, [`Effect::Probe`]) sent at `sent_at` answered, or failed.
    pub fn on_probe(
        &mut self,
        node: &NodeId,
        sent_at: Instant,
        result: crate::transport::ProbeAnswer,
    ) {
        if !self.probe_returned(node) {
            return;
        }
        match result {
            Ok(crate::transport::NodeReport {
                ranges,
                wants_drain,
                capacity,
            }) => {
                if self.forgotten.remove(node) {
                    tracing::info!(%node, "forgotten node answers again");
                }
                self.note_prepare_progress(node, sent_at, &ranges);
                self.note_if_first_answer(node, sent_at);
                let was_draining = self.roster.get(node).map(|n| n.draining());
                // The ranges the keyspace places on the node, looked up once:
                // each listed range is checked against them twice, for an
                // orphan here and for a view worth keeping in `probe_ok`.
                let live = self.keyspace.live_on(node);
                let placed_here =
                    |range: RangeId| live.is_some_and(|ranges| ranges.contains(&range));
                for info in &ranges {
                    if !placed_here(info.id) && info.state != ranger_proto::RemoteState::NotFound {
                        self.orphans.insert((node.clone(), info.id));
                    }
                }
                let changed =
                    self.roster
                        .probe_ok(node, sent_at, ranges, wants_drain, capacity, placed_here);
                self.dirty.extend(changed);
                if let Some(carried) = self.groups_carried.remove(node) {
                    let delivered = self.groups_delivered.entry(node.clone()).or_default();
                    *delivered = (*delivered).max(carried);
                }
                if let Some(held) = self.activations_held.remove(node) {
                    self.dirty.extend(held);
                }
                if was_draining != self.roster.get(node).map(|n| n.draining()) {
                    self.full_sweep = true;
                }
            }
            Err(error) => {
                self.groups_carried.remove(node);
                tracing::debug!(%node, %error, "probe failed");
                self.roster.probe_failed(node, error);
            }
        }
    }

    /// Records which prepares grew since the node's previous report.
    fn note_prepare_progress(&mut self, node: &NodeId, sent_at: Instant, ranges: &[ReportedRange]) {
        for info in ranges {
            if info.state != ranger_proto::RemoteState::Preparing {
                continue;
            }
            let before = self
                .roster
                .get(node)
                .and_then(|n| n.ranges.get(&info.id))
                .map(|v| (v.load.keys, v.load.bytes));
            let grew = before
                .is_some_and(|(keys, bytes)| info.load.keys > keys || info.load.bytes > bytes);
            if grew {
                self.prepare_progress
                    .insert((node.clone(), info.id), sent_at);
            }
        }
    }

    /// When the prepare of `range` on `node` last made progress, if it did.
    pub(crate) fn prepare_progress_at(&self, node: &NodeId, range: RangeId) -> Option<Instant> {
        self.prepare_progress.get(&(node.clone(), range)).copied()
    }

    /// A command answered (or failed to).
    pub fn on_answer(&mut self, dispatch: &Dispatch, answer: Answer, now: Instant) {
        let command = dispatch.call.command();
        if let Subject::Placement(placement) = dispatch.subject
            && command == ranger_proto::Command::Activate
        {
            self.note_activate_answer(placement, &answer);
        }
        self.attempts.end(&dispatch.node, dispatch.range);
        self.dirty.insert(dispatch.range);
        let failure = match answer {
            Ok(outcome) => {
                self.roster
                    .command_answered(&dispatch.node, dispatch.range, outcome.state, now);
                match outcome.failure {
                    Some(message) => Some(format!(
                        "{command:?} of {} failed on {}: {message}",
                        dispatch.range, dispatch.node
                    )),
                    None => {
                        if outcome.state == reconcile::goal(command) {
                            self.attempts.succeeded(&dispatch.subject, command);
                        }
                        None
                    }
                }
            }
            Err(error) => {
                // No error says what the node holds (PROTOCOL.md: even
                // INVALID_ARGUMENT is ambiguous); its next probe will.
                Some(format!(
                    "{command:?} of {} on {}: {error}",
                    dispatch.range, dispatch.node
                ))
            }
        };
        if let Some(message) = failure {
            tracing::warn!(%message, "command failed");
            let failures = self.attempts.failed(
                &dispatch.subject,
                command,
                message.clone(),
                now,
                self.config.backoff_initial,
                self.config.backoff_max,
            );
            self.emit(dispatch.range, format!("{message} (attempt {failures})"));
            self.notes.insert(dispatch.range, message);
        }
    }

    // ---- operator requests ----

    /// Starts an operation an operator asked for; its end comes out as
    /// [`Effect::Finished`]. Refused at once (nothing changed) if the request
    /// cannot be carried out now.
    pub fn request(&mut self, request: OpRequest, now: Instant) -> Result<OpId, OpError> {
        self.check_request(&request)?;
        Ok(self.new_op(
            request,
            Origin::Operator,
            Progress::NotStarted,
            OpPhase::Queued,
            now,
        ))
    }

    /// Moves `range` to `to` (any eligible node if `None`).
    pub fn request_move(
        &mut self,
        range: RangeId,
        to: Option<NodeId>,
        now: Instant,
    ) -> Result<OpId, OpError> {
        self.request(OpRequest::Move { range, node: to }, now)
    }

    /// Splits `range` at `key`, placing the halves on the nodes given (or any).
    pub fn request_split(
        &mut self,
        range: RangeId,
        key: Key,
        left_node: Option<NodeId>,
        right_node: Option<NodeId>,
        now: Instant,
    ) -> Result<OpId, OpError> {
        let request = OpRequest::Split {
            range,
            key,
            left: left_node,
            right: right_node,
        };
        self.request(request, now)
    }

    /// Joins two adjacent ranges onto `node` (or any).
    pub fn request_join(
        &mut self,
        left: RangeId,
        right: RangeId,
        node: Option<NodeId>,
        now: Instant,
    ) -> Result<OpId, OpError> {
        self.request(OpRequest::Join { left, right, node }, now)
    }

    /// Whether a request can be queued: its ranges exist, are current and
    /// Active, and are not waiting for a lost copy; the nodes it names are
    /// known and not draining; its arguments make sense.
    fn check_request(&self, request: &OpRequest) -> Result<(), OpError> {
        match request {
            OpRequest::Move { range, node } => {
                let r = self.operable(*range, "moved")?;
                if let Some(node) = node {
                    self.check_node(node)?;
                    if r.placements()
                        .iter()
                        .any(|p| p.is_live() && !p.retiring() && p.node() == node)
                    {
                        return Err(OpError::FailedPrecondition(format!(
                            "range {range} is already on node {node}"
                        )));
                    }
                }
                if !r.placements().iter().any(|p| p.is_live() && !p.retiring()) {
                    return Err(OpError::FailedPrecondition(format!(
                        "range {range} is not placed anywhere yet; nothing to move"
                    )));
                }
            }
            OpRequest::Split {
                range,
                key,
                left,
                right,
            } => {
                let r = self
                    .keyspace
                    .range(*range)
                    .map_err(|_| OpError::UnknownRange(*range))?;
                if key.is_empty() {
                    return Err(OpError::InvalidArgument(
                        "split key must not be empty".into(),
                    ));
                }
                if key.as_bytes().len() > MAX_BOUNDARY_BYTES {
                    return Err(OpError::InvalidArgument(format!(
                        "split key of {} bytes is too long: range boundaries are at most {MAX_BOUNDARY_BYTES} bytes",
                        key.as_bytes().len()
                    )));
                }
                if !r.meta().can_split_at(key.as_bytes()) {
                    return Err(OpError::InvalidArgument(format!(
                        "split key {key} is not strictly inside range {}",
                        r.meta()
                    )));
                }
                self.operable(*range, "split")?;
                for node in [left, right].into_iter().flatten() {
                    self.check_node(node)?;
                }
            }
            OpRequest::Join { left, right, node } => {
                let l = self
                    .keyspace
                    .range(*left)
                    .map_err(|_| OpError::UnknownRange(*left))?;
                let r = self
                    .keyspace
                    .range(*right)
                    .map_err(|_| OpError::UnknownRange(*right))?;
                self.operable(*left, "joined")?;
                self.operable(*right, "joined")?;
                if !l.meta().is_left_neighbour_of(r.meta()) {
                    return Err(OpError::FailedPrecondition(format!(
                        "ranges {left} and {right} are not adjacent ({} then {})",
                        l.meta(),
                        r.meta()
                    )));
                }
                if let Some(node) = node {
                    self.check_node(node)?;
                }
            }
        }
        Ok(())
    }

    /// The precondition every operation shares, checked when it is asked for
    /// and again when it starts: the range exists, is current and Active, and
    /// is not waiting for a lost copy (SCENARIOS.md #31).
    pub(super) fn operable(&self, range: RangeId, verb: &str) -> Result<&Range, OpError> {
        let r = self
            .keyspace
            .range(range)
            .map_err(|_| OpError::UnknownRange(range))?;
        if r.state() != RangeState::Active || !self.keyspace.is_current(range) {
            return Err(OpError::FailedPrecondition(format!(
                "range {range} is {} and cannot be {verb}",
                r.state()
            )));
        }
        self.check_available(range)?;
        Ok(r)
    }

    /// Cancels an operation before its point of no return (the first activation of
    /// a destination). The operation then ends with [`OpError::Cancelled`].
    pub fn cancel(&mut self, op: OpId, now: Instant) -> Result<(), OpError> {
        let operation = self.ops.get(&op).ok_or(OpError::UnknownOp(op))?;
        if operation.phase == OpPhase::Queued {
            let result = Err(OpError::Cancelled("cancelled before it started".into()));
            if let Some(ended) = self.ops.remove(&op) {
                self.history.record(&ended, &result, now);
            }
            self.effects.push(Effect::Finished { op, result });
            return Ok(());
        }
        if self.past_point_of_no_return(operation) {
            return Err(OpError::FailedPrecondition(format!(
                "{op} ({operation}) is past its point of no return: a destination was activated"
            )));
        }
        if let Some(operation) = self.ops.get_mut(&op) {
            operation.rollback_reason = Some("cancelled by operator".into());
        }
        Ok(())
    }

    /// Asks for `node` to be drained (or no longer).
    pub fn drain(&mut self, node: &NodeId, drain: bool) -> Result<(), OpError> {
        if self.roster.set_operator_drain(node, drain) {
            self.full_sweep = true;
            Ok(())
        } else {
            Err(OpError::UnknownNode(node.clone()))
        }
    }

    fn check_node(&self, node: &NodeId) -> Result<(), OpError> {
        match self.roster.get(node) {
            None => Err(OpError::UnknownNode(node.clone())),
            Some(n) if n.draining() => Err(OpError::FailedPrecondition(format!(
                "node {node} is draining"
            ))),
            Some(_) => Ok(()),
        }
    }

    fn emit(&mut self, range: RangeId, message: String) {
        self.effects.push(Effect::Event(Event { range, message }));
    }

    /// Whether a destination of the operation may have served: an Activate was
    /// sent to it and it was not proven to have refused (SCENARIOS.md #37).
    /// From then on the operation only rolls forward.
    fn past_point_of_no_return(&self, op: &Operation) -> bool {
        match (&op.request, &op.progress) {
            (OpRequest::Move { range, .. }, Progress::Move { dest, .. }) => self
                .keyspace
                .range(*range)
                .ok()
                .and_then(|r| r.placement(*dest))
                .is_some_and(|d| self.may_have_served(d)),
            (_, Progress::Split { left, right }) => [left, right]
                .iter()
                .any(|c| self.child_may_have_served(**c)),
            (_, Progress::Join { child }) => self.child_may_have_served(*child),
            _ => false,
        }
    }

    fn child_may_have_served(&self, child: RangeId) -> bool {
        self.keyspace.range(child).is_ok_and(|c| {
            c.ever_activated() || c.placements().iter().any(|p| self.may_have_served(p))
        })
    }

    /// Makes the next step look at every range (for benchmarks and operators
    /// who want a full reconciliation now).
    pub fn request_full_sweep(&mut self) {
        self.full_sweep = true;
    }
}
