//! `rangerd`: the Ranger controller daemon.
//!
//! Runs with nothing else installed: the keyspace lives in an embedded database
//! file, and nodes register with `rangerd` itself (or come from `--nodes`).
//!
//! With `--consul`, several `rangerd` share one keyspace in Consul's KV store:
//! they elect a leader through a Consul lock, only the leader runs the
//! controller loop (every write fenced by its session), nodes are found in
//! Consul's catalog, and standbys refuse RPCs with UNAVAILABLE naming the
//! leader (see `ranger_controller::election` and `ranger_controller::ha`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry as MetricsRegistry;
use ranger_controller::balancer::BalancerConfig;
use ranger_controller::bootstrap::load_keyspace;
use ranger_controller::config::{BalanceMode, Balancing, OrchestratorConfig, Replication};
use ranger_controller::dashboard::DashboardConfig;
use ranger_controller::discovery::{Discovery, Registry, StaticDiscovery};
use ranger_controller::metrics::RuntimeMetrics;
use ranger_controller::orchestrator::Engine;
use ranger_controller::persist::{DynPersister, MemoryPersister, RedbPersister};
use ranger_controller::runtime::{self, RuntimeConfig};
use ranger_controller::service::{self, ControllerSlot};
use ranger_controller::transport::GrpcTransport;
use ranger_process::{LogOutput, Stop, init_logging};
use tokio::net::TcpListener;

/// The Ranger controller.
/// Durations are bounded so that no deadline can overflow the clock (a day is
/// far beyond any sensible setting) and no interval is zero.
fn millis() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=86_400_000)
}

fn millis_or_zero() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(0..=86_400_000)
}

fn seconds() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..=86_400)
}

#[derive(Debug, Parser)]
#[command(name = "rangerd", version, about)]
struct Args {
    /// Address to serve the Orchestrator, Debug, Control and Registry services on.
    #[arg(long, env = "RANGERD_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,

    /// Address to serve HTTP on: Prometheus metrics at `/metrics` and the
    /// dashboard at `/` (off unless set; `bin/cluster` sets it).
    #[arg(long, env = "RANGERD_HTTP")]
    http: Option<SocketAddr>,

    /// Embedded keyspace database file (created if missing; unused with --consul).
    #[arg(long, env = "RANGERD_STORE", default_value = "rangerd.redb")]
    store: PathBuf,

    /// Keep the keyspace in memory only (lost on exit; for experiments).
    #[arg(long, conflicts_with_all = ["store", "consul"])]
    memory: bool,

    /// Consul HTTP address (e.g. http://127.0.0.1:8500): keep the keyspace in
    /// Consul, find nodes in its catalog, and elect one leader among the
    /// rangerd processes sharing the prefix.
    #[arg(long, env = "RANGERD_CONSUL")]
    consul: Option<String>,

    /// Consul ACL token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,

    /// Consul KV prefix of this cluster: `<prefix>leader` is the leader lock,
    /// `<prefix>keyspace/` the keyspace.
    #[arg(long, env = "RANGERD_CONSUL_PREFIX", default_value = "ranger/")]
    consul_prefix: String,

    /// Consul service name the nodes register as (ignored with --nodes).
    #[arg(long, env = "RANGERD_CONSUL_SERVICE", default_value = "node")]
    consul_service: String,

    /// Address other processes reach this rangerd at, written in the leader lock
    /// and named by standbys (default: --listen).
    #[arg(long, env = "RANGERD_ADVERTISE")]
    advertise: Option<String>,

    /// With --consul: how long this process's leader health check stays
    /// passing without a new pass. A crashed leader's lock is free this long
    /// after its last pass; a leader that could not pass it for this long
    /// deposes itself (see `ranger_controller::election`).
    #[arg(long, env = "RANGERD_LEADER_CHECK_TTL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(500..=60_000))]
    leader_check_ttl_ms: u64,

