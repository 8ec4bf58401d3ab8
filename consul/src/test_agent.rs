//! A real Consul agent for tests, with the faults that Ranger's fault scenarios
//! need: frozen, stopped, restarted.
//!
//! Tests run against the real thing because Consul's semantics (indexes,
//! sessions, check states) are what Ranger's safety rests on. Each
//! [`TestAgent`] is a single-node Consul **server** (`-server
//! -bootstrap-expect=1`, not `-dev`) with its own data directory and its own
//! free loopback ports (HTTP, gRPC, DNS, Serf LAN/WAN, server RPC), stopped and
//! removed when the handle is dropped (also when a test panics). A server with
//! a data directory, rather than `-dev`'s in-memory state, is what lets a
//! restarted agent keep its KV data: the fault scenarios restart Consul and
//! then check that no acknowledged write was lost.
//!
//! # Where the agent runs ([`Mode`], `RANGER_CONSUL_MODE`)
//!
//! - **`container`** (the default, and what CI runs): a container started
//!   through `testcontainers` on whatever engine speaks the Docker API at
//!   `DOCKER_HOST` (podman on our machines, which `bin/test` installs and
//!   starts; Docker elsewhere). The image is `RANGER_CONSUL_IMAGE`, by default
//!   [`DEFAULT_IMAGE`], which `bin/test` builds from the binary `bin/consul`
//!   provides; where Docker Hub is reachable `hashicorp/consul:1.14.11` runs
//!   through the same code (both images have the binary at `/bin/consul`, which
//!   is made the entrypoint). The container shares the host's network, so
//!   Consul's own gRPC health checks reach nodes listening on 127.0.0.x, as
//!   they would from a Consul on the host; so the ports are chosen free on the
//!   host and passed as flags. Its data directory is inside the container,
//!   which keeps it across a stop and a start.
//! - **`process`**: the consul binary as a child process (from
//!   `$RANGER_CONSUL_BIN`, else the repository's `bin/consul path`, which finds
//!   or builds one), with a temporary data directory. A fallback for a
//!   developer without a container engine; the flags are the same.
//!
//! When container mode cannot reach an engine, or the image is missing,
//! [`TestAgent::start`] fails with an error that says how to fix it, and tests
//! fail: a test suite that quietly skipped Consul because the engine broke
//! would prove nothing. [`test_agent!`](crate::test_agent!) panics with that
//! message.
//!
//! # Faults
//!
//! [`TestAgent::pause`] / [`TestAgent::unpause`] freeze the agent (requests
//! hang, sessions' TTLs do not run down on a frozen server), [`TestAgent::stop`]
//! takes it down (connections refused), and [`TestAgent::restart`] brings it
//! back on the same ports with the same data. Containers do this through the
//! engine (cgroup freezer, stop, start); processes through signals (SIGSTOP,
//! SIGCONT, SIGTERM) and a new process on the same data directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::client::{Client, Scope};
use crate::config::ClientConfig;

/// The image container mode runs unless `RANGER_CONSUL_IMAGE` names another:
/// the one `bin/test` builds (bin/lib/containers.sh; keep the two in step).
pub const DEFAULT_IMAGE: &str = "localhost/ranger-consul:1.14.11";
/// Where `bin/test` starts podman's Docker API, named in error messages.
const PODMAN_SOCKET: &str = "unix:///run/podman/podman.sock";
/// The agent's data directory inside the container. The official image
/// declares it as a volume, and ours has it as an empty directory.
const CONTAINER_DATA_DIR: &str = "/consul/data";
/// How long an agent may take to elect itself leader; generous, since tests
/// run in parallel on small machines.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts retried when the agent dies at once (usually a port taken between
/// picking it and Consul binding it).
const START_ATTEMPTS: usize = 3;
/// How long [`TestAgent::stop`] lets Consul shut down after SIGTERM before it
/// is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Where agents' ports are drawn from: below Linux's ephemeral range (32768
/// and up by default), above the well-known and most registered services,
/// and above the range the end-to-end tests draw their processes' ports from
/// (`integration/src/ports.rs`: 20,000-26,399), so the two never collide.
const PORT_RANGE: std::ops::Range<u16> = 26_400..32_768;

/// Every port this process handed to an agent: one test's agent never gets a
/// port another test's agent was given and has not bound yet.
static HANDED_OUT: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<u16>>> =
    std::sync::LazyLock::new(Default::default);
/// Lines of the agent's log shown in errors.
const LOG_TAIL_LINES: usize = 40;

/// Where a [`TestAgent`] runs its Consul (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A container on the engine at `DOCKER_HOST`, through testcontainers.
    Container,
    /// A child process of the consul binary.
    Process,
}

