//! Splits: a range too big to move cheaply, or too hot to pack within tolerance,
//! is cut in two at the key its node suggests.
//!
//! Size splits happen at once (a big range only gets bigger); load splits wait
//! until the range has been hot for `split_hot_rounds` consecutive rounds, so that
//! a burst does not fragment the keyspace. The biggest excess goes first, because
//! the operation slots are few.
//!
//! Where a hot range is cut: at its load median by default, but a range on a node
//! above its band is *carved* when its node reports where its requests lie
//! (`LoadInfo.load_cuts`): one side is cut to the biggest piece the roomiest node
//! can take, and the split places that piece on that node itself when a move
//! of it would be allowed now (else the room is held for a move next round).
//! Sending it with the split took the simulation's seeds that reach max/mean
//! 1.10 within 5 rounds from 71 to 99 of 100. Halving alone makes pieces of 1/2,
//! 1/4, 1/8 of the range whatever the rooms are, and a piece a little too big
//! for every room costs another round of halving; carving took the simulation's
//! seeds that reach max/mean 1.10 within 5 rounds from 54 to 71 of 100. A range
//! no node could carry whole is carved too, now that its piece leaves with the
//! split: halving it (two pieces to cut again next round) was faster only while
//! a piece waited a round to move.

use ranger_proto::Key;

use super::plan::{Candidate, Reason, SkipReason};
use super::round::Round;

/// Plans the splits of this round.
pub(super) fn plan_splits(round: &mut Round<'_>) {
    let mut candidates: Vec<(f64, usize, Reason)> = Vec::new();
    for ri in 0..round.ranges.len() {
        let r = round.range(ri);
        let w = &round.ranges[ri];
        let size = r.load.bytes as f64 / round.config.split_bytes as f64;
        let heat = w.dims.requests / round.hot_rate;
        if size > 1.0 {
            candidates.push((size, ri, Reason::SplitBySize));
        } else if heat > 1.0 {
            candidates.push((heat, ri, Reason::SplitByLoad));
        }
    }
    // Most severe first; ties in snapshot order, so a plan is reproducible.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

    for (_, ri, reason) in candidates {
        if let Some(why) = round.blocked(ri) {
            round.skip(Candidate::Split, Some(ri), None, why);
            continue;
        }
        if reason == Reason::SplitByLoad
            && round.ranges[ri].hot_rounds < round.config.split_hot_rounds
            && !round.unplaceable(ri)
            && !round.stuck(ri)
        {
            round.skip(
                Candidate::Split,
                Some(ri),
                None,
                SkipReason::NotHotLongEnough,
            );
            continue;
        }
        // A hot range on a node above its band is carved to fit the room
        // there is.
        let upper = round.mean * (1.0 + round.config.tolerance);
        let overloaded = round.ranges[ri]
            .nodes
            .iter()
            .copied()
            .find(|&n| round.nodes[n].util() > upper);
        let cut = match overloaded {
            Some(s) if reason == Reason::SplitByLoad => carve(round, ri, s),
            _ => split_key(round, ri, reason).map(|key| Carve {
                key,
                send: None,
                hold: false,
            }),
        };
        let Some(cut) = cut else {
            round.skip(Candidate::Split, Some(ri), None, SkipReason::NoSplitKey);
            continue;
        };
        if round.slots == 0 {
            round.skip(
                Candidate::Split,
                Some(ri),
                None,
                SkipReason::RateLimitInFlight,
            );
            continue;
        }
        round.push_carve(ri, cut, reason);
    }
}

/// The node's best load split key strictly inside the range, if any.
pub(super) fn load_key(round: &Round<'_>, ri: usize) -> Option<Key> {
    split_key(round, ri, Reason::SplitByLoad)
}

