//! The `hammer` binary running beside a scenario: started before the faults,
//! stopped with SIGINT after them (it then verifies every key it wrote), its
//! `--json` report parsed into [`HammerReport`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::binaries::{HAMMER, binary};
use crate::process::Process;
use crate::wait;

/// How the hammer runs.
#[derive(Debug, Clone)]
pub struct HammerOptions {
    /// Concurrent workers, each the only writer of its keys.
    pub workers: usize,
    /// Keys per worker (`{prefix}{worker}-{n:06}`).
    pub keys: usize,
    /// Key prefix.
    pub prefix: String,
    /// Operations per second over all workers. Bounded so that two clusters
    /// sharing two cores still have CPU for their controllers and nodes.
    pub rate: u64,
    /// Per-request timeout; above the proxy's retry deadline, or late
    /// answers read as stale.
    pub timeout: Duration,
    /// Seed of the operation choices, so a failing run can be replayed.
    pub seed: u64,
    /// How long clearing and verifying keys may retry.
    pub settle: Duration,
}

impl Default for HammerOptions {
    fn default() -> HammerOptions {
        HammerOptions {
            workers: 4,
            keys: 100,
            prefix: "h".to_owned(),
            rate: 200,
            timeout: Duration::from_secs(10),
            seed: 1,
            settle: Duration::from_secs(30),
        }
    }
}

/// A running hammer.
#[derive(Debug)]
pub struct HammerRun {
    process: Process,
    report: std::path::PathBuf,
    settle: Duration,
}

impl HammerRun {
    /// Starts the hammer against `target` (normally the proxy), logging in
    /// `dir`, and waits until its load is running (the first progress line
    /// that counts operations), so that what the test does next happens
    /// under load.
    pub async fn start(
        target: &str,
        dir: &Path,
        name: &str,
        options: &HammerOptions,
    ) -> anyhow::Result<HammerRun> {
        let report = dir.join(format!("{name}.json"));
        let mut process = Process::new(name, binary(HAMMER)?, dir)
            .args(["--addr", target])
            .args(["--workers", &options.workers.to_string()])
            .args(["--keys", &options.keys.to_string()])
            .args(["--prefix", &options.prefix])
            .args(["--rate", &options.rate.to_string()])
            .args(["--timeout-ms", &options.timeout.as_millis().to_string()])
            .args(["--seed", &options.seed.to_string()])
            .args(["--settle-secs", &options.settle.as_secs_f64().to_string()])
            .args(["--duration", "0", "--progress", "--json"])
            .stdout_to(report.clone());
        process.start()?;
        let mut run = HammerRun {
            process,
            report,
            settle: options.settle,
        };
        run.wait_for_load().await?;
        Ok(run)
    }

    async fn wait_for_load(&mut self) -> anyhow::Result<()> {
        // Clearing the keys first may take a while on a busy machine.
        let patience = self.settle + Duration::from_secs(10);
        let process = &mut self.process;
        wait::until("the hammer's load runs", patience, async || {
            if !process.is_running() {
                return Ok(Err(process.log_tail(20)));
            }
            let log = process.log_text();
            if log.lines().any(progress_counts_operations) {
                Ok(Ok(()))
            } else {
                Err(process.log_tail(3))
            }
        })
        .await?
        .map_err(|log| anyhow::anyhow!("the hammer exited before its load ran:\n{log}"))
    }

    /// Stops the load (SIGINT), waits for the verification and the report.
    pub async fn stop(mut self) -> anyhow::Result<HammerReport> {
        self.process.signal("INT")?;
        let status = self
            .process
            .wait_exit(self.settle * 2 + Duration::from_secs(30))
            .await?;
        // 0: passed; 1: the report says what was lost; 2: could not run.
        if status.code() == Some(2) || status.code().is_none() {
            bail!(
                "the hammer failed to run ({status}):\n{}",
                self.process.log_tail(20)
            );
        }
        let text = std::fs::read_to_string(&self.report)
            .with_context(|| format!("reading {}", self.report.display()))?;
        let mut report: HammerReport = serde_json::from_str(&text)
            .with_context(|| format!("parsing the hammer's report: {text}"))?;
        report.exit_code = status.code().unwrap_or(-1);
        Ok(report)
    }

