//! The services' answers as the JSON the page reads.
//!
//! Why these shapes: nodes, ranges and operations use the field names of
//! `rangerctl --json` (`id`, `start_text`, `placements[].node`, ...), so a
//! script written against one reads the other, and the browser test can
//! compare the two directly. Loads are added where the wire carries them.
//! `rangerctl --json` prints [`RangeView`] itself, and both show keys and
//! states with the helpers here.

use ranger_proto::pb::ranger as pb;
use ranger_proto::{Key, PlacementState, RangeState, RemoteState};
use serde::Serialize;

/// A key for people; the empty key as `infinity` (`-inf` or `+inf`).
pub fn show_key(bytes: &[u8], infinity: &str) -> String {
    if bytes.is_empty() {
        infinity.to_owned()
    } else {
        Key::from(bytes).to_string()
    }
}

/// A range state's name, or `?N` for a value the wire does not define.
pub fn range_state(state: i32) -> String {
    RangeState::try_from(state).map_or_else(|_| format!("?{state}"), |s| s.to_string())
}

/// A placement state's name, or `?N` for a value the wire does not define.
pub fn placement_state(state: i32) -> String {
    PlacementState::try_from(state).map_or_else(|_| format!("?{state}"), |s| s.to_string())
}

/// A remote state's name, or `?N` for a value the wire does not define.
pub fn remote_state(state: i32) -> String {
    RemoteState::try_from(state).map_or_else(|_| format!("?{state}"), |s| s.to_string())
}

/// One range (`GET /api/ranges`, `/api/ranges/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct RangeView {
    pub id: u64,
    /// The start key in hex ("" is minus infinity).
    pub start: String,
    /// The end key in hex ("" is plus infinity).
    pub end: String,
    pub start_text: String,
    pub end_text: String,
    pub state: String,
    pub unavailable: Option<Unavailable>,
    pub parents: Vec<u64>,
    pub children: Vec<u64>,
    pub placements: Vec<PlacementView>,
    /// Requests per second (reads + writes) its Active placements report.
    pub load: f64,
}

/// Why a range cannot be served, and for how long it has not been.
#[derive(Debug, Clone, Serialize)]
pub struct Unavailable {
    pub reason: String,
    pub for_ms: u64,
}

/// One placement of a range, with what its node last reported about it.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementView {
    pub node: String,
    pub state: String,
    pub remote_state: Option<String>,
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
    pub reads_per_second: Option<f64>,
    pub writes_per_second: Option<f64>,
}

impl From<&pb::RangeResponse> for RangeView {
    fn from(r: &pb::RangeResponse) -> Self {
        let meta = r.meta.clone().unwrap_or_default();
        let placements: Vec<PlacementView> = r
            .placements
            .iter()
            .map(|p| {
                let placement = p.placement.clone().unwrap_or_default();
                let load = p.range_info.as_ref().and_then(|i| i.info.as_ref());
                PlacementView {
                    node: placement.node,
                    state: placement_state(placement.state),
                    remote_state: p.range_info.as_ref().map(|i| remote_state(i.state)),
                    keys: load.map(|l| l.keys),
                    bytes: load.map(|l| l.bytes),
                    reads_per_second: load.map(|l| l.reads_per_second),
                    writes_per_second: load.map(|l| l.writes_per_second),
                }
            })
            .collect();
        let active = PlacementState::Active.to_string();
        let load = placements
            .iter()
            .filter(|p| p.state == active)
            .map(|p| p.reads_per_second.unwrap_or(0.0) + p.writes_per_second.unwrap_or(0.0))
            .sum();
        RangeView {
            id: meta.ident,
            start: hex::encode(&meta.start),
            end: hex::encode(&meta.end),
            start_text: show_key(&meta.start, "-inf"),
            end_text: show_key(&meta.end, "+inf"),
            state: range_state(r.state),
            unavailable: (!r.unavailable.is_empty()).then(|| Unavailable {
                reason: r.unavailable.clone(),
                for_ms: r.unavailable_millis,
            }),
            parents: r.parents.clone(),
            children: r.children.clone(),
            placements,
            load,
        }
    }
}

/// One node (`GET /api/nodes`).
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodeView {
    pub id: String,
    pub address: String,
    pub draining: bool,
    /// The capacity the node declared (relative; 1 by default).
    pub capacity: f64,
    pub ranges: Vec<NodeRangeView>,
}

/// A range on a node and its placement's state there.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodeRangeView {
    pub id: u64,
    pub state: String,
}

