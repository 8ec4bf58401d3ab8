//! The Consul discovery backend against a real Consul agent (`test_agent!`):
//! nodes register the way kv-node does (with a real gRPC health server for the
//! agent's checks) and the controller's membership follows them. The backend
//! runs the public discovery suite (`ranger_controller::testing::discovery`)
//! from here, as a third-party backend would.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ranger_consul::discovery::{RegistrationConfig, ServiceRegistration};
use ranger_consul::test_agent::TestAgent;
use ranger_controller::discovery::Membership;
use ranger_controller::discovery::{ConsulDiscovery, Discovery};
use ranger_controller::testing::discovery::{self as suite, DynamicHarness, Harness};
use ranger_proto::NodeId;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

const PATIENCE: Duration = Duration::from_secs(30);

/// A node as Consul sees it: a `grpc.health.v1.Health` server reporting
/// SERVING, registered with the agent.
struct Node {
    id: String,
    addr: String,
    registration: ServiceRegistration,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Node {
    async fn start(client: ranger_consul::Client, host: &str, service: &str) -> Node {
        Node::start_as(client, host, service, None).await
    }

    /// A node registered under `service_id` if given, else under the ID the
    /// reference conventions derive from its address.
    async fn start_as(
        client: ranger_consul::Client,
        host: &str,
        service: &str,
        service_id: Option<&str>,
    ) -> Node {
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let mut config = RegistrationConfig::new(host, port).with_service_name(service);
        if let Some(id) = service_id {
            config = config.with_service_id(id);
        }
        let registration = ServiceRegistration::start(client, config).await.unwrap();
        Node {
            id: registration.service_id().to_owned(),
            addr: format!("{host}:{port}"),
            registration,
            stop,
            server,
        }
    }

    /// Dies without deregistering: the health server stops answering.
    async fn crash(self) {
        drop(self.registration);
        let _ = self.stop.send(());
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}

async fn wait_until(
    rx: &mut watch::Receiver<Membership>,
    what: &str,
    done: impl Fn(&Membership) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if done(&rx.borrow_and_update()) {
            return;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("membership ended while waiting until {what}"),
            Err(_) => panic!("timed out waiting until {what}; last: {:?}", *rx.borrow()),
        }
    }
}

fn node_id(id: &str) -> NodeId {
    NodeId::new(id).unwrap()
}

#[tokio::test]
async fn membership_follows_the_passing_instances_of_the_service() {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let discovery = ConsulDiscovery::spawn(client.clone(), "node");
    assert_eq!(discovery.service(), "node");
    let mut membership = discovery.membership();
    tokio::time::timeout(PATIENCE, discovery.synced())
        .await
        .unwrap();
    assert!(membership.borrow().is_empty());

    // A node on localhost (ID: its port) and one on another loopback address
    // (ID: host:port), as the reference conventions name them.
    let a = Node::start(client.clone(), "127.0.0.1", "node").await;
    let b = Node::start(client.clone(), "127.0.0.2", "node").await;
    assert_eq!(a.id, a.addr.rsplit(':').next().unwrap());
    assert_eq!(b.id, b.addr);
    // Another cluster's nodes in the same Consul are not ours.
    let _other = Node::start(client.clone(), "127.0.0.1", "other-cluster").await;

    let expected: Membership = [
        (node_id(&a.id), a.addr.clone()),
        (node_id(&b.id), b.addr.clone()),
    ]
    .into_iter()
    .collect();
    wait_until(&mut membership, "both nodes are members", |m| {
        *m == expected
    })
    .await;

    // A crashed node leaves once its check fails.
    let crashed = Instant::now();
    let a_id = node_id(&a.id);
    a.crash().await;
    wait_until(&mut membership, "the crashed node leaves", |m| {
        !m.contains_key(&a_id)
    })
    .await;
    eprintln!("crash -> left the membership: {:?}", crashed.elapsed());
    assert_eq!(membership.borrow().len(), 1);

    // A node that deregisters leaves at once.
    let leaving = Instant::now();
    b.registration.deregister().await.unwrap();
    wait_until(&mut membership, "the deregistered node leaves", |m| {
        m.is_empty()
    })
    .await;
    eprintln!("deregister -> left the membership: {:?}", leaving.elapsed());
    assert!(leaving.elapsed() < Duration::from_secs(2));
}

/// The discovery suite's set-up: a Consul agent, the backend following the
/// `node` service, and nodes registered with real health servers. Nodes join
/// on 127.0.0.x loopback addresses so that both ID conventions (`<port>` on
/// 127.0.0.1, `<host>:<port>` elsewhere) are exercised.
struct ConsulNodes {
    discovery: ConsulDiscovery,
    nodes: BTreeMap<NodeId, Node>,
    next_host: u8,
    // Last: the agent outlives the discovery and the nodes' registrations.
    agent: TestAgent,
}

impl ConsulNodes {
    async fn start() -> ConsulNodes {
        let agent = ranger_consul::test_agent!();
        let discovery = ConsulDiscovery::spawn(agent.client(), "node");
        let mut harness = ConsulNodes {
            discovery,
            nodes: BTreeMap::new(),
            next_host: 1,
            agent,
        };
        for _ in 0..2 {
            harness.join().await;
        }
        harness
    }
}

impl Harness for ConsulNodes {
    type Discovery = ConsulDiscovery;

