//! A seeded simulation of the balancer (DESIGN.md §10 "balance"): the pure planner
//! against a simulated cluster that applies each plan's actions at once, with a
//! key-level load model. No processes, no clock: a hundred rounds take moments.
//!
//! The model: 1,000,000 keys, first cut into 1,000 ranges of 1,000 keys placed
//! evenly on 10 nodes. Popularity follows Zipf(1.1) over the 1,000 initial key
//! blocks (block ranks shuffled by the seed), uniform within a block; a block's
//! keys have a seeded size. Nodes report each range's load with ±5% noise, and
//! suggest split keys at the median of the range's bytes and at the point that
//! best halves its load, as a storage node would. One round is one minute.
//!
//! What is measured is the *true* request load per node (not the planner's own
//! smoothed figure), so a planner that fooled itself would fail here.
//!
//! `RANGER_SEED=N` replays one seed, `RANGER_SEEDS=1-20` runs twenty; by default
//! seeds 1-5 run. Run with `--nocapture` to see max/mean and bytes moved per
//! round, and with `SIM_TRACE=1-8` to see what the planner did in rounds 1-8.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ranger_controller::balancer::{
    Action, BalancerConfig, BalancerMemory, NodeSnapshot, NodeState, Plan, RangeLoad,
    RangeSnapshot, Reason, Snapshot, Timestamp, plan,
};
use ranger_proto::{Key, LoadCut, NodeId, RangeId};

const KEYS: u64 = 1_000_000;
const BLOCKS: u64 = 1_000;
const KEYS_PER_BLOCK: u64 = KEYS / BLOCKS;
const TOTAL_RPS: f64 = 100_000.0;
const ROUND: Duration = Duration::from_secs(60);
const ZIPF_S: f64 = 1.1;

/// Rounds within which max/mean must first reach 1.10 from a random placement of
/// the Zipf load, and after which it must stay there. DESIGN.md §10 asks for 5.
/// Measured over seeds 1-100 (`RANGER_SEEDS=1-100`, 2026-11-30): 2 rounds for
/// 2 seeds, 3 for 85, 4 for 12, 5 for 1 (seed 96, max/mean 3.7 at the start;
/// a node sends only 2 ranges per round, `max_transfers_out`). The last step
/// there: a carve cuts the biggest piece that fits the roomiest node even
/// when a half would fit too (before: 6 rounds for seed 67, which started at
/// 4.1 and now takes 4, and 5 for 2 seeds).
const CONVERGE_WITHIN: usize = 5;

/// Rounds within which a shifted hot spot must be followed (max/mean back at
/// 1.10). DESIGN.md's brief asks for 3: over seeds 1-60 (4 shifts each,
/// max/mean up to 1.40 at the shift), all 240 shifts are followed within 3
/// rounds (192 in one, 43 in two; 2026-11-30). The last misses were a node
/// just above 1.10 by the truth that the planner, through ±5% report noise
/// and smoothing, saw just under it for round after round: a node at the
/// band's edge two rounds in a row is now brought inside
/// (`BalancerMemory::at_edge`).
const FOLLOW_WITHIN: usize = 3;

/// Rounds within which max/mean is back at 1.10 after a single key on a
/// capacity-1 node gets more load than such a node may carry: the key is cut
/// out level by level (a split waits for `split_hot_rounds`), the
/// capacity-2 node makes room, takes it, and its old node fills again. Over
/// seeds 1-100 (2026-11-30): 5 rounds for 35 seeds, 6 for 56, 7 for 9.
/// Asserted at the worst seen, so that a regression shows.
const CARRIED_WITHIN: usize = 7;

/// The share of all requests the shifting hot spot's 1% of the keys gets on top
/// of the Zipf load (spread evenly over its keys): a fixed extra, wherever it
/// lands, so that every shift is the same size of event. 10% is a whole node's
/// fair share arriving on a few neighbouring ranges.
const HOT_SPOT_SHARE: f64 = 0.10;

