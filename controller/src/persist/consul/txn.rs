//! Sending one transaction: the fence (DESIGN.md §5 HA: a deposed leader cannot
//! write), the guard and the operations, and what Consul's answer means. An
//! applied transaction updates [`State`]; a refused one is fenced, a conflict
//! naming its key, or a backend error; one whose answer was lost is kept *in
//! doubt*, so that the next save learns its fate before writing again.

use std::collections::HashMap;

use futures::future::join_all;
use ranger_consul::{TxnOp, TxnOpError, TxnResults};

use super::plan::{Batch, Guard, PlannedOp};
use super::state::State;
use super::{Fault, FaultPoint, Inner};
use crate::persist::PersistError;

/// What a transaction operation was, to turn Consul's failed op index into an
/// error.
#[derive(Clone, Copy, Debug)]
pub(super) enum Role {
    Fence,
    Guard,
    Op(usize),
}

/// Why a transaction did not go through.
pub(super) enum TxnFailure {
    /// Certainly not applied.
    Refused(PersistError),
    /// Maybe applied: the answer was lost or unreadable.
    InDoubt(PersistError),
}

/// Whether a failed transaction may nevertheless have been applied. Errors found
/// before sending, Consul's refusals (4xx) and roll-backs were certainly not;
/// no answer, a 5xx (e.g. a Raft apply that timed out) or an unreadable answer
/// may have been.
pub(super) fn maybe_applied(error: &ranger_consul::Error) -> bool {
    use ranger_consul::Error as E;
    match error {
        E::InvalidAddress { .. }
        | E::InvalidArgument(_)
        | E::TxnTooManyOps { .. }
        | E::TxnTooLarge { .. }
        | E::ValueTooLarge { .. }
        | E::TxnRolledBack(_) => false,
        E::Status { status, .. } => *status >= 500,
        _ => true,
    }
}

