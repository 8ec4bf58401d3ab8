//! The node SDK ("rangelet"): what a storage system embeds to be sharded by Ranger.
//!
//! Implement [`Node`] (five callbacks), open a [`Rangelet`] over it, and serve
//! [`NodeService`] (plus a gRPC health service, for Consul checks) with
//! [`node_router`]. The rangelet runs the remote state machine of PROTOCOL.md, so
//! the storage system only ever sees well-ordered calls.
//!
//! For proxies and smart clients, [`RoutingTable`] follows nodes' `Ranges` streams
//! and answers "who serves this key". [`testing::ScriptedNode`] is a storage system
//! whose every callback can be told to succeed, fail, or stall: the controller's
//! tests drive real rangelets with it. [`testing::StateStoreSuite`] checks a
//! [`StateStore`] against the contract the rangelet relies on, for storage systems
//! that keep their range states in their own database.

pub mod load;
pub mod metrics;
mod node;
mod rangelet;
mod registration;
mod routing;
mod service;
mod state_store;
pub mod testing;

pub use metrics::NodeMetrics;
pub use node::{CallbackError, Node};
pub use rangelet::{
    Command, CommandError, KeyRejection, Outcome, RangeChange, Rangelet, RangeletConfig,
};
/// Re-exported so that a storage system built on the SDK starts up like every
/// Ranger binary (one log set-up, one shutdown signal) with one dependency.
pub use ranger_process::{LogOutput, incoming, init_logging, shutdown_signal};
pub use registration::{Registration, RegistrationError};
pub use routing::{Route, RoutingConfig, RoutingTable};
pub use service::NodeService;
pub use state_store::{FileStateStore, MemoryStateStore, StateStore, StateStoreError, StoredRange};

use ranger_proto::pb::ranger::node_server::NodeServer;
use tonic::transport::server::Router;

/// A tonic router serving the rangelet's `ranger.Node` service and a
/// `grpc.health.v1.Health` service reporting it (and the server as a whole) as
/// serving. Add the storage system's own services with `.add_service(..)`, then
/// serve it, e.g. with `serve_with_incoming_shutdown(incoming(listener),
/// rangelet.shutdown_signal())` (see [`incoming`]).
pub async fn node_router<N: Node>(rangelet: &Rangelet<N>) -> Router {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<NodeServer<NodeService<N>>>().await;
    // When the rangelet shuts down, report it before the server stops answering, so
    // health checks fail fast instead of timing out.
    let shutdown = rangelet.shutdown_signal();
    tokio::spawn(async move {
        shutdown.await;
        reporter
            .set_not_serving::<NodeServer<NodeService<N>>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    });
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(NodeService::new(rangelet.clone()).into_server())
}
