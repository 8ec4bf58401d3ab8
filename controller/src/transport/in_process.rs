//! A transport straight into rangelets living in the same process: the
//! controller's tests use it to run real node-side state machines (over
//! [`ranger_node_sdk::testing::ScriptedNode`]) with no sockets, under paused time,
//! and to break the network between the controller and a node the ways a real
//! one breaks (as TiKV's cluster simulator does with its filters): refuse
//! connections, black-hole requests, lose replies after the node acted, delay
//! delivery; for every message, one command kind, or probes only.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_node_sdk::{Command, CommandError, Node, Rangelet};
use ranger_proto::pb::ranger as pb;
use ranger_proto::{RangeId, ReplicaGroup, ReportedRange};

use super::{NodeReport, NodeTransport, ProbeAnswer};
use crate::orchestrator::{Answer, Call, CallError};

#[derive(Debug)]
struct Nodes<N> {
    by_addr: HashMap<String, Rangelet<N>>,
    /// Addresses whose connections are refused (the node's side is cut off).
    unreachable: HashSet<String>,
    /// The faults in force, per address; several may apply to one message.
    faults: Vec<(String, Lost, Fault)>,
}

/// Which messages to a node a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lost {
    /// Every command and probe.
    All,
    /// Requests of this command.
    Command(Command),
    /// Probes (`Info`): a probe that reaches the node renews its lease.
    Probe,
}

impl Lost {
    fn matches(self, message: Lost) -> bool {
        self == Lost::All || self == message
    }
}

/// What happens to a message a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The request never arrives and nothing answers: the caller waits out its
    /// timeout (a black hole, a frozen peer).
    DropRequest,
    /// The request arrives and the node acts on it, but the reply is lost: the
    /// caller sees an error (a one-way partition, a reset after delivery).
    DropReply,
    /// The request arrives this much later (counted in the caller's timeout).
    Delay(Duration),
}

/// Rangelets by address. Clones share the same nodes.
#[derive(Debug)]
pub struct InProcessTransport<N> {
    nodes: Arc<Mutex<Nodes<N>>>,
}

impl<N> Clone for InProcessTransport<N> {
    fn clone(&self) -> Self {
        InProcessTransport {
            nodes: Arc::clone(&self.nodes),
        }
    }
}

impl<N: Node> Default for InProcessTransport<N> {
    fn default() -> Self {
        InProcessTransport {
            nodes: Arc::new(Mutex::new(Nodes {
                by_addr: HashMap::new(),
                unreachable: HashSet::new(),
                faults: Vec::new(),
            })),
        }
    }
}

impl<N: Node> InProcessTransport<N> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes<N>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves `rangelet` at `addr` (replacing whatever served there: a restart).
    pub fn attach(&self, addr: impl Into<String>, rangelet: Rangelet<N>) {
        self.lock().by_addr.insert(addr.into(), rangelet);
    }

    /// Stops serving `addr` (the node process is gone).
    pub fn detach(&self, addr: &str) {
        self.lock().by_addr.remove(addr);
    }

    /// Cuts `addr` off (or reconnects it): calls fail as if the network dropped them.
    pub fn set_reachable(&self, addr: &str, reachable: bool) {
        let mut nodes = self.lock();
        if reachable {
            nodes.unreachable.remove(addr);
        } else {
            nodes.unreachable.insert(addr.to_owned());
        }
    }

    /// Applies `fault` to the messages to `addr` that `which` names, until it is
    /// removed. Faults compose: a message meets every one that applies to it.
    pub fn add_fault(&self, addr: &str, which: Lost, fault: Fault) {
        let mut nodes = self.lock();
        let entry = (addr.to_owned(), which, fault);
        if !nodes.faults.contains(&entry) {
            nodes.faults.push(entry);
        }
    }

    /// Removes a fault added with [`InProcessTransport::add_fault`].
    pub fn remove_fault(&self, addr: &str, which: Lost, fault: Fault) {
        self.lock()
            .faults
            .retain(|(a, w, f)| !(a == addr && *w == which && *f == fault));
    }

    /// Removes every fault on `addr` (and reconnects it).
    pub fn heal(&self, addr: &str) {
        let mut nodes = self.lock();
        nodes.faults.retain(|(a, _, _)| a != addr);
        nodes.unreachable.remove(addr);
    }

    /// Delivers requests of the given kind to `addr` but loses their replies (or
    /// stops doing so): [`Fault::DropReply`].
    pub fn lose_replies(&self, addr: &str, which: Lost, lost: bool) {
        if lost {
            self.add_fault(addr, which, Fault::DropReply);
        } else {
            self.remove_fault(addr, which, Fault::DropReply);
        }
    }

    /// The faults that apply to one message.
    fn faults_for(&self, addr: &str, message: Lost) -> Vec<Fault> {
        self.lock()
            .faults
            .iter()
            .filter(|(a, which, _)| a == addr && which.matches(message))
            .map(|(_, _, fault)| *fault)
            .collect()
    }

    /// Carries a request through the faults that apply to it: waits out delays
    /// and black holes; `Err` if it never arrives.
    async fn deliver(&self, faults: &[Fault], timeout: Duration) -> Result<(), String> {
        let delay: Duration = faults
            .iter()
            .filter_map(|f| match f {
                Fault::Delay(d) => Some(*d),
                _ => None,
            })
            .sum();
        if faults.contains(&Fault::DropRequest) || delay >= timeout {
            tokio::time::sleep(timeout).await;
            return Err(format!("no answer within {timeout:?}"));
        }
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn rangelet(&self, addr: &str) -> Result<Rangelet<N>, CallError> {
        let nodes = self.lock();
        if nodes.unreachable.contains(addr) {
            return Err(CallError::Unreachable(format!("{addr} is partitioned")));
        }
        nodes
            .by_addr
            .get(addr)
            .cloned()
            .ok_or_else(|| CallError::Unreachable(format!("nothing listens at {addr}")))
    }
}

