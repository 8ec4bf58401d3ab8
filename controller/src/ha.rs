//! Running the controller only while elected (DESIGN.md §5 HA): the glue between
//! a [`LeaderElection`], the keyspace in Consul, the controller loop and the
//! services' [`ControllerSlot`].
//!
//! Each leadership term starts from scratch: a [`ConsulPersister`] fenced by the
//! term's session, the keyspace loaded from Consul (another controller may have
//! changed it since this one last led), a new [`Engine`] and loop. The loop is
//! stopped the moment the role is no longer leadership in that term, and a
//! write it attempts after that is refused by the fence anyway. If the loop
//! stops by itself while the election still says "leader" (the store refused
//! a write, or the stored keyspace cannot be loaded), this controller resigns so
//! that another one gets the chance.

use std::sync::Arc;
use std::time::Duration;

use ranger_consul::Client;
use tokio::sync::watch;

use crate::bootstrap::{LoadError, load_keyspace};
use crate::config::OrchestratorConfig;
use crate::discovery::Membership;
use crate::election::{LeaderElection, Role};
use crate::orchestrator::Engine;
use crate::persist::{ConsulPersister, Fence, InvalidPrefix};
use crate::runtime::{self, RuntimeConfig};
use crate::service::SlotState;
use crate::transport::NodeTransport;

/// Pause before loading the keyspace again after a transient failure.
const LOAD_RETRY: Duration = Duration::from_millis(500);

/// What a leader needs to run the controller.
#[derive(Debug, Clone)]
pub struct LeaderSetup {
    /// Consul client for the keyspace.
    pub client: Client,
    /// Where the keyspace lives in Consul (`<prefix>keyspace/`).
    pub keyspace_prefix: String,
    /// The orchestrator's settings.
    pub orchestrator: OrchestratorConfig,
    /// The loop's settings.
    pub runtime: RuntimeConfig,
}

/// Why running under election stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// The keyspace prefix cannot hold a keyspace.
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
}

/// Runs the controller loop whenever `election` makes this process the leader,
/// publishing what the services can reach on `slot`, until `shutdown` turns
/// true or the election stops. Returns once no loop runs any more; then leave
/// the election ([`LeaderElection::shutdown`]).
pub async fn run_when_leader<T: NodeTransport>(
    setup: LeaderSetup,
    election: &LeaderElection,
    transport: Arc<T>,
    membership: watch::Receiver<Membership>,
    slot: watch::Sender<SlotState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), HaError> {
    // Fail on a bad prefix before any election happens.
    ConsulPersister::new(setup.client.clone(), setup.keyspace_prefix.clone(), None)?;
    let mut roles = election.role();
    loop {
        // Shutting down, or the election is gone (its task ended).
        if *shutdown.borrow() || roles.has_changed().is_err() {
            return Ok(());
        }
        let role = roles.borrow_and_update().clone();
        match role {
            Role::Leader { term, fence } => {
                slot.send_replace(SlotState::Starting);
                lead(
                    &setup,
                    election,
                    term,
                    fence,
                    Arc::clone(&transport),
                    membership.clone(),
                    &slot,
                    shutdown.clone(),
                )
                .await?;
                slot.send_replace(SlotState::Standby { leader: None });
                // The term is over (or resigned, or shutting down): never run
                // a second loop in one term.
                tokio::select! {
                    _ = roles.wait_for(|r| !r.is_leader_in(term)) => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                }
                continue;
            }
            Role::Standby { leader } => {
                slot.send_replace(SlotState::Standby {
                    leader: leader.map(|l| l.addr),
                });
            }
            Role::Stopped => return Ok(()),
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            changed = roles.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// One leadership term: load, run the loop until the term or the process ends.
#[allow(clippy::too_many_arguments)]
async fn lead<T: NodeTransport>(
    setup: &LeaderSetup,
    election: &LeaderElection,
    term: u64,
    fence: Fence,
    transport: Arc<T>,
    membership: watch::Receiver<Membership>,
    slot: &watch::Sender<SlotState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), HaError> {
    let persister = ConsulPersister::new(
        setup.client.clone(),
        setup.keyspace_prefix.clone(),
        Some(fence),
    )?;
    let mut roles = election.role();
    let term_over = {
        let mut roles = roles.clone();
        let mut shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = roles.wait_for(|r| !r.is_leader_in(term)) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    };
    let started = std::time::Instant::now();
    let keyspace = loop {
        let loaded = tokio::select! {
            _ = roles.wait_for(|r| !r.is_leader_in(term)) => return Ok(()),
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            loaded = load_keyspace(&persister) => loaded,
        };
        match loaded {
            Ok(keyspace) => break keyspace,
            Err(LoadError::Persist(e)) if e.is_retryable() => {
                tracing::warn!(error = %e, term, "could not load the keyspace; retrying");
                tokio::time::sleep(LOAD_RETRY).await;
            }
            Err(e) => {
                tracing::error!(error = %e, term, "cannot lead with this keyspace; resigning");
                election.resign(term);
                return Ok(());
            }
        }
    };
    tracing::info!(
        term,
        ranges = keyspace.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "leading: keyspace loaded"
    );
    let engine = Engine::new(
        keyspace,
        setup.orchestrator.clone(),
        tokio::time::Instant::now(),
    )
    .with_wall_clock(crate::orchestrator::wall_clock_now());
    let (handle, task) = runtime::spawn(
        engine,
        persister,
        transport,
        membership,
        setup.runtime.clone(),
        term_over,
    );
    slot.send_replace(SlotState::Running(handle));
    let ended = task.await;
    // No handle may outlive the term's loop.
    slot.send_replace(SlotState::Starting);
    let still_leader = election.current().is_leader_in(term);
    match ended {
        Ok(Ok(())) => tracing::info!(term, "controller loop stopped: leadership ended"),
        Ok(Err(e)) if still_leader => {
            tracing::error!(error = %e, term, "controller loop failed while leading; resigning");
            election.resign(term);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, term, "controller loop stopped: deposed");
        }
        Err(e) => {
            tracing::error!(error = %e, term, "controller loop task failed; resigning");
            election.resign(term);
        }
    }
    Ok(())
}
