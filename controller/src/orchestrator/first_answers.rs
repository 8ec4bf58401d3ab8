//! What a node's first answer tells, and the ranges that wait for it.
//!
//! The roster learns that a node lost a range by comparing two of its reports:
//! a range it listed before and no longer lists is NotFound (`Roster::probe_ok`).
//! A node's *first* answer to this controller has no report before it: after a
//! controller restart (every node), when a node the roster had forgotten comes
//! back as a new process, or when a node comes back at a new address (the
//! roster forgets what it said at the old one). So the comparison is made with
//! the keyspace instead: a copy the keyspace says the node holds (its
//! placement Inactive, Active or Missing), that the node does not list and that
//! no command in flight may be creating, is NotFound as of that probe. Without this, a node
//! that lost a range while the controller restarted left it Active in the
//! keyspace, unserved, for ever (SCENARIOS.md #30, #31). A first answer is
//! checked at the next step, against what the roster then knows of the node;
//! if the roster forgets the node's reports before that (it moved, or was
//! forgotten and came back), the answer is dropped unchecked
//! (`Engine::node_registered`), and the node's next answer is its first.
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
use crate::range_maps::RangeSet;

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
        // A node answers a first time once until the roster forgets it, which
        // drops that answer (`Engine::node_registered`): one entry per node.
        let answered: HashMap<NodeId, Instant> = self.first_answers.drain(..).collect();
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
            // A set: the background sweep passes a parked range again each
            // time round until its node answers or is lost.
            match self.parked.get_mut(p.node()) {
                Some(ranges) => {
                    ranges.insert(id);
                }
                None => {
                    self.parked
                        .insert(p.node().clone(), RangeSet::from_iter([id]));
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

    /// The live placements of a range: (node, state).
    fn placements(engine: &Engine, range: u64) -> Vec<(String, PlacementState)> {
        engine
            .keyspace()
            .range(id(range))
            .unwrap()
            .placements()
            .iter()
            .filter(|p| p.is_live())
            .map(|p| (p.node().to_string(), p.state()))
            .collect()
    }

    fn on(node: &str, state: PlacementState) -> Vec<(String, PlacementState)> {
        vec![(node.to_owned(), state)]
    }

    /// Sets the state of the one placement of `range` (its node's copy).
    fn set_copy_state(engine: &mut Engine, range: u64, state: PlacementState) {
        let placement = engine.keyspace().range(id(range)).unwrap().placements()[0].id();
        engine
            .keyspace
            .set_placement_state(id(range), placement, state)
            .unwrap();
    }

    #[test]
    fn ranges_waiting_for_unheard_nodes_leave_the_dirty_set_until_a_node_answers() {
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
        let again = placements(&engine, 6);
        assert!(
            matches!(&again[..], [(_, PlacementState::Pending)]),
            "placed again: {again:?}"
        );
        let mut sent = sent;
        sent.extend(step_saving(&mut engine, t0));
        assert_eq!(sent.len(), 1, "one prepare for range 6: {sent:?}");
        assert!(
            matches!(&sent[0], Effect::Send(d) if d.range == id(6)),
            "{sent:?}"
        );
        for other in (1..=40).filter(|i| *i != 6) {
            let node = format!("n{}", other % NODES);
            assert_eq!(
                placements(&engine, other),
                on(&node, PlacementState::Active)
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
        set_copy_state(&mut engine, 2, PlacementState::Missing);
        assert!(step_saving(&mut engine, t0).is_empty());
        assert!(engine.dirty.contains(&id(2)), "waited for, not parked");
        for i in 0..NODES {
            answer(&mut engine, i, &[2], t0);
        }
        step_saving(&mut engine, t0);
        assert_eq!(engine.note(id(2)), Some("2 lost its placement on n2"));
        let again = placements(&engine, 2);
        assert!(
            matches!(&again[..], [(_, PlacementState::Pending)]),
            "placed again: {again:?}"
        );
    }

    #[test]
    fn a_node_unheard_until_it_is_lost_has_its_copies_counted_missing() {
        let t0 = Instant::now();
        let mut engine = restarted(8, t0);
        step_saving(&mut engine, t0);
        // Every node is probed (each probe grants a lease); n0 never answers.
        assert_eq!(engine.take_probes(t0).len(), NODES as usize);
        for i in 1..NODES {
            answer(&mut engine, i, &[], t0);
        }
        step_saving(&mut engine, t0);
        // The next rounds reach n1-n3 only (n0's first probe is still out),
        // until n0's lease and margin have run out.
        let round = engine.config().probe_interval;
        let later = t0 + engine.config().node_loss_after() + round;
        let mut now = t0;
        while now < later {
            now += round;
            engine.probe_tick();
            let probed = engine.take_probes(now).len();
            assert_eq!(probed, NODES as usize - 1, "n0's probe is still out");
            for i in 1..NODES {
                answer(&mut engine, i, &[], now);
            }
            step_saving(&mut engine, now);
        }
        for range in [4, 8] {
            assert_eq!(
                placements(&engine, range),
                on("n0", PlacementState::Missing)
            );
        }
        for range in [1, 5] {
            assert_eq!(placements(&engine, range), on("n1", PlacementState::Active));
        }
    }

    #[test]
    fn a_first_answer_before_the_first_sweep_is_checked_against_the_whole_keyspace() {
        let t0 = Instant::now();
        let mut engine = restarted(8, t0);
        assert!(engine.full_sweep, "no step has looked at the ranges yet");
        answer(&mut engine, 3, &[7], t0);
        step_saving(&mut engine, t0);
        assert_eq!(engine.note(id(7)), Some("7 lost its placement on n3"));
        assert_eq!(placements(&engine, 3), on("n3", PlacementState::Active));
    }

    #[test]
    fn a_copy_a_command_in_flight_may_be_creating_is_not_taken_for_gone() {
        // Range 2's copy on n2 is Inactive: the first step sends Activate. n2's
        // first answer, from a probe sent before that landed, does not list it.
        let t0 = Instant::now();
        let mut engine = restarted(8, t0);
        set_copy_state(&mut engine, 2, PlacementState::Inactive);
        let sent = step_saving(&mut engine, t0);
        assert!(
            matches!(&sent[..], [Effect::Send(d)] if d.range == id(2)),
            "{sent:?}"
        );
        answer(&mut engine, 2, &[2], t0);
        step_saving(&mut engine, t0);
        assert_eq!(placements(&engine, 2), on("n2", PlacementState::Inactive));
        assert_eq!(engine.roster().remote(&node(2), id(2)), None);
    }

    #[test]
    fn a_node_that_moves_before_its_first_answer_is_checked_is_asked_again() {
        // Range 2's copy on n2 is Missing and waited for. n2 answers listing
        // everything; before the step that would check the answer, it comes
        // back at a new address and the roster forgets what it said: nothing
        // it listed may be taken for gone (range 2, not parked, is looked at
        // in that step).
        let t0 = Instant::now();
        let mut engine = restarted(8, t0);
        set_copy_state(&mut engine, 2, PlacementState::Missing);
        step_saving(&mut engine, t0);
        answer(&mut engine, 2, &[], t0);
        engine.node_registered(node(2), "sim://n2-moved".into(), t0);
        step_saving(&mut engine, t0);
        assert_eq!(placements(&engine, 2), on("n2", PlacementState::Missing));
        assert_eq!(placements(&engine, 6), on("n2", PlacementState::Active));
        // Its first answer at the new address is checked: range 2 is back
        // with its copy, range 6 is gone.
        answer(&mut engine, 2, &[6], t0);
        step_saving(&mut engine, t0);
        assert_eq!(placements(&engine, 2), on("n2", PlacementState::Inactive));
        assert_eq!(engine.note(id(6)), Some("6 lost its placement on n2"));
    }
}