/// The node's best suggestion for this reason that lies strictly inside the range
/// (a suggestion at an edge would leave an empty half); for a size split, a load
/// key will do if there is no size key, and the other way round.
fn split_key(round: &Round<'_>, ri: usize, reason: Reason) -> Option<Key> {
    let r = round.range(ri);
    let (first, second) = match reason {
        Reason::SplitBySize => (&r.split_keys_by_size, &r.split_keys_by_load),
        _ => (&r.split_keys_by_load, &r.split_keys_by_size),
    };
    first
        .iter()
        .chain(second.iter())
        .find(|k| r.splits_at(k))
        .cloned()
}

/// A cut that carves a piece off a range for one node's room.
pub(super) struct Carve {
    pub key: Key,
    /// A side of the cut that fits another node's room: the split sends it
    /// there itself when the move limits allow (see [`Round::push_carve`]).
    pub send: Option<Piece>,
    /// When the piece cannot go with the split, its node's room is held for
    /// it (see [`Round::hold`]) so that the next cut this round aims at the
    /// next room, and no smaller move takes this one before the piece can
    /// move next round. Not for a plain half that happens to fit.
    pub hold: bool,
}

/// One side of a cut, bound for another node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Piece {
    pub from: usize,
    pub to: usize,
    /// The piece's load figure.
    pub load: f64,
    pub side: Side,
}

/// A side of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Left,
    Right,
}

/// Where to cut a range of overloaded node `s` so that one side is the biggest
/// piece the roomiest other node can take (no more than `s` needs to shed):
/// halving blindly takes more rounds of halving when the rooms are small. The
/// node's load cuts say where the range's requests lie; without them, or when
/// a half fits the room and no cut gives a bigger piece that fits, the cut is
/// the load key (halving). A bigger piece than a half is worth it: a node
/// sends only `max_transfers_out` pieces a round, so each should carry as
/// much as the room takes (the simulation's slowest seed went from 6 rounds
/// to 4).
pub(super) fn carve(round: &Round<'_>, ri: usize, s: usize) -> Option<Carve> {
    let halve = || {
        load_key(round, ri).map(|key| Carve {
            key,
            send: None,
            hold: false,
        })
    };
    let r = round.range(ri);
    if r.load_cuts.is_empty() {
        return halve();
    }
    let shed_to = round.mean * (1.0 + round.config.tolerance / 2.0);
    let figure = round.ranges[ri].figure;
    let roomiest = (0..round.nodes.len())
        .filter(|&t| t != s && round.nodes[t].eligible() && !round.ranges[ri].nodes.contains(&t))
        .map(|t| {
            let node = &round.nodes[t];
            ((shed_to - node.util_as_target()) * node.capacity(), t)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let Some((room, t)) = roomiest else {
        return halve();
    };
    let need = (round.nodes[s].util() - shed_to) * round.nodes[s].capacity();
    let want = room.min(need);
    if want <= 0.0 {
        return halve();
    }
    let mut best: Option<(f64, &Key, Side)> = None;
    for cut in &r.load_cuts {
        if !r.splits_at(&cut.key) {
            continue;
        }
        let sides = [
            (cut.below * figure, Side::Left),
            ((1.0 - cut.below) * figure, Side::Right),
        ];
        for (piece, side) in sides {
            if piece <= want && best.is_none_or(|(b, _, _)| piece > b) {
                best = Some((piece, &cut.key, side));
            }
        }
    }
    if figure / 2.0 <= want && best.is_none_or(|(piece, _, _)| piece <= figure / 2.0) {
        // A half fits the room and no cut gives a bigger piece that does:
        // halved, and the right half can go there.
        return halve().map(|cut| Carve {
            send: Some(Piece {
                from: s,
                to: t,
                load: figure / 2.0,
                side: Side::Right,
            }),
            ..cut
        });
    }
    match best {
        Some((piece, key, side)) => Some(Carve {
            key: key.clone(),
            send: Some(Piece {
                from: s,
                to: t,
                load: piece,
                side,
            }),
            hold: true,
        }),
        None => halve(),
    }
}
