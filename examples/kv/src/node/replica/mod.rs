//! Write replication between the copies of a replicated range (R3).
//!
//! At R3 the controller keeps three copies of a range active (DESIGN.md §5) and,
//! when a node is lost, "survivors serve and a new replica is copied from them"
//! (§6, SCENARIOS.md #31). Keeping the copies equal is the storage system's job;
//! this module is how the KV example does it: primary-backup, with the
//! controller as the one that names the primary.
//!
//! - **Groups.** Every probe carries, for each replicated range with a copy
//!   here, its [`ReplicaGroup`]: the members (every copy that holds the range or
//!   is loading it), the primary (an active copy) and an epoch that grows with
//!   each decision. A node applies only a group newer than the one it has.
//! - **Writes** go to the primary only: every other copy refuses client reads
//!   and writes with FAILED_PRECONDITION naming the primary, so a client never
//!   reads a copy that may lag. The primary orders a range's writes one at a
//!   time: the next sequence number, applied locally together with the copy's
//!   [`Record`], then forwarded to every attached member, and acknowledged only
//!   once all of them applied it. So the attached members differ by at most the
//!   one entry in flight, and every acknowledged write is on each of them. (A
//!   member that left the group, answered that it holds no copy or no log, or
//!   is still joining is not waited for.)
//! - **Takeover.** A primary of a new epoch serves only after it sent
//!   `TakeOver` to every member: each adopts the epoch (from then on it refuses
//!   the older primary's entries, so a deposed primary can acknowledge nothing)
//!   and answers how far it got. The new primary applies the one entry it may
//!   lack and sends it to those that lack it: every member then has the same
//!   log. It waits for members that are still activating a fresh copy (a new
//!   range, a split or join's child: they attach at sequence 0), but not for
//!   copies still being prepared from a live primary.
//! - **Joining.** A copy added to a serving range copies a snapshot from the
//!   primary (another member refuses, naming the primary) while writes go on;
//!   at activation it fetches the delta from the primary, which holds its writes
//!   meanwhile and makes the new copy a member at the delta's end.
//!
//! The controller activates a copy of a replicated range only once a probe has
//! told its node the range's group (a copy activated unaware would serve as if
//! it were alone).
//!
//! Members that fall behind by more than one entry (a copy that was away while
//! others moved on) are never forwarded to and never made current: they are
//! logged at ERROR, and a takeover by such a copy refuses to serve rather than
//! serve stale data. Not done yet: telling the controller, so that it replaces
//! such a copy; bounding how long a write waits for a member the primary
//! cannot reach but the controller still counts (it waits until the member is
//! declared lost); and tagging entries with their epoch (a takeover compares
//! sequence numbers only, which is enough while every entry at one number
//! comes from one primary).

mod member;
mod primary;
mod record;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ranger_proto::{RangeId, ReplicaGroup};

use super::lock;
use super::store::{Store, StoreError};

pub use primary::ReplicaWriteError;
pub use record::Record;

/// The replication state of every range on this node.
#[derive(Debug, Default)]
pub struct Replicas {
    /// The newest group the controller sent per range.
    groups: Mutex<HashMap<RangeId, ReplicaGroup>>,
    /// Each range's log position and role, loaded from the store on first use.
    logs: Mutex<HashMap<RangeId, Arc<RangeLog>>>,
    /// Ranges being prepared from a copy that serves them: they join the log at
    /// their delta, so a takeover need not wait for them.
    joining: Mutex<HashSet<RangeId>>,
}

