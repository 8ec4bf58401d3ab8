//! A conformance suite for [`StateStore`]s: what every store must do for the
//! rangelet to bring a restarted node back with exactly the ranges it held.
//!
//! The contract is written on [`StateStore`]; each [`Check`] tests one clause of
//! it. A storage system that keeps its range states in its own database runs the
//! suite from its tests against that store (the KV example does, against RocksDB),
//! so a store that passes can be trusted by the rangelet without reading the
//! rangelet's code. The SDK runs it against [`crate::MemoryStateStore`] and
//! [`crate::FileStateStore`].
//!
//! ```no_run
//! use ranger_node_sdk::testing::{Durability, StateStoreSuite, StoreFactory};
//! use ranger_node_sdk::{FileStateStore, StateStoreError};
//!
//! /// Each check gets a file of its own.
//! struct Files {
//!     made: u32,
//! }
//!
//! impl StoreFactory for Files {
//!     type Store = FileStateStore;
//!     type Place = std::path::PathBuf;
//!
//!     fn new_place(&mut self) -> std::io::Result<Self::Place> {
//!         // A real test would use a temporary directory that removes itself.
//!         self.made += 1;
//!         let dir = std::env::temp_dir().join(format!("states-{}-{}", std::process::id(), self.made));
//!         std::fs::create_dir_all(&dir)?;
//!         Ok(dir.join("ranges.json"))
//!     }
//!
//!     fn open(&mut self, place: &Self::Place) -> Result<Self::Store, StateStoreError> {
//!         FileStateStore::open(place)
//!     }
//! }
//!
//! let report = StateStoreSuite::new(Files { made: 0 }, Durability::Durable)
//!     .run()
//!     .expect("the file store keeps the state store contract");
//! assert!(report.skipped.is_empty(), "{report:?}");
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ranger_proto::{Key, RangeId, RangeMeta, RemoteState};

use crate::state_store::{StateStore, StateStoreError, StoredRange};

/// Where the suite gets its stores: a new, empty storage place for every check,
/// and stores opened on it, possibly several times, so that durability is checked
/// by reopening rather than by trusting the store's own cache.
pub trait StoreFactory {
    /// The store under test.
    type Store: StateStore;
    /// Where one store keeps what it stores (a temporary directory, a file path, a
    /// key prefix in a shared database). Dropped when its check ends, so a
    /// temporary directory cleans up after itself.
    type Place;

    /// A new, empty place, its own for one check: checks must not see each
    /// other's ranges.
    fn new_place(&mut self) -> std::io::Result<Self::Place>;

    /// Opens the store kept at `place`. The suite drops the store it opened there
    /// before opening it again, so a store that locks its storage (RocksDB) can be
    /// reopened.
    fn open(&mut self, place: &Self::Place) -> Result<Self::Store, StateStoreError>;

    /// Damages what the store at `place` keeps about `range` (the store is closed
    /// meanwhile), so that reading it back cannot succeed: bytes that do not parse
    /// where the record is. It may damage more than that one record. Returns
    /// `Ok(false)` if this factory cannot, and [`Check::UnreadableRecordsAreErrors`]
    /// is then skipped; a storage system knows its own layout and should.
    fn corrupt(&mut self, place: &Self::Place, range: RangeId) -> std::io::Result<bool> {
        let _ = (place, range);
        Ok(false)
    }

    /// Makes writes to `place` fail from now on, while a store is open on it (e.g.
    /// by removing the directory out from under it). Returns `Ok(false)` if this
    /// factory cannot, and [`Check::FailedWritesAreReported`] is then skipped.
    fn break_writes(&mut self, place: &Self::Place) -> std::io::Result<bool> {
        let _ = place;
        Ok(false)
    }
}

/// Whether a store must keep what it stored across a reopen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A new store opened on the same place returns everything the last one kept:
    /// what a storage system whose data survives a restart needs, or its restarted
    /// node would forget ranges it holds data for.
    Durable,
    /// Kept only while the store is open ([`crate::MemoryStateStore`], for
    /// storage systems whose data does not survive a restart either). The reopen
    /// and corruption checks are skipped.
    Volatile,
}

