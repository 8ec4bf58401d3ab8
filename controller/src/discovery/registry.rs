//! The embedded discovery backend: nodes register with the controller over gRPC
//! (`ranger.Registry`) and renew before their registration's time-to-live runs out.
//! A node that stops renewing leaves the node set when its TTL expires; one that
//! shuts down cleanly deregisters at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_proto::NodeId;
use ranger_proto::pb::ranger as pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::Discovery;
use crate::discovery::Membership;

#[derive(Debug)]
struct Entry {
    addr: String,
    expires: Instant,
}

#[derive(Debug)]
struct Shared {
    entries: Mutex<HashMap<NodeId, Entry>>,
    nodes: watch::Sender<Membership>,
    ttl: Duration,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes the node set if it changed.
    fn publish(&self, entries: &HashMap<NodeId, Entry>) {
        let set: Membership = entries
            .iter()
            .map(|(id, e)| (id.clone(), e.addr.clone()))
            .collect();
        self.nodes.send_if_modified(|current| {
            if *current == set {
                false
            } else {
                *current = set;
                true
            }
        });
    }
}

/// The registry: the discovery backend and the state behind its gRPC service.
#[derive(Debug, Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl Registry {
    /// A registry whose registrations last `ttl` unless renewed. Spawns the task
    /// that expires them (it ends when every clone of the registry is dropped).
    pub fn new(ttl: Duration) -> Self {
        let shared = Arc::new(Shared {
            entries: Mutex::new(HashMap::new()),
            nodes: watch::Sender::new(Membership::new()),
            ttl,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 4);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let mut entries = shared.lock();
                let before = entries.len();
                entries.retain(|id, e| {
                    let alive = e.expires > now;
                    if !alive {
                        tracing::warn!(node = %id, "registration expired");
                    }
                    alive
                });
                if entries.len() != before {
                    shared.publish(&entries);
                }
            }
        });
        Registry { shared }
    }

    /// Registers or renews a node.
    pub fn register(&self, id: NodeId, addr: String) -> Duration {
        let mut entries = self.shared.lock();
        let expires = Instant::now() + self.shared.ttl;
        match entries.get_mut(&id) {
            Some(entry) => {
                entry.expires = expires;
                if entry.addr != addr {
                    tracing::info!(node = %id, %addr, "node re-registered at a new address");
                    entry.addr = addr;
                }
            }
            None => {
                tracing::info!(node = %id, %addr, "node registered");
                entries.insert(id, Entry { addr, expires });
            }
        }
        self.shared.publish(&entries);
        self.shared.ttl
    }

    /// Removes a node at once.
    pub fn deregister(&self, id: &NodeId) {
        let mut entries = self.shared.lock();
        if entries.remove(id).is_some() {
            tracing::info!(node = %id, "node deregistered");
            self.shared.publish(&entries);
        }
    }

    /// The gRPC service for nodes to call.
    pub fn service(&self) -> pb::registry_server::RegistryServer<RegistryService> {
        pb::registry_server::RegistryServer::new(RegistryService {
            registry: self.clone(),
        })
    }
}

impl Discovery for Registry {
    fn membership(&self) -> watch::Receiver<Membership> {
        self.shared.nodes.subscribe()
    }
}

/// `ranger.Registry` over a [`Registry`].
#[derive(Debug)]
pub struct RegistryService {
    registry: Registry,
}

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let request = request.into_inner();
        let id = NodeId::new(request.node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if request.address.parse::<std::net::SocketAddr>().is_err()
            && !request.address.contains(':')
        {
            return Err(Status::invalid_argument(format!(
                "address {:?} is not host:port",
                request.address
            )));
        }
        let ttl = self.registry.register(id, request.address);
        Ok(Response::new(pb::RegisterResponse {
            ttl_millis: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let id = NodeId::new(request.into_inner().node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.registry.deregister(&id);
        Ok(Response::new(pb::DeregisterResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use pb::registry_server::Registry as _;

    use super::*;
    use crate::testing::discovery::{self as suite, DynamicHarness, Harness};

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// Nodes registering through the gRPC service, as the node SDK does.
    struct Registered {
        registry: Registry,
        service: RegistryService,
        expected: Membership,
        next_port: u16,
    }

    impl Registered {
        async fn start() -> Self {
            let registry = Registry::new(Duration::from_secs(60));
            let service = RegistryService {
                registry: registry.clone(),
            };
            let mut harness = Registered {
                registry,
                service,
                expected: Membership::new(),
                next_port: 7001,
            };
            for _ in 0..2 {
                let (id, addr) = harness.join().await;
                harness.expected.insert(id, addr);
            }
            harness
        }

        async fn register(&self, id: &NodeId, address: &str) {
            self.service
                .register(Request::new(pb::RegisterRequest {
                    node: id.to_string(),
                    address: address.to_owned(),
                }))
                .await
                .expect("the registry takes a valid registration");
        }

        fn next_addr(&mut self) -> String {
            self.next_port += 1;
            format!("127.0.0.1:{}", self.next_port)
        }
    }

    impl Harness for Registered {
        type Discovery = Registry;

        fn discovery(&self) -> &Registry {
            &self.registry
        }

        fn expected(&self) -> Membership {
            self.expected.clone()
        }

        fn patience(&self) -> Duration {
            // Registrations take effect within the call.
            Duration::from_secs(1)
        }

        async fn renew(&mut self) {
            for (id, addr) in self.expected() {
                self.register(&id, &addr).await;
            }
        }
    }

    impl DynamicHarness for Registered {
        async fn join(&mut self) -> (NodeId, String) {
            let addr = self.next_addr();
            let id = node(&format!("n{}", self.next_port));
            self.register(&id, &addr).await;
            (id, addr)
        }

        async fn move_node(&mut self, id: &NodeId) -> String {
            let addr = self.next_addr();
            self.register(id, &addr).await;
            addr
        }

        async fn leave(&mut self, id: &NodeId) {
            self.service
                .deregister(Request::new(pb::DeregisterRequest {
                    node: id.to_string(),
                }))
                .await
                .expect("the registry takes a deregistration");
        }
    }

    #[tokio::test]
    async fn the_registry_lists_exactly_its_nodes() {
        suite::lists_exactly_its_nodes(Registered::start().await).await;
    }

    #[tokio::test]
    async fn the_registry_announces_nothing_while_nodes_only_renew() {
        suite::renewals_announce_nothing(Registered::start().await).await;
    }

    #[tokio::test]
    async fn the_registry_lists_a_joining_node() {
        suite::a_joining_node_is_listed(Registered::start().await).await;
    }

    #[tokio::test]
    async fn the_registry_follows_a_node_to_its_new_address() {
        suite::a_moved_node_is_listed_at_its_new_address(Registered::start().await).await;
    }

    #[tokio::test]
    async fn the_registry_drops_a_deregistered_node() {
        suite::a_leaving_node_is_dropped(Registered::start().await).await;
    }

    #[tokio::test(start_paused = true)]
    async fn registrations_expire_unless_renewed() {
        let registry = Registry::new(Duration::from_secs(4));
        let mut nodes = registry.membership();
        registry.register(node("a"), "127.0.0.1:1".into());
        registry.register(node("b"), "127.0.0.1:2".into());
        assert_eq!(nodes.borrow_and_update().len(), 2);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            registry.register(node("a"), "127.0.0.1:1".into());
        }
        let set = nodes.borrow_and_update().clone();
        assert_eq!(
            set.keys().collect::<Vec<_>>(),
            vec![&node("a")],
            "b expired"
        );
        registry.deregister(&node("a"));
        assert!(nodes.borrow_and_update().is_empty());
    }
}
