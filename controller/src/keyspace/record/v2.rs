//! Record schema versions 2 and 3, the compact ones (this build writes 3).
//! Still JSON, so that `consul kv get` and a redb dump stay readable, but about
//! half the bytes of version 1 and about twice as fast to load:
//!
//! ```text
//! {"v":3,"id":5,"start":"k0000000005","end":"k0000000006","state":"Active","activated":true,"placements":[[5,"n5","Active","sent","served"]],"moved":1796000000000}
//! ```
//!
//! - `start`, `end`: the key's exact text form ([`Key::to_text`]): the key itself
//!   when it is printable ASCII, else `hex:` and its bytes. `""` is the empty key
//!   (minus infinity as a start, plus infinity as an end).
//! - `parents`, `children` (range ids), `activated` (the range was ever active)
//!   and `placements` are left out when empty or false.
//! - A placement is `[id, node, state, flags...]`, each flag a string, in this
//!   order when written, any order when read, each at most once: `"replaces=N"`
//!   (the placement it replaces), `"retiring"`, `"sent"` (an Activate was sent)
//!   and `"served"` (it was seen Active).
//! - Version 3 adds `split`, `moved` and `joined` (wall-clock milliseconds of
//!   the range's balancing history), each left out when unknown; a version 2
//!   record that has one is refused.
//! - Unknown fields and flags are refused, not ignored: a newer build that adds
//!   one bumps the version.

use std::fmt;

use ranger_proto::{Key, NodeId, PlacementState, RangeId, RangeState};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{RangeRecord, RecordError};
use crate::keyspace::{Placement, PlacementId, RangeHistory};

/// How every version 2 and 3 record this build writes starts: decoding can
/// skip the search for `v`.
pub(super) const PREFIX_V2: &[u8] = b"{\"v\":2,";
pub(super) const PREFIX_V3: &[u8] = b"{\"v\":3,";

/// Encodes `record` in the version its `v` names (2 or 3): version 2 leaves
/// the history out.
pub(super) fn encode(record: &RangeRecord) -> Result<Vec<u8>, RecordError> {
    let version = record.v;
    let history = match version {
        2 => RangeHistory::default(),
        3 => record.history,
        found => {
            return Err(RecordError::UnsupportedVersion {
                found: u64::from(found),
            });
        }
    };
    let stored = Out {
        v: version,
        id: record.id,
        start: TextKey(&record.start),
        end: TextKey(&record.end),
        state: record.state,
        parents: &record.parents,
        children: &record.children,
        activated: record.ever_activated,
        placements: record.placements.iter().map(CompactPlacement).collect(),
        split: history.split,
        moved: history.moved,
        joined: history.joined,
    };
    let mut bytes = Vec::with_capacity(160);
    serde_json::to_writer(&mut bytes, &stored)?;
    Ok(bytes)
}

/// Decodes a version 2 record (its `v` is checked again here).
pub(super) fn decode(bytes: &[u8]) -> Result<RangeRecord, RecordError> {
    let stored: In = serde_json::from_slice(bytes)?;
    if stored.v != 2 && stored.v != 3 {
        return Err(RecordError::UnsupportedVersion {
            found: u64::from(stored.v),
        });
    }
    let history = RangeHistory {
        split: stored.split,
        moved: stored.moved,
        joined: stored.joined,
    };
    if stored.v == 2 {
        for (field, value) in [
            ("split", history.split),
            ("moved", history.moved),
            ("joined", history.joined),
        ] {
            if value.is_some() {
                return Err(RecordError::FieldNotInVersion { field, version: 2 });
            }
        }
    }
    Ok(RangeRecord {
        v: stored.v,
        id: stored.id,
        start: stored.start.0,
        end: stored.end.0,
        state: stored.state,
        parents: stored.parents,
        children: stored.children,
        ever_activated: stored.activated,
        placements: stored.placements.into_iter().map(|p| p.0).collect(),
        history,
    })
}

/// The written shape, borrowing the record.
#[derive(Serialize)]
struct Out<'a> {
    v: u32,
    id: RangeId,
    start: TextKey<'a>,
    end: TextKey<'a>,
    state: RangeState,
    #[serde(skip_serializing_if = "<[RangeId]>::is_empty")]
    parents: &'a [RangeId],
    #[serde(skip_serializing_if = "<[RangeId]>::is_empty")]
    children: &'a [RangeId],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    activated: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    placements: Vec<CompactPlacement<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    moved: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    joined: Option<u64>,
}

