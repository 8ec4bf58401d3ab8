//! The routing proxy against in-test nodes that look real to it: each node is a
//! rangelet (serving `ranger.Node`, so the proxy's routing table follows it) plus
//! a `kv.KV` fake over a map that refuses keys its rangelet does not serve, like a
//! real KV node. Ranges are driven directly on the rangelets; no controller runs,
//! except a tiny `ranger.Debug` stand-in for node discovery.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ranger_kv::pb::{self as kv, kv_client::KvClient, kv_server::Kv, kv_server::KvServer};
use ranger_kv::proxy::{BatchConfig, ControllerConfig, Proxy, ProxyConfig, RetryPolicy};
use ranger_node_sdk::testing::ScriptedNode;
use ranger_node_sdk::{MemoryStateStore, Rangelet, RangeletConfig, node_router};
use ranger_proto::pb::ranger as pb;
use ranger_proto::{RangeId, RangeMeta, RemoteState};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

type Data = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

// ---------------------------------------------------------------------------
// A fake KV node.
// ---------------------------------------------------------------------------

/// `kv.KV` over a map, answering only for keys its rangelet serves (Active).
#[derive(Clone)]
struct FakeKv {
    rangelet: Rangelet<ScriptedNode>,
    data: Data,
    calls: Calls,
}

/// What a fake node was asked, to see how the proxy sent it.
#[derive(Clone, Default)]
struct Calls {
    /// `Batch` calls that reached the node (answered or not yet).
    batch_calls: Arc<std::sync::atomic::AtomicUsize>,
    /// The number of ops in each `Batch` the node served.
    batches: Arc<Mutex<Vec<usize>>>,
    /// Single Get, Put and Delete calls.
    singles: Arc<std::sync::atomic::AtomicUsize>,
    /// Answer `Batch` with UNIMPLEMENTED, like the Go reference's node.
    no_batch: Arc<AtomicBool>,
    /// Answer a `Batch` of more than one op OUT_OF_RANGE, as a node whose
    /// answer would exceed its message limit does.
    refuse_big_batches: Arc<AtomicBool>,
    /// While set, a `Batch` waits before it is served, so that requests pile
    /// up in the proxy.
    hold_batches: Arc<tokio::sync::RwLock<()>>,
    /// Refuse every key FAILED_PRECONDITION, as a member of a replicated range
    /// that is not its primary does (and count the refusals).
    not_primary: Arc<AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeKv {
    fn check(&self, key: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("empty key"));
        }
        if self.calls.not_primary.load(Ordering::SeqCst) {
            self.calls.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Status::failed_precondition(
                "range 1 is replicated and served by its primary",
            ));
        }
        self.rangelet
            .serving_range(key.as_bytes())
            .map(|_| ())
            .map_err(|e| Status::failed_precondition(e.to_string()))
    }
}

#[tonic::async_trait]
impl Kv for FakeKv {
    async fn get(
        &self,
        request: Request<kv::GetRequest>,
    ) -> Result<Response<kv::GetResponse>, Status> {
        self.calls.singles.fetch_add(1, Ordering::SeqCst);
        let key = request.into_inner().key;
        self.check(&key)?;
        let value = self.data.lock().unwrap().get(&key).cloned();
        value
            .map(|value| Response::new(kv::GetResponse { value }))
            .ok_or_else(|| Status::not_found(format!("no key {key}")))
    }

    async fn put(
        &self,
        request: Request<kv::PutRequest>,
    ) -> Result<Response<kv::PutResponse>, Status> {
        self.calls.singles.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        self.check(&request.key)?;
        self.data.lock().unwrap().insert(request.key, request.value);
        Ok(Response::new(kv::PutResponse {}))
    }

