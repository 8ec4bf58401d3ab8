//! Integration tests against a real Consul server (one per test), started by
//! `test_agent!` in the mode `RANGER_CONSUL_MODE` selects: a container of the
//! image `bin/test` builds (the default), or the binary `bin/consul path`
//! provides as a process.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod agent {
    pub mod blocking;
    pub mod faults;
    pub mod health;
    pub mod kv;
    pub mod session;
    pub mod txn;
}
