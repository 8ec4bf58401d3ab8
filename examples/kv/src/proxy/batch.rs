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
//! batcher then remembers it, and that node gets single calls from then on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::metrics::ProxyMetrics;
use crate::pb::{self, kv_client::KvClient};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
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
    /// The node answered `Batch` with UNIMPLEMENTED: single calls only.
    unbatched: Arc<AtomicBool>,
    metrics: ProxyMetrics,
}

#[derive(Debug, Clone)]
struct Lanes {
    reads: mpsc::UnboundedSender<Queued>,
    writes: mpsc::UnboundedSender<Queued>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

impl Batcher {
    /// A batcher sending over `client`'s channel. Must be called inside a
    /// Tokio runtime (it spawns the node's sending task) unless batching is
    /// off.
    pub(crate) fn new(
        client: KvClient<Channel>,
        config: BatchConfig,
        metrics: ProxyMetrics,
    ) -> Batcher {
        let unbatched = Arc::new(AtomicBool::new(false));
        let lane = || {
            let (queue, queued) = mpsc::unbounded_channel();
            tokio::spawn(send_batches(
                client.clone(),
                config,
                queued,
                Arc::clone(&unbatched),
                metrics.clone(),
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
        if self.unbatched.load(Ordering::Relaxed) {
            return single(self.client.clone(), op).await;
        }
        let (reply, answer) = oneshot::channel();
        let kept = op.clone();
        self.metrics.batch_queued();
        if queue.send(Queued { op, reply }).is_err() {
            self.metrics.batch_unqueued();
            // The sending task ended (it cannot while a handle lives, but a
            // request must not be lost to it): send it on its own.
            return single(self.client.clone(), kept).await;
        }
        match answer.await {
            Ok(Err(status))
                if status.code() == Code::Unimplemented
                    && self.unbatched.load(Ordering::Relaxed) =>
            {
                single(self.client.clone(), kept).await
            }
            Ok(result) => result,
            Err(_dropped) => Err(Status::unavailable(
                "the batch carrying this request was abandoned",
            )),
        }
    }
}

/// The node's sending task for one lane: while fewer than `in_flight` batches
/// are out, takes what is queued (up to `max_ops` ops and `max_bytes`) as the
/// next batch.
async fn send_batches(
    client: KvClient<Channel>,
    config: BatchConfig,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    unbatched: Arc<AtomicBool>,
    metrics: ProxyMetrics,
) {
    // The batches in flight are driven here rather than spawned: one task
    // hand-off less per batch.
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
                metrics.batch_sent(batch.len());
                in_flight.push(send_batch(client.clone(), batch, &unbatched));
            }
        }
    }
}

/// The op carried over from the last batch, else the next one queued.
async fn next_op(
    carried: &mut Option<Queued>,
    queued: &mut mpsc::UnboundedReceiver<Queued>,
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

async fn send_batch(mut client: KvClient<Channel>, batch: Vec<Queued>, unbatched: &AtomicBool) {
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
    let answers: Vec<OpResult> = match client.batch(pb::BatchRequest { ops }).await {
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
            futures::future::join_all(reads.into_iter().map(|op| single(client.clone(), op))).await
        }
        Err(status) => {
            if status.code() == Code::Unimplemented {
                tracing::info!("node does not know kv.KV/Batch; sending it single calls");
                unbatched.store(true, Ordering::Relaxed);
            }
            vec![Err(status); sent]
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that stopped waiting (its deadline passed) is no loss.
        let _ = reply.send(answer);
    }
}

/// A message over a size limit, on either side of the call.
fn too_big(status: &Status) -> bool {
    matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange)
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
