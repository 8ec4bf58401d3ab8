//! Where a range being prepared gets its data from.
//!
//! Prepare lists the range itself (with its placements: for a move, where the
//! data is now), then its parents, then theirs. The Go reference controller never
//! fills an entry's parent ids (field 2), so sources are found from the listed
//! ranges and placements themselves, never from those ids: the range's own
//! placements for a move, else every other listed range that overlaps it and has a
//! placement holding its data, newest generation (earliest listed) first.
//!
//! Only a listed Active or Inactive placement holds data: the controller lists
//! only placements with the latest data (the one that served last, or a frozen
//! parent), not retiring copies. A serving (Active) placement wins over a frozen
//! one, because an older controller may still list a stale Inactive copy beside
//! the writer. This node's own copy counts only when its own address is listed
//! that way *and* it really holds the range: a copy it merely still has (a slow
//! drop) is never trusted.
//!
//! A prepare that cannot fill every part of its range fails: succeeding with a
//! hole is silent data loss. Only a range with no history at all (no other
//! overlapping range listed, and no placement of its own that ever held data) is
//! legitimately empty.

use std::collections::{BTreeMap, HashSet};

use ranger_proto::{Parent, PlacementState, RangeId, RangeMeta};

use super::spans::Span;

/// Where one part of the range comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This node holds `range` (listed at this node's address): keys are stored
    /// as they are, so the part is already in place.
    Local { range: RangeId, span: Span },
    /// Copy `span` of `range` from the node at `addr`.
    Remote {
        addr: String,
        range: RangeId,
        span: Span,
    },
}

impl Source {
    pub fn span(&self) -> &Span {
        match self {
            Source::Local { span, .. } | Source::Remote { span, .. } => span,
        }
    }
}

/// Why a range cannot be filled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error(
        "range {range}: no placement holds the data of {missing} (listed ranges overlapping it without a usable placement: {unusable:?}); refusing to prepare it with a hole"
    )]
    Unfilled {
        range: RangeId,
        /// The first part without a source, as text.
        missing: String,
        /// Listed ranges that overlap the range but have no Active or Inactive
        /// placement this node may use.
        unusable: Vec<RangeId>,
    },
}

/// The node's view needed to plan: its own address and the ranges it holds.
#[derive(Debug, Clone, Copy)]
pub struct Here<'a> {
    pub addr: &'a str,
    pub held: &'a BTreeMap<RangeId, RangeMeta>,
}

/// Who holds a listed range's latest data, if anyone usable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Local,
    Remote(String),
}

fn holder(parent: &Parent, here: Here<'_>) -> Option<Holder> {
    for state in [PlacementState::Active, PlacementState::Inactive] {
        let listed = parent.placements.iter().filter(|p| p.state == state);
        // Within one state, this node's own copy first: nothing to move.
        let mut remote = None;
        for placement in listed {
            if placement.node_addr == here.addr {
                if here.held.get(&parent.meta.id()) == Some(&parent.meta) {
                    return Some(Holder::Local);
                }
                tracing::warn!(
                    range = %parent.meta.id(),
                    "listed as holding this range here, but this node does not hold it"
                );
            } else if remote.is_none() {
                remote = Some(Holder::Remote(placement.node_addr.clone()));
            }
        }
        if remote.is_some() {
            return remote;
        }
    }
    None
}

fn source(holder: Holder, range: RangeId, span: Span) -> Source {
    match holder {
        Holder::Local => Source::Local { range, span },
        Holder::Remote(addr) => Source::Remote { addr, range, span },
    }
}

/// Whether a placement in this state ever held the range's data.
fn held_data(state: PlacementState) -> bool {
    matches!(
        state,
        PlacementState::Active | PlacementState::Inactive | PlacementState::Missing
    )
}

