//! The Consul discovery backend: the node set is the passing instances of a
//! Consul service (`node` by default), which nodes register with their local
//! agent (see `ranger_consul::discovery::ServiceRegistration`) along with a gRPC
//! health check. A node joins when its check first passes and leaves when the
//! check fails or the node deregisters; Consul's blocking queries bring each
//! change within milliseconds of the catalog seeing it, without polling.
//!
//! Node IDs are Consul service IDs (`<port>` for nodes on localhost,
//! `<host>:<port>` otherwise, by the reference convention), addresses are the
//! service's `host:port`.
//!
//! While Consul is unreachable the last known node set stays in place: a Consul
//! outage must not look like every node dying at once.

use ranger_consul::Client;
use ranger_consul::discovery::{ServiceInstance, ServiceWatch, watch_service};
use ranger_proto::NodeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Discovery;
use crate::discovery::Membership;

/// Discovery through a Consul service's passing instances. Dropping it stops
/// following Consul; receivers keep the last node set.
#[derive(Debug)]
pub struct ConsulDiscovery {
    nodes: watch::Sender<Membership>,
    service: String,
    watch: ServiceWatch,
    task: JoinHandle<()>,
}

impl ConsulDiscovery {
    /// Starts following the passing instances of `service` through `client`.
    /// The node set starts empty and fills at Consul's first answer (see
    /// [`ConsulDiscovery::synced`]). Must be called within a tokio runtime.
    pub fn spawn(client: Client, service: &str) -> ConsulDiscovery {
        let (instances, watch) = watch_service(client, service);
        let nodes = watch::Sender::new(Membership::new());
        let task = tokio::spawn(translate(instances, nodes.clone()));
        ConsulDiscovery {
            nodes,
            service: service.to_owned(),
            watch,
            task,
        }
    }

    /// The Consul service followed.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Waits until Consul has answered once, so that an empty node set means
    /// "no healthy nodes" rather than "not asked yet". Waits forever while
    /// Consul is unreachable; bound it with a timeout.
    pub async fn synced(&self) {
        self.watch.synced().await;
    }
}

impl Discovery for ConsulDiscovery {
    fn membership(&self) -> watch::Receiver<Membership> {
        self.nodes.subscribe()
    }
}

impl Drop for ConsulDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node set for a list of instances. Instances with an unusable ID are
/// skipped; two instances with one ID (registered on two agents) keep the
/// first, both logged, since a node ID must name one node.
fn membership(instances: &[ServiceInstance]) -> Membership {
    let mut nodes = Membership::new();
    for instance in instances {
        let id = match NodeId::new(instance.id.clone()) {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(instance = ?instance, %error, "Consul instance with an unusable ID; ignored");
                continue;
            }
        };
        let addr = instance.addr();
        if let Some(first) = nodes.get(&id) {
            tracing::warn!(node = %id, kept = %first, ignored = %addr, "two Consul instances share a service ID; keeping the first");
            continue;
        }
        nodes.insert(id, addr);
    }
    nodes
}

/// Republishes each instance list as a node set, when the set changes. Ends
/// when the instance watch ends (the discovery was dropped).
async fn translate(
    mut instances: watch::Receiver<Vec<ServiceInstance>>,
    nodes: watch::Sender<Membership>,
) {
    loop {
        let set = membership(&instances.borrow_and_update());
        nodes.send_if_modified(|current| {
            if *current == set {
                false
            } else {
                tracing::info!(nodes = ?set, "node set from Consul changed");
                *current = set;
                true
            }
        });
        if instances.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, address: &str, port: u16) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            address: address.into(),
            port,
        }
    }

    #[test]
    fn service_ids_become_node_ids() {
        let m = membership(&[
            instance("7001", "127.0.0.1", 7001),
            instance("10.0.0.2:7001", "10.0.0.2", 7001),
            instance("", "10.0.0.3", 7001),
            instance("7001", "127.0.0.9", 7001),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&NodeId::new("7001").unwrap()], "127.0.0.1:7001");
        assert_eq!(m[&NodeId::new("10.0.0.2:7001").unwrap()], "10.0.0.2:7001");
    }
}
