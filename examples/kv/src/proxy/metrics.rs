//! What the proxy reports to Prometheus: its `kv.KV` requests by method and
//! code; its retries, by why the attempt before failed; how long requests
//! waited through handoffs (a range moving, or its node down); and how long
//! ago its routing table last changed, which tells a proxy that lost sight of
//! the nodes (an old table) from one that follows them; and how its batches to
//! the nodes form (ops per batch, ops waiting for one).
//!
//! Families are named `ranger_kv_proxy_*`; [`super::Proxy::metrics`] serves
//! them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::sync::watch;
use tonic::Code;

use super::error::LastFailure;
use crate::metrics::RequestMetrics;

/// The prefix of every family [`ProxyMetrics::register`] registers.
pub const PREFIX: &str = "ranger_kv_proxy";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Waits last from a millisecond to the request deadline (seconds).
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Why a request was tried again, as the `reason` label names it.
pub fn retry_reason(failure: &LastFailure) -> &'static str {
    match failure {
        LastFailure::NoActiveRange => "no_active_range",
        LastFailure::Refused {
            code: Code::Unavailable,
            ..
        } => "node_unavailable",
        LastFailure::Refused { .. } => "not_served",
        LastFailure::TimedOut { .. } => "timed_out",
        LastFailure::Unreachable { .. } => "unreachable",
    }
}

/// The proxy's metrics. Cheap to clone: clones share the families.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// `kv.KV` requests answered by the proxy.
    pub requests: RequestMetrics,
    retries: Family<ReasonLabels, Counter>,
    handoff_waits: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    routing_age: Gauge<f64, AtomicU64>,
    /// When the routing table last changed.
    routing_changed: Arc<Mutex<Instant>>,
    /// The longest handoff wait of a served request since
    /// [`ProxyMetrics::take_longest_handoff_wait`] last ran: the histogram keeps
    /// buckets, and a benchmark wants the exact worst case of one move.
    longest_handoff_wait: Arc<Mutex<Duration>>,
    /// Ops per `kv.KV/Batch` sent to a node.
    batch_ops: Histogram,
    /// Ops waiting for a batch (every node), now.
    batch_queued: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            requests: RequestMetrics::default(),
            retries: Family::default(),
            handoff_waits: Family::new_with_constructor(wait_histogram),
            routing_age: Gauge::default(),
            routing_changed: Arc::new(Mutex::new(Instant::now())),
            longest_handoff_wait: Arc::new(Mutex::new(Duration::ZERO)),
            batch_ops: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            batch_queued: Gauge::default(),
        }
    }
}