/// One clause of the [`StateStore`] contract. Its `Display` reads as a sentence,
/// so a failure report says what the store got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// A new store holds no ranges: a phantom range would be restored on this node
    /// and reported to the controller as held.
    NewStoreIsEmpty,
    /// Every state the rangelet persists, and bounds of every shape (the whole
    /// keyspace, unbounded on either side, bytes that are not UTF-8, the largest
    /// id), load back exactly as put, each range once.
    RangesLoadBackExactly,
    /// A put replaces what the store held for the same id, state and bounds: each
    /// transition overwrites the last, and a stale copy would be restored too.
    PutReplacesTheRangeWithTheSameId,
    /// A remove forgets that one range and leaves the others alone.
    RemoveForgetsOnlyThatRange,
    /// Removing a range the store does not hold (or no longer holds) succeeds:
    /// a restart may repeat a removal that already happened.
    RemovingAnAbsentRangeSucceeds,
    /// A range removed and put again is stored again: a range can move away from
    /// a node and later come back.
    ARemovedRangeCanBeStoredAgain,
    /// A new store's newest controller term is 0 (none seen).
    NewStoreHasNoTerm,
    /// `load_term` returns the term last put, up to `u64::MAX` (terms come from
    /// the wire): the node refuses commands from older terms (DESIGN.md §6,
    /// SCENARIOS.md #43), so a term read back smaller would let a deposed
    /// controller in again.
    TermReadsBackAsTheNewestPut,
    /// Writing or removing ranges never changes the term, and the term is never
    /// loaded as a range.
    TermAndRangesAreIndependent,
    /// A store reopened on the same place returns every range as the last one
    /// left it (after puts, replacements and removals), and writes made after a
    /// reopen keep what was there: a restarted node comes back with its ranges.
    RangesSurviveAReopen,
    /// A store reopened on the same place returns the newest term: a restarted
    /// node still refuses a deposed controller's late command.
    TermSurvivesAReopen,
    /// A record that cannot be read back fails opening or `load` instead of being
    /// skipped: a skipped range is one the node silently forgets.
    UnreadableRecordsAreErrors,
    /// A put, a remove or a term write that did not reach storage returns an
    /// error: the rangelet then refuses the command instead of reporting a state
    /// it could not keep.
    FailedWritesAreReported,
}

impl Check {
    /// Every check, in the order the suite runs them.
    pub const ALL: [Check; 13] = [
        Check::NewStoreIsEmpty,
        Check::RangesLoadBackExactly,
        Check::PutReplacesTheRangeWithTheSameId,
        Check::RemoveForgetsOnlyThatRange,
        Check::RemovingAnAbsentRangeSucceeds,
        Check::ARemovedRangeCanBeStoredAgain,
        Check::NewStoreHasNoTerm,
        Check::TermReadsBackAsTheNewestPut,
        Check::TermAndRangesAreIndependent,
        Check::RangesSurviveAReopen,
        Check::TermSurvivesAReopen,
        Check::UnreadableRecordsAreErrors,
        Check::FailedWritesAreReported,
    ];

    fn is_about_terms(self) -> bool {
        matches!(
            self,
            Check::NewStoreHasNoTerm
                | Check::TermReadsBackAsTheNewestPut
                | Check::TermAndRangesAreIndependent
                | Check::TermSurvivesAReopen
        )
    }

    fn needs_durability(self) -> bool {
        matches!(
            self,
            Check::RangesSurviveAReopen
                | Check::TermSurvivesAReopen
                | Check::UnreadableRecordsAreErrors
        )
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Check::NewStoreIsEmpty => "a new store holds no ranges",
            Check::RangesLoadBackExactly => "ranges load back exactly as they were put",
            Check::PutReplacesTheRangeWithTheSameId => "a put replaces the range with the same id",
            Check::RemoveForgetsOnlyThatRange => "a remove forgets only that range",
            Check::RemovingAnAbsentRangeSucceeds => "removing an absent range succeeds",
            Check::ARemovedRangeCanBeStoredAgain => "a removed range can be stored again",
            Check::NewStoreHasNoTerm => "a new store has no controller term",
            Check::TermReadsBackAsTheNewestPut => "the term reads back as the newest put",
            Check::TermAndRangesAreIndependent => "the term and the ranges are independent",
            Check::RangesSurviveAReopen => "ranges survive a reopen",
            Check::TermSurvivesAReopen => "the term survives a reopen",
            Check::UnreadableRecordsAreErrors => "unreadable records are errors",
            Check::FailedWritesAreReported => "failed writes are reported",
        })
    }
}

