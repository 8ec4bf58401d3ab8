//! Waiting for a condition with a deadline, never for a fixed time: a test
//! that sleeps and hopes passes or fails with the machine's load, one that
//! polls a condition says what it was waiting for when it gives up.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(100);

/// The default patience for a cluster to reach a state: generous, because CI
/// runs these tests on two busy cores.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `probe` until it answers `Ok`, for at most `timeout`. `Err` carries
/// what the probe saw, which the timeout error repeats, so a failure says
/// both what was awaited and what was there instead.
pub async fn until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> anyhow::Result<T> {
    until_or_fail(what, timeout, async || {
        probe().await.map_err(NotYet::Waiting)
    })
    .await
}

/// Why a probe of [`until_or_fail`] did not answer `Ok` yet.
#[derive(Debug)]
pub enum NotYet {
    /// Not yet; what the probe saw. The wait goes on.
    Waiting(String),
    /// A state the wait can never leave (a process it waits for has exited):
    /// the wait ends at once with this.
    Failed(String),
}

/// Like [`until`], but the probe can also end the wait at once
/// ([`NotYet::Failed`]) instead of letting the timeout run out.
pub async fn until_or_fail<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, NotYet>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(NotYet::Failed(why)) => bail!("waiting until {what}: {why}"),
            Err(NotYet::Waiting(last)) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting until {what}; last seen: {last}")
            }
            Err(NotYet::Waiting(_)) => tokio::time::sleep(POLL).await,
        }
    }
}
