//! A KV node over real RocksDB and gRPC on 127.0.0.1: ownership refusals,
//! persistence across restarts, exact transfers (bounds, empty start/end), delta
//! catch-up of updates and deletions, a source dying mid-transfer, and
//! re-activation after a rolled-back handoff.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use ranger_kv::node::service::KvService;
use ranger_kv::node::store::{RangeStates, Store};
use ranger_kv::node::{KvNode, KvNodeConfig};
use ranger_node_sdk::{Node, Rangelet, RangeletConfig, node_router};
use ranger_proto::pb::kv as pb;
use ranger_proto::pb::kv::kv_client::KvClient;
use ranger_proto::{Key, Parent, ParentPlacement, PlacementState, RangeId, RangeMeta, RemoteState};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::transport::Channel;

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn meta(n: u64, start: &str, end: &str) -> RangeMeta {
    RangeMeta::new(id(n), Key::from(start), Key::from(end)).unwrap()
}

struct TestNode {
    addr: SocketAddr,
    node: KvNode,
    rangelet: Rangelet<KvNode>,
    server: JoinHandle<()>,
}

impl TestNode {
    async fn start(dir: &Path, chunk_bytes: usize) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(dir, listener, chunk_bytes).await
    }

    async fn serve(dir: &Path, listener: TcpListener, chunk_bytes: usize) -> TestNode {
        let addr = listener.local_addr().unwrap();
        let store = Store::open(dir).unwrap();
        let mut config = KvNodeConfig::new(addr.to_string());
        config.chunk_bytes = chunk_bytes;
        let node = KvNode::open(store.clone(), config).unwrap();
        let rangelet = Rangelet::open(node.clone(), RangeStates(store), RangeletConfig::default())
            .await
            .unwrap();
        let router = node_router(&rangelet)
            .await
            .add_service(KvService::new(node.clone(), rangelet.clone()).into_server());
        let server = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        TestNode {
            addr,
            node,
            rangelet,
            server,
        }
    }

    async fn client(&self) -> KvClient<Channel> {
        KvClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Prepares and activates `meta` with no parents (a brand-new range).
    async fn own(&self, meta: RangeMeta) {
        let outcome = self.rangelet.prepare(meta.clone(), vec![]).await.unwrap();
        assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
        let outcome = self.rangelet.activate(meta.id()).await.unwrap();
        assert_eq!(outcome.state, RemoteState::Active, "{outcome:?}");
    }

    /// Stops serving and closes RocksDB (waits until the last handle is gone).
    async fn stop(self) {
        self.rangelet.shutdown();
        self.server.abort();
        let _ = self.server.await;
        drop(self.rangelet);
        drop(self.node);
        // Let spawned tasks holding the rangelet finish, so RocksDB's lock is released.
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

async fn put(client: &mut KvClient<Channel>, key: &str, value: &str) -> Result<(), tonic::Status> {
    client
        .put(pb::PutRequest {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        })
        .await
        .map(|_| ())
}

async fn get(client: &mut KvClient<Channel>, key: &str) -> Result<String, tonic::Status> {
    client
        .get(pb::GetRequest { key: key.into() })
        .await
        .map(|r| String::from_utf8(r.into_inner().value).unwrap())
}

/// Every pair the node's store holds, whatever the ranges.
fn all_pairs(node: &KvNode) -> Vec<(String, String)> {
    let span = ranger_kv::node::spans::Span::new(Vec::new(), None);
    let (pairs, _) = node.store().scan(&span, usize::MAX).unwrap();
    pairs
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

fn moving(range: &RangeMeta, from: SocketAddr) -> Vec<Parent> {
    vec![Parent {
        meta: range.clone(),
        parents: vec![],
        placements: vec![ParentPlacement {
            node_addr: from.to_string(),
            state: PlacementState::Active,
        }],
    }]
}

#[tokio::test]
async fn refuses_keys_it_does_not_serve_with_clear_codes() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    let mut c = a.client().await;
    assert_eq!(
        put(&mut c, "k", "v").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    a.own(meta(1, "a", "m")).await;
    put(&mut c, "k", "v").await.unwrap();
    assert_eq!(get(&mut c, "k").await.unwrap(), "v");
    assert_eq!(
        get(&mut c, "missing").await.unwrap_err().code(),
        Code::NotFound
    );
    let outside = put(&mut c, "z", "v").await.unwrap_err();
    assert_eq!(outside.code(), Code::FailedPrecondition);
    assert!(
        outside.message().contains("no range"),
        "{}",
        outside.message()
    );
    assert_eq!(
        put(&mut c, "", "v").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // Inactive: neither reads nor writes (the copy may be stale).
    a.rangelet.deactivate(id(1)).await.unwrap();
    assert_eq!(
        put(&mut c, "k", "w").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        get(&mut c, "k").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // Nothing was written by the refused calls.
    assert_eq!(all_pairs(&a.node), vec![("k".to_owned(), "v".to_owned())]);
}

#[tokio::test]
async fn data_and_ranges_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    a.own(meta(1, "", "")).await;
    let mut c = a.client().await;
    put(&mut c, "x", "1").await.unwrap();
    a.stop().await;
    let a = TestNode::start(dir.path(), 1 << 20).await;
    // Back Inactive (the controller decides whether it serves again), with its data.
    assert_eq!(a.rangelet.state(id(1)), RemoteState::Inactive);
    a.rangelet.activate(id(1)).await.unwrap();
    let mut c = a.client().await;
    assert_eq!(get(&mut c, "x").await.unwrap(), "1");
}

#[tokio::test]
async fn split_child_copies_exactly_its_half_with_exclusive_end() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 16).await; // tiny chunks: many messages
    let b = TestNode::start(db.path(), 16).await;
    let whole = meta(1, "", "");
    a.own(whole.clone()).await;
    let mut c = a.client().await;
    for key in ["\u{1}", "a", "b", "l~", "m", "m\u{0}", "z"] {
        put(&mut c, key, &format!("v-{key}")).await.unwrap();
    }
    // Child 2 = [-inf, m) on b, from parent 1 on a.
    let child = meta(2, "", "m");
    let parents = vec![
        Parent {
            meta: child.clone(),
            parents: vec![id(1)],
            placements: vec![],
        },
        Parent {
            meta: whole,
            parents: vec![],
            placements: vec![ParentPlacement {
                node_addr: a.addr.to_string(),
                state: PlacementState::Active,
            }],
        },
    ];
    let outcome = b.rangelet.prepare(child, parents).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    let keys: Vec<String> = all_pairs(&b.node).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["\u{1}", "a", "b", "l~"]);
    // Child 3 = [m, +inf) on b too: gets m, m\0, z; child 2's keys are untouched.
    let right = meta(3, "m", "");
    let parents = vec![
        Parent {
            meta: right.clone(),
            parents: vec![id(1)],
            placements: vec![],
        },
        Parent {
            meta: meta(1, "", ""),
            parents: vec![],
            placements: vec![ParentPlacement {
                node_addr: a.addr.to_string(),
                state: PlacementState::Active,
            }],
        },
    ];
    b.rangelet.prepare(right, parents).await.unwrap();
    assert_eq!(all_pairs(&b.node).len(), 7);
    // Dropping 2 deletes only [-inf, m).
    b.rangelet.drop_range(id(2), false).await.unwrap();
    let keys: Vec<String> = all_pairs(&b.node).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["m", "m\u{0}", "z"]);
}

