//! SCENARIOS.md #36: random operations, faults and restarts, with DESIGN.md's
//! invariants checked after every step. Deterministic for a seed: set
//! `RANGER_SEED` to replay one; a failure prints the seed.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ranger_controller::bootstrap::load_keyspace;
use ranger_controller::config::Replication;
use ranger_controller::runtime::{Completion, OpRequest};
use ranger_controller::transport::Lost;
use ranger_node_sdk::Command;
use ranger_node_sdk::testing::Behaviour;
use ranger_proto::{Key, RangeId, RangeState};
use support::*;

const NODES: [&str; 4] = ["a", "b", "c", "d"];
const COMMANDS: [Command; 4] = [
    Command::Prepare,
    Command::Activate,
    Command::Deactivate,
    Command::Drop,
];

/// Prints the seed if the test panics, so the run can be replayed.
struct SeedReporter(u64);

impl Drop for SeedReporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("random_faults failed with RANGER_SEED={}", self.0);
        }
    }
}

async fn current_ranges(cluster: &Cluster) -> Vec<(RangeId, Key, Key)> {
    cluster
        .handle
        .inspect(|e| {
            e.keyspace()
                .current_ranges()
                .filter(|r| r.state() == RangeState::Active)
                .map(|r| (r.id(), r.meta().start().clone(), r.meta().end().clone()))
                .collect()
        })
        .await
        .unwrap()
}

/// Invariants 2 and 4: the in-memory keyspace tiles the keyspace, and what is in
/// the store loads and validates on its own.
async fn check_keyspace(cluster: &Cluster) {
    let tiles = cluster
        .handle
        .inspect(|e| e.keyspace().check_invariants())
        .await
        .unwrap();
    assert!(tiles.is_ok(), "invariant broken: {tiles:?}");
    load_keyspace(&cluster.persister)
        .await
        .expect("the stored keyspace loads and validates");
}

async fn run_seed(seed: u64, steps: usize) {
    let _reporter = SeedReporter(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(&NODES, Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let mut pending: Vec<Completion> = Vec::new();
    for _ in 0..steps {
        match rng.random_range(0..12) {
            0..=2 => {
                let ranges = current_ranges(&cluster).await;
                if ranges.is_empty() {
                    continue;
                }
                let (range, _, _) = ranges[rng.random_range(0..ranges.len())].clone();
                let node = NODES[rng.random_range(0..NODES.len())];
                if let Ok((_, done)) = cluster
                    .handle
                    .submit(OpRequest::Move {
                        range,
                        node: Some(node_id(node)),
                    })
                    .await
                {
                    pending.push(done);
                }
            }
            3..=4 => {
                let ranges = current_ranges(&cluster).await;
                if ranges.is_empty() {
                    continue;
                }
                let (range, start, _) = ranges[rng.random_range(0..ranges.len())].clone();
                let mut key = start.into_bytes();
                key.push(rng.random_range(b'a'..=b'z'));
                if let Ok((_, done)) = cluster
                    .handle
                    .submit(OpRequest::Split {
                        range,
                        key: Key::new(key),
                        left: None,
                        right: None,
                    })
                    .await
                {
                    pending.push(done);
                }
            }
            5 => {
                let ranges = current_ranges(&cluster).await;
                if ranges.len() >= 2 {
                    let i = rng.random_range(0..ranges.len() - 1);
                    let (left, right) = (ranges[i].0, ranges[i + 1].0);
                    if let Ok((_, done)) = cluster
                        .handle
                        .submit(OpRequest::Join {
                            left,
                            right,
                            node: None,
                        })
                        .await
                    {
                        pending.push(done);
                    }
                }
            }
            6..=7 => {
                // A fault: one node fails (or stalls) one kind of callback for a while.
                let node = NODES[rng.random_range(0..NODES.len())];
                let command = COMMANDS[rng.random_range(0..COMMANDS.len())];
                let behaviour = if rng.random_bool(0.8) {
                    Behaviour::Fail("injected".into())
                } else {
                    Behaviour::SucceedAfter(Duration::from_millis(rng.random_range(100..3000)))
                };
                cluster.node(node).on(command, behaviour);
            }
            8 => {
                // Faults heal.
                for node in NODES {
                    for command in COMMANDS {
                        cluster.node(node).on(command, Behaviour::Succeed);
                    }
                }
            }
            9 => cluster.restart_controller().await,
            10 => {
                // A one-way partition: requests of one kind reach the node and
                // act, but their replies are lost (SCENARIOS.md #37, #38); or
                // such a fault heals.
                let node = NODES[rng.random_range(0..NODES.len())];
                let which = if rng.random_bool(0.5) {
                    Lost::Probe
                } else {
                    Lost::Command(COMMANDS[rng.random_range(0..COMMANDS.len())])
                };
                cluster
                    .transport
                    .lose_replies(&addr(node), which, rng.random_bool(0.6));
            }
            _ => {
                // A partition: the node keeps running but nobody reaches it (its
                // lease runs out), or a partition heals.
                let node = NODES[rng.random_range(0..NODES.len())];
                cluster
                    .transport
                    .set_reachable(&addr(node), rng.random_bool(0.5));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
        cluster.assert_one_writer();
        check_keyspace(&cluster).await;
    }
    // Invariant 5: with the faults healed, everything ends and settles.
    for node in NODES {
        cluster.transport.set_reachable(&addr(node), true);
        cluster
            .transport
            .lose_replies(&addr(node), Lost::Probe, false);
        for command in COMMANDS {
            cluster.node(node).on(command, Behaviour::Succeed);
            cluster
                .transport
                .lose_replies(&addr(node), Lost::Command(command), false);
        }
    }
    for done in pending {
        let ended = tokio::time::timeout(Duration::from_secs(120), done).await;
        assert!(ended.is_ok(), "an operation never ended");
    }
    cluster
        .wait_for(
            "every range Active on exactly one node, no operation left",
            |e| {
                e.operations().count() == 0
                    && e.keyspace().current_ranges().all(|r| {
                        r.placements().len() == 1
                            && r.placements()[0].state() == ranger_proto::PlacementState::Active
                    })
            },
        )
        .await;
    cluster.assert_one_writer();
    check_keyspace(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn random_operations_faults_and_restarts_keep_the_invariants() {
    // RANGER_SEED=N replays one seed; RANGER_SEEDS=A-B runs a range by hand.
    let seeds: Vec<u64> = match (std::env::var("RANGER_SEED"), std::env::var("RANGER_SEEDS")) {
        (Ok(seed), _) => vec![seed.parse().expect("RANGER_SEED is a number")],
        (_, Ok(range)) => {
            let (from, to) = range.split_once('-').expect("RANGER_SEEDS is A-B");
            (from.parse().expect("a number")..=to.parse().expect("a number")).collect()
        }
        _ => (1..=8).collect(),
    };
    for seed in seeds {
        run_seed(seed, 60).await;
    }
}
