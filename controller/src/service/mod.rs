//! The controller's gRPC services: `ranger.Orchestrator` and `ranger.Debug` as the
//! reference defines them, and our `ranger.Control` extension. Each translates
//! wire requests into [`ControllerHandle`] calls; the controller loop does the work.
//!
//! The services find the controller through a [`ControllerSlot`]: a fixed handle
//! for a single controller, or, with leader election, whatever this process is
//! right now. A standby (or a leader still loading the keyspace) refuses every
//! call with UNAVAILABLE naming the leader, also in the `ranger-leader` metadata
//! entry: UNAVAILABLE because the request is fine and the same call to the
//! leader (or to this process a moment later) can succeed, which is what gRPC
//! clients' retry policies take that code to mean.

mod balance;
mod control;
mod debug;
mod orchestrator;

use std::time::Duration;

use ranger_proto::ConversionError;
use tokio::sync::watch;
use tonic::Status;

pub use control::ControlService;
pub use debug::DebugService;
pub use orchestrator::OrchestratorService;

use crate::orchestrator::OpError;
use crate::runtime::{ControllerHandle, HandleError};

/// Status codes for refusals and failures (PROTOCOL.md: failed operations are
/// ABORTED with a message).
pub(crate) fn status(e: HandleError) -> Status {
    match e {
        HandleError::Stopped => Status::unavailable("the controller is stopping"),
        HandleError::Op(op) => {
            let message = op.to_string();
            match op {
                OpError::UnknownRange(_) | OpError::UnknownNode(_) | OpError::UnknownOp(_) => {
                    Status::not_found(message)
                }
                OpError::InvalidArgument(_) => Status::invalid_argument(message),
                OpError::FailedPrecondition(_) => Status::failed_precondition(message),
                OpError::Aborted(_) => Status::aborted(message),
                OpError::Cancelled(_) => Status::cancelled(message),
            }
        }
    }
}

/// A duration in whole milliseconds, as the wire carries it, saturating (no
/// field has room for more).
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn bad_request(e: ConversionError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// What the services can reach in this process right now.
#[derive(Debug, Clone)]
pub enum SlotState {
    /// This process runs the controller (it is the only one, or the leader).
    Running(ControllerHandle),
    /// This process is a standby; `leader` is the leader's address, if known.
    Standby { leader: Option<String> },
    /// This process was elected and is loading the keyspace.
    Starting,
}

/// Where the services find the controller: a watch of [`SlotState`], so that a
/// controller elected leader (or deposed) is picked up by the next call.
#[derive(Debug, Clone)]
pub struct ControllerSlot {
    state: watch::Receiver<SlotState>,
}

/// The gRPC metadata entry in which a standby names the leader's address.
pub const LEADER_METADATA: &str = "ranger-leader";

impl ControllerSlot {
    /// A slot that always holds `handle` (a controller without election).
    pub fn fixed(handle: ControllerHandle) -> Self {
        // The receiver keeps the last value after the sender is gone.
        let (_, state) = watch::channel(SlotState::Running(handle));
        ControllerSlot { state }
    }

    /// A slot that follows what the returned sender publishes.
    pub fn channel(initial: SlotState) -> (watch::Sender<SlotState>, Self) {
        let (tx, state) = watch::channel(initial);
        (tx, ControllerSlot { state })
    }

    /// What this process is right now (the dashboard shows it: leader,
    /// standby naming the leader, or starting).
    pub fn current(&self) -> SlotState {
        self.state.borrow().clone()
    }

    /// The controller to call, or the status that tells the caller where to go.
    pub(crate) fn handle(&self) -> Result<ControllerHandle, Status> {
        match &*self.state.borrow() {
            SlotState::Running(handle) => Ok(handle.clone()),
            SlotState::Standby {
                leader: Some(leader),
            } => {
                let mut status = Status::unavailable(format!(
                    "this controller is not the leader; the leader is {leader}"
                ));
                if let Ok(value) = leader.parse() {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                Err(status)
            }
            SlotState::Standby { leader: None } => Err(Status::unavailable(
                "this controller is not the leader, and no leader is elected right now; retry shortly",
            )),
            SlotState::Starting => Err(Status::unavailable(
                "this controller was just elected leader and is loading the keyspace; retry shortly",
            )),
        }
    }
}

impl From<ControllerHandle> for ControllerSlot {
    fn from(handle: ControllerHandle) -> Self {
        ControllerSlot::fixed(handle)
    }
}

/// A tonic router with all three controller services, reaching the controller
/// through `slot` (a [`ControllerHandle`] converts into a fixed one).
pub fn router(
    slot: impl Into<ControllerSlot>,
    max_wait: Duration,
) -> tonic::transport::server::Router {
    let slot = slot.into();
    tonic::transport::Server::builder()
        .add_service(OrchestratorService::new(slot.clone(), max_wait).into_server())
        .add_service(DebugService::new(slot.clone()).into_server())
        .add_service(ControlService::new(slot).into_server())
}
