//! Scenario 1: place, move, split and join with `rangerctl` while the hammer
//! runs through the proxy; after each operation the marker keys on both
//! sides of every boundary are read back, through the proxy and from the
//! node that serves them. Planned operations cost clients no error.
//!
//! At R3 too (four nodes, three copies of each range, the KV store
//! replicating from each range's primary): a split, a move of one copy and a
//! join, after which every range's three copies must hold the same data.

use ranger_integration::views::current;
use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers, holding, same_on_every_copy};

async fn place_move_split_and_join(backend: Backend, name: &str) -> anyhow::Result<()> {
    let cluster = common::cluster(backend).await?;
    let result = operations(&cluster, backend, name).await;
    cluster.conclude(result)
}

async fn operations(cluster: &Cluster, backend: Backend, name: &str) -> anyhow::Result<()> {
    // Place: range 1 was placed when the nodes came (the harness waited).
    let markers = Markers::write(cluster).await?;
    markers.check(cluster).await?;
    let hammer = common::hammer(cluster, 101).await?;

    let mut operations = 0;
    for step in [
        Step::Split("h2"),
        Step::Move("h2"),
        Step::Split("h1"),
        Step::Move("h1"),
        Step::Split("h3"),
        Step::Move("h0"),
        Step::Join("h1"),
        Step::Move("h1"),
        Step::Join("h3"),
        Step::Join("h2"),
    ] {
        match step {
            Step::Split(key) => common::split_at(cluster, key).await?,
            Step::Move(key) => common::move_holding(cluster, key).await?,
            Step::Join(key) => common::join_at(cluster, key).await?,
        };
        operations += 1;
        markers.check(cluster).await?;
    }

    let report = hammer.stop().await?;
    report.check_no_loss()?;
    Summary::new(name, backend, &report)
        .note(format!("{operations} operations"))
        .print();
    report.check_no_client_errors("planned operations")?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Split the range holding the key at the key.
    Split(&'static str),
    /// Move the range holding the key to another node.
    Move(&'static str),
    /// Join the ranges that meet at the key.
    Join(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_place_move_split_and_join_keep_the_keys_on_both_sides_of_every_boundary() {
    place_move_split_and_join(Backend::Consul, "s01 place/move/split/join")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_on_the_embedded_default_place_move_split_and_join_keep_every_key() {
    place_move_split_and_join(Backend::Embedded, "s10/s01 place/move/split/join")
        .await
        .unwrap();
}

async fn operations_r3(backend: Backend, name: &str) -> anyhow::Result<()> {
    let cluster = Cluster::builder(backend)
        .nodes(4)
        .replication(3)
        .start()
        .await?;
    let result = r3(&cluster, backend, name).await;
    cluster.conclude(result)
}

async fn r3(cluster: &Cluster, backend: Backend, name: &str) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let hammer = common::hammer(cluster, 103).await?;
    common::split_at(cluster, "h2").await?;
    markers.check(cluster).await?;
    // Move one copy of the range holding h2 to the node that has none.
    let (ctl, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    let range = holding(&ranges, "h2")?;
    let holders = range.active_nodes();
    let to = cluster
        .node_ids()
        .into_iter()
        .find(|n| !holders.contains(n))
        .ok_or_else(|| anyhow::anyhow!("every node holds range {}", range.id))?;
    common::move_when_accepted(ctl, range.id, &to).await?;
    let moved = cluster.wait_settled().await?;
    anyhow::ensure!(
        holding(&moved, "h2")?.active_nodes().contains(&to),
        "range holding h2 not on {to}: {moved:?}"
    );
    markers.check(cluster).await?;
    let joined = common::join_at(cluster, "h2").await?;
    markers.check(cluster).await?;
    let report = hammer.stop().await?;
    report.check_no_loss()?;
    let pairs = same_on_every_copy(cluster, &joined).await?;
    Summary::new(name, backend, &report)
        .note(format!(
            "R3 on 4 nodes: split, a copy moved to {to}, join; {} range(s), every copy equal ({pairs} pairs)",
            current(&joined).len()
        ))
        .print();
    report.check_no_client_errors("planned operations")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_r3_split_move_and_join_keep_every_copy_equal_and_cost_no_error() {
    operations_r3(Backend::Consul, "s01 R3 operations")
        .await
        .unwrap();
}
