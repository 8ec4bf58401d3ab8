//! A transport straight into rangelets living in the same process: the
//! controller's tests use it to run real node-side state machines (over
//! [`ranger_node_sdk::testing::ScriptedNode`]) with no sockets, under paused time,
//! and to cut nodes off as a network partition would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_node_sdk::{Command, CommandError, Node, Rangelet};
use ranger_proto::RangeId;

use super::{NodeTransport, ProbeAnswer};
use crate::orchestrator::{Answer, Call, CallError};

#[derive(Debug)]
struct Nodes<N> {
    by_addr: HashMap<String, Rangelet<N>>,
    unreachable: HashSet<String>,
    /// Requests that reach the node but whose replies are lost on the way back
    /// (a one-way partition): the node acts, the controller sees an error.
    lost_replies: HashSet<(String, Lost)>,
}

/// Which replies from a node are lost (see [`InProcessTransport::lose_replies`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lost {
    /// Replies to this command.
    Command(Command),
    /// Replies to probes (`Info`): the node still renews its lease on receipt.
    Probe,
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
                lost_replies: HashSet::new(),
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

    /// Delivers requests of the given kind to `addr` but loses their replies (or
    /// stops doing so): the node acts on them, the controller gets an error, as
    /// through a one-way partition or a connection reset after delivery.
    pub fn lose_replies(&self, addr: &str, which: Lost, lost: bool) {
        let mut nodes = self.lock();
        if lost {
            nodes.lost_replies.insert((addr.to_owned(), which));
        } else {
            nodes.lost_replies.remove(&(addr.to_owned(), which));
        }
    }

    fn reply_lost(&self, addr: &str, which: Lost) -> bool {
        self.lock().lost_replies.contains(&(addr.to_owned(), which))
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

fn call_error(e: CommandError) -> CallError {
    match e {
        CommandError::UnknownRange(_) => CallError::UnknownRange(e.to_string()),
        CommandError::WrongState { .. } => CallError::WrongState(e.to_string()),
        CommandError::ShuttingDown => CallError::Unreachable(e.to_string()),
        CommandError::MetaMismatch { .. }
        | CommandError::Persist { .. }
        | CommandError::StaleTerm { .. }
        | CommandError::PersistTerm { .. } => CallError::Other(e.to_string()),
    }
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
        let lost = Lost::Command(call.command());
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
            Ok(_) if self.reply_lost(addr, lost) => Err(CallError::Unreachable(format!(
                "connection to {addr} reset before the reply arrived"
            ))),
            Ok(result) => result.map_err(call_error),
        }
    }

    async fn probe(
        &self,
        addr: &str,
        term: u64,
        lease: Duration,
        _timeout: Duration,
    ) -> ProbeAnswer {
        let rangelet = self.rangelet(addr).map_err(|e| e.to_string())?;
        // Lease 0 grants nothing (the wire's `lease_millis = 0`); a probe from
        // an older term is refused and grants nothing either.
        let grant = (!lease.is_zero()).then_some(lease);
        let ranges = rangelet
            .info_in_term(term, grant)
            .await
            .map_err(|e| e.to_string())?;
        if self.reply_lost(addr, Lost::Probe) {
            return Err(format!("probe reply from {addr} lost"));
        }
        Ok((ranges, rangelet.wants_drain()))
    }
}
