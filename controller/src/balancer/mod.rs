//! The balancer's pure core (DESIGN.md §5): a snapshot of ranges, nodes and
//! operations in, a plan of splits, joins and moves out, each with a reason, and
//! every candidate it did not act on with the reason why.
//!
//! It never reads a clock, never does I/O and never draws a random number, so a
//! round is a function of its inputs: the runtime can run it each round (or in
//! dry-run mode and only show the plan), a simulation can replay a hundred rounds
//! in milliseconds, and `explain` can say exactly why a range did not move.
//!
//! - [`snapshot`]: the input, independent of the engine's types;
//! - [`config`]: thresholds, tolerance and limits, with defaults;
//! - [`load`]: smoothing, the load dimensions and the one figure per node;
//! - [`memory`]: what a round hands to the next (smoothed loads, hot counts,
//!   recent moves);
//! - [`plan`]: the output;
//! - [`plan()`]: the planner; its rules live in `split`, `moves` and `join`.

pub mod config;
mod join;
pub mod load;
pub mod memory;
mod moves;
pub mod plan;
mod planner;
mod round;
pub mod snapshot;
mod split;
#[cfg(test)]
mod tests;

pub use config::{BalancerConfig, ConfigError, LoadWeights};
pub use memory::BalancerMemory;
pub use plan::{
    Action, Candidate, Imbalance, NodeReport, Plan, PlannedAction, Reason, SkipReason, Skipped,
};
pub use planner::plan;
pub use snapshot::{
    InFlightOp, NodeSnapshot, NodeState, OpKind, RangeLoad, RangeSnapshot, Snapshot, Timestamp,
};
