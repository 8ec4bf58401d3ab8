//! The controller's commands: Prepare, Activate, Deactivate and Drop.
//!
//! Each command is idempotent (PROTOCOL.md, "Semantics the reference relies on"):
//! under the table lock it is refused (unknown range, wrong state, stale term), or
//! answered as a repeat (waiting on the transition already running, never calling
//! the storage system again), or it starts a transition (see [`super::transitions`])
//! and waits for it up to the grace period. A failure that an earlier command of
//! the same kind could not report (it had answered with the in-between state) is
//! reported by the next one instead of starting again.
//!
//! Each command has a `*_in_term` form carrying the controller's term (see
//! [`super::term`]); the plain form carries none.

use std::sync::Arc;

use ranger_proto::{Command, Outcome, Parent, RangeId, RangeMeta, RemoteState};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::errors::CommandError;
use super::handle::Rangelet;
use super::lease::LEASE_LAPSED_BEFORE_ACTIVATE;
use super::table::{Entry, Table, next_epoch, take_failure};
use super::term::NO_TERM;
use super::transitions::{ACTIVATE, DEACTIVATE, DROP, Transition};
use crate::metrics::CallbackKind;
use crate::node::Node;

/// What a command does after its synchronous part: answer now, or wait on a
/// transition (the lock is released before waiting).
enum Begin {
    Answer(Outcome),
    Wait(RemoteState),
}

impl<N: Node> Rangelet<N> {
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
        // The callback runs on in the command's span (and so under the
        // controller's operation id, when it sent one).
        tokio::spawn(
            async move {
                let began = std::time::Instant::now();
                let result = tokio::select! {
                    result = inner.node.prepare(meta, parents) => Some(result),
                    _ = cancel_rx => None,
                };
                this.metrics().callback_ended(
                    CallbackKind::Prepare,
                    result.as_ref(),
                    began.elapsed(),
                );
                this.finish_prepare(id, epoch, result).await;
            }
            .instrument(tracing::Span::current()),
        );
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
        tokio::spawn(
            async move {
                let result = callback.await;
                if command == Command::Activate {
                    this.finish_activate(id, epoch, lapses_at_start, result)
                        .await;
                } else {
                    this.finish(id, epoch, transition, result);
                }
            }
            .instrument(tracing::Span::current()),
        );
        tracing::debug!(range = %id, ?command, "transition started");
        Ok(Begin::Wait(transition.during))
    }
}
