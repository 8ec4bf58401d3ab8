//! `ranger.Control`: drain, cancel, list operations, watch events, forget a
//! lost node, and the balancer's status, pause, resume and explanations.

use std::collections::HashSet;
use std::pin::Pin;

use futures::Stream;
use ranger_proto::pb::ranger as pb;
use ranger_proto::{NodeId, RangeId};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::ControllerSlot;
use super::{bad_request, millis, status};
use crate::orchestrator::history::result_label;
use crate::orchestrator::{OpId, OpPhase};

#[derive(Debug)]
pub struct ControlService {
    slot: ControllerSlot,
}

impl ControlService {
    pub fn new(slot: impl Into<ControllerSlot>) -> Self {
        ControlService { slot: slot.into() }
    }

    pub fn into_server(self) -> pb::control_server::ControlServer<Self> {
        pb::control_server::ControlServer::new(self)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

impl ControlService {
    async fn balance_response(&self) -> Result<Response<pb::BalanceResponse>, Status> {
        let response = self
            .slot
            .handle()?
            .inspect(|engine| {
                let now = tokio::time::Instant::now();
                let tolerance = engine.config().balancing.planner.tolerance;
                super::balance::response(&engine.balance_status(now), tolerance, now)
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let request = request.into_inner();
        let node = NodeId::new(request.node).map_err(bad_request)?;
        self.slot
            .handle()?
            .drain(node, request.drain)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let node = NodeId::new(request.into_inner().node).map_err(bad_request)?;
        let report = self
            .slot
            .handle()?
            .forget_node(node)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ForgetResponse {
            ranges_lost: report.ranges_lost.iter().map(|r| r.get()).collect(),
        }))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let op = OpId(request.into_inner().operation);
        self.slot.handle()?.cancel(op).await.map_err(status)?;
        Ok(Response::new(pb::CancelResponse {}))
    }

    async fn operations(
        &self,
        _request: Request<pb::OperationsRequest>,
    ) -> Result<Response<pb::OperationsResponse>, Status> {
        let response = self
            .slot
            .handle()?
            .inspect(|engine| {
                let now = tokio::time::Instant::now();
                let operations = engine
                    .operations()
                    .map(|op| pb::OperationInfo {
                        id: op.id.0,
                        description: op.to_string(),
                        phase: match op.phase {
                            OpPhase::Queued => "queued",
                            OpPhase::Running => "running",
                            OpPhase::RollingBack => "rolling back",
                        }
                        .to_owned(),
                        ranges: op.ranges().iter().map(|r| r.get()).collect(),
                        age_millis: millis(now.saturating_duration_since(op.started)),
                        origin: op.origin.to_string(),
                    })
                    .collect();
                let recent = engine
                    .history()
                    .recent()
                    .map(|op| pb::EndedOperationInfo {
                        id: op.id.0,
                        description: op.description.clone(),
                        origin: op.origin.clone(),
                        ranges: op.ranges.iter().map(|r| r.get()).collect(),
                        duration_millis: millis(op.duration()),
                        ended_ago_millis: millis(now.saturating_duration_since(op.ended)),
                        result: result_label(&op.result).to_owned(),
                        error: op
                            .result
                            .as_ref()
                            .err()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                    })
                    .collect();
                pb::OperationsResponse { operations, recent }
            })
            .await
            .map_err(status)?;
        Ok(Response::new(response))
    }

    async fn balance(
        &self,
        _request: Request<pb::BalanceRequest>,
    ) -> Result<Response<pb::BalanceResponse>, Status> {
        self.balance_response().await
    }

    async fn pause_balance(
        &self,
        request: Request<pb::PauseBalanceRequest>,
    ) -> Result<Response<pb::BalanceResponse>, Status> {
        let millis = request.into_inner().millis;
        let handle = self.slot.handle()?;
        handle
            .pause_balancing(std::time::Duration::from_millis(millis))
            .await
            .map_err(status)?;
        self.balance_response().await
    }

    async fn resume_balance(
        &self,
        _request: Request<pb::ResumeBalanceRequest>,
    ) -> Result<Response<pb::BalanceResponse>, Status> {
        self.slot
            .handle()?
            .resume_balancing()
            .await
            .map_err(status)?;
        self.balance_response().await
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let range = RangeId::new(request.into_inner().range).map_err(bad_request)?;
        let lines = self
            .slot
            .handle()?
            .inspect(move |engine| engine.explain(range))
            .await
            .map_err(status)?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(pb::ExplainResponse { lines }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let ranges: HashSet<RangeId> = request
            .into_inner()
            .ranges
            .into_iter()
            .map(RangeId::new)
            .collect::<Result<_, _>>()
            .map_err(bad_request)?;
        let mut events = self.slot.handle()?.events();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = pb::WatchEvent {
                            range: 0,
                            message: format!("({n} events skipped: watcher too slow)"),
                        };
                        if tx.send(Ok(note)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if !ranges.is_empty() && !ranges.contains(&event.range) {
                    continue;
                }
                let message = pb::WatchEvent {
                    range: event.range.get(),
                    message: event.message,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
