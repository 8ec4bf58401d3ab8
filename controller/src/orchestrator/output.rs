//! What the engine hands the runtime, and in which order: the engine's whole
//! output, so that the runtime only executes and never decides.
//!
//! Three rules live here and nowhere else:
//! - **Nothing is sent before the term is durable** (SCENARIOS.md #43): the first
//!   steps of a new engine only ask to persist the counters with its new term.
//! - **Nothing is sent before the keyspace says so durably** (DESIGN.md
//!   invariant 4): a step that changed the keyspace returns
//!   [`Effect::Persist`] and holds its commands back until the runtime reports
//!   the save with [`Engine::persisted`]; a failed save keeps the changes for
//!   the next step and abandons the commands.
//! - **An operation is reported done only once its end is saved**: a step's
//!   `Finished` effects wait with its commands, and a failed save keeps them
//!   for the next one (a controller that dies first never acknowledged them).
//! - **Probes leave at once**: a probe's lease counts from when the engine
//!   recorded it, so probes are handed out by [`Engine::take_probes`], apart
//!   from the step: no reconciliation, planning or save runs between recording
//!   a lease and sending its probe (each would eat the lease margin), and a
//!   save in flight does not hold them back.

use std::collections::{BTreeSet, HashMap};

use ranger_proto::{NodeId, RangeId};
use tokio::time::Instant;

use super::Engine;
use super::types::{Dispatch, Effect, Persisted, Probe};

/// The engine's side of the runtime's I/O: what is being saved, what waits for
/// it, and which probes are due or out.
#[derive(Debug, Default)]
pub(super) struct Output {
    /// Whether the term this engine began is saved; nothing goes to a node before.
    term_durable: bool,
    /// The ranges of the change set being saved, to mark them changed again if
    /// the save fails. `Some` between a `Persist` effect and its answer.
    persisting: Option<Vec<RangeId>>,
    /// Commands waiting for the save in flight.
    held: Vec<Dispatch>,
    /// Operation ends waiting for a successful save (kept across failed ones).
    held_reports: Vec<Effect>,
    /// Nodes with a probe out, and the address it went to: one at a time per
    /// node, and an answer from an address the node no longer has is not
    /// taken for the node's.
    probing: HashMap<NodeId, String>,
    /// The runtime's probe tick came: probe every registered node.
    probe_round_due: bool,
    /// Nodes to probe as soon as possible whatever the tick (just registered,
    /// so they are eligible for placements within one round trip, SCENARIOS.md
    /// #33; or members of a replica group that changed, so a failover reaches
    /// them at once). Kept while the node's previous probe is still out.
    probe_soon: BTreeSet<NodeId>,
}

impl Engine {
    /// Reconciles everything in play and returns what the runtime must do, in
    /// order: the save of this step's keyspace changes (if any), then events.
    /// Commands and operation ends that depend on the save come out of
    /// [`Engine::persisted`]; commands that do not (retries) come out here.
    /// Probes come from [`Engine::take_probes`].
    ///
    /// While a save is outstanding, or before the term is durable, the step only
    /// reports what is already decided; it does not reconcile.
    pub fn step(&mut self, now: Instant) -> Vec<Effect> {
        if self.output.persisting.is_some() {
            tracing::debug!("step while a save is outstanding: nothing new decided");
            return std::mem::take(&mut self.effects);
        }
        if !self.output.term_durable {
            let changes = self.keyspace.take_changes();
            self.output.persisting = Some(changes.upserts.iter().map(|r| r.id).collect());
            let mut out = vec![Effect::Persist(changes)];
            out.append(&mut self.effects);
            return out;
        }
        self.balance_if_due(now);
        self.reconcile_all(now);
        let mut out = Vec::new();
        let decided = std::mem::take(&mut self.effects);
        if self.keyspace.has_changes() || !self.output.held_reports.is_empty() {
            let changes = self.keyspace.take_changes();
            self.output.persisting = Some(changes.upserts.iter().map(|r| r.id).collect());
            out.push(Effect::Persist(changes));
            for effect in decided {
                match effect {
                    Effect::Send(dispatch) => self.output.held.push(dispatch),
                    finished @ Effect::Finished { .. } => self.output.held_reports.push(finished),
                    other => out.push(other),
                }
            }
        } else {
            out.extend(decided);
        }
        out
    }

