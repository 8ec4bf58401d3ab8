//! The planner: one pure function from (snapshot, config, memory) to (plan,
//! memory). No I/O, no clock, no randomness: the same inputs give the same plan,
//! which is what makes a plan explainable and a simulation replayable.

use super::config::BalancerConfig;
use super::memory::BalancerMemory;
use super::plan::{Candidate, Plan, SkipReason};
use super::round::Round;
use super::snapshot::Snapshot;
use super::{join, moves, split};

/// Plans one balancing round.
///
/// Order of the rules, most urgent first, since they share the operation slots
/// and the byte budget: drains (owed whatever the balance), splits (they create
/// the granularity that moves need), moves off overloaded nodes, moves onto
/// underloaded nodes, joins (they save resources, they fix nothing).
///
/// The returned memory replaces `memory` for the next round.
pub fn plan(
    snapshot: &Snapshot,
    config: &BalancerConfig,
    memory: &BalancerMemory,
) -> (Plan, BalancerMemory) {
    let mut round = Round::new(snapshot, config, memory);
    moves::plan_drains(&mut round);
    split::plan_splits(&mut round);
    let tol = config.tolerance;
    let (upper, lower) = (round.mean * (1.0 + tol), round.mean * (1.0 - tol));
    let out_of_band = round.eligible_nodes().into_iter().any(|n| {
        let u = round.nodes[n].util();
        u > upper || u < lower || round.still_shedding(n) || round.still_filling(n)
    });
    round.note_band();
    if out_of_band {
        moves::plan_sheds(&mut round);
        moves::plan_fills(&mut round);
    } else {
        round.skip(Candidate::Round, None, None, SkipReason::WithinTolerance);
    }
    join::plan_joins(&mut round);
    round.finish()
}
