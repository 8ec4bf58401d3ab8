//! State transfer between nodes, in two phases so that the window in which nobody
//! serves writes is bounded by what changed, not by the range's size:
//!
//! 1. **Snapshot** (during the destination's `prepare`, while the source still
//!    serves): the source starts tracking writes to the span, takes a RocksDB
//!    snapshot, and streams it in chunks; the destination writes the chunks and
//!    verifies the count and checksum at the end.
//! 2. **Delta** (during the destination's `activate`, once the source is
//!    Inactive, so frozen): the source sends the current value (or a deletion) of
//!    every key written since the snapshot; the destination applies them.
//!
//! Streams are gRPC server streams: HTTP/2 flow control plus a small bounded
//! channel on the source side keep memory bounded on both ends. A source that
//! dies mid-way breaks the stream; the destination's callback then fails, clears
//! what it wrote, and the controller rolls back or retries.
//!
//! A source that goes *silent* (partitioned, stuck) breaks nothing, so every call
//! to a [`Peer`] is bounded: a unary call as a whole, a stream chunk by chunk (an
//! idle timeout: a big range may take long, but never a long silence).
//!
//! A source without Snapshot (a Go reference node) is copied with its `Dump`,
//! which refuses until the source stops serving, so the destination does it in
//! `activate` ([`fetch_dump`]).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pb;
use crate::pb::kv_client::KvClient;
use ranger_proto::RangeId;
use rocksdb::WriteBatch;
use tonic::transport::Channel;

