//! A transport straight into rangelets living in the same process: the
//! controller's tests use it to run real node-side state machines (over
//! [`ranger_node_sdk::testing::ScriptedNode`]) with no sockets, under paused time,
//! and to cut nodes off as a network partition would.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_node_sdk::{CommandError, Node, Rangelet};
use ranger_proto::RangeId;

use super::{NodeTransport, ProbeAnswer};
use crate::orchestrator::{Answer, Call, CallError};

#[derive(Debug)]
struct Nodes<N> {
    by_addr: HashMap<String, Rangelet<N>>,
    unreachable: HashSet<String>,
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
        CommandError::MetaMismatch { .. } | CommandError::Persist { .. } => {
            CallError::Other(e.to_string())
        }
    }
}

impl<N: Node> NodeTransport for InProcessTransport<N> {
    async fn call(&self, addr: &str, range: RangeId, call: Call, timeout: Duration) -> Answer {
        let rangelet = self.rangelet(addr)?;
        let work = async {
            match call {
                Call::Prepare { meta, parents } => rangelet.prepare(meta, parents).await,
                Call::Activate => rangelet.activate(range).await,
                Call::Deactivate => rangelet.deactivate(range).await,
                Call::Drop { force } => rangelet.drop_range(range, force).await,
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Err(_) => Err(CallError::Unreachable(format!(
                "no answer within {timeout:?}"
            ))),
            Ok(result) => result.map_err(call_error),
        }
    }

    async fn probe(&self, addr: &str, lease: Duration, _timeout: Duration) -> ProbeAnswer {
        let rangelet = self.rangelet(addr).map_err(|e| e.to_string())?;
        let ranges = rangelet.info(Some(lease)).await;
        Ok((ranges, rangelet.wants_drain()))
    }
}
