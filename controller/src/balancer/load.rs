//! The load model: smoothing of raw reports, the dimensions a load has, and the
//! one figure per node that the planner balances.
//!
//! Loads are smoothed per *range*, not per node: when a range moves, its history
//! moves with it, so a node's smoothed load is exact the moment a move completes
//! instead of lagging behind it for a few half-lives (which would make the next
//! round move even more). A node's load is the sum of its ranges' smoothed loads.
//!
//! Everything here is pure: the previous smoothed value comes in, the next goes out.

use std::time::Duration;

use super::config::LoadWeights;
use super::snapshot::{RangeLoad, Timestamp};

/// The smoothed load of one range, as the balancer remembers it between rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoothed {
    pub reads: f64,
    pub writes: f64,
    pub bytes: f64,
    pub keys: f64,
    /// When this value was last updated from a report.
    pub at: Timestamp,
}

impl Smoothed {
    /// Folds a new raw report into `prev` with an exponentially weighted moving
    /// average whose weight depends on the time since the last update (not on the
    /// round count), so that rounds may run at any pace: the new report weighs
    /// `1 - 2^(-elapsed / half_life)`. Without history, the report is taken as is.
    pub fn update(
        prev: Option<&Smoothed>,
        raw: &RangeLoad,
        now: Timestamp,
        half_life: Duration,
    ) -> Smoothed {
        let fresh = Smoothed {
            reads: finite(raw.reads_per_second),
            writes: finite(raw.writes_per_second),
            bytes: raw.bytes as f64,
            keys: raw.keys as f64,
            at: now,
        };
        let Some(prev) = prev else {
            return fresh;
        };
        let elapsed = now.since(prev.at).as_secs_f64();
        let half = half_life.as_secs_f64().max(f64::MIN_POSITIVE);
        let w = 1.0 - (-elapsed / half).exp2();
        let mix = |old: f64, new: f64| old + w * (new - old);
        Smoothed {
            reads: mix(prev.reads, fresh.reads),
            writes: mix(prev.writes, fresh.writes),
            bytes: mix(prev.bytes, fresh.bytes),
            keys: mix(prev.keys, fresh.keys),
            at: if w > 0.0 { now } else { prev.at },
        }
    }

    /// The dimensions the planner balances, under `weights`.
    pub fn dims(&self, weights: &LoadWeights) -> Dims {
        Dims {
            requests: self.reads + weights.write_cost * self.writes,
            bytes: self.bytes,
            keys: self.keys,
        }
    }
}

/// A report with a NaN or negative rate must not poison every sum it enters.
fn finite(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// A load in each dimension the planner knows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dims {
    /// Reads plus weighted writes per second.
    pub requests: f64,
    pub bytes: f64,
    pub keys: f64,
}

impl Dims {
    pub fn add(&mut self, other: &Dims) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.keys += other.keys;
    }

    pub fn sub(&mut self, other: &Dims) {
        self.requests -= other.requests;
        self.bytes -= other.bytes;
        self.keys -= other.keys;
    }
}

/// Turns [`Dims`] into one figure: each dimension divided by its fair share per
/// unit of capacity, weighted and summed. A node carrying exactly its fair share
/// of everything scores the sum of the weights per unit of capacity; a dimension
/// no one has any of (an idle cluster's requests) scores zero everywhere instead
/// of dividing by zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    weights: LoadWeights,
    /// Fair share of each dimension per unit of capacity.
    share: Dims,
}

impl Scale {
    /// `total` is the load of every node that counts, `capacity` the capacity of
    /// the nodes that may carry it.
    pub fn new(weights: LoadWeights, total: &Dims, capacity: f64) -> Scale {
        let per = |x: f64| if capacity > 0.0 { x / capacity } else { 0.0 };
        Scale {
            weights,
            share: Dims {
                requests: per(total.requests),
                bytes: per(total.bytes),
                keys: per(total.keys),
            },
        }
    }

    /// The fair share per unit of capacity of each dimension.
    pub fn share(&self) -> &Dims {
        &self.share
    }

    /// The single load figure of `d`.
    pub fn figure(&self, d: &Dims) -> f64 {
        let term = |w: f64, x: f64, share: f64| if share > 0.0 { w * x / share } else { 0.0 };
        term(self.weights.requests, d.requests, self.share.requests)
            + term(self.weights.bytes, d.bytes, self.share.bytes)
            + term(self.weights.keys, d.keys, self.share.keys)
    }
}