/// One range's replica log here.
#[derive(Debug)]
pub struct RangeLog {
    /// Held by the primary for each write (applied here, then forwarded), and
    /// by a member for each entry it applies or takeover it answers: the log's
    /// order is the order of this lock.
    state: Arc<tokio::sync::Mutex<LogState>>,
    /// The epoch in which this copy serves as primary; 0 when it does not.
    /// Read on every client request, without the lock.
    serving: AtomicU64,
    /// The highest epoch this copy has been asked to take part in: a join
    /// delta from an older primary must not attach it.
    seen_epoch: AtomicU64,
    /// Whether the copy follows the log (a record exists): such a copy never
    /// serves clients unless it is the serving primary.
    attached: std::sync::atomic::AtomicBool,
    /// The members the primary forwards to. Apart from the lock, so that a new
    /// group can remove a member while a write waits on it.
    targets: Mutex<Vec<String>>,
}

/// What the log lock guards.
#[derive(Debug, Default)]
pub struct LogState {
    /// `None` until the copy attaches (joins the log or starts it).
    record: Option<Record>,
}

impl RangeLog {
    fn new(record: Option<Record>) -> RangeLog {
        RangeLog {
            serving: AtomicU64::new(0),
            seen_epoch: AtomicU64::new(record.as_ref().map_or(0, |r| r.epoch)),
            attached: std::sync::atomic::AtomicBool::new(record.is_some()),
            state: Arc::new(tokio::sync::Mutex::new(LogState { record })),
            targets: Mutex::new(Vec::new()),
        }
    }

    pub fn serving(&self) -> u64 {
        self.serving.load(Ordering::SeqCst)
    }

    fn set_record(&self, state: &mut LogState, record: Record) {
        self.seen_epoch.fetch_max(record.epoch, Ordering::SeqCst);
        self.attached.store(true, Ordering::SeqCst);
        state.record = Some(record);
    }

    /// The log's lock, owned: a joining copy holds it across its delta.
    pub async fn lock_state(&self) -> tokio::sync::OwnedMutexGuard<LogState> {
        Arc::clone(&self.state).lock_owned().await
    }

    /// The log's position now (waits for the write or entry in progress).
    pub async fn record(&self) -> Option<Record> {
        self.state.lock().await.record.clone()
    }

    /// Adds `joiner` to the members the primary forwards to (it has just been
    /// sent the delta that makes its copy current).
    pub fn add_target(&self, joiner: &str) {
        let mut targets = lock(&self.targets);
        if !targets.iter().any(|t| t == joiner) {
            targets.push(joiner.to_owned());
        }
    }

    fn targets(&self) -> Vec<String> {
        lock(&self.targets).clone()
    }

    fn is_target(&self, addr: &str) -> bool {
        lock(&self.targets).iter().any(|t| t == addr)
    }

    fn drop_target(&self, addr: &str) {
        lock(&self.targets).retain(|t| t != addr);
    }
}

/// Why a client may not use this copy of a replicated range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPrimary {
    pub range: RangeId,
    /// The primary this node last heard of, if any.
    pub primary: Option<String>,
}

impl Replicas {
    /// The range's log, loaded from `store` the first time.
    pub fn log(&self, store: &Store, range: RangeId) -> Result<Arc<RangeLog>, StoreError> {
        if let Some(log) = lock(&self.logs).get(&range) {
            return Ok(Arc::clone(log));
        }
        let record = Record::load(store, range)?;
        let mut logs = lock(&self.logs);
        Ok(Arc::clone(
            logs.entry(range)
                .or_insert_with(|| Arc::new(RangeLog::new(record))),
        ))
    }

    /// The newest group of `range`, if it is replicated.
    pub fn group(&self, range: RangeId) -> Option<ReplicaGroup> {
        lock(&self.groups).get(&range).cloned()
    }

    /// Whether `group` is still the newest of its range.
    fn is_current(&self, group: &ReplicaGroup) -> bool {
        lock(&self.groups)
            .get(&group.range)
            .is_some_and(|g| g.epoch == group.epoch)
    }

