//! Measures how long an empty range's move takes end to end (DESIGN.md §10:
//! target < 100 ms): the controller (embedded redb store, gRPC to nodes) moves
//! range 1 back and forth between two nodes served on 127.0.0.1, and the time from
//! the Move request to its completion is recorded.
//!
//! Run: `cargo run --release -p ranger-controller --example bench_move -- [MOVES]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ranger_controller::config::OrchestratorConfig;
use ranger_controller::persist::RedbPersister;
use ranger_controller::runtime::{self, OpRequest, RuntimeConfig};
use ranger_controller::transport::GrpcTransport;
use ranger_node_sdk::testing::ScriptedNode;
use ranger_node_sdk::{MemoryStateStore, Rangelet, RangeletConfig, node_router};
use ranger_proto::{NodeId, PlacementState, RangeId};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

async fn serve_node() -> anyhow::Result<String> {
    let rangelet = Rangelet::open(
        ScriptedNode::new(),
        MemoryStateStore::new(),
        RangeletConfig::default(),
    )
    .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let router = node_router(&rangelet).await;
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(addr)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt::init();
    }
    let moves: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let persister = RedbPersister::open(dir.path().join("keyspace.redb"))?;
    let nodes: BTreeMap<NodeId, String> = BTreeMap::from([
        (NodeId::new("a")?, serve_node().await?),
        (NodeId::new("b")?, serve_node().await?),
    ]);
    let (_membership_tx, membership) = tokio::sync::watch::channel(nodes);
    let parts = runtime::Parts {
        persister,
        transport: Arc::new(GrpcTransport::new()),
        membership,
        orchestrator: OrchestratorConfig::default(),
        runtime: RuntimeConfig::default(),
    };
    let (handle, _task) = runtime::start(parts, std::future::pending()).await?;
    // Wait for the initial placement.
    let range = RangeId::FIRST;
    let mut holder;
    loop {
        let placed = handle
            .inspect(move |e| {
                e.keyspace()
                    .range(range)
                    .map(|r| {
                        r.placements()
                            .iter()
                            .map(|p| (p.node().clone(), p.state()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .await?;
        if placed.len() == 1 && placed[0].1 == PlacementState::Active {
            holder = placed[0].0.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both nodes must have answered a probe before either can be a destination.
    while !handle
        .inspect(|e| e.roster().nodes().all(|n| n.last_ok.is_some()))
        .await?
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut times = Vec::with_capacity(moves);
    for _ in 0..moves {
        let to = NodeId::new(if holder.as_str() == "a" { "b" } else { "a" })?;
        let started = Instant::now();
        handle
            .run(OpRequest::Move {
                range,
                node: Some(to.clone()),
            })
            .await?;
        holder = to;
        times.push(started.elapsed());
        // Let the source's drop finish before the next move starts.
        loop {
            let live = handle
                .inspect(move |e| {
                    e.keyspace()
                        .range(range)
                        .map(|r| r.placements().len())
                        .unwrap_or(0)
                })
                .await?;
            if live == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    times.sort();
    println!(
        "empty-range move, end to end (Move request -> destination Active), {moves} moves, redb store, gRPC on loopback"
    );
    println!(
        "p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (target: < 100 ms)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}