/// Max over mean of load per unit of capacity: 1.0 is perfect balance. The mean is
/// weighted by capacity (total load over total capacity), so a node of capacity 2
/// carrying twice the load of the others is balanced. With no load at all, the
/// cluster is balanced (1.0).
pub fn imbalance(nodes: impl IntoIterator<Item = (f64, f64)>) -> f64 {
    let (mut total, mut capacity, mut max) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (load, cap) in nodes {
        if cap <= 0.0 {
            continue;
        }
        total += load;
        capacity += cap;
        max = max.max(load / cap);
    }
    if total <= 0.0 || capacity <= 0.0 {
        return 1.0;
    }
    max / (total / capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(reads: f64) -> RangeLoad {
        RangeLoad {
            reads_per_second: reads,
            ..RangeLoad::default()
        }
    }

    #[test]
    fn a_first_report_is_taken_as_is() {
        let s = Smoothed::update(
            None,
            &raw(8.0),
            Timestamp::from_millis(5),
            Duration::from_secs(60),
        );
        assert_eq!(s.reads, 8.0);
    }

    #[test]
    fn a_change_counts_half_after_one_half_life() {
        let half = Duration::from_secs(60);
        let a = Smoothed::update(None, &raw(0.0), Timestamp::from_millis(0), half);
        let b = Smoothed::update(Some(&a), &raw(100.0), Timestamp::from_millis(60_000), half);
        assert!((b.reads - 50.0).abs() < 1e-9, "{}", b.reads);
        let c = Smoothed::update(Some(&b), &raw(100.0), Timestamp::from_millis(120_000), half);
        assert!((c.reads - 75.0).abs() < 1e-9, "{}", c.reads);
    }

    #[test]
    fn a_report_in_the_same_instant_changes_nothing() {
        let half = Duration::from_secs(60);
        let a = Smoothed::update(None, &raw(10.0), Timestamp::from_millis(1000), half);
        let b = Smoothed::update(Some(&a), &raw(500.0), Timestamp::from_millis(1000), half);
        assert_eq!(b, a);
    }

    #[test]
    fn nan_and_negative_rates_count_as_zero() {
        let s = Smoothed::update(
            None,
            &raw(f64::NAN),
            Timestamp::default(),
            Duration::from_secs(1),
        );
        assert_eq!(s.reads, 0.0);
        let s = Smoothed::update(
            None,
            &raw(-3.0),
            Timestamp::default(),
            Duration::from_secs(1),
        );
        assert_eq!(s.reads, 0.0);
    }

    #[test]
    fn the_figure_weighs_dimensions_by_their_fair_share() {
        let weights = LoadWeights {
            requests: 1.0,
            write_cost: 2.0,
            bytes: 0.5,
            keys: 0.0,
        };
        let total = Dims {
            requests: 400.0,
            bytes: 1000.0,
            keys: 10.0,
        };
        let scale = Scale::new(weights, &total, 4.0);
        // A node with exactly its fair share scores the sum of the weights.
        let fair = Dims {
            requests: 100.0,
            bytes: 250.0,
            keys: 2.5,
        };
        assert!((scale.figure(&fair) - 1.5).abs() < 1e-9);
        // Twice the requests, no bytes: 2 × 1.0.
        let hot = Dims {
            requests: 200.0,
            ..Dims::default()
        };
        assert!((scale.figure(&hot) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn an_idle_dimension_scores_zero_instead_of_dividing_by_zero() {
        let total = Dims {
            requests: 0.0,
            bytes: 100.0,
            keys: 0.0,
        };
        let scale = Scale::new(LoadWeights::default(), &total, 2.0);
        let d = Dims {
            requests: 0.0,
            bytes: 50.0,
            keys: 0.0,
        };
        assert!((scale.figure(&d) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn imbalance_is_max_over_capacity_weighted_mean() {
        assert_eq!(imbalance([(1.0, 1.0), (1.0, 1.0)]), 1.0);
        assert!((imbalance([(3.0, 1.0), (1.0, 1.0)]) - 1.5).abs() < 1e-9);
        // Capacity 2 carrying twice the load is balanced.
        assert!((imbalance([(2.0, 2.0), (1.0, 1.0)]) - 1.0).abs() < 1e-9);
        assert_eq!(imbalance([(0.0, 1.0)]), 1.0);
    }
}
