//! The conformance suite every [`Persister`] must pass (DESIGN.md §9: every
//! pluggable part has one public suite that every implementation runs), in the
//! manner of openraft's storage `Suite`.
//!
//! The controller's safety rests on its store more than on anything else:
//! DESIGN.md §4 invariant 4 (*durable intent*) holds only if a save is all or
//! nothing, if a restarted controller loads exactly what was saved, and if a
//! damaged store is reported rather than half-read. The in-tree backends
//! (memory, redb, Consul) run these checks; so should a third-party backend,
//! since the runtime assumes all of this of whatever it is given.
//!
//! To run it, implement [`Harness`] for the store (the few things the suite must
//! do to a store that the [`Persister`] trait does not offer), then invoke
//! [`persistence_suite!`](crate::persistence_suite) with an async function
//! that returns a fresh, empty store together with whatever must live as long as
//! it (a temporary directory, a test server; `()` if nothing). The macro writes
//! one `#[tokio::test]` per check, so each shows up, and fails, on its own; the
//! calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a
//! dev-dependency. Each check is also a plain `pub async fn` taking a fresh
//! store, for a harness that wants to drive them itself.
//!
//! ```no_run
//! # // A stand-in for a third-party store: a wrapper of the memory one.
//! # use ranger_controller::keyspace::ChangeSet;
//! # use ranger_controller::persist::{Loaded, MemoryPersister, PersistError, Persister};
//! # use ranger_controller::testing::persistence::Harness;
//! # #[derive(Clone)] struct MyStore(MemoryPersister);
//! # impl Persister for MyStore {
//! #     async fn load(&self) -> Result<Option<Loaded>, PersistError> { self.0.load().await }
//! #     async fn save(&self, c: &ChangeSet) -> Result<(), PersistError> { self.0.save(c).await }
//! # }
//! impl Harness for MyStore {
//!     fn fail_next_save(&self) { self.0.fail_next_saves(1) }
//!     fn records_written(&self) -> u64 { self.0.records_written() }
//!     async fn put_raw(&self, id: u64, bytes: &[u8]) { self.0.put_raw(id, bytes.to_vec()) }
//!     async fn reopen(self) -> Self { self }
//! }
//!
//! async fn fresh() -> (MyStore, ()) {
//!     (MyStore(MemoryPersister::new()), ())
//! }
//!
//! ranger_controller::persistence_suite!(fresh);
//! # fn main() {}
//! ```

use std::future::Future;

use ranger_proto::{Key, NodeId, PlacementState, RangeId, RangeState};

use crate::keyspace::{ChangeSet, Counters, Keyspace, RECORD_VERSION, RangeHistory, RangeRecord};
use crate::persist::{PersistError, Persister};

/// What the suite must do to a store beyond [`Persister`]: break a save, count
/// writes, damage stored bytes, restart. These are the situations the checks
/// are about, and no backend-neutral way exists to bring them about.
pub trait Harness: Persister + Sized {
    /// Makes the next save fail with [`PersistError::Backend`], after the
    /// backend has begun writing if it can (so that what is tested is that a
    /// failure midway leaves nothing behind, not that nothing was tried).
    fn fail_next_save(&self);

    /// Records written by successful saves through this handle (and the
    /// handles it was reopened from): how the suite checks that a save writes
    /// only the ranges that changed.
    fn records_written(&self) -> u64;

    /// Stores `bytes` as the record of range `id`, where and how the backend
    /// stores an encoded record, bypassing the encoding: how the suite checks
    /// that damaged data is reported with the range it belongs to.
    fn put_raw(&self, id: u64, bytes: &[u8]) -> impl Future<Output = ()> + Send;

    /// Closes the store and opens it again, as a restarted controller would,
    /// keeping [`Harness::records_written`].
    fn reopen(self) -> impl Future<Output = Self> + Send;
}

/// Writes one `#[tokio::test]` per check of [`testing::persistence`] for a
/// backend, in a module `persistence_suite`. `$fresh` is an async function
/// (found from the calling module) returning `(store, guard)`: a fresh, empty
/// store, and whatever must be kept alive as long as it.
///
/// [`testing::persistence`]: crate::testing::persistence
#[macro_export]
macro_rules! persistence_suite {
    ($fresh:path) => {
        $crate::persistence_suite!(@each $fresh,
            empty_store_loads_nothing,
            save_then_load_round_trips,
            only_changed_records_are_written,
            failed_save_leaves_the_previous_state,
            reopen_keeps_everything,
            corrupt_records_are_named,
            stores_and_loads_100k_ranges
        );
    };
    (@each $fresh:path, $($check:ident),*) => {
        mod persistence_suite {
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let (store, _guard) = $fresh().await;
                    $crate::testing::persistence::$check(store).await;
                }
            )*
        }
    };
}

