//! What each layer costs: Get/Put throughput and latency of the same workload
//! (same workers, keys, values and mix) run three ways, side by side in one run:
//!
//! 1. hammer -> proxy -> node (gRPC twice; the proxy batches what its clients
//!    ask of the node meanwhile, see `ranger_kv::proxy::batch`),
//! 2. hammer -> node (gRPC once),
//! 3. RocksDB in-process (the node's `Store`, no network), one thread per worker,
//! 4. the same on a plain RocksDB whose writes do not wait for the WAL to be
//!    synced: what acknowledging only durable writes (SCENARIOS.md #44) costs,
//! 5. path 1 with batching off: each request forwarded as its own call.
//!
//! Prints each path's figures and the ratios between them.
//!
//! The three network paths (1, 2 and 5) take turns in one-second slices,
//! `SECONDS` slices each, so that a slow spell of this shared machine (another
//! process, a disk stall, a compaction) falls on all of them alike instead of on
//! whichever path ran then; a path's throughput is its operations over its
//! slices' time, its latencies the median of its slices'. The proxy/direct ratio
//! of each pair of neighbouring slices is printed too, so the spread is seen.
//!
//! Run: `cargo run --release -p ranger-kv --example bench_kv -- [SECONDS] [WORKERS]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::SeedableRng;
use ranger_kv::hammer::{self, HammerConfig, Histogram, OpKind, OpMix};
use ranger_kv::node::KvNodeConfig;
use ranger_kv::node::server::NodeServer;
use ranger_kv::node::store::Store;
use ranger_kv::proxy::{BatchConfig, Proxy, ProxyConfig};
use ranger_proto::{Key, RangeId, RangeMeta};
use tokio::net::TcpListener;

const VALUE_SIZE: usize = 100;
const KEYS_PER_WORKER: usize = 1000;

/// One path's outcome.
#[derive(Clone, Copy)]
struct Figures {
    ops_per_sec: f64,
    get_p50_ms: f64,
    get_p99_ms: f64,
    put_p50_ms: f64,
    put_p99_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mix() -> anyhow::Result<OpMix> {
    // Half reads, half writes (creates of absent keys, updates of present ones).
    Ok(OpMix::new(10, 50, 40, 0)?)
}

/// One slice of a network path: `seconds` of the mix through `target`.
async fn hammer(target: String, seconds: u64, workers: usize) -> anyhow::Result<Figures> {
    let mut config = HammerConfig::new(target);
    config.workers = workers;
    config.keys_per_worker = KEYS_PER_WORKER;
    config.duration = Duration::from_secs(seconds);
    config.value_size = VALUE_SIZE;
    config.mix = mix()?;
    let report = hammer::run(config, std::future::pending::<()>()).await?;
    anyhow::ensure!(
        report.passed() && report.errors.is_empty(),
        "the hammer saw problems: {report}"
    );
    let puts = [&report.latency.create, &report.latency.update];
    // Updates dominate the writes; weight the two put kinds by their counts.
    let weighted = |f: fn(&hammer::LatencySummary) -> f64| {
        let total: u64 = puts.iter().map(|l| l.count).sum();
        puts.iter().map(|l| f(l) * l.count as f64).sum::<f64>() / total.max(1) as f64
    };
    anyhow::ensure!(report.elapsed_secs > 0.0, "the hammer ran for no time");
    Ok(Figures {
        ops_per_sec: report.ops as f64 / report.elapsed_secs,
        get_p50_ms: report.latency.read.p50_ms,
        get_p99_ms: report.latency.read.p99_ms,
        put_p50_ms: weighted(|l| l.p50_ms),
        put_p99_ms: weighted(|l| l.p99_ms),
    })
}

/// The slices one network path got, pooled: operations over time for the
/// throughput, the median slice for each latency figure.
#[derive(Default)]
struct Slices(Vec<Figures>);

impl Slices {
    fn pooled(&self) -> Figures {
        let median = |f: fn(&Figures) -> f64| {
            let mut values: Vec<f64> = self.0.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or_default()
        };
        // Equal slices: the mean of the rates is operations over time.
        let rate = self.0.iter().map(|f| f.ops_per_sec).sum::<f64>() / self.0.len().max(1) as f64;
        Figures {
            ops_per_sec: rate,
            get_p50_ms: median(|f| f.get_p50_ms),
            get_p99_ms: median(|f| f.get_p99_ms),
            put_p50_ms: median(|f| f.put_p50_ms),
            put_p99_ms: median(|f| f.put_p99_ms),
        }
    }
}

/// Reads and writes of one in-process path.
trait Kv: Sync {
    fn get(&self, key: &[u8]) -> anyhow::Result<()>;
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
}

/// The node's store: every write waits for the synced WAL.
impl Kv for Store {
    fn get(&self, key: &[u8]) -> anyhow::Result<()> {
        Store::get(self, key)?;
        Ok(())
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        Ok(Store::put(self, key, value)?)
    }
}

/// A plain RocksDB with default write options: the WAL is written, not synced.
struct Unsynced(rocksdb::DB);

impl Kv for Unsynced {
    fn get(&self, key: &[u8]) -> anyhow::Result<()> {
        self.0.get(key)?;
        Ok(())
    }
    fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.put(key, value)?)
    }
}

