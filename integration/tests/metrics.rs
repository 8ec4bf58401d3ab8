//! The node, KV node and proxy metrics of a running cluster, scraped from
//! every process's `--metrics` endpoint: their values must follow what the
//! cluster did. A move shows as the source's deactivate and drop callbacks
//! and the destination's prepare and activate, with bytes transferred; a
//! split as its callbacks across the nodes; a key asked of a node that does
//! not serve it as a refused request there; a killed node as the proxy's
//! retries, its handoff wait given up, and an Unavailable answer. The
//! controller's own (`rangerd --http`) count the same operations ended, the
//! ranges after the split, and the killed node's failed probes; and the move's
//! operation id is in the controller's log and in both nodes' logs.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ranger_integration::metrics::{Samples, scrape};
use ranger_integration::views::current;
use ranger_integration::wait::{self, PATIENCE};
use ranger_integration::{Backend, Cluster};

const CALLBACKS: &str = "ranger_node_callback_duration_seconds_count";
const RANGES: &str = "ranger_node_ranges";
const TRANSFER_BYTES: &str = "ranger_node_transfer_bytes_total";
const NODE_REQUESTS: &str = "ranger_kv_node_request_duration_seconds_count";
const PROXY_REQUESTS: &str = "ranger_kv_proxy_request_duration_seconds_count";
const RETRIES: &str = "ranger_kv_proxy_retries_total";
const HANDOFF_WAITS: &str = "ranger_kv_proxy_handoff_wait_seconds_count";

/// The controller's metrics (the only controller of the cluster).
async fn controller(cluster: &Cluster) -> Samples {
    let url = cluster.controller_http(0);
    let addr = url.trim_start_matches("http://").parse().unwrap();
    scrape(addr).await.unwrap()
}

/// Operations of `kind` that ended with `result`, as the controller counts them.
fn ended(samples: &Samples, kind: &str, result: &str) -> f64 {
    samples.sum(
        "ranger_operations_total",
        &[("kind", kind), ("origin", "operator"), ("result", result)],
    )
}

/// A log without its colours, so that fields can be matched as text.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence runs to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn node(cluster: &Cluster, id: &str) -> Samples {
    scrape(cluster.node_metrics(id).unwrap()).await.unwrap()
}

/// Successful calls of `callback` on a node.
fn ok_calls(samples: &Samples, callback: &str) -> f64 {
    samples.sum(CALLBACKS, &[("callback", callback), ("result", "ok")])
}

fn active(samples: &Samples) -> f64 {
    samples.sum(RANGES, &[("state", "active")])
}

