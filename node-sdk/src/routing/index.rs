//! The routing table's lookup index: every range the table knows, as each node
//! reported it, ordered by start key, so that the routes for one key cost a
//! binary search and a short walk instead of a pass over every range of every
//! node (a proxy looks one up for every request it forwards; a balanced
//! keyspace has thousands of ranges).
//!
//! Ranges may overlap in the index: two nodes may report a parent and its child,
//! or the same range, while a split or a move is under way. So the walk back
//! from the key cannot stop at the first range that misses it; it stops where no
//! range starting earlier reaches the key, which `reach` tells at each position.

use std::cmp::Ordering;

use ranger_proto::RemoteState;

use super::Route;

/// The index, built from a snapshot of the table and rebuilt after it changes.
#[derive(Debug, Default)]
pub(super) struct RouteIndex {
    /// Every route, sorted by the range's start key.
    routes: Vec<Route>,
    /// For each position `i`, the position among `routes[..=i]` of a route whose
    /// range ends last (an empty end, +inf, is last of all).
    reach: Vec<usize>,
}

impl RouteIndex {
    pub(super) fn build(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| {
            (a.meta.start(), a.meta.id(), &a.addr).cmp(&(b.meta.start(), b.meta.id(), &b.addr))
        });
        let mut reach = Vec::with_capacity(routes.len());
        let mut furthest = 0;
        for (i, route) in routes.iter().enumerate() {
            if ends_later(route, &routes[furthest]) {
                furthest = i;
            }
            reach.push(furthest);
        }
        RouteIndex { routes, reach }
    }

    /// The routes whose range holds `key` and whose node reports it in `state`.
    pub(super) fn lookup(&self, key: &[u8], state: RemoteState) -> Vec<Route> {
        // Routes before `after` start at or before the key.
        let after = self
            .routes
            .partition_point(|route| route.meta.start().as_bytes() <= key);
        let mut found = Vec::new();
        for i in (0..after).rev() {
            if !reaches(&self.routes[self.reach[i]], key) {
                // No range starting at or before position i gets to the key.
                break;
            }
            let route = &self.routes[i];
            if route.state == state && route.meta.contains(key) {
                found.push(route.clone());
            }
        }
        found
    }
}

/// Whether `a`'s range ends after `b`'s.
fn ends_later(a: &Route, b: &Route) -> bool {
    match (a.meta.end().is_empty(), b.meta.end().is_empty()) {
        (true, true) | (false, true) => false,
        (true, false) => true,
        (false, false) => a.meta.end().cmp(b.meta.end()) == Ordering::Greater,
    }
}

/// Whether `route`'s range ends after `key` (so it may hold it).
fn reaches(route: &Route, key: &[u8]) -> bool {
    route.meta.end().is_empty() || route.meta.end().as_bytes() > key
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use ranger_proto::{Key, RangeId, RangeMeta};

    use super::*;

    fn route(addr: &str, id: u64, start: &str, end: &str, state: RemoteState) -> Route {
        Route {
            addr: addr.to_owned(),
            meta: RangeMeta::new(
                RangeId::new(id).expect("non-zero id"),
                Key::from(start),
                Key::from(end),
            )
            .expect("valid bounds"),
            state,
        }
    }

    fn addrs(routes: &[Route]) -> Vec<(String, u64)> {
        let mut found: Vec<(String, u64)> = routes
            .iter()
            .map(|r| (r.addr.clone(), r.meta.id().get()))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_key_is_found_in_the_range_that_holds_it_and_not_in_its_neighbours() {
        let index = RouteIndex::build(vec![
            route("a", 2, "m", "", RemoteState::Active),
            route("b", 1, "", "m", RemoteState::Active),
        ]);
        assert_eq!(
            addrs(&index.lookup(b"c", RemoteState::Active)),
            [("b".into(), 1)]
        );
        assert_eq!(
            addrs(&index.lookup(b"m", RemoteState::Active)),
            [("a".into(), 2)]
        );
        assert_eq!(
            addrs(&index.lookup(b"", RemoteState::Active)),
            [("b".into(), 1)]
        );
        assert!(index.lookup(b"c", RemoteState::Inactive).is_empty());
    }

    #[test]
    fn a_wide_range_that_starts_far_before_the_key_is_still_found() {
        // A parent [a, z) still reported by one node while its children are
        // reported by others: many ranges start between it and the key.
        let mut routes = vec![route("old", 1, "a", "z", RemoteState::Active)];
        for (i, start) in ["b", "c", "d", "e", "f"].iter().enumerate() {
            let end = format!("{start}~");
            routes.push(route(
                "new",
                10 + i as u64,
                start,
                &end,
                RemoteState::Active,
            ));
        }
        let index = RouteIndex::build(routes);
        assert_eq!(
            addrs(&index.lookup(b"x", RemoteState::Active)),
            [("old".into(), 1)]
        );
        assert_eq!(
            addrs(&index.lookup(b"e", RemoteState::Active)),
            [("new".into(), 13), ("old".into(), 1)]
        );
    }

    #[test]
    fn lookups_agree_with_a_pass_over_every_route_in_seeded_random_tables() {
        let seeds = std::env::var("RANGER_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(1..=200, |seed| seed..=seed);
        let states = [
            RemoteState::Active,
            RemoteState::Inactive,
            RemoteState::Preparing,
        ];
        for seed in seeds {
            let mut rng = StdRng::seed_from_u64(seed);
            let key = |rng: &mut StdRng| -> String {
                (0..rng.random_range(0..3))
                    .map(|_| char::from(b'a' + rng.random_range(0..6)))
                    .collect()
            };
            let mut routes = Vec::new();
            for id in 1..=rng.random_range(0..30u64) {
                let (a, b) = (key(&mut rng), key(&mut rng));
                let (start, end) = if b.is_empty() || a < b {
                    (a, b)
                } else {
                    (b, a)
                };
                let Ok(meta) = RangeMeta::new(
                    RangeId::new(id).expect("non-zero id"),
                    Key::from(start.as_str()),
                    Key::from(end.as_str()),
                ) else {
                    continue;
                };
                routes.push(Route {
                    addr: format!("n{}", rng.random_range(0..4)),
                    meta,
                    state: states[rng.random_range(0..states.len())],
                });
            }
            let index = RouteIndex::build(routes.clone());
            for _ in 0..50 {
                let probe = key(&mut rng);
                let state = states[rng.random_range(0..states.len())];
                let expected: Vec<Route> = routes
                    .iter()
                    .filter(|r| r.state == state && r.meta.contains(probe.as_bytes()))
                    .cloned()
                    .collect();
                assert_eq!(
                    addrs(&index.lookup(probe.as_bytes(), state)),
                    addrs(&expected),
                    "seed {seed} (RANGER_SEED={seed} replays): key {probe:?} in {state:?}"
                );
            }
        }
    }
}