/// The read shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    v: u32,
    id: RangeId,
    start: OwnedTextKey,
    end: OwnedTextKey,
    state: RangeState,
    #[serde(default)]
    parents: Vec<RangeId>,
    #[serde(default)]
    children: Vec<RangeId>,
    #[serde(default)]
    activated: bool,
    #[serde(default)]
    placements: Vec<OwnedPlacement>,
    #[serde(default)]
    split: Option<u64>,
    #[serde(default)]
    moved: Option<u64>,
    #[serde(default)]
    joined: Option<u64>,
}

/// A key written in its exact text form.
struct TextKey<'a>(&'a Key);

impl Serialize for TextKey<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_text())
    }
}

/// A key read from its text form.
struct OwnedTextKey(Key);

impl<'de> Deserialize<'de> for OwnedTextKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = OwnedTextKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key as text, or hex: and its bytes")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<OwnedTextKey, E> {
                Key::parse(text).map(OwnedTextKey).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The flags of a placement, as written.
const REPLACES: &str = "replaces=";
const RETIRING: &str = "retiring";
const SENT: &str = "sent";
const SERVED: &str = "served";

/// A placement written as `[id, node, state, flags...]`.
struct CompactPlacement<'a>(&'a Placement);

impl Serialize for CompactPlacement<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = self.0;
        let flags = usize::from(p.replaces.is_some())
            + usize::from(p.retiring)
            + usize::from(p.activate_sent)
            + usize::from(p.served);
        let mut seq = serializer.serialize_seq(Some(3 + flags))?;
        seq.serialize_element(&p.id.get())?;
        seq.serialize_element(p.node.as_str())?;
        seq.serialize_element(&p.state)?;
        if let Some(replaced) = p.replaces {
            seq.serialize_element(&format!("{REPLACES}{}", replaced.get()))?;
        }
        for (set, flag) in [
            (p.retiring, RETIRING),
            (p.activate_sent, SENT),
            (p.served, SERVED),
        ] {
            if set {
                seq.serialize_element(flag)?;
            }
        }
        seq.end()
    }
}

/// A placement read from `[id, node, state, flags...]`.
struct OwnedPlacement(Placement);

impl<'de> Deserialize<'de> for OwnedPlacement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(PlacementVisitor)
    }
}

struct PlacementVisitor;

impl<'de> Visitor<'de> for PlacementVisitor {
    type Value = OwnedPlacement;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a placement: [id, node, state, flags...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OwnedPlacement, A::Error> {
        let id: u64 = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let node: NodeId = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(1, &self))?;
        let state: PlacementState = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(2, &self))?;
        let mut placement = Placement {
            id: PlacementId::new(id),
            node,
            state,
            replaces: None,
            retiring: false,
            activate_sent: false,
            served: false,
        };
        while let Some(flag) = seq.next_element::<Flag>()? {
            let twice = match flag {
                Flag::Replaces(replaced) => placement
                    .replaces
                    .replace(PlacementId::new(replaced))
                    .is_some(),
                Flag::Retiring => std::mem::replace(&mut placement.retiring, true),
                Flag::Sent => std::mem::replace(&mut placement.activate_sent, true),
                Flag::Served => std::mem::replace(&mut placement.served, true),
            };
            if twice {
                return Err(de::Error::custom(format!(
                    "placement {id}: flag {flag} is given twice"
                )));
            }
        }
        Ok(OwnedPlacement(placement))
    }
}

/// One flag of a placement.
#[derive(Clone, Copy)]
enum Flag {
    Replaces(u64),
    Retiring,
    Sent,
    Served,
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flag::Replaces(_) => f.write_str("replaces"),
            Flag::Retiring => f.write_str(RETIRING),
            Flag::Sent => f.write_str(SENT),
            Flag::Served => f.write_str(SERVED),
        }
    }
}

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagVisitor;
        impl Visitor<'_> for FlagVisitor {
            type Value = Flag;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a placement flag: replaces=N, retiring, sent or served")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Flag, E> {
                match text {
                    RETIRING => Ok(Flag::Retiring),
                    SENT => Ok(Flag::Sent),
                    SERVED => Ok(Flag::Served),
                    other => other
                        .strip_prefix(REPLACES)
                        .and_then(|id| id.parse().ok())
                        .map(Flag::Replaces)
                        .ok_or_else(|| E::custom(format!("unknown placement flag {other:?}"))),
                }
            }
        }
        deserializer.deserialize_str(FlagVisitor)
    }
}