/// What a gRPC caller would see for this refusal: the node SDK's service turns
/// it into a status, and the gRPC transport turns the status into a
/// [`CallError`]. Going through both keeps the two transports answering alike
/// (the transport conformance suite checks it), so tests over this transport
/// exercise the orchestrator's production error paths.
fn call_error(e: CommandError, command: Command) -> CallError {
    super::grpc::call_error(tonic::Status::from(e), Some(command))
}

/// The groups as a node behind gRPC receives them: through the wire's
/// message and its checks (a primary must be a member; no empty address), so
/// a malformed group refuses the probe whole, before anything changes, with
/// the error a gRPC caller would see (the node's INVALID_ARGUMENT).
fn groups_as_received(groups: &[ReplicaGroup]) -> Result<Vec<ReplicaGroup>, String> {
    groups
        .iter()
        .map(|g| ReplicaGroup::try_from(pb::ReplicaGroup::from(g)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            super::grpc::call_error(tonic::Status::invalid_argument(e.to_string()), None)
                .to_string()
        })
}

impl<N: Node> NodeTransport for InProcessTransport<N> {
    async fn call(
        &self,
        addr: &str,
        range: RangeId,
        call: Call,
        term: u64,
        timeout: Duration,
    ) -> Answer {
        let rangelet = self.rangelet(addr)?;
        let command = call.command();
        let faults = self.faults_for(addr, Lost::Command(command));
        let started = tokio::time::Instant::now();
        self.deliver(&faults, timeout)
            .await
            .map_err(CallError::Unreachable)?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let work = async {
            match call {
                // As the gRPC service does: each checks the term (a command
                // from an older term is refused) under the command's own lock.
                Call::Prepare { meta, parents } => {
                    rangelet.prepare_in_term(term, meta, parents).await
                }
                Call::Activate => rangelet.activate_in_term(term, range).await,
                Call::Deactivate => rangelet.deactivate_in_term(term, range).await,
                Call::Drop { force } => rangelet.drop_range_in_term(term, range, force).await,
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Err(_) => Err(CallError::Unreachable(format!(
                "no answer within {timeout:?}"
            ))),
            Ok(_) if faults.contains(&Fault::DropReply) => Err(CallError::Unreachable(format!(
                "connection to {addr} reset before the reply arrived"
            ))),
            Ok(result) => result.map_err(|e| call_error(e, command)),
        }
    }

    async fn probe(
        &self,
        addr: &str,
        term: u64,
        lease: Duration,
        groups: &[ReplicaGroup],
        timeout: Duration,
    ) -> ProbeAnswer {
        let rangelet = self.rangelet(addr).map_err(|e| e.to_string())?;
        let faults = self.faults_for(addr, Lost::Probe);
        self.deliver(&faults, timeout).await?;
        let groups = groups_as_received(groups)?;
        // Lease 0 grants nothing (the wire's `lease_millis = 0`); a probe from
        // an older term is refused and grants nothing either.
        let grant = (!lease.is_zero()).then_some(lease);
        // As the gRPC service does: the groups once the term is checked,
        // before the lease.
        let ranges = rangelet
            .probe(term, grant, groups)
            .await
            .map_err(|e| e.to_string())?;
        if faults.contains(&Fault::DropReply) {
            return Err(format!("probe reply from {addr} lost"));
        }
        Ok(NodeReport {
            ranges: ranges.into_iter().map(ReportedRange::from).collect(),
            wants_drain: rangelet.wants_drain(),
            capacity: rangelet.capacity(),
        })
    }
}

#[cfg(test)]
mod tests {
    // Tests fail by panicking: unwrapping is the point.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ranger_node_sdk::testing::ScriptedNode;
    use ranger_node_sdk::{MemoryStateStore, RangeletConfig};
    use ranger_proto::{RangeMeta, RemoteState};

