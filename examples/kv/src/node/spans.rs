//! Key spans `[start, end)` (an empty end is +infinity) and the arithmetic a node
//! needs: several ranges share one RocksDB with keys stored as they are, so
//! clearing or copying a range must leave alone the keys of other ranges the node
//! holds (a split's parent and child can live side by side on one node).

use ranger_proto::RangeMeta;
use serde::{Deserialize, Serialize};

/// A half-open span of keys. `end == None` is +infinity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl Span {
    pub fn new(start: impl Into<Vec<u8>>, end: Option<Vec<u8>>) -> Self {
        Span {
            start: start.into(),
            end,
        }
    }

    pub fn of(meta: &RangeMeta) -> Self {
        let end = meta.end();
        Span {
            start: meta.start().as_bytes().to_vec(),
            end: (!end.is_empty()).then(|| end.as_bytes().to_vec()),
        }
    }

    /// From wire bounds, where an empty end means +infinity.
    pub fn from_wire(start: Vec<u8>, end: Vec<u8>) -> Self {
        Span {
            start,
            end: (!end.is_empty()).then_some(end),
        }
    }

    pub fn end_for_wire(&self) -> Vec<u8> {
        self.end.clone().unwrap_or_default()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }

    pub fn is_empty(&self) -> bool {
        self.end
            .as_deref()
            .is_some_and(|e| e <= self.start.as_slice())
    }

    /// Whether `self` lies entirely within `outer`.
    pub fn within(&self, outer: &Span) -> bool {
        self.start >= outer.start
            && match (&self.end, &outer.end) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(e), Some(o)) => e <= o,
            }
    }

    /// The keys in both spans, or `None`.
    pub fn intersect(&self, other: &Span) -> Option<Span> {
        let start = self.start.clone().max(other.start.clone());
        let end = match (&self.end, &other.end) {
            (None, None) => None,
            (Some(e), None) | (None, Some(e)) => Some(e.clone()),
            (Some(a), Some(b)) => Some(a.clone().min(b.clone())),
        };
        let span = Span { start, end };
        (!span.is_empty()).then_some(span)
    }

    /// The parts of `self` that none of `others` covers, in key order.
    pub fn subtract(&self, others: &[Span]) -> Vec<Span> {
        let mut cuts: Vec<Span> = others.iter().filter_map(|o| o.intersect(self)).collect();
        cuts.sort_by(|a, b| a.start.cmp(&b.start));
        let mut out = Vec::new();
        let mut cursor = self.start.clone();
        for cut in cuts {
            if cut.start > cursor {
                out.push(Span::new(cursor.clone(), Some(cut.start.clone())));
            }
            match cut.end {
                None => return out,
                Some(end) => cursor = cursor.max(end),
            }
        }
        let rest = Span {
            start: cursor,
            end: self.end.clone(),
        };
        if !rest.is_empty() {
            out.push(rest);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start: &str, end: Option<&str>) -> Span {
        Span::new(start.as_bytes(), end.map(|e| e.as_bytes().to_vec()))
    }

    #[test]
    fn contains_and_within() {
        assert!(s("b", Some("d")).contains(b"b"));
        assert!(!s("b", Some("d")).contains(b"d"));
        assert!(s("b", None).contains(b"zzz"));
        assert!(s("c", Some("d")).within(&s("b", None)));
        assert!(!s("c", None).within(&s("b", Some("z"))));
    }

    #[test]
    fn intersections() {
        assert_eq!(
            s("a", Some("m")).intersect(&s("k", None)),
            Some(s("k", Some("m")))
        );
        assert_eq!(s("a", Some("k")).intersect(&s("k", None)), None);
        assert_eq!(s("", None).intersect(&s("", None)), Some(s("", None)));
    }

    #[test]
    fn subtraction_leaves_other_ranges_alone() {
        let whole = s("", None);
        assert_eq!(whole.subtract(&[]), vec![whole.clone()]);
        assert_eq!(whole.subtract(&[s("", Some("m"))]), vec![s("m", None)]);
        assert_eq!(
            whole.subtract(&[s("c", Some("e")), s("a", Some("b"))]),
            vec![s("", Some("a")), s("b", Some("c")), s("e", None)]
        );
        assert_eq!(s("a", Some("z")).subtract(&[s("", None)]), vec![]);
        assert_eq!(
            s("a", Some("z")).subtract(&[s("m", None)]),
            vec![s("a", Some("m"))]
        );
    }
}
