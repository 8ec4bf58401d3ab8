//! Why a keyspace operation was refused, or why a stored keyspace is unusable.

use ranger_proto::{InvalidBounds, Key, NodeId, PlacementState, RangeId, RangeState};

use super::PlacementId;

/// Why a keyspace operation was refused or a stored keyspace is invalid.
///
/// The first group are refusals of a request (the keyspace is unchanged); the
/// second group are violations of the keyspace's invariants, found when loading
/// persisted records (SCENARIOS.md #35) or, in debug builds, after a mutation. Each
/// names the ranges involved, because an operator has to find them in the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyspaceError {
    // ---- refused requests ----
    #[error("range {0} does not exist")]
    UnknownRange(RangeId),
    #[error("range {range} has no placement {placement}")]
    UnknownPlacement {
        range: RangeId,
        placement: PlacementId,
    },
    #[error("placement {placement} of range {range}: {from} -> {to} is not allowed")]
    InvalidTransition {
        range: RangeId,
        placement: PlacementId,
        from: PlacementState,
        to: PlacementState,
    },
    #[error("placement {placement} of range {range} is {state}, not Dropped")]
    PlacementNotDropped {
        range: RangeId,
        placement: PlacementId,
        state: PlacementState,
    },
    #[error("placement {placement} of range {range} is Dropped")]
    PlacementDropped {
        range: RangeId,
        placement: PlacementId,
    },
    #[error("range {range} is {state}; expected {expected}")]
    WrongRangeState {
        range: RangeId,
        state: RangeState,
        expected: RangeState,
    },
    #[error("range {0} is Obsolete")]
    RangeObsolete(RangeId),
    #[error(
        "range {0} is not part of the current tiling yet (the split or join that \
         created it has not handed over)"
    )]
    NotCurrent(RangeId),
    #[error("node {node} already holds live placement {placement} of range {range}")]
    NodeAlreadyPlaced {
        range: RangeId,
        node: NodeId,
        placement: PlacementId,
    },
    #[error("placement {replaces} is not a live placement of range {range}; cannot replace it")]
    BadReplaces {
        range: RangeId,
        replaces: PlacementId,
    },
    #[error("cannot split range {range} at {key}: the key is not strictly inside it")]
    BadSplitKey { range: RangeId, key: Key },
    #[error("ranges {left} and {right} are not adjacent (left's end must be right's start)")]
    NotAdjacent { left: RangeId, right: RangeId },
    #[error("no ranges given")]
    EmptyGroup,
    #[error("range {0} is listed twice")]
    DuplicateInGroup(RangeId),
    #[error("range {missing} belongs to the same split or join and must be given too")]
    IncompleteGroup { missing: RangeId },
    #[error("range {range} still has live placement {placement}")]
    LivePlacement {
        range: RangeId,
        placement: PlacementId,
    },
    #[error(
        "range {0} has had an active placement: it may hold writes, so it cannot be rolled back"
    )]
    ChildActivated(RangeId),
    #[error("the {0} id counter is exhausted")]
    IdsExhausted(&'static str),

    // ---- broken invariants (corrupt store, or a bug) ----
    #[error("the keyspace holds no ranges")]
    Empty,
    #[error("range {0} appears twice")]
    DuplicateRange(RangeId),
    #[error(transparent)]
    InvalidBounds(#[from] InvalidBounds),
    #[error("{kind} id {id} is not below the counter's next id {next}")]
    IdNotBelowCounter {
        kind: &'static str,
        id: u64,
        next: u64,
    },
    #[error("placement {placement} appears in both range {first} and range {second}")]
    DuplicatePlacement {
        placement: PlacementId,
        first: RangeId,
        second: RangeId,
    },
    #[error("range {range} names unknown parent {parent}")]
    UnknownParent { range: RangeId, parent: RangeId },
    #[error("range {range} names unknown child {child}")]
    UnknownChild { range: RangeId, child: RangeId },
    #[error("child lists inconsistent between parent {parent} and child {child}: {detail}")]
    LinksInconsistent {
        parent: RangeId,
        child: RangeId,
        detail: &'static str,
    },
    #[error("range {range} is malformed: {detail}")]
    Malformed { range: RangeId, detail: String },
    #[error("the children of {parents:?} do not cover exactly the same keys: {detail}")]
    GroupMismatch {
        parents: Vec<RangeId>,
        detail: String,
    },
    #[error(
        "gap in the keyspace: nothing covers [{}, {}) (between {} and {})",
        bound(.from, "-inf"), bound(.to, "+inf"),
        side(.after, "minus infinity"), side(.before, "plus infinity")
    )]
    Gap {
        after: Option<RangeId>,
        before: Option<RangeId>,
        from: Key,
        to: Key,
    },
    #[error("ranges {first} and {second} overlap")]
    Overlap { first: RangeId, second: RangeId },
    #[error("the key index disagrees with range {0}")]
    IndexMismatch(RangeId),
    #[error("the index of live placements by node disagrees with range {range} on node {node}")]
    LiveIndexMismatch { range: RangeId, node: NodeId },
}

fn bound(key: &Key, infinity: &'static str) -> String {
    if key.is_empty() {
        infinity.to_owned()
    } else {
        key.to_string()
    }
}

fn side(range: &Option<RangeId>, none: &'static str) -> String {
    match range {
        Some(id) => format!("range {id}"),
        None => none.to_owned(),
    }
}
