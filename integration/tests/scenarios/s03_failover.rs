//! Scenario 3: two controllers on Consul; the leader is killed with SIGKILL
//! under load while an operation is in flight; the standby takes over and
//! finishes it. Twice: a split killed after its first answer (a child
//! prepared), then, with the first controller back as the standby, a move
//! killed after its second answer (the source deactivated: no one serves
//! the range until the destination is activated).

use std::time::Duration;

use anyhow::{Context, bail};
use ranger_integration::views::range;
use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers, holding, other_node};

/// Starts `rangerctl ARGS` on the leader, kills the leader after the `k`-th
/// answer, waits until the other controller leads and the cluster settles,
/// then restarts the old leader as the standby. Returns the failover time
/// (kill to the standby answering as leader) and the time to recover (kill
/// to settled).
async fn kill_leader_after_answer(
    cluster: &mut Cluster,
    args: Vec<String>,
    k: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let leader = cluster.leader().await?;
    let standby = 1 - leader;
    let killed = common::kill_controller_after_answer(cluster, leader, args, k).await?;
    cluster.wait_leads(standby).await?;
    let failover = killed.elapsed();
    let recovery = cluster.recovered_since(killed).await?;
    // The old leader comes back, as the standby now.
    cluster.restart_controller(leader).await?;
    Ok((failover, recovery))
}

async fn leader_killed_under_load() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder(Backend::Consul)
        .controllers(2)
        .nodes(3)
        .start()
        .await?;
    let result = killed_under_load(&mut cluster).await;
    cluster.conclude(result)
}

async fn killed_under_load(cluster: &mut Cluster) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let hammer = common::hammer(cluster, 303).await?;

    // A split, killed after a child was prepared.
    let (_, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    let parent = holding(&ranges, "h2")?.id;
    let args = vec!["split".to_owned(), parent.to_string(), "h2".to_owned()];
    let (split_failover, split_recovery) = kill_leader_after_answer(cluster, args, 1).await?;
    let ranges = cluster.wait_settled().await?;
    let parent_now = range(&ranges, parent).context("the parent is gone")?;
    if parent_now.is_current() || parent_now.children.len() != 2 {
        bail!("the new leader did not finish the split: {parent_now:?}");
    }
    markers.check(cluster).await?;

    // A move, killed after the source was deactivated.
    let moving = holding(&ranges, "h2")?;
    let (id, to) = (moving.id, other_node(cluster, moving)?);
    let args = vec!["move".to_owned(), id.to_string(), to.clone()];
    let (move_failover, move_recovery) = kill_leader_after_answer(cluster, args, 2).await?;
    let ranges = cluster.wait_settled().await?;
    let now = range(&ranges, id).and_then(|r| r.served_by());
    if now.as_ref() != Some(&to) {
        bail!("the new leader did not finish the move of {id} to {to}: on {now:?}");
    }
    markers.check(cluster).await?;

    let report = hammer.stop().await?;
    report.check_no_loss()?;
    Summary::new(
        "s03 leader kill -9 under load, standby finishes",
        Backend::Consul,
        &report,
    )
    .recovered_in(split_recovery.max(move_recovery))
    .note(format!(
        "failover {:.1} s and {:.1} s; split and move finished by the new leader",
        split_failover.as_secs_f64(),
        move_failover.as_secs_f64()
    ))
    .print();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_the_standby_takes_over_from_a_killed_leader_and_finishes_what_was_in_flight() {
    leader_killed_under_load().await.unwrap();
}
