//! What the scenarios share: the cluster they start, marker keys on both
//! sides of each boundary, and the range operations they drive with
//! `rangerctl`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ranger_integration::ctl::Ctl;
use ranger_integration::events::{Events, is_command_answer};
use ranger_integration::views::{RangeView, current, range};
use ranger_integration::wait::{self, NotYet, PATIENCE};
use ranger_integration::{Backend, Cluster, HammerOptions, HammerRun};
use ranger_kv::pb;
use ranger_kv::pb::kv_client::KvClient;

/// Where the scenarios cut the keyspace: between the hammer's workers
/// (`h0-...` to `h3-...`), so that every range holds keys under load.
pub const BOUNDARIES: [&str; 3] = ["h1", "h2", "h3"];

/// Three nodes and a proxy on `backend`, with one controller.
pub async fn cluster(backend: Backend) -> anyhow::Result<Cluster> {
    Cluster::builder(backend).nodes(3).start().await
}

/// The hammer every scenario runs through the proxy: four workers, one per
/// range once the keyspace is cut at [`BOUNDARIES`].
pub async fn hammer(cluster: &Cluster, seed: u64) -> anyhow::Result<HammerRun> {
    cluster
        .hammer(&HammerOptions {
            seed,
            ..HammerOptions::default()
        })
        .await
}

/// The key just before `boundary` that the scenarios use: `h1~` before
/// `h2` (`~` sorts after the hammer's `h1-...` keys).
fn just_before(boundary: &str) -> String {
    let mut bytes = boundary.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last -= 1;
    }
    bytes.push(b'~');
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Keys written before a scenario's operations and read back after each:
/// for every boundary, the last key before it and the boundary itself (the
/// first key after it), plus one key at each end of the keyspace.
#[derive(Debug, Clone)]
pub struct Markers {
    pairs: Vec<(String, String)>,
}

impl Markers {
    /// Writes the markers through the proxy.
    pub async fn write(cluster: &Cluster) -> anyhow::Result<Markers> {
        let mut keys = vec!["a-first".to_owned(), "z-last".to_owned()];
        for boundary in BOUNDARIES {
            keys.push(just_before(boundary));
            keys.push(boundary.to_owned());
        }
        let kv = cluster.kv()?;
        let mut pairs = Vec::new();
        for key in keys {
            let value = format!("marker of {key}");
            kv.put(&key, &value).await?;
            pairs.push((key, value));
        }
        Ok(Markers { pairs })
    }

    /// The marker keys and their values.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// Reads every marker back through the proxy, and directly from the node
    /// that serves its range now: the data is where the keyspace says.
    pub async fn check(&self, cluster: &Cluster) -> anyhow::Result<()> {
        let kv = cluster.kv()?;
        let (_, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
        for (key, value) in &self.pairs {
            let got = kv.get(key).await?;
            if got.as_deref() != Some(value.as_str()) {
                bail!("marker {key:?} through the proxy: {got:?}, want {value:?}");
            }
            let range = current(&ranges)
                .into_iter()
                .find(|r| r.contains(key.as_bytes()))
                .with_context(|| format!("no current range holds {key:?}"))?;
            // A replicated range: its members refuse clients; that its copies
            // agree is checked apart (`same_on_every_copy`).
            if range.active_nodes().len() > 1 {
                continue;
            }
            let node = range
                .served_by()
                .with_context(|| format!("range {} is not served: {range:?}", range.id))?;
            let direct = cluster.nodes[cluster.node_index(&node)?].kv()?;
            let got = direct.get(key).await?;
            if got.as_deref() != Some(value.as_str()) {
                bail!(
                    "marker {key:?} on {node}, which serves range {}: {got:?}, want {value:?}",
                    range.id
                );
            }
        }
        // A scan from the start crosses every boundary through the proxy.
        let scanned = kv.scan("a", None).await?;
        for (key, value) in &self.pairs {
            if !scanned.iter().any(|p| &p.key == key && &p.value == value) {
                bail!("marker {key:?} missing from a scan across every range");
            }
        }
        Ok(())
    }
}

/// The current range holding `key`.
pub fn holding<'a>(ranges: &'a [RangeView], key: &str) -> anyhow::Result<&'a RangeView> {
    current(ranges)
        .into_iter()
        .find(|r| r.contains(key.as_bytes()))
        .with_context(|| format!("no current range holds {key:?}"))
}

