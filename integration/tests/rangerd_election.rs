//! Two `rangerd --consul` processes against a real Consul: the standby names
//! the leader, takes over after the leader is killed with SIGKILL, and a
//! clean stop releases the lock.
//!
//! (Moved here from `controller/tests/consul_election.rs`, which keeps the
//! in-process election tests.)

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ranger_integration::cluster::CONSUL_PREFIX;
use ranger_integration::{Backend, Cluster, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerd_standby_names_the_leader_and_takes_over_after_a_kill() {
    // The first one leads before the second starts (the harness waits for
    // it), so the roles are known.
    let mut cluster = Cluster::builder(Backend::Consul)
        .controllers(2)
        .nodes(0)
        .proxy(false)
        .start()
        .await
        .unwrap();
    let first = cluster.controllers[0].addr.clone();
    let second = cluster.ctl_at(1).clone();

    let refused = wait::until(
        "the standby refuses, naming the leader",
        Duration::from_secs(30),
        async || {
            let out = second.run(&["ranges"]).await.map_err(|e| e.to_string())?;
            if !out.success() && out.stderr.contains(&first) {
                Ok(out)
            } else {
                Err(out.to_string())
            }
        },
    )
    .await
    .unwrap();
    let message = refused.stderr.trim();
    eprintln!("standby says: {message}");
    assert!(message.contains("Unavailable"), "{message}");
    assert!(message.contains("not the leader"), "{message}");

    cluster.kill_controller(0).unwrap();
    let killed = Instant::now();
    let out = wait::until("the standby leads", Duration::from_secs(30), async || {
        let out = second.run(&["ranges"]).await.map_err(|e| e.to_string())?;
        if out.success() {
            Ok(out)
        } else {
            Err(out.to_string())
        }
    })
    .await
    .unwrap();
    let took = killed.elapsed();
    eprintln!("kill -9 of the leader -> the standby answers as leader: {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        !out.stdout.trim().is_empty(),
        "rangerctl ranges printed nothing"
    );
    eprintln!("rangerctl ranges on the new leader:\n{}", out.stdout);

    // A clean stop (SIGTERM) releases the lock and exits successfully.
    let status = cluster.controllers[1]
        .process
        .terminate(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(status.success(), "rangerd exited with {status}");
    let lock = cluster
        .consul()
        .unwrap()
        .client()
        .kv_get(&format!("{CONSUL_PREFIX}leader"), Default::default())
        .await
        .unwrap()
        .value;
    assert!(
        lock.is_none_or(|pair| pair.session.is_none()),
        "the leader lock is still held"
    );
}

/// A lone controller restarted after `kill -9` must not wait for its dead
/// predecessor's session to time out (up to 20 s): it leads once that
/// session's health check has lapsed (3 s) and the lock delay passed (1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rangerd_restarted_after_a_kill_leads_again_within_the_check_ttl_and_lock_delay() {
    let mut cluster = Cluster::builder(Backend::Consul)
        .nodes(0)
        .proxy(false)
        .start()
        .await
        .unwrap();
    cluster.kill_controller(0).unwrap();
    let killed = Instant::now();
    cluster.restart_controller(0).await.unwrap();
    let took = killed.elapsed();
    eprintln!("kill -9 and restart of a lone rangerd -> it leads again: {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
