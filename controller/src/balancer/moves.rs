//! Moves: draining nodes empty, overloaded nodes shed, underloaded nodes fill.
//!
//! Bands around the mean load per unit of capacity, with hysteresis so that a node
//! that was just corrected is not corrected back by noise:
//!
//! - a node above `mean × (1 + tolerance)` sheds until it is at most
//!   `mean × (1 + tolerance/2)`;
//! - a node below `mean × (1 − tolerance)` takes load until it is at least
//!   `mean × (1 − tolerance/2)` (that is how a new node fills up);
//! - a destination never ends above `mean × (1 + tolerance/2)`, and always ends
//!   below where its source started, so that every move makes progress and no
//!   move creates a new overloaded node; the one exception is a range too hot
//!   for its node that only a bigger node can carry (see [`plan_carriers`]):
//!   it may leave its carrier above the band, still below where it was.
//!
//! Within a source, the range that removes the most load per byte moved goes
//! first (moves cost bytes; load is what we want to shift), except that a range
//! that would overshoot the source below its band waits until the ones that
//! do not have been tried.

use super::plan::{Candidate, Reason, SkipReason};
use super::round::Round;
use super::split::{self, Carve};

/// Drains first: those moves are owed whatever the balance.
pub(super) fn plan_drains(round: &mut Round<'_>) {
    let draining: Vec<usize> = (0..round.nodes.len())
        .filter(|&n| {
            let node = &round.nodes[n];
            node.snap.state == super::snapshot::NodeState::Draining && !node.ranges.is_empty()
        })
        .collect();
    for s in draining {
        if !round.nodes[s].fresh {
            round.skip(Candidate::Move, None, Some(s), SkipReason::StaleLoad);
            continue;
        }
        // Hottest first: the load has to go, and the cluster feels it sooner.
        let mut ranges = round.nodes[s].ranges.clone();
        ranges.sort_by(|&a, &b| {
            let (fa, fb) = (round.ranges[a].figure, round.ranges[b].figure);
            fb.total_cmp(&fa).then(a.cmp(&b))
        });
        for ri in ranges {
            match may_move(round, ri, s) {
                Gate::Go => {}
                Gate::NextRange => continue,
                Gate::NextNode => break,
            }
            match best_target(round, ri, s, f64::INFINITY, f64::INFINITY, Fit::Emptiest) {
                Ok(t) => round.push_move(ri, s, t, Reason::MoveDrain),
                Err(why) => round.skip(Candidate::Move, Some(ri), Some(s), why),
            }
        }
    }
}

/// Finds a carrier for every range that holds its node above the band on its
/// own and cannot be cut (a single hot key): a node whose capacity can carry it
/// within the band, the biggest such node (then the least loaded); none while
/// the range is in its move cooldown, since it may not move yet. The carrier
/// counts the range as its load already (see [`NodeWork::awaiting`]), so it
/// sheds to make room for it and takes nothing meanwhile; the range moves
/// there once that leaves the carrier below where the range's node is (see
/// [`carry`]). Nothing else balances such a range: moving the rest of its node
/// away leaves its node above the band with the range alone. Chosen afresh
/// each round from the loads, so nothing is remembered: a carrier that sheds
/// only becomes a better choice, but among nodes of equal capacity a less
/// loaded one may take over, and a range whose figure hovers at its node's
/// band may get a carrier one round and not the next.
///
/// [`NodeWork::awaiting`]: super::round::NodeWork
fn plan_carriers(round: &mut Round<'_>) {
    let tol = round.config.tolerance;
    let upper = round.mean * (1.0 + tol);
    let shed_to = round.mean * (1.0 + tol / 2.0);
    for s in round.eligible_nodes() {
        if round.nodes[s].util() <= upper {
            continue;
        }
        for ri in round.nodes[s].ranges.clone() {
            let r = &round.ranges[ri];
            if round.delta(ri, s) <= upper
                || r.carrier.is_some()
                || r.acted
                || !r.nodes.contains(&s)
                || round.blocked(ri).is_some()
                || round.in_move_cooldown(ri)
                || split::load_key(round, ri).is_some()
            {
                continue;
            }
            let carrier = round
                .eligible_nodes()
                .into_iter()
                .filter(|&t| {
                    t != s
                        && !round.ranges[ri].nodes.contains(&t)
                        && round.nodes[t].awaiting.is_none()
                        && round.delta(ri, t) <= shed_to
                        && !round.is_excluded(ri, t)
                })
                .max_by(|&a, &b| {
                    let (na, nb) = (&round.nodes[a], &round.nodes[b]);
                    na.capacity()
                        .total_cmp(&nb.capacity())
                        .then(nb.util().total_cmp(&na.util()))
                        .then(b.cmp(&a))
                });
            if let Some(t) = carrier {
                round.nodes[t].awaiting = Some(round.ranges[ri].figure);
                round.ranges[ri].carrier = Some(t);
            }
        }
    }
}

