//! The orchestrator engine alone, in the openraft style: events in, effects out,
//! no runtime, no rangelets, no clock. Each test feeds the engine what a runtime
//! would (saves, probe answers, command answers, operator requests) and asserts
//! the exact effects it asks for, in order.
//!
//! The nodes are a few lines of model below (`Nodes`): they apply each command
//! as PROTOCOL.md says a healthy rangelet does, unless a test tells one to fail.
//! The scenario tests (`scenarios_*.rs`) run the same paths through the real
//! runtime and real rangelets; these pin down what the engine decides.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ranger_controller::config::{OrchestratorConfig, Replication};
use ranger_controller::keyspace::Keyspace;
use ranger_controller::orchestrator::{CallError, Effect, Engine, OpError, Persisted};
use ranger_controller::transport::NodeReport;
use ranger_proto::{Key, NodeId, PlacementState, RangeId, ReplicaGroup};
use tokio::time::Instant;

mod support;

use support::engine_driver::{Driver, describe};

fn node(name: &str) -> NodeId {
    support::node_id(name)
}

fn range(n: u64) -> RangeId {
    support::id(n)
}

/// The scenario tests' timings (short backoffs and deadlines), at R1.
fn config() -> OrchestratorConfig {
    support::config(Replication::R1)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---- the persist-before-send and term rules ----

#[test]
fn a_new_engine_asks_only_to_save_its_term_until_the_save_succeeds() {
    let now = Instant::now();
    let mut engine = Engine::new(Keyspace::new(), config(), now);
    engine.node_registered(node("a"), "a:7000".into(), now);
    engine.probe_tick();

    let effects = engine.step(now);
    let [Effect::Persist(changes)] = effects.as_slice() else {
        panic!("expected only the term's save, got {effects:?}");
    };
    assert_eq!(changes.counters.term, 1);

    // The save failed: nothing is released, and the next step asks again.
    assert!(engine.persisted(Persisted::Failed).is_empty());
    let effects = engine.step(now);
    assert!(
        matches!(effects.as_slice(), [Effect::Persist(c)] if c.counters.term == 1),
        "{effects:?}"
    );

    // Saved: only now is the node probed, with the new term.
    assert!(
        engine.take_probes(now).is_empty(),
        "no probe before the term is saved"
    );
    assert!(engine.persisted(Persisted::Saved).is_empty());
    let effects = engine.take_probes(now);
    let probes: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Probe(p) => Some((p.node.to_string(), p.term, p.lease)),
            _ => None,
        })
        .collect();
    assert_eq!(probes, [("a".to_string(), 1, Duration::from_secs(2))]);
}