/// `RANGER_SEED=N` replays one seed, `RANGER_SEEDS=A-B` runs a span of them;
/// by default seeds 1-5 run.
fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("RANGER_SEED") {
        return vec![seed.parse().expect("RANGER_SEED is a number")];
    }
    let span = std::env::var("RANGER_SEEDS").unwrap_or_else(|_| "1-5".into());
    let (first, last) = span.split_once('-').expect("RANGER_SEEDS is A-B");
    (first.parse().expect("a number")..=last.parse().expect("a number")).collect()
}

/// `SIM_TRACE=FIRST-LAST` prints those rounds of every simulation run.
fn trace_rounds() -> Option<(u64, u64)> {
    let value = std::env::var("SIM_TRACE").ok()?;
    let (first, last) = value.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Prints the seed if the test panics, so that the run can be replayed.
struct SeedReporter(&'static str, u64);

impl Drop for SeedReporter {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{} failed with RANGER_SEED={}", self.0, self.1);
        }
    }
}

fn key_of(pos: u64) -> Key {
    if pos == 0 || pos >= KEYS {
        Key::empty()
    } else {
        Key::new(pos.to_be_bytes().to_vec())
    }
}

fn pos_of(key: &Key) -> u64 {
    let bytes: [u8; 8] = key
        .as_bytes()
        .try_into()
        .expect("simulated keys are 8 bytes");
    u64::from_be_bytes(bytes)
}

#[derive(Debug, Clone)]
struct SimRange {
    id: RangeId,
    start: u64,
    end: u64,
    node: usize,
    last_split: Option<Timestamp>,
    last_moved: Option<Timestamp>,
    last_joined: Option<Timestamp>,
    /// Every move of this range or of the ranges it came from: (from, to, round).
    moves: Vec<(usize, usize, u64)>,
}

#[derive(Debug, Clone)]
struct SimNode {
    id: NodeId,
    capacity: f64,
    state: NodeState,
}

/// One round's figures, measured after the round's actions were applied.
#[derive(Debug, Clone, Copy)]
struct RoundStats {
    max_over_mean: f64,
    bytes_moved_share: f64,
    actions: usize,
}

struct Sim {
    rng: StdRng,
    /// Popularity weight of each block before hot spots.
    block_weight: Vec<f64>,
    /// Bytes per key in each block.
    block_key_bytes: Vec<u64>,
    /// A region of keys that gets this extra share of all requests.
    hot_spot: Option<(u64, u64, f64)>,
    /// One key that gets this share of all requests.
    hot_key: Option<(u64, f64)>,
    /// Cumulative request share up to each key (KEYS + 1 entries).
    load_prefix: Vec<f64>,
    bytes_prefix: Vec<u64>,
    ranges: Vec<SimRange>,
    nodes: Vec<SimNode>,
    next_id: u64,
    round: u64,
    config: BalancerConfig,
    memory: BalancerMemory,
    stats: Vec<RoundStats>,
    plans: Vec<Plan>,
    /// Moves that took a range (or a child) back to a node it left within the
    /// cooldown, and back to any node it ever left.
    returns_within_cooldown: usize,
    returns_ever: usize,
}

