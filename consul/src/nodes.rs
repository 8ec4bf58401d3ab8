//! Ranger's node set from Consul: the passing instances of the nodes' service
//! (see [`watch_service`]), each turned into a node id and an address.
//!
//! The controller's discovery and a storage system's router (the KV proxy) both
//! follow the nodes this way, and they must agree on what a node is; they must
//! not link each other, and both already depend on this crate and on
//! `ranger-proto` (which holds [`NodeId`] and [`Membership`]), so the
//! translation lives here, beside the conventions the nodes register by.
//!
//! Node ids are Consul service ids (`<port>` for nodes on localhost,
//! `<host>:<port>` otherwise, by the reference convention); addresses are the
//! services' `host:port`. While Consul is unreachable the last known node set
//! stays in place: a Consul outage must not look like every node dying at once.

use ranger_proto::{Membership, NodeId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Client;
use crate::discovery::{ServiceInstance, ServiceWatch, watch_service};

/// Follows the node set of a Consul service. Dropping it stops following
/// Consul; receivers keep the last node set.
#[derive(Debug)]
pub struct NodeWatch {
    nodes: watch::Sender<Membership>,
    watch: ServiceWatch,
    task: JoinHandle<()>,
}

impl NodeWatch {
    /// Starts following the passing instances of `service` through `client`.
    /// The node set starts empty and fills at Consul's first answer (see
    /// [`NodeWatch::synced`]). Must be called within a tokio runtime.
    pub fn spawn(client: Client, service: &str) -> NodeWatch {
        let (instances, watch) = watch_service(client, service);
        let nodes = watch::Sender::new(Membership::new());
        let task = tokio::spawn(translate(instances, nodes.clone()));
        NodeWatch { nodes, watch, task }
    }

    /// The node set, updated as it changes (only then: an unchanged set after
    /// a Consul answer wakes nobody).
    pub fn membership(&self) -> watch::Receiver<Membership> {
        self.nodes.subscribe()
    }

    /// The Consul service followed.
    pub fn service(&self) -> &str {
        self.watch.service()
    }

    /// Waits until Consul has answered once, so that an empty node set means
    /// "no healthy nodes" rather than "not asked yet". Waits forever while
    /// Consul is unreachable; bound it with a timeout.
    pub async fn synced(&self) {
        self.watch.synced().await;
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node set for a list of instances. Instances with an unusable ID are
/// skipped; two instances with one ID (registered on two agents) keep the
/// first, both logged, since a node ID must name one node.
pub fn membership(instances: &[ServiceInstance]) -> Membership {
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
/// when the instance watch ends (the [`NodeWatch`] was dropped).
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

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap_or_else(|e| panic!("{id:?}: {e}"))
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
        assert_eq!(m[&node("7001")], "127.0.0.1:7001");
        assert_eq!(m[&node("10.0.0.2:7001")], "10.0.0.2:7001");
    }
}
