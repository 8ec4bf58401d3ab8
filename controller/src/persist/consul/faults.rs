//! The one way tests break a save: a [`FaultHook`] that a save consults at a few
//! named [`FaultPoint`]s, each answering with the [`Fault`] armed there, if any.
//!
//! The atomicity argument of the two-phase save (module docs of
//! [`consul`](super), DESIGN.md §4 invariant 4) is about what a crash or a lost
//! answer at each phase boundary leaves behind, so those boundaries are where a
//! test must be able to stop a save against a real Consul. Naming them here
//! keeps the save's code free of test fields: it asks "is a fault armed at this
//! point?" and nothing else.
//!
//! The hook exists only with `cfg(test)` or the `testing` feature. A persister
//! that can be told to fail its saves has no place in `rangerd`; the points stay
//! in the code either way (the question then always answers "no"), so the save
//! that tests exercise is the save that ships.

#[cfg(any(test, feature = "testing"))]
use std::sync::{Mutex, PoisonError};

/// Where a save asks the hook for a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
pub enum FaultPoint {
    /// Once per save, while sizing its transactions.
    Batching,
    /// Every record of a two-phase save is staged; the commit is not sent.
    BeforeCommit,
    /// The commit (the counters write) is applied; nothing is settled yet.
    BeforeSettle,
    /// Any transaction, just before it is sent.
    Send,
}

/// What a save does at a [`FaultPoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
pub enum Fault {
    /// At [`FaultPoint::Batching`]: one record per transaction, so that a few
    /// records take a two-phase save (which otherwise needs more than 64).
    OneRecordPerTransaction,
    /// At [`FaultPoint::BeforeCommit`] or [`FaultPoint::BeforeSettle`]: the save
    /// stops there with a retryable backend error, as if Consul became
    /// unreachable or the controller died at that instant.
    Stop,
    /// At [`FaultPoint::Send`]: Consul applies the transaction and its answer is
    /// lost, so the persister cannot know it was applied.
    LoseAnswerAfterApplying,
    /// At [`FaultPoint::Send`]: the transaction never reaches Consul and the
    /// persister gets no answer, so it cannot know it was not applied.
    LoseAnswerBeforeSending,
}

/// Faults armed by a test, each firing once. Clones of a persister share one
/// hook, so a test may arm it through any handle.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FaultHook {
    armed: Mutex<Vec<(FaultPoint, Fault)>>,
}

#[cfg(any(test, feature = "testing"))]
impl FaultHook {
    /// Arms `fault` for the next time a save reaches `point`. Faults armed at
    /// one point fire in the order they were armed, one per visit.
    pub fn arm(&self, point: FaultPoint, fault: Fault) {
        self.lock().push((point, fault));
    }

    /// Disarms everything not yet fired.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Takes the first fault armed at `point`.
    pub(super) fn fire(&self, point: FaultPoint) -> Option<Fault> {
        let mut armed = self.lock();
        let at = armed.iter().position(|(p, _)| *p == point)?;
        let (_, fault) = armed.remove(at);
        tracing::debug!(?point, ?fault, "injected fault fires");
        Some(fault)
    }

    /// Every change is one push or remove under the lock, so the list is whole
    /// even if a holder panicked: poisoning is safe to ignore.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(FaultPoint, Fault)>> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fires_once_and_only_at_its_point() {
        let hook = FaultHook::default();
        hook.arm(FaultPoint::BeforeCommit, Fault::Stop);
        hook.arm(FaultPoint::Send, Fault::LoseAnswerBeforeSending);
        hook.arm(FaultPoint::Send, Fault::LoseAnswerAfterApplying);
        assert_eq!(hook.fire(FaultPoint::BeforeSettle), None);
        assert_eq!(hook.fire(FaultPoint::BeforeCommit), Some(Fault::Stop));
        assert_eq!(hook.fire(FaultPoint::BeforeCommit), None);
        assert_eq!(
            hook.fire(FaultPoint::Send),
            Some(Fault::LoseAnswerBeforeSending)
        );
        hook.clear();
        assert_eq!(hook.fire(FaultPoint::Send), None);
    }
}
