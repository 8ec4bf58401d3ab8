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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use ranger_consul::{Client, KvPair, QueryOptions, TxnOp, TxnOpError, TxnResults};
use tokio::sync::Mutex;

use super::{Loaded, PersistError, Persister, codec};
use crate::keyspace::{ChangeSet, Counters};

/// Where the keyspace lives in Consul unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "ranger/keyspace/";
/// The layout version written in every value's header; the only one read.
const LAYOUT_VERSION: u32 = 1;
/// Staging and settling transactions in flight at once: Consul's Raft log
/// batches concurrent writes, so a few in flight write faster than one.
const PARALLEL_TXNS: usize = 4;
/// What one operation adds to a transaction's JSON body besides its key and
/// base64 value (verb, index, field names, punctuation), rounded up.
const OP_OVERHEAD_BYTES: usize = 128;
/// Room left in a transaction body for what the estimate misses.
const BODY_MARGIN_BYTES: usize = 4096;
/// A header line longer than this is not one of ours.
const MAX_HEADER_BYTES: usize = 128;

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
    #[cfg(test)]
    faults: std::sync::Mutex<Faults>,
    #[cfg(test)]
    lose_answer: std::sync::Mutex<Option<tests::LoseAnswer>>,
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
                #[cfg(test)]
                faults: std::sync::Mutex::default(),
                #[cfg(test)]
                lose_answer: std::sync::Mutex::default(),
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
}

impl Persister for ConsulPersister {
    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        self.inner.load().await
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        self.inner.save(changes).await
    }
}

/// Identifies one commit (and the tentative values staged for it). Random, so
/// that two writers, or two attempts of one, never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommitId(u64);

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A random u64 without a random-number crate: std's `RandomState` is seeded
/// from the OS once per thread and differs for every instance.
fn random_u64() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    RandomState::new().hash_one((
        CALLS.fetch_add(1, Ordering::Relaxed),
        nanos,
        std::process::id(),
    ))
}

/// Where a range's record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RecordSlot {
    /// `ranges/<id>`: settled, or tentative for a new range.
    Range(u64),
    /// `pending/<id>`: tentative new version of an existing range.
    Pending(u64),
}

/// What the counters key says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CountersValue {
    /// The current commit; `None` before the first.
    commit: Option<CommitId>,
    /// Random per write, so that a write in doubt can be recognised.
    write: u64,
    /// `None` exactly when `commit` is.
    counters: Option<Counters>,
}

/// A record key as last seen: its index and, if tentative, its commit and record.
#[derive(Clone, Debug)]
struct Entry {
    index: u64,
    tentative: Option<Tentative>,
}

#[derive(Clone, Debug)]
struct Tentative {
    commit: CommitId,
    /// The record's codec bytes, to settle it without reading it back.
    payload: Arc<[u8]>,
}

/// What this persister knows of the store: every key's `ModifyIndex`, and the
/// contents it needs to finish or clean up a two-phase save.
#[derive(Debug, Default)]
struct State {
    counters: Option<(u64, CountersValue)>,
    ranges: HashMap<u64, Entry>,
    pending: HashMap<u64, Entry>,
    /// Ids whose `ranges/` entry is tentative.
    unsettled: BTreeSet<u64>,
    /// Transactions that may or may not have been applied (their answer was
    /// lost); resolved before the next write.
    in_doubt: Vec<Batch>,
}

impl State {
    fn current_commit(&self) -> Option<CommitId> {
        self.counters.as_ref().and_then(|(_, v)| v.commit)
    }

    fn counters_index(&self) -> u64 {
        self.counters.as_ref().map_or(0, |(index, _)| *index)
    }

    fn index(&self, slot: RecordSlot) -> u64 {
        let entry = match slot {
            RecordSlot::Range(id) => self.ranges.get(&id),
            RecordSlot::Pending(id) => self.pending.get(&id),
        };
        entry.map_or(0, |e| e.index)
    }

    fn has_leftovers(&self) -> bool {
        !self.unsettled.is_empty() || !self.pending.is_empty()
    }

    /// Records the effect of an applied operation whose key now has `index`.
    fn apply(&mut self, op: &PlannedOp, index: u64) {
        match op {
            PlannedOp::PutCounters { value, .. } => self.counters = Some((index, value.clone())),
            PlannedOp::PutRecord {
                slot,
                commit,
                payload,
                ..
            } => {
                let entry = Entry {
                    index,
                    tentative: commit.map(|commit| Tentative {
                        commit,
                        payload: Arc::clone(payload),
                    }),
                };
                match *slot {
                    RecordSlot::Range(id) => {
                        if entry.tentative.is_some() {
                            self.unsettled.insert(id);
                        } else {
                            self.unsettled.remove(&id);
                        }
                        self.ranges.insert(id, entry);
                    }
                    RecordSlot::Pending(id) => {
                        self.pending.insert(id, entry);
                    }
                }
            }
            PlannedOp::Delete { slot, .. } => match *slot {
                RecordSlot::Range(id) => {
                    self.unsettled.remove(&id);
                    self.ranges.remove(&id);
                }
                RecordSlot::Pending(id) => {
                    self.pending.remove(&id);
                }
            },
        }
    }
}

/// One KV operation, with what it means for [`State`].
#[derive(Clone, Debug)]
enum PlannedOp {
    /// CAS the counters key.
    PutCounters { expect: u64, value: CountersValue },
    /// CAS a record key: settled if `commit` is `None`.
    PutRecord {
        slot: RecordSlot,
        expect: u64,
        commit: Option<CommitId>,
        payload: Arc<[u8]>,
    },
    /// Delete a record key if its index is still `expect`.
    Delete { slot: RecordSlot, expect: u64 },
}

impl PlannedOp {
    fn expect(&self) -> u64 {
        match self {
            PlannedOp::PutCounters { expect, .. }
            | PlannedOp::PutRecord { expect, .. }
            | PlannedOp::Delete { expect, .. } => *expect,
        }
    }
}

/// A transaction to send: the counters check (for staging, which does not write
/// the counters) and its operations. The fence is added when it is sent.
#[derive(Clone, Debug)]
struct Batch {
    guard: Option<Guard>,
    ops: Vec<PlannedOp>,
}

/// How a staging transaction checks that nobody wrote the counters meanwhile.
#[derive(Clone, Copy, Debug)]
enum Guard {
    CountersAt(u64),
    NoCounters,
}

/// What a transaction operation was, to turn Consul's failed op index into an
/// error.
#[derive(Clone, Copy, Debug)]
enum Role {
    Fence,
    Guard,
    Op(usize),
}

/// Why a transaction did not go through.
enum TxnFailure {
    /// Certainly not applied.
    Refused(PersistError),
    /// Maybe applied: the answer was lost or unreadable.
    InDoubt(PersistError),
}

/// Faults a test injects into the next save; never set outside tests.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    /// One record per transaction, so that a few records take several.
    small_batches: bool,
    /// Fail once the records are staged, before the commit.
    fail_after_staging: bool,
    /// Stop right after the commit, as if the controller died there.
    crash_after_commit: bool,
}

