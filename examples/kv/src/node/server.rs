//! Serving a KV node: the one place that wires the RocksDB store, the callbacks,
//! the rangelet and the gRPC services together, so that the binary, the tests and
//! the benchmarks run exactly the same node.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use ranger_node_sdk::metrics::{BeforeScrape, MetricsSource};
use ranger_node_sdk::{Rangelet, RangeletConfig, StateStoreError, node_router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::service::KvService;
use super::store::{RangeStates, Store, StoreError};
use super::{KvNode, KvNodeConfig};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the node's RocksDB: {0}")]
    Store(#[from] StoreError),
    #[error("restoring the node's range states: {0}")]
    Restore(#[from] StateStoreError),
    #[error("configuring the load meter: {0}")]
    LoadMeter(#[from] ranger_node_sdk::load::LoadMeterError),
    #[error("reading the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("creating the acknowledged-writes log {path}: {source}")]
    AckLog {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running KV node: `ranger.Node`, `kv.KV` and gRPC health on one listener.
#[derive(Debug)]
pub struct NodeServer {
    /// Where the node listens.
    pub addr: SocketAddr,
    /// The storage side (callbacks, transfers), for inspection.
    pub node: KvNode,
    /// The node's range states; [`Rangelet::shutdown`] stops the server.
    pub rangelet: Rangelet<KvNode>,
    store: Arc<Store>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl NodeServer {
    /// Opens the database under `data` (creating it), restores the ranges it
    /// held, and serves on `listener` until [`NodeServer::shutdown`].
    ///
    /// `config.self_addr` must be the address peers reach this node at; when it
    /// is empty the listener's address is used.
    pub async fn start(
        data: &Path,
        listener: TcpListener,
        mut config: KvNodeConfig,
    ) -> Result<NodeServer, ServeError> {
        let addr = listener.local_addr()?;
        if config.self_addr.is_empty() {
            config.self_addr = addr.to_string();
        }
        let store = Store::open(data)?;
        let rangelet_config = RangeletConfig {
            capacity: config.capacity,
            metrics: config.metrics.clone(),
            ..RangeletConfig::default()
        };
        let node = KvNode::open(Arc::clone(&store), config)?;
        let rangelet = Rangelet::open(
            node.clone(),
            RangeStates(Arc::clone(&store)),
            rangelet_config,
        )
        .await?;
        let router = node_router(&rangelet)
            .await
            .add_service(KvService::new(node.clone(), rangelet.clone()).into_server());
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            ranger_node_sdk::incoming(listener),
            rangelet.shutdown_signal(),
        ));
        Ok(NodeServer {
            addr,
            node,
            rangelet,
            store,
            server,
        })
    }

    /// The node's database, e.g. to load data in bulk before a benchmark.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Everything this node reports to Prometheus: the node SDK's metrics
    /// (`ranger_node_*`) and the KV node's (`ranger_kv_node_*`), with the range,
    /// lease and store gauges sampled before each scrape. Serve it with
    /// [`ranger_node_sdk::metrics::serve_metrics`].
    pub fn metrics(&self) -> MetricsSource {
        let mut registry = Registry::default();
        self.rangelet.metrics().register(&mut registry);
        self.node.metrics().register(&mut registry);
        let (rangelet, node) = (self.rangelet.clone(), self.node.clone());
        let sample: BeforeScrape = Arc::new(move || {
            let (rangelet, node) = (rangelet.clone(), node.clone());
            Box::pin(async move {
                rangelet.sample_metrics();
                // RocksDB's properties are read under its own locks: off the runtime.
                let sampled = tokio::task::spawn_blocking(move || {
                    node.metrics().sample_store(node.store());
                    node.metrics().sample_primaries(node.primary_ranges());
                })
                .await;
                if let Err(error) = sampled {
                    tracing::warn!(%error, "sampling the store's size failed");
                }
            })
        });
        MetricsSource::new(registry).before_scrape(sample)
    }

    /// Stops serving (health turns NOT_SERVING first) and waits for the server.
    /// The database closes once every handle to it is gone.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.rangelet.shutdown();
        Ok(self.server.await??)
    }
}
