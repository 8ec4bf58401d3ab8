//! The primary's side: taking over an epoch, ordering writes, forwarding them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ranger_proto::{RangeId, ReplicaGroup};
use tonic::Status;

use crate::pb;
use crate::pb::take_over_response::Standing;

use super::super::KvNode;
use super::super::transfer::{ChunkStream, ReplicaTail};
use super::member::refusal;
use super::{NotPrimary, RangeLog, Record};

/// Why a replicated write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaWriteError {
    #[error("range {}: this copy is not its serving primary", .0.range)]
    NotPrimary(NotPrimary),
    /// The range's group changed while the entry was being forwarded: the
    /// next primary's takeover settles it (the write may well have landed), so
    /// the client may retry.
    #[error(
        "range {range}: the write was interrupted by a change of primary and may have landed: {reason}"
    )]
    Interrupted { range: RangeId, reason: String },
    #[error("range {range}: {reason}")]
    Failed { range: RangeId, reason: String },
}

/// Why a takeover could not finish (yet).
#[derive(Debug, thiserror::Error)]
enum TakeOverError {
    /// Worth trying again soon: a member is unreachable or still activating.
    #[error("{0}")]
    NotYet(String),
    /// The copies disagree by more than one entry: serving would risk
    /// acknowledged writes. Loud, and retried slowly until the controller
    /// names another primary (the range waits meanwhile).
    #[error("{0}")]
    Diverged(String),
}

/// Pause between two tries of a forward or a takeover: short at first (a
/// member restarting), then at most this.
const RETRY_MAX: Duration = Duration::from_millis(500);
const RETRY_FIRST: Duration = Duration::from_millis(20);

impl KvNode {
    /// Applies the groups a probe carried: for each one newer than what this
    /// node has, forwarding stops to copies that left the group, and a copy
    /// named primary of a new epoch takes over; any other stops serving.
    ///
    /// A probe carries the group of every replicated range this node is a
    /// member of, so a range served here as primary whose group is missing
    /// means the controller no longer counts this copy (it was declared lost
    /// and replaced, while this node was cut off): it stops serving at once,
    /// before the lease this same probe grants lets a client write reach it.
    pub(crate) fn apply_replica_groups(&self, groups: Vec<ReplicaGroup>) {
        let listed: std::collections::HashSet<RangeId> = groups.iter().map(|g| g.range).collect();
        for (range, log) in self.inner.replicas.serving_logs() {
            if !listed.contains(&range) {
                tracing::warn!(%range, "this copy is no longer a member of its range's group: no longer the primary");
                log.serving.store(0, Ordering::SeqCst);
                self.inner.replicas.forget_group(range);
            }
        }
        for group in groups {
            let range = group.range;
            // Read first: a group accepted but never applied would not be
            // applied again (the next probe's has the same epoch).
            let log = match self.inner.replicas.log(&self.inner.store, range) {
                Ok(log) => log,
                Err(e) => {
                    tracing::error!(%range, error = %e, "cannot read the replica record");
                    continue;
                }
            };
            let was_serving = log.serving();
            let Some(group) = self.inner.replicas.accept(group, &log) else {
                continue;
            };
            if was_serving != 0 && log.serving() == 0 {
                tracing::info!(%range, serving = was_serving, epoch = group.epoch, "stopped serving the older epoch");
            }
            super::lock(&log.targets).retain(|t| group.members.contains(t));
            let me = &self.inner.config.self_addr;
            if group.primary.as_deref() == Some(me.as_str()) {
                // `accept` stopped any older epoch's writes: the takeover
                // serves the new one once every member has adopted it.
                tracing::info!(%range, epoch = group.epoch, members = ?group.members, "named primary; taking over");
                let node = self.clone();
                tokio::spawn(async move { node.take_over(group).await });
            }
        }
    }

