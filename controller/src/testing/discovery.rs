//! The conformance suite every [`Discovery`] must pass (DESIGN.md §9: every
//! pluggable part has one public suite that every implementation runs).
//!
//! The runtime trusts discovery's [`Membership`] literally: an id it lists is a
//! node to probe and place ranges on, at exactly the address given, and an id it
//! drops is a node whose ranges will be recovered elsewhere once its lease runs
//! out (DESIGN.md §6). So a backend must publish its nodes with their ids and
//! addresses exact, follow what its source says (joins, moves, leaves) within a
//! bounded time, never publish an entry its source never held, and not wake the
//! runtime with a "change" that changes nothing.
//!
//! To run it, implement [`Harness`] for a set-up of the backend with at least
//! two nodes, and [`DynamicHarness`] too if the backend's node set changes while
//! it runs (a static list does not), then call each check with a fresh harness
//! from a test:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_discovery_lists_exactly_its_nodes() {
//!     ranger_controller::testing::discovery::lists_exactly_its_nodes(MyHarness::start().await).await;
//! }
//! ```
//!
//! Checks are `pub async fn`s that panic, as a test does, on the first broken
//! rule, saying what was expected and what was published.

use std::future::Future;
use std::time::Duration;

use ranger_proto::NodeId;
use tokio::sync::watch;

use crate::discovery::{Discovery, Membership};

/// A backend set up with a known node set, for the checks that every backend
/// must pass.
pub trait Harness {
    /// The backend under test.
    type Discovery: Discovery;

    /// The backend, as the runtime would be given it.
    fn discovery(&self) -> &Self::Discovery;

    /// The nodes the harness made known to the backend, with the exact id and
    /// address each must be listed under. At least two, so that a backend
    /// listing only one node, or mixing up two nodes' addresses, is caught.
    fn expected(&self) -> Membership;

    /// How long the backend may take to reflect what its source says: a
    /// registry reflects it at once, Consul after a health check. Every wait of
    /// the suite is bounded by it, so a backend that never catches up fails
    /// rather than hangs.
    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// Does what the source does while no node changes (nodes renewing their
    /// registrations, say), so that the suite can check that it is not taken
    /// for a change. Nothing, for a source that does nothing meanwhile.
    fn renew(&mut self) -> impl Future<Output = ()> {
        async {}
    }
}

/// A backend whose node set changes while it runs, and the means to change it
/// the way the backend's real source would (a node registering, re-registering
/// at another address, leaving).
pub trait DynamicHarness: Harness {
    /// Makes a new node known; gives the id and address it must be listed
    /// under. The id must be new.
    fn join(&mut self) -> impl Future<Output = (NodeId, String)>;

    /// Makes the known node `id` known at another address; gives the address.
    fn move_node(&mut self, id: &NodeId) -> impl Future<Output = String>;

    /// Makes the known node `id` leave, as a node shutting down cleanly does.
    fn leave(&mut self, id: &NodeId) -> impl Future<Output = ()>;
}

/// What a subscriber saw: every set published, in order, so that a check can
/// say what was wrong with each.
struct Follower {
    rx: watch::Receiver<Membership>,
    last: Option<Membership>,
    patience: Duration,
}

impl Follower {
    fn new<H: Harness>(harness: &H) -> Self {
        Follower {
            rx: harness.discovery().membership(),
            last: None,
            patience: harness.patience(),
        }
    }

    /// Waits until the published set is `want`, checking every set published
    /// meanwhile: each must hold only entries of `allowed` (id and address),
    /// and each notification must bring a different set.
    async fn wait_for(&mut self, what: &str, want: &Membership, allowed: &[&Membership]) {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut notified = false;
        loop {
            let current = self.rx.borrow_and_update().clone();
            if notified && self.last.as_ref() == Some(&current) {
                panic!(
                    "while waiting until {what}: a change was announced that changed nothing \
                     (the set stayed {current:?}); the runtime would redo its work for nothing"
                );
            }
            for (id, addr) in &current {
                assert!(
                    allowed.iter().any(|set| set.get(id) == Some(addr)),
                    "while waiting until {what}: published {id} at {addr:?}, which the source \
                     never held (published set {current:?}, expected {want:?})"
                );
            }
            self.last = Some(current.clone());
            if current == *want {
                return;
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => notified = true,
                Ok(Err(_)) => panic!(
                    "while waiting until {what}: the membership channel closed while the \
                     discovery was alive (last set {current:?})"
                ),
                Err(_) => panic!(
                    "timed out after {:?} waiting until {what}: expected {want:?}, last published \
                     {current:?}",
                    self.patience
                ),
            }
        }
    }