/// Moves `ri` from `s` to its carrier `t` once that makes progress: the
/// carrier ends below where `s` is now, above its band or not (it goes on
/// shedding; `s` can only get better). Until then, the carrier is making room.
fn carry(round: &mut Round<'_>, ri: usize, s: usize, t: usize) -> Result<(), SkipReason> {
    let after = round.nodes[t].util_without_awaited() + round.delta(ri, t);
    if after >= round.nodes[s].util() {
        return Err(SkipReason::WaitingForRoom);
    }
    if round.nodes[t].transfers_in >= round.config.max_transfers_in {
        return Err(SkipReason::RateLimitTransfersIn);
    }
    round.nodes[t].awaiting = None;
    round.ranges[ri].carrier = None;
    round.push_move(ri, s, t, Reason::MoveToCarry);
    Ok(())
}

/// Overloaded nodes shed load to the least loaded nodes that can take it.
pub(super) fn plan_sheds(round: &mut Round<'_>) {
    plan_carriers(round);
    let tol = round.config.tolerance;
    let upper = round.mean * (1.0 + tol);
    let shed_to = round.mean * (1.0 + tol / 2.0);
    let fill_to = round.mean * (1.0 - tol / 2.0);
    let lower = round.mean * (1.0 - tol);
    let mut sources: Vec<usize> = round
        .eligible_nodes()
        .into_iter()
        .filter(|&n| round.nodes[n].util() > upper || round.still_shedding(n))
        .collect();
    sources.sort_by(|&a, &b| {
        let (ua, ub) = (round.nodes[a].util(), round.nodes[b].util());
        ub.total_cmp(&ua).then(a.cmp(&b))
    });
    for s in sources {
        // A range with a carrier goes first, before any cut takes the
        // node's transfer slots: it is what holds `s` above the band, and
        // would otherwise come last (it overshoots `s` below it).
        let carried: Vec<(usize, usize)> = round.nodes[s]
            .ranges
            .iter()
            .filter_map(|&ri| round.ranges[ri].carrier.map(|t| (ri, t)))
            .collect();
        for (ri, t) in carried {
            match may_move(round, ri, s) {
                Gate::Go => {}
                Gate::NextRange => continue,
                Gate::NextNode => break,
            }
            if round.in_move_cooldown(ri) {
                round.skip(Candidate::Move, Some(ri), Some(s), SkipReason::Cooldown);
            } else if let Err(why) = carry(round, ri, s, t) {
                round.skip(Candidate::Move, Some(ri), Some(s), why);
            }
        }
        // A range still waiting for its carrier's room is as good as gone:
        // `s` sheds only what it holds besides it (shedding the rest for
        // it would only make `s` take load back once it leaves).
        let waiting = waiting_for_carriers(round, s);
        if waiting > 0.0 && round.nodes[s].util() - waiting <= shed_to {
            continue;
        }
        // A node inside the band that still sheds (see `still_shedding`)
        // only moves what fits: cutting ranges for its last few percent
        // would fragment the keyspace for a mark, not for the band.
        let over = round.nodes[s].util() - waiting > upper;
        let excess = round.nodes[s].util() - waiting - shed_to;
        let min_delta = round.config.min_move_fraction * excess;
        // Set for such a node, so that the too-big fallback below does not
        // cut either.
        let mut split_one = !over;
        let cuts = if over {
            splits_to_make_moves_count(round, s, shed_to, fill_to, waiting)
        } else {
            Vec::new()
        };
        for (ri, cut) in cuts {
            if round.slots == 0 {
                break;
            }
            split_one = true;
            round.push_carve(ri, cut, Reason::SplitToMove);
        }
        for ri in candidates(round, s, fill_to) {
            let util_s = round.nodes[s].util() - waiting;
            if util_s <= shed_to {
                break;
            }
            match may_move(round, ri, s) {
                Gate::Go => {}
                Gate::NextRange => continue,
                Gate::NextNode => break,
            }
            if round.delta(ri, s) < min_delta {
                round.skip(
                    Candidate::Move,
                    Some(ri),
                    Some(s),
                    SkipReason::TooLittleLoad,
                );
                continue;
            }
            if round.in_move_cooldown(ri) {
                round.skip(Candidate::Move, Some(ri), Some(s), SkipReason::Cooldown);
                continue;
            }
            if round.ranges[ri].carrier.is_some() {
                continue; // tried above
            }
            // A node making room for a range it is to carry sheds because of
            // that range, not because of its own load.
            let reason = if round.nodes[s].awaiting.is_some()
                && round.nodes[s].util_without_awaited() <= upper
            {
                Reason::MoveMakingRoom
            } else {
                Reason::MoveOverloaded
            };
            match best_target(round, ri, s, shed_to, util_s, Fit::Tightest) {
                // An underloaded node (a new one) takes few transfers at a time:
                // a move too small for its deficit is left to the fill rule,
                // which sends it the biggest loads that fit.
                Ok(t)
                    if round.nodes[t].util_as_target() < lower
                        && !fills_enough(round, ri, t, fill_to) =>
                {
                    round.skip(
                        Candidate::Move,
                        Some(ri),
                        Some(s),
                        SkipReason::TooLittleLoad,
                    );
                }
                Ok(t) => round.push_move(ri, s, t, reason),
                // Too big for any node's room: halve it, so that next round a half
                // fits (one such split per source and round: the halves may fit).
                // A hot range waits for the hot rule's rounds like any other, so
                // that a burst does not fragment the keyspace.
                Err(SkipReason::NoTarget)
                    if !split_one
                        && round.ranges[ri].dims.requests >= round.config.split_min_rate
                        && (round.ranges[ri].hot_rounds == 0
                            || round.ranges[ri].hot_rounds >= round.config.split_hot_rounds
                            || round.stuck(ri)) =>
                {
                    match split::carve(round, ri, s) {
                        Some(cut) => {
                            split_one = true;
                            round.push_carve(ri, cut, Reason::SplitToMove);
                        }
                        None => {
                            round.skip(Candidate::Move, Some(ri), Some(s), SkipReason::NoTarget)
                        }
                    }
                }
                Err(why) => round.skip(Candidate::Move, Some(ri), Some(s), why),
            }
        }
        reserve_room(round, s, shed_to, waiting);
    }
}

