//! The nodes not to choose again for a range for a while, after a placement on
//! them was given up (SCENARIOS.md #3: a failed prepare does not hammer the
//! same node).
//!
//! Kept by range, because the question asked on the hot path is "which nodes
//! are excluded for this range?", once per new placement (see
//! `Engine::choose_node`): one lookup, then a handful of nodes, instead of a
//! lookup per candidate node that each needed an owned `(range, node)` key.

use ranger_proto::{NodeId, RangeId};
use tokio::time::Instant;

use crate::range_maps::RangeMap;

/// The excluded (range, node) pairs, each until an instant.
#[derive(Debug, Default)]
pub(super) struct Exclusions {
    by_range: RangeMap<Vec<(NodeId, Instant)>>,
}

impl Exclusions {
    /// Excludes `node` for `range` until `until` (replacing an earlier end).
    pub(super) fn exclude(&mut self, range: RangeId, node: &NodeId, until: Instant) {
        let nodes = self.by_range.entry(range).or_default();
        match nodes.iter_mut().find(|(excluded, _)| excluded == node) {
            Some((_, end)) => *end = until,
            None => nodes.push((node.clone(), until)),
        }
    }

    /// Forgets the exclusions that ended by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.by_range.retain(|_, nodes| {
            nodes.retain(|(_, until)| *until > now);
            !nodes.is_empty()
        });
    }

    /// The nodes excluded for `range`.
    pub(super) fn of(&self, range: RangeId) -> impl Iterator<Item = &NodeId> {
        self.by_range
            .get(&range)
            .into_iter()
            .flatten()
            .map(|(node, _)| node)
    }

    /// Every excluded pair, for the balancer's snapshot.
    pub(super) fn pairs(&self) -> impl Iterator<Item = (RangeId, &NodeId)> {
        self.by_range
            .iter()
            .flat_map(|(range, nodes)| nodes.iter().map(move |(node, _)| (*range, node)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn range(id: u64) -> RangeId {
        RangeId::new(id).expect("non-zero id")
    }

    #[test]
    fn a_node_is_excluded_for_its_range_only_until_the_end_given_last() {
        let t0 = Instant::now();
        let node = |name: &str| NodeId::new(name).expect("a valid node id");
        let (a, b) = (node("a"), node("b"));
        let mut exclusions = Exclusions::default();
        exclusions.exclude(range(1), &a, t0 + Duration::from_secs(10));
        exclusions.exclude(range(1), &b, t0 + Duration::from_secs(5));
        exclusions.exclude(range(1), &a, t0 + Duration::from_secs(20));
        let of_1: Vec<&NodeId> = exclusions.of(range(1)).collect();
        assert_eq!(of_1, [&a, &b], "a once, with its later end");
        assert_eq!(exclusions.of(range(2)).count(), 0, "other ranges are free");
        exclusions.expire(t0 + Duration::from_secs(10));
        let of_1: Vec<&NodeId> = exclusions.of(range(1)).collect();
        assert_eq!(of_1, [&a], "b's ended; a's end moved to 20 s");
        exclusions.expire(t0 + Duration::from_secs(20));
        assert_eq!(exclusions.pairs().count(), 0);
        assert!(exclusions.by_range.is_empty(), "no empty entry left behind");
    }
}
