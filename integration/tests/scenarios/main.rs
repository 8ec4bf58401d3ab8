//! The end-to-end scenarios of issue 12, each with the hammer running through
//! the proxy the whole time, each printing one `SCENARIO` line (lost writes,
//! client-visible errors, longest write-unavailable window, time to
//! recover). Scenario 10 is 1, 2, 4 and 6 again on the embedded default (redb
//! and the registry, no Consul): the same code, another backend.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod common;
mod s01_operations;
mod s02_controller_kill;
mod s03_failover;
mod s04_node_restart;
mod s05_node_gone;
mod s06_drain;
mod s07_partition;
mod s08_consul_faults;
mod s09_bad_input;
