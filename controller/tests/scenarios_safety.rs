//! SCENARIOS.md #31 and #37-#40: the handoff races that lose acknowledged writes
//! or make two writers, each reproduced with the in-process cluster (real
//! rangelets, paused time) and checked for one writer at every step.
//!
//! The rules they prove (DESIGN.md §6): once Activate has been *sent* to a
//! destination, it owns the range until it is proven not serving, so the
//! operation only rolls forward; a probe whose reply was lost may still have
//! renewed the node's lease, so loss is counted from the send time of the last
//! lease-granting probe and no lease is granted until a probe succeeds again; a
//! lost node's ranges at R1 wait for it (Unavailable) instead of being re-created
//! empty, unless an operator forgets the node.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ranger_controller::config::Replication;
use ranger_controller::orchestrator::Engine;
use ranger_controller::runtime::{Completion, OpRequest};
use ranger_controller::transport::Lost;
use ranger_node_sdk::Command;
use ranger_node_sdk::testing::{Behaviour, ScriptedNode};
use ranger_proto::{Key, PlacementState, RangeState};
use support::*;

/// Exactly what a move of range 1 from a to b asks of the nodes' storage.
const MOVED_TO_B: [&str; 4] = ["P(b,1)", "D(a,1)", "A(b,1)", "X(a,1)"];

/// A cluster of `nodes` (R1) with range 1 Active on a and the call log cleared.
async fn range_1_on_a(nodes: &[&str]) -> Cluster {
    let cluster = Cluster::start(nodes, Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.log.clear();
    cluster
}

/// A one-way partition for `node`'s Activate answers and probe answers (the
/// requests arrive and act), or its end.
fn lose_activate_and_probe_replies(cluster: &Cluster, node: &str, lost: bool) {
    cluster
        .transport
        .lose_replies(&addr(node), Lost::Command(Command::Activate), lost);
    cluster
        .transport
        .lose_replies(&addr(node), Lost::Probe, lost);
}

/// Starts moving range 1 to b; resolves when the operation ends.
async fn move_1_to_b(cluster: &Cluster) -> Completion {
    let (_, done) = cluster
        .handle
        .submit(OpRequest::Move {
            range: id(1),
            node: Some(node_id("b")),
        })
        .await
        .unwrap();
    done
}

/// Advances paused time in small steps for `total`, checking invariant 1 (one
/// writer per key, from the nodes' own state) after each.
async fn run_checking_one_writer(cluster: &Cluster, total: Duration) {
    let step = Duration::from_millis(10);
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        tokio::time::sleep(step).await;
        elapsed += step;
        cluster.assert_one_writer();
    }
}

/// The calls after the first `D(source)`: nothing may re-activate the source
/// once a destination was told to activate and did.
fn calls_after(calls: &[String], first: &str) -> Vec<String> {
    let at = calls
        .iter()
        .position(|c| c == first)
        .unwrap_or_else(|| panic!("{first} never happened: {calls:?}"));
    calls[at + 1..].to_vec()
}

#[tokio::test(start_paused = true)]
async fn s37_a_move_whose_activate_is_in_flight_at_the_deadline_rolls_forward() {
    // The interleaving the review reproduced: b's Prepare ends just before the
    // operation deadline (10 s), its Activate takes 0.9 s and answers Activating
    // first (grace period), so the deadline passes with A(b) in flight.
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster.node("b").on(
        Command::Prepare,
        Behaviour::SucceedAfter(Duration::from_millis(9_300)),
    );
    cluster.node("b").on(
        Command::Activate,
        Behaviour::SucceedAfter(Duration::from_millis(900)),
    );
    let done = move_1_to_b(&cluster).await;
    run_checking_one_writer(&cluster, Duration::from_secs(15)).await;
    let result = done.await.unwrap();
    assert!(result.is_ok(), "{result:?}\n{}", cluster.describe().await);
    cluster.wait_active_on(id(1), &["b"]).await;
    assert_eq!(
        cluster.calls(),
        MOVED_TO_B,
        "b's writes must never be thrown away for a re-activated a"
    );
}