    async fn dump(
        &self,
        request: Request<kv::DumpRequest>,
    ) -> Result<Response<kv::DumpResponse>, Status> {
        let id = request.into_inner().range_ident;
        let Some(range) = self
            .rangelet
            .ranges()
            .into_iter()
            .find(|r| r.meta.id().get() == id)
        else {
            return Err(Status::not_found(format!("no range {id}")));
        };
        let pairs = self
            .data
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| range.meta.contains(k.as_bytes()))
            .map(|(key, value)| kv::Pair {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        Ok(Response::new(kv::DumpResponse { pairs }))
    }

    async fn delete(
        &self,
        request: Request<kv::DeleteRequest>,
    ) -> Result<Response<kv::DeleteResponse>, Status> {
        self.calls.singles.fetch_add(1, Ordering::SeqCst);
        let key = request.into_inner().key;
        self.check(&key)?;
        self.data.lock().unwrap().remove(&key);
        Ok(Response::new(kv::DeleteResponse {}))
    }

    /// Each op answered as its single call would be, like a real node.
    async fn batch(
        &self,
        request: Request<kv::BatchRequest>,
    ) -> Result<Response<kv::BatchResponse>, Status> {
        self.calls.batch_calls.fetch_add(1, Ordering::SeqCst);
        if self.calls.no_batch.load(Ordering::SeqCst) {
            return Err(Status::unimplemented("no Batch here"));
        }
        let _held = self.calls.hold_batches.read().await;
        let ops = request.into_inner().ops;
        if ops.len() > 1 && self.calls.refuse_big_batches.load(Ordering::SeqCst) {
            // What tonic's codec says when an answer exceeds its limit.
            return Err(Status::out_of_range(
                "Error, encoded message length too large: found 70000000 bytes, the limit is: 67108864 bytes",
            ));
        }
        self.calls.batches.lock().unwrap().push(ops.len());
        let mut results = Vec::new();
        for op in ops {
            let answer = match op.op {
                Some(kv::batch_op::Op::Get(get)) => {
                    let key = get.key;
                    self.check(&key).and_then(|()| {
                        self.data
                            .lock()
                            .unwrap()
                            .get(&key)
                            .cloned()
                            .ok_or_else(|| Status::not_found(format!("no key {key}")))
                    })
                }
                Some(kv::batch_op::Op::Put(put)) => self.check(&put.key).map(|()| {
                    self.data.lock().unwrap().insert(put.key, put.value);
                    Vec::new()
                }),
                Some(kv::batch_op::Op::Delete(delete)) => self.check(&delete.key).map(|()| {
                    self.data.lock().unwrap().remove(&delete.key);
                    Vec::new()
                }),
                None => Err(Status::invalid_argument("empty op")),
            };
            results.push(match answer {
                Ok(value) => kv::BatchResult {
                    code: 0,
                    message: String::new(),
                    value,
                },
                Err(status) => kv::BatchResult {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    value: Vec::new(),
                },
            });
        }
        Ok(Response::new(kv::BatchResponse { results }))
    }

    /// Stops at the end of the range holding `start`, like a real node.
    async fn scan(
        &self,
        request: Request<kv::ScanRequest>,
    ) -> Result<Response<kv::ScanResponse>, Status> {
        let request = request.into_inner();
        let id = self
            .rangelet
            .serving_range(request.start.as_bytes())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let meta = self
            .rangelet
            .ranges()
            .into_iter()
            .find(|r| r.meta.id() == id)
            .unwrap()
            .meta;
        let range_end = String::from_utf8(meta.end().as_bytes().to_vec()).unwrap();
        let pairs = self
            .data
            .lock()
            .unwrap()
            .range(request.start.clone()..)
            .take_while(|(k, _)| meta.contains(k.as_bytes()))
            .take_while(|(k, _)| request.end.is_empty() || **k < request.end)
            .map(|(key, value)| kv::Pair {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        let next = if request.end.is_empty() || range_end < request.end {
            range_end
        } else {
            String::new()
        };
        Ok(Response::new(kv::ScanResponse { pairs, next }))
    }

    type SnapshotStream = tokio_stream::Empty<Result<kv::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _request: Request<kv::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DeltaStream = tokio_stream::Empty<Result<kv::DeltaChunk, Status>>;

    async fn delta(
        &self,
        _request: Request<kv::DeltaRequest>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn end_transfer(
        &self,
        _request: Request<kv::EndTransferRequest>,
    ) -> Result<Response<kv::EndTransferResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn replicate(
        &self,
        _request: Request<kv::ReplicateRequest>,
    ) -> Result<Response<kv::ReplicateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn take_over(
        &self,
        _request: Request<kv::TakeOverRequest>,
    ) -> Result<Response<kv::TakeOverResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A running fake node: its address, its rangelet (to drive ranges) and its data.
struct TestNode {
    addr: String,
    rangelet: Rangelet<ScriptedNode>,
    data: Data,
    calls: Calls,
}

impl TestNode {
    async fn start() -> TestNode {
        let rangelet = Rangelet::open(
            ScriptedNode::new(),
            MemoryStateStore::new(),
            RangeletConfig::default(),
        )
        .await
        .unwrap();
        let data = Data::default();
        let calls = Calls::default();
        let fake = FakeKv {
            rangelet: rangelet.clone(),
            data: Arc::clone(&data),
            calls: calls.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let router = node_router(&rangelet)
            .await
            .add_service(KvServer::new(fake));
        tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            rangelet.shutdown_signal(),
        ));
        TestNode {
            addr,
            rangelet,
            data,
            calls,
        }
    }

    /// Places `meta` here and makes it Active.
    async fn serve(&self, meta: RangeMeta) {
        let id = meta.id();
        self.rangelet.prepare(meta, vec![]).await.unwrap();
        self.rangelet.activate(id).await.unwrap();
        assert_eq!(self.rangelet.state(id), RemoteState::Active);
    }

    fn keys(&self) -> Vec<String> {
        self.data.lock().unwrap().keys().cloned().collect()
    }

    fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.data.lock().unwrap().get(key).cloned()
    }
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn meta(n: u64, start: &str, end: &str) -> RangeMeta {
    RangeMeta::new(id(n), start.into(), end.into()).unwrap()
}

fn config(deadline: Duration) -> ProxyConfig {
    ProxyConfig {
        retry: RetryPolicy {
            deadline,
            ..RetryPolicy::default()
        },
        ..ProxyConfig::default()
    }
}

/// Serves the proxy on 127.0.0.1 and returns a client of it.
async fn serve_proxy(proxy: &Proxy) -> KvClient<Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = proxy.clone();
    tokio::spawn(async move { proxy.serve(listener, std::future::pending()).await });
    KvClient::connect(format!("http://{addr}")).await.unwrap()
}

async fn put(client: &mut KvClient<Channel>, key: &str, value: &[u8]) -> Result<(), Status> {
    client
        .put(kv::PutRequest {
            key: key.to_owned(),
            value: value.to_vec(),
        })
        .await
        .map(|_| ())
}

async fn get(client: &mut KvClient<Channel>, key: &str) -> Result<Vec<u8>, Status> {
    client
        .get(kv::GetRequest {
            key: key.to_owned(),
        })
        .await
        .map(|r| r.into_inner().value)
}

/// Two nodes, range 1 `[-inf, m)` Active on A and range 2 `[m, +inf)` on B.
async fn split_cluster() -> (TestNode, TestNode) {
    let a = TestNode::start().await;
    let b = TestNode::start().await;
    a.serve(meta(1, "", "m")).await;
    b.serve(meta(2, "m", "")).await;
    (a, b)
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn routes_each_key_to_the_node_serving_it() {
    let (a, b) = split_cluster().await;
    let proxy = Proxy::new(config(Duration::from_secs(5)));
    proxy.set_nodes([a.addr.clone(), b.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;

    // The first requests may arrive before the routing table has heard from the
    // nodes: the proxy waits for it rather than failing.
    for key in ["apple", "avocado", "lemon", "mango", "zebra", "zucchini"] {
        put(&mut client, key, key.as_bytes()).await.unwrap();
    }
    assert_eq!(a.keys(), ["apple", "avocado", "lemon"]);
    assert_eq!(b.keys(), ["mango", "zebra", "zucchini"]);
    assert_eq!(get(&mut client, "zebra").await.unwrap(), b"zebra");
    assert_eq!(get(&mut client, "apple").await.unwrap(), b"apple");

    client
        .delete(kv::DeleteRequest {
            key: "zebra".into(),
        })
        .await
        .unwrap();
    assert_eq!(b.keys(), ["mango", "zucchini"]);

    // Scan goes to the node holding `start`, which stops at its range's end.
    let scan = client
        .scan(kv::ScanRequest {
            start: "b".into(),
            end: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = scan.pairs.iter().map(|p| p.key.as_str()).collect();
    assert_eq!((keys, scan.next.as_str()), (vec!["lemon"], "m"));

    // Dump goes by range id to the node holding it.
    let dump = client
        .dump(kv::DumpRequest { range_ident: 2 })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = dump.pairs.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["mango", "zucchini"]);
}

#[tokio::test]
async fn node_verdicts_pass_through_and_bad_requests_fail_fast() {
    let (a, b) = split_cluster().await;
    let proxy = Proxy::new(config(Duration::from_secs(5)));
    proxy.set_nodes([a.addr.clone(), b.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;
    put(&mut client, "apple", b"1").await.unwrap();

    let started = Instant::now();
    assert_eq!(
        get(&mut client, "absent").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        get(&mut client, "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        put(&mut client, "", b"x").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let dump = client
        .dump(kv::DumpRequest { range_ident: 99 })
        .await
        .unwrap_err();
    assert_eq!(dump.code(), Code::NotFound);
    let snapshot = client
        .snapshot(kv::SnapshotRequest {
            source_range: 1,
            start: vec![],
            end: vec![],
            packed: true,
        })
        .await
        .unwrap_err();
    assert_eq!(snapshot.code(), Code::Unimplemented);
    // None of these was retried until the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.keys(), ["apple"]);
}

#[tokio::test]
async fn clients_see_no_error_while_a_range_moves() {
    let a = TestNode::start().await;
    let b = TestNode::start().await;
    let range = meta(1, "", "m");
    a.serve(range.clone()).await;
    let proxy = Proxy::new(config(Duration::from_secs(5)));
    proxy.set_nodes([a.addr.clone(), b.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;
    put(&mut client, "a-warmup", b"0").await.unwrap();

    // A client writing and reading back as fast as it can, remembering the last
    // value acknowledged per key, every error, and its slowest request.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = Arc::clone(&stop);
        let mut client = client.clone();
        async move {
            let mut acked = BTreeMap::new();
            let mut errors = Vec::new();
            let mut slowest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("a{:02}", i % 16);
                let value = i.to_be_bytes().to_vec();
                let started = Instant::now();
                match put(&mut client, &key, &value).await {
                    Ok(()) => {
                        acked.insert(key.clone(), value.clone());
                    }
                    Err(e) => errors.push(format!("put {key}: {e}")),
                }
                match get(&mut client, &key).await {
                    Ok(read) if read == value => {}
                    Ok(read) => errors.push(format!("get {key}: {read:?}, wanted {value:?}")),
                    Err(e) => errors.push(format!("get {key}: {e}")),
                }
                slowest = slowest.max(started.elapsed());
                i += 1;
            }
            (acked, errors, slowest, i)
        }
    });

    // Move range 1 from A to B, as the controller would, with a gap in which
    // nobody serves it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.rangelet.prepare(range.clone(), vec![]).await.unwrap();
    a.rangelet.deactivate(id(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The state transfer: A is Inactive, so its data is final.
    let copied = a.data.lock().unwrap().clone();
    b.data.lock().unwrap().extend(copied);
    b.rangelet.activate(id(1)).await.unwrap();
    a.rangelet.drop_range(id(1), false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, errors, slowest, rounds) = writer.await.unwrap();

    assert!(errors.is_empty(), "client saw errors: {errors:?}");
    assert!(rounds > 20, "the client barely ran: {rounds} rounds");
    // Some request waited through the gap: the proxy retried, it did not get lucky.
    assert!(
        slowest >= Duration::from_millis(150),
        "slowest request: {slowest:?}"
    );
    // Every acknowledged write is on B now, with its last value.
    for (key, value) in &acked {
        assert_eq!(b.value(key).as_ref(), Some(value), "key {key}");
    }
    assert_eq!(b.rangelet.state(id(1)), RemoteState::Active);
    assert_eq!(a.rangelet.state(id(1)), RemoteState::NotFound);
}

#[tokio::test]
async fn with_several_active_copies_requests_go_to_the_one_that_serves_after_one_refusal() {
    // A replicated range: both copies report it Active, only the primary
    // serves clients. The member is the one the proxy would try first.
    let mut nodes = [TestNode::start().await, TestNode::start().await];
    nodes.sort_by(|x, y| x.addr.cmp(&y.addr));
    let [member, primary] = nodes;
    member.serve(meta(1, "", "")).await;
    primary.serve(meta(1, "", "")).await;
    member.calls.not_primary.store(true, Ordering::SeqCst);
    let proxy = Proxy::new(config(Duration::from_secs(5)));
    proxy.set_nodes([member.addr.clone(), primary.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;
    for i in 0..20 {
        let key = format!("k{i:02}");
        put(&mut client, &key, key.as_bytes()).await.unwrap();
        assert_eq!(get(&mut client, &key).await.unwrap(), key.as_bytes());
    }
    assert_eq!(primary.keys().len(), 20);
    // Once: the first request; the proxy then goes where the range was served.
    assert_eq!(member.calls.refused.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_key_nobody_serves_fails_after_the_deadline_naming_it() {
    let a = TestNode::start().await;
    a.serve(meta(1, "", "m")).await;
    let deadline = Duration::from_millis(300);
    let proxy = Proxy::new(config(deadline));
    proxy.set_nodes([a.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;
    put(&mut client, "apple", b"1").await.unwrap();

    let started = Instant::now();
    let error = get(&mut client, "zebra").await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("zebra"), "{}", error.message());
    assert!(
        error.message().contains("no node reports an Active range"),
        "{}",
        error.message()
    );
    assert!(
        elapsed >= deadline && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );

    // A range that is held but not Active (mid-move): a write waits, then fails the same way.
    a.rangelet.deactivate(id(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let error = put(&mut client, "apple", b"2").await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("apple"), "{}", error.message());
    assert_eq!(a.value("apple").unwrap(), b"1");
}

// ---------------------------------------------------------------------------
// Discovery from a controller.
// ---------------------------------------------------------------------------

/// A controller's Debug service that only lists nodes.
#[derive(Clone, Default)]
struct FakeController {
    nodes: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl pb::debug_server::Debug for FakeController {
    async fn ranges_list(
        &self,
        _request: Request<pb::RangesListRequest>,
    ) -> Result<Response<pb::RangesListResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn range(
        &self,
        _request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }

    async fn nodes_list(
        &self,
        _request: Request<pb::NodesListRequest>,
    ) -> Result<Response<pb::NodesListResponse>, Status> {
        let nodes = self
            .nodes
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, address)| pb::NodeResponse {
                node: Some(pb::NodeMeta {
                    ident: format!("node-{i}"),
                    address: address.clone(),
                    want_drain: false,
                }),
                ranges: vec![],
                capacity: 1.0,
            })
            .collect();
        Ok(Response::new(pb::NodesListResponse { nodes }))
    }

    async fn node(
        &self,
        _request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeResponse>, Status> {
        Err(Status::unimplemented("fake controller"))
    }
}

/// Serves the fake controller until `stop` fires.
async fn serve_controller(
    controller: FakeController,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(pb::debug_server::DebugServer::new(controller));
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop.await;
            })
            .await
            .unwrap();
    });
    (addr, task)
}

#[tokio::test]
async fn learns_nodes_from_the_controller_and_keeps_them_when_it_goes_away() {
    let (a, b) = split_cluster().await;
    let controller = FakeController::default();
    controller.nodes.lock().unwrap().push(a.addr.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (controller_addr, controller_task) = serve_controller(controller.clone(), stop_rx).await;

    let proxy = Proxy::new(config(Duration::from_secs(5)));
    let _discovery = proxy
        .follow_controller(ControllerConfig {
            poll_interval: Duration::from_millis(50),
            ..ControllerConfig::new(controller_addr.to_string())
        })
        .unwrap();
    let mut client = serve_proxy(&proxy).await;

    // Only A is listed: its keys route, B's wait.
    put(&mut client, "apple", b"1").await.unwrap();
    assert_eq!(a.keys(), ["apple"]);
    // The controller learns of B: the proxy follows.
    controller.nodes.lock().unwrap().push(b.addr.clone());
    put(&mut client, "zebra", b"2").await.unwrap();
    assert_eq!(b.keys(), ["zebra"]);

    // The controller goes away: the proxy keeps the nodes it knew.
    stop_tx.send(()).unwrap();
    controller_task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&mut client, "apple").await.unwrap(), b"1");
    assert_eq!(get(&mut client, "zebra").await.unwrap(), b"2");
    let mut nodes: Vec<String> = proxy
        .routing()
        .snapshot()
        .into_iter()
        .map(|r| r.addr)
        .collect();
    nodes.sort();
    let mut expected = vec![a.addr.clone(), b.addr.clone()];
    expected.sort();
    assert_eq!(nodes, expected);
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A proxy with `batch` and request deadline `deadline` in front of `a` and
/// `b`, served, with a client of it that has made one write to `a` (so the
/// routes are known).
async fn batching_proxy_with(
    a: &TestNode,
    b: &TestNode,
    batch: BatchConfig,
    deadline: Duration,
) -> (Proxy, KvClient<Channel>) {
    let proxy = Proxy::new(ProxyConfig {
        batch,
        ..config(deadline)
    });
    proxy.set_nodes([a.addr.clone(), b.addr.clone()]);
    let client = serve_proxy(&proxy).await;
    put(&mut client.clone(), "a-warm-up", b"0").await.unwrap();
    (proxy, client)
}

/// [`batching_proxy_with`] a deadline far longer than any wait of the tests
/// that hold batches at a node (so a slow machine cannot time them out).
async fn batching_proxy(
    a: &TestNode,
    b: &TestNode,
    batch: BatchConfig,
) -> (Proxy, KvClient<Channel>) {
    batching_proxy_with(a, b, batch, Duration::from_secs(60)).await
}

#[tokio::test]
async fn requests_that_arrive_while_a_batch_is_out_travel_together_each_with_its_own_answer() {
    let (a, b) = split_cluster().await;
    a.data
        .lock()
        .unwrap()
        .insert("apple".to_owned(), b"1".to_vec());
    let batch = BatchConfig {
        max_ops: 64,
        in_flight: 1,
        ..BatchConfig::default()
    };
    let (proxy, client) = batching_proxy(&a, &b, batch).await;

    // Node A holds every batch it gets: one read and one write go out and wait
    // there, so what comes next queues in the proxy.
    let held = a.calls.hold_batches.write().await;
    let first_read = tokio::spawn(get_owned(client.clone(), "apple"));
    let first_write = tokio::spawn(put_owned(client.clone(), "avocado", b"0"));
    eventually("both lanes' first batches reached the node", || {
        a.calls.batch_calls.load(Ordering::SeqCst) == 3
    })
    .await;
    let apple = tokio::spawn(get_owned(client.clone(), "apple"));
    let absent = tokio::spawn(get_owned(client.clone(), "absent"));
    let banana = tokio::spawn(put_owned(client.clone(), "banana", b"2"));
    let cherry = tokio::spawn(put_owned(client.clone(), "cherry", b"3"));
    eventually("four requests queued", || proxy.queued_for_batches() == 4).await;
    drop(held);

    assert_eq!(first_read.await.unwrap().unwrap(), b"1");
    first_write.await.unwrap().unwrap();
    assert_eq!(apple.await.unwrap().unwrap(), b"1");
    assert_eq!(absent.await.unwrap().unwrap_err().code(), Code::NotFound);
    banana.await.unwrap().unwrap();
    cherry.await.unwrap().unwrap();
    assert_eq!(a.value("banana").as_deref(), Some(&b"2"[..]));
    assert_eq!(a.value("cherry").as_deref(), Some(&b"3"[..]));

    // warm, the two held ones, then the two reads together and the two writes.
    let mut sizes = a.calls.batches.lock().unwrap().clone();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 1, 2, 2]);
    assert_eq!(a.calls.singles.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.queued_for_batches(), 0);
}

#[tokio::test]
async fn a_node_that_does_not_know_batch_gets_single_calls_and_no_request_fails() {
    let (a, b) = split_cluster().await;
    a.calls.no_batch.store(true, Ordering::SeqCst);
    let proxy = Proxy::new(config(Duration::from_secs(5)));
    proxy.set_nodes([a.addr.clone(), b.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;
    for n in 0..5 {
        let key = format!("a{n}");
        put(&mut client, &key, b"v").await.unwrap();
        assert_eq!(get(&mut client, &key).await.unwrap(), b"v");
    }
    // Asked once, then never again; every request went as a single call.
    assert_eq!(a.calls.batch_calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.calls.singles.load(Ordering::SeqCst), 10);
    // Node B knows Batch and keeps getting batches.
    put(&mut client, "zebra", b"z").await.unwrap();
    assert_eq!(b.calls.batches.lock().unwrap().as_slice(), [1]);
    assert_eq!(b.calls.singles.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_batching_off_every_request_is_a_single_call() {
    let (a, b) = split_cluster().await;
    let proxy = Proxy::new(ProxyConfig {
        batch: BatchConfig {
            max_ops: 1,
            ..BatchConfig::default()
        },
        ..config(Duration::from_secs(5))
    });
    proxy.set_nodes([a.addr.clone(), b.addr.clone()]);
    let mut client = serve_proxy(&proxy).await;
    put(&mut client, "apple", b"1").await.unwrap();
    assert_eq!(get(&mut client, "apple").await.unwrap(), b"1");
    assert_eq!(a.calls.batch_calls.load(Ordering::SeqCst), 0);
    assert_eq!(a.calls.singles.load(Ordering::SeqCst), 2);
}

async fn get_owned(mut client: KvClient<Channel>, key: &'static str) -> Result<Vec<u8>, Status> {
    get(&mut client, key).await
}

async fn put_owned(
    mut client: KvClient<Channel>,
    key: &'static str,
    value: &'static [u8],
) -> Result<(), Status> {
    put(&mut client, key, value).await
}

#[tokio::test]
async fn reads_whose_answers_are_too_big_together_are_asked_again_one_by_one() {
    let (a, b) = split_cluster().await;
    a.data
        .lock()
        .unwrap()
        .insert("apple".to_owned(), b"1".to_vec());
    let (proxy, client) = batching_proxy(&a, &b, BatchConfig::default()).await;

    let held = a.calls.hold_batches.write().await;
    let first = tokio::spawn(get_owned(client.clone(), "apple"));
    eventually("the first read reached the node", || {
        a.calls.batch_calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let apple = tokio::spawn(get_owned(client.clone(), "apple"));
    let absent = tokio::spawn(get_owned(client.clone(), "absent"));
    eventually("two reads queued", || proxy.queued_for_batches() == 2).await;
    a.calls.refuse_big_batches.store(true, Ordering::SeqCst);
    drop(held);

    assert_eq!(first.await.unwrap().unwrap(), b"1");
    assert_eq!(apple.await.unwrap().unwrap(), b"1");
    assert_eq!(absent.await.unwrap().unwrap_err().code(), Code::NotFound);
    assert_eq!(
        a.calls.singles.load(Ordering::SeqCst),
        2,
        "each asked alone"
    );
}

#[tokio::test]
async fn a_batch_stops_at_its_byte_bound_and_the_op_that_did_not_fit_opens_the_next() {
    let (a, b) = split_cluster().await;
    let batch = BatchConfig {
        // Two of the queued writes (2-byte key + 4-byte value) fit, not three.
        max_bytes: 13,
        ..BatchConfig::default()
    };
    let (proxy, client) = batching_proxy(&a, &b, batch).await;

    let held = a.calls.hold_batches.write().await;
    let first = tokio::spawn(put_owned(client.clone(), "a0", b"0000"));
    eventually("the first write reached the node", || {
        a.calls.batch_calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let writes = [
        tokio::spawn(put_owned(client.clone(), "a1", b"1111")),
        tokio::spawn(put_owned(client.clone(), "a2", b"2222")),
        tokio::spawn(put_owned(client.clone(), "a3", b"3333")),
    ];
    eventually("three writes queued", || proxy.queued_for_batches() == 3).await;
    drop(held);
    first.await.unwrap().unwrap();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    for key in ["a1", "a2", "a3"] {
        assert!(a.value(key).is_some(), "{key} landed");
    }
    let mut sizes = a.calls.batches.lock().unwrap().clone();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 1, 2]);
}

#[tokio::test]
async fn a_write_whose_caller_gave_up_while_it_was_queued_is_never_sent() {
    let (a, b) = split_cluster().await;
    // Long enough that the steps below, which take milliseconds, finish well
    // within it even on a loaded machine; the test waits about one of it.
    let deadline = Duration::from_secs(3);
    // Every op its own batch (each is over the byte bound), so ops queue
    // behind each other, one batch in flight at a time.
    let one_op_each = BatchConfig {
        max_bytes: 1,
        ..BatchConfig::default()
    };
    let (proxy, client) = batching_proxy_with(&a, &b, one_op_each, deadline).await;

    // The node holds every batch. The first write waits there; the second
    // queues, and goes out (to wait at the node too) when the first's batch
    // times out; the third queues behind the second, and its caller gives up
    // while it is still queued.
    let held = a.calls.hold_batches.write().await;
    let first = tokio::spawn(put_owned(client.clone(), "a-first", b"1"));
    eventually("the first write reached the node", || {
        a.calls.batch_calls.load(Ordering::SeqCst) == 2
    })
    .await;
    let second = tokio::spawn(put_owned(client.clone(), "a-second", b"2"));
    eventually("the second write queued", || {
        proxy.queued_for_batches() == 1
    })
    .await;
    let abandoned = put(&mut client.clone(), "a-abandoned", b"late").await;
    assert!(abandoned.is_err(), "{abandoned:?}");
    assert_eq!(
        a.calls.batch_calls.load(Ordering::SeqCst),
        3,
        "the second went out"
    );
    assert_eq!(
        proxy.queued_for_batches(),
        1,
        "the abandoned one is still queued"
    );
    drop(held);
    let _ = first.await.unwrap();
    let _ = second.await.unwrap();

    // A write queued after it is served, so the lane has taken it by now.
    put(&mut client.clone(), "a-later", b"3").await.unwrap();
    assert_eq!(a.value("a-later").as_deref(), Some(&b"3"[..]));
    assert_eq!(
        a.value("a-abandoned"),
        None,
        "sent after its caller was told it failed"
    );
    assert_eq!(proxy.queued_for_batches(), 0);
}
