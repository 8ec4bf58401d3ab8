//! What a run found: counts gathered by each worker ([`Tally`]) and the final
//! [`Report`] built from them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::config::OpKind;
use super::histogram::Histogram;

/// How many anomalies each worker describes in full; the rest are only counted.
const MAX_PROBLEMS: usize = 20;

/// The result of a hammer run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The server hammered.
    pub target: String,
    /// The seed, to replay the same operations.
    pub seed: u64,
    /// Length of the load phase (verification excluded).
    pub elapsed_secs: f64,
    /// Requests completed during the load phase, successful or not.
    pub ops: u64,
    /// Of which successful (NOT_FOUND on a read counts as success).
    pub ok_ops: u64,
    /// `ops` per second of `elapsed_secs`.
    pub throughput: f64,
    /// Latency of successful requests by operation.
    pub latency: Latencies,
    /// Failed requests by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged writes that a read showed missing (each counted once).
    pub lost: u64,
    /// Reads that returned an older state than the last acknowledged write.
    pub stale: u64,
    /// Reads that returned a value never written to their key.
    pub unexpected: u64,
    /// Writes whose outcome was unknown (timeout, UNAVAILABLE, broken connection).
    pub uncertain_writes: u64,
    /// Per key, time from a first failed write to the next successful one.
    pub write_unavailable: WindowSummary,
    /// The final read of every written key.
    pub verification: Verification,
    /// The first anomalies, described (key, expected, got).
    pub problems: Vec<String>,
}

impl Report {
    /// True when no acknowledged write was lost and no unexpected value was read.
    /// Transient errors do not fail a run: they are reported.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.unexpected == 0
    }

    /// Why the run failed, one sentence per reason; empty when it passed.
    pub fn failure_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.lost > 0 {
            reasons.push(format!(
                "{} acknowledged write(s) lost ({} found by the final verification)",
                self.lost, self.verification.lost
            ));
        }
        if self.unexpected > 0 {
            reasons.push(format!(
                "{} read(s) returned a value never written",
                self.unexpected
            ));
        }
        reasons
    }
}

/// Latency summaries by operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latencies {
    /// Puts of absent keys.
    pub create: LatencySummary,
    /// Gets.
    pub read: LatencySummary,
    /// Puts of present keys.
    pub update: LatencySummary,
    /// Deletes.
    pub delete: LatencySummary,
}

impl Latencies {
    /// The summary of one operation.
    pub fn get(&self, kind: OpKind) -> &LatencySummary {
        match kind {
            OpKind::Create => &self.create,
            OpKind::Read => &self.read,
            OpKind::Update => &self.update,
            OpKind::Delete => &self.delete,
        }
    }
}

/// Percentiles of one operation's latency, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum (exact).
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(histogram: &Histogram) -> LatencySummary {
        LatencySummary {
            count: histogram.count(),
            p50_ms: ms(histogram.quantile(0.50)),
            p99_ms: ms(histogram.quantile(0.99)),
            p999_ms: ms(histogram.quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Write-unavailable windows: for each run of failed writes to a key, the time
/// from the first failure to the next success. It measures how long clients could
/// not write, e.g. during a range move.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WindowSummary {
    /// Closed windows (a success followed the failures).
    pub count: u64,
    /// Median window.
    pub p50_ms: f64,
    /// 99th percentile window.
    pub p99_ms: f64,
    /// Longest window.
    pub max_ms: f64,
    /// Keys whose writes were still failing when the load stopped.
    pub open: u64,
    /// The longest a worker waited for one write: from the start of its first
    /// attempt (failed attempts at the same key included) to its
    /// acknowledgement. Unlike the windows it also counts a write that
    /// succeeded late without failing, which is how a handoff behind a
    /// retrying proxy shows: as latency, not as errors.
    pub longest_wait_ms: f64,
}

impl WindowSummary {
    /// Exact percentiles: windows are few (at most one per failure episode).
    fn of(mut windows: Vec<Duration>, open: u64, longest_wait: Duration) -> WindowSummary {
        windows.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * windows.len() as f64).ceil() as usize).max(1);
            windows.get(rank - 1).copied().map_or(0.0, ms)
        };
        WindowSummary {
            count: windows.len() as u64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: windows.last().copied().map_or(0.0, ms),
            open,
            longest_wait_ms: ms(longest_wait),
        }
    }
}

/// The outcome of the final verification pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Keys read.
    pub keys: u64,
    /// Keys that held a state they may hold.
    pub ok: u64,
    /// Keys missing their last acknowledged write.
    pub lost: u64,
    /// Keys holding a value never written to them.
    pub unexpected: u64,
    /// Keys that could not be read before the verification timeout.
    pub unreadable: u64,
}

