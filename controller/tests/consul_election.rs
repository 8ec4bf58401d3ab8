//! Leader election against a real Consul agent (`test_agent!`): exactly one
//! leader, fast failover on a clean stop and on a killed session, fencing of a
//! deposed leader's writes. Two `rangerd --consul` processes, where the standby
//! names the leader and takes over after the leader is killed with SIGKILL, are
//! in `integration/tests/rangerd_election.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use ranger_consul::test_agent::TestAgent;
use ranger_controller::bootstrap::load_keyspace;
use ranger_controller::election::{Candidate, ElectionConfig, LeaderElection, Role};
use ranger_controller::keyspace::ChangeSet;
use ranger_controller::persist::{ConsulPersister, PersistError, Persister};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(30);

async fn candidate(agent: &TestAgent, prefix: &str, port: u16) -> LeaderElection {
    let config = ElectionConfig::new(
        prefix,
        Candidate {
            id: format!("test-{port}"),
            addr: format!("127.0.0.1:{port}"),
        },
    );
    LeaderElection::start(agent.client(), config).await.unwrap()
}

/// Waits until `done` holds for the role, and returns it.
async fn wait_role(
    rx: &mut watch::Receiver<Role>,
    what: &str,
    done: impl Fn(&Role) -> bool,
) -> Role {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        {
            let role = rx.borrow_and_update();
            if done(&role) {
                return role.clone();
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("election ended while waiting until {what}"),
            Err(_) => panic!("timed out waiting until {what}; last: {:?}", *rx.borrow()),
        }
    }
}

/// Starts two candidates and waits until one leads and the other names it.
async fn two(agent: &TestAgent, prefix: &str) -> (LeaderElection, LeaderElection) {
    let a = candidate(agent, prefix, 1).await;
    let b = candidate(agent, prefix, 2).await;
    let (mut ra, mut rb) = (a.role(), b.role());
    tokio::time::timeout(PATIENCE, async {
        loop {
            tokio::select! {
                _ = ra.changed() => {}
                _ = rb.changed() => {}
            }
            let (x, y) = (ra.borrow().clone(), rb.borrow().clone());
            if x.is_leader() || y.is_leader() {
                break;
            }
        }
    })
    .await
    .unwrap();
    let (leader, standby) = if a.current().is_leader() {
        (a, b)
    } else {
        (b, a)
    };
    let leader_addr = leader.config().candidate.addr.clone();
    wait_role(
        &mut standby.role(),
        "the standby names the leader",
        |r| matches!(r, Role::Standby { leader: Some(c) } if c.addr == leader_addr),
    )
    .await;
    // Exactly one leader, and it stays that way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(leader.current().is_leader());
    assert!(!standby.current().is_leader());
    (leader, standby)
}

#[tokio::test]
async fn one_leader_and_a_clean_stop_hands_over_within_a_second() {
    let agent = ranger_consul::test_agent!();
    let (leader, standby) = two(&agent, "clean/").await;
    let mut roles = standby.role();
    let stopped = Instant::now();
    leader.shutdown().await.unwrap();
    wait_role(&mut roles, "the standby leads", Role::is_leader).await;
    let took = stopped.elapsed();
    eprintln!("clean stop -> the standby leads: {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    standby.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_session_deposes_the_leader_at_once_and_fences_its_writes() {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let (leader, standby) = two(&agent, "killed/").await;
    let Role::Leader { fence, .. } = leader.current() else {
        panic!("not leading")
    };

    // The leader writes the keyspace, fenced by its session.
    let persister =
        ConsulPersister::new(client.clone(), "killed/keyspace/", Some(fence.clone())).unwrap();
    let keyspace = load_keyspace(&persister).await.unwrap();

    let (mut lr, mut sr) = (leader.role(), standby.role());
    let killed = Instant::now();
    client.session_destroy(&fence.session_id).await.unwrap();
    wait_role(&mut lr, "the leader sees itself deposed", |r| {
        !r.is_leader()
    })
    .await;
    let deposed = killed.elapsed();
    wait_role(&mut sr, "the standby leads", Role::is_leader).await;
    let taken = killed.elapsed();
    eprintln!("session killed -> leader deposed: {deposed:?}, standby leads: {taken:?}");
    assert!(
        deposed < Duration::from_millis(500),
        "deposed after {deposed:?}"
    );
    assert!(taken < Duration::from_secs(5), "taken over after {taken:?}");

    // Whatever the deposed leader still tries to write is refused.
    let changes = ChangeSet {
        counters: keyspace.counters(),
        upserts: keyspace.to_records(),
    };
    let err = persister.save(&changes).await.unwrap_err();
    assert!(matches!(err, PersistError::Fenced { .. }), "{err}");

    // The old leader campaigns again, as a standby naming the new leader.
    let new_addr = standby.config().candidate.addr.clone();
    wait_role(
        &mut lr,
        "the old leader stands by",
        |r| matches!(r, Role::Standby { leader: Some(c) } if c.addr == new_addr),
    )
    .await;
    assert!(standby.current().is_leader());
    standby.shutdown().await.unwrap();
    leader.shutdown().await.unwrap();
}
