//! Client access to a node's keys: the one place that asks the rangelet whether
//! a key may be served here and then reads or writes it, so that every RPC checks
//! the same things in the same order and refuses with the same status.

use std::collections::BTreeMap;

use ranger_node_sdk::{KeyRejection, Rangelet};
use ranger_proto::{RangeId, RemoteState};
use tokio::sync::OwnedRwLockReadGuard;
use tonic::Status;

use crate::pb;

use super::replica::ReplicaWriteError;
use super::store::StoreError;
use super::{KvNode, ack_log};

/// A client write.
#[derive(Debug)]
pub enum WriteOp {
    Put(Vec<u8>),
    Delete,
}

/// Why a client read or write was refused or failed. Each maps to the status the
/// reference clients expect: they retry elsewhere on FAILED_PRECONDITION, so a
/// refusal must never look like a failure, and an empty key is their mistake.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccessError {
    #[error("empty key")]
    EmptyKey,
    #[error("key {key:?} is in no range this node serves")]
    NotOwned { key: String },
    #[error("range {range} holding key {key:?} is {state} here, not Active")]
    NotActive {
        range: RangeId,
        key: String,
        state: RemoteState,
    },
    #[error("range {range} is fenced: this node lost touch with the controller")]
    Fenced { range: RangeId },
    /// A deactivation began while the write waited for the range's gate.
    #[error("range {range} stopped serving writes")]
    StoppedWriting { range: RangeId },
    /// A replicated write was cut short by a change of the range's primary;
    /// it may have landed, and writes are idempotent: worth retrying.
    #[error("{0}")]
    Interrupted(String),
    /// The range is replicated and this copy is not its serving primary (it
    /// may lag): clients go to the primary.
    #[error("range {range} is replicated and served by its primary{}", primary_hint(.primary))]
    NotPrimary {
        range: RangeId,
        primary: Option<String>,
    },
    /// The RocksDB write (of one client write, or a batch's) failed: none of
    /// its writes landed.
    #[error("the write failed: {0}")]
    WriteFailed(String),
}

impl From<AccessError> for Status {
    fn from(e: AccessError) -> Self {
        let message = e.to_string();
        match e {
            AccessError::EmptyKey => Status::invalid_argument(message),
            AccessError::NotOwned { .. }
            | AccessError::NotActive { .. }
            | AccessError::Fenced { .. }
            | AccessError::StoppedWriting { .. }
            | AccessError::NotPrimary { .. } => Status::failed_precondition(message),
            AccessError::Interrupted(_) => Status::aborted(message),
            AccessError::WriteFailed(_) => Status::internal(message),
        }
    }
}

fn primary_hint(primary: &Option<String>) -> String {
    match primary {
        Some(primary) => format!(" at {primary}"),
        None => ", which none is right now".to_owned(),
    }
}

impl From<super::replica::NotPrimary> for AccessError {
    fn from(e: super::replica::NotPrimary) -> Self {
        AccessError::NotPrimary {
            range: e.range,
            primary: e.primary,
        }
    }
}

impl KvNode {
    /// The range that serves `key` here. A key outside every range this node
    /// serves, or in a range that is not Active (it may be stale: another node
    /// may have taken over), or whose lease lapsed, or a replicated range this
    /// copy is not the primary of, is refused.
    fn route(&self, rangelet: &Rangelet<KvNode>, key: &str) -> Result<RangeId, AccessError> {
        if key.is_empty() {
            return Err(AccessError::EmptyKey);
        }
        let range =
            rangelet
                .serving_range(key.as_bytes())
                .map_err(|rejection| match rejection {
                    KeyRejection::NotOwned(_) => AccessError::NotOwned {
                        key: key.to_owned(),
                    },
                    KeyRejection::NotActive { range, state } => AccessError::NotActive {
                        range,
                        key: key.to_owned(),
                        state,
                    },
                    KeyRejection::LeaseExpired { range } => AccessError::Fenced { range },
                })?;
        self.inner.replicas.check_client(&self.inner.store, range)?;
        Ok(range)
    }

    /// The range `key` may be read from here, counted as a read of it for load.
    pub fn read_range(
        &self,
        rangelet: &Rangelet<KvNode>,
        key: &str,
    ) -> Result<RangeId, AccessError> {
        let range = self.route(rangelet, key)?;
        self.inner.loads.read(range, key.as_bytes());
        Ok(range)
    }

