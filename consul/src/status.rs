//! The cluster's leader: until there is one, Consul refuses writes and
//! consistent reads, so callers (and tests) wait for it first.

use std::time::Duration;

use reqwest::Method;
use tokio::time::Instant;

use crate::client::{Client, Scope};
use crate::error::{Error, Result};

impl Client {
    /// The leader's Raft address, or `None` while there is none.
    pub async fn status_leader(&self) -> Result<Option<String>> {
        let url = self.url(&["status", "leader"], None);
        let leader: String = self
            .call(Method::GET, url, Scope::Cluster)
            .send()
            .await?
            .json()
            .await?;
        Ok(Some(leader).filter(|l| !l.is_empty()))
    }

    /// Waits until the cluster has a leader, polling every 100 ms through
    /// errors (the agent may still be starting); [`Error::NoLeader`] after
    /// `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.status_leader().await {
                Ok(Some(leader)) => return Ok(leader),
                Ok(None) => {}
                Err(error) if error.is_transient() => {}
                Err(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader(timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
