//! Consul sessions: the liveness token behind locks. A lock held by a session
//! is released (or its key deleted) when the session ends, by TTL expiry,
//! destruction, or a failing health check; Ranger's controller leader holds its
//! lock and fences its writes with one.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Scope};
use crate::duration::go_duration;
use crate::error::{Error, Result};
use crate::query::QueryOptions;

/// What happens to a session's locks when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionBehavior {
    /// The locks are released; the keys stay.
    #[default]
    #[serde(rename = "release")]
    Release,
    /// The locked keys are deleted.
    #[serde(rename = "delete")]
    Delete,
}

/// A health check a session is tied to: a failing one ends the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCheckRef {
    /// The check's ID, e.g. `service:<service-id>`.
    #[serde(rename = "ID")]
    pub id: String,
    /// Namespace (Consul Enterprise only).
    #[serde(rename = "Namespace", default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What a new session is like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRequest {
    /// A name for humans.
    pub name: Option<String>,
    /// The session ends unless renewed within this (10 s to 24 h). Without a
    /// TTL it lives until destroyed or a check fails.
    pub ttl: Option<Duration>,
    /// What happens to its locks when it ends.
    pub behavior: SessionBehavior,
    /// After the session ends, nobody can take its locks for this long (Consul's
    /// default: 15 s), so a holder that did not notice yet stops first. 0 turns
    /// it off.
    pub lock_delay: Option<Duration>,
    /// Node to tie the session to (default: the agent's node).
    pub node: Option<String>,
    /// Node checks that end the session when they fail. `None` keeps Consul's
    /// default (the node's `serfHealth`); `Some(vec![])` ties it to none, so
    /// that only the TTL ends it.
    pub node_checks: Option<Vec<String>>,
    /// Service checks that end the session when they fail.
    pub service_checks: Option<Vec<ServiceCheckRef>>,
}

impl SessionRequest {
    /// Consul's shortest session TTL.
    pub const MIN_TTL: Duration = Duration::from_secs(10);
    /// Consul's longest session TTL.
    pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

    /// A session that only its TTL ends (no node checks), with `behavior`.
    pub fn with_ttl(ttl: Duration, behavior: SessionBehavior) -> Self {
        Self {
            ttl: Some(ttl),
            behavior,
            node_checks: Some(Vec::new()),
            ..Self::default()
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireSessionRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    behavior: SessionBehavior,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock_delay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_checks: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_checks: Option<&'a [ServiceCheckRef]>,
}

#[derive(Debug, Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

/// A session as Consul reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    /// The session's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The node it is tied to.
    #[serde(default)]
    pub node: String,
    /// Lock delay, in nanoseconds as Consul reports it.
    #[serde(default)]
    pub lock_delay: u64,
    /// What happens to its locks when it ends.
    #[serde(default)]
    pub behavior: SessionBehavior,
    /// TTL as Consul writes it (e.g. `"10s"`), empty if none.
    #[serde(rename = "TTL", default)]
    pub ttl: String,
    /// Node checks it is tied to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub node_checks: Vec<String>,
    /// Service checks it is tied to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub service_checks: Vec<ServiceCheckRef>,
    /// Raft index of its creation.
    #[serde(default)]
    pub create_index: u64,
    /// Raft index of its last change.
    #[serde(default)]
    pub modify_index: u64,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl Client {
    /// Creates a session and returns its ID.
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String> {
        if let Some(ttl) = request.ttl
            && !(SessionRequest::MIN_TTL..=SessionRequest::MAX_TTL).contains(&ttl)
        {
            return Err(Error::InvalidArgument(format!(
                "session TTL {ttl:?} is outside Consul's range of 10 s to 24 h"
            )));
        }
        let wire = WireSessionRequest {
            name: request.name.as_deref(),
            ttl: request.ttl.map(go_duration),
            behavior: request.behavior,
            lock_delay: request.lock_delay.map(go_duration),
            node: request.node.as_deref(),
            node_checks: request.node_checks.as_deref(),
            service_checks: request.service_checks.as_deref(),
        };
        let url = self.url(&["session", "create"], None);
        let created: Created = self
            .call(Method::PUT, url, Scope::Cluster)
            .json(&wire)
            .send()
            .await?
            .json()
            .await?;
        Ok(created.id)
    }

    /// Renews a TTL session, pushing its expiry a TTL ahead. Returns
    /// [`Error::SessionNotFound`] if the session has ended: its locks are gone.
    pub async fn session_renew(&self, id: &str) -> Result<SessionInfo> {
        let url = self.url(&["session", "renew"], Some(id));
        let answer = self
            .call(Method::PUT, url, Scope::Cluster)
            .send_raw()
            .await?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Err(Error::SessionNotFound(id.to_owned()));
        }
        let sessions: Option<Vec<SessionInfo>> = answer.success().await?.json().await?;
        sessions
            .and_then(|s| s.into_iter().next())
            .ok_or_else(|| Error::SessionNotFound(id.to_owned()))
    }

    /// Ends a session, releasing (or deleting) its locks at once. Ending a
    /// session that does not exist is not an error.
    pub async fn session_destroy(&self, id: &str) -> Result<()> {
        let url = self.url(&["session", "destroy"], Some(id));
        let _: bool = self
            .call(Method::PUT, url, Scope::Cluster)
            .send()
            .await?
            .json()
            .await?;
        Ok(())
    }

    /// Reads a session; `None` if it does not exist (any more).
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>> {
        let url = self.url(&["session", "info"], Some(id));
        let answer = self.read(url, &QueryOptions::default()).send_raw().await?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let sessions: Option<Vec<SessionInfo>> = answer.success().await?.json().await?;
        Ok(sessions.and_then(|s| s.into_iter().next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_ttl_session_without_node_checks() {
        let request = SessionRequest::with_ttl(Duration::from_secs(10), SessionBehavior::Delete);
        let wire = WireSessionRequest {
            name: None,
            ttl: request.ttl.map(go_duration),
            behavior: request.behavior,
            lock_delay: Some(go_duration(Duration::ZERO)),
            node: None,
            node_checks: request.node_checks.as_deref(),
            service_checks: None,
        };
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            serde_json::json!({"TTL": "10s", "Behavior": "delete", "LockDelay": "0s", "NodeChecks": []})
        );
    }

    #[test]
    fn decodes_null_check_lists() {
        let info: SessionInfo = serde_json::from_str(
            r#"{"ID":"x","Name":"","Node":"n","LockDelay":15000000000,"Behavior":"release","TTL":"10s","NodeChecks":null,"ServiceChecks":null,"CreateIndex":1,"ModifyIndex":1}"#,
        )
        .unwrap();
        assert!(info.node_checks.is_empty() && info.service_checks.is_empty());
        assert_eq!(info.behavior, SessionBehavior::Release);
    }
}
