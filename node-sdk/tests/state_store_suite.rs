//! The state store conformance suite, run against the SDK's own stores, and
//! against stores broken on purpose: each breakage must fail the check that is
//! about it, or the suite would pass stores it should not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ranger_node_sdk::testing::{Check, Durability, StateStoreSuite, StoreFactory};
use ranger_node_sdk::{FileStateStore, MemoryStateStore, StateStore, StateStoreError, StoredRange};
use ranger_proto::{Key, RangeId, RangeMeta, RemoteState};

/// Fresh memory stores (volatile: nothing to reopen).
struct Memory;

impl StoreFactory for Memory {
    type Store = MemoryStateStore;
    type Place = ();

    fn new_place(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn open(&mut self, _: &()) -> Result<MemoryStateStore, StateStoreError> {
        Ok(MemoryStateStore::new())
    }
}

/// A file store in a temporary directory of its own per check.
struct Files;

/// Where a file store lives: its directory (removed when the check ends) and file.
struct FilePlace {
    dir: tempfile::TempDir,
    file: PathBuf,
}

fn new_file_place() -> std::io::Result<FilePlace> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("ranges.json");
    Ok(FilePlace { dir, file })
}

/// Writes bytes that are not JSON where the ranges are kept.
fn corrupt_file(place: &FilePlace) -> std::io::Result<bool> {
    std::fs::write(&place.file, b"{not json")?;
    Ok(true)
}

/// Removes the directory out from under an open store: its next write cannot
/// create its temporary file (this works as root too, unlike permissions).
fn remove_dir(place: &FilePlace) -> std::io::Result<bool> {
    std::fs::remove_dir_all(place.dir.path())?;
    Ok(true)
}

impl StoreFactory for Files {
    type Store = FileStateStore;
    type Place = FilePlace;

    fn new_place(&mut self) -> std::io::Result<FilePlace> {
        new_file_place()
    }

    fn open(&mut self, place: &FilePlace) -> Result<FileStateStore, StateStoreError> {
        FileStateStore::open(&place.file)
    }

    fn corrupt(&mut self, place: &FilePlace, _: RangeId) -> std::io::Result<bool> {
        corrupt_file(place)
    }

    fn break_writes(&mut self, place: &FilePlace) -> std::io::Result<bool> {
        remove_dir(place)
    }
}

#[test]
fn the_memory_store_keeps_the_contract_of_a_volatile_store() {
    let report = StateStoreSuite::new(Memory, Durability::Volatile)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.skipped.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![
            Check::RangesSurviveAReopen,
            Check::TermSurvivesAReopen,
            Check::UnreadableRecordsAreErrors,
            Check::FailedWritesAreReported,
        ],
        "only what a volatile store cannot do is skipped"
    );
}

#[test]
fn the_file_store_passes_every_check() {
    let report = StateStoreSuite::new(Files, Durability::Durable)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.skipped.is_empty(), "{report:?}");
    assert_eq!(report.passed, Check::ALL.to_vec());
}

// --- Stores broken on purpose -----------------------------------------------------

/// One way of breaking the contract.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// A put keeps the range it replaces (an append-only log never compacted).
    KeepsReplacedCopies,
    /// Only the start bound is kept.
    LosesTheEndBound,
    /// Removing a range it does not hold is an error.
    RefusesAbsentRemovals,
    /// A remove forgets every range.
    RemoveForgetsEverything,
    /// A reopen starts from nothing.
    ForgetsOnReopen,
    /// Write errors are logged and dropped.
    SwallowsWriteErrors,
    /// A store that cannot be read starts empty instead.
    SkipsUnreadableRecords,
    /// The term methods keep their defaults: nothing is kept.
    KeepsNoTerm,
    /// Every range write puts the term back to 0.
    RangeWritesResetTheTerm,
    /// A put panics.
    PanicsOnPut,
    /// Every load also returns a range never put.
    ReturnsAPhantomRange,
    /// A removed range leaves a tombstone that ignores later puts of it.
    IgnoresPutsAfterARemove,
    /// A new store claims to have seen term 1.
    StartsAtTermOne,
}

impl Fault {
    const ALL: [Fault; 13] = [
        Fault::KeepsReplacedCopies,
        Fault::LosesTheEndBound,
        Fault::RefusesAbsentRemovals,
        Fault::RemoveForgetsEverything,
        Fault::ForgetsOnReopen,
        Fault::SwallowsWriteErrors,
        Fault::SkipsUnreadableRecords,
        Fault::KeepsNoTerm,
        Fault::RangeWritesResetTheTerm,
        Fault::PanicsOnPut,
        Fault::ReturnsAPhantomRange,
        Fault::IgnoresPutsAfterARemove,
        Fault::StartsAtTermOne,
    ];
}

/// A file store with one fault.
#[derive(Debug)]
struct Faulty {
    inner: FileStateStore,
    fault: Fault,
    /// Copies a [`Fault::KeepsReplacedCopies`] store still returns.
    replaced: Mutex<Vec<StoredRange>>,
    /// Ranges a [`Fault::IgnoresPutsAfterARemove`] store removed.
    tombstones: Mutex<BTreeSet<RangeId>>,
}

