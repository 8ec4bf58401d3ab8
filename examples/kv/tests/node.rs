//! A KV node over real RocksDB and gRPC on 127.0.0.1: ownership refusals,
//! persistence across restarts, exact transfers (bounds, empty start/end), delta
//! catch-up of updates and deletions, a source dying mid-transfer, and
//! re-activation after a rolled-back handoff.
//!
//! Issue 9 ("no acknowledged write lost"): sources are only the placements the
//! controller lists as holding the data (never a stale local copy), Prepares
//! shaped like the Go reference controller's (no parent ids) still find their
//! sources, a prepare that cannot fill its range fails, a reference source (no
//! Snapshot) is copied with Dump, and a silent source fails the callback within
//! the peer timeout instead of hanging it.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ranger_kv::node::server::NodeServer;
use ranger_kv::node::{KvNode, KvNodeConfig};
use ranger_kv::pb;
use ranger_kv::pb::kv_client::KvClient;
use ranger_node_sdk::Node;
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
        Self::start_with(dir, config).await
    }

    async fn start_with(dir: &Path, config: KvNodeConfig) -> TestNode {
        // A restarted node may find RocksDB's lock still held for a moment by the
        // previous server's last tasks in this process; a new process never does.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            match NodeServer::start(dir, listener, config.clone()).await {
                Ok(server) => return TestNode(server),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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
async fn the_ack_log_holds_every_acknowledged_write_and_no_refused_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acks.jsonl");
    let mut config = KvNodeConfig::new("");
    config.ack_log = Some(log.clone());
    let a = TestNode::start_with(&dir.path().join("node"), config).await;
    a.own(meta(1, "b", "")).await;
    let mut client = a.client().await;
    put(&mut client, "b1", "one").await.unwrap();
    put(&mut client, "b2", "two").await.unwrap();
    // Outside the node's ranges: refused, so not acknowledged.
    put(&mut client, "a1", "nope").await.unwrap_err();
    // Deactivated: refused too.
    a.rangelet.deactivate(id(1)).await.unwrap();
    put(&mut client, "b3", "late").await.unwrap_err();

    let acks = ranger_kv::node::ack_log::AckLog::read(&log).unwrap();
    let keys: Vec<&str> = acks.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["b1", "b2"]);
    for ack in &acks {
        assert_eq!(ack.range, 1);
        assert!(ack.accepted_us <= ack.acked_us, "{ack:?}");
    }
}

fn batch_put(key: &str, value: &str) -> pb::BatchOp {
    pb::BatchOp {
        op: Some(pb::batch_op::Op::Put(pb::PutRequest {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
        })),
    }
}

fn batch_get(key: &str) -> pb::BatchOp {
    pb::BatchOp {
        op: Some(pb::batch_op::Op::Get(pb::GetRequest {
            key: key.to_owned(),
        })),
    }
}

fn batch_delete(key: &str) -> pb::BatchOp {
    pb::BatchOp {
        op: Some(pb::batch_op::Op::Delete(pb::DeleteRequest {
            key: key.to_owned(),
        })),
    }
}

/// Each op's code and, for a success, its value as text.
async fn run_batch(client: &mut KvClient<Channel>, ops: Vec<pb::BatchOp>) -> Vec<(Code, String)> {
    let sent = ops.len();
    let results = client
        .batch(pb::BatchRequest { ops })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), sent, "one result per op");
    results
        .into_iter()
        .map(|r| (Code::from(r.code), String::from_utf8(r.value).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_batch_answers_each_op_as_its_own_call_would_and_its_reads_see_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acks.jsonl");
    let mut config = KvNodeConfig::new("");
    config.ack_log = Some(log.clone());
    let a = TestNode::start_with(&dir.path().join("node"), config).await;
    a.own(meta(1, "a", "m")).await;
    let mut c = a.client().await;
    put(&mut c, "gone", "soon").await.unwrap();

    let answers = run_batch(
        &mut c,
        vec![
            batch_get("b"),
            batch_put("b", "two"),
            batch_put("z", "outside"),
            batch_put("", "empty"),
            batch_delete("gone"),
            batch_get("gone"),
            batch_get("absent"),
            pb::BatchOp { op: None },
            batch_put("c", "three"),
        ],
    )
    .await;
    let codes: Vec<Code> = answers.iter().map(|(code, _)| *code).collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::Ok,
            Code::NotFound,
            Code::NotFound,
            Code::InvalidArgument,
            Code::Ok,
        ]
    );
    // The writes land before the reads are served.
    assert_eq!(answers[0].1, "two");
    // What was refused did not land; the rest did, and was logged as acknowledged.
    assert_eq!(
        all_pairs(&a.node),
        vec![
            ("b".to_owned(), "two".to_owned()),
            ("c".to_owned(), "three".to_owned())
        ]
    );
    let acks = ranger_kv::node::ack_log::AckLog::read(&log).unwrap();
    let keys: Vec<&str> = acks.iter().map(|a| a.key.as_str()).collect();
    assert_eq!(keys, ["gone", "b", "gone", "c"]);

    // A range that stopped serving refuses every op of a batch, and keeps its data.
    a.rangelet.deactivate(id(1)).await.unwrap();
    let answers = run_batch(&mut c, vec![batch_put("b", "late"), batch_get("b")]).await;
    assert_eq!(
        answers.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
        [Code::FailedPrecondition, Code::FailedPrecondition]
    );
    assert_eq!(get_pair(&a.node, "b"), Some("two".to_owned()));
}

