//! Replica groups: for every replicated range, which copies a storage system
//! should keep in step and which one orders their writes.
//!
//! The framework moves ranges and never copies a write itself. A storage system
//! that replicates a range's writes between its copies (DESIGN.md §5,
//! "Replication config per keyspace (R1 default; R3 supported)"; the KV example
//! at R3) needs two things only the controller can give it: one copy that takes
//! client writes and orders them (the primary), and an epoch that tells a newer
//! decision from an older one, because groups reach nodes by separate probes
//! that may cross. This module keeps one [`ReplicaGroup`] per range whose
//! replication target is above one, as the keyspace and roster say at the end
//! of each step, and hands each node the groups it belongs to with every probe
//! (`InfoRequest.groups`).
//!
//! The rules (what nodes rely on; the README's protocol notes say the same):
//! - Members: the roster address of every placement that holds the range or is
//!   loading it (Loading, Inactive or Active) on a node that is not lost; sorted,
//!   each once.
//! - Primary: a placement the controller records Active (its Activate was
//!   answered) on a node that is not lost. The previous primary stays while it is
//!   such a placement, so writes are not reordered for nothing; otherwise the
//!   Active placement with the smallest address; none while no placement is
//!   Active.
//! - Epoch: a range's group gets a new one whenever its primary or members change
//!   (and when first seen): [`ReplicaGroup::epoch_of`] this term and a count of
//!   this engine's decisions. A later leader has a higher term, so its epochs are
//!   higher than all of ours; within our term the count only grows. The count is
//!   volatile on purpose: nothing needs it after this term ends.
//! - A group change makes its members due for a probe at once, so a failover or
//!   a new member reaches them within a round trip, not at the next probe round.
//!
//! At R1 no group exists and probes carry none: the wire stays the reference's.

use std::collections::{BTreeSet, HashMap};

use ranger_proto::{NodeId, PlacementState, RangeId, RangeState, ReplicaGroup};
use tokio::time::Instant;

use super::Engine;
use crate::keyspace::Range;

/// The groups decided so far in this term, and which addresses they name.
#[derive(Debug, Default)]
pub(super) struct Groups {
    /// The latest group of each replicated range that has members.
    by_range: HashMap<RangeId, ReplicaGroup>,
    /// The ranges whose group lists each address: what a probe to that address
    /// carries, found without walking every group.
    by_member: HashMap<String, BTreeSet<RangeId>>,
    /// How many group decisions this engine made in its term: the low half of
    /// the next epoch. `None` once all 2^32 are used (see [`Groups::decide`]).
    decisions: Option<u32>,
    /// Whether running out of epochs was already reported.
    exhausted_reported: bool,
}

/// What a group changed to, for the engine to act on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// The same primary and members as before: nothing to tell anyone.
    Unchanged,
    /// A new group, with its new epoch.
    Changed(ReplicaGroup),
    /// The group should change but no epoch is left in this term: the old one
    /// stays (nodes keep a consistent, if stale, view; see [`Groups::decide`]).
    OutOfEpochs,
}

impl Groups {
    /// A table with no group, whose first decision gets count 0.
    pub(super) fn new() -> Self {
        Groups {
            decisions: Some(0),
            ..Groups::default()
        }
    }

    /// The group of `range`, if it is replicated and has members.
    pub(super) fn get(&self, range: RangeId) -> Option<&ReplicaGroup> {
        self.by_range.get(&range)
    }

    /// The groups that list `addr` as a member, in range order: what a probe
    /// to that address carries.
    pub(super) fn for_member(&self, addr: &str) -> Vec<ReplicaGroup> {
        self.by_member
            .get(addr)
            .into_iter()
            .flatten()
            .filter_map(|range| self.by_range.get(range).cloned())
            .collect()
    }

    /// Records `range`'s group as (`primary`, `members`) in controller term
    /// `term`, with a new epoch if that differs from what it was. `members`
    /// must be sorted and distinct, the primary among them.
    ///
    /// Epochs never repeat within a term: after 2^32 decisions (years of churn
    /// for a large cluster under one leader) no epoch is left, so the old group
    /// stays, loudly logged, until a new leader (a new term) takes over. A
    /// stale group is safe (its primary at worst is gone, and writes wait);
    /// two groups with one epoch would not be.
    pub(super) fn decide(
        &mut self,
        range: RangeId,
        term: u64,
        primary: Option<&str>,
        members: &[&str],
    ) -> Decision {
        if self
            .by_range
            .get(&range)
            .is_some_and(|current| names(current, primary, members.iter().copied()))
        {
            return Decision::Unchanged;
        }
        let Some(count) = self.decisions else {
            if !self.exhausted_reported {
                self.exhausted_reported = true;
                tracing::error!(
                    term,
                    "no replica group epoch left in this controller term: groups stay as they are until a new leader takes over"
                );
            }
            return Decision::OutOfEpochs;
        };
        self.decisions = count.checked_add(1);
        let group = ReplicaGroup {
            range,
            epoch: ReplicaGroup::epoch_of(term, count),
            primary: primary.map(str::to_owned),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        };
        self.forget(range);
        for member in &group.members {
            self.by_member
                .entry(member.clone())
                .or_default()
                .insert(range);
        }
        self.by_range.insert(range, group.clone());
        Decision::Changed(group)
    }

