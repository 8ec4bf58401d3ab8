//! The node-side state machine: the rangelet.
//!
//! It sits between the controller's commands and the storage system's callbacks.
//! Each range moves through the remote states of PROTOCOL.md:
//!
//! ```text
//!   NotFound --Prepare--> Preparing --ok--> Inactive --Activate--> Activating --ok--> Active
//!       ^                     | fail                ^                  | fail           |
//!       +---------------------+                     +------------------+   Deactivate   |
//!       |                                           ^                                   v
//!       +--ok-- Dropping <--Drop-- Inactive         +----------ok------------ Deactivating
//! ```
//!
//! A command starts a transition (the in-between state), calls the storage system's
//! callback in a task of its own, and waits up to the grace period for it. If the
//! callback finishes in time the command answers with the outcome; if not, it answers
//! with the in-between state and the work goes on, and the controller learns the
//! outcome from its next command or from `Info`. A repeated command during a
//! transition waits on the same transition; it never calls the storage system again.
//!
//! A callback failure rolls the range back to its previous state and is reported as
//! a [`Outcome::failure`] to the command that started it, or, if that command had
//! already answered, to the next command of the same kind for that range.
//!
//! Leases (DESIGN.md §6, SCENARIOS.md #38, #40): once a controller grants a lease
//! with its probe (`Info` with a non-zero lease), Active ranges may write only
//! until it ends; the end is always "now + the latest grant" (a probe granting
//! nothing leaves it alone). When it lapses, every range that may serve is fenced
//! and deactivated, because the controller may re-place them elsewhere. An
//! activation that began before a lapse and ends after it, or that is asked for
//! while the lease is lapsed, fails and leaves the range Inactive: only an Activate
//! under a live lease makes this copy the writer again. A node that never received
//! a lease (the reference controller grants none) is never fenced.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_proto::{Key, LoadInfo, Parent, RangeId, RangeInfo, RangeMeta, RemoteState};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::Instant;

use crate::node::{CallbackError, Node};
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
}

impl Default for RangeletConfig {
    fn default() -> Self {
        RangeletConfig {
            grace_period: Duration::from_millis(500),
            change_buffer: 1024,
        }
    }
}

/// The failure an Activate reports when it began after the controller's lease
/// lapsed (SCENARIOS.md #40).
const LEASE_LAPSED_BEFORE_ACTIVATE: &str =
    "the controller's lease has lapsed: not activating (the range may be served elsewhere now)";
/// The failure an Activate reports when the lease lapsed while its callback ran.
const LEASE_LAPSED_DURING_ACTIVATE: &str = "the controller's lease lapsed while activating: rolled back (the range may be served elsewhere now)";
/// The term of a command that carries none (the reference controller's, and the
/// node's own, e.g. deactivations after a lease lapse). Always accepted.
const NO_TERM: u64 = 0;

/// What a lease grant leaves to do once the table lock is released.
struct Granted {
    /// The first lease ever: start the watchdog.
    first: bool,
    /// Ranges a late renewal fenced: deactivate them.
    fenced: usize,
}

/// Where a lease too long to represent ends: far enough to be "never", near
/// enough for `Instant` arithmetic.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The commands and their answers are part of the wire contract's domain types
/// (the controller uses them too); re-exported here for storage systems.
pub use ranger_proto::{Command, Outcome};

/// Why a command was refused without calling the storage system.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("range {0} is not on this node")]
    UnknownRange(RangeId),
    #[error("cannot {command:?} range {range}: it is {state}")]
    WrongState {
        command: Command,
        range: RangeId,
        state: RemoteState,
    },
    #[error("range {requested:?} conflicts with {existing:?}, already on this node")]
    MetaMismatch {
        existing: RangeMeta,
        requested: RangeMeta,
    },
    #[error("could not persist the state of range {range}: {source}")]
    Persist {
        range: RangeId,
        #[source]
        source: StateStoreError,
    },
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The command (or probe) came from a controller term older than the newest
    /// this node has seen: a deposed leader's message still in flight
    /// (SCENARIOS.md #43).
    #[error("stale controller term {term}: this node has seen term {newest}")]
    StaleTerm { term: u64, newest: u64 },
    /// A newer controller term could not be persisted, so the command carrying it
    /// was refused (accepting it would let a restart forget the term).
    #[error("could not persist controller term {term}: {source}")]
    PersistTerm {
        term: u64,
        #[source]
        source: StateStoreError,
    },
}

