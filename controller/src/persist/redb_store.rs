//! The embedded default backend: one redb database file, so that the controller
//! runs with nothing else installed.
//!
//! Layout: table `ranges` maps a range id (u64) to its JSON record; table `meta`
//! holds the schema version and the two counters. A save is one redb write
//! transaction, so it is atomic and durable when it returns. redb is blocking, so
//! every call runs on tokio's blocking pool.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{Loaded, PersistError, Persister, codec};
use crate::keyspace::{ChangeSet, Counters, RangeRecord};

const RANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("ranges");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_VERSION: &str = "schema_version";
const NEXT_RANGE_ID: &str = "next_range_id";
const NEXT_PLACEMENT_ID: &str = "next_placement_id";
const TERM: &str = "term";
/// The layout version of the file (the records carry their own version too).
const LAYOUT_VERSION: u64 = 1;

/// A keyspace store in one redb file. Clones share the open database.
#[derive(Clone)]
pub struct RedbPersister {
    db: Arc<Database>,
    path: PathBuf,
    records_written: Arc<AtomicU64>,
    #[cfg(test)]
    fail_next_saves: Arc<std::sync::atomic::AtomicUsize>,
}

impl fmt::Debug for RedbPersister {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbPersister")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbPersister {
    /// Opens the database at `path`, creating the file if it does not exist (its
    /// directory must). Blocks briefly: call it at start-up. redb allows one open
    /// handle per file, so a second controller on the same file fails here.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PersistError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path)
            .map_err(|e| PersistError::backend(format!("opening {}", path.display()), e))?;
        tracing::info!(path = %path.display(), "keyspace store opened");
        Ok(RedbPersister {
            db: Arc::new(db),
            path,
            records_written: Arc::new(AtomicU64::new(0)),
            #[cfg(test)]
            fail_next_saves: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many records saves through this handle have written: a metric, and how
    /// tests check that only changed records are written.
    pub fn records_written(&self) -> u64 {
        self.records_written.load(Ordering::Relaxed)
    }

    /// Test hook: whether to abort the next save halfway through its transaction.
    fn take_injected_failure(&self) -> bool {
        #[cfg(test)]
        {
            self.fail_next_saves
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
        #[cfg(not(test))]
        false
    }
}

impl Persister for RedbPersister {
    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || load_blocking(&db))
            .await
            .map_err(|e| PersistError::backend("loading the keyspace (task failed)", e))?
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        let db = Arc::clone(&self.db);
        let changes = changes.clone();
        let fail_midway = self.take_injected_failure();
        let written =
            tokio::task::spawn_blocking(move || save_blocking(&db, &changes, fail_midway))
                .await
                .map_err(|e| PersistError::backend("saving the keyspace (task failed)", e))??;
        self.records_written.fetch_add(written, Ordering::Relaxed);
        Ok(())
    }
}

fn load_blocking(db: &Database) -> Result<Option<Loaded>, PersistError> {
    let txn = db
        .begin_read()
        .map_err(|e| PersistError::backend("beginning a read", e))?;
    let meta = match txn.open_table(META) {
        Ok(table) => table,
        // Never saved: a new store.
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(PersistError::backend("opening the meta table", e)),
    };
    let get = |key: &str| -> Result<u64, PersistError> {
        meta.get(key)
            .map_err(|e| PersistError::backend(format!("reading meta {key}"), e))?
            .map(|v| v.value())
            .ok_or_else(|| PersistError::Corrupt {
                key: format!("meta {key}"),
                detail: "missing".into(),
            })
    };
    let layout = get(SCHEMA_VERSION)?;
    if layout != LAYOUT_VERSION {
        return Err(PersistError::Corrupt {
            key: format!("meta {SCHEMA_VERSION}"),
            detail: format!(
                "layout version {layout} is not supported (this build reads {LAYOUT_VERSION})"
            ),
        });
    }
    let counters = Counters {
        next_range_id: get(NEXT_RANGE_ID)?,
        next_placement_id: get(NEXT_PLACEMENT_ID)?,
        // Absent in stores written before terms existed.
        term: match meta.get(TERM) {
            Ok(value) => value.map_or(0, |v| v.value()),
            Err(e) => return Err(PersistError::backend(format!("reading meta {TERM}"), e)),
        },
    };
    let ranges = txn.open_table(RANGES).map_err(|e| match e {
        TableError::TableDoesNotExist(_) => PersistError::Corrupt {
            key: "table ranges".into(),
            detail: "missing while the meta table exists".into(),
        },
        e => PersistError::backend("opening the ranges table", e),
    })?;
    let records = decode_ranges(&ranges, codec::decoder_threads())?;
    tracing::debug!(records = records.len(), "keyspace store loaded");
    Ok(Some((counters, records)))
}

/// Every record of the table, in id order. Decoding is most of a restart's
/// load (JSON, and the pages a million records are decoded into), so a big
/// table is read in up to `decoders` id spans ([`codec::decoders_for`]), each
/// decoded on a thread of its own (see [`codec::decode_on_threads`]).
fn decode_ranges(
    ranges: &redb::ReadOnlyTable<u64, &[u8]>,
    decoders: usize,
) -> Result<Vec<RangeRecord>, PersistError> {
    let first = ranges
        .first()
        .map_err(read_error)?
        .map(|(id, _)| id.value());
    let last = ranges.last().map_err(read_error)?.map(|(id, _)| id.value());
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Vec::new());
    };
    // Range ids are dense (one counter, never freed), so equal id spans hold
    // about equal numbers of records.
    let ids = (last - first).saturating_add(1);
    let decoders = codec::decoders_for(ids, decoders) as u64;
    if decoders == 1 {
        return decode_span(ranges, first..=last);
    }
    let step = (last - first) / decoders + 1;
    let spans: Vec<_> = (0..decoders)
        .map(|i| {
            let start = first.saturating_add(i.saturating_mul(step));
            start..=start.saturating_add(step - 1).min(last)
        })
        // Rounding up the step may leave the last spans past the last id.
        .filter(|span| !span.is_empty())
        .collect();
    codec::decode_on_threads(spans, |span| decode_span(ranges, span))
}

