//! An engine with a runtime's duties played by hand (saves succeed, probes
//! and commands are answered at once by model nodes), for the engine-level
//! tests (`engine.rs`, `balancing.rs`): no runtime, no rangelets, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ranger_controller::config::{OrchestratorConfig, Replication};
use ranger_controller::keyspace::Keyspace;
use ranger_controller::orchestrator::{
    Call, CallError, Dispatch, Effect, Engine, OpError, OpId, Persisted, Probe,
};
use ranger_controller::transport::NodeReport;
use ranger_proto::{
    LoadInfo, NodeId, Outcome, PlacementState, RangeId, RangeInfo, RangeMeta, RemoteState,
    ReplicaGroup,
};
use tokio::time::Instant;

use super::{config, id as range, node_id as node};

/// What the model nodes hold: (node, range) → (meta, state).
#[derive(Default)]
pub struct Nodes {
    pub ranges: BTreeMap<(NodeId, RangeId), (RangeMeta, RemoteState)>,
    /// What each range's holder reports as its load.
    pub loads: BTreeMap<RangeId, LoadInfo>,
    /// Commands that fail on a node: the callback returns an error and the
    /// range stays where it was (PROTOCOL.md).
    pub failing: Vec<(String, &'static str)>,
    /// Capacities the nodes declare (1 if absent).
    pub capacities: BTreeMap<NodeId, f64>,
    /// Nodes that are unreachable: their probes fail and their commands go
    /// unanswered (a crash or a partition).
    pub down: BTreeSet<NodeId>,
    /// Nodes whose copies stay Preparing (still loading) until the test
    /// finishes them ([`Nodes::finish_preparing`]).
    pub slow_prepares: BTreeSet<NodeId>,
}

impl Nodes {
    pub fn apply(&mut self, dispatch: &Dispatch) -> Outcome {
        let key = (dispatch.node.clone(), dispatch.range);
        let verb = verb(&dispatch.call);
        let current = self.ranges.get(&key).map(|(_, s)| *s);
        if self
            .failing
            .iter()
            .any(|(n, v)| *n == dispatch.node.as_str() && *v == verb)
        {
            return Outcome {
                state: current.unwrap_or(RemoteState::NotFound),
                failure: Some(format!("{verb} failed on purpose")),
            };
        }
        let state = match &dispatch.call {
            Call::Prepare { .. } if current == Some(RemoteState::Preparing) => {
                RemoteState::Preparing
            }
            Call::Prepare { meta, .. } => {
                let state = if self.slow_prepares.contains(&dispatch.node) {
                    RemoteState::Preparing
                } else {
                    RemoteState::Inactive
                };
                self.ranges.insert(key, (meta.clone(), state));
                state
            }
            Call::Activate => self.set(&key, RemoteState::Active),
            Call::Deactivate => self.set(&key, RemoteState::Inactive),
            Call::Drop { .. } => {
                self.ranges.remove(&key);
                RemoteState::NotFound
            }
        };
        Outcome {
            state,
            failure: None,
        }
    }

    /// `node`'s copies still loading are loaded: Inactive from now on.
    pub fn finish_preparing(&mut self, node: &NodeId) {
        self.slow_prepares.remove(node);
        for ((n, _), (_, state)) in self.ranges.iter_mut() {
            if n == node && *state == RemoteState::Preparing {
                *state = RemoteState::Inactive;
            }
        }
    }

    fn set(&mut self, key: &(NodeId, RangeId), state: RemoteState) -> RemoteState {
        match self.ranges.get_mut(key) {
            Some(entry) => {
                entry.1 = state;
                state
            }
            None => RemoteState::NotFound,
        }
    }

    /// A node's whole answer to a probe.
    pub fn answer(&self, of: &NodeId) -> NodeReport {
        NodeReport {
            capacity: self.capacities.get(of).copied().unwrap_or(1.0),
            ..NodeReport::of(self.report(of))
        }
    }

