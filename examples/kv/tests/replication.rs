//! Write replication between the copies of a replicated range (R3), over real
//! RocksDB and gRPC on 127.0.0.1: what `node::replica` promises.
//!
//! The controller's part (which copy is primary, the epochs) is played here by
//! handing each node the groups a probe would carry, so each step of the
//! protocol can be forced: a primary that forwarded its last entry to one
//! member only, a deposed primary still sending, a copy joining while writes
//! go on.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ranger_kv::node::server::NodeServer;
use ranger_kv::node::{KvNode, KvNodeConfig};
use ranger_kv::pb;
use ranger_kv::pb::kv_client::KvClient;
use ranger_node_sdk::Node;
use ranger_proto::{
    Key, Parent, ParentPlacement, PlacementState, RangeId, RangeMeta, ReplicaGroup,
};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

fn id(n: u64) -> RangeId {
    RangeId::new(n).unwrap()
}

fn whole(n: u64) -> RangeMeta {
    RangeMeta::new(id(n), Key::from(""), Key::from("")).unwrap()
}

/// A node whose own address (as groups name it) is the one it listens on.
async fn start(dir: &Path) -> NodeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = KvNodeConfig::new(addr.to_string());
    config.peer_timeout = Duration::from_secs(2);
    NodeServer::start(dir, listener, config).await.unwrap()
}

async fn client(node: &NodeServer) -> KvClient<Channel> {
    KvClient::connect(format!("http://{}", node.addr))
        .await
        .unwrap()
}

fn addr(node: &NodeServer) -> String {
    node.addr.to_string()
}

fn group(range: u64, epoch: u64, primary: &NodeServer, members: &[&NodeServer]) -> ReplicaGroup {
    let mut members: Vec<String> = members.iter().map(|m| addr(m)).collect();
    members.sort();
    ReplicaGroup {
        range: id(range),
        epoch,
        primary: Some(addr(primary)),
        members,
    }
}

/// Hands `group` to every node listed, as their probes would.
async fn announce(group: &ReplicaGroup, nodes: &[&NodeServer]) {
    for node in nodes {
        node.node.replica_groups(vec![group.clone()]).await;
    }
}

/// Prepares (with `parents`) and activates `meta` on `node`.
async fn own(node: &NodeServer, meta: &RangeMeta, parents: Vec<Parent>) {
    let prepared = node.rangelet.prepare(meta.clone(), parents).await.unwrap();
    assert!(prepared.failure.is_none(), "{prepared:?}");
    let active = node.rangelet.activate(meta.id()).await.unwrap();
    assert!(active.failure.is_none(), "{active:?}");
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

/// Puts until the node takes it (its takeover may still be running).
async fn put_when_serving(client: &mut KvClient<Channel>, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match put(client, key, value).await {
            Ok(()) => return,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("never served: {status:?}"),
        }
    }
}

/// Every pair a node's store holds.
fn pairs(node: &KvNode) -> BTreeMap<String, String> {
    let span = ranger_kv::node::spans::Span::new(Vec::new(), None);
    let (pairs, _) = node.store().scan(&span, usize::MAX).unwrap();
    pairs
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

fn entry(seq: u64, key: &str, value: &str) -> pb::Entry {
    pb::Entry {
        seq,
        changes: vec![pb::Change {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            deleted: false,
        }],
    }
}

/// Three nodes serving range 1 (all of the keyspace), brand new, `a` primary.
async fn three(dirs: &[tempfile::TempDir; 3]) -> [NodeServer; 3] {
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c = start(dirs[2].path()).await;
    for node in [&a, &b, &c] {
        own(node, &whole(1), vec![]).await;
    }
    let g = group(1, ReplicaGroup::epoch_of(1, 1), &a, &[&a, &b, &c]);
    announce(&g, &[&a, &b, &c]).await;
    [a, b, c]
}

fn dirs<const N: usize>() -> [tempfile::TempDir; N] {
    std::array::from_fn(|_| tempfile::tempdir().unwrap())
}

#[tokio::test]
async fn a_write_is_acknowledged_only_once_every_member_has_it_and_only_the_primary_serves() {
    let dirs = dirs::<3>();
    let [a, b, c] = three(&dirs).await;
    let mut at_a = client(&a).await;
    put_when_serving(&mut at_a, "k1", "v1").await;
    put(&mut at_a, "k2", "v2").await.unwrap();
    let want: BTreeMap<String, String> =
        [("k1".into(), "v1".into()), ("k2".into(), "v2".into())].into();
    // Acknowledged, so already on both members: no waiting.
    assert_eq!(pairs(&b.node), want);
    assert_eq!(pairs(&c.node), want);
    assert_eq!(
        [&a, &b, &c].map(|n| n.node.primary_ranges()),
        [1, 0, 0],
        "only a serves as primary"
    );
    // The members refuse clients, reads included, and name the primary.
    let mut at_b = client(&b).await;
    let refused = put(&mut at_b, "k3", "v3").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains(&addr(&a)), "{refused:?}");
    let read = at_b
        .get(pb::GetRequest { key: "k1".into() })
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::FailedPrecondition);
    assert!(!pairs(&b.node).contains_key("k3"));
}

