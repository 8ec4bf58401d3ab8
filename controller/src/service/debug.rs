//! `ranger.Debug`: the keyspace and the nodes as the controller sees them.

use ranger_proto::pb::ranger as pb;
use ranger_proto::{NodeId, RangeId, RangeInfo};
use tonic::{Request, Response, Status};

use super::ControllerSlot;
use super::{bad_request, millis, status};
use crate::keyspace::Range;
use crate::orchestrator::Engine;
use crate::roster::NodeStatus;

#[derive(Debug)]
pub struct DebugService {
    slot: ControllerSlot,
}

impl DebugService {
    pub fn new(slot: impl Into<ControllerSlot>) -> Self {
        DebugService { slot: slot.into() }
    }

    pub fn into_server(self) -> pb::debug_server::DebugServer<Self> {
        pb::debug_server::DebugServer::new(self)
    }
}

fn range_response(engine: &Engine, range: &Range) -> pb::RangeResponse {
    let unavailable = engine.unavailable(range.id());
    pb::RangeResponse {
        unavailable: unavailable.map(|u| u.reason.clone()).unwrap_or_default(),
        unavailable_millis: unavailable.map_or(0, |u| millis(u.since.elapsed())),
        meta: Some(range.meta().into()),
        state: range.state().into(),
        parents: range.parents().iter().map(|id| id.get()).collect(),
        children: range.children().iter().map(|id| id.get()).collect(),
        placements: range
            .placements()
            .iter()
            .map(|p| {
                let view = engine
                    .roster()
                    .get(p.node())
                    .and_then(|n| n.ranges.get(&range.id()));
                pb::PlacementWithRangeInfo {
                    placement: Some(pb::Placement {
                        node: p.node().to_string(),
                        state: p.state().into(),
                    }),
                    range_info: view.map(|v| {
                        pb::RangeInfo::from(&RangeInfo {
                            meta: range.meta().clone(),
                            state: v.state,
                            load: v.load.clone(),
                        })
                    }),
                }
            })
            .collect(),
    }
}

fn node_response(engine: &Engine, node: &NodeStatus) -> pb::NodeResponse {
    let mut ranges: Vec<pb::NodeRange> = engine
        .keyspace()
        .ranges()
        .flat_map(|r| {
            r.placements()
                .iter()
                .filter(|p| p.node() == &node.id && p.is_live())
                .map(|p| pb::NodeRange {
                    meta: Some(r.meta().into()),
                    state: p.state().into(),
                })
        })
        .collect();
    ranges.sort_by_key(|r| r.meta.as_ref().map_or(0, |m| m.ident));
    pb::NodeResponse {
        node: Some(pb::NodeMeta {
            ident: node.id.to_string(),
            address: node.addr.clone(),
            want_drain: node.draining(),
        }),
        ranges,
        capacity: node.capacity,
    }
}

#[tonic::async_trait]
impl pb::debug_server::Debug for DebugService {
    async fn ranges_list(
        &self,
        _request: Request<pb::RangesListRequest>,
    ) -> Result<Response<pb::RangesListResponse>, Status> {
        let ranges = self
            .slot
            .handle()?
            .inspect(|engine| {
                let mut ranges: Vec<&Range> = engine.keyspace().ranges().collect();
                ranges.sort_by_key(|r| r.id());
                ranges
                    .into_iter()
                    .map(|r| range_response(engine, r))
                    .collect()
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RangesListResponse { ranges }))
    }

    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let id = RangeId::new(request.into_inner().range).map_err(bad_request)?;
        let response = self
            .slot
            .handle()?
            .inspect(move |engine| {
                engine
                    .keyspace()
                    .range(id)
                    .ok()
                    .map(|r| range_response(engine, r))
            })
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("range {id} does not exist")))?;
        Ok(Response::new(response))
    }

    async fn nodes_list(
        &self,
        _request: Request<pb::NodesListRequest>,
    ) -> Result<Response<pb::NodesListResponse>, Status> {
        let nodes = self
            .slot
            .handle()?
            .inspect(|engine| {
                engine
                    .roster()
                    .nodes()
                    .map(|n| node_response(engine, n))
                    .collect()
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::NodesListResponse { nodes }))
    }

    async fn node(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        let id = NodeId::new(request.into_inner().node).map_err(bad_request)?;
        let response = self
            .slot
            .handle()?
            .inspect({
                let id = id.clone();
                move |engine| engine.roster().get(&id).map(|n| node_response(engine, n))
            })
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("node {id} is not known")))?;
        Ok(Response::new(response))
    }
}
