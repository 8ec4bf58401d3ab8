//! SCENARIOS.md: place (#1-#6) and move (#7-#15), in-process with real rangelets
//! over scripted storage, paused time.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ranger_controller::config::Replication;
use ranger_controller::orchestrator::OpError;
use ranger_controller::runtime::{HandleError, OpRequest};
use ranger_node_sdk::Command;
use ranger_node_sdk::testing::Behaviour;
use ranger_proto::PlacementState;
use support::*;

fn move_to(node: &str) -> OpRequest {
    OpRequest::Move {
        range: id(1),
        node: Some(node_id(node)),
    }
}

fn aborted(result: Result<(), HandleError>) -> String {
    match result {
        Err(HandleError::Op(OpError::Aborted(message))) => message,
        other => panic!("expected an aborted operation, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn s01_place_on_the_only_node() {
    let cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    assert_eq!(cluster.calls(), vec!["P(a,1)", "A(a,1)"]);
}

#[tokio::test(start_paused = true)]
async fn s02_r3_prepares_all_then_activates_all() {
    let cluster = Cluster::start(&["a", "b", "c"], Replication::R3).await;
    cluster.wait_active_on(id(1), &["a", "b", "c"]).await;
    let calls = cluster.calls();
    assert_eq!(calls.len(), 6, "{calls:?}");
    let mut prepares: Vec<&String> = calls[..3].iter().collect();
    prepares.sort();
    assert_eq!(prepares, ["P(a,1)", "P(b,1)", "P(c,1)"]);
    assert!(calls[3..].iter().all(|c| c.starts_with("A(")), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn s03_prepare_fails_on_a_then_placed_on_b_and_a_excluded() {
    let mut cluster = Cluster::start(&[], Replication::R1).await;
    cluster.add_node("a").await;
    cluster
        .node("a")
        .on(Command::Prepare, Behaviour::Fail("disk full".into()));
    cluster.add_node("b").await;
    cluster.wait_active_on(id(1), &["b"]).await;
    let calls = cluster.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "P(a,1)").count(),
        cluster.config.max_attempts as usize,
        "{calls:?}"
    );
    assert_eq!(&calls[calls.len() - 2..], ["P(b,1)", "A(b,1)"]);
    let note = cluster
        .handle
        .inspect(|e| e.note(id(1)).map(str::to_owned))
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(note.contains("disk full"), "{note}");
    // a is excluded for this range for a while: it cannot be chosen as destination.
    let refused = cluster.handle.run(move_to("a")).await;
    assert!(
        matches!(
            refused,
            Err(HandleError::Op(OpError::FailedPrecondition(_)))
        ),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn s04_activate_fails_on_a_then_placed_on_b() {
    let mut cluster = Cluster::start(&[], Replication::R1).await;
    cluster.add_node("a").await;
    cluster
        .node("a")
        .on(Command::Activate, Behaviour::Fail("cannot serve".into()));
    cluster.add_node("b").await;
    cluster.wait_active_on(id(1), &["b"]).await;
    let calls = cluster.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "A(a,1)").count(),
        3,
        "{calls:?}"
    );
    assert!(
        calls.contains(&"X(a,1)".to_owned()),
        "a's copy dropped: {calls:?}"
    );
    assert_eq!(&calls[calls.len() - 2..], ["P(b,1)", "A(b,1)"]);
}

#[tokio::test(start_paused = true)]
async fn s05_prepare_stuck_in_preparing_gives_up_at_the_deadline() {
    let mut cluster = Cluster::start(&[], Replication::R1).await;
    cluster.add_node("a").await;
    cluster.node("a").on(Command::Prepare, Behaviour::Stall);
    cluster.add_node("b").await;
    let start = tokio::time::Instant::now();
    cluster.wait_active_on(id(1), &["b"]).await;
    assert!(start.elapsed() >= cluster.config.prepare_deadline);
    // Repeated Prepares never reached storage twice; GiveUp dropped it.
    assert_eq!(cluster.node("a").count(Command::Prepare, id(1)), 1);
    assert_eq!(cluster.node("a").count(Command::Drop, id(1)), 1);
    let calls = cluster.calls();
    assert_eq!(&calls[calls.len() - 2..], ["P(b,1)", "A(b,1)"]);
}

#[tokio::test(start_paused = true)]
async fn s06_every_prepare_fails_range_unplaced_with_reason_and_nothing_blocked() {
    let mut cluster = Cluster::start(&[], Replication::R1).await;
    for name in ["a", "b"] {
        cluster.add_node(name).await;
        cluster
            .node(name)
            .on(Command::Prepare, Behaviour::Fail("broken".into()));
    }
    let (a, b) = (cluster.node("a").clone(), cluster.node("b").clone());
    cluster
        .wait_for(
            "both nodes failed, range unplaced with a reason",
            move |e| {
                a.count(Command::Prepare, id(1)) == 3
                    && b.count(Command::Prepare, id(1)) == 3
                    && e.note(id(1)).is_some_and(|n| n.contains("unplaced"))
            },
        )
        .await;
    // Bounded retries: the exclusion stops the hammering.
    let before = cluster.calls().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        cluster.calls().len(),
        before,
        "no retries while both are excluded"
    );
    // A healthy node is used at once: nothing was blocked.
    cluster.add_node("c").await;
    cluster.wait_active_on(id(1), &["c"]).await;
}

#[tokio::test(start_paused = true)]
async fn s07_move_in_the_reference_order() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.log.clear();
    cluster.handle.run(move_to("b")).await.unwrap();
    cluster.wait_active_on(id(1), &["b"]).await;
    assert_eq!(
        cluster.calls(),
        vec!["P(b,1)", "D(a,1)", "A(b,1)", "X(a,1)"]
    );
}

