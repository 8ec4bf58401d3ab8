//! Ranger's wire contract and the domain types that the controller, the node SDK and
//! storage systems share.
//!
//! The generated code lives in [`pb`]; it mirrors the wire exactly and is awkward to
//! use (every message field is optional, ids may be zero). The domain types beside it
//! ([`Key`], [`RangeId`], [`NodeId`], [`RangeMeta`], the state enums, [`LoadInfo`])
//! are what the rest of the code works with: they cannot hold an invalid value, and
//! the fallible conversions in [`convert`] are the one place where wire data is
//! checked.

mod command;
pub mod convert;
mod ids;
mod key;
mod load;
mod membership;
mod meta;
mod replica;
mod state;

pub use command::{Command, Outcome};
pub use convert::{
    ConversionError, Parent, ParentPlacement, RangeInfo, ReportedRange, capacity_from_wire,
};
pub use ids::{NodeId, RangeId};
pub use key::{Key, KeyParseError};
pub use load::{LoadCut, LoadInfo};
pub use membership::{Membership, parse_node_list};
pub use meta::{InvalidBounds, RangeMeta};
pub use replica::ReplicaGroup;
pub use state::{PlacementState, RangeState, RemoteState};

/// The gRPC metadata entry in which the controller names the operation a
/// command belongs to ("op7"), so that a node's logs of a handoff can be found
/// from the controller's (our extension; nodes that do not read it lose nothing).
pub const OPERATION_METADATA: &str = "ranger-operation";

/// Code generated from `proto/*.proto` by `build.rs`.
pub mod pb {
    /// Package `ranger`: the Node, Orchestrator and Debug services.
    #[allow(missing_debug_implementations, clippy::all)]
    pub mod ranger {
        tonic::include_proto!("ranger");
    }
}
