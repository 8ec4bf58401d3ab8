//! What every node that embeds the SDK reports to Prometheus, so that a storage
//! system gets the framework's side of its health without writing it: how its
//! callbacks went and how long they took, how many ranges it holds in each
//! state, how long the controller's lease has left, and how its state transfers
//! went.
//!
//! The rangelet times the callbacks itself (they are its calls). The range and
//! lease gauges are sampled from the rangelet's table just before a scrape
//! ([`crate::Rangelet::sample_metrics`]), never kept per range: a node may hold
//! thousands of ranges, so no metric has a per-range label. Transfers are the
//! storage system's own code, so it reports each one that ends with
//! [`NodeMetrics::transfer_finished`].
//!
//! A storage system makes one [`NodeMetrics`], hands a clone to the rangelet
//! ([`crate::RangeletConfig::metrics`]) and keeps one for its transfers, then
//! [`NodeMetrics::register`]s it into the registry its binary serves (with
//! [`serve_metrics`], re-exported here so that the SDK is the one dependency).
//! Every family is named `ranger_node_*`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ranger_proto::RemoteState;

use crate::node::CallbackError;

/// Serving the registry: re-exported so that a storage system built on the SDK
/// serves `/metrics` like every Ranger binary, with one dependency.
pub use ranger_process::metrics::{BeforeScrape, MetricsSource, serve_metrics};

/// The prefix of every family registered by [`NodeMetrics::register`].
pub const PREFIX: &str = "ranger_node";

/// The five callbacks of [`crate::Node`], as the `callback` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackKind {
    Prepare,
    Activate,
    Deactivate,
    Drop,
    LoadInfo,
}

impl CallbackKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackKind::Prepare => "prepare",
            CallbackKind::Activate => "activate",
            CallbackKind::Deactivate => "deactivate",
            CallbackKind::Drop => "drop",
            CallbackKind::LoadInfo => "load_info",
        }
    }
}

/// How a callback ended, as the `result` label names it: `ok`, the kind of
/// [`CallbackError`], or `cancelled` (a prepare the controller gave up on).
fn result_label<T>(result: Option<&Result<T, CallbackError>>) -> &'static str {
    match result {
        None => "cancelled",
        Some(Ok(_)) => "ok",
        Some(Err(CallbackError::Refused(_))) => "refused",
        Some(Err(CallbackError::UnknownRange(_))) => "unknown_range",
        Some(Err(CallbackError::Other(_))) => "other",
    }
}