    fn discovery(&self) -> &ConsulDiscovery {
        &self.discovery
    }

    fn expected(&self) -> Membership {
        self.nodes
            .iter()
            .map(|(id, node)| (id.clone(), node.addr.clone()))
            .collect()
    }

    fn patience(&self) -> Duration {
        PATIENCE
    }

    /// Each node's registration written again with a new tag, as a node
    /// updating its metadata does: Consul's answer to the discovery's
    /// blocking query changes (it wakes it), the instances' ids and addresses
    /// do not.
    async fn renew(&mut self) {
        let client = self.agent.client();
        for node in self.nodes.values() {
            let (host, port) = node.addr.rsplit_once(':').unwrap();
            let mut config = RegistrationConfig::new(host, port.parse().unwrap())
                .with_service_id(node.id.clone());
            config.tags = vec!["renewed".to_owned()];
            client
                .agent_service_register(&config.to_agent_registration())
                .await
                .unwrap();
        }
    }
}

impl DynamicHarness for ConsulNodes {
    async fn join(&mut self) -> (NodeId, String) {
        let host = format!("127.0.0.{}", self.next_host);
        self.next_host += 1;
        let node = Node::start(self.agent.client(), &host, "node").await;
        let (id, addr) = (node_id(&node.id), node.addr.clone());
        self.nodes.insert(id.clone(), node);
        (id, addr)
    }

    /// The node restarts on another port and registers again under its
    /// service ID; its old registration stops (dropped, so that it cannot
    /// put the old address back) but is not deregistered.
    async fn move_node(&mut self, id: &NodeId) -> String {
        let old = self.nodes.remove(id).expect("a known node");
        let host = old.addr.rsplit_once(':').unwrap().0.to_owned();
        old.crash().await;
        let node = Node::start_as(self.agent.client(), &host, "node", Some(id.as_str())).await;
        let addr = node.addr.clone();
        self.nodes.insert(id.clone(), node);
        addr
    }

    async fn leave(&mut self, id: &NodeId) {
        let node = self.nodes.remove(id).expect("a known node");
        node.registration.deregister().await.unwrap();
    }
}

#[tokio::test]
async fn consul_discovery_lists_exactly_its_nodes() {
    let harness = ConsulNodes::start().await;
    suite::lists_exactly_its_nodes(harness).await;
}

#[tokio::test]
async fn consul_discovery_announces_nothing_while_nodes_only_renew() {
    let harness = ConsulNodes::start().await;
    suite::renewals_announce_nothing(harness).await;
}

#[tokio::test]
async fn consul_discovery_lists_a_joining_node() {
    let harness = ConsulNodes::start().await;
    suite::a_joining_node_is_listed(harness).await;
}

#[tokio::test]
async fn consul_discovery_follows_a_node_to_its_new_address() {
    let harness = ConsulNodes::start().await;
    suite::a_moved_node_is_listed_at_its_new_address(harness).await;
}

#[tokio::test]
async fn consul_discovery_drops_a_deregistered_node() {
    let harness = ConsulNodes::start().await;
    suite::a_leaving_node_is_dropped(harness).await;
}
