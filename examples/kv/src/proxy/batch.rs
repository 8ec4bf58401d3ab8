//! Requests for one node, sent together.
//!
//! A proxy in front of every node sees many concurrent client requests for the
//! same node. Sent one by one, each pays its own HTTP/2 frames, its own trip
//! through the node's gRPC server and its own WAL sync. A [`Batcher`] per node
//! keeps at most [`BatchConfig::in_flight`] `kv.KV/Batch` calls running; what
//! arrives meanwhile waits in a queue and goes as the next batch (up to
//! [`BatchConfig::max_ops`] ops). An idle proxy therefore sends a lone request
//! at once, with no timer: batches form only when requests would have queued
//! anyway, which is when batching pays.
//!
//! Each op keeps its own answer (a batch is not a transaction), so the
//! forwarding loop retries it exactly as it would a single call. A node that
//! does not know `Batch` (the Go reference's) answers UNIMPLEMENTED; the
//! batcher then remembers it, and that node gets single calls for a minute
//! before it is asked again (it may have been upgraded in place).
//!
//! A request whose caller gave up (its deadline passed) while it waited in the
//! queue is never sent: otherwise it could land after its client was told it
//! failed, over a newer write of the same key. A batch that gets no answer
//! within the request deadline fails its ops, so a silent node cannot hold a
//! lane forever; the queue is bounded, so an overloaded node slows its
//! callers down instead of growing the proxy's memory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::metrics::ProxyMetrics;
use crate::pb::{self, kv_client::KvClient};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How the proxy batches requests per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most ops in one batch. 1 turns batching off: every request is sent
    /// as its own call, as before batching existed.
    pub max_ops: usize,
    /// Most bytes of keys and values in one batch's request (an op bigger
    /// than this goes alone, as its own single call would), so that a batch
    /// never exceeds a message limit its ops would each have met.
    pub max_bytes: usize,
    /// Batches in flight to one node at once, for reads and for writes each.
    /// One lets the most requests gather behind the batch in flight: with 32
    /// clients `bench_kv` measured the proxy at 1.19 of direct with one and
    /// 0.94 with four (before reads and writes had lanes of their own); with
    /// 8 clients the two were within the noise of each other.
    pub in_flight: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_ops: 64,
            max_bytes: 1 << 20,
            in_flight: 1,
        }
    }
}

/// Ops that may wait for a lane's batch, per `max_ops` of a batch.
const QUEUE_BATCHES: usize = 16;

/// How long a node that answered `Batch` with UNIMPLEMENTED gets single calls
/// before it is asked again.
const UNBATCHED_FOR: Duration = Duration::from_secs(60);

/// One client op on its way to a node.
pub(crate) type Op = pb::batch_op::Op;

/// What a node answered one op: its value (a Get's), or its status.
pub(crate) type OpResult = Result<Vec<u8>, Status>;

struct Queued {
    op: Op,
    reply: oneshot::Sender<OpResult>,
}

/// The batching sender for one node. Dropping every handle ends its task.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    client: KvClient<Channel>,
    /// Reads and writes queue apart: in one batch, reads would wait for the
    /// writes' WAL sync, which they do not need. None: batching is off.
    lanes: Option<Lanes>,
    unbatched: Unbatched,
    metrics: ProxyMetrics,
}

#[derive(Debug, Clone)]
struct Lanes {
    reads: mpsc::Sender<Queued>,
    writes: mpsc::Sender<Queued>,
}

/// When the node last answered `Batch` with UNIMPLEMENTED, if lately.
#[derive(Debug, Clone, Default)]
struct Unbatched(Arc<Mutex<Option<Instant>>>);

impl Unbatched {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark(&self) {
        *self.lock() = Some(Instant::now());
    }