/// The states a range on a node can be in (NotFound is no range), each with
/// its `state` label.
const STATES: [(RemoteState, &str); 6] = [
    (RemoteState::Preparing, "preparing"),
    (RemoteState::Inactive, "inactive"),
    (RemoteState::Activating, "activating"),
    (RemoteState::Active, "active"),
    (RemoteState::Deactivating, "deactivating"),
    (RemoteState::Dropping, "dropping"),
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackLabels {
    callback: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Callbacks take from a millisecond (activate) to minutes (a big prepare).
fn callback_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Transfers take from milliseconds (an empty range) to minutes.
fn transfer_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

#[derive(Debug)]
struct Families {
    callbacks: HistogramFamily<CallbackLabels>,
    ranges: Family<StateLabels, Gauge>,
    lease_remaining: Gauge<f64, AtomicU64>,
    transfer_bytes: Family<ResultLabels, Counter>,
    transfers: HistogramFamily<ResultLabels>,
}

/// The node SDK's metrics (see the module docs). Cheap to clone: every clone
/// updates the same families.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    families: Arc<Families>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Metrics that count from now on, registered nowhere yet.
    pub fn new() -> Self {
        NodeMetrics {
            families: Arc::new(Families {
                callbacks: Family::new_with_constructor(callback_histogram),
                ranges: Family::default(),
                lease_remaining: Gauge::default(),
                transfer_bytes: Family::default(),
                transfers: Family::new_with_constructor(transfer_histogram),
            }),
        }
    }

    /// Registers every family into `registry`, named `ranger_node_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        let f = &self.families;
        registry.register(
            "callback_duration_seconds",
            "Storage-system callbacks by callback (prepare, activate, deactivate, drop, load_info) and result (ok, refused, unknown_range, other, cancelled), and how long they took; _count is the number of calls",
            f.callbacks.clone(),
        );
        registry.register(
            "ranges",
            "Ranges on this node by state, sampled at scrape time",
            f.ranges.clone(),
        );
        registry.register(
            "lease_remaining_seconds",
            "Time left on the controller's write lease, sampled at scrape time (0: lapsed, or never granted)",
            f.lease_remaining.clone(),
        );
        registry.register(
            "transfer_bytes",
            "Bytes of state copied into this node by transfers, by result (ok, error)",
            f.transfer_bytes.clone(),
        );
        registry.register(
            "transfer_duration_seconds",
            "State transfers into this node by result (ok, error), and how long they took",
            f.transfers.clone(),
        );
    }

    /// Reports a state transfer into this node that ended: `bytes` copied in
    /// `duration`, successfully or not. Called by the storage system, whose
    /// code the transfers are.
    pub fn transfer_finished(&self, bytes: u64, duration: Duration, ok: bool) {
        let labels = ResultLabels {
            result: if ok { "ok" } else { "error" },
        };
        self.families
            .transfer_bytes
            .get_or_create(&labels)
            .inc_by(bytes);
        self.families
            .transfers
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Runs `callback`, recording how it ended and how long it took.
    pub(crate) async fn time<T>(
        &self,
        kind: CallbackKind,
        callback: impl Future<Output = Result<T, CallbackError>>,
    ) -> Result<T, CallbackError> {
        let began = Instant::now();
        let result = callback.await;
        self.callback_ended(kind, Some(&result), began.elapsed());
        result
    }

    /// Records a callback that ended (`None`: abandoned before it did).
    pub(crate) fn callback_ended<T>(
        &self,
        kind: CallbackKind,
        result: Option<&Result<T, CallbackError>>,
        elapsed: Duration,
    ) {
        let labels = CallbackLabels {
            callback: kind.as_str(),
            result: result_label(result),
        };
        self.families
            .callbacks
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the sampled gauges: how many ranges are in each state (every state
    /// is set, so a state that emptied shows 0), and the lease's time left.
    pub(crate) fn set_sampled(
        &self,
        states: impl IntoIterator<Item = RemoteState>,
        lease_remaining: Duration,
    ) {
        let mut counts = [0i64; STATES.len()];
        for state in states {
            if let Some(i) = STATES.iter().position(|(s, _)| *s == state) {
                counts[i] += 1;
            }
        }
        for ((_, label), count) in STATES.iter().zip(counts) {
            self.families
                .ranges
                .get_or_create(&StateLabels { state: label })
                .set(count);
        }
        self.families
            .lease_remaining
            .set(lease_remaining.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &NodeMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[tokio::test]
    async fn a_timed_callback_is_counted_under_its_kind_and_result() {
        let metrics = NodeMetrics::new();
        for _ in 0..2 {
            let _ = metrics
                .time(CallbackKind::Activate, async { Ok::<_, CallbackError>(()) })
                .await;
        }
        let failed = metrics
            .time(CallbackKind::Prepare, async {
                Err::<(), _>(CallbackError::refused("disk full"))
            })
            .await;
        assert!(failed.is_err(), "the callback's result is passed on");
        metrics.callback_ended::<()>(CallbackKind::Prepare, None, Duration::from_millis(3));

        let text = encoded(&metrics);
        for line in [
            r#"ranger_node_callback_duration_seconds_count{callback="activate",result="ok"} 2"#,
            r#"ranger_node_callback_duration_seconds_count{callback="prepare",result="refused"} 1"#,
            r#"ranger_node_callback_duration_seconds_count{callback="prepare",result="cancelled"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!text.contains(r#"callback="drop""#), "{text}");
    }

    #[test]
    fn sampling_sets_every_state_so_an_emptied_one_shows_zero() {
        let metrics = NodeMetrics::new();
        metrics.set_sampled(
            [
                RemoteState::Active,
                RemoteState::Active,
                RemoteState::Preparing,
            ],
            Duration::from_millis(1500),
        );
        let text = encoded(&metrics);
        assert!(
            text.contains(r#"ranger_node_ranges{state="active"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ranger_node_ranges{state="preparing"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("ranger_node_lease_remaining_seconds 1.5"),
            "{text}"
        );

        metrics.set_sampled([RemoteState::Inactive], Duration::ZERO);
        let text = encoded(&metrics);
        assert!(
            text.contains(r#"ranger_node_ranges{state="active"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ranger_node_ranges{state="preparing"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ranger_node_ranges{state="inactive"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("ranger_node_lease_remaining_seconds 0.0"),
            "{text}"
        );
    }

    #[test]
    fn transfers_add_their_bytes_and_duration_by_result() {
        let metrics = NodeMetrics::new();
        metrics.transfer_finished(1000, Duration::from_millis(20), true);
        metrics.transfer_finished(500, Duration::from_millis(30), true);
        metrics.transfer_finished(7, Duration::from_secs(2), false);
        let text = encoded(&metrics);
        for line in [
            r#"ranger_node_transfer_bytes_total{result="ok"} 1500"#,
            r#"ranger_node_transfer_bytes_total{result="error"} 7"#,
            r#"ranger_node_transfer_duration_seconds_count{result="ok"} 2"#,
            r#"ranger_node_transfer_duration_seconds_sum{result="ok"} 0.05"#,
            r#"ranger_node_transfer_duration_seconds_count{result="error"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
