//! `ranger.Orchestrator`: Move, Split, Join. Each call returns when the operation
//! has finished (see the README for exactly when), or with an error that says what
//! failed. It never hangs: past `max_wait` it answers DEADLINE_EXCEEDED naming the
//! operation, which goes on (and can be cancelled with `ranger.Control/Cancel`).

use std::time::Duration;

use ranger_proto::pb::ranger as pb;
use ranger_proto::{Key, NodeId, RangeId};
use tonic::{Request, Response, Status};

use super::ControllerSlot;
use super::{bad_request, status};
use crate::runtime::{HandleError, OpRequest};

#[derive(Debug)]
pub struct OrchestratorService {
    slot: ControllerSlot,
    max_wait: Duration,
}

impl OrchestratorService {
    pub fn new(slot: impl Into<ControllerSlot>, max_wait: Duration) -> Self {
        OrchestratorService {
            slot: slot.into(),
            max_wait,
        }
    }

    pub fn into_server(self) -> pb::orchestrator_server::OrchestratorServer<Self> {
        pb::orchestrator_server::OrchestratorServer::new(self)
    }

    async fn run(&self, op: OpRequest) -> Result<(), Status> {
        let (id, done) = self.slot.handle()?.submit(op).await.map_err(status)?;
        match tokio::time::timeout(self.max_wait, done).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{id} is still running after {:?}; cancel it with `rangerctl cancel {}`",
                self.max_wait, id.0
            ))),
            Ok(Err(_)) => Err(status(HandleError::Stopped)),
            Ok(Ok(result)) => result.map_err(|e| status(e.into())),
        }
    }
}

fn node(id: String) -> Result<Option<NodeId>, Status> {
    if id.is_empty() {
        return Ok(None);
    }
    NodeId::new(id).map(Some).map_err(bad_request)
}

fn range(id: u64) -> Result<RangeId, Status> {
    RangeId::new(id).map_err(bad_request)
}

#[tonic::async_trait]
impl pb::orchestrator_server::Orchestrator for OrchestratorService {
    async fn r#move(
        &self,
        request: Request<pb::MoveRequest>,
    ) -> Result<Response<pb::MoveResponse>, Status> {
        let request = request.into_inner();
        self.run(OpRequest::Move {
            range: range(request.range)?,
            node: node(request.node)?,
        })
        .await?;
        Ok(Response::new(pb::MoveResponse {}))
    }

    async fn split(
        &self,
        request: Request<pb::SplitRequest>,
    ) -> Result<Response<pb::SplitResponse>, Status> {
        let request = request.into_inner();
        self.run(OpRequest::Split {
            range: range(request.range)?,
            key: Key::new(request.boundary),
            left: node(request.node_left)?,
            right: node(request.node_right)?,
        })
        .await?;
        Ok(Response::new(pb::SplitResponse {}))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let request = request.into_inner();
        self.run(OpRequest::Join {
            left: range(request.range_left)?,
            right: range(request.range_right)?,
            node: node(request.node)?,
        })
        .await?;
        Ok(Response::new(pb::JoinResponse {}))
    }
}