    /// With --consul: how long after a leader's session ends nobody may take
    /// the lock (covers the scheduling slack of a leader deposing itself).
    #[arg(long, env = "RANGERD_LEADER_LOCK_DELAY_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    leader_lock_delay_ms: u64,

    /// A fixed node list, `id=host:port,...`, instead of nodes registering.
    #[arg(long, env = "RANGERD_NODES")]
    nodes: Option<String>,

    /// How long a node's registration lasts without renewal (embedded discovery).
    #[arg(long, env = "RANGERD_REGISTRY_TTL_MS", default_value_t = 6000, value_parser = millis())]
    registry_ttl_ms: u64,

    /// Active placements per range (1, or 3 for R3).
    #[arg(long, env = "RANGERD_REPLICATION", default_value_t = 1)]
    replication: usize,

    /// Write lease granted to nodes with every probe, in milliseconds.
    #[arg(long, default_value_t = 4000, value_parser = millis())]
    lease_ms: u64,

    /// Extra wait past the lease before a silent node's ranges are placed elsewhere.
    #[arg(long, default_value_t = 2000, value_parser = millis_or_zero())]
    lease_margin_ms: u64,

    /// How often nodes are probed, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = millis())]
    probe_ms: u64,

    /// Deadline of one RPC to a node, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = millis())]
    rpc_timeout_ms: u64,

    /// How long an operation may take before it is rolled back (while no
    /// destination has been told to activate), in seconds.
    #[arg(long, default_value_t = 30, value_parser = seconds())]
    op_deadline_s: u64,

    /// How long a Prepare may stay in progress before the controller gives up.
    #[arg(long, default_value_t = 60, value_parser = seconds())]
    prepare_deadline_s: u64,

    /// How much longer than the operation deadline a request waits for a
    /// destination already told to activate (it owns the range from then on).
    #[arg(long, default_value_t = 10, value_parser = seconds())]
    activate_deadline_s: u64,

    /// How long a prepare may go without visible progress (its copy growing)
    /// before the deadlines apply to it: big ranges that keep copying may move.
    #[arg(long, default_value_t = 15, value_parser = seconds())]
    prepare_stall_s: u64,

    /// Longest a Move/Split/Join call waits before answering DEADLINE_EXCEEDED.
    #[arg(long, default_value_t = 120, value_parser = seconds())]
    max_wait_s: u64,

    /// Whether the controller balances on its own: `on` plans each round and
    /// runs the plan, `dry-run` only shows it (`rangerctl balance`), `off` moves
    /// ranges only when an operator says so.
    #[arg(long, env = "RANGERD_BALANCE", default_value = "off")]
    balance: BalanceMode,

    /// Seconds between balancing rounds.
    #[arg(long, env = "RANGERD_BALANCE_INTERVAL_S", default_value_t = 10,
          value_parser = seconds())]
    balance_interval_s: u64,

    /// A node more than this fraction above (below) the mean load sheds (takes)
    /// load, down (up) to half of it.
    #[arg(long, env = "RANGERD_BALANCE_TOLERANCE", default_value_t = 0.10)]
    balance_tolerance: f64,

    /// Ranges larger than this many bytes are split.
    #[arg(long, env = "RANGERD_SPLIT_BYTES", default_value_t = 512 << 20)]
    split_bytes: u64,

    /// At most this many balancer operations at once.
    #[arg(long, env = "RANGERD_BALANCE_MAX_OPS", default_value_t = 4)]
    balance_max_ops: usize,

    /// Seconds a moved range stays put (and never goes back where it came from).
    #[arg(long, env = "RANGERD_MOVE_COOLDOWN_S", default_value_t = 600, value_parser = seconds())]
    move_cooldown_s: u64,

    /// Seconds after a split before its pieces may be joined again.
    #[arg(long, env = "RANGERD_JOIN_COOLDOWN_S", default_value_t = 600, value_parser = seconds())]
    join_cooldown_s: u64,

    /// Log format.
    #[arg(long, env = "RANGERD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging("info", LogOutput::from_format(&args.log_format));
    let config = orchestrator_config(&args);
    config
        .balancing
        .planner
        .validate()
        .context("balancer settings")?;
    // Registered whether or not --http serves them: recording is cheap, and one
    // code path is easier to trust than two.
    let mut metrics_registry = MetricsRegistry::default();
    let metrics = RuntimeMetrics::default();
    metrics.register(&mut metrics_registry);
    if args.consul.is_some() {
        consul_mode::run(&args, config, metrics_registry, metrics).await
    } else {
        run_embedded(&args, config, metrics_registry, metrics).await
    }
}

