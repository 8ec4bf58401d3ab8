//! A KV node over real RocksDB and gRPC on 127.0.0.1: ownership refusals,
//! persistence across restarts, exact transfers (bounds, empty start/end), delta
//! catch-up of updates and deletions, a source dying mid-transfer, and
//! re-activation after a rolled-back handoff.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use ranger_kv::node::server::NodeServer;
use ranger_kv::node::{KvNode, KvNodeConfig};
use ranger_node_sdk::Node;
use ranger_proto::pb::kv as pb;
use ranger_proto::pb::kv::kv_client::KvClient;
use ranger_proto::{Key, Parent, ParentPlacement, PlacementState, RangeId, RangeMeta, RemoteState};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn meta(n: u64, start: &str, end: &str) -> RangeMeta {
    RangeMeta::new(id(n), Key::from(start), Key::from(end)).unwrap()
}

/// A node under test: the real server (store, callbacks, rangelet, gRPC).
struct TestNode(NodeServer);

impl std::ops::Deref for TestNode {
    type Target = NodeServer;
    fn deref(&self) -> &NodeServer {
        &self.0
    }
}

impl TestNode {
    async fn start(dir: &Path, chunk_bytes: usize) -> TestNode {
        let mut config = KvNodeConfig::new("");
        config.chunk_bytes = chunk_bytes;
        // A restarted node may find RocksDB's lock still held for a moment by the
        // previous server's last tasks in this process; a new process never does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            match NodeServer::start(dir, listener, config.clone()).await {
                Ok(server) => return TestNode(server),
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("starting the node: {e}"),
            }
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

    /// Stops serving; RocksDB closes once the last handle to it is gone.
    async fn stop(self) {
        self.0.shutdown().await.unwrap();
    }
}

/// A TCP relay to `target` that cuts every connection once it has relayed
/// `limit` bytes from the target: a source node dying in the middle of a stream.
async fn dying_relay(target: SocketAddr, limit: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upstream = tokio::io::copy(&mut client_read, &mut server_write);
                let mut limited = tokio::io::AsyncReadExt::take(&mut server_read, limit);
                let downstream = tokio::io::copy(&mut limited, &mut client_write);
                // Whichever ends first, both sockets are dropped: the peer sees a
                // broken connection, as if the node had died.
                tokio::select! {
                    _ = upstream => {}
                    _ = downstream => {}
                }
            });
        }
    });
    addr
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

/// The Prepare parents of split child `child` of `parent`, Active at `holder`.
fn split_from(child: &RangeMeta, parent: &RangeMeta, holder: SocketAddr) -> Vec<Parent> {
    vec![
        Parent {
            meta: child.clone(),
            parents: vec![parent.id()],
            placements: vec![],
        },
        Parent {
            meta: parent.clone(),
            parents: vec![],
            placements: vec![ParentPlacement {
                node_addr: holder.to_string(),
                state: PlacementState::Active,
            }],
        },
    ]
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
        get(&mut c, "absent").await.unwrap_err().code(),
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
    drop(c);
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
    let parents = split_from(&child, &whole, a.addr);
    let outcome = b.rangelet.prepare(child, parents).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    let keys: Vec<String> = all_pairs(&b.node).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["\u{1}", "a", "b", "l~"]);
    // Child 3 = [m, +inf) on b too: gets m, m\0, z; child 2's keys are untouched.
    let right = meta(3, "m", "");
    let parents = split_from(&right, &whole, a.addr);
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
    // b reaches a through a relay that dies after 1 MB of the 12 MB snapshot.
    let dying = dying_relay(a.addr, 1 << 20).await;
    let mut outcome = b
        .rangelet
        .prepare(range.clone(), moving(&range, dying))
        .await
        .unwrap();
    while outcome.state == RemoteState::Preparing {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        outcome = b
            .rangelet
            .prepare(range.clone(), moving(&range, dying))
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
