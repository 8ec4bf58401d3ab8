//! Writes an [`EngineSample`] in the exposition format. A `prometheus_client`
//! collector rather than registered gauges and counters: the figures are the
//! engine's own (states counted at the scrape, totals the engine keeps), so a
//! family is written from the latest sample as a whole, and a node or state that
//! disappeared simply stops being written instead of lingering at its last value.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use ranger_proto::{PlacementState, RangeState};

use super::sample::{EngineSample, NodeCondition};
use crate::config::BalanceMode;

type Labels = Vec<(&'static str, String)>;

/// What the collector writes: the latest sample, and whether this process runs
/// the controller at all (a standby writes only that).
#[derive(Debug, Default)]
pub(super) struct Latest {
    pub leader: bool,
    pub sample: Option<EngineSample>,
}

/// The controller's sampled families; see the README's metrics table.
#[derive(Debug, Clone, Default)]
pub struct EngineCollector {
    pub(super) latest: Arc<Mutex<Latest>>,
}

fn lower(value: impl std::fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

/// Writes one family of constant metrics (`ConstGauge`s or `ConstCounter`s),
/// one per label set. The type is given, not read off the first sample, so an
/// empty family still says what it is.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> std::fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(encoder, name, help, MetricType::Gauge, samples)
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let samples = samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v)));
    family(encoder, name, help, MetricType::Counter, samples)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// One sample per state, in the order given, 0 for a state nobody is in (so a
/// state that empties reads 0 rather than disappearing).
fn by_state<S: Ord + std::fmt::Debug>(
    states: &[S],
    counts: &std::collections::BTreeMap<S, u64>,
) -> Vec<(Labels, f64)> {
    states
        .iter()
        .map(|s| {
            (
                vec![("state", lower(s))],
                counts.get(s).copied().unwrap_or(0) as f64,
            )
        })
        .collect()
}

