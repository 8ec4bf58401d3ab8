//! Splits and joins: beginning them, finishing them, rolling them back. The
//! parents of one split or join and its children form a *group*; finishing or
//! rolling back always takes a whole group, so the tiling never tears.

use ranger_proto::{Key, RangeId, RangeMeta, RangeState};

use super::{Keyspace, KeyspaceError, Range, RangeHistory, Result};

impl Keyspace {
    /// Begins a split of a current Active range at `key`: the range goes Subsuming
    /// (it keeps serving) and two Active children `[start, key)` and `[key, end)`
    /// are created, unplaced. Returns the children's ids, left first.
    pub fn split(&mut self, range: RangeId, key: Key) -> Result<(RangeId, RangeId)> {
        let parent = self.current_active(range)?;
        if !parent.meta.can_split_at(key.as_bytes()) {
            return Err(KeyspaceError::BadSplitKey { range, key });
        }
        let [left_id, right_id] = self.next_range_ids::<2>()?;
        let left = RangeMeta::new(left_id, parent.meta.start().clone(), key.clone())?;
        let right = RangeMeta::new(right_id, key, parent.meta.end().clone())?;
        self.commit_range_ids(right_id)?;
        self.insert_child(left, vec![range]);
        self.insert_child(right, vec![range]);
        let parent = self.range_mut(range)?;
        parent.state = RangeState::Subsuming;
        parent.children = vec![left_id, right_id];
        tracing::info!(%range, left = %left_id, right = %right_id, "split begun");
        self.touched(&[range, left_id, right_id]);
        Ok((left_id, right_id))
    }

    /// Begins a join of two adjacent current Active ranges: both go Subsuming and one
    /// Active child covering both is created, unplaced. Returns the child's id.
    pub fn join(&mut self, left: RangeId, right: RangeId) -> Result<RangeId> {
        let l = self.current_active(left)?;
        let r = self.current_active(right)?;
        if !l.meta.is_left_neighbour_of(&r.meta) {
            return Err(KeyspaceError::NotAdjacent { left, right });
        }
        let [child_id] = self.next_range_ids::<1>()?;
        let child = RangeMeta::new(child_id, l.meta.start().clone(), r.meta.end().clone())?;
        self.commit_range_ids(child_id)?;
        self.insert_child(child, vec![left, right]);
        for parent in [left, right] {
            let p = self.range_mut(parent)?;
            p.state = RangeState::Subsuming;
            p.children = vec![child_id];
        }
        tracing::info!(%left, %right, child = %child_id, "join begun");
        self.touched(&[left, right, child_id]);
        Ok(child_id)
    }

    /// Completes a split or join: the parents become Obsolete and their children
    /// take over the tiling (if they had not already). `parents` must be every
    /// parent of the operation (both, for a join), and none may still have a live
    /// placement: an Obsolete range holds no data anywhere.
    pub fn finish_subsume(&mut self, parents: &[RangeId]) -> Result<()> {
        let children = self.children_of_group(parents)?;
        for id in parents {
            if let Some(p) = self.range(*id)?.first_live_placement() {
                return Err(KeyspaceError::LivePlacement {
                    range: *id,
                    placement: p.id,
                });
            }
        }
        for id in &children {
            if self.range(*id)?.state == RangeState::Obsolete {
                return Err(KeyspaceError::RangeObsolete(*id));
            }
        }
        for id in parents {
            self.range_mut(*id)?.state = RangeState::Obsolete;
        }
        let affected: Vec<RangeId> = parents.iter().chain(&children).copied().collect();
        self.reindex(&affected);
        tracing::info!(?parents, ?children, "split/join finished");
        self.touched(&affected);
        Ok(())
    }

    /// Abandons a split or join before any child was activated: the parents go back
    /// to Active (they never stopped serving) and the children become Obsolete,
    /// unused. `children` must be every child of the operation, none may ever have
    /// had an Active placement (it may hold writes), and none may still have a live
    /// placement. The children keep their `parents` links as history.
    pub fn rollback_subsume(&mut self, children: &[RangeId]) -> Result<()> {
        check_distinct(children)?;
        for id in children {
            let c = self.range(*id)?;
            if c.state != RangeState::Active {
                return Err(KeyspaceError::WrongRangeState {
                    range: *id,
                    state: c.state,
                    expected: RangeState::Active,
                });
            }
            if c.ever_activated {
                return Err(KeyspaceError::ChildActivated(*id));
            }
            if let Some(p) = c.first_live_placement() {
                return Err(KeyspaceError::LivePlacement {
                    range: *id,
                    placement: p.id,
                });
            }
        }
        let parents = self.parents_of_group(children)?;
        for id in children {
            self.range_mut(*id)?.state = RangeState::Obsolete;
        }
        for id in &parents {
            let p = self.range_mut(*id)?;
            p.state = RangeState::Active;
            p.children.clear();
        }
        let affected: Vec<RangeId> = parents.iter().chain(children).copied().collect();
        self.reindex(&affected);
        tracing::info!(?parents, ?children, "split/join rolled back");
        self.touched(&affected);
        Ok(())
    }