#[tokio::test]
async fn a_batch_over_two_ranges_lands_where_the_range_serves_and_is_refused_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    a.own(meta(1, "a", "m")).await;
    a.own(meta(2, "m", "")).await;
    a.rangelet.deactivate(id(2)).await.unwrap();
    let mut c = a.client().await;
    let answers = run_batch(
        &mut c,
        vec![
            batch_put("b", "1"),
            batch_put("n", "2"),
            batch_put("c", "3"),
        ],
    )
    .await;
    assert_eq!(
        answers.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
        [Code::Ok, Code::FailedPrecondition, Code::Ok]
    );
    assert_eq!(
        all_pairs(&a.node),
        vec![
            ("b".to_owned(), "1".to_owned()),
            ("c".to_owned(), "3".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_batch_of_more_ops_than_a_node_takes_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    a.own(meta(1, "a", "")).await;
    let mut c = a.client().await;
    let ops = (0..=ranger_kv::node::service::MAX_BATCH_OPS)
        .map(|n| batch_put(&format!("k{n}"), "v"))
        .collect();
    let refused = c.batch(pb::BatchRequest { ops }).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(all_pairs(&a.node), vec![], "nothing of it landed");
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The race a batch over several ranges has and a single write does not: it
/// takes its ranges' gates one after another, so a range it already holds may
/// stop serving while it waits for the next gate. Its writability must be
/// judged once every gate is held, not when its own gate was taken.
#[tokio::test]
async fn a_batch_that_waited_for_a_gate_does_not_write_a_range_that_stopped_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    a.own(meta(1, "a", "m")).await;
    a.own(meta(2, "m", "")).await;
    let mut c = a.client().await;

    // Range 2's gate is held (as by a deactivation draining it): the batch
    // takes range 1's gate, then waits for range 2's.
    let gate_2 = a.node.gate(id(2));
    let held = gate_2.write().await;
    let batch = tokio::spawn(async move {
        run_batch(&mut c, vec![batch_put("b", "1"), batch_put("n", "2")]).await
    });
    let gate_1 = a.node.gate(id(1));
    until("the batch holds range 1's gate", || {
        gate_1.try_write().is_err()
    })
    .await;

    // Meanwhile range 1 starts deactivating (it then waits for the batch).
    let rangelet = a.rangelet.clone();
    let deactivating = tokio::spawn(async move { rangelet.deactivate(id(1)).await });
    until("range 1 is no longer writable", || {
        !a.rangelet.may_write(id(1))
    })
    .await;
    drop(held);

    let answers = batch.await.unwrap();
    assert_eq!(
        answers.iter().map(|(code, _)| *code).collect::<Vec<_>>(),
        [Code::FailedPrecondition, Code::Ok],
        "range 1's write refused, range 2's landed"
    );
    deactivating.await.unwrap().unwrap();
    assert_eq!(all_pairs(&a.node), vec![("n".to_owned(), "2".to_owned())]);
}

fn get_pair(node: &KvNode, key: &str) -> Option<String> {
    all_pairs(node)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn a_size_measured_while_a_range_was_being_copied_in_is_not_reported_once_it_is_active() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = KvNodeConfig::new("");
    config.load_cache = Duration::from_secs(3600);
    let a = TestNode::start_with(dir.path(), config).await;
    let range = meta(1, "b", "");
    let outcome = a.rangelet.prepare(range.clone(), vec![]).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    let copying = a.node.load_info(id(1)).await.unwrap();
    assert_eq!((copying.keys, copying.bytes), (0, 0));
    // The data arrives (as a transfer would write it), then the range activates.
    for i in 0..100 {
        a.node
            .store()
            .put(format!("b{i:03}").as_bytes(), b"value")
            .unwrap();
    }
    let outcome = a.rangelet.activate(id(1)).await.unwrap();
    assert_eq!(outcome.state, RemoteState::Active, "{outcome:?}");
    let active = a.node.load_info(id(1)).await.unwrap();
    assert_eq!(active.keys, 100, "{active:?}");
    assert_eq!(active.bytes, 100 * (4 + 5), "{active:?}");
}

#[tokio::test]
async fn load_info_reports_keys_bytes_split_keys_and_where_the_requests_lie() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestNode::start(dir.path(), 1 << 20).await;
    a.own(meta(1, "", "")).await;
    let mut c = a.client().await;
    for i in 0..1000 {
        put(&mut c, &format!("k{i:04}"), "0123456789")
            .await
            .unwrap();
    }
    // Ten hot keys near the end, read twice as often as all keys were written:
    // the median access is among them, the median key is not.
    for round in 0..2000 {
        get(&mut c, &format!("k{:04}", 800 + round % 10))
            .await
            .unwrap();
    }
    let load = a.node.load_info(id(1)).await.unwrap();
    assert_eq!(load.keys, 1000, "the walk saw the whole range: exact");
    // Everything is still in the memtable, which the estimate walks.
    assert_eq!(load.bytes, 1000 * (5 + 10));
    let by_size = String::from_utf8(load.split_keys[0].as_bytes().to_vec()).unwrap();
    let n: u32 = by_size[1..].parse().unwrap();
    assert!(
        (400..600).contains(&n),
        "size split key {by_size} near the median"
    );
    let by_load = String::from_utf8(load.load_split_keys[0].as_bytes().to_vec()).unwrap();
    assert!(
        ("k0800".."k0810").contains(&by_load.as_str()),
        "load split key {by_load} among the hot keys"
    );
    // Where the requests lie: the 800 writes below k0800 are about a quarter
    // of the 3,000 accesses, the 2,000 reads of k0800..k0809 two thirds. The
    // bounds leave room for the sample (64 keys a bucket): 4 standard
    // deviations each.
    assert!(
        ranger_proto::LoadCut::well_formed(&load.load_cuts),
        "{:?}",
        load.load_cuts
    );
    for cut in &load.load_cuts {
        let key = String::from_utf8(cut.key.as_bytes().to_vec()).unwrap();
        if key.as_str() < "k0800" {
            assert!(cut.below < 0.5, "{cut:?}");
        } else if key.as_str() >= "k0810" {
            assert!(cut.below > 0.8, "{cut:?}");
        }
    }
    assert!(
        load.load_cuts
            .iter()
            .any(|c| c.key.as_bytes() >= b"k0800".as_slice()),
        "{:?}",
        load.load_cuts
    );
    assert!(load.reads_per_second > 0.0 && load.writes_per_second > 0.0);
}

#[tokio::test]
async fn request_rates_follow_traffic_and_decay_once_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ranger_node_sdk::load::ManualClock::new();
    let mut config = KvNodeConfig::new("");
    config.load_clock = clock.clone();
    let a = TestNode::start_with(dir.path(), config).await;
    a.own(meta(1, "", "m")).await;
    let mut c = a.client().await;
    // Ten seconds (on the meter's clock) of 20 writes and 40 reads a second.
    for second in 0..10 {
        for i in 0..20 {
            let key = format!("k{second}-{i}");
            put(&mut c, &key, "v").await.unwrap();
            get(&mut c, &key).await.unwrap();
            get(&mut c, &key).await.unwrap();
        }
        clock.advance(Duration::from_secs(1));
    }
    let busy = a.node.load_info(id(1)).await.unwrap();
    assert!((19.0..=21.0).contains(&busy.writes_per_second), "{busy:?}");
    assert!((38.0..=42.0).contains(&busy.reads_per_second), "{busy:?}");
    assert!(!busy.load_split_keys.is_empty(), "{busy:?}");

    // Traffic stops: the window slides past it.
    clock.advance(Duration::from_secs(10));
    let fading = a.node.load_info(id(1)).await.unwrap();
    assert!(
        fading.writes_per_second > 0.0 && fading.writes_per_second < busy.writes_per_second,
        "{fading:?}"
    );
    clock.advance(Duration::from_secs(15));
    let idle = a.node.load_info(id(1)).await.unwrap();
    assert_eq!((idle.reads_per_second, idle.writes_per_second), (0.0, 0.0));
    assert!(idle.load_split_keys.is_empty(), "no recent keys: {idle:?}");
}

