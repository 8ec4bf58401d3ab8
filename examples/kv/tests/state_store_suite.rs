//! The KV node keeps its range states in its RocksDB (`RangeStates`), beside its
//! data, so that both survive a restart together. Its store runs the SDK's
//! conformance suite: the rangelet restores a restarted node from it, so it must
//! keep exactly what the rangelet relies on.

use ranger_kv::node::store::{RangeStates, Store};
use ranger_node_sdk::testing::{Check, Durability, StateStoreSuite, StoreFactory};
use ranger_node_sdk::{StateStore, StateStoreError};
use ranger_proto::RangeId;
use tempfile::TempDir;

/// The bookkeeping column family, and the key of one range's state in it: the
/// KV store's own layout, which only its own tests may know.
const RANGER_CF: &str = "ranger";

fn range_key(range: RangeId) -> Vec<u8> {
    let mut key = b"range/".to_vec();
    key.extend_from_slice(&range.get().to_be_bytes());
    key
}

/// A RocksDB of its own, in a temporary directory, per check.
struct Rocks;

impl StoreFactory for Rocks {
    type Store = RangeStates;
    type Place = TempDir;

    fn new_place(&mut self) -> std::io::Result<TempDir> {
        tempfile::tempdir()
    }

    fn open(&mut self, dir: &TempDir) -> Result<RangeStates, StateStoreError> {
        Store::open(dir.path())
            .map(RangeStates)
            .map_err(|e| StateStoreError::Backend(e.to_string()))
    }

    /// Overwrites the range's record with bytes that are not a stored range,
    /// through RocksDB directly (the store is closed meanwhile).
    fn corrupt(&mut self, dir: &TempDir, range: RangeId) -> std::io::Result<bool> {
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            dir.path(),
            [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, RANGER_CF],
        )
        .map_err(std::io::Error::other)?;
        let cf = db
            .cf_handle(RANGER_CF)
            .ok_or_else(|| std::io::Error::other("the ranger column family is missing"))?;
        let key = range_key(range);
        let found = db.get_cf(cf, &key).map_err(std::io::Error::other)?;
        if found.is_none() {
            return Err(std::io::Error::other(format!(
                "no record for range {range}: the KV store's layout changed, update this test"
            )));
        }
        db.put_cf(cf, &key, b"{not json")
            .map_err(std::io::Error::other)?;
        Ok(true)
    }
}

#[test]
fn the_rocksdb_range_states_keep_the_state_store_contract() {
    let report = StateStoreSuite::new(Rocks, Durability::Durable)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    // An open RocksDB keeps writing through its open files whatever happens to
    // its directory, so this factory has no way to make its writes fail.
    assert_eq!(
        report.skipped.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![Check::FailedWritesAreReported],
        "{report:?}"
    );
}

#[test]
fn a_corrupt_range_record_keeps_the_node_from_restoring_its_ranges() {
    // What the suite's corruption check relies on, seen from the store itself:
    // the record the factory damages is the one the store reads.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let range = RangeId::new(2).expect("not zero");
    {
        let states = Rocks.open(&dir).expect("a new store opens");
        states
            .put(&ranger_node_sdk::StoredRange {
                meta: ranger_proto::RangeMeta::whole(range),
                state: ranger_proto::RemoteState::Active,
            })
            .expect("put");
    }
    assert!(Rocks.corrupt(&dir, range).expect("corrupting works"));
    let states = Rocks.open(&dir).expect("RocksDB itself is intact");
    let err = states.load().expect_err("a corrupt record is an error");
    assert!(matches!(err, StateStoreError::Corrupt { .. }), "{err}");
}
