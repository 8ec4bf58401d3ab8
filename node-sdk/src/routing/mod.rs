//! A client-side routing table: which node serves which key, learned from every
//! node's `Ranges` stream. For proxies and smart clients.
//!
//! Each node gets a watcher task that holds its stream open, applies every change,
//! and on a broken stream forgets that node's ranges (they may be stale) and
//! reconnects with exponential backoff. Readers never wait on the network: lookups
//! read the last known state under a short lock, through an index by start key
//! ([`index`]) rebuilt on the first lookup after a change.

mod index;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ranger_proto::pb::ranger as pb;
use ranger_proto::{RangeId, RangeMeta, RemoteState, convert};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state_store::lock;
use index::RouteIndex;

/// How the routing table reconnects to nodes.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// First delay after a broken stream; doubled per failed attempt.
    pub initial_backoff: Duration,
    /// Cap on the delay between attempts.
    pub max_backoff: Duration,
    /// Deadline for establishing one connection.
    pub connect_timeout: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Where a key can be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The node's address, `host:port`.
    pub addr: String,
    pub meta: RangeMeta,
    pub state: RemoteState,
}

type NodeRanges = BTreeMap<RangeId, (RangeMeta, RemoteState)>;

/// What the nodes said, and the lookup index over it.
#[derive(Debug, Default)]
struct Table {
    /// Per node address, its ranges as its stream last said.
    nodes: HashMap<String, NodeRanges>,
    /// Built from `nodes` by the first lookup after a change, and dropped by
    /// every change: a node's stream may send a thousand ranges in a row, and
    /// the index is rebuilt once after them, not a thousand times.
    index: Option<Arc<RouteIndex>>,
}

impl Table {
    /// The node's ranges, for a change: the index no longer matches them.
    fn node_mut(&mut self, addr: &str) -> &mut NodeRanges {
        self.index = None;
        self.nodes.entry(addr.to_owned()).or_default()
    }

    /// Forgets a node's ranges; true if it was known.
    fn remove_node(&mut self, addr: &str) -> bool {
        self.index = None;
        self.nodes.remove(addr).is_some()
    }

    fn routes(&self) -> impl Iterator<Item = Route> + '_ {
        self.nodes.iter().flat_map(|(addr, ranges)| {
            ranges.values().map(move |(meta, state)| Route {
                addr: addr.clone(),
                meta: meta.clone(),
                state: *state,
            })
        })
    }
}

