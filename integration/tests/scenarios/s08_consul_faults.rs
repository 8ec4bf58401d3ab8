//! Scenario 8: Consul itself fails under a running cluster, two controllers
//! and the hammer: frozen for 10 s (`pause`: connections accepted, nothing
//! answered, its timers stopped) and then thawed; and stopped, down for a
//! while, and restarted on its data. The design (DESIGN.md §8, §6): the data
//! path needs Consul for nothing (probes, leases and the proxy's routes do not
//! go through it), so writes go on; a leader that cannot renew its session
//! loses the lock and steps down, and at no moment do two controllers act as
//! leader; once Consul answers again one leads and the cluster serves and
//! operates as before, with every acknowledged write.

use std::time::{Duration, Instant};

use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers, holding, other_node};

/// How long Consul stays frozen (the figure).
const FROZEN: Duration = Duration::from_secs(10);
/// How long Consul stays stopped before it is restarted.
const STOPPED: Duration = Duration::from_secs(5);
/// How often the controllers are asked who leads during the fault.
const SAMPLE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
enum ConsulFault {
    Freeze,
    Restart,
}

/// Which controllers act as leader now (answer `rangerctl ranges`; a standby
/// refuses, a controller that cannot reach what it needs errs).
async fn acting_leaders(cluster: &Cluster) -> Vec<usize> {
    let mut leaders = Vec::new();
    for (index, controller) in cluster.controllers.iter().enumerate() {
        if let Ok(out) = controller.ctl().run(&["ranges"]).await
            && out.success()
        {
            leaders.push(index);
        }
    }
    leaders
}

/// Samples who acts as leader for `span`: the most that ever did at once.
async fn most_leaders_during(cluster: &Cluster, span: Duration) -> usize {
    let until = Instant::now() + span;
    let mut most = 0;
    while Instant::now() < until {
        most = most.max(acting_leaders(cluster).await.len());
        tokio::time::sleep(SAMPLE).await;
    }
    most
}

async fn consul_fault(fault: ConsulFault, name: &str) -> anyhow::Result<()> {
    let mut cluster = Cluster::builder(Backend::Consul)
        .controllers(2)
        .nodes(3)
        .start()
        .await?;
    let outcome = run(&mut cluster, fault, name).await;
    cluster.conclude(outcome)
}

async fn run(cluster: &mut Cluster, fault: ConsulFault, name: &str) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    common::cut_and_spread(cluster).await?;
    let hammer = common::hammer(cluster, 808).await?;
    let leader_before = cluster.leader().await?;

    let consul = cluster
        .consul_mut()
        .ok_or_else(|| anyhow::anyhow!("a Consul cluster without Consul"))?;
    let most_during = match fault {
        ConsulFault::Freeze => {
            consul.pause().await?;
            let most = most_leaders_during(cluster, FROZEN).await;
            cluster
                .consul()
                .ok_or_else(|| anyhow::anyhow!("Consul vanished"))?
                .unpause()
                .await?;
            most
        }
        ConsulFault::Restart => {
            consul.stop().await?;
            let most = most_leaders_during(cluster, STOPPED).await;
            cluster
                .consul_mut()
                .ok_or_else(|| anyhow::anyhow!("Consul vanished"))?
                .restart()
                .await?;
            most
        }
    };
    let back = Instant::now();
    anyhow::ensure!(
        most_during <= 1,
        "{most_during} controllers acted as leader at once while Consul was down"
    );

    // Consul answers again: one controller leads, the cluster is settled,
    // and it operates (a move, start to end).
    let leader_after = cluster.leader().await?;
    let ranges = cluster.wait_settled().await?;
    let recovered = back.elapsed();
    let most_after = most_leaders_during(cluster, Duration::from_secs(2)).await;
    anyhow::ensure!(
        most_after == 1,
        "{most_after} leaders after Consul came back"
    );
    let range = holding(&ranges, "h2x")?;
    let to = other_node(cluster, range)?;
    // A node is a destination again only once Consul lists it as passing:
    // after a restart that waits for its next health check.
    common::move_when_accepted(cluster.ctl_at(leader_after), range.id, &to).await?;
    cluster.wait_settled().await?;
    let operable = back.elapsed();
    markers.check(cluster).await?;

    let report = hammer.stop().await?;
    report.check_no_loss()?;
    Summary::new(name, Backend::Consul, &report)
        .recovered_in(recovered)
        .note(format!(
            "{fault:?}: at most {most_during} controller acted as leader during it; leader rangerd{} before, \
             rangerd{} after; settled {:.1} s after Consul answered again, a move done after {:.1} s",
            leader_before + 1,
            leader_after + 1,
            recovered.as_secs_f64(),
            operable.as_secs_f64()
        ))
        .print();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_consul_frozen_for_ten_seconds_loses_no_write_and_never_two_leaders() {
    consul_fault(ConsulFault::Freeze, "s08 Consul frozen 10 s")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_consul_stopped_and_restarted_loses_no_write_and_never_two_leaders() {
    consul_fault(ConsulFault::Restart, "s08 Consul stopped and restarted")
        .await
        .unwrap();
}
