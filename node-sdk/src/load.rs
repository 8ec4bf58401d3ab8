//! Measuring the load of ranges, for any storage system: [`RangeLoadMeter`]
//! counts the reads and writes of each range on the request path and turns them
//! into what the controller's balancer needs in [`ranger_proto::LoadInfo`]:
//! request rates over a sliding window, and a load-based split key.
//!
//! Why a sliding window and not "since the last probe": probes come every second
//! or so, from one controller or (during a failover) from two, and a rate over
//! whatever happened to elapse between two of them is noise. A window of a few
//! seconds' buckets gives the same figure to whoever asks, and it decays on its
//! own once traffic stops.
//!
//! Why a load-based split key apart from the size-based one: under skewed
//! traffic the key that halves a range's bytes does not halve its requests, and
//! splitting a hot range there leaves the hot keys on one side. The meter keeps,
//! per bucket, a bounded reservoir sample of the keys accessed, and suggests the
//! median of the window's accesses (each bucket's sample weighted by how many
//! accesses it stands for).
//!
//! Cost on the hot path: one shared (read) lock of the range map, one short
//! per-range lock, two counter increments, and, once a bucket's reservoir is
//! full, one random draw (a copy of the key only when it replaces a sample).
//! Ranges never contend with each other except on the map's shared lock, which
//! is taken exclusively only when a range is first seen or forgotten.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use ranger_proto::{Key, LoadCut, RangeId, RangeMeta};
use tokio::time::Instant;

/// Where a meter reads the time. The default follows tokio's clock (so tests
/// with paused time control it); [`ManualClock`] is moved by hand.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// tokio's clock: real time, or the test's paused time.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for tests that run real I/O (where
/// tokio's paused time would be awkward) yet want exact windows.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    elapsed_nanos: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            origin: Instant::now(),
            elapsed_nanos: AtomicU64::new(0),
        })
    }

    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + Duration::from_nanos(self.elapsed_nanos.load(Ordering::SeqCst))
    }
}

/// The meter's knobs. The window is `bucket × buckets` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadMeterConfig {
    /// One bucket's span: the window slides by this much.
    pub bucket: Duration,
    /// How many buckets make the window.
    pub buckets: usize,
    /// The reservoir of accessed keys kept per bucket: bounds memory per range
    /// to `buckets × samples_per_bucket` keys of at most `max_key_bytes`.
    pub samples_per_bucket: usize,
    /// Sampled keys are cut to this many bytes (a prefix of a key still orders
    /// before the key's successors, so it is still a fine split point).
    pub max_key_bytes: usize,
    /// No load split key from fewer samples than this: a handful of requests
    /// says nothing about where a range's load lies.
    pub min_samples: usize,
    /// How many load cuts to report: keys at each `1/(cuts + 1)` of the
    /// window's requests, so that the controller can cut a piece of the size a
    /// node has room for off a hot range. 15 (sixteenths) stays well within
    /// what the default 640 samples can place.
    pub cuts: usize,
    /// Seed of the reservoirs' random draws (mixed with the range id), so that
    /// a run is reproducible.
    pub seed: u64,
}

impl Default for LoadMeterConfig {
    /// A 20 s window in 2 s buckets, 64 keys sampled per bucket.
    fn default() -> Self {
        LoadMeterConfig {
            bucket: Duration::from_secs(2),
            buckets: 10,
            samples_per_bucket: 64,
            max_key_bytes: 256,
            min_samples: 16,
            cuts: 15,
            seed: 0x5eed_10ad,
        }
    }
}

/// Why a meter configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadMeterError {
    #[error("the load meter's {field} must be greater than zero")]
    Zero { field: &'static str },
}

/// What the meter says about one range now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeteredLoad {
    /// Reads per second over the window (or over the range's life, if shorter).
    pub reads_per_second: f64,
    /// Writes per second, likewise.
    pub writes_per_second: f64,
    /// The median of the window's accessed keys, if it lies strictly inside the
    /// range (else the nearest sampled key above it that does), and if enough
    /// keys were sampled.
    pub split_key: Option<Key>,
    /// Sampled keys strictly inside the range with the share of the window's
    /// accesses below each, keys and shares rising (see
    /// [`LoadMeterConfig::cuts`]); empty with too few samples.
    pub cuts: Vec<LoadCut>,
}