/// The load of `s`'s ranges that wait for a carrier's room (see
/// [`plan_carriers`]), per unit of `s`'s capacity.
fn waiting_for_carriers(round: &Round<'_>, s: usize) -> f64 {
    round.nodes[s]
        .ranges
        .iter()
        .filter(|&&ri| round.ranges[ri].carrier.is_some() && round.ranges[ri].nodes.contains(&s))
        .map(|&ri| round.delta(ri, s))
        .sum()
}

/// Holds room on the least loaded nodes for what `s` could not shed this round
/// while its hot ranges are being split, so that the less overloaded sources
/// planned after it do not take the room its pieces need next round (sources are
/// planned most overloaded first). The fill rule ignores the hold: it takes from
/// the most overloaded sources first anyway.
fn reserve_room(round: &mut Round<'_>, s: usize, shed_to: f64, waiting: f64) {
    let pieces_coming = round.nodes[s].ranges.iter().any(|&ri| {
        let r = &round.ranges[ri];
        r.nodes.contains(&s) && (r.acted || r.hot_rounds > 0)
    });
    if !pieces_coming {
        return;
    }
    let mut left = (round.nodes[s].util() - waiting - shed_to) * round.nodes[s].capacity();
    if left <= 0.0 {
        return;
    }
    let mut targets: Vec<usize> = round
        .eligible_nodes()
        .into_iter()
        .filter(|&t| t != s && round.nodes[t].util_as_target() < shed_to)
        .collect();
    targets.sort_by(|&a, &b| {
        let (ua, ub) = (
            round.nodes[a].util_as_target(),
            round.nodes[b].util_as_target(),
        );
        ua.total_cmp(&ub).then(a.cmp(&b))
    });
    for t in targets {
        if left <= 0.0 {
            break;
        }
        let node = &mut round.nodes[t];
        let room = (shed_to - node.util_as_target()) * node.capacity();
        let held = room.min(left);
        node.reserved += held;
        left -= held;
    }
}

