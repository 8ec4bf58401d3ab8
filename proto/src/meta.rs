use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Key, RangeId};

/// The identity and bounds of a range: `[start, end)`.
///
/// An empty `start` is minus infinity and an empty `end` plus infinity, so range 1,
/// `[empty, empty)`, is the whole keyspace. Built only through [`RangeMeta::new`],
/// which refuses empty or inverted intervals, so every `RangeMeta` holds at least one
/// key.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeMeta {
    id: RangeId,
    start: Key,
    end: Key,
}

/// Why a pair of bounds cannot form a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("range {id}: start {start} is not below end {end}")]
pub struct InvalidBounds {
    pub id: RangeId,
    pub start: Key,
    pub end: Key,
}

impl RangeMeta {
    /// A range `[start, end)`; fails unless `start < end` (an empty end is +inf).
    pub fn new(id: RangeId, start: Key, end: Key) -> Result<Self, InvalidBounds> {
        Self::check_bounds(id, start.as_bytes(), end.as_bytes())?;
        Ok(RangeMeta { id, start, end })
    }

    /// Checks that `[start, end)` is a range: `start < end`, an empty end
    /// being +inf. Lets bounds be checked where they are not kept; the keys
    /// are copied only into the error.
    pub fn check_bounds(id: RangeId, start: &[u8], end: &[u8]) -> Result<(), InvalidBounds> {
        if end.is_empty() || start < end {
            return Ok(());
        }
        Err(InvalidBounds {
            id,
            start: Key::from(start),
            end: Key::from(end),
        })
    }

    /// The whole keyspace, `[-inf, +inf)`.
    pub fn whole(id: RangeId) -> Self {
        RangeMeta {
            id,
            start: Key::empty(),
            end: Key::empty(),
        }
    }

    pub fn id(&self) -> RangeId {
        self.id
    }

    /// Inclusive; empty means minus infinity.
    pub fn start(&self) -> &Key {
        &self.start
    }

    /// Exclusive; empty means plus infinity.
    pub fn end(&self) -> &Key {
        &self.end
    }

    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_bytes() && (self.end.is_empty() || key < self.end.as_bytes())
    }

    /// Whether `key` may split this range: strictly inside it, so that both halves
    /// hold at least one key.
    pub fn can_split_at(&self, key: &[u8]) -> bool {
        !key.is_empty() && key > self.start.as_bytes() && self.contains(key)
    }

    /// Whether the two ranges share at least one key.
    pub fn overlaps(&self, other: &RangeMeta) -> bool {
        let self_before_other_ends =
            other.end.is_empty() || self.start.as_bytes() < other.end.as_bytes();
        let other_before_self_ends =
            self.end.is_empty() || other.start.as_bytes() < self.end.as_bytes();
        self_before_other_ends && other_before_self_ends
    }

    /// Whether `other` starts exactly where this range ends.
    pub fn is_left_neighbour_of(&self, other: &RangeMeta) -> bool {
        !self.end.is_empty() && self.end == other.start
    }
}

impl fmt::Display for RangeMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = if self.start.is_empty() {
            "-inf".to_owned()
        } else {
            self.start.to_string()
        };
        let end = if self.end.is_empty() {
            "+inf".to_owned()
        } else {
            self.end.to_string()
        };
        write!(f, "{} [{start}, {end})", self.id)
    }
}

impl fmt::Debug for RangeMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeMeta({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RangeId {
        RangeId::new(n).unwrap()
    }

    fn meta(start: &str, end: &str) -> RangeMeta {
        RangeMeta::new(id(1), start.into(), end.into()).unwrap()
    }

    #[test]
    fn contains_is_start_inclusive_end_exclusive() {
        let m = meta("b", "d");
        assert!(!m.contains(b"a"));
        assert!(m.contains(b"b"));
        assert!(m.contains(b"c"));
        assert!(m.contains(b"cz"));
        assert!(!m.contains(b"d"));
    }

    #[test]
    fn empty_bounds_are_infinite() {
        let whole = RangeMeta::whole(id(1));
        assert!(whole.contains(b""));
        assert!(whole.contains(b"\xff\xff"));
        let left = meta("", "m");
        assert!(left.contains(b""));
        assert!(!left.contains(b"m"));
        let right = meta("m", "");
        assert!(right.contains(b"zzzz"));
        assert!(!right.contains(b"a"));
    }

    #[test]
    fn rejects_empty_and_inverted_intervals() {
        assert!(RangeMeta::new(id(1), "b".into(), "b".into()).is_err());
        assert!(RangeMeta::new(id(1), "c".into(), "b".into()).is_err());
        assert!(RangeMeta::new(id(1), "c".into(), Key::empty()).is_ok());
    }

    #[test]
    fn split_points_must_be_strictly_inside() {
        let m = meta("b", "d");
        assert!(!m.can_split_at(b"b"));
        assert!(m.can_split_at(b"c"));
        assert!(!m.can_split_at(b"d"));
        assert!(!m.can_split_at(b""));
        let whole = RangeMeta::whole(id(1));
        assert!(whole.can_split_at(b"\0"));
        assert!(!whole.can_split_at(b""));
    }

    #[test]
    fn overlap_and_adjacency() {
        assert!(meta("a", "c").overlaps(&meta("b", "d")));
        assert!(!meta("a", "b").overlaps(&meta("b", "d")));
        assert!(meta("", "").overlaps(&meta("x", "y")));
        assert!(meta("a", "b").is_left_neighbour_of(&meta("b", "")));
        assert!(!meta("a", "").is_left_neighbour_of(&meta("", "b")));
    }
}
