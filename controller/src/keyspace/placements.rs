//! Placement operations: adding placements, moving them through the placement
//! state machine, retiring and removing them.

use ranger_proto::{NodeId, PlacementState, RangeId, RangeState};

use super::{
    Keyspace, KeyspaceError, Placement, PlacementId, Result, placement_transition_allowed,
};

impl Keyspace {
    /// Adds a Pending placement of `range` on `node`. `replaces` names the placement
    /// of the same range that this one is to replace (the source of a move). A node
    /// holds at most one live placement of a range, because nodes know ranges by id.
    pub fn add_placement(
        &mut self,
        range: RangeId,
        node: NodeId,
        replaces: Option<PlacementId>,
    ) -> Result<PlacementId> {
        let r = self.range(range)?;
        if r.state == RangeState::Obsolete {
            return Err(KeyspaceError::RangeObsolete(range));
        }
        if let Some(existing) = r.placements.iter().find(|p| p.is_live() && p.node == node) {
            return Err(KeyspaceError::NodeAlreadyPlaced {
                range,
                node,
                placement: existing.id,
            });
        }
        if let Some(replaces) = replaces
            && !r.placement(replaces).is_some_and(Placement::is_live)
        {
            return Err(KeyspaceError::BadReplaces { range, replaces });
        }
        let id = PlacementId::new(self.next_placement_id);
        let next = self
            .next_placement_id
            .checked_add(1)
            .ok_or(KeyspaceError::IdsExhausted("placement"))?;
        tracing::debug!(%range, placement = %id, %node, ?replaces, "placement added");
        self.live_by_node.placed(&node, range);
        self.range_mut(range)?.placements.push(Placement {
            id,
            node,
            state: PlacementState::Pending,
            replaces,
            retiring: false,
            activate_sent: false,
            served: false,
        });
        self.next_placement_id = next;
        *self.transitions.entry(PlacementState::Pending).or_default() += 1;
        self.touched(&[range]);
        Ok(id)
    }

    /// Moves a placement to `state`, if the placement state machine allows it
    /// ([`placement_transition_allowed`]). Setting the state it already has is a
    /// no-op, so level-triggered loops may repeat themselves.
    ///
    /// The first Active placement of a range marks it `ever_activated`; when that
    /// completes the children of a split or join, they take over the tiling.
    pub fn set_placement_state(
        &mut self,
        range: RangeId,
        placement: PlacementId,
        state: PlacementState,
    ) -> Result<()> {
        let r = self.range_mut(range)?;
        let p = r
            .placement_mut(placement)
            .ok_or(KeyspaceError::UnknownPlacement { range, placement })?;
        let from = p.state;
        if from == state {
            return Ok(());
        }
        if !placement_transition_allowed(from, state) {
            return Err(KeyspaceError::InvalidTransition {
                range,
                placement,
                from,
                to: state,
            });
        }
        let was_live = p.is_live();
        p.state = state;
        p.served |= state == PlacementState::Active;
        // The node of a placement that just stopped being live, for the index.
        let unplaced = (was_live && !p.is_live()).then(|| p.node.clone());
        tracing::debug!(%range, %placement, %from, to = %state, "placement state");
        let first_activation = state == PlacementState::Active && !r.ever_activated;
        r.ever_activated |= state == PlacementState::Active;
        let parents = if first_activation {
            r.parents.clone()
        } else {
            Vec::new()
        };
        if let Some(node) = unplaced {
            self.live_by_node.unplaced(&node, range);
        }
        if parents.is_empty() {
            self.touched(&[range]);
        } else {
            let mut affected = parents.clone();
            for parent in &parents {
                if let Some(p) = self.ranges.get(parent) {
                    affected.extend(p.children.iter().copied());
                }
            }
            self.reindex(&affected);
            self.touched(&affected);
        }
        *self.transitions.entry(state).or_default() += 1;
        Ok(())
    }

    /// Marks a live placement as one the orchestrator wants deactivated and dropped.
    pub fn set_retiring(
        &mut self,
        range: RangeId,
        placement: PlacementId,
        retiring: bool,
    ) -> Result<()> {
        let p = self
            .range_mut(range)?
            .placement_mut(placement)
            .ok_or(KeyspaceError::UnknownPlacement { range, placement })?;
        if !p.is_live() {
            return Err(KeyspaceError::PlacementDropped { range, placement });
        }
        if p.retiring != retiring {
            p.retiring = retiring;
            self.touched(&[range]);
        }
        Ok(())
    }

    /// Records that an Activate is about to be sent for a placement: from now on
    /// it may serve, so it owns the range until proven not serving. Set before
    /// the command is sent, so that it is persisted first.
    pub fn mark_activate_sent(&mut self, range: RangeId, placement: PlacementId) -> Result<()> {
        let p = self
            .range_mut(range)?
            .placement_mut(placement)
            .ok_or(KeyspaceError::UnknownPlacement { range, placement })?;
        if !p.is_live() {
            return Err(KeyspaceError::PlacementDropped { range, placement });
        }
        if !p.activate_sent {
            p.activate_sent = true;
            self.touched(&[range]);
        }
        Ok(())
    }

    /// Forgets a Dropped placement. A placement that replaced it no longer replaces
    /// anything: its move is over.
    pub fn remove_placement(&mut self, range: RangeId, placement: PlacementId) -> Result<()> {
        let r = self.range_mut(range)?;
        let position = r
            .placements
            .iter()
            .position(|p| p.id == placement)
            .ok_or(KeyspaceError::UnknownPlacement { range, placement })?;
        let state = r.placements[position].state;
        if state != PlacementState::Dropped {
            return Err(KeyspaceError::PlacementNotDropped {
                range,
                placement,
                state,
            });
        }
        r.placements.remove(position);
        for p in &mut r.placements {
            if p.replaces == Some(placement) {
                p.replaces = None;
            }
        }
        tracing::debug!(%range, %placement, "placement removed");
        self.touched(&[range]);
        Ok(())
    }
}
