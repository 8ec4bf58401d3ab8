//! A transition's life, from the in-between state to where it lands.
//!
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
//! Every landing is persisted through the [`crate::StateStore`] and published to
//! `Ranges` subscribers under the table lock, so subscribers see changes in the
//! order they happened.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ranger_proto::{Command, Outcome, RangeId, RangeMeta, RemoteState};
use tokio::time::Instant;

use super::errors::CommandError;
use super::handle::{Inner, Rangelet};
use super::lease::LEASE_LAPSED_DURING_ACTIVATE;
use super::table::{PendingFailure, RangeChange, Table, next_epoch};
use crate::metrics::CallbackKind;
use crate::node::{CallbackError, Node};
use crate::state_store::{StoredRange, lock};

/// A transition: the state it starts from, the one it shows while the callback
/// runs, and where it lands on success or failure.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transition {
    pub(super) command: Command,
    pub(super) during: RemoteState,
    pub(super) success: RemoteState,
    pub(super) rollback: RemoteState,
}

const PREPARE: Transition = Transition {
    command: Command::Prepare,
    during: RemoteState::Preparing,
    success: RemoteState::Inactive,
    rollback: RemoteState::NotFound,
};

pub(super) const ACTIVATE: Transition = Transition {
    command: Command::Activate,
    during: RemoteState::Activating,
    success: RemoteState::Active,
    rollback: RemoteState::Inactive,
};

pub(super) const DEACTIVATE: Transition = Transition {
    command: Command::Deactivate,
    during: RemoteState::Deactivating,
    success: RemoteState::Inactive,
    rollback: RemoteState::Active,
};

/// Drop of an Inactive range (or a forced drop of an Active one: it rolls back to
/// where it was, see `start_drop`).
pub(super) const DROP: Transition = Transition {
    command: Command::Drop,
    during: RemoteState::Dropping,
    success: RemoteState::NotFound,
    rollback: RemoteState::Inactive,
};

type CallbackFuture = Pin<Box<dyn Future<Output = Result<(), CallbackError>> + Send>>;

impl<N: Node> Rangelet<N> {
    pub(super) fn callback(&self, command: Command, id: RangeId) -> CallbackFuture {
        let inner = Arc::clone(&self.inner);
        match command {
            Command::Activate => Box::pin(async move {
                let metrics = &inner.config.metrics;
                metrics
                    .time(CallbackKind::Activate, inner.node.activate(id))
                    .await
            }),
            Command::Deactivate => Box::pin(async move {
                let metrics = &inner.config.metrics;
                metrics
                    .time(CallbackKind::Deactivate, inner.node.deactivate(id))
                    .await
            }),
            Command::Drop => Box::pin(async move {
                let metrics = &inner.config.metrics;
                metrics.time(CallbackKind::Drop, inner.node.drop(id)).await
            }),
            // Prepare needs its arguments; it is spawned by `prepare` itself.
            Command::Prepare => Box::pin(async move {
                Err(CallbackError::refused(format!(
                    "internal: prepare of {id} without its arguments"
                )))
            }),
        }
    }

    /// Runs after a prepare callback finished or was abandoned.
    pub(super) async fn finish_prepare(
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
        let result = self
            .metrics()
            .time(CallbackKind::Drop, self.inner.node.drop(id))
            .await;
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
    pub(super) fn finish(
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
    pub(super) async fn finish_activate(
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
        let undone = self
            .metrics()
            .time(CallbackKind::Deactivate, self.inner.node.deactivate(id))
            .await;
        match undone {
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
    pub(super) async fn await_transition(
        &self,
        id: RangeId,
        seen: RemoteState,
        command: Command,
    ) -> Outcome {
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

    pub(super) fn persist(
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

    pub(super) fn publish(&self, table: &Table, id: RangeId) {
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