#[tokio::test]
async fn delta_catches_up_updates_and_deletions_after_the_snapshot() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 1 << 20).await;
    let b = TestNode::start(db.path(), 1 << 20).await;
    let range = meta(1, "", "");
    a.own(range.clone()).await;
    let mut ca = a.client().await;
    for i in 0..100 {
        put(&mut ca, &format!("k{i:03}"), "old").await.unwrap();
    }
    // The move's prepare: snapshot while a serves.
    let outcome = b
        .rangelet
        .prepare(range.clone(), moving(&range, a.addr))
        .await
        .unwrap();
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    assert_eq!(all_pairs(&b.node).len(), 100);
    // a keeps serving: updates, a new key, a deletion.
    put(&mut ca, "k007", "new").await.unwrap();
    put(&mut ca, "k999", "added").await.unwrap();
    ca.delete(pb::DeleteRequest { key: "k042".into() })
        .await
        .unwrap();
    // Handoff: a freezes, b catches up and serves.
    a.rangelet.deactivate(id(1)).await.unwrap();
    let outcome = b.rangelet.activate(id(1)).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Active, "{outcome:?}");
    assert_eq!(
        all_pairs(&b.node),
        all_pairs(&a.node),
        "b holds exactly a's final state"
    );
    let mut cb = b.client().await;
    assert_eq!(get(&mut cb, "k007").await.unwrap(), "new");
    assert_eq!(get(&mut cb, "k999").await.unwrap(), "added");
    assert_eq!(
        get(&mut cb, "k042").await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(a.node.trackers().is_empty(), "the transfer was ended");
    // Dropping a's copy leaves nothing behind there.
    a.rangelet.drop_range(id(1), false).await.unwrap();
    assert!(all_pairs(&a.node).is_empty());
}

