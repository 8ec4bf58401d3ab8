//! The controller's gRPC services: `ranger.Orchestrator` and `ranger.Debug` as the
//! reference defines them, and our `ranger.Control` extension. Each translates
//! wire requests into [`ControllerHandle`] calls; the controller loop does the work.

mod control;
mod debug;
mod orchestrator;

use std::time::Duration;

use ranger_proto::ConversionError;
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

pub(crate) fn bad_request(e: ConversionError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A tonic router with all three controller services.
pub fn router(handle: ControllerHandle, max_wait: Duration) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(OrchestratorService::new(handle.clone(), max_wait).into_server())
        .add_service(DebugService::new(handle.clone()).into_server())
        .add_service(ControlService::new(handle).into_server())
}
