//! Where the rangelet keeps its ranges' states, so that a restarted node comes back
//! with them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ranger_proto::{RangeId, RangeMeta, RemoteState};
use serde::{Deserialize, Serialize};

/// One range as the node last knew it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRange {
    pub meta: RangeMeta,
    pub state: RemoteState,
}

/// Why the state store failed. A failure to persist a state change fails the
/// command that caused it: the rangelet never reports a state it could not keep.
#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("state store I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store at {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state store backend error: {0}")]
    Backend(String),
}

/// A small durable map from range id to [`StoredRange`], plus the newest controller
/// term the node has seen.
///
/// Pluggable so that a storage system can keep its range states in its own database,
/// atomically with its data if it likes (the KV example keeps them in RocksDB).
/// Writes are small and rare (one per state change), so the methods are synchronous.
///
/// # The contract the rangelet relies on
///
/// The rangelet reads the store once, when it opens (restoring every kept range
/// Inactive, and dropping the ones left Preparing or Dropping), and writes it on
/// every state change, always under its own lock, so calls never overlap. For a
/// restarted node to come back holding exactly what it held:
///
/// - [`StateStore::load`] returns every range put and not removed since, each once,
///   exactly as it was put (id, both bounds byte for byte, state). A range lost or
///   with changed bounds would make the node forget data it holds or serve keys it
///   does not; a stale state would change how the restart resolves it.
/// - [`StateStore::put`] replaces whatever the store held for the same id: each
///   transition overwrites the last.
/// - [`StateStore::remove`] forgets that one range only, and succeeds for a range
///   the store does not hold (a restart may repeat a removal).
/// - The term is independent of the ranges: writing or removing ranges never
///   changes [`StateStore::load_term`], and the term is never loaded as a range.
/// - A durable store (every store but [`MemoryStateStore`]) returns all of the
///   above from a new instance opened on the same storage.
/// - Errors are surfaced, never swallowed: a write that did not reach storage
///   returns `Err` (the rangelet then refuses the command instead of reporting a
///   state it could not keep), and a record that cannot be read back fails
///   [`StateStore::load`] (or the store's opening) rather than being skipped,
///   which would silently forget a range.
///
/// [`crate::testing::StateStoreSuite`] checks all of this against any store.
pub trait StateStore: Send + Sync + 'static {
    /// Every stored range, in any order.
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError>;
    /// Inserts or replaces one range.
    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError>;
    /// Removes one range; removing an absent range is not an error.
    fn remove(&self, id: RangeId) -> Result<(), StateStoreError>;

    /// The newest controller term stored by [`StateStore::put_term`] (0: none).
    ///
    /// A node refuses commands from a term older than the newest it has seen
    /// (DESIGN.md §6, SCENARIOS.md #43); keeping that term across restarts means a
    /// deposed controller's command still in flight is refused by a node that
    /// restarted meanwhile. The default keeps nothing: a store that does not
    /// override both term methods makes a restarted node accept any term again
    /// until the current leader's next command reaches it.
    fn load_term(&self) -> Result<u64, StateStoreError> {
        Ok(0)
    }

    /// Stores `term` as the newest controller term (called only when it grows, so
    /// a store may simply overwrite: [`StateStore::load_term`] must then return
    /// `term`). The default keeps nothing (see [`StateStore::load_term`]).
    fn put_term(&self, term: u64) -> Result<(), StateStoreError> {
        let _ = term;
        Ok(())
    }
}

/// Keeps nothing across restarts: for storage systems whose data does not survive a
/// restart either (caches), and for tests.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    ranges: Mutex<BTreeMap<RangeId, StoredRange>>,
    term: Mutex<u64>,
}

impl MemoryStateStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryStateStore {
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError> {
        Ok(lock(&self.ranges).values().cloned().collect())
    }

    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError> {
        lock(&self.ranges).insert(range.meta.id(), range.clone());
        Ok(())
    }

    fn remove(&self, id: RangeId) -> Result<(), StateStoreError> {
        lock(&self.ranges).remove(&id);
        Ok(())
    }

    fn load_term(&self) -> Result<u64, StateStoreError> {
        Ok(*lock(&self.term))
    }

    fn put_term(&self, term: u64) -> Result<(), StateStoreError> {
        *lock(&self.term) = term;
        Ok(())
    }
}

/// A JSON file holding every range, replaced atomically (write to a temporary file,
/// fsync, rename) on each change, so a crash leaves either the old or the new file.
/// The newest controller term lives beside it, in `<file>.term` (a decimal number,
/// replaced the same way), so that the ranges file keeps the format older versions
/// read.
///
/// Fine for the tens to thousands of ranges a node holds; a storage system with its
/// own database should implement [`StateStore`] on it instead.
#[derive(Debug)]
pub struct FileStateStore {
    path: PathBuf,
    ranges: Mutex<BTreeMap<RangeId, StoredRange>>,
    term: Mutex<u64>,
}

