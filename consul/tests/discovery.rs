//! Discovery against a real Consul agent (`test_agent!`): nodes register with
//! a real gRPC health check (served by tonic-health), watchers follow the passing
//! instances. Timings are printed (run with `--nocapture` to see them).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ranger_consul::discovery::{
    RegistrationConfig, ServiceInstance, ServiceRegistration, watch_service,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// Longest wait for anything Consul should do.
const PATIENCE: Duration = Duration::from_secs(30);

/// A `grpc.health.v1.Health` server reporting the overall service ("") as
/// SERVING, recording when each call arrives.
struct HealthServer {
    port: u16,
    calls: Arc<Mutex<Vec<Instant>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl HealthServer {
    async fn start(ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        let service = InterceptedService::new(health, move |request| {
            log.lock().unwrap().push(Instant::now());
            Ok(request)
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            port,
            calls,
            stop: Some(stop),
            task,
        }
    }

    fn first_call(&self) -> Option<Instant> {
        self.calls.lock().unwrap().first().copied()
    }

    /// Stops listening; returns when the port refuses connections.
    async fn stop(mut self) -> Instant {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        Instant::now()
    }
}

/// Waits until the published set satisfies `done`; returns when it was seen.
async fn wait_until(
    rx: &mut watch::Receiver<Vec<ServiceInstance>>,
    what: &str,
    done: impl Fn(&[ServiceInstance]) -> bool,
) -> Instant {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if done(&rx.borrow_and_update()) {
            return Instant::now();
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the watch ended while waiting until {what}"),
            Err(_) => panic!(
                "timed out waiting until {what}; last set: {:?}",
                *rx.borrow()
            ),
        }
    }
}

fn has(id: &str) -> impl Fn(&[ServiceInstance]) -> bool + '_ {
    move |set| set.iter().any(|i| i.id == id)
}

fn lacks(id: &str) -> impl Fn(&[ServiceInstance]) -> bool + '_ {
    move |set| set.iter().all(|i| i.id != id)
}

#[tokio::test]
async fn a_registration_is_seen_once_its_check_passes_and_deregistration_removes_it_at_once() {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let server = HealthServer::start("127.0.0.1").await;
    let (mut rx, watch) = watch_service(client.clone(), "node");
    tokio::time::timeout(PATIENCE, watch.synced())
        .await
        .unwrap();
    assert!(rx.borrow().is_empty());

    let registered_at = Instant::now();
    let registration = ServiceRegistration::start(
        client.clone(),
        RegistrationConfig::new("127.0.0.1", server.port),
    )
    .await
    .unwrap();
    let id = server.port.to_string();
    assert_eq!(
        registration.service_id(),
        id,
        "localhost rule: the port alone"
    );

    let seen = wait_until(&mut rx, "the node is seen", has(&id)).await;
    let first_check = server.first_call().expect("the agent checked the node");
    assert_eq!(
        *rx.borrow(),
        [ServiceInstance {
            id: id.clone(),
            address: "127.0.0.1".into(),
            port: server.port,
        }]
    );
    assert_eq!(rx.borrow()[0].addr(), format!("127.0.0.1:{}", server.port));
    // What the agent holds matches what the background task compares against,
    // so it does not re-register needlessly.
    let held = client.agent_service(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            held.id.as_str(),
            held.service.as_str(),
            held.address.as_str(),
            held.port
        ),
        (id.as_str(), "node", "127.0.0.1", server.port)
    );
    let after_check = seen.saturating_duration_since(first_check);
    eprintln!(
        "registration -> seen: {:?} (first passing gRPC check -> seen: {:?})",
        seen - registered_at,
        after_check
    );
    // Typically tens of milliseconds; Consul's own agent-to-catalog sync can
    // take a second or two on a loaded machine. A polling watcher would take
    // its whole period.
    assert!(
        after_check < Duration::from_secs(3),
        "seen {after_check:?} after the check passed"
    );

    // Further passing checks change nothing, so nothing is published.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        server.calls.lock().unwrap().len() >= 2,
        "the agent checked again"
    );
    assert!(!rx.has_changed().unwrap(), "no change, no publication");

    let deregistering = Instant::now();
    registration.deregister().await.unwrap();
    assert_eq!(client.agent_service(&id).await.unwrap(), None);
    let gone = wait_until(&mut rx, "the node is gone", lacks(&id)).await;
    eprintln!("deregister -> gone: {:?}", gone - deregistering);
    assert!(gone - deregistering < Duration::from_secs(1));
}