/// Why a key cannot be served here (see [`Rangelet::serving_range`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyRejection {
    #[error("no range on this node contains key {0}")]
    NotOwned(Key),
    #[error("range {range} holds the key but is {state}, not Active")]
    NotActive { range: RangeId, state: RemoteState },
    #[error("range {range} is Active but the controller's lease expired; refusing to serve")]
    LeaseExpired { range: RangeId },
}

/// One change of a range's state, as the `Ranges` stream sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeChange {
    pub meta: RangeMeta,
    pub state: RemoteState,
}

/// A transition: the state it starts from, the one it shows while the callback
/// runs, and where it lands on success or failure.
#[derive(Debug, Clone, Copy)]
struct Transition {
    command: Command,
    during: RemoteState,
    success: RemoteState,
    rollback: RemoteState,
}

const PREPARE: Transition = Transition {
    command: Command::Prepare,
    during: RemoteState::Preparing,
    success: RemoteState::Inactive,
    rollback: RemoteState::NotFound,
};
const ACTIVATE: Transition = Transition {
    command: Command::Activate,
    during: RemoteState::Activating,
    success: RemoteState::Active,
    rollback: RemoteState::Inactive,
};
const DEACTIVATE: Transition = Transition {
    command: Command::Deactivate,
    during: RemoteState::Deactivating,
    success: RemoteState::Inactive,
    rollback: RemoteState::Active,
};
/// Drop of an Inactive range (or a forced drop of an Active one: it rolls back to
/// where it was, see `start_drop`).
const DROP: Transition = Transition {
    command: Command::Drop,
    during: RemoteState::Dropping,
    success: RemoteState::NotFound,
    rollback: RemoteState::Inactive,
};

/// What a command does after its synchronous part: answer now, or wait on a
/// transition (the lock is released before waiting).
enum Begin {
    Answer(Outcome),
    Wait(RemoteState),
}

type CallbackFuture = Pin<Box<dyn Future<Output = Result<(), CallbackError>> + Send>>;

struct Entry {
    meta: RangeMeta,
    state: RemoteState,
    /// Bumped whenever a transition starts, so a callback finishing late cannot
    /// overwrite the outcome of a newer transition.
    epoch: u64,
    /// Set while a Prepare runs: firing it asks the prepare task to abandon the
    /// callback and drop the range instead (a controller that gave up on it).
    cancel_prepare: Option<oneshot::Sender<()>>,
}

struct PendingFailure {
    command: Command,
    message: String,
}

/// Everything guarded by the one lock. Held only for short, non-async sections.
struct Table {
    ranges: BTreeMap<RangeId, Entry>,
    /// Ranges by start key, for key lookups.
    by_start: BTreeSet<(Key, RangeId)>,
    failures: HashMap<RangeId, PendingFailure>,
    next_epoch: u64,
    /// Ranges that were Active when the controller's lease lapsed. They serve
    /// nothing until the controller activates them again, even if a later probe
    /// renews the lease: by then the controller may have given them to another
    /// node (see `expire_lease`).
    fenced: BTreeSet<RangeId>,
    /// How many times the controller's lease has lapsed. An activation remembers
    /// the count it began under; if it changed by the time the callback ends, the
    /// lease lapsed meanwhile and the activation fails (SCENARIOS.md #40).
    lease_lapses: u64,
    /// The newest controller term seen (0: none yet), kept in the state store.
    newest_term: u64,
}

impl Table {
    fn state(&self, id: RangeId) -> RemoteState {
        self.ranges
            .get(&id)
            .map_or(RemoteState::NotFound, |e| e.state)
    }

    fn snapshot(&self) -> Vec<RangeChange> {
        self.ranges
            .values()
            .map(|e| RangeChange {
                meta: e.meta.clone(),
                state: e.state,
            })
            .collect()
    }
}

struct Inner<N> {
    node: N,
    config: RangeletConfig,
    store: Box<dyn StateStore>,
    table: Mutex<Table>,
    /// Every state change, in order, for `Ranges` subscribers.
    changes: broadcast::Sender<RangeChange>,
    /// Bumped on every change; commands wait on it for their transition to end.
    version: watch::Sender<u64>,
    want_drain: AtomicBool,
    /// Whether a task is deactivating fenced ranges (at most one at a time).
    deactivating_fenced: AtomicBool,
    /// Until when the controller's last probe allows serving writes; `None` until a
    /// controller grants a lease (the reference controller never does).
    lease_until: watch::Sender<Option<Instant>>,
    shutdown: watch::Sender<bool>,
}