fn orchestrator_config(args: &Args) -> OrchestratorConfig {
    OrchestratorConfig {
        replication: Replication::with_target(args.replication),
        prepare_deadline: Duration::from_secs(args.prepare_deadline_s),
        op_deadline: Duration::from_secs(args.op_deadline_s),
        activate_deadline: Duration::from_secs(args.activate_deadline_s),
        prepare_stall: Duration::from_secs(args.prepare_stall_s),
        lease: Duration::from_millis(args.lease_ms),
        lease_margin: Duration::from_millis(args.lease_margin_ms),
        probe_interval: Duration::from_millis(args.probe_ms),
        rpc_timeout: Duration::from_millis(args.rpc_timeout_ms),
        balancing: Balancing {
            mode: args.balance,
            planner: BalancerConfig {
                tolerance: args.balance_tolerance,
                split_bytes: args.split_bytes,
                max_in_flight: args.balance_max_ops,
                move_cooldown: Duration::from_secs(args.move_cooldown_s),
                join_cooldown_after_split: Duration::from_secs(args.join_cooldown_s),
                ..BalancerConfig::default()
            },
        },
        ..OrchestratorConfig::default()
    }
}

fn runtime_config(args: &Args, metrics: RuntimeMetrics) -> RuntimeConfig {
    RuntimeConfig {
        balance_interval: Duration::from_secs(args.balance_interval_s),
        metrics,
        ..RuntimeConfig::default()
    }
}

/// Serves `/metrics` and the dashboard on `--http`, if set, until `stop`.
async fn serve_http(
    args: &Args,
    slot: ControllerSlot,
    metrics_registry: MetricsRegistry,
    stop: &Stop,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = args.http else {
        return Ok(None);
    };
    let metrics = ranger_controller::metrics::source(metrics_registry, slot.clone());
    let dashboard = DashboardConfig {
        max_wait: Duration::from_secs(args.max_wait_s),
        ..DashboardConfig::default()
    };
    let router = ranger_controller::http::router(slot, metrics, dashboard, stop.wait());
    let (_, task) = ranger_process::metrics::serve_http(addr, router, stop.wait()).await?;
    Ok(Some(task))
}

/// One controller, keyspace in an embedded database (or memory), nodes from the
/// embedded registry or `--nodes`.
async fn run_embedded(
    args: &Args,
    config: OrchestratorConfig,
    metrics_registry: MetricsRegistry,
    metrics: RuntimeMetrics,
) -> anyhow::Result<()> {
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

    let engine = Engine::new(keyspace, config, tokio::time::Instant::now())
        .with_wall_clock(ranger_controller::orchestrator::wall_clock_now());
    let stop = Stop::on_signals();
    let (handle, controller) = runtime::spawn(
        engine,
        persister,
        Arc::new(GrpcTransport::new()),
        membership,
        runtime_config(args, metrics),
        stop.wait(),
    );

    let slot = ControllerSlot::fixed(handle);
    let http = serve_http(args, slot.clone(), metrics_registry, &stop).await?;
    let mut router = service::router(slot, Duration::from_secs(args.max_wait_s));
    if let Some(registry) = &registry {
        router = router.add_service(registry.service());
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, discovery = if registry.is_some() { "embedded registry" } else { "static" }, "rangerd serving");
    let server = tokio::spawn(
        router.serve_with_incoming_shutdown(ranger_process::incoming(listener), stop.wait()),
    );

    // The loop ends on a stop, or on its own (an error): either way the server follows.
    let controller = controller.await;
    stop.stop();
    let _ = server.await;
    if let Some(http) = http {
        let _ = http.await;
    }
    match controller {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("controller stopped"),
        Err(e) => Err(e).context("controller task failed"),
    }
}

