//! The keyspace's invariants, checked in full when loading and around each mutation
//! in debug builds.
//!
//! Loading runs the full checks once, in O(n) apart from sorting the current
//! ranges by start key; [`Keyspace::check_invariants`] adds the index lookups
//! (O(n log n)). The local one ([`Keyspace::check_around`]) costs
//! O(log n) per touched range plus the current ranges inside its span, which keeps
//! debug builds usable with many ranges.

use std::collections::BTreeMap;
#[cfg(debug_assertions)]
use std::ops::Bound;

use ranger_proto::{Key, NodeId, PlacementState, RangeId, RangeMeta, RangeState};

use super::by_node::LiveByNode;
use super::{Keyspace, KeyspaceError, PlacementId, Range, Result};

impl Keyspace {
    /// Validates the whole keyspace: every range on its own (bounds, counters,
    /// links, placements), placement ids unique across ranges, the current ranges
    /// tiling the keyspace with no gap and no overlap, and the key index matching
    /// the ranges' states. O(n log n): called from tests (loading runs the same
    /// checks, see [`Keyspace::from_records`]).
    pub fn check_invariants(&self) -> Result<()> {
        let live_by_node = self.check_records_in_order()?;
        self.check_full_cover()?;
        let mut current = 0usize;
        for r in self.ranges.values() {
            if r.current != self.computes_current(r) {
                return Err(KeyspaceError::IndexMismatch(r.id()));
            }
            if self.computes_current(r) {
                current += 1;
                if self.index.get(r.meta.start().as_bytes()) != Some(&r.id()) {
                    return Err(KeyspaceError::IndexMismatch(r.id()));
                }
            }
        }
        if self.live_by_node != live_by_node {
            // Name the first range that disagrees (O(nodes) per range: only
            // once the cheap comparison found something).
            for r in self.ranges.values() {
                self.check_live_index(r)?;
            }
            // Left: an entry naming a range the table does not hold. (All
            // that could differ after that is a node with an empty set, which
            // answers every lookup as no entry would.)
            for (node, ranges) in self.live_by_node.iter() {
                if let Some(range) = ranges.iter().find(|id| !self.ranges.contains_key(id)) {
                    return Err(KeyspaceError::LiveIndexMismatch {
                        range: *range,
                        node: node.clone(),
                    });
                }
            }
        }
        if current != self.index.len() {
            // Some index entry is a range that is not current.
            for (start, id) in &self.index {
                let r = self.indexed(start, *id)?;
                if !self.computes_current(r) {
                    return Err(KeyspaceError::IndexMismatch(*id));
                }
            }
        }
        Ok(())
    }

