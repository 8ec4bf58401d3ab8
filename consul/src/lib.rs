//! A typed async client for the parts of Consul's HTTP API that Ranger uses.
//!
//! Consul is Ranger's production backend for persistence (KV, written in
//! compare-and-set transactions), discovery (agent services with health checks,
//! read through blocking queries) and leader election (sessions). Existing crates
//! lack transactions, sessions, checks or binary values, so this one covers
//! exactly what Ranger needs, with typed errors instead of strings:
//!
//! - [`kv`]: get, list, keys, put and delete, with CAS and lock sessions;
//! - [`txn`]: atomic multi-key transactions, checked against Consul's limits
//!   before they are sent;
//! - [`session`] and [`keeper`]: sessions and a task that keeps one alive and
//!   reports its loss;
//! - [`agent`] and [`health`]: service registration with gRPC or TTL checks, and
//!   the list of healthy instances;
//! - [`discovery`]: Ranger's discovery conventions on top of those: a node's
//!   self-registration kept in place by a background task, and a watch of a
//!   service's healthy instances;
//! - [`nodes`]: those instances as Ranger's node set (node id to address), the
//!   one translation the controller and storage systems' routers share;
//! - [`blocking`]: the index bookkeeping of Consul's blocking queries, so that
//!   watchers wait for changes instead of polling;
//! - [`status`]: the cluster leader, to wait until Consul can serve writes.
//!
//! With the `test-agent` feature, [`test_agent::TestAgent`] runs a real
//! single-node Consul server for tests, as a container through testcontainers
//! (the default) or as a process, and can freeze, stop and restart it.

pub mod agent;
pub mod blocking;
pub mod client;
pub mod config;
pub mod discovery;
mod duration;
pub mod error;
pub mod health;
pub mod keeper;
pub mod kv;
pub mod nodes;
pub mod query;
pub mod session;
pub mod status;
#[cfg(feature = "test-agent")]
pub mod test_agent;
pub mod txn;

pub use agent::{CheckDefinition, CheckKind, CheckStatus, ServiceRegistration};
pub use blocking::BlockingQuery;
pub use client::Client;
pub use config::{ClientConfig, Limits};
// `discovery::ServiceRegistration` keeps its module path: the name here is the
// agent's plain registration.
pub use discovery::{RegistrationConfig, ServiceInstance, ServiceWatch, watch_service};
pub use error::{Error, Result, TxnOpError};
pub use health::{HealthCheck, ServiceEntry};
pub use keeper::{SessionKeeper, SessionLoss, SessionStatus};
pub use kv::{DeleteOptions, KvPair, PutOptions};
pub use nodes::NodeWatch;
pub use query::{Consistency, Indexed, QueryMeta, QueryOptions};
pub use session::{SessionBehavior, SessionInfo, SessionRequest};
pub use txn::{TxnOp, TxnResults};