impl MeteredLoad {
    /// The split key as [`ranger_proto::LoadInfo::load_split_keys`] wants it.
    pub fn load_split_keys(&self) -> Vec<Key> {
        self.split_key.iter().cloned().collect()
    }
}

/// Per-range request rates over a sliding window and load-based split keys.
/// Share one per node (it is `Sync`); see the module documentation.
#[derive(Debug)]
pub struct RangeLoadMeter {
    config: LoadMeterConfig,
    bucket_ms: u64,
    clock: Arc<dyn Clock>,
    origin: Instant,
    ranges: RwLock<HashMap<RangeId, Mutex<Window>>>,
}

/// A bucket index that no time maps to: the bucket holds nothing yet.
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
struct Bucket {
    index: u64,
    reads: u64,
    writes: u64,
    /// Accesses offered to the reservoir (reads + writes).
    seen: u64,
    sample: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Window {
    /// When the range was first seen, in ms since the meter's origin.
    since_ms: u64,
    buckets: Vec<Bucket>,
    rng: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// splitmix64: a small, fast, seedable generator; reservoir sampling needs
/// nothing stronger.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Window {
    fn new(config: &LoadMeterConfig, range: RangeId, now_ms: u64) -> Window {
        Window {
            since_ms: now_ms,
            buckets: (0..config.buckets)
                .map(|_| Bucket {
                    index: EMPTY,
                    reads: 0,
                    writes: 0,
                    seen: 0,
                    sample: Vec::new(),
                })
                .collect(),
            rng: config.seed ^ range.get().wrapping_mul(0x2545_f491_4f6c_dd1d),
        }
    }

    fn record(&mut self, config: &LoadMeterConfig, index: u64, key: &[u8], write: bool) {
        let slot = (index % self.buckets.len() as u64) as usize;
        let bucket = &mut self.buckets[slot];
        if bucket.index != index {
            bucket.index = index;
            bucket.reads = 0;
            bucket.writes = 0;
            bucket.seen = 0;
            bucket.sample.clear();
        }
        if write {
            bucket.writes += 1;
        } else {
            bucket.reads += 1;
        }
        bucket.seen += 1;
        let key = &key[..key.len().min(config.max_key_bytes)];
        if bucket.sample.len() < config.samples_per_bucket {
            bucket.sample.push(key.to_vec());
        } else {
            // Algorithm R: the n-th access replaces a random sample with
            // probability k/n, so every access is equally likely to be kept.
            let pick = next_random(&mut self.rng) % bucket.seen;
            if let Some(slot) = usize::try_from(pick)
                .ok()
                .and_then(|i| bucket.sample.get_mut(i))
            {
                slot.clear();
                slot.extend_from_slice(key);
            }
        }
    }

    /// The buckets inside the window ending in bucket `index`.
    fn live(&self, index: u64) -> impl Iterator<Item = &Bucket> {
        let oldest = (index + 1).saturating_sub(self.buckets.len() as u64);
        self.buckets
            .iter()
            .filter(move |b| b.index != EMPTY && b.index >= oldest && b.index <= index)
    }
}

impl RangeLoadMeter {
    /// A meter on tokio's clock.
    pub fn new(config: LoadMeterConfig) -> Result<RangeLoadMeter, LoadMeterError> {
        Self::with_clock(config, Arc::new(TokioClock))
    }

