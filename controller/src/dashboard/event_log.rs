//! The controller's recent events, kept for the range page's state history
//! ("P6 on node1: Inactive -> Active", "retiring: moved away").
//!
//! Why on the server, like the load history: a range page opened after a move
//! must still show how the move went. A background task follows
//! `Control.Watch` (the same stream `rangerctl watch` and the page's live
//! updates read) and keeps the latest [`super::DashboardConfig::event_log_len`]
//! events, each with the time it arrived. When the stream ends (this process
//! is a standby, or was deposed) the task tries again every few seconds, so a
//! process that becomes leader starts logging. Lost on restart; volatile like
//! operation ids.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::control_server::Control;
use serde::Serialize;
use tonic::Request;

use super::Api;

/// One controller event, when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub range: u64,
    pub message: String,
}

/// The latest events, oldest first, at most `capacity` of them.
#[derive(Debug, Clone)]
pub struct EventLog {
    events: VecDeque<LoggedEvent>,
    capacity: usize,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EventLog {
            events: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    pub fn push(&mut self, event: LoggedEvent) {
        while self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// The events about `range`, newest first.
    pub fn of_range(&self, range: u64) -> Vec<LoggedEvent> {
        self.events
            .iter()
            .rev()
            .filter(|e| e.range == range)
            .cloned()
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Follows the controller's events into `api`'s log until the server stops
/// or the router is dropped.
pub(super) fn spawn_logger(api: &Api) {
    let log: Weak<Mutex<EventLog>> = Arc::downgrade(&api.event_log);
    let control = api.control.clone();
    let stop = api.stop.clone();
    let retry = api.config.refresh_every;
    tokio::spawn(async move {
        let following = async {
            loop {
                if let Ok(reply) = control
                    .watch(Request::new(pb::WatchRequest { ranges: Vec::new() }))
                    .await
                {
                    let mut events = reply.into_inner();
                    while let Some(Ok(event)) = events.next().await {
                        let Some(log) = log.upgrade() else {
                            return;
                        };
                        log.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(LoggedEvent {
                                at_ms: now_ms(),
                                range: event.range,
                                message: event.message,
                            });
                    }
                }
                if log.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(retry).await;
            }
        };
        tokio::select! {
            () = following => {}
            () = stop => {}
        }
    });
}

impl Api {
    /// The logged events about `range`, newest first.
    pub(super) fn range_events(&self, range: u64) -> Vec<LoggedEvent> {
        self.event_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of_range(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(range: u64, message: &str) -> LoggedEvent {
        LoggedEvent {
            at_ms: 0,
            range,
            message: message.to_owned(),
        }
    }

    #[test]
    fn a_ranges_events_are_newest_first_and_the_log_is_bounded() {
        let mut log = EventLog::new(3);
        log.push(event(1, "a"));
        log.push(event(2, "b"));
        log.push(event(1, "c"));
        log.push(event(1, "d"));
        let messages: Vec<String> = log.of_range(1).into_iter().map(|e| e.message).collect();
        assert_eq!(messages, ["d", "c"], "the oldest fell out");
        assert_eq!(log.of_range(2).len(), 1);
        assert!(log.of_range(9).is_empty());
    }
}
