//! Which nodes exist: polled from the controller, or a fixed list.
//!
//! The controller's `ranger.Debug/NodesList` names every node it knows with its
//! address. Polling it (rather than a stream) keeps the proxy independent of the
//! controller's uptime: when the controller is unreachable, the proxy keeps the
//! last list it got and goes on serving from the nodes' own `Ranges` streams.

use std::collections::BTreeSet;
use std::time::Duration;

use ranger_proto::pb::ranger::NodesListRequest;
use ranger_proto::pb::ranger::debug_client::DebugClient;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::Proxy;
use super::error::ProxyError;

/// Where the controller is and how often to ask it.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The controller's `host:port` (or a full `http://` URL).
    pub address: String,
    /// Time between two polls.
    pub poll_interval: Duration,
    /// Deadline of one poll (connecting included).
    pub rpc_timeout: Duration,
}

impl ControllerConfig {
    /// Polls `address` every second, each poll bounded to one second.
    pub fn new(address: impl Into<String>) -> Self {
        ControllerConfig {
            address: address.into(),
            poll_interval: Duration::from_secs(1),
            rpc_timeout: Duration::from_secs(1),
        }
    }
}

/// The polling task; dropping this handle stops it (the proxy keeps the nodes it
/// last learned).
#[derive(Debug)]
pub struct NodeDiscovery {
    task: JoinHandle<()>,
}

impl NodeDiscovery {
    pub(crate) fn spawn(proxy: Proxy, config: ControllerConfig) -> Result<Self, ProxyError> {
        let url = if config.address.contains("://") {
            config.address.clone()
        } else {
            format!("http://{}", config.address)
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|source| ProxyError::BadController {
                addr: config.address.clone(),
                source,
            })?
            .connect_timeout(config.rpc_timeout)
            .timeout(config.rpc_timeout)
            .connect_lazy();
        let task = tokio::spawn(poll_controller(proxy, DebugClient::new(channel), config));
        Ok(NodeDiscovery { task })
    }
}

impl Drop for NodeDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks the controller for the node list forever, applying every change.
async fn poll_controller(proxy: Proxy, mut client: DebugClient<Channel>, config: ControllerConfig) {
    let mut known: Option<BTreeSet<String>> = None;
    let mut reachable = true;
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match client.nodes_list(NodesListRequest {}).await {
            Ok(response) => {
                if !reachable {
                    tracing::info!(controller = %config.address, "controller reachable again");
                    reachable = true;
                }
                let nodes: BTreeSet<String> = response
                    .into_inner()
                    .nodes
                    .into_iter()
                    .filter_map(|n| n.node)
                    .map(|meta| strip_scheme(&meta.address).to_owned())
                    .filter(|addr| !addr.is_empty())
                    .collect();
                if nodes.is_empty() && known.as_ref().is_some_and(|k| !k.is_empty()) {
                    // A controller that just restarted knows no node until they
                    // register again; forgetting them all would fail every request.
                    // Stale addresses cost little: their streams simply fail.
                    tracing::debug!("controller lists no node; keeping the last known ones");
                    continue;
                }
                if known.as_ref() != Some(&nodes) {
                    tracing::info!(nodes = ?nodes, "node list changed");
                    proxy.set_nodes(nodes.iter().cloned());
                    known = Some(nodes);
                }
            }
            Err(status) => {
                // Keep serving with the last known nodes; say so once per outage.
                if reachable {
                    tracing::warn!(
                        controller = %config.address, code = ?status.code(),
                        message = status.message(),
                        known_nodes = known.as_ref().map_or(0, BTreeSet::len),
                        "controller unreachable; keeping the last known nodes"
                    );
                    reachable = false;
                } else {
                    tracing::debug!(controller = %config.address, code = ?status.code(), "controller still unreachable");
                }
            }
        }
    }
}

/// Follows the passing instances of a service in Consul's catalog (nodes register
/// themselves there with a gRPC health check); dropping this handle stops it.
///
/// The nodes are those the controller's Consul discovery sees, by the same
/// translation ([`ranger_consul::NodeWatch`]); the proxy needs only their
/// addresses. Like the controller poll, it keeps the last known nodes while
/// Consul is unreachable: the nodes' own `Ranges` streams keep the routing table
/// right.
#[derive(Debug)]
pub struct ConsulNodes {
    /// Holds the Consul follower alive.
    _watch: ranger_consul::NodeWatch,
    task: JoinHandle<()>,
}

impl ConsulNodes {
    pub(crate) fn spawn(proxy: Proxy, client: ranger_consul::Client, service: &str) -> Self {
        let watch = ranger_consul::NodeWatch::spawn(client, service);
        let mut membership = watch.membership();
        let service = service.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let nodes: BTreeSet<String> =
                    membership.borrow_and_update().values().cloned().collect();
                tracing::info!(%service, nodes = ?nodes, "node list from Consul");
                proxy.set_nodes(nodes);
                if membership.changed().await.is_err() {
                    return; // The watch stopped: the handle was dropped.
                }
            }
        });
        ConsulNodes {
            _watch: watch,
            task,
        }
    }
}

impl Drop for ConsulNodes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Node addresses are `host:port`; tolerate a controller that reports a URL.
fn strip_scheme(addr: &str) -> &str {
    let addr = addr.trim();
    addr.strip_prefix("http://").unwrap_or(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_a_scheme() {
        assert_eq!(strip_scheme(" http://h:1 "), "h:1");
        assert_eq!(strip_scheme("h:1"), "h:1");
    }
}
