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
//! - `load_info` reports keys and bytes (RocksDB's estimates), request rates
//!   over a sliding window, and two split keys: by size (a median key) and by
//!   load (the median of recently accessed keys), see [`load`].
//!
//! At R3 the copies of a range replicate its writes from the one the controller
//! names primary (see [`replica`]).
//!
//! Keys are stored as they are, so a split or join whose parent and child share a
//! node copies nothing. [`service::KvService`] serves `kv.KV`; what a client read
//! or write checks is in [`access`], both sides of a transfer in [`transfer`].

pub mod access;
pub mod ack_log;
pub mod handoffs;
pub mod load;
pub mod metrics;
pub mod packed;
mod recent;
pub mod reclaim;
pub mod replica;
pub mod server;
pub mod service;
pub mod sources;
pub mod spans;
pub mod store;
pub mod transfer;
pub mod writeback;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ranger_node_sdk::{CallbackError, Node, NodeMetrics, StateStore};
use ranger_proto::{LoadInfo, Parent, PlacementState, RangeId, RangeMeta, ReplicaGroup};
use tokio::sync::RwLock;
use tonic::transport::Channel;

use load::RangeLoads;
use metrics::KvNodeMetrics;
use ranger_node_sdk::load::{Clock, LoadMeterConfig, RangeLoadMeter, TokioClock};
use recent::Recent;
use spans::Span;
use store::{RangeStates, Store, StoreError};
use transfer::Trackers;

pub use handoffs::{CallbackTimes, HandoffStep};
pub use transfer::{CopyTimes, TransferRecord};

/// Tunables of a KV node.
#[derive(Debug, Clone)]
pub struct KvNodeConfig {
    /// This node's address as other nodes and the controller see it: a parent
    /// placement at this address means the data is already here.
    pub self_addr: String,
    /// Target size of one transfer chunk.
    pub chunk_bytes: usize,
    /// At most this many keys are walked to find a range's size-based split
    /// key for `load_info` (sizes are RocksDB's estimates, see
    /// [`store::Store::size`]).
    pub split_walk_cap: usize,
    /// How long a range's size estimate is reused (probes come every second;
    /// request rates are always fresh).
    pub load_cache: Duration,
    /// The request meter's window and sampling (see
    /// [`ranger_node_sdk::load`]).
    pub load_meter: LoadMeterConfig,
    /// The meter's clock: tokio's, or a test's manual one.
    pub load_clock: Arc<dyn Clock>,
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
    /// For fault drills: log every acknowledged client write here (see
    /// [`ack_log`]). None in production.
    pub ack_log: Option<std::path::PathBuf>,
    /// The node SDK's metrics: the rangelet records its callbacks into them,
    /// the node its transfers (see [`ranger_node_sdk::metrics`]).
    pub metrics: NodeMetrics,
}

