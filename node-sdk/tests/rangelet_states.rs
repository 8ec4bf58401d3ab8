//! Every row of the rangelet's state table, driven in-process with a scripted
//! storage system and paused time (so "slow" is exact and the tests are fast).

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ranger_node_sdk::testing::{Behaviour, ScriptedNode};
use ranger_node_sdk::{
    Command, CommandError, FileStateStore, KeyRejection, MemoryStateStore, Outcome, Rangelet,
    RangeletConfig, StateStore, StateStoreError, StoredRange,
};
use ranger_proto::{RangeId, RangeMeta, RemoteState};

const GRACE: Duration = Duration::from_millis(500);
/// Longer than two grace periods, shorter than three.
const SLOW: Duration = Duration::from_millis(1200);

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn meta(n: u64, start: &str, end: &str) -> RangeMeta {
    RangeMeta::new(id(n), start.into(), end.into()).unwrap()
}

fn config() -> RangeletConfig {
    RangeletConfig {
        grace_period: GRACE,
        ..RangeletConfig::default()
    }
}

async fn rangelet() -> (ScriptedNode, Rangelet<ScriptedNode>) {
    let node = ScriptedNode::new();
    let rangelet = Rangelet::open(node.clone(), MemoryStateStore::new(), config())
        .await
        .unwrap();
    (node, rangelet)
}

fn ok(state: RemoteState) -> Outcome {
    Outcome {
        state,
        failure: None,
    }
}

fn failed(state: RemoteState, message: &str) -> Outcome {
    Outcome {
        state,
        failure: Some(message.to_owned()),
    }
}

/// Prepares and activates range 1 `[-inf, +inf)`.
async fn active_range(rangelet: &Rangelet<ScriptedNode>) {
    assert_eq!(
        rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap(),
        ok(RemoteState::Inactive)
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
}

// --- Prepare -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn prepare_fast_lands_inactive() {
    let (node, rangelet) = rangelet().await;
    let outcome = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(outcome, ok(RemoteState::Inactive));
    assert_eq!(node.count(Command::Prepare, id(1)), 1);
    // A repeat after it landed answers the same and does not call again.
    let again = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(again, ok(RemoteState::Inactive));
    assert_eq!(node.count(Command::Prepare, id(1)), 1);
}

#[tokio::test(start_paused = true)]
async fn prepare_slow_answers_preparing_and_repeats_never_call_twice() {
    let (node, rangelet) = rangelet().await;
    node.on(Command::Prepare, Behaviour::SucceedAfter(SLOW));
    let start = tokio::time::Instant::now();
    let first = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(first, ok(RemoteState::Preparing));
    assert_eq!(
        start.elapsed(),
        GRACE,
        "answered after exactly the grace period"
    );
    // A repeat during the transition waits on it (up to the grace period again).
    let repeat = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(repeat, ok(RemoteState::Preparing));
    assert_eq!(node.count(Command::Prepare, id(1)), 1);
    // The third lands within its grace period, at 1.2 s.
    let third = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(third, ok(RemoteState::Inactive));
    assert_eq!(node.count(Command::Prepare, id(1)), 1);
}

#[tokio::test(start_paused = true)]
async fn prepare_fails_fast_reports_failure_and_retries_on_next_command() {
    let (node, rangelet) = rangelet().await;
    node.on(Command::Prepare, Behaviour::Fail("disk full".into()));
    let outcome = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(outcome, failed(RemoteState::NotFound, "disk full"));
    assert_eq!(rangelet.state(id(1)), RemoteState::NotFound);
    // The failure was reported; the next Prepare is a fresh attempt.
    node.on(Command::Prepare, Behaviour::Succeed);
    let retry = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(retry, ok(RemoteState::Inactive));
    assert_eq!(node.count(Command::Prepare, id(1)), 2);
}

