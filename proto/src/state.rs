//! The three state enums. Each maps to a wire enum by number; the domain versions
//! have no "unknown" value, so code matching on them never has to handle one: the
//! wire's UNKNOWN (0) and any number we do not know are rejected at conversion.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ConversionError;
use crate::pb::ranger as pb;

/// The state of a range on a node, as the node reports it (PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RemoteState {
    /// The storage system is loading the range (Prepare in progress).
    Preparing,
    /// Loaded, not serving writes.
    Inactive,
    /// Activate in progress.
    Activating,
    /// Serving.
    Active,
    /// Deactivate in progress.
    Deactivating,
    /// Drop in progress.
    Dropping,
    /// The node does not hold the range.
    NotFound,
}

impl RemoteState {
    /// Whether a command is still running on the node for this range.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            RemoteState::Preparing
                | RemoteState::Activating
                | RemoteState::Deactivating
                | RemoteState::Dropping
        )
    }

    /// Whether the node may be accepting writes for the range (invariant 1 counts
    /// these as writers: Activating and Deactivating may be serving).
    pub fn may_serve_writes(self) -> bool {
        matches!(
            self,
            RemoteState::Active | RemoteState::Activating | RemoteState::Deactivating
        )
    }
}

impl From<RemoteState> for pb::RemoteState {
    fn from(value: RemoteState) -> Self {
        match value {
            RemoteState::Preparing => pb::RemoteState::RemotePreparing,
            RemoteState::Inactive => pb::RemoteState::RemoteInactive,
            RemoteState::Activating => pb::RemoteState::RemoteActivating,
            RemoteState::Active => pb::RemoteState::RemoteActive,
            RemoteState::Deactivating => pb::RemoteState::RemoteDeactivating,
            RemoteState::Dropping => pb::RemoteState::RemoteDropping,
            RemoteState::NotFound => pb::RemoteState::RemoteNotFound,
        }
    }
}

impl From<RemoteState> for i32 {
    fn from(value: RemoteState) -> Self {
        pb::RemoteState::from(value) as i32
    }
}

impl TryFrom<i32> for RemoteState {
    type Error = ConversionError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        let unknown = ConversionError::UnknownEnumValue {
            enumeration: "RemoteState",
            value,
        };
        Ok(
            match pb::RemoteState::try_from(value).map_err(|_| unknown.clone())? {
                pb::RemoteState::RemoteUnknown => return Err(unknown),
                pb::RemoteState::RemotePreparing => RemoteState::Preparing,
                pb::RemoteState::RemoteInactive => RemoteState::Inactive,
                pb::RemoteState::RemoteActivating => RemoteState::Activating,
                pb::RemoteState::RemoteActive => RemoteState::Active,
                pb::RemoteState::RemoteDeactivating => RemoteState::Deactivating,
                pb::RemoteState::RemoteDropping => RemoteState::Dropping,
                pb::RemoteState::RemoteNotFound => RemoteState::NotFound,
            },
        )
    }
}

/// The controller's state of a range (DESIGN.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RangeState {
    /// Serving (or to be served) as it is.
    Active,
    /// A split or join that replaces it is under way.
    Subsuming,
    /// Replaced by its children; kept as history.
    Obsolete,
}

impl From<RangeState> for pb::RangeState {
    fn from(value: RangeState) -> Self {
        match value {
            RangeState::Active => pb::RangeState::RangeActive,
            RangeState::Subsuming => pb::RangeState::RangeSubsuming,
            RangeState::Obsolete => pb::RangeState::RangeObsolete,
        }
    }
}

impl From<RangeState> for i32 {
    fn from(value: RangeState) -> Self {
        pb::RangeState::from(value) as i32
    }
}

impl TryFrom<i32> for RangeState {
    type Error = ConversionError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        let unknown = ConversionError::UnknownEnumValue {
            enumeration: "RangeState",
            value,
        };
        Ok(
            match pb::RangeState::try_from(value).map_err(|_| unknown.clone())? {
                pb::RangeState::RangeUnknown => return Err(unknown),
                pb::RangeState::RangeActive => RangeState::Active,
                pb::RangeState::RangeSubsuming => RangeState::Subsuming,
                pb::RangeState::RangeObsolete => RangeState::Obsolete,
            },
        )
    }
}

