//! Start-up: load the keyspace from its store, or create it.

use crate::keyspace::{Keyspace, KeyspaceError};
use crate::persist::{PersistError, Persister};

/// Why the controller cannot start from its store.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("could not read the keyspace: {0}")]
    Persist(#[from] PersistError),
    /// The stored keyspace breaks an invariant (SCENARIOS.md #35): refuse to start
    /// rather than act on it.
    #[error("the stored keyspace is invalid, refusing to start: {0}")]
    Invalid(#[from] KeyspaceError),
}

/// Loads and validates the stored keyspace, or creates a new one (range 1 covers
/// everything) and saves it, so that the store is never empty once a controller
/// ran.
pub async fn load_keyspace<P: Persister>(persister: &P) -> Result<Keyspace, LoadError> {
    match persister.load().await? {
        Some((counters, records)) => Ok(Keyspace::from_records(counters, records)?),
        None => {
            let mut keyspace = Keyspace::new();
            let changes = keyspace.take_changes();
            persister.save(&changes).await?;
            tracing::info!("new keyspace created");
            Ok(keyspace)
        }
    }
}