#[tokio::test(start_paused = true)]
async fn prepare_fails_slow_reports_failure_to_the_next_prepare_once() {
    let (node, rangelet) = rangelet().await;
    node.on(
        Command::Prepare,
        Behaviour::FailAfter(SLOW, "source died".into()),
    );
    let first = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(first, ok(RemoteState::Preparing));
    tokio::time::sleep(SLOW).await;
    assert_eq!(rangelet.state(id(1)), RemoteState::NotFound);
    // The failure, not a silent NotFound, is what the next Prepare hears...
    let next = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(next, failed(RemoteState::NotFound, "source died"));
    assert_eq!(node.count(Command::Prepare, id(1)), 1);
    // ...and only once: the one after that tries again.
    node.on(Command::Prepare, Behaviour::Succeed);
    let retry = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(retry, ok(RemoteState::Inactive));
    assert_eq!(node.count(Command::Prepare, id(1)), 2);
}

#[tokio::test(start_paused = true)]
async fn prepare_with_other_bounds_for_a_known_id_is_refused() {
    let (_, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", "m"), vec![]).await.unwrap();
    let err = rangelet
        .prepare(meta(1, "", "z"), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::MetaMismatch { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn drop_of_a_stalled_prepare_abandons_it_and_cleans_up() {
    let (node, rangelet) = rangelet().await;
    node.on(Command::Prepare, Behaviour::Stall);
    let first = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(first, ok(RemoteState::Preparing));
    let dropped = rangelet.drop_range(id(1), false).await.unwrap();
    assert_eq!(dropped, ok(RemoteState::NotFound));
    assert_eq!(node.count(Command::Drop, id(1)), 1, "drop cleans up");
    assert_eq!(rangelet.state(id(1)), RemoteState::NotFound);
}

// --- Activate ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn activate_fast_slow_and_repeats() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    node.on(Command::Activate, Behaviour::SucceedAfter(SLOW));
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Activating)
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Activating)
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert_eq!(node.count(Command::Activate, id(1)), 1);
}

#[tokio::test(start_paused = true)]
async fn activate_failing_fast_rolls_back_to_inactive() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    node.on(Command::Activate, Behaviour::Fail("nope".into()));
    let outcome = rangelet.activate(id(1)).await.unwrap();
    assert_eq!(outcome, failed(RemoteState::Inactive, "nope"));
    // Next attempt calls again (the failure was reported).
    node.on(Command::Activate, Behaviour::Succeed);
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert_eq!(node.count(Command::Activate, id(1)), 2);
}

#[tokio::test(start_paused = true)]
async fn activate_failing_slow_is_reported_to_the_next_activate() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    node.on(
        Command::Activate,
        Behaviour::FailAfter(SLOW, "slow no".into()),
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Activating)
    );
    tokio::time::sleep(SLOW).await;
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        failed(RemoteState::Inactive, "slow no")
    );
    assert_eq!(node.count(Command::Activate, id(1)), 1);
}

#[tokio::test(start_paused = true)]
async fn activate_refuses_unknown_and_wrong_states() {
    let (node, rangelet) = rangelet().await;
    assert!(matches!(
        rangelet.activate(id(9)).await,
        Err(CommandError::UnknownRange(_))
    ));
    node.on(Command::Prepare, Behaviour::Stall);
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    let err = rangelet.activate(id(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::WrongState {
                state: RemoteState::Preparing,
                ..
            }
        ),
        "{err}"
    );
}

// --- Deactivate ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn deactivate_fast_slow_fail_and_repeat() {
    let (node, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    node.on(Command::Deactivate, Behaviour::SucceedAfter(SLOW));
    assert_eq!(
        rangelet.deactivate(id(1)).await.unwrap(),
        ok(RemoteState::Deactivating)
    );
    tokio::time::sleep(SLOW).await;
    assert_eq!(
        rangelet.deactivate(id(1)).await.unwrap(),
        ok(RemoteState::Inactive)
    );
    assert_eq!(node.count(Command::Deactivate, id(1)), 1);

    rangelet.activate(id(1)).await.unwrap();
    node.on(Command::Deactivate, Behaviour::Fail("busy".into()));
    assert_eq!(
        rangelet.deactivate(id(1)).await.unwrap(),
        failed(RemoteState::Active, "busy")
    );
}

