//! Scenario 6: `rangerctl drain` empties a node under load; every range moves
//! off it as a planned handoff, so clients through the proxy see no error.

use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers, busiest_node, ok_if, ranges_on};

async fn drain_under_load(backend: Backend, name: &str) -> anyhow::Result<()> {
    let cluster = common::cluster(backend).await?;
    let result = drain(&cluster, backend, name).await;
    cluster.conclude(result)
}

async fn drain(cluster: &Cluster, backend: Backend, name: &str) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let ranges = common::cut_and_spread(cluster).await?;
    let hammer = common::hammer(cluster, 606).await?;

    let victim = busiest_node(&ranges).expect("some node serves ranges");
    let held = ranges_on(&ranges, &victim);
    cluster.ctl().run(&["drain", &victim]).await?.ok()?;
    cluster
        .wait_settled_where("the drained node serves nothing", |r| {
            let left = ranges_on(r, &victim);
            ok_if(left.is_empty(), format!("{victim} still serves {left:?}"))
        })
        .await?;
    let nodes = cluster.ctl().nodes().await?;
    let drained = nodes.iter().find(|n| n.id == victim);
    anyhow::ensure!(
        drained.is_some_and(|n| n.draining && n.ranges.is_empty()),
        "{victim} is not shown drained and empty: {drained:?}"
    );
    markers.check(cluster).await?;

    let report = hammer.stop().await?;
    report.check_no_loss()?;
    Summary::new(name, backend, &report)
        .note(format!("{} ranges drained off {victim}", held.len()))
        .print();
    report.check_no_client_errors("a drain")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_draining_a_node_under_load_costs_clients_no_error() {
    drain_under_load(Backend::Consul, "s06 drain under load")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_on_the_embedded_default_draining_a_node_under_load_costs_clients_no_error() {
    drain_under_load(Backend::Embedded, "s10/s06 drain under load")
        .await
        .unwrap();
}
