//! An in-process cluster for controller tests: a real controller runtime over
//! real rangelets (scripted storage), an in-memory store, paused time.

#![allow(dead_code, clippy::unwrap_used)]

pub mod engine_driver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ranger_controller::config::{OrchestratorConfig, Replication};
use ranger_controller::discovery::Membership;
use ranger_controller::metrics::RuntimeMetrics;
use ranger_controller::orchestrator::Engine;
use ranger_controller::persist::MemoryPersister;
use ranger_controller::runtime::{self, ControllerHandle, RuntimeConfig, RuntimeError};
use ranger_controller::transport::InProcessTransport;
use ranger_node_sdk::testing::{CallLog, ScriptedNode};
use ranger_node_sdk::{MemoryStateStore, Rangelet, RangeletConfig};
use ranger_proto::{NodeId, PlacementState, RangeId, RangeState};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

pub fn node_id(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

pub fn addr(name: &str) -> String {
    format!("{name}:7000")
}

/// The split most scenarios run: range 1 at "m", halves on the nodes named.
pub fn split_1_at_m(
    left: Option<&str>,
    right: Option<&str>,
) -> ranger_controller::runtime::OpRequest {
    ranger_controller::runtime::OpRequest::Split {
        range: id(1),
        key: ranger_proto::Key::from("m"),
        left: left.map(node_id),
        right: right.map(node_id),
    }
}

/// Test timings: short, so failure paths finish quickly under paused time.
pub fn config(replication: Replication) -> OrchestratorConfig {
    OrchestratorConfig {
        replication,
        prepare_deadline: Duration::from_secs(10),
        max_attempts: 3,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        op_deadline: Duration::from_secs(10),
        activate_deadline: Duration::from_secs(5),
        prepare_stall: Duration::from_secs(3),
        exclusion: Duration::from_secs(30),
        lease: Duration::from_secs(2),
        lease_margin: Duration::from_secs(1),
        probe_interval: Duration::from_millis(200),
        rpc_timeout: Duration::from_secs(2),
        max_drain_moves: 4,
        balancing: Default::default(),
    }
}

pub struct Cluster {
    pub handle: ControllerHandle,
    pub transport: InProcessTransport<ScriptedNode>,
    pub log: CallLog,
    pub nodes: BTreeMap<String, ScriptedNode>,
    pub rangelets: BTreeMap<String, Rangelet<ScriptedNode>>,
    pub persister: MemoryPersister,
    pub config: OrchestratorConfig,
    /// What the runtime records (register it to read it).
    pub runtime_metrics: RuntimeMetrics,
    membership: watch::Sender<Membership>,
    task: Option<JoinHandle<Result<(), RuntimeError>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Cluster {
    pub async fn start(nodes: &[&str], replication: Replication) -> Cluster {
        Self::start_with(nodes, config(replication)).await
    }

    pub async fn start_with(nodes: &[&str], config: OrchestratorConfig) -> Cluster {
        // Logs for debugging a failing test: RUST_LOG=ranger_controller=debug.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let (membership, _) = watch::channel(Membership::new());
        let transport = InProcessTransport::new();
        let log = CallLog::new();
        let mut node_map = BTreeMap::new();
        let mut rangelets = BTreeMap::new();
        for name in nodes {
            let (node, rangelet) = start_node(name, &log, &transport).await;
            node_map.insert(name.to_string(), node);
            rangelets.insert(name.to_string(), rangelet);
            membership.send_modify(|m| {
                m.insert(node_id(name), addr(name));
            });
        }
        let persister = MemoryPersister::new();
        let runtime_metrics = RuntimeMetrics::default();
        let (handle, task, stop) = spawn_controller(
            &persister,
            &transport,
            &membership,
            &config,
            &runtime_metrics,
        )
        .await;
        Cluster {
            handle,
            transport,
            log,
            nodes: node_map,
            rangelets,
            persister,
            config,
            runtime_metrics,
            membership,
            task: Some(task),
            stop: Some(stop),
        }
    }

    /// Starts a node (a rangelet over a scripted store) and lists it in discovery.
    pub async fn add_node(&mut self, name: &str) {
        let (node, rangelet) = start_node(name, &self.log, &self.transport).await;
        self.nodes.insert(name.to_owned(), node);
        self.rangelets.insert(name.to_owned(), rangelet);
        self.membership.send_modify(|m| {
            m.insert(node_id(name), addr(name));
        });
    }

    /// Removes a node from discovery (its process keeps running).
    pub fn deregister_node(&mut self, name: &str) {
        self.membership.send_modify(|m| {
            m.remove(&node_id(name));
        });
    }

    /// Restarts a node's process with no state (it forgets its ranges).
    pub async fn restart_node_empty(&mut self, name: &str) {
        let node = self.nodes[name].clone();
        let rangelet = Rangelet::open(node, MemoryStateStore::new(), RangeletConfig::default())
            .await
            .unwrap();
        self.transport.attach(addr(name), rangelet.clone());
        self.rangelets.insert(name.to_owned(), rangelet);
    }

    pub fn node(&self, name: &str) -> &ScriptedNode {
        &self.nodes[name]
    }

    /// Kills the controller (no clean-up: in-flight answers are lost) and starts a
    /// new one from the store.
    pub async fn restart_controller(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let (handle, task, stop) = spawn_controller(
            &self.persister,
            &self.transport,
            &self.membership,
            &self.config,
            &self.runtime_metrics,
        )
        .await;
        self.handle = handle;
        self.task = Some(task);
        self.stop = Some(stop);
    }

    /// Polls the engine until `check` holds; panics after a minute of (paused) time.
    pub async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&Engine) -> bool + Send + Sync + Clone + 'static,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let check = check.clone();
            if self.handle.inspect(move |e| check(e)).await.unwrap() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let state = self.describe().await;
                panic!(
                    "timed out waiting for {what}\ncalls: {:?}\n{state}",
                    self.log.render()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The placements of a range as (node, state), in placement order.
    pub async fn placements(&self, range: RangeId) -> Vec<(String, PlacementState)> {
        self.handle
            .inspect(move |e| placements_of(e, range))
            .await
            .unwrap()
    }

    /// Waits until every one of `ranges` is Obsolete (a split or join finished).
    pub async fn wait_obsolete(&self, ranges: &[u64]) {
        let ids: Vec<RangeId> = ranges.iter().map(|n| id(*n)).collect();
        self.wait_for(&format!("{ranges:?} obsolete"), move |e| {
            ids.iter().all(|r| {
                e.keyspace()
                    .range(*r)
                    .is_ok_and(|r| r.state() == RangeState::Obsolete)
            })
        })
        .await;
    }

    pub async fn range_state(&self, range: RangeId) -> RangeState {
        self.handle
            .inspect(move |e| e.keyspace().range(range).map(|r| r.state()).unwrap())
            .await
            .unwrap()
    }

    /// Waits until the range has exactly these Active placements and nothing else.
    pub async fn wait_active_on(&self, range: RangeId, nodes: &[&str]) {
        let mut want: Vec<(String, PlacementState)> = nodes
            .iter()
            .map(|n| (n.to_string(), PlacementState::Active))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        self.wait_for(&format!("{range} active on {nodes:?}"), move |e| {
            let mut got = placements_of(e, range);
            got.sort_by(|a, b| a.0.cmp(&b.0));
            got == want
        })
        .await;
    }

    pub async fn describe(&self) -> String {
        self.handle
            .inspect(|e| {
                let mut out = String::new();
                for r in e.keyspace().ranges() {
                    out.push_str(&format!(
                        "{} {:?} parents {:?} children {:?} placements {:?} note {:?}\n",
                        r.meta(),
                        r.state(),
                        r.parents(),
                        r.children(),
                        r.placements()
                            .iter()
                            .map(|p| format!(
                                "{}@{}:{}{}",
                                p.id(),
                                p.node(),
                                p.state(),
                                if p.retiring() { "(retiring)" } else { "" }
                            ))
                            .collect::<Vec<_>>(),
                        e.note(r.id())
                    ));
                }
                for op in e.operations() {
                    out.push_str(&format!("op {} {} {:?}\n", op.id, op, op.phase));
                }
                out
            })
            .await
            .unwrap_or_default()
    }

    /// Commands the nodes received, rendered `P(b,2)`, since the last clear.
    pub fn calls(&self) -> Vec<String> {
        self.log.render()
    }
}

pub fn placements_of(e: &Engine, range: RangeId) -> Vec<(String, PlacementState)> {
    e.keyspace()
        .range(range)
        .map(|r| {
            r.placements()
                .iter()
                .map(|p| (p.node().to_string(), p.state()))
                .collect()
        })
        .unwrap_or_default()
}

async fn start_node(
    name: &str,
    log: &CallLog,
    transport: &InProcessTransport<ScriptedNode>,
) -> (ScriptedNode, Rangelet<ScriptedNode>) {
    let node = ScriptedNode::named(name, log.clone());
    let rangelet = Rangelet::open(
        node.clone(),
        MemoryStateStore::new(),
        RangeletConfig::default(),
    )
    .await
    .unwrap();
    transport.attach(addr(name), rangelet.clone());
    (node, rangelet)
}

async fn spawn_controller(
    persister: &MemoryPersister,
    transport: &InProcessTransport<ScriptedNode>,
    membership: &watch::Sender<Membership>,
    config: &OrchestratorConfig,
    metrics: &RuntimeMetrics,
) -> (
    ControllerHandle,
    JoinHandle<Result<(), RuntimeError>>,
    oneshot::Sender<()>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let parts = runtime::Parts {
        persister: persister.clone(),
        transport: Arc::new(transport.clone()),
        membership: membership.subscribe(),
        orchestrator: config.clone(),
        runtime: RuntimeConfig {
            tick: Duration::from_millis(50),
            balance_interval: Duration::from_secs(1),
            metrics: metrics.clone(),
        },
    };
    let (handle, task) = runtime::start(parts, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    (handle, task, stop)
}

impl Cluster {
    /// What every node holds, straight from the rangelets: (node, range, state,
    /// whether its lease still lets it write).
    pub fn ground_truth(
        &self,
    ) -> Vec<(
        String,
        ranger_proto::RangeMeta,
        ranger_proto::RemoteState,
        bool,
    )> {
        let mut out = Vec::new();
        for (name, rangelet) in &self.rangelets {
            for change in rangelet.ranges() {
                // Whether it may accept writes: Active, leased and not fenced; a
                // range mid-transition counts while the node's lease holds.
                let writable = match change.state {
                    ranger_proto::RemoteState::Active => rangelet.may_write(change.meta.id()),
                    state => state.may_serve_writes() && rangelet.lease_valid(),
                };
                out.push((name.clone(), change.meta, change.state, writable));
            }
        }
        out
    }

    /// Invariant 1: no key is in two placements that may be taking writes (for
    /// R3, no key in two different ranges that may be taking writes).
    pub fn assert_one_writer(&self) {
        let writers: Vec<_> = self
            .ground_truth()
            .into_iter()
            .filter(|(_, _, state, lease)| state.may_serve_writes() && *lease)
            .collect();
        // Replicas of one range may all serve under R3; overlapping ranges never.
        let replicated = self.config.replication.max_active > 1;
        for (i, (n1, m1, s1, _)) in writers.iter().enumerate() {
            for (n2, m2, s2, _) in &writers[i + 1..] {
                if replicated && m1.id() == m2.id() {
                    continue;
                }
                assert!(
                    !m1.overlaps(m2),
                    "two writers: {m1} {s1} on {n1} (may_write {}, lease {}) and {m2} {s2} on {n2} (may_write {}, lease {})",
                    self.rangelets[n1].may_write(m1.id()),
                    self.rangelets[n1].lease_valid(),
                    self.rangelets[n2].may_write(m2.id()),
                    self.rangelets[n2].lease_valid(),
                );
            }
        }
    }
}