impl Sim {
    fn new(seed: u64, nodes: usize) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ranks: Vec<u64> = (1..=BLOCKS).collect();
        ranks.shuffle(&mut rng);
        let block_weight: Vec<f64> = ranks.iter().map(|&r| (r as f64).powf(-ZIPF_S)).collect();
        let block_key_bytes: Vec<u64> = (0..BLOCKS)
            .map(|_| rng.random_range(128u64..384) << 10)
            .collect();
        let mut order: Vec<usize> = (0..BLOCKS as usize).collect();
        order.shuffle(&mut rng);
        let ranges = (0..BLOCKS)
            .map(|b| SimRange {
                id: RangeId::new(b + 1).unwrap(),
                start: b * KEYS_PER_BLOCK,
                end: (b + 1) * KEYS_PER_BLOCK,
                node: order[b as usize] % nodes,
                last_split: None,
                last_moved: None,
                last_joined: None,
                moves: Vec::new(),
            })
            .collect();
        let nodes = (0..nodes)
            .map(|i| SimNode {
                id: NodeId::new(format!("n{i:02}")).unwrap(),
                capacity: 1.0,
                state: NodeState::Active,
            })
            .collect();
        let mut sim = Sim {
            rng,
            block_weight,
            block_key_bytes,
            hot_spot: None,
            hot_key: None,
            load_prefix: Vec::new(),
            bytes_prefix: Vec::new(),
            ranges,
            nodes,
            next_id: BLOCKS + 1,
            round: 0,
            config: BalancerConfig::default(),
            memory: BalancerMemory::default(),
            stats: Vec::new(),
            plans: Vec::new(),
            returns_within_cooldown: 0,
            returns_ever: 0,
        };
        sim.rebuild_prefixes();
        sim
    }

    /// Recomputes the cumulative load and bytes per key after the popularity changed.
    fn rebuild_prefixes(&mut self) {
        let mut weights: Vec<f64> = (0..KEYS)
            .map(|k| self.block_weight[(k / KEYS_PER_BLOCK) as usize] / KEYS_PER_BLOCK as f64)
            .collect();
        let base: f64 = weights.iter().sum();
        // Extra shares on top: the rest keeps its proportions.
        let spot = self.hot_spot.map_or(0.0, |(_, _, share)| share);
        let key = self.hot_key.map_or(0.0, |(_, share)| share);
        for w in &mut weights {
            *w *= (1.0 - spot - key) / base;
        }
        if let Some((s, e, share)) = self.hot_spot {
            for w in &mut weights[s as usize..e as usize] {
                *w += share / (e - s) as f64;
            }
        }
        if let Some((k, share)) = self.hot_key {
            weights[k as usize] += share;
        }
        self.load_prefix = Vec::with_capacity(KEYS as usize + 1);
        self.bytes_prefix = Vec::with_capacity(KEYS as usize + 1);
        let (mut l, mut b) = (0.0, 0u64);
        self.load_prefix.push(0.0);
        self.bytes_prefix.push(0);
        for k in 0..KEYS {
            l += weights[k as usize];
            b += self.block_key_bytes[(k / KEYS_PER_BLOCK) as usize];
            self.load_prefix.push(l);
            self.bytes_prefix.push(b);
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.round * ROUND.as_millis() as u64)
    }

    fn true_rps(&self, r: &SimRange) -> f64 {
        TOTAL_RPS * (self.load_prefix[r.end as usize] - self.load_prefix[r.start as usize])
    }

    fn bytes(&self, r: &SimRange) -> u64 {
        self.bytes_prefix[r.end as usize] - self.bytes_prefix[r.start as usize]
    }

    fn total_bytes(&self) -> u64 {
        self.bytes_prefix[KEYS as usize]
    }

    /// The boundary in (start, end) that best halves the range's load: what a
    /// node's load-based split suggestion approximates.
    fn load_split(&self, r: &SimRange) -> Option<u64> {
        let (s, e) = (r.start as usize, r.end as usize);
        if e - s < 2 {
            return None;
        }
        let half = (self.load_prefix[s] + self.load_prefix[e]) / 2.0;
        let p = self.load_prefix[s..=e].partition_point(|&x| x < half) + s;
        let cost = |p: usize| {
            (self.load_prefix[p] - self.load_prefix[s])
                .max(self.load_prefix[e] - self.load_prefix[p])
        };
        [p.saturating_sub(1), p, p + 1]
            .into_iter()
            .filter(|&p| p > s && p < e)
            .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
            .map(|p| p as u64)
    }

    /// Keys at each sixteenth of the range's load, as a node's sampled
    /// quantiles would give them.
    fn load_cuts(&self, r: &SimRange) -> Vec<LoadCut> {
        let (s, e) = (r.start as usize, r.end as usize);
        let (lo, hi) = (self.load_prefix[s], self.load_prefix[e]);
        let mut cuts: Vec<LoadCut> = Vec::new();
        for i in 1..16 {
            let target = lo + (hi - lo) * i as f64 / 16.0;
            let p = self.load_prefix[s..=e].partition_point(|&x| x < target) + s;
            if p > s && p < e && cuts.last().is_none_or(|c| pos_of(&c.key) < p as u64) {
                cuts.push(LoadCut {
                    key: key_of(p as u64),
                    below: (self.load_prefix[p] - lo) / (hi - lo),
                });
            }
        }
        cuts
    }

    fn size_split(&self, r: &SimRange) -> Option<u64> {
        let (s, e) = (r.start as usize, r.end as usize);
        let half = (self.bytes_prefix[s] + self.bytes_prefix[e]) / 2;
        let p = self.bytes_prefix[s..=e].partition_point(|&x| x < half) + s;
        (p > s && p < e).then_some(p as u64)
    }

    fn snapshot(&mut self) -> Snapshot {
        let now = self.now();
        let mut ranges = Vec::with_capacity(self.ranges.len());
        for i in 0..self.ranges.len() {
            let r = &self.ranges[i];
            let noise = 1.0 + self.rng.random_range(-0.05..0.05);
            let rps = self.true_rps(r) * noise;
            let mut snap = RangeSnapshot::new(
                r.id,
                key_of(r.start),
                key_of(r.end),
                vec![self.nodes[r.node].id.clone()],
            );
            snap.load = RangeLoad {
                keys: r.end - r.start,
                bytes: self.bytes(r),
                reads_per_second: rps * 0.8,
                writes_per_second: rps * 0.2,
            };
            snap.split_keys_by_size = self.size_split(r).map(key_of).into_iter().collect();
            snap.split_keys_by_load = self.load_split(r).map(key_of).into_iter().collect();
            snap.load_cuts = self.load_cuts(r);
            snap.last_split = r.last_split;
            snap.last_moved = r.last_moved;
            snap.last_joined = r.last_joined;
            ranges.push(snap);
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeSnapshot {
                id: n.id.clone(),
                capacity: n.capacity,
                state: n.state,
                report_age: Some(Duration::from_secs(2)),
            })
            .collect();
        Snapshot {
            now,
            ranges,
            nodes,
            excluded: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    fn index_of(&self, id: RangeId) -> usize {
        self.ranges
            .iter()
            .position(|r| r.id == id)
            .expect("planned range exists")
    }

    fn node_ix(&self, id: &NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| &n.id == id)
            .expect("planned node exists")
    }

    fn new_id(&mut self) -> RangeId {
        self.next_id += 1;
        RangeId::new(self.next_id).unwrap()
    }

    /// Applies a plan's actions at once, as if every operation succeeded.
    fn apply(&mut self, plan: &Plan) -> u64 {
        let now = self.now();
        let mut bytes_moved = 0;
        for a in &plan.actions {
            match &a.action {
                Action::Split {
                    range,
                    key,
                    left: left_to,
                    right: right_to,
                } => {
                    let i = self.index_of(*range);
                    let at = pos_of(key);
                    let parent = self.ranges[i].clone();
                    assert!(
                        parent.start < at && at < parent.end,
                        "split key inside {parent:?}"
                    );
                    let left = SimRange {
                        id: self.new_id(),
                        end: at,
                        last_split: Some(now),
                        ..parent.clone()
                    };
                    let right_half = SimRange {
                        id: self.new_id(),
                        start: at,
                        last_split: Some(now),
                        ..parent.clone()
                    };
                    let mut halves = [left, right_half];
                    // A half placed on another node moved there with the split.
                    for (half, to) in halves.iter_mut().zip([left_to, right_to]) {
                        let Some(to) = to else { continue };
                        let t = self.node_ix(to);
                        if t != parent.node {
                            bytes_moved += self.bytes(half);
                            self.note_move(half, t);
                            half.last_moved = Some(now);
                        }
                    }
                    self.ranges.splice(i..=i, halves);
                }
                Action::Join { left, right } => {
                    let i = self.index_of(*left);
                    assert_eq!(self.ranges[i + 1].id, *right, "join of neighbours");
                    let (l, r) = (self.ranges[i].clone(), self.ranges[i + 1].clone());
                    assert_eq!(l.node, r.node, "join of ranges on one node");
                    let mut moves = l.moves.clone();
                    moves.extend(r.moves.iter().copied());
                    let joined = SimRange {
                        id: self.new_id(),
                        start: l.start,
                        end: r.end,
                        node: l.node,
                        last_split: l.last_split.max(r.last_split),
                        last_moved: l.last_moved.max(r.last_moved),
                        last_joined: Some(now),
                        moves,
                    };
                    self.ranges.splice(i..=i + 1, [joined]);
                }
                Action::Move { range, from, to } => {
                    let i = self.index_of(*range);
                    let (f, t) = (self.node_ix(from), self.node_ix(to));
                    assert_eq!(self.ranges[i].node, f, "moved from where it is");
                    bytes_moved += self.bytes(&self.ranges[i]);
                    let mut r = self.ranges[i].clone();
                    self.note_move(&mut r, t);
                    r.last_moved = Some(now);
                    self.ranges[i] = r;
                }
            }
        }
        bytes_moved
    }

    /// Moves `r` to node `t`, counting a return to a node it (or a range it
    /// came from) left.
    fn note_move(&mut self, r: &mut SimRange, t: usize) {
        let f = r.node;
        let cooldown_rounds = self.config.move_cooldown.as_secs() / ROUND.as_secs();
        if r.moves.iter().any(|&(a, b, _)| a == t && b == f) {
            self.returns_ever += 1;
        }
        if r.moves
            .iter()
            .any(|&(a, b, at)| a == t && b == f && self.round - at < cooldown_rounds)
        {
            self.returns_within_cooldown += 1;
        }
        r.node = t;
        r.moves.push((f, t, self.round));
    }

    /// True request load per node, per unit of capacity.
    fn node_loads(&self) -> Vec<f64> {
        let mut loads = vec![0.0; self.nodes.len()];
        for r in &self.ranges {
            loads[r.node] += self.true_rps(r);
        }
        loads
    }

    /// Max over mean of true load per unit of capacity, over active nodes.
    fn max_over_mean(&self) -> f64 {
        let loads = self.node_loads();
        let active: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].state == NodeState::Active)
            .collect();
        let total: f64 = active.iter().map(|&n| loads[n]).sum();
        let capacity: f64 = active.iter().map(|&n| self.nodes[n].capacity).sum();
        let max = active
            .iter()
            .map(|&n| loads[n] / self.nodes[n].capacity)
            .fold(0.0, f64::max);
        max / (total / capacity)
    }

    /// Share of the mean per unit of capacity that node `n` carries.
    fn share_of_mean(&self, n: usize) -> f64 {
        let loads = self.node_loads();
        let active: Vec<usize> = (0..self.nodes.len())
            .filter(|&m| self.nodes[m].state == NodeState::Active)
            .collect();
        let total: f64 = active.iter().map(|&m| loads[m]).sum();
        let capacity: f64 = active.iter().map(|&m| self.nodes[m].capacity).sum();
        loads[n] / self.nodes[n].capacity / (total / capacity)
    }

    /// One round: snapshot, plan, apply, measure.
    fn step(&mut self) -> RoundStats {
        let snap = self.snapshot();
        let (plan, memory) = plan(&snap, &self.config, &self.memory);
        self.memory = memory;
        if trace_rounds().is_some_and(|(a, b)| (a..=b).contains(&(self.round + 1))) {
            self.trace(&plan);
        }
        let bytes = self.apply(&plan);
        let stats = RoundStats {
            max_over_mean: self.max_over_mean(),
            bytes_moved_share: bytes as f64 / self.total_bytes() as f64,
            actions: plan.actions.len(),
        };
        self.round += 1;
        self.stats.push(stats);
        self.plans.push(plan);
        stats
    }

    /// Prints a round as the simulation sees it (true load shares) and as the
    /// planner saw it, with what it planned and skipped: what one reads to find
    /// out why a seed converges slowly.
    fn trace(&self, plan: &Plan) {
        let loads = self.node_loads();
        let fair = TOTAL_RPS / self.nodes.len() as f64;
        let shares: Vec<String> = loads.iter().map(|l| format!("{:.2}", l / fair)).collect();
        eprintln!("round {}: true shares {shares:?}", self.round + 1);
        let seen: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| format!("{:.2}->{:.2}", n.share_of_mean, n.planned_share_of_mean))
            .collect();
        eprintln!("  planner's shares (now->planned) {seen:?}");
        for a in &plan.actions {
            let what = match &a.action {
                Action::Split {
                    range, left, right, ..
                } => {
                    let r = &self.ranges[self.index_of(*range)];
                    format!(
                        "split {range} ({:.2}) on n{:02}, halves to {left:?} / {right:?}",
                        self.true_rps(r) / fair,
                        r.node
                    )
                }
                Action::Move { range, from, to } => {
                    let r = &self.ranges[self.index_of(*range)];
                    format!(
                        "move {range} ({:.2}) {from} -> {to}",
                        self.true_rps(r) / fair
                    )
                }
                Action::Join { left, right } => format!("join {left} + {right}"),
            };
            eprintln!("  {:?}: {what}", a.reason);
        }
        eprintln!("  skipped {:?}", plan.skip_counts);
    }

    /// Gives key `key` `share` of all requests from now on; returns max/mean
    /// at that moment and the index of the next round's stats.
    fn heat_key(&mut self, key: u64, share: f64) -> (f64, usize) {
        self.hot_key = Some((key, share));
        self.rebuild_prefixes();
        (self.max_over_mean(), self.stats.len())
    }

    /// The range that holds `key`.
    fn holder_of(&self, key: u64) -> &SimRange {
        self.ranges
            .iter()
            .find(|r| r.start <= key && key < r.end)
            .expect("the ranges cover the keyspace")
    }

    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.step();
        }
    }

    fn print_first_rounds(&self, what: &str, seed: u64, initial: f64) {
        println!("{what}, seed {seed}: initial max/mean {initial:.3}");
        for (i, s) in self.stats.iter().take(10).enumerate() {
            println!(
                "  round {:>2}: max/mean {:.3}  bytes moved {:.2}%  actions {}",
                i + 1,
                s.max_over_mean,
                100.0 * s.bytes_moved_share,
                s.actions
            );
        }
    }
}

