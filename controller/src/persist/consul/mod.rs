//! The production backend: the keyspace in Consul's KV store, one key per range,
//! written in compare-and-set transactions fenced by the leader's session
//! (DESIGN.md §5 HA, §8).
//!
//! # Layout
//!
//! Under a prefix (default [`DEFAULT_PREFIX`], `ranger/keyspace/`), used by this
//! backend alone:
//!
//! | key | value |
//! |---|---|
//! | `<prefix>counters` | `v1 commit=<hex16\|none> write=<hex16>\n` + the [`Counters`] as JSON (nothing after the line when `commit=none`) |
//! | `<prefix>ranges/<id, 20 digits>` | `v1\n` + the range's record (a *settled* record), or `v1 commit=<hex16>\n` + the record (a *tentative* one) |
//! | `<prefix>pending/<id, 20 digits>` | `v1 commit=<hex16>\n` + the record: a tentative new version of an existing range |
//!
//! Every value is one ASCII header line, then the payload: the shared codec's
//! bytes (JSON today), taken as they are, so values are binary-safe. The leading
//! `v1` is the layout version; any other version is [`PersistError::Corrupt`]
//! naming the Consul key, as is any other key under the prefix. Ids are
//! zero-padded so that Consul lists ranges in id order and `consul kv get
//! -recurse` stays readable.
//!
//! # Atomicity
//!
//! A change set is saved atomically whatever its size, although one Consul
//! transaction holds at most 64 operations and 512 KiB:
//!
//! - If it fits in one transaction (the usual case: a split touches three ranges),
//!   it is one: settled records and the counters, with a new commit id.
//! - Otherwise it is a small two-phase commit. *Stage*: each record is written as
//!   a tentative value carrying a fresh random commit id, in batches (a new range
//!   straight at `ranges/<id>`, a new version of an existing range at
//!   `pending/<id>`, so that its committed version is untouched). *Commit*: one
//!   transaction writes the counters with that commit id; from then on every
//!   tentative value with that id counts. *Settle*: each tentative value is
//!   rewritten as a settled `ranges/<id>` (and its `pending/<id>` deleted).
//!
//! What counts ([`Persister::load`]): a settled record, or a tentative one whose
//! commit id is the one the counters name (a `pending/` one over its `ranges/`
//! one). A crash while staging leaves tentative values of a commit that never
//! happened: ignored. A crash between commit and settle leaves committed
//! tentative values: they count. Either way `load` sees exactly the state before
//! or after the change set, never part of it. Before committing anything, a save
//! first settles or deletes every leftover it knows of, so that a commit id only
//! ever matters while it is the current one.
//!
//! # Fencing and races
//!
//! Every write and delete is a compare-and-set on the key's `ModifyIndex` as this
//! persister last saw it (from `load` or its own writes; 0 = must not exist), and
//! every transaction checks the counters key: staging transactions check its
//! index, the others write it. With a [`Fence`], every transaction also checks
//! that the controller's session holds the leader lock. So a writer that another
//! has overtaken gets [`PersistError::Conflict`], a deposed leader
//! [`PersistError::Fenced`], and neither changes anything. Transactions that
//! delete or settle leftovers write the counters too, so that a concurrent writer
//! whose leftovers they touch can no longer commit. A transport error leaves a
//! transaction in doubt: the next save first reads one of its keys to learn
//! whether it was applied, and adopts its indexes or reports a conflict, so an
//! answer lost on the way never turns into a blind overwrite.
//!
//! # Files
//!
//! - `layout`: the keys and the bytes of their values, and nothing else, so
//!   that the on-disk format can be read in one place.
//! - `state`: what this persister knows of the store (every key's index, the
//!   leftovers of interrupted saves) and how `load` learns it from a listing.
//! - `plan`: which operations a save needs and how they are packed into
//!   transactions within Consul's limits; pure, so it is unit-tested alone.
//! - `commit`: the phases of a save: resolve what is in doubt, tidy leftovers,
//!   then one transaction, or stage, commit, settle.
//! - `txn`: sending one transaction and turning Consul's answer into
//!   changes of what it remembers or a [`PersistError`] (fenced, conflict, in doubt).
//! - `faults`: the one hook through which tests break a save at a named point.