impl Mode {
    /// The mode `RANGER_CONSUL_MODE` asks for: `container` (also when unset
    /// or empty) or `process`.
    pub fn from_env() -> Result<Self, TestAgentError> {
        Self::parse(std::env::var("RANGER_CONSUL_MODE").ok().as_deref())
    }

    /// The mode a value of `RANGER_CONSUL_MODE` names.
    pub fn parse(value: Option<&str>) -> Result<Self, TestAgentError> {
        match value.map(str::trim) {
            None | Some("" | "container") => Ok(Mode::Container),
            Some("process") => Ok(Mode::Process),
            Some(other) => Err(TestAgentError::Mode(other.to_owned())),
        }
    }
}

/// Why a test agent could not be started or a fault could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TestAgentError {
    /// `RANGER_CONSUL_MODE` holds something else than a mode.
    #[error("RANGER_CONSUL_MODE={0:?} is neither `container` nor `process`")]
    Mode(String),
    /// No consul binary could be found or built (process mode).
    #[error("no consul binary: {0}")]
    Binary(String),
    /// A file or process operation failed.
    #[error("could not run consul: {0}")]
    Io(#[from] std::io::Error),
    /// The agent exited during startup.
    #[error("consul agent exited during startup ({status}); its log ends with:\n{log}")]
    Exited {
        /// How it exited.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// The agent did not become ready in time.
    #[error("consul agent not ready after {timeout:?} ({what}); its log ends with:\n{log}")]
    NotReady {
        /// The time allowed.
        timeout: Duration,
        /// What it was still waiting for.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// The client could not be made.
    #[error(transparent)]
    Client(#[from] crate::Error),
    /// Container mode, but no engine answered at `DOCKER_HOST`.
    #[error(
        "container mode: no container engine answers at {docker_host}: {reason}\n\
         To fix it, either:\n\
         - run bin/test once as root: it installs podman, starts its Docker API at \
         {PODMAN_SOCKET} and builds the image; then `export DOCKER_HOST={PODMAN_SOCKET}` \
         for cargo test run by hand;\n\
         - or point DOCKER_HOST at a running Docker engine;\n\
         - or set RANGER_CONSUL_MODE=process to run the consul binary (bin/consul) \
         as a process instead of a container"
    )]
    EngineUnavailable {
        /// Where the engine was looked for.
        docker_host: String,
        /// What failed.
        reason: String,
    },
    /// The engine answered but has no such image and could not pull it.
    #[error(
        "container mode: the image {image} is not on the engine and could not be pulled: \
         {reason}\n\
         To fix it, either:\n\
         - run bin/test once: it builds {DEFAULT_IMAGE} from the binary bin/consul provides;\n\
         - or set RANGER_CONSUL_IMAGE to an image the engine has or can pull \
         (hashicorp/consul:1.14.11 where Docker Hub is reachable);\n\
         - or set RANGER_CONSUL_MODE=process to run the consul binary as a process"
    )]
    ImageUnavailable {
        /// The image asked for.
        image: String,
        /// What failed.
        reason: String,
    },
    /// The engine answered, but starting or inspecting the container failed.
    #[error("the consul container failed: {0}")]
    Container(String),
    /// A fault ([`TestAgent::pause`] and the like) could not be applied.
    #[error("could not {action} the consul agent: {reason}")]
    Fault {
        /// What was asked.
        action: &'static str,
        /// Why it failed.
        reason: String,
    },
}

/// A running single-node Consul server, stopped and removed on drop.
#[derive(Debug)]
pub struct TestAgent {
    http_addr: SocketAddr,
    node: String,
    client: Client,
    backend: Backend,
}

/// What runs the agent; each variant stops it when dropped.
#[derive(Debug)]
enum Backend {
    Process(process::ProcessAgent),
    /// Boxed: the container handle is large.
    Container(Box<container::ContainerAgent>),
}

impl Backend {
    /// `Some(how)` once the agent has exited.
    async fn exited(&mut self) -> Result<Option<TestAgentError>, TestAgentError> {
        match self {
            Backend::Process(process) => process.exited(),
            Backend::Container(container) => container.exited().await,
        }
    }

    async fn log_tail(&self, lines: usize) -> String {
        match self {
            Backend::Process(process) => process.log_tail(lines),
            Backend::Container(container) => container.log_tail(lines).await,
        }
    }
}

