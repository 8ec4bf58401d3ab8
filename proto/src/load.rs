use serde::{Deserialize, Serialize};

use crate::Key;

/// The load a range puts on its node, as the storage system reports it. The
/// controller balances on these figures and splits at `split_keys`.
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
    /// Where the storage system suggests splitting, best first.
    pub split_keys: Vec<Key>,
}
