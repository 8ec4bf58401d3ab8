//! One planning round's working state: the snapshot indexed for the rules, the
//! smoothed loads, the projected node loads, the limits left, and the plan being
//! built.
//!
//! The rules (split, move, join) only read and update this; it is the one place
//! that knows how an action changes the projected loads and the limits, so that
//! every rule sees the effect of the actions planned before it in the same round.

use std::collections::{HashMap, HashSet};

use ranger_proto::{Key, NodeId, RangeId};

use super::config::BalancerConfig;
use super::load::{Dims, Scale, Smoothed, imbalance};
use super::memory::{BalancerMemory, HotSpan, RecentMove, contains, overlaps};
use super::plan::{
    Action, Candidate, Imbalance, NodeReport, Plan, PlannedAction, Reason, SkipReason, Skipped,
};
use super::snapshot::{NodeSnapshot, NodeState, OpKind, RangeSnapshot, Snapshot};
use super::split::{Piece, Side};

/// A node as the round sees it.
#[derive(Debug)]
pub(super) struct NodeWork<'a> {
    pub snap: &'a NodeSnapshot,
    /// Its load report is recent enough to believe.
    pub fresh: bool,
    /// Load per dimension, with moves in flight counted as done.
    pub dims: Dims,
    /// The load figure before this plan.
    pub load: f64,
    /// The load figure after the moves planned so far.
    pub planned: f64,
    /// Room held this round for a more overloaded node that could not shed all
    /// its excess yet (its hot range is being split): its pieces get this room
    /// next round instead of finding it taken by smaller moves from elsewhere.
    pub reserved: f64,
    /// The load figure of a range this node is making room for (see
    /// [`super::moves::plan_carriers`]; the range names it as its carrier):
    /// it counts as this node's load already, so that the node sheds enough
    /// for it and takes nothing meanwhile.
    pub awaiting: Option<f64>,
    /// Ranges with a placement here (moves in flight counted as done).
    pub ranges: Vec<usize>,
    pub transfers_out: usize,
    pub transfers_in: usize,
}

impl NodeWork<'_> {
    pub fn capacity(&self) -> f64 {
        self.snap.capacity
    }

    /// A node with a usable capacity, Active, with a fresh report: it may give and
    /// take load, and it counts in the mean.
    pub fn eligible(&self) -> bool {
        self.fresh && self.snap.state == NodeState::Active && has_capacity(self.snap)
    }

    /// Planned load per unit of capacity, with the range it makes room for
    /// counted as here.
    pub fn util(&self) -> f64 {
        self.per_capacity(self.planned + self.awaited_load())
    }

    /// Planned load per unit of capacity as a destination sees it: with the room
    /// reserved for others counted as taken.
    pub fn util_as_target(&self) -> f64 {
        self.util() + self.per_capacity(self.reserved)
    }

    /// What [`NodeWork::util_as_target`] would be without the range it makes
    /// room for: where that range's own move starts from.
    pub fn util_without_awaited(&self) -> f64 {
        self.per_capacity(self.planned + self.reserved)
    }

    fn awaited_load(&self) -> f64 {
        self.awaiting.unwrap_or(0.0)
    }

    fn per_capacity(&self, load: f64) -> f64 {
        if has_capacity(self.snap) {
            load / self.snap.capacity
        } else {
            f64::INFINITY
        }
    }
}

fn has_capacity(n: &NodeSnapshot) -> bool {
    n.capacity.is_finite() && n.capacity > 0.0
}

/// A range as the round sees it.
#[derive(Debug)]
pub(super) struct RangeWork {
    pub dims: Dims,
    /// Its load figure (on each node holding it).
    pub figure: f64,
    /// Nodes holding it (moves in flight counted as done); unknown nodes omitted.
    pub nodes: Vec<usize>,
    /// A placement is on a node that is not in the snapshot.
    pub unknown_node: bool,
    /// An operation on it is in flight.
    pub in_flight: bool,
    /// This plan already acts on it.
    pub acted: bool,
    /// Consecutive hot rounds, this one included (0: not hot now).
    pub hot_rounds: u32,
    /// The node making room to carry it, if any (see
    /// [`super::moves::plan_carriers`]).
    pub carrier: Option<usize>,
}