#[tokio::test]
async fn bytes_grow_with_the_data_written_in_memtables_and_in_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = KvNodeConfig::new("");
    config.load_cache = Duration::ZERO;
    // A short walk: the key count beyond it is RocksDB's estimate.
    config.split_walk_cap = 100;
    let a = TestNode::start_with(dir.path(), config).await;
    a.own(meta(1, "b", "")).await;
    let store = a.node.store().clone();
    // Values that LZ4 cannot shrink much: a simple generator's bytes.
    let mut state = 0x1234_5678_u64;
    let mut value = || {
        (0..1000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect::<Vec<u8>>()
    };
    let empty = a.node.load_info(id(1)).await.unwrap();
    assert_eq!((empty.keys, empty.bytes), (0, 0));
    // A key of another range ("a..." is below "b"): not counted.
    store.put(b"a-elsewhere", &value()).unwrap();
    for i in 0..200 {
        store.put(format!("b{i:05}").as_bytes(), &value()).unwrap();
    }
    let in_memtable = a.node.load_info(id(1)).await.unwrap();
    assert_eq!(in_memtable.bytes, 200 * (6 + 1000));
    for i in 200..2000 {
        store.put(format!("b{i:05}").as_bytes(), &value()).unwrap();
    }
    store.flush().unwrap();
    let flushed = a.node.load_info(id(1)).await.unwrap();
    assert!(
        flushed.bytes > 1_500_000 && flushed.bytes < 2_500_000,
        "2000 values of 1000 random bytes, from the SST files: {flushed:?}"
    );
    assert!(
        (1600..=2400).contains(&flushed.keys),
        "about 2000 keys, estimated: {flushed:?}"
    );
    assert!(
        !flushed.split_keys.is_empty(),
        "a size split key: {flushed:?}"
    );
}

