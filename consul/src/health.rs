//! The healthy instances of a service, read with blocking queries so that the
//! controller and the proxy learn of a node joining or dying as it happens
//! instead of polling.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::agent::CheckStatus;
use crate::client::Client;
use crate::error::Result;
use crate::query::{Indexed, QueryOptions};

/// One health check's state.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// The check's ID.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its status.
    pub status: CheckStatus,
    /// The service it belongs to; empty for a node check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// The last output, e.g. why a gRPC check failed.
    #[serde(default)]
    pub output: String,
}

/// One instance of a service, as the health endpoint reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The node the instance is registered on.
    pub node: String,
    /// The instance ID.
    pub service_id: String,
    /// The service name.
    pub service_name: String,
    /// The address to reach it: the service's own, else its node's.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata.
    pub meta: BTreeMap<String, String>,
    /// The worst status among its checks and its node's (passing if none).
    pub status: CheckStatus,
    /// Those checks.
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    node: WireNode,
    service: WireService,
    #[serde(default, deserialize_with = "null_as_empty")]
    checks: Vec<HealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireNode {
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    meta: BTreeMap<String, String>,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Orders statuses from best to worst, so that the worst decides.
fn severity(status: CheckStatus) -> u8 {
    match status {
        CheckStatus::Passing => 0,
        CheckStatus::Warning => 1,
        CheckStatus::Unknown => 2,
        CheckStatus::Critical => 3,
    }
}

impl From<WireEntry> for ServiceEntry {
    fn from(entry: WireEntry) -> Self {
        let status = entry
            .checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| severity(*s))
            .unwrap_or(CheckStatus::Passing);
        let address = if entry.service.address.is_empty() {
            entry.node.address
        } else {
            entry.service.address
        };
        Self {
            node: entry.node.node,
            service_id: entry.service.id,
            service_name: entry.service.service,
            address,
            port: entry.service.port,
            tags: entry.service.tags,
            meta: entry.service.meta,
            status,
            checks: entry.checks,
        }
    }
}

impl Client {
    /// The instances of service `name`; only those whose checks all pass if
    /// `passing_only`. Blocks if `opts.index > 0`, answering when the list (or
    /// any check's status) changes.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
        opts: QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>> {
        let url = self.url(&["health", "service", name], None);
        let mut call = self.read(url, &opts);
        if passing_only {
            call = call.query(&[("passing", "true")]);
        }
        let answer = call.send().await?;
        let meta = answer.meta();
        let entries: Option<Vec<WireEntry>> = answer.json().await?;
        let value = entries
            .unwrap_or_default()
            .into_iter()
            .map(ServiceEntry::from)
            .collect();
        Ok(Indexed { value, meta })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_node_address_and_the_worst_status() {
        let wire: Vec<WireEntry> = serde_json::from_str(
            r#"[{"Node":{"Node":"n1","Address":"10.0.0.1"},
                 "Service":{"ID":"7001","Service":"node","Address":"","Port":7001,"Tags":null,"Meta":null},
                 "Checks":[{"CheckID":"serfHealth","Status":"passing"},
                           {"CheckID":"service:7001","Status":"critical","ServiceID":"7001","Output":"refused"}]}]"#,
        )
        .unwrap();
        let entry = ServiceEntry::from(wire.into_iter().next().unwrap());
        assert_eq!(entry.address, "10.0.0.1");
        assert_eq!(entry.port, 7001);
        assert_eq!(entry.status, CheckStatus::Critical);
        assert_eq!(entry.checks.len(), 2);
    }
}