/// What one worker counted; merged into the [`Report`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub latency: BTreeMap<OpKind, Histogram>,
    pub ops: u64,
    pub ok_ops: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub lost: u64,
    pub stale: u64,
    pub unexpected: u64,
    pub uncertain_writes: u64,
    pub windows: Vec<Duration>,
    pub open_windows: u64,
    /// The longest wait for one acknowledged write (see [`WindowSummary`]).
    pub longest_wait: Duration,
    pub verification: Verification,
    pub problems: Vec<String>,
}

impl Tally {
    /// Describes an anomaly, up to [`MAX_PROBLEMS`] per worker.
    pub fn problem(&mut self, text: String) {
        tracing::warn!("{text}");
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }

    fn merge(&mut self, other: Tally) {
        for (kind, histogram) in other.latency {
            self.latency.entry(kind).or_default().merge(&histogram);
        }
        self.ops += other.ops;
        self.ok_ops += other.ok_ops;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.lost += other.lost;
        self.stale += other.stale;
        self.unexpected += other.unexpected;
        self.uncertain_writes += other.uncertain_writes;
        self.windows.extend(other.windows);
        self.open_windows += other.open_windows;
        self.longest_wait = self.longest_wait.max(other.longest_wait);
        let v = &mut self.verification;
        v.keys += other.verification.keys;
        v.ok += other.verification.ok;
        v.lost += other.verification.lost;
        v.unexpected += other.verification.unexpected;
        v.unreadable += other.verification.unreadable;
        self.problems.extend(other.problems);
    }

    /// Builds the report from every worker's tally.
    pub fn into_report(
        tallies: Vec<Tally>,
        target: String,
        seed: u64,
        elapsed: Duration,
    ) -> Report {
        let mut all = Tally::default();
        for tally in tallies {
            all.merge(tally);
        }
        let summary = |kind| {
            all.latency
                .get(&kind)
                .map(LatencySummary::of)
                .unwrap_or_default()
        };
        let secs = elapsed.as_secs_f64();
        Report {
            target,
            seed,
            elapsed_secs: secs,
            ops: all.ops,
            ok_ops: all.ok_ops,
            throughput: if secs > 0.0 {
                all.ops as f64 / secs
            } else {
                0.0
            },
            latency: Latencies {
                create: summary(OpKind::Create),
                read: summary(OpKind::Read),
                update: summary(OpKind::Update),
                delete: summary(OpKind::Delete),
            },
            errors: all
                .errors
                .iter()
                .map(|(code, n)| ((*code).to_owned(), *n))
                .collect(),
            lost: all.lost,
            stale: all.stale,
            unexpected: all.unexpected,
            uncertain_writes: all.uncertain_writes,
            write_unavailable: WindowSummary::of(all.windows, all.open_windows, all.longest_wait),
            verification: all.verification,
            problems: all.problems,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hammer {} (seed {})", self.target, self.seed)?;
        writeln!(
            f,
            "ops: {} in {:.1} s ({:.0} ops/s), {} ok",
            self.ops, self.elapsed_secs, self.throughput, self.ok_ops
        )?;
        writeln!(
            f,
            "latency ms      count      p50      p99    p99.9      max"
        )?;
        for kind in OpKind::ALL {
            let l = self.latency.get(kind);
            writeln!(
                f,
                "  {:<8} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                kind.name(),
                l.count,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms
            )?;
        }
        if self.errors.is_empty() {
            writeln!(f, "errors: none")?;
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            writeln!(f, "errors: {}", list.join(", "))?;
        }
        let w = &self.write_unavailable;
        writeln!(
            f,
            "write-unavailable windows: {} (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms), {} still open; longest wait for one write {:.1} ms",
            w.count, w.p50_ms, w.p99_ms, w.max_ms, w.open, w.longest_wait_ms
        )?;
        writeln!(
            f,
            "lost {}, stale {}, unexpected {}, uncertain writes {}",
            self.lost, self.stale, self.unexpected, self.uncertain_writes
        )?;
        let v = &self.verification;
        writeln!(
            f,
            "verification: {} keys, {} ok, {} lost, {} unexpected, {} unreadable",
            v.keys, v.ok, v.lost, v.unexpected, v.unreadable
        )?;
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        if self.passed() {
            write!(f, "result: PASS")
        } else {
            write!(f, "result: FAIL: {}", self.failure_reasons().join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_verdict() {
        let w = WindowSummary::of(
            (1..=100).map(Duration::from_millis).collect(),
            2,
            Duration::from_millis(120),
        );
        assert_eq!(
            (
                w.count,
                w.p50_ms,
                w.p99_ms,
                w.max_ms,
                w.open,
                w.longest_wait_ms
            ),
            (100, 50.0, 99.0, 100.0, 2, 120.0)
        );
        let tally = Tally {
            lost: 1,
            ..Tally::default()
        };
        let report = Tally::into_report(vec![tally], "t".into(), 1, Duration::from_secs(1));
        assert!(!report.passed());
        assert!(report.to_string().contains("FAIL"));
    }
}
