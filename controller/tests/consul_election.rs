//! Leader election against a real Consul agent (`test_agent!`): exactly one
//! leader, fast failover on a clean stop and on a killed session, fencing of a deposed
//! leader's writes; and two `rangerd --consul` processes, where the standby
//! names the leader and takes over after the leader is killed with SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Child, Command, Output, Stdio};
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

// ---- rangerd processes ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rangerd {
    child: Child,
    addr: String,
}

impl Rangerd {
    fn start(consul: &str, dir: &std::path::Path, name: &str) -> Rangerd {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rangerd"))
            .args([
                "--listen",
                &addr,
                "--consul",
                consul,
                "--consul-prefix",
                "procs/",
            ])
            .args(["--probe-ms", "100"])
            .env("RUST_LOG", "info,ranger_controller=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Rangerd { child, addr }
    }
}

impl Drop for Rangerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rangerctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .unwrap()
}

/// Polls `rangerctl ranges` at `addr` until `done` holds for its output.
async fn wait_ctl(addr: &str, what: &str, done: impl Fn(&Output) -> bool) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = ctl(addr, &["ranges"]);
        if done(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn rangerd_standby_names_the_leader_and_takes_over_after_a_kill() {
    let agent = ranger_consul::test_agent!();
    let dir = tempfile::tempdir().unwrap();
    let consul = agent.address();
    let first = Rangerd::start(&consul, dir.path(), "first");
    // The first one leads before the second starts, so the roles are known.
    wait_ctl(&first.addr, "the first rangerd leads", |o| {
        o.status.success()
    })
    .await;
    let second = Rangerd::start(&consul, dir.path(), "second");

    let refused = wait_ctl(
        &second.addr,
        "the standby refuses, naming the leader",
        |o| !o.status.success() && stderr(o).contains(&first.addr),
    )
    .await;
    let message = stderr(&refused);
    eprintln!("standby says: {}", message.trim());
    assert!(message.contains("Unavailable"), "{message}");
    assert!(message.contains("not the leader"), "{message}");

    let mut first = first;
    first.child.kill().unwrap();
    let killed = Instant::now();
    first.child.wait().unwrap();
    let out = wait_ctl(&second.addr, "the standby leads", |o| o.status.success()).await;
    let took = killed.elapsed();
    eprintln!("kill -9 of the leader -> the standby answers as leader: {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.trim().is_empty(),
        "rangerctl ranges printed nothing"
    );
    eprintln!("rangerctl ranges on the new leader:\n{listing}");

    // A clean stop (SIGTERM) releases the lock and exits successfully.
    let mut second = second;
    let term = Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "rangerd did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "rangerd exited with {status}");
    let lock = agent
        .client()
        .kv_get("procs/leader", Default::default())
        .await
        .unwrap()
        .value;
    assert!(
        lock.is_none_or(|pair| pair.session.is_none()),
        "the leader lock is still held"
    );
    drop(agent);
}
