//! Load per range: request rates counted on the hot path, sizes measured now and
//! then (walking a range is not free, and probes come every second).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ranger_proto::{Key, LoadInfo, RangeId, RangeMeta};

use super::spans::Span;
use super::store::{Measure, StoreError};

#[derive(Debug, Default)]
struct Counters {
    reads: u64,
    writes: u64,
    /// When the rates were last reported, and the counts then.
    since: Option<(Instant, u64, u64)>,
    /// The last measurement and when it was taken.
    measured: Option<(Instant, Measure)>,
    rates: (f64, f64),
}

#[derive(Debug, Default)]
pub struct LoadTracker {
    ranges: Mutex<HashMap<RangeId, Counters>>,
}

impl LoadTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RangeId, Counters>> {
        self.ranges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn read(&self, range: RangeId) {
        self.lock().entry(range).or_default().reads += 1;
    }

    pub fn wrote(&self, range: RangeId) {
        self.lock().entry(range).or_default().writes += 1;
    }

    pub fn forget(&self, range: RangeId) {
        self.lock().remove(&range);
    }

    /// The range's load: rates since the last report, sizes from a measurement at
    /// most `cache` old (taken with `measure` off the async runtime).
    pub async fn load_info(
        &self,
        meta: &RangeMeta,
        cache: Duration,
        measure: impl FnOnce(&Span) -> Result<Measure, StoreError> + Send + 'static,
    ) -> Result<LoadInfo, StoreError> {
        let id = meta.id();
        let now = Instant::now();
        let cached = {
            let mut ranges = self.lock();
            let counters = ranges.entry(id).or_default();
            if let Some((at, reads, writes)) = counters.since {
                let secs = now.duration_since(at).as_secs_f64();
                if secs >= 0.5 {
                    counters.rates = (
                        (counters.reads - reads) as f64 / secs,
                        (counters.writes - writes) as f64 / secs,
                    );
                    counters.since = Some((now, counters.reads, counters.writes));
                }
            } else {
                counters.since = Some((now, counters.reads, counters.writes));
            }
            counters
                .measured
                .as_ref()
                .filter(|(at, _)| now.duration_since(*at) < cache)
                .map(|(_, m)| m.clone())
        };
        let measured = match cached {
            Some(m) => m,
            None => {
                let span = Span::of(meta);
                let m = tokio::task::spawn_blocking(move || measure(&span))
                    .await
                    .map_err(|e| StoreError::Corrupt {
                        key: format!("measure {id}"),
                        reason: e.to_string(),
                    })??;
                if let Some(counters) = self.lock().get_mut(&id) {
                    counters.measured = Some((now, m.clone()));
                }
                m
            }
        };
        let rates = self.lock().get(&id).map(|c| c.rates).unwrap_or_default();
        let split_keys = measured
            .median
            .filter(|k| meta.can_split_at(k))
            .map(|k| vec![Key::new(k)])
            .unwrap_or_default();
        Ok(LoadInfo {
            keys: measured.keys,
            bytes: measured.bytes,
            reads_per_second: rates.0,
            writes_per_second: rates.1,
            split_keys,
        })
    }
}
