//! The live web dashboard `rangerd --http` serves: one page (HTML, JS and CSS
//! embedded in the binary, no build step) and the JSON API under `/api/` it
//! reads and acts through.
//!
//! Why the API calls the gRPC services rather than the controller handle: an
//! operator must get the same answer, with the same validation and the same
//! errors, whether they use `rangerctl` or the page. So every endpoint builds
//! the request message `rangerctl` would send and calls the same
//! [`DebugService`], [`ControlService`] or [`OrchestratorService`] method over
//! the same [`ControllerSlot`]; a standby therefore answers 503 naming the
//! leader, exactly as its gRPC side answers UNAVAILABLE.
//!
//! One file per job: [`assets`] (the embedded page), [`read`] (GET
//! endpoints), [`act`] (POST endpoints), [`input`] (request bodies and ids,
//! refused with 400 before anything is called), [`error`] (status to HTTP),
//! [`views`] (wire messages as JSON), [`events`] (the server-sent event
//! stream), [`history`] (the load samples behind the heatmap), [`event_log`]
//! (recent controller events, each range's state history).

mod act;
mod assets;
mod error;
mod event_log;
mod events;
mod history;
mod input;
mod read;
pub mod views;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::service::{ControlService, ControllerSlot, DebugService, OrchestratorService};

pub use error::ApiError;
pub use event_log::{EventLog, LoggedEvent};
pub use history::{LoadHistory, LoadSample, RangeLoad};

/// How the dashboard behaves; [`Default`] is what `rangerd` uses.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Longest a move, split or join request waits for its operation (as
    /// `rangerd --max-wait-s` for the gRPC calls).
    pub max_wait: Duration,
    /// How often the load history takes a sample.
    pub sample_every: Duration,
    /// How many samples the load history keeps.
    pub history_len: usize,
    /// How often the event stream tells the page to fetch the state again,
    /// on top of the controller's own events.
    pub refresh_every: Duration,
    /// How many controller events the range pages' state history keeps.
    pub event_log_len: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            max_wait: Duration::from_secs(120),
            sample_every: Duration::from_secs(5),
            history_len: 120,
            refresh_every: Duration::from_secs(3),
            event_log_len: 2000,
        }
    }
}

/// What every handler reaches: the three services over one slot, the load
/// history, and the server's stop signal (which ends event streams, so that
/// a graceful shutdown does not wait for open pages).
#[derive(Clone)]
pub(crate) struct Api {
    slot: ControllerSlot,
    debug: Arc<DebugService>,
    control: Arc<ControlService>,
    orchestrator: Arc<OrchestratorService>,
    history: Arc<Mutex<LoadHistory>>,
    event_log: Arc<Mutex<EventLog>>,
    stop: Shared<BoxFuture<'static, ()>>,
    config: DashboardConfig,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The dashboard's routes: the page at `/`, its assets, and `/api/...`.
///
/// Starts the load sampler, so call it inside a Tokio runtime; the sampler
/// ends when `stop` resolves or the router is dropped.
pub fn router(
    slot: ControllerSlot,
    config: DashboardConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Router {
    let stop = stop.boxed().shared();
    let api = Api {
        debug: Arc::new(DebugService::new(slot.clone())),
        control: Arc::new(ControlService::new(slot.clone())),
        orchestrator: Arc::new(OrchestratorService::new(slot.clone(), config.max_wait)),
        slot,
        history: Arc::new(Mutex::new(LoadHistory::new(config.history_len))),
        event_log: Arc::new(Mutex::new(EventLog::new(config.event_log_len))),
        stop,
        config,
    };
    history::spawn_sampler(&api);
    event_log::spawn_logger(&api);
    Router::new()
        .route("/", get(assets::index))
        .route("/dashboard/app.js", get(assets::script))
        .route("/dashboard/style.css", get(assets::style))
        .route("/api/status", get(read::status))
        .route("/api/nodes", get(read::nodes))
        .route("/api/ranges", get(read::ranges))
        .route("/api/ranges/{id}", get(read::range))
        .route("/api/ranges/{id}/explain", get(read::explain))
        .route("/api/ranges/{id}/events", get(read::range_events))
        .route("/api/operations", get(read::operations))
        .route("/api/balance", get(read::balance))
        .route("/api/history", get(read::history))
        .route("/api/events", get(events::stream))
        .route("/api/move", post(act::move_range))
        .route("/api/split", post(act::split))
        .route("/api/join", post(act::join))
        .route("/api/drain", post(act::drain))
        .route("/api/undrain", post(act::undrain))
        .route("/api/cancel", post(act::cancel))
        .route("/api/balance/pause", post(act::pause_balance))
        .route("/api/balance/resume", post(act::resume_balance))
        .route("/api/{*path}", any(error::not_found))
        .with_state(api)
}
