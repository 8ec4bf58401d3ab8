//! Why the rangelet refused something without calling the storage system.
//!
//! Command errors become gRPC statuses in [`crate::NodeService`] (PROTOCOL.md: an
//! unknown range or a wrong state is INVALID_ARGUMENT, as in the reference); key
//! rejections are what a storage system answers its own clients with.

use ranger_proto::{Command, Key, RangeId, RangeMeta, RemoteState};

use crate::state_store::StateStoreError;

/// Why a command was refused without calling the storage system.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("range {0} is not on this node")]
    UnknownRange(RangeId),
    #[error("cannot {command:?} range {range}: it is {state}")]
    WrongState {
        command: Command,
        range: RangeId,
        state: RemoteState,
    },
    #[error("range {requested:?} conflicts with {existing:?}, already on this node")]
    MetaMismatch {
        existing: RangeMeta,
        requested: RangeMeta,
    },
    #[error("could not persist the state of range {range}: {source}")]
    Persist {
        range: RangeId,
        #[source]
        source: StateStoreError,
    },
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The command (or probe) came from a controller term older than the newest
    /// this node has seen: a deposed leader's message still in flight
    /// (SCENARIOS.md #43).
    #[error("stale controller term {term}: this node has seen term {newest}")]
    StaleTerm { term: u64, newest: u64 },
    /// A newer controller term could not be persisted, so the command carrying it
    /// was refused (accepting it would let a restart forget the term).
    #[error("could not persist controller term {term}: {source}")]
    PersistTerm {
        term: u64,
        #[source]
        source: StateStoreError,
    },
}

/// Why a key cannot be served here (see [`Rangelet::serving_range`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyRejection {
    #[error("no range on this node contains key {0}")]
    NotOwned(Key),
    #[error("range {range} holds the key but is {state}, not Active")]
    NotActive { range: RangeId, state: RemoteState },
    #[error("range {range} is Active but the controller's lease expired; refusing to serve")]
    LeaseExpired { range: RangeId },
}