/// What a passing run checked, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteReport {
    /// Checks run and passed.
    pub passed: Vec<Check>,
    /// Checks not run, with why: a store's tests can assert this is empty, so
    /// that a factory losing a capability does not silently weaken the suite.
    pub skipped: Vec<(Check, &'static str)>,
}

/// One check the store failed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFailure {
    pub check: Check,
    pub problem: String,
}

/// The store broke its contract: every failed check, not just the first, so one
/// run shows the whole picture.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the state store failed {} check(s) of its contract:{}", .failures.len(), render(.failures))]
pub struct NonConformance {
    pub failures: Vec<CheckFailure>,
    /// What passed (and was skipped) alongside the failures.
    pub report: SuiteReport,
}

impl NonConformance {
    /// Whether `check` is among the failures.
    pub fn failed(&self, check: Check) -> bool {
        self.failures.iter().any(|f| f.check == check)
    }
}

fn render(failures: &[CheckFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("\n- {}: {}", f.check, f.problem))
        .collect()
}

/// Runs every [`Check`] against the stores a [`StoreFactory`] opens.
#[derive(Debug)]
pub struct StateStoreSuite<F> {
    factory: F,
    durability: Durability,
    terms: bool,
}

impl<F: StoreFactory> StateStoreSuite<F> {
    /// A suite for `factory`'s stores, checking durability across reopens if
    /// `durability` is [`Durability::Durable`].
    pub fn new(factory: F, durability: Durability) -> Self {
        StateStoreSuite {
            factory,
            durability,
            terms: true,
        }
    }

    /// For a store that keeps no controller term (it leaves
    /// [`StateStore::load_term`] and [`StateStore::put_term`] to their defaults):
    /// the term checks are skipped. Such a node accepts a deposed controller's
    /// commands again after a restart, until the leader's next command arrives.
    pub fn without_terms(mut self) -> Self {
        self.terms = false;
        self
    }

    /// Runs every check, each on a new place, and reports all that failed. A
    /// store that panics fails the check it panicked in (the panic message is
    /// printed as usual).
    pub fn run(mut self) -> Result<SuiteReport, NonConformance> {
        let mut report = SuiteReport {
            passed: Vec::new(),
            skipped: Vec::new(),
        };
        let mut failures = Vec::new();
        for check in Check::ALL {
            if check.is_about_terms() && !self.terms {
                report
                    .skipped
                    .push((check, "the store keeps no controller term"));
                continue;
            }
            if check.needs_durability() && self.durability == Durability::Volatile {
                report.skipped.push((check, "the store is volatile"));
                continue;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| self.run_one(check)))
                .unwrap_or_else(|_| Err(Problem::Failed("the store panicked".to_owned())));
            match outcome {
                Ok(()) => report.passed.push(check),
                Err(Problem::Unsupported(why)) => report.skipped.push((check, why)),
                Err(Problem::Failed(problem)) => failures.push(CheckFailure { check, problem }),
            }
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(NonConformance { failures, report })
        }
    }

    fn run_one(&mut self, check: Check) -> Result<(), Problem> {
        let place = self
            .factory
            .new_place()
            .map_err(|e| Problem::Failed(format!("the factory could not make a place: {e}")))?;
        let mut on = Place {
            factory: &mut self.factory,
            place: &place,
            terms: self.terms,
        };
        match check {
            Check::NewStoreIsEmpty => new_store_is_empty(&mut on),
            Check::RangesLoadBackExactly => ranges_load_back_exactly(&mut on),
            Check::PutReplacesTheRangeWithTheSameId => put_replaces(&mut on),
            Check::RemoveForgetsOnlyThatRange => remove_forgets_only_that_range(&mut on),
            Check::RemovingAnAbsentRangeSucceeds => removing_an_absent_range_succeeds(&mut on),
            Check::ARemovedRangeCanBeStoredAgain => a_removed_range_can_be_stored_again(&mut on),
            Check::NewStoreHasNoTerm => new_store_has_no_term(&mut on),
            Check::TermReadsBackAsTheNewestPut => term_reads_back_as_the_newest_put(&mut on),
            Check::TermAndRangesAreIndependent => term_and_ranges_are_independent(&mut on),
            Check::RangesSurviveAReopen => ranges_survive_a_reopen(&mut on),
            Check::TermSurvivesAReopen => term_survives_a_reopen(&mut on),
            Check::UnreadableRecordsAreErrors => unreadable_records_are_errors(&mut on),
            Check::FailedWritesAreReported => failed_writes_are_reported(&mut on),
        }
    }
}