    pub fn report(&self, of: &NodeId) -> Vec<RangeInfo> {
        self.ranges
            .iter()
            .filter(|((n, _), _)| n == of)
            .map(|(_, (meta, state))| RangeInfo {
                meta: meta.clone(),
                state: *state,
                load: self.loads.get(&meta.id()).cloned().unwrap_or_default(),
            })
            .collect()
    }
}

pub fn verb(call: &Call) -> &'static str {
    match call {
        Call::Prepare { .. } => "prepare",
        Call::Activate => "activate",
        Call::Deactivate => "deactivate",
        Call::Drop { .. } => "drop",
    }
}

pub fn describe(dispatch: &Dispatch) -> String {
    format!(
        "{} {}@{}",
        verb(&dispatch.call),
        dispatch.range,
        dispatch.node
    )
}

/// Plays the runtime for one engine, with a hand-held clock.
pub struct Driver {
    pub engine: Engine,
    /// When the first engine started (its wall clock counts from 0 there).
    pub started: Instant,
    pub now: Instant,
    pub nodes: Nodes,
    /// Every command the engine sent, in order, as "verb range@node".
    pub sent: Vec<String>,
    /// The operation each of those commands was sent for, in the same order.
    pub sent_for: Vec<Option<OpId>>,
    /// Operations that ended, with their results.
    pub finished: BTreeMap<OpId, Result<(), OpError>>,
    /// The replica groups each node's latest probe carried.
    pub received: BTreeMap<NodeId, Vec<ReplicaGroup>>,
    /// Activates of a replicated range sent to a node whose latest answered
    /// probe carried no group of that range listing it (how the node learns
    /// the range is replicated): `range@node`.
    pub activated_unaware: Vec<String>,
}

impl Driver {
    /// An engine over a new keyspace whose term is saved, with `names` registered
    /// and their first probes answered.
    pub fn start(names: &[&str]) -> Driver {
        Self::start_with(names, config(Replication::R1))
    }

    /// [`Driver::start`] with another configuration.
    pub fn start_with(names: &[&str], config: OrchestratorConfig) -> Driver {
        let now = Instant::now();
        let mut driver = Driver {
            engine: Engine::new(Keyspace::new(), config, now),
            started: now,
            now,
            nodes: Nodes::default(),
            sent: Vec::new(),
            sent_for: Vec::new(),
            finished: BTreeMap::new(),
            received: BTreeMap::new(),
            activated_unaware: Vec::new(),
        };
        let effects = driver.engine.step(now);
        assert!(
            matches!(effects.as_slice(), [Effect::Persist(_)]),
            "{effects:?}"
        );
        assert!(driver.engine.persisted(Persisted::Saved).is_empty());
        for name in names {
            driver
                .engine
                .node_registered(node(name), format!("{name}:7000"), now);
        }
        driver
    }

    /// Replaces the engine by one loaded from what the old one saved, as a
    /// controller that takes over does (its wall clock continuing the old
    /// one's), with `names` registered again; the model nodes keep their state.
    pub fn fail_over(&mut self, names: &[&str]) {
        self.fail_over_with_clock(names, self.wall_ms());
    }

    /// The test's wall clock: milliseconds since the driver started.
    pub fn wall_ms(&self) -> u64 {
        let wall = self.now.saturating_duration_since(self.started).as_millis();
        u64::try_from(wall).expect("a test's clock")
    }

    /// [`Driver::fail_over`] to a controller whose wall clock reads `wall_ms`
    /// now (to test clocks that disagree).
    pub fn fail_over_with_clock(&mut self, names: &[&str], wall_ms: u64) {
        let config = self.engine.config().clone();
        self.fail_over_to(names, config, wall_ms);
    }

    /// [`Driver::fail_over`] to a controller started with `config` (an
    /// operator restarting it with other flags) whose wall clock reads
    /// `wall_ms` now.
    pub fn fail_over_to(&mut self, names: &[&str], config: OrchestratorConfig, wall_ms: u64) {
        let saved = self.engine.keyspace();
        let keyspace = Keyspace::from_records(saved.counters(), saved.to_records())
            .expect("what the engine saved loads");
        self.engine = Engine::new(keyspace, config, self.now).with_wall_clock(wall_ms);
        let effects = self.engine.step(self.now);
        self.execute(effects);
        for name in names {
            self.engine
                .node_registered(node(name), format!("{name}:7000"), self.now);
        }
    }

