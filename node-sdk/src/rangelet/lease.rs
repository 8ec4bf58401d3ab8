//! The controller's write lease, and what its lapse fences.
//!
//! Leases (DESIGN.md §6, SCENARIOS.md #38, #40): once a controller grants a lease
//! with its probe (`Info` with a non-zero lease), Active ranges may write only
//! until it ends; the end is always "now + the latest grant" (a probe granting
//! nothing leaves it alone). When it lapses, every range that may serve is fenced
//! and deactivated, because the controller may re-place them elsewhere. An
//! activation that began before a lapse and ends after it, or that is asked for
//! while the lease is lapsed, fails and leaves the range Inactive: only an Activate
//! under a live lease makes this copy the writer again. A node that never received
//! a lease (the reference controller grants none) is never fenced.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ranger_proto::{LoadInfo, RangeId, RangeInfo, RemoteState, ReplicaGroup};
use tokio::time::Instant;

use super::errors::CommandError;
use super::handle::Rangelet;
use super::table::{RangeChange, Table};
use crate::metrics::CallbackKind;
use crate::node::Node;
use crate::state_store::lock;

/// The failure an Activate reports when it began after the controller's lease
/// lapsed (SCENARIOS.md #40).
pub(super) const LEASE_LAPSED_BEFORE_ACTIVATE: &str =
    "the controller's lease has lapsed: not activating (the range may be served elsewhere now)";

/// The failure an Activate reports when the lease lapsed while its callback ran.
pub(super) const LEASE_LAPSED_DURING_ACTIVATE: &str = "the controller's lease lapsed while activating: rolled back (the range may be served elsewhere now)";

/// What a lease grant leaves to do once the table lock is released.
struct Granted {
    /// The first lease ever: start the watchdog.
    first: bool,
    /// Ranges a late renewal fenced: deactivate them.
    fenced: usize,
}