/// A node other than the one serving `range`.
pub fn other_node(cluster: &Cluster, range: &RangeView) -> anyhow::Result<String> {
    let from = range.served_by();
    cluster
        .node_ids()
        .into_iter()
        .find(|n| Some(n) != from.as_ref())
        .context("no other node")
}

/// Splits the range holding `key` at `key` and waits until the cluster
/// settles.
pub async fn split_at(cluster: &Cluster, key: &str) -> anyhow::Result<Vec<RangeView>> {
    let (ctl, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    let range = holding(&ranges, key)?;
    ctl.operation_ok(&["split", &range.id.to_string(), key])
        .await?;
    cluster.wait_settled().await
}

/// Moves `range` to node `to`, asking again while the leader answers that
/// the node cannot take it now, as a user would: a destination is refused
/// until Consul lists it as passing again (after a restart), and for a while
/// after a copy failed there (its exclusion: CI once saw a split's extra copy
/// fail to activate on the very node a scenario then chose, a cause since
/// fixed, but any failed copy excludes its node a while). Any other error
/// fails.
pub async fn move_when_accepted(ctl: &Ctl, range: u64, to: &str) -> anyhow::Result<()> {
    let id = range.to_string();
    let args = ["move", id.as_str(), to];
    wait::until_or_fail(
        "the move is accepted and done",
        PATIENCE,
        async || match ctl.operation_ok(&args).await {
            Ok(_) => Ok(()),
            Err(e) if format!("{e:#}").contains("cannot take range") => {
                Err(NotYet::Waiting(format!("{e:#}")))
            }
            Err(e) => Err(NotYet::Failed(format!("{e:#}"))),
        },
    )
    .await
}

/// Cuts the keyspace at every one of [`BOUNDARIES`], and spreads the ranges
/// so that every node serves at least one.
pub async fn cut_and_spread(cluster: &Cluster) -> anyhow::Result<Vec<RangeView>> {
    for boundary in BOUNDARIES {
        split_at(cluster, boundary).await?;
    }
    let nodes = cluster.node_ids();
    for node in &nodes {
        let (ctl, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
        if current(&ranges)
            .iter()
            .any(|r| r.served_by().as_ref() == Some(node))
        {
            continue;
        }
        // Move a range from the busiest node.
        let busiest = busiest_node(&ranges).context("no node serves anything")?;
        let range = current(&ranges)
            .into_iter()
            .find(|r| r.served_by().as_ref() == Some(&busiest))
            .context("the busiest node serves nothing")?;
        ctl.operation_ok(&["move", &range.id.to_string(), node])
            .await?;
        cluster.wait_settled().await?;
    }
    cluster.wait_settled().await
}

/// The node serving the most current ranges.
pub fn busiest_node(ranges: &[RangeView]) -> Option<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for range in current(ranges) {
        if let Some(node) = range.served_by() {
            *counts.entry(node).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(node, _)| node)
}

/// The ids of the current ranges served by `node`.
pub fn ranges_on(ranges: &[RangeView], node: &str) -> Vec<u64> {
    current(ranges)
        .into_iter()
        .filter(|r| r.served_by().as_deref() == Some(node))
        .map(|r| r.id)
        .collect()
}

/// Whether every range of `held` is shown unavailable and still placed on
/// `node` alone: at R1 the controller waits for a lost node's data instead of
/// re-creating its ranges empty elsewhere (DESIGN.md §6).
pub fn waiting_for(ranges: &[RangeView], held: &[u64], node: &str) -> Result<(), String> {
    for id in held {
        let range = range(ranges, *id).ok_or(format!("range {id} is gone"))?;
        ok_if(
            range.unavailable.is_some(),
            format!("range {id} not unavailable"),
        )?;
        ok_if(
            range.placements.iter().all(|p| p.node == node),
            format!("range {id} re-placed while its node may come back: {range:?}"),
        )?;
    }
    Ok(())
}

/// `Ok` when `cond` holds, else `what` as the reason.
pub fn ok_if(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what.into()) }
}