/// The working state of one round.
#[derive(Debug)]
pub(super) struct Round<'a> {
    pub snap: &'a Snapshot,
    pub config: &'a BalancerConfig,
    pub nodes: Vec<NodeWork<'a>>,
    pub ranges: Vec<RangeWork>,
    /// Range indices in key order.
    pub order: Vec<usize>,
    excluded: HashSet<(RangeId, usize)>,
    /// Mean load figure per unit of capacity: the target every node is balanced to.
    pub mean: f64,
    /// Request rate above which a range is hot.
    pub hot_rate: f64,
    /// The largest capacity of an eligible node: a range whose load per this
    /// much capacity is over the band fits on no node.
    biggest_capacity: f64,
    /// Operations that may still be planned.
    pub slots: usize,
    pub bytes_budget: u64,
    pub bytes_moved: u64,
    memory: &'a BalancerMemory,
    /// The remembered moves (indices into `memory.recent_moves`) by the node
    /// they left: [`Round::left_node`] is asked for many pairs of ranges.
    departures: HashMap<&'a NodeId, Vec<usize>>,
    next: BalancerMemory,
    pub plan: Plan,
}

/// How many move cooldowns the balancer remembers a move for (three hours at
/// the default cooldown). Within the cooldown, a range does not move at all;
/// after it, only moves that fix an imbalance may take a range back where it
/// came from: a join's move, which only saves resources, goes the other way
/// or waits (a carved piece that cooled is joined on the node it was sent to,
/// not sent home). The simulation's steady Zipf load saw a piece sent home
/// for a join an hour after it was carved off.
pub const RETURN_MEMORY_COOLDOWNS: u32 = 18;

/// At most this many moves of earlier rounds are remembered (the newest),
/// whatever their age, besides those of the round being planned: the memory
/// is checked for many candidates of every round.
pub const MAX_REMEMBERED_MOVES: usize = 4096;

