//! Splits: a range too big to move cheaply, or too hot to pack within tolerance,
//! is cut in two at the key its node suggests.
//!
//! Size splits happen at once (a big range only gets bigger); load splits wait
//! until the range has been hot for `split_hot_rounds` consecutive rounds, so that
//! a burst does not fragment the keyspace. The biggest excess goes first, because
//! the operation slots are few.

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
        let Some(key) = split_key(round, ri, reason) else {
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
        round.push_split(ri, key, reason);
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