mod commit;
mod faults;
mod layout;
mod plan;
mod state;
#[cfg(test)]
mod tests;
mod txn;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ranger_consul::Client;
use tokio::sync::Mutex;

use super::{Loaded, PersistError, Persister};
use crate::keyspace::ChangeSet;
#[cfg(any(test, feature = "testing"))]
pub use faults::{Fault, FaultHook, FaultPoint};
#[cfg(not(any(test, feature = "testing")))]
use faults::{Fault, FaultPoint};
use state::State;

/// Where the keyspace lives in Consul unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "ranger/keyspace/";

/// The leadership check every write carries: Consul refuses a transaction unless
/// `session_id` holds the lock on `leader_key`, so a controller whose session
/// ended or whose lock another took cannot write, even before it notices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The key whose lock the leader holds.
    pub leader_key: String,
    /// The leader's session.
    pub session_id: String,
}

/// A key prefix that cannot hold a keyspace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Consul key prefix {prefix:?}: {reason}")]
pub struct InvalidPrefix {
    /// The prefix as given.
    pub prefix: String,
    /// Why it was refused.
    pub reason: &'static str,
}

/// A keyspace store in Consul's KV store; see the [module docs](self) for the
/// layout and the atomicity it gives. Clones share one view of the store (the remembered
/// indexes), and their saves are serialized.
///
/// Load before saving to an existing store: a persister that never loaded
/// assumes an empty store, so its first save to a written one is a
/// [`PersistError::Conflict`], not an overwrite.
#[derive(Clone)]
pub struct ConsulPersister {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    prefix: String,
    fence: Option<Fence>,
    state: Mutex<State>,
    records_written: AtomicU64,
    #[cfg(any(test, feature = "testing"))]
    faults: FaultHook,
}

impl fmt::Debug for ConsulPersister {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulPersister")
            .field("address", &self.inner.client.config().address)
            .field("prefix", &self.inner.prefix)
            .field("fence", &self.inner.fence)
            .finish_non_exhaustive()
    }
}

impl ConsulPersister {
    /// A persister for the keyspace under `prefix` (a trailing `/` is added if
    /// missing), fencing every write with `fence` if given. Nothing is sent yet.
    /// The prefix must belong to this keyspace alone: `load` refuses keys it does
    /// not know.
    pub fn new(
        client: Client,
        prefix: impl Into<String>,
        fence: Option<Fence>,
    ) -> Result<Self, InvalidPrefix> {
        let mut prefix = prefix.into();
        let invalid = |prefix: &str, reason| InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        };
        if prefix.is_empty() {
            return Err(invalid(
                &prefix,
                "empty: the keyspace needs a prefix of its own",
            ));
        }
        if prefix.starts_with('/') {
            return Err(invalid(&prefix, "Consul keys do not start with '/'"));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(ConsulPersister {
            inner: Arc::new(Inner {
                client,
                prefix,
                fence,
                state: Mutex::new(State::default()),
                records_written: AtomicU64::new(0),
                #[cfg(any(test, feature = "testing"))]
                faults: FaultHook::default(),
            }),
        })
    }

    /// The key prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The session check every write carries, if any.
    pub fn fence(&self) -> Option<&Fence> {
        self.inner.fence.as_ref()
    }

    /// How many records committed saves through this persister wrote: a metric,
    /// and how tests check that only changed records are written.
    pub fn records_written(&self) -> u64 {
        self.inner.records_written.load(Ordering::Relaxed)
    }

    /// Where tests arm faults that break this persister's saves at named
    /// points (see [`FaultHook`]). Clones share it, as they share the store.
    #[cfg(any(test, feature = "testing"))]
    pub fn faults(&self) -> &FaultHook {
        &self.inner.faults
    }
}

impl Inner {
    /// The fault armed at `point`, if any: the only place a save asks. Without
    /// the `testing` feature there is no hook, and this is always `None`.
    fn fault(&self, point: FaultPoint) -> Option<Fault> {
        #[cfg(any(test, feature = "testing"))]
        {
            self.faults.fire(point)
        }
        #[cfg(not(any(test, feature = "testing")))]
        {
            let _ = point;
            None
        }
    }
}

impl Persister for ConsulPersister {
    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        self.inner.load().await
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        self.inner.save(changes).await
    }
}
