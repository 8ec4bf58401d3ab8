//! Balancer planning benchmark (DESIGN.md §10: one round < 1 s at 100k ranges ×
//! 1,000 nodes).
//!
//! Builds a snapshot of N ranges on M nodes with Zipf(1.1)-distributed request
//! rates (seeded, so every run plans the same thing), then times planning rounds:
//! the first with an empty memory (every range's smoothing starts), then several
//! with the memory of the previous one, as the runtime would run them. Prints
//! min / median / max and what the rounds planned.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/ranger/target
//! cargo run --release -p ranger-controller --example bench_balancer
//! cargo run --release -p ranger-controller --example bench_balancer -- --ranges 1000000 --nodes 1000
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ranger_controller::balancer::{
    BalancerConfig, BalancerMemory, NodeSnapshot, RangeLoad, RangeSnapshot, Snapshot, Timestamp,
    plan,
};
use ranger_proto::{Key, NodeId, RangeId};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    ranges: u64,
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Rounds timed after the first.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn key(i: u64) -> Key {
    if i == 0 {
        Key::empty()
    } else {
        Key::new(i.to_be_bytes().to_vec())
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.ranges > 0 && args.nodes > 0,
        "need at least one range and one node"
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let nodes: Vec<NodeId> = (0..args.nodes)
        .map(|i| NodeId::new(format!("node-{i:04}")))
        .collect::<Result<_, _>>()?;
    let mut ranks: Vec<u64> = (1..=args.ranges).collect();
    ranks.shuffle(&mut rng);
    let norm: f64 = (1..=args.ranges).map(|r| (r as f64).powf(-1.1)).sum();
    let total_rps = 1_000_000.0;
    let mut ranges = Vec::with_capacity(args.ranges as usize);
    for i in 0..args.ranges {
        let end = if i + 1 == args.ranges {
            Key::empty()
        } else {
            key(i + 1)
        };
        let node = nodes[rng.random_range(0..nodes.len())].clone();
        let mut r = RangeSnapshot::new(RangeId::new(i + 1)?, key(i), end, vec![node]);
        let rps = total_rps * (ranks[i as usize] as f64).powf(-1.1) / norm;
        r.load = RangeLoad {
            keys: 10_000,
            bytes: rng.random_range(32u64..256) << 20,
            reads_per_second: rps * 0.8,
            writes_per_second: rps * 0.2,
        };
        let mid = i
            .to_be_bytes()
            .iter()
            .chain(b"m")
            .copied()
            .collect::<Vec<u8>>();
        r.split_keys_by_size = vec![Key::new(mid.clone())];
        r.split_keys_by_load = vec![Key::new(mid)];
        ranges.push(r);
    }
    let mut snapshot = Snapshot {
        now: Timestamp::from_millis(0),
        ranges,
        nodes: nodes.into_iter().map(NodeSnapshot::active).collect(),
        excluded: Vec::new(),
        in_flight: Vec::new(),
    };
    let config = BalancerConfig::default();

    let start = Instant::now();
    let (first, mut memory) = plan(&snapshot, &config, &BalancerMemory::default());
    let cold = start.elapsed();
    println!(
        "{} ranges x {} nodes: first round (empty memory) {:.1} ms: {} actions, {} skipped, \
         imbalance {:.3} -> planned {:.3}",
        args.ranges,
        args.nodes,
        ms(cold),
        first.actions.len(),
        first.skip_counts.values().sum::<usize>(),
        first.imbalance.load,
        first.planned_imbalance
    );

    let mut times = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        snapshot.now = Timestamp::from_millis(round as u64 * 60_000);
        let start = Instant::now();
        let (p, next) = plan(&snapshot, &config, &memory);
        times.push(start.elapsed());
        memory = next;
        std::hint::black_box(p);
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[times.len() / 2];
        println!(
            "later rounds ({}): min {:.1} ms, median {:.1} ms, max {:.1} ms (target < 1000 ms)",
            times.len(),
            ms(*min),
            ms(median),
            ms(*max)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