    /// A meter on `clock` (tests: a [`ManualClock`]).
    pub fn with_clock(
        config: LoadMeterConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<RangeLoadMeter, LoadMeterError> {
        for (field, value) in [
            ("bucket", config.bucket.as_millis()),
            ("buckets", config.buckets as u128),
            ("samples_per_bucket", config.samples_per_bucket as u128),
            ("max_key_bytes", config.max_key_bytes as u128),
        ] {
            if value == 0 {
                return Err(LoadMeterError::Zero { field });
            }
        }
        let bucket_ms = u64::try_from(config.bucket.as_millis()).unwrap_or(u64::MAX);
        Ok(RangeLoadMeter {
            bucket_ms,
            origin: clock.now(),
            clock,
            config,
            ranges: RwLock::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &LoadMeterConfig {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a read of `key` in `range`.
    pub fn read(&self, range: RangeId, key: &[u8]) {
        self.record(range, key, false);
    }

    /// Counts a write of `key` in `range`.
    pub fn write(&self, range: RangeId, key: &[u8]) {
        self.record(range, key, true);
    }

    fn record(&self, range: RangeId, key: &[u8], write: bool) {
        let now_ms = self.now_ms();
        let index = now_ms / self.bucket_ms;
        {
            let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(window) = ranges.get(&range) {
                lock(window).record(&self.config, index, key, write);
                return;
            }
        }
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        let window = ranges
            .entry(range)
            .or_insert_with(|| Mutex::new(Window::new(&self.config, range, now_ms)));
        lock(window).record(&self.config, index, key, write);
    }

    /// Forgets a range (it left the node): its memory is freed.
    pub fn forget(&self, range: RangeId) {
        self.ranges
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&range);
    }

    /// The range's rates and load split key now. A range never accessed has
    /// zero rates and no split key.
    pub fn load(&self, meta: &RangeMeta) -> MeteredLoad {
        let now_ms = self.now_ms();
        let index = now_ms / self.bucket_ms;
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let Some(window) = ranges.get(&meta.id()) else {
            return MeteredLoad::default();
        };
        let window = lock(window);
        let (mut reads, mut writes) = (0u64, 0u64);
        for bucket in window.live(index) {
            reads += bucket.reads;
            writes += bucket.writes;
        }
        // The window covers the live buckets up to now, but not before the
        // range was first seen; and at least one bucket, so that the first
        // request of a range does not read as a huge rate.
        let oldest = (index + 1).saturating_sub(self.config.buckets as u64);
        let start_ms = (oldest * self.bucket_ms).max(window.since_ms);
        let covered_ms = now_ms.saturating_sub(start_ms).max(self.bucket_ms);
        let seconds = covered_ms as f64 / 1000.0;
        let (split_key, cuts) = self.split_points(&window, index, meta);
        MeteredLoad {
            reads_per_second: reads as f64 / seconds,
            writes_per_second: writes as f64 / seconds,
            split_key,
            cuts,
        }
    }

    /// The weighted median of the window's sampled keys, and the keys at each
    /// `1/(cuts + 1)` of the accesses: each bucket's samples stand for
    /// `seen / samples` accesses each, so a busy bucket counts more than a
    /// quiet one. If the median is not strictly inside the range (a hot key at
    /// the range's start), the nearest sampled key above it that is; a cut
    /// that is not strictly inside the range is left out.
    fn split_points(
        &self,
        window: &Window,
        index: u64,
        meta: &RangeMeta,
    ) -> (Option<Key>, Vec<LoadCut>) {
        let mut weighted: Vec<(&[u8], f64)> = Vec::new();
        for bucket in window.live(index) {
            if bucket.sample.is_empty() {
                continue;
            }
            let weight = bucket.seen as f64 / bucket.sample.len() as f64;
            weighted.extend(bucket.sample.iter().map(|k| (k.as_slice(), weight)));
        }
        if weighted.is_empty() || weighted.len() < self.config.min_samples {
            return (None, Vec::new());
        }
        weighted.sort_by(|a, b| a.0.cmp(b.0));
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        let mut sum = 0.0;
        let median = weighted
            .iter()
            .position(|(_, w)| {
                sum += w;
                sum >= total / 2.0
            })
            .unwrap_or(weighted.len() - 1);
        let split_key = weighted[median..]
            .iter()
            .map(|(k, _)| *k)
            .find(|k| meta.can_split_at(k))
            .map(Key::from);

        // The share below a key counts every sample strictly before it; the
        // first new key at or past each step of 1/(cuts + 1) is that step's
        // cut. Samples are sorted and shares only grow, so keys and shares
        // rise; every weight is positive, so a share stays below 1.
        let step = 1.0 / (self.config.cuts as f64 + 1.0);
        let mut cuts: Vec<LoadCut> = Vec::with_capacity(self.config.cuts);
        let mut below = 0.0;
        let mut next = step;
        for (i, (key, w)) in weighted.iter().enumerate() {
            let share = below / total;
            let new_key = i == 0 || weighted[i - 1].0 != *key;
            if new_key && share >= next && meta.can_split_at(key) {
                cuts.push(LoadCut {
                    key: Key::from(*key),
                    below: share,
                });
                while next <= share {
                    next += step;
                }
            }
            below += w;
        }
        (split_key, cuts)
    }

    /// How many keys the meter holds for `range` (to check that memory stays
    /// bounded).
    pub fn sampled_keys(&self, range: RangeId) -> usize {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        ranges.get(&range).map_or(0, |window| {
            lock(window).buckets.iter().map(|b| b.sample.len()).sum()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(id: u64, start: &str, end: &str) -> RangeMeta {
        RangeMeta::new(RangeId::new(id).unwrap(), Key::from(start), Key::from(end)).unwrap()
    }

    fn meter(clock: &Arc<ManualClock>) -> RangeLoadMeter {
        RangeLoadMeter::with_clock(
            LoadMeterConfig {
                bucket: Duration::from_secs(1),
                buckets: 10,
                samples_per_bucket: 32,
                min_samples: 8,
                ..LoadMeterConfig::default()
            },
            clock.clone(),
        )
        .unwrap()
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected * 0.02 + 1e-9
    }

    #[test]
    fn rates_are_requests_per_second_over_the_window() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        // 20 s at 50 reads and 10 writes per second: only the last 10 s count.
        for _ in 0..200 {
            for _ in 0..5 {
                meter.read(range.id(), b"k");
            }
            meter.write(range.id(), b"k");
            clock.advance(Duration::from_millis(100));
        }
        let load = meter.load(&range);
        assert!(close(load.reads_per_second, 50.0), "{load:?}");
        assert!(close(load.writes_per_second, 10.0), "{load:?}");
    }

    #[test]
    fn a_young_range_is_rated_over_its_life_not_the_whole_window() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        clock.advance(Duration::from_secs(30));
        for _ in 0..40 {
            meter.read(range.id(), b"k");
            clock.advance(Duration::from_millis(100));
        }
        // 40 reads in 4 s: 10/s, not 40 over the 10 s window.
        let load = meter.load(&range);
        assert!(close(load.reads_per_second, 10.0), "{load:?}");
    }

    #[test]
    fn rates_decay_to_zero_once_traffic_stops() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        for _ in 0..100 {
            meter.write(range.id(), b"k");
            clock.advance(Duration::from_millis(100));
        }
        let busy = meter.load(&range).writes_per_second;
        clock.advance(Duration::from_secs(5));
        let fading = meter.load(&range).writes_per_second;
        clock.advance(Duration::from_secs(6));
        let idle = meter.load(&range);
        assert!(close(busy, 10.0), "{busy}");
        assert!(fading > 0.0 && fading < busy, "{fading} after {busy}");
        assert_eq!(idle.writes_per_second, 0.0);
        assert_eq!(idle.split_key, None, "no samples left in the window");
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_clock_follows_tokio_time() {
        let meter = RangeLoadMeter::new(LoadMeterConfig::default()).unwrap();
        let range = meta(1, "", "");
        for _ in 0..40 {
            meter.read(range.id(), b"k");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // 40 reads in 20 s: 2/s.
        assert!(close(meter.load(&range).reads_per_second, 2.0));
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(meter.load(&range).reads_per_second, 0.0);
    }

    #[test]
    fn the_split_key_is_the_median_of_the_accessed_keys() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        // Keys k000..k999 evenly, and k700 nine times as often as all others
        // together: the accesses' median is k700, the keys' median k500.
        for i in 0..1000 {
            meter.read(range.id(), format!("k{i:03}").as_bytes());
            for _ in 0..9 {
                meter.write(range.id(), b"k700");
            }
            if i % 100 == 0 {
                clock.advance(Duration::from_millis(500));
            }
        }
        assert_eq!(meter.load(&range).split_key, Some(Key::from("k700")));
    }

    #[test]
    fn uniform_access_splits_near_the_middle() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        for round in 0..20u32 {
            for i in 0..1000u32 {
                let i = (i * 7919 + round) % 1000;
                meter.read(range.id(), format!("k{i:03}").as_bytes());
            }
            clock.advance(Duration::from_millis(400));
        }
        let key = meter.load(&range).split_key.unwrap();
        let key = std::str::from_utf8(key.as_bytes()).unwrap().to_owned();
        assert!(("k350".."k650").contains(&key.as_str()), "{key}");
    }

    #[test]
    fn load_cuts_say_where_the_requests_lie() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        // Keys a000..a099 take a quarter of the accesses, b000..b099 the other
        // three quarters: the cut at a quarter of the requests is near b000,
        // and the shares rise with the keys.
        for round in 0..20u32 {
            for i in 0..100u32 {
                let i = (i * 37 + round) % 100;
                meter.read(range.id(), format!("a{i:03}").as_bytes());
                for _ in 0..3 {
                    meter.write(range.id(), format!("b{i:03}").as_bytes());
                }
            }
            clock.advance(Duration::from_millis(400));
        }
        let cuts = meter.load(&range).cuts;
        assert!(LoadCut::well_formed(&cuts), "{cuts:?}");
        assert!(cuts.len() >= 10, "{cuts:?}");
        let first_b = cuts
            .iter()
            .find(|c| c.key.as_bytes().starts_with(b"b"))
            .unwrap();
        assert!((0.2..0.32).contains(&first_b.below), "{first_b:?}");
        let before_b = cuts.iter().filter(|c| c.key.as_bytes() < b"b".as_slice());
        assert!(before_b.clone().count() >= 2, "{cuts:?}");
        assert!(before_b.clone().all(|c| c.below < 0.26), "{cuts:?}");
    }

    #[test]
    fn load_cuts_lie_strictly_inside_the_range_and_need_samples() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "h", "p");
        for _ in 0..100 {
            meter.write(range.id(), b"h");
        }
        // Every access on the first key: no cut inside the range.
        assert!(meter.load(&range).cuts.is_empty());
        let few = meta(2, "", "");
        for key in ["a", "b", "c"] {
            meter.read(few.id(), key.as_bytes());
        }
        assert!(meter.load(&few).cuts.is_empty());
    }

    #[test]
    fn a_split_key_must_lie_strictly_inside_the_range() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        // Every access on the range's first key: no key strictly inside.
        let range = meta(1, "h", "p");
        for _ in 0..100 {
            meter.write(range.id(), b"h");
        }
        assert_eq!(meter.load(&range).split_key, None);
        // A hot first key and a few others: the nearest one above the median.
        for _ in 0..10 {
            meter.write(range.id(), b"k");
        }
        assert_eq!(meter.load(&range).split_key, Some(Key::from("k")));
    }