/// The rangelet: the node SDK's state machine around a storage system's [`Node`].
///
/// Cheap to clone (a handle). Serve it over gRPC with [`crate::NodeService`], or call
/// its methods directly (in-process tests do).
pub struct Rangelet<N> {
    inner: Arc<Inner<N>>,
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
                    if let Err(e) = node.drop(id).await {
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

    /// Prepare: load `meta` from the placements named in `parents`.
    pub async fn prepare(
        &self,
        meta: RangeMeta,
        parents: Vec<Parent>,
    ) -> Result<Outcome, CommandError> {
        self.prepare_in_term(NO_TERM, meta, parents).await
    }

    /// [`Rangelet::prepare`] sent by a controller in `term` (see
    /// [`Rangelet::observe_term`]; 0 is no term).
    pub async fn prepare_in_term(
        &self,
        term: u64,
        meta: RangeMeta,
        parents: Vec<Parent>,
    ) -> Result<Outcome, CommandError> {
        let id = meta.id();
        match self.begin_prepare(term, meta, parents)? {
            Begin::Answer(outcome) => Ok(outcome),
            Begin::Wait(seen) => Ok(self.await_transition(id, seen, Command::Prepare).await),
        }
    }

    fn begin_prepare(
        &self,
        term: u64,
        meta: RangeMeta,
        parents: Vec<Parent>,
    ) -> Result<Begin, CommandError> {
        let id = meta.id();
        let mut table = self.lock_for_command(term)?;
        if let Some(outcome) = take_failure(&mut table, id, Command::Prepare) {
            return Ok(Begin::Answer(outcome));
        }
        if let Some(entry) = table.ranges.get(&id) {
            if entry.meta != meta {
                return Err(CommandError::MetaMismatch {
                    existing: entry.meta.clone(),
                    requested: meta,
                });
            }
            // Already here (or on its way): a repeat. Never prepare twice.
            return Ok(Begin::Wait(entry.state));
        }
        let epoch = next_epoch(&mut table);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.persist(id, &meta, RemoteState::Preparing)?;
        table.by_start.insert((meta.start().clone(), id));
        table.ranges.insert(
            id,
            Entry {
                meta: meta.clone(),
                state: RemoteState::Preparing,
                epoch,
                cancel_prepare: Some(cancel_tx),
            },
        );
        table.failures.remove(&id);
        self.publish(&table, id);
        let inner = Arc::clone(&self.inner);
        let this = self.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                result = inner.node.prepare(meta, parents) => Some(result),
                _ = cancel_rx => None,
            };
            this.finish_prepare(id, epoch, result).await;
        });
        tracing::debug!(range = %id, epoch, "prepare started");
        Ok(Begin::Wait(RemoteState::Preparing))
    }

    /// Activate: start serving a prepared or deactivated range.
    pub async fn activate(&self, id: RangeId) -> Result<Outcome, CommandError> {
        self.activate_in_term(NO_TERM, id).await
    }

    /// [`Rangelet::activate`] sent by a controller in `term` (0: no term).
    pub async fn activate_in_term(&self, term: u64, id: RangeId) -> Result<Outcome, CommandError> {
        self.simple_command(term, id, ACTIVATE, RemoteState::Inactive)
            .await
    }

    /// Deactivate: stop serving writes, keep the data.
    pub async fn deactivate(&self, id: RangeId) -> Result<Outcome, CommandError> {
        self.deactivate_in_term(NO_TERM, id).await
    }

    /// [`Rangelet::deactivate`] sent by a controller in `term` (0: no term).
    pub async fn deactivate_in_term(
        &self,
        term: u64,
        id: RangeId,
    ) -> Result<Outcome, CommandError> {
        self.simple_command(term, id, DEACTIVATE, RemoteState::Active)
            .await
    }

    /// Drop: forget the range. Dropping an unknown range succeeds (NotFound).
    /// A Preparing range has its prepare abandoned, then is dropped. An Active
    /// range is dropped only with `force` (the node's own decision, or a controller
    /// that knows the range is served elsewhere).
    pub async fn drop_range(&self, id: RangeId, force: bool) -> Result<Outcome, CommandError> {
        self.drop_range_in_term(NO_TERM, id, force).await
    }

    /// [`Rangelet::drop_range`] sent by a controller in `term` (0: no term).
    pub async fn drop_range_in_term(
        &self,
        term: u64,
        id: RangeId,
        force: bool,
    ) -> Result<Outcome, CommandError> {
        match self.begin_drop(term, id, force)? {
            Begin::Answer(outcome) => Ok(outcome),
            Begin::Wait(seen) => Ok(self.await_transition(id, seen, Command::Drop).await),
        }
    }

    fn begin_drop(&self, term: u64, id: RangeId, force: bool) -> Result<Begin, CommandError> {
        let mut table = self.lock_for_command(term)?;
        if let Some(outcome) = take_failure(&mut table, id, Command::Drop) {
            return Ok(Begin::Answer(outcome));
        }
        let Some(entry) = table.ranges.get_mut(&id) else {
            return Ok(Begin::Answer(Outcome {
                state: RemoteState::NotFound,
                failure: None,
            }));
        };
        if entry.state == RemoteState::Preparing {
            // Ask the prepare task to abandon its callback and drop instead.
            if let Some(cancel) = entry.cancel_prepare.take() {
                let _ = cancel.send(());
            }
            return Ok(Begin::Wait(RemoteState::Dropping));
        }
        if force && entry.state == RemoteState::Active {
            // A forced drop may start from Active; on failure it rolls back there.
            let transition = Transition {
                rollback: RemoteState::Active,
                ..DROP
            };
            return self.begin_simple(&mut table, id, transition, RemoteState::Active, true);
        }
        self.begin_simple(&mut table, id, DROP, RemoteState::Inactive, true)
    }

    /// Activate/Deactivate/Drop share one shape: start from `from`, or answer a
    /// repeat, or refuse.
    async fn simple_command(
        &self,
        term: u64,
        id: RangeId,
        transition: Transition,
        from: RemoteState,
    ) -> Result<Outcome, CommandError> {
        let begin = {
            let mut table = self.lock_for_command(term)?;
            match take_failure(&mut table, id, transition.command) {
                Some(outcome) => Begin::Answer(outcome),
                None => self.begin_simple(&mut table, id, transition, from, false)?,
            }
        };
        match begin {
            Begin::Answer(outcome) => Ok(outcome),
            Begin::Wait(seen) => Ok(self.await_transition(id, seen, transition.command).await),
        }
    }

    fn begin_simple(
        &self,
        table: &mut Table,
        id: RangeId,
        transition: Transition,
        from: RemoteState,
        absent_is_success: bool,
    ) -> Result<Begin, CommandError> {
        let command = transition.command;
        let Some(entry) = table.ranges.get(&id) else {
            if absent_is_success {
                return Ok(Begin::Answer(Outcome {
                    state: RemoteState::NotFound,
                    failure: None,
                }));
            }
            return Err(CommandError::UnknownRange(id));
        };
        let state = entry.state;
        if state == transition.during || state == transition.success {
            if command == Command::Activate && state == RemoteState::Active {
                if self.lease_lapsed() {
                    // Past the lease the controller may have re-placed the range:
                    // no Activate can make this copy the writer again until a
                    // probe renews the lease (SCENARIOS.md #40).
                    return Ok(Begin::Answer(Outcome {
                        state,
                        failure: Some(LEASE_LAPSED_BEFORE_ACTIVATE.to_owned()),
                    }));
                }
                // The controller re-asserts this copy as the writer.
                table.fenced.remove(&id);
            }
            // A repeat: wait on the transition already running (if any).
            return Ok(Begin::Wait(state));
        }
        if state != from {
            return Err(CommandError::WrongState {
                command,
                range: id,
                state,
            });
        }
        if command == Command::Activate && self.lease_lapsed() {
            // Began with the node already past its lease: fails like a callback
            // would, without calling the storage system (SCENARIOS.md #40).
            tracing::warn!(range = %id, "activate refused: the controller's lease has lapsed");
            return Ok(Begin::Answer(Outcome {
                state,
                failure: Some(LEASE_LAPSED_BEFORE_ACTIVATE.to_owned()),
            }));
        }
        let lapses_at_start = table.lease_lapses;
        let meta = entry.meta.clone();
        let epoch = next_epoch(table);
        self.persist(id, &meta, transition.during)?;
        if let Some(entry) = table.ranges.get_mut(&id) {
            entry.state = transition.during;
            entry.epoch = epoch;
        }
        table.failures.remove(&id);
        self.publish(table, id);
        let callback = self.callback(command, id);
        let this = self.clone();
        tokio::spawn(async move {
            let result = callback.await;
            if command == Command::Activate {
                this.finish_activate(id, epoch, lapses_at_start, result)
                    .await;
            } else {
                this.finish(id, epoch, transition, result);
            }
        });
        tracing::debug!(range = %id, ?command, "transition started");
        Ok(Begin::Wait(transition.during))
    }

    fn callback(&self, command: Command, id: RangeId) -> CallbackFuture {
        let inner = Arc::clone(&self.inner);
        match command {
            Command::Activate => Box::pin(async move { inner.node.activate(id).await }),
            Command::Deactivate => Box::pin(async move { inner.node.deactivate(id).await }),
            Command::Drop => Box::pin(async move { inner.node.drop(id).await }),
            // Prepare needs its arguments; it is spawned by `prepare` itself.
            Command::Prepare => Box::pin(async move {
                Err(CallbackError::refused(format!(
                    "internal: prepare of {id} without its arguments"
                )))
            }),
        }
    }

    /// Runs after a prepare callback finished or was abandoned.
    async fn finish_prepare(
        &self,
        id: RangeId,
        epoch: u64,
        result: Option<Result<(), CallbackError>>,
    ) {
        let drop_epoch = {
            let mut table = lock(&self.inner.table);
            let Some(entry) = table.ranges.get_mut(&id) else {
                return;
            };
            if entry.epoch != epoch {
                return;
            }
            // A Drop that arrived while the callback was finishing still wins: the
            // controller has given up on this placement.
            let abandoned = result.is_none() || entry.cancel_prepare.is_none();
            if !abandoned {
                entry.cancel_prepare = None;
                drop(table);
                if let Some(result) = result {
                    self.finish(id, epoch, PREPARE, result);
                }
                return;
            }
            let meta = entry.meta.clone();
            let drop_epoch = next_epoch(&mut table);
            if let Some(entry) = table.ranges.get_mut(&id) {
                entry.state = RemoteState::Dropping;
                entry.epoch = drop_epoch;
                entry.cancel_prepare = None;
            }
            if let Err(e) = self.persist(id, &meta, RemoteState::Dropping) {
                tracing::error!(range = %id, error = %e, "could not persist Dropping");
            }
            self.publish(&table, id);
            drop_epoch
        };
        tracing::info!(range = %id, "prepare abandoned; dropping what it wrote");
        let result = self.inner.node.drop(id).await;
        // A drop of an abandoned prepare that fails leaves nothing to roll back to:
        // the range is forgotten either way, and the failure reported.
        let transition = Transition {
            rollback: RemoteState::NotFound,
            ..DROP
        };
        self.finish(id, drop_epoch, transition, result);
    }

    /// Lands a transition: success or rollback state, persisted and published; a
    /// failure is kept for the command that reports it.
    fn finish(
        &self,
        id: RangeId,
        epoch: u64,
        transition: Transition,
        result: Result<(), CallbackError>,
    ) {
        let mut table = lock(&self.inner.table);
        self.land(&mut table, id, epoch, transition, result);
    }

    /// Lands an activation, unless the controller's lease lapsed since it began
    /// (SCENARIOS.md #40): the controller may have re-placed the range meanwhile,
    /// so the activation fails. The storage system is told to stop serving what its
    /// callback just started; the range rolls back to Inactive and the failure is
    /// reported like any failed callback. The check and the landing happen under
    /// one lock with [`Rangelet::expire_lease`], so a lapse is either seen here or
    /// fences the range after it landed.
    async fn finish_activate(
        &self,
        id: RangeId,
        epoch: u64,
        lapses_at_start: u64,
        result: Result<(), CallbackError>,
    ) {
        {
            let mut table = lock(&self.inner.table);
            let lapsed = result.is_ok()
                && self.inner.lease_until.borrow().is_some()
                && (table.lease_lapses != lapses_at_start || self.lease_lapsed());
            if !lapsed {
                self.land(&mut table, id, epoch, ACTIVATE, result);
                return;
            }
            match table.ranges.get(&id) {
                Some(entry) if entry.epoch == epoch => {}
                _ => return,
            }
            // Still Activating (not writable) while the storage system undoes it.
            table.fenced.insert(id);
        }
        tracing::warn!(range = %id, "controller lease lapsed while activating; undoing the activation");
        match self.inner.node.deactivate(id).await {
            Ok(()) => self.finish(
                id,
                epoch,
                ACTIVATE,
                Err(CallbackError::refused(LEASE_LAPSED_DURING_ACTIVATE)),
            ),
            Err(e) => {
                // The storage system still believes it serves the range: keep it
                // Active but fenced (never writable), and retry the deactivation
                // as after any lapse.
                let rollback_to_active = Transition {
                    rollback: RemoteState::Active,
                    ..ACTIVATE
                };
                self.finish(
                    id,
                    epoch,
                    rollback_to_active,
                    Err(CallbackError::refused(format!(
                        "{LEASE_LAPSED_DURING_ACTIVATE}; undoing it failed, the range stays fenced: {e}"
                    ))),
                );
                self.deactivate_fenced_in_background(1);
            }
        }
    }

    /// [`Rangelet::finish`] with the table already locked.
    fn land(
        &self,
        table: &mut Table,
        id: RangeId,
        epoch: u64,
        transition: Transition,
        result: Result<(), CallbackError>,
    ) {
        let Some(entry) = table.ranges.get_mut(&id) else {
            return;
        };
        if entry.epoch != epoch {
            tracing::debug!(range = %id, "stale callback result ignored");
            return;
        }
        let target = match &result {
            Ok(()) => transition.success,
            Err(_) => transition.rollback,
        };
        let meta = entry.meta.clone();
        if target == RemoteState::NotFound {
            table.ranges.remove(&id);
            table.by_start.remove(&(meta.start().clone(), id));
        } else {
            entry.state = target;
        }
        if target == RemoteState::NotFound
            || (transition.command == Command::Activate && result.is_ok())
        {
            table.fenced.remove(&id);
        }
        match &result {
            Ok(()) => {
                tracing::info!(range = %id, command = ?transition.command, state = %target, "transition done")
            }
            Err(e) => {
                tracing::warn!(range = %id, command = ?transition.command, error = %e, state = %target, "callback failed; rolled back");
                table.failures.insert(
                    id,
                    PendingFailure {
                        command: transition.command,
                        message: e.to_string(),
                    },
                );
            }
        }
        // The callback's effect already happened; a failure to record it is loud
        // but cannot undo it. On restart the stored in-between state is resolved
        // conservatively (see `open`).
        if let Err(e) = self.persist(id, &meta, target) {
            tracing::error!(range = %id, error = %e, "could not persist state after transition");
        }
        publish_change(&self.inner, table, &meta, target);
    }

    /// Waits (up to the grace period) while `id` is in a transitional state, then
    /// answers with its state and any failure pending for `command`.
    async fn await_transition(&self, id: RangeId, seen: RemoteState, command: Command) -> Outcome {
        if !seen.is_transitional() {
            return Outcome {
                state: seen,
                failure: None,
            };
        }
        let deadline = Instant::now() + self.inner.config.grace_period;
        let mut version = self.inner.version.subscribe();
        loop {
            {
                let mut table = lock(&self.inner.table);
                let state = table.state(id);
                if !state.is_transitional() {
                    let failure = match table.failures.get(&id) {
                        Some(f) if f.command == command => {
                            table.failures.remove(&id).map(|f| f.message)
                        }
                        _ => None,
                    };
                    return Outcome { state, failure };
                }
            }
            tokio::select! {
                changed = version.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        Outcome {
            state: self.state(id),
            failure: None,
        }
    }

    /// Every range with its load, for the controller's probe. Granting a lease
    /// (`Some`, non-zero) makes the lease end `lease` from now, whatever an earlier
    /// grant said: the controller counts a silent node's loss from its latest
    /// lease-granting probe, so the node never outlasts that grant (DESIGN.md §6).
    /// `None` and a zero lease (the wire's `lease_millis = 0`, which the reference
    /// controller always sends, and ours after a failed probe) grant nothing: the
    /// lease in force, if any, neither grows nor shrinks.
    pub async fn info(&self, lease: Option<Duration>) -> Vec<RangeInfo> {
        let granted = lease
            .filter(|l| !l.is_zero())
            .map(|lease| self.grant_lease(&mut lock(&self.inner.table), lease));
        self.after_grant(granted);
        self.report().await
    }

    /// [`Rangelet::info`] sent by a controller in `term` (0: no term). A probe from
    /// a stale term is refused and grants nothing: a deposed leader must not keep
    /// a node writable that the new leader is waiting out (SCENARIOS.md #43).
    pub async fn info_in_term(
        &self,
        term: u64,
        lease: Option<Duration>,
    ) -> Result<Vec<RangeInfo>, CommandError> {
        let granted = {
            let mut table = lock(&self.inner.table);
            self.check_term(&mut table, term)?;
            lease
                .filter(|l| !l.is_zero())
                .map(|lease| self.grant_lease(&mut table, lease))
        };
        self.after_grant(granted);
        Ok(self.report().await)
    }

    /// Records a controller's term, refusing it if it is older than the newest this
    /// node has seen (a deposed leader: DESIGN.md §6, SCENARIOS.md #43). A newer term
    /// is persisted through the [`StateStore`] before it counts, so a restart does
    /// not forget it (if the store implements the term methods). Term 0 means "no
    /// term" (the reference controller sends none) and is always accepted. The
    /// `*_in_term` commands do this under the same lock as the command itself, so a
    /// stale command can never start after a newer term's command was accepted.
    pub fn observe_term(&self, term: u64) -> Result<(), CommandError> {
        self.check_term(&mut lock(&self.inner.table), term)
    }

    /// The newest controller term this node has seen (0: none).
    pub fn newest_term(&self) -> u64 {
        lock(&self.inner.table).newest_term
    }

    fn check_term(&self, table: &mut Table, term: u64) -> Result<(), CommandError> {
        let newest = table.newest_term;
        if term == NO_TERM || term == newest {
            return Ok(());
        }
        if term < newest {
            tracing::warn!(
                term,
                newest,
                "refused a command from a stale controller term"
            );
            return Err(CommandError::StaleTerm { term, newest });
        }
        self.inner
            .store
            .put_term(term)
            .map_err(|source| CommandError::PersistTerm { term, source })?;
        tracing::info!(term, previous = newest, "newer controller term");
        table.newest_term = term;
        Ok(())
    }

    /// Every range with its state and load.
    async fn report(&self) -> Vec<RangeInfo> {
        let ranges: Vec<RangeChange> = lock(&self.inner.table).snapshot();
        let loads = futures::future::join_all(ranges.iter().map(|r| async {
            match self.inner.node.load_info(r.meta.id()).await {
                Ok(load) => load,
                Err(e) => {
                    tracing::debug!(range = %r.meta.id(), error = %e, "load_info failed; reporting no load");
                    LoadInfo::default()
                }
            }
        }))
        .await;
        ranges
            .into_iter()
            .zip(loads)
            .map(|(r, load)| RangeInfo {
                meta: r.meta,
                state: r.state,
                load,
            })
            .collect()
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

    /// Whether the controller's lease (if one was ever granted) still holds.
    pub fn lease_valid(&self) -> bool {
        self.inner
            .lease_until
            .borrow()
            .is_none_or(|until| Instant::now() < until)
    }

    /// Follows the controller's lease. When it lapses without renewal, the node
    /// fences every Active range (see [`Rangelet::may_write`]) and deactivates it:
    /// a controller that lost touch with this node may already have activated the
    /// range elsewhere, so only an explicit Activate (sent after the controller
    /// checked) may bring it back.
    async fn watch_lease(self) {
        let mut lease = self.inner.lease_until.subscribe();
        let shutdown = self.shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            let Some(until) = *lease.borrow_and_update() else {
                return;
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(until) => {
                    // (A timer may wake early for a deadline beyond its range:
                    // only a lease that really ran out expires.)
                    if *lease.borrow() == Some(until) && Instant::now() >= until {
                        self.expire_lease();
                        tokio::select! {
                            _ = &mut shutdown => return,
                            changed = lease.changed() => if changed.is_err() { return },
                        }
                    }
                }
                changed = lease.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Extends (or shortens) the lease to `lease` from now. When the lease in force
    /// had already lapsed (the watchdog may not have run yet), everything that may
    /// serve is fenced under the same lock, before the new lease makes anything
    /// writable again.
    /// Returns what [`Rangelet::after_grant`] must do once the lock is released.
    fn grant_lease(&self, table: &mut Table, lease: Duration) -> Granted {
        let now = Instant::now();
        // A peer can send any number of milliseconds; never overflow on it.
        let until = now.checked_add(lease).unwrap_or_else(|| now + FAR_FUTURE);
        let previous = self.inner.lease_until.send_replace(Some(until));
        match previous {
            // The first lease: from now on a lapse must fence this node.
            None => Granted {
                first: true,
                fenced: 0,
            },
            Some(old) if old <= now => Granted {
                first: false,
                fenced: fence_serving(table),
            },
            Some(_) => Granted {
                first: false,
                fenced: 0,
            },
        }
    }

    /// Starts the lease watchdog after the first grant, and the deactivation of
    /// whatever a late renewal fenced.
    fn after_grant(&self, granted: Option<Granted>) {
        let Some(granted) = granted else {
            return;
        };
        if granted.first {
            tokio::spawn(self.clone().watch_lease());
        }
        self.deactivate_fenced_in_background(granted.fenced);
    }

    /// Whether a lease was granted and has run out (a node that never got one has
    /// nothing to lapse: the reference controller grants none).
    fn lease_lapsed(&self) -> bool {
        self.inner
            .lease_until
            .borrow()
            .is_some_and(|until| Instant::now() >= until)
    }

    /// Fences every range that may be serving, then deactivates them in the
    /// background until it sticks, so that the node reports them Inactive and the
    /// controller can re-activate whichever it still wants here.
    fn expire_lease(&self) {
        let fenced = fence_serving(&mut lock(&self.inner.table));
        self.deactivate_fenced_in_background(fenced);
    }

    /// Starts the task deactivating fenced Active ranges, unless one runs already
    /// or `fenced` is 0.
    fn deactivate_fenced_in_background(&self, fenced: usize) {
        if fenced == 0 || self.inner.deactivating_fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            ranges = fenced,
            "controller lease lapsed: fenced active ranges; deactivating them"
        );
        let this = self.clone();
        tokio::spawn(async move {
            this.deactivate_fenced().await;
            this.inner
                .deactivating_fenced
                .store(false, Ordering::SeqCst);
        });
    }

    async fn deactivate_fenced(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let still_active: Vec<RangeId> = {
                let table = lock(&self.inner.table);
                table
                    .fenced
                    .iter()
                    .filter(|id| table.state(**id) == RemoteState::Active)
                    .copied()
                    .collect()
            };
            if still_active.is_empty() || *self.inner.shutdown.borrow() {
                return;
            }
            for id in still_active {
                match self.deactivate(id).await {
                    Ok(outcome) if outcome.failure.is_none() => {}
                    Ok(outcome) => {
                        tracing::warn!(range = %id, failure = ?outcome.failure, "deactivate after lease lapse failed; retrying")
                    }
                    Err(e) => {
                        tracing::warn!(range = %id, error = %e, "deactivate after lease lapse refused; retrying")
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Asks the controller to move every range away (reported by `Info`).
    pub fn request_drain(&self, drain: bool) {
        self.inner.want_drain.store(drain, Ordering::SeqCst);
        self.inner.version.send_modify(|v| *v += 1);
    }

    pub fn wants_drain(&self) -> bool {
        self.inner.want_drain.load(Ordering::SeqCst)
    }

    /// Drops a range the storage system decided to abandon (e.g. a corrupt copy),
    /// whatever its state; the controller sees it gone and places it again. A range
    /// with a callback running is refused (try again when it ends), except Preparing,
    /// whose prepare is abandoned.
    pub async fn force_drop(&self, id: RangeId) -> Result<Outcome, CommandError> {
        self.drop_range(id, true).await
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

    /// Locks the table for a command from `term`, refusing it if the node shuts
    /// down or the term is stale.
    fn lock_for_command(
        &self,
        term: u64,
    ) -> Result<std::sync::MutexGuard<'_, Table>, CommandError> {
        if *self.inner.shutdown.borrow() {
            return Err(CommandError::ShuttingDown);
        }
        let mut table = lock(&self.inner.table);
        self.check_term(&mut table, term)?;
        Ok(table)
    }

    fn persist(
        &self,
        id: RangeId,
        meta: &RangeMeta,
        state: RemoteState,
    ) -> Result<(), CommandError> {
        let result = if state == RemoteState::NotFound {
            self.inner.store.remove(id)
        } else {
            self.inner.store.put(&StoredRange {
                meta: meta.clone(),
                state,
            })
        };
        result.map_err(|source| CommandError::Persist { range: id, source })
    }

    fn publish(&self, table: &Table, id: RangeId) {
        if let Some(entry) = table.ranges.get(&id) {
            publish_change(&self.inner, table, &entry.meta, entry.state);
        }
    }
}

/// Sends a change to subscribers and wakes waiting commands. Called with the table
/// locked, so subscribers see changes in the order they happened.
fn publish_change<N>(inner: &Inner<N>, _locked: &Table, meta: &RangeMeta, state: RemoteState) {
    // No receivers is fine: nobody is streaming.
    let _ = inner.changes.send(RangeChange {
        meta: meta.clone(),
        state,
    });
    inner.version.send_modify(|v| *v += 1);
}

/// Records a lapse of the controller's lease and fences every range that may be
/// serving writes (Activating ones too: their activation will fail, see
/// `finish_activate`). Returns how many ranges it fenced.
fn fence_serving(table: &mut Table) -> usize {
    table.lease_lapses += 1;
    let serving: Vec<RangeId> = table
        .ranges
        .iter()
        .filter(|(_, e)| e.state.may_serve_writes())
        .map(|(id, _)| *id)
        .collect();
    table.fenced.extend(serving.iter().copied());
    serving.len()
}

fn next_epoch(table: &mut Table) -> u64 {
    table.next_epoch += 1;
    table.next_epoch
}

/// A failure of `command` that its own RPC did not report (it had answered with
/// the in-between state): the next command of the same kind reports it instead of
/// starting again.
fn take_failure(table: &mut Table, id: RangeId, command: Command) -> Option<Outcome> {
    match table.failures.get(&id) {
        Some(f) if f.command == command => {
            let message = table.failures.remove(&id).map(|f| f.message);
            Some(Outcome {
                state: table.state(id),
                failure: message,
            })
        }
        _ => None,
    }
}