#[tokio::test]
async fn a_new_primary_brings_every_member_to_the_entry_only_one_of_them_got() {
    let dirs = dirs::<3>();
    let [a, b, c] = three(&dirs).await;
    let mut at_a = client(&a).await;
    put_when_serving(&mut at_a, "k1", "v1").await;
    // The primary's third write reached b only, then the primary died.
    let e1 = ReplicaGroup::epoch_of(1, 1);
    let mut at_b = client(&b).await;
    at_b.replicate(pb::ReplicateRequest {
        range: 1,
        epoch: e1,
        entry: Some(entry(2, "only-b", "x")),
    })
    .await
    .unwrap();
    assert!(!pairs(&c.node).contains_key("only-b"));
    a.shutdown().await.unwrap();
    // The controller names c primary of the survivors.
    let e2 = ReplicaGroup::epoch_of(1, 2);
    let g = group(1, e2, &c, &[&b, &c]);
    announce(&g, &[&b, &c]).await;
    let mut at_c = client(&c).await;
    put_when_serving(&mut at_c, "k4", "v4").await;
    let want: BTreeMap<String, String> = [
        ("k1".into(), "v1".into()),
        ("only-b".into(), "x".into()),
        ("k4".into(), "v4".into()),
    ]
    .into();
    assert_eq!(pairs(&c.node), want);
    assert_eq!(pairs(&b.node), want);
    // The deposed primary's epoch is over at every member.
    let stale = at_b
        .replicate(pb::ReplicateRequest {
            range: 1,
            epoch: e1,
            entry: Some(entry(4, "late", "y")),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert!(!pairs(&b.node).contains_key("late"));
}

#[tokio::test]
async fn a_member_restarted_keeps_refusing_clients_and_keeps_its_place_in_the_log() {
    let dirs = dirs::<3>();
    let [a, b, c] = three(&dirs).await;
    let mut at_a = client(&a).await;
    put_when_serving(&mut at_a, "k1", "v1").await;
    let b_dir = dirs[1].path().to_path_buf();
    b.shutdown().await.unwrap();
    let b = loop {
        // RocksDB's lock may linger a moment after the shutdown in-process.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = KvNodeConfig::new(addr.to_string());
        match NodeServer::start(&b_dir, listener, config).await {
            Ok(node) => break node,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // A restarted node's ranges come back Inactive; the controller activates
    // them again. No group yet (no probe since the restart): it still follows
    // a log, so it refuses clients rather than serve as if it were alone.
    let active = b.rangelet.activate(id(1)).await.unwrap();
    assert!(active.failure.is_none(), "{active:?}");
    let mut at_b = client(&b).await;
    let refused = put(&mut at_b, "k2", "v2").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("replicated"), "{refused:?}");
    // Named primary, it takes over from where the log stood (entry 1).
    let g = group(1, ReplicaGroup::epoch_of(2, 1), &b, &[&b, &c]);
    announce(&g, &[&b, &c]).await;
    put_when_serving(&mut at_b, "k2", "v2").await;
    assert_eq!(pairs(&c.node).get("k2").map(String::as_str), Some("v2"));
    drop(a);
}

#[tokio::test]
async fn a_copy_added_while_writes_go_on_joins_through_the_primary_and_misses_none() {
    let dirs = dirs::<3>();
    let [a, b] = two_serving(&dirs).await;
    let mut at_a = client(&a).await;
    for i in 0..500 {
        put(&mut at_a, &format!("pre{i:04}"), "old").await.unwrap();
    }
    // A writer keeps going through the whole addition.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
        let mut at_a = at_a.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                // A new group pauses the primary's writes for its takeover:
                // retry refusals, as the proxy does.
                put_when_serving(&mut at_a, &format!("pre{:04}", i % 500), &format!("new{i}"))
                    .await;
                put_when_serving(&mut at_a, &format!("during{i:05}"), "x").await;
                i += 1;
                written.store(i, Ordering::SeqCst);
            }
        })
    };
    let d = start(dirs[2].path()).await;
    // The controller lists both serving copies; d asks b first, which is not
    // the primary and names it.
    let parents = vec![Parent {
        meta: whole(1),
        parents: vec![],
        placements: [&b, &a]
            .iter()
            .map(|n| ParentPlacement {
                node_addr: addr(n),
                state: PlacementState::Active,
            })
            .collect(),
    }];
    let prepared = d.rangelet.prepare(whole(1), parents).await.unwrap();
    assert!(prepared.failure.is_none(), "{prepared:?}");
    // d is a member from its prepare on; the primary does not wait for it.
    announce(
        &group(1, ReplicaGroup::epoch_of(1, 2), &a, &[&a, &b, &d]),
        &[&a, &b, &d],
    )
    .await;
    while written.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let active = d.rangelet.activate(whole(1).id()).await.unwrap();
    assert!(active.failure.is_none(), "{active:?}");
    let at_join = written.load(Ordering::SeqCst);
    while written.load(Ordering::SeqCst) < at_join + 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let on_a = pairs(&a.node);
    assert!(on_a.len() > 550, "{}", on_a.len());
    assert_eq!(pairs(&b.node), on_a);
    assert_eq!(
        pairs(&d.node),
        on_a,
        "the added copy differs from the primary"
    );
    // The added copy refuses clients (a is primary) but is a member: the
    // next write reaches it before it is acknowledged.
    put(&mut at_a, "after", "join").await.unwrap();
    assert_eq!(
        pairs(&d.node).get("after").map(String::as_str),
        Some("join")
    );
}

