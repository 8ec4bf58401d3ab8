//! The Consul discovery backend: the node set is the passing instances of a
//! Consul service (`node` by default), which nodes register with their local
//! agent (see `ranger_consul::discovery::ServiceRegistration`) along with a gRPC
//! health check. A node joins when its check first passes and leaves when the
//! check fails or the node deregisters; Consul's blocking queries bring each
//! change within milliseconds of the catalog seeing it, without polling.
//!
//! Node IDs are Consul service IDs (`<port>` for nodes on localhost,
//! `<host>:<port>` otherwise, by the reference convention), addresses are the
//! service's `host:port`. The translation is `ranger_consul::nodes`, shared with
//! the storage systems' routers so that both see the same nodes.
//!
//! While Consul is unreachable the last known node set stays in place: a Consul
//! outage must not look like every node dying at once.

use ranger_consul::{Client, NodeWatch};
use tokio::sync::watch;

use super::Discovery;
use crate::discovery::Membership;

/// Discovery through a Consul service's passing instances. Dropping it stops
/// following Consul; receivers keep the last node set.
#[derive(Debug)]
pub struct ConsulDiscovery {
    nodes: NodeWatch,
}

impl ConsulDiscovery {
    /// Starts following the passing instances of `service` through `client`.
    /// The node set starts empty and fills at Consul's first answer (see
    /// [`ConsulDiscovery::synced`]). Must be called within a tokio runtime.
    pub fn spawn(client: Client, service: &str) -> ConsulDiscovery {
        ConsulDiscovery {
            nodes: NodeWatch::spawn(client, service),
        }
    }

    /// The Consul service followed.
    pub fn service(&self) -> &str {
        self.nodes.service()
    }

    /// Waits until Consul has answered once, so that an empty node set means
    /// "no healthy nodes" rather than "not asked yet". Waits forever while
    /// Consul is unreachable; bound it with a timeout.
    pub async fn synced(&self) {
        self.nodes.synced().await;
    }
}

impl Discovery for ConsulDiscovery {
    fn membership(&self) -> watch::Receiver<Membership> {
        self.nodes.membership()
    }
}
