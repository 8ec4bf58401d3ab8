//! The processes of a cluster: their command lines, fixed at creation so
//! that a restart is the same program on the same port with the same data.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};

use super::builder::ClusterBuilder;
use super::{Backend, Cluster};
use crate::binaries::{KV_NODE, KV_PROXY, RANGERD, binary};
use crate::ctl::Ctl;
use crate::kv::Kv;
use crate::ports::free_addr;
use crate::process::Process;

/// One `rangerd`.
#[derive(Debug)]
pub struct Controller {
    /// The process.
    pub process: Process,
    /// Where it serves.
    pub addr: String,
    /// Where it serves HTTP (`rangerd --http`: metrics and the dashboard).
    pub http: SocketAddr,
    ctl: Ctl,
}

impl Controller {
    pub(super) fn new(
        spec: &ClusterBuilder,
        cluster: &Cluster,
        index: usize,
    ) -> anyhow::Result<Controller> {
        let addr = free_addr()?.to_string();
        let http = free_addr()?;
        let name = format!("rangerd{}", index + 1);
        let mut process = Process::new(&name, binary(RANGERD)?, cluster.dir())
            .args(["--listen", &addr])
            .args(["--http", &http.to_string()])
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
            http,
        })
    }

    /// The base URL of its dashboard, e.g. `http://127.0.0.1:4321`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
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
    /// Its log of acknowledged writes, when the cluster asked for them (one
    /// JSON line per write; appended to across restarts).
    pub ack_log: Option<PathBuf>,
    /// Where it serves Prometheus metrics (`kv-node --metrics`).
    pub metrics: SocketAddr,
}

impl KvNode {
    pub(super) fn new(
        spec: &ClusterBuilder,
        cluster: &Cluster,
        index: usize,
    ) -> anyhow::Result<KvNode> {
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
        let metrics = free_addr()?;
        process = process.args(["--metrics", &metrics.to_string()]);
        let ack_log = spec
            .ack_logs
            .then(|| cluster.dir().join(format!("acks-{id}.jsonl")));
        if let Some(path) = &ack_log {
            process = process.arg_path("--ack-log", path);
        }
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
            ack_log,
            metrics,
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
    /// Where it serves Prometheus metrics (`kv-proxy --metrics`).
    pub metrics: SocketAddr,
}

impl Proxy {
    pub(super) fn new(spec: &ClusterBuilder, cluster: &Cluster) -> anyhow::Result<Proxy> {
        let addr = free_addr()?.to_string();
        let metrics = free_addr()?;
        let mut process = Process::new("kv-proxy", binary(KV_PROXY)?, cluster.dir())
            .args(["--listen", &addr])
            .args(["--metrics", &metrics.to_string()])
            .args([
                "--deadline-ms",
                &spec.proxy_deadline.as_millis().to_string(),
            ]);
        process = match &cluster.consul {
            _ if spec.proxy_direct => {
                let nodes: Vec<String> = cluster
                    .nodes
                    .iter()
                    .map(|n| format!("{}={}", n.id, n.listen))
                    .collect();
                if nodes.is_empty() {
                    bail!("a proxy with a static node list needs the nodes first");
                }
                process.args(["--nodes", &nodes.join(",")])
            }
            Some(consul) => process.args(["--consul", &consul.address()]),
            None => process.args([
                "--controller",
                &cluster.controllers[0].addr,
                "--poll-ms",
                "200",
            ]),
        };
        Ok(Proxy {
            process,
            addr,
            metrics,
        })
    }
}