const RANGE_STATES: [RangeState; 3] = [
    RangeState::Active,
    RangeState::Subsuming,
    RangeState::Obsolete,
];
const PLACEMENT_STATES: [PlacementState; 7] = [
    PlacementState::Pending,
    PlacementState::Loading,
    PlacementState::Inactive,
    PlacementState::Active,
    PlacementState::GiveUp,
    PlacementState::Missing,
    PlacementState::Dropped,
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let latest = match self.latest.lock() {
            Ok(latest) => latest,
            // A panic elsewhere while holding the lock: the data is still a
            // consistent sample (it is replaced whole), so show it.
            Err(poisoned) => poisoned.into_inner(),
        };
        gauge(
            &mut encoder,
            "ranger_controller_leader",
            "1 if this process runs the controller loop (the only or the elected one), 0 on a standby",
            if latest.leader { 1.0 } else { 0.0 },
        )?;
        let Some(sample) = &latest.sample else {
            return Ok(());
        };
        let e = &mut encoder;
        gauges(
            e,
            "ranger_nodes",
            "Nodes known to the controller, by condition",
            NodeCondition::ALL.iter().map(|c| {
                (
                    vec![("state", c.as_str().to_owned())],
                    sample.nodes.get(c).copied().unwrap_or(0) as f64,
                )
            }),
        )?;
        gauges(
            e,
            "ranger_ranges",
            "Ranges in the keyspace, by state",
            by_state(&RANGE_STATES, &sample.ranges),
        )?;
        gauges(
            e,
            "ranger_placements",
            "Placements in the keyspace, by state",
            by_state(&PLACEMENT_STATES, &sample.placements),
        )?;
        gauge(
            e,
            "ranger_ranges_unavailable",
            "Ranges waiting for a lost node's only copy (shown until it returns or is forgotten)",
            sample.unavailable_ranges as f64,
        )?;
        let per_node = |value: &dyn Fn(&super::sample::NodeFigures) -> Option<f64>| {
            sample
                .node_figures
                .iter()
                .filter_map(|n| value(n).map(|v| (vec![("node", n.id.clone())], v)))
                .collect::<Vec<_>>()
        };
        gauges(
            e,
            "ranger_node_requests_per_second",
            "Reads and writes per second a node last reported over its ranges",
            per_node(&|n| Some(n.requests_per_second)),
        )?;
        gauges(
            e,
            "ranger_node_bytes",
            "Bytes a node last reported over its ranges",
            per_node(&|n| Some(n.bytes as f64)),
        )?;
        gauges(
            e,
            "ranger_node_ranges",
            "Ranges a node last reported holding",
            per_node(&|n| Some(n.ranges as f64)),
        )?;
        gauges(
            e,
            "ranger_node_capacity",
            "The capacity a node declared (relative; default 1)",
            per_node(&|n| Some(n.capacity)),
        )?;
        gauges(
            e,
            "ranger_node_share_of_mean",
            "A node's load per unit of capacity over the mean, at the last balancing round",
            per_node(&|n| n.share_of_mean),
        )?;
        let balancer = &sample.balancer;
        if let Some(imbalance) = balancer.imbalance {
            gauges(
                e,
                "ranger_imbalance",
                "Max over mean of load per unit of capacity at the last balancing round, by dimension",
                [
                    ("load", imbalance.load),
                    ("requests", imbalance.requests),
                    ("bytes", imbalance.bytes),
                    ("keys", imbalance.keys),
                ]
                .map(|(dimension, value)| (vec![("dimension", dimension.to_owned())], value)),
            )?;
        }
        gauge(
            e,
            "ranger_balancer_tolerance",
            "Nodes within mean x (1 +/- tolerance) are left alone",
            balancer.tolerance,
        )?;
        gauges(
            e,
            "ranger_balancer_mode",
            "1 for the balancer's mode",
            [BalanceMode::On, BalanceMode::DryRun, BalanceMode::Off].map(|mode| {
                (
                    vec![("mode", mode.to_string())],
                    if mode == balancer.mode { 1.0 } else { 0.0 },
                )
            }),
        )?;
        gauge(
            e,
            "ranger_balancer_paused",
            "1 while an operator's pause lasts",
            if balancer.paused { 1.0 } else { 0.0 },
        )?;
        counter(
            e,
            "ranger_balancer_rounds",
            "Balancing rounds planned",
            balancer.totals.rounds,
        )?;
        counters(
            e,
            "ranger_balancer_actions",
            "Actions the balancer planned, by reason (queued in mode on, shown in dry-run)",
            balancer
                .totals
                .actions
                .iter()
                .map(|(reason, n)| (vec![("reason", format!("{reason:?}"))], *n)),
        )?;
        counters(
            e,
            "ranger_balancer_skips",
            "Candidates the balancer skipped, by reason",
            balancer
                .totals
                .skips
                .iter()
                .map(|(reason, n)| (vec![("reason", reason.to_string())], *n)),
        )?;
        counter(
            e,
            "ranger_balancer_refused",
            "Planned actions the engine refused to queue (the keyspace changed since the plan)",
            balancer.totals.refused,
        )?;
        gauges(
            e,
            "ranger_operations_in_flight",
            "Operations queued or running, by kind and phase",
            sample.ops_in_flight.iter().map(|((kind, phase), n)| {
                (
                    vec![
                        ("kind", kind.as_str().to_owned()),
                        ("phase", (*phase).to_owned()),
                    ],
                    *n as f64,
                )
            }),
        )?;
        counters(
            e,
            "ranger_operations",
            "Operations that ended, by kind, origin and result",
            sample.op_totals.iter().map(|((kind, origin, result), n)| {
                (
                    vec![
                        ("kind", kind.as_str().to_owned()),
                        ("origin", origin.as_str().to_owned()),
                        ("result", (*result).to_owned()),
                    ],
                    *n,
                )
            }),
        )?;
        {
            let mut family = e.encode_descriptor(
                "ranger_operation_duration",
                "How long operations took from request to end, by kind and result",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((kind, result), histogram) in &sample.op_durations {
                let labels: Labels = vec![
                    ("kind", kind.as_str().to_owned()),
                    ("result", (*result).to_owned()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum_seconds(),
                        histogram.count(),
                        &histogram.cumulative_buckets(),
                        None,
                    )?;
            }
        }
        counters(
            e,
            "ranger_placement_transitions",
            "Placements entering each state (a new placement enters pending)",
            PLACEMENT_STATES.iter().map(|s| {
                (
                    vec![("to", lower(s))],
                    sample.placement_transitions.get(s).copied().unwrap_or(0),
                )
            }),
        )?;
        Ok(())
    }
}
