//! The roster: the controller's volatile view of the nodes, built from discovery
//! and from what nodes answer (probes and commands).
//!
//! Pure data and rules, no I/O: the runtime feeds it and the orchestrator reads it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use ranger_proto::{LoadInfo, NodeId, RangeId, RemoteState, ReportedRange};

use crate::range_maps::RangeMap;
use tokio::time::Instant;

/// What a node last said about one of its ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteView {
    pub state: RemoteState,
    pub load: LoadInfo,
    /// When the node was in that state at the latest: the answer's arrival for a
    /// command, the request's departure for a probe (conservative, so that an old
    /// probe answer never overrides a newer command answer).
    pub as_of: Instant,
    /// The number of the node's last report that listed the range (0: none
    /// did), so [`Roster::probe_ok`] finds what a report left out in one pass.
    listed_in: u64,
}

/// One node as the controller knows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub id: NodeId,
    pub addr: String,
    /// Whether discovery lists the node right now.
    pub registered: bool,
    /// When this controller first heard of the node.
    pub first_seen: Instant,
    /// When a probe last succeeded.
    pub last_ok: Option<Instant>,
    /// When the last probe that granted a lease was *sent*, answered or not: a
    /// probe whose reply is lost may still have renewed the node's lease, so the
    /// node's placements are lost only counting from here (DESIGN.md §6,
    /// SCENARIOS.md #38).
    pub lease_sent_at: Option<Instant>,
    /// A probe failed since the last one that succeeded: grant no lease until one
    /// succeeds again, so an unanswered node's lease runs out.
    pub lease_suspended: bool,
    pub last_error: Option<String>,
    /// The node asked to be drained (Info `want_drain`).
    pub wants_drain: bool,
    /// An operator asked to drain the node (`rangerctl drain`).
    pub operator_drain: bool,
    /// The load it can carry relative to others, as it last declared.
    pub capacity: f64,
    pub ranges: RangeMap<RemoteView>,
    /// Total bytes reported by the last probe.
    bytes: u64,
    /// How many reports [`Roster::probe_ok`] has taken in: the number of the
    /// last one, which the views it listed carry.
    reports: u64,
}

impl NodeStatus {
    /// Whether new placements must avoid the node.
    pub fn draining(&self) -> bool {
        self.wants_drain || self.operator_drain
    }

    /// Whether the node's lease has provably run out: the last lease-granting
    /// probe was sent more than the lease plus a margin ago (`loss_after`). Its
    /// placements are then lost (DESIGN.md section 6). The margin covers the
    /// probe's delivery delay: the node counts its lease from receipt.
    pub fn is_lost(&self, now: Instant, loss_after: Duration) -> bool {
        let since = self.lease_sent_at.unwrap_or(self.first_seen);
        now.saturating_duration_since(since) > loss_after
    }

    /// The lease to grant with a probe sent now: none while the node is
    /// suspended (a probe failed and none has succeeded since).
    fn lease_to_grant(&self, lease: Duration) -> Duration {
        if self.lease_suspended {
            Duration::ZERO
        } else {
            lease
        }
    }

    /// Sum of the bytes the node reported in its last probe, for choosing the
    /// least loaded (kept as a sum so choosing a node does not walk every range).
    pub fn reported_bytes(&self) -> u64 {
        self.bytes
    }
}

/// Every node the controller knows. Hashed by id: the orchestrator looks nodes up
/// once per placement per pass, so this is on its hot path.
#[derive(Debug, Default)]
pub struct Roster {
    nodes: HashMap<NodeId, NodeStatus>,
}

impl Roster {
    pub fn new() -> Self {
        Self::default()
    }

    /// Discovery lists the node (new, or back, or at a new address).
    pub fn register(&mut self, id: NodeId, addr: String, now: Instant) {
        match self.nodes.get_mut(&id) {
            Some(node) => {
                if node.addr != addr {
                    tracing::info!(node = %id, old = %node.addr, new = %addr, "node moved");
                    node.addr = addr;
                    // A process at a new address: nothing it said before
                    // stands, and its next answer is its first (what it does
                    // not list then, it does not hold).
                    node.ranges.clear();
                    node.last_ok = None;
                }
                node.registered = true;
            }
            None => {
                tracing::info!(node = %id, %addr, "node discovered");
                self.nodes.insert(
                    id.clone(),
                    NodeStatus {
                        id,
                        addr,
                        registered: true,
                        first_seen: now,
                        last_ok: None,
                        lease_sent_at: None,
                        lease_suspended: false,
                        last_error: None,
                        wants_drain: false,
                        operator_drain: false,
                        capacity: 1.0,
                        ranges: RangeMap::default(),
                        bytes: 0,
                        reports: 0,
                    },
                );
            }
        }
    }

