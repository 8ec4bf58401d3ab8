//! A KV node: one RocksDB, sharded by Ranger.
//!
//! [`KvNode`] implements the node SDK's [`Node`] callbacks:
//! - `prepare` copies the range's data from where it is now (a move: the range's
//!   current placement; a split or join: the parents' placements) as a snapshot
//!   stream, while the source keeps serving;
//! - `activate` fetches the delta since the snapshot (the source is frozen now)
//!   and starts serving;
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
pub mod spans;
pub mod store;
pub mod transfer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_node_sdk::{CallbackError, Node, StateStore};
use ranger_proto::pb::kv::kv_client::KvClient;
use ranger_proto::{LoadInfo, Parent, PlacementState, RangeId, RangeMeta};
use tokio::sync::RwLock;
use tonic::transport::{Channel, Endpoint};

use load::LoadTracker;
use spans::Span;
use store::{PendingTransfer, RangeStates, Store, StoreError};
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
    /// How long a peer may stay silent during a transfer call.
    pub peer_timeout: Duration,
}

impl KvNodeConfig {
    pub fn new(self_addr: impl Into<String>) -> Self {
        KvNodeConfig {
            self_addr: self_addr.into(),
            chunk_bytes: 1 << 20,
            measure_cap: 200_000,
            load_cache: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(10),
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
            }),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn trackers(&self) -> &Trackers {
        &self.inner.trackers
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

    /// Deletes the keys of `span` that no other range here covers.
    fn clear_unshared(&self, range: RangeId, span: &Span) -> Result<(), StoreError> {
        for part in span.subtract(&self.other_spans(range)) {
            self.inner.store.clear(&part)?;
        }
        Ok(())
    }

    fn peer(&self, addr: &str) -> Result<KvClient<Channel>, CallbackError> {
        let mut peers = lock(&self.inner.peers);
        if let Some(channel) = peers.get(addr) {
            return Ok(KvClient::new(channel.clone()));
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| failed(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        peers.insert(addr.to_owned(), channel.clone());
        Ok(KvClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// Where `meta`'s data is now: (source address, the source's range, the span
    /// to copy). Empty for a brand-new range.
    fn sources(&self, meta: &RangeMeta, parents: &[Parent]) -> Vec<(String, RangeId, Span)> {
        let me = parents.iter().find(|p| p.meta.id() == meta.id());
        let holder = |parent: &Parent| -> Option<String> {
            let usable = |state: PlacementState| {
                parent
                    .placements
                    .iter()
                    .find(|p| p.state == state && p.node_addr != self.inner.config.self_addr)
                    .map(|p| p.node_addr.clone())
            };
            // Prefer a serving copy; a frozen (Inactive) one is just as complete.
            usable(PlacementState::Active).or_else(|| usable(PlacementState::Inactive))
        };
        let here = |parent: &Parent| {
            parent.placements.iter().any(|p| {
                p.node_addr == self.inner.config.self_addr
                    && matches!(p.state, PlacementState::Active | PlacementState::Inactive)
            })
        };
        // A move: the range itself is served elsewhere.
        if let Some(me) = me
            && let Some(addr) = holder(me)
        {
            return vec![(addr, meta.id(), Span::of(meta))];
        }
        // A split or join: copy each overlapping part from a parent.
        let direct: Vec<RangeId> = me.map(|m| m.parents.clone()).unwrap_or_default();
        let mut sources = Vec::new();
        for parent in parents.iter().filter(|p| direct.contains(&p.meta.id())) {
            let Some(span) = Span::of(&parent.meta).intersect(&Span::of(meta)) else {
                continue;
            };
            if here(parent) {
                continue; // Keys are stored as they are: nothing to copy.
            }
            if let Some(addr) = holder(parent) {
                sources.push((addr, parent.meta.id(), span));
            }
        }
        sources
    }

    async fn copy_in(
        &self,
        meta: &RangeMeta,
        parents: &[Parent],
    ) -> Result<Vec<PendingTransfer>, CallbackError> {
        let mut pending = Vec::new();
        for (addr, source_range, span) in self.sources(meta, parents) {
            let mut client = self.peer(&addr)?;
            // Stale keys from an earlier copy must not survive.
            self.clear_unshared(meta.id(), &span).map_err(failed)?;
            let began = std::time::Instant::now();
            let copied = transfer::fetch_snapshot(
                &mut client,
                &addr,
                &self.inner.store,
                source_range,
                &span,
            )
            .await
            .map_err(failed)?;
            let record = TransferRecord {
                range: meta.id(),
                source_addr: addr.clone(),
                pairs: copied.pairs,
                bytes: copied.bytes,
                elapsed: began.elapsed(),
            };
            tracing::info!(
                range = %meta.id(),
                %addr,
                %source_range,
                pairs = record.pairs,
                bytes = record.bytes,
                mb_per_s = record.megabytes_per_second(),
                "snapshot copied"
            );
            self.inner.transfers_in.record(record);
            pending.push(PendingTransfer {
                source_addr: addr,
                transfer: copied.transfer,
            });
        }
        Ok(pending)
    }

    async fn end_transfers(&self, pending: &[PendingTransfer]) {
        for p in pending {
            if let Ok(mut client) = self.peer(&p.source_addr) {
                let request = ranger_proto::pb::kv::EndTransferRequest {
                    transfer: p.transfer,
                };
                if let Err(e) = client.end_transfer(request).await {
                    tracing::debug!(addr = %p.source_addr, error = %e, "could not end transfer (source gone?)");
                }
            }
        }
    }
}

impl Node for KvNode {
    async fn prepare(&self, meta: RangeMeta, parents: Vec<Parent>) -> Result<(), CallbackError> {
        let id = meta.id();
        lock(&self.inner.held).insert(id, meta.clone());
        match self.copy_in(&meta, &parents).await {
            Ok(pending) => {
                self.inner.store.set_pending(id, &pending).map_err(failed)?;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(range = %id, error = %e, "prepare failed; clearing what was copied");
                lock(&self.inner.held).remove(&id);
                if let Err(clear) = self.clear_unshared(id, &Span::of(&meta)) {
                    tracing::error!(range = %id, error = %clear, "could not clear a failed copy");
                }
                Err(e)
            }
        }
    }

    async fn activate(&self, id: RangeId) -> Result<(), CallbackError> {
        let pending = self.inner.store.pending(id).map_err(failed)?;
        for p in &pending {
            let mut client = self.peer(&p.source_addr)?;
            let changes =
                transfer::fetch_delta(&mut client, &p.source_addr, &self.inner.store, p.transfer)
                    .await
                    .map_err(|e: TransferError| failed(e))?;
            tracing::info!(range = %id, addr = %p.source_addr, changes, "delta applied");
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
            let store = Arc::clone(&self.inner.store);
            let parts = Span::of(&meta).subtract(&self.other_spans(id));
            // Deleting and compacting a large range is disk work: off the runtime.
            tokio::task::spawn_blocking(move || {
                parts.iter().try_for_each(|part| store.clear(part))
            })
            .await
            .map_err(failed)?
            .map_err(failed)?;
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
