//! The public handle: what a storage system opens, serves, and asks on every
//! request.
//!
//! A [`Rangelet`] is a cheap, cloneable handle on shared state ([`Inner`]); the
//! commands, transitions, lease and term logic live in the sibling modules as
//! further `impl` blocks on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_proto::{Key, Outcome, RangeId, RemoteState};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::errors::{CommandError, KeyRejection};
use super::table::{Entry, RangeChange, Table};
use crate::metrics::{CallbackKind, NodeMetrics};
use crate::node::Node;
use crate::state_store::{StateStore, StateStoreError, StoredRange, lock};

/// Tunables of the rangelet.
#[derive(Debug, Clone)]
pub struct RangeletConfig {
    /// How long a command waits for its callback before answering with the
    /// in-between state. Keep it well below the controller's RPC deadline.
    pub grace_period: Duration,
    /// How many changes a `Ranges` subscriber may fall behind before it is
    /// resynchronised from a snapshot instead (it never slows commands down).
    pub change_buffer: usize,
    /// How much load this node can carry relative to the others (1.0: the
    /// same as a default node; 2.0: twice as much). Sent with every probe
    /// answer; the controller's balancer divides the node's load by it.
    pub capacity: f64,
    /// Where the rangelet records its callbacks and, when asked
    /// ([`Rangelet::sample_metrics`]), its ranges by state and its lease. Keep a
    /// clone to register it and to report transfers (see [`crate::metrics`]).
    pub metrics: NodeMetrics,
}

impl Default for RangeletConfig {
    fn default() -> Self {
        RangeletConfig {
            grace_period: Duration::from_millis(500),
            change_buffer: 1024,
            capacity: 1.0,
            metrics: NodeMetrics::new(),
        }
    }
}

/// What every clone of a [`Rangelet`] shares.
pub(super) struct Inner<N> {
    pub(super) node: N,
    pub(super) config: RangeletConfig,
    pub(super) store: Box<dyn StateStore>,
    pub(super) table: Mutex<Table>,
    /// Every state change, in order, for `Ranges` subscribers.
    pub(super) changes: broadcast::Sender<RangeChange>,
    /// Bumped on every change; commands wait on it for their transition to end.
    pub(super) version: watch::Sender<u64>,
    pub(super) want_drain: AtomicBool,
    /// Whether a task is deactivating fenced ranges (at most one at a time).
    pub(super) deactivating_fenced: AtomicBool,
    /// Until when the controller's last probe allows serving writes; `None` until a
    /// controller grants a lease (the reference controller never does).
    pub(super) lease_until: watch::Sender<Option<Instant>>,
    pub(super) shutdown: watch::Sender<bool>,
}

/// The rangelet: the node SDK's state machine around a storage system's [`Node`].
///
/// Cheap to clone (a handle). Serve it over gRPC with [`crate::NodeService`], or call
/// its methods directly (in-process tests do).
pub struct Rangelet<N> {
    pub(super) inner: Arc<Inner<N>>,
}

impl<N> Clone for Rangelet<N> {
    fn clone(&self) -> Self {
        Rangelet {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<N> std::fmt::Debug for Rangelet<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rangelet")
            .field("ranges", &lock(&self.inner.table).ranges.len())
            .finish_non_exhaustive()
    }
}

impl<N: Node> Rangelet<N> {
    /// Opens a rangelet over `node`, restoring the ranges that `store` kept.
    ///
    /// A restarted node must not serve writes the controller may have handed to
    /// another node while it was down, so every restored range comes back
    /// **Inactive**: the controller activates it again if it still wants it here.
    /// A range that was Preparing or Dropping when the node stopped may be half
    /// written; it is dropped (the storage system's `drop` cleans up) and forgotten.
    pub async fn open(
        node: N,
        store: impl StateStore,
        config: RangeletConfig,
    ) -> Result<Self, StateStoreError> {
        let stored = store.load()?;
        let newest_term = store.load_term()?;
        let mut table = Table {
            ranges: BTreeMap::new(),
            by_start: BTreeSet::new(),
            failures: HashMap::new(),
            next_epoch: 1,
            fenced: BTreeSet::new(),
            lease_lapses: 0,
            newest_term,
        };
        for range in stored {
            let id = range.meta.id();
            match range.state {
                RemoteState::Preparing | RemoteState::Dropping | RemoteState::NotFound => {
                    tracing::info!(range = %id, state = %range.state, "dropping half-done range left by the last run");
                    let dropped = config.metrics.time(CallbackKind::Drop, node.drop(id)).await;
                    if let Err(e) = dropped {
                        tracing::warn!(range = %id, error = %e, "cleanup drop failed; forgetting the range anyway");
                    }
                    store.remove(id)?;
                }
                _ => {
                    let restored = StoredRange {
                        meta: range.meta.clone(),
                        state: RemoteState::Inactive,
                    };
                    store.put(&restored)?;
                    table.by_start.insert((range.meta.start().clone(), id));
                    table.ranges.insert(
                        id,
                        Entry {
                            meta: range.meta,
                            state: RemoteState::Inactive,
                            epoch: 0,
                            cancel_prepare: None,
                        },
                    );
                }
            }
        }
        let (changes, _) = broadcast::channel(config.change_buffer.max(1));
        Ok(Rangelet {
            inner: Arc::new(Inner {
                node,
                config,
                store: Box::new(store),
                table: Mutex::new(table),
                changes,
                version: watch::Sender::new(0),
                want_drain: AtomicBool::new(false),
                deactivating_fenced: AtomicBool::new(false),
                lease_until: watch::Sender::new(None),
                shutdown: watch::Sender::new(false),
            }),
        })
    }

