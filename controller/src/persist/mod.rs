//! Persistence of the keyspace: where the desired state survives a controller
//! restart (DESIGN.md invariant 4: every change is persisted before any command
//! that depends on it is sent).
//!
//! A backend implements [`Persister`]: load everything once at start-up, then save
//! [`ChangeSet`]s, each atomically. Backends: [`MemoryPersister`] (tests),
//! [`RedbPersister`] (the embedded default, one controller), and
//! [`ConsulPersister`] (production, several controllers): one Consul key per
//! range, written in compare-and-set transactions on the ModifyIndex it
//! remembers from `load` and its own saves, each transaction checking the
//! leader's session ([`Fence`]). A change set larger than one Consul transaction
//! is staged, then committed by one write of the counters, so it is still all or
//! nothing. A lost race is [`PersistError::Conflict`], a lost session
//! [`PersistError::Fenced`]. All backends pass one conformance suite, which
//! is public (`testing::persistence`, with the `testing` feature) so that a
//! backend written elsewhere can pass it too.

mod codec;
pub mod consul;
mod memory;
mod redb_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use consul::{ConsulPersister, DEFAULT_PREFIX as DEFAULT_CONSUL_PREFIX, Fence, InvalidPrefix};
pub use memory::MemoryPersister;
pub use redb_store::RedbPersister;

use crate::keyspace::{ChangeSet, Counters, RangeRecord};

/// What a store holds: the counters and every range record, in range id order.
pub type Loaded = (Counters, Vec<RangeRecord>);

/// Why a load or save failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The backend failed (I/O, database, network). The save did not happen and
    /// may be retried.
    #[error("persistence backend failed while {context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored data cannot be read back. Retrying will not help; an operator must
    /// look at the named key.
    #[error("stored data under {key} is corrupt: {detail}")]
    Corrupt { key: String, detail: String },
    /// The write was refused because this controller no longer holds leadership
    /// (a compare-and-set backend's session check failed). It must stop writing.
    #[error("write fenced: this controller is no longer the leader ({detail})")]
    Fenced { detail: String },
    /// A compare-and-set on `key` failed: another writer changed it since this
    /// controller read it. Like `Fenced`, it means another controller took over.
    #[error("write conflict on {key}: it changed since this controller read it")]
    Conflict { key: String },
}

impl PersistError {
    /// A backend failure with what was being done.
    pub fn backend(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PersistError::Backend {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether retrying the same call may succeed. Corruption, fencing and
    /// conflicts are permanent for this controller.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PersistError::Backend { .. })
    }
}

/// A durable store of the keyspace.
///
/// Implementations are cheap to share (`Send + Sync`, usually a handle) and do
/// their blocking work off the async runtime's threads.
pub trait Persister: Send + Sync {
    /// Everything stored, or `None` if the store was never written (a new cluster).
    fn load(&self) -> impl Future<Output = Result<Option<Loaded>, PersistError>> + Send;

    /// Writes the counters and every record of `changes`, all or nothing.
    fn save(&self, changes: &ChangeSet) -> impl Future<Output = Result<(), PersistError>> + Send;
}

/// A boxed, `Send` future, for [`DynPersister`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`Persister`], for choosing a backend at run time
/// (`Box<dyn DynPersister>` from a command-line flag). Every `Persister` is one,
/// and `Box`/`Arc<dyn DynPersister>` are `Persister`s again.
pub trait DynPersister: Send + Sync {
    fn load_boxed(&self) -> BoxFuture<'_, Result<Option<Loaded>, PersistError>>;
    fn save_boxed<'a>(&'a self, changes: &'a ChangeSet) -> BoxFuture<'a, Result<(), PersistError>>;
}

impl<P: Persister> DynPersister for P {
    fn load_boxed(&self) -> BoxFuture<'_, Result<Option<Loaded>, PersistError>> {
        Box::pin(self.load())
    }

    fn save_boxed<'a>(&'a self, changes: &'a ChangeSet) -> BoxFuture<'a, Result<(), PersistError>> {
        Box::pin(self.save(changes))
    }
}

impl Persister for Box<dyn DynPersister> {
    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        self.as_ref().load_boxed().await
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        self.as_ref().save_boxed(changes).await
    }
}

impl Persister for Arc<dyn DynPersister> {
    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        self.as_ref().load_boxed().await
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        self.as_ref().save_boxed(changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::Keyspace;

    #[tokio::test]
    async fn a_boxed_backend_is_a_persister() {
        let memory = MemoryPersister::new();
        let boxed: Box<dyn DynPersister> = Box::new(memory.clone());
        let shared: Arc<dyn DynPersister> = Arc::new(memory.clone());
        let mut ks = Keyspace::new();
        boxed.save(&ks.take_changes()).await.unwrap();
        let (counters, records) = shared.load().await.unwrap().unwrap();
        assert_eq!(counters, ks.counters());
        assert_eq!(records, ks.to_records());
        assert_eq!(memory.saves(), 1);
    }

    #[test]
    fn only_backend_errors_are_retryable() {
        assert!(PersistError::backend("x", "y").is_retryable());
        assert!(
            !PersistError::Fenced {
                detail: "session lost".into()
            }
            .is_retryable()
        );
        assert!(
            !PersistError::Conflict {
                key: "range 1".into()
            }
            .is_retryable()
        );
    }
}