// ---- Issue 9: sources, reference-shaped Prepares, Dump fallback, timeouts ----

fn placed(addr: impl ToString, state: PlacementState) -> ParentPlacement {
    ParentPlacement {
        node_addr: addr.to_string(),
        state,
    }
}

/// One entry of Prepare's `parents`; `parent_ids` empty is the Go reference
/// controller's shape (it never fills field 2).
fn entry(meta: &RangeMeta, parent_ids: &[u64], placements: Vec<ParentPlacement>) -> Parent {
    Parent {
        meta: meta.clone(),
        parents: parent_ids.iter().map(|n| id(*n)).collect(),
        placements,
    }
}

/// How long a callback may take in these tests before it counts as hung.
const HUNG: Duration = Duration::from_secs(10);

/// Re-sends Prepare (as the controller does) until the range leaves Preparing;
/// panics if it is still Preparing after [`HUNG`].
async fn settle_prepare(
    node: &TestNode,
    meta: &RangeMeta,
    parents: &[Parent],
) -> ranger_node_sdk::Outcome {
    let deadline = Instant::now() + HUNG;
    loop {
        let outcome = node
            .rangelet
            .prepare(meta.clone(), parents.to_vec())
            .await
            .unwrap();
        if outcome.state != RemoteState::Preparing {
            return outcome;
        }
        assert!(
            Instant::now() < deadline,
            "prepare of {} still running after {HUNG:?}: it hangs",
            meta.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Re-sends Activate until the range leaves Activating; panics after [`HUNG`].
async fn settle_activate(node: &TestNode, range: RangeId) -> ranger_node_sdk::Outcome {
    let deadline = Instant::now() + HUNG;
    loop {
        let outcome = node.rangelet.activate(range).await.unwrap();
        if outcome.state != RemoteState::Activating {
            return outcome;
        }
        assert!(
            Instant::now() < deadline,
            "activate of {range} still running after {HUNG:?}: it hangs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pairs_in(node: &KvNode, start: &str, end: Option<&str>) -> Vec<(String, String)> {
    all_pairs(node)
        .into_iter()
        .filter(|(k, _)| k.as_str() >= start && end.is_none_or(|e| k.as_str() < e))
        .collect()
}

#[tokio::test]
async fn a_split_onto_a_node_holding_a_stale_copy_of_the_parent_gets_only_the_latest_data() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 1 << 20).await;
    let b = TestNode::start(db.path(), 1 << 20).await;
    let whole = meta(1, "", "");
    b.own(whole.clone()).await;
    let mut cb = b.client().await;
    for key in ["c", "d", "p", "q"] {
        put(&mut cb, key, "old").await.unwrap();
    }
    // Move 1 from b to a. b's copy is never dropped (a slow drop): stale now.
    let outcome = settle_prepare(&a, &whole, &moving(&whole, b.addr)).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    b.rangelet.deactivate(id(1)).await.unwrap();
    assert_eq!(settle_activate(&a, id(1)).await.state, RemoteState::Active);
    let mut ca = a.client().await;
    put(&mut ca, "c", "new").await.unwrap();
    put(&mut ca, "p", "new").await.unwrap();
    put(&mut ca, "e", "added").await.unwrap();
    for key in ["d", "q"] {
        ca.delete(pb::DeleteRequest { key: key.into() })
            .await
            .unwrap();
    }
    // Split 1 -> 2 [-inf, m) and 3 [m, +inf), both children on b.
    // Child 2: the controller lists only a's placement (b's copy is retiring).
    let left = meta(2, "", "m");
    let parents = vec![
        entry(&left, &[1], vec![placed(b.addr, PlacementState::Pending)]),
        entry(&whole, &[], vec![placed(a.addr, PlacementState::Active)]),
    ];
    let outcome = settle_prepare(&b, &left, &parents).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    // Child 3: an older controller also lists b's stale copy; a serves, so a's
    // copy is the latest.
    let right = meta(3, "m", "");
    let parents = vec![
        entry(&right, &[1], vec![placed(b.addr, PlacementState::Pending)]),
        entry(
            &whole,
            &[],
            vec![
                placed(b.addr, PlacementState::Inactive),
                placed(a.addr, PlacementState::Active),
            ],
        ),
    ];
    let outcome = settle_prepare(&b, &right, &parents).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    a.rangelet.deactivate(id(1)).await.unwrap();
    assert_eq!(settle_activate(&b, id(2)).await.state, RemoteState::Active);
    assert_eq!(settle_activate(&b, id(3)).await.state, RemoteState::Active);
    // The slow drop of b's stale copy finally happens.
    b.rangelet.drop_range(id(1), false).await.unwrap();
    assert_eq!(
        all_pairs(&b.node),
        all_pairs(&a.node),
        "b holds exactly what a served last: nothing pre-move, no deleted key back"
    );
    assert_eq!(get(&mut cb, "c").await.unwrap(), "new");
    assert_eq!(get(&mut cb, "p").await.unwrap(), "new");
    assert_eq!(get(&mut cb, "d").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(get(&mut cb, "q").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_reference_shaped_split_and_join_copy_every_key() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestNode::start(dirs[0].path(), 64).await;
    let b = TestNode::start(dirs[1].path(), 64).await;
    let c = TestNode::start(dirs[2].path(), 64).await;
    let whole = meta(1, "", "");
    a.own(whole.clone()).await;
    let mut ca = a.client().await;
    for letter in 'a'..='z' {
        put(&mut ca, &format!("{letter}1"), "v").await.unwrap();
    }
    // Split 1 -> 2 [-inf, m) on b and 3 [m, +inf) on c, as the Go reference
    // controller sends it: the range itself first, then its parent, and no
    // parent ids (field 2) anywhere.
    let left = meta(2, "", "m");
    let right = meta(3, "m", "");
    let split = |child: &RangeMeta, on: SocketAddr| {
        vec![
            entry(child, &[], vec![placed(on, PlacementState::Pending)]),
            entry(&whole, &[], vec![placed(a.addr, PlacementState::Active)]),
        ]
    };
    let outcome = settle_prepare(&b, &left, &split(&left, b.addr)).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    let outcome = settle_prepare(&c, &right, &split(&right, c.addr)).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    // Writes after the snapshots arrive with the delta.
    put(&mut ca, "b1", "late").await.unwrap();
    put(&mut ca, "x1", "late").await.unwrap();
    a.rangelet.deactivate(id(1)).await.unwrap();
    assert_eq!(settle_activate(&b, id(2)).await.state, RemoteState::Active);
    assert_eq!(settle_activate(&c, id(3)).await.state, RemoteState::Active);
    assert_eq!(all_pairs(&b.node), pairs_in(&a.node, "", Some("m")));
    assert_eq!(all_pairs(&c.node), pairs_in(&a.node, "m", None));
    assert_eq!(all_pairs(&b.node).len(), 12);
    assert_eq!(all_pairs(&c.node).len(), 14);
    a.rangelet.drop_range(id(1), false).await.unwrap();
    assert!(all_pairs(&a.node).is_empty());
    // Join (2, 3) -> 4 on a: the range, its parents, then theirs (1, long gone:
    // no placements), still without parent ids.
    let mut cb = b.client().await;
    put(&mut cb, "c1", "joined").await.unwrap();
    let joined = meta(4, "", "");
    let join = vec![
        entry(&joined, &[], vec![placed(a.addr, PlacementState::Pending)]),
        entry(&left, &[], vec![placed(b.addr, PlacementState::Active)]),
        entry(&right, &[], vec![placed(c.addr, PlacementState::Active)]),
        entry(&whole, &[], vec![]),
    ];
    let outcome = settle_prepare(&a, &joined, &join).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    b.rangelet.deactivate(id(2)).await.unwrap();
    c.rangelet.deactivate(id(3)).await.unwrap();
    assert_eq!(settle_activate(&a, id(4)).await.state, RemoteState::Active);
    let mut expected = all_pairs(&b.node);
    expected.extend(all_pairs(&c.node));
    assert_eq!(all_pairs(&a.node), expected, "every key of both parents");
    assert_eq!(get(&mut ca, "c1").await.unwrap(), "joined");
    assert_eq!(get(&mut ca, "x1").await.unwrap(), "late");
}

#[tokio::test]
async fn a_prepare_that_cannot_fill_its_range_fails_instead_of_succeeding_empty() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 1 << 20).await;
    let b = TestNode::start(db.path(), 1 << 20).await;
    let left = meta(1, "", "m");
    a.own(left.clone()).await;
    let mut ca = a.client().await;
    put(&mut ca, "c", "v").await.unwrap();
    // Range 2 [m, +inf) lived on a node that is gone (Missing): a join of 1 and 2
    // cannot be filled, even though the parent ids are given.
    let gone = "127.0.0.1:1";
    let right = meta(2, "m", "");
    let joined = meta(3, "", "");
    let join = vec![
        entry(
            &joined,
            &[1, 2],
            vec![placed(b.addr, PlacementState::Pending)],
        ),
        entry(&left, &[], vec![placed(a.addr, PlacementState::Active)]),
        entry(&right, &[], vec![placed(gone, PlacementState::Missing)]),
    ];
    let outcome = settle_prepare(&b, &joined, &join).await;
    assert_eq!(outcome.state, RemoteState::NotFound, "{outcome:?}");
    let failure = outcome.failure.unwrap();
    assert!(failure.contains("no placement holds"), "{failure}");
    assert!(all_pairs(&b.node).is_empty(), "nothing half-copied is left");
    // A move whose only copy is on that node: same.
    let moved = meta(2, "m", "");
    let parents = vec![entry(
        &moved,
        &[],
        vec![
            placed(gone, PlacementState::Missing),
            placed(b.addr, PlacementState::Pending),
        ],
    )];
    let outcome = settle_prepare(&b, &moved, &parents).await;
    assert_eq!(outcome.state, RemoteState::NotFound, "{outcome:?}");
    // A brand-new range (no history at all) is legitimately empty.
    let fresh = meta(5, "m", "");
    let parents = vec![entry(
        &fresh,
        &[],
        vec![placed(b.addr, PlacementState::Pending)],
    )];
    let outcome = settle_prepare(&b, &fresh, &parents).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
}

/// A KV node shaped like the Go reference's: no Snapshot (UNIMPLEMENTED), and a
/// `Dump` that refuses while the range is writable. Clones share the state.
#[derive(Debug, Clone)]
struct ReferenceKv {
    range: u64,
    pairs: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    writable: Arc<AtomicBool>,
}

impl ReferenceKv {
    fn new(range: u64) -> Self {
        ReferenceKv {
            range,
            pairs: Default::default(),
            writable: Arc::new(true.into()),
        }
    }

    fn put(&self, key: &str, value: &str) {
        self.pairs
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.as_bytes().to_vec());
    }

    fn freeze(&self) {
        self.writable.store(false, Ordering::SeqCst);
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for ReferenceKv {
    async fn get(
        &self,
        _: tonic::Request<pb::GetRequest>,
    ) -> Result<tonic::Response<pb::GetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this stub"))
    }

    async fn put(
        &self,
        _: tonic::Request<pb::PutRequest>,
    ) -> Result<tonic::Response<pb::PutResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this stub"))
    }

    async fn dump(
        &self,
        request: tonic::Request<pb::DumpRequest>,
    ) -> Result<tonic::Response<pb::DumpResponse>, tonic::Status> {
        if request.into_inner().range_ident != self.range {
            return Err(tonic::Status::invalid_argument("range not found"));
        }
        if self.writable.load(Ordering::SeqCst) {
            return Err(tonic::Status::failed_precondition(
                "can only dump ranges while writes are disabled",
            ));
        }
        let pairs = self
            .pairs
            .lock()
            .unwrap()
            .iter()
            .map(|(key, value)| pb::Pair {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        Ok(tonic::Response::new(pb::DumpResponse { pairs }))
    }

    async fn delete(
        &self,
        _: tonic::Request<pb::DeleteRequest>,
    ) -> Result<tonic::Response<pb::DeleteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this stub"))
    }

    async fn batch(
        &self,
        _: tonic::Request<pb::BatchRequest>,
    ) -> Result<tonic::Response<pb::BatchResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the Go reference has no Batch",
        ))
    }

    async fn scan(
        &self,
        _: tonic::Request<pb::ScanRequest>,
    ) -> Result<tonic::Response<pb::ScanResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this stub"))
    }

    type SnapshotStream = BoxStream<pb::SnapshotChunk>;

    async fn snapshot(
        &self,
        _: tonic::Request<pb::SnapshotRequest>,
    ) -> Result<tonic::Response<Self::SnapshotStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("kv.KV/Snapshot"))
    }

    type DeltaStream = BoxStream<pb::DeltaChunk>;

    async fn delta(
        &self,
        _: tonic::Request<pb::DeltaRequest>,
    ) -> Result<tonic::Response<Self::DeltaStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("kv.KV/Delta"))
    }

    async fn end_transfer(
        &self,
        _: tonic::Request<pb::EndTransferRequest>,
    ) -> Result<tonic::Response<pb::EndTransferResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("kv.KV/EndTransfer"))
    }

    async fn replicate(
        &self,
        _: tonic::Request<pb::ReplicateRequest>,
    ) -> Result<tonic::Response<pb::ReplicateResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }

    async fn take_over(
        &self,
        _: tonic::Request<pb::TakeOverRequest>,
    ) -> Result<tonic::Response<pb::TakeOverResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