    /// Waits until the set is `initial`, which may be reached from an empty
    /// set (a backend filling at its source's first answer).
    async fn caught_up(&mut self, initial: &Membership) {
        self.wait_for("it lists the harness's nodes", initial, &[initial])
            .await;
    }
}

fn expected_of<H: Harness>(harness: &H) -> Membership {
    let expected = harness.expected();
    assert!(
        expected.len() >= 2,
        "the harness must set up at least two nodes, so that the checks can tell them apart \
         (it set up {expected:?})"
    );
    expected
}

/// The backend lists exactly the nodes its source holds, ids and addresses as
/// given, and every subscriber sees that same set, a late one at once.
pub async fn lists_exactly_its_nodes<H: Harness>(harness: H) {
    let expected = expected_of(&harness);
    let mut first = Follower::new(&harness);
    first.caught_up(&expected).await;
    let mut second = Follower::new(&harness);
    second.caught_up(&expected).await;
    assert_eq!(
        *harness.discovery().membership().borrow(),
        expected,
        "a subscriber arriving now sees the current set, without waiting"
    );
}

/// Once caught up, the backend announces nothing while its source only renews
/// ([`Harness::renew`]): each announcement makes the runtime diff the set and
/// probe, so a backend that republishes the same set (on every renewal or
/// poll, say) costs every controller work for nothing.
pub async fn renewals_announce_nothing<H: Harness>(mut harness: H) {
    let expected = expected_of(&harness);
    let mut follower = Follower::new(&harness);
    follower.caught_up(&expected).await;
    harness.renew().await;
    let quiet = harness.patience().min(Duration::from_secs(2));
    match tokio::time::timeout(quiet, follower.rx.changed()).await {
        Err(_) => {}
        Ok(Ok(())) => panic!(
            "the source only renewed, yet the backend announced {:?} (was {expected:?})",
            *follower.rx.borrow()
        ),
        Ok(Err(_)) => panic!("the membership channel closed while the discovery was alive"),
    }
}

/// A node that joins is listed under the id and address it joined with, and
/// nothing else changes; a subscriber arriving afterwards sees it at once.
pub async fn a_joining_node_is_listed<H: DynamicHarness>(mut harness: H) {
    let before = expected_of(&harness);
    let mut follower = Follower::new(&harness);
    follower.caught_up(&before).await;
    let (id, addr) = harness.join().await;
    assert!(
        !before.contains_key(&id),
        "the harness must join a new node; {id} is already known"
    );
    let mut after = before.clone();
    after.insert(id.clone(), addr.clone());
    follower
        .wait_for(
            &format!("{id} at {addr} is listed"),
            &after,
            &[&before, &after],
        )
        .await;
    assert_eq!(
        *harness.discovery().membership().borrow(),
        after,
        "a subscriber arriving now sees the joined node, without waiting"
    );
}

/// A node known at a new address is listed at the new address, under the same
/// id: commands sent to the old address would go to whatever listens there now.
pub async fn a_moved_node_is_listed_at_its_new_address<H: DynamicHarness>(mut harness: H) {
    let before = expected_of(&harness);
    let mut follower = Follower::new(&harness);
    follower.caught_up(&before).await;
    let (id, old) = before
        .iter()
        .next()
        .map(|(id, addr)| (id.clone(), addr.clone()))
        .expect("the harness set up nodes");
    let new = harness.move_node(&id).await;
    assert_ne!(new, old, "the harness must move {id} to another address");
    let mut after = before.clone();
    after.insert(id.clone(), new.clone());
    // The backend may drop the node while it re-registers (Consul checks the
    // new address before listing it), but never lists an address it was not
    // given.
    let mut without = before.clone();
    without.remove(&id);
    follower
        .wait_for(
            &format!("{id} is listed at {new} (was {old})"),
            &after,
            &[&before, &without, &after],
        )
        .await;
}

/// A node that leaves is no longer listed, and the others stay as they were:
/// the runtime starts recovering the ranges of a node discovery drops.
pub async fn a_leaving_node_is_dropped<H: DynamicHarness>(mut harness: H) {
    let before = expected_of(&harness);
    let mut follower = Follower::new(&harness);
    follower.caught_up(&before).await;
    let id = before
        .keys()
        .next_back()
        .cloned()
        .expect("the harness set up nodes");
    harness.leave(&id).await;
    let mut after = before.clone();
    after.remove(&id);
    follower
        .wait_for(&format!("{id} is dropped"), &after, &[&before, &after])
        .await;
}
