//! What the balancer remembers from one round to the next.
//!
//! The planner is a pure function, so its memory is a value: the previous one
//! comes in, the next one goes out with the plan. The runtime keeps it (and may
//! drop it: a fresh memory only makes the first round less informed, never wrong),
//! a simulation threads it through its rounds.
//!
//! What is kept by key span rather than by range id survives splits and joins:
//! the children of a range that just moved are as "recently moved" as their
//! parent, and the children of a hot range are still hot.

use std::collections::HashMap;

use ranger_proto::{Key, NodeId, RangeId};

use super::load::Smoothed;
use super::snapshot::Timestamp;

/// A move the balancer planned, remembered for the cooldown and for no A→B→A.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentMove {
    pub start: Key,
    pub end: Key,
    pub from: NodeId,
    pub to: NodeId,
    pub at: Timestamp,
}

/// The hot-round count of a range the balancer split: its children start from it
/// instead of from zero, so a hot range is split down level by level without
/// waiting `split_hot_rounds` at each level.
#[derive(Debug, Clone, PartialEq)]
pub struct HotSpan {
    pub start: Key,
    pub end: Key,
    pub rounds: u32,
    pub at: Timestamp,
}

/// The balancer's memory between rounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BalancerMemory {
    /// Smoothed load of every current range.
    pub smoothed: HashMap<RangeId, Smoothed>,
    /// Consecutive rounds each hot range has been hot.
    pub hot_rounds: HashMap<RangeId, u32>,
    /// Hot ranges split recently, for their children.
    pub hot_spans: Vec<HotSpan>,
    /// Moves planned within the last few cooldowns (see
    /// [`super::round::RETURN_MEMORY_COOLDOWNS`]).
    pub recent_moves: Vec<RecentMove>,
    /// Nodes that began last round above the band. They go on shedding while
    /// they are above mean × (1 + tolerance / 2), inside the band or not:
    /// hysteresis across rounds, not only within one. A node planned down to
    /// that mark can land just inside the band (its load was still rising, or
    /// its reports were noisy) and would otherwise sit at the band's edge.
    pub shedding: Vec<NodeId>,
    /// Nodes that began last round below the band: they go on taking load
    /// while below mean × (1 − tolerance / 2), the same hysteresis upwards.
    pub filling: Vec<NodeId>,
    /// Nodes that began last round inside the band but within a tenth of the
    /// tolerance of one of its edges. A load figure is an estimate (smoothed
    /// noisy reports): a node whose figure sits at the edge is outside the band
    /// about as often as not, and would sit there for good, since nothing
    /// moves within the band. A node still there a round later is treated as
    /// outside: it sheds (or fills) to half the tolerance, with moves only.
    pub at_edge: Vec<NodeId>,
}

/// Whether `[a_start, a_end)` and `[b_start, b_end)` share a key (empty end =
/// plus infinity).
pub(super) fn overlaps(a_start: &Key, a_end: &Key, b_start: &Key, b_end: &Key) -> bool {
    let a_before_b_ends = b_end.is_empty() || a_start < b_end;
    let b_before_a_ends = a_end.is_empty() || b_start < a_end;
    a_before_b_ends && b_before_a_ends
}

/// Whether `[inner_start, inner_end)` lies within `[start, end)`.
pub(super) fn contains(start: &Key, end: &Key, inner_start: &Key, inner_end: &Key) -> bool {
    let end_ok = end.is_empty() || (!inner_end.is_empty() && inner_end <= end);
    inner_start >= start && end_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        Key::from(s)
    }

    #[test]
    fn spans_overlap_when_they_share_a_key() {
        assert!(overlaps(&k("a"), &k("c"), &k("b"), &k("d")));
        assert!(!overlaps(&k("a"), &k("b"), &k("b"), &k("c")));
        assert!(overlaps(&k(""), &k(""), &k("x"), &k("y")));
        assert!(overlaps(&k("m"), &k(""), &k("a"), &k("")));
        assert!(!overlaps(&k("m"), &k(""), &k("a"), &k("m")));
    }

    #[test]
    fn containment_treats_an_empty_end_as_infinity() {
        assert!(contains(&k("a"), &k(""), &k("b"), &k("")));
        assert!(contains(&k("a"), &k("z"), &k("b"), &k("c")));
        assert!(!contains(&k("a"), &k("z"), &k("b"), &k("")));
        assert!(!contains(&k("b"), &k("z"), &k("a"), &k("c")));
    }
}
