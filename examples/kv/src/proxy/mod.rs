//! The routing proxy: the `kv.KV` service in front of every KV node.
//!
//! Clients talk to one address and never learn where ranges live. The proxy keeps
//! a [`RoutingTable`] fed by every node's `ranger.Node/Ranges` stream, forwards each
//! keyed request to the node whose range holding the key is Active, and, while a
//! range is being handed off (or its node is down), waits for the table to move and
//! retries within a per-request deadline, so that clients see latency, not errors.
//!
//! Which nodes exist comes from the controller ([`Proxy::follow_controller`],
//! polling `ranger.Debug/NodesList`), from Consul's catalog
//! ([`Proxy::follow_consul`]), or from a fixed list ([`Proxy::set_nodes`]).
//!
//! - [`error`]: what can go wrong, typed.
//! - [`retry`]: the retry policy and which node answers are worth retrying.
//! - [`batch`]: concurrent requests for one node sent as one `kv.KV/Batch`.
//! - `pool`: one cached gRPC channel (and batcher) per node address.
//! - `forward`: the route-call-wait-retry loop.
//! - [`service`]: the `kv.KV` implementation on top of it.
//! - [`discovery`]: node addresses from the controller or a static list.
//! - [`metrics`]: requests, retries, handoff waits and the routing table's age,
//!   for Prometheus.

pub mod batch;
pub mod discovery;
pub mod error;
mod forward;
pub mod metrics;
mod pool;
pub mod retry;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use crate::pb::kv_server::KvServer;
use ranger_node_sdk::{RoutingConfig, RoutingTable};

pub use batch::BatchConfig;
pub use discovery::{ConsulNodes, ControllerConfig, NodeDiscovery};
pub use error::ProxyError;
pub use retry::RetryPolicy;
pub use service::ProxyService;

use forward::Forwarder;
use metrics::ProxyMetrics;
use pool::ChannelPool;
use prometheus_client::registry::Registry;
use ranger_node_sdk::metrics::{BeforeScrape, MetricsSource};

/// Tunables of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long one request may wait and retry before the client gets UNAVAILABLE.
    pub retry: RetryPolicy,
    /// Deadline for opening a connection to a node; a node that cannot be reached
    /// in this time counts as down for that attempt.
    pub connect_timeout: Duration,
    /// How the routing table follows (and reconnects to) nodes' `Ranges` streams.
    pub routing: RoutingConfig,
    /// How requests for one node are batched.
    pub batch: BatchConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(1),
            routing: RoutingConfig::default(),
            batch: BatchConfig::default(),
        }
    }
}

/// The proxy: a routing table, a channel per node, and the retry policy.
///
/// Cheap to clone (a handle); the binary and the tests share it. Feed it node
/// addresses with [`Proxy::set_nodes`] or [`Proxy::follow_controller`], and serve
/// [`Proxy::service`].
#[derive(Debug, Clone)]
pub struct Proxy {
    forwarder: Arc<Forwarder>,
}

impl Proxy {
    /// A proxy that knows no node yet. Must be called inside a Tokio runtime
    /// before nodes are added (the routing table spawns a task per node).
    pub fn new(config: ProxyConfig) -> Self {
        let table = RoutingTable::new(config.routing);
        let metrics = ProxyMetrics::default();
        let pool = ChannelPool::new(
            config.connect_timeout,
            config.batch,
            config.retry.deadline,
            metrics.clone(),
        );
        metrics.follow_routing(table.changes());
        Proxy {
            forwarder: Arc::new(Forwarder::new(table, pool, config.retry, metrics)),
        }
    }

    /// Follows exactly these node addresses (`host:port`): new ones are
    /// connected to, missing ones forgotten along with their ranges and channels.
    pub fn set_nodes<I, S>(&self, addrs: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.forwarder.set_nodes(addrs);
    }

    /// Polls the controller for the node list and follows it, until the returned
    /// handle is dropped. Fails only on an unusable controller address; an
    /// unreachable controller is logged and retried, keeping the last known nodes.
    pub fn follow_controller(&self, config: ControllerConfig) -> Result<NodeDiscovery, ProxyError> {
        NodeDiscovery::spawn(self.clone(), config)
    }

    /// Follows the nodes registered in Consul under `service` (passing health
    /// checks only), until the returned handle is dropped.
    pub fn follow_consul(&self, client: ranger_consul::Client, service: &str) -> ConsulNodes {
        ConsulNodes::spawn(self.clone(), client, service)
    }

    /// The routing table, for inspection (which node serves what, as last seen).
    pub fn routing(&self) -> &RoutingTable {
        self.forwarder.table()
    }

    /// The longest time a served request waited through a handoff since the
    /// last call (see [`ProxyMetrics::take_longest_handoff_wait`]): what
    /// `bench_handoff` reports as a move's window.
    pub fn take_longest_handoff_wait(&self) -> std::time::Duration {
        self.forwarder.metrics().take_longest_handoff_wait()
    }

    /// Requests waiting right now for their node's batch in flight to come
    /// back (see [`batch`]).
    pub fn queued_for_batches(&self) -> i64 {
        self.forwarder.metrics().queued_for_batches()
    }

    /// The proxy's metrics (`ranger_kv_proxy_*`), the routing table's age
    /// sampled before each scrape. Serve it with
    /// [`ranger_node_sdk::metrics::serve_metrics`].
    pub fn metrics(&self) -> MetricsSource {
        let metrics = self.forwarder.metrics().clone();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let sample: BeforeScrape = Arc::new(move || {
            metrics.sample();
            Box::pin(async {})
        });
        MetricsSource::new(registry).before_scrape(sample)
    }

    /// Serves `kv.KV` on `listener` until `shutdown` resolves: the one server
    /// setup the binary, the tests and the benchmarks share.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(ranger_node_sdk::incoming(listener), shutdown)
            .await
    }

    /// The `kv.KV` service to add to a tonic server.
    pub fn service(&self) -> KvServer<ProxyService> {
        KvServer::new(ProxyService::new(Arc::clone(&self.forwarder)))
    }
}
