//! A KV node: one RocksDB, sharded by Ranger.
//!
//! [`KvNode`] implements the node SDK's [`Node`] callbacks:
//! - `prepare` copies the range's data from where it is now (a move: the range's
//!   current placement; a split or join: the overlapping listed ranges'
//!   placements; see [`sources`]) as a snapshot stream, while the source keeps
//!   serving. It first deletes whatever this node held under each copied span, so
//!   that a stale copy (one the controller does not list) never leaks into the
//!   range, and it fails rather than succeed with a part it could not fill;
//! - `activate` fetches the delta since the snapshot (the source is frozen now),
//!   or the whole part with the reference's `Dump` from a source that has no
//!   Snapshot, and starts serving;
//! - `deactivate` waits for in-flight writes to finish, so the range is truly
//!   frozen when the controller activates the destination;
//! - `drop` deletes the range's keys (leaving those of other ranges on this node)
//!   and frees the space;
//! - `load_info` reports keys, bytes, request rates and a median split key.
//!
//! Keys are stored as they are, so a split or join whose parent and child share a
//! node copies nothing. [`service::KvService`] serves `kv.KV`.

mod load;
pub mod server;
pub mod service;
pub mod sources;
pub mod spans;
pub mod store;
pub mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pb::kv_client::KvClient;
use ranger_node_sdk::{CallbackError, Node, StateStore};
use ranger_proto::{LoadInfo, Parent, RangeId, RangeMeta};
use tokio::sync::RwLock;
use tonic::transport::{Channel, Endpoint};

use load::LoadTracker;
use sources::{Source, SourceError};
use spans::Span;
use store::{DumpFrom, PendingTransfer, RangeStates, Store, StoreError};
use transfer::{Trackers, TransferError};

/// Tunables of a KV node.
#[derive(Debug, Clone)]
pub struct KvNodeConfig {
    /// This node's address as other nodes and the controller see it: a parent
    /// placement at this address means the data is already here.
    pub self_addr: String,
    /// Target size of one transfer chunk.
    pub chunk_bytes: usize,
    /// At most this many keys are walked to measure a range for `load_info`.
    pub measure_cap: usize,
    /// How long a range's measured load is reused (probes come every second).
    pub load_cache: Duration,
    /// How long a peer may stay silent: a unary call as a whole, each chunk of
    /// a transfer stream (an idle timeout, so a big range still moves), the
    /// connection attempt, and the answer to an HTTP/2 keepalive ping. A source
    /// that stops answering then fails the callback instead of hanging it.
    pub peer_timeout: Duration,
    /// Fault injection for drills and tests: `activate` waits this long before
    /// it starts, so an activation is still running when the controller's
    /// operation deadline passes (SCENARIOS.md #37). Zero in production.
    pub activate_delay: Duration,
    /// How much load this node can carry relative to the others (1.0: like a
    /// default node); the controller's balancer divides its load by it.
    pub capacity: f64,
}

impl KvNodeConfig {
    pub fn new(self_addr: impl Into<String>) -> Self {
        KvNodeConfig {
            self_addr: self_addr.into(),
            chunk_bytes: 1 << 20,
            measure_cap: 200_000,
            load_cache: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(10),
            activate_delay: Duration::ZERO,
            capacity: 1.0,
        }
    }
}

/// The storage system behind one KV node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KvNode {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    config: KvNodeConfig,
    /// The ranges this node holds (any state), to keep their keys when clearing
    /// or filling another range's span.
    held: Mutex<BTreeMap<RangeId, RangeMeta>>,
    /// Transfers out of this node, tracking writes since their snapshots.
    trackers: Trackers,
    /// Per range: writes hold it shared, `deactivate` takes it exclusively, so a
    /// range is frozen once `deactivate` returns.
    gates: Mutex<HashMap<RangeId, Arc<RwLock<()>>>>,
    loads: LoadTracker,
    /// One channel per peer node, for transfers.
    peers: Mutex<HashMap<String, Channel>>,
    /// The last snapshot copies into this node, for operators and benchmarks.
    transfers_in: TransferLog,
    /// This running node, as its Snapshot answers name it: a destination that
    /// reaches itself under an address it does not know as its own must notice,
    /// or it would clear the very keys it is about to copy.
    instance: u64,
}

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
}