    /// Executes effects as the runtime does: saves succeed, probes and
    /// commands are answered at once by the model nodes.
    pub fn execute(&mut self, effects: Vec<Effect>) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Persist(_) => queue.extend(self.engine.persisted(Persisted::Saved)),
                Effect::Probe(probe) => self.answer_probe(probe),
                Effect::Send(dispatch) => {
                    if matches!(
                        dispatch.call,
                        ranger_controller::orchestrator::Call::Activate
                    ) && self.engine.replica_group(dispatch.range).is_some()
                    {
                        let me = super::addr(dispatch.node.as_str());
                        let aware = self.received.get(&dispatch.node).is_some_and(|groups| {
                            groups
                                .iter()
                                .any(|g| g.range == dispatch.range && g.members.contains(&me))
                        });
                        if !aware {
                            self.activated_unaware
                                .push(format!("{}@{}", dispatch.range, dispatch.node));
                        }
                    }
                    self.sent.push(describe(&dispatch));
                    self.sent_for.push(dispatch.op);
                    let answer = if self.nodes.down.contains(&dispatch.node) {
                        Err(CallError::Unreachable("node is down".into()))
                    } else {
                        Ok(self.nodes.apply(&dispatch))
                    };
                    self.engine.on_answer(&dispatch, answer, self.now);
                }
                Effect::Finished { op, result } => {
                    self.finished.insert(op, result);
                }
                Effect::Event(_) => {}
            }
        }
    }

    /// Steps until the engine has nothing left to do and no operation is
    /// running, advancing the clock by `tick` between steps (so backoffs and
    /// deadlines pass) for at most `max`.
    pub fn settle_within(&mut self, tick: Duration, max: Duration) {
        let until = self.now + max;
        let mut quiet = 0;
        while self.now < until && quiet < 3 {
            self.engine.probe_tick();
            let probes = self.engine.take_probes(self.now);
            self.execute(probes);
            let effects = self.engine.step(self.now);
            let busy = effects
                .iter()
                .any(|e| !matches!(e, Effect::Probe(_) | Effect::Event(_)));
            let waiting = self.engine.operations().next().is_some();
            quiet = if busy || waiting { 0 } else { quiet + 1 };
            self.execute(effects);
            self.now += tick;
        }
    }

    /// The due probes, then one step with its save (if any) answered `Saved`:
    /// what else it asked for,
    /// with the commands the save released at the end. Nothing is executed.
    pub fn step_saved(&mut self) -> Vec<Effect> {
        let mut out = self.engine.take_probes(self.now);
        for effect in self.engine.step(self.now) {
            match effect {
                Effect::Persist(_) => {
                    let released = self.engine.persisted(Persisted::Saved);
                    out.extend(released);
                }
                other => out.push(other),
            }
        }
        out
    }

    /// Answers the probes among `effects` from the model nodes.
    pub fn answer_probes(&mut self, effects: &[Effect]) {
        for effect in effects {
            if let Effect::Probe(probe) = effect {
                self.answer_probe(probe.clone());
            }
        }
    }

    /// A model node receives a probe (recording the groups it carried) and
    /// answers it, unless it is down.
    fn answer_probe(&mut self, probe: Probe) {
        if self.nodes.down.contains(&probe.node) {
            self.engine
                .on_probe(&probe.node, probe.sent_at, Err("node is down".into()));
            return;
        }
        self.received.insert(probe.node.clone(), probe.groups);
        self.engine.on_probe(
            &probe.node,
            probe.sent_at,
            Ok(self.nodes.answer(&probe.node)),
        );
    }

    pub fn settle(&mut self) {
        self.settle_within(Duration::from_millis(100), Duration::from_secs(30));
    }

    pub fn commands(&mut self) -> Vec<String> {
        self.sent_for.clear();
        std::mem::take(&mut self.sent)
    }

    pub fn placements(&self, id: u64) -> Vec<(String, PlacementState)> {
        super::placements_of(&self.engine, range(id))
    }

    /// Places range 1 on `a` and forgets the commands it took.
    pub fn with_range_on_a(names: &[&str]) -> Driver {
        let mut driver = Driver::start(names);
        driver.settle();
        assert_eq!(driver.placements(1), [("a".into(), PlacementState::Active)]);
        driver.commands();
        driver
    }
}
