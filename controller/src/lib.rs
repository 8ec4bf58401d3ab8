//! Ranger's controller (DESIGN.md §5): the keyspace (what we want, durable), the
//! roster (what nodes say, volatile), the orchestrator (a pure engine: events in,
//! commands out), the runtime that executes its commands and persists its changes
//! first, node transports, persistence and discovery backends, leader election,
//! the gRPC services, and the `rangerd` and `rangerctl` binaries.
//!
//! The actuator of the Go reference (one command per placement, de-duplicated,
//! with failure counting and backoff) is `orchestrator::attempts` here, inside
//! the engine, so that its decisions are as testable as the rest.

pub mod balancer;
pub mod bootstrap;
pub mod config;
pub mod dashboard;
pub mod discovery;
pub mod election;
pub mod ha;
pub mod http;
pub mod keyspace;
pub mod metrics;
pub mod orchestrator;
pub mod persist;
pub mod range_maps;
pub mod roster;
pub mod runtime;
pub mod service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
