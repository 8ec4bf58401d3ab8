//! The live view: counters every worker bumps, and a line per second on stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::histogram::Histogram;

/// Counters shared by the workers, read by the progress printer.
#[derive(Debug, Default)]
pub struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
    /// Latencies since the last progress line (swapped out every second).
    window: Mutex<Histogram>,
}

impl Live {
    /// Records a successful request.
    pub fn ok(&self, latency: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency);
    }

    /// Records a failed request.
    pub fn error(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn take_window(&self) -> Histogram {
        std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Prints `[elapsed] ops/s, errors, p99` every second until dropped (the
/// caller aborts the task).
pub async fn print_every_second(live: &Live, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let (mut last_ops, mut last_errors, mut last_at) = (0, 0, Instant::now());
    loop {
        tick.tick().await;
        let now = Instant::now();
        let ops = live.ops.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let window = live.take_window();
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
        eprintln!(
            "[{:>5.0}s] {:>8.0} ops/s  {:>5} errors  p99 {:>7.2} ms",
            now.duration_since(started).as_secs_f64(),
            (ops - last_ops) as f64 / secs,
            errors - last_errors,
            window.quantile(0.99).as_secs_f64() * 1e3,
        );
        (last_ops, last_errors, last_at) = (ops, errors, now);
    }
}