/// The agent's ports on 127.0.0.1, all chosen free on the host: with host
/// networking a container's ports are the host's, so no two agents may share
/// Consul's fixed defaults.
#[derive(Clone, Copy, Debug)]
struct Ports {
    http: u16,
    grpc: u16,
    dns: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl Ports {
    /// Six distinct ports free on 127.0.0.1 for both TCP and UDP (Serf and
    /// DNS use both), drawn at random from [`PORT_RANGE`]. Not the kernel's
    /// pick (`bind` to port 0): that comes from the ephemeral range, which
    /// every outgoing connection on the machine also draws from, so while an
    /// agent is stopped (see [`TestAgent::stop`]) some client's connection
    /// could take its port and the restart would fail. Another process may
    /// still take a port between this check and Consul binding it; the caller
    /// retries when the agent then fails to start.
    fn free() -> std::io::Result<Self> {
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ports = [0u16; 6];
        let mut found = 0;
        let mut tries = 0;
        while found < ports.len() {
            tries += 1;
            if tries > 10_000 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("no six free ports in {PORT_RANGE:?}"),
                ));
            }
            let port = rand::random_range(PORT_RANGE);
            if ports[..found].contains(&port) || handed_out.contains(&port) {
                continue;
            }
            let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
                && UdpSocket::bind(("127.0.0.1", port)).is_ok();
            if free {
                ports[found] = port;
                found += 1;
            }
        }
        handed_out.extend(ports);
        let [http, grpc, dns, serf_lan, serf_wan, server] = ports;
        Ok(Self {
            http,
            grpc,
            dns,
            serf_lan,
            serf_wan,
            server,
        })
    }
}

/// The `consul` arguments both modes run: a single-node server on loopback
/// with the given ports and data directory. Ports Consul would otherwise open
/// at fixed defaults (gRPC TLS, HTTPS) are turned off, so that parallel agents
/// sharing the host's network do not collide. `raft_multiplier = 1` is the
/// timing `-dev` uses: a lone server elects itself in about a second instead
/// of five.
fn agent_args(node: &str, ports: &Ports, data_dir: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "agent",
        "-server",
        "-bootstrap-expect=1",
        "-bind=127.0.0.1",
        "-client=127.0.0.1",
        "-grpc-tls-port=-1",
        "-https-port=-1",
        "-log-level=info",
        "-hcl=disable_update_check = true",
        "-hcl=performance { raft_multiplier = 1 }",
    ]
    .map(String::from)
    .into();
    args.extend([
        format!("-node={node}"),
        format!("-data-dir={data_dir}"),
        format!("-http-port={}", ports.http),
        format!("-grpc-port={}", ports.grpc),
        format!("-dns-port={}", ports.dns),
        format!("-serf-lan-port={}", ports.serf_lan),
        format!("-serf-wan-port={}", ports.serf_wan),
        format!("-server-port={}", ports.server),
    ]);
    args
}

impl TestAgent {
    /// Starts an agent in the mode `RANGER_CONSUL_MODE` asks for (see
    /// [`TestAgent::start_in`]).
    pub async fn start() -> Result<Self, TestAgentError> {
        Self::start_in(Mode::from_env()?).await
    }