#[test]
fn zipf_load_reaches_max_over_mean_1_10_and_stays_there_without_a_to_b_to_a() {
    for seed in seeds() {
        let _report = SeedReporter("zipf balance", seed);
        let mut sim = Sim::new(seed, 10);
        let initial = sim.max_over_mean();
        assert!(initial > 1.10, "the start must need balancing: {initial}");
        sim.run(100);
        sim.print_first_rounds("Zipf(1.1), 10 nodes, 1,000 ranges", seed, initial);
        let mut reasons: BTreeMap<Reason, usize> = BTreeMap::new();
        for p in &sim.plans {
            for a in &p.actions {
                *reasons.entry(a.reason).or_default() += 1;
            }
        }
        println!(
            "  100 rounds: {} ranges now, actions by reason {reasons:?}, returns to a node left \
             (within cooldown / ever): {} / {}",
            sim.ranges.len(),
            sim.returns_within_cooldown,
            sim.returns_ever
        );
        let converged = sim
            .stats
            .iter()
            .position(|s| s.max_over_mean <= 1.10)
            .map(|i| i + 1);
        println!("  max/mean <= 1.10 first after round {converged:?}");
        let converged = converged.expect("max/mean never reached 1.10");
        assert!(
            converged <= CONVERGE_WITHIN,
            "max/mean reached 1.10 only after round {converged}"
        );
        for (i, s) in sim.stats.iter().enumerate().skip(CONVERGE_WITHIN) {
            assert!(
                s.max_over_mean <= 1.10,
                "round {}: max/mean {:.3} > 1.10",
                i + 1,
                s.max_over_mean
            );
        }
        for (i, s) in sim.stats.iter().enumerate() {
            assert!(
                s.bytes_moved_share <= 0.05,
                "round {}: moved {:.2}% of the bytes",
                i + 1,
                100.0 * s.bytes_moved_share
            );
        }
        assert_eq!(sim.returns_within_cooldown, 0, "A→B→A within the cooldown");
        assert_eq!(sim.returns_ever, 0, "A→B→A at all in a steady load");
    }
}