    /// Whether the node is to get single calls now.
    fn now(&self) -> bool {
        self.lock()
            .is_some_and(|since| since.elapsed() < UNBATCHED_FOR)
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

impl Batcher {
    /// A batcher sending over `client`'s channel; a batch unanswered after
    /// `deadline` (the proxy's request deadline) fails its ops. Must be called
    /// inside a Tokio runtime (it spawns the node's sending tasks) unless
    /// batching is off.
    pub(crate) fn new(
        client: KvClient<Channel>,
        config: BatchConfig,
        deadline: Duration,
        metrics: ProxyMetrics,
    ) -> Batcher {
        let unbatched = Unbatched::default();
        let lane = || {
            let (queue, queued) = mpsc::channel(config.max_ops.max(1) * QUEUE_BATCHES);
            tokio::spawn(send_batches(
                Lane {
                    client: client.clone(),
                    config,
                    deadline,
                    unbatched: unbatched.clone(),
                    metrics: metrics.clone(),
                },
                queued,
            ));
            queue
        };
        let lanes = (config.max_ops > 1).then(|| Lanes {
            reads: lane(),
            writes: lane(),
        });
        Batcher {
            client,
            lanes,
            unbatched,
            metrics,
        }
    }

    /// A client of the node, for calls that are not batched (Scan, Dump).
    pub(crate) fn client(&self) -> KvClient<Channel> {
        self.client.clone()
    }

    /// Sends `op` to the node, in the next batch if batching is on, and
    /// returns what the node answered it.
    pub(crate) async fn call(self, op: Op) -> OpResult {
        let Some(lanes) = self.lanes.as_ref() else {
            return single(self.client.clone(), op).await;
        };
        let queue = match op {
            Op::Get(_) => &lanes.reads,
            Op::Put(_) | Op::Delete(_) => &lanes.writes,
        };
        if self.unbatched.now() {
            return single(self.client.clone(), op).await;
        }
        let (reply, answer) = oneshot::channel();
        let kept = op.clone();
        // A full queue makes the caller wait (its deadline still applies);
        // the slot is counted only once it is held, so a caller that gives up
        // while waiting leaves the count right.
        let Ok(slot) = queue.reserve().await else {
            // The sending task ended (it cannot while a handle lives, but a
            // request must not be lost to it): send it on its own.
            return single(self.client.clone(), kept).await;
        };
        self.metrics.batch_queued();
        slot.send(Queued { op, reply });
        match answer.await {
            Ok(Err(status)) if status.code() == Code::Unimplemented && self.unbatched.now() => {
                single(self.client.clone(), kept).await
            }
            Ok(result) => result,
            Err(_dropped) => Err(Status::unavailable(
                "the batch carrying this request was abandoned",
            )),
        }
    }
}

/// What a lane's task needs to send batches to its node.
struct Lane {
    client: KvClient<Channel>,
    config: BatchConfig,
    deadline: Duration,
    unbatched: Unbatched,
    metrics: ProxyMetrics,
}

/// The node's sending task for one lane: while fewer than `in_flight` batches
/// are out, takes what is queued (up to `max_ops` ops and `max_bytes`, leaving
/// out ops whose caller gave up) as the next batch.
async fn send_batches(lane: Lane, mut queued: mpsc::Receiver<Queued>) {
    // The batches in flight are driven here rather than spawned: one task
    // hand-off less per batch.
    let config = lane.config;
    let limit = config.in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    // An op taken from the queue that would have made the last batch too big:
    // it opens the next one.
    let mut carried: Option<Queued> = None;
    let mut open = true;
    while open || carried.is_some() || !in_flight.is_empty() {
        let room = in_flight.len() < limit;
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = next_op(&mut carried, &mut queued), if room && (open || carried.is_some()) => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut bytes = op_bytes(&first.op);
                let mut batch = vec![first];
                while batch.len() < config.max_ops {
                    let Ok(next) = queued.try_recv() else {
                        break;
                    };
                    bytes += op_bytes(&next.op);
                    if bytes > config.max_bytes {
                        carried = Some(next);
                        break;
                    }
                    batch.push(next);
                }
                let taken = batch.len();
                batch.retain(|queued| !queued.reply.is_closed());
                lane.metrics.batch_taken(taken, batch.len());
                if !batch.is_empty() {
                    in_flight.push(send_batch(&lane, batch));
                }
            }
        }
    }
}

