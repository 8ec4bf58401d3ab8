//! `kv-node`: one node of the example KV store.
//!
//! Serves `ranger.Node` (the controller drives it), `kv.KV` (clients, the proxy,
//! and other nodes for state transfer) and gRPC health, on one port. Registers
//! with `rangerd`'s embedded discovery. Its data and its ranges' states live in
//! one RocksDB under `--data`, so a restarted node comes back with both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ranger_kv::node::service::KvService;
use ranger_kv::node::store::{RangeStates, Store};
use ranger_kv::node::{KvNode, KvNodeConfig};
use ranger_node_sdk::{Rangelet, RangeletConfig, Registration, node_router};
use ranger_proto::NodeId;
use ranger_node_sdk::shutdown_signal;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Debug, Parser)]
#[command(name = "kv-node", version, about = "A node of the example range-sharded KV store")]
struct Args {
    /// Address to serve on.
    #[arg(long, env = "KV_NODE_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Address others use to reach this node (defaults to --listen).
    #[arg(long, env = "KV_NODE_ADVERTISE")]
    advertise: Option<String>,
    /// This node's id (defaults to its advertised address).
    #[arg(long, env = "KV_NODE_ID")]
    id: Option<String>,
    /// Directory of the node's RocksDB.
    #[arg(long, env = "KV_NODE_DATA", default_value = "kv-node-data")]
    data: PathBuf,
    /// The controller to register with (its embedded discovery).
    #[arg(long, env = "KV_NODE_CONTROLLER", default_value = "127.0.0.1:5000")]
    controller: String,
    /// Do not register with the controller (it lists nodes statically).
    #[arg(long)]
    no_register: bool,
    /// On SIGTERM, ask to be drained and wait up to this long before stopping.
    #[arg(long, default_value_t = 0)]
    drain_on_shutdown_s: u64,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt().with_env_filter(filter).json().init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let advertise = args.advertise.clone().unwrap_or_else(|| args.listen.to_string());
    let id = NodeId::new(args.id.clone().unwrap_or_else(|| advertise.clone()))
        .context("node id")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let store = Store::open(&args.data).with_context(|| format!("opening RocksDB at {}", args.data.display()))?;
    let node = KvNode::open(store.clone(), KvNodeConfig::new(advertise.clone()))?;
    let rangelet = Rangelet::open(node.clone(), RangeStates(store), RangeletConfig::default())
        .await
        .context("restoring range states")?;
    tracing::info!(node = %id, ranges = rangelet.ranges().len(), "node state restored");

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let router = node_router(&rangelet)
        .await
        .add_service(KvService::new(node, rangelet.clone()).into_server());
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        rangelet.shutdown_signal(),
    ));
    let registration = if args.no_register {
        None
    } else {
        Some(Registration::start(&args.controller, id.clone(), advertise.clone())?)
    };
    tracing::info!(node = %id, listen = %args.listen, %advertise, "kv-node serving");

    shutdown_signal().await;
    if args.drain_on_shutdown_s > 0 {
        tracing::info!("draining before shutdown");
        let drained = rangelet.drain(Duration::from_secs(args.drain_on_shutdown_s)).await;
        tracing::info!(drained, "drain finished");
    }
    if let Some(registration) = registration {
        registration.deregister().await;
    }
    rangelet.shutdown();
    server.await.context("server task")?.context("server")?;
    tracing::info!("kv-node stopped");
    Ok(())
}