impl FileStateStore {
    /// Opens (or creates on first write) the file at `path`, reading what it holds.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StateStoreError> {
        let path = path.into();
        let ranges = match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<StoredRange> =
                    serde_json::from_slice(&bytes).map_err(|e| StateStoreError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                list.into_iter().map(|r| (r.meta.id(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(StateStoreError::Io { path, source }),
        };
        let term_path = term_path(&path);
        let term = match std::fs::read_to_string(&term_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|e| StateStoreError::Corrupt {
                    path: term_path.clone(),
                    reason: format!("not a controller term: {e}"),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(StateStoreError::Io {
                    path: term_path,
                    source,
                });
            }
        };
        Ok(FileStateStore {
            path,
            ranges: Mutex::new(ranges),
            term: Mutex::new(term),
        })
    }

    fn write_all(&self, ranges: &BTreeMap<RangeId, StoredRange>) -> Result<(), StateStoreError> {
        let io = |source| StateStoreError::Io {
            path: self.path.clone(),
            source,
        };
        let list: Vec<&StoredRange> = ranges.values().collect();
        let bytes = serde_json::to_vec_pretty(&list)
            .map_err(|e| StateStoreError::Backend(e.to_string()))?;
        replace_file(&self.path, &bytes).map_err(io)
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over
/// `path`: a crash leaves the old or the new content, never a mix.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn term_path(path: &Path) -> PathBuf {
    with_suffix(path, ".term")
}

impl StateStore for FileStateStore {
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError> {
        Ok(lock(&self.ranges).values().cloned().collect())
    }

    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError> {
        let mut ranges = lock(&self.ranges);
        let mut next = ranges.clone();
        next.insert(range.meta.id(), range.clone());
        self.write_all(&next)?;
        *ranges = next;
        Ok(())
    }

    fn remove(&self, id: RangeId) -> Result<(), StateStoreError> {
        let mut ranges = lock(&self.ranges);
        if !ranges.contains_key(&id) {
            return Ok(());
        }
        let mut next = ranges.clone();
        next.remove(&id);
        self.write_all(&next)?;
        *ranges = next;
        Ok(())
    }

    fn load_term(&self) -> Result<u64, StateStoreError> {
        Ok(*lock(&self.term))
    }

    fn put_term(&self, term: u64) -> Result<(), StateStoreError> {
        let mut stored = lock(&self.term);
        let path = term_path(&self.path);
        replace_file(&path, term.to_string().as_bytes())
            .map_err(|source| StateStoreError::Io { path, source })?;
        *stored = term;
        Ok(())
    }
}

/// Locks a mutex, recovering from poisoning: the maps it guards are always left
/// consistent (every mutation is a single insert or remove), so a panic elsewhere
/// does not make them unusable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: u64, state: RemoteState) -> StoredRange {
        StoredRange {
            meta: RangeMeta::whole(RangeId::new(id).unwrap()),
            state,
        }
    }

    #[test]
    fn file_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        let store = FileStateStore::open(&path).unwrap();
        store.put(&stored(1, RemoteState::Active)).unwrap();
        store.put(&stored(2, RemoteState::Inactive)).unwrap();
        store.remove(RangeId::new(1).unwrap()).unwrap();
        drop(store);
        let reopened = FileStateStore::open(&path).unwrap();
        assert_eq!(
            reopened.load().unwrap(),
            vec![stored(2, RemoteState::Inactive)]
        );
    }

    #[test]
    fn file_store_keeps_the_newest_term_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        let store = FileStateStore::open(&path).unwrap();
        assert_eq!(store.load_term().unwrap(), 0);
        store.put_term(7).unwrap();
        store.put(&stored(1, RemoteState::Inactive)).unwrap();
        drop(store);
        let reopened = FileStateStore::open(&path).unwrap();
        assert_eq!(reopened.load_term().unwrap(), 7);
        assert_eq!(
            reopened.load().unwrap(),
            vec![stored(1, RemoteState::Inactive)]
        );
    }

    #[test]
    fn file_store_reports_a_corrupt_term() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        std::fs::write(dir.path().join("ranges.json.term"), b"seven").unwrap();
        let err = FileStateStore::open(&path).unwrap_err();
        assert!(matches!(err, StateStoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn file_store_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = FileStateStore::open(&path).unwrap_err();
        assert!(matches!(err, StateStoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn file_store_write_failure_keeps_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("ranges.json");
        let store = FileStateStore::open(&path).unwrap();
        assert!(store.put(&stored(1, RemoteState::Active)).is_err());
        assert!(store.load().unwrap().is_empty());
    }
}
