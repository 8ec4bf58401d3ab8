//! Scenario 2: the controller is killed with SIGKILL in the middle of a
//! move, a split and a join: after each of the nodes' answers in turn
//! (Prepare, Deactivate, Activate, Drop), then restarted. The operation
//! finishes or rolls back, the keyspace settles, and nothing the hammer had
//! acknowledged is lost.
//!
//! The kill follows the controller's event for the k-th answer, so it lands
//! after that answer was recorded and possibly after the next command was
//! sent: the point of the test is that any such instant is safe.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, bail};
use ranger_integration::views::{RangeView, range};
use ranger_integration::{Backend, Cluster, Summary};

use crate::common::{self, Markers, holding, neighbours, other_node};

/// Answers in a move: P(b), D(a), A(b), X(a).
const MOVE_ANSWERS: usize = 4;
/// Answers in a split: P(b,2), P(c,3), D(a,1), A(b,2), A(c,3), X(a,1); and in
/// a join: P(c,3), D(a,1), D(b,2), A(c,3), X(a,1), X(b,2).
const SPLIT_JOIN_ANSWERS: usize = 6;

/// How the operations interrupted by a kill ended.
#[derive(Debug, Default)]
struct Outcomes {
    finished: [usize; 3],
    rolled_back: [usize; 3],
    longest_recovery: Duration,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Move = 0,
    Split = 1,
    Join = 2,
}

impl Outcomes {
    fn record(&mut self, kind: Kind, finished: bool) {
        if finished {
            self.finished[kind as usize] += 1;
        } else {
            self.rolled_back[kind as usize] += 1;
        }
    }
}

impl fmt::Display for Outcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kills: usize = self.finished.iter().chain(&self.rolled_back).sum();
        write!(f, "{kills} kills;")?;
        for (i, name) in ["move", "split", "join"].iter().enumerate() {
            write!(
                f,
                " {name} {} finished/{} rolled back",
                self.finished[i], self.rolled_back[i]
            )?;
        }
        Ok(())
    }
}

/// Runs `rangerctl ARGS` and kills the controller right after the `k`-th
/// answer of a node; restarts it at once; returns how long the cluster took
/// from the kill until it settled (on Consul that includes the dead
/// process's lock running out).
async fn kill_after_answer(
    cluster: &mut Cluster,
    args: Vec<String>,
    k: usize,
) -> anyhow::Result<Duration> {
    let killed = common::kill_controller_after_answer(cluster, 0, args, k).await?;
    cluster.restart_controller(0).await?;
    cluster.recovered_since(killed).await
}

async fn controller_killed_after_each_answer(backend: Backend, name: &str) -> anyhow::Result<()> {
    let mut cluster = common::cluster(backend).await?;
    let result = killed_after_each_answer(&mut cluster, backend, name).await;
    cluster.conclude(result)
}

async fn killed_after_each_answer(
    cluster: &mut Cluster,
    backend: Backend,
    name: &str,
) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    let hammer = common::hammer(cluster, 202).await?;
    let mut outcomes = Outcomes::default();

    for k in 1..=MOVE_ANSWERS {
        let ranges = cluster.wait_settled().await?;
        let moving = holding(&ranges, "h2")?;
        let (id, from) = (moving.id, moving.served_by());
        let to = other_node(cluster, moving)?;
        let args = vec!["move".to_owned(), id.to_string(), to.clone()];
        let took = kill_after_answer(cluster, args, k).await?;
        outcomes.longest_recovery = outcomes.longest_recovery.max(took);
        let ranges = cluster.wait_settled().await?;
        let now = range(&ranges, id).and_then(RangeView::served_by);
        let finished = match now {
            Some(node) if node == to => true,
            Some(node) if Some(&node) == from.as_ref() => false,
            other => bail!("move {id} -> {to} killed after answer {k}: range now on {other:?}"),
        };
        outcomes.record(Kind::Move, finished);
        markers.check(cluster).await?;
    }

    for k in 1..=SPLIT_JOIN_ANSWERS {
        // Split at h2, killed after answer k; finished or rolled back, the
        // join that follows needs the boundary, so a rollback is redone.
        let ranges = cluster.wait_settled().await?;
        let parent = holding(&ranges, "h2")?.id;
        let args = vec!["split".to_owned(), parent.to_string(), "h2".to_owned()];
        let took = kill_after_answer(cluster, args, k).await?;
        outcomes.longest_recovery = outcomes.longest_recovery.max(took);
        let ranges = cluster.wait_settled().await?;
        let split = split_outcome(&ranges, parent)
            .with_context(|| format!("split {parent} killed after answer {k}"))?;
        outcomes.record(Kind::Split, split);
        markers.check(cluster).await?;
        if !split {
            common::split_at(cluster, "h2").await?;
        }

        let ranges = cluster.wait_settled().await?;
        let (left, right) = neighbours(&ranges, "h2")?;
        let args = vec!["join".to_owned(), left.to_string(), right.to_string()];
        let took = kill_after_answer(cluster, args, k).await?;
        outcomes.longest_recovery = outcomes.longest_recovery.max(took);
        let ranges = cluster.wait_settled().await?;
        let joined = join_outcome(&ranges, left, right)
            .with_context(|| format!("join {left} {right} killed after answer {k}"))?;
        outcomes.record(Kind::Join, joined);
        markers.check(cluster).await?;
        if !joined {
            common::join_at(cluster, "h2").await?;
        }
    }

    let report = hammer.stop().await?;
    report.check_no_loss()?;
    Summary::new(name, backend, &report)
        .recovered_in(outcomes.longest_recovery)
        .note(format!(
            "{outcomes}; recovery is the longest from a kill to settled"
        ))
        .print();
    Ok(())
}

/// Whether a split of `parent` finished (it is obsolete and two current
/// children serve) or rolled back (it serves again); an error if neither.
fn split_outcome(ranges: &[RangeView], parent: u64) -> anyhow::Result<bool> {
    let range = range(ranges, parent).context("the parent is gone")?;
    match (range.is_current(), range.children.as_slice()) {
        (true, _) if range.served_by().is_some() => Ok(false),
        (false, [a, b]) if [*a, *b].iter().all(|c| served(ranges, *c)) => Ok(true),
        _ => bail!("neither finished nor rolled back: {range:?}"),
    }
}

/// Whether a join of `left` and `right` finished (both obsolete, their child
/// serves) or rolled back (both serve again); an error if neither.
fn join_outcome(ranges: &[RangeView], left: u64, right: u64) -> anyhow::Result<bool> {
    let l = range(ranges, left).context("the left parent is gone")?;
    let r = range(ranges, right).context("the right parent is gone")?;
    if served(ranges, left) && served(ranges, right) {
        return Ok(false);
    }
    match (l.is_current(), r.is_current(), l.children.as_slice()) {
        (false, false, [child]) if served(ranges, *child) && r.children == [*child] => Ok(true),
        _ => bail!("neither finished nor rolled back: {l:?} {r:?}"),
    }
}

fn served(ranges: &[RangeView], id: u64) -> bool {
    range(ranges, id).is_some_and(|r| r.is_current() && r.served_by().is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_a_controller_killed_after_each_answer_of_a_move_split_and_join_finishes_or_rolls_back()
{
    controller_killed_after_each_answer(Backend::Consul, "s02 controller kill -9 mid-operation")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_on_the_embedded_default_a_controller_killed_mid_operation_finishes_or_rolls_back() {
    controller_killed_after_each_answer(
        Backend::Embedded,
        "s10/s02 controller kill -9 mid-operation",
    )
    .await
    .unwrap();
}