#[tokio::test(start_paused = true)]
async fn s37_a_destination_whose_activate_replies_are_lost_stays_the_owner() {
    // Activate reaches b and succeeds, but every reply (and every probe reply) is
    // lost on the way back: the controller cannot tell that b serves. It must not
    // give b up and re-activate a.
    let cluster = range_1_on_a(&["a", "b"]).await;
    lose_activate_and_probe_replies(&cluster, "b", true);
    let done = move_1_to_b(&cluster).await;
    run_checking_one_writer(&cluster, Duration::from_secs(8)).await;
    let after = calls_after(&cluster.calls(), "D(a,1)");
    assert!(
        !after.contains(&"A(a,1)".to_owned()),
        "a was re-activated while b may serve: {:?}",
        cluster.calls()
    );
    // The partition heals: b is found (fenced by its lapsed lease, so Inactive)
    // and activated again, and the move completes forward.
    lose_activate_and_probe_replies(&cluster, "b", false);
    run_checking_one_writer(&cluster, Duration::from_secs(5)).await;
    cluster.wait_active_on(id(1), &["b"]).await;
    assert!(
        !cluster.calls().contains(&"A(a,1)".to_owned()),
        "{:?}",
        cluster.calls()
    );
    // The operator's request ended (with an error: the move could not be
    // confirmed within its deadline), but the keyspace rolled forward.
    let _ = done.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn s37_a_split_child_activating_at_the_deadline_rolls_forward() {
    // Both children are told to activate just before the deadline, and neither
    // has answered Active when it passes.
    let cluster = range_1_on_a(&["a", "b", "c"]).await;
    for child_node in ["b", "c"] {
        cluster.node(child_node).on(
            Command::Prepare,
            Behaviour::SucceedAfter(Duration::from_millis(9_300)),
        );
        cluster.node(child_node).on(
            Command::Activate,
            Behaviour::SucceedAfter(Duration::from_millis(900)),
        );
    }
    let (_, done) = cluster
        .handle
        .submit(split_1_at_m(Some("b"), Some("c")))
        .await
        .unwrap();
    run_checking_one_writer(&cluster, Duration::from_secs(15)).await;
    let result = done.await.unwrap();
    assert!(result.is_ok(), "{result:?}\n{}", cluster.describe().await);
    cluster.wait_obsolete(&[1]).await;
    cluster.wait_active_on(id(2), &["b"]).await;
    cluster.wait_active_on(id(3), &["c"]).await;
    let calls = cluster.calls();
    assert!(
        !calls.contains(&"D(b,2)".to_owned())
            && !calls.contains(&"D(c,3)".to_owned())
            && !calls.contains(&"A(a,1)".to_owned()),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn s37_the_activate_sent_mark_survives_a_controller_restart() {
    // A(b) is sent and takes longer than a whole operation deadline; the
    // controller is killed right after sending it. The new controller must know
    // that b may be serving, and finish the move forward.
    let mut cluster = range_1_on_a(&["a", "b"]).await;
    cluster.node("b").on(
        Command::Activate,
        Behaviour::SucceedAfter(cluster.config.op_deadline + Duration::from_secs(5)),
    );
    let _done = move_1_to_b(&cluster).await;
    let log = cluster.log.clone();
    cluster
        .wait_for("A(b,1) sent", move |_| {
            log.render().contains(&"A(b,1)".to_owned())
        })
        .await;
    cluster.restart_controller().await;
    run_checking_one_writer(&cluster, cluster.config.op_deadline * 2).await;
    cluster.wait_active_on(id(1), &["b"]).await;
    assert_eq!(
        cluster.calls(),
        MOVED_TO_B,
        "storage called once per step, never A(a,1)"
    );
}

#[tokio::test(start_paused = true)]
async fn s38_lost_probe_replies_grant_no_lease_so_the_node_stops_writing_first() {
    // A one-way partition: a receives every probe (and would renew its lease on
    // each) but the controller never hears back. The controller must stop
    // granting leases after the first failed probe, so a's lease lapses before
    // the controller counts a as lost.
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster
        .transport
        .lose_replies(&addr("a"), Lost::Probe, true);
    run_checking_one_writer(
        &cluster,
        cluster.config.node_loss_after() + Duration::from_secs(2),
    )
    .await;
    assert!(
        !cluster.rangelets["a"].lease_valid(),
        "a still holds a lease renewed by probes whose replies were lost"
    );
    // R1: nothing is re-created empty elsewhere while a is away.
    assert!(
        !cluster.calls().iter().any(|c| c.starts_with("P(b")),
        "{:?}",
        cluster.calls()
    );
    cluster
        .transport
        .lose_replies(&addr("a"), Lost::Probe, false);
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.assert_one_writer();
}

#[tokio::test(start_paused = true)]
async fn s31_a_lost_nodes_ranges_are_unavailable_until_it_returns_with_its_data() {
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster.transport.set_reachable(&addr("a"), false);
    run_checking_one_writer(
        &cluster,
        cluster.config.node_loss_after() + Duration::from_secs(3),
    )
    .await;
    // Shown loudly, with the reason and since when; nothing placed empty.
    let unavailable = cluster
        .handle
        .inspect(|e| e.unavailable(id(1)).map(|u| u.reason.clone()))
        .await
        .unwrap();
    let reason = unavailable.expect("range 1 is shown unavailable");
    assert!(reason.contains('a'), "{reason}");
    assert_eq!(
        cluster.placements(id(1)).await,
        vec![("a".to_owned(), PlacementState::Missing)]
    );
    assert_eq!(cluster.calls(), vec!["D(a,1)"], "only a's own fence acted");
    // a comes back with its data: its copy is activated again.
    cluster.transport.set_reachable(&addr("a"), true);
    cluster.wait_active_on(id(1), &["a"]).await;
    assert_eq!(cluster.calls(), vec!["D(a,1)", "A(a,1)"]);
    let still = cluster
        .handle
        .inspect(|e| e.unavailable(id(1)).is_some())
        .await
        .unwrap();
    assert!(!still);
}

#[tokio::test(start_paused = true)]
async fn s31_a_restarted_controller_keeps_waiting_for_a_lost_copy() {
    // Found by random_faults (seed 23): a controller restarted while a node is
    // away has not counted it lost yet, and must not take that as "gone".
    let mut cluster = range_1_on_a(&["a", "b"]).await;
    cluster.transport.set_reachable(&addr("a"), false);
    cluster
        .wait_for("a's copy missing", |e| {
            placements_of(e, id(1)) == vec![("a".to_owned(), PlacementState::Missing)]
        })
        .await;
    cluster.restart_controller().await;
    run_checking_one_writer(
        &cluster,
        cluster.config.node_loss_after() + Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        cluster.placements(id(1)).await,
        vec![("a".to_owned(), PlacementState::Missing)]
    );
    assert_eq!(cluster.calls(), vec!["D(a,1)"], "nothing re-created empty");
    cluster.transport.set_reachable(&addr("a"), true);
    cluster.wait_active_on(id(1), &["a"]).await;
}

#[tokio::test(start_paused = true)]
async fn s31_forgetting_a_lost_node_recreates_its_ranges_empty_and_reports_the_loss() {
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster.transport.set_reachable(&addr("a"), false);
    tokio::time::sleep(cluster.config.node_loss_after() + Duration::from_secs(1)).await;
    let report = cluster.handle.forget_node(node_id("a")).await.unwrap();
    assert_eq!(report.ranges_lost, vec![id(1)]);
    cluster.wait_active_on(id(1), &["b"]).await;
    cluster.assert_one_writer();
    // When a returns, its stale copy is dropped, never served.
    cluster.transport.set_reachable(&addr("a"), true);
    let a = cluster.rangelets["a"].clone();
    cluster
        .wait_for("stale copy dropped", move |_| a.ranges().is_empty())
        .await;
    assert!(
        !cluster.calls().contains(&"A(a,1)".to_owned()),
        "{:?}",
        cluster.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn s31_forgetting_a_node_that_is_not_lost_is_refused() {
    let cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let refused = cluster.handle.forget_node(node_id("a")).await;
    assert!(refused.is_err(), "{refused:?}");
    let unknown = cluster.handle.forget_node(node_id("zz")).await;
    assert!(unknown.is_err(), "{unknown:?}");
    assert_eq!(cluster.range_state(id(1)).await, RangeState::Active);
}

#[tokio::test(start_paused = true)]
async fn s31_r3_survivors_serve_and_a_new_replica_replaces_the_lost_one() {
    let cluster = Cluster::start(&["a", "b", "c", "d"], Replication::R3).await;
    cluster
        .wait_for("3 active", |e| {
            placements_of(e, id(1))
                .iter()
                .filter(|(_, s)| *s == PlacementState::Active)
                .count()
                == 3
        })
        .await;
    let holders: Vec<String> = cluster
        .placements(id(1))
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let lost = holders[0].clone();
    cluster.transport.set_reachable(&addr(&lost), false);
    cluster
        .wait_for("3 active without the lost node", move |e| {
            let p = placements_of(e, id(1));
            p.iter()
                .filter(|(_, s)| *s == PlacementState::Active)
                .count()
                == 3
                && p.iter().all(|(n, _)| *n != lost)
        })
        .await;
    cluster.assert_one_writer();
}

/// Whether every node named holds, as the last group of range 1 it received,
/// exactly the group the controller keeps now.
fn nodes_hold_the_current_group(e: &Engine, nodes: &[ScriptedNode]) -> bool {
    let Some(current) = e.replica_group(id(1)) else {
        return false;
    };
    nodes
        .iter()
        .all(|n| n.received_group(id(1)).as_ref() == Some(current))
}

#[tokio::test(start_paused = true)]
async fn s31_r3_after_the_primary_is_lost_and_replaced_every_member_holds_a_newer_group_without_it()
{
    // A storage system replicating at R3 learns its groups from probes: after
    // a loss, the survivors must stop forwarding to the lost copy, a new
    // primary must take writes, and the replacement must join.
    let cluster = Cluster::start(&["a", "b", "c", "d"], Replication::R3).await;
    let holders = |e: &Engine| -> Vec<String> {
        placements_of(e, id(1))
            .into_iter()
            .filter(|(_, s)| *s == PlacementState::Active)
            .map(|(n, _)| n)
            .collect()
    };
    cluster
        .wait_for("3 active", move |e| holders(e).len() == 3)
        .await;
    let members: Vec<ScriptedNode> = cluster
        .handle
        .inspect(move |e| holders(e))
        .await
        .unwrap()
        .iter()
        .map(|n| cluster.node(n).clone())
        .collect();
    cluster
        .wait_for("the holders hold the group", move |e| {
            nodes_hold_the_current_group(e, &members)
        })
        .await;
    let before = cluster
        .handle
        .inspect(|e| e.replica_group(id(1)).cloned())
        .await
        .unwrap()
        .unwrap();
    let primary = before.primary.clone().expect("a primary among 3 active");
    let lost = primary.trim_end_matches(":7000").to_owned();
    cluster.transport.set_reachable(&primary, false);

    let gone = lost.clone();
    cluster
        .wait_for("3 active without the lost node", move |e| {
            let active = holders(e);
            active.len() == 3 && !active.contains(&gone)
        })
        .await;
    let survivors: Vec<String> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|n| *n != lost)
        .map(str::to_owned)
        .collect();
    let nodes: Vec<ScriptedNode> = survivors.iter().map(|n| cluster.node(n).clone()).collect();
    cluster
        .wait_for(
            "the survivors and the replacement hold the new group",
            move |e| nodes_hold_the_current_group(e, &nodes),
        )
        .await;
    let after = cluster
        .handle
        .inspect(|e| e.replica_group(id(1)).cloned())
        .await
        .unwrap()
        .unwrap();
    assert!(after.epoch > before.epoch, "{before:?} then {after:?}");
    let expected: Vec<String> = survivors.iter().map(|n| addr(n)).collect();
    assert_eq!(
        after.members, expected,
        "without {lost}, with the replacement"
    );
    let new_primary = after.primary.clone().expect("a primary among 3 active");
    assert_ne!(new_primary, primary);
    let active = cluster.handle.inspect(holders).await.unwrap();
    assert!(
        active.contains(&new_primary.trim_end_matches(":7000").to_owned()),
        "the primary {new_primary} is Active: {active:?}"
    );
    // The lost node heard nothing newer.
    assert_eq!(cluster.node(&lost).received_group(id(1)), Some(before));
    cluster.assert_one_writer();
}

#[tokio::test(start_paused = true)]
async fn s41_a_destination_activating_forever_ends_the_request_but_keeps_the_range() {
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster.node("b").on(Command::Activate, Behaviour::Stall);
    let started = tokio::time::Instant::now();
    let done = move_1_to_b(&cluster).await;
    let limit = cluster.config.op_deadline + cluster.config.activate_deadline;
    let result = tokio::time::timeout(limit + Duration::from_secs(2), done)
        .await
        .expect("the request ends within its deadlines")
        .unwrap();
    let message = format!("{result:?}");
    assert!(message.contains("owns the range"), "{message}");
    assert!(started.elapsed() <= limit + Duration::from_secs(1));
    // b was told to activate and never said otherwise: a is not re-activated.
    run_checking_one_writer(&cluster, Duration::from_secs(5)).await;
    assert_eq!(cluster.calls(), vec!["P(b,1)", "D(a,1)", "A(b,1)"]);
}

#[tokio::test(start_paused = true)]
async fn s42_a_prepare_that_keeps_copying_may_outlast_the_operation_deadline() {
    let cluster = range_1_on_a(&["a", "b"]).await;
    let copy_time = cluster.config.op_deadline * 2;
    cluster
        .node("b")
        .on(Command::Prepare, Behaviour::SucceedAfter(copy_time));
    // While it copies, b reports its copy of range 1 growing.
    let b = cluster.node("b").clone();
    let copier = tokio::spawn(async move {
        let mut keys = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            keys += 1000;
            b.set_load(
                id(1),
                ranger_proto::LoadInfo {
                    keys,
                    ..Default::default()
                },
            );
        }
    });
    let result = cluster
        .handle
        .run(OpRequest::Move {
            range: id(1),
            node: Some(node_id("b")),
        })
        .await;
    copier.abort();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(cluster.calls(), MOVED_TO_B);
}

#[tokio::test(start_paused = true)]
async fn s42_a_prepare_without_progress_is_given_up_at_the_deadline() {
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster.node("b").on(Command::Prepare, Behaviour::Stall);
    let started = tokio::time::Instant::now();
    let result = cluster
        .handle
        .run(OpRequest::Move {
            range: id(1),
            node: Some(node_id("b")),
        })
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() <= cluster.config.op_deadline + Duration::from_secs(2));
    cluster.wait_active_on(id(1), &["a"]).await;
}

#[tokio::test(start_paused = true)]
async fn s42_a_split_rollback_whose_child_drops_keep_failing_still_answers() {
    let cluster = range_1_on_a(&["a", "b", "c"]).await;
    cluster
        .node("a")
        .on(Command::Deactivate, Behaviour::Fail("busy".into()));
    for child_node in ["b", "c"] {
        cluster
            .node(child_node)
            .on(Command::Drop, Behaviour::Fail("disk gone".into()));
    }
    let started = tokio::time::Instant::now();
    let (_, done) = cluster
        .handle
        .submit(split_1_at_m(Some("b"), Some("c")))
        .await
        .unwrap();
    let limit = cluster.config.op_deadline * 2 + Duration::from_secs(2);
    let result = tokio::time::timeout(limit, done)
        .await
        .expect("the split answers although the child drops keep failing")
        .unwrap();
    assert!(format!("{result:?}").contains("rolled back"), "{result:?}");
    assert!(started.elapsed() <= limit);
    // The parent kept serving all along.
    cluster.assert_one_writer();
    assert_eq!(
        cluster.placements(id(1)).await,
        vec![("a".to_owned(), PlacementState::Active)]
    );
}

/// The parents list of the first Prepare of `range` that `node` received.
fn prepare_parents(cluster: &Cluster, node: &str, range: u64) -> Vec<ranger_proto::Parent> {
    cluster
        .node(node)
        .calls()
        .into_iter()
        .find(|c| c.command == Command::Prepare && c.range == id(range))
        .unwrap_or_else(|| panic!("{node} never prepared {range}"))
        .parents
}

#[tokio::test(start_paused = true)]
async fn s39_a_retired_destination_is_never_offered_as_a_data_source() {
    // #20: b's child 2 fails to activate (rolled back), c's child 3 serves; the
    // controller rolls forward with 2 on d. Its Prepare must name the frozen
    // parent on a, and never b's retired (never served) copy of 2.
    let cluster = range_1_on_a(&["a", "b", "c", "d"]).await;
    cluster
        .node("b")
        .on(Command::Activate, Behaviour::Fail("corrupt".into()));
    cluster
        .handle
        .run(split_1_at_m(Some("b"), Some("c")))
        .await
        .unwrap();
    cluster.wait_active_on(id(2), &["d"]).await;
    let parents = prepare_parents(&cluster, "d", 2);
    let offered: Vec<(u64, String)> = parents
        .iter()
        .flat_map(|p| {
            p.placements
                .iter()
                .map(move |pl| (p.meta.id().get(), pl.node_addr.clone()))
        })
        .collect();
    assert!(
        !offered.iter().any(|(_, addr)| *addr == addr_of("b")),
        "b's retired copy offered: {offered:?}"
    );
    assert!(offered.contains(&(1, addr_of("a"))), "{offered:?}");
}

fn addr_of(node: &str) -> String {
    addr(node)
}

#[tokio::test(start_paused = true)]
async fn s39_a_prepare_lists_each_range_of_the_history_once_nearest_first() {
    // Split 1 -> 2, 3; join 2 + 3 -> 4; split 4 -> 5, 6. Preparing 5 lists 5,
    // then 4, then 2 and 3, then 1: every generation, each range once.
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let split = |range: u64, key: &str| OpRequest::Split {
        range: id(range),
        key: Key::from(key),
        left: Some(node_id("a")),
        right: Some(node_id("b")),
    };
    cluster.handle.run(split(1, "m")).await.unwrap();
    cluster
        .handle
        .run(OpRequest::Join {
            left: id(2),
            right: id(3),
            node: Some(node_id("b")),
        })
        .await
        .unwrap();
    cluster.handle.run(split(4, "g")).await.unwrap();
    let listed: Vec<u64> = prepare_parents(&cluster, "a", 5)
        .iter()
        .map(|p| p.meta.id().get())
        .collect();
    assert_eq!(listed, vec![5, 4, 2, 3, 1]);
}

#[tokio::test(start_paused = true)]
async fn s43_a_deposed_controllers_late_command_is_refused_by_the_node() {
    use ranger_controller::orchestrator::Call;
    use ranger_controller::transport::NodeTransport;

    let mut cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let old_term = cluster.handle.inspect(|e| e.term()).await.unwrap();
    // A new controller takes over (a restart, or a new leader): a higher term,
    // persisted before it sends anything.
    cluster.restart_controller().await;
    let new_term = cluster.handle.inspect(|e| e.term()).await.unwrap();
    assert!(new_term > old_term, "{new_term} > {old_term}");
    let stored = ranger_controller::bootstrap::load_keyspace(&cluster.persister)
        .await
        .unwrap();
    assert_eq!(stored.term(), new_term, "the new term is durable");
    let a = cluster.rangelets["a"].clone();
    cluster
        .wait_for("a saw the new term", move |_| a.newest_term() == new_term)
        .await;
    cluster.log.clear();
    // The old controller's Deactivate, delayed in the network, lands now.
    let late = cluster
        .transport
        .call(
            &addr("a"),
            id(1),
            Call::Deactivate,
            old_term,
            Duration::from_secs(1),
        )
        .await;
    let refusal = format!("{late:?}");
    assert!(refusal.contains("stale controller term"), "{refusal}");
    assert!(cluster.calls().is_empty(), "{:?}", cluster.calls());
    cluster.wait_active_on(id(1), &["a"]).await;
}

#[tokio::test(start_paused = true)]
async fn s37_a_destination_that_may_have_served_is_not_disowned_by_a_later_refusal() {
    // Found in review: A(b,1) reaches b and b serves, but the replies (and probe
    // replies) are lost. b's lease then lapses, so b fences itself back to
    // Inactive. When Activate replies get through again, b answers the next
    // A(b,1) with "lease lapsed" (Inactive): that proves b is not serving now,
    // not that it never served. The move must not give b up for a.
    let cluster = range_1_on_a(&["a", "b"]).await;
    lose_activate_and_probe_replies(&cluster, "b", true);
    let _done = move_1_to_b(&cluster).await;
    let b = cluster.rangelets["b"].clone();
    cluster
        .wait_for("b fenced back to Inactive", move |_| {
            !b.lease_valid()
                && !b.ranges().is_empty()
                && b.ranges()
                    .iter()
                    .all(|r| r.state == ranger_proto::RemoteState::Inactive)
        })
        .await;
    cluster
        .transport
        .lose_replies(&addr("b"), Lost::Command(Command::Activate), false);
    run_checking_one_writer(&cluster, Duration::from_millis(900)).await;
    let calls = cluster.calls();
    assert!(
        !calls.contains(&"A(a,1)".to_owned()) && !calls.contains(&"X(b,1)".to_owned()),
        "b's writes thrown away: {calls:?}"
    );
    // Healed: b is activated again and the move completes forward.
    cluster
        .transport
        .lose_replies(&addr("b"), Lost::Probe, false);
    cluster.wait_active_on(id(1), &["b"]).await;
    assert!(!cluster.calls().contains(&"A(a,1)".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn s31_an_unavailable_range_cannot_be_moved_split_or_drained_away_empty() {
    // Found in review: a move (or a drain) of a range waiting for its lost copy
    // would prepare an empty copy elsewhere and retire the lost one.
    let cluster = range_1_on_a(&["a", "b"]).await;
    cluster.transport.set_reachable(&addr("a"), false);
    cluster
        .wait_for("range 1 unavailable", |e| e.unavailable(id(1)).is_some())
        .await;
    let moved = cluster.handle.run(OpRequest::Move {
        range: id(1),
        node: Some(node_id("b")),
    });
    let refused = format!("{:?}", moved.await);
    assert!(refused.contains("unavailable"), "{refused}");
    let split = cluster.handle.run(split_1_at_m(None, None));
    let refused = format!("{:?}", split.await);
    assert!(refused.contains("unavailable"), "{refused}");
    cluster.handle.drain(node_id("a"), true).await.unwrap();
    run_checking_one_writer(&cluster, Duration::from_secs(3)).await;
    assert_eq!(
        cluster.placements(id(1)).await,
        vec![("a".to_owned(), PlacementState::Missing)]
    );
    assert_eq!(cluster.calls(), vec!["D(a,1)"], "{:?}", cluster.calls());
}

#[tokio::test(start_paused = true)]
async fn s39_a_source_replaced_by_a_destination_that_may_have_served_is_not_a_source() {
    // Found in review: A(b,1) was sent (its replies lost), then b's node is
    // lost. a is Inactive and not retiring; a split of range 1 must not copy
    // a's data, which b may have overwritten since.
    let cluster = range_1_on_a(&["a", "b", "c"]).await;
    cluster
        .transport
        .lose_replies(&addr("b"), Lost::Command(Command::Activate), true);
    let _done = move_1_to_b(&cluster).await;
    let log = cluster.log.clone();
    cluster
        .wait_for("A(b,1) sent", move |_| {
            log.render().contains(&"A(b,1)".to_owned())
        })
        .await;
    cluster.transport.set_reachable(&addr("b"), false);
    cluster
        .wait_for("range 1 unavailable", |e| e.unavailable(id(1)).is_some())
        .await;
    let split = cluster.handle.run(split_1_at_m(Some("c"), Some("c"))).await;
    assert!(split.is_err(), "{split:?}");
    assert!(
        !cluster.calls().iter().any(|c| c.starts_with("P(c")),
        "{:?}",
        cluster.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn s39_r3_a_child_replica_placed_late_copies_from_the_parent_not_a_sibling() {
    // Found in review: a child's sibling replicas were prepared from snapshots
    // and never served; a replica placed later (after a failed prepare) must be
    // sent to the parent's copies, not to a sibling that lacks the delta.
    let nodes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let cluster = Cluster::start(&nodes, Replication::R3).await;
    cluster.wait_active_on(id(1), &["a", "b", "c"]).await;
    cluster
        .node("d")
        .on(Command::Prepare, Behaviour::Fail("disk".into()));
    cluster.handle.run(split_1_at_m(None, None)).await.unwrap();
    for node in nodes {
        for call in cluster.node(node).calls() {
            if call.command != Command::Prepare || call.range == id(1) {
                continue;
            }
            let own = &call.parents[0];
            assert_eq!(own.meta.id(), call.range);
            assert!(
                own.placements.is_empty(),
                "{node}'s prepare of {} offered unactivated siblings: {:?}",
                call.range,
                own.placements
            );
            let parent = call.parents.iter().find(|p| p.meta.id() == id(1)).unwrap();
            assert_eq!(parent.placements.len(), 3, "{:?}", parent.placements);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn s31_the_reason_says_so_when_a_lost_node_also_left_discovery() {
    // Seen on bin/cluster: a killed node's registration expires too, the roster
    // forgets it, and the reason must still say what happened.
    let mut cluster = range_1_on_a(&["a", "b"]).await;
    cluster.transport.set_reachable(&addr("a"), false);
    cluster.deregister_node("a");
    run_checking_one_writer(
        &cluster,
        cluster.config.node_loss_after() + Duration::from_secs(2),
    )
    .await;
    let reason = cluster
        .handle
        .inspect(|e| e.unavailable(id(1)).map(|u| u.reason.clone()))
        .await
        .unwrap()
        .expect("range 1 waits for a");
    assert!(reason.contains("left discovery"), "{reason}");
    assert!(reason.contains("rangerctl forget a"), "{reason}");
}

/// A store slower than a lease (an overloaded Consul) must not starve the
/// nodes of probes: saves run beside the loop, which keeps probing, so the
/// node serving a range keeps its lease while the save of a move waits.
#[tokio::test(start_paused = true)]
async fn s38_a_store_slower_than_a_lease_does_not_let_the_nodes_leases_lapse() {
    let cluster = range_1_on_a(&["a", "b"]).await;
    // Every save now takes longer than the lease (2 s) and its margin (1 s).
    cluster.persister.slow_saves(Duration::from_secs(8));
    let done = move_1_to_b(&cluster).await;
    for tenth in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            cluster.rangelets["a"].may_write(id(1)),
            "a lost its lease {} ms into a slow save",
            tenth * 100
        );
    }
    cluster.persister.slow_saves(Duration::ZERO);
    done.await.unwrap().unwrap();
    cluster.wait_active_on(id(1), &["b"]).await;
}
