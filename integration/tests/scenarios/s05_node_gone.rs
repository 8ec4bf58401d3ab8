//! Scenario 5: a node dies and stays dead well past its lease and the margin.
//! Its ranges are shown unavailable and are *not* re-created empty elsewhere
//! (R1: only that node has their data, and it may come back); `rangerctl
//! forget NODE` then re-creates them on the survivors and reports exactly
//! which ranges lost their data (DESIGN.md §6, SCENARIOS.md #31). The hammer
//! meanwhile loads a range the dead node did not hold: the rest of the
//! cluster serves on, without an error or a lost write.
//!
//! The R3 variant: four nodes, three copies of each range, the KV store
//! replicating writes from each range's primary (`node/replica`). The node
//! killed is the hammered range's primary, the hardest case: writes wait for
//! its loss to be declared and a survivor to take over; then a new copy is
//! built on the fourth node while the hammer goes on. No acknowledged write
//! may be lost, and every copy must end with the same data.

use std::time::{Duration, Instant};

use ranger_integration::views::{ForgetView, current, range};
use ranger_integration::{Backend, Cluster, HammerOptions, Summary};

use crate::common::{
    self, Markers, busiest_node, holding, ok_if, primary_among, ranges_on, same_on_every_copy,
    waiting_for,
};

/// How long past being declared lost the scenario checks that nothing was
/// re-created: several lease periods.
const STAYS_UNAVAILABLE: Duration = Duration::from_secs(5);

async fn node_gone(backend: Backend, name: &str) -> anyhow::Result<()> {
    let mut cluster = common::cluster(backend).await?;
    let outcome = run(&mut cluster, backend, name).await;
    cluster.conclude(outcome)
}

async fn run(cluster: &mut Cluster, backend: Backend, name: &str) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let ranges = common::cut_and_spread(cluster).await?;
    let victim = busiest_node(&ranges).ok_or_else(|| anyhow::anyhow!("no node serves"))?;
    let held = ranges_on(&ranges, &victim);
    // The hammer's keys (`{prefix}{worker}-{n}`) all fall in one range a
    // survivor serves: `h1x0-...` to `h1x3-...` lie in [h1, h2), and so on.
    let mut survivor = None;
    for prefix in ["h0x", "h1x", "h2x", "h3x"] {
        let range = holding(&ranges, &format!("{prefix}0-0"))?;
        if range.served_by().is_some_and(|n| n != victim)
            && holding(&ranges, &format!("{prefix}9-9"))?.id == range.id
        {
            survivor = Some((prefix.to_string(), range.id));
            break;
        }
    }
    let (prefix, survivor_range) =
        survivor.ok_or_else(|| anyhow::anyhow!("{victim} serves every hammer range"))?;
    let hammer = cluster
        .hammer(&HammerOptions {
            seed: 505,
            prefix: prefix.clone(),
            ..HammerOptions::default()
        })
        .await?;

    let index = cluster.node_index(&victim)?;
    cluster.kill_node(index)?;
    let killed = Instant::now();
    let unavailable = |r: &[ranger_integration::views::RangeView]| waiting_for(r, &held, &victim);
    cluster
        .wait_ranges("the dead node's ranges are unavailable", unavailable)
        .await?;
    let declared = killed.elapsed();
    // ...and stay so: nothing is re-created empty behind the operator's back.
    tokio::time::sleep(STAYS_UNAVAILABLE).await;
    let (ctl, now) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    unavailable(&now).map_err(anyhow::Error::msg)?;

    // The operator gives the node up: its ranges come back empty on the
    // survivors, and the loss is reported range by range.
    let forgot: ForgetView = ctl.json(&["forget", &victim]).await?;
    let forgotten = Instant::now();
    let mut lost = forgot.ranges_lost.clone();
    lost.sort_unstable();
    anyhow::ensure!(
        lost == held,
        "forget reported {lost:?} lost, {victim} held {held:?}"
    );
    let after = cluster
        .wait_settled_where("the lost ranges are served by the survivors", |r| {
            for id in &held {
                let range = range(r, *id).ok_or(format!("range {id} is gone"))?;
                let on = range.served_by().ok_or(format!("range {id} not served"))?;
                ok_if(on != victim, format!("range {id} still on {victim}"))?;
            }
            Ok(())
        })
        .await?;
    let recovered = forgotten.elapsed();

    // What the dead node held is gone, and writable again; the rest is intact.
    let kv = cluster.kv()?;
    let mut markers_lost = 0;
    for (key, value) in markers.pairs() {
        let on_victim = held.contains(&holding(&ranges, key)?.id);
        let got = kv.get(key).await?;
        if on_victim {
            anyhow::ensure!(got.is_none(), "{key:?} survived a forgotten range: {got:?}");
            markers_lost += 1;
            kv.put(key, value).await?;
            anyhow::ensure!(
                kv.get(key).await?.as_deref() == Some(value.as_str()),
                "{key:?} not writable after forget"
            );
        } else {
            anyhow::ensure!(
                got.as_deref() == Some(value.as_str()),
                "{key:?} on a surviving range: {got:?}"
            );
        }
    }
    let report = hammer.stop().await?;
    report.check_no_loss()?;
    report.check_no_client_errors("losing a node that did not hold the hammered range")?;

    Summary::new(name, backend, &report)
        .recovered_in(recovered)
        .note(format!(
            "{victim} dead: declared lost after {:.1} s, its {} ranges unavailable (not re-created) for {:.0} s more; \
             forget re-created them on the survivors and reported ranges {lost:?} lost ({markers_lost} markers gone); \
             the hammer ran on range {} of a survivor; recovery from forget; {} ranges now",
            declared.as_secs_f64(),
            held.len(),
            STAYS_UNAVAILABLE.as_secs_f64(),
            survivor_range,
            current(&after).len()
        ))
        .print();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_a_node_gone_for_good_keeps_its_ranges_unavailable_until_forget_reports_the_loss() {
    node_gone(Backend::Consul, "s05 node gone, forget")
        .await
        .unwrap();
}

