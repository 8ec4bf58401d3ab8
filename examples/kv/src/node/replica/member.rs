//! A member's side: applying the primary's entries and answering takeovers.

use std::sync::atomic::Ordering;

use ranger_proto::RangeId;
use rocksdb::WriteBatch;
use tonic::Status;

use crate::pb;
use crate::pb::take_over_response::Standing;

use super::super::KvNode;
use super::super::store::StoreError;
use super::{LogState, RangeLog, Record, lock};

/// The status codes a member refuses an entry with; the primary acts on the
/// code (see `primary::forward_to`).
pub mod refusal {
    use tonic::Code;

    /// The range is not on the member (it was dropped): forwarding to it ends.
    pub const NOT_HELD: Code = Code::NotFound;
    /// The member does not follow the log (its join failed): forwarding ends.
    pub const NOT_ATTACHED: Code = Code::FailedPrecondition;
    /// The member took part in a newer epoch: the sender is no longer primary.
    pub const STALE_EPOCH: Code = Code::Aborted;
    /// The entry does not follow the member's last one: the member lags by
    /// more than the log can repair and is no longer forwarded to.
    pub const GAP: Code = Code::OutOfRange;
}

impl KvNode {
    fn held(&self, range: RangeId) -> bool {
        lock(&self.inner.held).contains_key(&range)
    }

    pub(super) fn range_log(&self, range: RangeId) -> Result<std::sync::Arc<RangeLog>, Status> {
        self.inner
            .replicas
            .log(&self.inner.store, range)
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Why this copy of `range` (Active here) must not be the source of a
    /// snapshot: the range is replicated and another copy is, or will be, its
    /// primary. A copy joining the range copies from the primary, because its
    /// delta comes from the primary's write tracking. The primary named by the
    /// newest group may be still taking over: its snapshot is good (it tracks
    /// every write it applies from then on, as member or primary).
    pub fn snapshot_refusal(&self, range: RangeId) -> Option<super::NotPrimary> {
        let me = self.inner.config.self_addr.as_str();
        self.inner
            .replicas
            .check_client(&self.inner.store, range)
            .err()
            .filter(|refused| refused.primary.as_deref() != Some(me))
    }

    /// How many ranges this node serves as primary (a gauge: after a
    /// failover, where the primaries went).
    pub fn primary_ranges(&self) -> usize {
        self.inner.replicas.serving_count()
    }

    /// Whether this copy serves `range` as its primary now; if the newest
    /// group names it primary and its takeover is still running, waits up to
    /// `patience` for it (a copy's delta at activation then goes on, instead
    /// of failing the activation for the controller to retry a second later).
    pub async fn serves_as_primary(&self, range: RangeId, patience: std::time::Duration) -> bool {
        let replicas = &self.inner.replicas;
        let named = || {
            replicas.group(range).and_then(|g| g.primary).as_deref()
                == Some(self.inner.config.self_addr.as_str())
        };
        let deadline = tokio::time::Instant::now() + patience;
        // Polled: a takeover is one round of calls to the members, so this
        // rarely waits more than a few polls.
        while !replicas.is_serving(range) && named() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        replicas.is_serving(range)
    }

    /// Where this copy's replica log of `range` stands, if it follows one
    /// (waits for an entry being applied).
    pub async fn replica_tail(
        &self,
        range: RangeId,
    ) -> Option<super::super::transfer::ReplicaTail> {
        let log = self.inner.replicas.log(&self.inner.store, range).ok()?;
        let record = log.record().await?;
        Some(super::super::transfer::ReplicaTail {
            epoch: record.epoch,
            seq: record.seq,
            joined: false,
        })
    }

    /// Applies one entry from the primary of `epoch`. A repeated entry (the
    /// primary retrying after a lost answer) is acknowledged again, unapplied.
    pub async fn apply_replicated(
        &self,
        range: RangeId,
        epoch: u64,
        entry: pb::Entry,
    ) -> Result<(), Status> {
        if !self.held(range) {
            return Err(Status::new(
                refusal::NOT_HELD,
                format!("range {range} is not on this node"),
            ));
        }
        let log = self.range_log(range)?;
        if epoch < log.seen_epoch.load(Ordering::SeqCst) {
            return Err(Status::new(
                refusal::STALE_EPOCH,
                format!(
                    "range {range}: entry of epoch {epoch}, but this copy took part in a newer one"
                ),
            ));
        }
        let mut state = log.state.lock().await;
        let Some(record) = &state.record else {
            return Err(Status::new(
                refusal::NOT_ATTACHED,
                format!("this copy of range {range} does not follow its replica log"),
            ));
        };
        if epoch != record.epoch {
            return Err(Status::new(
                refusal::STALE_EPOCH,
                format!(
                    "range {range}: entry of epoch {epoch}, but this copy follows epoch {}",
                    record.epoch
                ),
            ));
        }
        if entry.seq <= record.seq {
            return Ok(());
        }
        if entry.seq != record.seq + 1 {
            return Err(Status::new(
                refusal::GAP,
                format!(
                    "range {range}: entry {} after {}: this copy lags and must be copied again",
                    entry.seq, record.seq
                ),
            ));
        }
        self.apply_entry(&log, &mut state, range, Record::after(epoch, entry))
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Writes `next.last`'s changes and `next` in one synced write, then
    /// notes the keys for transfers (a snapshot taken here must see them in
    /// its delta).
    pub(super) async fn apply_entry(
        &self,
        log: &RangeLog,
        state: &mut LogState,
        range: RangeId,
        next: Record,
    ) -> Result<(), StoreError> {
        let store = std::sync::Arc::clone(&self.inner.store);
        let encoded = next.encode();
        let changes = next
            .last
            .as_ref()
            .map(|e| e.changes.clone())
            .unwrap_or_default();
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = WriteBatch::default();
            for change in &changes {
                if change.deleted {
                    batch.delete(&change.key);
                } else {
                    batch.put(&change.key, &change.value);
                }
            }
            store.write_with_replica_record(batch, range, &encoded)?;
            for change in &changes {
                node.inner.trackers.record(&change.key);
            }
            Ok::<(), StoreError>(())
        })
        .await
        .map_err(|join| StoreError::Task {
            reason: join.to_string(),
        })??;
        log.set_record(state, next);
        Ok(())
    }

