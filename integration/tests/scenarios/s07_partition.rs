//! Scenario 7: a node is cut from the controller (and from Consul) while
//! clients still reach it: both directions, then each direction alone. Every
//! node's advertised address is a fault relay, so the controller's probes and
//! commands (and Consul's health checks) go through it; the proxy reaches the
//! nodes directly. The node must stop accepting writes once its lease lapses,
//! and no key may be accepted by two nodes at once: every node logs each write
//! it acknowledges, and the logs are checked against each other
//! (DESIGN.md §6; `ranger_kv::node::ack_log`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ranger_integration::relay::{Fault, Relay};
use ranger_integration::{Backend, Cluster, Summary};
use ranger_kv::node::ack_log::{AckLog, check_one_writer_per_key, now_us};

use crate::common::{self, Markers, busiest_node, ok_if, ranges_on, waiting_for};

/// The lease and probe interval this scenario gives rangerd (set as its flags
/// below, so the bound cannot drift from them), and how long after a cut a
/// node may still accept a write: the lease from the last probe that reached
/// it (at most one probe interval after the cut when requests still flow),
/// plus a write already past its lease check when the lease ran out.
const LEASE: Duration = Duration::from_millis(2000);
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const IN_FLIGHT_SLACK: Duration = Duration::from_millis(300);

/// The relays in front of the nodes, by node index.
type Relays = Arc<Mutex<HashMap<usize, Relay>>>;

fn relay_of(relays: &Relays, index: usize) -> anyhow::Result<std::net::SocketAddr> {
    let relays = relays
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    relays
        .get(&index)
        .map(Relay::addr)
        .ok_or_else(|| anyhow::anyhow!("no relay for node {index}"))
}

fn set_fault(relays: &Relays, index: usize, fault: Fault) {
    let relays = relays
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(relay) = relays.get(&index) {
        relay.set(fault);
    }
}

async fn partitioned_cluster(backend: Backend, relays: &Relays) -> anyhow::Result<Cluster> {
    let hook = Arc::clone(relays);
    Cluster::builder(backend)
        .rangerd_flag("--lease-ms", &LEASE.as_millis().to_string())
        .rangerd_flag("--probe-ms", &PROBE_INTERVAL.as_millis().to_string())
        .nodes(3)
        .ack_logs(true)
        .proxy_direct(true)
        .advertise(Arc::new(move |index, listen| {
            let relay = Relay::start_now(listen).expect("a relay on loopback");
            let addr = relay.addr().to_string();
            hook.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(index, relay);
            addr
        }))
        .start()
        .await
}

/// Every node's acknowledged writes, by node id.
fn ack_logs(
    cluster: &Cluster,
) -> anyhow::Result<Vec<(String, Vec<ranger_kv::node::ack_log::Ack>)>> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let path = node
                .ack_log
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("{} keeps no ack log", node.id))?;
            Ok((node.id.clone(), AckLog::read(path)?))
        })
        .collect()
}

async fn node_partitioned(backend: Backend, fault: Fault, name: &str) -> anyhow::Result<()> {
    let relays: Relays = Arc::default();
    let mut cluster = partitioned_cluster(backend, &relays).await?;
    let outcome = run(&mut cluster, &relays, backend, fault, name).await;
    cluster.conclude(outcome)
}

async fn run(
    cluster: &mut Cluster,
    relays: &Relays,
    backend: Backend,
    fault: Fault,
    name: &str,
) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let ranges = common::cut_and_spread(cluster).await?;
    let hammer = common::hammer(cluster, 707).await?;
    // Some load on the layout before the cut.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let victim = busiest_node(&ranges).ok_or_else(|| anyhow::anyhow!("no node serves"))?;
    let held = ranges_on(&ranges, &victim);
    let index = cluster.node_index(&victim)?;
    anyhow::ensure!(relay_of(relays, index).is_ok(), "the victim has a relay");
    let cut_us = now_us();
    let cut = Instant::now();
    set_fault(relays, index, fault);

    // The controller stops hearing from the node and, lease and margin later,
    // shows its ranges unavailable (R1: waiting for its data, not re-placed).
    cluster
        .wait_ranges("the cut node's ranges are unavailable", |r| {
            waiting_for(r, &held, &victim)
        })
        .await?;
    let declared = cut.elapsed();
    // Let clients keep trying the node directly well past its lease.
    tokio::time::sleep(LEASE).await;

    let logs = ack_logs(cluster)?;
    let victim_acks = &logs
        .iter()
        .find(|(node, _)| node == &victim)
        .ok_or_else(|| anyhow::anyhow!("no log of {victim}"))?
        .1;
    let after_cut: Vec<u64> = victim_acks
        .iter()
        .map(|a| a.accepted_us)
        .filter(|&at| at >= cut_us)
        .collect();
    let deadline_us = cut_us
        + u64::try_from((LEASE + PROBE_INTERVAL + IN_FLIGHT_SLACK).as_micros()).unwrap_or(u64::MAX);
    let last_after_cut = after_cut.iter().max().copied();
    if let Some(last) = last_after_cut {
        anyhow::ensure!(
            last <= deadline_us,
            "{victim} accepted a write {} ms after the cut, past its {} ms lease",
            (last - cut_us) / 1000,
            LEASE.as_millis()
        );
    }
    if let Err(found) = check_one_writer_per_key(&logs) {
        anyhow::bail!(
            "{} keys had two writers at once, first {:?}",
            found.len(),
            found.first()
        );
    }

    set_fault(relays, index, Fault::None);
    let healed = Instant::now();
    cluster
        .wait_settled_where("the healed node serves its ranges again", |r| {
            ok_if(
                ranges_on(r, &victim) == held,
                format!("{victim} serves {:?}, want {held:?}", ranges_on(r, &victim)),
            )
        })
        .await?;
    let recovered = healed.elapsed();
    markers.check(cluster).await?;
    let report = hammer.stop().await?;
    report.check_no_loss()?;
    // The logs again, with the writes after the heal: still one writer per key.
    if let Err(found) = check_one_writer_per_key(&ack_logs(cluster)?) {
        anyhow::bail!("after the heal, {} keys had two writers", found.len());
    }

    Summary::new(name, backend, &report)
        .recovered_in(recovered)
        .note(format!(
            "{fault:?} between {victim} and the controller: declared lost after {:.1} s, \
             {} writes accepted after the cut, the last {} ms after it (lease {} ms); \
             one writer per key in {} logged writes; recovery from the heal",
            declared.as_secs_f64(),
            after_cut.len(),
            last_after_cut.map_or(0, |last| (last - cut_us) / 1000),
            LEASE.as_millis(),
            ack_logs(cluster)?
                .iter()
                .map(|(_, a)| a.len())
                .sum::<usize>()
        ))
        .print();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_a_node_cut_from_the_controller_both_ways_stops_writing_when_its_lease_lapses() {
    node_partitioned(Backend::Consul, Fault::Blackhole, "s07 partition both ways")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_a_node_that_hears_the_controller_but_cannot_answer_stops_writing_when_its_lease_lapses()
 {
    node_partitioned(
        Backend::Consul,
        Fault::CutFromTarget,
        "s07 partition, answers lost",
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_a_node_the_controller_cannot_reach_stops_writing_when_its_lease_lapses() {
    node_partitioned(
        Backend::Consul,
        Fault::CutToTarget,
        "s07 partition, requests lost",
    )
    .await
    .unwrap();
}