/// Why a check did not pass.
enum Problem {
    Failed(String),
    /// The factory cannot do what the check needs.
    Unsupported(&'static str),
}

impl From<String> for Problem {
    fn from(problem: String) -> Self {
        Problem::Failed(problem)
    }
}

/// One check's place, with the factory that opens stores on it.
struct Place<'a, F: StoreFactory> {
    factory: &'a mut F,
    place: &'a F::Place,
    /// Whether the store keeps controller terms (see
    /// [`StateStoreSuite::without_terms`]).
    terms: bool,
}

impl<F: StoreFactory> Place<'_, F> {
    fn open(&mut self) -> Result<F::Store, String> {
        self.factory
            .open(self.place)
            .map_err(|e| format!("opening the store failed: {e}"))
    }
}

fn id(n: u64) -> RangeId {
    RangeId::new(n).expect("the suite's range ids are not zero")
}

/// A range `[start, end)`; the suite only builds valid bounds.
fn bounded(n: u64, start: &[u8], end: &[u8], state: RemoteState) -> StoredRange {
    let meta = RangeMeta::new(id(n), Key::new(start), Key::new(end))
        .expect("the suite's bounds are ordered");
    StoredRange { meta, state }
}

fn whole(n: u64, state: RemoteState) -> StoredRange {
    StoredRange {
        meta: RangeMeta::whole(id(n)),
        state,
    }
}

/// Every state the rangelet persists (NotFound is a removal, never a put).
const PERSISTED_STATES: [RemoteState; 6] = [
    RemoteState::Preparing,
    RemoteState::Inactive,
    RemoteState::Activating,
    RemoteState::Active,
    RemoteState::Deactivating,
    RemoteState::Dropping,
];

fn put(store: &impl StateStore, range: &StoredRange) -> Result<(), String> {
    store
        .put(range)
        .map_err(|e| format!("put of range {} failed: {e}", range.meta.id()))
}

fn remove(store: &impl StateStore, range: RangeId) -> Result<(), String> {
    store
        .remove(range)
        .map_err(|e| format!("remove of range {range} failed: {e}"))
}

fn put_term(store: &impl StateStore, term: u64) -> Result<(), String> {
    store
        .put_term(term)
        .map_err(|e| format!("put_term({term}) failed: {e}"))
}

fn load_term(store: &impl StateStore) -> Result<u64, String> {
    store
        .load_term()
        .map_err(|e| format!("load_term failed: {e}"))
}

/// Checks that `store` loads exactly `expected`, in any order, each once.
fn expect_ranges(
    store: &impl StateStore,
    expected: &[StoredRange],
    when: &str,
) -> Result<(), String> {
    let mut loaded = store
        .load()
        .map_err(|e| format!("load {when} failed: {e}"))?;
    let mut expected = expected.to_vec();
    loaded.sort_by_key(|r| r.meta.id());
    expected.sort_by_key(|r| r.meta.id());
    if loaded == expected {
        return Ok(());
    }
    let ids: Vec<RangeId> = loaded.iter().map(|r| r.meta.id()).collect();
    let unique: BTreeSet<RangeId> = ids.iter().copied().collect();
    let duplicates = if unique.len() == ids.len() {
        String::new()
    } else {
        " (some ranges more than once)".to_owned()
    };
    Err(format!(
        "load {when} returned {loaded:?}{duplicates}, expected {expected:?}"
    ))
}

fn expect_term(store: &impl StateStore, expected: u64, when: &str) -> Result<(), String> {
    let term = load_term(store)?;
    if term == expected {
        Ok(())
    } else {
        Err(format!(
            "load_term {when} returned {term}, expected {expected}"
        ))
    }
}

fn new_store_is_empty<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    expect_ranges(&store, &[], "on a new store")?;
    Ok(())
}