#[test]
fn a_hot_spot_that_shifts_every_twenty_rounds_is_followed() {
    for seed in seeds() {
        let _report = SeedReporter("shifting hot spot", seed);
        let mut sim = Sim::new(seed, 10);
        sim.run(20);
        let mut disruptive = 0;
        for shift in 1..=4 {
            // 1% of the keys, somewhere new, get HOT_SPOT_SHARE of all requests.
            let width = KEYS / 100;
            let start = sim.rng.random_range(0..KEYS - width);
            sim.hot_spot = Some((start, start + width, HOT_SPOT_SHARE));
            sim.rebuild_prefixes();
            let before = sim.max_over_mean();
            if before > 1.10 {
                disruptive += 1;
            }
            let mut followed = None;
            for round in 1..=20 {
                let s = sim.step();
                if followed.is_none() && s.max_over_mean <= 1.10 {
                    followed = Some(round);
                }
            }
            println!(
                "shift {shift} (seed {seed}): max/mean {before:.3} at the shift, <= 1.10 after round {followed:?}"
            );
            let followed = followed.expect("the hot spot was never followed");
            assert!(
                followed <= FOLLOW_WITHIN,
                "shift {shift}: followed only after {followed} rounds"
            );
            let tail = &sim.stats[sim.stats.len() - (20 - FOLLOW_WITHIN)..];
            assert!(tail.iter().all(|s| s.max_over_mean <= 1.10), "{tail:?}");
        }
        assert!(
            disruptive > 0,
            "no shift unbalanced the cluster: the test would prove nothing"
        );
        assert_eq!(sim.returns_within_cooldown, 0, "A→B→A within the cooldown");
    }
}

