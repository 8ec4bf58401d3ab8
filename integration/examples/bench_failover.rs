//! Failover time, measured: two `rangerd --consul` (a containerised Consul by
//! default, as the tests run it), the leader killed with `kill -9`, and the
//! time until the standby answers `rangerctl ranges` as leader. Each setting
//! of the election's timings (`--leader-check-ttl-ms`, `--leader-lock-delay-ms`)
//! runs on a fresh cluster, several kills each; the first setting (by default
//! the former defaults, 3000/1000) is the baseline every other prints a ratio
//! to, measured in the same run.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/ranger/target
//! cargo build --release --bins -p ranger-controller -p ranger-kv   # or debug: the harness finds either
//! cargo run --release -p ranger-integration --example bench_failover -- --kills 5 --settings 3000/1000,1000/500
//! ```
//!
//! The poll that notices the new leader runs `rangerctl` every 20 ms, so a
//! figure includes up to that much (and one `rangerctl` start).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use ranger_integration::{Backend, Cluster};

#[derive(Parser, Debug)]
#[command(about = "Measures how long a standby takes to lead after the leader is killed")]
struct Args {
    /// Kills per setting.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Election timings to compare, `CHECK_TTL_MS/LOCK_DELAY_MS,...`; the first
    /// is the baseline the others are compared with.
    #[arg(long, value_delimiter = ',', default_values_t = ["3000/1000".to_owned(), "1000/500".to_owned()])]
    settings: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Setting {
    check_ttl_ms: u64,
    lock_delay_ms: u64,
}

fn parse(setting: &str) -> Result<Setting> {
    let (ttl, delay) = setting
        .split_once('/')
        .with_context(|| format!("{setting:?}: expected CHECK_TTL_MS/LOCK_DELAY_MS"))?;
    Ok(Setting {
        check_ttl_ms: ttl.trim().parse().context("check TTL")?,
        lock_delay_ms: delay.trim().parse().context("lock delay")?,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.kills > 0, "--kills must be > 0");
    let settings = args
        .settings
        .iter()
        .map(|s| parse(s))
        .collect::<Result<Vec<_>>>()?;
    let mut medians = Vec::new();
    for setting in &settings {
        let mut times = measure(*setting, args.kills).await?;
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "check TTL {:>5} ms, lock delay {:>5} ms: failover min {} / median {} / max {} over {} kills",
            setting.check_ttl_ms,
            setting.lock_delay_ms,
            ms(times[0]),
            ms(median),
            ms(times[times.len() - 1]),
            times.len()
        );
        medians.push(median);
    }
    if let [baseline, others @ ..] = &medians[..] {
        for (setting, median) in settings[1..].iter().zip(others) {
            println!(
                "{}/{} vs {}/{}: median {:.2}x of the baseline",
                setting.check_ttl_ms,
                setting.lock_delay_ms,
                settings[0].check_ttl_ms,
                settings[0].lock_delay_ms,
                median.as_secs_f64() / baseline.as_secs_f64()
            );
        }
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Kills the leader `kills` times on one cluster (restarting the killed one as
/// the next standby each time) and returns each kill-to-serving time.
async fn measure(setting: Setting, kills: usize) -> Result<Vec<Duration>> {
    let mut cluster = Cluster::builder(Backend::Consul)
        .controllers(2)
        .nodes(1)
        .proxy(false)
        .rangerd_flag("--leader-check-ttl-ms", &setting.check_ttl_ms.to_string())
        .rangerd_flag("--leader-lock-delay-ms", &setting.lock_delay_ms.to_string())
        .start()
        .await?;
    let mut times = Vec::with_capacity(kills);
    for _ in 0..kills {
        let leader = cluster.leader().await?;
        let standby = 1 - leader;
        // Both up: the standby is following the lock.
        cluster.wait_settled().await?;
        cluster.kill_controller(leader)?;
        let killed = Instant::now();
        times.push(wait_serving(&cluster, standby, killed).await?);
        cluster.restart_controller(leader).await?;
    }
    Ok(times)
}

/// Polls controller `index` with `rangerctl ranges` until it answers as
/// leader; returns the time since `since`.
async fn wait_serving(cluster: &Cluster, index: usize, since: Instant) -> Result<Duration> {
    let ctl = cluster.ctl_at(index);
    while since.elapsed() < Duration::from_secs(60) {
        if ctl.run(&["ranges"]).await?.success() {
            return Ok(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("controller {index} did not lead within 60 s of the kill")
}
