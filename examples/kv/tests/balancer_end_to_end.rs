//! The balancer on a real cluster in one process (issue 11): the controller
//! (runtime, gRPC transport, balancing on every second), three KV nodes on
//! RocksDB that measure their load with the node SDK's meter, and the proxy. A
//! hammer whose keys sit under a few hot prefixes runs through the proxy, with a
//! slow one on cold keys beside it; the balancer must split the hot range where
//! its load is (the nodes' load split key, not a size key) and spread the pieces
//! over several nodes, while both hammers see no lost write and no error.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use ranger_controller::balancer::{Action, BalancerConfig, Plan, PlannedAction, Reason};
use ranger_controller::config::{BalanceMode, Balancing, OrchestratorConfig};
use ranger_controller::runtime::{ControllerHandle, RuntimeConfig};
use ranger_kv::hammer::{self, HammerConfig, OpMix, Report};
use ranger_kv::node::KvNodeConfig;
use ranger_node_sdk::load::LoadMeterConfig;
use ranger_proto::NodeId;
use support::{MembershipTx, ServedNode, serve_proxy};

/// A node whose meter window is short (4 s in half-second buckets) and whose
/// sizes are re-estimated every second, so the balancer sees a change in
/// traffic within a round or two.
async fn serve_node(name: &str) -> ServedNode {
    let config = KvNodeConfig {
        load_cache: Duration::from_secs(1),
        load_meter: LoadMeterConfig {
            bucket: Duration::from_millis(500),
            buckets: 8,
            ..LoadMeterConfig::default()
        },
        ..KvNodeConfig::new("")
    };
    support::serve_node_with(name, config).await
}

/// Balancing on, a round every second, tuned for a cluster that lives seconds:
/// loads smoothed over a second, a range hot for two rounds is split, moves
/// cool down for 5 s (so the test sees pieces settle rather than bounce), no
/// join undoes the split during the test, and the keyspace's few bytes may all
/// move in a round (the default 5% would hold back every move of a tiny range).
fn balancing_config() -> OrchestratorConfig {
    OrchestratorConfig {
        balancing: Balancing {
            mode: BalanceMode::On,
            planner: BalancerConfig {
                smoothing_half_life: Duration::from_secs(1),
                split_hot_rounds: 2,
                split_min_rate: 5.0,
                move_cooldown: Duration::from_secs(5),
                join_cooldown_after_split: Duration::from_secs(600),
                max_bytes_moved_share: 1.0,
                ..BalancerConfig::default()
            },
        },
        ..OrchestratorConfig::default()
    }
}

/// Max/mean of the nodes' request rates the test waits for after the spread:
/// the hot keys are 160 (four prefixes of 40), so pieces can be packed well,
/// but each node's figure is a 4 s window over a hammer that the balancer's own
/// moves slow down for a moment.
const EVEN_ENOUGH: f64 = 1.3;

async fn start_controller(nodes: &[ServedNode]) -> (ControllerHandle, MembershipTx) {
    let runtime_config = RuntimeConfig {
        balance_interval: Duration::from_secs(1),
        ..RuntimeConfig::default()
    };
    support::start_controller(
        nodes.iter().map(|n| (n.id.clone(), n.addr.clone())),
        balancing_config(),
        runtime_config,
    )
    .await
}

/// The last round's plan, if the balancer planned one.
async fn last_plan(handle: &ControllerHandle) -> Option<(tokio::time::Instant, Plan)> {
    handle
        .inspect(|engine| {
            engine
                .balance_status(tokio::time::Instant::now())
                .last
                .map(|round| (round.at, round.plan))
        })
        .await
        .unwrap()
}

fn print_loads(when: &str, plan: &Plan) {
    println!(
        "{when}: imbalance {:.2} (requests {:.2}, bytes {:.2})",
        plan.imbalance.load, plan.imbalance.requests, plan.imbalance.bytes
    );
    for node in &plan.nodes {
        println!(
            "  {:<3} load {:>10.1}  share {:>5.0}%  ranges {}  bytes {}",
            node.id.as_str(),
            node.load,
            node.share_of_mean * 100.0,
            node.ranges,
            node.bytes
        );
    }
}

fn print_report(name: &str, report: &Report) {
    println!(
        "{name} hammer: {} ops ({} ok, {:.0}/s), lost {}, stale {}, unexpected {}, uncertain {}, errors {:?}",
        report.ops,
        report.ok_ops,
        report.throughput,
        report.lost,
        report.stale,
        report.unexpected,
        report.uncertain_writes,
        report.errors
    );
}

