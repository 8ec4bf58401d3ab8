//! Controller scale benchmark: how the orchestrator and the keyspace store behave
//! with many ranges on many (simulated) nodes. See DESIGN.md §10 for the targets:
//! a reconcile pass over 100k ranges < 100 ms, restart to serving < 2 s at 100k,
//! 1,000,000 ranges and 1,000 nodes in one controller.
//!
//! For each keyspace size N it measures:
//!
//! 1. **build**: N ranges, each with one Active placement on node `n{i % nodes}`,
//!    built from records with `Keyspace::from_records`;
//! 2. **memory**: process RSS (`VmRSS`) after the keyspace is built, and again once
//!    the engine's roster knows every node's report, in MB and bytes per range;
//!    and the time to take in a probe round in which nothing changed (the
//!    controller spends it every `probe_interval`): each node's answer is
//!    encoded as the wire carries it beforehand, then decoded and checked as
//!    the runtime's probe tasks do (`NodeReport::from_wire`) and fed to the
//!    engine, the two parts timed apart (they run on different tasks);
//! 3. **steady state**: `Engine::step` over a keyspace where every node reported
//!    its ranges Active (no effects expected), two ways: a *full pass* that looks
//!    at every range (what start-up and node-level events trigger), and the
//!    *incremental step* the controller normally runs (what changed, plus a chunk
//!    of the background sweep); min / median / max of several passes each;
//! 4. **1% work**: one pass after 1% of the ranges are reported lost (NotFound,
//!    so they get placed again), and one pass after 1% of the nodes start
//!    draining (so 1% of the ranges are not steady), each followed by one more pass;
//! 5. **restart**: every record saved to a `RedbPersister` in one change set, then
//!    what a restarted controller does: open the file, `load()`,
//!    `Keyspace::from_records`, `Engine::new`, its first `step` and the next
//!    (before any node has answered a probe), then every node's first answer
//!    in ten waves with a step after each (until every range is confirmed).
//!
//! Nodes are simulated: probe answers are fed straight into the engine, nothing
//! touches the network. The engine never reads the clock, so every step is given
//! an instant close to the probes' (no node ever looks lost).
//!
//! Run (release build, figures are meaningless in debug):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/ranger/target
//! cargo run --release -p ranger-controller --example bench_reconcile                 # 10k and 100k
//! cargo run --release -p ranger-controller --example bench_reconcile -- --ranges 1000000
//! cargo run --release -p ranger-controller --example bench_reconcile -- --ranges 10000,100000,1000000 --passes 9
//! ```
//!
//! Each size runs in a child process of its own, so that its RSS is not inflated
//! (or hidden) by memory the allocator kept from a previous size. The summary
//! table at the end has one line per size.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use clap::Parser;
use prost::Message;
use ranger_controller::config::OrchestratorConfig;
use ranger_controller::keyspace::{ChangeSet, Keyspace, RECORD_VERSION};
use ranger_controller::orchestrator::{Effect, Engine, Persisted};
use ranger_controller::persist::{Persister, RedbPersister};
use ranger_controller::testing::synthetic::settled_keyspace;
use ranger_controller::transport::NodeReport;
use ranger_proto::pb::ranger as pb;
use ranger_proto::{LoadInfo, NodeId, RangeInfo, RemoteState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Marks the line a child prints for its parent's summary table.
const ROW_PREFIX: &str = "@row ";

#[derive(Parser, Debug)]
#[command(about = "Measures the orchestrator's reconcile pass, memory and restart at scale")]
struct Args {
    /// Keyspace sizes to measure, comma-separated (e.g. 10000,100000,1000000).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    ranges: Vec<usize>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// Steady-state passes to time per size.
    #[arg(long, default_value_t = 7)]
    passes: usize,
    /// Internal: measure the single size given, in this process, and print the
    /// summary row for the parent.
    #[arg(long, hide = true)]
    child: bool,
}

/// One size's figures: what the summary table shows.
#[derive(Debug, Serialize, Deserialize)]
struct Row {
    ranges: usize,
    build_ms: f64,
    rss_keyspace_mb: f64,
    rss_engine_mb: f64,
    bytes_per_range: f64,
    step_min_ms: f64,
    step_median_ms: f64,
    step_max_ms: f64,
    incremental_median_ms: f64,
    /// The slower of the two passes after 1% of the ranges were lost.
    lost_pass_ms: f64,
    /// The slower of the two passes after 1% of the nodes started draining.
    drain_pass_ms: f64,
    save_ms: f64,
    /// Decoding and taking in a probe round in which nothing changed.
    probe_round_ms: f64,
    /// The engine's part of that round (the rest is decoding).
    probe_round_engine_ms: f64,
    restart_ms: f64,
    first_step_ms: f64,
    /// A step after the first, still before any node answered.
    second_step_ms: f64,
    /// Ingesting every node's first answer, in waves, and a step after each.
    first_answers_ms: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.nodes > 0 && args.passes > 0,
        "--nodes and --passes must be > 0"
    );
    if args.child {
        let [ranges] = args.ranges[..] else {
            anyhow::bail!("--child measures exactly one size");
        };
        let row = measure(ranges, args.nodes, args.passes).await?;
        println!("{ROW_PREFIX}{}", serde_json::to_string(&row)?);
        return Ok(());
    }
    if cfg!(debug_assertions) {
        println!("WARNING: debug build; use --release for figures\n");
    }
    let mut rows = Vec::new();
    for &ranges in &args.ranges {
        rows.push(run_child(ranges, &args)?);
    }
    print_table(&rows, args.nodes);
    Ok(())
}

