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
use ranger_node_sdk::CallbackError;
use ranger_proto::{Parent, RangeId, RangeMeta};
use rocksdb::WriteBatch;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::sources::{self, Source, SourceError};
use super::spans::Span;
use super::store::{DumpFrom, PairChecksum, PendingTransfer, Store, StoreError};
use super::{KvNode, failed, lock};

/// HTTP/2 flow control on the channels to peers. hyper's defaults (a 2 MB
/// window per stream, 16 KB frames) let a snapshot stream have two 1 MB
/// chunks in flight, so source and destination took turns waiting for each
/// other: 371-378 MB/s per 100 MB move; with these, 470-518 (`bench_handoff
/// 100 5`, 2026-11-30). A window bounds what a stream buffers, so memory stays
/// bounded: 8 MB per transfer, 16 MB per peer.
const PEER_STREAM_WINDOW: u32 = 8 << 20;
const PEER_CONNECTION_WINDOW: u32 = 16 << 20;
const PEER_MAX_FRAME: u32 = 1 << 20;

/// One completed snapshot copy into this node.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferRecord {
    /// The range being prepared here.
    pub range: RangeId,
    /// Where the data came from.
    pub source_addr: String,
    pub pairs: u64,
    /// Key and value bytes copied.
    pub bytes: u64,
    /// From the request to the verified last chunk.
    pub elapsed: Duration,
    /// Where `elapsed` went on this side (see [`CopyTimes`]).
    pub times: CopyTimes,
}

/// Where a snapshot copy's time went at the destination, to find what limits
/// a transfer's rate: waiting for the source's next chunk (its reading, the
/// network, and decoding the chunk), checking and writing the pairs into table
/// files, and ingesting those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyTimes {
    pub waiting: Duration,
    pub writing: Duration,
    pub ingesting: Duration,
}

impl TransferRecord {
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

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
    #[error("the copy from {addr} was abandoned (its prepare was cancelled) before it landed")]
    Abandoned { addr: String },
    #[error("source {addr} sent key {key:?} outside the requested span")]
    OutOfSpan { addr: String, key: String },
    #[error("source {addr} sent a chunk that does not parse: {error}")]
    Malformed {
        addr: String,
        error: super::packed::UnpackError,
    },
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
    /// The range `transfer` copies, without its keys.
    pub fn source(&self, transfer: u64) -> Option<RangeId> {
        self.lock().get(&transfer).map(|t| t.source_range)
    }

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
    pub times: CopyTimes,
}

/// What a delta or a dump brought in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Pairs written or deleted.
    pub changes: u64,
    /// Key and value bytes received.
    pub bytes: u64,
    /// Where the source's replica log stood at the delta's end, if the source
    /// range is replicated (see [`super::replica`]).
    pub replica: Option<ReplicaTail>,
}

/// A replicated source's log position at the end of a delta.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaTail {
    pub epoch: u64,
    pub seq: u64,
    /// The source (its serving primary) made the destination a member.
    pub joined: bool,
}

/// The metadata entry in which a copy of a replicated range that is not its
/// primary names the primary when it refuses a snapshot: a copy joining the
/// range must copy from the primary, whose write tracking its delta needs.
pub const PRIMARY_HEADER: &str = "ranger-kv-primary";

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
        packed: true,
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

/// Chunks received but not yet written, at most: the stream's flow control
/// holds the source back beyond that, so memory stays bounded.
const CHUNKS_AHEAD: usize = 4;