/// Ranges of every shape, in every persisted state.
fn every_shape() -> Vec<StoredRange> {
    let mut ranges = vec![
        whole(1, RemoteState::Active),
        bounded(2, b"a", b"b", RemoteState::Inactive),
        // Unbounded above, and below.
        bounded(3, b"m", b"", RemoteState::Preparing),
        bounded(4, b"", b"c", RemoteState::Dropping),
        // Bytes that are not UTF-8, and a zero byte, in both bounds.
        bounded(
            5,
            &[0x00, 0xff, 0xfe],
            &[0xff, 0xff, 0x00, 0x80],
            RemoteState::Activating,
        ),
        StoredRange {
            meta: RangeMeta::new(
                RangeId::MAX,
                Key::new(b"x".to_vec()),
                Key::new(b"y".to_vec()),
            )
            .expect("the suite's bounds are ordered"),
            state: RemoteState::Deactivating,
        },
    ];
    // Every persisted state on a bounded range too.
    for (n, state) in (10..).zip(PERSISTED_STATES) {
        let start = format!("k{n}");
        let end = format!("k{n}~");
        ranges.push(bounded(n, start.as_bytes(), end.as_bytes(), state));
    }
    ranges
}

fn ranges_load_back_exactly<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    let ranges = every_shape();
    for range in &ranges {
        put(&store, range)?;
    }
    expect_ranges(&store, &ranges, "after putting ranges of every shape")?;
    Ok(())
}

fn put_replaces<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    let other = bounded(9, b"q", b"r", RemoteState::Active);
    put(&store, &other)?;
    put(&store, &bounded(2, b"a", b"b", RemoteState::Preparing))?;
    let inactive = bounded(2, b"a", b"b", RemoteState::Inactive);
    put(&store, &inactive)?;
    expect_ranges(
        &store,
        &[other.clone(), inactive],
        "after a range's state was replaced",
    )?;
    let moved = bounded(2, b"a", b"z", RemoteState::Active);
    put(&store, &moved)?;
    expect_ranges(
        &store,
        &[other, moved],
        "after a range's bounds were replaced",
    )?;
    Ok(())
}

fn remove_forgets_only_that_range<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    let kept = [
        bounded(1, b"", b"g", RemoteState::Active),
        bounded(3, b"p", b"", RemoteState::Inactive),
    ];
    for range in &kept {
        put(&store, range)?;
    }
    put(&store, &bounded(2, b"g", b"p", RemoteState::Dropping))?;
    remove(&store, id(2))?;
    expect_ranges(&store, &kept, "after removing range 2 of 1, 2 and 3")?;
    Ok(())
}

fn removing_an_absent_range_succeeds<F: StoreFactory>(
    on: &mut Place<'_, F>,
) -> Result<(), Problem> {
    let store = on.open()?;
    remove(&store, id(7)).map_err(|e| format!("on a new store: {e}"))?;
    let kept = whole(1, RemoteState::Inactive);
    put(&store, &kept)?;
    put(&store, &whole(2, RemoteState::Dropping))?;
    remove(&store, id(2))?;
    remove(&store, id(2)).map_err(|e| format!("the second time: {e}"))?;
    remove(&store, id(7)).map_err(|e| format!("never stored: {e}"))?;
    expect_ranges(&store, &[kept], "after removing absent ranges")?;
    Ok(())
}

fn a_removed_range_can_be_stored_again<F: StoreFactory>(
    on: &mut Place<'_, F>,
) -> Result<(), Problem> {
    let store = on.open()?;
    put(&store, &bounded(4, b"d", b"e", RemoteState::Active))?;
    remove(&store, id(4))?;
    let back = bounded(4, b"d", b"e", RemoteState::Preparing);
    put(&store, &back)?;
    expect_ranges(&store, &[back], "after a removed range was put again")?;
    Ok(())
}

fn new_store_has_no_term<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    expect_term(&store, 0, "on a new store")?;
    Ok(())
}

fn term_reads_back_as_the_newest_put<F: StoreFactory>(
    on: &mut Place<'_, F>,
) -> Result<(), Problem> {
    let store = on.open()?;
    // Growing, as the rangelet puts them; the last is the largest the wire carries.
    for term in [1, 3, 7, 1 << 40, u64::MAX] {
        put_term(&store, term)?;
        expect_term(&store, term, &format!("after put_term({term})"))?;
    }
    Ok(())
}

