//! The dashboard's JSON API (`rangerd --http`, `/api/...`) over an
//! in-process controller with real rangelets: listings match what the gRPC
//! services answer, a POSTed move moves, bad input is a 400 that changes
//! nothing, a standby answers 503 naming the leader, the event stream carries
//! the controller's events, and the load history fills.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures::StreamExt;
use ranger_controller::config::Replication;
use ranger_controller::dashboard::{self, DashboardConfig};
use ranger_controller::service::{ControllerSlot, DebugService, SlotState};
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::debug_server::Debug;
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

fn config() -> DashboardConfig {
    DashboardConfig {
        max_wait: Duration::from_secs(30),
        sample_every: Duration::from_millis(500),
        history_len: 4,
        refresh_every: Duration::from_secs(1),
        event_log_len: 100,
    }
}

/// Two nodes, range 1 active on "a" (placed before "b" joined).
async fn two_nodes() -> Cluster {
    let mut cluster = Cluster::start(&["a"], Replication::R1).await;
    cluster.wait_active_on(id(1), &["a"]).await;
    cluster.add_node("b").await;
    let b = node_id("b");
    cluster
        .wait_for("b known", move |e| e.roster().get(&b).is_some())
        .await;
    cluster
}

fn api_for(slot: ControllerSlot) -> Router {
    dashboard::router(slot, config(), std::future::pending())
}

fn api(cluster: &Cluster) -> Router {
    api_for(ControllerSlot::fixed(cluster.handle.clone()))
}

/// Sends one request; answers the status and the body as JSON (or as a
/// string, for a body that is not JSON).
async fn call(router: &Router, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(router: &Router, path: &str) -> Value {
    let (status, body) = call(router, Method::GET, path, "").await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// (id, active nodes) of every range, as the Debug service lists them.
async fn services_view(cluster: &Cluster) -> Vec<(u64, String, Vec<String>)> {
    let debug = DebugService::new(cluster.handle.clone());
    let reply = debug
        .ranges_list(tonic::Request::new(pb::RangesListRequest {}))
        .await
        .unwrap()
        .into_inner();
    reply
        .ranges
        .iter()
        .map(|r| {
            let nodes = r
                .placements
                .iter()
                .filter_map(|p| p.placement.as_ref())
                .map(|p| {
                    let state = ranger_proto::PlacementState::try_from(p.state).unwrap();
                    format!("{}:{state}", p.node)
                })
                .collect();
            let state = ranger_proto::RangeState::try_from(r.state).unwrap();
            (r.meta.as_ref().unwrap().ident, state.to_string(), nodes)
        })
        .collect()
}

fn api_view(ranges: &Value) -> Vec<(u64, String, Vec<String>)> {
    ranges
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let nodes = r["placements"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    format!(
                        "{}:{}",
                        p["node"].as_str().unwrap(),
                        p["state"].as_str().unwrap()
                    )
                })
                .collect();
            (
                r["id"].as_u64().unwrap(),
                r["state"].as_str().unwrap().to_owned(),
                nodes,
            )
        })
        .collect()
}