/// The same mix straight on RocksDB: `workers` threads, each on its own keys.
fn in_process(store: &dyn Kv, seconds: u64, workers: usize) -> anyhow::Result<Figures> {
    let mix = mix()?;
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let results: Vec<anyhow::Result<(u64, Histogram, Histogram)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
                    let (mut gets, mut puts) = (Histogram::default(), Histogram::default());
                    let mut ops = 0u64;
                    let mut seq = 0u64;
                    while Instant::now() < until {
                        let n = rng.random_range(0..KEYS_PER_WORKER);
                        let key = format!("h{worker}-{n:06}");
                        let began = Instant::now();
                        match mix.pick(rng.random_range(0..100)) {
                            OpKind::Read => {
                                store.get(key.as_bytes())?;
                                gets.record(began.elapsed());
                            }
                            _ => {
                                seq += 1;
                                let value = hammer::value::encode(&key, seq, VALUE_SIZE);
                                store.put(key.as_bytes(), &value)?;
                                puts.record(began.elapsed());
                            }
                        }
                        ops += 1;
                    }
                    Ok((ops, gets, puts))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let (mut ops, mut gets, mut puts) = (0, Histogram::default(), Histogram::default());
    for result in results {
        let (n, g, p) = result?;
        ops += n;
        gets.merge(&g);
        puts.merge(&p);
    }
    Ok(Figures {
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        get_p50_ms: ms(gets.quantile(0.5)),
        get_p99_ms: ms(gets.quantile(0.99)),
        put_p50_ms: ms(puts.quantile(0.5)),
        put_p99_ms: ms(puts.quantile(0.99)),
    })
}