#[tokio::test]
async fn a_source_dying_mid_transfer_fails_prepare_and_leaves_nothing() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 64 << 10).await;
    let b = TestNode::start(db.path(), 64 << 10).await;
    let range = meta(1, "", "");
    a.own(range.clone()).await;
    let mut ca = a.client().await;
    let value = "x".repeat(4096);
    for i in 0..3000 {
        put(&mut ca, &format!("k{i:05}"), &value).await.unwrap();
    }
    // Kill a's server as soon as b has started receiving.
    let prepare = {
        let rangelet = b.rangelet.clone();
        let parents = moving(&range, a.addr);
        let range = range.clone();
        tokio::spawn(async move { rangelet.prepare(range, parents).await })
    };
    let b_node = b.node.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while all_pairs(&b_node).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "transfer never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    a.server.abort();
    let mut outcome = prepare.await.unwrap().unwrap();
    while outcome.state == RemoteState::Preparing {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        outcome = b
            .rangelet
            .prepare(range.clone(), moving(&range, a.addr))
            .await
            .unwrap();
    }
    assert_eq!(outcome.state, RemoteState::NotFound, "{outcome:?}");
    assert!(
        outcome.failure.is_some(),
        "the failure reaches the controller"
    );
    assert!(
        all_pairs(&b.node).is_empty(),
        "no half-written range left behind"
    );
}

#[tokio::test]
async fn a_source_can_serve_again_after_a_rolled_back_handoff() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 1 << 20).await;
    let b = TestNode::start(db.path(), 1 << 20).await;
    let range = meta(1, "", "");
    a.own(range.clone()).await;
    let mut ca = a.client().await;
    put(&mut ca, "k", "1").await.unwrap();
    b.rangelet
        .prepare(range.clone(), moving(&range, a.addr))
        .await
        .unwrap();
    a.rangelet.deactivate(id(1)).await.unwrap();
    // The destination fails (here: dropped by the controller); the source returns.
    b.rangelet.drop_range(id(1), false).await.unwrap();
    let outcome = a.rangelet.activate(id(1)).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Active);
    put(&mut ca, "k", "2").await.unwrap();
    assert_eq!(get(&mut ca, "k").await.unwrap(), "2");
    assert!(
        a.node.trackers().is_empty(),
        "a serving source keeps no stale transfer"
    );
    assert!(all_pairs(&b.node).is_empty());
}

#[tokio::test]
async fn load_info_reports_keys_bytes_and_a_median_split_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    a.own(meta(1, "", "")).await;
    let mut c = a.client().await;
    for i in 0..1000 {
        put(&mut c, &format!("k{i:04}"), "0123456789")
            .await
            .unwrap();
    }
    let load = a.node.load_info(id(1)).await.unwrap();
    assert_eq!(load.keys, 1000);
    assert_eq!(load.bytes, 1000 * (5 + 10));
    let split = String::from_utf8(load.split_keys[0].as_bytes().to_vec()).unwrap();
    let n: u32 = split[1..].parse().unwrap();
    assert!((400..600).contains(&n), "split key {split} near the median");
}