impl ProxyMetrics {
    /// Registers every family into `registry`, named `ranger_kv_proxy_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        self.requests.register(registry, "answered by the proxy");
        registry.register(
            "retries",
            "Attempts at a request made again, by why the one before failed: no_active_range (no node reports the key's range Active), not_served (the node refused the key: FailedPrecondition or Aborted), node_unavailable, unreachable",
            self.retries.clone(),
        );
        registry.register(
            "handoff_wait_seconds",
            "Requests that had to wait for a route (a range handed off, or its node down), by outcome (served, gave_up, failed), and how long they waited from their first failed attempt",
            self.handoff_waits.clone(),
        );
        registry.register(
            "routing_table_age_seconds",
            "Time since the routing table last changed (a node's range reported in another state, a node added or lost), sampled at scrape time",
            self.routing_age.clone(),
        );
        registry.register(
            "batch_ops",
            "Ops in each kv.KV/Batch the proxy sent to a node (requests that arrived while the node's previous batch was out travel together)",
            self.batch_ops.clone(),
        );
        registry.register(
            "batch_queued",
            "Requests waiting for their node's batch in flight to come back, now",
            self.batch_queued.clone(),
        );
    }

    /// One more request waits for a batch.
    pub(crate) fn batch_queued(&self) {
        self.batch_queued.inc();
    }

    /// `taken` queued requests left the queue, `sent` of them in a batch to
    /// their node (the others' callers had given up).
    pub(crate) fn batch_taken(&self, taken: usize, sent: usize) {
        self.batch_queued
            .dec_by(i64::try_from(taken).unwrap_or(i64::MAX));
        if sent > 0 {
            self.batch_ops.observe(sent as f64);
        }
    }

    /// Requests waiting for a batch right now (the `batch_queued` gauge).
    pub fn queued_for_batches(&self) -> i64 {
        self.batch_queued.get()
    }

    /// Counts one more attempt at a request, after `failure`.
    pub fn retried(&self, failure: &LastFailure) {
        self.retries
            .get_or_create(&ReasonLabels {
                reason: retry_reason(failure),
            })
            .inc();
    }

    /// Records a request that waited `waited` from its first failed attempt
    /// until it was `served`, or not (`gave_up`: its deadline passed; `failed`:
    /// a node's final answer was an error).
    pub fn handoff_waited(&self, outcome: &'static str, waited: Duration) {
        self.handoff_waits
            .get_or_create(&OutcomeLabels { outcome })
            .observe(waited.as_secs_f64());
        if outcome == "served" {
            let mut longest = lock(&self.longest_handoff_wait);
            *longest = (*longest).max(waited);
        }
    }

    /// The longest time a served request waited through a handoff (from the
    /// first refusal or failure to the answer) since the last call, and starts
    /// over: a move's write-unavailable window as the proxy saw it, without the
    /// slow writes that had nothing to do with the move.
    pub fn take_longest_handoff_wait(&self) -> Duration {
        std::mem::take(&mut *lock(&self.longest_handoff_wait))
    }

    /// Follows the routing table's changes (`changes` is its change signal),
    /// noting when each happened, until the table is gone.
    pub fn follow_routing(&self, mut changes: watch::Receiver<u64>) {
        let changed = Arc::clone(&self.routing_changed);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                *lock(&changed) = Instant::now();
            }
        });
    }

    /// Samples the routing table's age.
    pub fn sample(&self) {
        let age = lock(&self.routing_changed).elapsed();
        self.routing_age.set(age.as_secs_f64());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, series: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().expect("a number"))
    }

    fn registered(metrics: &ProxyMetrics) -> Registry {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        registry
    }

    #[test]
    fn retries_are_counted_by_why_the_attempt_before_failed() {
        let metrics = ProxyMetrics::default();
        let registry = registered(&metrics);
        let refused = |code| LastFailure::Refused {
            addr: "n1".into(),
            code,
            message: String::new(),
        };
        metrics.retried(&LastFailure::NoActiveRange);
        metrics.retried(&refused(Code::FailedPrecondition));
        metrics.retried(&refused(Code::Aborted));
        metrics.retried(&refused(Code::Unavailable));
        let series =
            |reason: &str| format!(r#"ranger_kv_proxy_retries_total{{reason="{reason}"}}"#);
        assert_eq!(value(&registry, &series("no_active_range")), 1.0);
        assert_eq!(value(&registry, &series("not_served")), 2.0);
        assert_eq!(value(&registry, &series("node_unavailable")), 1.0);
        assert_eq!(value(&registry, &series("unreachable")), 0.0);
    }

    #[test]
    fn handoff_waits_are_counted_by_outcome_with_their_duration() {
        let metrics = ProxyMetrics::default();
        let registry = registered(&metrics);
        metrics.handoff_waited("served", Duration::from_millis(250));
        metrics.handoff_waited("served", Duration::from_millis(750));
        metrics.handoff_waited("gave_up", Duration::from_secs(5));
        let series = |part: &str, outcome: &str| {
            format!(r#"ranger_kv_proxy_handoff_wait_seconds_{part}{{outcome="{outcome}"}}"#)
        };
        assert_eq!(value(&registry, &series("count", "served")), 2.0);
        assert_eq!(value(&registry, &series("sum", "served")), 1.0);
        assert_eq!(value(&registry, &series("count", "gave_up")), 1.0);
    }

    #[tokio::test]
    async fn the_routing_table_age_restarts_at_each_change() {
        let metrics = ProxyMetrics::default();
        let registry = registered(&metrics);
        let (version, changes) = watch::channel(0u64);
        metrics.follow_routing(changes);
        tokio::time::sleep(Duration::from_millis(300)).await;
        metrics.sample();
        let before = value(&registry, "ranger_kv_proxy_routing_table_age_seconds");
        assert!(before >= 0.3, "{before}");

        version.send_modify(|v| *v += 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        metrics.sample();
        let after = value(&registry, "ranger_kv_proxy_routing_table_age_seconds");
        assert!(after < 0.3, "a change restarts the age: {after}");
    }

    #[test]
    fn the_longest_served_handoff_wait_is_kept_until_taken() {
        let metrics = ProxyMetrics::default();
        metrics.handoff_waited("served", Duration::from_millis(5));
        metrics.handoff_waited("served", Duration::from_millis(3));
        // A request that gave up is not a served write's window.
        metrics.handoff_waited("gave_up", Duration::from_millis(100));
        assert_eq!(
            metrics.take_longest_handoff_wait(),
            Duration::from_millis(5)
        );
        assert_eq!(metrics.take_longest_handoff_wait(), Duration::ZERO);
        metrics.handoff_waited("served", Duration::from_millis(2));
        assert_eq!(
            metrics.take_longest_handoff_wait(),
            Duration::from_millis(2)
        );
    }
}
