//! The keyspace: the controller's durable desired state of every range and placement.
//!
//! # The current tiling
//!
//! Ranges are never deleted: a split or join keeps its parents as history. The
//! *current* ranges are the ones responsible for the keys right now, and they tile
//! the keyspace (DESIGN.md invariant 2). A range is current when
//!
//! - it is not Obsolete,
//! - it has not *handed over* to its children, and
//! - every one of its parents has handed over to it.
//!
//! A range has handed over when it is Obsolete, or when it is Subsuming and every
//! one of its children has had an Active placement ([`Range::ever_activated`]).
//!
//! So during a split or join the parents stay current (they serve; the children are
//! being prepared), and the children become current at the moment the last of them
//! is first activated: that is also the moment after which the operation can no
//! longer be rolled back. The parents may then stay Subsuming for as long as their
//! drops take (SCENARIOS.md #21, #28) without hiding the children that serve.
//! [`Keyspace::finish_subsume`] hands over unconditionally (a split of a range that
//! was never placed has nothing to activate).
//!
//! The current ranges are indexed by start key, so [`Keyspace::range_for_key`] is
//! O(log n); every operation touches O(1) ranges, and none scans the keyspace, so
//! a million ranges are fine.
//!
//! # Persistence
//!
//! Each mutation records the ids of the ranges it changed; [`Keyspace::take_changes`]
//! hands their full records to a persister. Loading goes through
//! [`Keyspace::from_records`], which validates everything and names what is wrong.

mod by_node;
mod error;
mod invariants;
mod placements;
mod range;
mod record;
mod subsume;
mod table;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use ranger_proto::{NodeId, PlacementState, RangeId, RangeMeta, RangeState};

use crate::range_maps::RangeSet;
use by_node::LiveByNode;

pub use error::KeyspaceError;
use invariants::below_counter;
pub use range::{Placement, PlacementId, Range, RangeHistory, placement_transition_allowed};
pub use record::{
    ChangeSet, Counters, READABLE_RECORD_VERSIONS, RECORD_VERSION, RangeRecord, RecordError,
};
use table::RangeTable;

type Result<T, E = KeyspaceError> = std::result::Result<T, E>;

/// The desired state of the keyspace: every range (current and historical) with its
/// placements, and the id counters.
///
/// Every mutation either applies completely or returns a [`KeyspaceError`] and
/// changes nothing. In debug builds each mutation re-checks the invariants around
/// the ranges it touched, and panics if they broke, because that is a bug here.
#[derive(Debug, Clone)]
pub struct Keyspace {
    /// Every range, current and historical, by id (see the `table` module).
    ranges: RangeTable,
    /// The current tiling, by start key.
    index: BTreeMap<Vec<u8>, RangeId>,
    /// The ranges each node holds a live placement of (see the `by_node` module).
    live_by_node: LiveByNode,
    next_range_id: u64,
    next_placement_id: u64,
    /// The controller term last persisted or begun (see [`Counters::term`]).
    term: u64,
    /// Ranges changed since the last `take_changes`, in id order for the records.
    dirty: BTreeSet<RangeId>,
    /// How many times a placement entered each state since this keyspace was
    /// built (volatile; for metrics). Adding a placement enters Pending.
    transitions: BTreeMap<PlacementState, u64>,
}

impl Default for Keyspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyspace {
    /// A new keyspace: range 1 covers everything, Active, not placed yet. Range 1 is
    /// marked changed, so the first save persists it.
    pub fn new() -> Self {
        let first = Range {
            meta: RangeMeta::whole(RangeId::FIRST),
            state: RangeState::Active,
            parents: Vec::new(),
            children: Vec::new(),
            placements: Vec::new(),
            ever_activated: false,
            history: RangeHistory::default(),
            current: true,
        };
        let mut ranges = RangeTable::default();
        ranges.insert(first);
        let mut keyspace = Keyspace {
            ranges,
            index: BTreeMap::from([(Vec::new(), RangeId::FIRST)]),
            live_by_node: LiveByNode::default(),
            next_range_id: RangeId::FIRST.get() + 1,
            next_placement_id: 1,
            term: 0,
            dirty: BTreeSet::new(),
            transitions: BTreeMap::new(),
        };
        keyspace.touched(&[RangeId::FIRST]);
        keyspace
    }

