//! Record schema version 1: the serde-derived form, written by builds before
//! version 2. Keys are arrays of byte values and placements full objects, so a
//! record is large (about 300 bytes for a range with one placement) and slow to
//! decode; it is still read so that an older store loads, and written only when a
//! record asks for it (tests and benchmarks that need an old store).

use ranger_proto::{Key, RangeId, RangeState};
use serde::{Deserialize, Serialize};

use super::{RangeRecord, RecordError};
use crate::keyspace::{Placement, RangeHistory};

/// The stored shape of a version 1 record, field for field.
#[derive(Serialize, Deserialize)]
struct RecordV1 {
    v: u32,
    id: RangeId,
    start: Key,
    end: Key,
    state: RangeState,
    #[serde(default)]
    parents: Vec<RangeId>,
    #[serde(default)]
    children: Vec<RangeId>,
    #[serde(default)]
    ever_activated: bool,
    #[serde(default)]
    placements: Vec<Placement>,
}

/// Encodes `record` in version 1, whatever its `v`.
pub(super) fn encode(record: &RangeRecord) -> Result<Vec<u8>, RecordError> {
    let stored = RecordV1 {
        v: 1,
        id: record.id,
        start: record.start.clone(),
        end: record.end.clone(),
        state: record.state,
        parents: record.parents.clone(),
        children: record.children.clone(),
        ever_activated: record.ever_activated,
        placements: record.placements.clone(),
    };
    Ok(serde_json::to_vec(&stored)?)
}

/// Decodes a record whose `v` is known to be 1.
pub(super) fn decode(bytes: &[u8]) -> Result<RangeRecord, RecordError> {
    let stored: RecordV1 = serde_json::from_slice(bytes)?;
    Ok(RangeRecord {
        v: 1,
        id: stored.id,
        start: stored.start,
        end: stored.end,
        state: stored.state,
        parents: stored.parents,
        children: stored.children,
        ever_activated: stored.ever_activated,
        placements: stored.placements,
        history: RangeHistory::default(),
    })
}