/// Receives an opened snapshot into `store`; the copy is durable once this
/// returns.
///
/// The chunks are checked and written into table files on a thread of their
/// own while the next ones arrive. Written here, on the runtime, that work
/// (the table files' checksums, a file's final sync, the ingest) held one of
/// the runtime's worker threads for milliseconds at a time, and the node's
/// client requests waited behind it.
pub async fn receive_snapshot(
    peer: &Peer,
    open: OpenSnapshot,
    store: Arc<Store>,
    span: &Span,
) -> Result<SnapshotCopied, TransferError> {
    let (addr, timeout) = (peer.addr.as_str(), peer.timeout);
    let mut stream = open.stream;
    let (chunks, inbox) = mpsc::channel::<pb::SnapshotChunk>(CHUNKS_AHEAD);
    let abandoned = AbandonOnDrop(Arc::new(Mutex::new(false)));
    let writer = {
        let (addr, span, abandoned) = (addr.to_owned(), span.clone(), abandoned.0.clone());
        tokio::task::spawn_blocking(move || write_snapshot(&addr, &store, &span, inbox, &abandoned))
    };
    let mut waiting = Duration::ZERO;
    let received = loop {
        let asked = std::time::Instant::now();
        let chunk = answer(addr, timeout, "snapshot stream", stream.message()).await;
        waiting += asked.elapsed();
        match chunk {
            Ok(Some(chunk)) => {
                let last = chunk.last;
                // A writer that stopped has its error to tell.
                if chunks.send(chunk).await.is_err() || last {
                    break Ok(());
                }
            }
            // The writer finds the stream ended without its last chunk.
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(chunks);
    let written = writer.await.map_err(|e| StoreError::Task {
        reason: format!("the thread writing a snapshot failed: {e}"),
    })?;
    received?;
    let mut copied = written?;
    copied.times.waiting = waiting;
    Ok(copied)
}

/// Marks a receive abandoned when its future is dropped (the rangelet
/// cancels a prepare that a Drop overtook, and then clears the range): from
/// then on its writer ingests nothing. The writer ingests while holding the
/// lock, so once `drop` returns the copy has either landed already (and the
/// clear that follows removes it) or never will: it cannot land after the
/// clear, or after the next prepare of the span has cleared it and begun
/// copying anew (older values would then shadow newer ones). `drop` may wait
/// out an ingest in progress: tens of milliseconds, only on cancellation.
struct AbandonOnDrop(Arc<Mutex<bool>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        *lock(&self.0) = true;
    }
}

/// The writing side of [`receive_snapshot`]: checks each chunk's pairs,
/// writes them into table files, and on the last chunk verifies the totals
/// and ingests the files, unless the receive was `abandoned`. Blocking.
fn write_snapshot(
    addr: &str,
    store: &Store,
    span: &Span,
    mut inbox: mpsc::Receiver<pb::SnapshotChunk>,
    abandoned: &Mutex<bool>,
) -> Result<SnapshotCopied, TransferError> {
    let mut checksum = PairChecksum::default();
    let mut bytes = 0u64;
    // Table files, ingested once the stream is complete and verified (no
    // memtable, no WAL: what a transfer's speed was lost to).
    let mut sink = store.table_sink()?;
    let mut times = CopyTimes::default();
    while let Some(chunk) = inbox.blocking_recv() {
        let began = std::time::Instant::now();
        // A source that packs sends `packed`, one that does not (an older
        // node) `pairs`: each is read, checked and written the same way.
        let mut absorb = |key: &[u8], value: &[u8]| -> Result<(), TransferError> {
            bytes += (key.len() + value.len()) as u64;
            if !span.contains(key) {
                return Err(TransferError::OutOfSpan {
                    addr: addr.to_owned(),
                    key: String::from_utf8_lossy(key).into_owned(),
                });
            }
            checksum.add(key, value, false);
            Ok(sink.put(key, value)?)
        };
        for pair in &chunk.pairs {
            absorb(&pair.key, &pair.value)?;
        }
        for pair in super::packed::unpack(&chunk.packed) {
            let (key, value) = pair.map_err(|error| TransferError::Malformed {
                addr: addr.to_owned(),
                error,
            })?;
            absorb(key, value)?;
        }
        times.writing += began.elapsed();
        if chunk.last {
            verify(addr, &checksum, chunk.total_pairs, chunk.checksum)?;
            let landing = lock(abandoned);
            if *landing {
                return Err(TransferError::Abandoned {
                    addr: addr.to_owned(),
                });
            }
            let ingest = std::time::Instant::now();
            sink.ingest()?;
            times.ingesting = ingest.elapsed();
            drop(landing);
            return Ok(SnapshotCopied {
                transfer: chunk.transfer,
                pairs: checksum.count(),
                bytes,
                times,
            });
        }
    }
    Err(TransferError::Truncated {
        addr: addr.to_owned(),
    })
}

/// Checks what a stream brought against the count and checksum its last chunk
/// announced.
fn verify(
    addr: &str,
    got: &PairChecksum,
    want_pairs: u64,
    want_sum: u64,
) -> Result<(), TransferError> {
    if want_pairs != got.count() || want_sum != got.value() {
        return Err(TransferError::Mismatch {
            addr: addr.to_owned(),
            got_pairs: got.count(),
            got_sum: got.value(),
            want_pairs,
            want_sum,
        });
    }
    Ok(())
}

/// [`verify`], then makes what was written durable: chunks are written
/// unsynced, so a copy is acknowledged only here.
fn settle(
    addr: &str,
    store: &Store,
    got: &PairChecksum,
    want_pairs: u64,
    want_sum: u64,
) -> Result<(), TransferError> {
    verify(addr, got, want_pairs, want_sum)?;
    Ok(store.sync_wal()?)
}

/// Fetches and applies what changed since the snapshot of `transfer`; durable
/// once this returns. Idempotent: applying the same delta twice leaves the same
/// values.
pub async fn fetch_delta(
    peer: &mut Peer,
    store: &Store,
    transfer: u64,
    joiner: &str,
) -> Result<Applied, TransferError> {
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
        client.delta(pb::DeltaRequest {
            transfer,
            joiner: joiner.to_owned(),
        }),
    )
    .await?
    .into_inner();
    let mut checksum = PairChecksum::default();
    let mut bytes = 0u64;
    while let Some(chunk) = answer(addr, timeout, "delta stream", stream.message()).await? {
        let mut batch = WriteBatch::default();
        for change in &chunk.changes {
            checksum.add(&change.key, &change.value, change.deleted);
            bytes += (change.key.len() + change.value.len()) as u64;
            if change.deleted {
                batch.delete(&change.key);
            } else {
                batch.put(&change.key, &change.value);
            }
        }
        store.write_unsynced(batch)?;
        if chunk.last {
            settle(addr, store, &checksum, chunk.total_changes, chunk.checksum)?;
            return Ok(Applied {
                changes: checksum.count(),
                bytes,
                replica: chunk.replicated.then_some(ReplicaTail {
                    epoch: chunk.replica_epoch,
                    seq: chunk.replica_seq,
                    joined: chunk.joined,
                }),
            });
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
) -> Result<Applied, TransferError> {
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
    let mut applied = Applied::default();
    // A split child takes only its part of the parent's dump.
    for pair in pairs.iter().filter(|p| span.contains(p.key.as_bytes())) {
        batch.put(pair.key.as_bytes(), &pair.value);
        applied.changes += 1;
        applied.bytes += (pair.key.len() + pair.value.len()) as u64;
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
    Ok(applied)
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

// The destination side: filling a range being prepared, and completing it at
// activation.

impl KvNode {
    /// The most recent snapshot copies into this node, oldest first.
    pub fn recent_transfers(&self) -> Vec<TransferRecord> {
        self.inner.transfers_in.all()
    }

    /// The most recent `deactivate` and `activate` callbacks here, oldest
    /// first: where a handoff's window went (see [`super::handoffs`]).
    pub fn recent_handoff_callbacks(&self) -> Vec<super::CallbackTimes> {
        self.inner.handoffs.all()
    }

    /// A client to the peer at `addr`, on one cached channel per peer. Every
    /// call through it is bounded (see [`Peer`]); HTTP/2 keepalive
    /// pings find a dead connection even while no call is in flight.
    fn peer(&self, addr: &str) -> Result<Peer, CallbackError> {
        let client = self.peer_client(addr)?;
        Ok(Peer::new(client, addr, self.inner.config.peer_timeout))
    }

    /// The bare client behind [`KvNode::peer`] (replication bounds its calls
    /// itself).
    pub(super) fn peer_client(&self, addr: &str) -> Result<KvClient<Channel>, CallbackError> {
        let timeout = self.inner.config.peer_timeout;
        let mut peers = lock(&self.inner.peers);
        let channel = match peers.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| failed(format!("bad peer address {addr}: {e}")))?
                    .connect_timeout(timeout.min(Duration::from_secs(2)))
                    .http2_keep_alive_interval(timeout)
                    .keep_alive_timeout(timeout)
                    .keep_alive_while_idle(true)
                    .initial_stream_window_size(PEER_STREAM_WINDOW)
                    .initial_connection_window_size(PEER_CONNECTION_WINDOW)
                    .max_frame_size(PEER_MAX_FRAME)
                    .connect_lazy();
                peers.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(KvClient::new(channel)
            .max_decoding_message_size(super::service::MESSAGE_LIMIT)
            .max_encoding_message_size(super::service::MESSAGE_LIMIT))
    }

    /// Where `meta`'s data is now (see [`sources`]).
    fn sources(&self, meta: &RangeMeta, parents: &[Parent]) -> Result<Vec<Source>, SourceError> {
        let mut held = lock(&self.inner.held).clone();
        // The range being prepared is not here yet, whatever a listing says.
        held.remove(&meta.id());
        let here = sources::Here {
            addr: &self.inner.config.self_addr,
            held: &held,
        };
        sources::plan(meta, parents, here)
    }

    /// Fills `meta` from its sources: each remote part is first cleared here
    /// entirely (whatever range this node held there, a stale copy must not
    /// survive under the new range), then copied as a snapshot; a local part is
    /// already in place. Records the deltas to fetch at activation. On failure the
    /// parts it cleared are cleared again, so nothing half-copied remains.
    pub(super) async fn copy_in(
        &self,
        meta: &RangeMeta,
        parents: &[Parent],
    ) -> Result<(), CallbackError> {
        let sources = self.sources(meta, parents).map_err(failed)?;
        let mut pending = Vec::new();
        // The spans this copy cleared and began to fill: only those are cleared
        // again on failure (never a part it did not touch: if the source turned
        // out to be this node itself, that part is what it serves).
        let mut touched = Vec::new();
        let mut result = Ok(());
        for source in &sources {
            match source {
                Source::Local { range, span } => {
                    tracing::info!(range = %meta.id(), source_range = %range, ?span, "part already here");
                }
                Source::Remote { addr, range, span } => {
                    match self
                        .copy_part(meta.id(), addr, *range, span, &mut touched)
                        .await
                    {
                        Ok(transfer) => pending.push(transfer),
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
        }
        if result.is_ok() {
            result = self
                .inner
                .store
                .set_pending(meta.id(), &pending)
                .map_err(failed);
        }
        if result.is_err() {
            self.end_transfers(&pending).await;
            for span in &touched {
                if let Err(clear) = self.clear(span).await {
                    tracing::error!(range = %meta.id(), error = %clear, "could not clear a failed copy");
                }
            }
        }
        result
    }

    /// Copies `span` of `source_range` from `addr` as a snapshot, or, when the
    /// source has no Snapshot (a reference node), notes that it is to be copied
    /// with `Dump` once the source is frozen.
    async fn copy_part(
        &self,
        id: RangeId,
        addr: &str,
        source_range: RangeId,
        span: &Span,
        touched: &mut Vec<Span>,
    ) -> Result<PendingTransfer, CallbackError> {
        let began = std::time::Instant::now();
        let (addr, peer, opened) = self.open_at_primary(addr, source_range, span).await?;
        let addr = addr.as_str();
        // A copy of the range itself from a copy that serves it: the delta
        // joins it to the range's replica log, if there is one.
        let join = source_range == id && self.inner.replicas.is_joining(id);
        let copied = match opened {
            Ok(open) => {
                // Nothing this node held under the span survives the copy. (Only
                // now: the source is known not to be this node itself.)
                touched.push(span.clone());
                match self.clear(span).await {
                    Ok(()) => receive_snapshot(&peer, open, self.inner.store.clone(), span).await,
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        };
        let copied = match copied {
            Ok(copied) => copied,
            Err(TransferError::NoSnapshot { .. }) => {
                // Dump replaces the span at activation; clear it now too.
                touched.push(span.clone());
                self.clear(span).await.map_err(failed)?;
                tracing::info!(range = %id, %addr, %source_range, "source has no Snapshot: copying with Dump at activation, once it is frozen");
                return Ok(PendingTransfer {
                    source_addr: addr.to_owned(),
                    transfer: 0,
                    join: false,
                    dump: Some(DumpFrom {
                        source_range: source_range.get(),
                        span: span.clone(),
                    }),
                });
            }
            Err(e) => {
                self.transfer_ended(0, began, false);
                return Err(failed(e));
            }
        };
        self.transfer_ended(copied.bytes, began, true);
        let record = TransferRecord {
            range: id,
            source_addr: addr.to_owned(),
            pairs: copied.pairs,
            bytes: copied.bytes,
            elapsed: began.elapsed(),
            times: copied.times,
        };
        tracing::info!(
            range = %id,
            %addr,
            %source_range,
            pairs = record.pairs,
            bytes = record.bytes,
            waiting_ms = record.times.waiting.as_millis() as u64,
            writing_ms = record.times.writing.as_millis() as u64,
            ingesting_ms = record.times.ingesting.as_millis() as u64,
            mb_per_s = record.megabytes_per_second(),
            "snapshot copied"
        );
        self.inner.transfers_in.record(record);
        Ok(PendingTransfer {
            source_addr: addr.to_owned(),
            transfer: copied.transfer,
            join,
            dump: None,
        })
    }

    /// Opens a snapshot of `span` of `source_range` at `addr`, or, when that
    /// copy refuses because the range is replicated and it is not the primary,
    /// at the primary it names (once: a second refusal fails the copy).
    async fn open_at_primary(
        &self,
        addr: &str,
        source_range: RangeId,
        span: &Span,
    ) -> Result<(String, Peer, Result<OpenSnapshot, TransferError>), CallbackError> {
        let mut peer = self.peer(addr)?;
        let opened = open_snapshot(&mut peer, source_range, span, self.inner.instance).await;
        let primary = match &opened {
            Err(TransferError::Rpc { status, .. })
                if status.code() == tonic::Code::FailedPrecondition =>
            {
                status
                    .metadata()
                    .get(PRIMARY_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|p| !p.is_empty() && *p != addr)
                    .map(str::to_owned)
            }
            _ => None,
        };
        let Some(primary) = primary else {
            return Ok((addr.to_owned(), peer, opened));
        };
        tracing::info!(%source_range, %addr, %primary, "not the primary of a replicated range; copying from the primary");
        let mut peer = self.peer(&primary)?;
        let opened = open_snapshot(&mut peer, source_range, span, self.inner.instance).await;
        Ok((primary, peer, opened))
    }

    /// Reports one transfer into this node (a snapshot, a delta or a dump)
    /// that ended, to the node SDK's metrics.
    fn transfer_ended(&self, bytes: u64, began: std::time::Instant, ok: bool) {
        self.inner
            .config
            .metrics
            .transfer_finished(bytes, began.elapsed(), ok);
    }

    /// Tells the sources of snapshot copies that their deltas are no longer
    /// needed. Best effort: a source that is gone forgets them anyway.
    async fn end_transfers(&self, pending: &[PendingTransfer]) {
        for p in pending.iter().filter(|p| p.dump.is_none()) {
            if let Ok(mut peer) = self.peer(&p.source_addr)
                && let Err(e) = end_transfer(&mut peer, p.transfer).await
            {
                tracing::debug!(addr = %p.source_addr, error = %e, "could not end transfer (source gone?)");
            }
        }
    }

    /// Completes the copies into `id` that `prepare` began, now that their
    /// sources are frozen: the delta since each snapshot, or the whole part with
    /// `Dump` from a source without Snapshot. Durable once this returns.
    ///
    /// A copy joining a replicated range holds its log's lock from before the
    /// delta until it has attached: the primary forwards its next write the
    /// moment the delta is sent, and that entry must wait for the attach.
    pub(super) async fn fetch_pending(&self, id: RangeId) -> Result<(), CallbackError> {
        let pending = self.inner.store.pending(id).map_err(failed)?;
        let mut joining = match pending.iter().any(|p| p.join) {
            true => {
                let log = self
                    .inner
                    .replicas
                    .log(&self.inner.store, id)
                    .map_err(failed)?;
                let state = log.lock_state().await;
                Some((log, state))
            }
            false => None,
        };
        for p in &pending {
            let mut peer = self.peer(&p.source_addr)?;
            let began = std::time::Instant::now();
            let fetched = match &p.dump {
                None => {
                    fetch_delta(
                        &mut peer,
                        &self.inner.store,
                        p.transfer,
                        &self.inner.config.self_addr,
                    )
                    .await
                }
                Some(from) => {
                    let source_range = RangeId::new(from.source_range).map_err(failed)?;
                    fetch_dump(&mut peer, &self.inner.store, source_range, &from.span).await
                }
            };
            let applied = match fetched {
                Ok(applied) => applied,
                Err(e) => {
                    self.transfer_ended(0, began, false);
                    return Err(failed(e));
                }
            };
            self.transfer_ended(applied.bytes, began, true);
            let what = if p.dump.is_some() {
                "dump copied"
            } else {
                "delta applied"
            };
            tracing::info!(range = %id, addr = %p.source_addr, changes = applied.changes, bytes = applied.bytes, "{what}");
            if p.join
                && let (Some(tail), Some((log, state))) = (applied.replica, joining.as_mut())
            {
                if !tail.joined {
                    // A replicated source that did not make this copy a member
                    // (it no longer serves as primary): its delta is no final
                    // state, and no primary forwards to this copy.
                    return Err(failed(format!(
                        "range {id}: {} no longer serves the replicated range as its primary; the copy must be prepared again",
                        p.source_addr
                    )));
                }
                self.attach_from_delta(log, state, id, &p.source_addr, tail)
                    .map_err(failed)?;
            }
        }
        self.end_transfers(&pending).await;
        self.inner.store.set_pending(id, &[]).map_err(failed)?;
        self.inner.replicas.set_joining(id, false);
        Ok(())
    }

    /// Gives up the copies into `id` that `prepare` began (the range is being
    /// dropped): their sources may stop tracking writes for them.
    pub(super) async fn abandon_pending(&self, id: RangeId) -> Result<(), CallbackError> {
        let pending = self.inner.store.pending(id).map_err(failed)?;
        self.end_transfers(&pending).await;
        self.inner.store.set_pending(id, &[]).map_err(failed)
    }
}

// The source side: streaming what destinations ask for.

/// A stream of transfer chunks, fed from a blocking task.
pub(super) type ChunkStream<T> = ReceiverStream<Result<T, tonic::Status>>;

impl KvNode {
    /// Streams a snapshot of `span` of `source`, tracking writes to the span
    /// from the moment the snapshot is taken, so that the delta can follow. The
    /// last chunk names the transfer and carries the count and checksum. A
    /// transfer whose last chunk never reaches the destination is ended here:
    /// nobody will ask for its delta. Chunks are `packed` when the destination
    /// asked for them so, else a message per pair (an older destination).
    pub(super) fn stream_snapshot(
        &self,
        source: RangeId,
        span: Span,
        packed: bool,
    ) -> ChunkStream<pb::SnapshotChunk> {
        let node = self.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut transfer = 0;
            let chunk_bytes = node.config().chunk_bytes;
            // Where the source's time goes: reading (and packing) versus
            // waiting for the destination to take a chunk.
            let began = std::time::Instant::now();
            let mut send_wait = Duration::ZERO;
            let result = node.store().stream_snapshot(
                &span,
                chunk_bytes,
                || transfer = node.trackers().begin(source, span.clone()),
                |buffer| {
                    let chunk = if packed {
                        pb::SnapshotChunk {
                            packed: buffer.into(),
                            ..Default::default()
                        }
                    } else {
                        pb::SnapshotChunk {
                            // The store packed them itself: they parse.
                            pairs: super::packed::unpack(&buffer)
                                .map_while(Result::ok)
                                .map(|(key, value)| pb::RawPair {
                                    key: key.to_vec(),
                                    value: value.to_vec(),
                                })
                                .collect(),
                            ..Default::default()
                        }
                    };
                    let sent = std::time::Instant::now();
                    let ok = tx.blocking_send(Ok(chunk)).is_ok();
                    send_wait += sent.elapsed();
                    ok
                },
            );
            tracing::info!(
                source_range = %source,
                elapsed_ms = began.elapsed().as_millis() as u64,
                send_wait_ms = send_wait.as_millis() as u64,
                "snapshot streamed"
            );
            let last = match result {
                Ok(checksum) => Ok(pb::SnapshotChunk {
                    transfer,
                    last: true,
                    total_pairs: checksum.count(),
                    checksum: checksum.value(),
                    ..Default::default()
                }),
                Err(e) => Err(tonic::Status::internal(format!("snapshot failed: {e}"))),
            };
            if last.is_err() || tx.blocking_send(last).is_err() {
                node.trackers().end(transfer);
            }
        });
        ReceiverStream::new(rx)
    }

    /// Streams the current value (or deletion) of each of `keys`, the keys a
    /// transfer saw written since its snapshot, with the count and checksum last
    /// (and, for a replicated range, where its log stood: `tail`). `on_end` runs
    /// once the stream is over, told whether its last chunk was sent.
    pub(super) fn stream_delta(
        &self,
        keys: Vec<Vec<u8>>,
        tail: Option<ReplicaTail>,
        on_end: DeltaEnd,
    ) -> ChunkStream<pb::DeltaChunk> {
        let node = self.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let sent = send_delta(&node, &keys, tail, &tx);
            on_end(sent);
        });
        ReceiverStream::new(rx)
    }
}

/// What runs when a delta stream is over, told whether its last chunk went out
/// (a join's primary makes the destination a member then, and lets its writes
/// go on).
pub(super) type DeltaEnd = Box<dyn FnOnce(bool) + Send>;

/// Sends the delta of `keys` on `tx`; true once its last chunk is sent.
fn send_delta(
    node: &KvNode,
    keys: &[Vec<u8>],
    tail: Option<ReplicaTail>,
    tx: &mpsc::Sender<Result<pb::DeltaChunk, tonic::Status>>,
) -> bool {
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
                    let _ = tx.blocking_send(Err(tonic::Status::internal(e.to_string())));
                    return false;
                }
            }
        }
        let chunk = pb::DeltaChunk {
            changes,
            ..Default::default()
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return false;
        }
    }
    let replicated = tail.is_some();
    let tail = tail.unwrap_or_default();
    tx.blocking_send(Ok(pb::DeltaChunk {
        changes: Vec::new(),
        last: true,
        total_changes: checksum.count(),
        checksum: checksum.value(),
        replicated,
        replica_epoch: tail.epoch,
        replica_seq: tail.seq,
        joined: tail.joined,
    }))
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole one-pair snapshot stream, as a source sends it, in a channel.
    fn one_pair_stream() -> mpsc::Receiver<pb::SnapshotChunk> {
        let mut checksum = PairChecksum::default();
        checksum.add(b"k1", b"v1", false);
        let (chunks, inbox) = mpsc::channel(2);
        let sent = chunks.try_send(pb::SnapshotChunk {
            pairs: vec![pb::RawPair {
                key: b"k1".to_vec(),
                value: b"v1".to_vec(),
            }],
            transfer: 7,
            last: true,
            total_pairs: checksum.count(),
            checksum: checksum.value(),
            ..Default::default()
        });
        assert!(sent.is_ok());
        inbox
    }

    #[test]
    fn a_complete_snapshot_lands() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let span = Span::new(b"k".to_vec(), Some(b"l".to_vec()));
        let copied = write_snapshot("peer", &store, &span, one_pair_stream(), &Mutex::new(false))
            .expect("copied");
        assert_eq!((copied.transfer, copied.pairs), (7, 1));
        assert_eq!(store.get(b"k1").expect("get"), Some(b"v1".to_vec()));
    }

    #[test]
    fn an_abandoned_snapshot_never_lands_even_when_complete() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let span = Span::new(b"k".to_vec(), Some(b"l".to_vec()));
        // The receive's future is dropped (its prepare cancelled) before its
        // writer reaches the ingest.
        let guard = AbandonOnDrop(Arc::new(Mutex::new(false)));
        let abandoned = guard.0.clone();
        drop(guard);
        let result = write_snapshot("peer", &store, &span, one_pair_stream(), &abandoned);
        assert!(
            matches!(result, Err(TransferError::Abandoned { .. })),
            "{result:?}"
        );
        assert_eq!(store.get(b"k1").expect("get"), None, "it landed");
    }
}