async fn serve_reference_kv(stub: ReferenceKv) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::kv_server::KvServer::new(stub))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn a_source_without_snapshot_is_copied_with_dump_once_it_is_frozen() {
    let db = tempfile::tempdir().unwrap();
    let b = TestNode::start(db.path(), 1 << 20).await;
    let stub = ReferenceKv::new(1);
    for key in ["a", "c", "m", "z"] {
        stub.put(key, "v");
    }
    let source = serve_reference_kv(stub.clone()).await;
    // b holds stale keys under the child's span (a copy nobody dropped).
    b.store().put(b"b", b"stale").unwrap();
    b.store().put(b"c", b"stale").unwrap();
    // Split child 2 [-inf, m) of the reference node's range 1, reference-shaped.
    let whole = meta(1, "", "");
    let left = meta(2, "", "m");
    let parents = vec![
        entry(&left, &[], vec![placed(b.addr, PlacementState::Pending)]),
        entry(&whole, &[], vec![placed(source, PlacementState::Active)]),
    ];
    let outcome = settle_prepare(&b, &left, &parents).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    // The source keeps serving until it is deactivated.
    stub.put("c", "late");
    stub.freeze();
    let outcome = settle_activate(&b, id(2)).await;
    assert_eq!(outcome.state, RemoteState::Active, "{outcome:?}");
    assert_eq!(
        all_pairs(&b.node),
        vec![
            ("a".to_owned(), "v".to_owned()),
            ("c".to_owned(), "late".to_owned()),
        ],
        "the frozen source's pairs of the child's span, nothing stale"
    );
}

