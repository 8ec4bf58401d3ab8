//! Which ranges each node holds a live placement of: the keyspace's second
//! index, kept in step with every placement change.
//!
//! Why it exists: every probe answer lists a node's ranges, and the controller
//! checks each listed range against the keyspace (one that no live placement
//! on that node accounts for is an orphan, which the controller drops).
//! Through the range table that check follows a range slot, its placement
//! vector and each placement's node id: three dependent reads from a table
//! of a million ranges, mostly cache misses, a million times per probe round
//! (DESIGN.md §10). Here it is one lookup of the node and then a set of a
//! thousand ids that stays in cache.
//!
//! A node holds at most one live placement of a range
//! ([`Keyspace::add_placement`](super::Keyspace::add_placement) refuses a
//! second), so a set per node is exact. The keyspace updates the index
//! where placements are added or leave the live states, builds it while it
//! checks a loaded keyspace's placements, and its invariant checks compare it
//! with the placements themselves.

use std::collections::HashMap;

use ranger_proto::{NodeId, RangeId};

use crate::range_maps::{RangeHasher, RangeSet};

/// The live placements by node; see the module docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LiveByNode {
    /// Each node that holds a live placement, with the ranges it holds. A node
    /// with none has no entry, so the map does not grow with nodes long gone.
    /// Hashed like the range maps: node ids are the operator's names, and a
    /// load hashes one per placement.
    nodes: HashMap<NodeId, RangeSet, RangeHasher>,
}

impl LiveByNode {
    /// `node` holds a live placement of `range` from now on.
    pub(super) fn placed(&mut self, node: &NodeId, range: RangeId) {
        match self.nodes.get_mut(node) {
            Some(ranges) => {
                ranges.insert(range);
            }
            None => {
                self.nodes
                    .insert(node.clone(), RangeSet::from_iter([range]));
            }
        }
    }

    /// `node`'s placement of `range` is no longer live.
    pub(super) fn unplaced(&mut self, node: &NodeId, range: RangeId) {
        if let Some(ranges) = self.nodes.get_mut(node) {
            ranges.remove(&range);
            if ranges.is_empty() {
                self.nodes.remove(node);
            }
        }
    }

    /// The ranges `node` holds a live placement of (none if it holds none).
    pub(super) fn on(&self, node: &NodeId) -> Option<&RangeSet> {
        self.nodes.get(node)
    }

    /// Every node with its ranges: for the invariant checks, and the counts
    /// that placement balances on.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&NodeId, &RangeSet)> {
        self.nodes.iter()
    }
}