#[tokio::test(start_paused = true)]
async fn s08_r3_move_activates_the_destination_first() {
    let cluster = Cluster::start(&["a", "b", "c", "d"], Replication::R3).await;
    cluster.wait_active_on(id(1), &["a", "b", "c"]).await;
    cluster.log.clear();
    cluster.handle.run(move_to("d")).await.unwrap();
    let calls = cluster.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(&calls[..2], ["P(d,1)", "A(d,1)"]);
    let source = &calls[2][2..3];
    assert_eq!(calls[2], format!("D({source},1)"));
    assert_eq!(calls[3], format!("X({source},1)"));
    let mut remaining: Vec<&str> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|n| *n != source)
        .collect();
    remaining.sort();
    cluster.wait_active_on(id(1), &remaining).await;
}

#[tokio::test(start_paused = true)]
async fn s09_destination_prepare_fails_move_errors_and_source_untouched() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster
        .node("b")
        .on(Command::Prepare, Behaviour::Fail("no space".into()));
    cluster.log.clear();
    let message = aborted(cluster.handle.run(move_to("b")).await);
    assert!(message.contains("prepare failed on b"), "{message}");
    cluster.wait_active_on(id(1), &["a"]).await;
    assert!(
        cluster.calls().iter().all(|c| c == "P(b,1)"),
        "{:?}",
        cluster.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn s10_source_will_not_deactivate_move_rolls_back_at_the_deadline() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster
        .node("a")
        .on(Command::Deactivate, Behaviour::Fail("busy".into()));
    cluster.log.clear();
    let message = aborted(cluster.handle.run(move_to("b")).await);
    assert!(message.contains("source would not deactivate"), "{message}");
    cluster.wait_active_on(id(1), &["a"]).await;
    let calls = cluster.calls();
    assert_eq!(calls[0], "P(b,1)");
    assert!(
        calls.iter().filter(|c| *c == "D(a,1)").count() >= 2,
        "retried: {calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("X(b,1)"));
    assert!(!calls.contains(&"A(b,1)".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn s11_destination_activate_fails_source_reactivated() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster
        .node("b")
        .on(Command::Activate, Behaviour::Fail("corrupt".into()));
    cluster.log.clear();
    let message = aborted(cluster.handle.run(move_to("b")).await);
    assert!(message.contains("activate failed on b"), "{message}");
    cluster.wait_active_on(id(1), &["a"]).await;
    let calls = cluster.calls();
    assert_eq!(&calls[..3], ["P(b,1)", "D(a,1)", "A(b,1)"]);
    assert!(
        calls.contains(&"A(a,1)".to_owned()) && calls.contains(&"X(b,1)".to_owned()),
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn s12_source_drop_fails_a_few_times_move_ok_drop_retried() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster
        .node("a")
        .on(Command::Drop, Behaviour::Fail("io".into()));
    // The move succeeds once b is Active; the drop goes on in the background.
    cluster.handle.run(move_to("b")).await.unwrap();
    let node = cluster.node("a").clone();
    cluster
        .wait_for("three failed drops", move |_| {
            node.count(Command::Drop, id(1)) >= 3
        })
        .await;
    assert_eq!(
        cluster.placements(id(1)).await,
        vec![
            ("a".to_owned(), PlacementState::Inactive),
            ("b".to_owned(), PlacementState::Active)
        ]
    );
    cluster.node("a").on(Command::Drop, Behaviour::Succeed);
    cluster.wait_active_on(id(1), &["b"]).await;
}

#[tokio::test(start_paused = true)]
async fn s13_in_between_answers_are_repeated_without_duplicate_storage_calls() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let slow = Behaviour::SucceedAfter(Duration::from_millis(1300));
    for name in ["a", "b"] {
        for command in [
            Command::Prepare,
            Command::Activate,
            Command::Deactivate,
            Command::Drop,
        ] {
            cluster.node(name).on(command, slow.clone());
        }
    }
    cluster.log.clear();
    cluster.handle.run(move_to("b")).await.unwrap();
    cluster.wait_active_on(id(1), &["b"]).await;
    assert_eq!(
        cluster.calls(),
        vec!["P(b,1)", "D(a,1)", "A(b,1)", "X(a,1)"]
    );
}

#[tokio::test(start_paused = true)]
async fn s14_queued_moves_of_an_r3_range_run_one_at_a_time() {
    let cluster = Cluster::start(&["a", "b", "c", "d", "e", "f"], Replication::R3).await;
    cluster.wait_active_on(id(1), &["a", "b", "c"]).await;
    let mut done = Vec::new();
    for node in ["d", "e", "f"] {
        let (_, completion) = cluster.handle.submit(move_to(node)).await.unwrap();
        done.push(completion);
    }
    cluster
        .wait_for("all moves done", |e| e.operations().count() == 0)
        .await;
    for completion in done {
        completion.await.unwrap().unwrap();
    }
    cluster.wait_active_on(id(1), &["d", "e", "f"]).await;
    // One move at a time (R3 allows 4 placements): each move's four commands
    // finish before the next move's Prepare.
    let calls = cluster.calls();
    let tail = &calls[calls.len() - 12..];
    for (chunk, dest) in tail.chunks(4).zip(["d", "e", "f"]) {
        assert_eq!(chunk[0], format!("P({dest},1)"), "{calls:?}");
        assert_eq!(chunk[1], format!("A({dest},1)"), "{calls:?}");
        assert!(
            chunk[2].starts_with('D') && chunk[3].starts_with('X'),
            "{calls:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn s15_cancel_after_prepare_drops_the_destination() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.node("b").on(Command::Prepare, Behaviour::Stall);
    cluster.log.clear();
    let (op, completion) = cluster.handle.submit(move_to("b")).await.unwrap();
    let node = cluster.node("b").clone();
    cluster
        .wait_for("prepare on b", move |_| {
            node.count(Command::Prepare, id(1)) == 1
        })
        .await;
    cluster.handle.cancel(op).await.unwrap();
    let result = completion.await.unwrap();
    assert!(matches!(result, Err(OpError::Cancelled(_))), "{result:?}");
    cluster.wait_active_on(id(1), &["a"]).await;
    assert_eq!(cluster.calls(), vec!["P(b,1)", "X(b,1)"]);
    // An unknown op cannot be cancelled.
    let unknown = cluster.handle.cancel(op).await;
    assert!(matches!(
        unknown,
        Err(HandleError::Op(OpError::UnknownOp(_)))
    ));
}

#[tokio::test(start_paused = true)]
async fn r3_place_with_one_failing_node_uses_another() {
    let mut cluster = Cluster::start(&[], Replication::R3).await;
    for name in ["a", "b", "c", "d"] {
        cluster.add_node(name).await;
    }
    cluster
        .node("a")
        .on(Command::Prepare, Behaviour::Fail("broken".into()));
    cluster.wait_active_on(id(1), &["b", "c", "d"]).await;
}

#[tokio::test(start_paused = true)]
async fn r3_move_destination_activate_fails_rolls_back() {
    let cluster = Cluster::start(&["a", "b", "c", "d"], Replication::R3).await;
    cluster.wait_active_on(id(1), &["a", "b", "c"]).await;
    cluster
        .node("d")
        .on(Command::Activate, Behaviour::Fail("corrupt".into()));
    let message = aborted(cluster.handle.run(move_to("d")).await);
    assert!(message.contains("activate failed on d"), "{message}");
    cluster.wait_active_on(id(1), &["a", "b", "c"]).await;
    assert!(cluster.calls().contains(&"X(d,1)".to_owned()));
}
