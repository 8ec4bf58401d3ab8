//! Moving a large range under load (DESIGN.md §10): the bulk transfer rate
//! against a raw local copy of the same bytes, and how long writes were
//! unavailable, which must not grow with the range's size.
//!
//! Two KV nodes, the controller (gRPC, in-process runtime) and the proxy run on
//! 127.0.0.1. The only range is filled with `SIZE` MB of incompressible values,
//! then moved back and forth `MOVES` times while a hammer writes through the
//! proxy. A write that arrives while the range is frozen waits in the proxy, so
//! the longest write of a move is that move's write-unavailable window.
//!
//! The raw copy it is compared with runs twice before each move: on an idle
//! machine, and under the same hammer the move runs under (the hammer, the
//! proxy and the node serving it take much of the two cores a move shares
//! with them; the second ratio compares like with like). The longest write of
//! that hammer while the raw copy runs is printed too: what copying the same
//! bytes costs the clients with no move, the baseline for a move's longest
//! write.
//!
//! Run: `cargo run --release -p ranger-kv --example bench_handoff -- [SIZES_MB] [MOVES]`
//! e.g. `-- 100,1000 5`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::RngCore;
use ranger_controller::config::OrchestratorConfig;
use ranger_controller::persist::MemoryPersister;
use ranger_controller::runtime::{self, ControllerHandle, OpRequest, RuntimeConfig};
use ranger_controller::transport::GrpcTransport;
use ranger_kv::hammer::{self, HammerConfig, OpMix};
use ranger_kv::node::server::NodeServer;
use ranger_kv::node::store::Store;
use ranger_kv::node::{HandoffStep, KvNodeConfig};
use ranger_kv::proxy::{Proxy, ProxyConfig};
use ranger_proto::{NodeId, PlacementState, RangeId};
use rocksdb::WriteBatch;
use tokio::net::TcpListener;

const VALUE_SIZE: usize = 1000;
const BATCH_PAIRS: usize = 1000;