/// How large a transaction may grow: operations besides the fence and the
/// counters, and body bytes.
#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    ops: usize,
    bytes: usize,
}

/// Writes a record value: header line, then the codec's bytes.
fn record_value(commit: Option<CommitId>, payload: &[u8]) -> Vec<u8> {
    let header = match commit {
        None => format!("v{LAYOUT_VERSION}\n"),
        Some(commit) => format!("v{LAYOUT_VERSION} commit={commit}\n"),
    };
    let mut value = Vec::with_capacity(header.len() + payload.len());
    value.extend_from_slice(header.as_bytes());
    value.extend_from_slice(payload);
    value
}

/// Writes the counters value. The JSON is written by hand (it cannot fail that
/// way); a unit test checks it is what serde reads.
fn counters_value(value: &CountersValue) -> Vec<u8> {
    let commit = value
        .commit
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    let mut text = format!(
        "v{LAYOUT_VERSION} commit={commit} write={:016x}\n",
        value.write
    );
    if let Some(c) = value.counters {
        text.push_str(&format!(
            "{{\"next_range_id\":{},\"next_placement_id\":{},\"term\":{}}}",
            c.next_range_id, c.next_placement_id, c.term
        ));
    }
    text.into_bytes()
}

/// The `name=value` fields of a header line, after the version.
type HeaderFields<'a> = Vec<(&'a str, &'a str)>;

/// Splits a value into its header fields (after the version) and payload,
/// checking the layout version.
fn split_value(value: &[u8]) -> Result<(HeaderFields<'_>, &[u8]), String> {
    let end = value
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or("no header line (expected `v1 ...` and a newline)")?;
    let header = std::str::from_utf8(&value[..end]).map_err(|_| "header line is not text")?;
    let mut words = header.split(' ');
    let version = words
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("header {header:?} does not start with a layout version"))?;
    if version != u64::from(LAYOUT_VERSION) {
        return Err(format!(
            "value layout version {version} is not supported (this build reads version {LAYOUT_VERSION})"
        ));
    }
    let fields = words
        .map(|w| {
            w.split_once('=')
                .ok_or_else(|| format!("header field {w:?} is not name=value"))
        })
        .collect::<Result<_, _>>()?;
    Ok((fields, &value[end + 1..]))
}

fn parse_hex(field: &str, text: &str) -> Result<u64, String> {
    if text.len() != 16 {
        return Err(format!("{field}={text:?} is not 16 hex digits"));
    }
    u64::from_str_radix(text, 16).map_err(|_| format!("{field}={text:?} is not 16 hex digits"))
}

/// Reads a record value: its commit if tentative, and the codec's bytes.
fn parse_record(value: &[u8]) -> Result<(Option<CommitId>, &[u8]), String> {
    let (fields, payload) = split_value(value)?;
    match fields.as_slice() {
        [] => Ok((None, payload)),
        [("commit", commit)] => Ok((Some(CommitId(parse_hex("commit", commit)?)), payload)),
        other => Err(format!("unexpected header fields {other:?}")),
    }
}

fn parse_counters(value: &[u8]) -> Result<CountersValue, String> {
    let (fields, payload) = split_value(value)?;
    let [("commit", commit), ("write", write)] = fields.as_slice() else {
        return Err(format!("unexpected header fields {fields:?}"));
    };
    let write = parse_hex("write", write)?;
    if *commit == "none" {
        if !payload.is_empty() {
            return Err("counters present although no commit is named".into());
        }
        return Ok(CountersValue {
            commit: None,
            write,
            counters: None,
        });
    }
    let commit = CommitId(parse_hex("commit", commit)?);
    let counters: Counters =
        serde_json::from_slice(payload).map_err(|e| format!("malformed counters: {e}"))?;
    Ok(CountersValue {
        commit: Some(commit),
        write,
        counters: Some(counters),
    })
}

/// Whether a failed transaction may nevertheless have been applied. Errors found
/// before sending, Consul's refusals (4xx) and roll-backs were certainly not;
/// no answer, a 5xx (e.g. a Raft apply that timed out) or an unreadable answer
/// may have been.
fn maybe_applied(error: &ranger_consul::Error) -> bool {
    use ranger_consul::Error as E;
    match error {
        E::InvalidAddress { .. }
        | E::InvalidArgument(_)
        | E::TxnTooManyOps { .. }
        | E::TxnTooLarge { .. }
        | E::ValueTooLarge { .. }
        | E::TxnRolledBack(_) => false,
        E::Status { status, .. } => *status >= 500,
        _ => true,
    }
}

/// The bytes of a base64-encoded value of `len` bytes.
fn base64_len(len: usize) -> usize {
    len.div_ceil(3) * 4
}

