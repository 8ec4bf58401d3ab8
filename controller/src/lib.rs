//! Ranger's controller: the keyspace (desired state), its persistence, and (to come)
//! the roster, orchestrator, actuator and services.

pub mod bootstrap;
pub mod config;
pub mod discovery;
pub mod election;
pub mod ha;
pub mod keyspace;
pub mod orchestrator;
pub mod persist;
pub mod roster;
pub mod runtime;
pub mod service;
pub mod transport;
