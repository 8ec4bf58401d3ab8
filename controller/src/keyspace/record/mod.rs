//! The persisted form of the keyspace: one versioned record per range plus the id
//! counters, and the change sets that carry them to a [`crate::persist::Persister`].
//!
//! One record per range (rather than one blob) keeps a save proportional to what
//! changed, which matters at a million ranges, and maps onto one Consul key per range.
//!
//! # Versions
//!
//! A record is JSON with its schema version `v` as the first field, so that an
//! operator can read it with `consul kv get` and a record from another build is
//! reported by its version number, not as a parse error.
//!
//! - Version 3 (written by this build): version 2 plus the range's balancing
//!   history (`split`, `moved`, `joined`: wall-clock milliseconds, each left out
//!   when unknown; see [`super::RangeHistory`]), so that a controller taking
//!   over keeps the balancer's cooldowns. The same module reads and writes both.
//! - Version 2 ([`v2`]): keys as text (the key itself when
//!   printable, else `hex:...`), placements as short arrays, empty and false fields
//!   left out. About half the bytes of version 1 for a range with one placement, and
//!   about twice as fast to load.
//! - Version 1 ([`v1`]): the derived serde form, keys as arrays of byte values.
//!   Still read, so that a store written by an older build loads; every record
//!   saved again is written as version 2.

mod v1;
mod v2;

use ranger_proto::{Key, RangeId, RangeState};
use serde::{Deserialize, Serialize};

use super::{Placement, RangeHistory};

/// The schema version this build writes.
pub const RECORD_VERSION: u32 = 3;

/// Every schema version this build reads (and can write, see
/// [`RangeRecord::encode`]).
pub const READABLE_RECORD_VERSIONS: [u32; 3] = [1, 2, 3];

/// The id counters. Persisted with every change set, so that ids are never reused
/// after a restart, not even the ids of ranges whose creation was rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The id the next new range gets.
    pub next_range_id: u64,
    /// The id the next new placement gets.
    pub next_placement_id: u64,
    /// The controller term: bumped and persisted by every controller that
    /// starts (or becomes leader) before it sends anything, and carried by every
    /// command, so that nodes refuse a deposed controller's late commands
    /// (SCENARIOS.md #43). 0 in stores written before terms existed.
    #[serde(default)]
    pub term: u64,
}

/// Everything needed to rebuild one [`super::Range`], whatever the schema it is
/// stored in.
///
/// Bounds are stored as plain keys rather than a `RangeMeta`, so that loading goes
/// through `RangeMeta::new` and an inverted interval is reported, not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRecord {
    /// The schema version the record was read in, and the one [`RangeRecord::encode`]
    /// writes: [`RECORD_VERSION`] for every record the keyspace hands out.
    pub v: u32,
    pub id: RangeId,
    pub start: Key,
    pub end: Key,
    pub state: RangeState,
    pub parents: Vec<RangeId>,
    pub children: Vec<RangeId>,
    pub ever_activated: bool,
    pub placements: Vec<Placement>,
    /// Empty in records of versions 1 and 2, which cannot carry it.
    pub history: RangeHistory,
}

/// Why a stored record could not be decoded (or a record encoded).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record schema version {found} is not supported (this build reads versions 1 to {RECORD_VERSION})"
    )]
    UnsupportedVersion { found: u64 },
    #[error("record field `{field}` does not exist in schema version {version}")]
    FieldNotInVersion { field: &'static str, version: u32 },
    #[error("record has no schema version field `v`")]
    MissingVersion,
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl RangeRecord {
    /// Encodes the record as JSON in the schema its `v` names: version 3 for
    /// every record the keyspace hands out; versions 1 and 2 (which drop the
    /// history) only for tests and benchmarks that need a store as an older
    /// build wrote it.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        match self.v {
            1 => v1::encode(self),
            2 | 3 => v2::encode(self),
            other => Err(RecordError::UnsupportedVersion {
                found: u64::from(other),
            }),
        }
    }

    /// Decodes a record of any readable version, checking its schema version
    /// before anything else so that a record from a newer build is reported as
    /// such, not as a parse error. The record keeps the version it was read in.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        // What this build writes starts so: no need to look for `v` first.
        if bytes.starts_with(v2::PREFIX_V3) || bytes.starts_with(v2::PREFIX_V2) {
            return v2::decode(bytes);
        }
        #[derive(Deserialize)]
        struct Probe {
            v: Option<u64>,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        match probe.v {
            None => Err(RecordError::MissingVersion),
            Some(1) => v1::decode(bytes),
            Some(2 | 3) => v2::decode(bytes),
            Some(found) => Err(RecordError::UnsupportedVersion { found }),
        }
    }
}

/// What changed in the keyspace since the last [`super::Keyspace::take_changes`]:
/// the current counters and the full record of every range that changed. A
/// persister writes it atomically; ranges are never deleted (history is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub counters: Counters,
    /// Sorted by range id.
    pub upserts: Vec<RangeRecord>,
}

impl ChangeSet {
    /// Whether no range changed (the counters alone never change without a range).
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
    }
}

#[cfg(test)]
mod tests;