/// Ranges of overloaded `s` to halve now, when the moves `s` may still make this
/// round cannot bring it down to `shed_to`: its ranges that fit elsewhere are too
/// small (a node sends only `max_transfers_out` at a time) and the ones that would
/// make a difference are too big for any node's room or would overshoot `s` below
/// `fill_to`. Without this, such a node sheds crumbs for many rounds; with it, a
/// half fits next round. The ranges halved are those whose halves come closest to
/// the excess while fitting the roomiest node, as many as `s` may send at once
/// and no more than the excess needs.
fn splits_to_make_moves_count(
    round: &Round<'_>,
    s: usize,
    shed_to: f64,
    fill_to: f64,
    waiting: f64,
) -> Vec<(usize, Carve)> {
    let slots = round.slots.min(
        round
            .config
            .max_transfers_out
            .saturating_sub(round.nodes[s].transfers_out),
    );
    if round.slots == 0 {
        return Vec::new();
    }
    let util_s = round.nodes[s].util() - waiting;
    let excess = util_s - shed_to;
    let least = round
        .eligible_nodes()
        .into_iter()
        .filter(|&t| t != s)
        .map(|t| round.nodes[t].util_as_target())
        .fold(f64::INFINITY, f64::min);
    let room = shed_to - least;
    if excess <= 0.0 || !room.is_finite() || room <= 0.0 {
        return Vec::new();
    }
    let movable = |ri: usize| {
        let r = &round.ranges[ri];
        !r.acted
            && r.figure > 0.0
            && r.nodes.contains(&s)
            && round.blocked(ri).is_none()
            && !round.in_move_cooldown(ri)
    };
    let mut fitting: Vec<f64> = round.nodes[s]
        .ranges
        .iter()
        .copied()
        .filter(|&ri| movable(ri))
        .map(|ri| round.delta(ri, s))
        .filter(|&d| d <= room && util_s - d >= fill_to)
        .collect();
    fitting.sort_by(|a, b| b.total_cmp(a));
    let reachable: f64 = fitting.iter().take(slots).sum();
    if reachable >= excess {
        return Vec::new();
    }
    let miss = |ri: usize| {
        let half = round.delta(ri, s) / 2.0;
        let over_room = if half > room { half } else { 0.0 };
        over_room + (half - excess).abs()
    };
    let mut candidates: Vec<(usize, Carve)> = round.nodes[s]
        .ranges
        .iter()
        .copied()
        .filter(|&ri| movable(ri))
        .filter(|&ri| {
            let d = round.delta(ri, s);
            (d > room || util_s - d < fill_to)
                && d / 2.0 > reachable / slots.max(1) as f64
                && round.ranges[ri].dims.requests >= round.config.split_min_rate
                && (round.ranges[ri].hot_rounds == 0
                    || round.ranges[ri].hot_rounds >= round.config.split_hot_rounds
                    || round.unplaceable(ri)
                    || round.stuck(ri))
        })
        .filter_map(|ri| split::carve(round, ri, s).map(|cut| (ri, cut)))
        .collect();
    candidates.sort_by(|a, b| miss(a.0).total_cmp(&miss(b.0)).then(a.0.cmp(&b.0)));
    let mut owed = excess - reachable;
    let mut chosen = Vec::new();
    for (ri, cut) in candidates {
        if owed <= 0.0 || chosen.len() >= round.config.max_transfers_out.max(1) {
            break;
        }
        owed -= round.delta(ri, s) / 2.0;
        chosen.push((ri, cut));
    }
    chosen
}

/// Whether moving `ri` into underloaded `t` uses one of its few transfer slots
/// well: at least its share of the deficit if every slot of this round and the
/// next brought as much. The fill rule sends such a node the biggest loads that
/// fit; a shed that happens to pick it must not spend its slots on crumbs.
fn fills_enough(round: &Round<'_>, ri: usize, t: usize, fill_to: f64) -> bool {
    let deficit = fill_to - round.nodes[t].util_as_target();
    let slots = 2 * round.config.max_transfers_in.max(1);
    round.delta(ri, t) >= deficit / slots as f64
}