#[tokio::test]
async fn a_primary_whose_group_a_probe_no_longer_carries_stops_serving_at_once() {
    // Cut off from the controller, the primary was declared lost and
    // replaced; the first probe that reaches it again lists no group for the
    // range (it is no longer a member).
    let dirs = dirs::<3>();
    let [a, b, c] = three(&dirs).await;
    let mut at_a = client(&a).await;
    put_when_serving(&mut at_a, "k1", "v1").await;
    a.node.replica_groups(vec![]).await;
    let refused = put(&mut at_a, "k2", "v2").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(a.node.primary_ranges(), 0);
    for node in [&a, &b, &c] {
        assert!(!pairs(&node.node).contains_key("k2"));
    }
}

/// `a` and `b` (in the first two of `dirs`) serve range 1, `a` primary in
/// epoch (1, 1), `k0` written.
async fn two_serving(dirs: &[tempfile::TempDir]) -> [NodeServer; 2] {
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    for node in [&a, &b] {
        own(node, &whole(1), vec![]).await;
    }
    announce(
        &group(1, ReplicaGroup::epoch_of(1, 1), &a, &[&a, &b]),
        &[&a, &b],
    )
    .await;
    put_when_serving(&mut client(&a).await, "k0", "v0").await;
    [a, b]
}

/// `a` and `b` serve range 1 (`a` primary, epoch `e1`) with one write done; `d`
/// prepares a copy that joins (it copies from the serving primary).
async fn joining_d(dirs: &[tempfile::TempDir; 3]) -> [NodeServer; 3] {
    let [a, b] = two_serving(dirs).await;
    let d = start(dirs[2].path()).await;
    let parents = vec![Parent {
        meta: whole(1),
        parents: vec![],
        placements: vec![ParentPlacement {
            node_addr: addr(&a),
            state: PlacementState::Active,
        }],
    }];
    let prepared = d.rangelet.prepare(whole(1), parents).await.unwrap();
    assert!(prepared.failure.is_none(), "{prepared:?}");
    [a, b, d]
}

#[tokio::test]
async fn a_copy_that_joined_and_saw_no_write_since_can_take_over_as_primary() {
    let dirs = dirs::<3>();
    let [a, b, d] = joining_d(&dirs).await;
    announce(
        &group(1, ReplicaGroup::epoch_of(1, 2), &a, &[&a, &b, &d]),
        &[&a, &b, &d],
    )
    .await;
    let active = d.rangelet.activate(id(1)).await.unwrap();
    assert!(active.failure.is_none(), "{active:?}");
    // No write since the join: d is at the log's last entry without having
    // applied it itself. The primary goes; d is named.
    a.shutdown().await.unwrap();
    announce(
        &group(1, ReplicaGroup::epoch_of(1, 3), &d, &[&b, &d]),
        &[&b, &d],
    )
    .await;
    let mut at_d = client(&d).await;
    put_when_serving(&mut at_d, "k1", "v1").await;
    assert_eq!(pairs(&b.node).get("k1").map(String::as_str), Some("v1"));
    assert_eq!(pairs(&d.node).get("k0").map(String::as_str), Some("v0"));
}

#[tokio::test]
async fn a_join_whose_source_stopped_serving_as_primary_fails_instead_of_attaching() {
    let dirs = dirs::<3>();
    let [a, b, d] = joining_d(&dirs).await;
    // The primary moves to b, and a is deactivated: a's delta is of a copy
    // that no longer orders the range's writes.
    let e2 = ReplicaGroup::epoch_of(1, 2);
    announce(&group(1, e2, &b, &[&a, &b, &d]), &[&a, &b, &d]).await;
    put_when_serving(&mut client(&b).await, "k1", "v1").await;
    let deactivated = a.rangelet.deactivate(id(1)).await.unwrap();
    assert!(deactivated.failure.is_none(), "{deactivated:?}");
    let active = d.rangelet.activate(id(1)).await.unwrap();
    let failure = active.failure.expect("the activation fails");
    assert!(failure.contains("no longer serves"), "{failure}");
    // d follows no log: asked by a primary, it is still joining.
    let answer = client(&d)
        .await
        .take_over(pb::TakeOverRequest {
            range: 1,
            epoch: ReplicaGroup::epoch_of(1, 3),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.standing,
        pb::take_over_response::Standing::Joining as i32
    );
    drop(b);
}