/// Where a lease too long to represent ends: far enough to be "never", near
/// enough for `Instant` arithmetic.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl<N: Node> Rangelet<N> {
    /// Every range with its load, for the controller's probe. Granting a lease
    /// (`Some`, non-zero) makes the lease end `lease` from now, whatever an earlier
    /// grant said: the controller counts a silent node's loss from its latest
    /// lease-granting probe, so the node never outlasts that grant (DESIGN.md §6).
    /// `None` and a zero lease (the wire's `lease_millis = 0`, which the reference
    /// controller always sends, and ours after a failed probe) grant nothing: the
    /// lease in force, if any, neither grows nor shrinks.
    pub async fn info(&self, lease: Option<Duration>) -> Vec<RangeInfo> {
        let granted = lease
            .filter(|l| !l.is_zero())
            .map(|lease| self.grant_lease(&mut lock(&self.inner.table), lease));
        self.after_grant(granted);
        self.report().await
    }

    /// [`Rangelet::info`] sent by a controller in `term` (0: no term). A probe from
    /// a stale term is refused and grants nothing: a deposed leader must not keep
    /// a node writable that the new leader is waiting out (SCENARIOS.md #43).
    pub async fn info_in_term(
        &self,
        term: u64,
        lease: Option<Duration>,
    ) -> Result<Vec<RangeInfo>, CommandError> {
        let granted = {
            let mut table = lock(&self.inner.table);
            self.check_term(&mut table, term)?;
            lease
                .filter(|l| !l.is_zero())
                .map(|lease| self.grant_lease(&mut table, lease))
        };
        self.after_grant(granted);
        Ok(self.report().await)
    }

    /// [`Rangelet::info_in_term`] for a probe that carries replica groups:
    /// they reach the storage system ([`Node::replica_groups`], every probe,
    /// the list empty at R1) once the term is checked and *before* the lease
    /// is granted, so that a copy the controller no longer counts stops taking
    /// writes before the new lease could let one in.
    pub async fn probe(
        &self,
        term: u64,
        lease: Option<Duration>,
        groups: Vec<ReplicaGroup>,
    ) -> Result<Vec<RangeInfo>, CommandError> {
        self.check_term(&mut lock(&self.inner.table), term)?;
        self.inner.node.replica_groups(groups).await;
        self.info_in_term(term, lease).await
    }

    /// Every range with its state and load.
    async fn report(&self) -> Vec<RangeInfo> {
        let ranges: Vec<RangeChange> = lock(&self.inner.table).snapshot();
        let loads = futures::future::join_all(ranges.iter().map(|r| async {
            let load = self.inner.node.load_info(r.meta.id());
            match self.metrics().time(CallbackKind::LoadInfo, load).await {
                Ok(load) => load,
                Err(e) => {
                    tracing::debug!(range = %r.meta.id(), error = %e, "load_info failed; reporting no load");
                    LoadInfo::default()
                }
            }
        }))
        .await;
        ranges
            .into_iter()
            .zip(loads)
            .map(|(r, load)| RangeInfo {
                meta: r.meta,
                state: r.state,
                load,
            })
            .collect()
    }

    /// Whether the controller's lease (if one was ever granted) still holds.
    pub fn lease_valid(&self) -> bool {
        self.inner
            .lease_until
            .borrow()
            .is_none_or(|until| Instant::now() < until)
    }

    /// Follows the controller's lease. When it lapses without renewal, the node
    /// fences every Active range (see [`Rangelet::may_write`]) and deactivates it:
    /// a controller that lost touch with this node may already have activated the
    /// range elsewhere, so only an explicit Activate (sent after the controller
    /// checked) may bring it back.
    async fn watch_lease(self) {
        let mut lease = self.inner.lease_until.subscribe();
        let shutdown = self.shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            let Some(until) = *lease.borrow_and_update() else {
                return;
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(until) => {
                    // (A timer may wake early for a deadline beyond its range:
                    // only a lease that really ran out expires.)
                    if *lease.borrow() == Some(until) && Instant::now() >= until {
                        self.expire_lease();
                        tokio::select! {
                            _ = &mut shutdown => return,
                            changed = lease.changed() => if changed.is_err() { return },
                        }
                    }
                }
                changed = lease.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Extends (or shortens) the lease to `lease` from now. When the lease in force
    /// had already lapsed (the watchdog may not have run yet), everything that may
    /// serve is fenced under the same lock, before the new lease makes anything
    /// writable again.
    /// Returns what [`Rangelet::after_grant`] must do once the lock is released.
    fn grant_lease(&self, table: &mut Table, lease: Duration) -> Granted {
        let now = Instant::now();
        // A peer can send any number of milliseconds; never overflow on it.
        let until = now.checked_add(lease).unwrap_or_else(|| now + FAR_FUTURE);
        let previous = self.inner.lease_until.send_replace(Some(until));
        match previous {
            // The first lease: from now on a lapse must fence this node.
            None => Granted {
                first: true,
                fenced: 0,
            },
            Some(old) if old <= now => Granted {
                first: false,
                fenced: fence_serving(table),
            },
            Some(_) => Granted {
                first: false,
                fenced: 0,
            },
        }
    }

    /// Starts the lease watchdog after the first grant, and the deactivation of
    /// whatever a late renewal fenced.
    fn after_grant(&self, granted: Option<Granted>) {
        let Some(granted) = granted else {
            return;
        };
        if granted.first {
            tokio::spawn(self.clone().watch_lease());
        }
        self.deactivate_fenced_in_background(granted.fenced);
    }

    /// Whether a lease was granted and has run out (a node that never got one has
    /// nothing to lapse: the reference controller grants none).
    pub(super) fn lease_lapsed(&self) -> bool {
        self.inner
            .lease_until
            .borrow()
            .is_some_and(|until| Instant::now() >= until)
    }

    /// Fences every range that may be serving, then deactivates them in the
    /// background until it sticks, so that the node reports them Inactive and the
    /// controller can re-activate whichever it still wants here.
    fn expire_lease(&self) {
        let fenced = fence_serving(&mut lock(&self.inner.table));
        self.deactivate_fenced_in_background(fenced);
    }

    /// Starts the task deactivating fenced Active ranges, unless one runs already
    /// or `fenced` is 0.
    pub(super) fn deactivate_fenced_in_background(&self, fenced: usize) {
        if fenced == 0 || self.inner.deactivating_fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            ranges = fenced,
            "controller lease lapsed: fenced active ranges; deactivating them"
        );
        let this = self.clone();
        tokio::spawn(async move {
            this.deactivate_fenced().await;
            this.inner
                .deactivating_fenced
                .store(false, Ordering::SeqCst);
        });
    }

    async fn deactivate_fenced(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let still_active: Vec<RangeId> = {
                let table = lock(&self.inner.table);
                table
                    .fenced
                    .iter()
                    .filter(|id| table.state(**id) == RemoteState::Active)
                    .copied()
                    .collect()
            };
            if still_active.is_empty() || *self.inner.shutdown.borrow() {
                return;
            }
            for id in still_active {
                match self.deactivate(id).await {
                    Ok(outcome) if outcome.failure.is_none() => {}
                    Ok(outcome) => {
                        tracing::warn!(range = %id, failure = ?outcome.failure, "deactivate after lease lapse failed; retrying")
                    }
                    Err(e) => {
                        tracing::warn!(range = %id, error = %e, "deactivate after lease lapse refused; retrying")
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Records a lapse of the controller's lease and fences every range that may be
/// serving writes (Activating ones too: their activation will fail, see
/// `finish_activate`). Returns how many ranges it fenced.
fn fence_serving(table: &mut Table) -> usize {
    table.lease_lapses += 1;
    let serving: Vec<RangeId> = table
        .ranges
        .iter()
        .filter(|(_, e)| e.state.may_serve_writes())
        .map(|(id, _)| *id)
        .collect();
    table.fenced.extend(serving.iter().copied());
    serving.len()
}