fn sends(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(d) => Some(describe(d)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_placement_is_saved_before_its_prepare_is_sent_and_no_step_decides_while_saving() {
    let mut driver = Driver::start(&["a"]);
    let probes = driver.step_saved();
    driver.answer_probes(&probes);

    let effects = driver.engine.step(driver.now);
    assert!(
        sends(&effects).is_empty(),
        "no command may leave with its placement unsaved: {effects:?}"
    );
    let Some(Effect::Persist(changes)) = effects.iter().find(|e| matches!(e, Effect::Persist(_)))
    else {
        panic!("expected a save: {effects:?}");
    };
    assert_eq!(changes.upserts.len(), 1);
    assert_eq!(changes.upserts[0].placements.len(), 1);

    // While the save is out, a step decides nothing new.
    driver.engine.probe_tick();
    let during = driver.engine.step(driver.now);
    assert!(during.is_empty(), "{during:?}");
    // ...but probes still leave: a save in flight never holds them back.
    let probes = driver.engine.take_probes(driver.now);
    assert!(
        matches!(probes.as_slice(), [Effect::Probe(p)] if p.node.as_str() == "a"),
        "{probes:?}"
    );

    let mut after = driver.engine.persisted(Persisted::Saved);
    after.extend(driver.step_saved());
    assert_eq!(sends(&after), ["prepare 1@a"]);
}

#[test]
fn a_failed_save_keeps_its_changes_for_the_next_step() {
    let mut driver = Driver::start(&["a"]);
    let probes = driver.step_saved();
    driver.answer_probes(&probes);

    let effects = driver.engine.step(driver.now);
    assert!(effects.iter().any(|e| matches!(e, Effect::Persist(_))));
    assert!(driver.engine.persisted(Persisted::Failed).is_empty());

    let effects = driver.engine.step(driver.now);
    let Some(Effect::Persist(changes)) = effects.iter().find(|e| matches!(e, Effect::Persist(_)))
    else {
        panic!("expected the change to be saved again: {effects:?}");
    };
    assert_eq!(changes.upserts[0].id, range(1));
    assert_eq!(changes.upserts[0].placements.len(), 1);
}

#[test]
fn commands_held_behind_failed_saves_are_sent_once_the_saves_succeed() {
    let mut driver = Driver::start(&["a"]);
    // Every other save fails, for the whole placement.
    let mut saves = 0;
    let mut sent = Vec::new();
    for _ in 0..200 {
        driver.engine.probe_tick();
        let mut effects = driver.engine.take_probes(driver.now);
        effects.extend(driver.engine.step(driver.now));
        for effect in effects {
            let mut released = Vec::new();
            match effect {
                Effect::Persist(_) => {
                    saves += 1;
                    let result = if saves % 2 == 1 {
                        Persisted::Failed
                    } else {
                        Persisted::Saved
                    };
                    released = driver.engine.persisted(result);
                }
                other => released.push(other),
            }
            for effect in released {
                match effect {
                    Effect::Probe(probe) => {
                        let report = driver.nodes.report(&probe.node);
                        driver.engine.on_probe(
                            &probe.node,
                            probe.sent_at,
                            Ok(NodeReport::of(report)),
                        );
                    }
                    Effect::Send(dispatch) => {
                        sent.push(describe(&dispatch));
                        let outcome = driver.nodes.apply(&dispatch);
                        driver.engine.on_answer(&dispatch, Ok(outcome), driver.now);
                    }
                    _ => {}
                }
            }
        }
        driver.now += Duration::from_millis(100);
    }
    assert!(saves >= 4, "the placement took several saves: {saves}");
    assert_eq!(sent, ["prepare 1@a", "activate 1@a"]);
    assert_eq!(driver.placements(1), [("a".into(), PlacementState::Active)]);
}

// ---- probes ----

#[test]
fn a_registered_node_is_probed_at_once_and_then_on_each_tick_one_probe_at_a_time() {
    let mut driver = Driver::start(&["a", "b"]);
    let probed = |effects: &[Effect]| -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Probe(p) => Some(p.node.to_string()),
                _ => None,
            })
            .collect()
    };

    // Registered: probed at the next step, without waiting for the tick.
    let first = driver.step_saved();
    assert_eq!(probed(&first), ["a", "b"]);
    // Unanswered: not probed again, even on a tick.
    driver.engine.probe_tick();
    assert!(probed(&driver.step_saved()).is_empty());

    // a answers; on the next tick only a is probed (b's probe is still out).
    let report = driver.nodes.report(&node("a"));
    driver
        .engine
        .on_probe(&node("a"), driver.now, Ok(NodeReport::of(report)));
    assert!(probed(&driver.step_saved()).is_empty());
    driver.engine.probe_tick();
    assert_eq!(probed(&driver.step_saved()), ["a"]);
}

#[test]
fn after_a_failed_probe_the_next_grants_no_lease_until_one_succeeds() {
    let mut driver = Driver::start(&["a"]);
    let lease_of = |effects: &[Effect]| {
        effects.iter().find_map(|e| match e {
            Effect::Probe(p) => Some(p.lease),
            _ => None,
        })
    };
    let first = driver.engine.take_probes(driver.now);
    assert_eq!(lease_of(&first), Some(Duration::from_secs(2)));
    let timeout = first.iter().find_map(|e| match e {
        Effect::Probe(p) => Some(p.timeout),
        _ => None,
    });
    assert_eq!(
        timeout,
        Some(Duration::from_secs(1)),
        "capped at the margin"
    );

    driver
        .engine
        .on_probe(&node("a"), driver.now, Err("timed out".into()));
    driver.engine.probe_tick();
    let second = driver.engine.take_probes(driver.now);
    assert_eq!(lease_of(&second), Some(Duration::ZERO));

    driver
        .engine
        .on_probe(&node("a"), driver.now, Ok(NodeReport::of(Vec::new())));
    driver.engine.probe_tick();
    let third = driver.engine.take_probes(driver.now);
    assert_eq!(lease_of(&third), Some(Duration::from_secs(2)));
}

// ---- place, move, split, join ----

#[test]
fn the_first_range_is_placed_prepared_then_activated() {
    let mut driver = Driver::start(&["a"]);
    driver.settle();
    assert_eq!(driver.commands(), strings(&["prepare 1@a", "activate 1@a"]));
    assert_eq!(driver.placements(1), [("a".into(), PlacementState::Active)]);
}

