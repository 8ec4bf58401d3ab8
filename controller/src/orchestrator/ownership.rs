//! Who owns a range's newest data, and what the controller may do about a copy
//! it cannot see.
//!
//! Two rules live here (DESIGN.md §6, SCENARIOS.md #31 and #37):
//! - Once an Activate has been *sent* to a placement, that placement may be
//!   serving: its answer can be late, lost, or say Activating. It owns the range
//!   until it is proven not serving (the node answered that its activate callback
//!   failed), so nothing may roll back to an older copy.
//! - A lost node's copy that is the only newest one is waited for, not replaced by
//!   an empty range: at R1 the range is Unavailable (shown loudly, with the
//!   reason and since when) until the node returns with its data, or until an
//!   operator forgets the node and accepts the loss.

use ranger_proto::{NodeId, PlacementState, RangeId, RangeState};
use tokio::time::Instant;

use super::Engine;
use super::types::{Answer, OpError};
use crate::keyspace::{Placement, PlacementId};

/// A range that waits for a lost node: nothing serves it meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// Why, in words an operator can act on (which node, what to do).
    pub reason: String,
    /// Since when (the controller's clock).
    pub since: Instant,
}

/// What forgetting a lost node cost: the ranges whose only newest copy was on it
/// and that are re-created empty elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetReport {
    pub node: NodeId,
    /// Ranges that lose every write their copy on the node held.
    pub ranges_lost: Vec<RangeId>,
}

impl Engine {
    /// Whether the placement may have accepted writes: the controller saw it
    /// Active, or sent it an Activate and cannot prove none took effect. The
    /// proof: every Activate answered, each with a rollback (a refusal answers
    /// for that one attempt only, so one lost or Activating answer spoils it).
    pub(super) fn may_have_served(&self, p: &Placement) -> bool {
        p.served()
            || (p.activate_sent()
                && (self.activation_may_have_taken.contains(&p.id())
                    || !self.activation_refused.contains(&p.id())))
    }

    /// What an Activate's answer proves about its placement: a rollback the
    /// node reports (or "unknown range") proves that attempt did not take; an
    /// Active answer, or none at all (it may have been delivered), means it may
    /// have. Activating proves nothing yet: a range serves only once Active, and
    /// the repeated Activate answers how it ended.
    pub(super) fn note_activate_answer(&mut self, placement: PlacementId, answer: &Answer) {
        use ranger_proto::RemoteState::{Activating, Inactive, NotFound};
        match answer {
            Ok(outcome)
                if outcome.failure.is_some() && matches!(outcome.state, Inactive | NotFound) =>
            {
                self.activation_refused.insert(placement);
            }
            Ok(outcome) if outcome.state == Activating => {}
            Ok(_) => {
                self.activation_may_have_taken.insert(placement);
            }
            // No error proves the node never activated: INVALID_ARGUMENT may
            // mean "unknown range" or (a reference rangelet) "wrong state".
            Err(_) => {
                self.activation_may_have_taken.insert(placement);
            }
        }
    }

    /// Whether a placement on a lost node holds the range's only newest copy, so
    /// the range must wait for the node rather than be placed again empty.
    ///
    /// A copy is waited for unless the operator forgot its node, it is retiring
    /// (its data lives on elsewhere), it never held served data (a destination
    /// or child that was never told to activate: its source still has it), or a
    /// survivor of the same range serves on a reachable node (R3).
    ///
    /// Nor is a copy of a split's or join's parent once every child has
    /// served: the children hold the data now. Such a split or join only goes
    /// forward (SCENARIOS.md #37), so the parents never need it again; they
    /// stay only for child copies still activating (`child_copy_activating`).
    /// One of those that cannot read from a lost parent fails its activation
    /// and is replaced from the children if its node proves it refused, or is
    /// retried if it may have served. (A frozen parent's copies are all
    /// Inactive, so none would count as a survivor.)
    pub(super) fn waits_for_lost_copy(&self, range: RangeId, p: &Placement, now: Instant) -> bool {
        if self.forgotten.contains(p.node()) || p.retiring() {
            return false;
        }
        let Ok(r) = self.keyspace.range(range) else {
            return false;
        };
        if r.state() == RangeState::Obsolete
            || (r.state() == RangeState::Subsuming && self.children_all_activated(r))
        {
            return false;
        }
        let holds_served_data = self.may_have_served(p)
            || (r.ever_activated()
                && p.replaces().is_none()
                && matches!(
                    p.state(),
                    PlacementState::Inactive | PlacementState::Active | PlacementState::Missing
                ));
        if !holds_served_data {
            return false;
        }
        let survivor = r.placements().iter().any(|other| {
            other.id() != p.id()
                && other.is_live()
                && !other.retiring()
                && other.state() == PlacementState::Active
                && !self.node_lost(other.node(), now)
        });
        !survivor
    }

