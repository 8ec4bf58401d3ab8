//! The local cluster as real processes, as `bin/cluster` runs it: `rangerd`
//! (redb store, embedded registry), three `kv-node`s on RocksDB, and
//! `kv-proxy`. The `kv` client works through the proxy, and the `hammer`
//! binary runs while `rangerctl` splits, moves and joins ranges: it must exit
//! 0 (no lost write) and report no error at all.
//!
//! (Moved here from `examples/kv/tests/cluster_processes.rs`.)

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ranger_integration::views::current;
use ranger_integration::{Backend, Cluster, HammerOptions, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammer_through_the_proxy_loses_nothing_while_rangerctl_splits_moves_and_joins() {
    let cluster = Cluster::builder(Backend::Embedded)
        .nodes(3)
        .start()
        .await
        .unwrap();
    let ctl = cluster.ctl();
    // All three nodes registered and range 1 placed: the harness waited for both.
    assert_eq!(ctl.nodes().await.unwrap().len(), 3);

    // The client through the proxy.
    let kv = cluster.kv().unwrap();
    wait::until(
        "the proxy serves a put",
        Duration::from_secs(30),
        async || kv.put("hello", "world").await.map_err(|e| e.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(kv.get("hello").await.unwrap().as_deref(), Some("world"));

    // The hammer binary runs while ranges split, move and join.
    let hammer = cluster
        .hammer(&HammerOptions {
            keys: 200,
            ..HammerOptions::default()
        })
        .await
        .unwrap();

    ctl.operation_ok(&["split", "1", "h2"]).await.unwrap();
    let ranges = cluster
        .wait_settled_where("the split settled", |r| {
            (current(r).len() == 2)
                .then_some(())
                .ok_or_else(|| "not two ranges".to_owned())
        })
        .await
        .unwrap();
    let halves: Vec<(u64, String)> = current(&ranges)
        .iter()
        .map(|r| (r.id, r.served_by().unwrap()))
        .collect();
    let (right, right_node) = halves[1].clone();
    let to = cluster
        .node_ids()
        .into_iter()
        .find(|n| *n != right_node && *n != halves[0].1)
        .unwrap();
    ctl.operation_ok(&["move", &right.to_string(), &to])
        .await
        .unwrap();
    cluster
        .wait_settled_where("the move settled", |r| {
            current(r)
                .iter()
                .any(|range| range.id == right && range.served_by().as_ref() == Some(&to))
                .then_some(())
                .ok_or_else(|| format!("range {right} not on {to}"))
        })
        .await
        .unwrap();
    ctl.operation_ok(&["join", &halves[0].0.to_string(), &right.to_string()])
        .await
        .unwrap();
    cluster
        .wait_settled_where("the join settled", |r| {
            (current(r).len() == 1)
                .then_some(())
                .ok_or_else(|| "not one range".to_owned())
        })
        .await
        .unwrap();

    // SIGINT: the hammer stops, verifies every key, and reports.
    let report = hammer.stop().await.unwrap();
    assert_eq!(report.exit_code, 0, "the hammer failed: {report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.unexpected, 0, "{report:?}");
    assert_eq!(report.stale, 0, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.ok_ops > 100, "{report:?}");
    report.check_no_loss().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_and_restarted_on_its_port_serves_the_same_data() {
    let mut cluster = Cluster::builder(Backend::Embedded)
        .nodes(1)
        .start()
        .await
        .unwrap();
    let kv = cluster.kv().unwrap();
    kv.put("kept", "across the proxy's restart").await.unwrap();
    cluster.kill_proxy().unwrap();
    assert!(
        kv.get("kept").await.is_err(),
        "a killed proxy must not answer"
    );
    cluster.restart_proxy().await.unwrap();
    assert_eq!(
        kv.get("kept").await.unwrap().as_deref(),
        Some("across the proxy's restart")
    );
}

#[tokio::test]
async fn a_cluster_whose_node_cannot_start_fails_at_once_with_that_node_s_log() {
    // An empty node id: kv-node refuses it and exits at start.
    let started = Cluster::builder(Backend::Embedded)
        .nodes(1)
        .node_ids(&[""])
        .start()
        .await;
    let error = match started {
        Ok(_) => panic!("a node with an empty id must not start"),
        Err(e) => format!("{e:#}"),
    };
    // The start says which process died and why, instead of waiting out its
    // patience for a node that will never register ("timed out after ...").
    assert!(error.contains("exited; its log ends"), "{error}");
    assert!(!error.contains("timed out"), "{error}");
}