/// Packs groups of operations (each group kept in one transaction) into as few
/// batches as the limits allow. A group larger than the limits goes alone.
fn pack(groups: Vec<Vec<(PlannedOp, usize)>>, limits: BatchLimits) -> Vec<Vec<PlannedOp>> {
    let mut batches = Vec::new();
    let mut current: Vec<PlannedOp> = Vec::new();
    let mut bytes = 0;
    for group in groups {
        let group_bytes: usize = group.iter().map(|(_, size)| size).sum();
        if !current.is_empty()
            && (current.len() + group.len() > limits.ops || bytes + group_bytes > limits.bytes)
        {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += group_bytes;
        current.extend(group.into_iter().map(|(op, _)| op));
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// The most telling of several errors: being fenced explains a conflict, and a
/// conflict is permanent where a backend error is not.
fn worst(a: PersistError, b: PersistError) -> PersistError {
    let rank = |e: &PersistError| match e {
        PersistError::Fenced { .. } => 3,
        PersistError::Conflict { .. } => 2,
        PersistError::Corrupt { .. } => 1,
        PersistError::Backend { .. } => 0,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

impl Inner {
    fn counters_key(&self) -> String {
        counters_key(&self.prefix)
    }

    fn record_key(&self, slot: RecordSlot) -> String {
        match slot {
            RecordSlot::Range(id) => format!("{}ranges/{id:020}", self.prefix),
            RecordSlot::Pending(id) => format!("{}pending/{id:020}", self.prefix),
        }
    }

    fn op_key(&self, op: &PlannedOp) -> String {
        match op {
            PlannedOp::PutCounters { .. } => self.counters_key(),
            PlannedOp::PutRecord { slot, .. } | PlannedOp::Delete { slot, .. } => {
                self.record_key(*slot)
            }
        }
    }

    /// The value an operation writes, if it writes one.
    fn op_value(&self, op: &PlannedOp) -> Option<Vec<u8>> {
        match op {
            PlannedOp::PutCounters { value, .. } => Some(counters_value(value)),
            PlannedOp::PutRecord {
                commit, payload, ..
            } => Some(record_value(*commit, payload)),
            PlannedOp::Delete { .. } => None,
        }
    }

    /// What an operation adds to a transaction body, overestimated a little.
    fn op_size(&self, op: &PlannedOp) -> usize {
        let value = match op {
            PlannedOp::PutCounters { .. } => MAX_HEADER_BYTES + 64,
            PlannedOp::PutRecord { payload, .. } => MAX_HEADER_BYTES + payload.len(),
            PlannedOp::Delete { .. } => 0,
        };
        OP_OVERHEAD_BYTES + self.prefix.len() + 32 + base64_len(value)
    }

    fn sized(&self, ops: Vec<PlannedOp>) -> Vec<(PlannedOp, usize)> {
        ops.into_iter()
            .map(|op| {
                let size = self.op_size(&op);
                (op, size)
            })
            .collect()
    }

    /// The faults injected into the next save (tests only; none otherwise).
    fn take_faults(&self) -> Faults {
        #[cfg(test)]
        {
            std::mem::take(
                &mut *self
                    .faults
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
        #[cfg(not(test))]
        Faults::default()
    }

    fn limits(&self, faults: Faults) -> BatchLimits {
        let consul = self.client.config().limits;
        // Besides its operations, each transaction holds the counters (checked or
        // written) and the fence.
        let fixed = 1 + usize::from(self.fence.is_some());
        let fixed_bytes = self.op_size(&PlannedOp::PutCounters {
            expect: 0,
            value: CountersValue {
                commit: None,
                write: 0,
                counters: None,
            },
        }) + self.fence.as_ref().map_or(0, |f| {
            OP_OVERHEAD_BYTES + f.leader_key.len() + f.session_id.len()
        });
        let limits = BatchLimits {
            ops: consul.max_txn_ops.saturating_sub(fixed).max(1),
            bytes: consul
                .max_txn_request_bytes
                .saturating_sub(BODY_MARGIN_BYTES + fixed_bytes)
                .max(1),
        };
        if faults.small_batches {
            return BatchLimits { ops: 1, ..limits };
        }
        limits
    }

    async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        let started = Instant::now();
        let mut state = self.state.lock().await;
        let pairs = self
            .client
            .kv_list(&self.prefix, QueryOptions::default())
            .await
            .map_err(|e| PersistError::backend(format!("listing {}", self.prefix), e))?
            .value;
        let listed = started.elapsed();
        let prefix = self.prefix.clone();
        // Decoding 100k records takes a while: off the async threads.
        let (fresh, loaded) = tokio::task::spawn_blocking(move || decode_listing(&prefix, &pairs))
            .await
            .map_err(|e| PersistError::backend("decoding the keyspace (task failed)", e))??;
        tracing::info!(
            prefix = %self.prefix,
            records = loaded.as_ref().map_or(0, |(_, records)| records.len()),
            leftovers = fresh.unsettled.len() + fresh.pending.len(),
            listed_ms = listed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "keyspace loaded from Consul"
        );
        *state = fresh;
        Ok(loaded)
    }

    async fn save(&self, changes: &ChangeSet) -> Result<(), PersistError> {
        let faults = self.take_faults();
        let limits = self.limits(faults);
        let max_value = self.client.config().limits.max_value_size;
        let encoded: Vec<(u64, Arc<[u8]>)> = codec::encode_all(changes)?
            .into_iter()
            .map(|(id, bytes)| (id, Arc::from(bytes)))
            .collect();
        // A record too large for one value or one transaction could never be
        // written: refuse the change set before writing any of it.
        for (id, bytes) in &encoded {
            let op_bytes = self.op_size(&PlannedOp::PutRecord {
                slot: RecordSlot::Pending(*id),
                expect: 0,
                commit: None,
                payload: Arc::clone(bytes),
            });
            if bytes.len() + MAX_HEADER_BYTES > max_value || op_bytes > limits.bytes {
                return Err(PersistError::backend(
                    format!("saving {}", codec::record_key(*id)),
                    format!(
                        "its record is {} bytes, too large for a Consul value ({max_value} bytes) in a transaction ({} bytes)",
                        bytes.len(),
                        self.client.config().limits.max_txn_request_bytes
                    ),
                ));
            }
        }
        let mut state = self.state.lock().await;
        self.resolve_in_doubt(&mut state).await?;
        self.tidy(&mut state, faults).await?;
        let commit = CommitId(random_u64());
        let commit_op = |state: &State| PlannedOp::PutCounters {
            expect: state.counters_index(),
            value: CountersValue {
                commit: Some(commit),
                write: random_u64(),
                counters: Some(changes.counters),
            },
        };
        let direct: Vec<PlannedOp> = encoded
            .iter()
            .map(|(id, payload)| PlannedOp::PutRecord {
                slot: RecordSlot::Range(*id),
                expect: state.index(RecordSlot::Range(*id)),
                commit: None,
                payload: Arc::clone(payload),
            })
            .collect();
        let direct_bytes: usize = direct.iter().map(|op| self.op_size(op)).sum();
        if direct.len() <= limits.ops && direct_bytes <= limits.bytes {
            let mut ops = vec![commit_op(&state)];
            ops.extend(direct);
            self.run(&mut state, vec![Batch { guard: None, ops }], 1)
                .await?;
            self.records_written
                .fetch_add(encoded.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        drop(direct);

        // Stage: tentative values, new ranges in place, new versions aside.
        let guard = match state.counters {
            Some((index, _)) => Guard::CountersAt(index),
            None => Guard::NoCounters,
        };
        let staged: Vec<PlannedOp> = encoded
            .iter()
            .map(|(id, payload)| {
                let slot = if state.ranges.contains_key(id) {
                    RecordSlot::Pending(*id)
                } else {
                    RecordSlot::Range(*id)
                };
                PlannedOp::PutRecord {
                    slot,
                    expect: state.index(slot),
                    commit: Some(commit),
                    payload: Arc::clone(payload),
                }
            })
            .collect();
        let batches = pack(
            self.sized(staged).into_iter().map(|op| vec![op]).collect(),
            limits,
        )
        .into_iter()
        .map(|ops| Batch {
            guard: Some(guard),
            ops,
        })
        .collect();
        self.run(&mut state, batches, PARALLEL_TXNS).await?;
        if faults.fail_after_staging {
            return Err(PersistError::backend(
                "saving to Consul",
                "injected failure after staging",
            ));
        }

        // Commit.
        let commit_batch = Batch {
            guard: None,
            ops: vec![commit_op(&state)],
        };
        self.run(&mut state, vec![commit_batch], 1).await?;
        self.records_written
            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
        if faults.crash_after_commit {
            return Err(PersistError::backend(
                "saving to Consul",
                "injected crash after commit",
            ));
        }

        // Settle. The change set is committed whatever happens here: what is left
        // unsettled, the next save settles first.
        let groups = encoded
            .iter()
            .filter_map(|(id, _)| self.settle_ops(&state, *id, Some(commit)))
            .map(|group| self.sized(group))
            .collect();
        let batches = pack(groups, limits)
            .into_iter()
            .map(|ops| Batch { guard: None, ops })
            .collect();
        if let Err(error) = self.run(&mut state, batches, PARALLEL_TXNS).await {
            tracing::warn!(%error, "settling a committed keyspace change failed; the next save retries");
        }
        Ok(())
    }

    /// The operations that settle (if committed under `current`) or delete (if
    /// not) the tentative values stored for range `id`; `None` if it has none.
    /// They go in one transaction, so that the range never has neither.
    fn settle_ops(
        &self,
        state: &State,
        id: u64,
        current: Option<CommitId>,
    ) -> Option<Vec<PlannedOp>> {
        let committed = |e: &Entry| {
            e.tentative
                .as_ref()
                .filter(|t| Some(t.commit) == current)
                .map(|t| Arc::clone(&t.payload))
        };
        let pending = state.pending.get(&id);
        let range = state.ranges.get(&id);
        let mut ops = Vec::new();
        if let Some(payload) = pending.and_then(committed) {
            ops.push(PlannedOp::PutRecord {
                slot: RecordSlot::Range(id),
                expect: range.map_or(0, |e| e.index),
                commit: None,
                payload,
            });
            ops.push(PlannedOp::Delete {
                slot: RecordSlot::Pending(id),
                expect: state.index(RecordSlot::Pending(id)),
            });
            return Some(ops);
        }
        if let Some(pending) = pending {
            ops.push(PlannedOp::Delete {
                slot: RecordSlot::Pending(id),
                expect: pending.index,
            });
        }
        if let Some(range) = range.filter(|e| e.tentative.is_some()) {
            ops.push(match committed(range) {
                Some(payload) => PlannedOp::PutRecord {
                    slot: RecordSlot::Range(id),
                    expect: range.index,
                    commit: None,
                    payload,
                },
                None => PlannedOp::Delete {
                    slot: RecordSlot::Range(id),
                    expect: range.index,
                },
            });
        }
        (!ops.is_empty()).then_some(ops)
    }

    /// Settles every committed tentative value and deletes every other one, so
    /// that a new commit cannot make an old attempt's values count. Each
    /// transaction rewrites the counters (same content, new write id): a writer
    /// whose leftovers these were can then no longer commit them.
    async fn tidy(&self, state: &mut State, faults: Faults) -> Result<(), PersistError> {
        if !state.has_leftovers() {
            return Ok(());
        }
        let current = state.current_commit();
        let ids: BTreeSet<u64> = state
            .unsettled
            .iter()
            .chain(state.pending.keys())
            .copied()
            .collect();
        let groups: Vec<_> = ids
            .into_iter()
            .filter_map(|id| self.settle_ops(state, id, current))
            .map(|group| self.sized(group))
            .collect();
        let count: usize = groups.iter().map(Vec::len).sum();
        tracing::info!(
            operations = count,
            "tidying leftovers of an interrupted keyspace save"
        );
        for ops in pack(groups, self.limits(faults)) {
            let (index, value) = match &state.counters {
                Some((index, value)) => (*index, value.clone()),
                None => (
                    0,
                    CountersValue {
                        commit: None,
                        write: 0,
                        counters: None,
                    },
                ),
            };
            let bump = PlannedOp::PutCounters {
                expect: index,
                value: CountersValue {
                    write: random_u64(),
                    ..value
                },
            };
            let mut batch_ops = vec![bump];
            batch_ops.extend(ops);
            self.run(
                state,
                vec![Batch {
                    guard: None,
                    ops: batch_ops,
                }],
                1,
            )
            .await?;
        }
        Ok(())
    }

    /// Learns whether each transaction in doubt was applied, from one key it
    /// wrote (the counters if it wrote them: their write id is unique), and
    /// records its effect if it was. A key changed by someone else is a conflict.
    async fn resolve_in_doubt(&self, state: &mut State) -> Result<(), PersistError> {
        while let Some(batch) = state.in_doubt.first() {
            let probe = batch
                .ops
                .iter()
                .find(|op| matches!(op, PlannedOp::PutCounters { .. }))
                .or_else(|| {
                    batch.ops.iter().find(|op| {
                        matches!(
                            op,
                            PlannedOp::PutRecord {
                                commit: Some(_),
                                ..
                            }
                        )
                    })
                })
                .or_else(|| {
                    batch
                        .ops
                        .iter()
                        .find(|op| matches!(op, PlannedOp::PutRecord { .. }))
                });
            let applied_at = match probe {
                None => None,
                Some(op) => {
                    let key = self.op_key(op);
                    let found = self
                        .client
                        .kv_get(&key, QueryOptions::default())
                        .await
                        .map_err(|e| {
                            PersistError::backend(
                                format!("reading {key} to learn whether a write went through"),
                                e,
                            )
                        })?
                        .value;
                    match found {
                        None if op.expect() == 0 => None,
                        Some(pair) if pair.modify_index == op.expect() => None,
                        Some(pair) if Some(&pair.value) == self.op_value(op).as_ref() => {
                            Some(pair.modify_index)
                        }
                        _ => return Err(PersistError::Conflict { key }),
                    }
                }
            };
            let batch = state.in_doubt.remove(0);
            if let Some(index) = applied_at {
                tracing::info!(index, "a keyspace write in doubt was applied");
                for op in &batch.ops {
                    state.apply(op, index);
                }
            } else {
                tracing::info!("a keyspace write in doubt was not applied");
            }
        }
        Ok(())
    }

    /// Sends `batches`, up to `parallel` at a time, recording each applied one in
    /// `state`. Stops at the first wave with a failure and returns the worst error.
    async fn run(
        &self,
        state: &mut State,
        batches: Vec<Batch>,
        parallel: usize,
    ) -> Result<(), PersistError> {
        let mut batches = batches.into_iter().peekable();
        while batches.peek().is_some() {
            let wave: Vec<Batch> = batches.by_ref().take(parallel.max(1)).collect();
            let answers = join_all(wave.iter().map(|batch| self.send(batch))).await;
            let mut failure: Option<PersistError> = None;
            for (batch, answer) in wave.into_iter().zip(answers) {
                let error = match answer {
                    Ok(results) => match self.record(state, &batch, &results) {
                        Ok(()) => continue,
                        Err(error) => {
                            state.in_doubt.push(batch);
                            error
                        }
                    },
                    Err(TxnFailure::Refused(error)) => error,
                    Err(TxnFailure::InDoubt(error)) => {
                        state.in_doubt.push(batch);
                        error
                    }
                };
                failure = Some(match failure {
                    Some(previous) => worst(previous, error),
                    None => error,
                });
            }
            if let Some(error) = failure {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Records an applied transaction: each written key's new index comes from
    /// Consul's results. A written key missing from them leaves the transaction
    /// in doubt (it is then resolved like a lost answer).
    fn record(
        &self,
        state: &mut State,
        batch: &Batch,
        results: &TxnResults,
    ) -> Result<(), PersistError> {
        let indexes: HashMap<&str, u64> = results
            .results
            .iter()
            .map(|pair| (pair.key.as_str(), pair.modify_index))
            .collect();
        let mut updates = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            let index = match op {
                PlannedOp::Delete { .. } => 0,
                _ => {
                    let key = self.op_key(op);
                    *indexes.get(key.as_str()).ok_or_else(|| {
                        PersistError::backend(
                            "reading Consul's transaction results",
                            format!("no result for written key {key}"),
                        )
                    })?
                }
            };
            updates.push(index);
        }
        for (op, index) in batch.ops.iter().zip(updates) {
            state.apply(op, index);
        }
        Ok(())
    }

    /// Sends one transaction: the fence check, the guard, the operations.
    async fn send(&self, batch: &Batch) -> Result<TxnResults, TxnFailure> {
        let mut ops = Vec::with_capacity(batch.ops.len() + 2);
        let mut roles = Vec::with_capacity(batch.ops.len() + 2);
        if let Some(fence) = &self.fence {
            ops.push(TxnOp::check_session(&fence.leader_key, &fence.session_id));
            roles.push(Role::Fence);
        }
        match batch.guard {
            Some(Guard::CountersAt(index)) => {
                ops.push(TxnOp::check_index(self.counters_key(), index));
                roles.push(Role::Guard);
            }
            Some(Guard::NoCounters) => {
                ops.push(TxnOp::check_not_exists(self.counters_key()));
                roles.push(Role::Guard);
            }
            None => {}
        }
        for (i, op) in batch.ops.iter().enumerate() {
            let key = self.op_key(op);
            ops.push(match self.op_value(op) {
                Some(value) => TxnOp::cas(key, value, op.expect()),
                None => TxnOp::delete_cas(key, op.expect()),
            });
            roles.push(Role::Op(i));
        }
        #[cfg(test)]
        if let Some(failure) = self.injected_answer(&ops).await {
            return Err(failure);
        }
        match self.client.txn(&ops).await {
            Ok(results) => Ok(results),
            Err(ranger_consul::Error::TxnRolledBack(errors)) => {
                Err(TxnFailure::Refused(self.refused(&errors, &roles, batch)))
            }
            Err(error) if maybe_applied(&error) => Err(TxnFailure::InDoubt(PersistError::backend(
                "writing to Consul (outcome unknown)",
                error,
            ))),
            Err(error) => Err(TxnFailure::Refused(PersistError::backend(
                "writing to Consul",
                error,
            ))),
        }
    }

    /// Test hook: pretends the answer to this transaction was lost, after
    /// sending it or without sending it.
    #[cfg(test)]
    async fn injected_answer(&self, ops: &[TxnOp]) -> Option<TxnFailure> {
        let fault = self
            .lose_answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        if fault == tests::LoseAnswer::AfterApplying {
            let _ = self.client.txn(ops).await;
        }
        Some(TxnFailure::InDoubt(PersistError::backend(
            "writing to Consul (outcome unknown)",
            "injected lost answer",
        )))
    }

    /// Turns a rolled-back transaction into why: a failed session check is
    /// [`PersistError::Fenced`], a failed index check names its key.
    fn refused(&self, errors: &[TxnOpError], roles: &[Role], batch: &Batch) -> PersistError {
        let mut conflict = None;
        for error in errors {
            match roles.get(error.op_index) {
                Some(Role::Fence) => {
                    return PersistError::Fenced {
                        detail: error.what.clone(),
                    };
                }
                Some(Role::Guard) => {
                    conflict.get_or_insert_with(|| self.counters_key());
                }
                Some(Role::Op(i)) => {
                    if let Some(op) = batch.ops.get(*i) {
                        conflict.get_or_insert_with(|| self.op_key(op));
                    }
                }
                None => {}
            }
        }
        match conflict {
            Some(key) => PersistError::Conflict { key },
            None => PersistError::backend(
                "writing to Consul",
                ranger_consul::Error::TxnRolledBack(errors.to_vec()),
            ),
        }
    }
}

/// A key under the prefix, by role.
enum ParsedKey {
    Counters,
    Record(RecordSlot),
}

fn counters_key(prefix: &str) -> String {
    format!("{prefix}counters")
}

/// Which key of ours `key` is: `Ok(None)` for a folder marker (an empty key
/// ending in `/`, as Consul's UI creates).
fn parse_key(prefix: &str, key: &str, value: &[u8]) -> Result<Option<ParsedKey>, PersistError> {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    if (rest.is_empty() || rest.ends_with('/')) && value.is_empty() {
        return Ok(None);
    }
    if rest == "counters" {
        return Ok(Some(ParsedKey::Counters));
    }
    let id = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .filter(|id| *id > 0)
    };
    let slot = if let Some(digits) = rest.strip_prefix("ranges/") {
        id(digits).map(RecordSlot::Range)
    } else if let Some(digits) = rest.strip_prefix("pending/") {
        id(digits).map(RecordSlot::Pending)
    } else {
        None
    };
    slot.map(|s| Some(ParsedKey::Record(s)))
        .ok_or_else(|| PersistError::Corrupt {
            key: key.to_owned(),
            detail: format!(
                "not a key of the keyspace layout under {prefix} (does something else write there?)"
            ),
        })
}

/// Below this many records, decoding on one thread is fast enough.
const PARALLEL_DECODE_MIN: usize = 4096;

/// Reads a listing of the prefix: what the persister must remember (every key's
/// index, the leftovers of interrupted saves) and the committed keyspace, if any.
/// The records are decoded on every core: at 100k ranges that is a good part of a
/// restart.
fn decode_listing(prefix: &str, pairs: &[KvPair]) -> Result<(State, Option<Loaded>), PersistError> {
    let mut state = State::default();
    // (slot, key, commit, payload) of every record key, as listed.
    let mut records: Vec<(RecordSlot, &str, Option<CommitId>, &[u8])> =
        Vec::with_capacity(pairs.len());
    for pair in pairs {
        let corrupt = |detail: String| PersistError::Corrupt {
            key: pair.key.clone(),
            detail,
        };
        match parse_key(prefix, &pair.key, &pair.value)? {
            None => {}
            Some(ParsedKey::Counters) => {
                let value = parse_counters(&pair.value).map_err(corrupt)?;
                state.counters = Some((pair.modify_index, value));
            }
            Some(ParsedKey::Record(slot)) => {
                let (commit, payload) = parse_record(&pair.value).map_err(corrupt)?;
                let entry = Entry {
                    index: pair.modify_index,
                    tentative: commit.map(|commit| Tentative {
                        commit,
                        payload: Arc::from(payload),
                    }),
                };
                match slot {
                    RecordSlot::Range(id) => {
                        if commit.is_some() {
                            state.unsettled.insert(id);
                        }
                        state.ranges.insert(id, entry);
                    }
                    RecordSlot::Pending(id) => {
                        if commit.is_none() {
                            return Err(corrupt("a pending record must name its commit".into()));
                        }
                        state.pending.insert(id, entry);
                    }
                }
                records.push((slot, &pair.key, commit, payload));
            }
        }
    }
    // The committed view: per id, a committed pending value over a settled or
    // committed ranges value.
    let current = state.current_commit();
    let mut chosen: BTreeMap<u64, (&str, &[u8])> = BTreeMap::new();
    for &(slot, key, commit, payload) in &records {
        match (slot, commit) {
            // A committed new version wins over whatever `ranges/` holds.
            (RecordSlot::Pending(id), Some(c)) if Some(c) == current => {
                chosen.insert(id, (key, payload));
            }
            (RecordSlot::Range(id), Some(c)) if Some(c) == current => {
                chosen.entry(id).or_insert((key, payload));
            }
            (RecordSlot::Range(id), None) => {
                // A settled record proves that a commit happened.
                if current.is_none() {
                    return Err(PersistError::Corrupt {
                        key: codec::record_key(id),
                        detail: format!(
                            "record at Consul key {key} is stored but {} names no commit",
                            counters_key(prefix)
                        ),
                    });
                }
                chosen.entry(id).or_insert((key, payload));
            }
            // Staged for a commit that did not happen (yet): not part of the
            // keyspace; the next save deletes it.
            _ => {}
        }
    }
    let Some(counters) = state.counters.as_ref().and_then(|(_, v)| v.counters) else {
        return Ok((state, None));
    };
    let chosen: Vec<(u64, &str, &[u8])> = chosen
        .into_iter()
        .map(|(id, (key, payload))| (id, key, payload))
        .collect();
    let decode = |chunk: &[(u64, &str, &[u8])]| {
        chunk
            .iter()
            .map(|&(id, key, payload)| {
                codec::decode(id, payload).map_err(|e| match e {
                    PersistError::Corrupt { key: name, detail } => PersistError::Corrupt {
                        key: name,
                        detail: format!("{detail} (Consul key {key})"),
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let records = if threads < 2 || chosen.len() < PARALLEL_DECODE_MIN {
        decode(&chosen)?
    } else {
        let chunk = chosen.len().div_ceil(threads);
        let parts = std::thread::scope(|scope| {
            let handles: Vec<_> = chosen
                .chunks(chunk)
                .map(|part| scope.spawn(move || decode(part)))
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle.join().unwrap_or_else(|_| {
                        Err(PersistError::backend(
                            "decoding the keyspace",
                            "a decoder thread panicked",
                        ))
                    })
                })
                .collect::<Vec<_>>()
        });
        let mut records = Vec::with_capacity(chosen.len());
        // In id order, so that the error reported is the first range's.
        for part in parts {
            records.extend(part?);
        }
        records
    };
    Ok((state, Some((counters, records))))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use ranger_consul::test_agent::TestAgent;
    use ranger_consul::{PutOptions, SessionRequest};
    use ranger_proto::{Key, RangeId, RangeState};

    use super::*;
    use crate::keyspace::{Keyspace, RECORD_VERSION, RangeRecord};
    use crate::persist::conformance::{self, Harness};

    /// How a test makes the answer to the next transaction go missing.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum LoseAnswer {
        /// Consul applied it; the answer is lost.
        AfterApplying,
        /// It never reached Consul.
        BeforeSending,
    }

    const LEADER_KEY: &str = "ranger/leader";

    /// Runs a future from a synchronous harness method; the conformance suite
    /// runs on a multi-threaded runtime, where this is allowed.
    fn block<F: Future>(future: F) -> F::Output {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
    }

    /// Takes the leader lock with a new session, as an elected controller would.
    async fn lead(client: &Client) -> Fence {
        let session = client
            .session_create(&SessionRequest {
                lock_delay: Some(Duration::ZERO),
                ..SessionRequest::default()
            })
            .await
            .unwrap();
        assert!(
            client
                .kv_put(LEADER_KEY, b"controller", &PutOptions::acquire(&session))
                .await
                .unwrap()
        );
        Fence {
            leader_key: LEADER_KEY.into(),
            session_id: session,
        }
    }

    impl ConsulPersister {
        fn inject(&self, faults: Faults) {
            *self.inner.faults.lock().unwrap() = faults;
        }

        fn lose_next_answer(&self, how: LoseAnswer) {
            *self.inner.lose_answer.lock().unwrap() = Some(how);
        }

        /// Another persister on the same store, as a restarted controller has.
        fn reopened(&self) -> Self {
            ConsulPersister::new(
                self.inner.client.clone(),
                self.prefix(),
                self.fence().cloned(),
            )
            .unwrap()
        }

        /// Every key under the prefix with its index and value.
        async fn dump(&self) -> Vec<(String, u64, Vec<u8>)> {
            self.inner
                .client
                .kv_list(self.prefix(), QueryOptions::default())
                .await
                .unwrap()
                .value
                .into_iter()
                .map(|p| (p.key, p.modify_index, p.value))
                .collect()
        }

        /// Asserts that the store holds only settled records and the counters.
        async fn assert_tidy(&self) {
            for (key, _, value) in self.dump().await {
                if key.ends_with("counters") {
                    continue;
                }
                assert!(key.contains("/ranges/"), "leftover key {key}");
                assert!(value.starts_with(b"v1\n"), "unsettled value at {key}");
            }
        }

        async fn put(&self, key: &str, value: &[u8]) {
            assert!(
                self.inner
                    .client
                    .kv_put(key, value, &PutOptions::default())
                    .await
                    .unwrap()
            );
        }
    }

    impl Harness for ConsulPersister {
        fn fail_next_save(&self) {
            self.inject(Faults {
                small_batches: true,
                fail_after_staging: true,
                ..Faults::default()
            });
        }

        fn records_written(&self) -> u64 {
            ConsulPersister::records_written(self)
        }

        fn put_raw(&self, id: u64, bytes: &[u8]) {
            let key = self.inner.record_key(RecordSlot::Range(id));
            block(self.put(&key, &record_value(None, bytes)));
        }

        async fn reopen(self) -> Self {
            let reopened = self.reopened();
            reopened
                .inner
                .records_written
                .store(self.records_written(), Ordering::Relaxed);
            reopened
        }
    }

    /// A fenced persister on its own agent, for the conformance suite.
    fn fresh() -> (ConsulPersister, TestAgent) {
        block(async {
            let agent = TestAgent::start().await.unwrap();
            let client = agent.client();
            let fence = lead(&client).await;
            let persister = ConsulPersister::new(client, DEFAULT_PREFIX, Some(fence)).unwrap();
            (persister, agent)
        })
    }

    conformance::conformance_tests!(fresh);

    async fn start(fenced: bool) -> (TestAgent, ConsulPersister) {
        let agent = TestAgent::start().await.unwrap();
        let client = agent.client();
        let fence = if fenced {
            Some(lead(&client).await)
        } else {
            None
        };
        let persister = ConsulPersister::new(client, DEFAULT_PREFIX, fence).unwrap();
        (agent, persister)
    }

    /// A change set creating `n` ranges that tile the keyspace.
    fn tiling(n: u64) -> ChangeSet {
        let key = |i: u64| Key::from(format!("k{i:08}"));
        ChangeSet {
            counters: Counters {
                next_range_id: n + 1,
                next_placement_id: 1,
                term: 0,
            },
            upserts: (1..=n)
                .map(|i| RangeRecord {
                    v: RECORD_VERSION,
                    id: RangeId::new(i).unwrap(),
                    start: if i == 1 { Key::empty() } else { key(i) },
                    end: if i == n { Key::empty() } else { key(i + 1) },
                    state: RangeState::Active,
                    parents: vec![],
                    children: vec![],
                    ever_activated: false,
                    placements: vec![],
                })
                .collect(),
        }
    }

    /// A new version of every record of `changes`.
    fn touched(changes: &ChangeSet) -> ChangeSet {
        let mut changes = changes.clone();
        for record in &mut changes.upserts {
            record.ever_activated = !record.ever_activated;
        }
        changes.counters.next_placement_id += 1;
        changes
    }

    async fn loaded(p: &ConsulPersister) -> Keyspace {
        let (counters, records) = p.load().await.unwrap().expect("a keyspace is stored");
        Keyspace::from_records(counters, records).unwrap()
    }

    /// Splits range `id` at `at` and finishes the split: a change of three
    /// records, one of them a new version.
    fn split(ks: &mut Keyspace, id: u64, at: &str) -> ChangeSet {
        let id = RangeId::new(id).unwrap();
        ks.split(id, at.into()).unwrap();
        ks.finish_subsume(&[id]).unwrap();
        ks.take_changes()
    }

    #[tokio::test]
    async fn a_second_writer_makes_the_first_conflict_and_write_nothing() {
        let (_agent, a) = start(false).await;
        let mut ks = Keyspace::new();
        a.save(&split(&mut ks, 1, "m")).await.unwrap();

        let b = a.reopened();
        let mut kb = loaded(&b).await;
        b.save(&split(&mut kb, 2, "c")).await.unwrap();
        let stored = b.dump().await;

        // One transaction's worth.
        let err = a.save(&split(&mut ks, 3, "t")).await.unwrap_err();
        assert!(matches!(&err, PersistError::Conflict { .. }), "{err}");
        assert!(!err.is_retryable());
        // Several transactions' worth: stopped at the first.
        let err = a.save(&tiling(300)).await.unwrap_err();
        assert!(matches!(&err, PersistError::Conflict { .. }), "{err}");
        assert_eq!(a.dump().await, stored, "the overtaken writer wrote nothing");
        assert_eq!(loaded(&b).await.to_records(), kb.to_records());
    }

    #[tokio::test]
    async fn a_deposed_leader_is_fenced_and_writes_nothing() {
        let (agent, p) = start(true).await;
        let client = agent.client();
        let mut ks = Keyspace::new();
        p.save(&ks.take_changes()).await.unwrap();
        let stored = p.dump().await;

        // Its session ends: the lock is released.
        let fence = p.fence().unwrap().clone();
        client.session_destroy(&fence.session_id).await.unwrap();
        let err = p.save(&split(&mut ks, 1, "m")).await.unwrap_err();
        assert!(matches!(&err, PersistError::Fenced { .. }), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(p.dump().await, stored);

        // Another controller's session holds the lock now.
        let successor = lead(&client).await;
        let err = p.save(&tiling(300)).await.unwrap_err();
        assert!(matches!(&err, PersistError::Fenced { .. }), "{err}");
        assert_eq!(p.dump().await, stored);

        // The successor loads and writes.
        let next = ConsulPersister::new(client, p.prefix(), Some(successor)).unwrap();
        let mut kn = loaded(&next).await;
        next.save(&split(&mut kn, 1, "m")).await.unwrap();
        assert_eq!(loaded(&next.reopened()).await.to_records(), kn.to_records());
    }

    #[tokio::test]
    async fn a_change_set_of_more_than_64_records_round_trips() {
        let (_agent, p) = start(true).await;
        let created = tiling(300);
        p.save(&created).await.unwrap();
        let (counters, records) = p.load().await.unwrap().unwrap();
        assert_eq!(
            (counters, records),
            (created.counters, created.upserts.clone())
        );
        p.assert_tidy().await;

        // New versions of existing ranges go through pending/.
        let updated = touched(&created);
        p.save(&updated).await.unwrap();
        p.assert_tidy().await;
        let (counters, records) = p.reopened().load().await.unwrap().unwrap();
        assert_eq!(
            (counters, records),
            (updated.counters, updated.upserts.clone())
        );
        assert_eq!(p.records_written(), 600);
    }

    #[tokio::test]
    async fn a_save_interrupted_while_staging_leaves_the_previous_state() {
        let (_agent, p) = start(true).await;
        let mut ks = Keyspace::new();
        p.save(&split(&mut ks, 1, "m")).await.unwrap();
        let before = ks.to_records();

        p.fail_next_save();
        let mut lost = ks.clone();
        let err = p.save(&split(&mut lost, 3, "t")).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");

        // A restarted controller sees the state before the change and cleans up
        // when it saves.
        let q = p.reopened();
        let mut kq = loaded(&q).await;
        assert_eq!(kq.to_records(), before);
        q.save(&split(&mut kq, 2, "c")).await.unwrap();
        q.assert_tidy().await;
        assert_eq!(loaded(&q.reopened()).await.to_records(), kq.to_records());
    }

    #[tokio::test]
    async fn a_crash_between_commit_and_settling_keeps_the_change() {
        let (_agent, p) = start(true).await;
        let mut ks = Keyspace::new();
        p.save(&split(&mut ks, 1, "m")).await.unwrap();

        p.inject(Faults {
            small_batches: true,
            crash_after_commit: true,
            ..Faults::default()
        });
        let changes = split(&mut ks, 3, "t");
        p.save(&changes).await.unwrap_err();
        assert!(
            p.dump()
                .await
                .iter()
                .any(|(key, _, _)| key.contains("/pending/")),
            "range 3's new version is still pending"
        );

        let q = p.reopened();
        let mut kq = loaded(&q).await;
        assert_eq!(kq.to_records(), ks.to_records(), "the change was committed");
        q.save(&split(&mut kq, 2, "c")).await.unwrap();
        q.assert_tidy().await;
        assert_eq!(loaded(&q.reopened()).await.to_records(), kq.to_records());
    }

    #[tokio::test]
    async fn a_lost_answer_is_resolved_before_the_next_write() {
        for how in [LoseAnswer::AfterApplying, LoseAnswer::BeforeSending] {
            let (_agent, p) = start(true).await;
            let mut ks = Keyspace::new();
            p.save(&ks.take_changes()).await.unwrap();
            for changes in [split(&mut ks, 1, "m"), tiling(100)] {
                p.lose_next_answer(how);
                let err = p.save(&changes).await.unwrap_err();
                assert!(err.is_retryable(), "{how:?}: {err}");
                assert_eq!(p.inner.state.lock().await.in_doubt.len(), 1);
                // Retried as the controller would: the same records again.
                p.save(&changes).await.unwrap();
                assert!(p.inner.state.lock().await.in_doubt.is_empty());
                if changes.upserts.len() == 100 {
                    let (counters, records) = p.reopened().load().await.unwrap().unwrap();
                    assert_eq!((counters, records), (changes.counters, changes.upserts));
                } else {
                    assert_eq!(loaded(&p.reopened()).await.to_records(), ks.to_records());
                }
            }
            p.assert_tidy().await;
        }
    }

    #[tokio::test]
    async fn a_persister_that_never_loaded_does_not_overwrite_a_store() {
        let (_agent, p) = start(false).await;
        p.save(&Keyspace::new().take_changes()).await.unwrap();
        let stored = p.dump().await;
        let err = p
            .reopened()
            .save(&Keyspace::new().take_changes())
            .await
            .unwrap_err();
        assert!(matches!(&err, PersistError::Conflict { .. }), "{err}");
        assert_eq!(p.dump().await, stored);
    }

    #[tokio::test]
    async fn a_record_too_large_for_consul_is_refused_before_writing() {
        // Nothing listens there: the refusal comes before any request.
        let client = Client::from_address("http://127.0.0.1:1").unwrap();
        let p = ConsulPersister::new(client, DEFAULT_PREFIX, None).unwrap();
        let mut changes = tiling(2);
        changes.upserts[1].start = Key::from("k".repeat(300 * 1024));
        let err = p.save(&changes).await.unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        assert!(err.to_string().contains("range 2"), "{err}");
    }

    #[tokio::test]
    async fn corrupt_values_are_named_by_their_key() {
        let (agent, p) = start(false).await;
        let mut ks = Keyspace::new();
        p.save(&split(&mut ks, 1, "m")).await.unwrap();
        let range2 = format!("{DEFAULT_PREFIX}ranges/{:020}", 2);
        let counters = format!("{DEFAULT_PREFIX}counters");
        let corrupt = |err: PersistError| match err {
            PersistError::Corrupt { key, detail } => (key, detail),
            other => panic!("expected Corrupt, got {other}"),
        };
        let good = p.dump().await;
        let restore = || async {
            for (key, _, value) in &good {
                p.put(key, value).await;
            }
        };

        p.put(&range2, b"v2\n{}").await;
        let (key, detail) = corrupt(p.load().await.unwrap_err());
        assert_eq!(key, range2);
        assert!(detail.contains("version 2"), "{detail}");

        p.put(&range2, b"no header").await;
        assert_eq!(corrupt(p.load().await.unwrap_err()).0, range2);

        restore().await;
        p.put(&counters, b"v1 commit=zz write=00\n{}").await;
        assert_eq!(corrupt(p.load().await.unwrap_err()).0, counters);

        restore().await;
        let stray = format!("{DEFAULT_PREFIX}stray");
        p.put(&stray, b"x").await;
        assert_eq!(corrupt(p.load().await.unwrap_err()).0, stray);

        // A settled record without counters: part of a keyspace is missing.
        let q = ConsulPersister::new(agent.client(), "other/", None).unwrap();
        let record = ks.to_records()[0].encode().unwrap();
        q.put(
            "other/ranges/00000000000000000001",
            &record_value(None, &record),
        )
        .await;
        let (key, detail) = corrupt(q.load().await.unwrap_err());
        assert_eq!(key, "range 1");
        assert!(detail.contains("other/counters"), "{detail}");
    }

    #[tokio::test]
    async fn consul_down_is_a_retryable_backend_error() {
        let (agent, p) = start(false).await;
        let mut ks = Keyspace::new();
        p.save(&ks.take_changes()).await.unwrap();
        drop(agent);
        let err = p.save(&split(&mut ks, 1, "m")).await.unwrap_err();
        assert!(matches!(&err, PersistError::Backend { .. }), "{err}");
        assert!(err.is_retryable());
        let err = p.load().await.unwrap_err();
        assert!(matches!(&err, PersistError::Backend { .. }), "{err}");
    }

    #[test]
    fn values_are_binary_safe_and_versioned() {
        let payload = b"\xff\x00\nnot json\n".to_vec();
        let commit = CommitId(0xdead_beef);
        for c in [None, Some(commit)] {
            let value = record_value(c, &payload);
            assert_eq!(parse_record(&value).unwrap(), (c, payload.as_slice()));
        }
        assert!(
            parse_record(b"v7\n{}")
                .unwrap_err()
                .contains("layout version 7")
        );
        assert!(parse_record(b"{}").is_err());
        assert!(parse_record(b"v1 commit=12\n{}").is_err());
        assert!(parse_record(b"v1 other=0000000000000001\n{}").is_err());

        let counters = Counters {
            next_range_id: 7,
            next_placement_id: 9,
            term: 4,
        };
        for value in [
            CountersValue {
                commit: Some(commit),
                write: 3,
                counters: Some(counters),
            },
            CountersValue {
                commit: None,
                write: u64::MAX,
                counters: None,
            },
        ] {
            assert_eq!(parse_counters(&counters_value(&value)).unwrap(), value);
        }
        // The hand-written JSON is serde's.
        let text = counters_value(&CountersValue {
            commit: Some(commit),
            write: 0,
            counters: Some(counters),
        });
        let (_, json) = split_value(&text).unwrap();
        assert_eq!(json, serde_json::to_vec(&counters).unwrap().as_slice());
    }

    #[test]
    fn prefixes_are_checked_and_completed() {
        let client = Client::from_address("http://127.0.0.1:1").unwrap();
        let p = ConsulPersister::new(client.clone(), "a/b", None).unwrap();
        assert_eq!(p.prefix(), "a/b/");
        assert!(ConsulPersister::new(client.clone(), "", None).is_err());
        assert!(ConsulPersister::new(client, "/a/", None).is_err());
    }

    #[test]
    fn batches_respect_both_limits() {
        let op = |id| PlannedOp::Delete {
            slot: RecordSlot::Range(id),
            expect: 1,
        };
        let groups = |sizes: &[usize]| {
            sizes
                .iter()
                .enumerate()
                .map(|(i, size)| vec![(op(i as u64), *size)])
                .collect::<Vec<_>>()
        };
        let limits = BatchLimits { ops: 2, bytes: 100 };
        let lens = |batches: Vec<Vec<PlannedOp>>| batches.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(lens(pack(groups(&[10, 10, 10, 10, 10]), limits)), [2, 2, 1]);
        assert_eq!(lens(pack(groups(&[60, 60, 30, 200]), limits)), [1, 2, 1]);
        // A group is never split.
        let pair = vec![(op(1), 10), (op(1), 10), (op(1), 10)];
        assert_eq!(lens(pack(vec![pair], limits)), [3]);
    }
}
