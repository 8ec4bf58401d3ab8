//! Large settled keyspaces, for benchmarks and scale tests: `n` ranges tiling
//! the keyspace (`k0000000002`, `k0000000003`, ... as boundaries), range `i`
//! Active with one settled placement on node `n{i % nodes}`, in the record
//! schema asked for. One generator, so that every benchmark measures the same
//! shape of keyspace.

use ranger_proto::{ConversionError, Key, NodeId, RangeId, RangeState};

use crate::keyspace::{ChangeSet, Counters, Placement, PlacementId, RangeHistory, RangeRecord};

/// The change set that creates a settled keyspace of `n` ranges over `nodes`
/// nodes (at least one), every record in schema `version`.
pub fn settled_keyspace(n: u64, nodes: u64, version: u32) -> Result<ChangeSet, ConversionError> {
    let nodes = nodes.max(1);
    let key = |i: u64| Key::from(format!("k{i:010}"));
    let upserts = (1..=n)
        .map(|i| {
            Ok(RangeRecord {
                v: version,
                id: RangeId::new(i)?,
                start: if i == 1 { Key::empty() } else { key(i) },
                end: if i == n { Key::empty() } else { key(i + 1) },
                state: RangeState::Active,
                parents: vec![],
                children: vec![],
                ever_activated: true,
                placements: vec![Placement::settled(
                    PlacementId::new(i),
                    NodeId::new(format!("n{}", i % nodes))?,
                )],
                history: RangeHistory::default(),
            })
        })
        .collect::<Result<_, ConversionError>>()?;
    Ok(ChangeSet {
        counters: Counters {
            next_range_id: n + 1,
            next_placement_id: n + 1,
            term: 0,
        },
        upserts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::{Keyspace, RECORD_VERSION};

    #[test]
    fn a_settled_keyspace_loads_and_tiles_with_one_active_placement_per_range() {
        let changes = settled_keyspace(50, 7, RECORD_VERSION).expect("valid ids");
        let keyspace = Keyspace::from_records(changes.counters, changes.upserts).expect("loads");
        assert_eq!(keyspace.current_len(), 50);
        let on_n3 = keyspace
            .ranges()
            .filter(|r| r.placements()[0].node().as_str() == "n3")
            .count();
        assert_eq!(on_n3, 7, "ranges 3, 10, ..., 45 on n3");
    }
}
