//! The hammer: a load generator that remembers every acknowledged write and
//! checks every read (DESIGN.md §7).
//!
//! Each worker owns a set of keys and is their only writer, sending one request
//! at a time, so the hammer always knows what each key must hold:
//!
//! - a read must return the last acknowledged write (NOT_FOUND after an
//!   acknowledged delete or for a key never written); an older state is *stale*
//!   and the acknowledged write it misses is *lost*; a value never written to the
//!   key is *unexpected*;
//! - a write that failed without a clear answer (timeout, UNAVAILABLE, broken
//!   connection) leaves the key *uncertain*: its next read may return the state
//!   before or after that write, and settles it;
//! - before the load, every worker deletes its keys, so that a run does not
//!   depend on earlier ones; when the load stops, every written key is read once
//!   more (verification).
//!
//! Values name their key and write number ([`value`]), so the hammer stores
//! write numbers, not values. [`run`] is the whole thing as a function, for the
//! `hammer` binary and for tests that move ranges while it runs.

mod config;
mod histogram;
mod model;
mod progress;
mod report;
mod status;
pub mod value;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tonic::transport::Endpoint;

pub use config::{HammerConfig, OpKind, OpMix};
pub use histogram::Histogram;
pub use report::{Latencies, LatencySummary, Report, Verification, WindowSummary};

use progress::Live;
use report::Tally;
use worker::Worker;

/// Why a hammer run could not run (its findings are in the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum HammerError {
    /// The configuration cannot run.
    #[error("invalid hammer configuration: {0}")]
    InvalidConfig(String),
    /// The target is not a usable address.
    #[error("bad target address {target:?}: {source}")]
    BadTarget {
        /// The address as given.
        target: String,
        /// Why it was refused.
        source: tonic::transport::Error,
    },
    /// A key could not be cleared before the load (is the target up?).
    #[error("cannot clear key {key:?} before the run: {status}")]
    Clear {
        /// The key.
        key: String,
        /// The last failure.
        status: tonic::Status,
    },
    /// A worker task panicked or was cancelled.
    #[error("a hammer worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Deletes every key the workers own, hammers `config.target` until
/// `config.duration` has passed or `shutdown` resolves, whichever comes first,
/// then verifies every written key and reports.
///
/// Returns `Ok` whatever the server did during the load: look at
/// [`Report::passed`]. Errors are for runs that could not happen: bad
/// configuration or address, or keys that could not be cleared within
/// `settle_timeout`.
pub async fn run(config: HammerConfig, shutdown: impl Future) -> Result<Report, HammerError> {
    config.validate()?;
    let endpoint = endpoint(&config)?;
    let config = Arc::new(config);
    let live = Arc::new(Live::default());
    let (stop, stopped) = watch::channel(false);
    tracing::info!(target = %config.target, workers = config.workers, "hammer starting");

    // One connection per worker, like independent clients.
    let mut workers: Vec<Worker> = (0..config.workers)
        .map(|index| Worker::new(index, config.clone(), endpoint.connect_lazy(), live.clone()))
        .collect();
    futures::future::try_join_all(workers.iter_mut().map(Worker::clear)).await?;

    let started = Instant::now();
    let workers: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(worker.run(stopped.clone())))
        .collect();
    let progress = config.progress.then(|| {
        let live = live.clone();
        tokio::spawn(async move { progress::print_every_second(&live, started).await })
    });

    let duration = config.duration;
    let elapsed = async move {
        if duration.is_zero() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(duration).await;
    };
    tokio::select! {
        _ = shutdown => tracing::info!("hammer asked to stop"),
        () = elapsed => {}
    }
    stop.send_replace(true);
    let load_elapsed = started.elapsed();
    tracing::info!("load stopped; verifying");

    let mut tallies = Vec::with_capacity(workers.len());
    for worker in workers {
        tallies.push(worker.await?);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    Ok(Tally::into_report(
        tallies,
        config.target.clone(),
        config.seed,
        load_elapsed,
    ))
}

/// The endpoint of `host:port` or of a URL.
fn endpoint(config: &HammerConfig) -> Result<Endpoint, HammerError> {
    let target = &config.target;
    let url = if target.contains("://") {
        target.clone()
    } else {
        format!("http://{target}")
    };
    Endpoint::from_shared(url)
        .map(|e| e.connect_timeout(config.request_timeout))
        .map_err(|source| HammerError::BadTarget {
            target: target.clone(),
            source,
        })
}