#[tokio::test(start_paused = true)]
async fn deactivate_refuses_unknown_and_wrong_states() {
    let (node, rangelet) = rangelet().await;
    assert!(matches!(
        rangelet.deactivate(id(9)).await,
        Err(CommandError::UnknownRange(_))
    ));
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    // Deactivating an Inactive range is a no-op success (idempotent).
    assert_eq!(
        rangelet.deactivate(id(1)).await.unwrap(),
        ok(RemoteState::Inactive)
    );
    assert_eq!(node.count(Command::Deactivate, id(1)), 0);
    node.on(Command::Activate, Behaviour::Stall);
    rangelet.activate(id(1)).await.unwrap();
    assert!(matches!(
        rangelet.deactivate(id(1)).await,
        Err(CommandError::WrongState {
            state: RemoteState::Activating,
            ..
        })
    ));
}

// --- Drop ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn drop_fast_slow_unknown_and_failures() {
    let (node, rangelet) = rangelet().await;
    // Unknown: success, NotFound, no call.
    assert_eq!(
        rangelet.drop_range(id(9), false).await.unwrap(),
        ok(RemoteState::NotFound)
    );
    assert_eq!(node.count(Command::Drop, id(9)), 0);

    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    node.on(Command::Drop, Behaviour::FailAfter(SLOW, "io".into()));
    assert_eq!(
        rangelet.drop_range(id(1), false).await.unwrap(),
        ok(RemoteState::Dropping)
    );
    tokio::time::sleep(SLOW).await;
    assert_eq!(
        rangelet.drop_range(id(1), false).await.unwrap(),
        failed(RemoteState::Inactive, "io")
    );
    node.on(Command::Drop, Behaviour::Succeed);
    assert_eq!(
        rangelet.drop_range(id(1), false).await.unwrap(),
        ok(RemoteState::NotFound)
    );
    assert_eq!(node.count(Command::Drop, id(1)), 2);
}

#[tokio::test(start_paused = true)]
async fn drop_of_an_active_range_needs_force() {
    let (node, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    assert!(matches!(
        rangelet.drop_range(id(1), false).await,
        Err(CommandError::WrongState {
            state: RemoteState::Active,
            ..
        })
    ));
    node.on(Command::Drop, Behaviour::Fail("no".into()));
    assert_eq!(
        rangelet.force_drop(id(1)).await.unwrap(),
        failed(RemoteState::Active, "no"),
        "a failed forced drop rolls back to Active"
    );
    node.on(Command::Drop, Behaviour::Succeed);
    assert_eq!(
        rangelet.force_drop(id(1)).await.unwrap(),
        ok(RemoteState::NotFound)
    );
}

// --- Concurrency -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn commands_on_different_ranges_do_not_wait_for_each_other() {
    let (node, rangelet) = rangelet().await;
    node.on_range(Command::Prepare, id(1), Behaviour::Stall);
    let slow = {
        let rangelet = rangelet.clone();
        tokio::spawn(async move { rangelet.prepare(meta(1, "", "m"), vec![]).await })
    };
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let fast = rangelet.prepare(meta(2, "m", ""), vec![]).await.unwrap();
    assert_eq!(fast, ok(RemoteState::Inactive));
    assert!(start.elapsed() < GRACE, "range 2 did not wait for range 1");
    assert_eq!(slow.await.unwrap().unwrap(), ok(RemoteState::Preparing));
}

// --- Helpers for storage systems --------------------------------------------------

