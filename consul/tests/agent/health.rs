use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use ranger_consul::{
    BlockingQuery, CheckDefinition, CheckStatus, Client, ServiceEntry, ServiceRegistration,
};

/// Watches `service` with blocking queries until `done` holds for its
/// instances (all if `!passing_only`), or fails after 20 s.
async fn wait_for(
    client: &Client,
    service: &str,
    passing_only: bool,
    what: &str,
    done: impl Fn(&[ServiceEntry]) -> bool,
) -> Vec<ServiceEntry> {
    let mut watch = BlockingQuery::new(Duration::from_secs(5));
    let watching = async {
        loop {
            let answer = watch
                .try_next(|o| client.health_service(service, passing_only, o))
                .await
                .unwrap();
            if done(&answer.value) {
                return answer.value;
            }
        }
    };
    within(watching, what).await
}

async fn within<T>(f: impl Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"))
}

fn ids(entries: &[ServiceEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.service_id.as_str()).collect()
}

#[tokio::test]
async fn ttl_check_decides_whether_the_service_is_listed_as_passing() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    let mut check = CheckDefinition::ttl(Duration::from_secs(30));
    check.deregister_critical_service_after = Some(Duration::from_secs(60));
    c.agent_service_register(&ServiceRegistration {
        id: Some("7001".into()),
        name: "node".into(),
        address: Some("127.0.0.1".into()),
        port: Some(7001),
        checks: vec![check],
        ..ServiceRegistration::default()
    })
    .await
    .unwrap();

    // New checks start critical: registered, but not passing.
    let all = wait_for(&c, "node", false, "the service is registered", |e| {
        !e.is_empty()
    })
    .await;
    assert_eq!(ids(&all), ["7001"]);
    assert_eq!(all[0].status, CheckStatus::Critical);
    assert!(
        c.health_service("node", true, Default::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );

    c.agent_check_pass("service:7001").await.unwrap();
    let passing = wait_for(&c, "node", true, "the service passes", |e| !e.is_empty()).await;
    let entry = &passing[0];
    assert_eq!(
        (
            entry.service_id.as_str(),
            entry.address.as_str(),
            entry.port
        ),
        ("7001", "127.0.0.1", 7001)
    );
    assert_eq!(entry.node, agent.node());
    assert_eq!(entry.status, CheckStatus::Passing);

    c.agent_check_fail("service:7001", Some("draining"))
        .await
        .unwrap();
    wait_for(
        &c,
        "node",
        true,
        "the failing service leaves the passing list",
        |e| e.is_empty(),
    )
    .await;
    let all = c
        .health_service("node", false, Default::default())
        .await
        .unwrap()
        .value;
    let check = all[0]
        .checks
        .iter()
        .find(|c| c.check_id == "service:7001")
        .unwrap();
    assert_eq!(check.status, CheckStatus::Critical);
    assert_eq!(check.output, "draining");

    c.agent_service_deregister("7001").await.unwrap();
    wait_for(&c, "node", false, "the service is gone", |e| e.is_empty()).await;
}

#[tokio::test]
async fn grpc_check_of_a_dead_port_goes_critical() {
    let agent = ranger_consul::test_agent!();
    let c = agent.client();
    // A port nothing listens on.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut check = CheckDefinition::grpc(
        format!("127.0.0.1:{port}"),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    // Start passing, so that turning critical shows the agent ran the check.
    check.initial_status = Some(CheckStatus::Passing);
    check.deregister_critical_service_after = Some(Duration::from_secs(600));
    c.agent_service_register(&ServiceRegistration {
        id: Some(port.to_string()),
        name: "grpc-node".into(),
        port: Some(port),
        checks: vec![check],
        ..ServiceRegistration::default()
    })
    .await
    .unwrap();
    let all = wait_for(
        &c,
        "grpc-node",
        false,
        "the gRPC check turns critical",
        |e| e.iter().any(|e| e.status == CheckStatus::Critical),
    )
    .await;
    let check = all[0]
        .checks
        .iter()
        .find(|c| !c.service_id.is_empty())
        .unwrap();
    assert_eq!(check.status, CheckStatus::Critical);
    assert!(!check.output.is_empty(), "the output says why");
    assert!(
        c.health_service("grpc-node", true, Default::default())
            .await
            .unwrap()
            .value
            .is_empty()
    );
}
