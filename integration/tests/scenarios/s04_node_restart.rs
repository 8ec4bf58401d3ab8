//! Scenario 4: a KV node is killed with SIGKILL under load and stays down
//! until the controller has declared it lost (its lease and the margin
//! lapsed); its ranges wait for it, shown unavailable and re-created nowhere
//! (R1: they would come back empty); restarted on the same port and data, it
//! serves them again with every acknowledged write.

use std::time::Instant;

use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers, busiest_node, ok_if, ranges_on, waiting_for};

async fn node_killed_and_restarted(backend: Backend, name: &str) -> anyhow::Result<()> {
    let mut cluster = common::cluster(backend).await?;
    let result = killed_and_restarted(&mut cluster, backend, name).await;
    cluster.conclude(result)
}

async fn killed_and_restarted(
    cluster: &mut Cluster,
    backend: Backend,
    name: &str,
) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let ranges = common::cut_and_spread(cluster).await?;
    let hammer = common::hammer(cluster, 404).await?;

    let victim = busiest_node(&ranges).expect("some node serves ranges");
    let held = ranges_on(&ranges, &victim);
    let index = cluster.node_index(&victim)?;
    cluster.kill_node(index)?;
    let killed = Instant::now();

    // The controller waits for the node's data instead of placing its
    // ranges elsewhere, empty.
    cluster
        .wait_ranges("the killed node's ranges are unavailable", |r| {
            waiting_for(r, &held, &victim)
        })
        .await?;
    let down = killed.elapsed();

    cluster.restart_node(index)?;
    let restarted = Instant::now();
    cluster
        .wait_settled_where("the restarted node serves its ranges again", |r| {
            ok_if(
                ranges_on(r, &victim) == held,
                format!("{victim} serves {:?}, want {held:?}", ranges_on(r, &victim)),
            )
        })
        .await?;
    let recovered = restarted.elapsed();
    markers.check(cluster).await?;

    let hammer_log = hammer.log_tail(30);
    let report = hammer.stop().await?;
    report.check_no_loss()?;
    // The killed node's ranges hold hammer keys: clients must have felt the
    // outage (an error, or a request, read or write, held up by it), or the
    // load missed them and the test proved nothing.
    anyhow::ensure!(
        report.client_errors() > 0 || report.longest_request_ms() >= 1000.0,
        "the hammer never waited on the killed node's ranges: {report:?}\n{}",
        hammer_log
    );
    Summary::new(name, backend, &report)
        .recovered_in(recovered)
        .note(format!(
            "node {victim} down {:.1} s until declared lost, then restarted; its {} ranges came back with their data; recovery from the restart",
            down.as_secs_f64(),
            held.len()
        ))
        .print();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_a_killed_node_restarted_on_its_data_serves_its_ranges_again_with_every_write() {
    node_killed_and_restarted(Backend::Consul, "s04 node kill -9 and restart")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_on_the_embedded_default_a_killed_node_restarted_serves_its_ranges_again() {
    node_killed_and_restarted(Backend::Embedded, "s10/s04 node kill -9 and restart")
        .await
        .unwrap();
}