    /// Takes over `group` (this node is its primary), trying until it serves
    /// or a newer group replaces it.
    async fn take_over(&self, group: ReplicaGroup) {
        let range = group.range;
        let mut pause = RETRY_FIRST;
        let mut tries = 0u32;
        while self.inner.replicas.is_current(&group) {
            match self.try_take_over(&group).await {
                Ok(seq) => {
                    tracing::info!(%range, epoch = group.epoch, seq, "serving as primary");
                    return;
                }
                Err(TakeOverError::NotYet(reason)) => {
                    tries += 1;
                    if tries % 20 == 1 {
                        tracing::info!(%range, epoch = group.epoch, %reason, "takeover waits");
                    }
                }
                Err(TakeOverError::Diverged(reason)) => {
                    tracing::error!(%range, epoch = group.epoch, %reason, "refusing to serve: the copies diverged");
                    pause = RETRY_MAX;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One try: every other member adopts the epoch and says how far it got;
    /// the highest entry is brought to everyone; then this copy serves.
    /// Returns the sequence number it serves from.
    ///
    /// The log's lock is never held while a peer is asked anything: a member
    /// answering may itself wait for a lock (a copy joining holds its own
    /// while it fetches from this one), and two copies taking over at once
    /// must not wait on each other. Nothing writes meanwhile: this copy serves
    /// no epoch until the end, and it refuses older epochs' entries.
    async fn try_take_over(&self, group: &ReplicaGroup) -> Result<u64, TakeOverError> {
        let range = group.range;
        let epoch = group.epoch;
        let not_yet = |e: &dyn std::fmt::Display| TakeOverError::NotYet(e.to_string());
        let log = self
            .inner
            .replicas
            .log(&self.inner.store, range)
            .map_err(|e| not_yet(&e))?;
        log.seen_epoch.fetch_max(epoch, Ordering::SeqCst);
        let mine = {
            let mut state = log.state.lock().await;
            if state.record.is_none() {
                // A fresh copy (a new range, a child) starts the log; a copy
                // that should have joined one never serves.
                if !self.is_complete(range) {
                    return Err(TakeOverError::NotYet(
                        "this copy does not hold the range's data yet".into(),
                    ));
                }
                self.attach(&log, &mut state, range, Record::start(epoch, 0))
                    .map_err(|e| not_yet(&e))?;
            }
            state
                .record
                .clone()
                .ok_or_else(|| TakeOverError::NotYet("no record".into()))?
        };
        let me = self.inner.config.self_addr.clone();
        let others: Vec<String> = group
            .members
            .iter()
            .filter(|m| **m != me)
            .cloned()
            .collect();
        let answers = futures::future::join_all(
            others
                .iter()
                .map(|member| self.ask_take_over(member, range, epoch)),
        )
        .await;
        let mut attached: Vec<(String, u64, Option<pb::Entry>)> = Vec::new();
        for (member, answer) in others.into_iter().zip(answers) {
            let answer = answer
                .map_err(|e| TakeOverError::NotYet(format!("member {member}: {}", e.message())))?;
            match Standing::try_from(answer.standing) {
                Ok(Standing::Attached) => attached.push((member, answer.seq, answer.last)),
                Ok(Standing::Joining) => {}
                Ok(Standing::Fresh) => {
                    return Err(TakeOverError::NotYet(format!(
                        "member {member} is still activating its copy"
                    )));
                }
                Ok(Standing::NotHeld) => {
                    return Err(TakeOverError::NotYet(format!(
                        "member {member} has not begun to prepare the range"
                    )));
                }
                Err(_) => {
                    return Err(TakeOverError::NotYet(format!(
                        "member {member} answered an unknown standing {}",
                        answer.standing
                    )));
                }
            }
        }
        let highest = attached
            .iter()
            .map(|(_, seq, _)| *seq)
            .chain([mine.seq])
            .max()
            .unwrap_or(mine.seq);
        if highest > mine.seq + 1 {
            return Err(TakeOverError::Diverged(format!(
                "this copy is at entry {} but a member is at {highest}",
                mine.seq
            )));
        }
        // The entry at `highest`, from whoever kept it. A copy that joined
        // at `highest` (from a delta) or a restarted one may not have the
        // entry itself; any copy at `highest` that kept it will do.
        let newest: Option<pb::Entry> = mine
            .last
            .iter()
            .chain(attached.iter().filter_map(|(_, _, last)| last.as_ref()))
            .find(|entry| entry.seq == highest)
            .cloned();
        if highest == mine.seq + 1 && newest.is_none() {
            return Err(TakeOverError::Diverged(format!(
                "a member is at entry {highest}, one past this copy, and none kept that entry"
            )));
        }
        // Members one entry behind need `newest`; without it they lag like
        // the others further behind.
        let (current, lagging): (Vec<_>, Vec<_>) = attached
            .into_iter()
            .partition(|(_, seq, _)| *seq == highest || (*seq + 1 == highest && newest.is_some()));
        for (member, seq, _) in &lagging {
            tracing::error!(%range, %member, seq, highest, "member lags by more than one entry: not forwarded to; it must be copied again");
        }
        {
            let mut state = log.state.lock().await;
            if state.record.as_ref().map(|r| r.seq) != Some(mine.seq) {
                return Err(TakeOverError::NotYet(
                    "this copy's log moved during the takeover".into(),
                ));
            }
            if highest == mine.seq + 1
                && let Some(entry) = newest.clone()
            {
                self.apply_entry(&log, &mut state, range, Record::after(epoch, entry))
                    .await
                    .map_err(|e| not_yet(&e))?;
            } else if mine.epoch != epoch {
                let mut adopted = mine.clone();
                adopted.epoch = epoch;
                adopted
                    .save(&self.inner.store, range)
                    .map_err(|e| not_yet(&e))?;
                log.set_record(&mut state, adopted);
            }
        }
        if let Some(entry) = &newest {
            for (member, seq, _) in current.iter().filter(|(_, seq, _)| *seq < highest) {
                self.send_entry(member, range, epoch, entry)
                    .await
                    .map_err(|status| {
                        TakeOverError::NotYet(format!(
                            "member {member} at {seq} did not take entry {highest}: {}",
                            status.message()
                        ))
                    })?;
            }
        }
        let _state = log.state.lock().await;
        *super::lock(&log.targets) = current.into_iter().map(|(member, ..)| member).collect();
        if !self.inner.replicas.serve_if_current(group, &log) {
            return Err(TakeOverError::NotYet("a newer group arrived".into()));
        }
        Ok(highest)
    }

    /// The delta of `transfer` for `joiner`, a copy of `range` being
    /// activated, from this serving primary: writes wait from now until the
    /// stream is over, and `joiner` is a member from its last chunk on (it
    /// holds its own log's lock meanwhile, so the next entry waits for it).
    pub(crate) async fn join_delta(
        &self,
        range: RangeId,
        transfer: u64,
        joiner: String,
    ) -> Result<ChunkStream<pb::DeltaChunk>, Status> {
        let log = self.range_log(range)?;
        let state = log.lock_state().await;
        let epoch = log.serving();
        let Some(record) = state
            .record
            .clone()
            .filter(|r| epoch != 0 && r.epoch == epoch)
        else {
            return Err(Status::failed_precondition(format!(
                "range {range}: this copy stopped serving as primary; the copy must be prepared again"
            )));
        };
        let Some((_, _, keys)) = self.inner.trackers.changes(transfer) else {
            return Err(Status::not_found(format!(
                "transfer {transfer} is unknown here"
            )));
        };
        let tail = ReplicaTail {
            epoch,
            seq: record.seq,
            joined: true,
        };
        let member = Arc::clone(&log);
        let on_end = Box::new(move |sent: bool| {
            if sent {
                member.add_target(&joiner);
                tracing::info!(%range, %joiner, epoch, seq = tail.seq, "a new copy joined the range's members");
            }
            drop(state);
        });
        Ok(self.stream_delta(keys, Some(tail), on_end))
    }

    async fn ask_take_over(
        &self,
        member: &str,
        range: RangeId,
        epoch: u64,
    ) -> Result<pb::TakeOverResponse, Status> {
        let mut client = self
            .peer_client(member)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = pb::TakeOverRequest {
            range: range.get(),
            epoch,
        };
        let timeout = self.inner.config.peer_timeout;
        match tokio::time::timeout(timeout, client.take_over(request)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    async fn send_entry(
        &self,
        member: &str,
        range: RangeId,
        epoch: u64,
        entry: &pb::Entry,
    ) -> Result<(), Status> {
        let mut client = self
            .peer_client(member)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let request = pb::ReplicateRequest {
            range: range.get(),
            epoch,
            entry: Some(entry.clone()),
        };
        let timeout = self.inner.config.peer_timeout;
        match tokio::time::timeout(timeout, client.replicate(request)).await {
            Ok(answer) => answer.map(|_| ()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    /// A client write of `range`'s `changes`, as its serving primary: the next
    /// entry, applied here, then on every member; acknowledged once all have
    /// it. Runs to the end even if the caller goes away (call it in a task of
    /// its own): an entry half forwarded would leave the members a gap.
    pub(crate) async fn replicated_write(
        &self,
        range: RangeId,
        changes: Vec<pb::Change>,
    ) -> Result<u64, ReplicaWriteError> {
        let failed = |reason: String| ReplicaWriteError::Failed { range, reason };
        let log = self
            .inner
            .replicas
            .log(&self.inner.store, range)
            .map_err(|e| failed(e.to_string()))?;
        let mut state = log.state.lock().await;
        let epoch = log.serving();
        let not_primary = || {
            ReplicaWriteError::NotPrimary(NotPrimary {
                range,
                primary: self.inner.replicas.group(range).and_then(|g| g.primary),
            })
        };
        let Some(record) = state
            .record
            .as_ref()
            .filter(|r| epoch != 0 && r.epoch == epoch)
        else {
            return Err(not_primary());
        };
        let entry = pb::Entry {
            seq: record.seq + 1,
            changes,
        };
        self.apply_entry(&log, &mut state, range, Record::after(epoch, entry.clone()))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let targets = log.targets();
        let forwarded = futures::future::join_all(
            targets
                .iter()
                .map(|target| self.forward_to(&log, target, range, epoch, &entry)),
        )
        .await;
        for (target, outcome) in targets.iter().zip(forwarded) {
            if let Err(reason) = outcome {
                return Err(ReplicaWriteError::Interrupted {
                    range,
                    reason: format!("member {target}: {reason}"),
                });
            }
        }
        Ok(entry.seq)
    }

    /// Sends `entry` to `target` until it has it, the group drops the target,
    /// or the target shows this copy is no longer primary. Once a newer epoch
    /// reached this copy, a failed send is not retried: that epoch's takeover
    /// brings every member to the same last entry, this one included.
    async fn forward_to(
        &self,
        log: &RangeLog,
        target: &str,
        range: RangeId,
        epoch: u64,
        entry: &pb::Entry,
    ) -> Result<(), String> {
        let mut pause = RETRY_FIRST;
        let mut tries = 0u32;
        loop {
            if !log.is_target(target) {
                return Ok(()); // It left the group: it no longer counts.
            }
            let status = match self.send_entry(target, range, epoch, entry).await {
                Ok(()) => return Ok(()),
                Err(status) => status,
            };
            match status.code() {
                code if code == refusal::STALE_EPOCH => {
                    tracing::warn!(%range, %target, epoch, "a member follows a newer epoch: stepping down");
                    let _ =
                        log.serving
                            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
                    return Err(status.message().to_owned());
                }
                code if code == refusal::NOT_HELD
                    || code == refusal::NOT_ATTACHED
                    || code == refusal::GAP =>
                {
                    tracing::warn!(%range, %target, code = ?code, message = status.message(), "member no longer forwarded to");
                    log.drop_target(target);
                    return Ok(());
                }
                _ if log.seen_epoch.load(Ordering::SeqCst) > epoch => {
                    return Err(format!(
                        "a newer epoch began while the entry was out: {}",
                        status.message()
                    ));
                }
                _ => {
                    tries += 1;
                    if tries % 20 == 1 {
                        tracing::warn!(%range, %target, seq = entry.seq, message = status.message(), "member did not take an entry; retrying until it does or leaves the group");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