/// A peer that accepts connections and never says anything.
async fn silent_peer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A TCP relay to `target` that, once the returned flag is set, forwards nothing
/// more in either direction but keeps the connections open: a source that went
/// silent (a partition, a stuck process) rather than away.
async fn muting_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let muted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&muted);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)] {
                let muted = Arc::clone(&flag);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if muted.load(Ordering::SeqCst) {
                            // Hold both halves open, silent, forever.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (addr, muted)
}

fn short_timeouts() -> KvNodeConfig {
    let mut config = KvNodeConfig::new("");
    config.peer_timeout = Duration::from_millis(500);
    config
}

#[tokio::test]
async fn a_silent_source_fails_prepare_within_the_peer_timeout() {
    let db = tempfile::tempdir().unwrap();
    let b = TestNode::start_with(db.path(), short_timeouts()).await;
    let range = meta(1, "", "");
    let silent = silent_peer().await;
    let began = Instant::now();
    let outcome = settle_prepare(&b, &range, &moving(&range, silent)).await;
    assert_eq!(outcome.state, RemoteState::NotFound, "{outcome:?}");
    assert!(outcome.failure.is_some());
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_source_that_goes_silent_fails_activate_within_the_peer_timeout() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 1 << 20).await;
    let b = TestNode::start_with(db.path(), short_timeouts()).await;
    let range = meta(1, "", "");
    a.own(range.clone()).await;
    let mut ca = a.client().await;
    put(&mut ca, "k", "v").await.unwrap();
    let (relay, muted) = muting_relay(a.addr).await;
    let outcome = settle_prepare(&b, &range, &moving(&range, relay)).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    muted.store(true, Ordering::SeqCst);
    a.rangelet.deactivate(id(1)).await.unwrap();
    let began = Instant::now();
    let outcome = settle_activate(&b, id(1)).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    assert!(outcome.failure.is_some(), "{outcome:?}");
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// A TCP relay to `target` that passes at most `bytes_per_tick` from the target
/// every `tick`: a slow link.
async fn slow_relay(target: SocketAddr, bytes_per_tick: usize, tick: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; bytes_per_tick];
                loop {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(tick).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_slow_but_steady_snapshot_is_not_cut_by_the_peer_timeout() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestNode::start(da.path(), 8 << 10).await;
    let mut config = short_timeouts();
    config.chunk_bytes = 8 << 10;
    let b = TestNode::start_with(db.path(), config).await;
    let range = meta(1, "", "");
    a.own(range.clone()).await;
    let mut ca = a.client().await;
    let value = "x".repeat(1000);
    for i in 0..200 {
        put(&mut ca, &format!("k{i:03}"), &value).await.unwrap();
    }
    // ~200 KB at 16 KB per 100 ms: over a second in all, far longer than the
    // 500 ms peer timeout, but never silent for that long.
    let slow = slow_relay(a.addr, 16 << 10, Duration::from_millis(100)).await;
    let began = Instant::now();
    let outcome = settle_prepare(&b, &range, &moving(&range, slow)).await;
    assert_eq!(outcome.state, RemoteState::Inactive, "{outcome:?}");
    assert!(began.elapsed() > Duration::from_millis(500));
    assert_eq!(all_pairs(&b.node).len(), 200);
}

#[tokio::test]
async fn a_source_listed_under_another_address_of_this_node_is_refused_and_nothing_is_cleared() {
    let da = tempfile::tempdir().unwrap();
    let a = TestNode::start(da.path(), 1 << 20).await;
    let whole = meta(1, "", "");
    a.own(whole.clone()).await;
    let mut ca = a.client().await;
    for key in ["c", "x"] {
        put(&mut ca, key, "v").await.unwrap();
    }
    // The controller knows a as "localhost:PORT"; a calls itself 127.0.0.1:PORT.
    let alias = format!("localhost:{}", a.addr.port());
    let left = meta(2, "", "m");
    let parents = vec![
        entry(&left, &[], vec![placed(&alias, PlacementState::Pending)]),
        entry(&whole, &[], vec![placed(&alias, PlacementState::Active)]),
    ];
    let outcome = settle_prepare(&a, &left, &parents).await;
    assert_eq!(outcome.state, RemoteState::NotFound, "{outcome:?}");
    let failure = outcome.failure.unwrap();
    assert!(failure.contains("this node itself"), "{failure}");
    assert_eq!(
        all_pairs(&a.node),
        vec![
            ("c".to_owned(), "v".to_owned()),
            ("x".to_owned(), "v".to_owned())
        ],
        "copying from itself must not clear what it serves"
    );
}

/// Every pair a Snapshot stream carries, in either form, and its last chunk's
/// count and checksum.
async fn snapshot_pairs(
    client: &mut KvClient<Channel>,
    range: u64,
    packed: bool,
) -> (Vec<(Vec<u8>, Vec<u8>)>, u64, u64, bool) {
    let mut stream = client
        .snapshot(pb::SnapshotRequest {
            source_range: range,
            start: Vec::new(),
            end: Vec::new(),
            packed,
        })
        .await
        .unwrap()
        .into_inner();
    let mut pairs = Vec::new();
    let mut saw_packed = false;
    while let Some(chunk) = stream.message().await.unwrap() {
        pairs.extend(chunk.pairs.into_iter().map(|p| (p.key, p.value)));
        saw_packed |= !chunk.packed.is_empty();
        for pair in ranger_kv::node::packed::unpack(&chunk.packed) {
            let (k, v) = pair.unwrap();
            pairs.push((k.to_vec(), v.to_vec()));
        }
        if chunk.last {
            return (pairs, chunk.total_pairs, chunk.checksum, saw_packed);
        }
    }
    panic!("the stream ended without its last chunk");
}

#[tokio::test]
async fn a_destination_that_asks_for_packed_chunks_gets_them_and_an_older_one_gets_pairs() {
    let dir = tempfile::tempdir().unwrap();
    // Small chunks, so that both forms span several.
    let a = TestNode::start(dir.path(), 4 << 10).await;
    let range = meta(1, "", "");
    a.own(range.clone()).await;
    let mut client = a.client().await;
    for i in 0..200 {
        put(&mut client, &format!("k{i:03}"), &"v".repeat(i))
            .await
            .unwrap();
    }
    let (packed, packed_count, packed_sum, saw_packed) = snapshot_pairs(&mut client, 1, true).await;
    let (plain, plain_count, plain_sum, plain_saw_packed) =
        snapshot_pairs(&mut client, 1, false).await;
    assert!(saw_packed, "asked for packed chunks, got pairs");
    assert!(
        !plain_saw_packed,
        "an older destination cannot read packed chunks"
    );
    assert_eq!(packed.len(), 200);
    assert_eq!(packed, plain);
    assert_eq!((packed_count, packed_sum), (plain_count, plain_sum));
    let stored: Vec<(Vec<u8>, Vec<u8>)> = all_pairs(&a.node)
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    assert_eq!(packed, stored);
}