    /// The storage system this rangelet drives.
    pub fn node(&self) -> &N {
        &self.inner.node
    }

    /// The range's state on this node (NotFound if absent).
    pub fn state(&self, id: RangeId) -> RemoteState {
        lock(&self.inner.table).state(id)
    }

    /// Every range with its state.
    pub fn ranges(&self) -> Vec<RangeChange> {
        lock(&self.inner.table).snapshot()
    }

    /// The ranges on this node containing `key`, with their states. Usually one;
    /// two during a split or join whose parent and child share this node.
    pub fn ranges_containing(&self, key: &[u8]) -> Vec<RangeChange> {
        let table = lock(&self.inner.table);
        let upper = (Key::from(key), RangeId::MAX);
        table
            .by_start
            .range(..=upper)
            .rev()
            .filter_map(|(_, id)| table.ranges.get(id))
            .filter(|e| e.meta.contains(key))
            .map(|e| RangeChange {
                meta: e.meta.clone(),
                state: e.state,
            })
            .collect()
    }

    /// The range that may serve `key` right now: Active, and within the lease the
    /// controller granted. A storage system calls this on every read and write.
    pub fn serving_range(&self, key: &[u8]) -> Result<RangeId, KeyRejection> {
        let candidates = self.ranges_containing(key);
        let Some(best) = candidates
            .iter()
            .find(|c| c.state == RemoteState::Active)
            .or_else(|| candidates.first())
        else {
            return Err(KeyRejection::NotOwned(Key::from(key)));
        };
        let id = best.meta.id();
        if best.state != RemoteState::Active {
            return Err(KeyRejection::NotActive {
                range: id,
                state: best.state,
            });
        }
        if !self.may_write(id) {
            return Err(KeyRejection::LeaseExpired { range: id });
        }
        Ok(id)
    }

    /// Whether range `id` may accept writes right now: Active, within the
    /// controller's lease, and not fenced by an earlier lapse of it.
    pub fn may_write(&self, id: RangeId) -> bool {
        let table = lock(&self.inner.table);
        table.state(id) == RemoteState::Active && !table.fenced.contains(&id) && self.lease_valid()
    }

    /// Asks the controller to move every range away (reported by `Info`).
    pub fn request_drain(&self, drain: bool) {
        self.inner.want_drain.store(drain, Ordering::SeqCst);
        self.inner.version.send_modify(|v| *v += 1);
    }

    pub fn wants_drain(&self) -> bool {
        self.inner.want_drain.load(Ordering::SeqCst)
    }

    /// The capacity this node declares (see [`RangeletConfig::capacity`]).
    pub fn capacity(&self) -> f64 {
        self.inner.config.capacity
    }

    /// Drops a range the storage system decided to abandon (e.g. a corrupt copy),
    /// whatever its state; the controller sees it gone and places it again. A range
    /// with a callback running is refused (try again when it ends), except Preparing,
    /// whose prepare is abandoned.
    pub async fn force_drop(&self, id: RangeId) -> Result<Outcome, CommandError> {
        self.drop_range(id, true).await
    }

    /// The metrics this rangelet records into (see [`RangeletConfig::metrics`]).
    pub fn metrics(&self) -> &NodeMetrics {
        &self.inner.config.metrics
    }

    /// Samples the gauges kept only at scrape time: the ranges by state and the
    /// time left on the controller's lease. Call it just before each scrape
    /// (e.g. from a [`crate::metrics::BeforeScrape`]).
    pub fn sample_metrics(&self) {
        let states: Vec<RemoteState> = lock(&self.inner.table)
            .ranges
            .values()
            .map(|e| e.state)
            .collect();
        let lease_left = self
            .inner
            .lease_until
            .borrow()
            .map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            });
        self.inner.config.metrics.set_sampled(states, lease_left);
    }

    /// Asks the controller to drain this node, then waits until it holds no ranges
    /// or `timeout` passes. Returns whether the node ended empty.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.request_drain(true);
        let deadline = Instant::now() + timeout;
        let mut version = self.inner.version.subscribe();
        loop {
            if lock(&self.inner.table).ranges.is_empty() {
                return true;
            }
            tokio::select! {
                changed = version.changed() => if changed.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// Refuses new commands and ends every `Ranges` stream, so that a server's
    /// graceful shutdown can complete.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Resolves once [`Rangelet::shutdown`] was called.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    /// The current ranges and a receiver of every later change, taken atomically so
    /// that no change falls between the two.
    pub fn subscribe(&self) -> (Vec<RangeChange>, broadcast::Receiver<RangeChange>) {
        let table = lock(&self.inner.table);
        (table.snapshot(), self.inner.changes.subscribe())
    }
}