#[test]
fn a_move_prepares_the_destination_then_hands_over_and_drops_the_source() {
    let mut driver = Driver::with_range_on_a(&["a", "b"]);
    let op = driver
        .engine
        .request_move(range(1), Some(node("b")), driver.now)
        .unwrap();
    driver.settle();
    assert_eq!(
        driver.commands(),
        strings(&["prepare 1@b", "deactivate 1@a", "activate 1@b", "drop 1@a"])
    );
    assert_eq!(driver.finished.get(&op), Some(&Ok(())));
    assert_eq!(driver.placements(1), [("b".into(), PlacementState::Active)]);
}

/// A node's views are of ranges it holds or is meant to: the view of a
/// dropped copy goes once a later probe confirms the node no longer holds it,
/// so a long-lived controller's roster (and the pass each probe answer makes
/// over it) does not grow with every range that ever passed through a node.
#[test]
fn a_moved_ranges_view_on_its_source_node_goes_once_a_later_probe_confirms_the_drop() {
    let mut driver = Driver::with_range_on_a(&["a", "b"]);
    let held = |driver: &Driver, on: &str| {
        driver
            .engine
            .roster()
            .get(&node(on))
            .map(|n| n.ranges.keys().map(|r| r.get()).collect::<Vec<_>>())
    };
    assert_eq!(held(&driver, "a"), Some(vec![1]));
    // To b and back: each time the source's view goes, the destination's is new.
    for (to, from) in [("b", "a"), ("a", "b")] {
        driver
            .engine
            .request_move(range(1), Some(node(to)), driver.now)
            .unwrap();
        driver.settle();
        assert_eq!(driver.placements(1), [(to.into(), PlacementState::Active)]);
        assert_eq!(held(&driver, to), Some(vec![1]));
        assert_eq!(held(&driver, from), Some(vec![]), "the dropped copy's view");
    }
}

#[test]
fn a_split_prepares_both_children_then_hands_over_and_drops_the_parent() {
    let mut driver = Driver::with_range_on_a(&["a"]);
    let op = driver
        .engine
        .request_split(range(1), Key::from("m"), None, None, driver.now)
        .unwrap();
    driver.settle();
    assert_eq!(
        driver.commands(),
        strings(&[
            "prepare 2@a",
            "prepare 3@a",
            "deactivate 1@a",
            "activate 2@a",
            "activate 3@a",
            "drop 1@a"
        ])
    );
    assert_eq!(driver.finished.get(&op), Some(&Ok(())));
    assert_eq!(driver.placements(2), [("a".into(), PlacementState::Active)]);
    assert_eq!(driver.placements(3), [("a".into(), PlacementState::Active)]);
}

#[test]
fn a_join_prepares_the_child_then_hands_over_and_drops_both_parents() {
    let mut driver = Driver::with_range_on_a(&["a"]);
    driver
        .engine
        .request_split(range(1), Key::from("m"), None, None, driver.now)
        .unwrap();
    driver.settle();
    driver.commands();

    let op = driver
        .engine
        .request_join(range(2), range(3), None, driver.now)
        .unwrap();
    driver.settle();
    assert_eq!(
        driver.commands(),
        strings(&[
            "prepare 4@a",
            "deactivate 2@a",
            "deactivate 3@a",
            "activate 4@a",
            "drop 2@a",
            "drop 3@a"
        ])
    );
    assert_eq!(driver.finished.get(&op), Some(&Ok(())));
    assert_eq!(driver.placements(4), [("a".into(), PlacementState::Active)]);
}

// ---- failure paths ----

#[test]
fn a_move_whose_destination_cannot_prepare_is_given_up_and_the_source_keeps_serving() {
    let mut driver = Driver::with_range_on_a(&["a", "b"]);
    driver.nodes.failing.push(("b".into(), "prepare"));
    let op = driver
        .engine
        .request_move(range(1), Some(node("b")), driver.now)
        .unwrap();
    driver.settle();

    let commands = driver.commands();
    let prepares = commands.iter().filter(|c| *c == "prepare 1@b").count();
    assert_eq!(
        prepares, 3,
        "max_attempts prepares, then given up: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.ends_with("@a")),
        "the source was never touched: {commands:?}"
    );
    assert!(
        matches!(driver.finished.get(&op), Some(Err(_))),
        "{:?}",
        driver.finished
    );
    let live: Vec<_> = driver
        .placements(1)
        .into_iter()
        .filter(|(_, s)| *s != PlacementState::Dropped)
        .collect();
    assert_eq!(live, [("a".into(), PlacementState::Active)]);
}

