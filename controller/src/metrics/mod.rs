//! The controller's Prometheus metrics (`rangerd --http`, `/metrics`).
//!
//! Two kinds, kept apart on purpose:
//! - what the **runtime** sees happen around the engine, recorded as it
//!   happens ([`RuntimeMetrics`]): how long saves take and whether they fail,
//!   probes that fail, commands sent and how they were answered. The engine never
//!   sees time pass on I/O, so only the runtime can measure it.
//! - what the **engine** knows ([`EngineSample`]): nodes, ranges and placements by
//!   state, per-node load and capacity, the imbalance, operations in flight, and
//!   the engine's own running totals (ended operations with their durations,
//!   placement transitions, balancer rounds, actions and skips). Sampled inside the
//!   controller loop just before each scrape ([`source`]), so a scrape shows one
//!   consistent moment, and nothing is counted twice on its way out.
//!
//! No label names a range (thousands of series per node is what breaks a
//! Prometheus); per-range detail is the API's job (`rangerctl`, the dashboard).
//! Node ids are labels: a cluster has few nodes, and per-node load is the point.

mod collector;
mod sample;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use ranger_process::metrics::{BeforeScrape, MetricsSource};

pub use collector::EngineCollector;
pub use sample::{BalancerSample, EngineSample, NodeCondition, NodeFigures};

use crate::service::{ControllerSlot, SlotState};

/// How long a scrape waits for the controller loop to answer before it shows
/// the previous sample: a scrape must not hang on a busy loop.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s: a local redb commit to a Consul transaction under stress.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// What the runtime records as it happens. Cheap to clone (shared counters);
/// the default is a set registered nowhere, for tests and embedders that do
/// not serve metrics.
#[derive(Debug, Clone)]
pub struct RuntimeMetrics {
    persist_duration: Family<ResultLabel, Histogram, fn() -> Histogram>,
    probe_failures: Family<NodeLabel, Counter>,
    commands: Family<CommandLabels, Counter>,
    command_duration: Family<CommandLabels, Histogram, fn() -> Histogram>,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        RuntimeMetrics {
            persist_duration: Family::new_with_constructor(latency_histogram),
            probe_failures: Family::default(),
            commands: Family::default(),
            command_duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl RuntimeMetrics {
    /// Registers this set's families in `registry` (the counts are shared with
    /// every clone, so a controller already running with it shows up too).
    pub fn register(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register_with_unit(
            "ranger_persist_duration",
            "How long saving keyspace changes took, by result (ok or failed)",
            Unit::Seconds,
            metrics.persist_duration.clone(),
        );
        registry.register(
            "ranger_probe_failures",
            "Probes a node did not answer (or answered with an error)",
            metrics.probe_failures.clone(),
        );
        registry.register(
            "ranger_commands",
            "Commands sent to nodes, by command and result (ok, failed: the callback failed, or the call's error: invalid, wrong_state, unreachable, error)",
            metrics.commands.clone(),
        );
        registry.register_with_unit(
            "ranger_command_duration",
            "How long nodes took to answer commands, by command and result",
            Unit::Seconds,
            metrics.command_duration.clone(),
        );
    }

    /// A save ended after `elapsed`.
    pub fn saved(&self, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.persist_duration
            .get_or_create(&ResultLabel { result })
            .observe(elapsed.as_secs_f64());
    }

    /// A probe of `node` failed.
    pub fn probe_failed(&self, node: &str) {
        self.probe_failures
            .get_or_create(&NodeLabel {
                node: node.to_owned(),
            })
            .inc();
    }

    /// A command was answered (or failed to be) after `elapsed`.
    pub fn command_answered(&self, command: &'static str, result: &'static str, elapsed: Duration) {
        let labels = CommandLabels { command, result };
        self.commands.get_or_create(&labels).inc();
        self.command_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// Registers the engine's sampled families in `registry` and returns what
/// `rangerd` serves: the registry, refreshed from the controller reachable
/// through `slot` before each scrape.
pub fn source(mut registry: Registry, slot: ControllerSlot) -> MetricsSource {
    let collector = EngineCollector::default();
    registry.register_collector(Box::new(collector.clone()));
    let refresh: BeforeScrape = Arc::new(move || {
        let slot = slot.clone();
        let collector = collector.clone();
        Box::pin(async move { refresh(&slot, &collector).await })
    });
    MetricsSource::new(registry).before_scrape(refresh)
}

async fn refresh(slot: &ControllerSlot, collector: &EngineCollector) {
    let handle = match slot.current() {
        SlotState::Running(handle) => handle,
        SlotState::Standby { .. } | SlotState::Starting => {
            collector.store(false, None);
            return;
        }
    };
    let sampled = tokio::time::timeout(
        SAMPLE_TIMEOUT,
        handle.inspect(|engine| EngineSample::of(engine, tokio::time::Instant::now())),
    )
    .await;
    match sampled {
        Ok(Ok(sample)) => collector.store(true, Some(sample)),
        Ok(Err(_stopped)) => collector.store(false, None),
        Err(_elapsed) => {
            tracing::warn!(
                "metrics: the controller loop did not answer in time; showing the previous sample"
            );
        }
    }
}

impl EngineCollector {
    fn store(&self, leader: bool, sample: Option<EngineSample>) {
        let mut latest = match self.latest.lock() {
            Ok(latest) => latest,
            Err(poisoned) => poisoned.into_inner(),
        };
        latest.leader = leader;
        latest.sample = sample;
    }
}
