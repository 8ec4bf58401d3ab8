//! How long a controller restart takes from the embedded store (redb), with
//! records in schema version 1 and version 2 loaded in the same run, so that
//! their ratio is not drowned by the machine's noise.
//!
//! For each size N: N ranges tiling the keyspace, range `i` with one steady
//! Active placement (activate sent, served) on node `n{i % nodes}`, are saved to
//! two redb files, one with every record in version 1 (as an older build wrote
//! it), one in version 2 (what this build writes). Then, `--runs` times and
//! alternating the two files, what a restarted controller does: open the file,
//! `load()` (read and decode every record), `Keyspace::from_records` (full
//! validation) and `Engine::new`. Prints every run, then min / median / max of
//! each phase per version and the ratio of the medians (v1 / v2).
//!
//! Run (release build, figures are meaningless in debug):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/ranger/target
//! cargo run --release -p ranger-controller --example bench_restart
//! cargo run --release -p ranger-controller --example bench_restart -- --ranges 1000000 --runs 5
//! ```
//!
//! Targets (issue 13): restart to serving from redb < 0.5 s at 100k, < 5 s at 1M.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use ranger_controller::config::OrchestratorConfig;
use ranger_controller::keyspace::Keyspace;
use ranger_controller::orchestrator::Engine;
use ranger_controller::persist::{Persister, RedbPersister};
use ranger_controller::testing::synthetic::settled_keyspace;

#[derive(Parser, Debug)]
#[command(about = "Measures a controller restart from redb, record versions 1 and 2")]
struct Args {
    /// Keyspace sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000])]
    ranges: Vec<u64>,
    /// Restarts to time per version and size.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Simulated nodes the placements are spread over.
    #[arg(long, default_value_t = 1_000)]
    nodes: u64,
}

/// One restart's phases.
#[derive(Debug, Clone, Copy)]
struct Restart {
    /// Opening the file, reading and decoding every record.
    load: Duration,
    /// `Keyspace::from_records`.
    validate: Duration,
    /// `Engine::new`.
    engine: Duration,
}

impl Restart {
    fn total(&self) -> Duration {
        self.load + self.validate + self.engine
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.runs > 0 && args.nodes > 0 && args.ranges.iter().all(|&n| n > 0),
        "--ranges, --runs and --nodes must be > 0"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: debug build; use --release for figures\n");
    }
    let mut table = Vec::new();
    for &n in &args.ranges {
        table.push(measure(n, &args).await?);
    }
    println!("min / median / max over {} runs, ms:", args.runs);
    println!("| ranges | version | store MB | load | from_records | Engine::new | restart |");
    println!("|---|---|---|---|---|---|---|");
    for line in table.iter().flatten() {
        println!("{line}");
    }
    println!("targets (issue 13): restart from redb < 500 ms at 100k, < 5000 ms at 1M");
    Ok(())
}

/// Measures one size; returns its table lines.
async fn measure(n: u64, args: &Args) -> Result<Vec<String>> {
    println!("== {n} ranges, {} nodes ==", args.nodes);
    let dir = tempfile::tempdir()?;
    let mut stores = Vec::new();
    for version in [1u32, 2] {
        let path = dir.path().join(format!("v{version}.redb"));
        let changes = settled_keyspace(n, args.nodes, version)?;
        let persister = RedbPersister::open(&path)?;
        let started = Instant::now();
        persister.save(&changes).await?;
        let size = std::fs::metadata(&path)?.len() as f64 / 1e6;
        println!(
            "saved v{version}: {:.0} ms, file {size:.1} MB",
            ms(started.elapsed())
        );
        stores.push((version, path, size));
    }
    let mut runs: Vec<Vec<Restart>> = vec![Vec::new(), Vec::new()];
    for run in 0..args.runs {
        for (i, (version, path, _)) in stores.iter().enumerate() {
            let restart = restart(path, n).await?;
            println!(
                "run {run} v{version}: restart {:.0} ms (load {:.0}, from_records {:.0}, Engine::new {:.0})",
                ms(restart.total()),
                ms(restart.load),
                ms(restart.validate),
                ms(restart.engine)
            );
            runs[i].push(restart);
        }
    }
    let median = |runs: &[Restart], f: fn(&Restart) -> Duration| {
        let mut v: Vec<f64> = runs.iter().map(|r| ms(f(r))).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (v1, v2) = (&runs[0], &runs[1]);
    println!(
        "v1 / v2 medians: load {:.2}x, from_records {:.2}x, restart {:.2}x\n",
        median(v1, |r| r.load) / median(v2, |r| r.load),
        median(v1, |r| r.validate) / median(v2, |r| r.validate),
        median(v1, Restart::total) / median(v2, Restart::total),
    );
    Ok(stores
        .iter()
        .zip(&runs)
        .map(|((version, _, size), runs)| {
            format!(
                "| {n} | v{version} | {size:.1} | {} | {} | {} | {} |",
                summary(runs, |r| r.load),
                summary(runs, |r| r.validate),
                summary(runs, |r| r.engine),
                summary(runs, Restart::total),
            )
        })
        .collect())
}

/// What a restarted controller does with its store, timed by phase.
async fn restart(path: &std::path::Path, n: u64) -> Result<Restart> {
    let started = Instant::now();
    let persister = RedbPersister::open(path)?;
    let (counters, records) = persister.load().await?.context("store is empty")?;
    let load = started.elapsed();
    ensure!(
        records.len() as u64 == n,
        "loaded {} records",
        records.len()
    );
    let started = Instant::now();
    let keyspace = Keyspace::from_records(counters, records)?;
    let validate = started.elapsed();
    ensure!(keyspace.current_len() as u64 == n);
    let started = Instant::now();
    let engine = Engine::new(
        keyspace,
        OrchestratorConfig::default(),
        tokio::time::Instant::now(),
    );
    let engine_new = started.elapsed();
    // Freeing a million ranges is not part of a restart.
    std::mem::forget(engine);
    drop(persister);
    Ok(Restart {
        load,
        validate,
        engine: engine_new,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(runs: &[Restart], f: fn(&Restart) -> Duration) -> String {
    let mut values: Vec<f64> = runs.iter().map(|r| ms(f(r))).collect();
    values.sort_by(f64::total_cmp);
    format!(
        "{:.0} / {:.0} / {:.0}",
        values[0],
        values[values.len() / 2],
        values[values.len() - 1]
    )
}
