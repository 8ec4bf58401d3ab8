//! How to reach Consul and which limits to enforce before sending a request.

use std::fmt;
use std::time::Duration;

/// Consul's default limits, which the client checks before sending so that an
/// oversized write fails with a clear typed error instead of an HTTP 413 or a
/// rejected transaction. Raise them only together with the agent's settings
/// (`kv_max_value_size`, `txn_max_req_len`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Operations in one `/v1/txn` request (Consul: 64, not configurable).
    pub max_txn_ops: usize,
    /// Bytes of one value, in a KV put or a transaction (`kv_max_value_size`).
    pub max_value_size: usize,
    /// Bytes of a whole `/v1/txn` request body, values base64-encoded
    /// (`txn_max_req_len`).
    pub max_txn_request_bytes: usize,
}

impl Limits {
    /// Consul's default for [`Limits::max_txn_ops`].
    pub const CONSUL_MAX_TXN_OPS: usize = 64;
    /// Consul's default for [`Limits::max_value_size`]: 512 KiB.
    pub const CONSUL_MAX_VALUE_SIZE: usize = 512 * 1024;
    /// Consul's default for [`Limits::max_txn_request_bytes`]: 512 KiB.
    pub const CONSUL_MAX_TXN_REQUEST_BYTES: usize = 512 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_txn_ops: Self::CONSUL_MAX_TXN_OPS,
            max_value_size: Self::CONSUL_MAX_VALUE_SIZE,
            max_txn_request_bytes: Self::CONSUL_MAX_TXN_REQUEST_BYTES,
        }
    }
}

/// Where Consul is and how to talk to it.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL of the agent's HTTP API, e.g. `http://127.0.0.1:8500`.
    pub address: String,
    /// ACL token, sent as `X-Consul-Token` on every request.
    pub token: Option<String>,
    /// Datacenter to query instead of the agent's own.
    pub datacenter: Option<String>,
    /// Time limit of one non-blocking request. A blocking query gets its wait
    /// time on top of this, so it is also the margin past Consul's wait.
    pub request_timeout: Duration,
    /// Time limit to open a connection.
    pub connect_timeout: Duration,
    /// Limits checked before sending.
    pub limits: Limits,
}

impl ClientConfig {
    /// The local agent's default address, `http://127.0.0.1:8500`.
    pub const DEFAULT_ADDRESS: &'static str = "http://127.0.0.1:8500";

    /// A configuration for the agent at `address`, with no token, the agent's
    /// datacenter, 10 s requests and Consul's default limits.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            token: None,
            datacenter: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            limits: Limits::default(),
        }
    }

    /// Sets the ACL token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the datacenter.
    pub fn with_datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// Sets the time limit of one non-blocking request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the limits checked before sending.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::new(Self::DEFAULT_ADDRESS)
    }
}

// The token is a secret: logs and panics show only whether one is set.
impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let config = ClientConfig::default().with_token("s3cret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("redacted"));
    }
}
