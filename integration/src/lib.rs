//! End-to-end tests of the whole system as its users run it: `rangerd`,
//! `kv-node`s and `kv-proxy` as real processes on loopback, operated with
//! `rangerctl`, loaded and checked with `hammer`, on the embedded backends or
//! on a real Consul (`ranger_consul::test_agent::TestAgent`); faults come
//! from outside the code under test (`kill -9`, restarts).
//!
//! The harness builds nothing: it runs the binaries of the same cargo build
//! (see [`binaries`]), so run these tests with `cargo test --workspace`, or
//! `cargo build --workspace --bins` before `cargo test -p ranger-integration`.
//!
//! - [`cluster`]: start a cluster, reach its processes, kill and restart them;
//! - [`ctl`], [`kv`], [`hammer`]: the command-line tools, their `--json`
//!   output typed ([`views`], [`hammer::HammerReport`]);
//! - [`events`]: the controller's live events, to act at a precise step;
//! - [`metrics`]: a process's Prometheus metrics, scraped and parsed;
//! - [`raw_grpc`]: arbitrary bytes to any gRPC method (garbage input);
//! - [`relay`]: a TCP relay in front of a node that delays, stalls one or both
//!   directions, or resets (partitions from outside the processes);
//! - [`browser`]: a real headless Chromium over WebDriver (the dashboard);
//! - [`wait`]: polling with deadlines; [`summary`]: each scenario's line.

pub mod binaries;
pub mod browser;
pub mod cluster;
pub mod ctl;
pub mod events;
pub mod hammer;
pub mod kv;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod raw_grpc;
pub mod relay;
pub mod summary;
pub mod views;
pub mod wait;

pub use cluster::{Backend, Cluster, ClusterBuilder};
pub use hammer::{HammerOptions, HammerReport, HammerRun};
pub use summary::Summary;