fn assert_clean(name: &str, report: &Report) {
    assert!(report.passed(), "{name}: {:?}", report.failure_reasons());
    assert_eq!(report.lost, 0, "{name}: {report}");
    assert_eq!(report.stale, 0, "{name}: {report}");
    assert_eq!(report.unexpected, 0, "{name}: {report}");
    assert!(
        report.errors.is_empty(),
        "{name}: clients saw errors: {:?}",
        report.errors
    );
    assert_eq!(report.uncertain_writes, 0, "{name}: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_splits_a_hot_range_at_its_load_key_and_spreads_it_under_a_clean_hammer() {
    let nodes = vec![
        serve_node("a").await,
        serve_node("b").await,
        serve_node("c").await,
    ];
    let (handle, _membership) = start_controller(&nodes).await;
    let proxy = serve_proxy(&nodes).await;

    // The hot load: four workers on hot0-..hot3- as fast as the cluster goes.
    let mut hot = HammerConfig::new(proxy.clone());
    hot.workers = 4;
    hot.key_prefix = "hot".into();
    hot.keys_per_worker = 40;
    hot.duration = Duration::ZERO;
    hot.mix = OpMix::new(10, 60, 25, 5).unwrap();
    hot.request_timeout = Duration::from_secs(10);
    // The cold load: one worker on cold0-, 20 requests per second.
    let mut cold = hot.clone();
    cold.workers = 1;
    cold.key_prefix = "cold".into();
    cold.rate = 20;
    cold.seed = 1;
    let (stop_hot, hot_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_cold, cold_stopped) = tokio::sync::oneshot::channel::<()>();
    let hot_run = tokio::spawn(hammer::run(hot, hot_stopped));
    let cold_run = tokio::spawn(hammer::run(cold, cold_stopped));

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(45);
    let mut before: Option<Plan> = None;
    let mut seen_rounds = BTreeSet::new();
    let mut actions: Vec<PlannedAction> = Vec::new();
    let spread = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the balancer did not spread the hot range in 45 s: {:?}; actions {actions:?}",
            support::tiling(&handle).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some((at, plan)) = last_plan(&handle).await
            && seen_rounds.insert(at)
        {
            if before.is_none() && plan.nodes.iter().any(|n| n.load > 0.0) {
                before = Some(plan.clone());
            }
            actions.extend(plan.actions.iter().cloned());
        }
        let ranges = support::tiling(&handle).await;
        let settled = ranges.iter().all(|(_, on)| on.len() == 1);
        let holders: BTreeSet<&NodeId> = ranges.iter().flat_map(|(_, on)| on).collect();
        let split_by_load = actions.iter().any(|a| a.reason == Reason::SplitByLoad);
        if settled && split_by_load && ranges.len() >= 2 && holders.len() >= 2 {
            break ranges;
        }
    };
    println!(
        "spread after {:.1} s: {spread:?}",
        started.elapsed().as_secs_f64()
    );
    for action in &actions {
        println!("  planned {:?} ({:?})", action.action, action.reason);
    }

    // Every load split was cut among the hot keys (hot0-... to hot3-...): the
    // meter's median of accessed keys, not somewhere in the cold data.
    let load_splits: Vec<String> = actions
        .iter()
        .filter(|a| a.reason == Reason::SplitByLoad)
        .filter_map(|a| match &a.action {
            Action::Split { key, .. } => Some(String::from_utf8_lossy(key.as_bytes()).into()),
            _ => None,
        })
        .collect();
    assert!(!load_splits.is_empty());
    assert!(
        load_splits
            .iter()
            .all(|k| k.as_str() > "hot0" && k.as_str() < "hot4"),
        "load split keys among the hot keys: {load_splits:?}"
    );

    // Then the balancer goes on until the request load is even within a band
    // (the nodes' windows are 4 s, so each picture lags the layout a little).
    let even_by = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, plan) = last_plan(&handle).await.unwrap();
        if plan.imbalance.requests <= EVEN_ENOUGH {
            break plan;
        }
        assert!(
            tokio::time::Instant::now() < even_by,
            "request imbalance still {:.2} after 30 s more: {:?}",
            plan.imbalance.requests,
            support::tiling(&handle).await
        );
    };
    println!(
        "request imbalance {:.2} after {:.1} s",
        after.imbalance.requests,
        started.elapsed().as_secs_f64()
    );
    println!("layout at the end: {:?}", support::tiling(&handle).await);
    stop_hot.send(()).unwrap();
    stop_cold.send(()).unwrap();
    let hot_report = hot_run.await.unwrap().unwrap();
    let cold_report = cold_run.await.unwrap().unwrap();

    print_loads("before", before.as_ref().unwrap());
    print_loads("after", &after);
    print_report("hot", &hot_report);
    print_report("cold", &cold_report);
    assert!(
        hot_report.ok_ops > 500,
        "the hot hammer barely ran: {hot_report}"
    );
    assert_clean("hot", &hot_report);
    assert_clean("cold", &cold_report);
    let loaded_after = after.nodes.iter().filter(|n| n.load > 0.0).count();
    assert!(
        loaded_after >= 2,
        "after the balancer, at least two nodes carry load: {:?}",
        after.nodes
    );
}