#[test]
fn a_single_hot_key_s_range_is_split_down_to_that_key_and_the_rest_moves_around_it() {
    for seed in seeds() {
        let _report = SeedReporter("hot key", seed);
        let mut sim = Sim::new(seed, 10);
        sim.run(20);
        let hot = sim.rng.random_range(1..KEYS - 1);
        // A key alone carries 6% of all requests: 0.6 of a node's fair share.
        let (before, first) = sim.heat_key(hot, 0.06);
        sim.run(30);
        let holder = sim.holder_of(hot);
        // Moved on its own, or by the split that cut it (sent to another
        // node's room): either way a move of the key's span since it got hot.
        let moved_by_split = holder
            .moves
            .iter()
            .any(|&(_, _, round)| round >= first as u64);
        let moved = moved_by_split
            || sim.plans[first..].iter().any(|p| {
                p.actions
                    .iter()
                    .any(|a| matches!(&a.action, Action::Move { range, .. } if *range == holder.id))
            });
        let last = sim.stats.last().unwrap().max_over_mean;
        println!(
            "hot key (seed {seed}): max/mean {before:.3} when it got hot; after 30 rounds its \
             range is [{}, {}), moved: {moved}, max/mean {last:.3}",
            holder.start, holder.end
        );
        assert_eq!(
            (holder.start, holder.end),
            (hot, hot + 1),
            "the hot key's range is that key alone"
        );
        // No node has room for 0.6 of a fair share: the key stays (or moves once
        // if a node had room) and the rest of its node's load moves around it.
        assert!(last <= 1.10, "max/mean {last:.3}");
    }
}