/// `--consul`: keyspace in Consul, nodes from its catalog (or `--nodes`), and the
/// controller loop only while this process holds the leader lock.
mod consul_mode {
    use ranger_consul::{Client, ClientConfig};
    use ranger_controller::discovery::ConsulDiscovery;
    use ranger_controller::election::{Candidate, ElectionConfig, LeaderElection};
    use ranger_controller::ha::{self, LeaderSetup};
    use ranger_controller::service::SlotState;

    use super::*;

    pub async fn run(
        args: &Args,
        config: OrchestratorConfig,
        metrics_registry: MetricsRegistry,
        metrics: RuntimeMetrics,
    ) -> anyhow::Result<()> {
        let address = args.consul.as_deref().context("--consul is required")?;
        let mut client_config = ClientConfig::new(address);
        if let Some(token) = &args.consul_token {
            client_config = client_config.with_token(token);
        }
        let client = Client::new(client_config).context("configuring the Consul client")?;
        let mut prefix = args.consul_prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let advertise = args
            .advertise
            .clone()
            .unwrap_or_else(|| args.listen.to_string());
        if args.advertise.is_none() && args.listen.ip().is_unspecified() {
            tracing::warn!(listen = %args.listen, "advertising an unspecified address; set --advertise");
        }

        // Kept alive for as long as rangerd runs: dropping it stops following Consul.
        let (_discovery, membership) = match &args.nodes {
            Some(list) => {
                let discovery = StaticDiscovery::parse(list).context("parsing --nodes")?;
                (None, discovery.membership())
            }
            None => {
                let discovery = ConsulDiscovery::spawn(client.clone(), &args.consul_service);
                let membership = discovery.membership();
                (Some(discovery), membership)
            }
        };

        // Serve before campaigning, so that the address in the lock answers.
        let (slot_tx, slot) = ControllerSlot::channel(SlotState::Standby { leader: None });
        let router = service::router(slot.clone(), Duration::from_secs(args.max_wait_s));
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let stop = Stop::on_signals();
        let server = tokio::spawn(
            router.serve_with_incoming_shutdown(ranger_process::incoming(listener), stop.wait()),
        );
        let http = serve_http(args, slot, metrics_registry, &stop).await?;

        let candidate = Candidate {
            id: format!("{advertise}/pid-{}", std::process::id()),
            addr: advertise.clone(),
        };
        let mut election_config = ElectionConfig::new(&prefix, candidate);
        election_config.check_ttl = Duration::from_millis(args.leader_check_ttl_ms);
        election_config.lock_delay = Duration::from_millis(args.leader_lock_delay_ms);
        let election = LeaderElection::start(client.clone(), election_config)
            .await
            .context("joining the leader election")?;
        tracing::info!(listen = %args.listen, %advertise, consul = %address, %prefix, "rangerd serving (Consul mode)");

        let setup = LeaderSetup {
            client,
            keyspace_prefix: format!("{prefix}keyspace/"),
            orchestrator: config,
            runtime: runtime_config(args, metrics),
        };
        let result = ha::run_when_leader(
            setup,
            &election,
            Arc::new(GrpcTransport::new()),
            membership,
            slot_tx,
            stop.receiver(),
        )
        .await;
        stop.stop();
        // The controller loop has stopped: only now let a standby take over.
        let left = election.shutdown().await;
        let _ = server.await;
        if let Some(http) = http {
            let _ = http.await;
        }
        result.context("running under leader election")?;
        left.context("leaving the leader election")?;
        Ok(())
    }
}
