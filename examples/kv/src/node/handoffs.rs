//! When this node's `deactivate` and `activate` callbacks ran, for the moves
//! that pass through them: the parts of a handoff's write-unavailable window
//! that the node sees (issue 13's window breakdown; `bench_handoff` prints it).
//!
//! A write to a range is refused from the moment its source starts deactivating
//! until its destination has activated it and the proxy has learned so:
//!
//! - `deactivate` (source): waiting for the writes in flight to finish;
//! - the gap between the source's `deactivate` ending and the destination's
//!   `activate` starting: the answer's way to the controller, its decision,
//!   and the Activate command's way to the destination;
//! - `activate` (destination): fetching the delta since the snapshot, then the
//!   rest of the callback;
//! - whatever remains of the longest write's wait: the proxy learning the new
//!   route and sending the write again.

use std::time::Instant;

use ranger_proto::RangeId;

/// Which callback a [`CallbackTimes`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffStep {
    Deactivate,
    Activate,
}

/// One callback's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackTimes {
    pub range: RangeId,
    pub step: HandoffStep,
    pub started: Instant,
    /// For `activate`: when the delta (or dump) had been fetched and applied.
    pub fetched: Option<Instant>,
    pub ended: Instant,
}
