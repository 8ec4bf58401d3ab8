//! One gRPC channel per node address, created on first use and reused.
//!
//! Channels connect lazily and reconnect by themselves, so a node that restarts
//! is reached again without the proxy doing anything; a request to a node that is
//! down fails fast with UNAVAILABLE, which the retry loop handles.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::pb::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

use super::error::ProxyError;

/// The cached channels, keyed by `host:port`.
#[derive(Debug)]
pub(crate) struct ChannelPool {
    connect_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ChannelPool {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        ChannelPool {
            connect_timeout,
            channels: Mutex::default(),
        }
    }

    /// A `kv.KV` client for the node at `addr` (cloning a channel is cheap).
    pub(crate) fn client(&self, addr: &str) -> Result<KvClient<Channel>, ProxyError> {
        let mut channels = self.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(KvClient::new(channel.clone()));
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ProxyError::BadNodeAddress {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(KvClient::new(channel))
    }

    /// Closes the channels of nodes no longer followed.
    pub(crate) fn retain(&self, addrs: &HashSet<String>) {
        self.lock().retain(|addr, _| addrs.contains(addr));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Channel>> {
        // The map stays consistent even if a holder panicked: recover it.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
