//! How many ranges each node holds, kept in the order placement prefers
//! nodes: fewest ranges first, then fewest bytes reported, then by id.
//!
//! Why an order and not just counts: choosing a node for a new copy used to
//! look at every node and take the least loaded eligible one. Re-placing the
//! ranges of lost nodes does that once per range, so at 1,000 nodes and
//! 10,000 ranges to re-place it was ten million node checks in one step
//! (DESIGN.md §10). Walking the nodes in preference order and stopping at
//! the first eligible one gives the same node after a few checks; adding a
//! copy moves one node in the order.

use std::collections::{BTreeSet, HashMap};

use ranger_proto::NodeId;

/// The nodes' loads for one step of the engine, or one move: built when
/// the first copy is to be placed; counts move as copies are placed; the
/// reported bytes stay as the roster had them then (they change only when a
/// probe is answered, between steps).
#[derive(Debug, Default)]
pub(super) struct NodeLoads {
    /// Each node's sort key: the ranges it holds a live copy of, and the
    /// bytes it last reported.
    by_node: HashMap<NodeId, (usize, u64)>,
    /// Every node of `by_node`, least loaded first.
    order: BTreeSet<(usize, u64, NodeId)>,
}

impl NodeLoads {
    /// The loads of `nodes`, each given as (id, ranges held, bytes
    /// reported). A node given twice counts with its last entry.
    pub(super) fn new(nodes: impl IntoIterator<Item = (NodeId, usize, u64)>) -> Self {
        let mut loads = NodeLoads::default();
        for (node, ranges, bytes) in nodes {
            loads.set(node, ranges, bytes);
        }
        loads
    }

    /// How many ranges `node` holds a live copy of (0 for a node not known).
    pub(super) fn ranges_on(&self, node: &NodeId) -> usize {
        self.by_node.get(node).map_or(0, |(ranges, _)| *ranges)
    }

    /// `node` takes one more range.
    pub(super) fn add_range(&mut self, node: &NodeId) {
        let (ranges, bytes) = self.by_node.get(node).copied().unwrap_or((0, 0));
        self.set(node.clone(), ranges + 1, bytes);
    }

    /// Every node, the one placement prefers first.
    pub(super) fn least_loaded_first(&self) -> impl Iterator<Item = &NodeId> {
        self.order.iter().map(|(_, _, node)| node)
    }

    fn set(&mut self, node: NodeId, ranges: usize, bytes: u64) {
        if let Some((old_ranges, old_bytes)) = self.by_node.insert(node.clone(), (ranges, bytes)) {
            self.order.remove(&(old_ranges, old_bytes, node.clone()));
        }
        self.order.insert((ranges, bytes, node));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn order(loads: &NodeLoads) -> Vec<&str> {
        loads.least_loaded_first().map(NodeId::as_str).collect()
    }

    #[test]
    fn nodes_come_fewest_ranges_first_then_fewest_bytes_then_by_id() {
        let loads = NodeLoads::new([
            (node("c"), 1, 0),
            (node("a"), 2, 0),
            (node("d"), 1, 500),
            (node("b"), 1, 0),
        ]);
        assert_eq!(order(&loads), ["b", "c", "d", "a"]);
        assert_eq!(loads.ranges_on(&node("a")), 2);
        assert_eq!(
            loads.ranges_on(&node("z")),
            0,
            "a node not known holds none"
        );
    }

    #[test]
    fn a_node_given_twice_counts_with_its_last_entry_and_appears_once() {
        // A later entry corrects an earlier one rather than adding a node.
        let loads = NodeLoads::new([(node("a"), 0, 10), (node("b"), 0, 0), (node("a"), 3, 10)]);
        assert_eq!(order(&loads), ["b", "a"]);
        assert_eq!(loads.ranges_on(&node("a")), 3);
    }

    #[test]
    fn a_node_that_takes_a_range_moves_back_in_the_order_and_only_once() {
        let mut loads = NodeLoads::new([(node("a"), 0, 0), (node("b"), 1, 0)]);
        loads.add_range(&node("a"));
        assert_eq!(order(&loads), ["a", "b"], "a tie is broken by id");
        loads.add_range(&node("a"));
        assert_eq!(order(&loads), ["b", "a"]);
        assert_eq!(loads.ranges_on(&node("a")), 2);
        loads.add_range(&node("new"));
        assert_eq!(order(&loads), ["b", "new", "a"]);
        assert_eq!(loads.least_loaded_first().count(), 3, "no stale entries");
    }
}
