//! `rangerd`'s HTTP side (`--http`): the Prometheus metrics at `/metrics` and the
//! dashboard (see [`crate::dashboard`]). Both reach the controller the way the
//! gRPC services do, through the [`ControllerSlot`], so a standby serves them
//! too and says who leads.

use axum::Router;
use ranger_process::metrics::{MetricsSource, metrics_router};

use crate::dashboard::{self, DashboardConfig};
use crate::service::ControllerSlot;

/// Everything `rangerd` serves over HTTP. `stop` is the server's shutdown
/// signal: it ends the dashboard's event streams and its load sampler, so a
/// graceful shutdown does not wait for open pages. Call inside a Tokio runtime.
pub fn router(
    slot: ControllerSlot,
    metrics: MetricsSource,
    dashboard: DashboardConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Router {
    metrics_router(metrics).merge(dashboard::router(slot, dashboard, stop))
}
