//! Checked conversions between the generated wire types ([`crate::pb`]) and the
//! domain types. Wire data from a peer may be anything: a missing message, a zero
//! id, inverted bounds, an enum number from a newer peer. Each becomes a
//! [`ConversionError`] here, so that nothing past this module has to re-check it.

use bytes::Bytes;

use crate::pb::ranger as pb;
use crate::{
    InvalidBounds, Key, LoadCut, LoadInfo, PlacementState, RangeId, RangeMeta, RemoteState,
    ReplicaGroup,
};

/// Why wire data could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("range id must not be 0")]
    ZeroRangeId,
    #[error("not a range id: {0:?}")]
    BadRangeId(String),
    #[error("node id must not be empty")]
    EmptyNodeId,
    #[error("bad node address {addr:?}: {reason}")]
    BadNodeAddress { addr: String, reason: &'static str },
    #[error("bad node list {0:?}: no address in it")]
    EmptyNodeList(String),
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("unknown {enumeration} value {value}")]
    UnknownEnumValue {
        enumeration: &'static str,
        value: i32,
    },
    #[error(transparent)]
    InvalidBounds(#[from] InvalidBounds),
    /// The value as text: an f64 (NaN among them) has no `Eq`.
    #[error("capacity must be a positive number, not {0}")]
    BadCapacity(String),
    #[error("bad replica group of range {range}: {reason}")]
    BadReplicaGroup { range: u64, reason: &'static str },
}

/// A node's declared capacity from the wire: 0 (unset, as the reference sends)
/// is 1, the default; negative, infinite or NaN is an error (the balancer
/// divides by it).
pub fn capacity_from_wire(value: f64) -> Result<f64, ConversionError> {
    if value == 0.0 {
        Ok(1.0)
    } else if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ConversionError::BadCapacity(value.to_string()))
    }
}

/// Unwraps an optional message field, naming it in the error.
pub fn require<T>(field: Option<T>, name: &'static str) -> Result<T, ConversionError> {
    field.ok_or(ConversionError::MissingField(name))
}

impl TryFrom<pb::RangeMeta> for RangeMeta {
    type Error = ConversionError;

    fn try_from(value: pb::RangeMeta) -> Result<Self, Self::Error> {
        let id = RangeId::new(value.ident)?;
        Ok(RangeMeta::new(
            id,
            Key::from(value.start.as_ref()),
            Key::from(value.end.as_ref()),
        )?)
    }
}

impl From<&RangeMeta> for pb::RangeMeta {
    fn from(value: &RangeMeta) -> Self {
        pb::RangeMeta {
            ident: value.id().get(),
            start: Bytes::copy_from_slice(value.start().as_bytes()),
            end: Bytes::copy_from_slice(value.end().as_bytes()),
        }
    }
}

impl From<RangeMeta> for pb::RangeMeta {
    fn from(value: RangeMeta) -> Self {
        pb::RangeMeta::from(&value)
    }
}

impl From<pb::LoadInfo> for LoadInfo {
    /// Takes the raw `split_keys` when present (our nodes), else the string
    /// `splits` (reference nodes); `load_split_keys` and `load_cuts` only our
    /// nodes send. Load cuts that do not describe a distribution (see
    /// [`LoadCut::well_formed`]) are dropped whole: they are a hint, and the
    /// controller then halves at the load split key as it would without them.
    fn from(value: pb::LoadInfo) -> Self {
        let load_cuts: Vec<LoadCut> = value
            .load_cuts
            .into_iter()
            .map(|c| LoadCut {
                key: Key::new(c.key),
                below: c.below,
            })
            .collect();
        let load_cuts = if LoadCut::well_formed(&load_cuts) {
            load_cuts
        } else {
            Vec::new()
        };
        let split_keys = if value.split_keys.is_empty() {
            value.splits.into_iter().map(Key::from).collect()
        } else {
            value.split_keys.into_iter().map(Key::new).collect()
        };
        LoadInfo {
            keys: value.keys,
            bytes: value.bytes,
            reads_per_second: value.reads_per_second,
            writes_per_second: value.writes_per_second,
            split_keys,
            load_split_keys: value.load_split_keys.into_iter().map(Key::new).collect(),
            load_cuts,
        }
    }
}