/// Where range `id` is Active, per the API.
fn active_nodes(ranges: &Value, id: u64) -> Vec<String> {
    ranges
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["id"] == id)
        .flat_map(|r| r["placements"].as_array().unwrap().iter())
        .filter(|p| p["state"] == "Active")
        .map(|p| p["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_json_listings_match_what_the_services_answer() {
    let cluster = two_nodes().await;
    let router = api(&cluster);
    let (status, body) = call(
        &router,
        Method::POST,
        "/api/split",
        r#"{"range": "1", "key": "m", "node_left": "a", "node_right": "b"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cluster.wait_active_on(id(2), &["a"]).await;
    cluster.wait_active_on(id(3), &["b"]).await;

    let ranges = get(&router, "/api/ranges").await;
    assert_eq!(api_view(&ranges), services_view(&cluster).await);
    assert_eq!(ranges[1]["end_text"], "m");
    assert_eq!(ranges[2]["start_text"], "m");

    let nodes = get(&router, "/api/nodes").await;
    let mut listed: Vec<(String, Vec<u64>)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ranges = n["ranges"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_u64().unwrap())
                .collect();
            (n["id"].as_str().unwrap().to_owned(), ranges)
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [("a".to_owned(), vec![2]), ("b".to_owned(), vec![3])]
    );

    let range = get(&router, "/api/ranges/3").await;
    assert_eq!(active_nodes(&json!([range]), 3), ["b"]);
    let explain = get(&router, "/api/ranges/3/explain").await;
    assert!(
        !explain["lines"].as_array().unwrap().is_empty(),
        "{explain}"
    );

    let operations = get(&router, "/api/operations").await;
    assert_eq!(operations["in_flight"], json!([]));
    let recent = &operations["recent"][0];
    assert_eq!(recent["result"], "ok", "{operations}");
    assert_eq!(recent["description"], "split 1 at m", "{operations}");
    assert_eq!(recent["ranges"], json!([1]), "{operations}");

    let balance = get(&router, "/api/balance").await;
    assert_eq!(balance["mode"], "off", "{balance}");
    let status = get(&router, "/api/status").await;
    assert_eq!(status, json!({"role": "leader", "leader": null}));
}

#[tokio::test(start_paused = true)]
async fn a_posted_move_moves_the_range_and_is_listed_as_ended() {
    let cluster = two_nodes().await;
    let router = api(&cluster);
    // Let the event logger the router spawned subscribe to the controller's
    // events (one scheduling turn on this single-threaded runtime).
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }

    let (status, body) = call(
        &router,
        Method::POST,
        "/api/move",
        r#"{"range": 1, "node": "b"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cluster.wait_active_on(id(1), &["b"]).await;
    let ranges = get(&router, "/api/ranges").await;
    assert_eq!(active_nodes(&ranges, 1), ["b"]);

    let operations = get(&router, "/api/operations").await;
    let recent = &operations["recent"][0];
    assert_eq!(recent["result"], "ok", "{operations}");
    assert!(
        recent["description"].as_str().unwrap().contains("move"),
        "{operations}"
    );

    // The range's state history shows the move, newest first: the source
    // dropped after the destination became Active.
    let history = get(&router, "/api/ranges/1/events").await;
    let messages: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    let activated = messages
        .iter()
        .position(|m| m.contains("on b") && m.ends_with("-> Active"));
    let dropped = messages
        .iter()
        .position(|m| m.contains("on a") && m.ends_with("-> Dropped"));
    assert!(
        matches!((dropped, activated), (Some(d), Some(a)) if d < a),
        "{messages:#?}"
    );
    let (status, body) = call(&router, Method::GET, "/api/ranges/99/events", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Drain and undrain answer with the node's new state.
    let (status, body) = call(&router, Method::POST, "/api/drain", r#"{"node": "a"}"#).await;
    assert_eq!((status, &body["draining"]), (StatusCode::OK, &json!(true)));
    let (status, body) = call(&router, Method::POST, "/api/undrain", r#"{"node": "a"}"#).await;
    assert_eq!((status, &body["draining"]), (StatusCode::OK, &json!(false)));

    // The balancer pauses for the duration given, and resumes.
    let (status, body) = call(
        &router,
        Method::POST,
        "/api/balance/pause",
        r#"{"duration": "10m"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["paused_ms"].as_u64().unwrap() > 590_000, "{body}");
    let (status, body) = call(&router, Method::POST, "/api/balance/resume", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused_ms"], 0, "{body}");
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_with_400_and_changes_nothing() {
    let cluster = two_nodes().await;
    let router = api(&cluster);
    let before = services_view(&cluster).await;

    for (path, body, says) in [
        ("/api/move", r#"{"range": "one", "node": "b"}"#, "not an id"),
        ("/api/move", r#"{"range": -1}"#, "negative"),
        ("/api/move", r#"{"node": "b"}"#, "missing field `range`"),
        (
            "/api/move",
            r#"{"range": 1, "node": "b""#,
            "bad request body",
        ),
        ("/api/move", "", "needs a JSON body"),
        ("/api/move", r#"{"range": 0, "node": "b"}"#, "range"),
        ("/api/move", r#"{"range": 1, "nod": "b"}"#, "unknown field"),
        (
            "/api/split",
            r#"{"range": 1, "key": "hex:zz"}"#,
            "bad split key",
        ),
        (
            "/api/split",
            r#"{"range": 1, "key": ""}"#,
            "must not be empty",
        ),
        ("/api/join", r#"{"left": 1}"#, "missing field `right`"),
        ("/api/cancel", r#"{"operation": "x7"}"#, "not an id"),
        ("/api/drain", r#"{}"#, "missing field `node`"),
        (
            "/api/balance/pause",
            r#"{"duration": "soon"}"#,
            "bad duration",
        ),
        ("/api/balance/pause", r#"{"duration": "0s"}"#, ""),
    ] {
        let (status, answer) = call(&router, Method::POST, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{path} {body}: {error}");
    }
    for path in ["/api/ranges/x", "/api/ranges/1.5/explain", "/api/ranges/0"] {
        let (status, answer) = call(&router, Method::GET, path, "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    // Unknown things are 404, refused operations 409, as the services decide.
    let (status, _) = call(&router, Method::GET, "/api/ranges/99", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&router, Method::GET, "/api/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) = call(
        &router,
        Method::POST,
        "/api/move",
        r#"{"range": 1, "node": "zed"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let (status, answer) = call(
        &router,
        Method::POST,
        "/api/split",
        r#"{"range": 1, "key": "m", "node_left": "zed"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    assert_eq!(services_view(&cluster).await, before);
    let operations = get(&router, "/api/operations").await;
    assert_eq!(operations["in_flight"], json!([]));
}

#[tokio::test]
async fn a_standby_answers_503_naming_the_leader() {
    let (_tx, slot) = ControllerSlot::channel(SlotState::Standby {
        leader: Some("10.1.2.3:5000".to_owned()),
    });
    let router = api_for(slot);
    for (method, path, body) in [
        (Method::GET, "/api/nodes", ""),
        (Method::GET, "/api/ranges", ""),
        (Method::GET, "/api/operations", ""),
        (Method::POST, "/api/move", r#"{"range": 1}"#),
    ] {
        let (status, answer) = call(&router, method, path, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {answer}");
        assert_eq!(answer["leader"], "10.1.2.3:5000", "{path}: {answer}");
        assert_eq!(answer["code"], "Unavailable", "{path}: {answer}");
    }
    let status = get(&router, "/api/status").await;
    assert_eq!(
        status,
        json!({"role": "standby", "leader": "10.1.2.3:5000"})
    );
    // The page itself is served by a standby too.
    let (status, page) = call(&router, Method::GET, "/", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.as_str().unwrap().contains("/dashboard/app.js"));
}

/// Reads the event stream until an event of `kind` whose data contains
/// `needle` arrives; answers the text read.
async fn read_events_until(body: Body, kind: &str, needle: &str) -> String {
    let mut chunks = body.into_data_stream();
    let mut text = String::new();
    let wanted = |text: &str| {
        text.split("\n\n")
            .any(|event| event.contains(&format!("event: {kind}")) && event.contains(needle))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !wanted(&text) {
        let chunk = tokio::time::timeout_at(deadline, chunks.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} event with {needle:?}; read:\n{text}"))
            .unwrap_or_else(|| panic!("the stream ended; read:\n{text}"))
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_carries_controller_events_and_refreshes() {
    let cluster = two_nodes().await;
    let router = api(&cluster);
    let request = Request::get("/api/events").body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (status, body) = call(
        &router,
        Method::POST,
        "/api/move",
        r#"{"range": 1, "node": "b"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = read_events_until(response.into_body(), "change", "\"range\":1").await;
    assert!(text.contains("event: refresh"), "{text}");
}

#[tokio::test]
async fn a_standby_event_stream_says_so_and_ends_with_a_retry_hint() {
    let (_tx, slot) = ControllerSlot::channel(SlotState::Standby {
        leader: Some("10.1.2.3:5000".to_owned()),
    });
    let response = api_for(slot)
        .oneshot(Request::get("/api/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("event: unavailable"), "{text}");
    assert!(text.contains("10.1.2.3:5000"), "{text}");
    assert!(text.contains("retry: 1000"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_load_history_keeps_the_latest_samples_of_the_active_ranges() {
    let cluster = two_nodes().await;
    let router = api(&cluster);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let history = get(&router, "/api/history").await;
        let samples = history["samples"].as_array().unwrap();
        // config(): at most 4 samples.
        assert!(samples.len() <= 4, "{history}");
        if samples.len() == 4 && samples.iter().all(|s| s["ranges"][0]["id"] == 1) {
            assert_eq!(history["interval_ms"], 500);
            assert_eq!(samples[0]["ranges"][0]["start_text"], "-inf");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never filled: {history}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
