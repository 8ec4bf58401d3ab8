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
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting until {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