fn term_and_ranges_are_independent<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    let kept = bounded(1, b"a", b"m", RemoteState::Active);
    put(&store, &kept)?;
    put(&store, &bounded(2, b"m", b"", RemoteState::Inactive))?;
    put_term(&store, 5)?;
    expect_ranges(
        &store,
        &[kept.clone(), bounded(2, b"m", b"", RemoteState::Inactive)],
        "after put_term",
    )?;
    put(&store, &bounded(3, b"", b"a", RemoteState::Preparing))?;
    expect_term(&store, 5, "after a put")?;
    remove(&store, id(2))?;
    remove(&store, id(3))?;
    expect_term(&store, 5, "after removes")?;
    expect_ranges(&store, &[kept], "after removes")?;
    Ok(())
}

fn ranges_survive_a_reopen<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    {
        let store = on.open()?;
        expect_ranges(&store, &[], "on a new store")?;
    }
    {
        let store = on.open()?;
        expect_ranges(&store, &[], "after reopening a store never written")?;
        for range in every_shape() {
            put(&store, &range)?;
        }
        // Replaced, and removed, before the reopen.
        put(&store, &whole(1, RemoteState::Inactive))?;
        remove(&store, id(2))?;
    }
    let mut expected: Vec<StoredRange> = every_shape()
        .into_iter()
        .filter(|r| r.meta.id() != id(2))
        .map(|r| {
            if r.meta.id() == id(1) {
                whole(1, RemoteState::Inactive)
            } else {
                r
            }
        })
        .collect();
    {
        let store = on.open()?;
        expect_ranges(&store, &expected, "after a reopen")?;
        // Writes after a reopen must keep what the reopened store found.
        let added = bounded(20, b"s", b"t", RemoteState::Preparing);
        put(&store, &added)?;
        remove(&store, id(3))?;
        expected.push(added);
        expected.retain(|r| r.meta.id() != id(3));
    }
    let store = on.open()?;
    expect_ranges(
        &store,
        &expected,
        "after writing to a reopened store and reopening",
    )?;
    Ok(())
}

fn term_survives_a_reopen<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    {
        let store = on.open()?;
        put_term(&store, 4)?;
        put(&store, &whole(1, RemoteState::Active))?;
    }
    {
        let store = on.open()?;
        expect_term(&store, 4, "after a reopen")?;
        put_term(&store, 9)?;
    }
    let store = on.open()?;
    expect_term(&store, 9, "after a second reopen")?;
    expect_ranges(
        &store,
        &[whole(1, RemoteState::Active)],
        "after reopens with terms",
    )?;
    Ok(())
}

fn unreadable_records_are_errors<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    {
        let store = on.open()?;
        put(&store, &bounded(1, b"", b"k", RemoteState::Active))?;
        put(&store, &bounded(2, b"k", b"", RemoteState::Inactive))?;
    }
    let corrupted = on
        .factory
        .corrupt(on.place, id(2))
        .map_err(|e| format!("the factory could not corrupt the store: {e}"))?;
    if !corrupted {
        return Err(Problem::Unsupported("the factory cannot corrupt a record"));
    }
    let Ok(store) = on.factory.open(on.place) else {
        // Refusing to open is a fine way to report it.
        return Ok(());
    };
    match store.load() {
        Err(_) => Ok(()),
        Ok(loaded) => Err(Problem::Failed(format!(
            "with range 2's record corrupt, the store opened and loaded {loaded:?} without an error"
        ))),
    }
}

fn failed_writes_are_reported<F: StoreFactory>(on: &mut Place<'_, F>) -> Result<(), Problem> {
    let store = on.open()?;
    put(&store, &whole(1, RemoteState::Active))?;
    let broken = on
        .factory
        .break_writes(on.place)
        .map_err(|e| format!("the factory could not break writes: {e}"))?;
    if !broken {
        return Err(Problem::Unsupported("the factory cannot make writes fail"));
    }
    let mut swallowed = Vec::new();
    if store.put(&whole(2, RemoteState::Preparing)).is_ok() {
        swallowed.push("put");
    }
    if store.remove(id(1)).is_ok() {
        swallowed.push("remove of a stored range");
    }
    if on.terms && store.put_term(3).is_ok() {
        swallowed.push("put_term");
    }
    if swallowed.is_empty() {
        Ok(())
    } else {
        Err(Problem::Failed(format!(
            "with writes failing, {} returned Ok",
            swallowed.join(", ")
        )))
    }
}