impl StateStore for Faulty {
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError> {
        let mut ranges = self.inner.load()?;
        ranges.extend(
            self.replaced
                .lock()
                .expect("no test panics holding it")
                .iter()
                .cloned(),
        );
        if self.fault == Fault::ReturnsAPhantomRange {
            ranges.push(StoredRange {
                meta: RangeMeta::whole(RangeId::new(99).expect("not zero")),
                state: RemoteState::Inactive,
            });
        }
        Ok(ranges)
    }

    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError> {
        let mut range = range.clone();
        match self.fault {
            Fault::KeepsReplacedCopies => {
                if let Some(old) = self
                    .inner
                    .load()?
                    .into_iter()
                    .find(|r| r.meta.id() == range.meta.id())
                {
                    self.replaced
                        .lock()
                        .expect("no test panics holding it")
                        .push(old);
                }
            }
            Fault::LosesTheEndBound => {
                range.meta =
                    RangeMeta::new(range.meta.id(), range.meta.start().clone(), Key::empty())
                        .expect("an unbounded end is always valid");
            }
            Fault::SwallowsWriteErrors => {
                let _ = self.inner.put(&range);
                return Ok(());
            }
            Fault::RangeWritesResetTheTerm => self.inner.put_term(0)?,
            Fault::PanicsOnPut => panic!("this store panics on put"),
            Fault::IgnoresPutsAfterARemove
                if self
                    .tombstones
                    .lock()
                    .expect("no test panics holding it")
                    .contains(&range.meta.id()) =>
            {
                return Ok(());
            }
            _ => {}
        }
        self.inner.put(&range)
    }

    fn remove(&self, id: RangeId) -> Result<(), StateStoreError> {
        match self.fault {
            Fault::RefusesAbsentRemovals
                if !self.inner.load()?.iter().any(|r| r.meta.id() == id) =>
            {
                Err(StateStoreError::Backend(format!(
                    "range {id} is not stored"
                )))
            }
            Fault::RemoveForgetsEverything => {
                for range in self.inner.load()? {
                    self.inner.remove(range.meta.id())?;
                }
                Ok(())
            }
            Fault::SwallowsWriteErrors => {
                let _ = self.inner.remove(id);
                Ok(())
            }
            Fault::RangeWritesResetTheTerm => {
                self.inner.put_term(0)?;
                self.inner.remove(id)
            }
            Fault::IgnoresPutsAfterARemove => {
                self.tombstones
                    .lock()
                    .expect("no test panics holding it")
                    .insert(id);
                self.inner.remove(id)
            }
            _ => self.inner.remove(id),
        }
    }

    fn load_term(&self) -> Result<u64, StateStoreError> {
        match self.fault {
            Fault::KeepsNoTerm => Ok(0),
            Fault::StartsAtTermOne => Ok(self.inner.load_term()?.max(1)),
            _ => self.inner.load_term(),
        }
    }

    fn put_term(&self, term: u64) -> Result<(), StateStoreError> {
        match self.fault {
            Fault::KeepsNoTerm => Ok(()),
            Fault::SwallowsWriteErrors => {
                let _ = self.inner.put_term(term);
                Ok(())
            }
            _ => self.inner.put_term(term),
        }
    }
}

/// Opens [`Faulty`] file stores.
struct FaultyFiles(Fault);

impl StoreFactory for FaultyFiles {
    type Store = Faulty;
    type Place = FilePlace;

    fn new_place(&mut self) -> std::io::Result<FilePlace> {
        new_file_place()
    }

    fn open(&mut self, place: &FilePlace) -> Result<Faulty, StateStoreError> {
        let inner = match self.0 {
            Fault::ForgetsOnReopen => {
                forget(&place.file)?;
                FileStateStore::open(&place.file)?
            }
            Fault::SkipsUnreadableRecords => match FileStateStore::open(&place.file) {
                Err(StateStoreError::Corrupt { .. }) => {
                    forget(&place.file)?;
                    FileStateStore::open(&place.file)?
                }
                other => other?,
            },
            _ => FileStateStore::open(&place.file)?,
        };
        Ok(Faulty {
            inner,
            fault: self.0,
            replaced: Mutex::new(Vec::new()),
            tombstones: Mutex::new(BTreeSet::new()),
        })
    }

    fn corrupt(&mut self, place: &FilePlace, _: RangeId) -> std::io::Result<bool> {
        corrupt_file(place)
    }

    fn break_writes(&mut self, place: &FilePlace) -> std::io::Result<bool> {
        remove_dir(place)
    }
}

/// Deletes what a file store kept (the ranges and the term beside them).
fn forget(file: &Path) -> Result<(), StateStoreError> {
    let mut term = file.as_os_str().to_owned();
    term.push(".term");
    for path in [file.to_path_buf(), PathBuf::from(term)] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateStoreError::Io { path, source }),
        }
    }
    Ok(())
}

