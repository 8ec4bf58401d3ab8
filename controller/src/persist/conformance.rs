//! One set of tests that every [`Persister`] must pass, in the manner of openraft's
//! storage suite: each backend's test module implements [`Harness`] and invokes
//! [`conformance_tests!`] with a function that returns a fresh, empty store (and
//! whatever must live as long as it, such as a temporary directory).

use ranger_proto::{Key, NodeId, PlacementState, RangeId, RangeState};

use super::{PersistError, Persister};
use crate::keyspace::{ChangeSet, Counters, Keyspace, RECORD_VERSION, RangeRecord};

/// What the suite needs beyond [`Persister`] to observe and disturb a backend.
pub(crate) trait Harness: Persister + Sized {
    /// Makes the next save fail partway, after the backend has begun writing if
    /// it can (so that atomicity is really tested).
    fn fail_next_save(&self);
    /// Records written by successful saves so far.
    fn records_written(&self) -> u64;
    /// Stores raw bytes as the record of range `id`.
    fn put_raw(&self, id: u64, bytes: &[u8]);
    /// Closes the store and opens it again, as a restarted controller would.
    async fn reopen(self) -> Self;
}

/// Generates one `#[tokio::test]` per conformance test for a backend.
macro_rules! conformance_tests {
    ($fresh:path) => {
        conformance::conformance_tests!(@each $fresh,
            empty_store_loads_nothing,
            save_then_load_round_trips,
            only_changed_records_are_written,
            failed_save_leaves_the_previous_state,
            reopen_keeps_everything,
            corrupt_records_are_named,
            stores_and_loads_100k_ranges
        );
    };
    (@each $fresh:path, $($test:ident),*) => {
        mod conformance_suite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, _guard) = $fresh();
                    $crate::persist::conformance::$test(store).await;
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;

/// A keyspace with history: 1 split into 2 and 3, finished; 3 placed on a node.
fn sample_keyspace() -> Keyspace {
    let mut ks = Keyspace::new();
    ks.split(RangeId::FIRST, "m".into()).unwrap();
    ks.finish_subsume(&[RangeId::FIRST]).unwrap();
    let r3 = RangeId::new(3).unwrap();
    let p = ks
        .add_placement(r3, NodeId::new("a").unwrap(), None)
        .unwrap();
    ks.set_placement_state(r3, p, PlacementState::Loading)
        .unwrap();
    ks
}

async fn load_some<P: Persister>(store: &P) -> (Counters, Vec<RangeRecord>) {
    store.load().await.unwrap().expect("the store was written")
}

pub(crate) async fn empty_store_loads_nothing<P: Harness>(store: P) {
    assert!(store.load().await.unwrap().is_none());
    assert_eq!(store.records_written(), 0);
}

pub(crate) async fn save_then_load_round_trips<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store.save(&ks.take_changes()).await.unwrap();
    let (counters, records) = load_some(&store).await;
    assert_eq!(counters, ks.counters());
    assert_eq!(
        records,
        ks.to_records(),
        "records come back whole, in id order"
    );
    let reloaded = Keyspace::from_records(counters, records).unwrap();
    assert_eq!(reloaded.to_records(), ks.to_records());
}

pub(crate) async fn only_changed_records_are_written<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store.save(&ks.take_changes()).await.unwrap();
    assert_eq!(store.records_written(), 3);
    let r2 = RangeId::new(2).unwrap();
    ks.add_placement(r2, NodeId::new("b").unwrap(), None)
        .unwrap();
    let changes = ks.take_changes();
    assert_eq!(changes.upserts.len(), 1);
    store.save(&changes).await.unwrap();
    assert_eq!(store.records_written(), 4, "one changed range, one record");
    // Counters alone are saved too.
    let empty = ChangeSet {
        counters: Counters {
            next_range_id: ks.counters().next_range_id + 5,
            ..ks.counters()
        },
        upserts: vec![],
    };
    store.save(&empty).await.unwrap();
    assert_eq!(store.records_written(), 4);
    let (counters, records) = load_some(&store).await;
    assert_eq!(counters, empty.counters);
    assert_eq!(records, ks.to_records(), "unchanged records are kept");
}

