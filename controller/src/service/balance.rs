//! The balancer's status and plans on the wire (`Control.Balance`,
//! `PauseBalance`, `ResumeBalance`, `Explain`): what `rangerctl balance` and
//! `rangerctl explain` print.

use ranger_proto::pb::ranger as pb;
use tokio::time::Instant;

use super::millis;
use crate::balancer::NodeState;
use crate::orchestrator::{BalanceStatus, describe_action};

fn node_state(state: NodeState) -> &'static str {
    match state {
        NodeState::Active => "active",
        NodeState::Draining => "draining",
        NodeState::RecentlyFailed => "recently failed",
    }
}

/// The wire form of the balancer's status; `tolerance` from the config.
pub fn response(status: &BalanceStatus, tolerance: f64, now: Instant) -> pb::BalanceResponse {
    let mut out = pb::BalanceResponse {
        mode: status.mode.to_string(),
        paused_millis: status.paused_for.map(millis).unwrap_or(0),
        tolerance,
        ..Default::default()
    };
    let Some(round) = &status.last else {
        return out;
    };
    let plan = &round.plan;
    out.has_round = true;
    out.round_age_millis = millis(now.saturating_duration_since(round.at));
    out.imbalance = plan.imbalance.load;
    out.imbalance_requests = plan.imbalance.requests;
    out.imbalance_bytes = plan.imbalance.bytes;
    out.imbalance_keys = plan.imbalance.keys;
    out.planned_imbalance = plan.planned_imbalance;
    out.bytes_moved = plan.bytes_moved;
    out.bytes_budget = plan.bytes_budget;
    out.nodes = plan
        .nodes
        .iter()
        .map(|n| pb::BalanceNode {
            node: n.id.to_string(),
            state: node_state(n.state).to_owned(),
            capacity: n.capacity,
            fresh: n.fresh,
            load: n.load,
            share_of_mean: n.share_of_mean,
            planned_share_of_mean: n.planned_share_of_mean,
            ranges: n.ranges as u64,
            bytes: n.bytes,
        })
        .collect();
    out.actions = plan
        .actions
        .iter()
        .map(|planned| {
            let op = round
                .queued
                .iter()
                .find(|(_, q)| q == planned)
                .map(|(id, _)| id.0)
                .unwrap_or(0);
            let refused = round
                .refused
                .iter()
                .find(|(r, _)| r == planned)
                .map(|(_, why)| why.clone())
                .unwrap_or_default();
            pb::BalanceAction {
                description: describe_action(&planned.action),
                reason: format!("{:?}", planned.reason),
                op,
                refused,
            }
        })
        .collect();
    out.skipped = plan
        .skipped
        .iter()
        .map(|s| pb::BalanceSkip {
            candidate: format!("{:?}", s.candidate),
            range: s.range.map(|r| r.get()).unwrap_or(0),
            node: s.node.as_ref().map(ToString::to_string).unwrap_or_default(),
            reason: s.reason.to_string(),
        })
        .collect();
    out.skip_counts = plan
        .skip_counts
        .iter()
        .map(|(reason, count)| (reason.to_string(), *count as u64))
        .collect();
    out
}