#[tokio::test(start_paused = true)]
async fn serving_range_checks_ownership_state_and_lease() {
    let (_, rangelet) = rangelet().await;
    assert_eq!(
        rangelet.serving_range(b"k"),
        Err(KeyRejection::NotOwned("k".into()))
    );
    rangelet.prepare(meta(1, "a", "m"), vec![]).await.unwrap();
    assert_eq!(
        rangelet.serving_range(b"k"),
        Err(KeyRejection::NotActive {
            range: id(1),
            state: RemoteState::Inactive
        })
    );
    assert_eq!(
        rangelet.serving_range(b"m"),
        Err(KeyRejection::NotOwned("m".into())),
        "end is exclusive"
    );
    rangelet.activate(id(1)).await.unwrap();
    assert_eq!(rangelet.serving_range(b"a"), Ok(id(1)));
    // A controller grants a 1 s lease; after it lapses, writes stop.
    rangelet.info(Some(Duration::from_secs(1))).await;
    assert_eq!(rangelet.serving_range(b"k"), Ok(id(1)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    rangelet.info(Some(Duration::from_secs(1))).await;
    assert_eq!(rangelet.serving_range(b"k"), Ok(id(1)), "renewed in time");
    tokio::time::sleep(Duration::from_millis(1001)).await;
    assert!(matches!(
        rangelet.serving_range(b"k"),
        Err(KeyRejection::LeaseExpired { .. } | KeyRejection::NotActive { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn ranges_containing_sees_parent_and_child_on_one_node() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.prepare(meta(2, "", "m"), vec![]).await.unwrap();
    let mut found: Vec<u64> = rangelet
        .ranges_containing(b"c")
        .iter()
        .map(|c| c.meta.id().get())
        .collect();
    found.sort();
    assert_eq!(found, vec![1, 2]);
    // The Active parent serves, not the Inactive child.
    assert_eq!(rangelet.serving_range(b"c"), Ok(id(1)));
}

#[tokio::test(start_paused = true)]
async fn info_reports_states_load_and_drain() {
    let (node, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    node.set_load(
        id(1),
        ranger_proto::LoadInfo {
            keys: 42,
            ..Default::default()
        },
    );
    let info = rangelet.info(None).await;
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].state, RemoteState::Active);
    assert_eq!(info[0].load.keys, 42);
    assert!(!rangelet.wants_drain());
    rangelet.request_drain(true);
    assert!(rangelet.wants_drain());
}

#[tokio::test(start_paused = true)]
async fn drain_waits_until_the_node_is_empty() {
    let (_, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    let waiter = {
        let rangelet = rangelet.clone();
        tokio::spawn(async move { rangelet.drain(Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rangelet.wants_drain());
    rangelet.drop_range(id(1), false).await.unwrap();
    assert!(waiter.await.unwrap(), "drained");
    // With a range that never leaves, drain times out.
    rangelet.prepare(meta(2, "", ""), vec![]).await.unwrap();
    assert!(!rangelet.drain(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn shutdown_refuses_new_commands() {
    let (_, rangelet) = rangelet().await;
    rangelet.shutdown();
    assert!(matches!(
        rangelet.prepare(meta(1, "", ""), vec![]).await,
        Err(CommandError::ShuttingDown)
    ));
}

// --- Persistence across restarts ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn restart_restores_ranges_inactive_and_drops_half_prepared_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.json");
    {
        let node = ScriptedNode::new();
        let rangelet = Rangelet::open(node.clone(), FileStateStore::open(&path).unwrap(), config())
            .await
            .unwrap();
        active_range(&rangelet).await;
        rangelet.prepare(meta(2, "x", "y"), vec![]).await.unwrap();
        node.on(Command::Prepare, Behaviour::Stall);
        rangelet.prepare(meta(3, "y", "z"), vec![]).await.unwrap();
        assert_eq!(rangelet.state(id(3)), RemoteState::Preparing);
        // "Crash": the rangelet goes away with range 3 half prepared.
    }
    let node = ScriptedNode::new();
    let rangelet = Rangelet::open(node.clone(), FileStateStore::open(&path).unwrap(), config())
        .await
        .unwrap();
    // Active comes back Inactive: the controller may have moved it meanwhile.
    assert_eq!(rangelet.state(id(1)), RemoteState::Inactive);
    assert_eq!(rangelet.state(id(2)), RemoteState::Inactive);
    assert_eq!(rangelet.state(id(3)), RemoteState::NotFound);
    assert_eq!(
        node.count(Command::Drop, id(3)),
        1,
        "half-prepared range cleaned up"
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
}

/// A store whose writes fail, like a full disk.
#[derive(Debug)]
struct FullDisk;

impl StateStore for FullDisk {
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError> {
        Ok(vec![])
    }
    fn put(&self, _: &StoredRange) -> Result<(), StateStoreError> {
        Err(StateStoreError::Backend("no space left on device".into()))
    }
    fn remove(&self, _: RangeId) -> Result<(), StateStoreError> {
        Err(StateStoreError::Backend("no space left on device".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_that_cannot_be_persisted_fails_the_command_and_changes_nothing() {
    let node = ScriptedNode::new();
    let rangelet = Rangelet::open(node.clone(), FullDisk, config())
        .await
        .unwrap();
    let err = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap_err();
    assert!(matches!(err, CommandError::Persist { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(rangelet.state(id(1)), RemoteState::NotFound);
    assert_eq!(
        node.count(Command::Prepare, id(1)),
        0,
        "storage never called"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_lease_fences_active_ranges_until_the_controller_reactivates_them() {
    let (node, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.info(Some(Duration::from_secs(1))).await;
    assert!(rangelet.may_write(id(1)));
    // No probe for longer than the lease: the node deactivates the range itself.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!rangelet.may_write(id(1)));
    assert_eq!(rangelet.state(id(1)), RemoteState::Inactive);
    assert_eq!(node.count(Command::Deactivate, id(1)), 1);
    // A renewed lease alone does not bring it back.
    rangelet.info(Some(Duration::from_secs(1))).await;
    assert!(!rangelet.may_write(id(1)));
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert!(rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn a_lease_renewed_after_it_lapsed_fences_even_before_the_watchdog_runs() {
    let (node, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    // Deactivation fails, so the range stays Active but must stay fenced.
    node.on(Command::Deactivate, Behaviour::Fail("stuck".into()));
    rangelet.info(Some(Duration::from_secs(1))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rangelet.info(Some(Duration::from_secs(10))).await;
    assert_eq!(rangelet.state(id(1)), RemoteState::Active);
    assert!(rangelet.lease_valid());
    assert!(!rangelet.may_write(id(1)), "fenced despite a valid lease");
    assert_eq!(
        rangelet.serving_range(b"k"),
        Err(KeyRejection::LeaseExpired { range: id(1) })
    );
    // An explicit Activate from the controller re-asserts it.
    rangelet.activate(id(1)).await.unwrap();
    assert!(rangelet.may_write(id(1)));
}

// --- Leases and activation (SCENARIOS.md #38, #40) ------------------------------------
//
// The controller re-places a silent node's ranges once the last lease it granted has
// provably lapsed. An activation that straddles that lapse (or starts after it) must
// therefore never end with the range writable here: the new owner may already serve it.

/// A lease short enough to lapse while an activation callback runs.
const LEASE: Duration = Duration::from_secs(1);
/// An activation callback that outlives [`LEASE`].
const SLOW_ACTIVATE: Duration = Duration::from_secs(2);

fn failure_mentions_lease(outcome: &Outcome) -> bool {
    outcome
        .failure
        .as_deref()
        .is_some_and(|f| f.contains("lease"))
}

#[tokio::test(start_paused = true)]
async fn an_activation_that_began_before_the_lease_lapsed_fails_and_the_range_stays_fenced() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    rangelet.info(Some(LEASE)).await;
    node.on(Command::Activate, Behaviour::SucceedAfter(SLOW_ACTIVATE));
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Activating)
    );
    // Partition: no probe renews the lease; it lapses at 1 s, the callback ends at 2 s.
    tokio::time::sleep(SLOW_ACTIVATE + GRACE).await;
    assert_eq!(rangelet.state(id(1)), RemoteState::Inactive);
    assert!(!rangelet.may_write(id(1)));
    assert!(matches!(
        rangelet.serving_range(b"k"),
        Err(KeyRejection::NotActive { .. })
    ));
    // Reported like any failed callback: to the next Activate, once.
    let next = rangelet.activate(id(1)).await.unwrap();
    assert_eq!(next.state, RemoteState::Inactive);
    assert!(failure_mentions_lease(&next), "{next:?}");
    assert_eq!(node.count(Command::Activate, id(1)), 1);
    assert_eq!(
        node.count(Command::Deactivate, id(1)),
        1,
        "the storage system is told to stop serving what it just activated"
    );
}

#[tokio::test(start_paused = true)]
async fn an_activation_spanning_a_lapse_fails_even_if_a_probe_renewed_the_lease_before_it_ended() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    rangelet.info(Some(LEASE)).await;
    node.on(Command::Activate, Behaviour::SucceedAfter(SLOW_ACTIVATE));
    rangelet.activate(id(1)).await.unwrap();
    // The lease lapses at 1 s; the partition heals at 1.5 s and a probe renews it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rangelet.info(Some(Duration::from_secs(10))).await;
    assert!(rangelet.lease_valid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rangelet.state(id(1)), RemoteState::Inactive);
    assert!(!rangelet.may_write(id(1)));
    // The controller, having checked, activates it afresh under the new lease.
    node.on(Command::Activate, Behaviour::Succeed);
    let reported = rangelet.activate(id(1)).await.unwrap();
    assert!(failure_mentions_lease(&reported), "{reported:?}");
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert!(rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn an_activation_spanning_a_lapse_whose_undo_fails_stays_active_but_fenced() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    rangelet.info(Some(LEASE)).await;
    node.on(Command::Activate, Behaviour::SucceedAfter(SLOW_ACTIVATE));
    node.on(Command::Deactivate, Behaviour::Fail("stuck".into()));
    rangelet.activate(id(1)).await.unwrap();
    tokio::time::sleep(SLOW_ACTIVATE + GRACE).await;
    // The storage system could not be told to stop: the rangelet shows what it
    // serves, never lets it write, and keeps trying to deactivate it.
    assert_eq!(rangelet.state(id(1)), RemoteState::Active);
    assert!(!rangelet.may_write(id(1)));
    rangelet.info(Some(Duration::from_secs(10))).await;
    assert!(!rangelet.may_write(id(1)), "fenced despite a renewed lease");
    node.on(Command::Deactivate, Behaviour::Succeed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rangelet.state(id(1)), RemoteState::Inactive);
    assert!(node.count(Command::Deactivate, id(1)) >= 2);
}

#[tokio::test(start_paused = true)]
async fn an_activation_asked_after_the_lease_lapsed_fails_without_calling_the_storage_system() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    rangelet.info(Some(LEASE)).await;
    tokio::time::sleep(LEASE * 2).await;
    let outcome = rangelet.activate(id(1)).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Inactive);
    assert!(failure_mentions_lease(&outcome), "{outcome:?}");
    assert_eq!(node.count(Command::Activate, id(1)), 0);
    assert!(!rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn a_slow_activation_within_a_renewed_lease_lands_active() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    rangelet.info(Some(LEASE)).await;
    node.on(Command::Activate, Behaviour::SucceedAfter(SLOW_ACTIVATE));
    // The Activate answers Activating after the grace period (0.5 s); probes
    // renew the lease every 0.25 s from then on, until the callback ends at 2 s.
    rangelet.activate(id(1)).await.unwrap();
    rangelet.info(Some(LEASE)).await;
    for _ in 0..8 {
        tokio::time::sleep(LEASE / 4).await;
        rangelet.info(Some(LEASE)).await;
    }
    assert_eq!(rangelet.state(id(1)), RemoteState::Active);
    assert!(rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn a_node_that_never_received_a_lease_activates_slowly_as_before() {
    let (node, rangelet) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    node.on(Command::Activate, Behaviour::SucceedAfter(SLOW_ACTIVATE));
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Activating)
    );
    tokio::time::sleep(SLOW_ACTIVATE).await;
    assert_eq!(rangelet.state(id(1)), RemoteState::Active);
    assert!(rangelet.may_write(id(1)));
    assert_eq!(node.count(Command::Deactivate, id(1)), 0);
}

// --- What a probe grants (DESIGN.md §6: the node bounds its lease by the grant) --------

#[tokio::test(start_paused = true)]
async fn a_probe_granting_no_lease_after_a_lapse_keeps_the_node_fenced() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.info(Some(LEASE)).await;
    tokio::time::sleep(LEASE * 2).await;
    assert!(!rangelet.may_write(id(1)));
    // The controller's probe failed once, so its next probes grant nothing.
    rangelet.info(None).await;
    assert!(!rangelet.lease_valid());
    assert!(!rangelet.may_write(id(1)));
    rangelet.info(Some(Duration::ZERO)).await;
    assert!(!rangelet.lease_valid());
    assert!(!rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn a_zero_lease_grants_nothing_to_a_node_that_never_had_one() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    // The wire's `lease_millis = 0` (the reference controller) is no grant at all:
    // it neither starts lease mode nor fences anything.
    rangelet.info(Some(Duration::ZERO)).await;
    assert!(rangelet.lease_valid());
    assert!(rangelet.may_write(id(1)));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn a_zero_lease_neither_extends_nor_cuts_short_the_lease_in_force() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.info(Some(LEASE)).await;
    tokio::time::sleep(LEASE / 2).await;
    rangelet.info(Some(Duration::ZERO)).await;
    rangelet.info(None).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(rangelet.may_write(id(1)), "still within the 1 s grant");
    tokio::time::sleep(Duration::from_millis(101)).await;
    assert!(
        !rangelet.may_write(id(1)),
        "the grant ended at 1 s; no-lease probes did not extend it"
    );
}

#[tokio::test(start_paused = true)]
async fn the_lease_ends_where_the_latest_grant_says_even_if_an_earlier_one_was_longer() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.info(Some(Duration::from_secs(10))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The controller now counts from this grant only: 1 s from now.
    rangelet.info(Some(LEASE)).await;
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert!(rangelet.may_write(id(1)));
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(!rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn an_absurdly_long_grant_does_not_panic() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.info(Some(Duration::MAX)).await;
    assert!(rangelet.may_write(id(1)));
}

// --- Controller terms (DESIGN.md §6, SCENARIOS.md #43) ---------------------------------

fn is_stale(result: Result<Outcome, CommandError>, term: u64, newest: u64) -> bool {
    matches!(result, Err(CommandError::StaleTerm { term: t, newest: n }) if t == term && n == newest)
}

#[tokio::test(start_paused = true)]
async fn a_command_from_an_older_term_is_refused_and_never_reaches_the_storage_system() {
    let (node, rangelet) = rangelet().await;
    assert_eq!(rangelet.newest_term(), 0);
    rangelet
        .prepare_in_term(5, meta(1, "", ""), vec![])
        .await
        .unwrap();
    assert_eq!(rangelet.newest_term(), 5);
    assert!(is_stale(
        rangelet.prepare_in_term(4, meta(2, "", ""), vec![]).await,
        4,
        5
    ));
    assert!(is_stale(rangelet.activate_in_term(4, id(1)).await, 4, 5));
    assert!(is_stale(rangelet.deactivate_in_term(4, id(1)).await, 4, 5));
    assert!(is_stale(
        rangelet.drop_range_in_term(4, id(1), true).await,
        4,
        5
    ));
    assert!(matches!(
        rangelet.observe_term(3),
        Err(CommandError::StaleTerm { term: 3, newest: 5 })
    ));
    assert_eq!(node.count(Command::Prepare, id(2)), 0);
    assert_eq!(node.count(Command::Activate, id(1)), 0);
    assert_eq!(node.count(Command::Drop, id(1)), 0);
    assert_eq!(rangelet.state(id(1)), RemoteState::Inactive);
    assert_eq!(
        rangelet.newest_term(),
        5,
        "a refusal does not lower the term"
    );
}

#[tokio::test(start_paused = true)]
async fn the_same_term_a_newer_one_and_no_term_are_accepted() {
    let (_, rangelet) = rangelet().await;
    rangelet
        .prepare_in_term(5, meta(1, "", ""), vec![])
        .await
        .unwrap();
    assert_eq!(
        rangelet.activate_in_term(5, id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert_eq!(
        rangelet.deactivate_in_term(6, id(1)).await.unwrap(),
        ok(RemoteState::Inactive)
    );
    assert_eq!(rangelet.newest_term(), 6);
    // Term 0: the reference controller, which has no terms; always accepted.
    assert_eq!(
        rangelet.activate_in_term(0, id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    assert_eq!(
        rangelet.activate(id(1)).await.unwrap(),
        ok(RemoteState::Active)
    );
    rangelet.observe_term(0).unwrap();
    rangelet.observe_term(6).unwrap();
    rangelet.observe_term(7).unwrap();
    assert_eq!(rangelet.newest_term(), 7);
    assert!(rangelet.info_in_term(0, None).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_probe_from_an_older_term_is_refused_and_grants_no_lease() {
    let (_, rangelet) = rangelet().await;
    active_range(&rangelet).await;
    rangelet.info_in_term(5, Some(LEASE)).await.unwrap();
    tokio::time::sleep(LEASE / 2).await;
    // The deposed leader's probe would extend the lease to 10 s from now.
    let stale = rangelet
        .info_in_term(4, Some(Duration::from_secs(10)))
        .await;
    assert!(
        matches!(stale, Err(CommandError::StaleTerm { term: 4, newest: 5 })),
        "{stale:?}"
    );
    tokio::time::sleep(LEASE / 2).await;
    assert!(!rangelet.lease_valid(), "the lease ended at 1 s regardless");
    assert!(!rangelet.may_write(id(1)));
}

#[tokio::test(start_paused = true)]
async fn the_newest_term_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.json");
    {
        let rangelet = Rangelet::open(
            ScriptedNode::new(),
            FileStateStore::open(&path).unwrap(),
            config(),
        )
        .await
        .unwrap();
        rangelet
            .prepare_in_term(9, meta(1, "", ""), vec![])
            .await
            .unwrap();
    }
    let node = ScriptedNode::new();
    let rangelet = Rangelet::open(node.clone(), FileStateStore::open(&path).unwrap(), config())
        .await
        .unwrap();
    assert_eq!(rangelet.newest_term(), 9);
    assert!(is_stale(rangelet.activate_in_term(8, id(1)).await, 8, 9));
    assert_eq!(node.count(Command::Activate, id(1)), 0);
}

/// A store that keeps ranges but cannot write the term.
#[derive(Debug, Default)]
struct TermWontPersist(MemoryStateStore);

impl StateStore for TermWontPersist {
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError> {
        self.0.load()
    }
    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError> {
        self.0.put(range)
    }
    fn remove(&self, id: RangeId) -> Result<(), StateStoreError> {
        self.0.remove(id)
    }
    fn put_term(&self, _: u64) -> Result<(), StateStoreError> {
        Err(StateStoreError::Backend("no space left on device".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_newer_term_that_cannot_be_persisted_refuses_its_command() {
    let node = ScriptedNode::new();
    let rangelet = Rangelet::open(node.clone(), TermWontPersist::default(), config())
        .await
        .unwrap();
    let err = rangelet
        .prepare_in_term(3, meta(1, "", ""), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::PersistTerm { term: 3, .. }),
        "{err}"
    );
    assert_eq!(rangelet.newest_term(), 0);
    assert_eq!(node.count(Command::Prepare, id(1)), 0);
    // Commands without a term still work.
    assert_eq!(
        rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap(),
        ok(RemoteState::Inactive)
    );
}