    /// Rebuilds a keyspace from persisted records and validates all of it: bounds,
    /// counters, unique ids, parent/child links, placements, and full cover. The
    /// error names the first problem found (SCENARIOS.md #35), so a controller with
    /// a corrupt store refuses to start and says why.
    ///
    /// O(n) apart from sorting the current ranges by start key for the index
    /// (linear when they come in key order), so a million ranges load in about
    /// a second: the ranges are checked in id order, which is the order they
    /// lie in memory (see the `table` module), each check runs once, and the
    /// cover is walked along the index rather than searched for.
    pub fn from_records(counters: Counters, records: Vec<RangeRecord>) -> Result<Self> {
        let highest = records.iter().map(|r| r.id).max();
        if let Some(highest) = highest
            && !RangeTable::slots_for(records.len(), highest.get())
        {
            // Refused before the table allocates a slot for every id below it.
            below_counter("range", highest.get(), counters.next_range_id)?;
            return Err(KeyspaceError::Malformed {
                range: highest,
                detail: format!(
                    "range ids are far sparser than the store's {} records (ids are \
                     handed out densely, so the store is corrupt)",
                    records.len()
                ),
            });
        }
        // What a store written by this controller holds: ids 1 to n, in order.
        // Then the records become the table's slots in place, without a
        // second allocation of a million entries for them to move into.
        let ids_one_to_n = records
            .iter()
            .enumerate()
            .all(|(i, r)| r.id.get() == i as u64 + 1);
        let ranges = if ids_one_to_n {
            let slots = records
                .into_iter()
                .map(|record| range_from_record(record).map(Some))
                .collect::<Result<Vec<_>>>()?;
            RangeTable::from_slots(slots)
        } else {
            let mut ranges = RangeTable::with_highest_id(highest.map_or(0, RangeId::get));
            for record in records {
                let id = record.id;
                if ranges.insert(range_from_record(record)?).is_some() {
                    return Err(KeyspaceError::DuplicateRange(id));
                }
            }
            ranges
        };
        let mut keyspace = Keyspace {
            ranges,
            index: BTreeMap::new(),
            live_by_node: LiveByNode::default(),
            next_range_id: counters.next_range_id,
            next_placement_id: counters.next_placement_id,
            term: counters.term,
            dirty: BTreeSet::new(),
            transitions: BTreeMap::new(),
        };
        keyspace.live_by_node = keyspace.check_records_in_order()?;
        // The index is built from the ranges' states, so it matches them by
        // construction; what is left to check is that it tiles the keyspace.
        keyspace.build_index()?;
        keyspace.check_full_cover()?;
        tracing::info!(
            ranges = keyspace.ranges.len(),
            current = keyspace.index.len(),
            "keyspace loaded"
        );
        Ok(keyspace)
    }

    /// The id counters, as they would be persisted now.
    pub fn counters(&self) -> Counters {
        Counters {
            next_range_id: self.next_range_id,
            next_placement_id: self.next_placement_id,
            term: self.term,
        }
    }

    /// Begins a new controller term (one more than any persisted) and returns
    /// it. The caller must persist the counters before sending any command in
    /// that term, so that a later controller's term is always higher.
    pub fn begin_term(&mut self) -> u64 {
        self.term = self.term.saturating_add(1);
        self.term
    }

    /// The current controller term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The range with this id, current or historical.
    pub fn range(&self, id: RangeId) -> Result<&Range> {
        self.ranges.get(&id).ok_or(KeyspaceError::UnknownRange(id))
    }

    /// The ranges `node` holds a live placement of, if any: what a probe
    /// answer from the node is checked against (see the `by_node` module).
    pub fn live_on(&self, node: &NodeId) -> Option<&RangeSet> {
        self.live_by_node.on(node)
    }