/// Where the only range is Active, once it has exactly one placement.
async fn settled_holder(handle: &ControllerHandle) -> anyhow::Result<NodeId> {
    let range = RangeId::FIRST;
    let began = Instant::now();
    loop {
        let placements = handle
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
        if let [(node, PlacementState::Active)] = placements.as_slice() {
            return Ok(node.clone());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "range 1 did not settle: {placements:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds pairs `from..to` (keys `d0000000042`, random 1000-byte values) straight
/// into a node's RocksDB, as a bulk import would.
fn load(store: &Store, from: usize, to: usize) -> anyhow::Result<()> {
    let mut rng = rand::rng();
    let mut value = vec![0u8; VALUE_SIZE];
    for chunk_start in (from..to).step_by(BATCH_PAIRS) {
        let mut batch = WriteBatch::default();
        for n in chunk_start..(chunk_start + BATCH_PAIRS).min(to) {
            rng.fill_bytes(&mut value);
            batch.put(format!("d{n:010}"), &value);
        }
        store.write(batch)?;
    }
    Ok(())
}

/// Copies every file of `from` into `to`; returns the bytes and the time taken.
/// With `sync`, each copy is flushed to disk before the next (and the directory
/// after the last): the same durability a move gives its table files before it
/// ingests them, so that the move is compared with a copy doing the same work;
/// without, the copy may end in the page cache.
fn raw_copy(from: &Path, to: &Path, sync: bool) -> anyhow::Result<(u64, Duration)> {
    let began = Instant::now();
    let mut bytes = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let target = to.join(entry.file_name());
            // The store is live: a compaction may delete a file meanwhile.
            let Some(copied) = vanished_is_none(std::fs::copy(entry.path(), &target))? else {
                continue;
            };
            bytes += copied;
            if sync {
                std::fs::File::open(&target)?.sync_all()?;
            }
        }
    }
    if sync {
        std::fs::File::open(to)?.sync_all()?;
    }
    Ok((bytes, began.elapsed()))
}

/// Copies the database files of `source` into a new directory (kept in
/// `copies`, removed later: see where the caller removes them), synced or not;
/// the rate in MB/s.
async fn timed_copy(
    source: &Path,
    sync: bool,
    copies: &mut Vec<tempfile::TempDir>,
) -> anyhow::Result<f64> {
    let target = tempfile::tempdir()?;
    let (from, to) = (source.to_owned(), target.path().to_owned());
    let (bytes, time) = tokio::task::spawn_blocking(move || raw_copy(&from, &to, sync)).await??;
    copies.push(target);
    Ok(bytes as f64 / 1e6 / time.as_secs_f64())
}

/// A file of the live store that a compaction deleted between listing the
/// directory and opening it is not an error: it is no longer part of the store.
fn vanished_is_none<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads every file of `dir` once, so that the copies timed next find it in
/// the page cache.
fn warm_up(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file()
            && let Some(mut file) = vanished_is_none(std::fs::File::open(entry.path()))?
        {
            std::io::copy(&mut file, &mut std::io::sink())?;
        }
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[(rank - 1).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt::init();
    }
    let mut args = std::env::args().skip(1);
    let sizes: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .map(|s| s.parse().context("sizes are MB, comma-separated"))
        .collect::<anyhow::Result<_>>()?;
    let moves: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);

    let mut nodes = BTreeMap::new();
    let mut dirs = Vec::new();
    for name in ["a", "b"] {
        let dir = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = NodeServer::start(dir.path(), listener, KvNodeConfig::new("")).await?;
        nodes.insert(NodeId::new(name)?, server);
        dirs.push(dir);
    }
    let membership = nodes
        .iter()
        .map(|(id, server)| (id.clone(), server.addr.to_string()))
        .collect();
    let (_membership_tx, membership) = tokio::sync::watch::channel(membership);
    let parts = runtime::Parts {
        persister: MemoryPersister::new(),
        transport: Arc::new(GrpcTransport::new()),
        membership,
        orchestrator: OrchestratorConfig::default(),
        runtime: RuntimeConfig::default(),
    };
    let (handle, _controller) = runtime::start(parts, std::future::pending()).await?;
    let proxy = Proxy::new(ProxyConfig::default());
    proxy.set_nodes(nodes.values().map(|s| s.addr.to_string()));
    let proxy_listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy_addr = proxy_listener.local_addr()?.to_string();
    let serving = proxy.clone();
    tokio::spawn(async move { serving.serve(proxy_listener, std::future::pending()).await });
    let mut holder = settled_holder(&handle).await?;
    while !handle
        .inspect(|e| e.roster().nodes().all(|n| n.last_ok.is_some()))
        .await?
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    println!(
        "move of range 1 under a hammer through the proxy (4 workers, 10 hot keys each, 100-byte values); {VALUE_SIZE}-byte incompressible values in bulk"
    );
    println!(
        "{:>7} {:>6} {:>10} {:>10} {:>9} {:>12} {:>9} {:>13} {:>9} {:>14} {:>14} {:>14} {:>7}",
        "size",
        "moves",
        "xfer MB/s",
        "raw MB/s",
        "ratio",
        "synced MB/s",
        "ratio",
        "loaded MB/s",
        "ratio",
        "window p50 ms",
        "window p99 ms",
        "window max ms",
        "errors"
    );
    let mut loaded = 0;
    let mut breakdowns = Vec::new();
    for size_mb in sizes {
        let pairs = size_mb * 1_000_000 / VALUE_SIZE;
        if pairs > loaded {
            let store = nodes[&holder].store().clone();
            let (from, to) = (loaded, pairs);
            tokio::task::spawn_blocking(move || load(&store, from, to))
                .await
                .context("loading")??;
            loaded = pairs;
        }
        let mut rates = Vec::new();
        let mut breakdown = Vec::new();
        let mut window_parts = Vec::new();
        let mut floors = Vec::new();
        let mut copy_floors = Vec::new();
        let mut proxy_waits = Vec::new();
        let mut windows = Vec::new();
        let mut errors = 0;
        let mut raw_rates = Vec::new();
        let mut synced_rates = Vec::new();
        let mut loaded_rates = Vec::new();
        // The raw copies' directories are removed only after the last move:
        // removing a gigabyte stalls every WAL sync on the disk for 100-200 ms
        // (ext4 with discard), which fell on the hammers timed next.
        let mut copies = Vec::new();
        for _ in 0..moves {
            // The raw copy: the source's database files, as they are on disk now.
            let source_dir = dirs[if holder.as_str() == "a" { 0 } else { 1 }].path();
            // Both copies read the source from the page cache, as the move does
            // (its data was just written): read it once first.
            let warm = source_dir.to_owned();
            tokio::task::spawn_blocking(move || warm_up(&warm)).await??;
            raw_rates.push(timed_copy(source_dir, false, &mut copies).await?);
            synced_rates.push(timed_copy(source_dir, true, &mut copies).await?);

            let to = nodes
                .keys()
                .find(|id| **id != holder)
                .cloned()
                .context("two nodes")?;
            let mut config = HammerConfig::new(proxy_addr.clone());
            config.workers = 4;
            config.keys_per_worker = 10;
            config.value_size = 100;
            config.duration = Duration::ZERO;
            config.mix = OpMix::new(5, 25, 70, 0)?;
            config.request_timeout = Duration::from_secs(30);
            // The same hammer for as long, with no move: its longest write is
            // the floor under a move's window (a slow WAL sync, a busy core).
            let quiet = hammer::run(
                config.clone(),
                tokio::time::sleep(Duration::from_millis(1500)),
            )
            .await?;
            anyhow::ensure!(quiet.passed(), "the hammer lost writes: {quiet}");
            // The synced raw copy again, under the same hammer as the move.
            let (stop_loaded, loaded_stopped) = tokio::sync::oneshot::channel::<()>();
            let loading = tokio::spawn(hammer::run(config.clone(), loaded_stopped));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let loaded_rate = timed_copy(source_dir, true, &mut copies).await?;
            let _ = stop_loaded.send(());
            let loaded = loading.await??;
            anyhow::ensure!(loaded.passed(), "the hammer lost writes: {loaded}");
            loaded_rates.push(loaded_rate);
            let q = &quiet.latency;
            floors.push(q.update.max_ms.max(q.create.max_ms));
            let l = &loaded.latency;
            copy_floors.push(l.update.max_ms.max(l.create.max_ms));
            let _ = proxy.take_longest_handoff_wait();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let hammering = tokio::spawn(hammer::run(config, stopped));
            let from = holder.clone();
            // When the proxy's routing table first shows the destination
            // serving the range: how long the proxy took to learn the new route.
            let seen_active = {
                let proxy = proxy.clone();
                let dest_addr = nodes[&to].addr.to_string();
                tokio::spawn(async move {
                    let routing = proxy.routing();
                    let mut changes = routing.changes();
                    loop {
                        changes.borrow_and_update();
                        let routes = routing.lookup(b"", ranger_proto::RemoteState::Active);
                        if routes.iter().any(|r| r.addr == dest_addr) {
                            return Instant::now();
                        }
                        if changes.changed().await.is_err() {
                            return Instant::now();
                        }
                    }
                })
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            handle
                .run(OpRequest::Move {
                    range: RangeId::FIRST,
                    node: Some(to.clone()),
                })
                .await?;
            holder = settled_holder(&handle).await?;
            anyhow::ensure!(holder == to, "the range ended on {holder}, not {to}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = stop.send(());
            let report = hammering.await??;
            anyhow::ensure!(report.passed(), "the hammer lost writes: {report}");
            errors += report.errors.values().sum::<u64>();
            let l = &report.latency;
            let window = l.update.max_ms.max(l.create.max_ms);
            windows.push(window);
            proxy_waits.push(proxy.take_longest_handoff_wait().as_secs_f64() * 1e3);
            let last = |id: &NodeId, step| {
                nodes[id]
                    .node
                    .recent_handoff_callbacks()
                    .into_iter()
                    .rev()
                    .find(|c| c.range == RangeId::FIRST && c.step == step)
            };
            let (deactivated, activated) = (
                last(&from, HandoffStep::Deactivate)
                    .context("the source recorded no deactivate")?,
                last(&to, HandoffStep::Activate).context("the destination recorded no activate")?,
            );
            let since = |later: Instant, earlier: Instant| {
                later.saturating_duration_since(earlier).as_secs_f64() * 1e3
            };
            let fetched = activated.fetched.unwrap_or(activated.ended);
            let seen_active = seen_active.await?;
            let seen_by_proxy = since(seen_active, deactivated.started);
            window_parts.push([
                since(deactivated.ended, deactivated.started),
                since(activated.started, deactivated.ended),
                since(fetched, activated.started),
                since(activated.ended, fetched),
                since(seen_active, activated.ended),
                (window - seen_by_proxy).max(0.0),
            ]);
            let record = nodes[&to]
                .node
                .recent_transfers()
                .pop()
                .context("the destination recorded no transfer")?;
            rates.push(record.megabytes_per_second());
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            breakdown.push((
                ms(record.times.waiting),
                ms(record.times.writing),
                ms(record.times.ingesting),
            ));
        }
        windows.sort_by(f64::total_cmp);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (rate, raw) = (median(&mut rates), median(&mut raw_rates));
        let synced = median(&mut synced_rates);
        let loaded = median(&mut loaded_rates);
        println!(
            "{:>5}MB {:>6} {:>10.1} {:>10.1} {:>8.0}% {:>12.1} {:>8.0}% {:>13.1} {:>8.0}% {:>14.1} {:>14.1} {:>14.1} {:>7}",
            size_mb,
            moves,
            rate,
            raw,
            100.0 * rate / raw,
            synced,
            100.0 * rate / synced,
            loaded,
            100.0 * rate / loaded,
            percentile(&windows, 0.5),
            percentile(&windows, 0.99),
            windows[windows.len() - 1],
            errors
        );
        drop(copies);
        breakdowns.push((
            size_mb,
            breakdown,
            window_parts,
            (floors, copy_floors),
            proxy_waits,
        ));
    }
    println!(
        "xfer: the snapshot copy (bytes of keys and values / time, median of the moves, each under the hammer); raw: copying the source's RocksDB files (median); synced: the same copy with each file synced to disk, as a move syncs its table files; loaded: the synced copy under the same hammer as the moves"
    );
    println!(
        "copy time at the destination, per move (ms): waiting for the source's chunks (its reading, the network, decoding) / checking and writing them into table files / ingesting those"
    );
    for (size_mb, moves, _, _, _) in &breakdowns {
        let parts: Vec<String> = moves
            .iter()
            .map(|(w, t, i)| format!("{w:.0}/{t:.0}/{i:.0}"))
            .collect();
        println!("  {size_mb:>5}MB: {}", parts.join("  "));
    }
    println!(
        "window per move (ms): source's deactivate (draining writes in flight) / until the destination's activate starts (the answer, the controller, the command) / delta fetch / rest of activate / until the proxy's routing table shows the destination serving / the rest of the longest write's wait (its retry, its own latency)"
    );
    for (size_mb, _, windows, _, _) in &breakdowns {
        let parts: Vec<String> = windows
            .iter()
            .map(|p| {
                let parts: Vec<String> = p.iter().map(|ms| format!("{ms:.1}")).collect();
                parts.join("/")
            })
            .collect();
        println!("  {size_mb:>5}MB: {}", parts.join("  "));
    }
    println!(
        "longest write of the same hammer for 1.5 s with no move, before each move (ms): the floor under the windows above"
    );
    for (size_mb, _, _, (floors, _), _) in &breakdowns {
        let parts: Vec<String> = floors.iter().map(|ms| format!("{ms:.1}")).collect();
        println!("  {size_mb:>5}MB: {}", parts.join("  "));
    }
    println!(
        "longest write of the same hammer while the synced raw copy ran, before each move (ms): what copying the same bytes with no move costs the clients"
    );
    for (size_mb, _, _, (_, copy_floors), _) in &breakdowns {
        let parts: Vec<String> = copy_floors.iter().map(|ms| format!("{ms:.1}")).collect();
        println!("  {size_mb:>5}MB: {}", parts.join("  "));
    }
    println!(
        "longest handoff wait of a served write, as the proxy timed it (first refusal to answer), per move (ms): the window without the slow writes that had nothing to do with the move"
    );
    for (size_mb, _, _, _, waits) in &breakdowns {
        let mut sorted = waits.clone();
        sorted.sort_by(f64::total_cmp);
        let parts: Vec<String> = waits.iter().map(|ms| format!("{ms:.1}")).collect();
        println!(
            "  {size_mb:>5}MB: {}  (p50 {:.1}, max {:.1})",
            parts.join("  "),
            percentile(&sorted, 0.5),
            sorted.last().copied().unwrap_or_default()
        );
    }
    println!(
        "window: per move, the longest write through the proxy (a write arriving when the range froze waits until it is served again)"
    );
    Ok(())
}