/// Range `id`, for ids the suite knows to be valid.
fn range(id: u64) -> RangeId {
    RangeId::new(id).expect("range ids start at 1")
}

/// A keyspace with history: 1 split into 2 and 3, finished; 3 placed on a node.
fn sample_keyspace() -> Keyspace {
    let mut ks = Keyspace::new();
    ks.split(RangeId::FIRST, "m".into())
        .expect("a valid keyspace change");
    ks.finish_subsume(&[RangeId::FIRST])
        .expect("a valid keyspace change");
    let r3 = range(3);
    let p = ks
        .add_placement(r3, NodeId::new("a").expect("a valid node id"), None)
        .expect("a valid keyspace change");
    ks.set_placement_state(r3, p, PlacementState::Loading)
        .expect("a valid keyspace change");
    // The balancing history travels with the records (version 3).
    ks.note_history(r3, |h| {
        h.split = Some(1_796_000_000_000);
        h.moved = Some(1_796_000_060_000);
    })
    .expect("a valid keyspace change");
    ks
}

async fn load_some<P: Persister>(store: &P) -> (Counters, Vec<RangeRecord>) {
    store
        .load()
        .await
        .expect("the load succeeds")
        .expect("the store was written")
}

/// A store never written loads as `None`: how the controller tells a new
/// cluster (bootstrap the keyspace) from an existing one (load it).
pub async fn empty_store_loads_nothing<P: Harness>(store: P) {
    assert!(store.load().await.expect("the load succeeds").is_none());
    assert_eq!(store.records_written(), 0);
}

/// What is saved comes back whole and in range id order: the controller
/// rebuilds its keyspace from exactly what `load` returns.
pub async fn save_then_load_round_trips<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store
        .save(&ks.take_changes())
        .await
        .expect("the save succeeds");
    let (counters, records) = load_some(&store).await;
    assert_eq!(counters, ks.counters());
    assert_eq!(
        records,
        ks.to_records(),
        "records come back whole, in id order"
    );
    let reloaded =
        Keyspace::from_records(counters, records).expect("the loaded records form a keyspace");
    assert_eq!(reloaded.to_records(), ks.to_records());
}

/// A save writes the ranges of the change set and no others, and a change
/// set of counters alone is saved too: at 100k ranges, writing the keyspace
/// again on every change would make every operation slow.
pub async fn only_changed_records_are_written<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store
        .save(&ks.take_changes())
        .await
        .expect("the save succeeds");
    assert_eq!(store.records_written(), 3);
    let r2 = range(2);
    ks.add_placement(r2, NodeId::new("b").expect("a valid node id"), None)
        .expect("a valid keyspace change");
    let changes = ks.take_changes();
    assert_eq!(changes.upserts.len(), 1);
    store.save(&changes).await.expect("the save succeeds");
    assert_eq!(store.records_written(), 4, "one changed range, one record");
    // Counters alone are saved too.
    let empty = ChangeSet {
        counters: Counters {
            next_range_id: ks.counters().next_range_id + 5,
            ..ks.counters()
        },
        upserts: vec![],
    };
    store.save(&empty).await.expect("the save succeeds");
    assert_eq!(store.records_written(), 4);
    let (counters, records) = load_some(&store).await;
    assert_eq!(counters, empty.counters);
    assert_eq!(records, ks.to_records(), "unchanged records are kept");
}

/// A save that fails partway leaves the store as it was, and the same changes
/// saved again succeed: the runtime persists before it commands (DESIGN.md §4
/// invariant 4) and retries a failed save, so half of a change set must never
/// be loadable.
pub async fn failed_save_leaves_the_previous_state<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store
        .save(&ks.take_changes())
        .await
        .expect("the save succeeds");
    let before = load_some(&store).await;
    // A change touching three ranges, so that a backend failing midway has
    // written some of them.
    let r3 = range(3);
    ks.split(r3, "t".into()).expect("a valid keyspace change");
    let changes = ks.take_changes();
    assert_eq!(changes.upserts.len(), 3);
    store.fail_next_save();
    let err = store
        .save(&changes)
        .await
        .expect_err("the harness made this save fail");
    assert!(matches!(err, PersistError::Backend { .. }), "{err}");
    assert_eq!(load_some(&store).await, before, "all or nothing");
    // The caller requeues and retries.
    ks.requeue(&changes);
    store
        .save(&ks.take_changes())
        .await
        .expect("the save succeeds");
    let (counters, records) = load_some(&store).await;
    assert_eq!((counters, records), (ks.counters(), ks.to_records()));
}