/// The routing table. Dropping it stops every watcher.
#[derive(Debug)]
pub struct RoutingTable {
    /// What the watchers write and lookups read.
    shared: Arc<RwLock<Table>>,
    config: RoutingConfig,
    watchers: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Bumped on every change, so callers can wait for the table to move (a proxy
    /// retrying through a handoff waits on this rather than polling).
    version: Arc<watch::Sender<u64>>,
}

impl RoutingTable {
    pub fn new(config: RoutingConfig) -> Self {
        RoutingTable {
            shared: Arc::default(),
            config,
            watchers: Mutex::default(),
            version: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Starts following `addr` (no-op if already followed).
    pub fn add_node(&self, addr: impl Into<String>) {
        let addr = addr.into();
        let mut watchers = lock(&self.watchers);
        if watchers.contains_key(&addr) {
            return;
        }
        let task = tokio::spawn(watch_node(
            addr.clone(),
            Arc::clone(&self.shared),
            Arc::clone(&self.version),
            self.config.clone(),
        ));
        watchers.insert(addr, task);
    }

    /// Stops following `addr` and forgets its ranges.
    pub fn remove_node(&self, addr: &str) {
        if let Some(task) = lock(&self.watchers).remove(addr) {
            task.abort();
        }
        let removed = write(&self.shared).remove_node(addr);
        if removed {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Follows exactly `addrs`: adds the new ones, removes the others (for a
    /// discovery watch that reports the full set each time).
    pub fn set_nodes<I, S>(&self, addrs: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let wanted: std::collections::HashSet<String> = addrs.into_iter().map(Into::into).collect();
        let current: Vec<String> = lock(&self.watchers).keys().cloned().collect();
        for addr in current.iter().filter(|a| !wanted.contains(*a)) {
            self.remove_node(addr);
        }
        for addr in wanted {
            self.add_node(addr);
        }
    }

    /// Every route for `key` whose node reports it in `state`.
    pub fn lookup(&self, key: &[u8], state: RemoteState) -> Vec<Route> {
        self.index().lookup(key, state)
    }

    /// The index over the table as it is now, built if a change dropped it.
    fn index(&self) -> Arc<RouteIndex> {
        if let Some(index) = &read(&self.shared).index {
            return Arc::clone(index);
        }
        // Built under the write lock, so no change can land between reading the
        // nodes and storing the index made from them.
        let mut table = write(&self.shared);
        if let Some(index) = &table.index {
            return Arc::clone(index);
        }
        let index = Arc::new(RouteIndex::build(table.routes().collect()));
        table.index = Some(Arc::clone(&index));
        index
    }

    /// The node serving `key` (Active), if the table knows one.
    pub fn active_route(&self, key: &[u8]) -> Option<Route> {
        self.lookup(key, RemoteState::Active).into_iter().next()
    }

    /// Every known (node, range, state), for debugging and tests.
    pub fn snapshot(&self) -> Vec<Route> {
        let mut all: Vec<Route> = read(&self.shared).routes().collect();
        all.sort_by(|a, b| (a.meta.id(), &a.addr).cmp(&(b.meta.id(), &b.addr)));
        all
    }

    /// A receiver that changes whenever the table does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

impl Drop for RoutingTable {
    fn drop(&mut self) {
        for (_, task) in lock(&self.watchers).drain() {
            task.abort();
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Follows one node's `Ranges` stream forever (until aborted).
async fn watch_node(
    addr: String,
    shared: Arc<RwLock<Table>>,
    version: Arc<watch::Sender<u64>>,
    config: RoutingConfig,
) {
    let mut backoff = config.initial_backoff;
    loop {
        let mut established = false;
        match follow_stream(&addr, &shared, &version, &config, &mut established).await {
            Ok(()) => tracing::debug!(%addr, "Ranges stream ended; reconnecting"),
            Err(e) => tracing::debug!(%addr, error = %e, "Ranges stream failed; reconnecting"),
        }
        // Whatever we knew may be stale now: forget it until the stream is back.
        let forgot = write(&shared).remove_node(&addr);
        if forgot {
            version.send_modify(|v| *v += 1);
        }
        if established {
            backoff = config.initial_backoff;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("rpc: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("bad message: {0}")]
    Bad(#[from] ranger_proto::ConversionError),
}

async fn follow_stream(
    addr: &str,
    shared: &RwLock<Table>,
    version: &watch::Sender<u64>,
    config: &RoutingConfig,
    established: &mut bool,
) -> Result<(), StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(config.connect_timeout);
    let channel = endpoint.connect().await?;
    let mut client = pb::node_client::NodeClient::new(channel);
    let mut stream = client.ranges(pb::RangesRequest {}).await?.into_inner();
    // The stream opened: this node is known (possibly with no ranges).
    *established = true;
    write(shared).node_mut(addr);
    version.send_modify(|v| *v += 1);
    while let Some(message) = stream.message().await? {
        let meta: RangeMeta = convert::require(message.meta, "RangesResponse.meta")?.try_into()?;
        let state = RemoteState::try_from(message.state)?;
        {
            let mut table = write(shared);
            let ranges = table.node_mut(addr);
            if state == RemoteState::NotFound {
                ranges.remove(&meta.id());
            } else {
                ranges.insert(meta.id(), (meta, state));
            }
        }
        version.send_modify(|v| *v += 1);
    }
    Ok(())
}
