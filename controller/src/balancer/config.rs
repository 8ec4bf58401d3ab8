//! The balancer's knobs, with defaults that match DESIGN.md §5 and §10.
//!
//! Every limit is a field here rather than a constant, so that an operator can
//! slow the balancer down (or speed it up) without a rebuild, and so that a test
//! can isolate one rule by relaxing the others.

use std::time::Duration;

/// How much each load dimension counts in a node's single load figure.
///
/// Each dimension is first divided by its cluster-wide mean per unit of capacity,
/// so that weights compare like with like (a request per second and a byte are not
/// the same unit). With the defaults, request rate decides and bytes only break
/// ties; in an idle cluster (no requests) bytes alone decide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadWeights {
    /// Weight of the request rate (reads + `write_cost` × writes).
    pub requests: f64,
    /// How many reads one write costs: writes touch disk and replicas.
    pub write_cost: f64,
    pub bytes: f64,
    pub keys: f64,
}

impl Default for LoadWeights {
    fn default() -> Self {
        LoadWeights {
            requests: 1.0,
            write_cost: 1.0,
            bytes: 0.01,
            keys: 0.0,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be a finite number >= 0, not {value}")]
    Negative { field: &'static str, value: f64 },
    #[error("{field} must be > 0")]
    Zero { field: &'static str },
    #[error("every load weight is zero: the balancer would see no load at all")]
    NoWeight,
}

/// The balancer's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BalancerConfig {
    pub weights: LoadWeights,
    /// Half-life of the exponential smoothing of each range's load: a load change
    /// counts half after this long. The nodes already report rates over a 20 s
    /// sliding window (`RangeLoadMeter`), so this only has to damp what is left:
    /// at 60 s the first round after a shift saw half of it, and the simulation
    /// (one-minute rounds) followed 56 of 80 shifted hot spots within 3 rounds;
    /// at 20 s, 75 or more.
    pub smoothing_half_life: Duration,
    /// A node whose latest load report is older than this is ignored: neither
    /// source nor target, and not in the mean (its load is unknown).
    pub stale_after: Duration,
    /// A node above mean × (1 + tolerance) sheds load (and one below
    /// mean × (1 − tolerance) takes some), down (up) to half the tolerance.
    pub tolerance: f64,
    /// A range larger than this is split at the node's size key.
    pub split_bytes: u64,
    /// A range whose request rate exceeds this share of a node's fair share (the
    /// mean request rate per unit of capacity) is hot: it is split at the node's
    /// load key, because a range that hot cannot be packed within tolerance.
    pub split_load_share: f64,
    /// Below this request rate nothing is hot: in an idle cluster, shares are noise.
    pub split_min_rate: f64,
    /// A range must be hot this many consecutive rounds before it is split, so a
    /// burst does not fragment the keyspace.
    pub split_hot_rounds: u32,
    /// Two neighbours are joined when together they stay under this fraction of
    /// both split thresholds (so a join is never followed by a split).
    pub join_fraction: f64,
    /// No join of a range created by (or that went through) a split this recently:
    /// a split is usually followed by a move, which a join would undo.
    pub join_cooldown_after_split: Duration,
    /// At most this many operations in flight at once (those running plus those
    /// planned): each has a handoff gap, and they share the nodes' bandwidth.
    pub max_in_flight: usize,
    /// At most this many transfers out of one node at once.
    pub max_transfers_out: usize,
    /// At most this many transfers into one node at once.
    pub max_transfers_in: usize,
    /// At most this share of the keyspace's bytes is moved in one round.
    pub max_bytes_moved_share: f64,
    /// A range that moved is not moved again for this long, and never back to the
    /// node it left within this long (no A→B→A).
    pub move_cooldown: Duration,
    /// A candidate move that would take less than this fraction of its source's
    /// excess load is not worth an operation slot.
    pub min_move_fraction: f64,
    /// How many skipped candidates a plan lists (all are counted): enough to
    /// explain a round, few enough to show.
    pub max_skips_listed: usize,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            weights: LoadWeights::default(),
            smoothing_half_life: Duration::from_secs(20),
            stale_after: Duration::from_secs(30),
            tolerance: 0.10,
            split_bytes: 512 << 20,
            split_load_share: 0.5,
            split_min_rate: 1.0,
            split_hot_rounds: 2,
            join_fraction: 0.25,
            join_cooldown_after_split: Duration::from_secs(600),
            max_in_flight: 4,
            max_transfers_out: 2,
            max_transfers_in: 2,
            max_bytes_moved_share: 0.05,
            move_cooldown: Duration::from_secs(600),
            min_move_fraction: 0.05,
            max_skips_listed: 100,
        }
    }
}

impl BalancerConfig {
    /// Checks what would make the planner's arithmetic meaningless.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.weights;
        for (field, value) in [
            ("weights.requests", w.requests),
            ("weights.write_cost", w.write_cost),
            ("weights.bytes", w.bytes),
            ("weights.keys", w.keys),
            ("tolerance", self.tolerance),
            ("split_load_share", self.split_load_share),
            ("split_min_rate", self.split_min_rate),
            ("join_fraction", self.join_fraction),
            ("max_bytes_moved_share", self.max_bytes_moved_share),
            ("min_move_fraction", self.min_move_fraction),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ConfigError::Negative { field, value });
            }
        }
        if w.requests + w.bytes + w.keys <= 0.0 {
            return Err(ConfigError::NoWeight);
        }
        if self.smoothing_half_life.is_zero() {
            return Err(ConfigError::Zero {
                field: "smoothing_half_life",
            });
        }
        if self.split_bytes == 0 {
            return Err(ConfigError::Zero {
                field: "split_bytes",
            });
        }
        Ok(())
    }
}