/// What was saved survives a restart, and the reopened store keeps accepting
/// changes: a restarted controller must go on from where it stopped.
pub async fn reopen_keeps_everything<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store
        .save(&ks.take_changes())
        .await
        .expect("the save succeeds");
    let store = store.reopen().await;
    let (counters, records) = load_some(&store).await;
    let reloaded =
        Keyspace::from_records(counters, records).expect("the loaded records form a keyspace");
    assert_eq!(reloaded.to_records(), ks.to_records());
    assert_eq!(reloaded.counters(), ks.counters());
    // And it keeps accepting changes.
    let mut reloaded = reloaded;
    reloaded
        .split(range(2), "c".into())
        .expect("a valid keyspace change");
    store
        .save(&reloaded.take_changes())
        .await
        .expect("the save succeeds");
    let store = store.reopen().await;
    assert_eq!(load_some(&store).await.1.len(), 5);
}

/// Damaged, future-versioned or misplaced records are [`PersistError::Corrupt`]
/// naming the range's key, never a silent skip: a keyspace with a hole would
/// break the full cover (DESIGN.md §4 invariant 2), and an operator must know
/// where to look.
pub async fn corrupt_records_are_named<P: Harness>(store: P) {
    let mut ks = sample_keyspace();
    store
        .save(&ks.take_changes())
        .await
        .expect("the save succeeds");
    let corrupt_key = |err: PersistError| match err {
        PersistError::Corrupt { key, detail } => (key, detail),
        other => panic!("expected Corrupt, got {other}"),
    };
    store.put_raw(2, b"{ not json").await;
    let (key, _) = corrupt_key(
        store
            .load()
            .await
            .expect_err("a damaged store does not load"),
    );
    assert_eq!(key, "range 2");

    let current = ks.to_records()[1].encode().expect("a record encodes");
    let future = String::from_utf8(current)
        .expect("records are text")
        .replacen(
            &format!("\"v\":{RECORD_VERSION}"),
            &format!("\"v\":{}", RECORD_VERSION + 1),
            1,
        );
    store.put_raw(2, future.as_bytes()).await;
    let (key, detail) = corrupt_key(
        store
            .load()
            .await
            .expect_err("a damaged store does not load"),
    );
    assert_eq!(key, "range 2");
    assert!(
        detail.contains(&format!("version {}", RECORD_VERSION + 1)),
        "{detail}"
    );

    // The record of range 3 stored under key 2.
    store
        .put_raw(2, &ks.to_records()[2].encode().expect("a record encodes"))
        .await;
    let (key, detail) = corrupt_key(
        store
            .load()
            .await
            .expect_err("a damaged store does not load"),
    );
    assert_eq!(key, "range 2");
    assert!(detail.contains("range 3"), "{detail}");
}

/// 100,000 ranges are saved in one change set and loaded back: the scale the
/// controller is built for (DESIGN.md §10), where limits such as a backend's
/// transaction size are reached.
pub async fn stores_and_loads_100k_ranges<P: Harness>(store: P) {
    const N: u64 = 100_000;
    let key = |i: u64| Key::from(format!("k{i:08}"));
    let upserts = (1..=N)
        .map(|i| RangeRecord {
            v: RECORD_VERSION,
            id: range(i),
            start: if i == 1 { Key::empty() } else { key(i) },
            end: if i == N { Key::empty() } else { key(i + 1) },
            state: RangeState::Active,
            parents: vec![],
            children: vec![],
            ever_activated: false,
            placements: vec![],
            history: RangeHistory::default(),
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
    store.save(&changes).await.expect("the save succeeds");
    assert_eq!(store.records_written(), N);
    let (counters, records) = load_some(&store).await;
    assert_eq!(records.len(), N as usize);
    let ks = Keyspace::from_records(counters, records).expect("the loaded records form a keyspace");
    assert_eq!(ks.current_len(), N as usize);
    assert_eq!(
        ks.range_for_key(b"k00050000x")
            .expect("every key has a range")
            .id(),
        range(50_000)
    );
}
