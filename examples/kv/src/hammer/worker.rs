//! One worker: sends one request at a time on its own keys, checks every read
//! against the model, then verifies every key it wrote.

use std::sync::Arc;
use std::time::Duration;

use crate::pb::kv_client::KvClient;
use crate::pb::{DeleteRequest, GetRequest, PutRequest};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::HammerError;
use super::config::{HammerConfig, OpKind};
use super::model::{KeyModel, Stored, Verdict};
use super::progress::Live;
use super::report::Tally;
use super::status::{code_name, timed_out, write_may_have_applied};
use super::value;

/// Tries to find a key in the wanted state before settling for any key.
const PICK_TRIES: usize = 16;
/// First pause after a failed request; doubles up to [`MAX_BACKOFF`], so that a
/// down server is not spun on (and the windows keep this resolution).
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// Pause between retries while clearing keys or verifying them.
const SETTLE_RETRY: Duration = Duration::from_millis(100);

/// A worker and everything it knows about its keys.
#[derive(Debug)]
pub(crate) struct Worker {
    config: Arc<HammerConfig>,
    client: KvClient<Channel>,
    names: Vec<String>,
    keys: Vec<KeyModel>,
    rng: StdRng,
    /// After a failed write the next write retries the same key, as a client
    /// would, so that the key's write-unavailable window closes promptly.
    retry: Option<usize>,
    /// When the first attempt of the write being retried began: a client waits
    /// from then until the write is acknowledged.
    pending_since: Option<Instant>,
    backoff: Duration,
    tally: Tally,
    live: Arc<Live>,
}

/// What a get returned when it succeeded: a value, or NOT_FOUND.
type ReadResult = Result<Option<Vec<u8>>, Status>;

/// A read's verdict, as the worker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judged {
    Ok,
    /// An older state than the last acknowledged write.
    Stale {
        newly_lost: bool,
    },
    /// A value never written to the key.
    Unexpected,
}

impl Worker {
    pub fn new(
        index: usize,
        config: Arc<HammerConfig>,
        channel: Channel,
        live: Arc<Live>,
    ) -> Worker {
        let names = (0..config.keys_per_worker)
            .map(|n| config.key(index, n))
            .collect();
        let seed = config
            .seed
            .wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Worker {
            client: KvClient::new(channel),
            names,
            keys: vec![KeyModel::default(); config.keys_per_worker],
            rng: StdRng::seed_from_u64(seed),
            retry: None,
            pending_since: None,
            backoff: Duration::ZERO,
            tally: Tally::default(),
            live,
            config,
        }
    }

