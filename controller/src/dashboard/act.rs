//! The POST endpoints: operator actions. Each checks its body (see
//! [`super::input`]), then calls the service method `rangerctl` calls for
//! the same command. Move, split and join answer when the operation has
//! finished, as the gRPC calls do; the page watches its progress on the
//! event stream meanwhile.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::control_server::Control;
use ranger_proto::pb::ranger::orchestrator_server::Orchestrator;
use serde_json::{Value, json};
use tonic::Request;

use super::Api;
use super::error::ApiError;
use super::input::{
    CancelBody, JoinBody, MoveBody, NodeBody, PauseBody, SplitBody, body, optional_node,
};
use super::views::BalanceView;

type Answer = Result<Json<Value>, ApiError>;

pub(super) async fn move_range(State(api): State<Api>, bytes: Bytes) -> Answer {
    let input: MoveBody = body(&bytes)?;
    let node = optional_node(input.node);
    tracing::info!(range = input.range.0, node = %node, "dashboard: move");
    api.orchestrator
        .r#move(Request::new(pb::MoveRequest {
            range: input.range.0,
            node: node.clone(),
        }))
        .await?;
    Ok(Json(
        json!({"ok": true, "range": input.range.0, "node": node}),
    ))
}

pub(super) async fn split(State(api): State<Api>, bytes: Bytes) -> Answer {
    let input: SplitBody = body(&bytes)?;
    let boundary = input.boundary()?;
    tracing::info!(range = input.range.0, key = %input.key, "dashboard: split");
    api.orchestrator
        .split(Request::new(pb::SplitRequest {
            range: input.range.0,
            boundary,
            node_left: optional_node(input.node_left),
            node_right: optional_node(input.node_right),
        }))
        .await?;
    Ok(Json(
        json!({"ok": true, "range": input.range.0, "key": input.key}),
    ))
}

pub(super) async fn join(State(api): State<Api>, bytes: Bytes) -> Answer {
    let input: JoinBody = body(&bytes)?;
    tracing::info!(
        left = input.left.0,
        right = input.right.0,
        "dashboard: join"
    );
    api.orchestrator
        .join(Request::new(pb::JoinRequest {
            range_left: input.left.0,
            range_right: input.right.0,
            node: optional_node(input.node),
        }))
        .await?;
    Ok(Json(
        json!({"ok": true, "left": input.left.0, "right": input.right.0}),
    ))
}

async fn set_drain(api: &Api, bytes: &Bytes, drain: bool) -> Answer {
    let input: NodeBody = body(bytes)?;
    let node = input.node.trim().to_owned();
    tracing::info!(node = %node, drain, "dashboard: drain");
    api.control
        .drain(Request::new(pb::DrainRequest {
            node: node.clone(),
            drain,
        }))
        .await?;
    Ok(Json(json!({"ok": true, "node": node, "draining": drain})))
}

pub(super) async fn drain(State(api): State<Api>, bytes: Bytes) -> Answer {
    set_drain(&api, &bytes, true).await
}

pub(super) async fn undrain(State(api): State<Api>, bytes: Bytes) -> Answer {
    set_drain(&api, &bytes, false).await
}

pub(super) async fn cancel(State(api): State<Api>, bytes: Bytes) -> Answer {
    let input: CancelBody = body(&bytes)?;
    tracing::info!(operation = input.operation.0, "dashboard: cancel");
    api.control
        .cancel(Request::new(pb::CancelRequest {
            operation: input.operation.0,
        }))
        .await?;
    Ok(Json(json!({"ok": true, "operation": input.operation.0})))
}

pub(super) async fn pause_balance(
    State(api): State<Api>,
    bytes: Bytes,
) -> Result<Json<BalanceView>, ApiError> {
    let input: PauseBody = body(&bytes)?;
    let millis = input.millis()?;
    tracing::info!(millis, "dashboard: pause balancing");
    let reply = api
        .control
        .pause_balance(Request::new(pb::PauseBalanceRequest { millis }))
        .await?
        .into_inner();
    Ok(Json(BalanceView::from(&reply)))
}

pub(super) async fn resume_balance(State(api): State<Api>) -> Result<Json<BalanceView>, ApiError> {
    tracing::info!("dashboard: resume balancing");
    let reply = api
        .control
        .resume_balance(Request::new(pb::ResumeBalanceRequest {}))
        .await?
        .into_inner();
    Ok(Json(BalanceView::from(&reply)))
}
