//! What the orchestrator consumes and produces: commands to send, their answers,
//! operations and their outcomes, and events for operators.

use std::fmt;
use std::time::Duration;

use ranger_proto::{Command, Outcome};
use ranger_proto::{Key, NodeId, Parent, RangeId, RangeMeta, ReplicaGroup};
use tokio::time::Instant;

use super::attempts::Subject;
use crate::keyspace::{ChangeSet, PlacementId};

/// A command for a node, as the orchestrator decided it.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Prepare {
        meta: RangeMeta,
        parents: Vec<Parent>,
    },
    Activate,
    Deactivate,
    Drop {
        force: bool,
    },
}

impl Call {
    pub fn command(&self) -> Command {
        match self {
            Call::Prepare { .. } => Command::Prepare,
            Call::Activate => Command::Activate,
            Call::Deactivate => Command::Deactivate,
            Call::Drop { .. } => Command::Drop,
        }
    }
}

/// One command to send: to which node, about what, and with what the runtime
/// needs to send it, so that it decides nothing itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub node: NodeId,
    pub addr: String,
    pub range: RangeId,
    pub subject: Subject,
    pub call: Call,
    /// The controller term the command carries (nodes refuse older ones).
    pub term: u64,
    /// How long to wait for the answer before reporting the node unreachable.
    pub timeout: Duration,
    /// The operation the command works for, if any (a handoff's commands do; the
    /// placement of a new range or a repair does not): carried to the node so
    /// that both sides' logs of one operation can be found by its id.
    pub op: Option<OpId>,
}

/// A probe to send at once: `Info` to a node, granting it a write lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub node: NodeId,
    pub addr: String,
    pub term: u64,
    /// The lease granted (zero after a failed probe, until one succeeds).
    pub lease: Duration,
    /// At most the lease margin: a later answer counts as failed, because the
    /// node counts its lease from receipt (SCENARIOS.md #38).
    pub timeout: Duration,
    /// When the engine recorded the lease as granted; hand it back with the
    /// answer ([`super::Engine::on_probe`]). The runtime must send the probe
    /// right away: the time until it leaves is taken from the lease margin.
    pub sent_at: Instant,
    /// The replica group of every replicated range the node is a member of
    /// (`InfoRequest.groups`; see `groups.rs`), in range order. Empty at R1.
    pub groups: Vec<ReplicaGroup>,
}

/// How saving an [`Effect::Persist`] ended, told back to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persisted {
    /// Durable: the commands that depended on it may go.
    Saved,
    /// Not saved, but the store may take it later (unreachable, busy): the
    /// changes are kept for the next step and the commands are not sent.
    Failed,
}

/// Why a command got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The node called the command invalid: it does not hold the range, or (a
    /// reference rangelet) the range is in the wrong state. Not proof of either:
    /// the node's next probe says which.
    #[error("node refused the command as invalid (unknown range or wrong state): {0}")]
    Invalid(String),
    /// The node refused: the range is in a state where the command cannot run.
    #[error("wrong state on the node: {0}")]
    WrongState(String),
    /// No answer: connection refused, timeout, node shutting down.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// Anything else the node answered.
    #[error("{0}")]
    Other(String),
}

/// A command's answer.
pub type Answer = Result<Outcome, CallError>;

/// An operator-visible operation's id. Volatile: operations found in flight after
/// a restart get new ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}", self.0)
    }
}

/// What an operation is asked to do: the three verbs, with their arguments, as
/// `rangerctl`, a drain (and later the balancer) ask for them. One type from the
/// request to the engine's record of it; what the engine has built for it so
/// far is [`Progress`].
#[derive(Debug, Clone, PartialEq)]
pub enum OpRequest {
    /// Move `range` to `node` (any eligible node if `None`).
    Move {
        range: RangeId,
        node: Option<NodeId>,
    },
    /// Split `range` at `key`, its halves on the nodes given (or any).
    Split {
        range: RangeId,
        key: Key,
        left: Option<NodeId>,
        right: Option<NodeId>,
    },
    /// Join two adjacent ranges onto `node` (or any).
    Join {
        left: RangeId,
        right: RangeId,
        node: Option<NodeId>,
    },
}

impl OpRequest {
    /// The ranges the operation is about, for conflicts and listings.
    pub fn ranges(&self) -> Vec<RangeId> {
        match self {
            OpRequest::Move { range, .. } | OpRequest::Split { range, .. } => vec![*range],
            OpRequest::Join { left, right, .. } => vec![*left, *right],
        }
    }
}