    /// Each node that holds a live placement, with how many ranges it holds
    /// one of (a node holds at most one per range). Costs one entry per node.
    pub fn live_counts(&self) -> impl Iterator<Item = (&NodeId, usize)> {
        self.live_by_node
            .iter()
            .map(|(node, ranges)| (node, ranges.len()))
    }

    /// Whether `node` holds a live placement of `range`.
    pub fn is_live_on(&self, range: RangeId, node: &NodeId) -> bool {
        self.live_on(node)
            .is_some_and(|ranges| ranges.contains(&range))
    }

    /// Every range, current and historical, in ascending id order.
    pub fn ranges(&self) -> impl Iterator<Item = &Range> {
        self.ranges.values()
    }

    /// How many ranges the keyspace holds, history included.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Always false: a keyspace holds at least its current tiling.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The current tiling, in key order.
    pub fn current_ranges(&self) -> impl Iterator<Item = &Range> {
        self.index.values().filter_map(|id| self.ranges.get(id))
    }

    /// The current tiling in range id order rather than key order: a walk in the
    /// order the ranges lie in memory, for the callers that sort or count what
    /// they find anyway. At a million ranges it is several times cheaper than
    /// [`Keyspace::current_ranges`], whose every step is an index lookup.
    pub fn current_ranges_unordered(&self) -> impl Iterator<Item = &Range> {
        self.ranges.values().filter(|r| r.current)
    }

    /// The current ranges starting at or after `start`, in key order: lets a caller
    /// walk the tiling a chunk at a time.
    pub fn current_ranges_from(&self, start: &[u8]) -> impl Iterator<Item = &Range> {
        self.index
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .filter_map(|(_, id)| self.ranges.get(id))
    }

    /// How many ranges the current tiling has.
    pub fn current_len(&self) -> usize {
        self.index.len()
    }

    /// Whether the range is part of the current tiling (see the module docs).
    pub fn is_current(&self, id: RangeId) -> bool {
        self.ranges
            .get(&id)
            .is_some_and(|r| self.index.get(r.meta.start().as_bytes()) == Some(&id))
    }

    /// The current range that holds `key`. `None` only if the keyspace's invariants
    /// are broken, which [`Keyspace::check_invariants`] would report.
    pub fn range_for_key(&self, key: &[u8]) -> Option<&Range> {
        let (_, id) = self
            .index
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        self.ranges.get(id).filter(|r| r.meta.contains(key))
    }

    /// The records of every range changed since the last call, with the counters;
    /// clears the change set. If saving them fails, hand them back with
    /// [`Keyspace::requeue`] so that the next save includes them again.
    pub fn take_changes(&mut self) -> ChangeSet {
        let dirty = std::mem::take(&mut self.dirty);
        let upserts = dirty
            .into_iter()
            .filter_map(|id| self.ranges.get(&id).map(to_record))
            .collect();
        ChangeSet {
            counters: self.counters(),
            upserts,
        }
    }

    /// Marks the ranges of a change set that could not be saved as changed again.
    /// Their records are rebuilt from the current state at the next `take_changes`,
    /// so later changes to the same ranges are not lost either.
    pub fn requeue(&mut self, changes: &ChangeSet) {
        self.requeue_ranges(changes.upserts.iter().map(|r| r.id));
    }

    /// [`Keyspace::requeue`] by range ids, for a caller that kept only those.
    pub fn requeue_ranges(&mut self, ranges: impl IntoIterator<Item = RangeId>) {
        self.dirty.extend(ranges);
    }

    /// The records of every range, in id order: a full snapshot, for a first save
    /// to a new store or a dump. Does not touch the change set.
    pub fn to_records(&self) -> Vec<RangeRecord> {
        self.ranges.values().map(to_record).collect()
    }

    /// Updates when `id` last split, moved or joined (see [`RangeHistory`]);
    /// the range is saved again with the next change set if that changed it.
    pub fn note_history(
        &mut self,
        id: RangeId,
        update: impl FnOnce(&mut RangeHistory),
    ) -> Result<()> {
        let range = self
            .ranges
            .get_mut(&id)
            .ok_or(KeyspaceError::UnknownRange(id))?;
        let before = range.history;
        update(&mut range.history);
        if range.history != before {
            self.dirty.insert(id);
        }
        Ok(())
    }

