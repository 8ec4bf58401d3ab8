//! Transaction planning: which KV operations a save needs and how they are packed
//! into Consul transactions, which hold at most 64 operations and 512 KiB
//! (DESIGN.md §8: batches within Consul's transaction limit). Pure apart from
//! reading the configured limits, so that the packing is unit-tested without a
//! Consul.
//!
//! Every operation is a compare-and-set on the index [`State`] remembers
//! (module docs of [`consul`](super), *Fencing and races*), which is why an
//! operation carries its expected index from the moment it is planned.

use std::sync::Arc;

use super::layout::{
    CommitId, CountersValue, MAX_HEADER_BYTES, RecordSlot, counters_value, record_value,
};
use super::state::{Entry, State};
use super::{Fault, FaultPoint, Inner};

/// What one operation adds to a transaction's JSON body besides its key and
/// base64 value (verb, index, field names, punctuation), rounded up.
pub(super) const OP_OVERHEAD_BYTES: usize = 128;
/// Room left in a transaction body for what the estimate misses.
pub(super) const BODY_MARGIN_BYTES: usize = 4096;

/// One KV operation, with what it means for [`State`].
#[derive(Clone, Debug)]
pub(super) enum PlannedOp {
    /// CAS the counters key.
    PutCounters { expect: u64, value: CountersValue },
    /// CAS a record key: settled if `commit` is `None`.
    PutRecord {
        slot: RecordSlot,
        expect: u64,
        commit: Option<CommitId>,
        payload: Arc<[u8]>,
    },
    /// Delete a record key if its index is still `expect`.
    Delete { slot: RecordSlot, expect: u64 },
}

impl PlannedOp {
    pub(super) fn expect(&self) -> u64 {
        match self {
            PlannedOp::PutCounters { expect, .. }
            | PlannedOp::PutRecord { expect, .. }
            | PlannedOp::Delete { expect, .. } => *expect,
        }
    }
}

/// A transaction to send: the counters check (for staging, which does not write
/// the counters) and its operations. The fence is added when it is sent.
#[derive(Clone, Debug)]
pub(super) struct Batch {
    pub(super) guard: Option<Guard>,
    pub(super) ops: Vec<PlannedOp>,
}

/// How a staging transaction checks that nobody wrote the counters meanwhile.
#[derive(Clone, Copy, Debug)]
pub(super) enum Guard {
    CountersAt(u64),
    NoCounters,
}

/// How large a transaction may grow: operations besides the fence and the
/// counters, and body bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct BatchLimits {
    pub(super) ops: usize,
    pub(super) bytes: usize,
}