    /// Discovery no longer lists the node. It stays known (its placements are not
    /// lost before its lease ran out) until [`Roster::forget_lost`].
    pub fn deregister(&mut self, id: &NodeId) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.registered = false;
        }
    }

    /// Drops nodes that are deregistered and lost: nothing refers to them anymore.
    pub fn forget_lost(&mut self, now: Instant, loss_after: Duration) {
        self.nodes
            .retain(|_, n| n.registered || !n.is_lost(now, loss_after));
    }

    pub fn get(&self, id: &NodeId) -> Option<&NodeStatus> {
        self.nodes.get(id)
    }

    /// Every node, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.values()
    }

    /// Every registered node to probe, with its address.
    pub fn probe_targets(&self) -> Vec<(NodeId, String)> {
        self.nodes
            .values()
            .filter(|n| n.registered)
            .map(|n| (n.id.clone(), n.addr.clone()))
            .collect()
    }

    /// A probe is about to be sent to `id` at `now`: the lease it may grant (zero
    /// while the node is suspended), recorded as granted from `now` on.
    pub fn begin_probe(&mut self, id: &NodeId, lease: Duration, now: Instant) -> Duration {
        let Some(node) = self.nodes.get_mut(id) else {
            return Duration::ZERO;
        };
        let grant = node.lease_to_grant(lease);
        if !grant.is_zero() {
            node.lease_sent_at = Some(node.lease_sent_at.map_or(now, |t| t.max(now)));
        }
        grant
    }

    /// A probe answered. `sent_at` is when it was sent: its view is as of then.
    /// `placed` says whether the keyspace has a live placement of a range on
    /// the node (only such ranges' NotFound views are kept once confirmed).
    /// Returns the ranges whose state on the node changed (or appeared), so the
    /// orchestrator looks only at those.
    pub fn probe_ok(
        &mut self,
        id: &NodeId,
        sent_at: Instant,
        ranges: Vec<ReportedRange>,
        wants_drain: bool,
        capacity: f64,
        placed: impl Fn(RangeId) -> bool,
    ) -> Vec<RangeId> {
        let mut changed = Vec::new();
        let Some(node) = self.nodes.get_mut(id) else {
            return changed;
        };
        node.capacity = capacity;
        node.last_ok = Some(node.last_ok.map_or(sent_at, |t| t.max(sent_at)));
        node.last_error = None;
        node.lease_suspended = false;
        if node.wants_drain != wants_drain {
            tracing::info!(node = %id, wants_drain, "node drain wish changed");
        }
        node.wants_drain = wants_drain;
        // One pass over the report, one hash lookup per range: each report gets
        // a number, and a view it lists is stamped with it, so the views it left
        // out are the unstamped ones (a probe round at a million ranges is this
        // loop a million times every probe interval; DESIGN.md §10).
        node.reports += 1;
        let report = node.reports;
        let mut bytes = 0u64;
        for info in ranges {
            let id = info.id;
            bytes = bytes.saturating_add(info.load.bytes);
            match node.ranges.entry(id) {
                Entry::Occupied(mut entry) => {
                    let view = entry.get_mut();
                    if view.listed_in == report {
                        // Listed twice: the last listing counts, once.
                        bytes = bytes.saturating_sub(view.load.bytes);
                    }
                    view.listed_in = report;
                    // A command answer newer than the probe keeps its state.
                    if view.as_of <= sent_at {
                        if view.state != info.state {
                            changed.push(id);
                        }
                        view.state = info.state;
                        view.as_of = sent_at;
                    }
                    view.load = info.load;
                }
                Entry::Vacant(entry) => {
                    changed.push(id);
                    entry.insert(RemoteView {
                        state: info.state,
                        load: info.load,
                        as_of: sent_at,
                        listed_in: report,
                    });
                }
            }
        }
        node.bytes = bytes;
        // Ranges the node no longer lists are NotFound as of this probe. A
        // view that said so already, of a range the node is not meant to hold,
        // goes: the answer it carries is the one no view gives, and keeping it
        // would grow the node's views with every range that ever passed
        // through it. One newer than this probe stays, so an answer to a
        // probe sent before a Drop was answered cannot bring the range back.
        node.ranges.retain(|id, view| {
            if view.listed_in == report || view.as_of > sent_at {
                return true;
            }
            if view.state == RemoteState::NotFound && !placed(*id) {
                return false;
            }
            if view.state != RemoteState::NotFound {
                changed.push(*id);
            }
            view.state = RemoteState::NotFound;
            view.as_of = sent_at;
            true
        });
        changed
    }

    pub fn probe_failed(&mut self, id: &NodeId, error: String) {
        if let Some(node) = self.nodes.get_mut(id) {
            if !node.lease_suspended {
                tracing::warn!(node = %id, %error, "probe failed: granting no lease until one succeeds");
            }
            node.last_error = Some(error);
            node.lease_suspended = true;
        }
    }

    /// A command answered with the range's state on the node.
    pub fn command_answered(
        &mut self,
        id: &NodeId,
        range: RangeId,
        state: RemoteState,
        now: Instant,
    ) {
        if let Some(node) = self.nodes.get_mut(id) {
            let load = node
                .ranges
                .get(&range)
                .map(|v| v.load.clone())
                .unwrap_or_default();
            node.ranges.insert(
                range,
                RemoteView {
                    state,
                    load,
                    as_of: now,
                    listed_in: 0,
                },
            );
        }
    }

    /// Records that the node's answer to the probe sent at `sent_at` did not
    /// list `range`, which it was never heard to hold or drop: NotFound as of
    /// then, unless the node said something about it since.
    pub fn note_unlisted(&mut self, id: &NodeId, range: RangeId, sent_at: Instant) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.ranges.entry(range).or_insert(RemoteView {
                state: RemoteState::NotFound,
                load: LoadInfo::default(),
                as_of: sent_at,
                listed_in: 0,
            });
        }
    }

    /// Forgets what the node said about `range` (a new placement starts fresh).
    pub fn forget_range(&mut self, id: &NodeId, range: RangeId) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.ranges.remove(&range);
        }
    }

    /// The range's state on the node, if the node said anything about it.
    pub fn remote(&self, id: &NodeId, range: RangeId) -> Option<RemoteState> {
        self.nodes
            .get(id)
            .and_then(|n| n.ranges.get(&range))
            .map(|v| v.state)
    }

    /// Marks a node drained (or not) by an operator. False if unknown.
    pub fn set_operator_drain(&mut self, id: &NodeId, drain: bool) -> bool {
        match self.nodes.get_mut(id) {
            Some(node) => {
                node.operator_drain = drain;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn info(id: u64, state: RemoteState) -> ReportedRange {
        ReportedRange {
            id: RangeId::new(id).unwrap(),
            state,
            load: LoadInfo::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_probe_never_overrides_a_newer_command_answer() {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        roster.register(node("a"), "a:1".into(), t0);
        let r1 = RangeId::new(1).unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        roster.command_answered(&node("a"), r1, RemoteState::Active, Instant::now());
        // A probe sent before the answer says the range is not there.
        roster.probe_ok(&node("a"), t0, vec![], false, 1.0, |_| true);
        assert_eq!(roster.remote(&node("a"), r1), Some(RemoteState::Active));
        // A newer probe wins.
        roster.probe_ok(
            &node("a"),
            Instant::now(),
            vec![info(1, RemoteState::Inactive)],
            false,
            1.0,
            |_| true,
        );
        assert_eq!(roster.remote(&node("a"), r1), Some(RemoteState::Inactive));
        let later = Instant::now() + Duration::from_millis(1);
        tokio::time::advance(Duration::from_millis(1)).await;
        roster.probe_ok(&node("a"), later, vec![], false, 1.0, |_| true);
        assert_eq!(roster.remote(&node("a"), r1), Some(RemoteState::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_node_is_lost_after_the_lease_and_margin() {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        roster.register(node("a"), "a:1".into(), t0);
        let loss = Duration::from_secs(6);
        assert!(!roster.get(&node("a")).unwrap().is_lost(t0 + loss, loss));
        assert!(
            roster
                .get(&node("a"))
                .unwrap()
                .is_lost(t0 + loss + Duration::from_millis(1), loss)
        );
        // Only a probe that grants a lease pushes the loss back, counted from
        // its send time.
        roster.probe_ok(&node("a"), t0 + loss, vec![], false, 1.0, |_| true);
        assert!(roster.get(&node("a")).unwrap().is_lost(t0 + loss * 2, loss));
        let grant = roster.begin_probe(&node("a"), Duration::from_secs(4), t0 + loss);
        assert_eq!(grant, Duration::from_secs(4));
        assert!(!roster.get(&node("a")).unwrap().is_lost(t0 + loss * 2, loss));
        roster.deregister(&node("a"));
        roster.forget_lost(t0 + loss * 3, loss);
        assert!(roster.get(&node("a")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_failed_probe_no_lease_is_granted_until_one_succeeds() {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        let lease = Duration::from_secs(4);
        let loss = Duration::from_secs(6);
        roster.register(node("a"), "a:1".into(), t0);
        assert_eq!(roster.begin_probe(&node("a"), lease, t0), lease);
        // Its reply was lost: the node may have renewed, so loss counts from t0.
        roster.probe_failed(&node("a"), "reply lost".into());
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(roster.begin_probe(&node("a"), lease, t1), Duration::ZERO);
        roster.probe_failed(&node("a"), "reply lost".into());
        let status = roster.get(&node("a")).unwrap();
        assert_eq!(status.lease_sent_at, Some(t0));
        assert!(status.is_lost(t0 + loss + Duration::from_millis(1), loss));
        // One success lifts the suspension; the next probe grants again.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(roster.begin_probe(&node("a"), lease, t2), Duration::ZERO);
        roster.probe_ok(&node("a"), t2, vec![], false, 1.0, |_| true);
        let t3 = t2 + Duration::from_millis(200);
        assert_eq!(roster.begin_probe(&node("a"), lease, t3), lease);
        assert!(!roster.get(&node("a")).unwrap().is_lost(t3 + loss, loss));
    }

    fn with_bytes(id: u64, state: RemoteState, bytes: u64) -> ReportedRange {
        let mut info = info(id, state);
        info.load.bytes = bytes;
        info
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_changes_only_what_it_lists_differently_and_sums_each_range_once() {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        roster.register(node("a"), "a:1".into(), t0);
        let id = |n| RangeId::new(n).unwrap();
        let first = vec![
            with_bytes(1, RemoteState::Active, 10),
            with_bytes(2, RemoteState::Active, 20),
            with_bytes(3, RemoteState::Inactive, 30),
        ];
        let mut changed = roster.probe_ok(&node("a"), t0, first, false, 1.0, |_| true);
        changed.sort_unstable();
        assert_eq!(changed, vec![id(1), id(2), id(3)], "all new");
        assert_eq!(roster.get(&node("a")).unwrap().reported_bytes(), 60);

        // The next report: 1 the same, 2 gone, 3 activated, 4 new, and 3
        // listed twice (the last one counts, once).
        let t1 = t0 + Duration::from_millis(500);
        let second = vec![
            with_bytes(1, RemoteState::Active, 11),
            with_bytes(3, RemoteState::Inactive, 1000),
            with_bytes(4, RemoteState::Preparing, 40),
            with_bytes(3, RemoteState::Active, 33),
        ];
        let mut changed = roster.probe_ok(&node("a"), t1, second, false, 1.0, |_| true);
        changed.sort_unstable();
        changed.dedup();
        assert_eq!(changed, vec![id(2), id(3), id(4)]);
        assert_eq!(roster.remote(&node("a"), id(1)), Some(RemoteState::Active));
        assert_eq!(
            roster.remote(&node("a"), id(2)),
            Some(RemoteState::NotFound)
        );
        assert_eq!(roster.remote(&node("a"), id(3)), Some(RemoteState::Active));
        assert_eq!(
            roster.remote(&node("a"), id(4)),
            Some(RemoteState::Preparing)
        );
        assert_eq!(
            roster.get(&node("a")).unwrap().reported_bytes(),
            11 + 33 + 40
        );

        // Nothing changed: nothing to look at again.
        let t2 = t1 + Duration::from_millis(500);
        let third = vec![
            with_bytes(1, RemoteState::Active, 11),
            with_bytes(3, RemoteState::Active, 33),
            with_bytes(4, RemoteState::Preparing, 40),
        ];
        assert!(
            roster
                .probe_ok(&node("a"), t2, third, false, 1.0, |_| true)
                .is_empty()
        );
        assert_eq!(
            roster.remote(&node("a"), id(2)),
            Some(RemoteState::NotFound)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlisted_copy_is_not_found_unless_the_node_said_something_of_it_since() {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        roster.register(node("a"), "a:1".into(), t0);
        let (r1, r2) = (RangeId::new(1).unwrap(), RangeId::new(2).unwrap());
        tokio::time::advance(Duration::from_millis(10)).await;
        roster.command_answered(&node("a"), r1, RemoteState::Active, Instant::now());
        roster.note_unlisted(&node("a"), r1, t0);
        roster.note_unlisted(&node("a"), r2, t0);
        assert_eq!(roster.remote(&node("a"), r1), Some(RemoteState::Active));
        assert_eq!(roster.remote(&node("a"), r2), Some(RemoteState::NotFound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_view_confirmed_not_found_goes_once_no_placement_needs_it_and_no_older_probe_brings_it_back()
     {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (moved, kept, gone) = (
            RangeId::new(1).unwrap(),
            RangeId::new(2).unwrap(),
            RangeId::new(3).unwrap(),
        );
        let placed = |range: RangeId| range == kept;
        roster.register(node("a"), "a:1".into(), t0);
        let all = || {
            vec![
                info(1, RemoteState::Active),
                info(2, RemoteState::Active),
                info(3, RemoteState::Active),
            ]
        };
        roster.probe_ok(&node("a"), t0, all(), false, 1.0, |_| true);
        // The moved range's Drop is answered at 20 ms; a probe sent at 10 ms,
        // before the node dropped it, still lists it when it arrives.
        roster.command_answered(&node("a"), moved, RemoteState::NotFound, ms(20));
        let stale = vec![info(1, RemoteState::Inactive), info(2, RemoteState::Active)];
        roster.probe_ok(&node("a"), ms(10), stale, false, 1.0, placed);
        assert_eq!(
            roster.remote(&node("a"), moved),
            Some(RemoteState::NotFound)
        );
        // The range the node stopped listing is NotFound first, whether placed or not.
        assert_eq!(roster.remote(&node("a"), gone), Some(RemoteState::NotFound));

        // The next probe lists none of the three: the views of the two ranges
        // no placement on the node needs go; the placed one stays NotFound.
        let changed = roster.probe_ok(&node("a"), ms(30), vec![], false, 1.0, placed);
        assert_eq!(changed, vec![kept]);
        assert_eq!(roster.remote(&node("a"), moved), None);
        assert_eq!(roster.remote(&node("a"), gone), None);
        assert_eq!(roster.remote(&node("a"), kept), Some(RemoteState::NotFound));
        roster.probe_ok(&node("a"), ms(40), vec![], false, 1.0, placed);
        assert_eq!(roster.remote(&node("a"), kept), Some(RemoteState::NotFound));
    }

    #[test]
    fn a_node_at_a_new_address_is_a_new_process_not_yet_heard_from() {
        let mut roster = Roster::new();
        let t0 = Instant::now();
        roster.register(node("a"), "a:1".into(), t0);
        roster.probe_ok(
            &node("a"),
            t0,
            vec![info(1, RemoteState::Active)],
            false,
            1.0,
            |_| true,
        );
        roster.register(node("a"), "a:1".into(), t0);
        assert!(
            roster.get(&node("a")).unwrap().last_ok.is_some(),
            "same address"
        );
        roster.register(node("a"), "a:2".into(), t0);
        let status = roster.get(&node("a")).unwrap();
        assert!(status.last_ok.is_none());
        assert!(status.ranges.is_empty());
    }
}
