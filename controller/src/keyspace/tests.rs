//! Tests of the keyspace's operations, error paths, loading, and a long random run.

use ranger_proto::{Key, NodeId, PlacementState, RangeId, RangeState};

use super::*;
use PlacementState::*;

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// Adds a placement and walks it to Active.
fn place_active(ks: &mut Keyspace, range: RangeId, on: &str) -> PlacementId {
    let p = ks.add_placement(range, node(on), None).unwrap();
    for state in [Loading, Inactive, Active] {
        ks.set_placement_state(range, p, state).unwrap();
    }
    p
}

/// Deactivates (if needed) and drops a placement.
fn drop_placement(ks: &mut Keyspace, range: RangeId, p: PlacementId) {
    let state = ks.range(range).unwrap().placement(p).unwrap().state();
    if state == Active {
        ks.set_placement_state(range, p, Inactive).unwrap();
    }
    ks.set_placement_state(range, p, Dropped).unwrap();
}

/// The current tiling's ids in key order, after checking that the unordered
/// walk (which reads each range's `current` flag, not the index) finds the same.
fn current_ids(ks: &Keyspace) -> Vec<u64> {
    let ordered: Vec<u64> = ks.current_ranges().map(|r| r.id().get()).collect();
    let mut unordered: Vec<u64> = ks
        .current_ranges_unordered()
        .map(|r| r.id().get())
        .collect();
    let mut sorted = ordered.clone();
    sorted.sort_unstable();
    unordered.sort_unstable();
    assert_eq!(
        unordered, sorted,
        "the unordered walk disagrees with the index"
    );
    ordered
}

fn reload(ks: &Keyspace) -> Keyspace {
    Keyspace::from_records(ks.counters(), ks.to_records()).unwrap()
}

// ---- basics ----

#[test]
fn new_keyspace_is_one_whole_active_range() {
    let mut ks = Keyspace::new();
    let r = ks.range(RangeId::FIRST).unwrap();
    assert_eq!(r.state(), RangeState::Active);
    assert!(r.meta().start().is_empty() && r.meta().end().is_empty());
    assert!(r.placements().is_empty());
    assert_eq!(
        ks.counters(),
        Counters {
            next_range_id: 2,
            next_placement_id: 1,
            term: 0,
        }
    );
    assert_eq!(ks.range_for_key(b"anything").unwrap().id(), RangeId::FIRST);
    assert_eq!(ks.range_for_key(b"").unwrap().id(), RangeId::FIRST);
    ks.check_invariants().unwrap();
    let changes = ks.take_changes();
    assert_eq!(
        changes.upserts.len(),
        1,
        "range 1 must be saved the first time"
    );
    assert!(ks.take_changes().is_empty());
    assert_eq!(ks.range(id(9)), Err(KeyspaceError::UnknownRange(id(9))));
}

// ---- placements ----

#[test]
fn placement_lifecycle_and_errors() {
    let mut ks = Keyspace::new();
    let r1 = RangeId::FIRST;
    assert_eq!(
        ks.add_placement(id(5), node("a"), None),
        Err(KeyspaceError::UnknownRange(id(5)))
    );
    let a = ks.add_placement(r1, node("a"), None).unwrap();
    assert_eq!(a, PlacementId::new(1));
    assert!(matches!(
        ks.add_placement(r1, node("a"), None),
        Err(KeyspaceError::NodeAlreadyPlaced { placement, .. }) if placement == a
    ));
    let missing = PlacementId::new(77);
    assert_eq!(
        ks.add_placement(r1, node("b"), Some(missing)),
        Err(KeyspaceError::BadReplaces {
            range: r1,
            replaces: missing
        })
    );
    assert_eq!(
        ks.set_placement_state(r1, missing, Loading),
        Err(KeyspaceError::UnknownPlacement {
            range: r1,
            placement: missing
        })
    );
    assert_eq!(
        ks.set_placement_state(r1, a, Active),
        Err(KeyspaceError::InvalidTransition {
            range: r1,
            placement: a,
            from: Pending,
            to: Active
        })
    );
    ks.set_placement_state(r1, a, Loading).unwrap();
    ks.take_changes();
    ks.set_placement_state(r1, a, Loading).unwrap();
    assert!(!ks.has_changes(), "repeating a state is a no-op");
    ks.set_placement_state(r1, a, Inactive).unwrap();
    assert!(!ks.range(r1).unwrap().ever_activated());
    ks.set_placement_state(r1, a, Active).unwrap();
    assert!(ks.range(r1).unwrap().ever_activated());
    assert_eq!(
        ks.remove_placement(r1, a),
        Err(KeyspaceError::PlacementNotDropped {
            range: r1,
            placement: a,
            state: Active
        })
    );
    assert!(matches!(
        ks.set_placement_state(r1, a, Dropped),
        Err(KeyspaceError::InvalidTransition { .. })
    ));
    // A move a -> b.
    let b = ks.add_placement(r1, node("b"), Some(a)).unwrap();
    assert_eq!(
        ks.range(r1).unwrap().placement(b).unwrap().replaces(),
        Some(a)
    );
    ks.set_retiring(r1, a, true).unwrap();
    assert!(ks.range(r1).unwrap().placement(a).unwrap().retiring());
    drop_placement(&mut ks, r1, a);
    assert_eq!(
        ks.set_retiring(r1, a, false),
        Err(KeyspaceError::PlacementDropped {
            range: r1,
            placement: a
        })
    );
    // The node may hold the range again once its old placement is dropped.
    let a2 = ks.add_placement(r1, node("a"), None).unwrap();
    assert_ne!(a2, a, "placement ids are never reused");
    assert_eq!(
        ks.add_placement(r1, node("c"), Some(a)),
        Err(KeyspaceError::BadReplaces {
            range: r1,
            replaces: a
        })
    );
    ks.remove_placement(r1, a).unwrap();
    assert_eq!(ks.range(r1).unwrap().placement(b).unwrap().replaces(), None);
    assert!(matches!(
        ks.remove_placement(r1, a),
        Err(KeyspaceError::UnknownPlacement { .. })
    ));
    assert!(matches!(
        ks.set_retiring(r1, a, true),
        Err(KeyspaceError::UnknownPlacement { .. })
    ));
    ks.check_invariants().unwrap();
    reload(&ks).check_invariants().unwrap();
}