    /// The probes to send now (every registered node on a probe tick, new
    /// nodes at once), each lease recorded as granted from `now`. The runtime
    /// sends them the moment it gets them. Nothing before the term is saved.
    pub fn take_probes(&mut self, now: Instant) -> Vec<Effect> {
        if !self.output.term_durable {
            return Vec::new();
        }
        self.due_probes(now)
    }

    /// The runtime saved (or failed to save) the last [`Effect::Persist`].
    /// Returns the commands that waited for it: all of them after a save, none
    /// after a failure (their (node, range) slots are freed without counting a
    /// failure against the node, and the changes go into the next save).
    pub fn persisted(&mut self, result: Persisted) -> Vec<Effect> {
        let Some(ranges) = self.output.persisting.take() else {
            tracing::warn!(?result, "a save was reported but none was asked for");
            return Vec::new();
        };
        let held = std::mem::take(&mut self.output.held);
        match result {
            Persisted::Saved => {
                if !self.output.term_durable {
                    self.output.term_durable = true;
                    tracing::info!(term = self.term(), "term persisted");
                }
                let mut released: Vec<Effect> = held.into_iter().map(Effect::Send).collect();
                released.append(&mut self.output.held_reports);
                released
            }
            Persisted::Failed => {
                self.keyspace.requeue_ranges(ranges);
                for dispatch in &held {
                    self.attempts.end(&dispatch.node, dispatch.range);
                    self.dirty.insert(dispatch.range);
                }
                Vec::new()
            }
        }
    }

    /// The runtime's probe interval elapsed: the next step probes every
    /// registered node that has no probe out.
    pub fn probe_tick(&mut self) {
        self.output.probe_round_due = true;
    }

    /// A node was registered, or a replica group it is in changed: probe it as
    /// soon as possible.
    pub(super) fn probe_soon(&mut self, node: NodeId) {
        self.output.probe_soon.insert(node);
    }

    /// A probe's answer arrived: the node may be probed again. False if it
    /// went to an address the node has since left (discovery moved it): that
    /// answer says nothing about the node as it is now.
    pub(super) fn probe_returned(&mut self, node: &NodeId) -> bool {
        let probed = self.output.probing.remove(node);
        let current = self.roster.get(node).map(|n| n.addr.as_str());
        match (probed, current) {
            (Some(probed), Some(current)) if probed != current => {
                tracing::debug!(%node, %probed, %current, "answer from a former address ignored");
                false
            }
            _ => true,
        }
    }

    /// The probes to send now, each with the lease it grants recorded as
    /// granted from `now` (SCENARIOS.md #38).
    fn due_probes(&mut self, now: Instant) -> Vec<Effect> {
        let targets: Vec<(NodeId, String)> = if std::mem::take(&mut self.output.probe_round_due) {
            self.roster.probe_targets()
        } else {
            self.output
                .probe_soon
                .iter()
                .filter_map(|id| {
                    let node = self.roster.get(id).filter(|n| n.registered)?;
                    Some((id.clone(), node.addr.clone()))
                })
                .collect()
        };
        // A node whose previous probe is still out stays due: its answer may
        // come from an address it no longer has.
        let probing = &self.output.probing;
        let roster = &self.roster;
        self.output
            .probe_soon
            .retain(|id| probing.contains_key(id) && roster.get(id).is_some_and(|n| n.registered));
        let timeout = self.config.rpc_timeout.min(self.config.lease_margin);
        let mut probes = Vec::new();
        for (node, addr) in targets {
            if self.output.probing.contains_key(&node) {
                continue;
            }
            self.output.probing.insert(node.clone(), addr.clone());
            let lease = self.roster.begin_probe(&node, self.config.lease, now);
            let groups = self.groups.for_member(&addr);
            self.groups_carried
                .insert(node.clone(), self.groups.next_epoch(self.keyspace.term()));
            tracing::trace!(%node, %addr, ?lease, groups = groups.len(), "probing");
            probes.push(Effect::Probe(Probe {
                node,
                addr,
                term: self.keyspace.term(),
                lease,
                timeout,
                sent_at: now,
                groups,
            }));
        }
        probes
    }
}
