//! The phases of a save (module docs of [`consul`](super), *Atomicity*): resolve
//! transactions whose answer was lost, tidy what interrupted saves left, then
//! either one transaction or stage, commit, settle. The commit is one write of
//! the counters, which is what makes a change set of any size all or nothing
//! (DESIGN.md §4 invariant 4: a controller killed at any instant reloads exactly
//! the state before or after a change).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ranger_consul::QueryOptions;

use super::layout::MAX_HEADER_BYTES;
use super::layout::{CommitId, CountersValue, RecordSlot, random_u64};
use super::plan::{Batch, BatchLimits, Guard, PlannedOp, pack};
use super::state::State;
use super::{Fault, FaultPoint, Inner};
use crate::keyspace::ChangeSet;
use crate::persist::{PersistError, codec};

/// Staging and settling transactions in flight at once: Consul's Raft log
/// batches concurrent writes, so a few in flight write faster than one.
pub(super) const PARALLEL_TXNS: usize = 4;

impl Inner {
    pub(super) async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        let limits = self.limits();
        let max_value = self.client.config().limits.max_value_size;
        let encoded: Vec<(u64, Arc<[u8]>)> = codec::encode_all(changes)?
            .into_iter()
            .map(|(id, bytes)| (id, Arc::from(bytes)))
            .collect();
        // A record too large for one value or one transaction could never be
        // written: refuse the change set before writing any of it.
        for (id, bytes) in &encoded {
            let op_bytes = self.op_size(&PlannedOp::PutRecord {
                slot: RecordSlot::Pending(*id),
                expect: 0,
                commit: None,
                payload: Arc::clone(bytes),
            });
            if bytes.len() + MAX_HEADER_BYTES > max_value || op_bytes > limits.bytes {
                return Err(PersistError::backend(
                    format!("saving {}", codec::record_key(*id)),
                    format!(
                        "its record is {} bytes, too large for a Consul value ({max_value} bytes) in a transaction ({} bytes)",
                        bytes.len(),
                        self.client.config().limits.max_txn_request_bytes
                    ),
                ));
            }
        }
        let mut state = self.state.lock().await;
        self.resolve_in_doubt(&mut state).await?;
        self.tidy(&mut state, limits).await?;
        let commit = CommitId(random_u64());
        let commit_op = |state: &State| PlannedOp::PutCounters {
            expect: state.counters_index(),
            value: CountersValue {
                commit: Some(commit),
                write: random_u64(),
                counters: Some(changes.counters),
            },
        };
        let direct: Vec<PlannedOp> = encoded
            .iter()
            .map(|(id, payload)| PlannedOp::PutRecord {
                slot: RecordSlot::Range(*id),
                expect: state.index(RecordSlot::Range(*id)),
                commit: None,
                payload: Arc::clone(payload),
            })
            .collect();
        let direct_bytes: usize = direct.iter().map(|op| self.op_size(op)).sum();
        if direct.len() <= limits.ops && direct_bytes <= limits.bytes {
            let mut ops = vec![commit_op(&state)];
            ops.extend(direct);
            self.run(&mut state, vec![Batch { guard: None, ops }], 1)
                .await?;
            self.records_written
                .fetch_add(encoded.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        drop(direct);

        // Stage: tentative values, new ranges in place, new versions aside.
        let guard = match state.counters {
            Some((index, _)) => Guard::CountersAt(index),
            None => Guard::NoCounters,
        };
        let staged: Vec<PlannedOp> = encoded
            .iter()
            .map(|(id, payload)| {
                let slot = if state.ranges.contains_key(id) {
                    RecordSlot::Pending(*id)
                } else {
                    RecordSlot::Range(*id)
                };
                PlannedOp::PutRecord {
                    slot,
                    expect: state.index(slot),
                    commit: Some(commit),
                    payload: Arc::clone(payload),
                }
            })
            .collect();
        let batches = pack(
            self.sized(staged).into_iter().map(|op| vec![op]).collect(),
            limits,
        )
        .into_iter()
        .map(|ops| Batch {
            guard: Some(guard),
            ops,
        })
        .collect();
        self.run(&mut state, batches, PARALLEL_TXNS).await?;
        if self.fault(FaultPoint::BeforeCommit) == Some(Fault::Stop) {
            return Err(PersistError::backend(
                "saving to Consul",
                "injected failure after staging",
            ));
        }

        // Commit.
        let commit_batch = Batch {
            guard: None,
            ops: vec![commit_op(&state)],
        };
        self.run(&mut state, vec![commit_batch], 1).await?;
        self.records_written
            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        if self.fault(FaultPoint::BeforeSettle) == Some(Fault::Stop) {
            return Err(PersistError::backend(
                "saving to Consul",
                "injected crash after commit",
            ));
        }

        // Settle. The change set is committed whatever happens here: what is left
        // unsettled, the next save settles first.
        let groups = encoded
            .iter()
            .filter_map(|(id, _)| self.settle_ops(&state, *id, Some(commit)))
            .map(|group| self.sized(group))
            .collect();
        let batches = pack(groups, limits)
            .into_iter()
            .map(|ops| Batch { guard: None, ops })
            .collect();
        if let Err(error) = self.run(&mut state, batches, PARALLEL_TXNS).await {
            tracing::warn!(%error, "settling a committed keyspace change failed; the next save retries");
        }
        Ok(())
    }

    /// Settles every committed tentative value and deletes every other one, so
    /// that a new commit cannot make an old attempt's values count. Each
    /// transaction rewrites the counters (same content, new write id): a writer
    /// whose leftovers these were can then no longer commit them.
    pub(super) async fn tidy(
        &self,
        state: &mut State,
        limits: BatchLimits,
    ) -> Result<(), PersistError> {
        if !state.has_leftovers() {
            return Ok(());
        }
        let current = state.current_commit();
        let ids: BTreeSet<u64> = state
            .unsettled
            .iter()
            .chain(state.pending.keys())
            .copied()
            .collect();
        let groups: Vec<_> = ids
            .into_iter()
            .filter_map(|id| self.settle_ops(state, id, current))
            .map(|group| self.sized(group))
            .collect();
        let count: usize = groups.iter().map(Vec::len).sum();
        tracing::info!(
            operations = count,
            "tidying leftovers of an interrupted keyspace save"
        );
        for ops in pack(groups, limits) {
            let (index, value) = match &state.counters {
                Some((index, value)) => (*index, value.clone()),
                None => (
                    0,
                    CountersValue {
                        commit: None,
                        write: 0,
                        counters: None,
                    },
                ),
            };
            let bump = PlannedOp::PutCounters {
                expect: index,
                value: CountersValue {
                    write: random_u64(),
                    ..value
                },
            };
            let mut batch_ops = vec![bump];
            batch_ops.extend(ops);
            self.run(
                state,
                vec![Batch {
                    guard: None,
                    ops: batch_ops,
                }],
                1,
            )
            .await?;
        }
        Ok(())
    }

    /// Learns whether each transaction in doubt was applied, from one key it
    /// wrote (the counters if it wrote them: their write id is unique), and
    /// records its effect if it was. A key changed by someone else is a conflict.
    pub(super) async fn resolve_in_doubt(&self, state: &mut State) -> Result<(), PersistError> {
        while let Some(batch) = state.in_doubt.first() {
            let probe = batch
                .ops
                .iter()
                .find(|op| matches!(op, PlannedOp::PutCounters { .. }))
                .or_else(|| {
                    batch.ops.iter().find(|op| {
                        matches!(
                            op,
                            PlannedOp::PutRecord {
                                commit: Some(_),
                                ..
                            }
                        )
                    })
                })
                .or_else(|| {
                    batch
                        .ops
                        .iter()
                        .find(|op| matches!(op, PlannedOp::PutRecord { .. }))
                });
            let applied_at = match probe {
                None => None,
                Some(op) => {
                    let key = self.op_key(op);
                    let found = self
                        .client
                        .kv_get(&key, QueryOptions::default())
                        .await
                        .map_err(|e| {
                            PersistError::backend(
                                format!("reading {key} to learn whether a write went through"),
                                e,
                            )
                        })?
                        .value;
                    match found {
                        None if op.expect() == 0 => None,
                        Some(pair) if pair.modify_index == op.expect() => None,
                        Some(pair) if Some(&pair.value) == self.op_value(op).as_ref() => {
                            Some(pair.modify_index)
                        }
                        _ => return Err(PersistError::Conflict { key }),
                    }
                }
            };
            let batch = state.in_doubt.remove(0);
            if let Some(index) = applied_at {
                tracing::info!(index, "a keyspace write in doubt was applied");
                for op in &batch.ops {
                    state.apply(op, index);
                }
            } else {
                tracing::info!("a keyspace write in doubt was not applied");
            }
        }
        Ok(())
    }
}
