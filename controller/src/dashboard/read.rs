//! The GET endpoints: each calls one service method with the request
//! `rangerctl` would send and answers its reply as JSON (see [`super::views`]).

use axum::Json;
use axum::extract::{Path, State};
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::control_server::Control;
use ranger_proto::pb::ranger::debug_server::Debug;
use serde::Serialize;
use tonic::Request;

use super::Api;
use super::error::ApiError;
use super::history::LoadSample;
use super::input::path_id;
use super::views::{BalanceView, NodeView, OperationsView, RangeView};
use crate::service::SlotState;

/// `GET /api/status`: what this process is.
#[derive(Debug, Serialize)]
pub(super) struct StatusView {
    /// "leader" (also a controller without election), "standby" or
    /// "starting" (elected, loading the keyspace).
    role: &'static str,
    /// The leader's address, when this process is a standby that knows it.
    leader: Option<String>,
}

impl StatusView {
    /// What `slot` holds right now.
    pub(super) fn of(slot: &crate::service::ControllerSlot) -> Self {
        match slot.current() {
            SlotState::Running(_) => StatusView {
                role: "leader",
                leader: None,
            },
            SlotState::Standby { leader } => StatusView {
                role: "standby",
                leader,
            },
            SlotState::Starting => StatusView {
                role: "starting",
                leader: None,
            },
        }
    }
}

pub(super) async fn status(State(api): State<Api>) -> Json<StatusView> {
    Json(StatusView::of(&api.slot))
}

pub(super) async fn nodes(State(api): State<Api>) -> Result<Json<Vec<NodeView>>, ApiError> {
    let reply = api
        .debug
        .nodes_list(Request::new(pb::NodesListRequest {}))
        .await?
        .into_inner();
    Ok(Json(reply.nodes.iter().map(NodeView::from).collect()))
}

pub(super) async fn ranges(State(api): State<Api>) -> Result<Json<Vec<RangeView>>, ApiError> {
    let reply = api
        .debug
        .ranges_list(Request::new(pb::RangesListRequest {}))
        .await?
        .into_inner();
    Ok(Json(reply.ranges.iter().map(RangeView::from).collect()))
}

pub(super) async fn range(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<RangeView>, ApiError> {
    let range = path_id("range id", &id)?;
    let reply = api
        .debug
        .range(Request::new(pb::RangeRequest { range }))
        .await?
        .into_inner();
    Ok(Json(RangeView::from(&reply)))
}

/// `GET /api/ranges/{id}/explain`.
#[derive(Debug, Serialize)]
pub(super) struct ExplainView {
    range: u64,
    lines: Vec<String>,
}

pub(super) async fn explain(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<ExplainView>, ApiError> {
    let range = path_id("range id", &id)?;
    let reply = api
        .control
        .explain(Request::new(pb::ExplainRequest { range }))
        .await?
        .into_inner();
    Ok(Json(ExplainView {
        range,
        lines: reply.lines,
    }))
}

/// A range's state history: the controller events about it that this process
/// logged, newest first. The range is looked up first, so an unknown one is a
/// 404 and a standby answers 503 naming the leader, as for every read.
pub(super) async fn range_events(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<RangeEventsView>, ApiError> {
    let range = path_id("range id", &id)?;
    api.debug
        .range(Request::new(pb::RangeRequest { range }))
        .await?;
    Ok(Json(RangeEventsView {
        range,
        events: api.range_events(range),
    }))
}

/// `GET /api/ranges/{id}/events`.
#[derive(Debug, Serialize)]
pub(super) struct RangeEventsView {
    range: u64,
    events: Vec<super::LoggedEvent>,
}

pub(super) async fn operations(State(api): State<Api>) -> Result<Json<OperationsView>, ApiError> {
    let reply = api
        .control
        .operations(Request::new(pb::OperationsRequest {}))
        .await?
        .into_inner();
    Ok(Json(OperationsView::from(&reply)))
}

pub(super) async fn balance(State(api): State<Api>) -> Result<Json<BalanceView>, ApiError> {
    let reply = api
        .control
        .balance(Request::new(pb::BalanceRequest {}))
        .await?
        .into_inner();
    Ok(Json(BalanceView::from(&reply)))
}

/// `GET /api/history`: the load samples, oldest first.
#[derive(Debug, Serialize)]
pub(super) struct HistoryView {
    /// How often a sample is taken.
    interval_ms: u64,
    samples: Vec<LoadSample>,
}

pub(super) async fn history(State(api): State<Api>) -> Json<HistoryView> {
    let samples = api.history_snapshot();
    Json(HistoryView {
        interval_ms: crate::service::millis(api.config.sample_every),
        samples,
    })
}