/// The op carried over from the last batch, else the next one queued.
async fn next_op(
    carried: &mut Option<Queued>,
    queued: &mut mpsc::Receiver<Queued>,
) -> Option<Queued> {
    match carried.take() {
        Some(op) => Some(op),
        None => queued.recv().await,
    }
}

/// What an op adds to a batch's request: its key and value.
fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Get(get) => get.key.len(),
        Op::Put(put) => put.key.len() + put.value.len(),
        Op::Delete(delete) => delete.key.len(),
    }
}

async fn send_batch(lane: &Lane, batch: Vec<Queued>) {
    let mut client = lane.client.clone();
    // Reads are kept (a key each) in case their answers together are too big
    // for one message: then each is asked again on its own. Writes are not:
    // their batch is bounded by `max_bytes`.
    let reads: Vec<Op> = batch
        .iter()
        .filter(|queued| matches!(queued.op, Op::Get(_)))
        .map(|queued| queued.op.clone())
        .collect();
    let (ops, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|queued| {
            (
                pb::BatchOp {
                    op: Some(queued.op),
                },
                queued.reply,
            )
        })
        .unzip();
    let sent = ops.len();
    let call = client.batch(pb::BatchRequest { ops });
    let answered = match tokio::time::timeout(lane.deadline, call).await {
        Ok(answered) => answered,
        Err(_elapsed) => Err(Status::deadline_exceeded(format!(
            "the node did not answer a batch of {sent} ops within {:?}",
            lane.deadline
        ))),
    };
    let answers: Vec<OpResult> = match answered {
        Ok(response) => {
            let results = response.into_inner().results;
            if results.len() == sent {
                results.into_iter().map(op_result).collect()
            } else {
                let status = Status::internal(format!(
                    "the node answered {} results to a batch of {sent} ops",
                    results.len()
                ));
                vec![Err(status); sent]
            }
        }
        Err(status) if too_big(&status) && sent > 1 && reads.len() == sent => {
            tracing::debug!(
                ops = sent,
                "a batch's answer was too big; asking each read alone"
            );
            futures::future::join_all(reads.into_iter().map(|op| single(lane.client.clone(), op)))
                .await
        }
        Err(status) => {
            if status.code() == Code::Unimplemented {
                tracing::info!(
                    "node does not know kv.KV/Batch; sending it single calls for {UNBATCHED_FOR:?}"
                );
                lane.unbatched.mark();
            }
            vec![Err(status); sent]
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that stopped waiting (its deadline passed) is no loss.
        let _ = reply.send(answer);
    }
}

/// A message over a size limit, on either side of the call (tonic's codec
/// says OUT_OF_RANGE, "message length too large").
fn too_big(status: &Status) -> bool {
    status.code() == Code::OutOfRange
}

/// One op's answer in a batch, as its own call's result.
fn op_result(result: pb::BatchResult) -> OpResult {
    if result.code == Code::Ok as i32 {
        Ok(result.value)
    } else {
        Err(Status::new(Code::from(result.code), result.message))
    }
}

/// `op` as its own call (batching off, or a node without `Batch`).
async fn single(mut client: KvClient<Channel>, op: Op) -> OpResult {
    match op {
        Op::Get(request) => Ok(client.get(request).await?.into_inner().value),
        Op::Put(request) => {
            client.put(request).await?;
            Ok(Vec::new())
        }
        Op::Delete(request) => {
            client.delete(request).await?;
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_node_without_batch_is_asked_again_after_a_minute() {
        let unbatched = Unbatched::default();
        assert!(!unbatched.now(), "batched until it says otherwise");
        unbatched.mark();
        assert!(unbatched.now());
        tokio::time::advance(UNBATCHED_FOR - Duration::from_secs(1)).await;
        assert!(unbatched.now());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!unbatched.now(), "upgraded nodes get batches again");
    }

    #[test]
    fn only_a_message_over_its_size_limit_is_too_big() {
        assert!(too_big(&Status::out_of_range("message length too large")));
        assert!(!too_big(&Status::resource_exhausted("shedding load")));
        assert!(!too_big(&Status::unavailable("down")));
    }
}
