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
}
