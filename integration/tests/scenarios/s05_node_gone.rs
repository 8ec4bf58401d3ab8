//! Scenario 5: a node dies and stays dead well past its lease and the margin.
//! Its ranges are shown unavailable and are *not* re-created empty elsewhere
//! (R1: only that node has their data, and it may come back); `rangerctl
//! forget NODE` then re-creates them on the survivors and reports exactly
//! which ranges lost their data (DESIGN.md §6, SCENARIOS.md #31). The hammer
//! meanwhile loads a range the dead node did not hold: the rest of the
//! cluster serves on, without an error or a lost write.
//!
//! The R3 variant (survivors serve, a new replica is built) does not
//! run here: the example KV store copies a range only as a handoff (its delta
//! is final once the source is Inactive) and does not replicate client writes
//! between replicas, so `rangerd --replication 3` over it never gets a third
//! replica Active ("range 1 is Active here: the delta is final only once it is
//! Inactive"). The controller's R3 behaviour is proved in-process
//! (`controller/tests/`); end to end it needs a storage system that replicates.

use std::time::{Duration, Instant};

use ranger_integration::views::{ForgetView, current, range};
use ranger_integration::{Backend, Cluster, HammerOptions, Summary};

use crate::common::{self, Markers, busiest_node, holding, ok_if, ranges_on, waiting_for};

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
    anyhow::ensure!(
        report.client_errors() == 0,
        "the survivors' range saw errors: {report:?}"
    );

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