    /// Runs a client write: [`KvNode::write_batch`] of one. Returns only once
    /// the write is durable (in the synced WAL).
    pub async fn write(
        &self,
        rangelet: &Rangelet<KvNode>,
        key: String,
        op: WriteOp,
    ) -> Result<(), AccessError> {
        self.write_batch(rangelet, vec![(key, op)])
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(AccessError::WriteFailed("no outcome for the write".into())))
    }

    /// Runs client writes (one, or a `kv.KV/Batch`'s) under their ranges'
    /// gates as one synced RocksDB write, so that they share one WAL sync and
    /// one trip to the blocking pool; each write gets its own outcome (a key
    /// this node does not serve is refused on its own; the others still land).
    ///
    /// The gates are taken shared in ascending range order: a deactivation
    /// waits for the writes in flight, and two batches never wait on each
    /// other's gates in a cycle. Whether each range may still be written is
    /// judged once every gate is held, with no wait before the write: a range
    /// allowed when its gate was taken may have stopped serving (or been
    /// fenced) while the batch waited for the next gate.
    ///
    /// The write runs on the blocking pool, so that concurrent writers wait
    /// for their fsync together (RocksDB commits them as a group) instead of
    /// each holding a runtime thread. The task owns the gate guards and records
    /// the writes for transfers and in the ack log itself: a client that goes
    /// away cannot release a gate (and let a deactivation finish) while its
    /// write is still landing, nor leave a landed write unrecorded.
    pub async fn write_batch(
        &self,
        rangelet: &Rangelet<KvNode>,
        writes: Vec<(String, WriteOp)>,
    ) -> Vec<Result<(), AccessError>> {
        let mut outcomes: Vec<Option<Result<(), AccessError>>> =
            writes.iter().map(|_| None).collect();
        let mut routed = Vec::with_capacity(writes.len());
        for (at, (key, op)) in writes.into_iter().enumerate() {
            match self.route(rangelet, &key) {
                Ok(range) => routed.push((at, range, key, op)),
                Err(e) => outcomes[at] = Some(Err(e)),
            }
        }
        let mut ranges: Vec<RangeId> = routed.iter().map(|(_, range, ..)| *range).collect();
        ranges.sort_unstable();
        ranges.dedup();
        let mut guards = Vec::with_capacity(ranges.len());
        for range in &ranges {
            guards.push((*range, self.gate(*range).read_owned().await));
        }
        let stopped: Vec<RangeId> = ranges
            .into_iter()
            .filter(|range| !rangelet.may_write(*range))
            .collect();
        let (refused, landing): (Vec<_>, Vec<_>) = routed
            .into_iter()
            .partition(|(_, range, ..)| stopped.contains(range));
        for (at, range, ..) in refused {
            outcomes[at] = Some(Err(AccessError::StoppedWriting { range }));
        }
        // A replicated range's writes go through its log (one entry per range);
        // the others land together in one local write.
        let (replicated, plain): (Vec<_>, Vec<_>) =
            landing.into_iter().partition(|(_, range, ..)| {
                self.inner.replicas.is_replicated(&self.inner.store, *range)
            });
        let (replicated_guards, plain_guards): (Vec<_>, Vec<_>) = guards
            .into_iter()
            .partition(|(range, _)| replicated.iter().any(|(_, r, ..)| r == range));
        let mut by_range: BTreeMap<RangeId, Vec<(usize, String, WriteOp)>> = BTreeMap::new();
        for (at, range, key, op) in replicated {
            by_range.entry(range).or_default().push((at, key, op));
        }
        let entries = replicated_guards.into_iter().filter_map(|(range, guard)| {
            let writes = by_range.remove(&range)?;
            Some(self.write_through_log(range, writes, guard))
        });
        let plain_write = self.write_locally(plain, plain_guards);
        let (logged, plain_outcomes) =
            futures::future::join(futures::future::join_all(entries), plain_write).await;
        for (at, outcome) in logged.into_iter().flatten().chain(plain_outcomes) {
            outcomes[at] = Some(outcome);
        }
        // Every op got its outcome above: refused when routed or at its gate,
        // or the outcome of the write it went into.
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(AccessError::WriteFailed("not applied".into()))))
            .collect()
    }

    /// Lands writes of ranges that are not replicated as one synced write, on
    /// the blocking pool; the task owns the gate guards and records the writes
    /// (see [`KvNode::write_batch`]). Each write's outcome, by its position.
    async fn write_locally(
        &self,
        landing: Vec<(usize, RangeId, String, WriteOp)>,
        guards: Vec<(RangeId, OwnedRwLockReadGuard<()>)>,
    ) -> Vec<(usize, Result<(), AccessError>)> {
        if landing.is_empty() {
            return Vec::new();
        }
        let landing_at: Vec<usize> = landing.iter().map(|(at, ..)| *at).collect();
        let accepted_us = ack_log::now_us();
        let node = self.clone();
        let landed = tokio::task::spawn_blocking(move || {
            let _writing = guards;
            let mut batch = rocksdb::WriteBatch::default();
            for (_, _, key, op) in &landing {
                match op {
                    WriteOp::Put(value) => batch.put(key.as_bytes(), value),
                    WriteOp::Delete => batch.delete(key.as_bytes()),
                }
            }
            node.store().write(batch)?;
            let acked_us = ack_log::now_us();
            for (_, range, key, _) in landing {
                node.wrote(range, key.as_bytes());
                node.record_ack(key, range, accepted_us, acked_us);
            }
            Ok::<(), StoreError>(())
        })
        .await;
        // One write: each op in it gets its outcome.
        let failure = match landed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(join) => Some(format!("the write task failed: {join}")),
        };
        landing_at
            .into_iter()
            .map(|at| {
                let outcome = match &failure {
                    None => Ok(()),
                    Some(reason) => Err(AccessError::WriteFailed(reason.clone())),
                };
                (at, outcome)
            })
            .collect()
    }

    /// Lands one replicated range's writes as one entry of its log (see
    /// [`super::replica`]). The entry runs in a task of its own that owns the
    /// range's gate guard: a client going away must not stop an entry half
    /// forwarded, nor release the gate while it lands.
    async fn write_through_log(
        &self,
        range: RangeId,
        writes: Vec<(usize, String, WriteOp)>,
        guard: OwnedRwLockReadGuard<()>,
    ) -> Vec<(usize, Result<(), AccessError>)> {
        let at: Vec<usize> = writes.iter().map(|(at, ..)| *at).collect();
        let node = self.clone();
        let accepted_us = ack_log::now_us();
        let landed = tokio::spawn(async move {
            let _writing = guard;
            let changes = writes
                .iter()
                .map(|(_, key, op)| match op {
                    WriteOp::Put(value) => pb::Change {
                        key: key.as_bytes().to_vec(),
                        value: value.clone(),
                        deleted: false,
                    },
                    WriteOp::Delete => pb::Change {
                        key: key.as_bytes().to_vec(),
                        value: Vec::new(),
                        deleted: true,
                    },
                })
                .collect();
            node.replicated_write(range, changes).await?;
            let acked_us = ack_log::now_us();
            for (_, key, _) in writes {
                node.inner.loads.wrote(range, key.as_bytes());
                node.record_ack(key, range, accepted_us, acked_us);
            }
            Ok::<(), ReplicaWriteError>(())
        })
        .await;
        let outcome = match landed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReplicaWriteError::NotPrimary(e))) => Err(AccessError::from(e)),
            Ok(Err(e @ ReplicaWriteError::Interrupted { .. })) => {
                Err(AccessError::Interrupted(e.to_string()))
            }
            Ok(Err(e)) => Err(AccessError::WriteFailed(e.to_string())),
            Err(join) => Err(AccessError::WriteFailed(format!(
                "the write task failed: {join}"
            ))),
        };
        at.into_iter().map(|at| (at, outcome.clone())).collect()
    }

    /// Logs an acknowledged write, when a fault drill asked for it.
    fn record_ack(&self, key: String, range: RangeId, accepted_us: u64, acked_us: u64) {
        if let Some(acks) = &self.inner.acks {
            acks.record(&ack_log::Ack {
                key,
                range: range.get(),
                accepted_us,
                acked_us,
            });
        }
    }

    /// Notes a write of `key` in `range`: transfers track it, load counts it.
    fn wrote(&self, range: RangeId, key: &[u8]) {
        self.inner.trackers.record(key);
        self.inner.loads.wrote(range, key);
    }
}
