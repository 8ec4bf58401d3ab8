//! SCENARIOS.md: nodes and the controller itself (#30-#35).

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ranger_controller::bootstrap::{LoadError, load_keyspace};
use ranger_controller::config::Replication;
use ranger_controller::keyspace::{ChangeSet, Keyspace};
use ranger_controller::persist::{MemoryPersister, Persister};
use ranger_controller::runtime::OpRequest;
use ranger_node_sdk::Command;
use ranger_node_sdk::testing::Behaviour;
use ranger_proto::{Key, PlacementState, RangeState};
use support::*;

#[tokio::test(start_paused = true)]
async fn s30_a_node_that_forgets_a_range_gets_it_placed_again() {
    let mut cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.log.clear();
    cluster.restart_node_empty("a").await;
    range_1_is_found_lost_and_placed_again_on_a(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn s31_a_silent_nodes_placements_are_missing_only_after_lease_and_margin() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.log.clear();
    cluster.transport.set_reachable(&addr("a"), false);
    let cut = tokio::time::Instant::now();
    // Before lease + margin, nothing moves.
    tokio::time::sleep(cluster.config.lease).await;
    // Only a itself acted: its lease lapsed, so it fenced and deactivated its copy.
    assert_eq!(cluster.calls(), vec!["D(a,1)"]);
    assert_eq!(
        cluster.placements(id(1)).await,
        vec![("a".to_owned(), PlacementState::Active)]
    );
    // a's own lease ran out: it no longer takes writes.
    assert!(!cluster.rangelets["a"].lease_valid());
    // After lease + margin, a's placement is Missing; at R1 the range waits for
    // a's data (see scenarios_safety.rs for the rest of #31).
    cluster
        .wait_for("a's placement missing", |e| {
            placements_of(e, id(1)) == vec![("a".to_owned(), PlacementState::Missing)]
        })
        .await;
    assert!(cut.elapsed() > cluster.config.node_loss_after());
    assert_eq!(cluster.calls(), vec!["D(a,1)"], "nothing re-created empty");
    cluster.assert_one_writer();
}

#[tokio::test(start_paused = true)]
async fn s32_draining_nodes_are_emptied_and_get_nothing_new() {
    let cluster = Cluster::start(&["a", "b", "c"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster
        .handle
        .run(split_1_at_m(Some("a"), Some("a")))
        .await
        .unwrap();
    cluster.wait_active_on(id(2), &["a"]).await;
    cluster.wait_active_on(id(3), &["a"]).await;
    // The node asks (Info want_drain).
    cluster.rangelets["a"].request_drain(true);
    let a = cluster.rangelets["a"].clone();
    cluster
        .wait_for("a empty", move |_| a.ranges().is_empty())
        .await;
    for range in [2, 3] {
        let placements = cluster.placements(id(range)).await;
        assert_eq!(placements.len(), 1);
        assert_ne!(placements[0].0, "a");
        assert_eq!(placements[0].1, PlacementState::Active);
    }
    // An operator asks (rangerctl drain): everything ends on c.
    cluster.handle.drain(node_id("b"), true).await.unwrap();
    cluster.wait_active_on(id(2), &["c"]).await;
    cluster.wait_active_on(id(3), &["c"]).await;
    // Draining an unknown node is an error.
    assert!(cluster.handle.drain(node_id("zz"), true).await.is_err());
    cluster.assert_one_writer();
}

#[tokio::test(start_paused = true)]
async fn s33_a_new_node_is_eligible_at_once() {
    let mut cluster = Cluster::start(&[], Replication::R1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(cluster.placements(id(1)).await.is_empty());
    let start = tokio::time::Instant::now();
    cluster.add_node("a").await;
    cluster.wait_active_on(id(1), &["a"]).await;
    assert!(
        start.elapsed() < cluster.config.probe_interval,
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn s35_a_corrupt_store_refuses_to_start_and_names_the_problem() {
    // A gap: a split's right child is missing from the store.
    let mut keyspace = Keyspace::new();
    keyspace.split(id(1), Key::from("m")).unwrap();
    let mut changes: ChangeSet = keyspace.take_changes();
    changes.upserts.retain(|r| r.id != id(3));
    let persister = MemoryPersister::new();
    persister.save(&changes).await.unwrap();
    let err = load_keyspace(&persister).await.unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("refusing to start"), "{message}");
    assert!(
        message.to_lowercase().contains("child") || message.contains("3"),
        "{message}"
    );

    // Unreadable bytes under a key.
    let persister = MemoryPersister::new();
    persister
        .save(&Keyspace::new().take_changes())
        .await
        .unwrap();
    persister.put_raw(1, b"{not json".to_vec());
    let err = load_keyspace(&persister).await.unwrap_err();
    assert!(matches!(err, LoadError::Persist(_)), "{err}");
}

/// Kills the controller right after the `k`-th command of an operation was sent
/// (every callback is slow, so the command is still running), restarts it from the
/// store, and checks it converges without repeating any storage callback.
async fn kill_after(
    k: usize,
    setup: &[&str],
    op: OpRequest,
    done: impl Fn(&ranger_controller::orchestrator::Engine) -> bool + Send + Sync + Clone + 'static,
    prepare: impl AsyncFnOnce(&Cluster),
) {
    let mut cluster = Cluster::start(setup, Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    prepare(&cluster).await;
    let slow = Behaviour::SucceedAfter(Duration::from_millis(800));
    for node in cluster.nodes.values() {
        for command in [
            Command::Prepare,
            Command::Activate,
            Command::Deactivate,
            Command::Drop,
        ] {
            node.on(command, slow.clone());
        }
    }
    cluster.log.clear();
    let (_, _completion) = cluster.handle.submit(op).await.unwrap();
    let log = cluster.log.clone();
    cluster
        .wait_for(&format!("command {k} sent"), move |_| {
            log.render().len() >= k
        })
        .await;
    cluster.restart_controller().await;
    cluster.wait_for("converged after restart", done).await;
    let calls = cluster.calls();
    let mut unique = calls.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        calls.len(),
        "a storage callback ran twice after a restart at {k}: {calls:?}"
    );
    cluster.assert_one_writer();
}

fn only_active_on(
    range: u64,
    node: &'static str,
) -> impl Fn(&ranger_controller::orchestrator::Engine) -> bool + Send + Sync + Clone + 'static {
    move |e| {
        placements_of(e, id(range)) == vec![(node.to_owned(), PlacementState::Active)]
            && e.operations().count() == 0
    }
}

#[tokio::test(start_paused = true)]
async fn s34_controller_killed_after_each_command_of_a_move() {
    for k in 1..=4 {
        kill_after(
            k,
            &["a", "b"],
            OpRequest::Move {
                range: id(1),
                node: Some(node_id("b")),
            },
            only_active_on(1, "b"),
            async |_| {},
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn s34_controller_killed_after_each_command_of_a_split() {
    for k in 1..=6 {
        kill_after(
            k,
            &["a", "b", "c"],
            split_1_at_m(Some("b"), Some("c")),
            |e| {
                placements_of(e, id(2)) == vec![("b".to_owned(), PlacementState::Active)]
                    && placements_of(e, id(3)) == vec![("c".to_owned(), PlacementState::Active)]
                    && e.keyspace().range(id(1)).unwrap().state() == RangeState::Obsolete
            },
            async |_| {},
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn s34_controller_killed_after_each_command_of_a_join() {
    for k in 1..=6 {
        kill_after(
            k,
            &["a", "b", "c"],
            OpRequest::Join {
                left: id(2),
                right: id(3),
                node: Some(node_id("c")),
            },
            |e| {
                placements_of(e, id(4)) == vec![("c".to_owned(), PlacementState::Active)]
                    && [2, 3].iter().all(|r| {
                        e.keyspace().range(id(*r)).unwrap().state() == RangeState::Obsolete
                    })
            },
            async |cluster: &Cluster| {
                cluster
                    .handle
                    .run(split_1_at_m(Some("a"), Some("b")))
                    .await
                    .unwrap();
                cluster.wait_obsolete(&[1]).await;
            },
        )
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn s30_a_node_that_forgot_a_range_while_the_controller_restarted_gets_it_placed_again() {
    // A restarted controller has no earlier report of the node's to compare
    // with: the node's first answer, which does not list the range, is what
    // says the copy is gone (a copy never listed was once left Active for ever).
    let mut cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.restart_node_empty("a").await;
    cluster.restart_controller().await;
    cluster.log.clear();
    range_1_is_found_lost_and_placed_again_on_a(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn s31_a_lost_node_forgotten_by_the_roster_that_returns_empty_gets_its_range_placed_again() {
    // The node leaves discovery and goes silent: its copy is Missing and, at
    // R1, waited for. Once the roster has forgotten it, the node comes back
    // as a new process without the range: its first answer is what says the
    // copy will not return.
    let mut cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.deregister_node("a");
    cluster.transport.set_reachable(&addr("a"), false);
    cluster
        .wait_for("a's copy missing and a forgotten", |e| {
            placements_of(e, id(1)) == vec![("a".to_owned(), PlacementState::Missing)]
                && e.roster().get(&node_id("a")).is_none()
        })
        .await;
    cluster.add_node("a").await;
    cluster.transport.set_reachable(&addr("a"), true);
    cluster.log.clear();
    range_1_is_found_lost_and_placed_again_on_a(&cluster).await;
}

/// Range 1's copy on a is found gone ("lost its placement") and the range is
/// prepared and activated on a again, with no other call since the log was
/// cleared.
async fn range_1_is_found_lost_and_placed_again_on_a(cluster: &Cluster) {
    cluster
        .wait_for("placement dropped then replaced", |e| {
            e.note(id(1))
                .is_some_and(|n| n.contains("lost its placement"))
        })
        .await;
    cluster.wait_active_on(id(1), &["a"]).await;
    assert_eq!(cluster.calls(), vec!["P(a,1)", "A(a,1)"]);
}