/// A proxy in front of the node at `node`, serving on a free port.
async fn start_proxy(node: &str, batch: BatchConfig) -> anyhow::Result<(Proxy, String)> {
    let proxy = Proxy::new(ProxyConfig {
        batch,
        ..ProxyConfig::default()
    });
    proxy.set_nodes([node.to_owned()]);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let serving = proxy.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    // The proxy learns the node's ranges from its stream.
    let ready = Instant::now();
    while proxy.routing().active_route(b"h0").is_none() {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(10),
            "the proxy never saw the node's range"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((proxy, addr))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt::init();
    }
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let workers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);

    // One node owning the whole keyspace (no controller: the range is placed by
    // hand, as a controller would).
    let dir = tempfile::tempdir()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let node = NodeServer::start(dir.path(), listener, KvNodeConfig::new("")).await?;
    let everything = RangeMeta::new(RangeId::FIRST, Key::from(""), Key::from(""))?;
    node.rangelet.prepare(everything, vec![]).await?;
    node.rangelet.activate(RangeId::FIRST).await?;

    let (_batching, proxy_addr) =
        start_proxy(&node.addr.to_string(), BatchConfig::default()).await?;
    let single_calls = BatchConfig {
        max_ops: 1,
        ..BatchConfig::default()
    };
    let (_single, single_addr) = start_proxy(&node.addr.to_string(), single_calls).await?;

    println!(
        "Get/Put, {workers} workers, {KEYS_PER_WORKER} keys each, {VALUE_SIZE}-byte values, 50% reads, {seconds} s per path (network paths in turns, 1 s slices)"
    );
    // The network paths in turns, one-second slices (see the module doc).
    let (mut direct, mut proxied, mut single) =
        (Slices::default(), Slices::default(), Slices::default());
    let mut slice_ratios = Vec::new();
    for _ in 0..seconds {
        let d = hammer(node.addr.to_string(), 1, workers).await?;
        let p = hammer(proxy_addr.clone(), 1, workers).await?;
        let s = hammer(single_addr.clone(), 1, workers).await?;
        slice_ratios.push(p.ops_per_sec / d.ops_per_sec);
        direct.0.push(d);
        proxied.0.push(p);
        single.0.push(s);
    }
    let mut figures = BTreeMap::new();
    figures.insert("2 direct", direct.pooled());
    figures.insert("1 proxy", proxied.pooled());
    figures.insert("5 proxy, single", single.pooled());
    let store = node.store().clone();
    let in_proc = tokio::task::spawn_blocking(move || in_process(store.as_ref(), seconds, workers))
        .await
        .context("in-process run")??;
    figures.insert("3 in-process", in_proc);
    let plain_dir = tempfile::tempdir()?;
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let plain = Unsynced(rocksdb::DB::open(&options, plain_dir.path())?);
    let unsynced = tokio::task::spawn_blocking(move || in_process(&plain, seconds, workers))
        .await
        .context("unsynced in-process run")??;
    figures.insert("4 no WAL sync", unsynced);

    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "path", "ops/s", "get p50", "get p99", "put p50", "put p99"
    );
    for (name, f) in &figures {
        println!(
            "{:<14} {:>10.0} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>8.3}ms",
            &name[2..],
            f.ops_per_sec,
            f.get_p50_ms,
            f.get_p99_ms,
            f.put_p50_ms,
            f.put_p99_ms
        );
    }
    let (proxy, single, direct, local, unsynced) = (
        &figures["1 proxy"],
        &figures["5 proxy, single"],
        &figures["2 direct"],
        &figures["3 in-process"],
        &figures["4 no WAL sync"],
    );
    println!(
        "what durable acks cost in-process: throughput synced/unsynced {:.3}, put p50 {:.3} ms vs {:.3} ms",
        local.ops_per_sec / unsynced.ops_per_sec,
        local.put_p50_ms,
        unsynced.put_p50_ms
    );
    println!(
        "throughput ratios: proxy/direct {:.2}, direct/in-process {:.3}, proxy/in-process {:.3}",
        proxy.ops_per_sec / direct.ops_per_sec,
        direct.ops_per_sec / local.ops_per_sec,
        proxy.ops_per_sec / local.ops_per_sec
    );
    let mut sorted = slice_ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let shown: Vec<String> = slice_ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "proxy/direct per slice (each proxy slice against the direct slice just before it): {} (min {:.2}, median {:.2}, max {:.2})",
        shown.join(" "),
        sorted.first().copied().unwrap_or_default(),
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default()
    );
    println!(
        "batching in the proxy: proxy/direct {:.2} with it, {:.2} with single calls",
        proxy.ops_per_sec / direct.ops_per_sec,
        single.ops_per_sec / direct.ops_per_sec
    );
    println!(
        "p99 ratios (get, put): proxy/direct {:.2}, {:.2}",
        proxy.get_p99_ms / direct.get_p99_ms,
        proxy.put_p99_ms / direct.put_p99_ms
    );
    node.shutdown().await?;
    Ok(())
}