    /// Every check that does not need the index, over the ranges in ascending id
    /// order. O(n) with a sort of the placement ids (linear when they rise with
    /// the range ids, as they do in a keyspace that grew by splits). Returns
    /// the index of live placements by node, built in the pass that checks
    /// the placements (which has them in cache: at a million ranges a pass
    /// of its own cost a load 300 ms more).
    pub(super) fn check_records_in_order(&self) -> Result<LiveByNode> {
        if self.ranges.is_empty() {
            return Err(KeyspaceError::Empty);
        }
        // In id order and in passes (links, then groups, then placements), so that
        // the error names the root problem and is the same from run to run.
        for r in self.ranges.values() {
            self.check_references(r)?;
        }
        for r in self.ranges.values() {
            self.check_links(r)?;
        }
        for r in self.ranges.values().filter(|r| !r.children.is_empty()) {
            self.check_group(r)?;
        }
        let mut owners: Vec<(PlacementId, RangeId)> = Vec::with_capacity(self.ranges.len());
        let mut live_by_node = LiveByNode::default();
        for r in self.ranges.values() {
            self.check_placements(r)?;
            owners.extend(r.placements.iter().map(|p| (p.id, r.id())));
            for p in r.placements.iter().filter(|p| p.is_live()) {
                live_by_node.placed(&p.node, r.id());
            }
        }
        // A placement listed twice by one range was reported above; here, by
        // two: the first pair in (placement, range) order, naming both ranges.
        if !owners.is_sorted() {
            owners.sort_unstable();
        }
        if let Some(pair) = owners.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(KeyspaceError::DuplicatePlacement {
                placement: pair[0].0,
                first: pair[0].1,
                second: pair[1].1,
            });
        }
        Ok(live_by_node)
    }

    /// Fills the index from the ranges' states, reporting two current ranges that
    /// start at the same key. Gaps and other overlaps are found by the cover check.
    /// The ranges are taken in id order, so that the outcome is the same from run
    /// to run. O(n) plus a sort by start key, which is linear when the ranges'
    /// keys rise with their ids.
    pub(super) fn build_index(&mut self) -> Result<()> {
        let mut starts: Vec<(&[u8], RangeId)> = self
            .ranges
            .values()
            .filter(|r| self.computes_current(r))
            .map(|r| (r.meta.start().as_bytes(), r.id()))
            .collect();
        if !starts.is_sorted() {
            starts.sort_unstable();
        }
        if let Some(pair) = starts.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(overlap(pair[0].1, pair[1].1));
        }
        // From sorted, distinct keys: built in bulk, without a search per entry.
        let index: BTreeMap<Vec<u8>, RangeId> = starts
            .into_iter()
            .map(|(start, id)| (start.to_vec(), id))
            .collect();
        for r in self.ranges.values_mut() {
            r.current = false;
        }
        for id in index.values() {
            if let Some(r) = self.ranges.get_mut(id) {
                r.current = true;
            }
        }
        self.index = index;
        Ok(())
    }

    /// The error for a keyspace whose first current range does not start at
    /// minus infinity (or that has none).
    fn gap_at_start(&self) -> KeyspaceError {
        let before = self.index.iter().next();
        KeyspaceError::Gap {
            after: None,
            before: before.map(|(_, id)| *id),
            from: Key::empty(),
            to: before.map(|(k, _)| Key::new(k.clone())).unwrap_or_default(),
        }
    }

    /// Walks the whole index in key order, checking that the first current
    /// range starts at minus infinity, each one ends where the next starts, and
    /// the last ends at plus infinity. O(n).
    pub(super) fn check_full_cover(&self) -> Result<()> {
        let mut entries = self.index.iter();
        let Some((key, id)) = entries.next().filter(|(key, _)| key.is_empty()) else {
            return Err(self.gap_at_start());
        };
        let mut previous = self.indexed(key, *id)?;
        for (key, id) in entries {
            let next = self.indexed(key, *id)?;
            let reached = previous.meta.end();
            if reached.is_empty() {
                // The previous range already reaches plus infinity.
                return Err(overlap(previous.id(), next.id()));
            }
            adjoins(previous, next)?;
            previous = next;
        }
        if previous.meta.end().is_empty() {
            Ok(())
        } else {
            Err(KeyspaceError::Gap {
                after: Some(previous.id()),
                before: None,
                from: previous.meta.end().clone(),
                to: Key::empty(),
            })
        }
    }

    /// The checks around the ranges a mutation touched (debug builds).
    #[cfg(debug_assertions)]
    pub(super) fn check_around(&self, ids: &[RangeId]) -> Result<()> {
        for id in ids {
            let r = self.range(*id)?;
            self.check_range(r)?;
            let indexed = self.index.get(r.meta.start().as_bytes()) == Some(id);
            if indexed != self.computes_current(r) || r.current != indexed {
                return Err(KeyspaceError::IndexMismatch(*id));
            }
            self.check_cover_between(r.meta.start(), r.meta.end())?;
            self.check_live_index(r)?;
        }
        Ok(())
    }

    /// Checks that the index of live placements by node lists `r` under
    /// exactly the nodes that hold a live placement of it. O(nodes).
    fn check_live_index(&self, r: &Range) -> Result<()> {
        let id = r.id();
        let mismatch = |node: &NodeId| KeyspaceError::LiveIndexMismatch {
            range: id,
            node: node.clone(),
        };
        for p in r.placements.iter().filter(|p| p.is_live()) {
            if !self.is_live_on(id, &p.node) {
                return Err(mismatch(&p.node));
            }
        }
        for (node, ranges) in self.live_by_node.iter() {
            let holds = r.placements.iter().any(|p| p.is_live() && &p.node == node);
            if ranges.contains(&id) && !holds {
                return Err(mismatch(node));
            }
        }
        Ok(())
    }

    /// Checks one range: its links, its split or join, its placements.
    #[cfg(debug_assertions)]
    fn check_range(&self, r: &Range) -> Result<()> {
        self.check_references(r)?;
        self.check_links(r)?;
        if !r.children.is_empty() {
            self.check_group(r)?;
        }
        self.check_placements(r)
    }

    /// Checks that a range's id is below the counter and that the ranges it names
    /// exist.
    fn check_references(&self, r: &Range) -> Result<()> {
        let id = r.id();
        below_counter("range", id.get(), self.next_range_id)?;
        if let Some(parent) = r.parents.iter().find(|p| !self.ranges.contains_key(p)) {
            return Err(KeyspaceError::UnknownParent {
                range: id,
                parent: *parent,
            });
        }
        if let Some(child) = r.children.iter().find(|c| !self.ranges.contains_key(c)) {
            return Err(KeyspaceError::UnknownChild {
                range: id,
                child: *child,
            });
        }
        Ok(())
    }

    /// Checks a range's shape and that its links agree with its parents' and
    /// children's.
    fn check_links(&self, r: &Range) -> Result<()> {
        let id = r.id();
        match r.state {
            RangeState::Active if !r.children.is_empty() => {
                return Err(malformed(id, "Active but has children"));
            }
            RangeState::Subsuming if r.children.is_empty() => {
                return Err(malformed(id, "Subsuming but has no children"));
            }
            _ => {}
        }
        if has_duplicates(&r.parents) || has_duplicates(&r.children) {
            return Err(malformed(id, "a parent or child is listed twice"));
        }
        if r.parents.contains(&id) || r.children.contains(&id) {
            return Err(malformed(id, "it is its own parent or child"));
        }
        for parent in &r.parents {
            let p = self
                .ranges
                .get(parent)
                .ok_or(KeyspaceError::UnknownParent {
                    range: id,
                    parent: *parent,
                })?;
            // A rolled-back child is Obsolete and no longer listed by its parent.
            if r.state != RangeState::Obsolete && !p.children.contains(&id) {
                return Err(KeyspaceError::LinksInconsistent {
                    parent: *parent,
                    child: id,
                    detail: "the child names the parent, which does not list it",
                });
            }
        }
        for child in &r.children {
            let c = self.ranges.get(child).ok_or(KeyspaceError::UnknownChild {
                range: id,
                child: *child,
            })?;
            if !c.parents.contains(&id) {
                return Err(KeyspaceError::LinksInconsistent {
                    parent: id,
                    child: *child,
                    detail: "the parent lists the child, which does not name it",
                });
            }
        }
        Ok(())
    }

    fn check_placements(&self, r: &Range) -> Result<()> {
        let id = r.id();
        for (i, p) in r.placements.iter().enumerate() {
            below_counter("placement", p.id.get(), self.next_placement_id)?;
            let earlier = &r.placements[..i];
            if earlier.iter().any(|q| q.id == p.id) {
                return Err(KeyspaceError::DuplicatePlacement {
                    placement: p.id,
                    first: id,
                    second: id,
                });
            }
            if p.is_live() && earlier.iter().any(|q| q.is_live() && q.node == p.node) {
                return Err(malformed(
                    id,
                    format!("two live placements on node {}", p.node),
                ));
            }
            if p.is_live() && r.state == RangeState::Obsolete {
                return Err(KeyspaceError::LivePlacement {
                    range: id,
                    placement: p.id,
                });
            }
            if p.state == PlacementState::Active && !r.ever_activated {
                return Err(malformed(
                    id,
                    format!(
                        "placement {} is Active but the range was never activated",
                        p.id
                    ),
                ));
            }
            if let Some(replaced) = p.replaces
                && (replaced == p.id || r.placement(replaced).is_none())
            {
                return Err(malformed(
                    id,
                    format!("placement {} replaces unknown placement {replaced}", p.id),
                ));
            }
        }
        Ok(())
    }

    /// Checks that the children of `parent`'s split or join cover exactly the keys
    /// of all its parents, each side without gap or overlap.
    fn check_group(&self, parent: &Range) -> Result<()> {
        let mut children = Vec::with_capacity(parent.children.len());
        let mut parents: Vec<&RangeMeta> = Vec::with_capacity(2);
        let mut parent_ids = Vec::with_capacity(2);
        for child in &parent.children {
            let c = self.range(*child)?;
            children.push(&c.meta);
            for p in &c.parents {
                if !parent_ids.contains(p) {
                    parent_ids.push(*p);
                    parents.push(&self.range(*p)?.meta);
                }
            }
        }
        let mismatch = |detail: String| KeyspaceError::GroupMismatch {
            parents: parent_ids.clone(),
            detail,
        };
        let parent_span = contiguous_span(&mut parents).map_err(&mismatch)?;
        let child_span = contiguous_span(&mut children).map_err(&mismatch)?;
        if parent_span != child_span {
            return Err(mismatch(format!(
                "the parents span [{}, {}), the children [{}, {})",
                parent_span.0, parent_span.1, child_span.0, child_span.1
            )));
        }
        Ok(())
    }

    /// Walks the index from the range holding `start` until `end` (empty: +inf),
    /// checking that consecutive current ranges meet exactly.
    #[cfg(debug_assertions)]
    fn check_cover_between(&self, start: &Key, end: &Key) -> Result<()> {
        let Some((key, id)) = self
            .index
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(start.as_bytes())))
            .next_back()
        else {
            return Err(self.gap_at_start());
        };
        let mut previous = self.indexed(key, *id)?;
        loop {
            let reached = previous.meta.end();
            if reached.is_empty() || (!end.is_empty() && reached >= end) {
                return Ok(());
            }
            let next = self
                .index
                .range::<[u8], _>((
                    Bound::Excluded(previous.meta.start().as_bytes()),
                    Bound::Unbounded,
                ))
                .next();
            let Some((key, id)) = next else {
                return Err(KeyspaceError::Gap {
                    after: Some(previous.id()),
                    before: None,
                    from: reached.clone(),
                    to: Key::empty(),
                });
            };
            let next = self.indexed(key, *id)?;
            adjoins(previous, next)?;
            previous = next;
        }
    }

    /// The range an index entry names, if the entry is right about it.
    fn indexed(&self, start: &[u8], id: RangeId) -> Result<&Range> {
        self.ranges
            .get(&id)
            .filter(|r| r.meta.start().as_bytes() == start)
            .ok_or(KeyspaceError::IndexMismatch(id))
    }
}

