//! How the controller talks to nodes. The orchestrator decides [`Call`]s; a
//! transport carries them: over gRPC in production ([`GrpcTransport`]), or straight
//! into in-process rangelets in tests (`InProcessTransport`, behind the `testing`
//! feature), which exercises the same node-side state machine without sockets.
//! Only that transport links the node SDK, so `rangerd` does not.

pub mod context;
mod grpc;
#[cfg(any(test, feature = "testing"))]
mod in_process;

use std::future::Future;
use std::time::Duration;

use ranger_proto::{RangeId, RangeInfo, ReplicaGroup, ReportedRange};

pub use grpc::GrpcTransport;
#[cfg(any(test, feature = "testing"))]
pub use in_process::{Fault, InProcessTransport, Lost};

use crate::orchestrator::{Answer, Call};

/// What a node says when probed.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// Its ranges, their states and loads.
    pub ranges: Vec<ReportedRange>,
    /// It asks to be drained (the storage system's own decision).
    pub wants_drain: bool,
    /// The load it can carry relative to others (1.0 unless it says otherwise).
    pub capacity: f64,
}

impl NodeReport {
    /// A report of `ranges` from a default node (capacity 1, no drain): what
    /// tests and simulations mostly need.
    pub fn of(ranges: Vec<RangeInfo>) -> Self {
        NodeReport {
            ranges: ranges.into_iter().map(ReportedRange::from).collect(),
            wants_drain: false,
            capacity: 1.0,
        }
    }
}

impl NodeReport {
    /// Checks a node's answer to `Info` as it came off the wire: every range
    /// must be well formed and the capacity usable, or the whole answer is
    /// refused (the probe counts as failed, so nothing half-read reaches the
    /// roster).
    pub fn from_wire(response: ranger_proto::pb::ranger::InfoResponse) -> ProbeAnswer {
        let ranges = response
            .ranges
            .into_iter()
            .map(ReportedRange::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("node sent a bad range: {e}"))?;
        let capacity = ranger_proto::capacity_from_wire(response.capacity)
            .map_err(|e| format!("node sent a bad capacity: {e}"))?;
        Ok(NodeReport {
            ranges,
            wants_drain: response.want_drain,
            capacity,
        })
    }
}

/// A node's answer to a probe, or why there was none.
pub type ProbeAnswer = Result<NodeReport, String>;

/// Carries commands and probes to nodes by address.
pub trait NodeTransport: Send + Sync + 'static {
    /// Sends one command about `range` to the node at `addr`, in the
    /// controller's `term` (nodes refuse commands from an older term).
    fn call(
        &self,
        addr: &str,
        range: RangeId,
        call: Call,
        term: u64,
        timeout: Duration,
    ) -> impl Future<Output = Answer> + Send;

    /// Probes the node at `addr` with `Info`, granting it a write lease (none
    /// if `lease` is zero) and telling it the replica `groups` it is a member
    /// of (none at R1). A node refuses a probe with a malformed group whole.
    fn probe(
        &self,
        addr: &str,
        term: u64,
        lease: Duration,
        groups: &[ReplicaGroup],
        timeout: Duration,
    ) -> impl Future<Output = ProbeAnswer> + Send;
}