/// The most telling of several errors: being fenced explains a conflict, and a
/// conflict is permanent where a backend error is not.
pub(super) fn worst(a: PersistError, b: PersistError) -> PersistError {
    let rank = |e: &PersistError| match e {
        PersistError::Fenced { .. } => 3,
        PersistError::Conflict { .. } => 2,
        PersistError::Corrupt { .. } => 1,
        PersistError::Backend { .. } => 0,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

impl Inner {
    /// Sends `batches`, up to `parallel` at a time, recording each applied one in
    /// `state`. Stops at the first wave with a failure and returns the worst error.
    pub(super) async fn run(
        &self,
        state: &mut State,
        batches: Vec<Batch>,
        parallel: usize,
    ) -> Result<(), PersistError> {
        let mut batches = batches.into_iter().peekable();
        while batches.peek().is_some() {
            let wave: Vec<Batch> = batches.by_ref().take(parallel.max(1)).collect();
            let answers = join_all(wave.iter().map(|batch| self.send(batch))).await;
            let mut failure: Option<PersistError> = None;
            for (batch, answer) in wave.into_iter().zip(answers) {
                let error = match answer {
                    Ok(results) => match self.record(state, &batch, &results) {
                        Ok(()) => continue,
                        Err(error) => {
                            state.in_doubt.push(batch);
                            error
                        }
                    },
                    Err(TxnFailure::Refused(error)) => error,
                    Err(TxnFailure::InDoubt(error)) => {
                        state.in_doubt.push(batch);
                        error
                    }
                };
                failure = Some(match failure {
                    Some(previous) => worst(previous, error),
                    None => error,
                });
            }
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Records an applied transaction: each written key's new index comes from
    /// Consul's results. A written key missing from them leaves the transaction
    /// in doubt (it is then resolved like a lost answer).
    pub(super) fn record(
        &self,
        state: &mut State,
        batch: &Batch,
        results: &TxnResults,
    ) -> Result<(), PersistError> {
        let indexes: HashMap<&str, u64> = results
            .results
            .iter()
            .map(|pair| (pair.key.as_str(), pair.modify_index))
            .collect();
        let mut updates = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            let index = match op {
                PlannedOp::Delete { .. } => 0,
                _ => {
                    let key = self.op_key(op);
                    *indexes.get(key.as_str()).ok_or_else(|| {
                        PersistError::backend(
                            "reading Consul's transaction results",
                            format!("no result for written key {key}"),
                        )
                    })?
                }
            };
            updates.push(index);
        }
        for (op, index) in batch.ops.iter().zip(updates) {
            state.apply(op, index);
        }
        Ok(())
    }

    /// Sends one transaction: the fence check, the guard, the operations.
    pub(super) async fn send(&self, batch: &Batch) -> Result<TxnResults, TxnFailure> {
        let mut ops = Vec::with_capacity(batch.ops.len() + 2);
        let mut roles = Vec::with_capacity(batch.ops.len() + 2);
        if let Some(fence) = &self.fence {
            ops.push(TxnOp::check_session(&fence.leader_key, &fence.session_id));
            roles.push(Role::Fence);
        }
        match batch.guard {
            Some(Guard::CountersAt(index)) => {
                ops.push(TxnOp::check_index(self.counters_key(), index));
                roles.push(Role::Guard);
            }
            Some(Guard::NoCounters) => {
                ops.push(TxnOp::check_not_exists(self.counters_key()));
                roles.push(Role::Guard);
            }
            None => {}
        }
        for (i, op) in batch.ops.iter().enumerate() {
            let key = self.op_key(op);
            ops.push(match self.op_value(op) {
                Some(value) => TxnOp::cas(key, value, op.expect()),
                None => TxnOp::delete_cas(key, op.expect()),
            });
            roles.push(Role::Op(i));
        }
        if let Some(failure) = self.injected_answer(&ops).await {
            return Err(failure);
        }
        match self.client.txn(&ops).await {
            Ok(results) => Ok(results),
            Err(ranger_consul::Error::TxnRolledBack(errors)) => {
                Err(TxnFailure::Refused(self.refused(&errors, &roles, batch)))
            }
            Err(error) if maybe_applied(&error) => Err(TxnFailure::InDoubt(PersistError::backend(
                "writing to Consul (outcome unknown)",
                error,
            ))),
            Err(error) => Err(TxnFailure::Refused(PersistError::backend(
                "writing to Consul",
                error,
            ))),
        }
    }

    /// [`FaultPoint::Send`]: pretends the answer to this transaction was lost,
    /// after sending it or without sending it.
    async fn injected_answer(&self, ops: &[TxnOp]) -> Option<TxnFailure> {
        match self.fault(FaultPoint::Send)? {
            Fault::LoseAnswerAfterApplying => {
                let _ = self.client.txn(ops).await;
            }
            Fault::LoseAnswerBeforeSending => {}
            other => {
                tracing::warn!(fault = ?other, "fault armed where it cannot strike; ignored");
                return None;
            }
        }
        Some(TxnFailure::InDoubt(PersistError::backend(
            "writing to Consul (outcome unknown)",
            "injected lost answer",
        )))
    }

    /// Turns a rolled-back transaction into why: a failed session check is
    /// [`PersistError::Fenced`], a failed index check names its key.
    pub(super) fn refused(
        &self,
        errors: &[TxnOpError],
        roles: &[Role],
        batch: &Batch,
    ) -> PersistError {
        let mut conflict = None;
        for error in errors {
            match roles.get(error.op_index) {
                Some(Role::Fence) => {
                    return PersistError::Fenced {
                        detail: error.what.clone(),
                    };
                }
                Some(Role::Guard) => {
                    conflict.get_or_insert_with(|| self.counters_key());
                }
                Some(Role::Op(i)) => {
                    if let Some(op) = batch.ops.get(*i) {
                        conflict.get_or_insert_with(|| self.op_key(op));
                    }
                }
                None => {}
            }
        }
        match conflict {
            Some(key) => PersistError::Conflict { key },
            None => PersistError::backend(
                "writing to Consul",
                ranger_consul::Error::TxnRolledBack(errors.to_vec()),
            ),
        }
    }
}