/// Underloaded nodes (a new node, one whose hot ranges cooled) take load from the
/// most loaded nodes above the mean, as long as those stay within their band.
pub(super) fn plan_fills(round: &mut Round<'_>) {
    let tol = round.config.tolerance;
    let lower = round.mean * (1.0 - tol);
    let fill_to = round.mean * (1.0 - tol / 2.0);
    let shed_to = round.mean * (1.0 + tol / 2.0);
    let eligible = round.eligible_nodes();
    let mut targets: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&n| round.nodes[n].util() < lower || round.still_filling(n))
        .collect();
    targets.sort_by(|&a, &b| {
        let (ua, ub) = (round.nodes[a].util(), round.nodes[b].util());
        ua.total_cmp(&ub).then(a.cmp(&b))
    });
    for t in targets {
        while round.nodes[t].util() < fill_to {
            if round.slots == 0 {
                round.skip(
                    Candidate::Move,
                    None,
                    Some(t),
                    SkipReason::RateLimitInFlight,
                );
                return;
            }
            if round.nodes[t].transfers_in >= round.config.max_transfers_in {
                round.skip(
                    Candidate::Move,
                    None,
                    Some(t),
                    SkipReason::RateLimitTransfersIn,
                );
                break;
            }
            match best_fill(round, t, &eligible, fill_to, shed_to) {
                Some((ri, s)) => round.push_move(ri, s, t, Reason::MoveUnderloaded),
                None => {
                    round.skip(Candidate::Move, None, Some(t), SkipReason::NoTarget);
                    break;
                }
            }
        }
    }
}

/// The move into `t` that brings it the most load while both nodes stay within
/// their bands: a node filling up takes only `max_transfers_in` ranges at a time,
/// so each should count (ties: the more loaded source, then the fewer bytes).
fn best_fill(
    round: &mut Round<'_>,
    t: usize,
    eligible: &[usize],
    fill_to: f64,
    shed_to: f64,
) -> Option<(usize, usize)> {
    let mean = round.mean;
    let mut sources: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&s| s != t && round.nodes[s].util() > mean)
        .collect();
    sources.sort_by(|&a, &b| {
        let (ua, ub) = (round.nodes[a].util(), round.nodes[b].util());
        ub.total_cmp(&ua).then(a.cmp(&b))
    });
    let deficit = fill_to - round.nodes[t].util();
    let mut best: Option<(f64, usize, usize)> = None;
    for s in sources {
        if round.nodes[s].transfers_out >= round.config.max_transfers_out {
            continue;
        }
        let util_s = round.nodes[s].util();
        let util_t = round.nodes[t].util();
        for ri in candidates(round, s, fill_to) {
            let r = &round.ranges[ri];
            if r.acted || r.nodes.contains(&t) || round.blocked(ri).is_some() {
                continue;
            }
            let after_t = util_t + round.delta(ri, t);
            let after_s = util_s - round.delta(ri, s);
            if after_t > shed_to || after_s < fill_to || after_t >= util_s {
                continue;
            }
            if round.delta(ri, t) < round.config.min_move_fraction * deficit {
                continue;
            }
            if round.is_excluded(ri, t)
                || round.in_move_cooldown(ri)
                || round.bytes_moved.saturating_add(round.range(ri).load.bytes) > round.bytes_budget
            {
                continue;
            }
            let delta = round.delta(ri, t);
            if best.is_none_or(|(b, _, _)| delta > b) {
                best = Some((delta, ri, s));
            }
        }
    }
    best.map(|(_, ri, s)| (ri, s))
}

/// The ranges of `s` in the order they should be tried: those that keep the source
/// at or above `fill_to` first, each group by load per byte, highest first.
fn candidates(round: &Round<'_>, s: usize, fill_to: f64) -> Vec<usize> {
    let util_s = round.nodes[s].util();
    let mut list: Vec<(bool, f64, usize)> = round.nodes[s]
        .ranges
        .iter()
        .filter(|&&ri| round.ranges[ri].figure > 0.0 && round.ranges[ri].nodes.contains(&s))
        .map(|&ri| {
            let overshoots = util_s - round.delta(ri, s) < fill_to;
            let bytes = round.range(ri).load.bytes.max(1) as f64;
            (overshoots, round.ranges[ri].figure / bytes, ri)
        })
        .collect();
    list.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    list.into_iter().map(|(_, _, ri)| ri).collect()
}

