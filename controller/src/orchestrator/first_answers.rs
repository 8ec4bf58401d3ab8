//! What a node's first answer tells, and the ranges that wait for it.
//!
//! The roster learns that a node lost a range by comparing two of its reports:
//! a range it listed before and no longer lists is NotFound (`Roster::probe_ok`).
//! A node's *first* answer to this controller has no report before it: after a
//! controller restart (every node), or when a node the roster had forgotten
//! comes back as a new process. So the comparison is made with the keyspace
//! instead: a copy the keyspace says the node holds (its placement Inactive,
//! Active or Missing), that the node does not list and that no command in
//! flight may be creating, is NotFound as of that probe. Without this, a node
//! that lost a range while the controller restarted left it Active in the
//! keyspace, unserved, for ever (SCENARIOS.md #30, #31).
//!
//! Until a node answers, nothing can be decided about a range that is settled
//! in the keyspace and waits only for such nodes to confirm it: reconciling it
//! does nothing. Such a range is *parked* under each node it waits for instead
//! of staying in the dirty set, which made every step of a restarted
//! controller at a million ranges reconcile them all again (about a second a
//! step) until the last node answered. It is looked at again when one of
//! those nodes answers (its parked ranges go back to the dirty set), or when
//! one is counted lost (a full sweep, which also forgets what was parked).
//!
//! So every range that is not settled is in the dirty set or parked between
//! steps (the full sweep that starts an engine or follows a new node puts it
//! in one or the other), and a node's first answer is checked against those,
//! not against the whole keyspace: at a million ranges, a walk of the
//! keyspace for each wave of answers cost a quarter of a second.

use std::collections::HashMap;

use ranger_proto::{NodeId, PlacementState, RangeId};
use tokio::time::Instant;

use super::Engine;

impl Engine {
    /// Notes the first answer since the roster took the node in (`sent_at`:
    /// when its probe left). Called before the roster records the answer.
    pub(super) fn note_if_first_answer(&mut self, node: &NodeId, sent_at: Instant) {
        if self.roster.get(node).is_some_and(|n| n.last_ok.is_none()) {
            self.first_answers.push((node.clone(), sent_at));
        }
    }

    /// For the nodes that answered for the first time since the last step:
    /// marks NotFound each copy the keyspace places on them that their answer
    /// did not list, and looks again at every range parked for them.
    pub(super) fn account_for_first_answers(&mut self) {
        if self.first_answers.is_empty() {
            return;
        }
        let mut answered: HashMap<NodeId, Instant> = HashMap::new();
        for (node, sent_at) in self.first_answers.drain(..) {
            let at = answered.entry(node).or_insert(sent_at);
            *at = (*at).min(sent_at);
        }
        // The ranges that may have a copy on those nodes: before the full
        // sweep that starts an engine, any; after it, the dirty and the parked.
        let candidates: Vec<RangeId> = if self.full_sweep {
            self.keyspace.ranges().map(|r| r.id()).collect()
        } else {
            let mut ids: Vec<RangeId> = self.dirty.iter().copied().collect();
            for node in answered.keys() {
                ids.extend(self.parked.remove(node).unwrap_or_default());
            }
            ids
        };
        let mut unlisted: Vec<(NodeId, RangeId, Instant)> = Vec::new();
        for id in candidates {
            let Ok(range) = self.keyspace.range(id) else {
                continue;
            };
            for p in range.placements().iter().filter(|p| p.is_live()) {
                let Some(sent_at) = answered.get(p.node()) else {
                    continue;
                };
                self.dirty.insert(id);
                let held = matches!(
                    p.state(),
                    PlacementState::Inactive | PlacementState::Active | PlacementState::Missing
                );
                if held
                    && self.roster.remote(p.node(), id).is_none()
                    && !self.attempts.is_inflight(p.node(), id)
                {
                    unlisted.push((p.node().clone(), id, *sent_at));
                }
            }
        }
        for (node, range, sent_at) in unlisted {
            tracing::info!(%node, %range, "the node's first answer does not list a copy it holds: NotFound");
            self.roster.note_unlisted(&node, range, sent_at);
        }
    }