impl TransferRecord {
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The last [`TransferLog::KEEP`] transfer records, newest last.
#[derive(Debug, Default)]
struct TransferLog(Mutex<std::collections::VecDeque<TransferRecord>>);

impl TransferLog {
    const KEEP: usize = 32;

    fn record(&self, record: TransferRecord) {
        let mut log = lock(&self.0);
        if log.len() == Self::KEEP {
            log.pop_front();
        }
        log.push_back(record);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn failed(e: impl std::fmt::Display) -> CallbackError {
    CallbackError::Refused(e.to_string())
}

impl KvNode {
    /// A node over `store`, knowing the ranges its state store kept.
    pub fn open(store: Arc<Store>, config: KvNodeConfig) -> Result<KvNode, StoreError> {
        let held = RangeStates(Arc::clone(&store))
            .load()
            .map_err(|e| StoreError::Corrupt {
                key: "range/*".into(),
                reason: e.to_string(),
            })?
            .into_iter()
            .map(|r| (r.meta.id(), r.meta))
            .collect();
        Ok(KvNode {
            inner: Arc::new(Inner {
                store,
                config,
                held: Mutex::new(held),
                trackers: Trackers::default(),
                gates: Mutex::new(HashMap::new()),
                loads: LoadTracker::default(),
                peers: Mutex::new(HashMap::new()),
                transfers_in: TransferLog::default(),
                instance: rand::random(),
            }),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn trackers(&self) -> &Trackers {
        &self.inner.trackers
    }

    /// This running node's instance id (see `Inner::instance`).
    pub fn instance(&self) -> u64 {
        self.inner.instance
    }

    pub fn config(&self) -> &KvNodeConfig {
        &self.inner.config
    }

    /// The most recent snapshot copies into this node, oldest first.
    pub fn recent_transfers(&self) -> Vec<TransferRecord> {
        lock(&self.inner.transfers_in.0).iter().cloned().collect()
    }

    /// The range's write gate (see `Inner::gates`).
    pub fn gate(&self, range: RangeId) -> Arc<RwLock<()>> {
        Arc::clone(lock(&self.inner.gates).entry(range).or_default())
    }

    /// Notes a write of `key` in `range`: transfers track it, load counts it.
    pub fn wrote(&self, range: RangeId, key: &[u8]) {
        self.inner.trackers.record(key);
        self.inner.loads.wrote(range);
    }

    pub fn read(&self, range: RangeId) {
        self.inner.loads.read(range);
    }

    /// The spans of every other range held here.
    fn other_spans(&self, except: RangeId) -> Vec<Span> {
        lock(&self.inner.held)
            .iter()
            .filter(|(id, _)| **id != except)
            .map(|(_, meta)| Span::of(meta))
            .collect()
    }

    /// Deletes every key of `span`, off the runtime (it compacts: disk work).
    async fn clear(&self, span: &Span) -> Result<(), StoreError> {
        let store = Arc::clone(&self.inner.store);
        let span = span.clone();
        tokio::task::spawn_blocking(move || store.clear(&span))
            .await
            .unwrap_or_else(|join| {
                Err(StoreError::Task {
                    reason: join.to_string(),
                })
            })
    }

    /// A client to the peer at `addr`, on one cached channel per peer. Every
    /// call through it is bounded (see [`transfer::Peer`]); HTTP/2 keepalive
    /// pings find a dead connection even while no call is in flight.
    fn peer(&self, addr: &str) -> Result<transfer::Peer, CallbackError> {
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
                    .connect_lazy();
                peers.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        let client = KvClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        Ok(transfer::Peer::new(client, addr, timeout))
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
    async fn copy_in(&self, meta: &RangeMeta, parents: &[Parent]) -> Result<(), CallbackError> {
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
        let mut peer = self.peer(addr)?;
        let began = std::time::Instant::now();
        let opened =
            transfer::open_snapshot(&mut peer, source_range, span, self.inner.instance).await;
        let copied = match opened {
            Ok(open) => {
                // Nothing this node held under the span survives the copy. (Only
                // now: the source is known not to be this node itself.)
                touched.push(span.clone());
                self.clear(span).await.map_err(failed)?;
                transfer::receive_snapshot(&peer, open, &self.inner.store, span).await
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
                    dump: Some(DumpFrom {
                        source_range: source_range.get(),
                        span: span.clone(),
                    }),
                });
            }
            Err(e) => return Err(failed(e)),
        };
        let record = TransferRecord {
            range: id,
            source_addr: addr.to_owned(),
            pairs: copied.pairs,
            bytes: copied.bytes,
            elapsed: began.elapsed(),
        };
        tracing::info!(
            range = %id,
            %addr,
            %source_range,
            pairs = record.pairs,
            bytes = record.bytes,
            mb_per_s = record.megabytes_per_second(),
            "snapshot copied"
        );
        self.inner.transfers_in.record(record);
        Ok(PendingTransfer {
            source_addr: addr.to_owned(),
            transfer: copied.transfer,
            dump: None,
        })
    }

    /// Tells the sources of snapshot copies that their deltas are no longer
    /// needed. Best effort: a source that is gone forgets them anyway.
    async fn end_transfers(&self, pending: &[PendingTransfer]) {
        for p in pending.iter().filter(|p| p.dump.is_none()) {
            if let Ok(mut peer) = self.peer(&p.source_addr)
                && let Err(e) = transfer::end_transfer(&mut peer, p.transfer).await
            {
                tracing::debug!(addr = %p.source_addr, error = %e, "could not end transfer (source gone?)");
            }
        }
    }
}

impl Node for KvNode {
    async fn prepare(&self, meta: RangeMeta, parents: Vec<Parent>) -> Result<(), CallbackError> {
        let id = meta.id();
        lock(&self.inner.held).insert(id, meta.clone());
        match self.copy_in(&meta, &parents).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(range = %id, error = %e, "prepare failed; what was copied is cleared");
                lock(&self.inner.held).remove(&id);
                Err(e)
            }
        }
    }

    async fn activate(&self, id: RangeId) -> Result<(), CallbackError> {
        if !self.inner.config.activate_delay.is_zero() {
            tokio::time::sleep(self.inner.config.activate_delay).await;
        }
        let pending = self.inner.store.pending(id).map_err(failed)?;
        for p in &pending {
            let mut peer = self.peer(&p.source_addr)?;
            match &p.dump {
                None => {
                    let changes = transfer::fetch_delta(&mut peer, &self.inner.store, p.transfer)
                        .await
                        .map_err(failed)?;
                    tracing::info!(range = %id, addr = %p.source_addr, changes, "delta applied");
                }
                Some(from) => {
                    let source_range = RangeId::new(from.source_range).map_err(failed)?;
                    let pairs = transfer::fetch_dump(
                        &mut peer,
                        &self.inner.store,
                        source_range,
                        &from.span,
                    )
                    .await
                    .map_err(failed)?;
                    tracing::info!(range = %id, addr = %p.source_addr, %source_range, pairs, "dump copied");
                }
            }
        }
        self.end_transfers(&pending).await;
        self.inner.store.set_pending(id, &[]).map_err(failed)?;
        // Serving again: any transfer out of this range is void.
        self.inner.trackers.forget_range(id);
        Ok(())
    }

    async fn deactivate(&self, id: RangeId) -> Result<(), CallbackError> {
        // The rangelet already refuses new writes (the range is Deactivating);
        // wait for the ones in flight.
        let gate = self.gate(id);
        let _frozen = gate.write().await;
        Ok(())
    }

    async fn drop(&self, id: RangeId) -> Result<(), CallbackError> {
        let meta = lock(&self.inner.held).get(&id).cloned();
        let pending = self.inner.store.pending(id).map_err(failed)?;
        self.end_transfers(&pending).await;
        self.inner.store.set_pending(id, &[]).map_err(failed)?;
        if let Some(meta) = meta {
            // Only this range's keys: another range here may share the span.
            for part in Span::of(&meta).subtract(&self.other_spans(id)) {
                self.clear(&part).await.map_err(failed)?;
            }
        }
        lock(&self.inner.held).remove(&id);
        self.inner.trackers.forget_range(id);
        lock(&self.inner.gates).remove(&id);
        self.inner.loads.forget(id);
        Ok(())
    }

    async fn load_info(&self, id: RangeId) -> Result<LoadInfo, CallbackError> {
        let meta = lock(&self.inner.held)
            .get(&id)
            .cloned()
            .ok_or(CallbackError::UnknownRange(id))?;
        let node = self.clone();
        self.inner
            .loads
            .load_info(&meta, self.inner.config.load_cache, move |span| {
                node.inner
                    .store
                    .measure(span, node.inner.config.measure_cap)
            })
            .await
            .map_err(failed)
    }
}
