//! Registering services with the local agent, with the health check that
//! decides whether others see them: a gRPC check the agent runs against the
//! service (Ranger's nodes serve `grpc.health.v1.Health`), or a TTL check the
//! service itself must keep passing.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Client, Scope};
use crate::duration::go_duration;
use crate::error::Result;

/// A check's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded; a `passing` health query leaves such instances out.
    Warning,
    /// Failing.
    Critical,
    /// Consul's "maintenance" or any status this client does not know.
    #[serde(other)]
    Unknown,
}

impl CheckStatus {
    fn path(self) -> &'static str {
        match self {
            CheckStatus::Passing => "pass",
            CheckStatus::Warning => "warn",
            CheckStatus::Critical | CheckStatus::Unknown => "fail",
        }
    }
}

/// How the agent decides a check's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// The agent calls `grpc.health.v1.Health/Check` at `target` every
    /// `interval`.
    Grpc {
        /// `host:port`, optionally `/service-name` after it.
        target: String,
        /// Whether to use TLS.
        use_tls: bool,
        /// Time between calls.
        interval: Duration,
        /// Time limit of one call.
        timeout: Duration,
    },
    /// The service reports its own status (see [`Client::agent_check_update`])
    /// at least every `ttl`, or the check turns critical.
    Ttl {
        /// Longest silence before the check turns critical.
        ttl: Duration,
    },
}

/// A health check attached to a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckDefinition {
    /// Check ID; Consul's default for a service's only check is
    /// `service:<service-id>`.
    pub check_id: Option<String>,
    /// A name for humans.
    pub name: Option<String>,
    /// How its status is decided.
    pub kind: CheckKind,
    /// Status until the first result (Consul's default: critical).
    pub initial_status: Option<CheckStatus>,
    /// The agent deregisters the service once the check has been critical this
    /// long, so dead nodes leave the catalog by themselves.
    pub deregister_critical_service_after: Option<Duration>,
}

impl CheckDefinition {
    /// A plaintext gRPC health check of `target` ("host:port").
    pub fn grpc(target: impl Into<String>, interval: Duration, timeout: Duration) -> Self {
        Self {
            check_id: None,
            name: None,
            kind: CheckKind::Grpc {
                target: target.into(),
                use_tls: false,
                interval,
                timeout,
            },
            initial_status: None,
            deregister_critical_service_after: None,
        }
    }

    /// A TTL check.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            check_id: None,
            name: None,
            kind: CheckKind::Ttl { ttl },
            initial_status: None,
            deregister_critical_service_after: None,
        }
    }

    fn to_wire(&self) -> WireCheck<'_> {
        let mut wire = WireCheck {
            check_id: self.check_id.as_deref(),
            name: self.name.as_deref(),
            status: self.initial_status,
            deregister_critical_service_after: self
                .deregister_critical_service_after
                .map(go_duration),
            ..WireCheck::default()
        };
        match &self.kind {
            CheckKind::Grpc {
                target,
                use_tls,
                interval,
                timeout,
            } => {
                wire.grpc = Some(target);
                wire.grpc_use_tls = Some(*use_tls);
                wire.interval = Some(go_duration(*interval));
                wire.timeout = Some(go_duration(*timeout));
            }
            CheckKind::Ttl { ttl } => wire.ttl = Some(go_duration(*ttl)),
        }
        wire
    }
}

/// A service instance to register with the local agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRegistration {
    /// Instance ID, unique on the agent (default: the name).
    pub id: Option<String>,
    /// Service name, shared by all instances.
    pub name: String,
    /// Address others should use (default: the node's).
    pub address: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Health checks.
    pub checks: Vec<CheckDefinition>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireService<'a> {
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: &'a Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    meta: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checks: Vec<WireCheck<'a>>,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireCheck<'a> {
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    check_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    grpc: Option<&'a str>,
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "Option::is_none")]
    grpc_use_tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<CheckStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deregister_critical_service_after: Option<String>,
}

impl Client {
    /// Registers (or replaces) a service instance with the local agent.
    pub async fn agent_service_register(&self, service: &ServiceRegistration) -> Result<()> {
        let wire = WireService {
            id: service.id.as_deref(),
            name: &service.name,
            address: service.address.as_deref(),
            port: service.port,
            tags: &service.tags,
            meta: &service.meta,
            checks: service
                .checks
                .iter()
                .map(CheckDefinition::to_wire)
                .collect(),
        };
        let url = self.url(&["agent", "service", "register"], None);
        self.call(Method::PUT, url, Scope::Agent)
            .json(&wire)
            .send()
            .await?;
        Ok(())
    }

    /// Removes a service instance, and its checks, from the local agent.
    pub async fn agent_service_deregister(&self, service_id: &str) -> Result<()> {
        let url = self.url(&["agent", "service", "deregister"], Some(service_id));
        self.call(Method::PUT, url, Scope::Agent).send().await?;
        Ok(())
    }

    /// Sets a TTL check's status, with a note shown as its output; this also
    /// restarts the TTL.
    pub async fn agent_check_update(
        &self,
        check_id: &str,
        status: CheckStatus,
        note: Option<&str>,
    ) -> Result<()> {
        let url = self.url(&["agent", "check", status.path()], Some(check_id));
        let mut call = self.call(Method::PUT, url, Scope::Agent);
        if let Some(note) = note {
            call = call.query(&[("note", note)]);
        }
        call.send().await?;
        Ok(())
    }

    /// Marks a TTL check passing.
    pub async fn agent_check_pass(&self, check_id: &str) -> Result<()> {
        self.agent_check_update(check_id, CheckStatus::Passing, None)
            .await
    }

    /// Marks a TTL check critical.
    pub async fn agent_check_fail(&self, check_id: &str, note: Option<&str>) -> Result<()> {
        self.agent_check_update(check_id, CheckStatus::Critical, note)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_grpc_check_as_the_reference_nodes_do() {
        let mut check = CheckDefinition::grpc(
            "127.0.0.1:7000",
            Duration::from_secs(3),
            Duration::from_secs(1),
        );
        check.deregister_critical_service_after = Some(Duration::from_secs(10));
        assert_eq!(
            serde_json::to_value(check.to_wire()).unwrap(),
            serde_json::json!({
                "GRPC": "127.0.0.1:7000", "GRPCUseTLS": false, "Interval": "3s",
                "Timeout": "1s", "DeregisterCriticalServiceAfter": "10s"
            })
        );
    }

    #[test]
    fn unknown_statuses_decode() {
        let s: CheckStatus = serde_json::from_str("\"maintenance\"").unwrap();
        assert_eq!(s, CheckStatus::Unknown);
        let s: CheckStatus = serde_json::from_str("\"critical\"").unwrap();
        assert_eq!(s, CheckStatus::Critical);
    }
}
