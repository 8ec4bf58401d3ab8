//! What to start: the shape of a cluster and the flags of its processes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ranger_consul::test_agent::TestAgent;

use super::members::{Controller, KvNode, Proxy};
use super::{Backend, Cluster};

/// Maps a node's index and listening address to the address it advertises
/// (to the controller and, through it or Consul, to the proxy): the hook that
/// puts a fault-injecting relay in front of a node.
pub type AdvertiseFn = Arc<dyn Fn(usize, SocketAddr) -> String + Send + Sync>;

/// What to start.
#[derive(Clone)]
pub struct ClusterBuilder {
    pub(super) backend: Backend,
    pub(super) controllers: usize,
    pub(super) nodes: usize,
    pub(super) node_ids: Vec<String>,
    pub(super) proxy: bool,
    pub(super) proxy_deadline: Duration,
    pub(super) rangerd_flags: Vec<(String, String)>,
    pub(super) rangerd_args: Vec<String>,
    pub(super) rangerd_env: Vec<(String, String)>,
    pub(super) advertise: Option<AdvertiseFn>,
    pub(super) ack_logs: bool,
    pub(super) proxy_direct: bool,
    pub(super) replication: usize,
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
    /// Active copies per range (`rangerd --replication`); the cluster counts
    /// as settled once every range has exactly this many, all Active.
    pub fn replication(mut self, copies: usize) -> Self {
        self.replication = copies.max(1);
        self.rangerd_flags
            .push(("--replication".to_owned(), self.replication.to_string()));
        self
    }

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

    /// Every node logs each write it acknowledges (`kv-node --ack-log`, in the
    /// cluster's directory; see [`super::members::KvNode::ack_log`]), so that
    /// a test can check that no key had two writers at once.
    pub fn ack_logs(mut self, on: bool) -> Self {
        self.ack_logs = on;
        self
    }

    /// The proxy reaches the nodes at their listening addresses, from a static
    /// list, instead of the advertised ones it would learn from the controller
    /// or Consul: with a relay in the advertised address, a fault then cuts
    /// the controller (and Consul) from a node while clients still reach it.
    pub fn proxy_direct(mut self, on: bool) -> Self {
        self.proxy_direct = on;
        self
    }

    /// Starts everything, on Consul from `TestAgent::start` (which fails, saying
    /// how to fix it, where no container engine answers); waits until every
    /// node is known, every range is served, and (with a proxy) the proxy
    /// routes.
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
            replication: self.replication,
            dir: Some(dir),
        };
        // A cluster that fails to start says why from its processes' logs (a
        // node that could not bind its port, a controller that refused its
        // store): dropped here, outside a panic, it would print nothing.
        match self.start_processes(&mut cluster).await {
            Ok(()) => Ok(cluster),
            Err(error) => cluster.conclude(Err(error.context("starting the cluster"))),
        }
    }

    /// Starts the controllers, nodes and proxy in order, each waited for.
    async fn start_processes(&self, cluster: &mut Cluster) -> anyhow::Result<()> {
        for index in 0..self.controllers {
            let controller = Controller::new(self, cluster, index)?;
            cluster.controllers.push(controller);
            cluster.controllers[index].process.start()?;
            if index == 0 {
                cluster.wait_leads(0).await?;
            } else {
                cluster.wait_controller_serves(index).await?;
            }
        }
        for index in 0..self.nodes {
            let node = KvNode::new(self, cluster, index)?;
            cluster.nodes.push(node);
            cluster.nodes[index].process.start()?;
        }
        if self.nodes > 0 {
            cluster.wait_nodes_known().await?;
            cluster.wait_settled().await?;
        }
        if self.proxy {
            let mut proxy = Proxy::new(self, cluster)?;
            proxy.process.start()?;
            cluster.proxy = Some(proxy);
            if self.nodes > 0 {
                cluster.wait_proxy_routes().await?;
            }
        }
        Ok(())
    }
}