impl From<&LoadInfo> for pb::LoadInfo {
    /// Fills both `splits` (for reference controllers, UTF-8 keys only) and
    /// `split_keys` (every key, as bytes).
    fn from(value: &LoadInfo) -> Self {
        pb::LoadInfo {
            keys: value.keys,
            splits: value
                .split_keys
                .iter()
                .filter_map(|k| std::str::from_utf8(k.as_bytes()).ok().map(str::to_owned))
                .collect(),
            bytes: value.bytes,
            reads_per_second: value.reads_per_second,
            writes_per_second: value.writes_per_second,
            split_keys: value
                .split_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            load_split_keys: value
                .load_split_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            load_cuts: value
                .load_cuts
                .iter()
                .map(|c| pb::LoadCut {
                    key: c.key.as_bytes().to_vec(),
                    below: c.below,
                })
                .collect(),
        }
    }
}

/// A node's view of one of its ranges (the wire's `RangeInfo`).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeInfo {
    pub meta: RangeMeta,
    pub state: RemoteState,
    pub load: LoadInfo,
}

impl TryFrom<pb::RangeInfo> for RangeInfo {
    type Error = ConversionError;

    fn try_from(value: pb::RangeInfo) -> Result<Self, Self::Error> {
        Ok(RangeInfo {
            meta: require(value.meta, "RangeInfo.meta")?.try_into()?,
            state: RemoteState::try_from(value.state)?,
            load: value.info.map(LoadInfo::from).unwrap_or_default(),
        })
    }
}

/// A range as a node's probe answer lists it, as the controller takes it in:
/// its id, state and load. The bounds are checked and not kept. The
/// controller knows every range's bounds from its keyspace, and copying a
/// million pairs of keys per probe round only to drop them was most of what
/// decoding the answers cost (issue 13, `bench_reconcile`'s probe round).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedRange {
    pub id: RangeId,
    pub state: RemoteState,
    pub load: LoadInfo,
}

impl TryFrom<pb::RangeInfo> for ReportedRange {
    type Error = ConversionError;

    fn try_from(value: pb::RangeInfo) -> Result<Self, Self::Error> {
        let meta = require(value.meta, "RangeInfo.meta")?;
        let id = RangeId::new(meta.ident)?;
        RangeMeta::check_bounds(id, &meta.start, &meta.end)?;
        Ok(ReportedRange {
            id,
            state: RemoteState::try_from(value.state)?,
            load: value.info.map(LoadInfo::from).unwrap_or_default(),
        })
    }
}

impl From<RangeInfo> for ReportedRange {
    /// What a node holding `value` reports (in-process nodes and tests).
    fn from(value: RangeInfo) -> Self {
        ReportedRange {
            id: value.meta.id(),
            state: value.state,
            load: value.load,
        }
    }
}

impl From<&RangeInfo> for pb::RangeInfo {
    fn from(value: &RangeInfo) -> Self {
        pb::RangeInfo {
            meta: Some((&value.meta).into()),
            state: value.state.into(),
            info: Some((&value.load).into()),
        }
    }
}

/// One placement of a parent range, as sent in Prepare: where the data is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentPlacement {
    /// The node's address, `host:port`.
    pub node_addr: String,
    pub state: PlacementState,
}

/// A range that the prepared range descends from, or the range itself (first in
/// Prepare's list, with its current placements: for a move, that is where the data
/// is now). Storage systems use it to find where to copy data from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub meta: RangeMeta,
    /// Ids of this range's own parents.
    pub parents: Vec<RangeId>,
    pub placements: Vec<ParentPlacement>,
}

impl TryFrom<pb::Parent> for Parent {
    type Error = ConversionError;

    fn try_from(value: pb::Parent) -> Result<Self, Self::Error> {
        Ok(Parent {
            meta: require(value.range, "Parent.range")?.try_into()?,
            parents: value
                .parent
                .into_iter()
                .map(RangeId::new)
                .collect::<Result<_, _>>()?,
            placements: value
                .placements
                .into_iter()
                .map(|p| {
                    Ok(ParentPlacement {
                        node_addr: p.node,
                        state: PlacementState::try_from(p.state)?,
                    })
                })
                .collect::<Result<_, ConversionError>>()?,
        })
    }
}

