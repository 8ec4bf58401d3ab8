//! Where a new placement goes: whether a range needs one, which node takes it
//! (least loaded, eligible, honouring an operator's hint), and the per-node
//! counts that choice reads. The balancer will plan on top of this.

use ranger_proto::{NodeId, PlacementState, RangeId, RangeState};
use tokio::time::Instant;

use super::Engine;
use super::node_loads::NodeLoads;
use super::types::{OpRequest, Progress};
use crate::keyspace::Range;
use crate::roster::NodeStatus;

impl Engine {
    /// Adds a placement if the range has fewer than it should.
    pub(super) fn place_if_needed(
        &mut self,
        id: RangeId,
        now: Instant,
        load: &mut Option<NodeLoads>,
    ) {
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        if range.state() != RangeState::Active || self.child_rolling_back(range) {
            return;
        }
        let in_play = self.keyspace.is_current(id)
            || range.parents().iter().any(|p| self.subsuming.contains(p));
        if !in_play {
            return;
        }
        if range
            .placements()
            .iter()
            .any(|p| p.state() == PlacementState::Missing)
        {
            // A lost copy is waited for (see `waits_for_lost_copy`); placing an
            // empty one now would serve a range without its data.
            return;
        }
        let useful = range
            .placements()
            .iter()
            .filter(|p| {
                p.is_live()
                    && !p.retiring()
                    && !matches!(p.state(), PlacementState::GiveUp | PlacementState::Missing)
            })
            .count();
        let live = range.placements().iter().filter(|p| p.is_live()).count();
        let replication = self.config.replication;
        if useful >= replication.target || live >= replication.max_placements {
            return;
        }
        let hint = self.placement_hint(id);
        let load = load.get_or_insert_with(|| self.node_loads());
        let Ok(range) = self.keyspace.range(id) else {
            return;
        };
        let Some(node) = self.choose_node(range, hint.as_ref(), &[], now, load) else {
            let why = format!("{id} is unplaced: no eligible node");
            if self.notes.get(&id) != Some(&why) {
                self.emit(id, why.clone());
            }
            self.notes.insert(id, why);
            return;
        };
        match self.keyspace.add_placement(id, node.clone(), None) {
            Ok(placement) => {
                self.roster.forget_range(&node, id);
                load.add_range(&node);
                self.emit(id, format!("{placement} on {node}: placed (Pending)"));
            }
            Err(e) => tracing::error!(range = %id, error = %e, "could not add placement"),
        }
    }

    /// The node an operator asked for, for a child of a split or join.
    pub(super) fn placement_hint(&self, child: RangeId) -> Option<NodeId> {
        self.ops
            .values()
            .find_map(|op| match (&op.request, &op.progress) {
                (OpRequest::Split { left, right, .. }, Progress::Split { left: l, right: r }) => {
                    if *l == child {
                        left.clone()
                    } else if *r == child {
                        right.clone()
                    } else {
                        None
                    }
                }
                (OpRequest::Join { node, .. }, Progress::Join { child: c }) if *c == child => {
                    node.clone()
                }
                _ => None,
            })
    }

    /// The least loaded eligible node for a new placement of `range`: registered,
    /// answering, not draining, not excluded for this range, not already holding it.
    ///
    /// Runs once per placement, so re-placing the ranges of a lost node is
    /// this times their count. It walks the nodes least loaded first (see
    /// `node_loads.rs`) and stops at the first eligible one, which is
    /// usually the first: a lookup of the node and a few comparisons (the
    /// range's exclusions, usually none, are collected once).
    pub(super) fn choose_node(
        &self,
        range: &Range,
        hint: Option<&NodeId>,
        avoid: &[NodeId],
        now: Instant,
        load: &NodeLoads,
    ) -> Option<NodeId> {
        let loss_after = self.config.node_loss_after();
        // Usually none: looked up once rather than per node.
        let excluded: Vec<&NodeId> = self.exclusions.of(range.id()).collect();
        let eligible = |n: &NodeStatus| -> bool {
            n.registered
                && n.last_ok.is_some()
                && !n.draining()
                && !n.is_lost(now, loss_after)
                && !avoid.contains(&n.id)
                && !excluded.contains(&&n.id)
                && !range
                    .placements()
                    .iter()
                    .any(|p| p.is_live() && p.node() == &n.id)
        };
        if let Some(hint) = hint
            && self.roster.get(hint).is_some_and(eligible)
        {
            return Some(hint.clone());
        }
        // The first eligible node in preference order: the least loaded one.
        load.least_loaded_first()
            .filter_map(|id| self.roster.get(id))
            .find(|n| eligible(n))
            .map(|n| n.id.clone())
    }

    /// Every node's load as placement weighs it: how many ranges it holds
    /// a live copy of, then the bytes it reported (every roster node listed,
    /// with 0 if it holds none). The counts come from the keyspace's index by
    /// node, so this costs one entry per node, not a walk of every range: a
    /// step that places copies builds it once, and each move again.
    pub(super) fn node_loads(&self) -> NodeLoads {
        let known = self.roster.nodes().map(|node| {
            let ranges = self.keyspace.live_on(&node.id).map_or(0, |r| r.len());
            (node.id.clone(), ranges, node.reported_bytes())
        });
        // Copies on nodes the roster no longer knows still count for
        // choosing which copy a move takes away.
        let unknown = self
            .keyspace
            .live_counts()
            .filter(|(node, _)| self.roster.get(node).is_none())
            .map(|(node, ranges)| (node.clone(), ranges, 0));
        NodeLoads::new(known.chain(unknown))
    }
}
