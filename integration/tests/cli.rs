//! `rangerd` and `rangerctl` as processes, with `kv-node` processes
//! registering with rangerd's embedded registry: rangerctl reads and acts;
//! errors exit non-zero with the reason; the keyspace survives a kill -9 of
//! rangerd; a lost node's range is shown unavailable until `forget`; the
//! balancer's status, pause and explain.
//!
//! (Moved here from `controller/tests/cli.rs`, whose nodes were in-process
//! rangelets; here they are the KV example's nodes.)

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ranger_integration::views::{BalanceView, ExplainView, ForgetView, RangeView, range};
use ranger_integration::{Backend, Cluster, wait};

fn active_on(ranges: &[RangeView], id: u64) -> Vec<String> {
    range(ranges, id)
        .map(RangeView::active_nodes)
        .unwrap_or_default()
}

/// `Ok` when `cond` holds, else `what` as the reason.
fn ok_if(cond: bool, what: &str) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerctl_drives_rangerd_and_reports_errors() {
    let mut cluster = Cluster::builder(Backend::Embedded)
        .node_ids(&["a", "b"])
        .proxy(false)
        .start()
        .await
        .unwrap();
    let ctl = cluster.ctl().clone();

    let ranges = ctl.ranges().await.unwrap();
    let first = active_on(&ranges, 1)[0].clone();
    let other = if first == "a" { "b" } else { "a" };

    // Tables for people.
    let out = ctl.run(&["ranges"]).await.unwrap();
    let table = &out.stdout;
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("-inf") && table.contains("+inf"), "{table}");
    assert_eq!(ctl.nodes().await.unwrap().len(), 2);

    // A move shows its transitions live and ends ok.
    let out = ctl.run(&["move", "1", other]).await.unwrap();
    let text = &out.stdout;
    assert!(out.success(), "{out}");
    assert!(
        text.contains("Pending") && text.contains("-> Active"),
        "{text}"
    );
    assert!(text.contains("move 1: done"), "{text}");
    let ranges = cluster
        .wait_ranges("moved", |r| {
            ok_if(active_on(r, 1) == [other], "range 1 not on the other node")
        })
        .await
        .unwrap();
    assert_eq!(range(&ranges, 1).unwrap().state, "Active");

    // Split with a hex key, then join back, with JSON results.
    let run = ctl.operation(&["split", "1", "hex:6d"]).await.unwrap();
    assert!(run.output.success(), "{}", run.output);
    assert!(run.result.as_ref().unwrap().ok, "{}", run.output);
    let ranges = cluster
        .wait_ranges("split", |r| ok_if(r.len() == 3, "not three ranges"))
        .await
        .unwrap();
    assert_eq!(range(&ranges, 2).unwrap().end_text, "m");
    assert_eq!(range(&ranges, 3).unwrap().start_text, "m");
    let out = ctl.run(&["join", "2", "3"]).await.unwrap();
    assert!(out.success(), "{out}");

    // Errors: non-zero exit and the reason.
    for (args, reason) in [
        (vec!["move", "99"], "NotFound"),
        (vec!["range", "0"], "InvalidArgument"),
        (vec!["split", "4", "hex:zz"], "bad hex key"),
        (vec!["split", "1", "x"], "FailedPrecondition"),
        (vec!["join", "4", "1"], "FailedPrecondition"),
        (vec!["move", "4", "nobody"], "NotFound"),
        (vec!["cancel", "12345"], "NotFound"),
        (vec!["drain", "nobody"], "NotFound"),
    ] {
        let out = ctl.run(&args).await.unwrap();
        assert!(!out.success(), "{args:?} should fail");
        assert!(out.stderr.contains(reason), "{args:?}: {}", out.stderr);
    }
    assert!(ctl.ops().await.unwrap().is_empty());

    // Drain the node holding range 4: it moves away.
    let holder = active_on(&ctl.ranges().await.unwrap(), 4)[0].clone();
    let out = ctl.run(&["drain", &holder]).await.unwrap();
    assert!(out.success(), "{out}");
    let ranges = cluster
        .wait_ranges("drained", |r| {
            let on = active_on(r, 4);
            ok_if(
                on.len() == 1 && on[0] != holder,
                "range 4 still on the holder",
            )
        })
        .await
        .unwrap();
    let survivor = active_on(&ranges, 4)[0].clone();

    // kill -9 and restart: the keyspace comes back from the embedded store.
    cluster.kill_controller(0).unwrap();
    cluster.restart_controller(0).await.unwrap();
    let ranges = cluster
        .wait_ranges("restarted with the same keyspace", |r| {
            ok_if(
                r.len() == 4 && active_on(r, 4) == [survivor.clone()],
                "not the keyspace from before the kill",
            )
        })
        .await
        .unwrap();
    assert_eq!(range(&ranges, 1).unwrap().state, "Obsolete");

    // SIGTERM: a clean exit.
    let status = cluster.controllers[0]
        .process
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success(), "rangerd exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerctl_shows_a_lost_nodes_range_unavailable_and_forget_recreates_it() {
    let mut cluster = Cluster::builder(Backend::Embedded)
        .node_ids(&["a", "b"])
        .proxy(false)
        .start()
        .await
        .unwrap();
    let ctl = cluster.ctl().clone();
    let holder = active_on(&ctl.ranges().await.unwrap(), 1)[0].clone();
    let other = if holder == "a" { "b" } else { "a" };

    // The holder still answers: forgetting it is refused, nothing changes.
    let refused = ctl.run(&["forget", &holder]).await.unwrap();
    assert!(!refused.success());
    assert!(refused.stderr.contains("not lost"), "{}", refused.stderr);

    // The holder's process dies: after lease + margin, range 1 waits for it.
    cluster
        .kill_node(cluster.node_index(&holder).unwrap())
        .unwrap();
    let ranges = cluster
        .wait_ranges("range 1 unavailable", |r| {
            ok_if(
                range(r, 1).is_some_and(|r| r.unavailable.is_some()),
                "range 1 available",
            )
        })
        .await
        .unwrap();
    let reason = range(&ranges, 1)
        .unwrap()
        .unavailable
        .as_ref()
        .unwrap()
        .reason
        .clone();
    assert!(reason.contains(&format!("node {holder}")), "{reason}");
    assert!(
        active_on(&ranges, 1).is_empty(),
        "nothing re-created: {ranges:?}"
    );
    let table = ctl.run(&["ranges"]).await.unwrap();
    assert!(table.stdout.contains("UNAVAILABLE"), "{}", table.stdout);

    // The operator gives the holder up: range 1 is re-created empty on the
    // other node, and the loss is reported.
    let forgot: ForgetView = ctl.json(&["forget", &holder]).await.unwrap();
    assert_eq!(forgot.ranges_lost, [1], "{forgot:?}");
    cluster
        .wait_ranges("range 1 on the other node", |r| {
            ok_if(active_on(r, 1) == [other], "range 1 not on the other node")
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerctl_shows_the_balancer_pauses_it_and_explains_a_range() {
    let cluster = Cluster::builder(Backend::Embedded)
        .node_ids(&["a", "b"])
        .proxy(false)
        .rangerd_args(&["--balance", "dry-run", "--balance-interval-s", "1"])
        .start()
        .await
        .unwrap();
    let ctl = cluster.ctl();

    // A round within a couple of intervals, planned but not acted on.
    let status = wait::until("a balancer round", Duration::from_secs(20), async || {
        let status: BalanceView = ctl.json(&["balance"]).await.map_err(|e| e.to_string())?;
        if status.has_round && status.nodes.len() == 2 {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(status.mode, "dry-run", "{status:?}");
    assert_eq!(status.paused_ms, 0, "{status:?}");
    let table = ctl.run(&["balance"]).await.unwrap().stdout;
    assert!(table.starts_with("balancer: dry-run"), "{table}");
    assert!(table.contains("NODE") && table.contains("SHARE"), "{table}");

    // Pauses always end; a zero pause is refused with the reason.
    let paused: BalanceView = ctl.json(&["balance", "pause", "10m"]).await.unwrap();
    assert!(
        paused.paused_ms > 590_000 && paused.paused_ms <= 600_000,
        "{paused:?}"
    );
    let out = ctl.run(&["balance", "pause", "0s"]).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("always ends"), "{}", out.stderr);
    let out = ctl.run(&["balance", "pause", "100000years"]).await.unwrap();
    assert!(!out.success(), "an endless pause is refused");
    assert!(out.stderr.contains("at most"), "{}", out.stderr);
    let out = ctl.run(&["balance", "pause", "soon"]).await.unwrap();
    assert!(!out.success(), "a duration that does not parse");
    let resumed: BalanceView = ctl.json(&["balance", "resume"]).await.unwrap();
    assert_eq!(resumed.paused_ms, 0, "{resumed:?}");

    // Explain names the range and its node; an unknown range is an error.
    let explained: ExplainView = ctl.json(&["explain", "1"]).await.unwrap();
    let first = &explained.lines[0];
    assert!(
        first.starts_with("range 1 ") && first.contains("Active"),
        "{explained:?}"
    );
    let out = ctl.run(&["explain", "99"]).await.unwrap();
    assert!(!out.success());
    assert!(out.stderr.contains("99"), "{}", out.stderr);
}
