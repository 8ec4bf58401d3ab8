//! One gRPC channel per node address, created on first use and reused, with
//! the node's [`Batcher`] over it.
//!
//! Channels connect lazily and reconnect by themselves, so a node that restarts
//! is reached again without the proxy doing anything; a request to a node that is
//! down fails fast with UNAVAILABLE, which the retry loop handles.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::node::service::MESSAGE_LIMIT;
use crate::pb::kv_client::KvClient;
use tonic::transport::Endpoint;

use super::batch::{BatchConfig, Batcher};
use super::error::ProxyError;
use super::metrics::ProxyMetrics;

/// The cached channels, keyed by `host:port`.
#[derive(Debug)]
pub(crate) struct ChannelPool {
    connect_timeout: Duration,
    batch: BatchConfig,
    /// The proxy's request deadline: no batch is waited for longer.
    deadline: Duration,
    metrics: ProxyMetrics,
    nodes: Mutex<HashMap<String, Batcher>>,
}

impl ChannelPool {
    pub(crate) fn new(
        connect_timeout: Duration,
        batch: BatchConfig,
        deadline: Duration,
        metrics: ProxyMetrics,
    ) -> Self {
        ChannelPool {
            connect_timeout,
            batch,
            deadline,
            metrics,
            nodes: Mutex::default(),
        }
    }

    /// The sender for the node at `addr` (cloning one is cheap). Must be
    /// called inside a Tokio runtime (a new node's batcher spawns its task).
    pub(crate) fn node(&self, addr: &str) -> Result<Batcher, ProxyError> {
        let mut nodes = self.lock();
        if let Some(node) = nodes.get(addr) {
            return Ok(node.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ProxyError::BadNodeAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .connect_lazy();
        // As big as a node may answer: a batch's reads answer together.
        let client = KvClient::new(channel).max_decoding_message_size(MESSAGE_LIMIT);
        let node = Batcher::new(client, self.batch, self.deadline, self.metrics.clone());
        nodes.insert(addr.to_owned(), node.clone());
        Ok(node)
    }

    /// Closes the channels of nodes no longer followed.
    pub(crate) fn retain(&self, addrs: &HashSet<String>) {
        self.lock().retain(|addr, _| addrs.contains(addr));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Batcher>> {
        // The map stays consistent even if a holder panicked: recover it.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