/// The limits that depend only on the range and its source.
/// What a candidate move off a node may do next.
enum Gate {
    Go,
    /// This range may not move; another of the node's may.
    NextRange,
    /// A limit of the node (or the round) is reached: none of its ranges may.
    NextNode,
}

/// Whether range `ri` may move off node `s` now, recording why not: the one
/// check drains and sheds share (already acted on, blocked, or over a limit;
/// only the byte budget leaves room for a smaller range of the same node).
fn may_move(round: &mut Round<'_>, ri: usize, s: usize) -> Gate {
    if round.ranges[ri].acted {
        return Gate::NextRange;
    }
    if let Some(why) = round.blocked(ri) {
        round.skip(Candidate::Move, Some(ri), Some(s), why);
        return Gate::NextRange;
    }
    match move_limits(round, ri, s) {
        Ok(()) => Gate::Go,
        Err(why) => {
            round.skip(Candidate::Move, Some(ri), Some(s), why);
            if why == SkipReason::RateLimitBytes {
                Gate::NextRange
            } else {
                Gate::NextNode
            }
        }
    }
}

fn move_limits(round: &Round<'_>, ri: usize, s: usize) -> Result<(), SkipReason> {
    if round.slots == 0 {
        return Err(SkipReason::RateLimitInFlight);
    }
    if round.nodes[s].transfers_out >= round.config.max_transfers_out {
        return Err(SkipReason::RateLimitTransfersOut);
    }
    let bytes = round.range(ri).load.bytes;
    if round.bytes_moved.saturating_add(bytes) > round.bytes_budget {
        return Err(SkipReason::RateLimitBytes);
    }
    Ok(())
}

/// Which of the nodes that can take a range a move picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fit {
    /// The node that ends least loaded: a drain spreads its load (it has no
    /// ceiling, so the emptiest node is also the safest).
    Emptiest,
    /// The node that ends closest to the ceiling (best fit, as in bin packing):
    /// a shed leaves the biggest rooms to the biggest pieces still to come. With
    /// the emptiest node instead, small sheds used up the only rooms a hot
    /// range's halves fitted, and those had to be halved again, a round later
    /// (the simulation's convergence went from 5-9 rounds to 5-7, and a shifted
    /// hot spot is followed within 3 rounds in all 80 shifts, up from 75).
    Tightest,
}

/// The eligible node that `fit` prefers among those that end at most at `cap`
/// and strictly below `below` after taking `ri` from `s`; not holding the range,
/// not excluded for it, with a transfer slot free.
pub(super) fn best_target(
    round: &Round<'_>,
    ri: usize,
    s: usize,
    cap: f64,
    below: f64,
    fit: Fit,
) -> Result<usize, SkipReason> {
    let mut best: Option<((bool, f64), usize)> = None;
    let mut full = false;
    for t in 0..round.nodes.len() {
        let node = &round.nodes[t];
        if t == s || !node.eligible() || round.ranges[ri].nodes.contains(&t) {
            continue;
        }
        let after = node.util_as_target() + round.delta(ri, t);
        if after > cap || after >= below {
            continue;
        }
        // (a node below the mean before taking it, where it ends): best fit
        // picks among the nodes below the mean (those that need load; a node
        // already above it gains nothing from crumbs) the one that ends highest.
        let rank = (node.util_as_target() < round.mean, after);
        let better = |b: (bool, f64)| match fit {
            Fit::Emptiest => rank.1 < b.1,
            Fit::Tightest => match (rank.0, b.0) {
                (true, false) => true,
                (false, true) => false,
                (true, true) => rank.1 > b.1,
                (false, false) => rank.1 < b.1,
            },
        };
        if best.is_some_and(|(b, _)| !better(b)) {
            continue;
        }
        if round.is_excluded(ri, t) {
            continue;
        }
        if node.transfers_in >= round.config.max_transfers_in {
            full = true;
            continue;
        }
        best = Some((rank, t));
    }
    match best {
        Some((_, t)) => Ok(t),
        None if full => Err(SkipReason::RateLimitTransfersIn),
        None => Err(SkipReason::NoTarget),
    }
}
