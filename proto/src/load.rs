use serde::{Deserialize, Serialize};

use crate::Key;

/// The load a range puts on its node, as the storage system reports it. The
/// controller balances on these figures and splits a range that is too big at
/// `split_keys` and one that is too hot at `load_split_keys`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadInfo {
    /// Number of keys in the range (an estimate is fine).
    pub keys: u64,
    /// Approximate size of the range's data.
    pub bytes: u64,
    /// Recent reads per second.
    pub reads_per_second: f64,
    /// Recent writes per second.
    pub writes_per_second: f64,
    /// Where the storage system suggests splitting to halve the range's data,
    /// best first.
    pub split_keys: Vec<Key>,
    /// Where the storage system suggests splitting to halve the range's
    /// requests (e.g. the median of recently accessed keys), best first. Kept
    /// apart from `split_keys`: under a skewed load the two cuts differ, and a
    /// hot range split at its size median leaves the hot keys on one side.
    #[serde(default)]
    pub load_split_keys: Vec<Key>,
    /// Where the range's requests lie: keys with the share of requests below
    /// each, keys and shares rising. A controller cuts a piece of the load it
    /// can place off a hot range (a node with room for a third of it needs no
    /// second round of halving). Empty when the storage system does not know.
    #[serde(default)]
    pub load_cuts: Vec<LoadCut>,
}

/// One point of a range's request distribution: `below` (0 to 1) of the
/// range's recent requests were for keys before `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadCut {
    pub key: Key,
    pub below: f64,
}

impl LoadCut {
    /// Whether `cuts` describe a distribution: shares finite and strictly
    /// between 0 and 1, keys and shares strictly rising. The controller takes
    /// the list whole or not at all: a list out of order would size pieces
    /// wrongly, and halving is always a safe fallback.
    pub fn well_formed(cuts: &[LoadCut]) -> bool {
        cuts.iter()
            .all(|c| c.below.is_finite() && c.below > 0.0 && c.below < 1.0)
            && cuts
                .windows(2)
                .all(|w| w[0].key < w[1].key && w[0].below < w[1].below)
    }
}
