//! A whole KV cluster as processes on loopback: one or two `rangerd`, N
//! `kv-node`s and a `kv-proxy`, on the embedded backends (redb keyspace,
//! nodes registering with `rangerd`) or on Consul (`TestAgent`: keyspace,
//! catalog and leader lock). Every process logs to a file in the cluster's
//! directory; when a test panics, the tail of every log is printed and the
//! directory is kept. Everything is killed on drop.
//!
//! Processes keep their command line, so a restart after `kill -9` is the same
//! program on the same port with the same data, as an operator's restart is.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ranger_consul::test_agent::TestAgent;

use crate::binaries::{KV_NODE, KV_PROXY, RANGERD, binary};
use crate::ctl::Ctl;
use crate::hammer::{HammerOptions, HammerRun};
use crate::kv::Kv;
use crate::ports::free_addr;
use crate::process::Process;
use crate::views::{RangeView, settled};
use crate::wait::{self, PATIENCE};

/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Where the controller keeps the keyspace and finds nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: a redb file and `rangerd`'s own registry; no
    /// Consul anywhere.
    Embedded,
    /// Consul: keyspace in its KV store, nodes in its catalog, a leader lock.
    Consul,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Embedded => "embedded",
            Backend::Consul => "consul",
        })
    }
}

/// Maps a node's index and listening address to the address it advertises
/// (to the controller and, through it or Consul, to the proxy): the hook that
/// puts a fault-injecting relay in front of a node.
pub type AdvertiseFn = Arc<dyn Fn(usize, SocketAddr) -> String + Send + Sync>;

/// What to start.
#[derive(Clone)]
pub struct ClusterBuilder {
    backend: Backend,
    controllers: usize,
    nodes: usize,
    node_ids: Vec<String>,
    proxy: bool,
    proxy_deadline: Duration,
    rangerd_flags: Vec<(String, String)>,
    rangerd_args: Vec<String>,
    rangerd_env: Vec<(String, String)>,
    advertise: Option<AdvertiseFn>,
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("backend", &self.backend)
            .field("controllers", &self.controllers)
            .field("nodes", &self.nodes)
            .field("proxy", &self.proxy)
            .field("rangerd_args", &self.rangerd_args)
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// Controllers (2 needs Consul: the embedded backend has no election).
    pub fn controllers(mut self, n: usize) -> Self {
        self.controllers = n;
        self
    }

    /// KV nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// The nodes' ids on the embedded backend (default `node1`, `node2`...).
    /// On Consul a node's id is its advertised port (Consul's service id).
    pub fn node_ids(mut self, ids: &[&str]) -> Self {
        self.node_ids = ids.iter().map(|s| (*s).to_owned()).collect();
        self.nodes = ids.len();
        self
    }

    /// Whether to start a proxy (default yes).
    pub fn proxy(mut self, proxy: bool) -> Self {
        self.proxy = proxy;
        self
    }

    /// How long the proxy retries one request before the client gets an
    /// error (default 5 s).
    pub fn proxy_deadline(mut self, deadline: Duration) -> Self {
        self.proxy_deadline = deadline;
        self
    }

