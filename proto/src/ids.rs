use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ConversionError;

/// The id of a range. Never zero: on the wire, 0 is what a missing id decodes to, so
/// a zero must be rejected at the boundary rather than mistaken for a range.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct RangeId(NonZeroU64);

impl RangeId {
    /// Range 1 is the whole keyspace when a keyspace is created.
    pub const FIRST: RangeId = RangeId(NonZeroU64::MIN);

    /// The largest id: an upper bound for ordered lookups.
    pub const MAX: RangeId = RangeId(NonZeroU64::MAX);

    /// Checks that `id` is not zero.
    pub fn new(id: u64) -> Result<Self, ConversionError> {
        NonZeroU64::new(id)
            .map(RangeId)
            .ok_or(ConversionError::ZeroRangeId)
    }

    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl TryFrom<u64> for RangeId {
    type Error = ConversionError;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        RangeId::new(value)
    }
}

impl From<RangeId> for u64 {
    fn from(value: RangeId) -> Self {
        value.get()
    }
}

impl FromStr for RangeId {
    type Err = ConversionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id: u64 = s
            .trim()
            .parse()
            .map_err(|_| ConversionError::BadRangeId(s.to_owned()))?;
        RangeId::new(id)
    }
}

impl fmt::Display for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R{}", self.0)
    }
}

/// The id of a node: a stable name chosen by the node or its discovery backend.
///
/// Distinct from the node's address: a node keeps its id when it restarts on another
/// port, and the controller addresses nodes by id in its API. Never empty.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Checks that `id` is not empty or blank.
    pub fn new(id: impl Into<String>) -> Result<Self, ConversionError> {
        let id = id.into();
        if id.trim().is_empty() {
            return Err(ConversionError::EmptyNodeId);
        }
        Ok(NodeId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = ConversionError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        NodeId::new(value)
    }
}

impl From<NodeId> for String {
    fn from(value: NodeId) -> Self {
        value.0
    }
}

impl FromStr for NodeId {
    type Err = ConversionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_id_rejects_zero() {
        assert_eq!(RangeId::new(0), Err(ConversionError::ZeroRangeId));
        assert_eq!(RangeId::new(7).map(RangeId::get), Ok(7));
        assert_eq!("0".parse::<RangeId>(), Err(ConversionError::ZeroRangeId));
        assert!(matches!(
            "x".parse::<RangeId>(),
            Err(ConversionError::BadRangeId(_))
        ));
    }

    #[test]
    fn node_id_rejects_blank() {
        assert_eq!(NodeId::new(""), Err(ConversionError::EmptyNodeId));
        assert_eq!(NodeId::new("  "), Err(ConversionError::EmptyNodeId));
        assert_eq!(NodeId::new("a").map(|n| n.to_string()), Ok("a".into()));
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let id: RangeId = serde_json::from_str("5").unwrap();
        assert_eq!(id.get(), 5);
        assert!(serde_json::from_str::<RangeId>("0").is_err());
        assert!(serde_json::from_str::<NodeId>("\"\"").is_err());
    }
}