    /// Deletes every key of this worker, so that a run does not depend on what
    /// earlier runs left behind. Failed deletes are retried until the settle
    /// timeout; past it the run cannot start.
    pub async fn clear(&mut self) -> Result<(), HammerError> {
        let deadline = Instant::now() + self.config.settle_timeout;
        for key in &self.names {
            loop {
                let call = self.client.delete(DeleteRequest { key: key.clone() });
                match within(self.config.request_timeout, call).await {
                    Ok(_) => break,
                    Err(status) if Instant::now() >= deadline => {
                        return Err(HammerError::Clear {
                            key: key.clone(),
                            status,
                        });
                    }
                    Err(status) => {
                        tracing::debug!(%key, %status, "clearing failed; retrying");
                        sleep(SETTLE_RETRY).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs operations until `stop` turns true, then verifies.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Tally {
        let period = self.period();
        let mut next = Instant::now();
        while !*stop.borrow() {
            let pause = if let Some(period) = period {
                // Pace, without bursting to catch up after a slow stretch.
                let now = Instant::now();
                next = (next + period).max(now.checked_sub(period).unwrap_or(now));
                next + self.backoff
            } else {
                Instant::now() + self.backoff
            };
            // A timer always waits for the timer wheel's next tick (about 1 ms),
            // even for a deadline already past: only sleep when there is a pause.
            if pause > Instant::now() {
                tokio::select! {
                    _ = sleep_until(pause) => {}
                    _ = stop.changed() => break,
                }
            }
            self.step().await;
        }
        self.tally.open_windows = self.keys.iter().filter(|k| k.is_failing()).count() as u64;
        self.verify().await;
        self.tally
    }

    /// This worker's share of the target rate, as a period between operations.
    fn period(&self) -> Option<Duration> {
        (self.config.rate > 0)
            .then(|| Duration::from_secs_f64(self.config.workers as f64 / self.config.rate as f64))
    }

    async fn step(&mut self) {
        let roll = self.rng.random_range(0..100u8);
        let ok = match self.config.mix.pick(roll) {
            OpKind::Read => {
                let k = self.rng.random_range(0..self.keys.len());
                self.read(k).await
            }
            want => {
                let (k, kind) = self.pick_write(want);
                self.write(k, kind).await
            }
        };
        self.backoff = if ok {
            Duration::ZERO
        } else {
            (self.backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF)
        };
    }

    /// The key to write and what the write is, given the wanted kind.
    fn pick_write(&mut self, want: OpKind) -> (usize, OpKind) {
        let k = self.retry.unwrap_or_else(|| {
            let wanted: fn(&KeyModel) -> bool = if want == OpKind::Create {
                KeyModel::is_absent
            } else {
                KeyModel::is_present
            };
            (0..PICK_TRIES)
                .map(|_| self.rng.random_range(0..self.keys.len()))
                .find(|&k| wanted(&self.keys[k]))
                .unwrap_or_else(|| self.rng.random_range(0..self.keys.len()))
        });
        let key = &self.keys[k];
        let kind = match want {
            _ if key.is_absent() => OpKind::Create,
            OpKind::Delete => OpKind::Delete,
            _ => OpKind::Update,
        };
        (k, kind)
    }

    /// Sends one write and records its outcome. Returns whether it succeeded.
    async fn write(&mut self, k: usize, kind: OpKind) -> bool {
        let key = self.names[k].clone();
        let request_timeout = self.config.request_timeout;
        let started = Instant::now();
        let (state, result) = if kind == OpKind::Delete {
            let call = self.client.delete(DeleteRequest { key: key.clone() });
            (
                Stored::Absent,
                within(request_timeout, call).await.map(|_| ()),
            )
        } else {
            let seq = self.keys[k].next_put();
            let value = value::encode(&key, seq, self.config.value_size);
            let call = self.client.put(PutRequest {
                key: key.clone(),
                value,
            });
            (
                Stored::Value(seq),
                within(request_timeout, call).await.map(|_| ()),
            )
        };
        let now = Instant::now();
        match result {
            Ok(_) => {
                self.succeeded(kind, now - started);
                let window = self.keys[k].acknowledged(state, now.into_std());
                self.tally.windows.extend(window);
                let waited = now - self.pending_since.take().unwrap_or(started);
                self.tally.longest_wait = self.tally.longest_wait.max(waited);
                self.retry = None;
                true
            }
            Err(status) => {
                let uncertain = write_may_have_applied(status.code());
                tracing::debug!(%key, ?kind, uncertain, %status, "write failed");
                self.failed(&status);
                self.tally.uncertain_writes += u64::from(uncertain);
                self.keys[k].failed(state, uncertain, now.into_std());
                self.pending_since.get_or_insert(started);
                self.retry = Some(k);
                false
            }
        }
    }

    /// Sends one get and judges it. Returns whether the request succeeded.
    async fn read(&mut self, k: usize) -> bool {
        let started = Instant::now();
        match self.get(k).await {
            Ok(value) => {
                self.succeeded(OpKind::Read, started.elapsed());
                match self.judge(k, value) {
                    Judged::Ok => {}
                    Judged::Stale { newly_lost } => {
                        self.tally.stale += 1;
                        self.tally.lost += u64::from(newly_lost);
                    }
                    Judged::Unexpected => self.tally.unexpected += 1,
                }
                true
            }
            Err(status) => {
                tracing::debug!(key = %self.names[k], %status, "read failed");
                self.failed(&status);
                false
            }
        }
    }

    /// Reads every key this worker wrote. Failed reads are retried until the
    /// verification timeout; past it, each key gets one attempt.
    async fn verify(&mut self) {
        let deadline = Instant::now() + self.config.settle_timeout;
        for k in 0..self.keys.len() {
            if !self.keys[k].was_written() {
                continue;
            }
            self.tally.verification.keys += 1;
            let value = loop {
                match self.get(k).await {
                    Ok(value) => break Some(value),
                    Err(_) if Instant::now() >= deadline => break None,
                    Err(status) => {
                        tracing::debug!(key = %self.names[k], %status, "verification read failed");
                        sleep(SETTLE_RETRY).await;
                    }
                }
            };
            let Some(value) = value else {
                self.tally.verification.unreadable += 1;
                continue;
            };
            match self.judge(k, value) {
                Judged::Ok => self.tally.verification.ok += 1,
                Judged::Stale { newly_lost } => {
                    self.tally.verification.lost += 1;
                    self.tally.lost += u64::from(newly_lost);
                }
                Judged::Unexpected => {
                    self.tally.verification.unexpected += 1;
                    self.tally.unexpected += 1;
                }
            }
        }
    }

    /// A get, with NOT_FOUND as `Ok(None)`.
    async fn get(&mut self, k: usize) -> ReadResult {
        let key = self.names[k].clone();
        let call = self.client.get(GetRequest { key });
        match within(self.config.request_timeout, call).await {
            Ok(response) => Ok(Some(response.into_inner().value)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Checks a read against the model and describes any anomaly; the caller
    /// counts it (load phase and verification count differently).
    fn judge(&mut self, k: usize, value: Option<Vec<u8>>) -> Judged {
        let key = &self.names[k];
        let decoded = value
            .as_deref()
            .map(|v| value::decode(key, v, self.config.value_size));
        let model = &mut self.keys[k];
        let observed = model.observe(decoded);
        match model.check(observed) {
            Verdict::Ok => Judged::Ok,
            Verdict::Stale {
                expected,
                got,
                newly_lost,
            } => {
                let text = format!("stale read of {key}: expected {expected:?}, got {got:?}");
                self.tally.problem(text);
                Judged::Stale { newly_lost }
            }
            Verdict::Unexpected => {
                let shown = value.as_deref().map(preview);
                let text = format!("unexpected value of {key}: {shown:?}");
                self.tally.problem(text);
                Judged::Unexpected
            }
        }
    }

    fn succeeded(&mut self, kind: OpKind, latency: Duration) {
        self.tally.ops += 1;
        self.tally.ok_ops += 1;
        self.tally.latency.entry(kind).or_default().record(latency);
        self.live.ok(latency);
    }

    fn failed(&mut self, status: &Status) {
        self.tally.ops += 1;
        *self
            .tally
            .errors
            .entry(code_name(status.code()))
            .or_default() += 1;
        self.live.error();
    }
}

/// Runs a call with the hammer's timeout; a timeout is DEADLINE_EXCEEDED.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<tonic::Response<T>, Status> {
    timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// The first bytes of a value, readable.
fn preview(value: &[u8]) -> String {
    let head = &value[..value.len().min(40)];
    String::from_utf8_lossy(head).into_owned()
}
