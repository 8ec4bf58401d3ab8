//! Test support for the SDK's users.
//!
//! [`ScriptedNode`] is a storage system for tests: every callback can be scripted
//! to succeed, fail, take a while, or never finish, per command and per range, and
//! every call is recorded, as are the replica groups probes deliver. The
//! controller's tests run real rangelets over it, so they exercise the same state
//! machine as production nodes.
//!
//! [`StateStoreSuite`] checks a [`crate::StateStore`] against the contract the
//! rangelet relies on, so that a storage system keeping its range states in its own
//! database can prove its store from its own tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_proto::{LoadInfo, Parent, RangeId, RangeMeta, ReplicaGroup};

use crate::node::{CallbackError, Node};
use crate::rangelet::Command;
use crate::state_store::lock;

mod state_store;

pub use state_store::{
    Check, CheckFailure, Durability, NonConformance, StateStoreSuite, StoreFactory, SuiteReport,
};

/// What one callback does when called.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Succeeds at once.
    Succeed,
    /// Fails at once with this message.
    Fail(String),
    /// Waits, then succeeds.
    SucceedAfter(Duration),
    /// Waits, then fails.
    FailAfter(Duration, String),
    /// Never completes (until the future is dropped).
    Stall,
}

/// One recorded callback call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub command: Command,
    pub range: RangeId,
    /// For Prepare: the parents it was given.
    pub parents: Vec<Parent>,
}

/// A log shared by several scripted nodes, so a test can check the order of
/// callbacks across nodes (`P(b,2) D(a,1) A(b,2) X(a,1)`).
#[derive(Debug, Clone, Default)]
pub struct CallLog {
    entries: Arc<Mutex<Vec<(String, Command, RangeId)>>>,
}

impl CallLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far as `P(node,range)`, `A(..)`, `D(..)`, `X(..)` (Drop).
    pub fn render(&self) -> Vec<String> {
        lock(&self.entries)
            .iter()
            .map(|(node, command, range)| {
                let letter = match command {
                    Command::Prepare => 'P',
                    Command::Activate => 'A',
                    Command::Deactivate => 'D',
                    Command::Drop => 'X',
                };
                format!("{letter}({node},{range})")
            })
            .collect()
    }

    /// Forgets the calls so far (e.g. after a test's setup).
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    fn push(&self, node: &str, command: Command, range: RangeId) {
        lock(&self.entries).push((node.to_owned(), command, range));
    }
}

#[derive(Debug, Default)]
struct Script {
    /// Behaviour per (command, range); `None` as the range means any range.
    rules: HashMap<(Command, Option<RangeId>), Behaviour>,
    calls: Vec<Call>,
    loads: HashMap<RangeId, LoadInfo>,
    /// Per range, the group the latest delivery carried (whatever its epoch:
    /// tests check what the controller sent, not what a node would keep).
    groups: HashMap<RangeId, ReplicaGroup>,
    /// How many times [`Node::replica_groups`] was called.
    group_deliveries: usize,
}

/// A scriptable [`Node`]. Clones share the script, so a test keeps one handle to
/// steer a node that a rangelet owns.
#[derive(Debug, Clone, Default)]
pub struct ScriptedNode {
    script: Arc<Mutex<Script>>,
    name: String,
    log: Option<CallLog>,
}

impl ScriptedNode {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node that also records its calls, under `name`, in a shared log.
    pub fn named(name: impl Into<String>, log: CallLog) -> Self {
        ScriptedNode {
            script: Arc::default(),
            name: name.into(),
            log: Some(log),
        }
    }

    /// Sets what `command` does for every range (unless a per-range rule exists).
    pub fn on(&self, command: Command, behaviour: Behaviour) {
        lock(&self.script).rules.insert((command, None), behaviour);
    }

    /// Sets what `command` does for `range`.
    pub fn on_range(&self, command: Command, range: RangeId, behaviour: Behaviour) {
        lock(&self.script)
            .rules
            .insert((command, Some(range)), behaviour);
    }

    /// Sets the load reported for `range`.
    pub fn set_load(&self, range: RangeId, load: LoadInfo) {
        lock(&self.script).loads.insert(range, load);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.script).calls.clone()
    }

    /// The replica group of `range` as the latest probe that carried one
    /// delivered it.
    pub fn received_group(&self, range: RangeId) -> Option<ReplicaGroup> {
        lock(&self.script).groups.get(&range).cloned()
    }

    /// How many probes delivered replica groups (a probe with none, or one
    /// refused, delivers nothing).
    pub fn group_deliveries(&self) -> usize {
        lock(&self.script).group_deliveries
    }

    /// How many times `command` was called for `range`.
    pub fn count(&self, command: Command, range: RangeId) -> usize {
        lock(&self.script)
            .calls
            .iter()
            .filter(|c| c.command == command && c.range == range)
            .count()
    }

    async fn run(
        &self,
        command: Command,
        range: RangeId,
        parents: Vec<Parent>,
    ) -> Result<(), CallbackError> {
        if let Some(log) = &self.log {
            log.push(&self.name, command, range);
        }
        let behaviour = {
            let mut script = lock(&self.script);
            script.calls.push(Call {
                command,
                range,
                parents,
            });
            script
                .rules
                .get(&(command, Some(range)))
                .or_else(|| script.rules.get(&(command, None)))
                .cloned()
                .unwrap_or(Behaviour::Succeed)
        };
        match behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::Fail(message) => Err(CallbackError::Refused(message)),
            Behaviour::SucceedAfter(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Behaviour::FailAfter(delay, message) => {
                tokio::time::sleep(delay).await;
                Err(CallbackError::Refused(message))
            }
            Behaviour::Stall => std::future::pending().await,
        }
    }
}

impl Node for ScriptedNode {
    async fn prepare(&self, meta: RangeMeta, parents: Vec<Parent>) -> Result<(), CallbackError> {
        self.run(Command::Prepare, meta.id(), parents).await
    }

    async fn activate(&self, id: RangeId) -> Result<(), CallbackError> {
        self.run(Command::Activate, id, Vec::new()).await
    }

    async fn deactivate(&self, id: RangeId) -> Result<(), CallbackError> {
        self.run(Command::Deactivate, id, Vec::new()).await
    }

    async fn drop(&self, id: RangeId) -> Result<(), CallbackError> {
        self.run(Command::Drop, id, Vec::new()).await
    }

    async fn load_info(&self, id: RangeId) -> Result<LoadInfo, CallbackError> {
        Ok(lock(&self.script)
            .loads
            .get(&id)
            .cloned()
            .unwrap_or_default())
    }

    async fn replica_groups(&self, groups: Vec<ReplicaGroup>) {
        let mut script = lock(&self.script);
        script.group_deliveries += 1;
        for group in groups {
            script.groups.insert(group.range, group);
        }
    }
}

/// Serves `rangelet` (`ranger.Node` and its health service, as
/// [`crate::node_router`] builds them) on `listener` until the rangelet shuts
/// down: how tests put a real node on the network. Returns its address.
pub async fn serve<N: Node>(
    rangelet: &crate::Rangelet<N>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<std::net::SocketAddr> {
    let addr = listener.local_addr()?;
    let router = crate::node_router(rangelet).await;
    tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        rangelet.shutdown_signal(),
    ));
    Ok(addr)
}

/// [`serve`] on a free port of 127.0.0.1.
pub async fn serve_on_loopback<N: Node>(
    rangelet: &crate::Rangelet<N>,
) -> std::io::Result<std::net::SocketAddr> {
    serve(
        rangelet,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await
}
