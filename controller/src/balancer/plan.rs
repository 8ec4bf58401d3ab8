//! What a planning round produces: the actions to take, each with its reason,
//! every candidate it skipped and why, and the load figures it decided on, so that
//! `rangerctl balance` / `explain` can show why the balancer did (or did not do)
//! anything without re-running it.

use std::collections::BTreeMap;
use std::fmt;

use ranger_proto::{Key, NodeId, RangeId};

use super::snapshot::{NodeState, Timestamp};

/// One operation the balancer asks the runtime for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Split `range` at `key`, each half placed on the node given: the
    /// range's own node (keys stay where they are, nothing is copied), or, for
    /// a piece cut for another node's room, that node, so that the split is
    /// also the piece's move (one operation and one round instead of two).
    /// `None`: the controller chooses (a range with several replicas).
    Split {
        range: RangeId,
        key: Key,
        left: Option<NodeId>,
        right: Option<NodeId>,
    },
    Join {
        left: RangeId,
        right: RangeId,
    },
    /// Move the placement of `range` on `from` to `to` (one placement at a time,
    /// whatever the replication).
    Move {
        range: RangeId,
        from: NodeId,
        to: NodeId,
    },
}

/// Why an action was planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Larger than `split_bytes`.
    SplitBySize,
    /// Hotter than `split_load_share` of a node's fair share for
    /// `split_hot_rounds` rounds.
    SplitByLoad,
    /// On an overloaded node, and too hot for any other node's room: halved so
    /// that a half can move.
    SplitToMove,
    /// Two cold neighbours on the same nodes.
    JoinCold,
    /// The source is above mean × (1 + tolerance).
    MoveOverloaded,
    /// The destination is below mean × (1 − tolerance) (a new node fills up).
    MoveUnderloaded,
    /// The source is draining.
    MoveDrain,
    /// Brings two cold neighbours onto one node, so that they can be joined.
    MoveForJoin,
    /// Holds its node above the band on its own and cannot be cut (a single
    /// hot key): moved to a node with the capacity to carry it.
    MoveToCarry,
    /// Makes room on a node for a range it is to carry (see `MoveToCarry`).
    MoveMakingRoom,
}

/// A planned action with its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    pub action: Action,
    pub reason: Reason,
}

/// Why a candidate was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// Every node is within tolerance: nothing to move.
    WithinTolerance,
    /// The node's load report is too old (or missing): its load is unknown.
    StaleLoad,
    /// The range is on a recently failed node: recovery is the orchestrator's job.
    NodeFailed,
    /// An operation on the range is already running.
    InFlight,
    /// The range moved too recently (or would go back where it came from).
    Cooldown,
    /// A neighbour was split too recently to be joined.
    SplitCooldown,
    /// Hot, but not yet for `split_hot_rounds` rounds.
    NotHotLongEnough,
    /// The node suggested no key strictly inside the range (a single hot key).
    NoSplitKey,
    /// No node can take the range without going above tolerance itself, or every
    /// node that could is excluded for it or already holds it.
    NoTarget,
    /// Moving the range would take too little of its node's excess to be worth
    /// an operation.
    TooLittleLoad,
    /// The node chosen to carry the range (see `Reason::MoveToCarry`) is
    /// still making room for it.
    WaitingForRoom,
    /// `max_in_flight` reached.
    RateLimitInFlight,
    /// The source has `max_transfers_out` transfers running.
    RateLimitTransfersOut,
    /// Every node that could take the range has `max_transfers_in` running.
    RateLimitTransfersIn,
    /// The round's share of bytes to move is used up.
    RateLimitBytes,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What kind of candidate was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Candidate {
    Split,
    Join,
    Move,
    /// The round as a whole (nothing to balance).
    Round,
}

/// A skipped candidate. `range` and `node` say what it was about, when it was
/// about one.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub candidate: Candidate,
    pub range: Option<RangeId>,
    pub node: Option<NodeId>,
    pub reason: SkipReason,
}

/// One node's figures for the round.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    pub id: NodeId,
    pub state: NodeState,
    pub capacity: f64,
    /// Whether its load report was fresh enough to count.
    pub fresh: bool,
    /// The weighted load figure (see [`super::load::Scale`]), counting moves in flight
    /// as done.
    pub load: f64,
    /// `load / capacity / mean`: 1.0 is exactly its fair share.
    pub share_of_mean: f64,
    /// The same after this plan's moves.
    pub planned_share_of_mean: f64,
    pub ranges: usize,
    pub bytes: u64,
}

/// Max over mean of load per unit of capacity, overall and per dimension, over
/// the nodes that take part in balancing (active with a fresh report).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Imbalance {
    pub load: f64,
    pub requests: f64,
    pub bytes: f64,
    pub keys: f64,
}

/// The outcome of one planning round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub now: Timestamp,
    pub actions: Vec<PlannedAction>,
    /// The first `max_skips_listed` skipped candidates, most important first
    /// within each rule.
    pub skipped: Vec<Skipped>,
    /// Every skipped candidate, counted by reason.
    pub skip_counts: BTreeMap<SkipReason, usize>,
    pub nodes: Vec<NodeReport>,
    /// The mean load figure per unit of capacity.
    pub mean_load: f64,
    pub imbalance: Imbalance,
    /// [`Imbalance::load`] once this plan's moves are done.
    pub planned_imbalance: f64,
    pub bytes_moved: u64,
    pub bytes_budget: u64,
}

impl Plan {
    /// How many candidates were skipped for `reason`.
    pub fn skipped_for(&self, reason: SkipReason) -> usize {
        self.skip_counts.get(&reason).copied().unwrap_or(0)
    }
}