#[test]
fn a_split_whose_child_cannot_prepare_rolls_back_and_the_parent_keeps_serving() {
    let mut driver = Driver::with_range_on_a(&["a"]);
    driver.nodes.failing.push(("a".into(), "prepare"));
    let op = driver
        .engine
        .request_split(range(1), Key::from("m"), None, None, driver.now)
        .unwrap();
    driver.settle();

    let commands = driver.commands();
    assert!(
        !commands.iter().any(|c| c.starts_with("deactivate 1@")),
        "the parent was never deactivated: {commands:?}"
    );
    assert!(
        matches!(driver.finished.get(&op), Some(Err(_))),
        "{:?}",
        driver.finished
    );
    assert_eq!(driver.placements(1), [("a".into(), PlacementState::Active)]);
    for child in [2, 3] {
        assert!(
            driver
                .placements(child)
                .iter()
                .all(|(_, s)| *s == PlacementState::Dropped),
            "child {child} holds nothing: {:?}",
            driver.placements(child)
        );
    }
}

#[test]
fn an_unreachable_node_gets_its_command_again_after_a_backoff() {
    let mut driver = Driver::start(&["a"]);
    let probes = driver.step_saved();
    driver.answer_probes(&probes);
    let mut prepare = None;
    for _ in 0..3 {
        let effects = driver.step_saved();
        if let Some(Effect::Send(d)) = effects.into_iter().find(|e| matches!(e, Effect::Send(_))) {
            prepare = Some(d);
            break;
        }
    }
    let prepare = prepare.expect("a Prepare within a few steps");
    assert_eq!(describe(&prepare), "prepare 1@a");
    driver.engine.on_answer(
        &prepare,
        Err(CallError::Unreachable("connection refused".into())),
        driver.now,
    );

    // Within the backoff (50 ms) nothing is sent; after it, the same Prepare.
    driver.now += Duration::from_millis(10);
    assert!(sends(&driver.step_saved()).is_empty());
    driver.now += Duration::from_millis(50);
    assert_eq!(sends(&driver.step_saved()), ["prepare 1@a"]);
}

#[test]
fn requests_for_unknown_ranges_and_nodes_are_refused_and_change_nothing() {
    let mut driver = Driver::with_range_on_a(&["a"]);
    assert_eq!(
        driver.engine.request_move(range(9), None, driver.now),
        Err(OpError::UnknownRange(range(9)))
    );
    assert_eq!(
        driver
            .engine
            .request_move(range(1), Some(node("zz")), driver.now),
        Err(OpError::UnknownNode(node("zz")))
    );
    assert!(matches!(
        driver
            .engine
            .request_split(range(1), Key::empty(), None, None, driver.now),
        Err(OpError::InvalidArgument(_))
    ));
    let effects = driver.engine.step(driver.now);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Persist(_) | Effect::Send(_))),
        "{effects:?}"
    );
    assert_eq!(driver.engine.operations().count(), 0);
}

#[test]
fn an_operation_is_reported_done_only_once_its_end_is_saved() {
    // Range 1 is not placed anywhere: its split ends in the step that saves it.
    let now = Instant::now();
    let mut engine = Engine::new(Keyspace::new(), support::config(Replication::R1), now);
    let term = engine.step(now);
    assert!(matches!(term.as_slice(), [Effect::Persist(_)]));
    engine.persisted(Persisted::Saved);
    let op = engine
        .request_split(range(1), Key::from("m"), None, None, now)
        .unwrap();
    let finished = |effects: &[Effect]| {
        effects
            .iter()
            .any(|e| matches!(e, Effect::Finished { op: o, .. } if *o == op))
    };

    let effects = engine.step(now);
    assert!(effects.iter().any(|e| matches!(e, Effect::Persist(_))));
    assert!(!finished(&effects), "reported before its save: {effects:?}");
    // The save fails: still not reported, and not forgotten either.
    assert!(!finished(&engine.persisted(Persisted::Failed)));
    let effects = engine.step(now);
    assert!(effects.iter().any(|e| matches!(e, Effect::Persist(_))));
    assert!(!finished(&effects));
    let released = engine.persisted(Persisted::Saved);
    assert!(finished(&released), "{released:?}");
}