fn read_error(e: redb::StorageError) -> PersistError {
    PersistError::backend("reading the ranges table", e)
}

/// The records whose ids are in `span`, decoded in id order.
fn decode_span(
    ranges: &redb::ReadOnlyTable<u64, &[u8]>,
    span: std::ops::RangeInclusive<u64>,
) -> Result<Vec<RangeRecord>, PersistError> {
    let mut records = Vec::new();
    for entry in ranges.range(span).map_err(read_error)? {
        let (key, value) = entry.map_err(|e| PersistError::backend("reading a range record", e))?;
        records.push(codec::decode(key.value(), value.value())?);
    }
    Ok(records)
}

/// Writes a change set in one transaction; returns how many records it wrote.
/// `fail_midway` (tests only) aborts after half of the records.
fn save_blocking(
    db: &Database,
    changes: &ChangeSet,
    fail_midway: bool,
) -> Result<u64, PersistError> {
    let encoded = codec::encode_all(changes)?;
    let txn = db
        .begin_write()
        .map_err(|e| PersistError::backend("beginning a write", e))?;
    let written = (|| {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| PersistError::backend("opening the meta table", e))?;
        let counters = changes.counters;
        for (key, value) in [
            (SCHEMA_VERSION, LAYOUT_VERSION),
            (NEXT_RANGE_ID, counters.next_range_id),
            (NEXT_PLACEMENT_ID, counters.next_placement_id),
            (TERM, counters.term),
        ] {
            meta.insert(key, value)
                .map_err(|e| PersistError::backend(format!("writing meta {key}"), e))?;
        }
        let mut ranges = txn
            .open_table(RANGES)
            .map_err(|e| PersistError::backend("opening the ranges table", e))?;
        for (i, (id, bytes)) in encoded.iter().enumerate() {
            if fail_midway && i == encoded.len() / 2 {
                return Err(PersistError::backend("saving to redb", "injected failure"));
            }
            ranges.insert(id, bytes.as_slice()).map_err(|e| {
                PersistError::backend(format!("writing {}", codec::record_key(*id)), e)
            })?;
        }
        Ok(encoded.len() as u64)
    })();
    match written {
        Ok(written) => {
            txn.commit()
                .map_err(|e| PersistError::backend("committing a write", e))?;
            Ok(written)
        }
        Err(e) => {
            if let Err(abort) = txn.abort() {
                tracing::warn!(error = %abort, "aborting a failed keyspace write");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::persistence::Harness;

    impl Harness for RedbPersister {
        fn fail_next_save(&self) {
            self.fail_next_saves.fetch_add(1, Ordering::SeqCst);
        }

        fn records_written(&self) -> u64 {
            RedbPersister::records_written(self)
        }

        async fn put_raw(&self, id: u64, bytes: &[u8]) {
            let txn = self.db.begin_write().unwrap();
            txn.open_table(RANGES).unwrap().insert(id, bytes).unwrap();
            txn.commit().unwrap();
        }

        async fn reopen(self) -> Self {
            let path = self.path.clone();
            let written = self.records_written();
            drop(self);
            let reopened = RedbPersister::open(path).unwrap();
            reopened.records_written.store(written, Ordering::Relaxed);
            reopened
        }
    }

    fn fresh() -> (RedbPersister, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = RedbPersister::open(dir.path().join("keyspace.redb")).unwrap();
        (p, dir)
    }

    async fn fresh_store() -> (RedbPersister, tempfile::TempDir) {
        fresh()
    }

    crate::persistence_suite!(fresh_store);

    /// A store of `n` settled ranges (ids 1 to n), saved through the persister.
    async fn store_of(n: u64) -> (RedbPersister, tempfile::TempDir, Vec<RangeRecord>) {
        let changes =
            crate::testing::synthetic::settled_keyspace(n, 3, crate::keyspace::RECORD_VERSION)
                .unwrap();
        let (p, dir) = fresh();
        p.save(&changes).await.unwrap();
        (p, dir, changes.upserts)
    }

    fn decode_with(p: &RedbPersister, decoders: usize) -> Result<Vec<RangeRecord>, PersistError> {
        let txn = p.db.begin_read().unwrap();
        let table = txn.open_table(RANGES).unwrap();
        decode_ranges(&table, decoders)
    }

    #[tokio::test]
    async fn a_load_decoded_on_several_threads_gives_every_record_in_id_order() {
        let (p, _dir, saved) = store_of(50).await;
        for decoders in [1, 2, 3, 7, 64] {
            assert_eq!(
                decode_with(&p, decoders).unwrap(),
                saved,
                "{decoders} decoders"
            );
        }
        let (_, loaded) = p.load().await.unwrap().unwrap();
        assert_eq!(loaded, saved);
    }

    #[tokio::test]
    async fn a_load_on_several_threads_reports_the_first_corrupt_record_in_id_order() {
        let (p, _dir, _) = store_of(50).await;
        // Corrupt records in the second and the last of three spans.
        p.put_raw(30, b"{").await;
        p.put_raw(45, b"[]").await;
        for decoders in [1, 3] {
            let err = decode_with(&p, decoders).unwrap_err();
            assert!(
                matches!(&err, PersistError::Corrupt { key, .. } if key == "range 30"),
                "{decoders} decoders: {err}"
            );
        }
    }

    #[test]
    fn opening_creates_a_missing_file_but_not_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.redb");
        RedbPersister::open(&path).unwrap();
        assert!(path.exists());
        let err = RedbPersister::open(dir.path().join("no/such/dir.redb")).unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }

    #[test]
    fn a_second_handle_on_the_same_file_is_refused() {
        let (p, _dir) = fresh();
        let err = RedbPersister::open(p.path()).unwrap_err();
        assert!(err.to_string().contains("opening"), "{err}");
    }

    #[tokio::test]
    async fn an_unsupported_layout_is_corrupt() {
        let (p, _dir) = fresh();
        p.save(&crate::keyspace::Keyspace::new().take_changes())
            .await
            .unwrap();
        let txn = p.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_VERSION, 9)
            .unwrap();
        txn.commit().unwrap();
        let err = p.load().await.unwrap_err();
        assert!(err.to_string().contains("layout version 9"), "{err}");
    }
}
