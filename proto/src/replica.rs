//! A replicated range's group: which copies exist and which one takes writes.
//!
//! The framework itself does not replicate data; a storage system that does
//! (the KV example at R3) needs to know, for each range, the copies to forward
//! client writes to, the one copy that orders them (the primary), and an epoch
//! that tells a newer decision from an older one. The controller already knows
//! all three, so it hands them out with every probe (`InfoRequest.groups`).

use crate::RangeId;

/// One range's replica group as the controller decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaGroup {
    pub range: RangeId,
    /// Orders decisions: a group with a higher epoch replaces a lower one; the
    /// controller's term is its high 32 bits (see [`ReplicaGroup::epoch_of`]).
    pub epoch: u64,
    /// The member that takes client writes; `None` while no copy is active.
    pub primary: Option<String>,
    /// Every copy that holds the range or is loading it (addresses, sorted,
    /// primary included).
    pub members: Vec<String>,
}

impl ReplicaGroup {
    /// The epoch of the `count`-th group decision in controller term `term`:
    /// every epoch of a newer term is above every epoch of an older one.
    pub fn epoch_of(term: u64, count: u32) -> u64 {
        (term << 32) | u64::from(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_term_always_has_the_higher_epoch() {
        assert!(ReplicaGroup::epoch_of(3, 0) > ReplicaGroup::epoch_of(2, u32::MAX));
        assert!(ReplicaGroup::epoch_of(2, 1) > ReplicaGroup::epoch_of(2, 0));
    }
}