/// Runs the suite on a store with `fault`, and returns the checks that failed.
fn failed_checks(fault: Fault) -> Vec<Check> {
    let failure = StateStoreSuite::new(FaultyFiles(fault), Durability::Durable)
        .run()
        .expect_err("a faulty store must not pass");
    failure.failures.iter().map(|f| f.check).collect()
}

#[test]
fn a_store_keeping_replaced_copies_fails_the_replace_check() {
    let failed = failed_checks(Fault::KeepsReplacedCopies);
    assert!(
        failed.contains(&Check::PutReplacesTheRangeWithTheSameId),
        "{failed:?}"
    );
}

#[test]
fn a_store_losing_the_end_bound_fails_the_exact_load_check() {
    let failed = failed_checks(Fault::LosesTheEndBound);
    assert!(failed.contains(&Check::RangesLoadBackExactly), "{failed:?}");
    assert!(
        !failed.contains(&Check::NewStoreIsEmpty),
        "only the checks the fault touches fail: {failed:?}"
    );
}

#[test]
fn a_store_refusing_absent_removals_fails_that_check_only() {
    assert_eq!(
        failed_checks(Fault::RefusesAbsentRemovals),
        vec![Check::RemovingAnAbsentRangeSucceeds]
    );
}

#[test]
fn a_store_whose_remove_forgets_everything_fails_the_remove_check() {
    let failed = failed_checks(Fault::RemoveForgetsEverything);
    assert!(
        failed.contains(&Check::RemoveForgetsOnlyThatRange),
        "{failed:?}"
    );
}

#[test]
fn a_store_forgetting_on_reopen_fails_both_durability_checks() {
    let failed = failed_checks(Fault::ForgetsOnReopen);
    assert!(failed.contains(&Check::RangesSurviveAReopen), "{failed:?}");
    assert!(failed.contains(&Check::TermSurvivesAReopen), "{failed:?}");
}

#[test]
fn a_store_swallowing_write_errors_fails_the_failed_writes_check() {
    assert_eq!(
        failed_checks(Fault::SwallowsWriteErrors),
        vec![Check::FailedWritesAreReported]
    );
}

#[test]
fn a_store_skipping_unreadable_records_fails_the_unreadable_records_check() {
    assert_eq!(
        failed_checks(Fault::SkipsUnreadableRecords),
        vec![Check::UnreadableRecordsAreErrors]
    );
}

#[test]
fn a_store_keeping_no_term_fails_the_term_checks_unless_the_suite_is_told() {
    let failed = failed_checks(Fault::KeepsNoTerm);
    assert!(
        failed.contains(&Check::TermReadsBackAsTheNewestPut),
        "{failed:?}"
    );
    assert!(failed.contains(&Check::TermSurvivesAReopen), "{failed:?}");

    let report = StateStoreSuite::new(FaultyFiles(Fault::KeepsNoTerm), Durability::Durable)
        .without_terms()
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.skipped.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![
            Check::NewStoreHasNoTerm,
            Check::TermReadsBackAsTheNewestPut,
            Check::TermAndRangesAreIndependent,
            Check::TermSurvivesAReopen,
        ]
    );
}

#[test]
fn a_store_whose_range_writes_reset_the_term_fails_the_independence_check() {
    let failed = failed_checks(Fault::RangeWritesResetTheTerm);
    assert!(
        failed.contains(&Check::TermAndRangesAreIndependent),
        "{failed:?}"
    );
}

#[test]
fn a_store_that_panics_fails_the_checks_it_panics_in_and_the_rest_still_run() {
    let failure = StateStoreSuite::new(FaultyFiles(Fault::PanicsOnPut), Durability::Durable)
        .run()
        .expect_err("a panicking store must not pass");
    assert!(failure.failed(Check::RangesLoadBackExactly), "{failure}");
    assert!(
        failure.report.passed.contains(&Check::NewStoreIsEmpty),
        "{failure:?}"
    );
    assert!(
        failure
            .to_string()
            .contains("ranges load back exactly as they were put"),
        "the report names the broken clause: {failure}"
    );
}

#[test]
fn a_store_returning_a_phantom_range_fails_the_new_store_check() {
    let failed = failed_checks(Fault::ReturnsAPhantomRange);
    assert!(failed.contains(&Check::NewStoreIsEmpty), "{failed:?}");
}

#[test]
fn a_store_ignoring_puts_after_a_remove_fails_that_check_only() {
    assert_eq!(
        failed_checks(Fault::IgnoresPutsAfterARemove),
        vec![Check::ARemovedRangeCanBeStoredAgain]
    );
}

#[test]
fn a_store_starting_at_term_one_fails_the_new_store_term_check() {
    let failed = failed_checks(Fault::StartsAtTermOne);
    assert!(failed.contains(&Check::NewStoreHasNoTerm), "{failed:?}");
}

#[test]
fn every_check_is_failed_by_some_broken_store() {
    let failed: BTreeSet<Check> = Fault::ALL.into_iter().flat_map(failed_checks).collect();
    let never_failed: Vec<Check> = Check::ALL
        .into_iter()
        .filter(|c| !failed.contains(c))
        .collect();
    assert!(
        never_failed.is_empty(),
        "checks no broken store fails (they could pass anything): {never_failed:?}"
    );
}
