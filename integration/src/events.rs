//! The controller's live events (`ranger.Control/Watch`), for tests that act
//! at a precise point of an operation, e.g. kill the controller right after
//! a node answered a command.

use std::time::Duration;

use anyhow::{Context, bail};
use ranger_proto::pb::ranger::WatchEvent;
use ranger_proto::pb::ranger::WatchRequest;
use ranger_proto::pb::ranger::control_client::ControlClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A subscription to one controller's events.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<WatchEvent>,
    task: JoinHandle<()>,
    seen: Vec<WatchEvent>,
}

impl Events {
    /// Subscribes to every event of the controller at `addr` (the leader).
    pub async fn subscribe(addr: &str) -> anyhow::Result<Events> {
        let mut client = ControlClient::connect(format!("http://{addr}"))
            .await
            .with_context(|| format!("connecting to the controller at {addr}"))?;
        let mut stream = client
            .watch(WatchRequest { ranges: vec![] })
            .await
            .context("Control/Watch")?
            .into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Ends when the controller goes away or the subscription is dropped.
            while let Ok(Some(event)) = stream.message().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        Ok(Events {
            rx,
            task,
            seen: Vec::new(),
        })
    }

    /// Waits up to `timeout` for the next event for which `wanted` holds.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&WatchEvent) -> bool,
    ) -> anyhow::Result<WatchEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => {
                    self.seen.push(event.clone());
                    if wanted(&event) {
                        return Ok(event);
                    }
                }
                Ok(None) => bail!(
                    "the controller's event stream ended; seen: {:?}",
                    self.messages()
                ),
                Err(_) => bail!(
                    "no matching event within {timeout:?}; seen: {:?}",
                    self.messages()
                ),
            }
        }
    }

    /// Every event received so far, as `range: message`.
    pub fn messages(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|e| format!("{}: {}", e.range, e.message))
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether an event reports a node's answer to a command: a placement
/// reaching Inactive (Prepare or Deactivate done), Active (Activate done) or
/// Dropped (Drop done). The engine's events read `P on NODE: FROM -> TO`.
pub fn is_command_answer(event: &WatchEvent) -> bool {
    let Some((_, to)) = event.message.rsplit_once(" -> ") else {
        return false;
    };
    matches!(to.trim(), "Inactive" | "Active" | "Dropped")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str) -> WatchEvent {
        WatchEvent {
            range: 1,
            message: message.to_owned(),
        }
    }

    #[test]
    fn command_answers_are_transitions_to_inactive_active_or_dropped() {
        assert!(is_command_answer(&event("p2 on b: Loading -> Inactive")));
        assert!(is_command_answer(&event("p1 on a: Active -> Inactive")));
        assert!(is_command_answer(&event("p2 on b: Inactive -> Active")));
        assert!(is_command_answer(&event("p1 on a: Inactive -> Dropped")));
        assert!(!is_command_answer(&event("p2 on b: Pending -> Loading")));
        assert!(!is_command_answer(&event("p2 on b: placed (Pending)")));
        assert!(!is_command_answer(&event("split begun: 2 and 3")));
    }
}
