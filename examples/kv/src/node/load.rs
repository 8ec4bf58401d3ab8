//! Load per range: request rates and the load split key from the node SDK's
//! [`RangeLoadMeter`] (fed by the one read/write path, [`super::access`]), sizes
//! from RocksDB's estimates (see [`Store::size`](super::store::Store::size)),
//! reused for a while because the size-based split key still walks keys and
//! probes come every second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ranger_node_sdk::load::RangeLoadMeter;
use ranger_proto::{Key, LoadInfo, RangeId, RangeMeta};

use super::lock;
use super::spans::Span;
use super::store::{Size, StoreError};

#[derive(Debug)]
pub struct RangeLoads {
    meter: RangeLoadMeter,
    /// Each range's last size estimate and when it was taken.
    sizes: Mutex<HashMap<RangeId, (Instant, Size)>>,
}

impl RangeLoads {
    pub fn new(meter: RangeLoadMeter) -> Self {
        RangeLoads {
            meter,
            sizes: Mutex::new(HashMap::new()),
        }
    }

    pub fn read(&self, range: RangeId, key: &[u8]) {
        self.meter.read(range, key);
    }

    pub fn wrote(&self, range: RangeId, key: &[u8]) {
        self.meter.write(range, key);
    }

    /// Drops the range's cached size: measured while its data was still being
    /// copied in, it would tell the balancer a moved range is empty (and so free
    /// to move again) for as long as the cache lasts.
    pub fn forget_size(&self, range: RangeId) {
        lock(&self.sizes).remove(&range);
    }

    pub fn forget(&self, range: RangeId) {
        self.meter.forget(range);
        lock(&self.sizes).remove(&range);
    }

    /// The range's load: rates and load split key from the meter now, sizes
    /// from an estimate at most `cache` old (taken with `size` off the async
    /// runtime).
    pub async fn load_info(
        &self,
        meta: &RangeMeta,
        cache: Duration,
        size: impl FnOnce(&Span) -> Result<Size, StoreError> + Send + 'static,
    ) -> Result<LoadInfo, StoreError> {
        let id = meta.id();
        let now = Instant::now();
        let cached = lock(&self.sizes)
            .get(&id)
            .filter(|(at, _)| now.duration_since(*at) < cache)
            .map(|(_, s)| s.clone());
        let size = match cached {
            Some(s) => s,
            None => {
                let span = Span::of(meta);
                let s = tokio::task::spawn_blocking(move || size(&span))
                    .await
                    .map_err(|e| StoreError::Task {
                        reason: format!("sizing range {id}: {e}"),
                    })??;
                lock(&self.sizes).insert(id, (now, s.clone()));
                s
            }
        };
        let metered = self.meter.load(meta);
        Ok(LoadInfo {
            keys: size.keys,
            bytes: size.bytes,
            reads_per_second: metered.reads_per_second,
            writes_per_second: metered.writes_per_second,
            split_keys: size
                .split_key
                .filter(|k| meta.can_split_at(k))
                .map(|k| vec![Key::new(k)])
                .unwrap_or_default(),
            load_split_keys: metered.load_split_keys(),
            load_cuts: metered.cuts,
        })
    }
}
