//! A photograph of the engine for one scrape: everything the controller's
//! gauges show (nodes, ranges and placements by state, per-node load, the
//! imbalance, operations in flight) and the engine's running totals (ended
//! operations, placement transitions, balancer rounds). Taken inside the
//! controller loop by [`EngineSample::of`], a pure function of the engine and the
//! time, so the scrape handler never reads engine state from another task.

use std::collections::BTreeMap;

use ranger_proto::{PlacementState, RangeState};
use tokio::time::Instant;

use crate::balancer::Imbalance;
use crate::config::BalanceMode;
use crate::orchestrator::history::{DurationHistogram, OpKind, OpTotals};
use crate::orchestrator::{BalanceTotals, Engine, OpPhase};
use crate::roster::NodeStatus;

/// A node's condition as the controller sees it, for `ranger_nodes{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeCondition {
    /// Answering probes, taking ranges.
    Active,
    /// Answering, but being emptied (asked by an operator or by itself).
    Draining,
    /// Its last probe failed; its lease is running out.
    Unreachable,
    /// Its lease ran out past the margin: its placements are lost.
    Lost,
    /// Discovery no longer lists it (it is kept while it holds ranges).
    Unregistered,
}

impl NodeCondition {
    pub fn of(node: &NodeStatus, now: Instant, engine: &Engine) -> Self {
        if node.is_lost(now, engine.config().node_loss_after()) {
            NodeCondition::Lost
        } else if !node.registered {
            NodeCondition::Unregistered
        } else if node.lease_suspended || node.last_ok.is_none() {
            NodeCondition::Unreachable
        } else if node.draining() {
            NodeCondition::Draining
        } else {
            NodeCondition::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeCondition::Active => "active",
            NodeCondition::Draining => "draining",
            NodeCondition::Unreachable => "unreachable",
            NodeCondition::Lost => "lost",
            NodeCondition::Unregistered => "unregistered",
        }
    }

    pub const ALL: [NodeCondition; 5] = [
        NodeCondition::Active,
        NodeCondition::Draining,
        NodeCondition::Unreachable,
        NodeCondition::Lost,
        NodeCondition::Unregistered,
    ];
}

/// One node's figures, from what its probes last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFigures {
    pub id: String,
    /// Reads and writes per second over the ranges it reported.
    pub requests_per_second: f64,
    pub bytes: u64,
    pub ranges: u64,
    pub capacity: f64,
    /// Its load per unit of capacity over the mean, from the last balancing
    /// round (absent before the first, or with balancing off).
    pub share_of_mean: Option<f64>,
}

/// The balancer's part of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerSample {
    pub mode: BalanceMode,
    pub paused: bool,
    pub tolerance: f64,
    /// The last round's imbalance (max/mean per dimension), if a round ran.
    pub imbalance: Option<Imbalance>,
    pub totals: BalanceTotals,
}

/// Everything one scrape shows of the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSample {
    pub nodes: BTreeMap<NodeCondition, u64>,
    pub node_figures: Vec<NodeFigures>,
    pub ranges: BTreeMap<RangeState, u64>,
    pub placements: BTreeMap<PlacementState, u64>,
    /// Ranges waiting for a lost node's copy (R1): unavailable until it returns
    /// or an operator forgets it.
    pub unavailable_ranges: u64,
    pub ops_in_flight: BTreeMap<(OpKind, &'static str), u64>,
    pub op_totals: OpTotals,
    pub op_durations: BTreeMap<(OpKind, &'static str), DurationHistogram>,
    pub placement_transitions: BTreeMap<PlacementState, u64>,
    pub balancer: BalancerSample,
}

impl EngineSample {
    /// The engine as it is at `now`. Costs one pass over the keyspace's ranges
    /// and the roster.
    pub fn of(engine: &Engine, now: Instant) -> Self {
        let mut nodes = BTreeMap::new();
        for node in engine.roster().nodes() {
            *nodes
                .entry(NodeCondition::of(node, now, engine))
                .or_default() += 1;
        }
        let mut ranges = BTreeMap::new();
        let mut placements = BTreeMap::new();
        for range in engine.keyspace().ranges() {
            *ranges.entry(range.state()).or_default() += 1;
            for placement in range.placements() {
                *placements.entry(placement.state()).or_default() += 1;
            }
        }
        let mut ops_in_flight = BTreeMap::new();
        for op in engine.operations() {
            let phase = match op.phase {
                OpPhase::Queued => "queued",
                OpPhase::Running => "running",
                OpPhase::RollingBack => "rolling_back",
            };
            *ops_in_flight
                .entry((OpKind::of(&op.request), phase))
                .or_default() += 1;
        }
        let last_plan = engine.last_balance_round().map(|round| &round.plan);
        let node_figures = engine
            .roster()
            .nodes()
            .map(|node| {
                let (requests_per_second, bytes) =
                    node.ranges.values().fold((0.0, 0), |(rps, bytes), view| {
                        (
                            rps + view.load.reads_per_second + view.load.writes_per_second,
                            bytes + view.load.bytes,
                        )
                    });
                NodeFigures {
                    id: node.id.to_string(),
                    requests_per_second,
                    bytes,
                    ranges: node.ranges.len() as u64,
                    capacity: node.capacity,
                    share_of_mean: last_plan.and_then(|plan| {
                        plan.nodes
                            .iter()
                            .find(|report| report.id == node.id)
                            .map(|report| report.share_of_mean)
                    }),
                }
            })
            .collect();
        EngineSample {
            nodes,
            node_figures,
            ranges,
            placements,
            unavailable_ranges: engine.unavailable_ranges().count() as u64,
            ops_in_flight,
            op_totals: engine.history().totals().clone(),
            op_durations: engine.history().durations().clone(),
            placement_transitions: engine.keyspace().transition_counts().clone(),
            balancer: BalancerSample {
                mode: engine.config().balancing.mode,
                paused: engine.balance_paused_for(now).is_some(),
                tolerance: engine.config().balancing.planner.tolerance,
                imbalance: last_plan.map(|plan| plan.imbalance),
                totals: engine.balance_totals().clone(),
            },
        }
    }
}