/// The sources that together fill `meta`, in key order of the listed ranges.
/// Empty for a brand-new range.
pub fn plan(
    meta: &RangeMeta,
    parents: &[Parent],
    here: Here<'_>,
) -> Result<Vec<Source>, SourceError> {
    let mut seen = HashSet::new();
    let listed: Vec<&Parent> = parents
        .iter()
        .filter(|p| seen.insert(p.meta.id()))
        .collect();
    let whole = Span::of(meta);
    let me = listed.iter().find(|p| p.meta.id() == meta.id());
    // A move: the range itself is held somewhere.
    if let Some(me) = me
        && let Some(holder) = holder(me, here)
    {
        return Ok(vec![source(holder, meta.id(), whole)]);
    }
    // A split or join: fill each part from the newest listed range covering it.
    let mut uncovered = vec![whole];
    let mut sources = Vec::new();
    let mut overlapping = false;
    let mut unusable = Vec::new();
    for parent in listed.iter().filter(|p| p.meta.id() != meta.id()) {
        let span = Span::of(&parent.meta);
        if span.intersect(&Span::of(meta)).is_none() {
            continue;
        }
        overlapping = true;
        let Some(holder) = holder(parent, here) else {
            if uncovered.iter().any(|u| u.intersect(&span).is_some()) {
                unusable.push(parent.meta.id());
            }
            continue;
        };
        for part in uncovered.iter().filter_map(|u| u.intersect(&span)) {
            sources.push(source(holder.clone(), parent.meta.id(), part));
        }
        uncovered = uncovered
            .iter()
            .flat_map(|u| u.subtract(std::slice::from_ref(&span)))
            .collect();
    }
    let Some(missing) = uncovered.first() else {
        sources.sort_by(|a, b| a.span().start.cmp(&b.span().start));
        return Ok(sources);
    };
    let had_data = me.is_some_and(|me| me.placements.iter().any(|p| held_data(p.state)));
    if !overlapping && !had_data {
        return Ok(Vec::new()); // Brand new: no history, legitimately empty.
    }
    Err(SourceError::Unfilled {
        range: meta.id(),
        missing: describe(missing),
        unusable,
    })
}

fn describe(span: &Span) -> String {
    let end = match &span.end {
        Some(end) => format!("{:?}", String::from_utf8_lossy(end)),
        None => "+inf".to_owned(),
    };
    format!("[{:?}, {end})", String::from_utf8_lossy(&span.start))
}

#[cfg(test)]
mod tests {
    // Tests fail by panicking: unwrapping is the point.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ranger_proto::{Key, ParentPlacement};

    const ME: &str = "me:1";

    fn meta(n: u64, start: &str, end: &str) -> RangeMeta {
        RangeMeta::new(RangeId::new(n).unwrap(), Key::from(start), Key::from(end)).unwrap()
    }

    fn id(n: u64) -> RangeId {
        RangeId::new(n).unwrap()
    }

    fn span(start: &str, end: Option<&str>) -> Span {
        Span::new(start.as_bytes(), end.map(|e| e.as_bytes().to_vec()))
    }

    fn entry(meta: &RangeMeta, placements: &[(&str, PlacementState)]) -> Parent {
        Parent {
            meta: meta.clone(),
            parents: vec![],
            placements: placements
                .iter()
                .map(|(addr, state)| ParentPlacement {
                    node_addr: (*addr).to_owned(),
                    state: *state,
                })
                .collect(),
        }
    }

    fn remote(addr: &str, range: u64, span: Span) -> Source {
        Source::Remote {
            addr: addr.to_owned(),
            range: id(range),
            span,
        }
    }

    fn plan_here(
        meta: &RangeMeta,
        parents: &[Parent],
        held: &[RangeMeta],
    ) -> Result<Vec<Source>, SourceError> {
        let held = held.iter().map(|m| (m.id(), m.clone())).collect();
        plan(
            meta,
            parents,
            Here {
                addr: ME,
                held: &held,
            },
        )
    }

    use PlacementState::{Active, Inactive, Missing, Pending};

    #[test]
    fn a_move_copies_from_the_listed_placement_of_the_range_itself() {
        let r = meta(1, "", "");
        let parents = [entry(&r, &[("a:1", Active), (ME, Pending)])];
        assert_eq!(
            plan_here(&r, &parents, &[]).unwrap(),
            vec![remote("a:1", 1, span("", None))]
        );
    }