    /// Marks a range unavailable (once, loudly) or clears the mark.
    pub(super) fn set_unavailable(&mut self, range: RangeId, why: Option<String>, now: Instant) {
        match why {
            Some(reason) => {
                if self.unavailable.contains_key(&range) {
                    return;
                }
                tracing::error!(%range, %reason, "range unavailable");
                self.emit(range, format!("{range} UNAVAILABLE: {reason}"));
                self.notes.insert(range, reason.clone());
                self.unavailable
                    .insert(range, Unavailable { reason, since: now });
            }
            None => {
                if self.unavailable.remove(&range).is_some() {
                    tracing::info!(%range, "range available again");
                    self.emit(range, format!("{range} available again"));
                }
            }
        }
    }

    /// A range no longer waits once no lost copy remains (the node returned and
    /// its copy is Inactive again, or it was forgotten and dropped).
    pub(super) fn clear_unavailable_if_no_longer_waiting(&mut self, range: RangeId, now: Instant) {
        if !self.unavailable.contains_key(&range) {
            return;
        }
        let waiting = self.keyspace.range(range).is_ok_and(|r| {
            r.placements()
                .iter()
                .any(|p| p.state() == PlacementState::Missing)
        });
        if !waiting {
            self.set_unavailable(range, None, now);
        }
    }

    /// Why the node counts as lost, for messages: how long ago it was last
    /// granted a lease, or that discovery no longer lists it.
    pub(super) fn loss_reason(&self, node: &NodeId, now: Instant) -> String {
        match self.roster.get(node) {
            Some(status) => match status.lease_sent_at {
                Some(at) => format!(
                    "no lease granted for {:.1} s",
                    now.saturating_duration_since(at).as_secs_f64()
                ),
                None => "never granted a lease by this controller".to_owned(),
            },
            None => "it left discovery and its lease has lapsed".to_owned(),
        }
    }

    /// Refuses an operation on a range that waits for a lost copy: moving,
    /// splitting or joining it would copy from what is left, which is older
    /// than the lost copy, or from nothing.
    pub(super) fn check_available(&self, range: RangeId) -> Result<(), OpError> {
        let waiting = self.keyspace.range(range).is_ok_and(|r| {
            r.placements()
                .iter()
                .any(|p| p.state() == PlacementState::Missing)
        });
        if !waiting {
            return Ok(());
        }
        let why = self
            .unavailable
            .get(&range)
            .map_or("a copy of it is missing", |u| u.reason.as_str());
        Err(OpError::FailedPrecondition(format!(
            "range {range} is unavailable: {why}"
        )))
    }

    /// Why a range is unavailable, if it is (see [`Unavailable`]).
    pub fn unavailable(&self, range: RangeId) -> Option<&Unavailable> {
        self.unavailable.get(&range)
    }

    /// Every unavailable range, for listings.
    pub fn unavailable_ranges(&self) -> impl Iterator<Item = (&RangeId, &Unavailable)> {
        self.unavailable.iter()
    }

    /// An operator declares a lost node gone for good: the copies the controller
    /// was waiting for are dropped and their ranges placed again, empty. Refused
    /// for a node that is not lost (its copies may be serving).
    pub fn forget_node(&mut self, node: &NodeId, now: Instant) -> Result<ForgetReport, OpError> {
        let known = self.roster.get(node).is_some()
            || self
                .keyspace
                .ranges()
                .any(|r| r.placements().iter().any(|p| p.node() == node));
        if !known {
            return Err(OpError::UnknownNode(node.clone()));
        }
        if !self.node_lost(node, now) {
            return Err(OpError::FailedPrecondition(format!(
                "node {node} is not lost (its lease has not provably lapsed); forgetting it could drop data it serves"
            )));
        }
        let mut lost = Vec::new();
        let mut ids: Vec<RangeId> = self.unavailable.keys().copied().collect();
        ids.sort_unstable();
        for range in ids {
            let waits = self.keyspace.range(range).is_ok_and(|r| {
                r.placements()
                    .iter()
                    .any(|p| p.node() == node && p.state() == PlacementState::Missing)
            });
            if waits {
                lost.push(range);
            }
        }
        tracing::warn!(%node, ranges = lost.len(), "operator forgot node: its ranges are re-created empty");
        for range in &lost {
            self.emit(
                *range,
                format!("{range}: node {node} forgotten by the operator; re-created empty, its data is lost"),
            );
            self.dirty.insert(*range);
        }
        self.forgotten.insert(node.clone());
        self.full_sweep = true;
        Ok(ForgetReport {
            node: node.clone(),
            ranges_lost: lost,
        })
    }
}