    /// The epoch the next decision in `term` would get: a probe built now
    /// carries every group whose epoch is below it.
    pub(super) fn next_epoch(&self, term: u64) -> u64 {
        ReplicaGroup::epoch_of(term, self.decisions.unwrap_or(u32::MAX))
    }

    /// Forgets `range`'s group (the range is gone, or nothing holds it).
    pub(super) fn forget(&mut self, range: RangeId) {
        let Some(old) = self.by_range.remove(&range) else {
            return;
        };
        for member in &old.members {
            if let Some(ranges) = self.by_member.get_mut(member) {
                ranges.remove(&range);
                if ranges.is_empty() {
                    self.by_member.remove(member);
                }
            }
        }
    }

    #[cfg(test)]
    fn set_decisions(&mut self, decisions: Option<u32>) {
        self.decisions = decisions;
    }
}

/// What a range's group should become.
enum Wanted {
    /// What it is (none, or the one it has).
    Same,
    /// None: the range is gone, Obsolete after a split or join, or no copy is
    /// left to list.
    Nothing,
    /// This group (a new epoch is due), with the nodes of its members.
    Group {
        primary: Option<String>,
        members: Vec<String>,
        nodes: Vec<NodeId>,
    },
}

/// Whether `group` already names `primary` and exactly `members`, in order:
/// then nothing changed and no epoch is spent.
fn names<'a>(
    group: &ReplicaGroup,
    primary: Option<&str>,
    members: impl Iterator<Item = &'a str>,
) -> bool {
    group.primary.as_deref() == primary && group.members.iter().map(String::as_str).eq(members)
}

/// One copy of a range as a group sees it.
struct Replica<'a> {
    addr: &'a str,
    node: &'a NodeId,
    active: bool,
}

impl Engine {
    /// Whether ranges get replica groups: only when more than one active copy
    /// is wanted.
    fn replicated(&self) -> bool {
        self.config.replication.target > 1
    }

    /// Whether placement `p` of `range` may be told to activate as far as
    /// replication is concerned: at R1 always; at R3 only once a probe of its
    /// node that carried the range's current group has answered. The group
    /// (which lists `p`: a loading or prepared copy is a member) is how the
    /// node learns that the range is replicated; a copy activated before it
    /// knew would take client writes as if it were the only one, and those
    /// would be on it alone.
    pub(super) fn group_reached(&self, range: RangeId, p: &crate::keyspace::Placement) -> bool {
        if !self.replicated() {
            return true;
        }
        let Some(addr) = self.roster.get(p.node()).map(|n| n.addr.as_str()) else {
            return false;
        };
        let Some(group) = self.groups.get(range) else {
            return false;
        };
        let listed = group.members.iter().any(|m| m == addr);
        let delivered = self
            .groups_delivered
            .get(p.node())
            .is_some_and(|below| group.epoch < *below);
        listed && delivered
    }

    /// The replica group of `range`, if it has one (only at a replication
    /// target above one, and while some copy holds or loads it).
    pub fn replica_group(&self, range: RangeId) -> Option<&ReplicaGroup> {
        self.groups.get(range)
    }

    /// Brings the groups of `ranges` up to date with the keyspace and roster,
    /// at the end of a step: the ranges the step looked at (what changed, what
    /// operations touch, the background sweep's chunk), so a group follows its
    /// range as reconciliation does, and every group is re-checked within one
    /// sweep of the tiling. Members of a changed group are probed soon.
    pub(super) fn refresh_groups(&mut self, ranges: &[RangeId], now: Instant) {
        if !self.replicated() {
            return;
        }
        for range in ranges {
            self.refresh_group(*range, now);
        }
    }

    /// Decides one range's group from its placements now.
    fn refresh_group(&mut self, id: RangeId, now: Instant) {
        let (primary, members, nodes) = match self.wanted_group(id, now) {
            Wanted::Same => return,
            Wanted::Nothing => {
                self.groups.forget(id);
                return;
            }
            Wanted::Group {
                primary,
                members,
                nodes,
            } => (primary, members, nodes),
        };
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        let term = self.keyspace.term();
        match self.groups.decide(id, term, primary.as_deref(), &members) {
            Decision::Changed(group) => {
                tracing::debug!(range = %id, epoch = group.epoch, primary = ?group.primary, members = ?group.members, "replica group changed");
                for node in nodes {
                    self.probe_soon(node);
                }
            }
            Decision::Unchanged | Decision::OutOfEpochs => {}
        }
    }