    /// Parks the range if it is settled in the keyspace and waits only for
    /// nodes that have not answered yet (and are not counted lost) to confirm
    /// it: reconciling it would do nothing until one of them answers. Returns
    /// whether it did.
    pub(super) fn park_if_waiting_for_first_answers(&mut self, id: RangeId, now: Instant) -> bool {
        if !self.waits_for_first_answers(id, now) {
            return false;
        }
        let Ok(range) = self.keyspace.range(id) else {
            return false;
        };
        for p in range.placements() {
            if self
                .roster
                .get(p.node())
                .is_some_and(|n| n.last_ok.is_some())
            {
                continue;
            }
            // Parked again by each sweep that passes before the node answers
            // or is lost (a thousand a step at most): duplicates are harmless,
            // and cost less than a set per node at a million ranges.
            match self.parked.get_mut(p.node()) {
                Some(ranges) => ranges.push(id),
                None => {
                    self.parked.insert(p.node().clone(), vec![id]);
                }
            }
        }
        true
    }

    fn waits_for_first_answers(&self, id: RangeId, now: Instant) -> bool {
        let Ok(range) = self.keyspace.range(id) else {
            return false;
        };
        if !self.steady_here(range) || self.unavailable.contains_key(&id) {
            return false;
        }
        let loss_after = self.config.node_loss_after();
        let mut waits = false;
        for p in range.placements() {
            match self.roster.get(p.node()) {
                Some(n) if n.last_ok.is_none() => {
                    if n.is_lost(now, loss_after) {
                        return false;
                    }
                    waits = true;
                }
                Some(n) => {
                    if !self.node_confirms(n, id, now) {
                        return false;
                    }
                }
                None => {
                    if self.node_lost(p.node(), now) {
                        return false;
                    }
                    waits = true;
                }
            }
        }
        waits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OrchestratorConfig;
    use crate::keyspace::{ChangeSet, Keyspace, RECORD_VERSION};
    use crate::orchestrator::{Effect, Persisted};
    use crate::testing::synthetic::settled_keyspace;
    use crate::transport::NodeReport;
    use ranger_proto::{LoadInfo, RangeInfo, RemoteState};

    const NODES: u64 = 4;

    fn node(i: u64) -> NodeId {
        NodeId::new(format!("n{i}")).unwrap()
    }

    /// A controller just restarted over `ranges` settled ranges spread over
    /// four nodes (range i on node i % 4), every node registered, none heard
    /// from, its term saved.
    fn restarted(ranges: u64, now: Instant) -> Engine {
        let ChangeSet { counters, upserts } =
            settled_keyspace(ranges, NODES, RECORD_VERSION).unwrap();
        let keyspace = Keyspace::from_records(counters, upserts).unwrap();
        let mut engine = Engine::new(keyspace, OrchestratorConfig::default(), now);
        for i in 0..NODES {
            engine.node_registered(node(i), format!("sim://n{i}"), now);
        }
        step_saving(&mut engine, now);
        engine
    }

    /// A step whose saves all succeed at once; the commands it sends.
    fn step_saving(engine: &mut Engine, now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        for effect in engine.step(now) {
            match effect {
                Effect::Persist(_) => out.extend(engine.persisted(Persisted::Saved)),
                other => out.push(other),
            }
        }
        out.retain(|e| matches!(e, Effect::Send(_)));
        out
    }

    /// Node `i`'s answer listing its ranges Active, but for `missing`.
    fn answer(engine: &mut Engine, i: u64, missing: &[u64], now: Instant) {
        let ranges = engine
            .keyspace()
            .current_ranges()
            .filter(|r| r.id().get() % NODES == i && !missing.contains(&r.id().get()))
            .map(|r| RangeInfo {
                meta: r.meta().clone(),
                state: RemoteState::Active,
                load: LoadInfo::default(),
            })
            .collect();
        engine.on_probe(&node(i), now, Ok(NodeReport::of(ranges)));
    }

    fn id(n: u64) -> RangeId {
        RangeId::new(n).unwrap()
    }

    #[test]
    fn ranges_waiting_for_unheard_nodes_are_not_looked_at_again_until_a_node_answers() {
        let t0 = Instant::now();
        let mut engine = restarted(40, t0);
        assert!(step_saving(&mut engine, t0).is_empty());
        assert!(
            engine.dirty.is_empty(),
            "every range waits for its node: nothing to look at again, got {:?}",
            engine.dirty
        );
        answer(&mut engine, 1, &[], t0);
        engine.account_for_first_answers();
        let mut dirty: Vec<u64> = engine.dirty.iter().map(|r| r.get()).collect();
        dirty.sort_unstable();
        let on_n1: Vec<u64> = (1..=40).filter(|i| i % NODES == 1).collect();
        assert_eq!(dirty, on_n1, "n1's ranges, and only those, are looked at");
        assert!(step_saving(&mut engine, t0).is_empty());
        assert!(engine.dirty.is_empty(), "n1 confirmed them all");
    }

    #[test]
    fn a_copy_missing_from_a_nodes_first_answer_is_found_gone_and_placed_again() {
        let t0 = Instant::now();
        let mut engine = restarted(40, t0);
        step_saving(&mut engine, t0);
        for i in 0..NODES {
            answer(&mut engine, i, &[6], t0);
        }
        let sent = step_saving(&mut engine, t0);
        assert_eq!(
            engine.note(id(6)),
            Some("6 lost its placement on n2"),
            "range 6's copy on n2 is gone"
        );
        let placements: Vec<_> = engine
            .keyspace()
            .range(id(6))
            .unwrap()
            .placements()
            .iter()
            .filter(|p| p.is_live())
            .map(|p| p.state())
            .collect();
        assert_eq!(placements, vec![PlacementState::Pending], "placed again");
        let mut sent = sent;
        sent.extend(step_saving(&mut engine, t0));
        assert_eq!(sent.len(), 1, "one prepare for range 6: {sent:?}");
        assert!(
            matches!(&sent[0], Effect::Send(d) if d.range == id(6)),
            "{sent:?}"
        );
        for other in (1..=40).filter(|i| *i != 6) {
            assert!(
                engine.keyspace().range(id(other)).unwrap().placements()[0].state()
                    == PlacementState::Active
            );
        }
    }

    #[test]
    fn a_copy_waited_for_is_found_gone_when_the_nodes_first_answer_comes_after_the_sweep() {
        // Range 2's copy on n2 is Missing (the node was lost before the
        // restart) and, at R1, waited for: not settled, so in the dirty set
        // rather than parked when n2 first answers, without it.
        let t0 = Instant::now();
        let mut engine = restarted(8, t0);
        let placement = engine.keyspace().range(id(2)).unwrap().placements()[0].id();
        engine
            .keyspace
            .set_placement_state(id(2), placement, PlacementState::Missing)
            .unwrap();
        assert!(step_saving(&mut engine, t0).is_empty());
        assert!(engine.dirty.contains(&id(2)), "waited for, not parked");
        for i in 0..NODES {
            answer(&mut engine, i, &[2], t0);
        }
        step_saving(&mut engine, t0);
        assert_eq!(engine.note(id(2)), Some("2 lost its placement on n2"));
        let live: Vec<_> = engine
            .keyspace()
            .range(id(2))
            .unwrap()
            .placements()
            .iter()
            .filter(|p| p.is_live())
            .map(|p| p.state())
            .collect();
        assert_eq!(live, vec![PlacementState::Pending], "placed again");
    }

    #[test]
    fn a_node_unheard_until_it_is_lost_has_its_copies_counted_missing() {
        let t0 = Instant::now();
        let mut engine = restarted(8, t0);
        step_saving(&mut engine, t0);
        for i in 1..NODES {
            answer(&mut engine, i, &[], t0);
        }
        step_saving(&mut engine, t0);
        let later = t0 + engine.config().node_loss_after() + std::time::Duration::from_secs(1);
        for i in 1..NODES {
            answer(&mut engine, i, &[], later);
        }
        step_saving(&mut engine, later);
        for range in [4, 8] {
            let states: Vec<_> = engine
                .keyspace()
                .range(id(range))
                .unwrap()
                .placements()
                .iter()
                .map(|p| (p.node().to_string(), p.state()))
                .collect();
            assert_eq!(
                states,
                vec![("n0".to_owned(), PlacementState::Missing)],
                "range {range}"
            );
        }
    }
}