impl From<&Parent> for pb::Parent {
    fn from(value: &Parent) -> Self {
        pb::Parent {
            range: Some((&value.meta).into()),
            parent: value.parents.iter().map(|id| id.get()).collect(),
            placements: value
                .placements
                .iter()
                .map(|p| pb::Placement {
                    node: p.node_addr.clone(),
                    state: p.state.into(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ReplicaGroup> for ReplicaGroup {
    type Error = ConversionError;

    fn try_from(value: pb::ReplicaGroup) -> Result<Self, Self::Error> {
        let range = RangeId::new(value.range)?;
        if value.members.iter().any(String::is_empty) {
            return Err(ConversionError::BadReplicaGroup {
                range: value.range,
                reason: "a member without an address",
            });
        }
        let primary = (!value.primary.is_empty()).then_some(value.primary);
        if let Some(primary) = &primary
            && !value.members.contains(primary)
        {
            return Err(ConversionError::BadReplicaGroup {
                range: value.range,
                reason: "the primary is not a member",
            });
        }
        let mut members = value.members;
        members.sort();
        members.dedup();
        Ok(ReplicaGroup {
            range,
            epoch: value.epoch,
            primary,
            members,
        })
    }
}

impl From<&ReplicaGroup> for pb::ReplicaGroup {
    fn from(value: &ReplicaGroup) -> Self {
        pb::ReplicaGroup {
            range: value.range.get(),
            epoch: value.epoch,
            primary: value.primary.clone().unwrap_or_default(),
            members: value.members.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_capacity_is_one_and_nonsense_is_refused() {
        assert_eq!(capacity_from_wire(0.0), Ok(1.0));
        assert_eq!(capacity_from_wire(2.5), Ok(2.5));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    capacity_from_wire(bad),
                    Err(ConversionError::BadCapacity(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn range_meta_rejects_zero_id_and_bad_bounds() {
        let zero = pb::RangeMeta {
            ident: 0,
            start: Bytes::new(),
            end: Bytes::new(),
        };
        assert_eq!(RangeMeta::try_from(zero), Err(ConversionError::ZeroRangeId));
        let inverted = pb::RangeMeta {
            ident: 3,
            start: Bytes::from_static(b"z"),
            end: Bytes::from_static(b"a"),
        };
        assert!(matches!(
            RangeMeta::try_from(inverted),
            Err(ConversionError::InvalidBounds(_))
        ));
    }

    #[test]
    fn range_meta_round_trips() {
        let meta = RangeMeta::new(RangeId::new(9).unwrap(), "a".into(), "m".into()).unwrap();
        let wire = pb::RangeMeta::from(&meta);
        assert_eq!(RangeMeta::try_from(wire), Ok(meta));
    }

    #[test]
    fn range_info_requires_meta_and_known_state() {
        let missing = pb::RangeInfo {
            meta: None,
            state: 2,
            info: None,
        };
        assert_eq!(
            RangeInfo::try_from(missing),
            Err(ConversionError::MissingField("RangeInfo.meta"))
        );
        let unknown_state = pb::RangeInfo {
            meta: Some(pb::RangeMeta {
                ident: 1,
                start: Bytes::new(),
                end: Bytes::new(),
            }),
            state: 0,
            info: None,
        };
        assert!(matches!(
            RangeInfo::try_from(unknown_state),
            Err(ConversionError::UnknownEnumValue { .. })
        ));
    }

    /// A probe answer's range, as the controller reads it: every check a
    /// whole `RangeInfo` gets, and the same id, state and load.
    #[test]
    fn a_reported_range_is_checked_like_a_range_info_and_keeps_all_but_the_bounds() {
        let wire = |ident, start: &'static [u8], end: &'static [u8], state| pb::RangeInfo {
            meta: Some(pb::RangeMeta {
                ident,
                start: Bytes::from_static(start),
                end: Bytes::from_static(end),
            }),
            state,
            info: Some(pb::LoadInfo {
                keys: 7,
                ..Default::default()
            }),
        };
        let good = wire(4, b"a", b"m", RemoteState::Active.into());
        let full = RangeInfo::try_from(good.clone()).unwrap();
        let reported = ReportedRange::try_from(good).unwrap();
        assert_eq!(reported, ReportedRange::from(full));
        assert_eq!(
            (reported.id.get(), reported.state, reported.load.keys),
            (4, RemoteState::Active, 7)
        );
        let open_ended = wire(5, b"m", b"", RemoteState::Inactive.into());
        assert!(ReportedRange::try_from(open_ended).is_ok());
        for bad in [
            wire(0, b"a", b"m", RemoteState::Active.into()),
            wire(6, b"m", b"a", RemoteState::Active.into()),
            wire(6, b"m", b"m", RemoteState::Active.into()),
            wire(6, b"a", b"m", 0),
            pb::RangeInfo {
                meta: None,
                ..wire(6, b"a", b"m", RemoteState::Active.into())
            },
        ] {
            let expected = RangeInfo::try_from(bad.clone()).map(ReportedRange::from);
            assert!(expected.is_err(), "{bad:?} is bad");
            assert_eq!(ReportedRange::try_from(bad), expected);
        }
    }

    #[test]
    fn parent_rejects_missing_range_and_zero_parent_ids() {
        let missing = pb::Parent {
            range: None,
            parent: vec![],
            placements: vec![],
        };
        assert_eq!(
            Parent::try_from(missing),
            Err(ConversionError::MissingField("Parent.range"))
        );
        let zero_parent = pb::Parent {
            range: Some(pb::RangeMeta {
                ident: 2,
                start: Bytes::new(),
                end: Bytes::new(),
            }),
            parent: vec![0],
            placements: vec![],
        };
        assert_eq!(
            Parent::try_from(zero_parent),
            Err(ConversionError::ZeroRangeId)
        );
    }

    #[test]
    fn load_info_carries_binary_split_keys_and_utf8_copies() {
        let load = LoadInfo {
            keys: 10,
            bytes: 100,
            reads_per_second: 1.5,
            writes_per_second: 2.5,
            split_keys: vec![Key::from("m"), Key::new(vec![0xff])],
            load_split_keys: vec![Key::new(vec![0x00, 0xfe])],
            load_cuts: vec![
                LoadCut {
                    key: Key::from("c"),
                    below: 0.25,
                },
                LoadCut {
                    key: Key::from("p"),
                    below: 0.9,
                },
            ],
        };
        let wire = pb::LoadInfo::from(&load);
        assert_eq!(wire.splits, vec!["m".to_owned()]);
        assert_eq!(wire.split_keys.len(), 2);
        assert_eq!(wire.load_split_keys, vec![vec![0x00, 0xfe]]);
        assert_eq!(LoadInfo::from(wire), load);
        let reference = pb::LoadInfo {
            keys: 1,
            splits: vec!["k".into()],
            ..Default::default()
        };
        let from_reference = LoadInfo::from(reference);
        assert_eq!(from_reference.split_keys, vec![Key::from("k")]);
        assert!(from_reference.load_split_keys.is_empty());
        assert!(from_reference.load_cuts.is_empty());
    }

    #[test]
    fn load_cuts_that_do_not_describe_a_distribution_are_dropped_whole() {
        let cut = |key: &str, below: f64| pb::LoadCut {
            key: key.as_bytes().to_vec(),
            below,
        };
        let good = vec![cut("a", 0.2), cut("b", 0.7)];
        let with = |cuts: Vec<pb::LoadCut>| {
            LoadInfo::from(pb::LoadInfo {
                load_cuts: cuts,
                ..Default::default()
            })
            .load_cuts
            .len()
        };
        assert_eq!(with(good), 2);
        for bad in [
            vec![cut("b", 0.2), cut("a", 0.7)],
            vec![cut("a", 0.7), cut("b", 0.2)],
            vec![cut("a", 0.2), cut("a", 0.7)],
            vec![cut("a", 0.0)],
            vec![cut("a", 1.0)],
            vec![cut("a", f64::NAN)],
            vec![cut("a", -0.5), cut("b", 0.5)],
        ] {
            assert_eq!(with(bad.clone()), 0, "{bad:?}");
        }
    }

    fn wire_group(primary: &str, members: &[&str]) -> pb::ReplicaGroup {
        pb::ReplicaGroup {
            range: 7,
            epoch: ReplicaGroup::epoch_of(2, 5),
            primary: primary.into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn a_replica_group_round_trips_with_its_members_sorted() {
        let group = ReplicaGroup::try_from(wire_group("b:1", &["c:1", "b:1", "a:1"])).unwrap();
        assert_eq!(group.members, vec!["a:1", "b:1", "c:1"]);
        assert_eq!(group.primary.as_deref(), Some("b:1"));
        let back = ReplicaGroup::try_from(pb::ReplicaGroup::from(&group)).unwrap();
        assert_eq!(back, group);
    }

    #[test]
    fn a_replica_group_without_primary_is_fine_and_one_with_a_stranger_primary_is_refused() {
        assert_eq!(
            ReplicaGroup::try_from(wire_group("", &["a:1"]))
                .unwrap()
                .primary,
            None
        );
        assert!(matches!(
            ReplicaGroup::try_from(wire_group("z:1", &["a:1"])),
            Err(ConversionError::BadReplicaGroup { .. })
        ));
        assert!(matches!(
            ReplicaGroup::try_from(wire_group("", &["a:1", ""])),
            Err(ConversionError::BadReplicaGroup { .. })
        ));
        let mut zero = wire_group("", &["a:1"]);
        zero.range = 0;
        assert_eq!(
            ReplicaGroup::try_from(zero),
            Err(ConversionError::ZeroRangeId)
        );
    }
}
