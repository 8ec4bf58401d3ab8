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

/// A small durable map from range id to [`StoredRange`].
///
/// Pluggable so that a storage system can keep its range states in its own database,
/// atomically with its data if it likes (the KV example keeps them in RocksDB).
/// Writes are small and rare (one per state change), so the methods are synchronous.
pub trait StateStore: Send + Sync + 'static {
    /// Every stored range, in any order.
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError>;
    /// Inserts or replaces one range.
    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError>;
    /// Removes one range; removing an absent range is not an error.
    fn remove(&self, id: RangeId) -> Result<(), StateStoreError>;
}

/// Keeps nothing across restarts: for storage systems whose data does not survive a
/// restart either (caches), and for tests.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    ranges: Mutex<BTreeMap<RangeId, StoredRange>>,
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
}

/// A JSON file holding every range, replaced atomically (write to a temporary file,
/// fsync, rename) on each change, so a crash leaves either the old or the new file.
///
/// Fine for the tens to thousands of ranges a node holds; a storage system with its
/// own database should implement [`StateStore`] on it instead.
#[derive(Debug)]
pub struct FileStateStore {
    path: PathBuf,
    ranges: Mutex<BTreeMap<RangeId, StoredRange>>,
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
        Ok(FileStateStore {
            path,
            ranges: Mutex::new(ranges),
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
        let tmp = temp_path(&self.path);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        Ok(())
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
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
