//! What the rangelet's one lock guards: every range on the node with its state,
//! the failures still to report, and the lease and term bookkeeping that a
//! command must see in the same critical section as the range it acts on.
//!
//! One lock (held only for short, non-async sections) keeps every decision
//! consistent: a command checks the term, the lease and the range's state, and
//! starts its transition, without anything changing in between.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ranger_proto::{Command, Key, Outcome, RangeId, RangeMeta, RemoteState};
use tokio::sync::oneshot;

/// One change of a range's state, as the `Ranges` stream sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeChange {
    pub meta: RangeMeta,
    pub state: RemoteState,
}

pub(super) struct Entry {
    pub(super) meta: RangeMeta,
    pub(super) state: RemoteState,
    /// Bumped whenever a transition starts, so a callback finishing late cannot
    /// overwrite the outcome of a newer transition.
    pub(super) epoch: u64,
    /// Set while a Prepare runs: firing it asks the prepare task to abandon the
    /// callback and drop the range instead (a controller that gave up on it).
    pub(super) cancel_prepare: Option<oneshot::Sender<()>>,
}

pub(super) struct PendingFailure {
    pub(super) command: Command,
    pub(super) message: String,
}

/// Everything guarded by the one lock. Held only for short, non-async sections.
pub(super) struct Table {
    pub(super) ranges: BTreeMap<RangeId, Entry>,
    /// Ranges by start key, for key lookups.
    pub(super) by_start: BTreeSet<(Key, RangeId)>,
    pub(super) failures: HashMap<RangeId, PendingFailure>,
    pub(super) next_epoch: u64,
    /// Ranges that were Active when the controller's lease lapsed. They serve
    /// nothing until the controller activates them again, even if a later probe
    /// renews the lease: by then the controller may have given them to another
    /// node (see `expire_lease`).
    pub(super) fenced: BTreeSet<RangeId>,
    /// How many times the controller's lease has lapsed. An activation remembers
    /// the count it began under; if it changed by the time the callback ends, the
    /// lease lapsed meanwhile and the activation fails (SCENARIOS.md #40).
    pub(super) lease_lapses: u64,
    /// The newest controller term seen (0: none yet), kept in the state store.
    pub(super) newest_term: u64,
}

impl Table {
    pub(super) fn state(&self, id: RangeId) -> RemoteState {
        self.ranges
            .get(&id)
            .map_or(RemoteState::NotFound, |e| e.state)
    }

    pub(super) fn snapshot(&self) -> Vec<RangeChange> {
        self.ranges
            .values()
            .map(|e| RangeChange {
                meta: e.meta.clone(),
                state: e.state,
            })
            .collect()
    }
}

pub(super) fn next_epoch(table: &mut Table) -> u64 {
    table.next_epoch += 1;
    table.next_epoch
}

/// A failure of `command` that its own RPC did not report (it had answered with
/// the in-between state): the next command of the same kind reports it instead of
/// starting again.
pub(super) fn take_failure(table: &mut Table, id: RangeId, command: Command) -> Option<Outcome> {
    match table.failures.get(&id) {
        Some(f) if f.command == command => {
            let message = table.failures.remove(&id).map(|f| f.message);
            Some(Outcome {
                state: table.state(id),
                failure: message,
            })
        }
        _ => None,
    }
}
