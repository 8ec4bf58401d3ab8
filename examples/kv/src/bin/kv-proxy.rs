//! `kv-proxy`: the KV store's routing proxy. Serves `kv.KV` and forwards every
//! request to the node serving its key, retrying through handoffs.
//!
//! ```text
//! kv-proxy --listen 127.0.0.1:5100 --controller 127.0.0.1:5000
//! kv-proxy --nodes 127.0.0.1:5101,127.0.0.1:5102      # no controller
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ranger_consul::ClientConfig;
use ranger_kv::proxy::{
    BatchConfig, ConsulNodes, ControllerConfig, NodeDiscovery, Proxy, ProxyConfig, RetryPolicy,
};
use ranger_node_sdk::metrics::serve_metrics;
use ranger_node_sdk::{LogOutput, init_logging, shutdown_signal};
use tokio::net::TcpListener;

/// The KV routing proxy.
#[derive(Debug, Parser)]
#[command(name = "kv-proxy", version, about)]
struct Args {
    /// Address to serve `kv.KV` on.
    #[arg(long, env = "KV_PROXY_LISTEN", default_value = "127.0.0.1:5100")]
    listen: SocketAddr,

    /// The controller (`rangerd`) to learn the node list from.
    #[arg(long, env = "KV_PROXY_CONTROLLER", default_value = "127.0.0.1:5000")]
    controller: String,

    /// A fixed node list, `host:port,...` (or `id=host:port,...`, as rangerd
    /// takes it), instead of asking the controller.
    #[arg(long, env = "KV_PROXY_NODES", conflicts_with_all = ["controller", "consul"])]
    nodes: Option<String>,

    /// Learn the nodes from Consul's catalog at this agent (`http://127.0.0.1:8500`)
    /// instead of asking the controller.
    #[arg(long, env = "KV_PROXY_CONSUL", conflicts_with = "controller")]
    consul: Option<String>,

    /// ACL token for Consul.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,

    /// The Consul service name the nodes register under.
    #[arg(long, env = "KV_PROXY_CONSUL_SERVICE", default_value = "node")]
    consul_service: String,

    /// How often the controller is asked for the node list, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,

    /// How long one request may wait and retry (e.g. through a handoff) before
    /// the client gets UNAVAILABLE, in milliseconds.
    #[arg(long, env = "KV_PROXY_DEADLINE_MS", default_value_t = 5000)]
    deadline_ms: u64,

    /// Most client requests sent to one node as one `kv.KV/Batch` (those that
    /// arrive while that node's previous batch is out). 1 sends every request
    /// as its own call.
    #[arg(long, env = "KV_PROXY_BATCH_MAX_OPS", default_value_t = BatchConfig::default().max_ops as u64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_ops: u64,

    /// Most bytes of keys and values in one batch; a bigger op goes alone.
    #[arg(long, env = "KV_PROXY_BATCH_MAX_BYTES", default_value_t = BatchConfig::default().max_bytes as u64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_bytes: u64,

    /// Batches in flight to one node at once, for reads and for writes each.
    #[arg(long, env = "KV_PROXY_BATCH_IN_FLIGHT", default_value_t = BatchConfig::default().in_flight as u64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_in_flight: u64,

    /// Serve Prometheus metrics (`GET /metrics`, `ranger_kv_proxy_*`) on this
    /// address.
    #[arg(long, env = "KV_PROXY_METRICS")]
    metrics: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "KV_PROXY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging("info", LogOutput::from_format(&args.log_format));

    let proxy = Proxy::new(ProxyConfig {
        retry: RetryPolicy {
            deadline: Duration::from_millis(args.deadline_ms),
            ..RetryPolicy::default()
        },
        batch: BatchConfig {
            max_ops: usize::try_from(args.batch_max_ops).context("--batch-max-ops")?,
            max_bytes: usize::try_from(args.batch_max_bytes).context("--batch-max-bytes")?,
            in_flight: usize::try_from(args.batch_in_flight).context("--batch-in-flight")?,
        },
        ..ProxyConfig::default()
    });
    // Held until shutdown: dropping it stops following the node list.
    let _following = if let Some(list) = &args.nodes {
        // The list rangerd takes too; the proxy routes by address only.
        let nodes = ranger_proto::parse_node_list(list).context("parsing --nodes")?;
        tracing::info!(?nodes, "static node list");
        proxy.set_nodes(nodes.into_values());
        Following::Static
    } else if let Some(address) = &args.consul {
        let mut config = ClientConfig::new(address.clone());
        if let Some(token) = &args.consul_token {
            config = config.with_token(token.clone());
        }
        let client = ranger_consul::Client::new(config).context("--consul")?;
        tracing::info!(consul = %address, service = %args.consul_service, "following Consul's catalog");
        Following::Consul(proxy.follow_consul(client, &args.consul_service))
    } else {
        let config = ControllerConfig {
            poll_interval: Duration::from_millis(args.poll_ms.max(1)),
            ..ControllerConfig::new(args.controller.clone())
        };
        tracing::info!(controller = %args.controller, "following the controller's node list");
        Following::Controller(proxy.follow_controller(config).context("--controller")?)
    };

    if let Some(addr) = args.metrics {
        let (bound, _task) = serve_metrics(addr, proxy.metrics(), shutdown_signal())
            .await
            .context("--metrics")?;
        tracing::info!(metrics = %bound, "serving metrics");
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, deadline_ms = args.deadline_ms, "kv-proxy serving");
    proxy
        .serve(listener, shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("kv-proxy stopped");
    Ok(())
}

/// Where the node list comes from. The handles are held, never read: dropping
/// one stops the task that follows the list.
#[derive(Debug)]
#[allow(dead_code)]
enum Following {
    Static,
    Controller(NodeDiscovery),
    Consul(ConsulNodes),
}