impl<'a> Round<'a> {
    /// Indexes the snapshot, smooths the loads and projects the moves in flight.
    pub fn new(
        snap: &'a Snapshot,
        config: &'a BalancerConfig,
        memory: &'a BalancerMemory,
    ) -> Round<'a> {
        let now = snap.now;
        let mut nodes: Vec<NodeWork<'a>> = snap
            .nodes
            .iter()
            .map(|n| NodeWork {
                snap: n,
                fresh: n.report_age.is_some_and(|age| age <= config.stale_after),
                dims: Dims::default(),
                load: 0.0,
                planned: 0.0,
                reserved: 0.0,
                awaiting: None,
                ranges: Vec::new(),
                transfers_out: 0,
                transfers_in: 0,
            })
            .collect();
        let node_ix: HashMap<&NodeId, usize> = snap
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (&n.id, i))
            .collect();
        let range_ix: HashMap<RangeId, usize> = snap
            .ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();

        let mut order: Vec<usize> = (0..snap.ranges.len()).collect();
        if !snap.ranges.windows(2).all(|w| w[0].start <= w[1].start) {
            order.sort_by(|&a, &b| snap.ranges[a].start.cmp(&snap.ranges[b].start));
        }

        // Smoothed loads: a range's report is believed when one of its nodes is
        // fresh; otherwise its previous smoothed value (if any) is kept.
        let mut next = BalancerMemory {
            smoothed: HashMap::with_capacity(snap.ranges.len()),
            ..BalancerMemory::default()
        };
        let mut ranges: Vec<RangeWork> = Vec::with_capacity(snap.ranges.len());
        for r in &snap.ranges {
            let mut on = Vec::with_capacity(r.placements.len());
            let mut unknown_node = false;
            for id in &r.placements {
                match node_ix.get(id) {
                    Some(&i) if !on.contains(&i) => on.push(i),
                    Some(_) => {}
                    None => unknown_node = true,
                }
            }
            let believed = on.iter().any(|&i| nodes[i].fresh);
            let prev = memory.smoothed.get(&r.id);
            let smoothed = match (believed, prev) {
                (false, Some(prev)) => *prev,
                _ => Smoothed::update(prev, &r.load, now, config.smoothing_half_life),
            };
            next.smoothed.insert(r.id, smoothed);
            let dims = smoothed.dims(&config.weights);
            ranges.push(RangeWork {
                dims,
                figure: 0.0,
                nodes: on,
                unknown_node,
                in_flight: false,
                acted: false,
                hot_rounds: 0,
                carrier: None,
            });
        }

        // Operations in flight: their ranges are left alone, their transfers count
        // against the nodes' limits, and a move's load is already its destination's.
        for op in &snap.in_flight {
            let from = op.from.as_ref().and_then(|id| node_ix.get(id).copied());
            let to = op.to.as_ref().and_then(|id| node_ix.get(id).copied());
            for id in &op.ranges {
                let Some(&ri) = range_ix.get(id) else {
                    continue;
                };
                ranges[ri].in_flight = true;
                if let (OpKind::Move, Some(f), Some(t)) = (op.kind, from, to)
                    && let Some(slot) = ranges[ri].nodes.iter().position(|&n| n == f)
                {
                    if ranges[ri].nodes.contains(&t) {
                        ranges[ri].nodes.remove(slot);
                    } else {
                        ranges[ri].nodes[slot] = t;
                    }
                }
            }
            if op.kind == OpKind::Move {
                if let Some(f) = from {
                    nodes[f].transfers_out += 1;
                }
                if let Some(t) = to {
                    nodes[t].transfers_in += 1;
                }
            }
        }

        for (ri, r) in ranges.iter().enumerate() {
            for &n in &r.nodes {
                nodes[n].dims.add(&r.dims);
                nodes[n].ranges.push(ri);
            }
        }

        // The fair share: the load of every node whose report we believe (a
        // draining node's load must go somewhere) over the capacity of the nodes
        // that may take it.
        let mut total = Dims::default();
        let mut capacity = 0.0;
        for n in &nodes {
            if n.fresh && n.snap.state != NodeState::RecentlyFailed && has_capacity(n.snap) {
                total.add(&n.dims);
            }
            if n.eligible() {
                capacity += n.capacity();
            }
        }
        let scale = Scale::new(config.weights, &total, capacity);
        for r in &mut ranges {
            r.figure = scale.figure(&r.dims);
        }
        let biggest_capacity = nodes
            .iter()
            .filter(|n| n.eligible())
            .map(|n| n.capacity())
            .fold(0.0, f64::max);
        let mut counted = 0.0;
        for n in &mut nodes {
            n.load = scale.figure(&n.dims);
            n.planned = n.load;
            if n.fresh && n.snap.state != NodeState::RecentlyFailed && has_capacity(n.snap) {
                counted += n.load;
            }
        }
        let mean = if capacity > 0.0 {
            counted / capacity
        } else {
            0.0
        };
        let hot_rate =
            (config.split_load_share * scale.share().requests).max(config.split_min_rate);

        // Hot rounds: counted per range, inherited by the children of a hot range
        // this balancer split; frozen while the range's load is not believed.
        let hot_spans: Vec<&HotSpan> = memory
            .hot_spans
            .iter()
            .filter(|h| now.since(h.at) < config.move_cooldown)
            .collect();
        for (ri, r) in snap.ranges.iter().enumerate() {
            let work = &mut ranges[ri];
            let prev = memory.hot_rounds.get(&r.id).copied().or_else(|| {
                hot_spans
                    .iter()
                    .find(|h| contains(&h.start, &h.end, &r.start, &r.end))
                    .map(|h| h.rounds)
            });
            let believed = work.nodes.iter().any(|&i| nodes[i].fresh);
            let rounds = if !believed {
                prev.unwrap_or(0)
            } else if work.dims.requests > hot_rate {
                prev.unwrap_or(0).saturating_add(1)
            } else {
                0
            };
            work.hot_rounds = rounds;
            if rounds > 0 {
                next.hot_rounds.insert(r.id, rounds);
            }
        }
        next.hot_spans = hot_spans.into_iter().cloned().collect();
        next.recent_moves = memory
            .recent_moves
            .iter()
            .filter(|m| now.since(m.at) < config.move_cooldown * RETURN_MEMORY_COOLDOWNS)
            .cloned()
            .collect();
        let excess = next.recent_moves.len().saturating_sub(MAX_REMEMBERED_MOVES);
        next.recent_moves.drain(..excess);

        let excluded = snap
            .excluded
            .iter()
            .filter_map(|(r, n)| node_ix.get(n).map(|&i| (*r, i)))
            .collect();

        let keyspace_bytes: u64 = snap.ranges.iter().map(|r| r.load.bytes).sum();
        let bytes_budget = (keyspace_bytes as f64 * config.max_bytes_moved_share) as u64;
        let slots = config.max_in_flight.saturating_sub(snap.in_flight.len());
        let mut departures: HashMap<&NodeId, Vec<usize>> = HashMap::new();
        for (i, m) in memory.recent_moves.iter().enumerate() {
            departures.entry(&m.from).or_default().push(i);
        }

        Round {
            snap,
            config,
            nodes,
            ranges,
            order,
            excluded,
            mean,
            hot_rate,
            biggest_capacity,
            slots,
            bytes_budget,
            bytes_moved: 0,
            memory,
            departures,
            next,
            plan: Plan {
                now,
                bytes_budget,
                mean_load: mean,
                ..Plan::default()
            },
        }
    }

    pub fn range(&self, ri: usize) -> &'a RangeSnapshot {
        &self.snap.ranges[ri]
    }

    /// Records a skipped candidate: always counted, listed up to the limit.
    pub fn skip(
        &mut self,
        candidate: Candidate,
        range: Option<usize>,
        node: Option<usize>,
        reason: SkipReason,
    ) {
        *self.plan.skip_counts.entry(reason).or_insert(0) += 1;
        if self.plan.skipped.len() < self.config.max_skips_listed {
            let range = range.map(|ri| self.snap.ranges[ri].id);
            let node = node.map(|n| self.nodes[n].snap.id.clone());
            self.plan.skipped.push(Skipped {
                candidate,
                range,
                node,
                reason,
            });
        }
    }

    /// Whether a range may be acted on at all this round, and if not why.
    pub fn blocked(&self, ri: usize) -> Option<SkipReason> {
        let r = &self.ranges[ri];
        if r.in_flight {
            return Some(SkipReason::InFlight);
        }
        if r.nodes
            .iter()
            .any(|&n| self.nodes[n].snap.state == NodeState::RecentlyFailed)
            || r.unknown_node
        {
            return Some(SkipReason::NodeFailed);
        }
        if r.nodes.iter().any(|&n| !self.nodes[n].fresh) {
            return Some(SkipReason::StaleLoad);
        }
        None
    }

    /// Whether node `n`, inside the band, sheds all the same: it began last
    /// round above the band and is still above the mark it sheds to (see
    /// [`BalancerMemory::shedding`]), or it sits at the band's upper edge for
    /// the second round in a row (see [`BalancerMemory::at_edge`]).
    pub fn still_shedding(&self, n: usize) -> bool {
        let tol = self.config.tolerance;
        let util = self.nodes[n].util();
        let id = &self.nodes[n].snap.id;
        let shed_to = self.mean * (1.0 + tol / 2.0);
        (util > shed_to && self.memory.shedding.contains(id))
            || (util > self.mean * (1.0 + tol - self.edge()) && self.memory.at_edge.contains(id))
    }

    /// Whether node `n`, inside the band, takes load all the same: the
    /// mirror of [`Round::still_shedding`] below the mean.
    pub fn still_filling(&self, n: usize) -> bool {
        let tol = self.config.tolerance;
        let util = self.nodes[n].util();
        let id = &self.nodes[n].snap.id;
        let fill_to = self.mean * (1.0 - tol / 2.0);
        (util < fill_to && self.memory.filling.contains(id))
            || (util < self.mean * (1.0 - tol + self.edge()) && self.memory.at_edge.contains(id))
    }

    /// The width of the band's edges, as a share of the mean.
    fn edge(&self) -> f64 {
        self.config.tolerance / 10.0
    }

    /// Remembers for next round the nodes that began this one outside the
    /// band (see [`BalancerMemory::shedding`] and [`BalancerMemory::filling`]),
    /// whether their load then moves by planned moves or with their splits,
    /// and those that began it at one of the band's edges (see
    /// [`BalancerMemory::at_edge`]).
    pub fn note_band(&mut self) {
        let tol = self.config.tolerance;
        let (upper, lower) = (self.mean * (1.0 + tol), self.mean * (1.0 - tol));
        let edge = self.mean * self.edge();
        for n in self.eligible_nodes() {
            let node = &self.nodes[n];
            let began = node.load / node.capacity();
            let id = node.snap.id.clone();
            if began > upper {
                self.next.shedding.push(id);
            } else if began < lower {
                self.next.filling.push(id);
            } else if began > upper - edge || began < lower + edge {
                self.next.at_edge.push(id);
            }
        }
    }

    /// Whether the range (or a range it came from) moved within the cooldown:
    /// moving it again, back or onwards, would undo a move just paid for.
    pub fn in_move_cooldown(&self, ri: usize) -> bool {
        let r = self.range(ri);
        let now = self.snap.now;
        let window = self.config.move_cooldown;
        // Newest first, and only as far back as the window: the memory holds
        // moves in the order they were planned, for many cooldowns.
        now.within(r.last_moved, window)
            || self
                .memory
                .recent_moves
                .iter()
                .rev()
                .take_while(|m| now.within(Some(m.at), window))
                .any(|m| overlaps(&m.start, &m.end, &r.start, &r.end))
    }

    /// Whether the range (or a range it came from) left node `t` within the
    /// balancer's memory of moves (see [`RETURN_MEMORY_COOLDOWNS`]).
    pub fn left_node(&self, ri: usize, t: usize) -> bool {
        let r = self.range(ri);
        self.departures
            .get(&self.nodes[t].snap.id)
            .is_some_and(|moves| {
                moves.iter().any(|&i| {
                    let m = &self.memory.recent_moves[i];
                    overlaps(&m.start, &m.end, &r.start, &r.end)
                })
            })
    }

    /// Whether the range alone carries more than any node may hold within
    /// tolerance: no placement of it can be balanced, so waiting for more hot
    /// rounds only delays the split that is certain to be needed.
    pub fn unplaceable(&self, ri: usize) -> bool {
        self.biggest_capacity > 0.0
            && self.ranges[ri].figure / self.biggest_capacity
                > self.mean * (1.0 + self.config.tolerance)
    }

    /// Whether the range sits on a node above its band and is too big for the
    /// room any other node has now: none of its load can move until it is cut,
    /// so waiting for more hot rounds would only delay a split that the
    /// overload already proves necessary (a burst on a balanced node still waits).
    pub fn stuck(&self, ri: usize) -> bool {
        let tol = self.config.tolerance;
        let (upper, shed_to) = (self.mean * (1.0 + tol), self.mean * (1.0 + tol / 2.0));
        self.ranges[ri].nodes.iter().any(|&s| {
            if self.nodes[s].util() <= upper {
                return false;
            }
            let least = (0..self.nodes.len())
                .filter(|&t| t != s && self.nodes[t].eligible())
                .map(|t| self.nodes[t].util_as_target() + self.delta(ri, t))
                .fold(f64::INFINITY, f64::min);
            least > shed_to
        })
    }

    pub fn is_excluded(&self, ri: usize, node: usize) -> bool {
        self.excluded.contains(&(self.snap.ranges[ri].id, node))
    }

    /// Load per unit of capacity that moving `ri` adds to (or removes from) `node`.
    pub fn delta(&self, ri: usize, node: usize) -> f64 {
        self.ranges[ri].figure / self.nodes[node].capacity()
    }

    /// Nodes that take part in balancing.
    pub fn eligible_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].eligible())
            .collect()
    }

    /// Plans splitting `ri` at `key`, both halves staying on the range's node.
    pub fn push_split(&mut self, ri: usize, key: Key, reason: Reason) {
        self.push_split_sending(ri, key, reason, None);
    }

    fn push_split_sending(&mut self, ri: usize, key: Key, reason: Reason, send: Option<Piece>) {
        let r = self.range(ri);
        let rounds = self.ranges[ri].hot_rounds;
        if rounds > 0 {
            self.next.hot_spans.push(HotSpan {
                start: r.start.clone(),
                end: r.end.clone(),
                rounds,
                at: self.snap.now,
            });
        }
        // With one replica, the halves stay where the range is unless sent:
        // the controller's own choice (fewest placements) knows nothing of
        // this round's plan. With several, the controller chooses.
        let stay = match self.ranges[ri].nodes.as_slice() {
            [only] => Some(self.nodes[*only].snap.id.clone()),
            _ => None,
        };
        let (mut left, mut right) = (stay.clone(), stay);
        if let Some(piece) = send {
            let to = self.nodes[piece.to].snap.id.clone();
            let (start, end) = match piece.side {
                Side::Left => {
                    left = Some(to.clone());
                    (r.start.clone(), key.clone())
                }
                Side::Right => {
                    right = Some(to.clone());
                    (key.clone(), r.end.clone())
                }
            };
            let bytes = self.piece_bytes(ri, &piece);
            self.note_transfer(piece.from, piece.to, piece.load, bytes, start, end);
        }
        self.ranges[ri].acted = true;
        self.slots = self.slots.saturating_sub(1);
        self.plan.actions.push(PlannedAction {
            action: Action::Split {
                range: r.id,
                key,
                left,
                right,
            },
            reason,
        });
    }

    /// Plans a split that carves a piece for a node's room: the split sends
    /// the piece there itself when a move of it would be allowed now; else
    /// it stays, and the room is held for it.
    pub fn push_carve(&mut self, ri: usize, cut: super::split::Carve, reason: Reason) {
        if let Some(piece) = cut.send.filter(|piece| self.may_send(ri, piece)) {
            self.push_split_sending(ri, cut.key, reason, Some(piece));
            return;
        }
        self.push_split(ri, cut.key, reason);
        if let Some(piece) = cut.send.filter(|_| cut.hold) {
            self.hold(piece.to, piece.load);
        }
    }

    /// Whether `piece` of `ri` may go to its node with the split: what a move
    /// of it would need (one replica, no cooldown, a transfer slot at both
    /// ends, the byte budget, a node that may take it).
    fn may_send(&self, ri: usize, piece: &Piece) -> bool {
        self.ranges[ri].nodes.as_slice() == [piece.from]
            && !self.in_move_cooldown(ri)
            && self.nodes[piece.to].eligible()
            && !self.is_excluded(ri, piece.to)
            && self.nodes[piece.from].transfers_out < self.config.max_transfers_out
            && self.nodes[piece.to].transfers_in < self.config.max_transfers_in
            && self.bytes_moved.saturating_add(self.piece_bytes(ri, piece)) <= self.bytes_budget
    }

    /// A piece's bytes, estimated as its share of the range's load.
    fn piece_bytes(&self, ri: usize, piece: &Piece) -> u64 {
        let figure = self.ranges[ri].figure;
        let share = if figure > 0.0 {
            (piece.load / figure).clamp(0.0, 1.0)
        } else {
            1.0
        };
        (self.range(ri).load.bytes as f64 * share).ceil() as u64
    }

    /// Holds `load` of node `t`'s room for a piece that moves there next round
    /// (it counts as taken for every destination choice of this round).
    pub fn hold(&mut self, t: usize, load: f64) {
        self.nodes[t].reserved += load;
    }

    pub fn push_join(&mut self, left: usize, right: usize) {
        self.ranges[left].acted = true;
        self.ranges[right].acted = true;
        self.slots = self.slots.saturating_sub(1);
        self.plan.actions.push(PlannedAction {
            action: Action::Join {
                left: self.snap.ranges[left].id,
                right: self.snap.ranges[right].id,
            },
            reason: Reason::JoinCold,
        });
    }

    /// Plans moving the placement of `ri` on `from` to `to`, and counts it in the
    /// projected loads and the limits.
    pub fn push_move(&mut self, ri: usize, from: usize, to: usize, reason: Reason) {
        let r = self.range(ri);
        let (bytes, start, end, range) = (r.load.bytes, r.start.clone(), r.end.clone(), r.id);
        self.note_transfer(from, to, self.ranges[ri].figure, bytes, start, end);
        if let Some(slot) = self.ranges[ri].nodes.iter().position(|&n| n == from) {
            self.ranges[ri].nodes[slot] = to;
        }
        self.ranges[ri].acted = true;
        self.slots = self.slots.saturating_sub(1);
        self.plan.actions.push(PlannedAction {
            action: Action::Move {
                range,
                from: self.nodes[from].snap.id.clone(),
                to: self.nodes[to].snap.id.clone(),
            },
            reason,
        });
    }

    /// Counts `load` and `bytes` of keys `[start, end)` going from `from` to
    /// `to` in the projected loads, the transfer limits, the byte budget and
    /// the memory of moves: what a move and a split that sends a piece share.
    fn note_transfer(
        &mut self,
        from: usize,
        to: usize,
        load: f64,
        bytes: u64,
        start: Key,
        end: Key,
    ) {
        self.nodes[from].planned -= load;
        self.nodes[to].planned += load;
        self.nodes[from].transfers_out += 1;
        self.nodes[to].transfers_in += 1;
        self.bytes_moved = self.bytes_moved.saturating_add(bytes);
        self.next.recent_moves.push(RecentMove {
            start,
            end,
            from: self.nodes[from].snap.id.clone(),
            to: self.nodes[to].snap.id.clone(),
            at: self.snap.now,
        });
    }

    /// Fills in the plan's figures and hands back the plan and the next memory.
    pub fn finish(mut self) -> (Plan, BalancerMemory) {
        let mean = self.mean;
        let share = |x: f64| if mean > 0.0 { x / mean } else { 1.0 };
        let mut reports = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let cap = if has_capacity(n.snap) {
                n.capacity()
            } else {
                0.0
            };
            let per = |x: f64| if cap > 0.0 { x / cap } else { 0.0 };
            reports.push(NodeReport {
                id: n.snap.id.clone(),
                state: n.snap.state,
                capacity: n.snap.capacity,
                fresh: n.fresh,
                load: n.load,
                share_of_mean: share(per(n.load)),
                planned_share_of_mean: share(per(n.planned)),
                ranges: n.ranges.len(),
                bytes: n.dims.bytes.max(0.0) as u64,
            });
        }
        let eligible: Vec<&NodeWork> = self.nodes.iter().filter(|n| n.eligible()).collect();
        let cap = |n: &NodeWork| n.capacity();
        self.plan.imbalance = Imbalance {
            load: imbalance(eligible.iter().map(|n| (n.load, cap(n)))),
            requests: imbalance(eligible.iter().map(|n| (n.dims.requests, cap(n)))),
            bytes: imbalance(eligible.iter().map(|n| (n.dims.bytes, cap(n)))),
            keys: imbalance(eligible.iter().map(|n| (n.dims.keys, cap(n)))),
        };
        self.plan.planned_imbalance = imbalance(eligible.iter().map(|n| (n.planned, cap(n))));
        self.plan.nodes = reports;
        self.plan.bytes_moved = self.bytes_moved;
        (self.plan, self.next)
    }
}