    /// The group `id` should have now. Only a change allocates: most ranges,
    /// most steps, stay as they were.
    fn wanted_group(&self, id: RangeId, now: Instant) -> Wanted {
        let copies = match self.keyspace.range(id) {
            Ok(range) if range.state() != RangeState::Obsolete => self.copies(range, now),
            _ => Vec::new(),
        };
        let current = self.groups.get(id);
        if copies.is_empty() {
            return if current.is_some() {
                Wanted::Nothing
            } else {
                Wanted::Same
            };
        }
        let kept = current
            .and_then(|g| g.primary.as_deref())
            .filter(|p| copies.iter().any(|c| c.active && c.addr == *p));
        let primary = kept.or_else(|| copies.iter().filter(|c| c.active).map(|c| c.addr).min());
        if current.is_some_and(|g| names(g, primary, copies.iter().map(|c| c.addr))) {
            return Wanted::Same;
        }
        Wanted::Group {
            primary: primary.map(str::to_owned),
            members: copies.iter().map(|c| c.addr.to_owned()).collect(),
            nodes: copies.iter().map(|c| c.node.clone()).collect(),
        }
    }

    /// The copies of `range` a group lists, by address (sorted, each once): its
    /// placements that hold the range or load it, on nodes that are not lost
    /// and whose address the roster knows.
    fn copies<'a>(&'a self, range: &'a Range, now: Instant) -> Vec<Replica<'a>> {
        let mut copies: Vec<Replica<'a>> = range
            .placements()
            .iter()
            .filter(|p| {
                matches!(
                    p.state(),
                    PlacementState::Loading | PlacementState::Inactive | PlacementState::Active
                )
            })
            .filter(|p| !self.node_lost(p.node(), now))
            .filter_map(|p| {
                let status = self.roster.get(p.node())?;
                Some(Replica {
                    addr: status.addr.as_str(),
                    node: p.node(),
                    active: p.state() == PlacementState::Active,
                })
            })
            .collect();
        // Two placements at one address (a copy retiring where another is
        // loading): one member, Active if either is.
        copies.sort_by(|a, b| a.addr.cmp(b.addr).then(b.active.cmp(&a.active)));
        copies.dedup_by(|later, kept| later.addr == kept.addr);
        copies
    }
}

#[cfg(test)]
mod tests {
    // Tests fail by panicking: unwrapping is the point.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn range(n: u64) -> RangeId {
        RangeId::new(n).unwrap()
    }

    fn changed(decision: Decision) -> ReplicaGroup {
        match decision {
            Decision::Changed(group) => group,
            other => panic!("expected a new group, got {other:?}"),
        }
    }

    #[test]
    fn a_new_group_gets_the_next_epoch_of_the_term_and_an_unchanged_one_keeps_its_own() {
        let mut groups = Groups::new();
        let first = changed(groups.decide(range(1), 7, Some("a"), &["a", "b"]));
        assert_eq!(first.epoch, ReplicaGroup::epoch_of(7, 0));
        assert_eq!(
            groups.decide(range(1), 7, Some("a"), &["a", "b"]),
            Decision::Unchanged
        );
        let other = changed(groups.decide(range(2), 7, None, &["b"]));
        assert_eq!(other.epoch, ReplicaGroup::epoch_of(7, 1));
        let second = changed(groups.decide(range(1), 7, Some("b"), &["a", "b"]));
        assert_eq!(second.epoch, ReplicaGroup::epoch_of(7, 2));
        assert!(second.epoch > first.epoch);
    }

    #[test]
    fn a_member_is_given_exactly_the_groups_that_list_it() {
        let mut groups = Groups::new();
        groups.decide(range(1), 1, Some("a"), &["a", "b"]);
        groups.decide(range(2), 1, None, &["b", "c"]);
        let ranges_of = |g: &Groups, addr: &str| -> Vec<u64> {
            g.for_member(addr).iter().map(|g| g.range.get()).collect()
        };
        assert_eq!(ranges_of(&groups, "a"), [1]);
        assert_eq!(ranges_of(&groups, "b"), [1, 2]);
        // a leaves range 1's group; range 2 is forgotten.
        groups.decide(range(1), 1, Some("b"), &["b"]);
        groups.forget(range(2));
        assert!(ranges_of(&groups, "a").is_empty());
        assert_eq!(ranges_of(&groups, "b"), [1]);
        assert!(ranges_of(&groups, "c").is_empty());
        assert!(
            !groups.by_member.contains_key("c"),
            "no empty index entries"
        );
    }

    #[test]
    fn out_of_epochs_the_old_group_stays_rather_than_reuse_an_epoch() {
        let mut groups = Groups::new();
        groups.set_decisions(Some(u32::MAX));
        let last = changed(groups.decide(range(1), 3, Some("a"), &["a"]));
        assert_eq!(last.epoch, ReplicaGroup::epoch_of(3, u32::MAX));
        assert_eq!(
            groups.decide(range(1), 3, Some("b"), &["a", "b"]),
            Decision::OutOfEpochs
        );
        assert_eq!(groups.get(range(1)), Some(&last));
    }
}
