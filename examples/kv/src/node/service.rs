//! The `kv.KV` service of a node: client reads and writes (only for keys in a
//! range this node serves Active), and the node-to-node transfer streams. Every
//! call is counted, by method and code, in the node's request metrics.

use std::pin::Pin;

use crate::pb;
use futures::Stream;
use ranger_node_sdk::Rangelet;
use ranger_proto::{RangeId, RemoteState};
use tonic::{Request, Response, Status};

use super::KvNode;
use super::access::WriteOp;
use super::spans::Span;
use super::store::Pair;

/// The largest message a node takes or sends (a transfer chunk, a batch and
/// its answers); the proxy accepts node answers up to it.
pub const MESSAGE_LIMIT: usize = 64 << 20;
/// Most pairs one Scan returns when the client asks for no limit.
const DEFAULT_SCAN_LIMIT: usize = 1000;
/// Most ops in one Batch: its reads are served one after another on the
/// runtime, so a huge batch from a peer must not hold a worker for long.
pub const MAX_BATCH_OPS: usize = 1024;
/// Dump is for small ranges and debugging; larger ones must be scanned.
const DUMP_LIMIT: usize = 100_000;

/// `kv.KV` over a node and its rangelet.
#[derive(Debug, Clone)]
pub struct KvService {
    node: KvNode,
    rangelet: Rangelet<KvNode>,
}

impl KvService {
    pub fn new(node: KvNode, rangelet: Rangelet<KvNode>) -> Self {
        KvService { node, rangelet }
    }

    pub fn into_server(self) -> pb::kv_server::KvServer<Self> {
        pb::kv_server::KvServer::new(self)
            .max_decoding_message_size(MESSAGE_LIMIT)
            .max_encoding_message_size(MESSAGE_LIMIT)
    }

    fn held_span(&self, range: RangeId) -> Result<Span, Status> {
        self.rangelet
            .ranges()
            .into_iter()
            .find(|r| r.meta.id() == range)
            .map(|r| Span::of(&r.meta))
            .ok_or_else(|| Status::not_found(format!("range {range} is not on this node")))
    }