pub(crate) async fn failed_save_leaves_the_previous_state<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store.save(&ks.take_changes()).await.unwrap();
    let before = load_some(&store).await;
    // A change touching three ranges, so that a backend failing midway has
    // written some of them.
    let r3 = RangeId::new(3).unwrap();
    ks.split(r3, "t".into()).unwrap();
    let changes = ks.take_changes();
    assert_eq!(changes.upserts.len(), 3);
    store.fail_next_save();
    let err = store.save(&changes).await.unwrap_err();
    assert!(matches!(err, PersistError::Backend { .. }), "{err}");
    assert_eq!(load_some(&store).await, before, "all or nothing");
    // The caller requeues and retries.
    ks.requeue(&changes);
    store.save(&ks.take_changes()).await.unwrap();
    let (counters, records) = load_some(&store).await;
    assert_eq!((counters, records), (ks.counters(), ks.to_records()));
}

pub(crate) async fn reopen_keeps_everything<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store.save(&ks.take_changes()).await.unwrap();
    let store = store.reopen().await;
    let (counters, records) = load_some(&store).await;
    let reloaded = Keyspace::from_records(counters, records).unwrap();
    assert_eq!(reloaded.to_records(), ks.to_records());
    assert_eq!(reloaded.counters(), ks.counters());
    // And it keeps accepting changes.
    let mut reloaded = reloaded;
    reloaded
        .split(RangeId::new(2).unwrap(), "c".into())
        .unwrap();
    store.save(&reloaded.take_changes()).await.unwrap();
    let store = store.reopen().await;
    assert_eq!(load_some(&store).await.1.len(), 5);
}

pub(crate) async fn corrupt_records_are_named<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store.save(&ks.take_changes()).await.unwrap();
    let corrupt_key = |err: PersistError| match err {
        PersistError::Corrupt { key, detail } => (key, detail),
        other => panic!("expected Corrupt, got {other}"),
    };
    store.put_raw(2, b"{ not json");
    let (key, _) = corrupt_key(store.load().await.unwrap_err());
    assert_eq!(key, "range 2");

    let mut future = ks.to_records()[1].clone();
    future.v = RECORD_VERSION + 1;
    store.put_raw(2, &future.encode().unwrap());
    let (key, detail) = corrupt_key(store.load().await.unwrap_err());
    assert_eq!(key, "range 2");
    assert!(detail.contains("version 2"), "{detail}");

    // The record of range 3 stored under key 2.
    store.put_raw(2, &ks.to_records()[2].encode().unwrap());
    let (key, detail) = corrupt_key(store.load().await.unwrap_err());
    assert_eq!(key, "range 2");
    assert!(detail.contains("range 3"), "{detail}");
}

pub(crate) async fn stores_and_loads_100k_ranges<P: Harness>(store: P) {
    const N: u64 = 100_000;
    let key = |i: u64| Key::from(format!("k{i:08}"));
    let upserts = (1..=N)
        .map(|i| RangeRecord {
            v: RECORD_VERSION,
            id: RangeId::new(i).unwrap(),
            start: if i == 1 { Key::empty() } else { key(i) },
            end: if i == N { Key::empty() } else { key(i + 1) },
            state: RangeState::Active,
            parents: vec![],
            children: vec![],
            ever_activated: false,
            placements: vec![],
        })
        .collect();
    let changes = ChangeSet {
        counters: Counters {
            next_range_id: N + 1,
            next_placement_id: 1,
            term: 0,
        },
        upserts,
    };
    store.save(&changes).await.unwrap();
    assert_eq!(store.records_written(), N);
    let (counters, records) = load_some(&store).await;
    assert_eq!(records.len(), N as usize);
    let ks = Keyspace::from_records(counters, records).unwrap();
    assert_eq!(ks.current_len(), N as usize);
    assert_eq!(
        ks.range_for_key(b"k00050000x").unwrap().id(),
        RangeId::new(50_000).unwrap()
    );
}
