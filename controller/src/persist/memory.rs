//! An in-memory persister for tests: the whole controller can run against it, and
//! tests can inject failures and count writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Loaded, PersistError, Persister, codec};
use crate::keyspace::{ChangeSet, Counters};

/// A store in memory. Clones share the same store, so a test can keep a handle,
/// "restart" a controller with another clone, and look at what was written.
///
/// Records are kept encoded, as a real backend keeps them, so that the encoding
/// and the corruption checks are exercised too.
#[derive(Debug, Clone, Default)]
pub struct MemoryPersister {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    counters: Option<Counters>,
    records: BTreeMap<u64, Vec<u8>>,
    fail_saves: usize,
    save_delay: std::time::Duration,
    records_written: u64,
    saves: u64,
}

impl MemoryPersister {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` saves fail with a backend error, writing nothing.
    pub fn fail_next_saves(&self, n: usize) {
        self.lock().fail_saves = n;
    }

    /// Makes every save take `delay` before it writes (a slow or overloaded
    /// store), until set back to zero.
    pub fn slow_saves(&self, delay: std::time::Duration) {
        self.lock().save_delay = delay;
    }

    /// How many records successful saves have written in total.
    pub fn records_written(&self) -> u64 {
        self.lock().records_written
    }

    /// How many saves succeeded.
    pub fn saves(&self) -> u64 {
        self.lock().saves
    }

    /// Stores raw bytes as the record of range `id`, bypassing encoding: for tests
    /// of corrupt stores (SCENARIOS.md #35).
    pub fn put_raw(&self, id: u64, bytes: Vec<u8>) {
        self.lock().records.insert(id, bytes);
    }

    /// Every mutation below is a whole insert done under the lock, so the state is
    /// consistent even if a holder panicked: poisoning is safe to ignore.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Persister for MemoryPersister {
    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        let state = self.lock();
        let Some(counters) = state.counters else {
            if let Some(key) = state.records.keys().next() {
                return Err(PersistError::Corrupt {
                    key: codec::record_key(*key),
                    detail: "records exist but the counters do not".into(),
                });
            }
            return Ok(None);
        };
        let records = state
            .records
            .iter()
            .map(|(key, bytes)| codec::decode(*key, bytes))
            .collect::<Result<_, _>>()?;
        Ok(Some((counters, records)))
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        let encoded = codec::encode_all(changes)?;
        let delay = self.lock().save_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.lock();
        if state.fail_saves > 0 {
            state.fail_saves -= 1;
            return Err(PersistError::backend(
                "saving to memory",
                "injected failure (MemoryPersister::fail_next_saves)",
            ));
        }
        state.records_written += encoded.len() as u64;
        state.saves += 1;
        state.counters = Some(changes.counters);
        state.records.extend(encoded);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::persistence::Harness;

    impl Harness for MemoryPersister {
        fn fail_next_save(&self) {
            self.fail_next_saves(1);
        }

        fn records_written(&self) -> u64 {
            MemoryPersister::records_written(self)
        }

        async fn put_raw(&self, id: u64, bytes: &[u8]) {
            MemoryPersister::put_raw(self, id, bytes.to_vec());
        }

        async fn reopen(self) -> Self {
            // A clone is another controller's handle on the same store.
            self.clone()
        }
    }

    async fn fresh() -> (MemoryPersister, ()) {
        (MemoryPersister::new(), ())
    }

    crate::persistence_suite!(fresh);

    #[tokio::test]
    async fn fails_exactly_the_requested_number_of_saves() {
        let p = MemoryPersister::new();
        let mut ks = crate::keyspace::Keyspace::new();
        let changes = ks.take_changes();
        p.fail_next_saves(2);
        assert!(p.save(&changes).await.unwrap_err().is_retryable());
        assert!(p.save(&changes).await.is_err());
        p.save(&changes).await.unwrap();
        assert_eq!(p.saves(), 1);
    }

    #[tokio::test]
    async fn records_without_counters_are_corrupt() {
        let p = MemoryPersister::new();
        p.put_raw(3, b"{}".to_vec());
        let err = p.load().await.unwrap_err();
        assert!(
            matches!(&err, PersistError::Corrupt { key, .. } if key == "range 3"),
            "{err}"
        );
    }
}
