//! The node SDK's metrics as a storage system sees them: driven through a real
//! rangelet over a scripted storage system, read back from the registry they
//! are served from.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prometheus_client::registry::Registry;
use ranger_node_sdk::testing::{Behaviour, ScriptedNode};
use ranger_node_sdk::{Command, MemoryStateStore, NodeMetrics, Rangelet, RangeletConfig};
use ranger_proto::{RangeId, RangeMeta, RemoteState};

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn meta(n: u64, start: &str, end: &str) -> RangeMeta {
    RangeMeta::new(id(n), start.into(), end.into()).unwrap()
}

/// A rangelet over a scripted node, and the registry its metrics are in.
async fn rangelet() -> (ScriptedNode, Rangelet<ScriptedNode>, Registry) {
    let metrics = NodeMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let node = ScriptedNode::new();
    let config = RangeletConfig {
        metrics,
        ..RangeletConfig::default()
    };
    let rangelet = Rangelet::open(node.clone(), MemoryStateStore::new(), config)
        .await
        .unwrap();
    (node, rangelet, registry)
}

/// The value of the sample `series` (name and labels as encoded), 0 if absent.
fn value(registry: &Registry, series: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn calls(registry: &Registry, callback: &str, result: &str) -> f64 {
    value(
        registry,
        &format!(
            r#"ranger_node_callback_duration_seconds_count{{callback="{callback}",result="{result}"}}"#
        ),
    )
}

fn ranges(registry: &Registry, state: &str) -> f64 {
    value(
        registry,
        &format!(r#"ranger_node_ranges{{state="{state}"}}"#),
    )
}

#[tokio::test]
async fn every_callback_the_rangelet_makes_is_counted_by_kind_and_result() {
    let (node, rangelet, registry) = rangelet().await;
    rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    rangelet.activate(id(1)).await.unwrap();
    node.on(Command::Deactivate, Behaviour::Fail("busy".into()));
    let refused = rangelet.deactivate(id(1)).await.unwrap();
    assert_eq!(refused.state, RemoteState::Active, "{refused:?}");
    node.on(Command::Deactivate, Behaviour::Succeed);
    rangelet.deactivate(id(1)).await.unwrap();
    rangelet.info(None).await;
    rangelet.drop_range(id(1), false).await.unwrap();

    assert_eq!(calls(&registry, "prepare", "ok"), 1.0);
    assert_eq!(calls(&registry, "activate", "ok"), 1.0);
    assert_eq!(calls(&registry, "deactivate", "refused"), 1.0);
    assert_eq!(calls(&registry, "deactivate", "ok"), 1.0);
    assert_eq!(calls(&registry, "load_info", "ok"), 1.0);
    assert_eq!(calls(&registry, "drop", "ok"), 1.0);
    // A repeated command calls nothing, so counts nothing.
    rangelet.drop_range(id(1), false).await.unwrap();
    assert_eq!(calls(&registry, "drop", "ok"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_prepare_given_up_on_counts_as_cancelled_and_its_cleanup_as_a_drop() {
    let (node, rangelet, registry) = rangelet().await;
    node.on(Command::Prepare, Behaviour::Stall);
    let outcome = rangelet.prepare(meta(1, "", ""), vec![]).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Preparing);
    let dropped = rangelet.drop_range(id(1), false).await.unwrap();
    assert_eq!(dropped.state, RemoteState::NotFound, "{dropped:?}");

    assert_eq!(calls(&registry, "prepare", "cancelled"), 1.0);
    assert_eq!(calls(&registry, "prepare", "ok"), 0.0);
    assert_eq!(calls(&registry, "drop", "ok"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn ranges_by_state_and_the_lease_left_are_what_they_were_when_sampled() {
    let (_node, rangelet, registry) = rangelet().await;
    rangelet.prepare(meta(1, "", "m"), vec![]).await.unwrap();
    rangelet.prepare(meta(2, "m", ""), vec![]).await.unwrap();
    rangelet.activate(id(1)).await.unwrap();
    rangelet.info(Some(Duration::from_secs(10))).await;
    tokio::time::advance(Duration::from_secs(4)).await;

    rangelet.sample_metrics();
    assert_eq!(ranges(&registry, "active"), 1.0);
    assert_eq!(ranges(&registry, "inactive"), 1.0);
    assert_eq!(value(&registry, "ranger_node_lease_remaining_seconds"), 6.0);

    // Gauges move only when sampled.
    rangelet.drop_range(id(2), false).await.unwrap();
    assert_eq!(ranges(&registry, "inactive"), 1.0);
    rangelet.sample_metrics();
    assert_eq!(ranges(&registry, "inactive"), 0.0);

    // The lease lapses: nothing left, and the active range is fenced and
    // deactivated.
    tokio::time::advance(Duration::from_secs(7)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    rangelet.sample_metrics();
    assert_eq!(value(&registry, "ranger_node_lease_remaining_seconds"), 0.0);
    assert_eq!(ranges(&registry, "active"), 0.0);
    assert_eq!(ranges(&registry, "inactive"), 1.0);
}