    #[test]
    fn too_few_samples_suggest_no_split_key() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        for key in ["a", "b", "c"] {
            meter.read(range.id(), key.as_bytes());
        }
        assert_eq!(meter.load(&range).split_key, None);
    }

    #[test]
    fn memory_stays_bounded_however_many_keys_are_accessed() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        let long = vec![b'x'; 10_000];
        for i in 0..100_000u32 {
            let mut key = long.clone();
            key.extend_from_slice(&i.to_be_bytes());
            meter.read(range.id(), &key);
            if i % 1000 == 0 {
                clock.advance(Duration::from_millis(300));
            }
        }
        assert!(meter.sampled_keys(range.id()) <= 10 * 32);
        let ranges = meter.ranges.read().unwrap();
        let window = lock(ranges.get(&range.id()).unwrap());
        let longest = window
            .buckets
            .iter()
            .flat_map(|b| b.sample.iter().map(Vec::len))
            .max()
            .unwrap();
        assert_eq!(longest, LoadMeterConfig::default().max_key_bytes);
    }

    #[test]
    fn the_same_seed_samples_the_same_keys() {
        let run = || {
            let clock = ManualClock::new();
            let meter = meter(&clock);
            let range = meta(1, "", "");
            for i in 0..5000u32 {
                meter.read(range.id(), &i.to_be_bytes());
            }
            let ranges = meter.ranges.read().unwrap();
            let window = lock(ranges.get(&range.id()).unwrap());
            window
                .buckets
                .iter()
                .flat_map(|b| b.sample.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn forgetting_a_range_frees_it() {
        let clock = ManualClock::new();
        let meter = meter(&clock);
        let range = meta(1, "", "");
        meter.read(range.id(), b"k");
        meter.forget(range.id());
        assert_eq!(meter.sampled_keys(range.id()), 0);
        assert_eq!(meter.load(&range), MeteredLoad::default());
    }

    #[test]
    fn a_zero_sized_window_is_refused() {
        let zero = LoadMeterConfig {
            buckets: 0,
            ..LoadMeterConfig::default()
        };
        assert_eq!(
            RangeLoadMeter::new(zero).unwrap_err(),
            LoadMeterError::Zero { field: "buckets" }
        );
    }
}
