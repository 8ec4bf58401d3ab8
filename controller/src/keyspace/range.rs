//! A range of the keyspace and its placements, as the controller wants them.
//!
//! These types are read-only outside the keyspace: every mutation goes through
//! [`super::Keyspace`], which checks the state machines and the invariants that
//! span several ranges (cover, parent/child links, unique placement ids).

use std::fmt;

use ranger_proto::{NodeId, PlacementState, RangeId, RangeMeta, RangeState};
use serde::{Deserialize, Serialize};

/// The id of a placement. Unique across the whole keyspace and never reused, so a
/// late answer about an old placement can never be mistaken for a newer one of the
/// same range on the same node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlacementId(u64);

impl PlacementId {
    pub const fn new(id: u64) -> Self {
        PlacementId(id)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PlacementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

impl fmt::Debug for PlacementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An instance of a range on a node, as the controller wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub(super) id: PlacementId,
    pub(super) node: NodeId,
    pub(super) state: PlacementState,
    /// Set on the destination of a move: the placement of the same range it replaces.
    /// Cleared when that placement is removed, because the move is then over.
    pub(super) replaces: Option<PlacementId>,
    /// The orchestrator wants this placement deactivated and dropped (a move source,
    /// a surplus replica). Durable so that a restarted controller carries on.
    pub(super) retiring: bool,
    /// An Activate was sent for this placement. From then on its node may be
    /// serving (the answer can be late, lost, or say Activating), so it owns the
    /// range until proven otherwise and the operation only rolls forward
    /// (SCENARIOS.md #37). Durable, and persisted before the Activate is sent
    /// (invariant 4), so a restarted controller knows it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) activate_sent: bool,
    /// The controller has seen this placement Active: it accepted writes, so its
    /// data is the newest and nothing may be restored from an older copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) served: bool,
}

impl Placement {
    /// A settled placement: Active, its activation sent and seen, replacing
    /// nothing. What every placement of a steady keyspace looks like; for
    /// building large keyspaces in benchmarks and tests without replaying the
    /// operations that would have made them.
    pub fn settled(id: PlacementId, node: NodeId) -> Self {
        Placement {
            id,
            node,
            state: PlacementState::Active,
            replaces: None,
            retiring: false,
            activate_sent: true,
            served: true,
        }
    }
}

impl Placement {
    pub fn id(&self) -> PlacementId {
        self.id
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn state(&self) -> PlacementState {
        self.state
    }

    pub fn replaces(&self) -> Option<PlacementId> {
        self.replaces
    }

    pub fn retiring(&self) -> bool {
        self.retiring
    }

    /// Whether an Activate was ever sent for this placement (see the field).
    pub fn activate_sent(&self) -> bool {
        self.activate_sent
    }

    /// Whether the controller ever saw this placement Active.
    pub fn served(&self) -> bool {
        self.served
    }

    /// Whether the placement may still hold data on its node (anything but Dropped).
    pub fn is_live(&self) -> bool {
        self.state != PlacementState::Dropped
    }
}

/// Whether the controller may move a placement from `from` to `to` (DESIGN.md 3.2).
///
/// Active never goes straight to Dropped: a serving placement is deactivated first,
/// so that a drop can never remove the only writer. Missing covers every way a
/// node can lose a placement; it leads to Dropped, or back to Inactive when the
/// node returns with its copy (a lost node's data is waited for at R1,
/// SCENARIOS.md #31).
pub fn placement_transition_allowed(from: PlacementState, to: PlacementState) -> bool {
    use PlacementState::*;
    matches!(
        (from, to),
        (Pending, Loading | Inactive | Dropped | Missing | GiveUp)
            | (Loading, Inactive | GiveUp | Missing | Dropped)
            | (Inactive, Active | Dropped | Missing)
            | (Active, Inactive | Missing)
            | (GiveUp, Dropped)
            | (Missing, Dropped | Inactive)
    )
}

/// When the events the balancer's cooldowns count happened to a range, in
/// wall-clock milliseconds since the Unix epoch.
///
/// Kept with the range and persisted with it (record version 3), so that a
/// controller that takes over after a failover still knows that a range moved
/// a minute ago (no A→B→A, no move within the cooldown) or was just split (no
/// join within the cooldown): in the leader's memory alone, a failover forgot
/// them. Wall-clock rather than monotonic time, because the next leader is
/// another process, maybe on another machine; the cooldowns are minutes, far
/// above the skew of synchronised clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeHistory {
    /// When the split that created this range ended.
    pub split: Option<u64>,
    /// When a placement of this range (or of a range it came from: the children
    /// of a range that just moved are as recently moved as their parent) last
    /// moved.
    pub moved: Option<u64>,
    /// When the join that created this range ended.
    pub joined: Option<u64>,
}

impl RangeHistory {
    pub fn is_empty(&self) -> bool {
        *self == RangeHistory::default()
    }
}

/// A range of the keyspace with its history links and placements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub(super) meta: RangeMeta,
    pub(super) state: RangeState,
    /// The ranges this one replaces (one for a split child, two for a join child).
    pub(super) parents: Vec<RangeId>,
    /// The ranges replacing this one (two for a split, one for a join). Empty while
    /// the range is Active: a rolled-back split or join removes them again.
    pub(super) children: Vec<RangeId>,
    pub(super) placements: Vec<Placement>,
    /// Whether any placement of this range has ever been Active. Once it has, the
    /// range may have accepted writes, so the split or join that created it can no
    /// longer be rolled back without losing them.
    pub(super) ever_activated: bool,
    /// When it last split, moved or joined, for the balancer's cooldowns.
    pub(super) history: RangeHistory,
    /// Whether the key index lists this range (it is in the current tiling):
    /// set wherever the index changes, so that a walk that needs no key order
    /// reads the ranges where they lie instead of looking each one up from the
    /// index (see [`super::Keyspace::current_ranges_unordered`]).
    pub(super) current: bool,
}

