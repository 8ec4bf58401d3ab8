//! The rangelet over real gRPC on 127.0.0.1: method paths, status codes, the
//! failure extension, the `Ranges` stream, the routing table and health.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_node_sdk::testing::{Behaviour, ScriptedNode};
use ranger_node_sdk::{
    Command, FileStateStore, MemoryStateStore, NodeService, Rangelet, RangeletConfig,
    RoutingConfig, RoutingTable, StateStore,
};
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::node_client::NodeClient;
use ranger_proto::{RangeId, RangeMeta, RemoteState};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::codegen::http;
use tonic::transport::Channel;

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn wire_meta(n: u64, start: &str, end: &str) -> pb::RangeMeta {
    (&RangeMeta::new(id(n), start.into(), end.into()).unwrap()).into()
}

fn config() -> RangeletConfig {
    RangeletConfig {
        grace_period: Duration::from_millis(200),
        ..RangeletConfig::default()
    }
}

async fn open_rangelet(
    store: impl StateStore,
    config: RangeletConfig,
) -> (ScriptedNode, Rangelet<ScriptedNode>) {
    let node = ScriptedNode::new();
    let rangelet = Rangelet::open(node.clone(), store, config).await.unwrap();
    (node, rangelet)
}

/// Serves the rangelet (Node + health) on `listener` until it shuts down.
async fn serve(rangelet: &Rangelet<ScriptedNode>, listener: TcpListener) -> SocketAddr {
    ranger_node_sdk::testing::serve(rangelet, listener)
        .await
        .unwrap()
}

async fn client(addr: SocketAddr) -> NodeClient<Channel> {
    NodeClient::connect(format!("http://{addr}")).await.unwrap()
}

async fn prepare(client: &mut NodeClient<Channel>, n: u64, start: &str, end: &str) -> i32 {
    let response = client
        .prepare(pb::PrepareRequest {
            range: Some(wire_meta(n, start, end)),
            parents: vec![],
            term: 0,
        })
        .await
        .unwrap()
        .into_inner();
    response.range_info.unwrap().state
}

/// Records the path of every request a server receives.
#[derive(Clone)]
struct RecordPaths<S> {
    inner: S,
    paths: Arc<Mutex<Vec<String>>>,
}

impl<S, B> tower::Service<http::Request<B>> for RecordPaths<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.paths
            .lock()
            .unwrap()
            .push(request.uri().path().to_owned());
        self.inner.call(request)
    }
}

#[tokio::test]
async fn method_paths_match_the_reference() {
    let (_, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let paths = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&paths);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| RecordPaths {
            inner,
            paths: Arc::clone(&recorded),
        }))
        .add_service(NodeService::new(rangelet.clone()).into_server());
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));

    let mut c = client(addr).await;
    prepare(&mut c, 1, "", "").await;
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    c.deactivate(pb::DeactivateRequest { range: 1, term: 0 })
        .await
        .unwrap();
    c.drop(pb::DropRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    c.info(pb::InfoRequest::default()).await.unwrap();
    c.ranges(pb::RangesRequest {}).await.unwrap();
    assert_eq!(
        *paths.lock().unwrap(),
        vec![
            "/ranger.Node/Prepare",
            "/ranger.Node/Activate",
            "/ranger.Node/Deactivate",
            "/ranger.Node/Drop",
            "/ranger.Node/Info",
            "/ranger.Node/Ranges",
        ]
    );
}