#[test]
fn a_hot_key_too_big_for_its_node_is_split_down_to_and_moved_to_a_node_that_can_carry_it() {
    for seed in seeds() {
        let _report = SeedReporter("hot key, bigger node", seed);
        let mut sim = Sim::new(seed, 10);
        sim.nodes[0].capacity = 2.0;
        sim.run(20);
        // A key on a capacity-1 node gets 12% of all requests: 1.32 of a
        // capacity-1 node's fair share (11 units of capacity), more than such
        // a node may carry within the band whatever else it sheds, and 0.66
        // of the capacity-2 node's.
        let hot = loop {
            let k = sim.rng.random_range(1..KEYS - 1);
            let r = sim.ranges.iter().find(|r| r.start <= k && k < r.end);
            if r.is_some_and(|r| r.node != 0) {
                break k;
            }
        };
        let (before, first) = sim.heat_key(hot, 0.12);
        sim.run(40);
        let holder = sim.holder_of(hot);
        let back_in_band = sim.stats[first..]
            .iter()
            .position(|s| s.max_over_mean <= 1.10)
            .map(|i| i + 1);
        let last = sim.stats.last().unwrap().max_over_mean;
        println!(
            "hot key for the bigger node (seed {seed}): max/mean {before:.3} when it got hot; \
             after 40 rounds its range is [{}, {}) on node {}, max/mean <= 1.10 after round \
             {back_in_band:?}, {last:.3} at the end",
            holder.start, holder.end, holder.node
        );
        assert_eq!(
            (holder.start, holder.end),
            (hot, hot + 1),
            "the hot key's range is that key alone"
        );
        assert_eq!(holder.node, 0, "the key went to the node that can carry it");
        let back_in_band = back_in_band.expect("max/mean never back at 1.10");
        assert!(
            back_in_band <= CARRIED_WITHIN,
            "max/mean back at 1.10 only after round {back_in_band}"
        );
        assert!(last <= 1.10, "max/mean {last:.3}");
        assert_eq!(sim.returns_within_cooldown, 0, "A→B→A within the cooldown");
    }
}

