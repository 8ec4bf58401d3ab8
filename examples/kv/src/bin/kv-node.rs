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
use ranger_consul::discovery::ServiceRegistration;
use ranger_consul::{CheckStatus, ClientConfig, RegistrationConfig};
use ranger_kv::node::KvNodeConfig;
use ranger_kv::node::server::NodeServer;
use ranger_node_sdk::metrics::serve_metrics;
use ranger_node_sdk::{LogOutput, Registration, init_logging, shutdown_signal};
use ranger_proto::NodeId;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "kv-node",
    version,
    about = "A node of the example range-sharded KV store"
)]
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
    /// Register in Consul at this agent (`http://127.0.0.1:8500`), with a gRPC
    /// health check, instead of with the controller.
    #[arg(long, env = "KV_NODE_CONSUL", conflicts_with = "no_register")]
    consul: Option<String>,
    /// ACL token for Consul.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,
    /// The Consul service name to register under (PROTOCOL.md: `node`).
    #[arg(long, env = "KV_NODE_CONSUL_SERVICE", default_value = "node")]
    consul_service: String,
    /// Time between Consul's health checks of this node, in milliseconds. A
    /// node whose check failed (a partition that healed, a Consul that was
    /// down) is back in the passing set, and so in the controller's view and
    /// the proxies', only at the next check: this bounds that wait.
    #[arg(long, env = "KV_NODE_CONSUL_CHECK_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    consul_check_interval_ms: u64,
    /// How much load this node can carry relative to others (e.g. 2 on a machine
    /// twice as big); the balancer divides its load by it.
    #[arg(long, env = "KV_NODE_CAPACITY", default_value_t = 1.0, value_parser = positive)]
    capacity: f64,
    /// For fault drills: log every acknowledged write to this file, one JSON
    /// line each (key, range, accepted and acknowledged times), so that a test
    /// can check from outside that no key had two writers at once.
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address: the node
    /// SDK's `ranger_node_*` and the KV node's `ranger_kv_node_*`.
    #[arg(long, env = "KV_NODE_METRICS")]
    metrics: Option<SocketAddr>,
    /// On SIGTERM, ask to be drained and wait up to this long before stopping.
    #[arg(long, default_value_t = 0)]
    drain_on_shutdown_s: u64,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// What this node registers in Consul. The node registers only once it serves
/// (`main` starts the server first), so its check starts passing: left at
/// Consul's default, critical until the first check, a restarted node would
/// wait up to a whole check interval before the controller saw it again and
/// reactivated its ranges. Passing here grants nothing by itself: the
/// controller still gives a node leases and ranges only after probing it.
fn consul_registration(args: &Args, host: &str, port: u16) -> RegistrationConfig {
    let mut registration =
        RegistrationConfig::new(host, port).with_service_name(&args.consul_service);
    registration.check_interval = Duration::from_millis(args.consul_check_interval_ms);
    registration.initial_status = Some(CheckStatus::Passing);
    registration
}

/// A finite number above zero (the balancer divides by it).
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging("info", LogOutput::from_format(&args.log_format));

    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    let id =
        NodeId::new(args.id.clone().unwrap_or_else(|| advertise.clone())).context("node id")?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let config = KvNodeConfig {
        capacity: args.capacity,
        ack_log: args.ack_log.clone(),
        ..KvNodeConfig::new(advertise.clone())
    };
    let server = NodeServer::start(&args.data, listener, config)
        .await
        .with_context(|| format!("starting the node on {}", args.data.display()))?;
    tracing::info!(node = %id, ranges = server.rangelet.ranges().len(), "node state restored");
    if let Some(addr) = args.metrics {
        let (bound, _task) =
            serve_metrics(addr, server.metrics(), server.rangelet.shutdown_signal())
                .await
                .context("--metrics")?;
        tracing::info!(metrics = %bound, "serving metrics");
    }
    let registration = if args.no_register {
        Joined::Nothing
    } else if let Some(address) = &args.consul {
        Joined::Consul(register_in_consul(&args, address, &advertise)?)
    } else {
        Joined::Controller(Registration::start(
            &args.controller,
            id.clone(),
            advertise.clone(),
        )?)
    };
    tracing::info!(node = %id, listen = %args.listen, %advertise, "kv-node serving");

    shutdown_signal().await;
    if args.drain_on_shutdown_s > 0 {
        tracing::info!("draining before shutdown");
        let drained = server
            .rangelet
            .drain(Duration::from_secs(args.drain_on_shutdown_s))
            .await;
        tracing::info!(drained, "drain finished");
    }
    match registration {
        Joined::Nothing => {}
        Joined::Controller(registration) => registration.deregister().await,
        Joined::Consul(registration) => {
            if let Err(e) = registration.deregister().await {
                tracing::warn!(error = %e, "could not deregister from Consul; its health check will fail");
            }
        }
    }
    server.shutdown().await.context("stopping the server")?;
    tracing::info!("kv-node stopped");
    Ok(())
}

/// Where this node announced itself, to take it back on a clean shutdown.
enum Joined {
    Nothing,
    Controller(Registration),
    Consul(ServiceRegistration),
}

/// Registers `advertise` (`host:port`) in Consul per PROTOCOL.md's conventions,
/// re-registering in the background whenever the agent forgets it.
fn register_in_consul(
    args: &Args,
    address: &str,
    advertise: &str,
) -> anyhow::Result<ServiceRegistration> {
    let (host, port) = advertise
        .rsplit_once(':')
        .context("the advertised address must be host:port")?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("bad port in the advertised address {advertise}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut config = ClientConfig::new(address.to_owned());
    if let Some(token) = &args.consul_token {
        config = config.with_token(token.clone());
    }
    let client = ranger_consul::Client::new(config).context("--consul")?;
    let registration = consul_registration(args, host, port);
    let registration =
        ServiceRegistration::spawn(client, registration).context("registering in Consul")?;
    tracing::info!(consul = %address, service_id = registration.service_id(), "registering in Consul");
    Ok(registration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_registers_in_consul_as_passing_with_a_one_second_check_by_default() {
        let args = Args::try_parse_from(["kv-node", "--consul", "http://127.0.0.1:8500"])
            .expect("valid arguments");
        let registration = consul_registration(&args, "127.0.0.1", 7001);
        assert_eq!(registration.initial_status, Some(CheckStatus::Passing));
        assert_eq!(registration.check_interval, Duration::from_secs(1));
        assert_eq!(registration.service_name, "node");
    }

    #[test]
    fn the_check_interval_is_a_flag_and_zero_is_refused() {
        let args = Args::try_parse_from([
            "kv-node",
            "--consul",
            "http://127.0.0.1:8500",
            "--consul-check-interval-ms",
            "250",
        ])
        .expect("valid arguments");
        let registration = consul_registration(&args, "127.0.0.1", 7001);
        assert_eq!(registration.check_interval, Duration::from_millis(250));
        assert!(
            Args::try_parse_from(["kv-node", "--consul-check-interval-ms", "0"]).is_err(),
            "a zero interval is refused"
        );
    }
}