#[tokio::test]
async fn status_codes_and_failure_extension() {
    let (node, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;

    // Zero and missing ids are INVALID_ARGUMENT.
    let zero = c
        .activate(pb::ActivateRequest {
            range: 0,
            force: false,
            term: 0,
        })
        .await;
    assert_eq!(zero.unwrap_err().code(), Code::InvalidArgument);
    let missing = c
        .prepare(pb::PrepareRequest {
            range: None,
            parents: vec![],
            term: 0,
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::InvalidArgument);
    // Unknown ranges: Activate/Deactivate INVALID_ARGUMENT; Drop succeeds NOT_FOUND.
    let unknown = c
        .activate(pb::ActivateRequest {
            range: 9,
            force: false,
            term: 0,
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::InvalidArgument);
    let unknown = c
        .deactivate(pb::DeactivateRequest { range: 9, term: 0 })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::InvalidArgument);
    let dropped = c
        .drop(pb::DropRequest {
            range: 9,
            force: false,
            term: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        dropped.into_inner().state,
        pb::RemoteState::RemoteNotFound as i32
    );

    // Wrong state: FAILED_PRECONDITION.
    assert_eq!(
        prepare(&mut c, 1, "", "").await,
        pb::RemoteState::RemoteInactive as i32
    );
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    let active_drop = c
        .drop(pb::DropRequest {
            range: 1,
            force: false,
            term: 0,
        })
        .await;
    assert_eq!(active_drop.unwrap_err().code(), Code::FailedPrecondition);

    // A failing callback: the rolled-back state as the reference sends it, plus
    // the failure extension.
    node.on(Command::Deactivate, Behaviour::Fail("disk on fire".into()));
    let failed = c
        .deactivate(pb::DeactivateRequest { range: 1, term: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.state, pb::RemoteState::RemoteActive as i32);
    assert_eq!(failed.failure.unwrap().message, "disk on fire");
    node.on(Command::Deactivate, Behaviour::Succeed);
    let ok = c
        .deactivate(pb::DeactivateRequest { range: 1, term: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.state, pb::RemoteState::RemoteInactive as i32);
    assert!(ok.failure.is_none());
}

/// Reads the stream until `want` messages arrived (or fails after 5 s).
async fn read_n(
    stream: &mut tonic::Streaming<pb::RangesResponse>,
    want: usize,
) -> Vec<(u64, RemoteState)> {
    let mut got = Vec::new();
    while got.len() < want {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("stream message in time")
            .unwrap()
            .expect("stream still open");
        let state = RemoteState::try_from(message.state).unwrap();
        got.push((message.meta.unwrap().ident, state));
    }
    got
}

#[tokio::test]
async fn ranges_stream_sends_snapshot_then_every_change_in_order() {
    let (_, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;
    prepare(&mut c, 1, "", "m").await;
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();

    let mut stream = c.ranges(pb::RangesRequest {}).await.unwrap().into_inner();
    assert_eq!(read_n(&mut stream, 1).await, vec![(1, RemoteState::Active)]);

    prepare(&mut c, 2, "m", "").await;
    c.deactivate(pb::DeactivateRequest { range: 1, term: 0 })
        .await
        .unwrap();
    c.drop(pb::DropRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        read_n(&mut stream, 6).await,
        vec![
            (2, RemoteState::Preparing),
            (2, RemoteState::Inactive),
            (1, RemoteState::Deactivating),
            (1, RemoteState::Inactive),
            (1, RemoteState::Dropping),
            (1, RemoteState::NotFound),
        ]
    );
}

#[tokio::test]
async fn a_stalled_subscriber_never_blocks_commands_and_converges_later() {
    // A tiny change buffer, so the stalled subscriber overflows it quickly.
    let small = RangeletConfig {
        change_buffer: 4,
        ..config()
    };
    let (_, rangelet) = open_rangelet(MemoryStateStore::new(), small).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;
    prepare(&mut c, 1000, "zz", "").await;

    // One subscriber that never reads, one that disconnects at once.
    let mut stalled = c.ranges(pb::RangesRequest {}).await.unwrap().into_inner();
    drop(c.ranges(pb::RangesRequest {}).await.unwrap());

    // Hundreds of changes go through without waiting for either subscriber.
    let start = std::time::Instant::now();
    for n in 1..=150u64 {
        let key = format!("k{n:04}");
        let end = format!("k{n:04}~");
        prepare(&mut c, n, &key, &end).await;
        if n % 3 == 0 {
            c.drop(pb::DropRequest {
                range: n,
                force: false,
                term: 0,
            })
            .await
            .unwrap();
        }
    }
    c.drop(pb::DropRequest {
        range: 1000,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "commands were not blocked"
    );

    // The stalled subscriber now reads; after lag resyncs it must agree with the
    // rangelet exactly, including the ranges that vanished meanwhile.
    let mut seen: HashMap<u64, RemoteState> = HashMap::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(500), stalled.message()).await {
            Err(_) => break, // Quiet: caught up.
            Ok(message) => {
                let message = message.unwrap().expect("open");
                let state = RemoteState::try_from(message.state).unwrap();
                let ident = message.meta.unwrap().ident;
                if state == RemoteState::NotFound {
                    seen.remove(&ident);
                } else {
                    seen.insert(ident, state);
                }
            }
        }
    }
    let truth: HashMap<u64, RemoteState> = rangelet
        .ranges()
        .into_iter()
        .map(|c| (c.meta.id().get(), c.state))
        .collect();
    assert_eq!(seen, truth);
    assert_eq!(truth.len(), 100);
}

async fn wait_for(table: &RoutingTable, what: &str, check: impl Fn(&RoutingTable) -> bool) {
    let mut changes = table.changes();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check(table) {
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(deadline) => panic!("timed out waiting for {what}: {:?}", table.snapshot()),
        }
    }
}

fn active_addr(table: &RoutingTable, key: &str) -> Option<String> {
    table.active_route(key.as_bytes()).map(|r| r.addr)
}

#[tokio::test]
async fn routing_table_follows_place_move_drop_and_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store_b = dir.path().join("b.json");
    let (_, a) = open_rangelet(MemoryStateStore::new(), config()).await;
    let (_, b) = open_rangelet(FileStateStore::open(&store_b).unwrap(), config()).await;
    let addr_a = serve(&a, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let addr_b = serve(&b, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let (sa, sb) = (addr_a.to_string(), addr_b.to_string());

    let table = RoutingTable::new(RoutingConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RoutingConfig::default()
    });
    table.set_nodes([sa.clone(), sb.clone()]);

    // Place range 1 on a.
    let (mut ca, mut cb) = (client(addr_a).await, client(addr_b).await);
    prepare(&mut ca, 1, "", "").await;
    ca.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    wait_for(&table, "a active", |t| {
        active_addr(t, "k") == Some(sa.clone())
    })
    .await;

    // Move it to b, in the controller's order.
    prepare(&mut cb, 1, "", "").await;
    ca.deactivate(pb::DeactivateRequest { range: 1, term: 0 })
        .await
        .unwrap();
    wait_for(&table, "no active during handoff", |t| {
        active_addr(t, "k").is_none()
    })
    .await;
    cb.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    ca.drop(pb::DropRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    wait_for(&table, "b active, a empty", |t| {
        active_addr(t, "k") == Some(sb.clone()) && t.snapshot().iter().all(|r| r.addr != sa)
    })
    .await;

    // Restart b on the same port: the table forgets b while it is down, then
    // learns its restored (Inactive) range, then sees it activated again.
    b.shutdown();
    wait_for(&table, "b forgotten", |t| t.snapshot().is_empty()).await;
    drop(b);
    let (_, b) = open_rangelet(FileStateStore::open(&store_b).unwrap(), config()).await;
    let listener = TcpListener::bind(addr_b).await.unwrap();
    serve(&b, listener).await;
    wait_for(&table, "b back, inactive", |t| {
        t.lookup(b"k", RemoteState::Inactive)
            .iter()
            .any(|r| r.addr == sb)
    })
    .await;
    let mut cb = client(addr_b).await;
    cb.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    wait_for(&table, "b active again", |t| {
        active_addr(t, "k") == Some(sb.clone())
    })
    .await;

    // Removing a node drops its entries at once.
    table.remove_node(&sb);
    assert!(active_addr(&table, "k").is_none());
}

#[tokio::test]
async fn health_service_reports_the_node() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (_, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "ranger.Node"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

// --- Leases over the wire (DESIGN.md §6, SCENARIOS.md #38) -----------------------------

fn info_request(lease_millis: u64) -> pb::InfoRequest {
    pb::InfoRequest {
        lease_millis,
        term: 0,
        groups: vec![],
    }
}

#[tokio::test]
async fn a_probe_with_lease_millis_zero_after_a_lapse_keeps_the_node_fenced() {
    let (_, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;
    prepare(&mut c, 1, "", "").await;
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    c.info(info_request(100)).await.unwrap();
    assert!(rangelet.may_write(id(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!rangelet.may_write(id(1)), "the 100 ms lease lapsed");
    // A controller whose probe failed grants nothing with the next ones.
    c.info(info_request(0)).await.unwrap();
    assert!(!rangelet.lease_valid());
    assert!(!rangelet.may_write(id(1)));
}

#[tokio::test]
async fn a_probe_granting_an_absurd_lease_is_answered_not_a_panic() {
    let (_, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;
    prepare(&mut c, 1, "", "").await;
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 0,
    })
    .await
    .unwrap();
    let answer = c.info(info_request(u64::MAX)).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(rangelet.may_write(id(1)));
}

// --- Controller terms (DESIGN.md §6, SCENARIOS.md #43) ---------------------------------

#[track_caller]
fn assert_stale_term(answer: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    let status = answer.expect_err(what);
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{what}: {status:?}"
    );
    assert!(
        status.message().starts_with("stale controller term"),
        "{what}: {}",
        status.message()
    );
}

#[tokio::test]
async fn commands_and_probes_from_an_older_controller_term_are_refused_as_stale() {
    let (node, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;
    // The new leader (term 5) places range 1; the deposed one (term 4) is late.
    c.prepare(pb::PrepareRequest {
        range: Some(wire_meta(1, "", "")),
        parents: vec![],
        term: 5,
    })
    .await
    .unwrap();
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 5,
    })
    .await
    .unwrap();

    assert_stale_term(
        c.prepare(pb::PrepareRequest {
            range: Some(wire_meta(2, "", "")),
            parents: vec![],
            term: 4,
        })
        .await,
        "prepare",
    );
    assert_stale_term(
        c.activate(pb::ActivateRequest {
            range: 1,
            force: false,
            term: 4,
        })
        .await,
        "activate",
    );
    assert_stale_term(
        c.deactivate(pb::DeactivateRequest { range: 1, term: 4 })
            .await,
        "deactivate",
    );
    assert_stale_term(
        c.drop(pb::DropRequest {
            range: 1,
            force: true,
            term: 4,
        })
        .await,
        "drop",
    );
    assert_stale_term(
        c.info(pb::InfoRequest {
            lease_millis: 60_000,
            term: 4,
            groups: vec![],
        })
        .await,
        "info",
    );
    // None of them reached the storage system or granted a lease.
    assert_eq!(node.count(Command::Prepare, id(2)), 0);
    assert_eq!(node.count(Command::Deactivate, id(1)), 0);
    assert_eq!(node.count(Command::Drop, id(1)), 0);
    assert_eq!(rangelet.state(id(1)), RemoteState::Active);
    assert!(rangelet.may_write(id(1)));

    // The same term, a newer one, and no term (the reference) are all accepted.
    c.info(info_request(0)).await.unwrap();
    c.deactivate(pb::DeactivateRequest { range: 1, term: 5 })
        .await
        .unwrap();
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 6,
    })
    .await
    .unwrap();
    c.deactivate(pb::DeactivateRequest { range: 1, term: 0 })
        .await
        .unwrap();
    assert_stale_term(
        c.info(pb::InfoRequest {
            lease_millis: 0,
            term: 5,
            groups: vec![],
        })
        .await,
        "info after term 6",
    );
}

// --- Replica groups on probes (InfoRequest.groups, our extension) ----------------------

fn wire_group(range: u64, epoch: u64, primary: &str, members: &[&str]) -> pb::ReplicaGroup {
    pb::ReplicaGroup {
        range,
        epoch,
        primary: primary.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    }
}

#[tokio::test]
async fn a_probes_replica_groups_reach_the_node_unless_its_term_is_stale_or_a_group_is_malformed() {
    let (node, rangelet) = open_rangelet(MemoryStateStore::new(), config()).await;
    let addr = serve(&rangelet, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let mut c = client(addr).await;
    prepare(&mut c, 1, "", "").await;
    c.activate(pb::ActivateRequest {
        range: 1,
        force: false,
        term: 5,
    })
    .await
    .unwrap();

    // Term 5's groups arrive, as domain values (members sorted, primary set),
    // with a short lease.
    c.info(pb::InfoRequest {
        lease_millis: 200,
        term: 5,
        groups: vec![
            wire_group(1, 5 << 32, "b:1", &["c:1", "b:1"]),
            wire_group(2, (5 << 32) | 1, "", &["b:1"]),
        ],
    })
    .await
    .unwrap();
    assert_eq!(node.group_deliveries(), 1);
    let one = node.received_group(id(1)).unwrap();
    assert_eq!(
        (one.epoch, one.primary.as_deref(), one.members.as_slice()),
        (
            5 << 32,
            Some("b:1"),
            ["b:1".to_owned(), "c:1".to_owned()].as_slice()
        )
    );
    assert_eq!(node.received_group(id(2)).unwrap().primary, None);

    // A deposed controller's groups never arrive.
    assert_stale_term(
        c.info(pb::InfoRequest {
            lease_millis: 0,
            term: 4,
            groups: vec![wire_group(1, 4 << 32, "", &["a:1"])],
        })
        .await,
        "info with groups from term 4",
    );
    assert_eq!(node.group_deliveries(), 1);

    // A primary that is not a member refuses the whole probe: no group
    // delivered (not even the good one beside it), and its long lease is not
    // granted, so the short one lapses.
    let malformed = c
        .info(pb::InfoRequest {
            lease_millis: 60_000,
            term: 5,
            groups: vec![
                wire_group(2, (5 << 32) | 2, "b:1", &["b:1"]),
                wire_group(1, (5 << 32) | 3, "a:1", &["b:1"]),
            ],
        })
        .await;
    let status = malformed.expect_err("a malformed group");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not a member"), "{status:?}");
    assert_eq!(node.group_deliveries(), 1);
    assert_eq!(node.received_group(id(1)).unwrap(), one);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !rangelet.lease_valid(),
        "the refused probe granted no lease"
    );
    assert!(!rangelet.may_write(id(1)));
}