impl Range {
    pub fn id(&self) -> RangeId {
        self.meta.id()
    }

    pub fn meta(&self) -> &RangeMeta {
        &self.meta
    }

    pub fn state(&self) -> RangeState {
        self.state
    }

    pub fn parents(&self) -> &[RangeId] {
        &self.parents
    }

    pub fn children(&self) -> &[RangeId] {
        &self.children
    }

    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    pub fn placement(&self, id: PlacementId) -> Option<&Placement> {
        self.placements.iter().find(|p| p.id == id)
    }

    pub fn ever_activated(&self) -> bool {
        self.ever_activated
    }

    pub fn history(&self) -> RangeHistory {
        self.history
    }

    /// The first placement that may still hold data, if any.
    pub fn first_live_placement(&self) -> Option<&Placement> {
        self.placements.iter().find(|p| p.is_live())
    }

    pub(super) fn placement_mut(&mut self, id: PlacementId) -> Option<&mut Placement> {
        self.placements.iter_mut().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PlacementState::*;

    const ALL: [PlacementState; 7] = [Pending, Loading, Inactive, Active, GiveUp, Missing, Dropped];

    #[test]
    fn transition_table_matches_the_design() {
        let allowed = [
            (Pending, Loading),
            (Pending, Inactive),
            (Pending, Dropped),
            (Pending, Missing),
            (Pending, GiveUp),
            (Loading, Inactive),
            (Loading, GiveUp),
            (Loading, Missing),
            (Loading, Dropped),
            (Inactive, Active),
            (Inactive, Dropped),
            (Inactive, Missing),
            (Active, Inactive),
            (Active, Missing),
            (GiveUp, Dropped),
            (Missing, Dropped),
            (Missing, Inactive),
        ];
        for from in ALL {
            for to in ALL {
                assert_eq!(
                    placement_transition_allowed(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn dropped_is_terminal_and_active_cannot_drop() {
        assert!(
            ALL.iter()
                .all(|to| !placement_transition_allowed(Dropped, *to))
        );
        assert!(!placement_transition_allowed(Active, Dropped));
    }

    #[test]
    fn placement_id_displays_and_serialises_as_a_number() {
        let id = PlacementId::new(42);
        assert_eq!(id.to_string(), "P42");
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
    }
}
