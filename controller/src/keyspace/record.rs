//! The persisted form of the keyspace: one versioned record per range plus the id
//! counters, and the change sets that carry them to a [`crate::persist::Persister`].
//!
//! One record per range (rather than one blob) keeps a save proportional to what
//! changed, which matters at a million ranges, and maps onto one Consul key per range.

use ranger_proto::{Key, RangeId, RangeState};
use serde::{Deserialize, Serialize};

use super::Placement;

/// The schema version this build writes and the only one it reads.
pub const RECORD_VERSION: u32 = 1;

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

/// Everything needed to rebuild one [`super::Range`], in the stored schema.
///
/// Bounds are stored as plain keys rather than a `RangeMeta`, so that loading goes
/// through `RangeMeta::new` and an inverted interval is reported, not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRecord {
    /// Schema version; always [`RECORD_VERSION`] when written by this build.
    pub v: u32,
    pub id: RangeId,
    pub start: Key,
    pub end: Key,
    pub state: RangeState,
    #[serde(default)]
    pub parents: Vec<RangeId>,
    #[serde(default)]
    pub children: Vec<RangeId>,
    #[serde(default)]
    pub ever_activated: bool,
    #[serde(default)]
    pub placements: Vec<Placement>,
}

/// Why a stored record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record schema version {found} is not supported (this build reads version {RECORD_VERSION})"
    )]
    UnsupportedVersion { found: u64 },
    #[error("record has no schema version field `v`")]
    MissingVersion,
    #[error("malformed record: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl RangeRecord {
    /// Encodes the record as JSON: readable with `consul kv get` or a redb dump,
    /// which is worth more to an operator than the bytes a binary format would save.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Decodes a record, checking its schema version before anything else so that
    /// a record from a newer build is reported as such, not as a parse error.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct Probe {
            v: Option<u64>,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        match probe.v {
            None => Err(RecordError::MissingVersion),
            Some(v) if v == u64::from(RECORD_VERSION) => Ok(serde_json::from_slice(bytes)?),
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
mod tests {
    use super::*;

    fn record() -> RangeRecord {
        RangeRecord {
            v: RECORD_VERSION,
            id: RangeId::FIRST,
            start: Key::empty(),
            end: Key::from("m"),
            state: RangeState::Active,
            parents: vec![],
            children: vec![],
            ever_activated: false,
            placements: vec![],
        }
    }

    #[test]
    fn round_trips() {
        let r = record();
        assert_eq!(RangeRecord::decode(&r.encode().unwrap()).unwrap(), r);
    }

    #[test]
    fn rejects_other_versions_by_number() {
        let mut r = record();
        r.v = 2;
        let err = RangeRecord::decode(&r.encode().unwrap()).unwrap_err();
        assert!(
            matches!(err, RecordError::UnsupportedVersion { found: 2 }),
            "{err}"
        );
        assert!(err.to_string().contains("version 2"));
    }

    #[test]
    fn rejects_missing_version_and_garbage() {
        assert!(matches!(
            RangeRecord::decode(br#"{"id":1}"#),
            Err(RecordError::MissingVersion)
        ));
        assert!(matches!(
            RangeRecord::decode(b"not json"),
            Err(RecordError::Malformed(_))
        ));
        // Right version, wrong shape: a zero range id is refused by RangeId itself.
        assert!(matches!(
            RangeRecord::decode(br#"{"v":1,"id":0,"start":[],"end":[],"state":"Active"}"#),
            Err(RecordError::Malformed(_))
        ));
    }
}
