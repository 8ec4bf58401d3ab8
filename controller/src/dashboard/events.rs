//! `GET /api/events`: a server-sent event stream the page listens to, so it
//! updates without reloading.
//!
//! Why SSE and not a WebSocket: the traffic is one way, the browser's
//! `EventSource` reconnects on its own, and it is plain HTTP through axum.
//! The stream carries three kinds of event:
//!
//! - `change`: one controller event from `Control.Watch` (a placement
//!   transition, an operation starting or ending), `{"range", "message"}`;
//! - `refresh`: sent on connecting and every few seconds, `{"role",
//!   "leader"}`: load figures change without events, so the page fetches the
//!   state again on each;
//! - `unavailable`: this process cannot watch (a standby, a controller
//!   starting), with the error body the API answers; the stream then ends
//!   with a retry hint, and the browser reconnects and tries again, which is
//!   also how a page follows this process when it becomes leader.
//!
//! The stream also ends when the controller's events end (it stopped, or was
//! deposed) and when the server stops, so a graceful shutdown never waits for
//! an open page.

use std::convert::Infallible;
use std::future::ready;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::control_server::Control;
use serde::Serialize;
use tokio_stream::wrappers::IntervalStream;
use tonic::Request;

use super::Api;
use super::error::ApiError;
use super::read::StatusView;

fn event(kind: &str, data: &impl Serialize) -> Event {
    // Serialising these plain structs cannot fail; an empty event is harmless.
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(kind))
}

/// One controller event on the wire.
#[derive(Debug, Serialize)]
struct Change {
    range: u64,
    message: String,
}

fn refresh(api: &Api) -> Event {
    event("refresh", &StatusView::of(&api.slot))
}

/// The error body, as the API answers it, for a stream that cannot start.
#[derive(Debug, Serialize)]
struct Refusal {
    error: String,
    leader: Option<String>,
}

fn refusal(error: &ApiError) -> Event {
    event(
        "unavailable",
        &Refusal {
            error: error.to_string(),
            leader: error.leader(),
        },
    )
}

pub(super) async fn stream(State(api): State<Api>) -> impl IntoResponse {
    let watch = api
        .control
        .watch(Request::new(pb::WatchRequest { ranges: Vec::new() }))
        .await;
    let events: BoxStream<'static, Event> = match watch {
        Ok(reply) => live(&api, reply.into_inner()).boxed(),
        Err(status) => {
            let error = ApiError::from(status);
            stream::iter([refusal(&error).retry(api.config.refresh_every)]).boxed()
        }
    };
    let stop = api.stop.clone();
    Sse::new(events.take_until(stop).map(Ok::<Event, Infallible>)).keep_alive(KeepAlive::default())
}

/// A refresh now, then the controller's events and a refresh every few
/// seconds, until the controller's events end.
fn live(
    api: &Api,
    changes: impl Stream<Item = Result<pb::WatchEvent, tonic::Status>> + Send + 'static,
) -> impl Stream<Item = Event> + Send + 'static {
    let every = api.config.refresh_every;
    let changes = changes
        .map(|item| {
            Some(match item {
                Ok(change) => event(
                    "change",
                    &Change {
                        range: change.range,
                        message: change.message,
                    },
                ),
                Err(status) => refusal(&ApiError::from(status)),
            })
        })
        // The end of the controller's events ends the merged stream.
        .chain(stream::once(ready(None)));
    let ticks = {
        let api = api.clone();
        let start = tokio::time::Instant::now() + every;
        IntervalStream::new(tokio::time::interval_at(start, every))
            .map(move |_| Some(refresh(&api)))
    };
    stream::once(ready(refresh(api))).chain(
        stream::select(changes, ticks)
            .take_while(|event| ready(event.is_some()))
            .filter_map(ready),
    )
}
