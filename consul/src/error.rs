//! Everything that can go wrong talking to Consul, as values a caller can match
//! on: a CAS conflict, a lost session or a rolled-back transaction each call for
//! a different reaction, which strings would hide.

use std::fmt;
use std::time::Duration;

/// The result of a call to Consul.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One failed operation of a rolled-back transaction, as Consul reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOpError {
    /// Position of the failed operation in the request, from 0.
    pub op_index: usize,
    /// Consul's explanation, e.g. `failed to set key "k", index is stale`.
    pub what: String,
}

impl fmt::Display for TxnOpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {}: {}", self.op_index, self.what)
    }
}

/// An error from this client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configured address is not an `http` or `https` URL.
    #[error("invalid Consul address {address:?}: {reason}")]
    InvalidAddress {
        /// The address as configured.
        address: String,
        /// Why it was refused.
        reason: String,
    },
    /// An argument Consul would refuse, caught before sending.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request did not get an answer: connection refused, reset, or timed
    /// out. Usually worth retrying after a pause.
    #[error("request {method} {path} to Consul failed: {source}")]
    Transport {
        /// HTTP method.
        method: String,
        /// URL path of the request.
        path: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// Consul answered with an unexpected HTTP status.
    #[error("Consul answered {status} to {method} {path}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// HTTP method.
        method: String,
        /// URL path of the request.
        path: String,
        /// The start of Consul's answer, which explains the status.
        body: String,
    },
    /// Consul's answer could not be decoded.
    #[error("could not decode Consul's answer to {path}: {reason}")]
    Decode {
        /// URL path of the request.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A transaction has more operations than Consul accepts in one request;
    /// the caller must split it into batches.
    #[error("transaction has {ops} operations; Consul accepts at most {max} in one")]
    TxnTooManyOps {
        /// Operations in the refused transaction.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction's request body is larger than Consul accepts.
    #[error("transaction request is {bytes} bytes; Consul accepts at most {max}")]
    TxnTooLarge {
        /// Size of the encoded request body.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A value is larger than Consul stores.
    #[error("value of key {key:?} is {size} bytes; Consul stores at most {max}")]
    ValueTooLarge {
        /// The key the value was for.
        key: String,
        /// Size of the value.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Consul rolled the transaction back (HTTP 409): none of its operations
    /// took effect. Each entry names a failed operation.
    #[error("transaction rolled back: {}", join(.0))]
    TxnRolledBack(Vec<TxnOpError>),
    /// The session does not exist (any more): destroyed, expired, or
    /// invalidated by a failing health check.
    #[error("session {0} not found")]
    SessionNotFound(String),
    /// Consul elected no leader within the time allowed.
    #[error("Consul has no leader after {0:?}")]
    NoLeader(Duration),
}

impl Error {
    /// True for errors that may go away by themselves: no answer, a timeout, or
    /// a 5xx status (e.g. "No cluster leader" during an election).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::NoLeader(_) => true,
            Error::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The per-operation errors of a rolled-back transaction, if this is one.
    pub fn txn_errors(&self) -> Option<&[TxnOpError]> {
        match self {
            Error::TxnRolledBack(errors) => Some(errors),
            _ => None,
        }
    }
}

fn join(errors: &[TxnOpError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolled_back_lists_every_failed_op() {
        let error = Error::TxnRolledBack(vec![
            TxnOpError {
                op_index: 0,
                what: "a".into(),
            },
            TxnOpError {
                op_index: 3,
                what: "b".into(),
            },
        ]);
        assert_eq!(
            error.to_string(),
            "transaction rolled back: op 0: a; op 3: b"
        );
        assert_eq!(error.txn_errors().map(<[_]>::len), Some(2));
        assert!(!error.is_transient());
    }
}