#[test]
fn a_node_registered_again_while_its_probe_is_out_is_probed_as_soon_as_it_answers() {
    let mut driver = Driver::start(&["a"]);
    let first = driver.engine.take_probes(driver.now);
    assert_eq!(first.len(), 1);
    // Discovery moves a to a new address while the first probe is out.
    driver
        .engine
        .node_registered(node("a"), "a:7001".into(), driver.now);
    assert!(
        driver.engine.take_probes(driver.now).is_empty(),
        "one probe at a time"
    );
    // The old address answers (another process, or a's before it moved): it
    // says nothing about a as it is now, so it is not taken as a's answer.
    driver
        .engine
        .on_probe(&node("a"), driver.now, Ok(NodeReport::of(Vec::new())));
    let a = driver.engine.roster().get(&node("a")).unwrap();
    assert!(
        a.last_ok.is_none(),
        "an answer from a former address counted"
    );
    // No tick needed: the re-registration's probe goes now, to the new address.
    let again = driver.engine.take_probes(driver.now);
    let addrs: Vec<&str> = again
        .iter()
        .filter_map(|e| match e {
            Effect::Probe(p) => Some(p.addr.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(addrs, ["a:7001"]);
}

// ---- what operators and metrics see of ended operations ----

#[test]
fn ended_operations_are_listed_newest_first_and_counted_by_kind_and_result() {
    use ranger_controller::orchestrator::history::{OpKind, OriginKind};

    let mut driver = Driver::with_range_on_a(&["a", "b"]);
    let moved = driver
        .engine
        .request_move(range(1), Some(node("b")), driver.now)
        .unwrap();
    driver.settle();
    driver.nodes.failing.push(("a".into(), "prepare"));
    let failed = driver
        .engine
        .request_move(range(1), Some(node("a")), driver.now)
        .unwrap();
    driver.settle();

    let recent: Vec<_> = driver
        .engine
        .history()
        .recent()
        .map(|op| (op.id, op.description.clone(), op.result.is_ok()))
        .collect();
    assert_eq!(
        recent,
        [
            (failed, "move 1 to a".to_string(), false),
            (moved, "move 1 to b".to_string(), true),
        ]
    );
    let totals = driver.engine.history().totals();
    assert_eq!(
        totals.get(&(OpKind::Move, OriginKind::Operator, "ok")),
        Some(&1)
    );
    assert_eq!(totals.values().sum::<u64>(), 2);
    let durations = driver.engine.history().durations();
    assert_eq!(durations[&(OpKind::Move, "ok")].count(), 1);
}

#[test]
fn a_queued_operation_cancelled_is_recorded_as_cancelled() {
    use ranger_controller::orchestrator::history::{OpKind, OriginKind};

    let mut driver = Driver::with_range_on_a(&["a", "b"]);
    driver
        .engine
        .request_move(range(1), Some(node("b")), driver.now)
        .unwrap();
    // Queued behind the move: same range.
    let queued = driver
        .engine
        .request_split(range(1), Key::from("m"), None, None, driver.now)
        .unwrap();
    driver.engine.cancel(queued, driver.now).unwrap();

    let last = driver.engine.history().recent().next().unwrap();
    assert_eq!(last.id, queued);
    assert!(matches!(last.result, Err(OpError::Cancelled(_))));
    assert_eq!(
        driver
            .engine
            .history()
            .totals()
            .get(&(OpKind::Split, OriginKind::Operator, "cancelled")),
        Some(&1)
    );
}

#[test]
fn placement_transitions_are_counted_by_the_state_entered() {
    let mut driver = Driver::with_range_on_a(&["a", "b"]);
    let before = driver.engine.keyspace().transition_counts().clone();
    driver
        .engine
        .request_move(range(1), Some(node("b")), driver.now)
        .unwrap();
    driver.settle();
    let after = driver.engine.keyspace().transition_counts();
    let entered = |state: PlacementState| {
        after.get(&state).copied().unwrap_or(0) - before.get(&state).copied().unwrap_or(0)
    };
    // The destination: Pending, Inactive (prepared), Active; the source: Inactive
    // (deactivated), Dropped.
    assert_eq!(entered(PlacementState::Pending), 1);
    assert_eq!(entered(PlacementState::Active), 1);
    assert_eq!(entered(PlacementState::Dropped), 1);
    assert_eq!(entered(PlacementState::Inactive), 2);
}

#[test]
fn a_handoffs_commands_name_their_operation_and_a_first_placement_names_none() {
    let mut driver = Driver::start(&["a"]);
    driver.settle();
    assert_eq!(driver.sent, strings(&["prepare 1@a", "activate 1@a"]));
    assert_eq!(
        driver.sent_for,
        [None, None],
        "placing the first range is no operation"
    );
    driver.commands();
    driver
        .engine
        .node_registered(node("b"), "b:7000".into(), driver.now);
    let op = driver
        .engine
        .request_move(range(1), Some(node("b")), driver.now)
        .unwrap();
    driver.settle();
    assert_eq!(
        driver.sent,
        strings(&["prepare 1@b", "deactivate 1@a", "activate 1@b", "drop 1@a"])
    );
    assert_eq!(
        driver.sent_for,
        [Some(op); 4],
        "the source's drop after the move ended is the move's too"
    );
}

// ---- replica groups (InfoRequest.groups) ----

/// The scenario tests' timings at R3.
fn r3() -> OrchestratorConfig {
    support::config(Replication::R3)
}

fn addr(name: &str) -> String {
    support::addr(name)
}

/// The group the engine keeps for a range (panics if it has none).
fn group(driver: &Driver, n: u64) -> ReplicaGroup {
    driver
        .engine
        .replica_group(range(n))
        .cloned()
        .unwrap_or_else(|| panic!("range {n} has no replica group"))
}

/// The name of the node at `address` (`a` for `a:7000`).
fn name_at(address: &str) -> String {
    address.trim_end_matches(":7000").to_owned()
}

/// The contract nodes rely on, checked on every group the engine keeps:
/// members are the range's Loading, Inactive and Active placements (sorted),
/// and the primary is one of them that the controller records Active.
fn assert_groups_follow_the_placements(driver: &Driver) {
    let engine = &driver.engine;
    let lost = |n: &NodeId| {
        engine
            .roster()
            .get(n)
            .is_none_or(|s| s.is_lost(driver.now, engine.config().node_loss_after()))
    };
    for r in engine.keyspace().ranges() {
        let Some(group) = engine.replica_group(r.id()) else {
            continue;
        };
        let mut holders: Vec<String> = r
            .placements()
            .iter()
            .filter(|p| {
                matches!(
                    p.state(),
                    PlacementState::Loading | PlacementState::Inactive | PlacementState::Active
                ) && !lost(p.node())
            })
            .map(|p| addr(p.node().as_str()))
            .collect();
        holders.sort();
        holders.dedup();
        assert_eq!(group.members, holders, "members of {}", r.id());
        if let Some(primary) = &group.primary {
            let active = r.placements().iter().any(|p| {
                p.node().as_str() == name_at(primary)
                    && p.state() == PlacementState::Active
                    && !lost(p.node())
            });
            assert!(active, "primary {primary} of {} is not Active", r.id());
        }
    }
}

/// Steps (probing on every tick) until `done` holds, checking the groups'
/// contract after every step; panics after `max` steps.
fn step_until(driver: &mut Driver, max: usize, done: impl Fn(&Driver) -> bool) {
    for _ in 0..max {
        driver.engine.probe_tick();
        let probes = driver.engine.take_probes(driver.now);
        driver.execute(probes);
        let effects = driver.engine.step(driver.now);
        driver.execute(effects);
        assert_groups_follow_the_placements(driver);
        if done(driver) {
            return;
        }
        driver.now += Duration::from_millis(100);
    }
    panic!("not reached in {max} steps: {:?}", driver.placements(1));
}

fn active_on(driver: &Driver, n: u64) -> Vec<String> {
    driver
        .placements(n)
        .into_iter()
        .filter(|(_, s)| *s == PlacementState::Active)
        .map(|(node, _)| node)
        .collect()
}

/// Range 1 Active on a, b and c at R3 (d, if named, holds nothing), with
/// every node probed since.
fn r3_on_abc(names: &[&str]) -> Driver {
    let mut driver = Driver::start_with(names, r3());
    driver.settle();
    let mut active = active_on(&driver, 1);
    active.sort();
    assert_eq!(active, strings(&["a", "b", "c"]));
    driver.commands();
    driver
}

#[test]
fn at_r1_no_range_has_a_group_and_probes_carry_none() {
    let mut driver = Driver::start(&["a", "b"]);
    driver.settle();
    assert!(driver.engine.replica_group(range(1)).is_none());
    assert_eq!(driver.received.len(), 2, "both nodes were probed");
    assert!(
        driver.received.values().all(Vec::is_empty),
        "{:?}",
        driver.received
    );
    driver.engine.probe_tick();
    for effect in driver.engine.take_probes(driver.now) {
        let Effect::Probe(probe) = effect else {
            continue;
        };
        assert!(probe.groups.is_empty(), "{probe:?}");
    }
}

#[test]
fn at_r3_every_members_probe_carries_the_group_of_three_with_one_active_primary() {
    let mut driver = r3_on_abc(&["a", "b", "c", "d"]);
    let g = group(&driver, 1);
    assert_eq!(g.members, [addr("a"), addr("b"), addr("c")]);
    let primary = g.primary.clone().expect("a primary");
    assert!(g.members.contains(&primary));
    assert_groups_follow_the_placements(&driver);

    driver.engine.probe_tick();
    let probes = driver.engine.take_probes(driver.now);
    let mut carried: Vec<(String, Vec<ReplicaGroup>)> = probes
        .into_iter()
        .filter_map(|e| match e {
            Effect::Probe(p) => Some((p.node.to_string(), p.groups)),
            _ => None,
        })
        .collect();
    carried.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        carried,
        [
            ("a".to_owned(), vec![g.clone()]),
            ("b".to_owned(), vec![g.clone()]),
            ("c".to_owned(), vec![g.clone()]),
            ("d".to_owned(), vec![]),
        ],
        "members get the group, the node holding nothing gets none"
    );
}

#[test]
fn the_primary_and_the_epoch_stay_while_nothing_changes_and_the_primary_survives_another_members_move()
 {
    let mut driver = r3_on_abc(&["a", "b", "c", "d"]);
    let before = group(&driver, 1);
    driver.settle();
    assert_eq!(group(&driver, 1), before, "steps that change nothing");

    // A copy that is not the primary moves to d.
    let primary = before.primary.clone().unwrap();
    let mover = ["a", "b", "c"]
        .into_iter()
        .find(|n| addr(n) != primary)
        .unwrap();
    driver.engine.drain(&node(mover), true).unwrap();
    step_until(&mut driver, 200, |d| {
        group(d, 1).members.contains(&addr("d")) && !group(d, 1).members.contains(&addr(mover))
    });
    let after = group(&driver, 1);
    assert_eq!(
        after.primary,
        Some(primary),
        "the primary stays while Active"
    );
    assert!(after.epoch > before.epoch);
}

#[test]
fn a_deactivated_primary_stays_a_member_but_another_active_copy_becomes_primary() {
    let mut driver = r3_on_abc(&["a", "b", "c", "d"]);
    let before = group(&driver, 1);
    let primary = before.primary.clone().unwrap();
    let old = name_at(&primary);
    // Draining the primary's node: d activates, then the old copy is
    // deactivated (Inactive, retiring) before it is dropped.
    driver.engine.drain(&node(&old), true).unwrap();
    step_until(&mut driver, 200, |d| {
        d.placements(1)
            .iter()
            .any(|(n, s)| *n == old && *s == PlacementState::Inactive)
    });
    let after = group(&driver, 1);
    assert!(
        after.members.contains(&primary),
        "a deactivated copy is still a member: {after:?}"
    );
    let new_primary = after.primary.clone().expect("another copy is Active");
    assert_ne!(new_primary, primary);
    assert!(active_on(&driver, 1).contains(&name_at(&new_primary)));
    assert!(after.epoch > before.epoch);
}

#[test]
fn a_lost_primary_leaves_the_group_and_an_active_survivor_becomes_primary_with_a_higher_epoch() {
    let mut driver = r3_on_abc(&["a", "b", "c", "d"]);
    let before = group(&driver, 1);
    let primary = before.primary.clone().unwrap();
    let lost = name_at(&primary);
    driver.nodes.down.insert(node(&lost));
    step_until(&mut driver, 100, |d| {
        !d.placements(1)
            .iter()
            .any(|(n, s)| *n == lost && *s == PlacementState::Active)
    });
    let after = group(&driver, 1);
    assert!(!after.members.contains(&primary), "{after:?}");
    let new_primary = after.primary.clone().expect("two copies are Active");
    assert!(active_on(&driver, 1).contains(&name_at(&new_primary)));
    assert!(after.epoch > before.epoch);
    // The replacement on d joins, the primary stays, the epoch grows again.
    step_until(&mut driver, 100, |d| active_on(d, 1).len() == 3);
    let replaced = group(&driver, 1);
    assert!(replaced.members.contains(&addr("d")), "{replaced:?}");
    assert_eq!(replaced.primary, Some(new_primary));
    assert!(replaced.epoch > after.epoch);
    // The survivors hear of it; the lost node does not.
    driver.settle();
    assert_eq!(group(&driver, 1), replaced);
    for n in ["a", "b", "c", "d"].into_iter().filter(|n| *n != lost) {
        assert_eq!(
            driver.received[&node(n)],
            std::slice::from_ref(&replaced),
            "{n}"
        );
    }
    assert_eq!(driver.received[&node(&lost)], [before]);
}

#[test]
fn at_r3_no_copy_is_told_to_activate_before_a_probe_told_its_node_the_range_is_replicated() {
    // Placing, adding a copy (a drain moves one) and splitting: every Activate
    // of a replicated range goes to a node whose last answered probe carried
    // a group of that range listing it. A copy activated unaware would take
    // client writes as the only copy (R1), on it alone.
    let mut driver = Driver::start_with(&["a", "b", "c", "d"], r3());
    driver.settle();
    assert_eq!(active_on(&driver, 1).len(), 3);
    let mover = active_on(&driver, 1)[0].clone();
    driver.engine.drain(&node(&mover), true).unwrap();
    driver.settle();
    assert!(!active_on(&driver, 1).contains(&mover));
    assert!(
        driver.activated_unaware.is_empty(),
        "{:?}",
        driver.activated_unaware
    );
    assert!(
        driver.commands().iter().any(|c| c.starts_with("activate ")),
        "activations were sent"
    );
}

#[test]
fn a_copy_still_loading_is_a_member_but_never_the_primary() {
    let mut driver = Driver::start_with(&["a", "b", "c"], r3());
    for n in ["a", "b", "c"] {
        driver.nodes.slow_prepares.insert(node(n));
    }
    step_until(&mut driver, 50, |d| {
        d.placements(1)
            .iter()
            .filter(|(_, s)| *s == PlacementState::Loading)
            .count()
            == 3
    });
    let loading = group(&driver, 1);
    assert_eq!(loading.members, [addr("a"), addr("b"), addr("c")]);
    assert_eq!(loading.primary, None, "no copy is Active yet");

    // b finishes first: it is activated and becomes the primary; a and c, still
    // loading, stay members only.
    driver.nodes.finish_preparing(&node("b"));
    step_until(&mut driver, 50, |d| active_on(d, 1) == ["b"]);
    let one = group(&driver, 1);
    assert_eq!(one.members, loading.members);
    assert_eq!(one.primary, Some(addr("b")));
    assert!(one.epoch > loading.epoch);
    // The others finish: b stays the primary.
    driver.nodes.finish_preparing(&node("a"));
    driver.nodes.finish_preparing(&node("c"));
    step_until(&mut driver, 50, |d| active_on(d, 1).len() == 3);
    assert_eq!(group(&driver, 1).primary, Some(addr("b")));
}

#[test]
fn a_group_change_makes_its_members_due_for_a_probe_before_the_next_round() {
    let mut driver = r3_on_abc(&["a", "b", "c", "d"]);
    let before = group(&driver, 1);
    let mover = ["a", "b", "c"]
        .into_iter()
        .find(|n| Some(addr(n)) != before.primary)
        .unwrap();
    driver.engine.drain(&node(mover), true).unwrap();
    // Steps with commands answered but no probe round, until the group changes
    // (d's copy is prepared: a new member).
    for _ in 0..20 {
        let effects = driver.engine.step(driver.now);
        driver.execute(effects);
        if group(&driver, 1) != before {
            break;
        }
        driver.now += Duration::from_millis(10);
    }
    let changed = group(&driver, 1);
    assert_ne!(changed, before, "the group never changed");
    let mut due: Vec<(String, Vec<ReplicaGroup>)> = driver
        .engine
        .take_probes(driver.now)
        .into_iter()
        .filter_map(|e| match e {
            Effect::Probe(p) => Some((addr(p.node.as_str()), p.groups)),
            _ => None,
        })
        .collect();
    due.sort_by(|x, y| x.0.cmp(&y.0));
    let expected: Vec<(String, Vec<ReplicaGroup>)> = changed
        .members
        .iter()
        .map(|m| (m.clone(), vec![changed.clone()]))
        .collect();
    assert_eq!(due, expected, "every member, at once, with the new group");
}

#[test]
fn epochs_carry_the_term_so_a_new_leaders_groups_are_newer() {
    let mut driver = r3_on_abc(&["a", "b", "c"]);
    let old = group(&driver, 1);
    let old_term = driver.engine.term();
    assert_eq!(old.epoch >> 32, old_term);
    driver.fail_over(&["a", "b", "c"]);
    driver.settle();
    let new = group(&driver, 1);
    assert!(driver.engine.term() > old_term);
    assert_eq!(new.epoch >> 32, driver.engine.term());
    assert!(new.epoch > old.epoch);
    assert_eq!(new.members, old.members);
    assert!(new.primary.is_some());
    assert_eq!(driver.received[&node("a")], [new]);
}

#[test]
fn a_split_forgets_the_parents_group_and_gives_each_child_its_own() {
    let mut driver = r3_on_abc(&["a", "b", "c"]);
    let parent = group(&driver, 1);
    let op = driver
        .engine
        .request_split(range(1), Key::from("m"), None, None, driver.now)
        .unwrap();
    driver.settle();
    assert_eq!(driver.finished.get(&op), Some(&Ok(())));
    assert!(driver.engine.replica_group(range(1)).is_none());
    let mut carried: Vec<u64> = driver.received[&node("a")]
        .iter()
        .map(|g| g.range.get())
        .collect();
    carried.sort_unstable();
    assert_eq!(carried, [2, 3], "the children's groups, not the parent's");
    for child in [2, 3] {
        let g = group(&driver, child);
        assert_eq!(g.members, parent.members);
        assert!(g.epoch > parent.epoch);
        assert!(g.primary.is_some());
    }
    assert_groups_follow_the_placements(&driver);
}