    /// Sets a `rangerd` flag that takes a value, replacing the harness's
    /// default for it if it has one (`--lease-ms`, `--lease-margin-ms`,
    /// `--probe-ms`, `--rpc-timeout-ms`; rangerd refuses a flag given twice).
    pub fn rangerd_flag(mut self, flag: &str, value: &str) -> Self {
        match self.rangerd_flags.iter_mut().find(|(f, _)| f == flag) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.rangerd_flags.push((flag.to_owned(), value.to_owned())),
        }
        self
    }

    /// More `rangerd` arguments, given as they are.
    pub fn rangerd_args(mut self, args: &[&str]) -> Self {
        self.rangerd_args
            .extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    /// An environment variable for `rangerd`.
    pub fn rangerd_env(mut self, key: &str, value: &str) -> Self {
        self.rangerd_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Nodes advertise `f(index, listen)` instead of their listening address.
    pub fn advertise(mut self, f: AdvertiseFn) -> Self {
        self.advertise = Some(f);
        self
    }

    /// Starts everything, on Consul from `TestAgent::start`; waits until
    /// every node is known, every range is served, and (with a proxy) the
    /// proxy routes.
    pub async fn start(self) -> anyhow::Result<Cluster> {
        let consul = match self.backend {
            Backend::Embedded => None,
            Backend::Consul => Some(
                TestAgent::start()
                    .await
                    .context("starting Consul for the cluster")?,
            ),
        };
        self.start_with(consul).await
    }

    /// [`ClusterBuilder::start`], except that a Consul that cannot run here
    /// (no container engine in container mode) skips the test: `None`, after
    /// `TestAgent::start_or_skip` said why. Any other failure panics.
    pub async fn start_or_skip(self) -> Option<Cluster> {
        let consul = match self.backend {
            Backend::Embedded => None,
            Backend::Consul => Some(TestAgent::start_or_skip().await?),
        };
        match self.start_with(consul).await {
            Ok(cluster) => Some(cluster),
            Err(error) => panic!("the cluster did not start: {error:#}"),
        }
    }

    async fn start_with(self, consul: Option<TestAgent>) -> anyhow::Result<Cluster> {
        if self.controllers == 0 {
            bail!("a cluster needs a controller");
        }
        if self.controllers > 1 && self.backend == Backend::Embedded {
            bail!("several controllers need Consul: the embedded backend elects no leader");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("ranger-it-{}-", self.backend))
            .tempdir()
            .context("creating the cluster's directory")?;
        let mut cluster = Cluster {
            backend: self.backend,
            controllers: Vec::new(),
            nodes: Vec::new(),
            proxy: None,
            consul,
            dir: Some(dir),
        };
        for index in 0..self.controllers {
            let controller = Controller::new(&self, &cluster, index)?;
            cluster.controllers.push(controller);
            cluster.controllers[index].process.start()?;
            if index == 0 {
                cluster.wait_leads(0).await?;
            } else {
                cluster.wait_controller_serves(index).await?;
            }
        }
        for index in 0..self.nodes {
            let node = KvNode::new(&self, &cluster, index)?;
            cluster.nodes.push(node);
            cluster.nodes[index].process.start()?;
        }
        if self.nodes > 0 {
            cluster.wait_nodes_known().await?;
            cluster.wait_settled().await?;
        }
        if self.proxy {
            let mut proxy = Proxy::new(&self, &cluster)?;
            proxy.process.start()?;
            cluster.proxy = Some(proxy);
            if self.nodes > 0 {
                cluster.wait_proxy_routes().await?;
            }
        }
        Ok(cluster)
    }
}

/// One `rangerd`.
#[derive(Debug)]
pub struct Controller {
    /// The process.
    pub process: Process,
    /// Where it serves.
    pub addr: String,
    ctl: Ctl,
}

impl Controller {
    fn new(spec: &ClusterBuilder, cluster: &Cluster, index: usize) -> anyhow::Result<Controller> {
        let addr = free_addr()?.to_string();
        let name = format!("rangerd{}", index + 1);
        let mut process = Process::new(&name, binary(RANGERD)?, cluster.dir())
            .args(["--listen", &addr])
            .env("RUST_LOG", "info,ranger_controller=debug");
        for (flag, value) in &spec.rangerd_flags {
            process = process.args([flag, value]);
        }
        process = match (&spec.backend, &cluster.consul) {
            (Backend::Consul, Some(consul)) => process
                .args(["--consul", &consul.address()])
                .args(["--consul-prefix", CONSUL_PREFIX]),
            (Backend::Embedded, _) => process
                .arg_path("--store", &cluster.dir().join(format!("{name}.redb")))
                .args(["--registry-ttl-ms", "3000"]),
            (Backend::Consul, None) => bail!("a Consul cluster without Consul"),
        };
        for (key, value) in &spec.rangerd_env {
            process = process.env(key, value);
        }
        process = process.args(&spec.rangerd_args);
        Ok(Controller {
            process,
            ctl: Ctl::new(addr.clone())?,
            addr,
        })
    }

    /// `rangerctl` for this controller.
    pub fn ctl(&self) -> &Ctl {
        &self.ctl
    }
}

/// The Consul KV prefix of the cluster (`<prefix>leader` is the leader lock).
pub const CONSUL_PREFIX: &str = "ranger/";

/// One `kv-node`.
#[derive(Debug)]
pub struct KvNode {
    /// The process.
    pub process: Process,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where others reach it.
    pub advertise: String,
    /// Its id as the controller knows it.
    pub id: String,
    /// Its RocksDB directory, kept across restarts.
    pub data: PathBuf,
}

impl KvNode {
    fn new(spec: &ClusterBuilder, cluster: &Cluster, index: usize) -> anyhow::Result<KvNode> {
        let listen = free_addr()?;
        let advertise = match &spec.advertise {
            Some(f) => f(index, listen),
            None => listen.to_string(),
        };
        let id = match spec.backend {
            Backend::Embedded => spec
                .node_ids
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("node{}", index + 1)),
            // Consul's service id for a node on loopback is its port.
            Backend::Consul => advertise
                .rsplit_once(':')
                .map(|(_, port)| port.to_owned())
                .with_context(|| format!("advertised address {advertise} has no port"))?,
        };
        let data = cluster.dir().join(format!("data-{id}"));
        let mut process = Process::new(&format!("kv-node-{id}"), binary(KV_NODE)?, cluster.dir())
            .args(["--listen", &listen.to_string()])
            .args(["--advertise", &advertise, "--id", &id])
            .arg_path("--data", &data);
        process = match &cluster.consul {
            Some(consul) => process.args(["--consul", &consul.address()]),
            None => process.args(["--controller", &cluster.controllers[0].addr]),
        };
        Ok(KvNode {
            process,
            listen,
            advertise,
            id,
            data,
        })
    }

    /// The `kv` client talking to this node directly (not through the proxy).
    pub fn kv(&self) -> anyhow::Result<Kv> {
        Kv::new(self.listen.to_string())
    }
}

