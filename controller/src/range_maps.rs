//! Maps and sets keyed by range id, hashed with foldhash instead of std's
//! SipHash.
//!
//! The controller looks ranges up by id in hash maps on every hot path: a
//! node's report (`Roster::probe_ok`, a thousand ranges per probe), the ranges
//! a step looks at again (`Engine::dirty`), each range's confirmation in a
//! reconcile pass. At a million ranges those lookups were a large part of a
//! restarted controller's first steps (DESIGN.md §10 sets their targets).
//! SipHash is built to resist an adversary choosing keys; range ids come from
//! the controller's own counter and the nodes it manages, so a fast hash with
//! a per-process random seed (foldhash's `RandomState`) is enough.

use std::collections::{HashMap, HashSet};

use ranger_proto::RangeId;

/// The hasher of [`RangeMap`] and [`RangeSet`], seeded per process.
pub type RangeHasher = foldhash::fast::RandomState;

/// A hash map keyed by range id (create with `RangeMap::default()`).
pub type RangeMap<V> = HashMap<RangeId, V, RangeHasher>;

/// A hash set of range ids (create with `RangeSet::default()`).
pub type RangeSet = HashSet<RangeId, RangeHasher>;
