//! The `kv.KV` service of a node: client reads and writes (only for keys in a
//! range this node serves Active), and the node-to-node transfer streams.

use std::pin::Pin;

use crate::pb;
use futures::Stream;
use ranger_node_sdk::{KeyRejection, Rangelet};
use ranger_proto::{RangeId, RemoteState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::KvNode;
use super::spans::Span;
use super::store::PairChecksum;

/// Most pairs one Scan returns when the client asks for no limit.
const DEFAULT_SCAN_LIMIT: usize = 1000;
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
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// The range that serves `key` here, or the status the reference clients
    /// expect: a key outside every range this node serves, or in a range that is
    /// not Active (it may be stale: another node may have taken over), is
    /// FAILED_PRECONDITION; an empty key is INVALID_ARGUMENT.
    fn route(&self, key: &str) -> Result<RangeId, Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("empty key"));
        }
        self.rangelet
            .serving_range(key.as_bytes())
            .map_err(|rejection| match rejection {
                KeyRejection::NotOwned(_) => Status::failed_precondition(format!(
                    "key {key:?} is in no range this node serves"
                )),
                KeyRejection::NotActive { range, state } => Status::failed_precondition(format!(
                    "range {range} holding key {key:?} is {state} here, not Active"
                )),
                KeyRejection::LeaseExpired { range } => Status::failed_precondition(format!(
                    "range {range} is fenced: this node lost touch with the controller"
                )),
            })
    }

    /// Runs a write under the range's gate, re-checking that it may still be
    /// written once inside (a deactivation may have begun meanwhile). Answers only
    /// once the write is durable (in the synced WAL).
    ///
    /// The write runs on the blocking pool, so that concurrent writers wait for
    /// their fsync together (RocksDB commits them as a group) instead of each
    /// holding a runtime thread. The task owns the gate guard and records the
    /// write for transfers itself: a client that goes away cannot release the
    /// gate (and let a deactivation finish) while its write is still landing, nor
    /// leave a landed write unrecorded.
    async fn write(&self, key: String, op: WriteOp) -> Result<(), Status> {
        let range = self.route(&key)?;
        let writing = self.node.gate(range).read_owned().await;
        if !self.rangelet.may_write(range) {
            return Err(Status::failed_precondition(format!(
                "range {range} stopped serving writes"
            )));
        }
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = writing;
            let key = key.as_bytes();
            match op {
                WriteOp::Put(value) => node.store().put(key, &value),
                WriteOp::Delete => node.store().delete(key),
            }
            .map_err(|e| Status::internal(e.to_string()))?;
            node.wrote(range, key);
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(format!("the write task failed: {e}")))?
    }

    fn held_span(&self, range: RangeId) -> Result<Span, Status> {
        self.rangelet
            .ranges()
            .into_iter()
            .find(|r| r.meta.id() == range)
            .map(|r| Span::of(&r.meta))
            .ok_or_else(|| Status::not_found(format!("range {range} is not on this node")))
    }
}

/// A client write.
#[derive(Debug)]
enum WriteOp {
    Put(Vec<u8>),
    Delete,
}

fn range_id(id: u64) -> Result<RangeId, Status> {
    RangeId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<pb::DeltaChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let key = request.into_inner().key;
        let range = self.route(&key)?;
        self.node.read(range);
        match self.node.store().get(key.as_bytes()) {
            Ok(Some(value)) => Ok(Response::new(pb::GetResponse { value })),
            Ok(None) => Err(Status::not_found(format!("no such key: {key:?}"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        self.write(request.key, WriteOp::Put(request.value)).await?;
        Ok(Response::new(pb::PutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let key = request.into_inner().key;
        self.write(key, WriteOp::Delete).await?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let request = request.into_inner();
        let range = self.route(&request.start)?;
        self.node.read(range);
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
            pairs: pairs
                .into_iter()
                .map(|(k, v)| pb::Pair {
                    key: text(&k),
                    value: v,
                })
                .collect(),
            next,
        }))
    }

    async fn dump(
        &self,
        request: Request<pb::DumpRequest>,
    ) -> Result<Response<pb::DumpResponse>, Status> {
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
            pairs: pairs
                .into_iter()
                .map(|(k, v)| pb::Pair {
                    key: text(&k),
                    value: v,
                })
                .collect(),
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let request = request.into_inner();
        let source = range_id(request.source_range)?;
        let range_span = self.held_span(source)?;
        let span = Span::from_wire(request.start, request.end);
        if !span.within(&range_span) {
            return Err(Status::invalid_argument(format!(
                "span is not within range {source}"
            )));
        }
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut transfer = 0;
            let chunk_bytes = node.config().chunk_bytes;
            let result = node.store().stream_snapshot(
                &span,
                chunk_bytes,
                || transfer = node.trackers().begin(source, span.clone()),
                |pairs| {
                    let chunk = pb::SnapshotChunk {
                        pairs: pairs
                            .into_iter()
                            .map(|(key, value)| pb::RawPair { key, value })
                            .collect(),
                        ..Default::default()
                    };
                    tx.blocking_send(Ok(chunk)).is_ok()
                },
            );
            let last = match result {
                Ok(checksum) => Ok(pb::SnapshotChunk {
                    pairs: Vec::new(),
                    transfer,
                    last: true,
                    total_pairs: checksum.count(),
                    checksum: checksum.value(),
                }),
                Err(e) => Err(Status::internal(format!("snapshot failed: {e}"))),
            };
            if last.is_err() || tx.blocking_send(last).is_err() {
                // Nobody will ask for this transfer's delta.
                node.trackers().end(transfer);
            }
        });
        let mut response: Response<Self::SnapshotStream> =
            Response::new(Box::pin(ReceiverStream::new(rx)));
        response.metadata_mut().insert(
            super::transfer::INSTANCE_HEADER,
            tonic::metadata::MetadataValue::from(self.node.instance()),
        );
        Ok(response)
    }

    type DeltaStream = DeltaStream;

    async fn delta(
        &self,
        request: Request<pb::DeltaRequest>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        let transfer = request.into_inner().transfer;
        let (source, _span, keys) = self.node.trackers().changes(transfer).ok_or_else(|| {
            Status::not_found(format!(
                "transfer {transfer} is unknown here (the source restarted or dropped the range)"
            ))
        })?;
        let state = self.rangelet.state(source);
        if state != RemoteState::Inactive {
            return Err(Status::failed_precondition(format!(
                "range {source} is {state} here: the delta is final only once it is Inactive"
            )));
        }
        let node = self.node.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut checksum = PairChecksum::default();
            for batch in keys.chunks(1000) {
                let mut changes = Vec::with_capacity(batch.len());
                for key in batch {
                    match node.store().get(key) {
                        Ok(value) => {
                            let deleted = value.is_none();
                            let value = value.unwrap_or_default();
                            checksum.add(key, &value, deleted);
                            changes.push(pb::Change {
                                key: key.clone(),
                                value,
                                deleted,
                            });
                        }
                        Err(e) => {
                            let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                            return;
                        }
                    }
                }
                let chunk = pb::DeltaChunk {
                    changes,
                    ..Default::default()
                };
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            let _ = tx.blocking_send(Ok(pb::DeltaChunk {
                changes: Vec::new(),
                last: true,
                total_changes: checksum.count(),
                checksum: checksum.value(),
            }));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn end_transfer(
        &self,
        request: Request<pb::EndTransferRequest>,
    ) -> Result<Response<pb::EndTransferResponse>, Status> {
        self.node.trackers().end(request.into_inner().transfer);
        Ok(Response::new(pb::EndTransferResponse {}))
    }
}
