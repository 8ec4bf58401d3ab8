//! How long a controller restart spends reading the keyspace from Consul
//! (DESIGN.md §10: restart or failover to serving < 2 s at 100k ranges).
//!
//! Starts a real Consul (a `TestAgent`, in the mode `RANGER_CONSUL_MODE`
//! selects), saves N ranges (each with one steady Active placement) through a
//! fenced `ConsulPersister` in one change set twice: under one prefix with every
//! record in schema version 1 (as an older build wrote them), under another in
//! version 2 (what this build writes). Then, several times and alternating the
//! two, does what a restarted controller does with its store: a new persister,
//! `load()` (one recursive listing of the prefix, decoded and checked), and
//! `Keyspace::from_records` (full validation). Prints every run, min / median /
//! max per version with the time of the bare listing (Consul's answer, fetched
//! and parsed by the client) beside it, to show how much of a load is Consul's,
//! and the ratio of the medians (v1 / v2), measured in the same run.
//!
//! Target (issue 13): restart from Consul < 1 s at 100k ranges.
//!
//! Run (release build, figures are meaningless in debug):
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/ranger/target
//! cargo run --release -p ranger-controller --example bench_consul_load
//! cargo run --release -p ranger-controller --example bench_consul_load -- --ranges 300000 --runs 5
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use ranger_consul::test_agent::TestAgent;
use ranger_consul::{Client, ClientConfig, PutOptions, SessionRequest};
use ranger_controller::keyspace::Keyspace;
use ranger_controller::persist::{ConsulPersister, DEFAULT_CONSUL_PREFIX, Fence, Persister};
use ranger_controller::testing::synthetic::settled_keyspace;

#[derive(Parser, Debug)]
#[command(about = "Measures loading the keyspace from a real Consul agent")]
struct Args {
    /// Ranges in the keyspace.
    #[arg(long, default_value_t = 100_000)]
    ranges: u64,
    /// Loads to time.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Simulated nodes the placements are spread over.
    #[arg(long, default_value_t = 1_000)]
    nodes: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.ranges > 0 && args.runs > 0 && args.nodes > 0,
        "--ranges, --runs and --nodes must be > 0"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: debug build; use --release for figures\n");
    }
    let agent = TestAgent::start()
        .await
        .context("starting a consul agent")?;
    // A listing of many ranges is one large answer: allow it time.
    let client = Client::new(
        ClientConfig::new(agent.address()).with_request_timeout(Duration::from_secs(300)),
    )?;
    let fence = lead(&client).await?;

    let mut stores = Vec::new();
    for version in [1u32, 2] {
        let changes = settled_keyspace(args.ranges, args.nodes, version)?;
        let prefix = format!("{DEFAULT_CONSUL_PREFIX}v{version}/");
        let persister = ConsulPersister::new(client.clone(), prefix, Some(fence.clone()))?;
        let started = Instant::now();
        persister.save(&changes).await?;
        let save = started.elapsed();
        let listed = client
            .kv_list(persister.prefix(), Default::default())
            .await?;
        let bytes: usize = listed.value.iter().map(|pair| pair.value.len()).sum();
        println!(
            "v{version}: saved {} ranges in one change set: {:.2} s ({:.0} records/s), {:.1} MB of values",
            args.ranges,
            save.as_secs_f64(),
            args.ranges as f64 / save.as_secs_f64(),
            bytes as f64 / 1e6
        );
        stores.push((version, persister));
    }

    // Per version: listing, load, restart times.
    let mut times: Vec<[Vec<f64>; 3]> = vec![Default::default(), Default::default()];
    for run in 0..args.runs {
        for (i, (version, persister)) in stores.iter().enumerate() {
            let [lists, loads, restarts] = &mut times[i];
            // Consul's share: the listing alone, fetched and parsed by the client.
            let started = Instant::now();
            let listed = client
                .kv_list(persister.prefix(), Default::default())
                .await?
                .value
                .len();
            let list = started.elapsed();
            ensure!(listed as u64 > args.ranges, "listed only {listed} keys");

            let restarted = ConsulPersister::new(
                client.clone(),
                persister.prefix(),
                persister.fence().cloned(),
            )?;
            let started = Instant::now();
            let (counters, records) = restarted.load().await?.context("nothing stored")?;
            let load = started.elapsed();
            ensure!(
                records.len() as u64 == args.ranges,
                "loaded {} records",
                records.len()
            );
            let keyspace = Keyspace::from_records(counters, records)?;
            let restart = started.elapsed();
            ensure!(keyspace.current_len() as u64 == args.ranges);
            println!(
                "run {run} v{version}: raw listing {:.0} ms, load {:.0} ms, load + Keyspace::from_records {:.0} ms",
                ms(list),
                ms(load),
                ms(restart)
            );
            lists.push(ms(list));
            loads.push(ms(load));
            restarts.push(ms(restart));
        }
    }
    println!();
    println!("min / median / max of {} runs:", args.runs);
    println!("| ranges | version | raw listing | load | load + from_records (restart) |");
    println!("|---|---|---|---|---|");
    for ((version, _), [lists, loads, restarts]) in stores.iter().zip(&mut times) {
        println!(
            "| {} | v{version} | {} | {} | {} |",
            args.ranges,
            summary(lists),
            summary(loads),
            summary(restarts)
        );
    }
    let median = |values: &[f64]| values[values.len() / 2];
    let ([l1, o1, r1], [l2, o2, r2]) = (&times[0], &times[1]);
    println!(
        "v1 / v2 medians: raw listing {:.2}x, load {:.2}x, restart {:.2}x",
        median(l1) / median(l2),
        median(o1) / median(o2),
        median(r1) / median(r2)
    );
    println!("target (issue 13): restart from Consul < 1000 ms at 100k ranges");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.0} / {:.0} / {:.0} ms",
        values[0],
        values[values.len() / 2],
        values[values.len() - 1]
    )
}

/// Takes the leader lock, as an elected controller would, so that the saves
/// are fenced as in production.
async fn lead(client: &Client) -> Result<Fence> {
    const LEADER_KEY: &str = "ranger/leader";
    let session = client.session_create(&SessionRequest::default()).await?;
    ensure!(
        client
            .kv_put(LEADER_KEY, b"bench", &PutOptions::acquire(&session))
            .await?,
        "could not take the leader lock"
    );
    Ok(Fence {
        leader_key: LEADER_KEY.into(),
        session_id: session,
    })
}
