//! The load history behind the dashboard's heatmap: every few seconds, each
//! active range's request rate, the latest N samples kept in memory.
//!
//! Why on the server: a page only sees load from the moment it opens; kept
//! here, the heatmap shows the last minutes as soon as the page loads, and
//! every open page shows the same history. It is bounded (a ring of
//! [`super::DashboardConfig::history_len`] samples) and lost on restart,
//! which is fine for a picture of recent load; metrics are for the long term.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::debug_server::Debug;
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tonic::Request;

use super::Api;
use super::views::RangeView;
use crate::service::DebugService;

/// One active range's load in a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeLoad {
    /// The range id.
    pub id: u64,
    /// Its start key in hex ("" is minus infinity): hex sorts as the bytes do,
    /// so the page can find which range held a key in an older sample.
    pub start: String,
    /// Its end key in hex ("" is plus infinity).
    pub end: String,
    /// Its start key as text ("-inf" for the first range).
    pub start_text: String,
    /// Its end key as text ("+inf" for the last range).
    pub end_text: String,
    /// Requests per second its active placements reported.
    pub load: f64,
}

/// Every active range's load at one moment, in key order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadSample {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The active ranges, in key order.
    pub ranges: Vec<RangeLoad>,
}

/// The latest samples, oldest first, at most `capacity` of them.
#[derive(Debug, Clone)]
pub struct LoadHistory {
    samples: VecDeque<LoadSample>,
    capacity: usize,
}

impl LoadHistory {
    /// An empty history keeping at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        LoadHistory {
            samples: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, sample: LoadSample) {
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<LoadSample> {
        self.samples.iter().cloned().collect()
    }
}

/// A sample from the ranges the Debug service lists (`None` on a standby:
/// only the leader knows the load).
async fn take_sample(debug: &DebugService) -> Option<LoadSample> {
    let reply = debug
        .ranges_list(Request::new(pb::RangesListRequest {}))
        .await
        .ok()?
        .into_inner();
    let active = ranger_proto::RangeState::Active.to_string();
    let mut ranges: Vec<(String, RangeLoad)> = reply
        .ranges
        .iter()
        .map(RangeView::from)
        .filter(|r| r.state == active)
        .map(|r| {
            (
                r.start.clone(),
                RangeLoad {
                    id: r.id,
                    start: r.start.clone(),
                    end: r.end,
                    start_text: r.start_text,
                    end_text: r.end_text,
                    load: r.load,
                },
            )
        })
        .collect();
    // Hex of the start key sorts as the bytes do ("" is minus infinity).
    ranges.sort_by(|a, b| a.0.cmp(&b.0));
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Some(LoadSample {
        at_ms,
        ranges: ranges.into_iter().map(|(_, r)| r).collect(),
    })
}

/// Starts sampling into `api`'s history every `sample_every`, until the
/// server stops or the history is dropped with the router.
pub(super) fn spawn_sampler(api: &Api) {
    let history: Weak<Mutex<LoadHistory>> = Arc::downgrade(&api.history);
    let debug = api.debug.clone();
    let stop = api.stop.clone();
    let every = api.config.sample_every;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let sampling = async {
            loop {
                ticks.tick().await;
                let Some(sample) = take_sample(&debug).await else {
                    if history.strong_count() == 0 {
                        return;
                    }
                    continue;
                };
                let Some(history) = history.upgrade() else {
                    return;
                };
                history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(sample);
            }
        };
        tokio::select! {
            () = sampling => {}
            () = stop => {}
        }
    });
}

impl Api {
    /// The load history's samples, oldest first.
    pub(super) fn history_snapshot(&self) -> Vec<LoadSample> {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .samples()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64) -> LoadSample {
        LoadSample {
            at_ms,
            ranges: Vec::new(),
        }
    }

    #[test]
    fn the_history_keeps_only_the_latest_samples() {
        let mut history = LoadHistory::new(3);
        for at in 1..=5 {
            history.push(sample(at));
        }
        let kept: Vec<u64> = history.samples().iter().map(|s| s.at_ms).collect();
        assert_eq!(kept, [3, 4, 5]);
    }
}
