//! `hammer`: load on a `kv.KV` server (proxy or node) that checks every read
//! against every acknowledged write. See `ranger_kv::hammer`.
//!
//! ```text
//! hammer --addr 127.0.0.1:5100 --workers 8 --duration-secs 30 --mix 10,60,20,10
//! ```
//!
//! Prints the report at the end (`--json` for JSON). Exit status: 0 when no
//! acknowledged write was lost and no unexpected value was read, even if requests
//! failed (the errors are reported); 1 otherwise, with the reasons on stderr; 2
//! when the run could not start. Ctrl-C stops the load early and still verifies.
//!
//! The hammer first deletes every key it owns (`{prefix}{worker}-{n}`), so keep
//! the prefix clear of data you care about.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ranger_kv::hammer::{self, HammerConfig, OpMix};
use ranger_node_sdk::{LogOutput, init_logging};

#[derive(Debug, Parser)]
#[command(
    name = "hammer",
    version,
    about = "Load and correctness checker for the KV store"
)]
struct Cli {
    /// The proxy's or node's address.
    #[arg(long, env = "KV_ADDR", default_value = "127.0.0.1:5100")]
    addr: String,
    /// Concurrent workers, each with its own keys and connection.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Key prefix: worker i uses `{prefix}{i}-{n:06}`.
    #[arg(long, default_value = "h")]
    prefix: String,
    /// Keys per worker.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Seconds of load; 0 runs until Ctrl-C.
    #[arg(long = "duration", default_value_t = 10.0)]
    duration_secs: f64,
    /// Target operations per second over all workers; 0 means as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Percentages create,read,update,delete.
    #[arg(long, default_value_t = OpMix::default())]
    mix: OpMix,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Per-request timeout in milliseconds; keep it above the proxy's retry
    /// deadline, or late writes look stale.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Seed of the operation choices (random when omitted; printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds that clearing the keys (before) and verifying them (after) may
    /// spend retrying failed requests.
    #[arg(long, default_value_t = 30.0)]
    settle_secs: f64,
    /// Print a progress line every second on stderr (default: when it is a terminal).
    #[arg(long)]
    progress: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl Cli {
    fn config(&self) -> anyhow::Result<HammerConfig> {
        let secs = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value).with_context(|| format!("bad --{name} {value}"))
        };
        Ok(HammerConfig {
            workers: self.workers,
            key_prefix: self.prefix.clone(),
            keys_per_worker: self.keys,
            duration: secs("duration-secs", self.duration_secs)?,
            rate: self.rate,
            mix: self.mix,
            value_size: self.value_size,
            request_timeout: Duration::from_millis(self.timeout_ms),
            seed: self.seed.unwrap_or_else(rand::random),
            settle_timeout: secs("settle-secs", self.settle_secs)?,
            progress: self.progress || std::io::stderr().is_terminal(),
            ..HammerConfig::new(self.addr.clone())
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging("warn", LogOutput::Stderr);
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("hammer: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the hammer and prints the report; returns whether it passed.
async fn run(cli: &Cli) -> anyhow::Result<bool> {
    let config = cli.config()?;
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let report = hammer::run(config, ctrl_c).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if !report.passed() {
        for reason in report.failure_reasons() {
            eprintln!("hammer: FAIL: {reason}");
        }
    }
    Ok(report.passed())
}