/// The `kv-proxy`.
#[derive(Debug)]
pub struct Proxy {
    /// The process.
    pub process: Process,
    /// Where it serves `kv.KV`.
    pub addr: String,
}

impl Proxy {
    fn new(spec: &ClusterBuilder, cluster: &Cluster) -> anyhow::Result<Proxy> {
        let addr = free_addr()?.to_string();
        let mut process = Process::new("kv-proxy", binary(KV_PROXY)?, cluster.dir())
            .args(["--listen", &addr])
            .args([
                "--deadline-ms",
                &spec.proxy_deadline.as_millis().to_string(),
            ]);
        process = match &cluster.consul {
            Some(consul) => process.args(["--consul", &consul.address()]),
            None => process.args([
                "--controller",
                &cluster.controllers[0].addr,
                "--poll-ms",
                "200",
            ]),
        };
        Ok(Proxy { process, addr })
    }
}

/// A running cluster. Dropping it kills every process.
#[derive(Debug)]
pub struct Cluster {
    backend: Backend,
    /// The controllers, in start order.
    pub controllers: Vec<Controller>,
    /// The KV nodes, in start order.
    pub nodes: Vec<KvNode>,
    /// The proxy, if started.
    pub proxy: Option<Proxy>,
    consul: Option<TestAgent>,
    // Last: removed after every process is gone (kept when a test fails).
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// What to start on `backend`: one controller, three nodes, a proxy.
    pub fn builder(backend: Backend) -> ClusterBuilder {
        ClusterBuilder {
            backend,
            controllers: 1,
            nodes: 3,
            node_ids: Vec::new(),
            proxy: true,
            proxy_deadline: Duration::from_secs(5),
            // Short timings, so that losses and leases play out in seconds.
            rangerd_flags: [
                ("--probe-ms", "100"),
                ("--rpc-timeout-ms", "2000"),
                ("--lease-ms", "2000"),
                ("--lease-margin-ms", "1000"),
            ]
            .into_iter()
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
            .collect(),
            rangerd_args: Vec::new(),
            rangerd_env: Vec::new(),
            advertise: None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The directory holding every log, store and data directory.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| Path::new("."), tempfile::TempDir::path)
    }

    /// The Consul agent, on the Consul backend.
    pub fn consul(&self) -> Option<&TestAgent> {
        self.consul.as_ref()
    }

    /// `rangerctl` for the first controller (the only one, or the first
    /// leader).
    pub fn ctl(&self) -> &Ctl {
        self.controllers[0].ctl()
    }

    /// `rangerctl` for controller `index`.
    pub fn ctl_at(&self, index: usize) -> &Ctl {
        self.controllers[index].ctl()
    }

