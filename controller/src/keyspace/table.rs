//! Every range of the keyspace, current and historical, by id.
//!
//! A vector indexed by id rather than a hash map, because range ids are dense:
//! the controller hands them out from one counter starting at 1 and never frees
//! one (ranges stay as history, see the keyspace's module docs). So a lookup is
//! an index with no hashing, and walking the ids in order walks memory in order.
//! Loading a million ranges (issue 13) checks and indexes them in id order;
//! with a hash map each of those steps was a cache miss, with this table they
//! are sequential scans that the prefetcher serves.
//!
//! The cost is a slot per id that has no range. That never happens for ids this
//! controller allocated; for a loaded store, [`RangeTable::slots_for`] refuses ids
//! far sparser than their count (a corrupt store) before anything is allocated.

use ranger_proto::RangeId;

use super::Range;

/// The ranges by id; see the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct RangeTable {
    /// `slots[i]` holds the range with id `i + 1` (ids are non-zero), if any.
    slots: Vec<Option<Range>>,
    /// How many slots hold a range.
    len: usize,
}

/// A loaded store may leave this many slots empty for each range it holds (plus
/// [`SPARE_SLOTS`]) before it is refused as corrupt: generous, as no store this
/// controller wrote has any hole at all.
const SLOTS_PER_RANGE: u64 = 4;

/// Empty slots allowed on top of [`SLOTS_PER_RANGE`], so that a small store is
/// never refused for a few holes.
const SPARE_SLOTS: u64 = 65_536;

impl RangeTable {
    /// An empty table with room for ids up to `highest`.
    pub(super) fn with_highest_id(highest: u64) -> Self {
        RangeTable {
            slots: Vec::with_capacity(usize::try_from(highest).unwrap_or(0)),
            len: 0,
        }
    }

    /// A table of these slots: `slots[i]` must be the range with id `i + 1`
    /// or none.
    pub(super) fn from_slots(slots: Vec<Option<Range>>) -> Self {
        debug_assert!(
            slots
                .iter()
                .enumerate()
                .all(|(i, r)| r.as_ref().is_none_or(|r| r.id().get() == i as u64 + 1)),
            "a range in the wrong slot"
        );
        let len = slots.iter().filter(|slot| slot.is_some()).count();
        RangeTable { slots, len }
    }

    /// Whether a store of `ranges` records whose highest id is `highest` fits
    /// in a table without more than the allowed empty slots (module docs).
    pub(super) fn slots_for(ranges: usize, highest: u64) -> bool {
        let allowed = (ranges as u64)
            .saturating_mul(SLOTS_PER_RANGE)
            .saturating_add(SPARE_SLOTS);
        highest <= allowed && usize::try_from(highest).is_ok()
    }

    fn slot(id: RangeId) -> Option<usize> {
        usize::try_from(id.get() - 1).ok()
    }

    pub(super) fn get(&self, id: &RangeId) -> Option<&Range> {
        self.slots.get(Self::slot(*id)?)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: &RangeId) -> Option<&mut Range> {
        self.slots.get_mut(Self::slot(*id)?)?.as_mut()
    }

    pub(super) fn contains_key(&self, id: &RangeId) -> bool {
        self.get(id).is_some()
    }

    /// Stores `range` under its id and returns the range it replaced, if any.
    /// Ids above the highest so far add the slots between (none for the next
    /// id from the counter).
    pub(super) fn insert(&mut self, range: Range) -> Option<Range> {
        let Some(slot) = Self::slot(range.id()) else {
            // Unreachable on 64-bit targets, where every u64 id has a slot.
            panic!("range id {} does not fit this platform", range.id());
        };
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        let replaced = self.slots[slot].replace(range);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Every range, in ascending id order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Range> {
        self.slots.iter().flatten()
    }

    /// Every range, in ascending id order.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Range> {
        self.slots.iter_mut().flatten()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use ranger_proto::RangeMeta;

    use super::*;
    use crate::keyspace::RangeHistory;

    fn range(id: u64) -> Range {
        let id = RangeId::new(id).expect("non-zero id");
        Range {
            meta: RangeMeta::whole(id),
            state: ranger_proto::RangeState::Active,
            parents: Vec::new(),
            children: Vec::new(),
            placements: Vec::new(),
            ever_activated: false,
            history: RangeHistory::default(),
            current: false,
        }
    }

    fn id(id: u64) -> RangeId {
        RangeId::new(id).expect("non-zero id")
    }

    #[test]
    fn ranges_inserted_out_of_order_are_found_by_id_and_walked_in_id_order() {
        let mut table = RangeTable::default();
        for i in [5, 1, 3] {
            assert!(table.insert(range(i)).is_none());
        }
        assert_eq!(table.len(), 3);
        assert!(table.contains_key(&id(3)));
        assert!(!table.contains_key(&id(2)), "a hole is not a range");
        assert!(table.get(&id(6)).is_none(), "beyond the last slot");
        let order: Vec<u64> = table.values().map(|r| r.id().get()).collect();
        assert_eq!(order, [1, 3, 5]);
    }

    #[test]
    fn inserting_an_id_twice_replaces_it_and_hands_back_the_old_range() {
        let mut table = RangeTable::default();
        table.insert(range(2));
        let mut again = range(2);
        again.ever_activated = true;
        let replaced = table.insert(again).expect("replaced");
        assert!(!replaced.ever_activated);
        assert_eq!(table.len(), 1);
        assert!(table.get(&id(2)).is_some_and(|r| r.ever_activated));
    }

    #[test]
    fn a_store_far_sparser_than_its_count_does_not_fit() {
        assert!(RangeTable::slots_for(1, SPARE_SLOTS + SLOTS_PER_RANGE));
        assert!(!RangeTable::slots_for(1, SPARE_SLOTS + SLOTS_PER_RANGE + 1));
        assert!(RangeTable::slots_for(1_000_000, 4_000_000));
        assert!(!RangeTable::slots_for(3, u64::MAX));
    }
}
