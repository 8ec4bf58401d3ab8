//! The interface a storage system implements to be sharded by Ranger.

use std::future::Future;

use ranger_proto::{LoadInfo, Parent, RangeId, RangeMeta, ReplicaGroup};

/// Why a storage system's callback failed. The rangelet reports the message to the
/// controller (and rolls the range back to its previous state), so make it say what
/// went wrong in terms an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The storage system refuses the command (e.g. a disk is full, or the range's
    /// data could not be fetched from any parent).
    #[error("{0}")]
    Refused(String),
    /// The storage system does not know the range (e.g. `load_info` raced a drop).
    #[error("range {0} is unknown to the storage system")]
    UnknownRange(RangeId),
    /// Any other error from the storage system, kept as the source.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl CallbackError {
    /// Shorthand for [`CallbackError::Refused`].
    pub fn refused(message: impl Into<String>) -> Self {
        CallbackError::Refused(message.into())
    }
}

/// The five callbacks that make a storage system shardable.
///
/// The rangelet calls them as the controller moves a range through its states:
/// `prepare` (load the range, do not serve it yet), `activate` (start serving),
/// `deactivate` (stop serving writes; the data must stay loaded, because the
/// controller may activate it again if a handoff fails), `drop` (forget the range and
/// free its space), and `load_info` (report load, for balancing and splitting).
///
/// The rangelet guarantees that for one range at most one of `prepare`, `activate`,
/// `deactivate` and `drop` runs at a time, and that a repeated controller command
/// never calls the same transition twice while it runs. Callbacks for different
/// ranges run concurrently.
///
/// A `prepare` future may be dropped before it completes, when the controller gives
/// up on it and drops the range: `drop` is then called to clean up whatever it
/// wrote.
pub trait Node: Send + Sync + 'static {
    /// Load the range (e.g. copy its data from the placements named in `parents`,
    /// whose first entry is the range itself with its current placements, followed
    /// by its parents and their parents). Must not serve the range yet.
    fn prepare(
        &self,
        meta: RangeMeta,
        parents: Vec<Parent>,
    ) -> impl Future<Output = Result<(), CallbackError>> + Send;

    /// Start serving reads and writes for a prepared (or deactivated) range.
    fn activate(&self, id: RangeId) -> impl Future<Output = Result<(), CallbackError>> + Send;

    /// Stop serving writes; keep the data, the range may be activated again.
    fn deactivate(&self, id: RangeId) -> impl Future<Output = Result<(), CallbackError>> + Send;

    /// Forget the range and free its space.
    fn drop(&self, id: RangeId) -> impl Future<Output = Result<(), CallbackError>> + Send;

    /// The range's current load, for the controller's balancer.
    fn load_info(
        &self,
        id: RangeId,
    ) -> impl Future<Output = Result<LoadInfo, CallbackError>> + Send;

    /// The replica groups of this node's replicated ranges (more than one
    /// active copy wanted), as every probe from the controller carries them:
    /// which copy takes writes and which copies it must forward them to.
    ///
    /// Only a storage system that replicates writes between a range's copies
    /// needs it; the default ignores it, so the five callbacks above stay the
    /// whole interface for the others. It is called once the probe's term has
    /// been checked (a deposed controller's groups never arrive), before the
    /// probe is answered: return quickly and run long work in a task of your
    /// own. Groups may repeat and arrive in any order across probes; compare
    /// their epochs.
    fn replica_groups(&self, groups: Vec<ReplicaGroup>) -> impl Future<Output = ()> + Send {
        let _ = groups;
        async {}
    }
}