/// The R3 variant (see the module doc).
async fn node_gone_r3(backend: Backend, name: &str) -> anyhow::Result<()> {
    let mut cluster = Cluster::builder(backend)
        .nodes(4)
        .replication(3)
        .start()
        .await?;
    let outcome = run_r3(&mut cluster, backend, name).await;
    cluster.conclude(outcome)
}

async fn run_r3(cluster: &mut Cluster, backend: Backend, name: &str) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let hammer = common::hammer(cluster, 515).await?;
    let (_, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    let [range] = current(&ranges)[..] else {
        anyhow::bail!("expected the one range of a fresh cluster: {ranges:?}");
    };
    let (id, holders) = (range.id, range.active_nodes());
    anyhow::ensure!(holders.len() == 3, "range {id} on {holders:?}");
    let victim = primary_among(cluster, &holders).await?;
    // The hammer writes through the whole group for a moment first, so the
    // killed primary has acknowledged writes the survivors must keep.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let index = cluster.node_index(&victim)?;
    cluster.kill_node(index)?;
    let killed = Instant::now();
    let after = cluster
        .wait_settled_where("three active copies again, none on the dead node", |r| {
            for range in current(r) {
                ok_if(
                    range.placements.iter().all(|p| p.node != victim),
                    format!("range {} still lists {victim}", range.id),
                )?;
            }
            Ok(())
        })
        .await?;
    let recovered = killed.elapsed();
    let new_primary = primary_among(cluster, &current(&after)[0].active_nodes()).await?;
    // The hammer goes on over the rebuilt group for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = hammer.stop().await?;
    report.check_no_loss()?;

    let kv = cluster.kv()?;
    for (key, value) in markers.pairs() {
        let got = kv.get(key).await?;
        anyhow::ensure!(
            got.as_deref() == Some(value.as_str()),
            "marker {key:?}: {got:?} after the primary died"
        );
    }
    let copies = same_on_every_copy(cluster, &after).await?;
    let added: Vec<String> = current(&after)[0]
        .active_nodes()
        .into_iter()
        .filter(|n| !holders.contains(n))
        .collect();
    Summary::new(name, backend, &report)
        .recovered_in(recovered)
        .note(format!(
            "R3 on 4 nodes: killed {victim}, the primary of range {id}; {new_primary} took over, a new copy was built on {added:?}; \
             the three copies hold the same {copies} pairs; recovery: from the kill to three active copies again; \
             errors by kind {:?}; {} ops",
            report.errors, report.ops
        ))
        .print();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_r3_the_primary_gone_for_good_the_survivors_serve_and_a_new_copy_is_built() {
    node_gone_r3(Backend::Consul, "s05 R3 primary gone")
        .await
        .unwrap();
}