impl KvNodeConfig {
    pub fn new(self_addr: impl Into<String>) -> Self {
        KvNodeConfig {
            self_addr: self_addr.into(),
            chunk_bytes: 1 << 20,
            split_walk_cap: 100_000,
            load_cache: Duration::from_secs(5),
            load_meter: LoadMeterConfig::default(),
            load_clock: Arc::new(TokioClock),
            peer_timeout: Duration::from_secs(10),
            activate_delay: Duration::ZERO,
            capacity: 1.0,
            ack_log: None,
            metrics: NodeMetrics::new(),
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
    /// Request rates, load split keys and cached sizes per range.
    loads: RangeLoads,
    /// One channel per peer node, for transfers.
    peers: Mutex<HashMap<String, Channel>>,
    /// The last snapshot copies into this node, for operators and benchmarks.
    transfers_in: Recent<TransferRecord>,
    /// When the last `deactivate` and `activate` callbacks ran (benchmarks).
    handoffs: Recent<CallbackTimes>,
    /// This running node, as its Snapshot answers name it: a destination that
    /// reaches itself under an address it does not know as its own must notice,
    /// or it would clear the very keys it is about to copy.
    instance: u64,
    /// Every acknowledged write, when a fault drill asked for it.
    acks: Option<ack_log::AckLog>,
    /// Requests and store size (the SDK's metrics are in `config.metrics`).
    metrics: KvNodeMetrics,
    /// Write replication of replicated ranges (R3; see [`replica`]).
    replicas: replica::Replicas,
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
    pub fn open(store: Arc<Store>, config: KvNodeConfig) -> Result<KvNode, server::ServeError> {
        let meter =
            RangeLoadMeter::with_clock(config.load_meter.clone(), Arc::clone(&config.load_clock))?;
        let held = RangeStates(Arc::clone(&store))
            .load()
            .map_err(|e| StoreError::Corrupt {
                key: "range/*".into(),
                reason: e.to_string(),
            })?
            .into_iter()
            .map(|r| (r.meta.id(), r.meta))
            .collect();
        let acks = match &config.ack_log {
            Some(path) => Some(ack_log::AckLog::create(path).map_err(|source| {
                server::ServeError::AckLog {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        Ok(KvNode {
            inner: Arc::new(Inner {
                store,
                config,
                held: Mutex::new(held),
                trackers: Trackers::default(),
                gates: Mutex::new(HashMap::new()),
                loads: RangeLoads::new(meter),
                peers: Mutex::new(HashMap::new()),
                transfers_in: Recent::new(32),
                handoffs: Recent::new(64),
                instance: rand::random(),
                acks,
                metrics: KvNodeMetrics::default(),
                replicas: replica::Replicas::default(),
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

    /// The node's own metrics (requests, store size).
    pub fn metrics(&self) -> &KvNodeMetrics {
        &self.inner.metrics
    }

    pub fn config(&self) -> &KvNodeConfig {
        &self.inner.config
    }

    /// The range's write gate (see `Inner::gates`).
    pub fn gate(&self, range: RangeId) -> Arc<RwLock<()>> {
        Arc::clone(lock(&self.inner.gates).entry(range).or_default())
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
}

impl Node for KvNode {
    async fn prepare(&self, meta: RangeMeta, parents: Vec<Parent>) -> Result<(), CallbackError> {
        let id = meta.id();
        lock(&self.inner.held).insert(id, meta.clone());
        let joining = copies_a_serving_range(&meta, &parents, &self.inner.config.self_addr);
        self.inner.replicas.set_joining(id, joining);
        self.inner
            .replicas
            .detach(&self.inner.store, id)
            .await
            .map_err(failed)?;
        match self.copy_in(&meta, &parents).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(range = %id, error = %e, "prepare failed; what was copied is cleared");
                lock(&self.inner.held).remove(&id);
                self.inner.replicas.set_joining(id, false);
                Err(e)
            }
        }
    }

    async fn activate(&self, id: RangeId) -> Result<(), CallbackError> {
        let started = Instant::now();
        if !self.inner.config.activate_delay.is_zero() {
            tokio::time::sleep(self.inner.config.activate_delay).await;
        }
        self.fetch_pending(id).await?;
        let fetched = Instant::now();
        // Serving again: any transfer out of this range is void.
        self.inner.trackers.forget_range(id);
        // All its data is here now: a size measured during the copy is stale.
        self.inner.loads.forget_size(id);
        self.inner.handoffs.record(CallbackTimes {
            range: id,
            step: HandoffStep::Activate,
            started,
            fetched: Some(fetched),
            ended: Instant::now(),
        });
        Ok(())
    }

    async fn deactivate(&self, id: RangeId) -> Result<(), CallbackError> {
        let started = Instant::now();
        // The rangelet already refuses new writes (the range is Deactivating);
        // wait for the ones in flight.
        let gate = self.gate(id);
        let _frozen = gate.write().await;
        self.inner.handoffs.record(CallbackTimes {
            range: id,
            step: HandoffStep::Deactivate,
            started,
            fetched: None,
            ended: Instant::now(),
        });
        Ok(())
    }

    async fn drop(&self, id: RangeId) -> Result<(), CallbackError> {
        self.abandon_pending(id).await?;
        // No longer held: no replicated entry or takeover starts on it from
        // here on; then the copy leaves its log, once an entry being applied
        // has landed (its keys are cleared below with the rest).
        let meta = lock(&self.inner.held).remove(&id);
        let cleared = self.clear_dropped(id, meta.as_ref()).await;
        if let (Err(_), Some(meta)) = (&cleared, meta) {
            // Held again, so that the retried drop clears what this one
            // could not.
            lock(&self.inner.held).insert(id, meta);
        }
        cleared?;
        self.inner.replicas.forget(id);
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
                    .size(span, node.inner.config.split_walk_cap)
            })
            .await
            .map_err(failed)
    }

    async fn replica_groups(&self, groups: Vec<ReplicaGroup>) {
        self.apply_replica_groups(groups);
    }
}

impl KvNode {
    /// What a drop deletes: the copy's place in its replica log (waiting for
    /// an entry being applied), then the range's keys, leaving those of other
    /// ranges held here.
    async fn clear_dropped(
        &self,
        id: RangeId,
        meta: Option<&RangeMeta>,
    ) -> Result<(), CallbackError> {
        self.inner
            .replicas
            .detach(&self.inner.store, id)
            .await
            .map_err(failed)?;
        if let Some(meta) = meta {
            // Only this range's keys: another range here may share the span.
            for part in Span::of(meta).subtract(&self.other_spans(id)) {
                self.clear(&part).await.map_err(failed)?;
            }
        }
        Ok(())
    }
}

/// Whether a prepare of `meta` copies the range itself from a copy that serves
/// it (a move, or a replica added to a replicated range), rather than from
/// frozen parents or nothing: such a copy joins the range's replica log, if it
/// has one, at its delta.
fn copies_a_serving_range(meta: &RangeMeta, parents: &[Parent], self_addr: &str) -> bool {
    parents.iter().any(|p| {
        p.meta.id() == meta.id()
            && p.placements
                .iter()
                .any(|pl| pl.state == PlacementState::Active && pl.node_addr != self_addr)
    })
}
