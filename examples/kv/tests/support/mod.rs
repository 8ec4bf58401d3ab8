//! The whole system in one process for the KV end-to-end tests: KV nodes on
//! RocksDB served on 127.0.0.1, the proxy, and a controller (runtime, gRPC
//! transport, in-memory store) whose node set a test changes by hand.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use ranger_controller::config::OrchestratorConfig;
use ranger_controller::persist::MemoryPersister;
use ranger_controller::runtime::{self, ControllerHandle, RuntimeConfig};
use ranger_controller::transport::GrpcTransport;
use ranger_kv::node::KvNodeConfig;
use ranger_kv::node::server::NodeServer;
use ranger_kv::proxy::{Proxy, ProxyConfig};
use ranger_proto::{NodeId, PlacementState, RangeMeta};
use tokio::net::TcpListener;

/// A KV node served on 127.0.0.1; its data lives as long as `_dir`.
pub struct ServedNode {
    pub id: NodeId,
    pub addr: String,
    pub server: NodeServer,
    pub dir: tempfile::TempDir,
}

/// A node with the default configuration.
pub async fn serve_node(name: &str) -> ServedNode {
    serve_node_with(name, KvNodeConfig::new("")).await
}

/// A node with `config` (its address is filled in from the listener).
pub async fn serve_node_with(name: &str, config: KvNodeConfig) -> ServedNode {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = NodeServer::start(dir.path(), listener, config)
        .await
        .unwrap();
    ServedNode {
        id: NodeId::new(name).unwrap(),
        addr: server.addr.to_string(),
        server,
        dir,
    }
}

/// A proxy routing to `nodes`; its address.
pub async fn serve_proxy(nodes: &[ServedNode]) -> String {
    let proxy = Proxy::new(ProxyConfig::default());
    proxy.set_nodes(nodes.iter().map(|n| n.addr.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { proxy.serve(listener, std::future::pending()).await });
    addr
}

/// The current (non-obsolete) ranges and the nodes each is Active on.
pub async fn tiling(handle: &ControllerHandle) -> Vec<(RangeMeta, Vec<NodeId>)> {
    handle
        .inspect(|engine| {
            engine
                .keyspace()
                .current_ranges()
                .map(|range| {
                    let active = range
                        .placements()
                        .iter()
                        .filter(|p| p.state() == PlacementState::Active)
                        .map(|p| p.node().clone())
                        .collect();
                    (range.meta().clone(), active)
                })
                .collect()
        })
        .await
        .unwrap()
}

/// Discovery for the test controller: which nodes exist.
pub type MembershipTx = tokio::sync::watch::Sender<BTreeMap<NodeId, String>>;

/// A controller over `nodes` (gRPC transport, in-memory store).
pub async fn start_controller(
    nodes: impl IntoIterator<Item = (NodeId, String)>,
    config: OrchestratorConfig,
    runtime_config: RuntimeConfig,
) -> (ControllerHandle, MembershipTx) {
    let (membership_tx, membership) = tokio::sync::watch::channel(nodes.into_iter().collect());
    let parts = runtime::Parts {
        persister: MemoryPersister::new(),
        transport: Arc::new(GrpcTransport::new()),
        membership,
        orchestrator: config,
        runtime: runtime_config,
    };
    let (handle, _task) = runtime::start(parts, std::future::pending()).await.unwrap();
    (handle, membership_tx)
}