    /// The index of the controller that leads now: the one whose `rangerctl
    /// ranges` succeeds (standbys refuse, naming the leader).
    pub async fn leader(&self) -> anyhow::Result<usize> {
        wait::until("a controller leads", PATIENCE, async || {
            let mut seen = Vec::new();
            for (index, controller) in self.controllers.iter().enumerate() {
                let out = controller
                    .ctl
                    .run(&["ranges"])
                    .await
                    .map_err(|e| e.to_string())?;
                if out.success() {
                    return Ok(index);
                }
                seen.push(format!("{}: {}", controller.addr, out.stderr.trim()));
            }
            Err(seen.join("; "))
        })
        .await
    }

    /// `rangerctl` for the controller that leads now.
    pub async fn leader_ctl(&self) -> anyhow::Result<&Ctl> {
        Ok(self.ctl_at(self.leader().await?))
    }

    /// The proxy's address.
    pub fn proxy_addr(&self) -> anyhow::Result<&str> {
        Ok(&self
            .proxy
            .as_ref()
            .context("no proxy in this cluster")?
            .addr)
    }

    /// The `kv` client through the proxy.
    pub fn kv(&self) -> anyhow::Result<Kv> {
        Kv::new(self.proxy_addr()?)
    }

    /// The index of the node with id `id`.
    pub fn node_index(&self, id: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .with_context(|| format!("no node {id} in this cluster"))
    }

    /// Every node's id, in start order.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// Starts the hammer through the proxy and waits until its load runs.
    pub async fn hammer(&self, options: &HammerOptions) -> anyhow::Result<HammerRun> {
        HammerRun::start(self.proxy_addr()?, self.dir(), "hammer", options).await
    }