    /// The hammer's log (progress lines and warnings).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// `[    3s]      201 ops/s      0 errors  p99    4.20 ms` with ops/s above 0.
fn progress_counts_operations(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else {
        return false;
    };
    let Some((_, after)) = rest.split_once(']') else {
        return false;
    };
    let Some(rate) = after.split_whitespace().next() else {
        return false;
    };
    after.contains("ops/s") && rate.parse::<f64>().is_ok_and(|r| r > 0.0)
}

/// The hammer's `--json` report (`ranger_kv::hammer::Report`).
#[derive(Debug, Clone, Deserialize)]
pub struct HammerReport {
    /// The server hammered.
    pub target: String,
    /// The seed, to replay the run.
    pub seed: u64,
    /// Length of the load phase.
    pub elapsed_secs: f64,
    /// Requests during the load.
    pub ops: u64,
    /// Successful ones.
    pub ok_ops: u64,
    /// Latency of successful requests, by operation.
    pub latency: Latencies,
    /// Failed requests by gRPC code name: what clients saw.
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged writes found missing.
    pub lost: u64,
    /// Reads older than the last acknowledged write.
    pub stale: u64,
    /// Values never written.
    pub unexpected: u64,
    /// Writes with unknown outcome.
    pub uncertain_writes: u64,
    /// Write-unavailable windows and the longest wait for one write.
    pub write_unavailable: Windows,
    /// The final read of every written key.
    pub verification: Verification,
    /// The first anomalies, described.
    #[serde(default)]
    pub problems: Vec<String>,
    /// The hammer's exit code: 0 when it passed, 1 when it found a loss.
    #[serde(skip)]
    pub exit_code: i32,
}

/// Latency summaries by operation.
#[derive(Debug, Clone, Deserialize)]
pub struct Latencies {
    /// Puts of absent keys.
    pub create: Latency,
    /// Gets.
    pub read: Latency,
    /// Puts of present keys.
    pub update: Latency,
    /// Deletes.
    pub delete: Latency,
}

/// One operation's latency, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Write-unavailable figures of a run.
#[derive(Debug, Clone, Deserialize)]
pub struct Windows {
    /// Closed windows (failures followed by a success).
    pub count: u64,
    /// Longest window, first failure to next success.
    pub max_ms: f64,
    /// Keys still failing at the end.
    pub open: u64,
    /// The longest a write waited, from its first attempt to its
    /// acknowledgement: what a client of the proxy feels as unavailability.
    pub longest_wait_ms: f64,
}

/// The verification pass.
#[derive(Debug, Clone, Deserialize)]
pub struct Verification {
    /// Keys read.
    pub keys: u64,
    /// Keys as expected.
    pub ok: u64,
    /// Keys missing their last acknowledged write.
    pub lost: u64,
    /// Keys holding a value never written.
    pub unexpected: u64,
    /// Keys that could not be read.
    pub unreadable: u64,
}

impl HammerReport {
    /// Failed requests of any kind, as clients saw them.
    pub fn client_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `Ok` when no client saw an error; else `Err` saying what `cost` them
    /// errors (the scenario's words) and which.
    pub fn check_no_client_errors(&self, cost: &str) -> anyhow::Result<()> {
        if self.client_errors() > 0 {
            bail!("{cost} cost clients errors: {:?}", self.errors);
        }
        Ok(())
    }

    /// The longest time writes were unavailable to a client, in milliseconds.
    pub fn longest_unavailable_ms(&self) -> f64 {
        self.write_unavailable
            .longest_wait_ms
            .max(self.write_unavailable.max_ms)
    }

    /// The slowest single request of any kind that succeeded, in
    /// milliseconds. A worker sends one request at a time, so a worker held
    /// up by a read during an outage writes nothing meanwhile: its wait shows
    /// here, not in [`HammerReport::longest_unavailable_ms`].
    pub fn longest_request_ms(&self) -> f64 {
        let l = &self.latency;
        [
            l.create.max_ms,
            l.read.max_ms,
            l.update.max_ms,
            l.delete.max_ms,
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }

    /// `Ok` when nothing acknowledged was lost, nothing foreign or stale was
    /// read, and every key was read back; else why not.
    pub fn check_no_loss(&self) -> anyhow::Result<()> {
        let v = &self.verification;
        if self.lost > 0
            || self.stale > 0
            || self.unexpected > 0
            || v.lost > 0
            || v.unexpected > 0
            || v.unreadable > 0
            || v.ok != v.keys
        {
            bail!(
                "the hammer found anomalies: lost {}, stale {}, unexpected {}, verification {v:?}; {:?}",
                self.lost,
                self.stale,
                self.unexpected,
                self.problems
            );
        }
        if self.ok_ops == 0 || v.keys == 0 {
            bail!("the hammer did nothing: {self:?}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_count_only_when_operations_ran() {
        assert!(progress_counts_operations(
            "[    1s]      198 ops/s      0 errors  p99    4.21 ms"
        ));
        assert!(!progress_counts_operations(
            "[    1s]        0 ops/s      0 errors  p99    0.00 ms"
        ));
        assert!(!progress_counts_operations(
            "===== hammer start #1: hammer --addr x ====="
        ));
        assert!(!progress_counts_operations(
            "2026-01-01T00:00:00Z WARN [x] y"
        ));
    }
}