    /// A client read of `key`: refused unless this node serves it Active.
    fn get_value(&self, key: &str) -> Result<Vec<u8>, Status> {
        self.node.read_range(&self.rangelet, key)?;
        match self.node.store().get(key.as_bytes()) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(Status::not_found(format!("no such key: {key:?}"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

/// One op's outcome as a batch answer carries it.
fn batch_result(outcome: Result<Vec<u8>, Status>) -> pb::BatchResult {
    match outcome {
        Ok(value) => pb::BatchResult {
            code: tonic::Code::Ok as i32,
            message: String::new(),
            value,
        },
        Err(status) => pb::BatchResult {
            code: status.code() as i32,
            message: status.message().to_owned(),
            value: Vec::new(),
        },
    }
}

fn range_id(id: u64) -> Result<RangeId, Status> {
    RangeId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Pairs as `kv.KV` answers carry them: keys as text, like the reference's.
fn wire_pairs(pairs: Vec<Pair>) -> Vec<pb::Pair> {
    pairs
        .into_iter()
        .map(|(k, v)| pb::Pair {
            key: text(&k),
            value: v,
        })
        .collect()
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<pb::DeltaChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Get", async move {
                let key = request.into_inner().key;
                let value = self.get_value(&key)?;
                Ok(Response::new(pb::GetResponse { value }))
            })
            .await
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Put", async move {
                let request = request.into_inner();
                self.node
                    .write(&self.rangelet, request.key, WriteOp::Put(request.value))
                    .await?;
                Ok(Response::new(pb::PutResponse {}))
            })
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Delete", async move {
                let key = request.into_inner().key;
                self.node
                    .write(&self.rangelet, key, WriteOp::Delete)
                    .await?;
                Ok(Response::new(pb::DeleteResponse {}))
            })
            .await
    }

    /// Each op answered as its own call would be. The writes land first, in
    /// one synced write ([`KvNode::write_batch`]); then the reads are served,
    /// so a Get sees the writes of its own batch.
    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Batch", async move {
                let ops = request.into_inner().ops;
                if ops.len() > MAX_BATCH_OPS {
                    return Err(Status::invalid_argument(format!(
                        "a batch of {} ops; at most {MAX_BATCH_OPS}",
                        ops.len()
                    )));
                }
                let mut results: Vec<pb::BatchResult> =
                    ops.iter().map(|_| pb::BatchResult::default()).collect();
                let mut writes = Vec::new();
                let mut write_at = Vec::new();
                let mut reads = Vec::new();
                for (at, op) in ops.into_iter().enumerate() {
                    match op.op {
                        Some(pb::batch_op::Op::Get(get)) => reads.push((at, get.key)),
                        Some(pb::batch_op::Op::Put(put)) => {
                            write_at.push(at);
                            writes.push((put.key, WriteOp::Put(put.value)));
                        }
                        Some(pb::batch_op::Op::Delete(delete)) => {
                            write_at.push(at);
                            writes.push((delete.key, WriteOp::Delete));
                        }
                        None => {
                            results[at] = batch_result(Err(Status::invalid_argument(
                                "a batch op without an operation (get, put or delete)",
                            )));
                        }
                    }
                }
                let written = self.node.write_batch(&self.rangelet, writes).await;
                for (at, outcome) in write_at.into_iter().zip(written) {
                    results[at] = batch_result(outcome.map(|()| Vec::new()).map_err(Status::from));
                }
                for (at, key) in reads {
                    results[at] = batch_result(self.get_value(&key));
                }
                Ok(Response::new(pb::BatchResponse { results }))
            })
            .await
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Scan", async move {
                let request = request.into_inner();
                let range = self.node.read_range(&self.rangelet, &request.start)?;
                let range_span = self.held_span(range)?;
                let wanted = Span::from_wire(request.start.into_bytes(), request.end.into_bytes());
                let Some(span) = wanted.intersect(&range_span) else {
                    return Ok(Response::new(pb::ScanResponse::default()));
                };
                let limit = match request.limit {
                    0 => DEFAULT_SCAN_LIMIT,
                    n => n as usize,
                };
                let (pairs, more) = self
                    .node
                    .store()
                    .scan(&span, limit)
                    .map_err(|e| Status::internal(e.to_string()))?;
                // Continue at the first key not returned, or where this range ends if the
                // client asked for more than it holds.
                let next = match more {
                    Some(key) => text(&key),
                    None => match (&range_span.end, &wanted.end) {
                        (Some(range_end), None) => text(range_end),
                        (Some(range_end), Some(end)) if range_end < end => text(range_end),
                        _ => String::new(),
                    },
                };
                Ok(Response::new(pb::ScanResponse {
                    pairs: wire_pairs(pairs),
                    next,
                }))
            })
            .await
    }

    async fn dump(
        &self,
        request: Request<pb::DumpRequest>,
    ) -> Result<Response<pb::DumpResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Dump", async move {
                let range = range_id(request.into_inner().range_ident)?;
                let span = self.held_span(range)?;
                let (pairs, more) = self
                    .node
                    .store()
                    .scan(&span, DUMP_LIMIT)
                    .map_err(|e| Status::internal(e.to_string()))?;
                if more.is_some() {
                    return Err(Status::resource_exhausted(format!(
                        "range {range} holds more than {DUMP_LIMIT} pairs; use Scan"
                    )));
                }
                Ok(Response::new(pb::DumpResponse {
                    pairs: wire_pairs(pairs),
                }))
            })
            .await
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Snapshot", async move {
                let request = request.into_inner();
                let source = range_id(request.source_range)?;
                let range_span = self.held_span(source)?;
                // A serving replicated range is copied from its primary only:
                // the copy's delta needs the primary's write tracking.
                if self.rangelet.state(source) == RemoteState::Active
                    && let Some(not_primary) = self.node.snapshot_refusal(source)
                {
                    let mut status = Status::failed_precondition(format!(
                        "range {source} is replicated and this copy is not its primary; copy from the primary"
                    ));
                    if let Some(primary) = not_primary
                        .primary
                        .and_then(|p| tonic::metadata::MetadataValue::try_from(p).ok())
                    {
                        status
                            .metadata_mut()
                            .insert(super::transfer::PRIMARY_HEADER, primary);
                    }
                    return Err(status);
                }
                let span = Span::from_wire(request.start, request.end);
                if !span.within(&range_span) {
                    return Err(Status::invalid_argument(format!(
                        "span is not within range {source}"
                    )));
                }
                let stream = self.node.stream_snapshot(source, span, request.packed);
                let mut response: Response<Self::SnapshotStream> = Response::new(Box::pin(stream));
                response.metadata_mut().insert(
                    super::transfer::INSTANCE_HEADER,
                    tonic::metadata::MetadataValue::from(self.node.instance()),
                );
                Ok(response)
            })
            .await
    }

    type DeltaStream = DeltaStream;

    async fn delta(
        &self,
        request: Request<pb::DeltaRequest>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Delta", async move {
                let request = request.into_inner();
                let transfer = request.transfer;
                let unknown = || {
                    Status::not_found(format!(
                        "transfer {transfer} is unknown here (the source restarted or dropped the range)"
                    ))
                };
                let source = self.node.trackers().source(transfer).ok_or_else(unknown)?;
                let state = self.rangelet.state(source);
                let joins = state == RemoteState::Active
                    && !request.joiner.is_empty()
                    && self
                        .node
                        .serves_as_primary(source, self.node.config().peer_timeout / 4)
                        .await;
                if joins {
                    let stream = self.node.join_delta(source, transfer, request.joiner).await?;
                    let stream: Self::DeltaStream = Box::pin(stream);
                    return Ok(Response::new(stream));
                }
                if state != RemoteState::Inactive {
                    return Err(Status::failed_precondition(format!(
                        "range {source} is {state} here: the delta is final only once it is Inactive"
                    )));
                }
                // Where a replicated range's log stands, read before the keys:
                // every entry up to it is among them.
                let tail = self.node.replica_tail(source).await;
                let (_, _, keys) = self.node.trackers().changes(transfer).ok_or_else(unknown)?;
                let stream: Self::DeltaStream =
                    Box::pin(self.node.stream_delta(keys, tail, Box::new(|_| {})));
                Ok(Response::new(stream))
            })
            .await
    }

    async fn end_transfer(
        &self,
        request: Request<pb::EndTransferRequest>,
    ) -> Result<Response<pb::EndTransferResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("EndTransfer", async move {
                self.node.trackers().end(request.into_inner().transfer);
                Ok(Response::new(pb::EndTransferResponse {}))
            })
            .await
    }

    async fn replicate(
        &self,
        request: Request<pb::ReplicateRequest>,
    ) -> Result<Response<pb::ReplicateResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("Replicate", async move {
                let request = request.into_inner();
                let range = range_id(request.range)?;
                let entry = request
                    .entry
                    .ok_or_else(|| Status::invalid_argument("a Replicate without an entry"))?;
                if entry.seq == 0 {
                    return Err(Status::invalid_argument(
                        "entry sequence numbers start at 1",
                    ));
                }
                // In a task of its own: a primary that goes away mid-call must
                // not leave the entry durable here but unrecorded in memory
                // (this copy would then answer a takeover one entry short).
                let node = self.node.clone();
                let epoch = request.epoch;
                tokio::spawn(async move { node.apply_replicated(range, epoch, entry).await })
                    .await
                    .map_err(|join| {
                        Status::internal(format!("applying the entry failed: {join}"))
                    })??;
                Ok(Response::new(pb::ReplicateResponse {}))
            })
            .await
    }

    async fn take_over(
        &self,
        request: Request<pb::TakeOverRequest>,
    ) -> Result<Response<pb::TakeOverResponse>, Status> {
        let requests = &self.node.metrics().requests;
        requests
            .observe("TakeOver", async move {
                let request = request.into_inner();
                let range = range_id(request.range)?;
                if request.epoch == 0 {
                    return Err(Status::invalid_argument("epoch 0 is no controller's"));
                }
                let answer = self.node.answer_take_over(range, request.epoch).await?;
                Ok(Response::new(answer))
            })
            .await
    }
}