/// Successful calls of `callback` summed over every node.
async fn cluster_ok_calls(cluster: &Cluster, callback: &str) -> f64 {
    let mut total = 0.0;
    for id in cluster.node_ids() {
        total += ok_calls(&node(cluster, &id).await, callback);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_proxy_metrics_follow_a_move_a_split_and_failures() {
    let mut cluster = Cluster::builder(Backend::Embedded)
        .nodes(3)
        .proxy_deadline(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let ctl = cluster.ctl();
    let ranges = cluster.wait_settled().await.unwrap();
    let source = current(&ranges)[0].served_by().unwrap();
    let kv = cluster.kv().unwrap();
    for i in 0..20 {
        kv.put(&format!("k{i:02}"), &"v".repeat(100)).await.unwrap();
    }
    let proxy = scrape(cluster.proxy_metrics().unwrap()).await.unwrap();
    assert!(
        proxy.sum(PROXY_REQUESTS, &[("method", "Put"), ("code", "OK")]) >= 20.0,
        "{proxy:?}"
    );

    // A move: deactivate and drop on the source, prepare and activate on
    // the destination, and the range's bytes copied there.
    let destination = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != source)
        .unwrap();
    let (src_before, dst_before) = (
        node(&cluster, &source).await,
        node(&cluster, &destination).await,
    );
    assert_eq!(active(&src_before), 1.0);
    assert_eq!(active(&dst_before), 0.0);
    let controller_before = controller(&cluster).await;
    assert_eq!(controller_before.sum("ranger_controller_leader", &[]), 1.0);
    assert_eq!(
        controller_before.sum("ranger_nodes", &[("state", "active")]),
        3.0
    );
    ctl.operation_ok(&["move", "1", &destination])
        .await
        .unwrap();
    cluster
        .wait_settled_where("range 1 moved", |r| {
            (current(r)[0].served_by().as_deref() == Some(destination.as_str()))
                .then_some(())
                .ok_or_else(|| format!("range 1 not on {destination}"))
        })
        .await
        .unwrap();
    let (src, dst) = (
        node(&cluster, &source).await,
        node(&cluster, &destination).await,
    );
    for callback in ["deactivate", "drop"] {
        assert_eq!(
            ok_calls(&src, callback) - ok_calls(&src_before, callback),
            1.0,
            "{callback} on the source"
        );
    }
    for callback in ["prepare", "activate"] {
        assert_eq!(
            ok_calls(&dst, callback) - ok_calls(&dst_before, callback),
            1.0,
            "{callback} on the destination"
        );
        assert_eq!(
            ok_calls(&src, callback),
            ok_calls(&src_before, callback),
            "{callback} on the source"
        );
    }
    assert_eq!(active(&src), 0.0);
    assert_eq!(active(&dst), 1.0);
    let copied = dst.sum(TRANSFER_BYTES, &[("result", "ok")])
        - dst_before.sum(TRANSFER_BYTES, &[("result", "ok")]);
    assert!(copied >= 20.0 * 103.0, "{copied} bytes for 20 pairs of 103");
    assert!(
        dst.sum("ranger_node_lease_remaining_seconds", &[]) > 0.0,
        "the controller's probes grant a lease"
    );
    assert!(dst.sum("ranger_kv_node_store_bytes", &[]) > 0.0);
    let after_move = controller(&cluster).await;
    assert_eq!(
        ended(&after_move, "move", "ok") - ended(&controller_before, "move", "ok"),
        1.0
    );
    assert_eq!(
        after_move.sum(
            "ranger_operation_duration_seconds_count",
            &[("kind", "move"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        after_move.sum(
            "ranger_commands_total",
            &[("command", "drop"), ("result", "ok")]
        ) - controller_before.sum(
            "ranger_commands_total",
            &[("command", "drop"), ("result", "ok")]
        ),
        1.0,
        "the source's drop"
    );

    // The move's id, in the controller's log and in both nodes' logs.
    let recent: Vec<serde_json::Value> = ctl.json(&["ops", "--recent"]).await.unwrap();
    let moved = recent
        .iter()
        .find(|op| op["description"] == format!("move 1 to {destination}"))
        .unwrap_or_else(|| panic!("the move is not among the recent operations: {recent:?}"));
    assert_eq!(moved["result"], "ok");
    let op = format!("op{}", moved["id"]);
    let controller_log = plain(&cluster.controllers[0].process.log_text());
    assert!(
        controller_log
            .lines()
            .any(|l| l.contains(&format!("operation{{op={op} ")) && l.contains("sending")),
        "the controller's log has no command sent for {op}"
    );
    for (side, id, command) in [
        ("source", &source, "Deactivate"),
        ("source", &source, "Drop"),
        ("destination", &destination, "Activate"),
    ] {
        let log = plain(
            &cluster.nodes[cluster.node_index(id).unwrap()]
                .process
                .log_text(),
        );
        assert!(
            log.lines().any(|l| l.contains(&format!("op=\"{op}\""))
                && l.contains("transition done")
                && l.contains(&format!("command={command}"))),
            "the {side}'s log has no {command} under {op}"
        );
    }

    // A split: the parent deactivated and dropped, both children prepared
    // and activated, wherever the controller placed them.
    let mut before = Vec::new();
    for callback in ["prepare", "activate", "deactivate", "drop"] {
        before.push(cluster_ok_calls(&cluster, callback).await);
    }
    ctl.operation_ok(&["split", "1", "k10"]).await.unwrap();
    cluster
        .wait_settled_where("the split settled", |r| {
            (current(r).len() == 2)
                .then_some(())
                .ok_or_else(|| "not two ranges".to_owned())
        })
        .await
        .unwrap();
    for (callback, (was, more)) in ["prepare", "activate", "deactivate", "drop"]
        .into_iter()
        .zip(before.into_iter().zip([2.0, 2.0, 1.0, 1.0]))
    {
        let now = cluster_ok_calls(&cluster, callback).await;
        assert_eq!(now - was, more, "{callback} across the nodes");
    }
    let mut serving = 0.0;
    for id in cluster.node_ids() {
        serving += active(&node(&cluster, &id).await);
    }
    assert_eq!(serving, 2.0, "two ranges active across the nodes");
    let after_split = controller(&cluster).await;
    assert_eq!(ended(&after_split, "split", "ok"), 1.0);
    assert_eq!(
        after_split.sum("ranger_ranges", &[("state", "active")]),
        2.0
    );
    assert_eq!(
        after_split.sum("ranger_ranges", &[("state", "obsolete")]),
        1.0
    );

    // A key asked of a node that serves none: refused there, and counted.
    let ranges = cluster.wait_settled().await.unwrap();
    let serving_nodes: Vec<String> = current(&ranges)
        .iter()
        .filter_map(|r| r.served_by())
        .collect();
    let refusing = cluster
        .node_ids()
        .into_iter()
        .find(|id| !serving_nodes.contains(id))
        .expect("two ranges on three nodes leave one serving none");
    let refused = |s: &Samples| {
        s.sum(
            NODE_REQUESTS,
            &[("method", "Get"), ("code", "FailedPrecondition")],
        )
    };
    let before = refused(&node(&cluster, &refusing).await);
    let direct = cluster.nodes[cluster.node_index(&refusing).unwrap()]
        .kv()
        .unwrap();
    assert!(direct.get("k00").await.is_err(), "{refusing} serves k00?");
    assert_eq!(refused(&node(&cluster, &refusing).await) - before, 1.0);

    // A killed node: the proxy retries a key of its range until its
    // deadline, gives the wait up, and answers Unavailable.
    let victim = current(&ranges)
        .into_iter()
        .find(|r| r.contains(b"k00"))
        .and_then(|r| r.served_by())
        .unwrap();
    let proxy_before = scrape(cluster.proxy_metrics().unwrap()).await.unwrap();
    cluster
        .kill_node(cluster.node_index(&victim).unwrap())
        .unwrap();
    assert!(kv.get("k00").await.is_err(), "a dead node's key is served?");
    let proxy = scrape(cluster.proxy_metrics().unwrap()).await.unwrap();
    assert!(
        proxy.sum(RETRIES, &[]) > proxy_before.sum(RETRIES, &[]),
        "no retry counted: {proxy:?}"
    );
    let gave_up = |s: &Samples| s.sum(HANDOFF_WAITS, &[("outcome", "gave_up")]);
    assert_eq!(gave_up(&proxy) - gave_up(&proxy_before), 1.0);
    let unavailable = |s: &Samples| {
        s.sum(
            PROXY_REQUESTS,
            &[("method", "Get"), ("code", "Unavailable")],
        )
    };
    assert_eq!(unavailable(&proxy) - unavailable(&proxy_before), 1.0);
    assert!(
        proxy.sum("ranger_kv_proxy_routing_table_age_seconds", &[]) < 60.0,
        "the table follows the nodes"
    );

    // The controller: the killed node's probes fail, and it is no longer active.
    wait::until(
        "the controller counts the killed node's failed probes",
        PATIENCE,
        async || {
            let samples = controller(&cluster).await;
            let failures = samples.sum("ranger_probe_failures_total", &[("node", victim.as_str())]);
            let active = samples.sum("ranger_nodes", &[("state", "active")]);
            (failures >= 1.0 && active == 2.0)
                .then_some(())
                .ok_or_else(|| format!("{failures} failed probes, {active} active nodes"))
        },
    )
    .await
    .unwrap();
}