fn node_or_any(node: Option<&NodeId>) -> String {
    node.map_or("any".to_owned(), NodeId::to_string)
}

impl fmt::Display for OpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpRequest::Move { range, node } => {
                write!(f, "move {range} to {}", node_or_any(node.as_ref()))
            }
            OpRequest::Split { range, key, .. } => write!(f, "split {range} at {key}"),
            OpRequest::Join { left, right, .. } => write!(f, "join {left} + {right}"),
        }
    }
}

/// Who started an operation: operators are answered, drains are counted
/// against their limit, and a listing says which is which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An operator's request (`rangerctl`, the Control service).
    Operator,
    /// A drain of this node: the move takes the copy off it.
    Drain(NodeId),
    /// The balancer planned it.
    Balancer(BalancerOrigin),
    /// Found in flight in the keyspace by a controller that restarted.
    Resumed,
}

/// How an origin reads in listings (`rangerctl ops`, `explain`).
impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Operator => f.write_str("operator"),
            Origin::Drain(node) => write!(f, "drain of {node}"),
            Origin::Balancer(b) => write!(f, "balancer: {}", b.reason),
            Origin::Resumed => f.write_str("a previous controller"),
        }
    }
}

/// A balancer operation's why: which copy it moves and the planner's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerOrigin {
    /// The node whose copy a move takes (the planner chose it).
    pub from: Option<NodeId>,
    /// The planner's reason code (e.g. `MoveOverloaded`).
    pub reason: String,
}

/// What the engine has built in the keyspace for an operation. Durable through
/// the keyspace itself (a placement that replaces another; a Subsuming range
/// with children), so a restarted controller finds it again.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Queued: nothing built yet.
    NotStarted,
    /// The destination placement `dest` (on `to`) replaces `source`.
    Move {
        source: PlacementId,
        dest: PlacementId,
        to: NodeId,
    },
    /// The parent is Subsuming into these children.
    Split { left: RangeId, right: RangeId },
    /// The parents are Subsuming into this child.
    Join { child: RangeId },
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpPhase {
    /// Waiting for another operation on the same range to end.
    Queued,
    Running,
    /// Undoing (a split or join rolled back before any child was activated).
    RollingBack,
}

/// An operation in flight.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: OpId,
    pub request: OpRequest,
    pub origin: Origin,
    pub progress: Progress,
    pub phase: OpPhase,
    pub started: Instant,
    pub deadline: Instant,
    /// Why it is being rolled back (deadline, cancel, failure), if it is.
    pub rollback_reason: Option<String>,
    /// The operator was already answered (an error at the deadline) while the
    /// work goes on: a move or split/join past its point of no return rolls
    /// forward, a rollback keeps dropping children. Every request ends within
    /// its deadline; the keyspace still converges.
    pub reported: bool,
}

impl Operation {
    /// The ranges the operation is about, for conflicts and listings.
    pub fn ranges(&self) -> Vec<RangeId> {
        self.request.ranges()
    }
}

/// The request, with the destination the engine chose once a move started.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.request, &self.progress) {
            (OpRequest::Move { range, .. }, Progress::Move { to, .. }) => {
                write!(f, "move {range} to {to}")
            }
            (request, _) => request.fmt(f),
        }
    }
}

/// Why an operator request was refused at once, or why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("range {0} does not exist")]
    UnknownRange(RangeId),
    #[error("node {0} is not known to the controller")]
    UnknownNode(NodeId),
    #[error("operation {0} does not exist (finished, or never started)")]
    UnknownOp(OpId),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("cancelled: {0}")]
    Cancelled(String),
}

/// Something an operator may want to watch, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub range: RangeId,
    pub message: String,
}

/// What the runtime must do after a step, in order. The engine's whole output:
/// the runtime executes these and feeds the results back as events, and never
/// looks inside the engine to decide anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Save these keyspace changes, then answer with
    /// [`super::Engine::persisted`]. The commands that depend on them are held
    /// by the engine and come out of that call, so nothing is sent before the
    /// keyspace says so durably (DESIGN.md invariant 4).
    Persist(ChangeSet),
    /// Send this probe now (see [`Probe::sent_at`]).
    Probe(Probe),
    /// Send this command; its answer goes to [`super::Engine::on_answer`].
    Send(Dispatch),
    Finished {
        op: OpId,
        result: Result<(), OpError>,
    },
    Event(Event),
}
