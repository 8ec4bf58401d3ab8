//! The conformance suite for node transports: what every [`NodeTransport`] must
//! answer, whatever carries the messages. The orchestrator acts on these
//! answers (an `Unreachable` is retried with backoff, an `Invalid` waits for the
//! next probe, a callback failure counts against the node), so a transport that
//! answers differently makes the controller behave differently. Both of ours
//! (gRPC, in-process) run it, which is what lets tests over the in-process one
//! stand for production.
//!
//! A transport under test is wrapped in a [`TransportHarness`] that can serve
//! a rangelet and name an address where nothing listens; [`run_all`] then
//! drives real rangelets over [`ScriptedNode`]s through it.

use std::future::Future;
use std::time::Duration;

use ranger_node_sdk::RangeletConfig;
use ranger_node_sdk::testing::{Behaviour, ScriptedNode};
use ranger_proto::{Command, RangeId, RangeMeta, RemoteState, ReplicaGroup};

use crate::orchestrator::{Answer, Call, CallError};
use crate::transport::NodeTransport;

/// How the suite reaches nodes through the transport under test.
pub trait TransportHarness {
    type Transport: NodeTransport;

    /// The transport under test.
    fn transport(&self) -> &Self::Transport;

    /// Serves a new rangelet over `node` with `config` (in memory, no state)
    /// and returns the address the transport reaches it at.
    fn serve(&mut self, node: ScriptedNode, config: RangeletConfig)
    -> impl Future<Output = String>;

    /// An address where nothing listens.
    fn nowhere(&self) -> String;
}

/// The lease the suite grants: long enough that no check sees it lapse.
const LEASE: Duration = Duration::from_secs(30);
/// The timeout of every call but the one that checks timeouts.
const TIMEOUT: Duration = Duration::from_secs(5);
const TERM: u64 = 7;

fn first() -> RangeId {
    RangeId::FIRST
}

fn prepare() -> Call {
    Call::Prepare {
        meta: RangeMeta::whole(first()),
        parents: Vec::new(),
    }
}

async fn call<H: TransportHarness>(h: &H, addr: &str, call: Call) -> Answer {
    h.transport().call(addr, first(), call, TERM, TIMEOUT).await
}

async fn probe_state<H: TransportHarness>(h: &H, addr: &str) -> Option<RemoteState> {
    let report = h
        .transport()
        .probe(addr, TERM, LEASE, &[], TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("probe of {addr} failed: {e}"));
    report
        .ranges
        .iter()
        .find(|r| r.id == first())
        .map(|r| r.state)
}