/// The ranges `on` holds a live placement of, sorted.
fn live_on(ks: &Keyspace, on: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = ks
        .live_on(&node(on))
        .map(|ranges| ranges.iter().map(|r| r.get()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// How many ranges each node holds a live placement of, by node name.
fn live_counts(ks: &Keyspace) -> Vec<(&str, usize)> {
    let mut counts: Vec<(&str, usize)> = ks
        .live_counts()
        .map(|(node, ranges)| (node.as_str(), ranges))
        .collect();
    counts.sort_unstable();
    counts
}

#[test]
fn the_index_of_live_placements_follows_every_placement_change_and_a_reload() {
    let mut ks = Keyspace::new();
    let (left, right) = ks.split(id(1), Key::from("m")).unwrap();
    ks.finish_subsume(&[id(1)]).unwrap();
    let on_left = ks.add_placement(left, node("a"), None).unwrap();
    assert_eq!(live_on(&ks, "a"), vec![left.get()], "Pending is live");
    place_active(&mut ks, right, "a");
    let moved = ks.add_placement(left, node("b"), Some(on_left)).unwrap();
    assert_eq!(live_on(&ks, "a"), vec![left.get(), right.get()]);
    assert_eq!(live_on(&ks, "b"), vec![left.get()]);
    assert!(ks.is_live_on(left, &node("b")) && !ks.is_live_on(right, &node("b")));
    assert_eq!(live_counts(&ks), [("a", 2), ("b", 1)]);
    assert_eq!(current_ids(&reload(&ks)), current_ids(&ks));
    assert_eq!(reload(&ks).live_by_node, ks.live_by_node);

    // Leaving the live states takes a placement out; what is left stays.
    drop_placement(&mut ks, left, on_left);
    assert_eq!(live_on(&ks, "a"), vec![right.get()]);
    ks.remove_placement(left, on_left).unwrap();
    assert_eq!(live_on(&ks, "a"), vec![right.get()]);
    drop_placement(&mut ks, left, moved);
    assert_eq!(live_on(&ks, "b"), Vec::<u64>::new());
    assert!(
        ks.live_on(&node("b")).is_none(),
        "a node with none has no entry"
    );
    assert_eq!(live_counts(&ks), [("a", 1)]);
    // A refused mutation changes nothing.
    assert!(ks.add_placement(right, node("a"), None).is_err());
    assert_eq!(live_on(&ks, "a"), vec![right.get()]);
    assert_eq!(reload(&ks).live_by_node, ks.live_by_node);
    ks.check_invariants().unwrap();
}

#[test]
fn the_full_check_names_a_range_the_live_index_disagrees_with() {
    let mut ks = Keyspace::new();
    place_active(&mut ks, id(1), "a");
    ks.check_invariants().unwrap();
    type Tamper = fn(&mut LiveByNode);
    let cases: [(&str, Tamper, u64, &str); 3] = [
        (
            "a live placement left out",
            |i| i.unplaced(&node("a"), id(1)),
            1,
            "a",
        ),
        (
            "a node holding none listed",
            |i| i.placed(&node("b"), id(1)),
            1,
            "b",
        ),
        (
            "a range that does not exist",
            |i| i.placed(&node("a"), id(99)),
            99,
            "a",
        ),
    ];
    for (what, tamper, range, on) in cases {
        let mut tampered = ks.clone();
        tamper(&mut tampered.live_by_node);
        assert_eq!(
            tampered.check_invariants(),
            Err(KeyspaceError::LiveIndexMismatch {
                range: id(range),
                node: node(on)
            }),
            "{what}"
        );
    }
}

#[test]
fn every_placement_path_of_the_state_machine_is_reachable() {
    let paths: [&[PlacementState]; 6] = [
        &[GiveUp, Dropped],
        &[Loading, GiveUp, Dropped],
        &[Missing, Dropped],
        &[Loading, Inactive, Active, Missing, Dropped],
        &[Inactive, Dropped],
        &[Loading, Dropped],
    ];
    let mut ks = Keyspace::new();
    for (i, path) in paths.iter().enumerate() {
        let p = ks
            .add_placement(RangeId::FIRST, node(&format!("n{i}")), None)
            .unwrap();
        for state in *path {
            ks.set_placement_state(RangeId::FIRST, p, *state).unwrap();
        }
        ks.remove_placement(RangeId::FIRST, p).unwrap();
    }
    assert!(ks.range(RangeId::FIRST).unwrap().placements().is_empty());
}

// ---- balancing history ----

#[test]
fn the_balancing_history_is_saved_with_the_range_and_a_split_s_children_inherit_its_last_move() {
    let mut ks = Keyspace::new();
    let r1 = RangeId::FIRST;
    ks.take_changes();
    ks.note_history(r1, |h| h.moved = Some(5_000)).unwrap();
    let saved = ks.take_changes();
    assert_eq!(saved.upserts.len(), 1, "noting history saves the range");
    assert_eq!(saved.upserts[0].history.moved, Some(5_000));
    // Noting the same again changes nothing, so saves nothing.
    ks.note_history(r1, |h| h.moved = Some(5_000)).unwrap();
    assert!(!ks.has_changes());
    assert_eq!(
        ks.note_history(id(99), |h| h.split = Some(1)),
        Err(KeyspaceError::UnknownRange(id(99)))
    );

    let (l, r) = ks.split(r1, "m".into()).unwrap();
    for child in [l, r] {
        let history = ks.range(child).unwrap().history();
        assert_eq!((history.moved, history.split), (Some(5_000), None));
    }
    // A controller that loads the store reads it back.
    let loaded = Keyspace::from_records(ks.counters(), ks.to_records()).unwrap();
    assert_eq!(loaded.range(l).unwrap().history().moved, Some(5_000));
}

// ---- split ----

#[test]
fn split_rejects_bad_keys_and_non_active_ranges() {
    let mut ks = Keyspace::new();
    let r1 = RangeId::FIRST;
    assert_eq!(
        ks.split(r1, Key::empty()),
        Err(KeyspaceError::BadSplitKey {
            range: r1,
            key: Key::empty()
        })
    );
    let (l, r) = ks.split(r1, "m".into()).unwrap();
    // The parent is Subsuming now.
    assert!(matches!(
        ks.split(r1, "c".into()),
        Err(KeyspaceError::WrongRangeState {
            state: RangeState::Subsuming,
            ..
        })
    ));
    // The children are Active but not current until they hand over.
    assert_eq!(ks.split(l, "c".into()), Err(KeyspaceError::NotCurrent(l)));
    ks.finish_subsume(&[r1]).unwrap();
    for bad in ["m", "z", ""] {
        assert!(
            matches!(
                ks.split(l, bad.into()),
                Err(KeyspaceError::BadSplitKey { .. })
            ),
            "[,m) split at {bad:?}"
        );
    }
    assert!(matches!(
        ks.split(r, "a".into()),
        Err(KeyspaceError::BadSplitKey { .. })
    ));
    assert!(matches!(
        ks.split(r1, "c".into()),
        Err(KeyspaceError::WrongRangeState {
            state: RangeState::Obsolete,
            ..
        })
    ));
    assert_eq!(
        ks.split(id(99), "c".into()),
        Err(KeyspaceError::UnknownRange(id(99)))
    );
    ks.check_invariants().unwrap();
}

#[test]
fn split_hands_over_when_both_children_were_activated() {
    let mut ks = Keyspace::new();
    let r1 = RangeId::FIRST;
    let a = place_active(&mut ks, r1, "a");
    let (l, r) = ks.split(r1, "m".into()).unwrap();
    assert_eq!((l, r), (id(2), id(3)));
    assert_eq!(ks.range(r1).unwrap().children(), &[l, r]);
    assert_eq!(ks.range(l).unwrap().parents(), &[r1]);
    assert_eq!(ks.range(l).unwrap().meta().end(), &Key::from("m"));
    assert_eq!(ks.range(r).unwrap().meta().start(), &Key::from("m"));
    assert_eq!(
        current_ids(&ks),
        vec![1],
        "the parent serves during the split"
    );

    ks.set_placement_state(r1, a, Inactive).unwrap();
    place_active(&mut ks, r, "c");
    assert_eq!(
        current_ids(&ks),
        vec![1],
        "one child alone does not hand over"
    );
    assert_eq!(
        ks.rollback_subsume(&[l, r]),
        Err(KeyspaceError::ChildActivated(r))
    );
    place_active(&mut ks, l, "b");
    assert_eq!(current_ids(&ks), vec![2, 3]);
    assert_eq!(ks.range_for_key(b"a").unwrap().id(), l);
    assert_eq!(ks.range_for_key(b"m").unwrap().id(), r);
    assert_eq!(ks.range(r1).unwrap().state(), RangeState::Subsuming);
    // The parent stays Subsuming until its placement is dropped (SCENARIOS #21).
    assert_eq!(
        ks.finish_subsume(&[r1]),
        Err(KeyspaceError::LivePlacement {
            range: r1,
            placement: a
        })
    );
    // The children may split on while the parent's drop is pending.
    let (ll, _) = ks.split(l, "c".into()).unwrap();
    assert!(!ks.is_current(ll));
    ks.set_placement_state(r1, a, Dropped).unwrap();
    ks.finish_subsume(&[r1]).unwrap();
    assert_eq!(ks.range(r1).unwrap().state(), RangeState::Obsolete);
    assert_eq!(current_ids(&ks), vec![2, 3]);
    ks.check_invariants().unwrap();
    let reloaded = reload(&ks);
    assert_eq!(current_ids(&reloaded), vec![2, 3]);
}

#[test]
fn finish_before_activation_hands_over_an_unplaced_split() {
    let mut ks = Keyspace::new();
    let (l, r) = ks.split(RangeId::FIRST, "m".into()).unwrap();
    ks.finish_subsume(&[RangeId::FIRST]).unwrap();
    assert_eq!(current_ids(&ks), vec![l.get(), r.get()]);
    ks.check_invariants().unwrap();
}

#[test]
fn rollback_restores_the_parent_and_retires_the_children() {
    let mut ks = Keyspace::new();
    let r1 = RangeId::FIRST;
    let (l, r) = ks.split(r1, "m".into()).unwrap();
    let pl = ks.add_placement(l, node("b"), None).unwrap();
    assert_eq!(ks.rollback_subsume(&[]), Err(KeyspaceError::EmptyGroup));
    assert_eq!(
        ks.rollback_subsume(&[l, l]),
        Err(KeyspaceError::DuplicateInGroup(l))
    );
    assert_eq!(
        ks.rollback_subsume(&[r]),
        Err(KeyspaceError::IncompleteGroup { missing: l })
    );
    assert_eq!(
        ks.rollback_subsume(&[l, r]),
        Err(KeyspaceError::LivePlacement {
            range: l,
            placement: pl
        })
    );
    assert!(matches!(
        ks.rollback_subsume(&[r1]),
        Err(KeyspaceError::WrongRangeState { .. })
    ));
    ks.set_placement_state(l, pl, Dropped).unwrap();
    ks.rollback_subsume(&[l, r]).unwrap();
    assert_eq!(ks.range(r1).unwrap().state(), RangeState::Active);
    assert!(ks.range(r1).unwrap().children().is_empty());
    assert_eq!(ks.range(l).unwrap().state(), RangeState::Obsolete);
    assert_eq!(ks.range(l).unwrap().parents(), &[r1], "kept as history");
    assert_eq!(current_ids(&ks), vec![1]);
    assert!(matches!(
        ks.add_placement(l, node("b"), None),
        Err(KeyspaceError::RangeObsolete(_))
    ));
    assert!(matches!(
        ks.rollback_subsume(&[l, r]),
        Err(KeyspaceError::WrongRangeState { .. })
    ));
    // The parent can be split again; the new children get fresh ids.
    let (l2, r2) = ks.split(r1, "k".into()).unwrap();
    assert_eq!((l2.get(), r2.get()), (4, 5));
    ks.check_invariants().unwrap();
    let reloaded = reload(&ks);
    assert_eq!(reloaded.counters(), ks.counters());
    assert_eq!(current_ids(&reloaded), vec![1]);
}

// ---- join ----

#[test]
fn join_checks_adjacency_and_state() {
    let mut ks = Keyspace::new();
    let r1 = RangeId::FIRST;
    let (a, bc) = ks.split(r1, "b".into()).unwrap();
    ks.finish_subsume(&[r1]).unwrap();
    let (b, c) = ks.split(bc, "c".into()).unwrap();
    ks.finish_subsume(&[bc]).unwrap();
    assert_eq!(
        ks.join(a, c),
        Err(KeyspaceError::NotAdjacent { left: a, right: c })
    );
    assert_eq!(
        ks.join(b, a),
        Err(KeyspaceError::NotAdjacent { left: b, right: a })
    );
    assert_eq!(
        ks.join(a, a),
        Err(KeyspaceError::NotAdjacent { left: a, right: a })
    );
    assert!(matches!(
        ks.join(bc, c),
        Err(KeyspaceError::WrongRangeState { .. })
    ));
    let ab = ks.join(a, b).unwrap();
    assert_eq!(ks.range(ab).unwrap().parents(), &[a, b]);
    assert!(matches!(
        ks.join(b, c),
        Err(KeyspaceError::WrongRangeState { .. })
    ));
    assert_eq!(ks.join(ab, c), Err(KeyspaceError::NotCurrent(ab)));
    assert_eq!(
        ks.finish_subsume(&[a]),
        Err(KeyspaceError::IncompleteGroup { missing: b })
    );
    assert!(matches!(
        ks.finish_subsume(&[c]),
        Err(KeyspaceError::WrongRangeState {
            expected: RangeState::Subsuming,
            ..
        })
    ));
    // Activating the child hands over both parents at once.
    place_active(&mut ks, ab, "z");
    assert_eq!(ks.range_for_key(b"a").unwrap().id(), ab);
    assert_eq!(ks.range_for_key(b"bz").unwrap().id(), ab);
    assert_eq!(ks.range_for_key(b"c").unwrap().id(), c);
    ks.finish_subsume(&[b, a]).unwrap();
    assert_eq!(ks.range(a).unwrap().state(), RangeState::Obsolete);
    ks.check_invariants().unwrap();
    reload(&ks);
}

#[test]
fn join_rollback() {
    let mut ks = Keyspace::new();
    let (a, b) = ks.split(RangeId::FIRST, "m".into()).unwrap();
    ks.finish_subsume(&[RangeId::FIRST]).unwrap();
    let ab = ks.join(a, b).unwrap();
    ks.rollback_subsume(&[ab]).unwrap();
    assert_eq!(current_ids(&ks), vec![a.get(), b.get()]);
    assert_eq!(ks.range(a).unwrap().state(), RangeState::Active);
    ks.check_invariants().unwrap();
}

// ---- change tracking ----

#[test]
fn take_changes_returns_only_changed_ranges() {
    let mut ks = Keyspace::new();
    let (l, r) = ks.split(RangeId::FIRST, "m".into()).unwrap();
    ks.finish_subsume(&[RangeId::FIRST]).unwrap();
    let first = ks.take_changes();
    assert_eq!(
        first.upserts.iter().map(|r| r.id.get()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(first.counters, ks.counters());
    let p = ks.add_placement(r, node("a"), None).unwrap();
    let second = ks.take_changes();
    assert_eq!(second.upserts.len(), 1);
    assert_eq!(second.upserts[0].id, r);
    assert_eq!(second.upserts[0].placements[0].id(), p);
    assert_eq!(second.counters.next_placement_id, 2);
    // A failed save is requeued; a later change of another range joins it.
    ks.requeue(&second);
    ks.set_retiring(r, p, true).unwrap();
    ks.add_placement(l, node("a"), None).unwrap();
    let third = ks.take_changes();
    assert_eq!(
        third.upserts.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![l, r]
    );
    assert!(
        third.upserts[1].placements[0].retiring(),
        "the record is current"
    );
}

#[test]
fn failed_operations_change_nothing() {
    let mut ks = Keyspace::new();
    ks.take_changes();
    let before = ks.to_records();
    let counters = ks.counters();
    let _ = ks.split(RangeId::FIRST, Key::empty());
    let _ = ks.join(RangeId::FIRST, RangeId::FIRST);
    let _ = ks.finish_subsume(&[RangeId::FIRST]);
    let _ = ks.rollback_subsume(&[RangeId::FIRST]);
    let _ = ks.add_placement(id(4), node("a"), None);
    assert_eq!(ks.to_records(), before);
    assert_eq!(ks.counters(), counters);
    assert!(!ks.has_changes());
}

// ---- loading corrupt records (SCENARIOS.md #35) ----

/// A valid keyspace: 1 split into 2 [-inf,m) and 3 [m,+inf), finished; 3 placed.
fn sample() -> (Counters, Vec<RangeRecord>) {
    let mut ks = Keyspace::new();
    ks.split(RangeId::FIRST, "m".into()).unwrap();
    ks.finish_subsume(&[RangeId::FIRST]).unwrap();
    place_active(&mut ks, id(3), "a");
    (ks.counters(), ks.to_records())
}

fn load_with(edit: impl FnOnce(&mut Counters, &mut Vec<RangeRecord>)) -> KeyspaceError {
    let (mut counters, mut records) = sample();
    edit(&mut counters, &mut records);
    Keyspace::from_records(counters, records).unwrap_err()
}

fn record(records: &mut [RangeRecord], n: u64) -> &mut RangeRecord {
    records.iter_mut().find(|r| r.id.get() == n).unwrap()
}

#[test]
fn loads_a_valid_keyspace() {
    let (counters, records) = sample();
    let ks = Keyspace::from_records(counters, records).unwrap();
    assert_eq!(current_ids(&ks), vec![2, 3]);
    assert!(!ks.has_changes());
}

#[test]
fn load_reports_a_current_range_after_one_that_reaches_plus_infinity() {
    // Two unrelated Active ranges: [-inf, +inf) and [m, +inf). The cover walk
    // must not stop at the first one's end.
    let err = load_with(|counters, records| {
        let mut whole = record(records, 2).clone();
        whole.end = Key::empty();
        whole.parents.clear();
        let mut tail = record(records, 3).clone();
        tail.parents.clear();
        tail.placements.clear();
        tail.ever_activated = false;
        *records = vec![whole, tail];
        counters.next_placement_id = 1;
    });
    assert_eq!(
        err,
        KeyspaceError::Overlap {
            first: id(2),
            second: id(3)
        }
    );
}

#[test]
fn load_reports_a_gap() {
    let err = load_with(|_, records| {
        record(records, 3).end = Key::from("x");
        record(records, 1).end = Key::from("x");
    });
    assert_eq!(
        err,
        KeyspaceError::Gap {
            after: Some(id(3)),
            before: None,
            from: Key::from("x"),
            to: Key::empty()
        }
    );
    assert!(
        err.to_string()
            .contains("between range 3 and plus infinity"),
        "{err}"
    );
    // A missing range in the middle, and at the start.
    let err = load_bare(vec![bare(4, "", "f"), bare(5, "g", "")]);
    assert_eq!(
        err,
        KeyspaceError::Gap {
            after: Some(id(4)),
            before: Some(id(5)),
            from: Key::from("f"),
            to: Key::from("g")
        }
    );
    assert!(err.to_string().contains("nothing covers [f, g)"), "{err}");
    let err = load_bare(vec![bare(4, "a", "")]);
    assert_eq!(
        err,
        KeyspaceError::Gap {
            after: None,
            before: Some(id(4)),
            from: Key::empty(),
            to: Key::from("a")
        }
    );
    assert!(err.to_string().contains("[-inf, a)"), "{err}");
}

#[test]
fn load_reports_an_overlap() {
    let err = load_with(|_, records| {
        record(records, 3).start = Key::from("k");
        record(records, 2).end = Key::from("n");
    });
    assert!(
        matches!(
            err,
            KeyspaceError::GroupMismatch { .. } | KeyspaceError::Overlap { .. }
        ),
        "{err}"
    );
    // Current ranges without history overlapping.
    let err = load_bare(vec![bare(4, "", "n"), bare(5, "k", "")]);
    assert_eq!(
        err,
        KeyspaceError::Overlap {
            first: id(4),
            second: id(5)
        }
    );
    assert!(err.to_string().contains("ranges 4 and 5 overlap"), "{err}");
    let err = load_bare(vec![bare(4, "", ""), bare(5, "", "k")]);
    assert_eq!(
        err,
        KeyspaceError::Overlap {
            first: id(4),
            second: id(5)
        }
    );
}

fn load_bare(records: Vec<RangeRecord>) -> KeyspaceError {
    let counters = Counters {
        next_range_id: 10,
        next_placement_id: 1,
        term: 0,
    };
    Keyspace::from_records(counters, records).unwrap_err()
}

fn bare(n: u64, start: &str, end: &str) -> RangeRecord {
    RangeRecord {
        v: RECORD_VERSION,
        id: id(n),
        start: start.into(),
        end: end.into(),
        state: RangeState::Active,
        parents: vec![],
        children: vec![],
        ever_activated: false,
        placements: vec![],
        history: Default::default(),
    }
}

#[test]
fn load_reports_unknown_parent_and_child() {
    let err = load_with(|_, records| record(records, 2).parents = vec![id(7)]);
    assert_eq!(
        err,
        KeyspaceError::UnknownParent {
            range: id(2),
            parent: id(7)
        }
    );
    let err = load_with(|_, records| record(records, 1).children = vec![id(2), id(8)]);
    assert_eq!(
        err,
        KeyspaceError::UnknownChild {
            range: id(1),
            child: id(8)
        }
    );
}

#[test]
fn load_reports_inconsistent_child_lists() {
    let err = load_with(|_, records| record(records, 1).children = vec![id(2)]);
    assert!(
        matches!(err, KeyspaceError::LinksInconsistent { parent, child, .. } if parent == id(1) && child == id(3)),
        "{err}"
    );
    let err = load_with(|_, records| record(records, 3).parents = vec![]);
    assert!(
        matches!(err, KeyspaceError::LinksInconsistent { parent, child, .. } if parent == id(1) && child == id(3)),
        "{err}"
    );
}

#[test]
fn load_reports_duplicate_placement_and_range_ids() {
    let err = load_with(|_, records| {
        let p = record(records, 3).placements[0].clone();
        let mut other = p.clone();
        other.node = node("b");
        other.state = Inactive;
        record(records, 2).placements.push(other);
    });
    assert!(
        matches!(err, KeyspaceError::DuplicatePlacement { placement, .. } if placement == PlacementId::new(1)),
        "{err}"
    );
    let err = load_with(|_, records| {
        let copy = record(records, 2).clone();
        records.push(copy);
    });
    assert_eq!(err, KeyspaceError::DuplicateRange(id(2)));
}

#[test]
fn load_reports_other_corruption() {
    let err = load_with(|counters, _| counters.next_range_id = 3);
    assert_eq!(
        err,
        KeyspaceError::IdNotBelowCounter {
            kind: "range",
            id: 3,
            next: 3
        }
    );
    let err = load_with(|counters, _| counters.next_placement_id = 1);
    assert!(matches!(
        err,
        KeyspaceError::IdNotBelowCounter {
            kind: "placement",
            ..
        }
    ));
    let err = load_with(|_, records| record(records, 2).end = Key::from(""));
    assert!(matches!(err, KeyspaceError::GroupMismatch { .. }), "{err}");
    let err = load_with(|_, records| {
        let r = record(records, 3);
        r.start = Key::from("z");
        r.end = Key::from("a");
    });
    assert!(matches!(err, KeyspaceError::InvalidBounds(_)), "{err}");
    let err = load_with(|_, records| {
        let moved = record(records, 3).placements.clone();
        record(records, 1).placements = moved;
        record(records, 3).placements.clear();
    });
    assert!(matches!(err, KeyspaceError::LivePlacement { .. }), "{err}");
    let err = load_with(|_, records| record(records, 3).ever_activated = false);
    assert!(matches!(err, KeyspaceError::Malformed { .. }), "{err}");
    let err = load_with(|_, records| record(records, 3).v = 4);
    assert!(err.to_string().contains("version 4"), "{err}");
    let err = load_with(|_, records| records.clear());
    assert_eq!(err, KeyspaceError::Empty);
    let err = load_with(|_, records| record(records, 1).state = RangeState::Active);
    assert!(matches!(err, KeyspaceError::Malformed { .. }), "{err}");
}

#[test]
fn load_refuses_range_ids_far_sparser_than_the_records_before_allocating_for_them() {
    // A store whose one range id is a trillion: the table would need a slot for
    // every id below it. Above its counter, the counter error names it first.
    let err = load_with(|_, records| record(records, 3).id = id(1_000_000_000_000));
    assert_eq!(
        err,
        KeyspaceError::IdNotBelowCounter {
            kind: "range",
            id: 1_000_000_000_000,
            next: 4
        }
    );
    // Below a counter that is as corrupt, it is named as too sparse.
    let err = load_with(|counters, records| {
        counters.next_range_id = u64::MAX;
        record(records, 3).id = id(1_000_000_000_000);
    });
    match err {
        KeyspaceError::Malformed { range, detail } => {
            assert_eq!(range, id(1_000_000_000_000));
            assert!(detail.contains("sparser"), "{detail}");
        }
        other => panic!("expected Malformed, got {other}"),
    }
}

#[test]
fn records_loaded_out_of_id_order_give_the_same_keyspace() {
    let (counters, records) = sample();
    let in_order = Keyspace::from_records(counters, records.clone()).unwrap();
    let mut reversed = records;
    reversed.reverse();
    let loaded = Keyspace::from_records(counters, reversed).unwrap();
    assert_eq!(loaded.to_records(), in_order.to_records());
    assert_eq!(current_ids(&loaded), current_ids(&in_order));
    let ids: Vec<u64> = loaded.ranges().map(|r| r.id().get()).collect();
    assert!(ids.is_sorted(), "ranges() walks ids in order: {ids:?}");
}

// ---- a long random run ----

/// Splits, joins, hand-overs, finishes and rollbacks at random for 10,000 steps.
/// Each mutation checks the invariants around it (debug builds); the whole
/// keyspace is checked every 1,000 steps and reloaded from its records at the end.
#[test]
fn random_operations_keep_the_invariants() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let seed: u64 = std::env::var("RANGER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ks = Keyspace::new();
    // Operations begun and not yet finished or rolled back: (parents, children).
    let mut in_flight: Vec<(Vec<RangeId>, Vec<RangeId>)> = Vec::new();
    let random_key = |rng: &mut StdRng| Key::new(rng.random::<u32>().to_be_bytes().to_vec());
    let (mut splits, mut joins, mut finishes, mut rollbacks) = (0, 0, 0, 0);

    for step in 0..10_000 {
        let ctx = format!("seed {seed} step {step}");
        match rng.random_range(0..10) {
            0..=3 => {
                let key = random_key(&mut rng);
                let r = ks.range_for_key(key.as_bytes()).expect(&ctx).id();
                match ks.split(r, key.clone()) {
                    Ok((l, rr)) => {
                        splits += 1;
                        in_flight.push((vec![r], vec![l, rr]));
                    }
                    Err(
                        KeyspaceError::BadSplitKey { .. } | KeyspaceError::WrongRangeState { .. },
                    ) => {}
                    Err(e) => panic!("{ctx}: split {r} at {key}: {e}"),
                }
            }
            4..=5 => {
                let key = random_key(&mut rng);
                let left = ks.range_for_key(key.as_bytes()).expect(&ctx);
                let (l, end) = (left.id(), left.meta().end().clone());
                if end.is_empty() {
                    continue;
                }
                let r = ks.range_for_key(end.as_bytes()).expect(&ctx).id();
                match ks.join(l, r) {
                    Ok(child) => {
                        joins += 1;
                        in_flight.push((vec![l, r], vec![child]));
                    }
                    Err(KeyspaceError::WrongRangeState { .. }) => {}
                    Err(e) => panic!("{ctx}: join {l} {r}: {e}"),
                }
            }
            _ if in_flight.is_empty() => {}
            6..=7 => {
                // Go forward: activate every child, drop the parents, finish.
                let (parents, children) =
                    in_flight.swap_remove(rng.random_range(0..in_flight.len()));
                for c in &children {
                    if ks.range(*c).unwrap().placements().is_empty() {
                        place_active(&mut ks, *c, "n");
                    }
                }
                assert!(children.iter().all(|c| ks.is_current(*c)), "{ctx}");
                for p in &parents {
                    let live: Vec<_> = ks
                        .range(*p)
                        .unwrap()
                        .placements()
                        .iter()
                        .filter(|p| p.is_live())
                        .map(Placement::id)
                        .collect();
                    for placement in live {
                        drop_placement(&mut ks, *p, placement);
                    }
                }
                ks.finish_subsume(&parents).expect(&ctx);
                finishes += 1;
            }
            _ => {
                // Roll back if nothing was activated, else finish without placing.
                let i = rng.random_range(0..in_flight.len());
                let (parents, children) = in_flight[i].clone();
                if children
                    .iter()
                    .any(|c| ks.range(*c).unwrap().ever_activated())
                {
                    continue;
                }
                in_flight.swap_remove(i);
                if rng.random_bool(0.5) {
                    ks.rollback_subsume(&children).expect(&ctx);
                    rollbacks += 1;
                } else {
                    for p in &parents {
                        let live: Vec<_> = ks
                            .range(*p)
                            .unwrap()
                            .placements()
                            .iter()
                            .filter(|p| p.is_live())
                            .map(Placement::id)
                            .collect();
                        for placement in live {
                            drop_placement(&mut ks, *p, placement);
                        }
                    }
                    ks.finish_subsume(&parents).expect(&ctx);
                    finishes += 1;
                }
            }
        }
        let key = random_key(&mut rng);
        let r = ks.range_for_key(key.as_bytes()).expect(&ctx);
        assert!(r.meta().contains(key.as_bytes()), "{ctx}");
        if step % 1_000 == 999 {
            ks.check_invariants()
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
    }
    assert!(
        splits > 1_000 && joins > 100 && finishes > 1_000 && rollbacks > 100,
        "the run must exercise every operation: {splits} {joins} {finishes} {rollbacks}"
    );
    ks.check_invariants().unwrap();
    let reloaded = reload(&ks);
    assert_eq!(current_ids(&reloaded), current_ids(&ks));
    assert_eq!(reloaded.to_records(), ks.to_records());
    assert_eq!(
        reloaded.live_by_node, ks.live_by_node,
        "the live index kept up to date equals the one built at load"
    );
}
