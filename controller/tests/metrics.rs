//! The controller's metrics as a scrape shows them (`rangerd --http`,
//! `/metrics`): after a move, a split, a failed operation and a node that stops
//! answering, the values are the ones those events must produce, not just
//! present. In-process nodes, paused time.

#![allow(clippy::unwrap_used)]

mod support;

use prometheus_client::registry::Registry;
use ranger_controller::config::Replication;
use ranger_controller::metrics;
use ranger_controller::runtime::OpRequest;
use ranger_controller::service::ControllerSlot;
use ranger_node_sdk::Command;
use ranger_node_sdk::testing::Behaviour;
use ranger_process::metrics::MetricsSource;
use ranger_proto::{Key, PlacementState};
use support::*;

/// The value of one series (`name{labels}` exactly as written), or `None`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn source(cluster: &Cluster) -> MetricsSource {
    let mut registry = Registry::default();
    cluster.runtime_metrics.register(&mut registry);
    metrics::source(registry, ControllerSlot::fixed(cluster.handle.clone()))
}

#[tokio::test(start_paused = true)]
async fn a_move_a_split_and_a_failed_move_show_in_the_controllers_metrics() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let metrics = source(&cluster);

    let text = metrics.render().await.unwrap();
    assert_eq!(must(&text, "ranger_controller_leader"), 1.0);
    assert_eq!(must(&text, r#"ranger_nodes{state="active"}"#), 2.0);
    assert_eq!(must(&text, r#"ranger_ranges{state="active"}"#), 1.0);
    assert_eq!(must(&text, r#"ranger_placements{state="active"}"#), 1.0);
    assert_eq!(
        must(&text, r#"ranger_placement_transitions_total{to="active"}"#),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"ranger_commands_total{command="prepare",result="ok"}"#
        ),
        1.0
    );
    assert!(
        must(
            &text,
            r#"ranger_persist_duration_seconds_count{result="ok"}"#
        ) >= 2.0
    );
    assert_eq!(
        value(
            &text,
            r#"ranger_operations_total{kind="move",origin="operator",result="ok"}"#
        ),
        None,
        "no operation ended yet"
    );

    // A move: one more operation done, a placement added, activated, dropped.
    cluster
        .handle
        .run(OpRequest::Move {
            range: id(1),
            node: Some(node_id("b")),
        })
        .await
        .unwrap();
    let text = metrics.render().await.unwrap();
    assert_eq!(
        must(
            &text,
            r#"ranger_operations_total{kind="move",origin="operator",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        must(
            &text,
            r#"ranger_operation_duration_seconds_count{kind="move",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        must(&text, r#"ranger_placement_transitions_total{to="pending"}"#),
        2.0
    );
    assert_eq!(
        must(&text, r#"ranger_placement_transitions_total{to="active"}"#),
        2.0
    );
    assert_eq!(
        must(
            &text,
            r#"ranger_commands_total{command="deactivate",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(must(&text, r#"ranger_placements{state="active"}"#), 1.0);

    // A split: two children Active, the parent Obsolete.
    cluster
        .handle
        .run(OpRequest::Split {
            range: id(1),
            key: Key::from("m"),
            left: None,
            right: None,
        })
        .await
        .unwrap();
    cluster.wait_obsolete(&[1]).await;
    let text = metrics.render().await.unwrap();
    assert_eq!(
        must(
            &text,
            r#"ranger_operations_total{kind="split",origin="operator",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(must(&text, r#"ranger_ranges{state="active"}"#), 2.0);
    assert_eq!(must(&text, r#"ranger_ranges{state="obsolete"}"#), 1.0);
    assert_eq!(must(&text, r#"ranger_placements{state="active"}"#), 2.0);
    assert_eq!(
        value(
            &text,
            r#"ranger_operations_in_flight{kind="split",phase="running"}"#
        ),
        None
    );

    // A move whose destination cannot prepare fails, and says so.
    let on = cluster.placements(id(2)).await;
    let other = if on[0].0 == "a" { "b" } else { "a" };
    cluster
        .node(other)
        .on(Command::Prepare, Behaviour::Fail("disk full".into()));
    let failed = cluster
        .handle
        .run(OpRequest::Move {
            range: id(2),
            node: Some(node_id(other)),
        })
        .await;
    assert!(failed.is_err(), "{failed:?}");
    let text = metrics.render().await.unwrap();
    assert_eq!(
        must(
            &text,
            r#"ranger_operations_total{kind="move",origin="operator",result="aborted"}"#
        ),
        1.0
    );
    assert!(
        must(
            &text,
            r#"ranger_commands_total{command="prepare",result="failed"}"#
        ) >= 1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_that_stops_answering_shows_as_probe_failures_then_lost() {
    let cluster = Cluster::start(&["a", "b"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    let metrics = source(&cluster);
    let text = metrics.render().await.unwrap();
    assert_eq!(
        value(&text, r#"ranger_probe_failures_total{node="a"}"#),
        None
    );

    cluster.transport.set_reachable(&addr("a"), false);
    cluster
        .wait_for("a's placement missing", |e| {
            placements_of(e, id(1)) == vec![("a".to_owned(), PlacementState::Missing)]
        })
        .await;
    let text = metrics.render().await.unwrap();
    assert!(must(&text, r#"ranger_probe_failures_total{node="a"}"#) >= 2.0);
    assert_eq!(
        value(&text, r#"ranger_probe_failures_total{node="b"}"#),
        None
    );
    assert_eq!(must(&text, r#"ranger_nodes{state="lost"}"#), 1.0);
    assert_eq!(must(&text, r#"ranger_nodes{state="active"}"#), 1.0);
    assert_eq!(must(&text, r#"ranger_placements{state="missing"}"#), 1.0);
    assert_eq!(must(&text, "ranger_ranges_unavailable"), 1.0);
}

#[tokio::test]
async fn a_standby_shows_only_that_it_is_not_the_leader() {
    let (_tx, slot) = ControllerSlot::channel(ranger_controller::service::SlotState::Standby {
        leader: Some("10.0.0.1:5000".into()),
    });
    let metrics = metrics::source(Registry::default(), slot);
    let text = metrics.render().await.unwrap();
    assert_eq!(must(&text, "ranger_controller_leader"), 0.0);
    assert_eq!(value(&text, r#"ranger_nodes{state="active"}"#), None);
}