#[test]
fn a_new_node_reaches_ninety_percent_of_the_mean_within_five_rounds() {
    for seed in seeds() {
        let _report = SeedReporter("new node", seed);
        let mut sim = Sim::new(seed, 10);
        sim.run(20);
        sim.nodes.push(SimNode {
            id: NodeId::new("new").unwrap(),
            capacity: 1.0,
            state: NodeState::Active,
        });
        let new = sim.nodes.len() - 1;
        let mut shares = Vec::new();
        for _ in 0..5 {
            sim.step();
            shares.push(sim.share_of_mean(new));
        }
        println!("new node (seed {seed}): share of mean per round {shares:.3?}");
        assert!(
            shares[4] >= 0.9,
            "after 5 rounds the new node carries {:.3} of the mean",
            shares[4]
        );
    }
}

#[test]
fn a_draining_node_is_emptied() {
    for seed in seeds() {
        let _report = SeedReporter("drain", seed);
        let mut sim = Sim::new(seed, 10);
        sim.run(10);
        sim.nodes[3].state = NodeState::Draining;
        let mut rounds = 0;
        while sim.ranges.iter().any(|r| r.node == 3) {
            assert!(rounds < 80, "node still holds ranges after {rounds} rounds");
            sim.step();
            rounds += 1;
        }
        println!("drain (seed {seed}): empty after {rounds} rounds");
        assert!(sim.stats.iter().all(|s| s.bytes_moved_share <= 0.05));
    }
}

#[test]
fn nodes_of_capacity_two_carry_twice_the_load() {
    for seed in seeds() {
        let _report = SeedReporter("capacity", seed);
        let mut sim = Sim::new(seed, 10);
        sim.nodes[0].capacity = 2.0;
        sim.nodes[1].capacity = 2.0;
        sim.run(20);
        let loads = sim.node_loads();
        let small: f64 = loads[2..].iter().sum::<f64>() / 8.0;
        for big in [0, 1] {
            let ratio = loads[big] / small;
            println!("capacity 2 (seed {seed}): node {big} carries {ratio:.2}× a capacity-1 node");
            // Twice, within what the tolerance band lets both sides drift: a
            // capacity-2 node may rest at 0.9 of the mean per unit while the
            // others rest a little above it (seed 12: 1.79).
            assert!(
                (1.75..=2.25).contains(&ratio),
                "node {big} carries {ratio:.2}×"
            );
        }
        // Per unit of capacity every node is within the band (the reports'
        // ±5% noise aside): capacity is what the balancer divides by.
        for n in 0..sim.nodes.len() {
            let share = sim.share_of_mean(n);
            assert!(
                (0.88..=1.12).contains(&share),
                "node {n} carries {share:.3} of the mean per unit of capacity"
            );
        }
        let last = sim.stats.last().unwrap().max_over_mean;
        assert!(last <= 1.10, "max/mean per capacity {last:.3}");
    }
}