    /// Whether some change has not been taken for saving yet.
    /// How many times a placement entered each state since this keyspace was
    /// built or loaded (adding a placement enters Pending).
    pub fn transition_counts(&self) -> &BTreeMap<PlacementState, u64> {
        &self.transitions
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    // ---- helpers ----

    fn range_mut(&mut self, id: RangeId) -> Result<&mut Range> {
        self.ranges
            .get_mut(&id)
            .ok_or(KeyspaceError::UnknownRange(id))
    }

    /// Whether `r` has handed the keys over to its children (module docs).
    fn handed_over(&self, r: &Range) -> bool {
        match r.state {
            RangeState::Obsolete => true,
            RangeState::Active => false,
            RangeState::Subsuming => {
                !r.children.is_empty()
                    && r.children
                        .iter()
                        .all(|c| self.ranges.get(c).is_some_and(|c| c.ever_activated))
            }
        }
    }

    /// Whether `r` belongs to the current tiling, computed from the states (the
    /// index caches this).
    fn computes_current(&self, r: &Range) -> bool {
        r.state != RangeState::Obsolete
            && !self.handed_over(r)
            && r.parents
                .iter()
                .all(|p| self.ranges.get(p).is_none_or(|p| self.handed_over(p)))
    }

    fn set_current(&mut self, id: RangeId, current: bool) {
        if let Some(r) = self.ranges.get_mut(&id) {
            r.current = current;
        }
    }

    /// Brings the index up to date for these ranges: removals first, because a
    /// child may start where its parent does.
    fn reindex(&mut self, ids: &[RangeId]) {
        let (current, stale): (Vec<&Range>, Vec<&Range>) = ids
            .iter()
            .filter_map(|id| self.ranges.get(id))
            .partition(|r| self.computes_current(r));
        let stale: Vec<(Vec<u8>, RangeId)> = stale
            .into_iter()
            .map(|r| (r.meta.start().as_bytes().to_vec(), r.id()))
            .collect();
        let current: Vec<(Vec<u8>, RangeId)> = current
            .into_iter()
            .map(|r| (r.meta.start().as_bytes().to_vec(), r.id()))
            .collect();
        for (start, id) in stale {
            if self.index.get(&start) == Some(&id) {
                self.index.remove(&start);
            }
            self.set_current(id, false);
        }
        for (start, id) in current {
            if let Some(previous) = self.index.insert(start, id) {
                self.set_current(previous, false);
            }
            self.set_current(id, true);
        }
    }

    /// Records a mutation of these ranges; in debug builds, checks the invariants
    /// around them.
    fn touched(&mut self, ids: &[RangeId]) {
        self.dirty.extend(ids.iter().copied());
        #[cfg(debug_assertions)]
        if let Err(error) = self.check_around(ids) {
            panic!("keyspace invariant broken by a mutation of {ids:?}: {error}");
        }
    }
}

/// The range a loaded record describes, with its version and bounds checked
/// (the rest is checked on the whole keyspace).
fn range_from_record(record: RangeRecord) -> Result<Range> {
    if !READABLE_RECORD_VERSIONS.contains(&record.v) {
        return Err(KeyspaceError::Malformed {
            range: record.id,
            detail: format!("record schema version {} is not supported", record.v),
        });
    }
    Ok(Range {
        meta: RangeMeta::new(record.id, record.start, record.end)?,
        state: record.state,
        parents: record.parents,
        children: record.children,
        placements: record.placements,
        ever_activated: record.ever_activated,
        history: record.history,
        current: false,
    })
}

fn to_record(r: &Range) -> RangeRecord {
    RangeRecord {
        v: RECORD_VERSION,
        id: r.id(),
        start: r.meta.start().clone(),
        end: r.meta.end().clone(),
        state: r.state,
        parents: r.parents.clone(),
        children: r.children.clone(),
        ever_activated: r.ever_activated,
        placements: r.placements.clone(),
        history: r.history,
    }
}