/// The controller's state of a placement (DESIGN.md section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlacementState {
    /// A node was chosen; it has not accepted the range yet.
    Pending,
    /// The node accepted the range and is loading it.
    Loading,
    /// Loaded, not serving writes.
    Inactive,
    /// Serving.
    Active,
    /// Loading took too long; the placement will be dropped.
    GiveUp,
    /// The node lost the range, or the node is gone.
    Missing,
    /// Removed from the node (terminal).
    Dropped,
}

impl From<PlacementState> for pb::PlacementState {
    fn from(value: PlacementState) -> Self {
        match value {
            PlacementState::Pending => pb::PlacementState::PlacementPending,
            PlacementState::Loading => pb::PlacementState::PlacementLoading,
            PlacementState::Inactive => pb::PlacementState::PlacementInactive,
            PlacementState::Active => pb::PlacementState::PlacementActive,
            PlacementState::GiveUp => pb::PlacementState::PlacementGiveUp,
            PlacementState::Missing => pb::PlacementState::PlacementMissing,
            PlacementState::Dropped => pb::PlacementState::PlacementDropped,
        }
    }
}

impl From<PlacementState> for i32 {
    fn from(value: PlacementState) -> Self {
        pb::PlacementState::from(value) as i32
    }
}

impl TryFrom<i32> for PlacementState {
    type Error = ConversionError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        let unknown = ConversionError::UnknownEnumValue {
            enumeration: "PlacementState",
            value,
        };
        Ok(
            match pb::PlacementState::try_from(value).map_err(|_| unknown.clone())? {
                pb::PlacementState::PlacementUnknown => return Err(unknown),
                pb::PlacementState::PlacementPending => PlacementState::Pending,
                pb::PlacementState::PlacementLoading => PlacementState::Loading,
                pb::PlacementState::PlacementInactive => PlacementState::Inactive,
                pb::PlacementState::PlacementActive => PlacementState::Active,
                pb::PlacementState::PlacementGiveUp => PlacementState::GiveUp,
                pb::PlacementState::PlacementMissing => PlacementState::Missing,
                pb::PlacementState::PlacementDropped => PlacementState::Dropped,
            },
        )
    }
}

macro_rules! display_as_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_as_debug!(RemoteState, RangeState, PlacementState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_numbers_match_the_protocol() {
        let remote = [
            (RemoteState::Inactive, 1),
            (RemoteState::Active, 2),
            (RemoteState::Preparing, 3),
            (RemoteState::Activating, 4),
            (RemoteState::Deactivating, 5),
            (RemoteState::Dropping, 6),
            (RemoteState::NotFound, 7),
        ];
        for (state, number) in remote {
            assert_eq!(i32::from(state), number, "{state}");
            assert_eq!(RemoteState::try_from(number), Ok(state));
        }
        let range = [
            (RangeState::Active, 1),
            (RangeState::Subsuming, 2),
            (RangeState::Obsolete, 3),
        ];
        for (state, number) in range {
            assert_eq!(i32::from(state), number, "{state}");
            assert_eq!(RangeState::try_from(number), Ok(state));
        }
        let placement = [
            (PlacementState::Pending, 1),
            (PlacementState::Inactive, 2),
            (PlacementState::Active, 3),
            (PlacementState::Missing, 5),
            (PlacementState::Dropped, 6),
            (PlacementState::Loading, 7),
            (PlacementState::GiveUp, 8),
        ];
        for (state, number) in placement {
            assert_eq!(i32::from(state), number, "{state}");
            assert_eq!(PlacementState::try_from(number), Ok(state));
        }
    }

    #[test]
    fn unknown_and_unused_numbers_are_rejected() {
        assert!(RemoteState::try_from(0).is_err());
        assert!(RemoteState::try_from(8).is_err());
        assert!(RangeState::try_from(0).is_err());
        assert!(PlacementState::try_from(0).is_err());
        assert!(PlacementState::try_from(4).is_err());
        assert!(PlacementState::try_from(99).is_err());
    }
}