use super::spans::Span;
use super::store::{PairChecksum, Store, StoreError};

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("source {addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("source {addr} has no Snapshot (a reference node?): {status}")]
    NoSnapshot { addr: String, status: tonic::Status },
    #[error(
        "source {addr} is this node itself under another address: refusing to copy from itself (advertise this node as {addr}, or have the controller list it by its own address)"
    )]
    Itself { addr: String },
    #[error("source {addr} was silent for {after:?} during {what}")]
    Silent {
        addr: String,
        what: &'static str,
        after: Duration,
    },
    #[error("source {addr} went away mid-transfer (the stream ended without its last chunk)")]
    Truncated { addr: String },
    #[error("source {addr} sent key {key:?} outside the requested span")]
    OutOfSpan { addr: String, key: String },
    #[error(
        "verification failed from {addr}: got {got_pairs} pairs (checksum {got_sum:x}), source sent {want_pairs} (checksum {want_sum:x})"
    )]
    Mismatch {
        addr: String,
        got_pairs: u64,
        got_sum: u64,
        want_pairs: u64,
        want_sum: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A transfer the source is tracking writes for.
#[derive(Debug)]
struct Tracker {
    source_range: RangeId,
    span: Span,
    changed: BTreeSet<Vec<u8>>,
}

/// The source side's memory of transfers in progress: which keys changed in
/// each transferred span since its snapshot.
#[derive(Debug)]
pub struct Trackers {
    trackers: Mutex<HashMap<u64, Tracker>>,
    next: AtomicU64,
}

impl Default for Trackers {
    fn default() -> Self {
        // Start ids from the clock so that ids from before a restart are not
        // reused: a destination asking for an old transfer gets "unknown".
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Trackers {
            trackers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(seed),
        }
    }
}

impl Trackers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracker>> {
        self.trackers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts tracking writes to `span` of `source_range`; returns the id.
    pub fn begin(&self, source_range: RangeId, span: Span) -> u64 {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.lock().insert(
            id,
            Tracker {
                source_range,
                span,
                changed: BTreeSet::new(),
            },
        );
        id
    }

    /// Notes a write (put or delete) of `key`. Called on every write, so it is
    /// cheap when no transfer runs.
    pub fn record(&self, key: &[u8]) {
        let mut trackers = self.lock();
        for tracker in trackers.values_mut() {
            if tracker.span.contains(key) {
                tracker.changed.insert(key.to_vec());
            }
        }
    }

    /// The keys changed since the snapshot, and the source range and span.
    pub fn changes(&self, transfer: u64) -> Option<(RangeId, Span, Vec<Vec<u8>>)> {
        self.lock().get(&transfer).map(|t| {
            (
                t.source_range,
                t.span.clone(),
                t.changed.iter().cloned().collect(),
            )
        })
    }

    pub fn end(&self, transfer: u64) {
        self.lock().remove(&transfer);
    }

    /// Forgets every transfer out of `range` (dropped, or serving again after a
    /// rolled-back handoff: its trackers no longer describe a frozen source).
    pub fn forget_range(&self, range: RangeId) {
        self.lock().retain(|_, t| t.source_range != range);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A peer node to transfer from: its client, and how long it may stay silent.
#[derive(Debug, Clone)]
pub struct Peer {
    client: KvClient<Channel>,
    addr: String,
    timeout: Duration,
}

impl Peer {
    pub fn new(client: KvClient<Channel>, addr: &str, timeout: Duration) -> Self {
        Peer {
            client,
            addr: addr.to_owned(),
            timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// Waits at most `peer.timeout` for `call`, one answer from the peer.
async fn answer<T>(
    addr: &str,
    timeout: Duration,
    what: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, TransferError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) => Err(TransferError::Rpc {
            addr: addr.to_owned(),
            status,
        }),
        Err(_elapsed) => Err(TransferError::Silent {
            addr: addr.to_owned(),
            what,
            after: timeout,
        }),
    }
}

/// What a snapshot copy brought in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCopied {
    /// The source's transfer id, to ask for the delta.
    pub transfer: u64,
    /// Pairs written.
    pub pairs: u64,
    /// Key and value bytes written.
    pub bytes: u64,
}

/// The response header in which a node names its running instance, so that a
/// destination recognises itself behind an address it does not know as its own.
pub const INSTANCE_HEADER: &str = "ranger-kv-instance";

/// A snapshot stream whose source answered, not yet received.
#[derive(Debug)]
pub struct OpenSnapshot {
    stream: tonic::Streaming<pb::SnapshotChunk>,
}

/// Asks `peer` for a snapshot of `span` of `source_range`. A source without
/// Snapshot answers [`TransferError::NoSnapshot`]; a source that turns out to be
/// this node itself (instance `me`, under another address) answers
/// [`TransferError::Itself`]. Nothing is written here yet.
pub async fn open_snapshot(
    peer: &mut Peer,
    source_range: RangeId,
    span: &Span,
    me: u64,
) -> Result<OpenSnapshot, TransferError> {
    let Peer {
        client,
        addr,
        timeout,
    } = peer;
    let request = pb::SnapshotRequest {
        source_range: source_range.get(),
        start: span.start.clone(),
        end: span.end_for_wire(),
    };
    let response = match answer(addr, *timeout, "snapshot", client.snapshot(request)).await {
        Ok(response) => response,
        Err(TransferError::Rpc { addr, status }) if status.code() == tonic::Code::Unimplemented => {
            return Err(TransferError::NoSnapshot { addr, status });
        }
        Err(e) => return Err(e),
    };
    let instance = response
        .metadata()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if instance == Some(me) {
        return Err(TransferError::Itself { addr: addr.clone() });
    }
    Ok(OpenSnapshot {
        stream: response.into_inner(),
    })
}

/// Receives an opened snapshot into `store`; the copy is durable once this
/// returns.
pub async fn receive_snapshot(
    peer: &Peer,
    open: OpenSnapshot,
    store: &Store,
    span: &Span,
) -> Result<SnapshotCopied, TransferError> {
    let (addr, timeout) = (peer.addr.as_str(), peer.timeout);
    let mut stream = open.stream;
    let mut checksum = PairChecksum::default();
    let mut bytes = 0u64;
    while let Some(chunk) = answer(addr, timeout, "snapshot stream", stream.message()).await? {
        let mut batch = WriteBatch::default();
        for pair in &chunk.pairs {
            bytes += (pair.key.len() + pair.value.len()) as u64;
            if !span.contains(&pair.key) {
                return Err(TransferError::OutOfSpan {
                    addr: addr.to_owned(),
                    key: String::from_utf8_lossy(&pair.key).into_owned(),
                });
            }
            checksum.add(&pair.key, &pair.value, false);
            batch.put(&pair.key, &pair.value);
        }
        store.write_unsynced(batch)?;
        if chunk.last {
            if chunk.total_pairs != checksum.count() || chunk.checksum != checksum.value() {
                return Err(TransferError::Mismatch {
                    addr: addr.to_owned(),
                    got_pairs: checksum.count(),
                    got_sum: checksum.value(),
                    want_pairs: chunk.total_pairs,
                    want_sum: chunk.checksum,
                });
            }
            store.sync_wal()?;
            return Ok(SnapshotCopied {
                transfer: chunk.transfer,
                pairs: checksum.count(),
                bytes,
            });
        }
    }
    Err(TransferError::Truncated {
        addr: addr.to_owned(),
    })
}

/// Fetches and applies what changed since the snapshot of `transfer`; durable
/// once this returns. Idempotent: applying the same delta twice leaves the same
/// values.
pub async fn fetch_delta(
    peer: &mut Peer,
    store: &Store,
    transfer: u64,
) -> Result<u64, TransferError> {
    let Peer {
        client,
        addr,
        timeout,
    } = peer;
    let (addr, timeout) = (addr.as_str(), *timeout);
    let mut stream = answer(
        addr,
        timeout,
        "delta",
        client.delta(pb::DeltaRequest { transfer }),
    )
    .await?
    .into_inner();
    let mut checksum = PairChecksum::default();
    while let Some(chunk) = answer(addr, timeout, "delta stream", stream.message()).await? {
        let mut batch = WriteBatch::default();
        for change in &chunk.changes {
            checksum.add(&change.key, &change.value, change.deleted);
            if change.deleted {
                batch.delete(&change.key);
            } else {
                batch.put(&change.key, &change.value);
            }
        }
        store.write_unsynced(batch)?;
        if chunk.last {
            if chunk.total_changes != checksum.count() || chunk.checksum != checksum.value() {
                return Err(TransferError::Mismatch {
                    addr: addr.to_owned(),
                    got_pairs: checksum.count(),
                    got_sum: checksum.value(),
                    want_pairs: chunk.total_changes,
                    want_sum: chunk.checksum,
                });
            }
            store.sync_wal()?;
            return Ok(checksum.count());
        }
    }
    Err(TransferError::Truncated {
        addr: addr.to_owned(),
    })
}

/// Copies `span` of `source_range` with the reference's `Dump` (all pairs of the
/// source's range, in one message; only once the source is frozen), replacing
/// whatever `store` held under `span`. Durable once this returns; idempotent.
pub async fn fetch_dump(
    peer: &mut Peer,
    store: &Arc<Store>,
    source_range: RangeId,
    span: &Span,
) -> Result<u64, TransferError> {
    let Peer {
        client,
        addr,
        timeout,
    } = peer;
    let (addr, timeout) = (addr.as_str(), *timeout);
    let request = pb::DumpRequest {
        range_ident: source_range.get(),
    };
    let pairs = answer(addr, timeout, "dump", client.dump(request))
        .await?
        .into_inner()
        .pairs;
    let mut batch = WriteBatch::default();
    let mut count = 0;
    // A split child takes only its part of the parent's dump.
    for pair in pairs.iter().filter(|p| span.contains(p.key.as_bytes())) {
        batch.put(pair.key.as_bytes(), &pair.value);
        count += 1;
    }
    // Clearing compacts: disk work, off the runtime.
    let (store, span) = (Arc::clone(store), span.clone());
    tokio::task::spawn_blocking(move || {
        store.clear(&span)?;
        store.write(batch)
    })
    .await
    .map_err(|join| StoreError::Task {
        reason: join.to_string(),
    })??;
    Ok(count)
}

/// Tells the source that the delta of `transfer` is no longer needed.
pub async fn end_transfer(peer: &mut Peer, transfer: u64) -> Result<(), TransferError> {
    let Peer {
        client,
        addr,
        timeout,
    } = peer;
    let request = pb::EndTransferRequest { transfer };
    answer(addr, *timeout, "end transfer", client.end_transfer(request)).await?;
    Ok(())
}