/// Measures one size in a fresh process, echoing its report and returning its row.
fn run_child(ranges: usize, args: &Args) -> Result<Row> {
    let exe = std::env::current_exe().context("locating this program")?;
    let mut child = Command::new(exe)
        .args(["--child", "--ranges", &ranges.to_string()])
        .args(["--nodes", &args.nodes.to_string()])
        .args(["--passes", &args.passes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the measuring process")?;
    let stdout = child.stdout.take().context("child has no stdout")?;
    let mut row = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match line.strip_prefix(ROW_PREFIX) {
            Some(json) => row = Some(serde_json::from_str(json)?),
            None => println!("{line}"),
        }
    }
    let status = child.wait()?;
    ensure!(
        status.success(),
        "measuring {ranges} ranges failed: {status}"
    );
    row.context("the measuring process printed no summary row")
}

/// Everything measured for `n` ranges on `nodes` nodes.
async fn measure(n: usize, nodes: usize, passes: usize) -> Result<Row> {
    println!("== {n} ranges, {nodes} nodes ==");
    let rss_start = rss_bytes()?;
    let config = OrchestratorConfig::default();
    let t0 = Instant::now();

    // 1. Build the keyspace straight from records, as a load would.
    let started = Instant::now();
    let ChangeSet {
        counters,
        upserts: records,
    } = settled_keyspace(n as u64, nodes as u64, RECORD_VERSION)?;
    let made = started.elapsed();
    let keyspace = Keyspace::from_records(counters, records)?;
    let build = started.elapsed();
    ensure!(keyspace.current_len() == n, "expected {n} current ranges");
    let rss_keyspace = rss_bytes()?;
    println!(
        "build            {} (records {}, from_records {})",
        ms(build),
        ms(made),
        ms(build - made)
    );
    println!(
        "rss keyspace     {:.1} MB ({:.0} B/range over the start)",
        mb(rss_keyspace),
        per_range(rss_keyspace, rss_start, n)
    );

    // 2. An engine whose nodes all reported their ranges Active: the steady state.
    let mut engine = Engine::new(keyspace, config.clone(), t0);
    // The new term's save, as the runtime does first.
    run_step(&mut engine, t0);
    let ingest = register_and_probe(&mut engine, nodes, t0)?;
    let rss_engine = rss_bytes()?;
    println!(
        "probe ingest     {} ({nodes} probes; decode {}, engine {})",
        ms(ingest.total()),
        ms(ingest.decode),
        ms(ingest.engine)
    );
    // Every probe round after that: each node lists the same ranges again.
    // The controller probes every node each `probe_interval` (500 ms by
    // default), so this is CPU it spends that often.
    let round = answer_all(&mut engine, nodes, t0)?;
    println!(
        "probe round      {} (every node answers again, nothing changed; decode {}, engine {})",
        ms(round.total()),
        ms(round.decode),
        ms(round.engine)
    );
    println!(
        "rss engine       {:.1} MB ({:.0} B/range with the roster's views)",
        mb(rss_engine),
        per_range(rss_engine, rss_start, n)
    );

    // 3. Steady-state passes: nothing to do, so no effects. Full passes first,
    //    then the incremental steps the controller runs between events.
    let mut times = Vec::with_capacity(passes);
    let mut incremental = Vec::with_capacity(passes);
    for pass in 0..passes {
        let now = t0 + Duration::from_millis(10 + pass as u64);
        let ((effects, _), took) = timed(|| run_step(&mut engine, now));
        ensure!(
            effects.is_empty(),
            "steady incremental step produced effects"
        );
        incremental.push(took);
        engine.request_full_sweep();
        let ((effects, _), took) = timed(|| run_step(&mut engine, now));
        ensure!(
            effects.is_empty(),
            "steady pass produced {} effects: {:?}",
            effects.len(),
            effects.first()
        );
        times.push(took);
    }
    times.sort();
    let (min, median, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
    println!(
        "full pass        min {} / median {} / max {} over {passes} passes",
        ms(min),
        ms(median),
        ms(max)
    );
    incremental.sort();
    let incremental_median = incremental[incremental.len() / 2];
    println!("incremental step median {}", ms(incremental_median));

    // 5a. Save every record in one change set (before the 1% scenario changes them).
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keyspace.redb");
    let full = ChangeSet {
        counters: engine.keyspace().counters(),
        upserts: engine.keyspace().to_records(),
    };
    let persister = RedbPersister::open(&path)?;
    let started = Instant::now();
    persister.save(&full).await?;
    let save = started.elapsed();
    drop((persister, full));
    println!("save all records {}", ms(save));

    // 4a. 1% of the ranges lost: every 100th node stops listing 1 range in 10.
    let lost_at = t0 + Duration::from_millis(100);
    let lossy = |node: usize| node.is_multiple_of(100);
    let mut lost = 0;
    for (node, mut ranges) in node_reports(engine.keyspace(), nodes) {
        if lossy(node) {
            let before = ranges.len();
            ranges.retain(|r| !r.meta.id().get().is_multiple_of(10));
            lost += before - ranges.len();
            engine.on_probe(&node_id(node)?, lost_at, Ok(NodeReport::of(ranges)));
        }
    }
    let (lost1, lost2) = two_passes(&mut engine, lost_at);
    println!(
        "step 1% lost     {} then {} ({lost} ranges lost; {} then {})",
        ms(lost1.took),
        ms(lost2.took),
        lost1.work(),
        lost2.work()
    );
    drop(engine);

    // 5b. Restart: open the store, load, validate, resume, first steps, first answers.
    let started = Instant::now();
    let persister = RedbPersister::open(&path)?;
    let (counters, records) = persister.load().await?.context("store is empty")?;
    let loaded = started.elapsed();
    let keyspace = Keyspace::from_records(counters, records)?;
    let validated = started.elapsed();
    let mut engine = Engine::new(keyspace, config, t0);
    let restart = started.elapsed();
    for i in 0..nodes {
        engine.node_registered(node_id(i)?, format!("sim://n{i}"), t0);
    }
    // The new term's save, as the runtime does first.
    run_step(&mut engine, t0);
    let ((effects, _), first_step) = timed(|| run_step(&mut engine, t0));
    let ((more, _), second_step) = timed(|| run_step(&mut engine, t0));
    println!(
        "restart          {} (open+load {}, from_records {}, Engine::new {})",
        ms(restart),
        ms(loaded),
        ms(validated - loaded),
        ms(restart - validated)
    );
    println!(
        "first step       {} (before any probe answered; {} effects)",
        ms(first_step),
        effects.len()
    );
    println!(
        "next step        {} (still before any probe answered; {} effects)",
        ms(second_step),
        more.len()
    );
    // The nodes' first answers, in ten waves with a step after each, as they
    // reach a restarted controller over its first probe round.
    let reports = wire_reports(engine.keyspace(), nodes)?;
    let mut waves = Vec::new();
    let mut answered_effects = 0;
    for wave in reports.chunks(nodes.div_ceil(10)) {
        let took = answer_from_wire(&mut engine, wave, t0)?;
        let ((effects, _), step) = timed(|| run_step(&mut engine, t0));
        answered_effects += effects.len();
        waves.push(took.total() + step);
    }
    let answers: Duration = waves.iter().sum();
    println!(
        "first answers    {} (every node's first answer, in {} waves each followed by a step; slowest wave {}; {} effects)",
        ms(answers),
        waves.len(),
        ms(waves.iter().max().copied().unwrap_or_default()),
        answered_effects
    );

    // 4b. 1% of the nodes draining: their ranges are no longer steady.
    for (node, ranges) in node_reports(engine.keyspace(), nodes) {
        engine.on_probe(&node_id(node)?, t0, Ok(NodeReport::of(ranges)));
    }
    let drained: Vec<NodeId> = (0..nodes)
        .filter(|i| i.is_multiple_of(100))
        .map(node_id)
        .collect::<Result<_>>()?;
    for node in &drained {
        engine.drain(node, true)?;
    }
    let (drain1, drain2) = two_passes(&mut engine, t0 + Duration::from_millis(200));
    println!(
        "step 1% drain    {} then {} ({} nodes draining; {} then {})",
        ms(drain1.took),
        ms(drain2.took),
        drained.len(),
        drain1.work(),
        drain2.work()
    );
    println!(
        "peak rss         {:.1} MB\n",
        mb(status_kb("VmHWM")? * 1024)
    );

    Ok(Row {
        ranges: n,
        build_ms: millis(build),
        rss_keyspace_mb: mb(rss_keyspace),
        rss_engine_mb: mb(rss_engine),
        bytes_per_range: per_range(rss_engine, rss_start, n),
        step_min_ms: millis(min),
        step_median_ms: millis(median),
        step_max_ms: millis(max),
        incremental_median_ms: millis(incremental_median),
        lost_pass_ms: millis(lost1.took.max(lost2.took)),
        drain_pass_ms: millis(drain1.took.max(drain2.took)),
        save_ms: millis(save),
        probe_round_ms: millis(round.total()),
        probe_round_engine_ms: millis(round.engine),
        restart_ms: millis(restart),
        first_step_ms: millis(first_step),
        second_step_ms: millis(second_step),
        first_answers_ms: millis(answers),
    })
}

fn node_id(i: usize) -> Result<NodeId> {
    Ok(NodeId::new(format!("n{i}"))?)
}

/// What each node would answer to a probe: its live placements, reported Active.
fn node_reports(keyspace: &Keyspace, nodes: usize) -> HashMap<usize, Vec<RangeInfo>> {
    let mut reports: HashMap<usize, Vec<RangeInfo>> = (0..nodes).map(|i| (i, vec![])).collect();
    for range in keyspace.current_ranges() {
        for p in range.placements().iter().filter(|p| p.is_live()) {
            let Some(node) = p
                .node()
                .as_str()
                .strip_prefix('n')
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            reports.entry(node).or_default().push(RangeInfo {
                meta: range.meta().clone(),
                state: RemoteState::Active,
                load: LoadInfo::default(),
            });
        }
    }
    reports
}

/// Registers every node and feeds it one successful probe; returns the time the
/// engine took to ingest the probes (building the reports is not counted).
fn register_and_probe(engine: &mut Engine, nodes: usize, now: Instant) -> Result<RoundTime> {
    for i in 0..nodes {
        engine.node_registered(node_id(i)?, format!("sim://n{i}"), now);
    }
    answer_all(engine, nodes, now)
}

/// Each node's answer to a probe as the wire carries it: an encoded
/// `InfoResponse` listing its live placements, Active. Encoding is not timed.
/// Held as `Bytes`, the buffer type tonic decodes from, so that fields
/// decoded as `Bytes` slice it as they do in the runtime.
fn wire_reports(keyspace: &Keyspace, nodes: usize) -> Result<Vec<(NodeId, Bytes)>> {
    let mut reports: Vec<_> = node_reports(keyspace, nodes).into_iter().collect();
    reports.sort_unstable_by_key(|(node, _)| *node);
    reports
        .into_iter()
        .map(|(node, ranges)| {
            let response = pb::InfoResponse {
                ranges: ranges.iter().map(pb::RangeInfo::from).collect(),
                want_drain: false,
                capacity: 1.0,
            };
            Ok((node_id(node)?, Bytes::from(response.encode_to_vec())))
        })
        .collect()
}

/// The time a probe round took: decoding the answers (the runtime's probe
/// tasks do that, `NodeReport::from_wire`) and the engine taking them in.
#[derive(Debug, Default, Clone, Copy)]
struct RoundTime {
    decode: Duration,
    engine: Duration,
}

impl RoundTime {
    fn total(&self) -> Duration {
        self.decode + self.engine
    }
}

impl std::ops::AddAssign for RoundTime {
    fn add_assign(&mut self, other: Self) {
        self.decode += other.decode;
        self.engine += other.engine;
    }
}

/// Decodes each answer as the runtime does and feeds it to the engine, timing both.
fn answer_from_wire(
    engine: &mut Engine,
    reports: &[(NodeId, Bytes)],
    sent_at: Instant,
) -> Result<RoundTime> {
    let mut took = RoundTime::default();
    for (node, bytes) in reports {
        let started = Instant::now();
        let response = pb::InfoResponse::decode(bytes.clone())?;
        let answer = NodeReport::from_wire(response);
        ensure!(answer.is_ok(), "a report failed to decode: {answer:?}");
        let decoded = Instant::now();
        engine.on_probe(node, sent_at, answer);
        took.engine += decoded.elapsed();
        took.decode += decoded - started;
    }
    Ok(took)
}

/// One probe round: every node answers with its live placements.
fn answer_all(engine: &mut Engine, nodes: usize, sent_at: Instant) -> Result<RoundTime> {
    let reports = wire_reports(engine.keyspace(), nodes)?;
    answer_from_wire(engine, &reports, sent_at)
}

/// One engine step as the runtime runs it, every save succeeding at once (its
/// records are built inside the step, so they are timed with it). Probes are
/// left out: the benchmark answers for the nodes itself. Returns the other
/// effects, with the commands the save released, and how many range records
/// the save held.
fn run_step(engine: &mut Engine, now: Instant) -> (Vec<Effect>, usize) {
    let mut out = Vec::new();
    let mut changed = 0;
    for effect in engine.step(now) {
        match effect {
            Effect::Persist(changes) => {
                changed += changes.upserts.len();
                out.extend(engine.persisted(Persisted::Saved));
            }
            Effect::Probe(_) => {}
            other => out.push(other),
        }
    }
    (out, changed)
}

/// One timed pass that has work to do.
#[derive(Debug)]
struct Pass {
    took: Duration,
    sends: usize,
    /// Range records the pass changed (what the runtime would persist).
    changed: usize,
}

impl Pass {
    fn work(&self) -> String {
        format!("{} sends/{} records changed", self.sends, self.changed)
    }
}

/// Two passes in a row (the second sees the first's placements in flight).
fn two_passes(engine: &mut Engine, now: Instant) -> (Pass, Pass) {
    let mut pass = |now| {
        let ((effects, changed), took) = timed(|| run_step(engine, now));
        let sends = effects
            .iter()
            .filter(|e| matches!(e, Effect::Send(_)))
            .count();
        Pass {
            took,
            sends,
            changed,
        }
    };
    let first = pass(now);
    let second = pass(now + Duration::from_millis(1));
    (first, second)
}

fn print_table(rows: &[Row], nodes: usize) {
    println!(
        "summary ({nodes} nodes; times in ms, RSS in MB; B/range: engine RSS over the start / N; \
         1% columns: slower of two passes)"
    );
    println!(
        "{:>9} {:>8} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} {:>7} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ranges",
        "build",
        "rss ks",
        "rss eng",
        "B/range",
        "full min",
        "med",
        "max",
        "incr",
        "1% lost",
        "1% drain",
        "round",
        "engine",
        "save",
        "restart",
        "1st step",
        "2nd step",
        "answers"
    );
    for r in rows {
        println!(
            "{:>9} {:>8.1} {:>7.1} {:>7.1} {:>7.0} | {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>8.2} {:>8.2} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            r.ranges,
            r.build_ms,
            r.rss_keyspace_mb,
            r.rss_engine_mb,
            r.bytes_per_range,
            r.step_min_ms,
            r.step_median_ms,
            r.step_max_ms,
            r.incremental_median_ms,
            r.lost_pass_ms,
            r.drain_pass_ms,
            r.probe_round_ms,
            r.probe_round_engine_ms,
            r.save_ms,
            r.restart_ms,
            r.first_step_ms,
            r.second_step_ms,
            r.first_answers_ms
        );
    }
    println!(
        "round: a probe round decoded and taken in (engine: its part), due every probe_interval (500 ms)\ntargets (DESIGN.md §10): a reconcile pass over 100k ranges < 100 ms; restart < 2000 ms at 100k"
    );
}

// ---- small helpers ----

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

/// A field of /proc/self/status, in kB (e.g. `VmRSS`, `VmHWM`).
fn status_kb(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb = line.trim().trim_end_matches("kB").trim();
    Ok(kb.parse()?)
}

fn rss_bytes() -> Result<u64> {
    Ok(status_kb("VmRSS")? * 1024)
}

fn per_range(now: u64, start: u64, n: usize) -> f64 {
    now.saturating_sub(start) as f64 / n as f64
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", millis(d))
}