impl From<&pb::NodeResponse> for NodeView {
    fn from(n: &pb::NodeResponse) -> Self {
        let meta = n.node.clone().unwrap_or_default();
        NodeView {
            id: meta.ident,
            address: meta.address,
            draining: meta.want_drain,
            capacity: n.capacity,
            ranges: n
                .ranges
                .iter()
                .map(|r| NodeRangeView {
                    id: r.meta.as_ref().map_or(0, |m| m.ident),
                    state: placement_state(r.state),
                })
                .collect(),
        }
    }
}

/// `GET /api/operations`: in flight (queued, running, rolling back) and the
/// latest that ended, newest first.
#[derive(Debug, Clone, Serialize)]
pub(super) struct OperationsView {
    pub in_flight: Vec<OperationView>,
    pub recent: Vec<EndedOperationView>,
}

/// An operation in flight.
#[derive(Debug, Clone, Serialize)]
pub(super) struct OperationView {
    pub id: u64,
    pub description: String,
    pub phase: String,
    pub ranges: Vec<u64>,
    pub age_ms: u64,
    pub origin: String,
}

/// An operation that ended.
#[derive(Debug, Clone, Serialize)]
pub(super) struct EndedOperationView {
    pub id: u64,
    pub description: String,
    pub origin: String,
    pub ranges: Vec<u64>,
    pub duration_ms: u64,
    pub ended_ago_ms: u64,
    /// "ok" or the failure's kind.
    pub result: String,
    pub error: String,
}

impl From<&pb::OperationsResponse> for OperationsView {
    fn from(o: &pb::OperationsResponse) -> Self {
        OperationsView {
            in_flight: o
                .operations
                .iter()
                .map(|op| OperationView {
                    id: op.id,
                    description: op.description.clone(),
                    phase: op.phase.clone(),
                    ranges: op.ranges.clone(),
                    age_ms: op.age_millis,
                    origin: op.origin.clone(),
                })
                .collect(),
            recent: o
                .recent
                .iter()
                .map(|op| EndedOperationView {
                    id: op.id,
                    description: op.description.clone(),
                    origin: op.origin.clone(),
                    ranges: op.ranges.clone(),
                    duration_ms: op.duration_millis,
                    ended_ago_ms: op.ended_ago_millis,
                    result: op.result.clone(),
                    error: op.error.clone(),
                })
                .collect(),
        }
    }
}

/// `GET /api/balance`: the balancer's mode, pause and last round.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BalanceView {
    /// "on", "dry-run" or "off".
    pub mode: String,
    /// How long the pause still lasts; 0: not paused.
    pub paused_ms: u64,
    /// A node within mean × (1 ± tolerance) counts as balanced.
    pub tolerance: f64,
    /// Whether a round was planned yet; the fields below describe the last.
    pub has_round: bool,
    pub round_age_ms: u64,
    /// Max over mean of load per unit of capacity.
    pub imbalance: f64,
    pub planned_imbalance: f64,
    pub nodes: Vec<BalanceNodeView>,
    pub actions: Vec<BalanceActionView>,
    pub skip_counts: std::collections::BTreeMap<String, u64>,
}

/// One node as the balancer's last round saw it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BalanceNodeView {
    pub node: String,
    pub state: String,
    pub capacity: f64,
    pub fresh: bool,
    pub load: f64,
    pub share_of_mean: f64,
    pub ranges: u64,
    pub bytes: u64,
}

/// One action the balancer's last round planned.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BalanceActionView {
    pub description: String,
    pub reason: String,
    pub op: u64,
    pub refused: String,
}

impl From<&pb::BalanceResponse> for BalanceView {
    fn from(b: &pb::BalanceResponse) -> Self {
        BalanceView {
            mode: b.mode.clone(),
            paused_ms: b.paused_millis,
            tolerance: b.tolerance,
            has_round: b.has_round,
            round_age_ms: b.round_age_millis,
            imbalance: b.imbalance,
            planned_imbalance: b.planned_imbalance,
            nodes: b
                .nodes
                .iter()
                .map(|n| BalanceNodeView {
                    node: n.node.clone(),
                    state: n.state.clone(),
                    capacity: n.capacity,
                    fresh: n.fresh,
                    load: n.load,
                    share_of_mean: n.share_of_mean,
                    ranges: n.ranges,
                    bytes: n.bytes,
                })
                .collect(),
            actions: b
                .actions
                .iter()
                .map(|a| BalanceActionView {
                    description: a.description.clone(),
                    reason: a.reason.clone(),
                    op: a.op,
                    refused: a.refused.clone(),
                })
                .collect(),
            skip_counts: b.skip_counts.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}
