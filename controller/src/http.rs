//! `rangerd`'s HTTP side (`--http`): the Prometheus metrics at `/metrics` and the
//! dashboard. Both reach the controller the way the gRPC services do, through the
//! [`ControllerSlot`], so a standby serves them too and says who leads.

use axum::Router;
use ranger_process::metrics::{MetricsSource, metrics_router};

use crate::service::ControllerSlot;

/// Everything `rangerd` serves over HTTP.
pub fn router(slot: ControllerSlot, metrics: MetricsSource) -> Router {
    let _ = &slot;
    metrics_router(metrics)
}
