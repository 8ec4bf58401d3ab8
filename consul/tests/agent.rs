//! Integration tests against a real `consul agent -dev` (one per test), started
//! by `TestAgent` from the binary `bin/consul path` provides.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent {
    pub mod blocking;
    pub mod health;
    pub mod kv;
    pub mod session;
    pub mod txn;
}

use ranger_consul::test_agent::TestAgent;

/// Starts an agent, or fails the test with the reason (and the agent's log).
pub async fn agent() -> TestAgent {
    match TestAgent::start().await {
        Ok(agent) => agent,
        Err(error) => panic!("{error}"),
    }
}
