//! A log-bucket latency histogram.
//!
//! Why not a crate (hdrhistogram): the example keeps its dependency list to what
//! the store itself needs, and fifty lines do the job. Why not keep every sample:
//! memory stays bounded (8 KB per histogram) however long the run, and
//! histograms merge by adding counts.
//!
//! Values are microseconds. Below 16 µs every value has its own bucket; above,
//! each power of two is split into 16 buckets, so a percentile is within 1/16
//! (6.25%) of the true value. The maximum is kept exactly.

use std::time::Duration;

/// Exact buckets below this many microseconds; also the sub-buckets per octave.
const SUB: u64 = 16;
/// log2(SUB).
const SUB_BITS: u32 = 4;
/// 16 exact buckets, then 16 per octave for the 60 octaves from 2^4 to 2^64.
const BUCKETS: usize = (SUB as usize) * 61;

/// Counts of latencies by log bucket, plus the exact maximum.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_micros: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_micros: 0,
        }
    }
}

impl Histogram {
    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(micros)] += 1;
        self.total += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max_micros = self.max_micros.max(other.max_micros);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest sample.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros)
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of its bucket,
    /// never above the maximum. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        // The rank of the wanted sample, 1-based: ceil(q * total), at least 1.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_micros(upper_bound(index).min(self.max_micros));
            }
        }
        self.max()
    }
}

/// The bucket of a value in microseconds.
fn bucket(micros: u64) -> usize {
    if micros < SUB {
        return micros as usize;
    }
    // The position of the highest set bit (>= SUB_BITS), and the next SUB_BITS
    // bits below it.
    let octave = 63 - u64::from(micros.leading_zeros());
    let shift = octave - u64::from(SUB_BITS);
    let sub = (micros >> shift) & (SUB - 1);
    (SUB + shift * SUB + sub) as usize
}

/// The largest value in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let shift = (index - SUB) / SUB;
    let sub = (index - SUB) % SUB;
    let lower = (SUB + sub) << shift;
    lower.saturating_add((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for micros in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket(micros);
            assert!(b >= last && b < BUCKETS, "{micros}");
            assert!(upper_bound(b) >= micros, "{micros}");
            assert!(upper_bound(b) - micros <= micros / 16, "{micros}");
            last = b;
        }
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).as_secs_f64() * 1e3;
        assert!((500.0..=500.0 * 1.0625).contains(&p50), "{p50}");
        assert!((990.0..=1000.0).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_millis(1000));
        let mut other = Histogram::default();
        other.record(Duration::from_secs(5));
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert_eq!(h.quantile(1.0), Duration::from_secs(5));
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }
}