    /// Records `group` if it is newer than the one held, and returns it if
    /// so; in the same step (under the groups' lock, which a takeover also
    /// holds when it starts serving) `log` stops serving any older epoch.
    fn accept(&self, group: ReplicaGroup, log: &RangeLog) -> Option<ReplicaGroup> {
        let mut groups = lock(&self.groups);
        match groups.get(&group.range) {
            Some(held) if held.epoch >= group.epoch => None,
            _ => {
                let serving = log.serving();
                if serving != 0 && serving < group.epoch {
                    log.serving.store(0, Ordering::SeqCst);
                }
                groups.insert(group.range, group.clone());
                Some(group)
            }
        }
    }

    /// Makes `log` serve `group`'s epoch, unless a newer group arrived
    /// meanwhile (checked under the groups' lock, see [`Replicas::accept`]).
    fn serve_if_current(&self, group: &ReplicaGroup, log: &RangeLog) -> bool {
        let groups = lock(&self.groups);
        let current = groups
            .get(&group.range)
            .is_some_and(|g| g.epoch == group.epoch);
        if current {
            log.serving.store(group.epoch, Ordering::SeqCst);
        }
        current
    }

    /// Whether clients may read and write `range` here, as far as replication
    /// is concerned: yes for a range that is not replicated (R1), else only at
    /// its serving primary.
    pub fn check_client(&self, store: &Store, range: RangeId) -> Result<(), NotPrimary> {
        if self.is_serving(range) || !self.is_replicated(store, range) {
            return Ok(());
        }
        Err(NotPrimary {
            range,
            primary: self.group(range).and_then(|g| g.primary),
        })
    }

    /// Whether `range`'s writes go through its log here: the controller sent
    /// a group for it, or this copy follows a log. (An unreadable record
    /// counts as replicated: the log path refuses rather than guess.)
    pub fn is_replicated(&self, store: &Store, range: RangeId) -> bool {
        if lock(&self.groups).contains_key(&range) {
            return true;
        }
        match self.log(store, range) {
            Ok(log) => log.attached.load(Ordering::SeqCst),
            Err(e) => {
                tracing::error!(%range, error = %e, "cannot read the replica record; refusing clients");
                true
            }
        }
    }

    /// The logs of the ranges this node serves as primary now.
    fn serving_logs(&self) -> Vec<(RangeId, Arc<RangeLog>)> {
        lock(&self.logs)
            .iter()
            .filter(|(_, log)| log.serving() != 0)
            .map(|(range, log)| (*range, Arc::clone(log)))
            .collect()
    }

    /// Drops the group held for `range` (this copy left it).
    fn forget_group(&self, range: RangeId) {
        lock(&self.groups).remove(&range);
    }

    /// How many ranges this node serves as primary now.
    pub fn serving_count(&self) -> usize {
        lock(&self.logs)
            .values()
            .filter(|log| log.serving() != 0)
            .count()
    }

    /// Whether this node serves `range` as its primary now.
    pub fn is_serving(&self, range: RangeId) -> bool {
        lock(&self.logs)
            .get(&range)
            .is_some_and(|log| log.serving() != 0)
    }

    /// Notes that `range` is being prepared by copying it from a copy that
    /// serves it (or not).
    pub fn set_joining(&self, range: RangeId, joining: bool) {
        let mut set = lock(&self.joining);
        if joining {
            set.insert(range);
        } else {
            set.remove(&range);
        }
    }

    pub fn is_joining(&self, range: RangeId) -> bool {
        lock(&self.joining).contains(&range)
    }

    /// Makes this node's copy of `range` follow no log (it is being copied in
    /// anew): a record left from an earlier copy would claim a place in the
    /// log that the new data does not have.
    pub async fn detach(&self, store: &Store, range: RangeId) -> Result<(), StoreError> {
        let log = self.log(store, range)?;
        let mut state = log.state.lock().await;
        if state.record.is_some() {
            store.set_replica_record(range, None)?;
            state.record = None;
            log.attached.store(false, Ordering::SeqCst);
        }
        log.serving.store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Forgets everything about `range` (it was dropped here).
    pub fn forget(&self, range: RangeId) {
        lock(&self.logs).remove(&range);
        lock(&self.joining).remove(&range);
    }
}
