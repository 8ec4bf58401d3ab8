//! `rangerd`: the Ranger controller daemon.
//!
//! Runs with nothing else installed: the keyspace lives in an embedded database
//! file, and nodes register with `rangerd` itself (or come from `--nodes`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ranger_controller::bootstrap::load_keyspace;
use ranger_controller::config::{OrchestratorConfig, Replication};
use ranger_controller::discovery::{Discovery, Registry, StaticDiscovery};
use ranger_controller::orchestrator::Engine;
use ranger_controller::persist::{DynPersister, MemoryPersister, RedbPersister};
use ranger_controller::runtime::{self, RuntimeConfig};
use ranger_controller::service;
use ranger_controller::transport::GrpcTransport;
use ranger_node_sdk::shutdown_signal;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// The Ranger controller.
#[derive(Debug, Parser)]
#[command(name = "rangerd", version, about)]
struct Args {
    /// Address to serve the Orchestrator, Debug, Control and Registry services on.
    #[arg(long, env = "RANGERD_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,

    /// Embedded keyspace database file (created if missing).
    #[arg(long, env = "RANGERD_STORE", default_value = "rangerd.redb")]
    store: PathBuf,

    /// Keep the keyspace in memory only (lost on exit; for experiments).
    #[arg(long, conflicts_with = "store")]
    memory: bool,

    /// A fixed node list, `id=host:port,...`, instead of nodes registering.
    #[arg(long, env = "RANGERD_NODES")]
    nodes: Option<String>,

    /// How long a node's registration lasts without renewal (embedded discovery).
    #[arg(long, env = "RANGERD_REGISTRY_TTL_MS", default_value_t = 6000)]
    registry_ttl_ms: u64,

    /// Active placements per range (1, or 3 for R3).
    #[arg(long, env = "RANGERD_REPLICATION", default_value_t = 1)]
    replication: usize,

    /// Write lease granted to nodes with every probe, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    lease_ms: u64,

    /// Extra wait past the lease before a silent node's ranges are placed elsewhere.
    #[arg(long, default_value_t = 2000)]
    lease_margin_ms: u64,

    /// How often nodes are probed, in milliseconds.
    #[arg(long, default_value_t = 500)]
    probe_ms: u64,

    /// Deadline of one RPC to a node, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    rpc_timeout_ms: u64,

    /// How long an operation may take before it is rolled back, in seconds.
    #[arg(long, default_value_t = 30)]
    op_deadline_s: u64,

    /// How long a Prepare may stay in progress before the controller gives up.
    #[arg(long, default_value_t = 60)]
    prepare_deadline_s: u64,

    /// Longest a Move/Split/Join call waits before answering DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 120)]
    max_wait_s: u64,

    /// Log format.
    #[arg(long, env = "RANGERD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);

    let config = OrchestratorConfig {
        replication: Replication::with_target(args.replication),
        prepare_deadline: Duration::from_secs(args.prepare_deadline_s),
        op_deadline: Duration::from_secs(args.op_deadline_s),
        lease: Duration::from_millis(args.lease_ms),
        lease_margin: Duration::from_millis(args.lease_margin_ms),
        probe_interval: Duration::from_millis(args.probe_ms),
        rpc_timeout: Duration::from_millis(args.rpc_timeout_ms),
        ..OrchestratorConfig::default()
    };

    let persister: Arc<dyn DynPersister> = if args.memory {
        Arc::new(MemoryPersister::new())
    } else {
        Arc::new(
            RedbPersister::open(&args.store)
                .with_context(|| format!("opening keyspace store {}", args.store.display()))?,
        )
    };
    let started = std::time::Instant::now();
    let keyspace = load_keyspace(&persister).await?;
    tracing::info!(
        ranges = keyspace.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "keyspace loaded"
    );

    let (registry, membership) = match &args.nodes {
        Some(list) => {
            let discovery = StaticDiscovery::parse(list).context("parsing --nodes")?;
            (None, discovery.membership())
        }
        None => {
            let registry = Registry::new(Duration::from_millis(args.registry_ttl_ms));
            let membership = registry.membership();
            (Some(registry), membership)
        }
    };

    let engine = Engine::new(keyspace, config, tokio::time::Instant::now());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (handle, controller) = runtime::spawn(
        engine,
        persister,
        Arc::new(GrpcTransport::new()),
        membership,
        RuntimeConfig::default(),
        stopped,
    );

    let mut router = service::router(handle, Duration::from_secs(args.max_wait_s));
    if let Some(registry) = &registry {
        router = router.add_service(registry.service());
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, discovery = if registry.is_some() { "embedded registry" } else { "static" }, "rangerd serving");
    let server_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = tokio::spawn(
        router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), server_stop),
    );

    let mut controller = controller;
    let controller = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            (&mut controller).await
        }
        ended = &mut controller => ended,
    };
    let _ = stop_tx.send(true);
    let _ = server.await;
    match controller {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("controller stopped"),
        Err(e) => Err(e).context("controller task failed"),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
