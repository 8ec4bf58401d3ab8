//! A whole KV cluster as processes on loopback: one or two `rangerd`, N
//! `kv-node`s and a `kv-proxy`, on the embedded backends (redb keyspace,
//! nodes registering with `rangerd`) or on Consul (`TestAgent`: keyspace,
//! catalog and leader lock). Every process logs to a file in the cluster's
//! directory; when a test panics, the tail of every log is printed and the
//! directory is kept. Everything is killed on drop.
//!
//! Processes keep their command line, so a restart after `kill -9` is the same
//! program on the same port with the same data, as an operator's restart is.
//!
//! [`ClusterBuilder`] says what to start; [`Controller`], [`KvNode`] and
//! [`Proxy`] are the processes (their command lines); [`Cluster`] reaches
//! them, kills and restarts them, and waits for the states tests expect.

mod builder;
mod members;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ranger_consul::test_agent::TestAgent;

use crate::ctl::Ctl;
use crate::hammer::{HammerOptions, HammerRun};
use crate::kv::Kv;
use crate::process::Process;
use crate::views::{RangeView, settled_at};
use crate::wait::{self, PATIENCE};

pub use builder::{AdvertiseFn, ClusterBuilder};
pub use members::{CONSUL_PREFIX, Controller, KvNode, Proxy};

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

/// A running cluster. Dropping it kills every process.
#[derive(Debug)]
pub struct Cluster {
    pub(super) backend: Backend,
    /// The controllers, in start order.
    pub controllers: Vec<Controller>,
    /// The KV nodes, in start order.
    pub nodes: Vec<KvNode>,
    /// The proxy, if started.
    pub proxy: Option<Proxy>,
    pub(super) consul: Option<TestAgent>,
    /// Active copies per range once settled (1 unless the builder said).
    pub(super) replication: usize,
    // Last: removed after every process is gone (kept when a test fails).
    pub(super) dir: Option<tempfile::TempDir>,
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
            ack_logs: false,
            proxy_direct: false,
            replication: 1,
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

    /// The Consul agent, to stop and restart it (a fault from outside).
    pub fn consul_mut(&mut self) -> Option<&mut TestAgent> {
        self.consul.as_mut()
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

    /// The base URL of controller `index`'s HTTP side (`rangerd --http`:
    /// `/metrics` and the dashboard), e.g. `http://127.0.0.1:4321`.
    pub fn controller_http(&self, index: usize) -> String {
        self.controllers[index].http_url()
    }

    /// The index of the controller that leads now: the one whose `rangerctl
    /// ranges` succeeds (standbys refuse, naming the leader).
    pub async fn leader(&self) -> anyhow::Result<usize> {
        wait::until("a controller leads", PATIENCE, async || {
            let mut seen = Vec::new();
            for (index, controller) in self.controllers.iter().enumerate() {
                let out = controller
                    .ctl()
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

    /// Where node `id` serves its Prometheus metrics.
    pub fn node_metrics(&self, id: &str) -> anyhow::Result<SocketAddr> {
        Ok(self.nodes[self.node_index(id)?].metrics)
    }

    /// Where the proxy serves its Prometheus metrics.
    pub fn proxy_metrics(&self) -> anyhow::Result<SocketAddr> {
        Ok(self
            .proxy
            .as_ref()
            .context("no proxy in this cluster")?
            .metrics)
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

    /// `kill -9` of the proxy.
    pub fn kill_proxy(&mut self) -> anyhow::Result<()> {
        self.proxy
            .as_mut()
            .context("no proxy in this cluster")?
            .process
            .kill9()
    }

    /// Starts the proxy again on its port and waits until it routes.
    pub async fn restart_proxy(&mut self) -> anyhow::Result<()> {
        self.proxy
            .as_mut()
            .context("no proxy in this cluster")?
            .process
            .start()?;
        self.wait_proxy_routes().await
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
                    .ctl()
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
                    .ctl()
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

    /// Waits until the leader lists exactly this cluster's nodes; fails at
    /// once, with the log's tail, if a process of the cluster exits meanwhile
    /// (a node that could not bind its port would otherwise be waited for until
    /// the patience ran out).
    pub async fn wait_nodes_known(&mut self) -> anyhow::Result<()> {
        wait::until_or_fail("every node is known", PATIENCE, async || {
            if let Some(exited) = self.first_exited() {
                return Err(wait::NotYet::Failed(exited));
            }
            self.nodes_known().await.map_err(wait::NotYet::Waiting)
        })
        .await
    }

    /// Whether the leader lists exactly this cluster's nodes; what it lists if not.
    async fn nodes_known(&self) -> Result<(), String> {
        let ctl = self.leader_ctl().await.map_err(|e| format!("{e:#}"))?;
        let mut want = self.node_ids();
        want.sort();
        let nodes = ctl.nodes().await.map_err(|e| format!("{e:#}"))?;
        let mut ids: Vec<String> = nodes.into_iter().map(|n| n.id).collect();
        ids.sort();
        if ids == want {
            Ok(())
        } else {
            Err(format!("nodes {ids:?}, want {want:?}"))
        }
    }

    /// The first started process of the cluster that has exited, named, with
    /// its log's tail.
    fn first_exited(&mut self) -> Option<String> {
        let processes = self
            .controllers
            .iter_mut()
            .map(|c| &mut c.process)
            .chain(self.nodes.iter_mut().map(|n| &mut n.process))
            .chain(self.proxy.iter_mut().map(|p| &mut p.process));
        for process in processes {
            if process.starts() > 0 && !process.is_running() {
                return Some(format!(
                    "{} exited; its log ends:\n{}",
                    process.name(),
                    process.log_tail(LOG_TAIL_LINES)
                ));
            }
        }
        None
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
            settled_at(&ranges, self.replication)?;
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
            match controller.ctl().ranges().await {
                Ok(ranges) => return Ok((controller.ctl(), ranges)),
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
            eprintln!("----- consul -----\n{}", consul_log_tail(consul));
        }
    }
}

/// The end of Consul's log. Fetching it may take a call to the container
/// engine, while logs are printed from sync code (a panic, a drop): it blocks
/// in place on a multi-threaded runtime, the flavour every test here uses.
fn consul_log_tail(consul: &TestAgent) -> String {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(consul.log_tail(LOG_TAIL_LINES)))
        }
        _ => "(not printed: no multi-threaded runtime to fetch it with)".to_owned(),
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
