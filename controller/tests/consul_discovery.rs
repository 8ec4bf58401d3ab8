//! The Consul discovery backend against a real `consul agent -dev`: nodes
//! register the way kv-node does (with a real gRPC health server for the
//! agent's checks) and the controller's membership follows them.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use ranger_consul::discovery::{RegistrationConfig, ServiceRegistration};
use ranger_controller::discovery::Membership;
use ranger_controller::discovery::{ConsulDiscovery, Discovery};
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
        let registration = ServiceRegistration::start(
            client,
            RegistrationConfig::new(host, port).with_service_name(service),
        )
        .await
        .unwrap();
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
    let agent = ranger_consul::test_agent_or_skip!();
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