fn state_of(answer: Answer, what: &str) -> RemoteState {
    match answer {
        Ok(outcome) => {
            assert_eq!(outcome.failure, None, "{what}: unexpected callback failure");
            outcome.state
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Runs every check, each against fresh nodes; panics naming the first that
/// fails.
pub async fn run_all<H: TransportHarness>(h: &mut H) {
    commands_walk_a_range_through_its_states(h).await;
    a_failed_callback_is_an_outcome_that_carries_its_message(h).await;
    activating_a_range_the_node_does_not_hold_is_invalid(h).await;
    a_command_or_probe_from_an_older_term_is_refused(h).await;
    a_stalled_callback_is_unreachable_once_the_timeout_passes(h).await;
    an_address_where_nothing_listens_is_unreachable(h).await;
    a_probe_carries_the_capacity_the_node_declares(h).await;
    a_probe_delivers_its_replica_groups_once_its_term_is_checked(h).await;
}

/// A replica group as a controller would send it.
fn group(range: RangeId, epoch: u64, primary: Option<&str>, members: &[&str]) -> ReplicaGroup {
    ReplicaGroup {
        range,
        epoch,
        primary: primary.map(str::to_owned),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    }
}

/// A probe's replica groups reach the storage system (`Node::replica_groups`)
/// as sent; a probe from an older term delivers none; a malformed group (its
/// primary not a member) refuses the whole probe before anything changes.
pub async fn a_probe_delivers_its_replica_groups_once_its_term_is_checked<H: TransportHarness>(
    h: &mut H,
) {
    let node = ScriptedNode::new();
    let addr = h.serve(node.clone(), RangeletConfig::default()).await;
    let sent = vec![
        group(RangeId::FIRST, 5, Some(&addr), &[&addr, "other:7000"]),
        group(RangeId::MAX, 6, None, &[&addr]),
    ];
    h.transport()
        .probe(&addr, TERM, LEASE, &sent, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("probe with groups: {e}"));
    assert_eq!(node.group_deliveries(), 1);
    for g in &sent {
        assert_eq!(
            node.received_group(g.range).as_ref(),
            Some(g),
            "delivered as sent"
        );
    }

    let newer = [group(RangeId::FIRST, 9, None, &[&addr])];
    let stale = h
        .transport()
        .probe(&addr, TERM - 1, LEASE, &newer, TIMEOUT)
        .await;
    assert!(stale.is_err(), "a probe from an older term: {stale:?}");
    let malformed = [group(RangeId::FIRST, 9, Some("other:7000"), &[&addr])];
    let refused = h
        .transport()
        .probe(&addr, TERM, LEASE, &malformed, TIMEOUT)
        .await;
    match refused {
        Err(message) => assert!(message.contains("not a member"), "says why: {message}"),
        Ok(report) => panic!("a malformed group was accepted: {report:?}"),
    }
    assert_eq!(node.group_deliveries(), 1, "neither delivered anything");
    assert_eq!(node.received_group(sent[0].range).as_ref(), Some(&sent[0]));

    // A probe with no group still tells the node so (an empty list): a copy
    // the controller no longer counts as a member learns it from the first
    // probe that reaches it (R1 nodes get empty lists and ignore them).
    h.transport()
        .probe(&addr, TERM, LEASE, &[], TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("probe without groups: {e}"));
    assert_eq!(node.group_deliveries(), 2);
}

/// The balancer divides a node's load by the capacity it declares; a node
/// that declares none counts as 1.
pub async fn a_probe_carries_the_capacity_the_node_declares<H: TransportHarness>(h: &mut H) {
    let plain = h
        .serve(ScriptedNode::new(), RangeletConfig::default())
        .await;
    let big = RangeletConfig {
        capacity: 2.5,
        ..RangeletConfig::default()
    };
    let big = h.serve(ScriptedNode::new(), big).await;
    for (addr, capacity) in [(plain, 1.0), (big, 2.5)] {
        let report = h
            .transport()
            .probe(&addr, TERM, LEASE, &[], TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("probe of {addr} failed: {e}"));
        assert_eq!(report.capacity, capacity, "capacity of {addr}");
        assert!(!report.wants_drain);
    }
}

/// Prepare, Activate, Deactivate and Drop each answer the state they reached,
/// and a probe in between reports the same.
pub async fn commands_walk_a_range_through_its_states<H: TransportHarness>(h: &mut H) {
    let addr = h
        .serve(ScriptedNode::new(), RangeletConfig::default())
        .await;
    assert_eq!(
        probe_state(h, &addr).await,
        None,
        "a new node holds nothing"
    );
    let steps = [
        (
            prepare(),
            RemoteState::Inactive,
            Some(RemoteState::Inactive),
        ),
        (
            Call::Activate,
            RemoteState::Active,
            Some(RemoteState::Active),
        ),
        (
            Call::Deactivate,
            RemoteState::Inactive,
            Some(RemoteState::Inactive),
        ),
        (Call::Drop { force: false }, RemoteState::NotFound, None),
    ];
    for (command, answered, probed) in steps {
        let what = format!("{:?}", command.command());
        assert_eq!(state_of(call(h, &addr, command).await, &what), answered);
        assert_eq!(probe_state(h, &addr).await, probed, "probe after {what}");
    }
}

/// A callback that fails is an answer, not a transport error: the state the
/// range stayed in and the storage system's message.
pub async fn a_failed_callback_is_an_outcome_that_carries_its_message<H: TransportHarness>(
    h: &mut H,
) {
    let node = ScriptedNode::new();
    node.on(Command::Prepare, Behaviour::Fail("disk full".into()));
    let addr = h.serve(node, RangeletConfig::default()).await;
    match call(h, &addr, prepare()).await {
        Ok(outcome) => {
            let failure = outcome.failure.unwrap_or_default();
            assert!(failure.contains("disk full"), "message lost: {failure:?}");
            assert_ne!(outcome.state, RemoteState::Inactive, "a failed prepare");
        }
        Err(e) => panic!("a failed callback must be an outcome, got {e}"),
    }
}

/// PROTOCOL.md: Activate of a range the node does not hold is INVALID_ARGUMENT,
/// which (the reference answers it for a wrong state too) proves nothing.
pub async fn activating_a_range_the_node_does_not_hold_is_invalid<H: TransportHarness>(h: &mut H) {
    let addr = h
        .serve(ScriptedNode::new(), RangeletConfig::default())
        .await;
    h.transport()
        .probe(&addr, TERM, LEASE, &[], TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("probe: {e}"));
    for command in [Call::Activate, Call::Deactivate] {
        let answer = call(h, &addr, command.clone()).await;
        assert!(
            matches!(answer, Err(CallError::Invalid(_))),
            "{:?} of an unknown range: {answer:?}",
            command.command()
        );
    }
}

/// A node that has seen a newer controller term refuses an older one's
/// commands (as a wrong state) and probes (SCENARIOS.md #43).
pub async fn a_command_or_probe_from_an_older_term_is_refused<H: TransportHarness>(h: &mut H) {
    let addr = h
        .serve(ScriptedNode::new(), RangeletConfig::default())
        .await;
    state_of(
        call(h, &addr, prepare()).await,
        "prepare in the current term",
    );
    let stale = h
        .transport()
        .call(
            &addr,
            first(),
            Call::Drop { force: false },
            TERM - 1,
            TIMEOUT,
        )
        .await;
    match stale {
        Err(CallError::WrongState(message)) => {
            assert!(message.contains("stale"), "says why: {message}")
        }
        other => panic!("a command from an older term: {other:?}"),
    }
    let probe = h
        .transport()
        .probe(&addr, TERM - 1, LEASE, &[], TIMEOUT)
        .await;
    assert!(probe.is_err(), "a probe from an older term: {probe:?}");
    assert_eq!(
        probe_state(h, &addr).await,
        Some(RemoteState::Inactive),
        "the refused drop changed nothing"
    );
}

/// A node that never answers is unreachable once the caller's timeout passes,
/// not later (the orchestrator's deadlines count on it).
pub async fn a_stalled_callback_is_unreachable_once_the_timeout_passes<H: TransportHarness>(
    h: &mut H,
) {
    let node = ScriptedNode::new();
    node.on(Command::Prepare, Behaviour::Stall);
    let addr = h.serve(node, RangeletConfig::default()).await;
    let timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let answer = h
        .transport()
        .call(&addr, first(), prepare(), TERM, timeout)
        .await;
    let took = started.elapsed();
    assert!(
        matches!(answer, Err(CallError::Unreachable(_))),
        "a stalled callback: {answer:?}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "answered after {took:?} for a {timeout:?} timeout"
    );
}

/// Nothing listening: commands are unreachable and probes fail.
pub async fn an_address_where_nothing_listens_is_unreachable<H: TransportHarness>(h: &mut H) {
    let addr = h.nowhere();
    let answer = call(h, &addr, prepare()).await;
    assert!(
        matches!(answer, Err(CallError::Unreachable(_))),
        "a command to {addr}: {answer:?}"
    );
    let probe = h.transport().probe(&addr, TERM, LEASE, &[], TIMEOUT).await;
    assert!(probe.is_err(), "a probe to {addr}: {probe:?}");
}
