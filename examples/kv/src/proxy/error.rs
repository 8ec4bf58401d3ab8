//! The proxy's errors. Setup mistakes ([`ProxyError`]) stop the binary; a request
//! that found no server in time ([`GaveUp`]) becomes the client's UNAVAILABLE.

use std::fmt;
use std::time::Duration;

use ranger_proto::Key;
use tonic::{Code, Status};

/// A configuration the proxy cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A node address is not `host:port`.
    #[error("bad node address {addr:?}: {reason}")]
    BadNodeAddress { addr: String, reason: String },
    /// The controller address cannot be turned into an endpoint.
    #[error("bad controller address {addr:?}: {source}")]
    BadController {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// What the last attempt at a request ran into; part of the final error message so
/// that an operator can tell "nobody serves this" from "its node refuses".
#[derive(Debug, Clone, PartialEq)]
pub enum LastFailure {
    /// No node reports an Active range holding the key.
    NoActiveRange,
    /// A node answered with a retryable status.
    Refused {
        addr: String,
        code: Code,
        message: String,
    },
    /// A node did not answer before the deadline.
    TimedOut { addr: String },
    /// The routing table named an address no channel can be made for.
    Unreachable { addr: String, reason: String },
}

impl fmt::Display for LastFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastFailure::NoActiveRange => write!(f, "no node reports an Active range holding it"),
            LastFailure::Refused {
                addr,
                code,
                message,
            } => write!(f, "node {addr} answered {code:?}: {message}"),
            LastFailure::TimedOut { addr } => write!(f, "node {addr} did not answer in time"),
            LastFailure::Unreachable { addr, reason } => {
                write!(f, "node {addr} cannot be reached: {reason}")
            }
        }
    }
}

/// A keyed request retried until its deadline without being served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{method} of key {key}: not served within {deadline:?} ({attempts} attempts on nodes; last: {last})"
)]
pub struct GaveUp {
    pub method: &'static str,
    pub key: Key,
    pub deadline: Duration,
    /// How many times a node was actually called (waiting for a route is not one).
    pub attempts: u32,
    pub last: LastFailure,
}

impl From<GaveUp> for Status {
    fn from(e: GaveUp) -> Self {
        Status::unavailable(e.to_string())
    }
}