/// Sorts the bounds by start and returns their span if they meet end to start.
fn contiguous_span(metas: &mut [&RangeMeta]) -> std::result::Result<(Key, Key), String> {
    metas.sort_by(|a, b| a.start().cmp(b.start()));
    for pair in metas.windows(2) {
        if !pair[0].is_left_neighbour_of(pair[1]) {
            return Err(format!("{} and {} do not meet", pair[0], pair[1]));
        }
    }
    match (metas.first(), metas.last()) {
        (Some(first), Some(last)) => Ok((first.start().clone(), last.end().clone())),
        _ => Err("no ranges".into()),
    }
}

/// Whether `next` starts exactly where `previous` ends: the step of every
/// walk along the tiling. An earlier start overlaps; a later one leaves a gap.
fn adjoins(previous: &Range, next: &Range) -> Result<()> {
    let reached = previous.meta.end();
    match next.meta.start().cmp(reached) {
        std::cmp::Ordering::Less => Err(overlap(previous.id(), next.id())),
        std::cmp::Ordering::Greater => Err(KeyspaceError::Gap {
            after: Some(previous.id()),
            before: Some(next.id()),
            from: reached.clone(),
            to: next.meta.start().clone(),
        }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

fn overlap(first: RangeId, second: RangeId) -> KeyspaceError {
    let (first, second) = (first.min(second), first.max(second));
    KeyspaceError::Overlap { first, second }
}

pub(super) fn below_counter(kind: &'static str, id: u64, next: u64) -> Result<()> {
    if id < next {
        Ok(())
    } else {
        Err(KeyspaceError::IdNotBelowCounter { kind, id, next })
    }
}

fn malformed(range: RangeId, detail: impl Into<String>) -> KeyspaceError {
    KeyspaceError::Malformed {
        range,
        detail: detail.into(),
    }
}

fn has_duplicates(ids: &[RangeId]) -> bool {
    ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id))
}
