//! Integration tests against a real `consul agent -dev` (one per test), started
//! by `test_agent_or_skip!` from the binary `bin/consul path` provides (or, with
//! the feature `testcontainers` and `RANGER_CONSUL_DOCKER=1`, in Docker: skipped
//! with a message when no Docker engine answers).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent {
    pub mod blocking;
    pub mod health;
    pub mod kv;
    pub mod session;
    pub mod txn;
}