    /// Where this copy of `range` stands, for a primary taking over in
    /// `epoch`: an attached copy adopts the epoch (and from then on refuses
    /// the older primary's entries); a fresh copy that is complete attaches at
    /// sequence 0 now.
    pub async fn answer_take_over(
        &self,
        range: RangeId,
        epoch: u64,
    ) -> Result<pb::TakeOverResponse, Status> {
        if !self.held(range) {
            return Ok(standing(Standing::NotHeld, None));
        }
        let log = self.range_log(range)?;
        if log.seen_epoch.load(Ordering::SeqCst) > epoch {
            return Err(Status::new(
                refusal::STALE_EPOCH,
                format!("range {range}: this copy already took part in a newer epoch than {epoch}"),
            ));
        }
        log.seen_epoch.fetch_max(epoch, Ordering::SeqCst);
        // A primary of an older epoch stops here: it may no longer write.
        self.stop_serving(range, &log, epoch);
        // A copy being prepared or joining answers without its log's lock: it
        // holds that lock while it fetches its delta from the primary, which
        // may be the very copy asking. The epoch was raised above, before this
        // look: a join that attaches after it sees the raise and undoes itself
        // (`attach_from_delta`), so a copy answered Joining never follows the
        // older primary's log unseen.
        if !log.attached.load(Ordering::SeqCst) && self.is_joining(range) {
            return Ok(standing(Standing::Joining, None));
        }
        let mut state = log.state.lock().await;
        if state.record.is_none() {
            if self.is_joining(range) {
                return Ok(standing(Standing::Joining, None));
            }
            if !self.is_complete(range) {
                return Ok(standing(Standing::Fresh, None));
            }
            self.attach(&log, &mut state, range, Record::start(epoch, 0))
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let Some(record) = state.record.as_mut() else {
            return Err(Status::internal("attached without a record"));
        };
        if record.epoch != epoch {
            record.epoch = epoch;
            let updated = record.clone();
            updated
                .save(&self.inner.store, range)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let record = state.record.clone();
        Ok(standing(Standing::Attached, record))
    }

    /// Makes this copy follow the log from `record` (stored first).
    pub(super) fn attach(
        &self,
        log: &RangeLog,
        state: &mut LogState,
        range: RangeId,
        record: Record,
    ) -> Result<(), StoreError> {
        record.save(&self.inner.store, range)?;
        tracing::info!(%range, epoch = record.epoch, seq = record.seq, "copy attached to the replica log");
        log.set_record(state, record);
        Ok(())
    }

    /// Attaches a copy that just applied the join delta of the range's
    /// serving primary, at the primary's position (the primary made it a
    /// member at the delta's end). Refused if a newer epoch than the
    /// source's already reached this copy: its primary changed during the
    /// join, and the new one does not forward to it.
    pub(crate) fn attach_from_delta(
        &self,
        log: &RangeLog,
        state: &mut LogState,
        range: RangeId,
        source: &str,
        tail: super::super::transfer::ReplicaTail,
    ) -> Result<(), String> {
        let seen = log.seen_epoch.load(Ordering::SeqCst);
        if seen > tail.epoch {
            return Err(format!(
                "range {range}: the primary changed while this copy joined from {source} (epoch {} < {seen}); it must be prepared again",
                tail.epoch
            ));
        }
        self.attach(log, state, range, Record::start(tail.epoch, tail.seq))
            .map_err(|e| e.to_string())?;
        // A takeover may have asked between the check above and the attach,
        // found this copy not attached and left it out. It raised the epoch
        // before it looked (see `answer_take_over`), so it shows here: undo.
        let seen = log.seen_epoch.load(Ordering::SeqCst);
        if seen > tail.epoch {
            self.inner
                .store
                .set_replica_record(range, None)
                .map_err(|e| e.to_string())?;
            state.record = None;
            log.attached.store(false, Ordering::SeqCst);
            return Err(format!(
                "range {range}: the primary changed while this copy joined from {source} (epoch {} < {seen}); it must be prepared again",
                tail.epoch
            ));
        }
        tracing::info!(%range, %source, joined = tail.joined, "copy follows the range's replica log");
        Ok(())
    }

    /// Whether this copy is being prepared from a copy that serves the range
    /// (it joins the log at its delta): noted at prepare, and kept with its
    /// pending transfers across a restart.
    pub(super) fn is_joining(&self, range: RangeId) -> bool {
        self.inner.replicas.is_joining(range)
            || self
                .inner
                .store
                .pending(range)
                .is_ok_and(|pending| pending.iter().any(|p| p.join))
    }

    /// Whether this copy holds all of the range's data as its sources left it
    /// (nothing left to fetch, not joining a live log): such a copy of a range
    /// nobody has written through a log yet may start the log.
    pub(super) fn is_complete(&self, range: RangeId) -> bool {
        self.held(range)
            && !self.is_joining(range)
            && self
                .inner
                .store
                .pending(range)
                .is_ok_and(|pending| pending.is_empty())
    }

    /// Stops serving `range` as primary unless it serves in `epoch` or newer.
    ///
    /// Transfers it began as primary stay valid: as a member it keeps applying
    /// (and tracking) every entry of the next primary, so a delta it sends once
    /// the range is frozen everywhere is complete; a join delta it refuses
    /// (only a serving primary adds members).
    pub(super) fn stop_serving(&self, range: RangeId, log: &RangeLog, epoch: u64) {
        let serving = log.serving();
        if serving != 0
            && serving < epoch
            && log
                .serving
                .compare_exchange(serving, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            tracing::info!(%range, serving, epoch, "no longer the primary");
        }
    }
}

fn standing(standing: Standing, record: Option<Record>) -> pb::TakeOverResponse {
    let (seq, last) = record.map_or((0, None), |r| (r.seq, r.last));
    pb::TakeOverResponse {
        standing: standing as i32,
        seq,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{KvNode, KvNodeConfig};
    use ranger_proto::{Key, RangeMeta};
    use std::time::Duration;

    fn node_holding(dir: &std::path::Path, range: RangeId) -> KvNode {
        let store = crate::node::store::Store::open(dir).expect("store");
        let node = KvNode::open(store, KvNodeConfig::new("127.0.0.1:1")).expect("node");
        let meta = RangeMeta::new(range, Key::from(""), Key::from("")).expect("meta");
        lock(&node.inner.held).insert(range, meta);
        node
    }

    #[tokio::test]
    async fn a_joining_copy_answers_a_takeover_while_its_log_is_locked() {
        // A copy joining holds its log's lock while it fetches its delta from
        // the primary; that primary may be taking over a new epoch and asking
        // this copy where it stands. Waiting for the lock would deadlock them.
        let dir = tempfile::tempdir().expect("dir");
        let range = RangeId::new(1).expect("id");
        let node = node_holding(dir.path(), range);
        node.inner.replicas.set_joining(range, true);
        let log = node.range_log(range).expect("log");
        let _fetching = log.lock_state().await;
        let answer = tokio::time::timeout(Duration::from_secs(5), node.answer_take_over(range, 7))
            .await
            .expect("answered without waiting for the lock")
            .expect("an answer");
        assert_eq!(answer.standing, Standing::Joining as i32);
    }

    #[tokio::test]
    async fn an_entry_of_an_older_epoch_than_one_taken_part_in_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let range = RangeId::new(1).expect("id");
        let node = node_holding(dir.path(), range);
        // A complete fresh copy attaches at the takeover of epoch 9.
        let answer = node.answer_take_over(range, 9).await.expect("answer");
        assert_eq!(answer.standing, Standing::Attached as i32);
        let entry = pb::Entry {
            seq: 1,
            changes: vec![],
        };
        let stale = node
            .apply_replicated(range, 8, entry.clone())
            .await
            .expect_err("epoch 8 is over");
        assert_eq!(stale.code(), refusal::STALE_EPOCH);
        node.apply_replicated(range, 9, entry)
            .await
            .expect("epoch 9 is current");
        let gap = node
            .apply_replicated(
                range,
                9,
                pb::Entry {
                    seq: 3,
                    changes: vec![],
                },
            )
            .await
            .expect_err("entry 2 is missing");
        assert_eq!(gap.code(), refusal::GAP);
    }
}
