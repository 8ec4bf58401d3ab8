//! `TestAgent`'s fault controls, each proved by its effect on a client: in the
//! mode `RANGER_CONSUL_MODE` selects (a container in CI), and in process mode
//! too, whose signals are a different implementation of the same promise.

use std::net::TcpStream;
use std::time::Duration;

use ranger_consul::test_agent::{Mode, TestAgent};
use ranger_consul::{Client, ClientConfig, Error, PutOptions, QueryOptions};
use tokio::time::Instant;

async fn start(mode: Option<Mode>) -> TestAgent {
    let started = match mode {
        Some(mode) => TestAgent::start_in(mode).await,
        None => TestAgent::start().await,
    };
    started.unwrap_or_else(|error| panic!("{error}"))
}

async fn read(client: &Client, key: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(client
        .kv_get(key, QueryOptions::default())
        .await?
        .value
        .map(|pair| pair.value))
}

async fn writes_survive_restarts(mode: Option<Mode>) {
    let mut agent = start(mode).await;
    let client = agent.client();
    let keys: Vec<String> = (0..20).map(|i| format!("faults/k{i}")).collect();
    for key in &keys {
        assert!(
            client
                .kv_put(key, key.as_bytes(), &PutOptions::default())
                .await
                .unwrap()
        );
    }

    // A bounce: everything acknowledged before is there after, on the same
    // address (the client is the one made before the restart).
    let bounced = Instant::now();
    agent.restart().await.unwrap();
    eprintln!(
        "{:?} restart -> ready: {:?}",
        agent.mode(),
        bounced.elapsed()
    );
    for key in &keys {
        assert_eq!(
            read(&client, key).await.unwrap().as_deref(),
            Some(key.as_bytes())
        );
    }

    // A stop with a down period: the agent refuses connections meanwhile,
    // then comes back with the writes from both runs.
    assert!(
        client
            .kv_put("faults/after", b"second run", &PutOptions::default())
            .await
            .unwrap()
    );
    agent.stop().await.unwrap();
    let down = read(&client, "faults/k0").await;
    assert!(
        matches!(down, Err(Error::Transport { .. })),
        "a stopped agent answered: {down:?}"
    );
    agent.restart().await.unwrap();
    assert_eq!(
        read(&client, "faults/after").await.unwrap().as_deref(),
        Some(&b"second run"[..])
    );
    for key in &keys {
        assert_eq!(
            read(&client, key).await.unwrap().as_deref(),
            Some(key.as_bytes())
        );
    }
}

async fn pause_holds_requests_until_unpause(mode: Option<Mode>) {
    let mut agent = start(mode).await;
    let addr = agent.http_addr();
    // Which agent this is, as the value read back: a read answered by
    // anything else would show.
    let who = format!("{:?} agent {}", agent.mode(), agent.node());
    // Longer than the pause, so that only the pause can hold the answer.
    let patient = Client::new(
        ClientConfig::new(agent.address()).with_request_timeout(Duration::from_secs(60)),
    )
    .unwrap();
    assert!(
        patient
            .kv_put("faults/frozen", who.as_bytes(), &PutOptions::default())
            .await
            .unwrap()
    );

    agent.pause().await.unwrap();
    let paused = Instant::now();
    let reader = patient.clone();
    let pending = tokio::spawn(async move { read(&reader, "faults/frozen").await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    if pending.is_finished() {
        let read = pending.await;
        panic!(
            "a read was answered while the {who} was paused: {:?}\n{}",
            read.map(
                |read| read.map(|value| value.map(|v| String::from_utf8_lossy(&v).into_owned()))
            ),
            agent.log_tail(30).await
        );
    }

    agent.unpause().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the read is answered soon after unpause")
        .unwrap()
        .unwrap();
    assert_eq!(answer.as_deref(), Some(who.as_bytes()));
    assert!(paused.elapsed() >= Duration::from_secs(2));

    // A paused agent can be stopped and restarted, data and all.
    agent.pause().await.unwrap();
    agent.stop().await.unwrap();
    agent.restart().await.unwrap();
    assert_eq!(
        read(&patient, "faults/frozen").await.unwrap().as_deref(),
        Some(who.as_bytes())
    );

    // Dropping a paused agent still removes it: nothing listens any more.
    agent.pause().await.unwrap();
    drop(agent);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "{addr} still accepts connections after the paused agent was dropped"
    );
}

#[tokio::test]
async fn writes_survive_a_restart_and_a_stop_in_the_selected_mode() {
    writes_survive_restarts(None).await;
}

#[tokio::test]
async fn writes_survive_a_restart_and_a_stop_in_process_mode() {
    writes_survive_restarts(Some(Mode::Process)).await;
}

#[tokio::test]
async fn a_paused_agent_answers_only_after_unpause_in_the_selected_mode() {
    pause_holds_requests_until_unpause(None).await;
}

#[tokio::test]
async fn a_paused_agent_answers_only_after_unpause_in_process_mode() {
    pause_holds_requests_until_unpause(Some(Mode::Process)).await;
}