    #[test]
    fn a_serving_copy_wins_over_a_frozen_one_even_when_the_frozen_one_is_here() {
        let parent = meta(1, "", "");
        let child = meta(2, "", "m");
        let parents = [
            entry(&child, &[(ME, Pending)]),
            entry(&parent, &[(ME, Inactive), ("a:1", Active)]),
        ];
        assert_eq!(
            plan_here(&child, &parents, std::slice::from_ref(&parent)).unwrap(),
            vec![remote("a:1", 1, span("", Some("m")))]
        );
    }

    #[test]
    fn a_local_copy_counts_only_when_this_node_is_listed_and_holds_it() {
        let parent = meta(1, "", "");
        let child = meta(2, "m", "");
        // Listed here and held here: nothing to copy.
        let listed_here = [
            entry(&child, &[(ME, Pending)]),
            entry(&parent, &[(ME, Active)]),
        ];
        assert_eq!(
            plan_here(&child, &listed_here, std::slice::from_ref(&parent)).unwrap(),
            vec![Source::Local {
                range: id(1),
                span: span("m", None)
            }]
        );
        // Held here but not listed (a retiring copy): copied from the listed one.
        let listed_elsewhere = [
            entry(&child, &[(ME, Pending)]),
            entry(&parent, &[("a:1", Inactive)]),
        ];
        assert_eq!(
            plan_here(&child, &listed_elsewhere, std::slice::from_ref(&parent)).unwrap(),
            vec![remote("a:1", 1, span("m", None))]
        );
        // Listed here but not held (this node lost it): no source.
        assert!(plan_here(&child, &listed_here, &[]).is_err());
    }

    #[test]
    fn a_join_without_parent_ids_copies_each_parent_once_and_skips_older_generations() {
        let left = meta(2, "", "m");
        let right = meta(3, "m", "");
        let joined = meta(4, "", "");
        let parents = [
            entry(&joined, &[(ME, Pending)]),
            entry(&left, &[("a:1", Active)]),
            entry(&right, &[("b:1", Active)]),
            entry(&left, &[("a:1", Active)]), // a duplicate
            entry(&meta(1, "", ""), &[("stale:1", Inactive)]),
        ];
        assert_eq!(
            plan_here(&joined, &parents, &[]).unwrap(),
            vec![
                remote("a:1", 2, span("", Some("m"))),
                remote("b:1", 3, span("m", None)),
            ]
        );
    }

    #[test]
    fn a_part_without_a_holder_fails_the_plan() {
        let left = meta(1, "", "m");
        let right = meta(2, "m", "");
        let joined = meta(3, "", "");
        let parents = [
            entry(&joined, &[(ME, Pending)]),
            entry(&left, &[("a:1", Active)]),
            entry(&right, &[("gone:1", Missing)]),
        ];
        let SourceError::Unfilled {
            range, unusable, ..
        } = plan_here(&joined, &parents, &[]).unwrap_err();
        assert_eq!((range, unusable), (id(3), vec![id(2)]));
        // A join whose right parent is not listed at all.
        let parents = [
            entry(&joined, &[(ME, Pending)]),
            entry(&left, &[("a:1", Active)]),
        ];
        assert!(plan_here(&joined, &parents, &[]).is_err());
        // A move whose only copy is Missing.
        let moved = [entry(&right, &[("gone:1", Missing), (ME, Pending)])];
        assert!(plan_here(&right, &moved, &[]).is_err());
    }

    #[test]
    fn a_range_with_no_history_is_legitimately_empty() {
        let fresh = meta(1, "", "");
        assert_eq!(plan_here(&fresh, &[], &[]).unwrap(), vec![]);
        let listed = [entry(&fresh, &[(ME, Pending)])];
        assert_eq!(plan_here(&fresh, &listed, &[]).unwrap(), vec![]);
    }
}