    const TIMEOUT: Duration = Duration::from_secs(2);

    async fn one_node() -> (InProcessTransport<ScriptedNode>, Rangelet<ScriptedNode>) {
        let transport = InProcessTransport::new();
        let rangelet = Rangelet::open(
            ScriptedNode::new(),
            MemoryStateStore::new(),
            RangeletConfig::default(),
        )
        .await
        .unwrap();
        transport.attach("n:1", rangelet.clone());
        (transport, rangelet)
    }

    fn prepare() -> Call {
        Call::Prepare {
            meta: RangeMeta::whole(RangeId::FIRST),
            parents: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_never_arrives_and_the_caller_waits_out_its_timeout() {
        let (transport, rangelet) = one_node().await;
        transport.add_fault("n:1", Lost::Command(Command::Prepare), Fault::DropRequest);
        let started = tokio::time::Instant::now();
        let answer = transport
            .call("n:1", RangeId::FIRST, prepare(), 0, TIMEOUT)
            .await;
        assert!(
            matches!(answer, Err(CallError::Unreachable(_))),
            "{answer:?}"
        );
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(rangelet.state(RangeId::FIRST), RemoteState::NotFound);
        // Probes are other traffic: untouched.
        assert!(
            transport
                .probe("n:1", 0, Duration::ZERO, &[], TIMEOUT)
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_reply_means_the_node_acted_but_the_caller_sees_an_error() {
        let (transport, rangelet) = one_node().await;
        transport.lose_replies("n:1", Lost::All, true);
        let answer = transport
            .call("n:1", RangeId::FIRST, prepare(), 0, TIMEOUT)
            .await;
        assert!(
            matches!(answer, Err(CallError::Unreachable(_))),
            "{answer:?}"
        );
        assert_eq!(rangelet.state(RangeId::FIRST), RemoteState::Inactive);
        assert!(
            transport
                .probe("n:1", 0, Duration::ZERO, &[], TIMEOUT)
                .await
                .is_err()
        );
        transport.heal("n:1");
        assert!(
            transport
                .probe("n:1", 0, Duration::ZERO, &[], TIMEOUT)
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delays_add_up_and_count_against_the_callers_timeout() {
        let (transport, rangelet) = one_node().await;
        let second = Duration::from_secs(1);
        transport.add_fault("n:1", Lost::All, Fault::Delay(second / 2));
        transport.add_fault(
            "n:1",
            Lost::Command(Command::Prepare),
            Fault::Delay(second / 4),
        );
        let started = tokio::time::Instant::now();
        let answer = transport
            .call("n:1", RangeId::FIRST, prepare(), 0, TIMEOUT)
            .await;
        assert_eq!(answer.unwrap().state, RemoteState::Inactive);
        assert_eq!(started.elapsed(), second * 3 / 4);
        // A delay as long as the timeout: the request does not arrive in time.
        transport.add_fault(
            "n:1",
            Lost::Command(Command::Activate),
            Fault::Delay(TIMEOUT),
        );
        let answer = transport
            .call("n:1", RangeId::FIRST, Call::Activate, 0, TIMEOUT)
            .await;
        assert!(
            matches!(answer, Err(CallError::Unreachable(_))),
            "{answer:?}"
        );
        assert_eq!(rangelet.state(RangeId::FIRST), RemoteState::Inactive);
    }
}