    /// Starts an agent in `mode` and waits until it is leader and its node's
    /// `serfHealth` check passes, so that sessions and service registrations
    /// work at once.
    pub async fn start_in(mode: Mode) -> Result<Self, TestAgentError> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(mode).await {
                Ok(agent) => return Ok(agent),
                Err(error @ TestAgentError::Exited { .. }) => {
                    tracing::warn!(%error, "consul agent exited during startup; retrying on other ports");
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| TestAgentError::Binary("no start attempted".into())))
    }

    async fn start_once(mode: Mode) -> Result<Self, TestAgentError> {
        let started = Instant::now();
        let ports = Ports::free()?;
        let node = format!("ranger-test-{}", ports.http);
        let backend = match mode {
            Mode::Process => {
                let binary = consul_binary().await?;
                Backend::Process(process::ProcessAgent::start(binary, &node, &ports)?)
            }
            Mode::Container => {
                let image = std::env::var("RANGER_CONSUL_IMAGE")
                    .ok()
                    .filter(|image| !image.trim().is_empty())
                    .unwrap_or_else(|| DEFAULT_IMAGE.to_owned());
                let args = agent_args(&node, &ports, CONTAINER_DATA_DIR);
                Backend::Container(Box::new(
                    container::ContainerAgent::start(&image, &node, args).await?,
                ))
            }
        };
        let http_addr = SocketAddr::from(([127, 0, 0, 1], ports.http));
        let client = Client::new(
            ClientConfig::new(format!("http://{http_addr}"))
                .with_request_timeout(Duration::from_secs(5)),
        )?;
        let mut agent = Self {
            http_addr,
            node,
            client,
            backend,
        };
        agent.wait_ready().await?;
        tracing::info!(?mode, http = %http_addr, elapsed = ?started.elapsed(), "consul agent ready");
        Ok(agent)
    }

    /// Waits for a leader and for the node's passing `serfHealth` check.
    async fn wait_ready(&mut self) -> Result<(), TestAgentError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut waiting_for = "a leader";
        loop {
            if let Some(exited) = self.backend.exited().await? {
                return Err(exited);
            }
            if let Ok(Some(_)) = self.client.status_leader().await {
                waiting_for = "its node's serfHealth check";
                if self.serf_health_passing().await {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(TestAgentError::NotReady {
                    timeout: START_TIMEOUT,
                    what: format!("waiting for {waiting_for}"),
                    log: self.backend.log_tail(LOG_TAIL_LINES).await,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the node's `serfHealth` check is registered and passing: the
    /// check a session binds to by default. The node itself appears in the
    /// catalog earlier (the agent's own sync registers it), and a session
    /// created before the leader has added the check fails with "Missing
    /// check 'serfHealth' registration".
    async fn serf_health_passing(&self) -> bool {
        let url = self.client.url(&["health", "node"], Some(&self.node));
        let answer = self
            .client
            .call(Method::GET, url, Scope::Cluster)
            .send()
            .await;
        let Ok(answer) = answer else {
            return false;
        };
        let Ok(checks) = answer.json::<Vec<serde_json::Value>>().await else {
            return false;
        };
        checks
            .iter()
            .any(|check| check["CheckID"] == "serfHealth" && check["Status"] == "passing")
    }

    /// Freezes the agent, as a machine that stops being scheduled or a
    /// process stuck in a long GC pause would be: connections are still
    /// accepted (the kernel does that) but nothing answers, so requests hang
    /// until their own timeouts, and the agent's timers (session TTLs, check
    /// intervals) stand still. What a leader holding a Consul lock must
    /// survive without a second leader appearing. A container is frozen by
    /// the engine (cgroup freezer), a process by SIGSTOP.
    ///
    /// Returns once the agent is frozen: every thread of the process is
    /// stopped, or the engine reports the container paused.
    pub async fn pause(&self) -> Result<(), TestAgentError> {
        match &self.backend {
            Backend::Process(process) => process.pause().await,
            Backend::Container(container) => container.pause().await,
        }
    }

    /// Thaws an agent frozen by [`TestAgent::pause`]: requests that were
    /// waiting are answered, and its timers run again, late (whatever fell
    /// due while it was frozen, such as a session's TTL, comes due at once).
    pub async fn unpause(&self) -> Result<(), TestAgentError> {
        match &self.backend {
            Backend::Process(process) => process.signal("unpause", "CONT"),
            Backend::Container(container) => container.unpause().await,
        }
    }

    /// Stops the agent the way an operator or an orchestrator does: SIGTERM,
    /// then SIGKILL after ten seconds. Its ports refuse connections until
    /// [`TestAgent::restart`]; its data directory is kept. What clients and
    /// leaders must survive: Consul gone, then back with everything it had
    /// acknowledged. A paused agent is thawed to receive the signal, so it
    /// may run for an instant before it stops.
    pub async fn stop(&mut self) -> Result<(), TestAgentError> {
        match &mut self.backend {
            Backend::Process(process) => process.stop().await,
            Backend::Container(container) => container.stop().await,
        }
    }

    /// Starts the agent again on the same ports with the same data directory
    /// (stopping it first if it runs), and waits until it is leader again. A
    /// restarted single server keeps its KV data, sessions and catalog: every
    /// write it acknowledged before is readable after. Used after
    /// [`TestAgent::stop`] for a down period of the test's choosing, or alone
    /// for a quick bounce.
    pub async fn restart(&mut self) -> Result<(), TestAgentError> {
        match &mut self.backend {
            Backend::Process(process) => {
                process.stop().await?;
                process.spawn()?;
            }
            Backend::Container(container) => {
                container.stop().await?;
                container.start_stopped().await?;
            }
        }
        self.wait_ready().await
    }

    /// Where the agent runs.
    pub fn mode(&self) -> Mode {
        match self.backend {
            Backend::Process(_) => Mode::Process,
            Backend::Container(_) => Mode::Container,
        }
    }

    /// The agent's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The agent's HTTP base URL, e.g. `http://127.0.0.1:41234`.
    pub fn address(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The agent's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A client for this agent (requests time out after 5 s).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The last `lines` lines of the agent's log, for failure messages.
    pub async fn log_tail(&self, lines: usize) -> String {
        self.backend.log_tail(lines).await
    }
}

/// `let agent = test_agent!();` in an async test: a started
/// [`TestAgent`](crate::test_agent::TestAgent) in the mode
/// `RANGER_CONSUL_MODE` asks for, or a panic with the reason it could not
/// start, which says how to fix it (e.g. no container engine: run `bin/test`
/// once, or set `RANGER_CONSUL_MODE=process`). A `Result::unwrap` would print
/// the error's debug form instead of that message.
#[macro_export]
macro_rules! test_agent {
    () => {
        match $crate::test_agent::TestAgent::start().await {
            ::std::result::Result::Ok(agent) => agent,
            ::std::result::Result::Err(error) => ::std::panic!("{error}"),
        }
    };
}

/// The last `lines` lines of `text`.
fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The process backend: the consul binary as a child process.
mod process {
    use super::*;

    /// A consul child process with its data directory; the process is
    /// replaced by a new one on [`TestAgent::restart`].
    #[derive(Debug)]
    pub(super) struct ProcessAgent {
        binary: PathBuf,
        args: Vec<String>,
        /// `None` while stopped.
        child: Option<Child>,
        log_path: PathBuf,
        // Last, so that it is removed after the agent is killed.
        _dir: tempfile::TempDir,
    }

    impl ProcessAgent {
        pub(super) fn start(
            binary: PathBuf,
            node: &str,
            ports: &Ports,
        ) -> Result<Self, TestAgentError> {
            let dir = tempfile::Builder::new()
                .prefix("ranger-consul-")
                .tempdir()?;
            let data = dir.path().join("data");
            let args = agent_args(node, ports, &data.to_string_lossy());
            let mut agent = Self {
                binary,
                args,
                child: None,
                log_path: dir.path().join("agent.log"),
                _dir: dir,
            };
            agent.spawn()?;
            Ok(agent)
        }

        /// Starts the binary; its output is appended to the one log, so a
        /// restarted agent's log follows the previous run's.
        pub(super) fn spawn(&mut self) -> Result<(), TestAgentError> {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_path)?;
            let child = Command::new(&self.binary)
                .process_group(0)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            self.child = Some(child);
            Ok(())
        }

        pub(super) fn exited(&mut self) -> Result<Option<TestAgentError>, TestAgentError> {
            let Some(child) = self.child.as_mut() else {
                return Ok(Some(TestAgentError::Exited {
                    status: "stopped".into(),
                    log: self.log_tail(LOG_TAIL_LINES),
                }));
            };
            Ok(child.try_wait()?.map(|status| TestAgentError::Exited {
                status: status.to_string(),
                log: self.log_tail(LOG_TAIL_LINES),
            }))
        }

        /// Sends `signal` (a name `kill -s` knows) to the running agent.
        /// Through the `kill` command: this crate forbids the unsafe code a
        /// direct system call would take.
        pub(super) fn signal(
            &self,
            action: &'static str,
            signal: &str,
        ) -> Result<(), TestAgentError> {
            let Some(child) = self.child.as_ref() else {
                return Err(TestAgentError::Fault {
                    action,
                    reason: "it is stopped".into(),
                });
            };
            let status = Command::new("kill")
                .args(["-s", signal, &child.id().to_string()])
                .stdin(Stdio::null())
                .status()
                .map_err(|error| TestAgentError::Fault {
                    action,
                    reason: format!("running kill: {error}"),
                })?;
            if !status.success() {
                return Err(TestAgentError::Fault {
                    action,
                    reason: format!("kill -s {signal} {} failed ({status})", child.id()),
                });
            }
            Ok(())
        }

        /// SIGSTOP, then waits until every thread of the process has
        /// stopped: `kill` returns once the signal is sent, and a thread that
        /// was running on another CPU may still serve a request before it
        /// notices (seen here: a read answered after `kill -s STOP`
        /// returned).
        pub(super) async fn pause(&self) -> Result<(), TestAgentError> {
            self.signal("pause", "STOP")?;
            let Some(pid) = self.child.as_ref().map(Child::id) else {
                return Ok(());
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match all_threads_stopped(pid) {
                    Ok(true) => return Ok(()),
                    Ok(false) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(false) => {
                        return Err(TestAgentError::Fault {
                            action: "pause",
                            reason: format!("process {pid} did not stop within 5 s of SIGSTOP"),
                        });
                    }
                    Err(error) => {
                        return Err(TestAgentError::Fault {
                            action: "pause",
                            reason: format!("reading /proc/{pid}/task: {error}"),
                        });
                    }
                }
            }
        }

        /// SIGTERM (after SIGCONT, in case it is paused: a stopped process
        /// would not act on SIGTERM), then SIGKILL after [`STOP_GRACE`].
        pub(super) async fn stop(&mut self) -> Result<(), TestAgentError> {
            if self.child.is_none() {
                return Ok(());
            }
            if self.exited()?.is_none() {
                self.signal("stop", "TERM")?;
                self.signal("stop", "CONT")?;
            }
            let deadline = Instant::now() + STOP_GRACE;
            while let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.child = None;
            Ok(())
        }

        pub(super) fn log_tail(&self, lines: usize) -> String {
            let mut text = String::new();
            if let Ok(mut file) = File::open(&self.log_path) {
                // The tail is in the last 64 KiB, whatever the log's length.
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
                let mut bytes = Vec::new();
                let _ = file.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            last_lines(&text, lines)
        }
    }

    /// Whether every thread of process `pid` is in the stopped state (`T`)
    /// according to /proc.
    fn all_threads_stopped(pid: u32) -> std::io::Result<bool> {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            let stopped = status
                .lines()
                .find_map(|line| line.strip_prefix("State:"))
                .is_some_and(|state| state.trim_start().starts_with('T'));
            if !stopped {
                return Ok(false);
            }
        }
        Ok(true)
    }

    impl Drop for ProcessAgent {
        fn drop(&mut self) {
            if let Some(child) = self.child.as_mut() {
                // SIGKILL also ends a paused (SIGSTOPped) process. Already
                // exited is fine; there is nothing more to do on failure.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The consul binary, found once per process: `$RANGER_CONSUL_BIN`, else the
/// output of the repository's `bin/consul path` (which may build it; its
/// progress goes to stderr).
async fn consul_binary() -> Result<PathBuf, TestAgentError> {
    static BINARY: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    BINARY
        .get_or_init(resolve_binary)
        .await
        .clone()
        .map_err(TestAgentError::Binary)
}

async fn resolve_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("RANGER_CONSUL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest_dir
        .parent()
        .map(|root| root.join("bin").join("consul"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{} has no bin/consul beside it; set RANGER_CONSUL_BIN to a consul binary",
                manifest_dir.display()
            )
        })?;
    let output = tokio::process::Command::new(&script)
        .arg("path")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} path failed ({})",
            script.display(),
            output.status
        ));
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if path.is_empty() {
        return Err(format!("{} path printed nothing", script.display()));
    }
    Ok(PathBuf::from(path))
}

/// The container backend: the Consul image through testcontainers.
mod container {
    use std::error::Error as _;

    use testcontainers::bollard::errors::Error as BollardError;
    use testcontainers::core::client::ClientError;
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{ContainerAsync, GenericImage, ImageExt, TestcontainersError};

    use super::{LOG_TAIL_LINES, START_TIMEOUT, STOP_GRACE, TestAgentError, last_lines};

    /// A running Consul container, removed when dropped (by testcontainers'
    /// own drop, which also works on a current-thread runtime).
    #[derive(Debug)]
    pub(super) struct ContainerAgent {
        container: ContainerAsync<GenericImage>,
    }

    impl ContainerAgent {
        /// Starts `image` running `consul ARGS` on the host's network.
        pub(super) async fn start(
            image: &str,
            node: &str,
            args: Vec<String>,
        ) -> Result<Self, TestAgentError> {
            let (name, tag) = split_image(image);
            let container = GenericImage::new(name, tag)
                // Both our image and the official one have the binary there;
                // the official entrypoint script would add flags of its own.
                .with_entrypoint("/bin/consul")
                .with_cmd(args)
                // A name that says what it is in `podman ps`, unique even if
                // a killed test left a container with the same port behind.
                .with_container_name(format!("{node}-{:08x}", rand::random::<u32>()))
                .with_label("dev.ranger.test-agent", node)
                .with_startup_timeout(START_TIMEOUT)
                // Host networking, set on the host config rather than with
                // `with_network`: testcontainers would look for (and create) a
                // network named "host", which podman has not. With the host's
                // network there is nothing to publish; the image's EXPOSEd
                // ports are not to be mapped.
                .with_host_config_modifier(|config| {
                    config.network_mode = Some("host".into());
                    config.publish_all_ports = Some(false);
                    config.port_bindings = None;
                })
                .start()
                .await
                .map_err(|error| classify(error, image))?;
            Ok(Self { container })
        }

        /// `Some(error)` once the container has stopped.
        pub(super) async fn exited(&self) -> Result<Option<TestAgentError>, TestAgentError> {
            let status = match self.container.is_running().await {
                Ok(true) => return Ok(None),
                Ok(false) => match self.container.exit_code().await {
                    Ok(Some(code)) => format!("container exit code {code}"),
                    _ => "container not running".to_owned(),
                },
                // Podman 4.3 reports a container whose process just ended as
                // "stopped" (before its clean-up marks it "exited"), a state
                // the Docker API does not have and the client cannot read.
                Err(TestcontainersError::Client(ClientError::InspectContainer(
                    error @ (BollardError::JsonDataError { .. }
                    | BollardError::JsonSerdeError { .. }),
                ))) => format!("container not running (state unreadable: {error})"),
                Err(error) => return Err(classify(error, "")),
            };
            Ok(Some(TestAgentError::Exited {
                status,
                log: self.log_tail(LOG_TAIL_LINES).await,
            }))
        }

        pub(super) async fn pause(&self) -> Result<(), TestAgentError> {
            self.container
                .pause()
                .await
                .map_err(|error| fault("pause", error))
        }

        pub(super) async fn unpause(&self) -> Result<(), TestAgentError> {
            self.container
                .unpause()
                .await
                .map_err(|error| fault("unpause", error))
        }

        /// Stops the container (the engine sends SIGTERM, then SIGKILL after
        /// [`STOP_GRACE`]). Stopping a stopped container does nothing.
        ///
        /// A paused container is thawed first: podman refuses to stop a
        /// paused one ("container state improper"), and a frozen process
        /// cannot act on SIGTERM anyway. The unpause fails harmlessly when
        /// the container is not paused; if the engine is gone, the stop that
        /// follows reports it.
        pub(super) async fn stop(&self) -> Result<(), TestAgentError> {
            let _not_paused = self.container.unpause().await;
            let grace = i32::try_from(STOP_GRACE.as_secs()).unwrap_or(i32::MAX);
            self.container
                .stop_with_timeout(Some(grace))
                .await
                .map_err(|error| fault("stop", error))
        }

        /// Starts the stopped container again: same command, same network,
        /// same filesystem (so the same data directory).
        pub(super) async fn start_stopped(&self) -> Result<(), TestAgentError> {
            self.container
                .start()
                .await
                .map_err(|error| fault("start", error))
        }

        /// The container's output, both streams (Consul logs to stdout), as
        /// the engine keeps it: every run of the container, oldest first.
        pub(super) async fn log_tail(&self, lines: usize) -> String {
            let mut text = String::new();
            for (stream, bytes) in [
                ("stdout", self.container.stdout_to_vec().await),
                ("stderr", self.container.stderr_to_vec().await),
            ] {
                match bytes {
                    Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
                    Err(error) => text.push_str(&format!("(no {stream}: {error})\n")),
                }
            }
            last_lines(&text, lines)
        }
    }

    /// `name:tag` as testcontainers wants it: the tag is after the last `:`
    /// that follows the last `/` (a registry's port is not a tag).
    pub(super) fn split_image(image: &str) -> (&str, &str) {
        let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
        match image[name_start..].rfind(':') {
            Some(colon) => (
                &image[..name_start + colon],
                &image[name_start + colon + 1..],
            ),
            None => (image, "latest"),
        }
    }

    fn fault(action: &'static str, error: TestcontainersError) -> TestAgentError {
        match classify(error, "") {
            error @ TestAgentError::EngineUnavailable { .. } => error,
            other => TestAgentError::Fault {
                action,
                reason: other.to_string(),
            },
        }
    }

    /// [`TestAgentError::EngineUnavailable`] when no engine answered (no
    /// client, no socket, connection refused or timed out),
    /// [`TestAgentError::ImageUnavailable`] when the engine had not the image
    /// and could not pull it, [`TestAgentError::Container`] otherwise.
    pub(super) fn classify(error: TestcontainersError, image: &str) -> TestAgentError {
        let unreachable = match &error {
            TestcontainersError::Client(
                ClientError::Init(_)
                | ClientError::Configuration(_)
                | ClientError::InvalidDockerHost(_),
            ) => true,
            TestcontainersError::Client(ClientError::PullImage { .. }) => {
                // The create that came first was answered (404: no such
                // image), so the engine is there.
                return TestAgentError::ImageUnavailable {
                    image: image.to_owned(),
                    reason: error.to_string(),
                };
            }
            TestcontainersError::Client(
                ClientError::CreateContainer(err)
                | ClientError::StartContainer(err)
                | ClientError::ListContainers(err)
                | ClientError::InspectContainer(err)
                | ClientError::StopContainer(err)
                | ClientError::PauseContainer(err)
                | ClientError::UnpauseContainer(err),
            ) => not_answered(err),
            _ => false,
        };
        if unreachable {
            TestAgentError::EngineUnavailable {
                docker_host: std::env::var("DOCKER_HOST")
                    .map(|host| format!("DOCKER_HOST={host}"))
                    .unwrap_or_else(|_| "the default socket (DOCKER_HOST is not set)".to_owned()),
                reason: error.to_string(),
            }
        } else {
            TestAgentError::Container(error.to_string())
        }
    }

    /// Whether the request never got an answer from the engine: a missing
    /// socket, a timeout, or an I/O error anywhere in the error's causes
    /// (refused, not found, permission denied on the socket).
    fn not_answered(err: &BollardError) -> bool {
        if matches!(
            err,
            BollardError::SocketNotFoundError(_)
                | BollardError::RequestTimeoutError
                | BollardError::UnsupportedURISchemeError { .. }
                | BollardError::IOError { .. }
        ) {
            return true;
        }
        let mut cause = err.source();
        while let Some(error) = cause {
            if error.is::<std::io::Error>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use testcontainers::TestcontainersError;
    use testcontainers::bollard::errors::Error as BollardError;
    use testcontainers::core::client::ClientError;

    use super::container::{classify, split_image};
    use super::*;

    #[test]
    fn agents_ports_lie_in_their_own_range_and_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            let p = Ports::free().unwrap();
            for port in [p.http, p.grpc, p.dns, p.serf_lan, p.serf_wan, p.server] {
                assert!(PORT_RANGE.contains(&port), "{port}");
                assert!(seen.insert(port), "port {port} handed out twice");
            }
        }
    }

    #[test]
    fn the_mode_is_container_unless_process_is_asked_for() {
        assert_eq!(Mode::parse(None).unwrap(), Mode::Container);
        assert_eq!(Mode::parse(Some("")).unwrap(), Mode::Container);
        assert_eq!(Mode::parse(Some("container")).unwrap(), Mode::Container);
        assert_eq!(Mode::parse(Some(" process ")).unwrap(), Mode::Process);
        let error = Mode::parse(Some("docker")).unwrap_err();
        assert!(matches!(error, TestAgentError::Mode(ref v) if v == "docker"));
        assert!(error.to_string().contains("RANGER_CONSUL_MODE=\"docker\""));
    }

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(
            split_image("localhost/ranger-consul:1.14.11"),
            ("localhost/ranger-consul", "1.14.11")
        );
        assert_eq!(
            split_image("hashicorp/consul:1.14.11"),
            ("hashicorp/consul", "1.14.11")
        );
        assert_eq!(
            split_image("registry.local:5000/consul"),
            ("registry.local:5000/consul", "latest")
        );
        assert_eq!(
            split_image("registry.local:5000/consul:1"),
            ("registry.local:5000/consul", "1")
        );
        assert_eq!(split_image("consul"), ("consul", "latest"));
    }

    /// No engine behind the socket: the error says so and names every way
    /// out, so that a developer knows what to do from the test's panic alone.
    #[test]
    fn an_unreachable_engine_is_reported_with_the_ways_to_fix_it() {
        let missing = TestcontainersError::Client(ClientError::CreateContainer(
            BollardError::SocketNotFoundError("/run/podman/podman.sock".into()),
        ));
        let error = classify(missing, DEFAULT_IMAGE);
        assert!(
            matches!(error, TestAgentError::EngineUnavailable { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        for needle in [
            "no container engine answers",
            "bin/test",
            "DOCKER_HOST=unix:///run/podman/podman.sock",
            "RANGER_CONSUL_MODE=process",
        ] {
            assert!(message.contains(needle), "{needle:?} missing in: {message}");
        }
    }

    #[test]
    fn a_missing_image_is_reported_with_the_ways_to_fix_it() {
        let pull = TestcontainersError::Client(ClientError::PullImage {
            descriptor: DEFAULT_IMAGE.into(),
            err: BollardError::RequestTimeoutError,
        });
        let error = classify(pull, DEFAULT_IMAGE);
        let message = error.to_string();
        assert!(
            matches!(error, TestAgentError::ImageUnavailable { .. }),
            "{error:?}"
        );
        for needle in [
            DEFAULT_IMAGE,
            "bin/test",
            "RANGER_CONSUL_IMAGE",
            "RANGER_CONSUL_MODE=process",
        ] {
            assert!(message.contains(needle), "{needle:?} missing in: {message}");
        }
    }

    #[test]
    fn both_modes_run_a_server_on_the_given_ports_and_data_dir() {
        let ports = Ports {
            http: 1,
            grpc: 2,
            dns: 3,
            serf_lan: 4,
            serf_wan: 5,
            server: 6,
        };
        let args = agent_args("n", &ports, "/d");
        for flag in [
            "-server",
            "-bootstrap-expect=1",
            "-data-dir=/d",
            "-node=n",
            "-http-port=1",
            "-grpc-port=2",
            "-dns-port=3",
            "-serf-lan-port=4",
            "-serf-wan-port=5",
            "-server-port=6",
            "-grpc-tls-port=-1",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing in {args:?}");
        }
        assert!(!args.iter().any(|a| a == "-dev"), "{args:?}");
    }
}