#[tokio::test]
async fn a_node_whose_health_server_stops_goes_critical_and_leaves() {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let server = HealthServer::start("127.0.0.1").await;
    let port = server.port;
    let id = port.to_string();
    let _registration =
        ServiceRegistration::start(client.clone(), RegistrationConfig::new("127.0.0.1", port))
            .await
            .unwrap();
    let (mut rx, _watch) = watch_service(client.clone(), "node");
    wait_until(&mut rx, "the node is seen", has(&id)).await;

    let stopped = server.stop().await;
    let gone = wait_until(&mut rx, "the stopped node leaves", lacks(&id)).await;
    eprintln!(
        "health server stopped -> gone from the passing list: {:?}",
        gone - stopped
    );
    // One check interval (3 s) plus the check's time limit, with slack.
    assert!(gone - stopped < Duration::from_secs(6));
    // Critical, not deregistered: the agent still holds it (for 10 s or more).
    let held = client.agent_service(&id).await.unwrap().unwrap();
    assert_eq!(held.port, port);
}

#[tokio::test]
async fn a_service_deregistered_behind_its_back_is_registered_again() {
    // The registration's own account (its resyncs, the agent's errors and
    // the backoff after them) goes with a failure: once, on a loaded machine,
    // the service took 29 s to come back, and nothing said why.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("ranger_consul=debug")
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let server = HealthServer::start("127.0.0.1").await;
    let id = server.port.to_string();
    let _registration = ServiceRegistration::start(
        client.clone(),
        RegistrationConfig::new("127.0.0.1", server.port),
    )
    .await
    .unwrap();
    let (mut rx, _watch) = watch_service(client.clone(), "node");
    wait_until(&mut rx, "the node is seen", has(&id)).await;

    let removed = Instant::now();
    client.agent_service_deregister(&id).await.unwrap();
    wait_until(&mut rx, "the removed node leaves", lacks(&id)).await;
    let back = wait_until(&mut rx, "the node is registered again", has(&id)).await;
    eprintln!(
        "deregistered behind its back -> passing again: {:?}",
        back - removed
    );
    // The 3 s resync plus up to one 3 s check interval, with slack.
    assert!(back - removed < Duration::from_secs(10));
    assert!(client.agent_service(&id).await.unwrap().is_some());
}

#[tokio::test]
async fn service_ids_follow_the_localhost_rule_and_names_are_configurable() {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let (mut rx, _watch) = watch_service(client.clone(), "kv");

    // "localhost": the port alone.
    let local = HealthServer::start("127.0.0.1").await;
    let by_name = ServiceRegistration::start(
        client.clone(),
        RegistrationConfig::new("localhost", local.port).with_service_name("kv"),
    )
    .await
    .unwrap();
    assert_eq!(by_name.service_id(), local.port.to_string());
    assert_eq!(by_name.service_name(), "kv");

    // Any other host: host:port. 127.0.0.2 is loopback too on Linux, so the
    // agent can check it.
    let other = HealthServer::start("127.0.0.2").await;
    let other_id = format!("127.0.0.2:{}", other.port);
    let by_address = ServiceRegistration::start(
        client.clone(),
        RegistrationConfig::new("127.0.0.2", other.port).with_service_name("kv"),
    )
    .await
    .unwrap();
    assert_eq!(by_address.service_id(), other_id);

    wait_until(&mut rx, "both nodes pass", |set| set.len() == 2).await;
    let mut expected = vec![
        ServiceInstance {
            id: local.port.to_string(),
            address: "localhost".into(),
            port: local.port,
        },
        ServiceInstance {
            id: other_id,
            address: "127.0.0.2".into(),
            port: other.port,
        },
    ];
    expected.sort();
    assert_eq!(*rx.borrow(), expected);
    // The default name saw none of this.
    let node = client
        .health_service("node", false, Default::default())
        .await
        .unwrap();
    assert!(node.value.is_empty());
}

#[tokio::test]
async fn the_watch_keeps_the_last_known_set_while_consul_is_unreachable() {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let server = HealthServer::start("127.0.0.1").await;
    let id = server.port.to_string();
    let _registration = ServiceRegistration::start(
        client.clone(),
        RegistrationConfig::new("127.0.0.1", server.port),
    )
    .await
    .unwrap();
    let (mut rx, watch) = watch_service(client.clone(), "node");
    wait_until(&mut rx, "the node is seen", has(&id)).await;

    drop(agent); // kills Consul
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!rx.has_changed().unwrap(), "nothing published");
    assert_eq!(rx.borrow().len(), 1, "the last known set stays");
    assert!(watch.is_synced());
}
