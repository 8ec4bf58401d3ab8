//! Scenario 1: place, move, split and join with `rangerctl` while the hammer
//! runs through the proxy; after each operation the marker keys on both
//! sides of every boundary are read back, through the proxy and from the
//! node that serves them. Planned operations cost clients no error.

use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers};

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
    anyhow::ensure!(
        report.client_errors() == 0,
        "planned operations cost clients errors: {:?}",
        report.errors
    );
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
