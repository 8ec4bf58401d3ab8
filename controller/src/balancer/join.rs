//! Joins: two adjacent cold ranges become one, so that the keyspace does not
//! fragment forever after hot spots pass (every range costs the controller memory
//! and a probe line, and the nodes a little bookkeeping).
//!
//! Together they must stay under `join_fraction` of both split thresholds, so that
//! the joined range is nowhere near being split again. Never soon after a split
//! (the split was presumably followed by a move that a join would undo). A join
//! needs both ranges on the same nodes: if they are on different nodes, the
//! smaller one is first moved next to the other (when that node has room), and
//! the join happens in a later round; never back to a node it left within the
//! balancer's memory of moves (then the bigger one moves, or neither), since a
//! join is not worth an A→B→A.
//!
//! Joins come last in a round: they save resources, they do not fix an imbalance.

use super::plan::{Candidate, Reason, SkipReason};
use super::round::Round;

/// Plans the joins (and the moves that prepare them) of this round.
pub(super) fn plan_joins(round: &mut Round<'_>) {
    let max_bytes = round.config.join_fraction * round.config.split_bytes as f64;
    let max_rate = round.config.join_fraction * round.hot_rate;
    let shed_to = round.mean * (1.0 + round.config.tolerance / 2.0);
    let order = round.order.clone();
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (ra, rb) = (round.range(a), round.range(b));
        if ra.end.is_empty() || ra.end != rb.start {
            continue;
        }
        if round.ranges[a].acted || round.ranges[b].acted {
            continue;
        }
        let bytes = (ra.load.bytes as f64) + (rb.load.bytes as f64);
        let rate = round.ranges[a].dims.requests + round.ranges[b].dims.requests;
        if bytes > max_bytes || rate > max_rate {
            continue;
        }
        if let Some(why) = round.blocked(a).or_else(|| round.blocked(b)) {
            round.skip(Candidate::Join, Some(a), None, why);
            continue;
        }
        let now = round.snap.now;
        let cooldown = round.config.join_cooldown_after_split;
        if now.within(ra.last_split, cooldown) || now.within(rb.last_split, cooldown) {
            round.skip(Candidate::Join, Some(a), None, SkipReason::SplitCooldown);
            continue;
        }
        if round.slots == 0 {
            round.skip(
                Candidate::Join,
                Some(a),
                None,
                SkipReason::RateLimitInFlight,
            );
            continue;
        }
        let (na, nb) = (&round.ranges[a].nodes, &round.ranges[b].nodes);
        let same = na.len() == nb.len() && na.iter().all(|n| nb.contains(n));
        if same && !na.is_empty() {
            round.push_join(a, b);
            continue;
        }
        // Different nodes: at R1, bring the smaller next to the bigger.
        if na.len() != 1 || nb.len() != 1 {
            round.skip(Candidate::Join, Some(a), None, SkipReason::NoTarget);
            continue;
        }
        // Never back to a node the mover left (see `RETURN_MEMORY_COOLDOWNS`):
        // then the bigger one moves instead, if it did not come from there.
        let (smaller, bigger) = if ra.load.bytes <= rb.load.bytes {
            (a, b)
        } else {
            (b, a)
        };
        let home = |ri: usize| round.ranges[ri].nodes[0];
        let other = |ri: usize| if ri == a { b } else { a };
        let mover = [smaller, bigger]
            .into_iter()
            .find(|&m| !round.left_node(m, home(other(m))));
        let Some(mover) = mover else {
            round.skip(Candidate::Join, Some(smaller), None, SkipReason::Cooldown);
            continue;
        };
        let (s, t) = (home(mover), home(other(mover)));
        match colocate(round, mover, s, t, shed_to) {
            Ok(()) => round.push_move(mover, s, t, Reason::MoveForJoin),
            Err(why) => round.skip(Candidate::Join, Some(mover), Some(t), why),
        }
    }
}

/// Whether `ri` may move from `s` to `t` to meet its neighbour.
fn colocate(
    round: &Round<'_>,
    ri: usize,
    s: usize,
    t: usize,
    shed_to: f64,
) -> Result<(), SkipReason> {
    let target = &round.nodes[t];
    if !target.eligible() || round.is_excluded(ri, t) {
        return Err(SkipReason::NoTarget);
    }
    // Both nodes stay within their bands: a join is not worth an imbalance.
    let fill_to = round.mean * (1.0 - round.config.tolerance / 2.0);
    if target.util_as_target() + round.delta(ri, t) > shed_to
        || round.nodes[s].util() - round.delta(ri, s) < fill_to
    {
        return Err(SkipReason::NoTarget);
    }
    if round.nodes[s].transfers_out >= round.config.max_transfers_out {
        return Err(SkipReason::RateLimitTransfersOut);
    }
    if target.transfers_in >= round.config.max_transfers_in {
        return Err(SkipReason::RateLimitTransfersIn);
    }
    if round.bytes_moved.saturating_add(round.range(ri).load.bytes) > round.bytes_budget {
        return Err(SkipReason::RateLimitBytes);
    }
    if round.in_move_cooldown(ri) {
        return Err(SkipReason::Cooldown);
    }
    Ok(())
}