/// The bytes of a base64-encoded value of `len` bytes.
pub(super) fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// Packs groups of operations (each group kept in one transaction) into as few
/// batches as the limits allow. A group larger than the limits goes alone.
pub(super) fn pack(
    groups: Vec<Vec<(PlannedOp, usize)>>,
    limits: BatchLimits,
) -> Vec<Vec<PlannedOp>> {
    let mut batches = Vec::new();
    let mut current: Vec<PlannedOp> = Vec::new();
    let mut bytes = 0;
    for group in groups {
        let group_bytes: usize = group.iter().map(|(_, size)| size).sum();
        if !current.is_empty()
            && (current.len() + group.len() > limits.ops || bytes + group_bytes > limits.bytes)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += group_bytes;
        current.extend(group.into_iter().map(|(op, _)| op));
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

impl Inner {
    pub(super) fn op_key(&self, op: &PlannedOp) -> String {
        match op {
            PlannedOp::PutCounters { .. } => self.counters_key(),
            PlannedOp::PutRecord { slot, .. } | PlannedOp::Delete { slot, .. } => {
                self.record_key(*slot)
            }
        }
    }

    /// The value an operation writes, if it writes one.
    pub(super) fn op_value(&self, op: &PlannedOp) -> Option<Vec<u8>> {
        match op {
            PlannedOp::PutCounters { value, .. } => Some(counters_value(value)),
            PlannedOp::PutRecord {
                commit, payload, ..
            } => Some(record_value(*commit, payload)),
            PlannedOp::Delete { .. } => None,
        }
    }

    /// What an operation adds to a transaction body, overestimated a little.
    pub(super) fn op_size(&self, op: &PlannedOp) -> usize {
        let value = match op {
            PlannedOp::PutCounters { .. } => MAX_HEADER_BYTES + 64,
            PlannedOp::PutRecord { payload, .. } => MAX_HEADER_BYTES + payload.len(),
            PlannedOp::Delete { .. } => 0,
        };
        OP_OVERHEAD_BYTES + self.prefix.len() + 32 + base64_len(value)
    }

    pub(super) fn sized(&self, ops: Vec<PlannedOp>) -> Vec<(PlannedOp, usize)> {
        ops.into_iter()
            .map(|op| {
                let size = self.op_size(&op);
                (op, size)
            })
            .collect()
    }

    /// The limits of this save's transactions (asks the fault hook, so call it
    /// once per save).
    pub(super) fn limits(&self) -> BatchLimits {
        let consul = self.client.config().limits;
        // Besides its operations, each transaction holds the counters (checked or
        // written) and the fence.
        let fixed = 1 + usize::from(self.fence.is_some());
        let fixed_bytes = self.op_size(&PlannedOp::PutCounters {
            expect: 0,
            value: CountersValue {
                commit: None,
                write: 0,
                counters: None,
            },
        }) + self.fence.as_ref().map_or(0, |f| {
            OP_OVERHEAD_BYTES + f.leader_key.len() + f.session_id.len()
        });
        let limits = BatchLimits {
            ops: consul.max_txn_ops.saturating_sub(fixed).max(1),
            bytes: consul
                .max_txn_request_bytes
                .saturating_sub(BODY_MARGIN_BYTES + fixed_bytes)
                .max(1),
        };
        if self.fault(FaultPoint::Batching) == Some(Fault::OneRecordPerTransaction) {
            return BatchLimits { ops: 1, ..limits };
        }
        limits
    }

    /// The operations that settle (if committed under `current`) or delete (if
    /// not) the tentative values stored for range `id`; `None` if it has none.
    /// They go in one transaction, so that the range never has neither.
    pub(super) fn settle_ops(
        &self,
        state: &State,
        id: u64,
        current: Option<CommitId>,
    ) -> Option<Vec<PlannedOp>> {
        let committed = |e: &Entry| {
            e.tentative
                .as_ref()
                .filter(|t| Some(t.commit) == current)
                .map(|t| Arc::clone(&t.payload))
        };
        let pending = state.pending.get(&id);
        let range = state.ranges.get(&id);
        let mut ops = Vec::new();
        if let Some(payload) = pending.and_then(committed) {
            ops.push(PlannedOp::PutRecord {
                slot: RecordSlot::Range(id),
                expect: range.map_or(0, |e| e.index),
                commit: None,
                payload,
            });
            ops.push(PlannedOp::Delete {
                slot: RecordSlot::Pending(id),
                expect: state.index(RecordSlot::Pending(id)),
            });
            return Some(ops);
        }
        if let Some(pending) = pending {
            ops.push(PlannedOp::Delete {
                slot: RecordSlot::Pending(id),
                expect: pending.index,
            });
        }
        if let Some(range) = range.filter(|e| e.tentative.is_some()) {
            ops.push(match committed(range) {
                Some(payload) => PlannedOp::PutRecord {
                    slot: RecordSlot::Range(id),
                    expect: range.index,
                    commit: None,
                    payload,
                },
                None => PlannedOp::Delete {
                    slot: RecordSlot::Range(id),
                    expect: range.index,
                },
            });
        }
        (!ops.is_empty()).then_some(ops)
    }
}