    /// `kill -9` of node `index`.
    pub fn kill_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.nodes[index].process.kill9()
    }

    /// Starts node `index` again: same port, same data.
    pub fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        self.nodes[index].process.start()
    }

    /// `kill -9` of controller `index`.
    pub fn kill_controller(&mut self, index: usize) -> anyhow::Result<()> {
        self.controllers[index].process.kill9()
    }

    /// Starts controller `index` again (same port, same store or Consul
    /// prefix) and waits until it serves: as leader when it is the only
    /// controller, else as leader or standby.
    pub async fn restart_controller(&mut self, index: usize) -> anyhow::Result<()> {
        self.controllers[index].process.start()?;
        if self.controllers.len() == 1 {
            self.wait_leads(index).await
        } else {
            self.wait_controller_serves(index).await
        }
    }

    /// Waits until controller `index` answers as the leader.
    pub async fn wait_leads(&self, index: usize) -> anyhow::Result<()> {
        let controller = &self.controllers[index];
        wait::until(
            &format!("{} leads", controller.process.name()),
            PATIENCE,
            async || {
                let out = controller
                    .ctl
                    .run(&["ranges"])
                    .await
                    .map_err(|e| e.to_string())?;
                if out.success() {
                    Ok(())
                } else {
                    Err(out.stderr)
                }
            },
        )
        .await
    }

    /// Waits until controller `index` answers at all (a standby answers with
    /// an error naming the leader).
    async fn wait_controller_serves(&self, index: usize) -> anyhow::Result<()> {
        let controller = &self.controllers[index];
        wait::until(
            &format!("{} serves", controller.process.name()),
            PATIENCE,
            async || {
                let out = controller
                    .ctl
                    .run(&["ranges"])
                    .await
                    .map_err(|e| e.to_string())?;
                if out.success() || out.stderr.contains("not the leader") {
                    Ok(())
                } else {
                    Err(out.stderr)
                }
            },
        )
        .await
    }

    /// Waits until the leader lists exactly this cluster's nodes.
    pub async fn wait_nodes_known(&self) -> anyhow::Result<()> {
        let ctl = self.leader_ctl().await?;
        let mut want = self.node_ids();
        want.sort();
        wait::until("every node is known", PATIENCE, async || {
            let nodes = ctl.nodes().await.map_err(|e| format!("{e:#}"))?;
            let mut ids: Vec<String> = nodes.into_iter().map(|n| n.id).collect();
            ids.sort();
            if ids == want {
                Ok(())
            } else {
                Err(format!("nodes {ids:?}, want {want:?}"))
            }
        })
        .await
    }

    /// Waits until every current range is served by exactly one Active
    /// placement and no operation is in flight; returns the ranges.
    pub async fn wait_settled(&self) -> anyhow::Result<Vec<RangeView>> {
        self.wait_settled_where("every range is served and no operation runs", |_| Ok(()))
            .await
    }

    /// Waits until `check` accepts the ranges the leader lists, settled or
    /// not; returns them.
    pub async fn wait_ranges(
        &self,
        what: &str,
        check: impl Fn(&[RangeView]) -> Result<(), String>,
    ) -> anyhow::Result<Vec<RangeView>> {
        wait::until(what, PATIENCE, async || {
            let (_, ranges) = self.leader_ranges().await?;
            check(&ranges)?;
            Ok(ranges)
        })
        .await
    }

    /// Waits until the cluster is settled (see [`Cluster::wait_settled`])
    /// and `check` accepts its ranges.
    pub async fn wait_settled_where(
        &self,
        what: &str,
        check: impl Fn(&[RangeView]) -> Result<(), String>,
    ) -> anyhow::Result<Vec<RangeView>> {
        wait::until(what, PATIENCE, async || {
            let (ctl, ranges) = self.leader_ranges().await?;
            settled(&ranges)?;
            check(&ranges)?;
            let ops = ctl.ops().await.map_err(|e| format!("{e:#}"))?;
            if !ops.is_empty() {
                return Err(format!("operations in flight: {ops:?}"));
            }
            Ok(ranges)
        })
        .await
    }

    /// The ranges as the controller that leads right now lists them (tried
    /// in start order; standbys and dead ones refuse).
    pub async fn leader_ranges(&self) -> Result<(&Ctl, Vec<RangeView>), String> {
        let mut seen = Vec::new();
        for controller in &self.controllers {
            if controller.process.pid().is_none() {
                continue;
            }
            match controller.ctl.ranges().await {
                Ok(ranges) => return Ok((&controller.ctl, ranges)),
                Err(e) => seen.push(format!("{e:#}")),
            }
        }
        Err(format!("no controller leads: {seen:?}"))
    }

    /// Waits until a read through the proxy reaches a node (NOT_FOUND or a
    /// value both prove the route).
    async fn wait_proxy_routes(&self) -> anyhow::Result<()> {
        let kv = self.kv()?;
        wait::until("the proxy routes", PATIENCE, async || {
            let out = kv
                .run(&["get", "~harness-probe"])
                .await
                .map_err(|e| e.to_string())?;
            match out.status.code() {
                Some(0 | 1) => Ok(()),
                _ => Err(out.stderr),
            }
        })
        .await
    }

    /// Waits until the cluster is settled and returns how long that took
    /// from `since` (a fault or a restart): the time to recover.
    pub async fn recovered_since(&self, since: Instant) -> anyhow::Result<Duration> {
        self.wait_settled().await?;
        Ok(since.elapsed())
    }

    /// Ends a test that returns its failure instead of panicking: on an
    /// error, prints every log's tail and keeps the cluster's directory (as
    /// a panic would), then stops everything and passes the result on.
    pub fn conclude<T>(mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(error) = &result {
            eprintln!("----- the test failed: {error:#}");
            self.print_logs();
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("----- cluster files kept in {} -----", kept.display());
            }
        }
        result
    }

    /// Prints every process's log tail (and Consul's) on stderr.
    pub fn print_logs(&self) {
        let mut processes: Vec<&Process> = Vec::new();
        processes.extend(self.controllers.iter().map(|c| &c.process));
        processes.extend(self.nodes.iter().map(|n| &n.process));
        processes.extend(self.proxy.iter().map(|p| &p.process));
        for process in processes {
            eprintln!(
                "----- {} ({}) -----\n{}",
                process.name(),
                process.log_path().display(),
                process.log_tail(LOG_TAIL_LINES)
            );
        }
        let hammer = self.dir().join("hammer.log");
        if hammer.exists() {
            eprintln!(
                "----- hammer ({}) -----\n{}",
                hammer.display(),
                crate::process::tail(&hammer, LOG_TAIL_LINES)
            );
        }
        if let Some(consul) = &self.consul {
            eprintln!("----- consul -----\n{}", consul.log_tail(LOG_TAIL_LINES));
        }
    }
}

/// Set (to anything) to keep every cluster's directory, logs included, also
/// when its test passes.
pub const KEEP_ENV: &str = "RANGER_IT_KEEP";

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            self.print_logs();
        }
        if (failed || std::env::var_os(KEEP_ENV).is_some())
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            eprintln!("----- cluster files kept in {} -----", kept.display());
        }
    }
}
