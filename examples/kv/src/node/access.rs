//! Client access to a node's keys: the one place that asks the rangelet whether
//! a key may be served here and then reads or writes it, so that every RPC checks
//! the same things in the same order and refuses with the same status.

use ranger_node_sdk::{KeyRejection, Rangelet};
use ranger_proto::{RangeId, RemoteState};
use tonic::Status;

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
#[derive(Debug, thiserror::Error)]
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the write task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<AccessError> for Status {
    fn from(e: AccessError) -> Self {
        let message = e.to_string();
        match e {
            AccessError::EmptyKey => Status::invalid_argument(message),
            AccessError::NotOwned { .. }
            | AccessError::NotActive { .. }
            | AccessError::Fenced { .. }
            | AccessError::StoppedWriting { .. } => Status::failed_precondition(message),
            AccessError::Store(_) | AccessError::Task(_) => Status::internal(message),
        }
    }
}

impl KvNode {
    /// The range that serves `key` here. A key outside every range this node
    /// serves, or in a range that is not Active (it may be stale: another node
    /// may have taken over), or whose lease lapsed, is refused.
    fn route(&self, rangelet: &Rangelet<KvNode>, key: &str) -> Result<RangeId, AccessError> {
        if key.is_empty() {
            return Err(AccessError::EmptyKey);
        }
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
            })
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

    /// Runs a client write under the range's gate, re-checking that it may still
    /// be written once inside (a deactivation may have begun meanwhile). Returns
    /// only once the write is durable (in the synced WAL).
    ///
    /// The write runs on the blocking pool, so that concurrent writers wait for
    /// their fsync together (RocksDB commits them as a group) instead of each
    /// holding a runtime thread. The task owns the gate guard and records the
    /// write for transfers itself: a client that goes away cannot release the
    /// gate (and let a deactivation finish) while its write is still landing, nor
    /// leave a landed write unrecorded.
    pub async fn write(
        &self,
        rangelet: &Rangelet<KvNode>,
        key: String,
        op: WriteOp,
    ) -> Result<(), AccessError> {
        let range = self.route(rangelet, &key)?;
        let writing = self.gate(range).read_owned().await;
        if !rangelet.may_write(range) {
            return Err(AccessError::StoppedWriting { range });
        }
        let accepted_us = ack_log::now_us();
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let _writing = writing;
            match op {
                WriteOp::Put(value) => node.store().put(key.as_bytes(), &value),
                WriteOp::Delete => node.store().delete(key.as_bytes()),
            }?;
            node.wrote(range, key.as_bytes());
            if let Some(acks) = &node.inner.acks {
                acks.record(&ack_log::Ack {
                    key,
                    range: range.get(),
                    accepted_us,
                    acked_us: ack_log::now_us(),
                });
            }
            Ok(())
        })
        .await?
    }

    /// Notes a write of `key` in `range`: transfers track it, load counts it.
    fn wrote(&self, range: RangeId, key: &[u8]) {
        self.inner.trackers.record(key);
        self.inner.loads.wrote(range, key);
    }
}
