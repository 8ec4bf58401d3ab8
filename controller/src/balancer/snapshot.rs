//! What the balancer sees: a plain-data snapshot of ranges, nodes and operations.
//!
//! These types are deliberately independent of the engine's keyspace and roster, so
//! the planner can be tested, simulated and benchmarked without an engine, and so
//! the runtime can build one from whatever it holds (keyspace + roster + the
//! operations it runs) without the planner depending on how those are stored.
//!
//! Time is a plain [`Timestamp`] chosen by the caller: the planner never reads a
//! clock, so a plan is a pure function of its inputs and a simulation can run a
//! hundred rounds in milliseconds.

use std::time::Duration;

use ranger_proto::{Key, LoadCut, LoadInfo, NodeId, RangeId};

/// A point in time, in milliseconds since an epoch the caller chooses (the runtime
/// may use its start, a simulation its round counter × period). Only differences
/// between timestamps matter to the planner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long ago `earlier` was, as seen from `self`; zero if `earlier` is in the
    /// future (a caller's clocks disagreeing must not make a cooldown negative).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self` plus `d`, saturating: far-future deadlines stay ordered.
    pub fn plus(self, d: Duration) -> Timestamp {
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }

    /// Whether `event` (if any) happened less than `window` before `self`: the one
    /// question every cooldown asks.
    pub fn within(self, event: Option<Timestamp>, window: Duration) -> bool {
        event.is_some_and(|at| self.since(at) < window)
    }
}

/// The load figures of one range as its node reports them (raw, not smoothed:
/// the planner smooths them with its memory).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RangeLoad {
    pub keys: u64,
    pub bytes: u64,
    pub reads_per_second: f64,
    pub writes_per_second: f64,
}

impl From<&LoadInfo> for RangeLoad {
    fn from(info: &LoadInfo) -> Self {
        RangeLoad {
            keys: info.keys,
            bytes: info.bytes,
            reads_per_second: info.reads_per_second,
            writes_per_second: info.writes_per_second,
        }
    }
}

/// One current range of the keyspace.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSnapshot {
    pub id: RangeId,
    /// Inclusive start; empty means minus infinity.
    pub start: Key,
    /// Exclusive end; empty means plus infinity.
    pub end: Key,
    /// The nodes holding a live placement of the range. With replication above one
    /// there are several; the balancer moves one placement at a time.
    pub placements: Vec<NodeId>,
    pub load: RangeLoad,
    /// Where the node suggests splitting to halve the range's size, best first.
    pub split_keys_by_size: Vec<Key>,
    /// Where the node suggests splitting to halve the range's load, best first.
    pub split_keys_by_load: Vec<Key>,
    /// Where the range's requests lie, as its node reports them (keys with the
    /// share of requests below each, rising): where to cut a piece of a given
    /// load off a hot range, rather than always halving it.
    pub load_cuts: Vec<LoadCut>,
    /// When the range was created by a split (or last split, for its children).
    pub last_split: Option<Timestamp>,
    /// When a placement of the range last moved.
    pub last_moved: Option<Timestamp>,
    /// When the range was created by a join.
    pub last_joined: Option<Timestamp>,
}

impl RangeSnapshot {
    /// A range with no load, no suggestions and no history: tests and callers
    /// fill in what they know.
    pub fn new(id: RangeId, start: Key, end: Key, placements: Vec<NodeId>) -> Self {
        RangeSnapshot {
            id,
            start,
            end,
            placements,
            load: RangeLoad::default(),
            split_keys_by_size: Vec::new(),
            split_keys_by_load: Vec::new(),
            load_cuts: Vec::new(),
            last_split: None,
            last_moved: None,
            last_joined: None,
        }
    }

    /// Whether `key` lies strictly inside the range, so that splitting there
    /// leaves two non-empty halves.
    pub fn splits_at(&self, key: &Key) -> bool {
        key > &self.start && (self.end.is_empty() || key < &self.end)
    }
}

/// Whether a node may take part in balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Serving and accepting new placements.
    Active,
    /// Asked to drain: every range must leave, none may arrive.
    Draining,
    /// Failed recently (lost, or refused commands): neither source nor target
    /// until the runtime reports it Active again.
    RecentlyFailed,
}

/// One node of the roster.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    pub id: NodeId,
    /// How much load the node can carry relative to others (1.0 by default): a
    /// node of capacity 2 is balanced to twice the load of a node of capacity 1.
    pub capacity: f64,
    pub state: NodeState,
    /// How old the node's latest load report is. `None`: it never reported, so its
    /// load is unknown and it is treated like a stale node.
    pub report_age: Option<Duration>,
}

impl NodeSnapshot {
    /// An active node of capacity 1 with a fresh report.
    pub fn active(id: NodeId) -> Self {
        NodeSnapshot {
            id,
            capacity: 1.0,
            state: NodeState::Active,
            report_age: Some(Duration::ZERO),
        }
    }
}

/// The kind of an operation the runtime is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Move,
    Split,
    Join,
    /// Anything else that holds a range (a first placement, an operator's
    /// request, a recovery): it counts against the limits like the others.
    Other,
}

/// An operation in flight. Its ranges are left alone; a move's load is counted
/// on its destination already, so that the next round does not correct twice.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlightOp {
    pub kind: OpKind,
    pub ranges: Vec<RangeId>,
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
}

/// Everything one planning round looks at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub now: Timestamp,
    /// The current tiling. Key order is expected (joins look at neighbours); the
    /// planner sorts if it is not.
    pub ranges: Vec<RangeSnapshot>,
    pub nodes: Vec<NodeSnapshot>,
    /// (range, node) pairs the orchestrator excludes for now (a Prepare failed
    /// there): the balancer never proposes them.
    pub excluded: Vec<(RangeId, NodeId)>,
    pub in_flight: Vec<InFlightOp>,
}
