//! How far one copy follows its range's replica log, kept durably.
//!
//! The record is written in the same RocksDB write as the entry it describes
//! (see [`super::super::store::Store::write_with_replica_record`]), so after a
//! crash a copy's data and its sequence number always agree: a takeover can
//! trust what a member answers.

use prost::Message;
use ranger_proto::RangeId;

use crate::pb;

use super::super::store::{Store, StoreError};

/// A copy's place in the log: the epoch it follows, the last sequence number it
/// applied, and that entry itself (a new primary may need it; see
/// [`super`]'s takeover).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub epoch: u64,
    pub seq: u64,
    pub last: Option<pb::Entry>,
}

impl Record {
    /// Where a copy that holds the range's whole data starts following: before
    /// the first entry.
    pub fn start(epoch: u64, seq: u64) -> Record {
        Record {
            epoch,
            seq,
            last: None,
        }
    }

    /// The record once `entry` (the next one) is applied in `epoch`.
    pub fn after(epoch: u64, entry: pb::Entry) -> Record {
        Record {
            epoch,
            seq: entry.seq,
            last: Some(entry),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        pb::ReplicaRecord {
            epoch: self.epoch,
            seq: self.seq,
            last: self.last.clone(),
        }
        .encode_to_vec()
    }

    /// The record of `range` in `store`, if its copy follows a log.
    pub fn load(store: &Store, range: RangeId) -> Result<Option<Record>, StoreError> {
        let Some(bytes) = store.replica_record(range)? else {
            return Ok(None);
        };
        let record =
            pb::ReplicaRecord::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
                key: format!("replica/{range}"),
                reason: e.to_string(),
            })?;
        Ok(Some(Record {
            epoch: record.epoch,
            seq: record.seq,
            last: record.last,
        }))
    }

    /// Stores the record alone (an attach or a new epoch; entries are stored
    /// with their data instead).
    pub fn save(&self, store: &Store, range: RangeId) -> Result<(), StoreError> {
        store.set_replica_record(range, Some(&self.encode()))
    }
}