/// How long a scenario waits for things that should be quick.
pub const SHORT: Duration = Duration::from_secs(30);

/// Joins the two ranges that meet at `boundary` and waits until the cluster
/// settles.
pub async fn join_at(cluster: &Cluster, boundary: &str) -> anyhow::Result<Vec<RangeView>> {
    let (ctl, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    let (left, right) = neighbours(&ranges, boundary)?;
    ctl.operation_ok(&["join", &left.to_string(), &right.to_string()])
        .await?;
    cluster.wait_settled().await
}

/// The ids of the current ranges left and right of `boundary`.
pub fn neighbours(ranges: &[RangeView], boundary: &str) -> anyhow::Result<(u64, u64)> {
    let left = holding(ranges, &just_before(boundary))?;
    let right = holding(ranges, boundary)?;
    if left.id == right.id {
        bail!("no boundary at {boundary:?}: range {} spans it", left.id);
    }
    Ok((left.id, right.id))
}

/// Moves the range holding `key` to another node and waits until the
/// cluster settles.
pub async fn move_holding(cluster: &Cluster, key: &str) -> anyhow::Result<Vec<RangeView>> {
    let (ctl, ranges) = cluster.leader_ranges().await.map_err(anyhow::Error::msg)?;
    let range = holding(&ranges, key)?;
    let to = other_node(cluster, range)?;
    ctl.operation_ok(&["move", &range.id.to_string(), &to])
        .await?;
    cluster.wait_settled().await
}

/// Runs `rangerctl ARGS` on controller `index`, kills that controller with
/// SIGKILL right after the `k`-th node answer of the operation, and waits for
/// `rangerctl` to end (what it says then does not matter). Returns when the
/// kill happened.
pub async fn kill_controller_after_answer(
    cluster: &mut Cluster,
    index: usize,
    args: Vec<String>,
    k: usize,
) -> anyhow::Result<Instant> {
    let ctl = cluster.ctl_at(index).clone();
    let mut events = Events::subscribe(ctl.addr()).await?;
    let operation = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ctl.operation(&args).await
    });
    for n in 1..=k {
        events
            .next_matching(SHORT, is_command_answer)
            .await
            .with_context(|| format!("waiting for answer {n} of {k}"))?;
    }
    cluster.kill_controller(index)?;
    let killed = Instant::now();
    tokio::time::timeout(SHORT, operation)
        .await
        .context("rangerctl did not end after its controller was killed")???;
    Ok(killed)
}

/// The node among `nodes` that serves a range as its primary (the KV node's
/// `ranger_kv_node_primary_ranges` gauge).
pub async fn primary_among(cluster: &Cluster, nodes: &[String]) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for node in nodes {
            let samples = ranger_integration::metrics::scrape(cluster.node_metrics(node)?).await?;
            if samples.sum("ranger_kv_node_primary_ranges", &[]) >= 1.0 {
                return Ok(node.clone());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "none of {nodes:?} serves as primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Dumps every current range from each of its Active copies directly (Dump
/// is not refused by a member) and checks that they agree; returns the pairs
/// counted over the ranges.
pub async fn same_on_every_copy(cluster: &Cluster, ranges: &[RangeView]) -> anyhow::Result<usize> {
    let mut total = 0;
    for range in current(ranges) {
        let mut dumps = Vec::new();
        for node in range.active_nodes() {
            let addr = cluster.nodes[cluster.node_index(&node)?].listen;
            let mut client = KvClient::connect(format!("http://{addr}")).await?;
            let pairs = client
                .dump(pb::DumpRequest {
                    range_ident: range.id,
                })
                .await?
                .into_inner()
                .pairs;
            dumps.push((node, pairs));
        }
        let Some((first, want)) = dumps.first() else {
            anyhow::bail!("range {} has no active copy", range.id);
        };
        for (node, pairs) in &dumps[1..] {
            anyhow::ensure!(
                pairs == want,
                "range {}: {node} holds {} pairs, {first} {}",
                range.id,
                pairs.len(),
                want.len()
            );
        }
        total += want.len();
    }
    Ok(total)
}