    /// The range, if it is Active and current: only those may be split or joined.
    fn current_active(&self, id: RangeId) -> Result<&Range> {
        let r = self.range(id)?;
        if r.state != RangeState::Active {
            return Err(KeyspaceError::WrongRangeState {
                range: id,
                state: r.state,
                expected: RangeState::Active,
            });
        }
        if !self.is_current(id) {
            return Err(KeyspaceError::NotCurrent(id));
        }
        Ok(r)
    }

    /// The next `N` range ids, without consuming them yet.
    fn next_range_ids<const N: usize>(&self) -> Result<[RangeId; N]> {
        let mut ids = [RangeId::FIRST; N];
        let mut next = self.next_range_id;
        for id in &mut ids {
            *id = RangeId::new(next).map_err(|_| KeyspaceError::IdsExhausted("range"))?;
            next = next
                .checked_add(1)
                .ok_or(KeyspaceError::IdsExhausted("range"))?;
        }
        Ok(ids)
    }

    fn commit_range_ids(&mut self, last_used: RangeId) -> Result<()> {
        self.next_range_id = last_used
            .get()
            .checked_add(1)
            .ok_or(KeyspaceError::IdsExhausted("range"))?;
        Ok(())
    }

    fn insert_child(&mut self, meta: RangeMeta, parents: Vec<RangeId>) {
        // The children of a range that moved recently are as recently moved.
        let moved = parents
            .iter()
            .filter_map(|p| self.ranges.get(p).and_then(|r| r.history.moved))
            .max();
        let range = Range {
            meta,
            state: RangeState::Active,
            parents,
            children: Vec::new(),
            placements: Vec::new(),
            ever_activated: false,
            history: RangeHistory {
                moved,
                ..RangeHistory::default()
            },
            current: false,
        };
        self.ranges.insert(range);
    }

    /// Every child of the given parents, checking that the parents are Subsuming and
    /// form a whole operation (no parent of those children is missing).
    fn children_of_group(&self, parents: &[RangeId]) -> Result<Vec<RangeId>> {
        check_distinct(parents)?;
        let mut children = Vec::new();
        for id in parents {
            let p = self.range(*id)?;
            if p.state != RangeState::Subsuming {
                return Err(KeyspaceError::WrongRangeState {
                    range: *id,
                    state: p.state,
                    expected: RangeState::Subsuming,
                });
            }
            for c in &p.children {
                if !children.contains(c) {
                    children.push(*c);
                }
            }
        }
        for c in &children {
            for p in &self.range(*c)?.parents {
                if !parents.contains(p) {
                    return Err(KeyspaceError::IncompleteGroup { missing: *p });
                }
            }
        }
        Ok(children)
    }

    /// Every parent of the given children, checking that the parents are Subsuming
    /// and that no child of those parents is missing.
    fn parents_of_group(&self, children: &[RangeId]) -> Result<Vec<RangeId>> {
        check_distinct(children)?;
        let mut parents = Vec::new();
        for id in children {
            let c = self.range(*id)?;
            if c.parents.is_empty() {
                return Err(KeyspaceError::Malformed {
                    range: *id,
                    detail: "it was not created by a split or join".into(),
                });
            }
            for p in &c.parents {
                if !parents.contains(p) {
                    parents.push(*p);
                }
            }
        }
        for id in &parents {
            let p = self.range(*id)?;
            if p.state != RangeState::Subsuming {
                return Err(KeyspaceError::WrongRangeState {
                    range: *id,
                    state: p.state,
                    expected: RangeState::Subsuming,
                });
            }
            if let Some(missing) = p.children.iter().find(|c| !children.contains(c)) {
                return Err(KeyspaceError::IncompleteGroup { missing: *missing });
            }
            if let Some(child) = children.iter().find(|c| !p.children.contains(c)) {
                return Err(KeyspaceError::LinksInconsistent {
                    parent: *id,
                    child: *child,
                    detail: "the child names the parent, which does not list it",
                });
            }
        }
        Ok(parents)
    }
}

fn check_distinct(ids: &[RangeId]) -> Result<()> {
    if ids.is_empty() {
        return Err(KeyspaceError::EmptyGroup);
    }
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(KeyspaceError::DuplicateInGroup(*id));
        }
    }
    Ok(())
}
